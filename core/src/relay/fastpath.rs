//! The relay fast path's decisions, free of I/O: what a relay does with the
//! datagrams that reach one of its fast-path sockets, without the node
//! core's general dispatch.
//!
//! Owns nothing but a handle on two things the core owns: the latest
//! snapshot of the relay's channels ([`ChannelTable`], which the core
//! publishes whenever [`super::channel::RelayChannels::version`] moves)
//! and the relay's limiter ([`SharedLimiter`], the buckets the core charges
//! sealed relay traffic to).
//!
//! Promises, for relay-data (`0xFE | channel | WireGuard`), the same checks
//! as the core's own channel forwarding: a datagram is forwarded only on a
//! channel in the table, only when it came from one of the two addresses
//! the relay authenticated for the channel, only to the other end, only as
//! large as it came in (the header is rewritten in place, never grown: no
//! amplification), and only within the sender's, its network's and the
//! node's rates; everything else is dropped and counted by named reason
//! (in the limiter's counters, `fast_path_drops`). Consecutive datagrams
//! of one channel (a GRO run) are checked and charged once and go to the
//! wire as one run (one GSO send); a run over the limit goes on one by
//! one as far as the buckets allow. Datagrams in order in, in order out.
//! Anything that is not relay-data (control messages, WireGuard for this
//! node) is handed to the core unchanged, in order.
//!
//! Never: opens channels, changes them, or reads what they carry; does
//! I/O (the shell's [`FastWire`] does); holds a datagram after the call.

use super::channel::{self, ChannelDrop, ChannelTable};
use super::limiter::SharedLimiter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the fast path asks of the shell.
pub trait FastWire {
    /// Sends datagrams of `segment` bytes (the last may be shorter), laid
    /// end to end, to `to`: one system call where the kernel segments.
    fn send_run(&mut self, to: SocketAddr, datagrams: &[u8], segment: usize);
    /// Datagrams that are not relay-data, for the node core, as received.
    fn hand_over(&mut self, from: SocketAddr, datagrams: &[u8], segment: usize);
}

/// Why the fast path did not forward a relay-data datagram (besides the
/// rates, which the limiter counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastDrop {
    /// No such channel in the table.
    Unknown,
    /// The channel exists, but the datagram came from neither end.
    WrongSource,
    /// Too short to carry a channel header and a WireGuard datagram.
    Malformed,
}

impl FastDrop {
    /// The name it is counted under (the core's names for the same drops).
    pub fn reason(self) -> &'static str {
        match self {
            FastDrop::Unknown => ChannelDrop::Unknown.reason(),
            FastDrop::WrongSource => ChannelDrop::WrongSource.reason(),
            FastDrop::Malformed => "relay-data-malformed",
        }
    }
}

impl From<ChannelDrop> for FastDrop {
    fn from(d: ChannelDrop) -> Self {
        match d {
            ChannelDrop::Unknown => FastDrop::Unknown,
            ChannelDrop::WrongSource => FastDrop::WrongSource,
        }
    }
}

/// One fast-path thread's view: the published table and the shared limiter.
#[derive(Debug, Clone)]
pub struct FastPath {
    table: Arc<ChannelTable>,
    limiter: SharedLimiter,
}

impl FastPath {
    pub fn new(table: Arc<ChannelTable>, limiter: SharedLimiter) -> Self {
        FastPath { table, limiter }
    }

    /// The version of the table in use.
    pub fn table_version(&self) -> u64 {
        self.table.version()
    }

    /// Uses a newer snapshot of the channels.
    pub fn set_table(&mut self, table: Arc<ChannelTable>) {
        self.table = table;
    }

    /// Datagrams of `segment` bytes (the last may be shorter), laid end to
    /// end in `bytes`, received from `from`: relay-data is forwarded (its
    /// headers rewritten in place) or dropped, the rest handed over.
    pub fn on_datagrams(
        &self,
        from: SocketAddr,
        bytes: &mut [u8],
        segment: usize,
        now: Instant,
        wire: &mut impl FastWire,
    ) {
        let segment = segment.clamp(1, bytes.len().max(1));
        let mut drops: Vec<(FastDrop, u64)> = Vec::new();
        let mut handed_over = 0u64;
        let mut start = 0;
        while start < bytes.len() {
            let kind = Kind::of(&bytes[start..(start + segment).min(bytes.len())]);
            // The run: consecutive datagrams of the same kind.
            let mut end = (start + segment).min(bytes.len());
            while end < bytes.len()
                && Kind::of(&bytes[end..(end + segment).min(bytes.len())]) == kind
            {
                end = (end + segment).min(bytes.len());
            }
            let run = &mut bytes[start..end];
            let packets = run.len().div_ceil(segment) as u64;
            match kind {
                Kind::Other => {
                    handed_over += packets;
                    wire.hand_over(from, run, segment);
                }
                Kind::Malformed => drops.push((FastDrop::Malformed, packets)),
                Kind::Channel(id) => {
                    if let Err(d) = self.forward(id, from, run, segment, now, wire) {
                        drops.push((d, packets));
                    }
                }
            }
            start = end;
        }
        if !drops.is_empty() || handed_over > 0 {
            let mut l = self.limiter.lock();
            for (d, n) in drops {
                *l.counters.fast_path_drops.entry(d.reason()).or_default() += n;
            }
            l.counters.fast_path_handed_over += handed_over;
        }
    }

    /// A run of relay-data on channel `id`.
    fn forward(
        &self,
        id: u64,
        from: SocketAddr,
        run: &mut [u8],
        segment: usize,
        now: Instant,
        wire: &mut impl FastWire,
    ) -> Result<(), FastDrop> {
        let (source, to) = self.table.route(id, from)?;
        let packets = run.len().div_ceil(segment);
        let payload = run.len().saturating_sub(packets * channel::HEADER_LEN);
        if self
            .limiter
            .allow_many(source, from.ip(), payload, packets, now)
        {
            channel::rewrite_as_relayed(run, segment, &source);
            wire.send_run(to, run, segment);
            return Ok(());
        }
        // Over the limit as a run: what fits goes on, one by one (the
        // limiter counts what does not; with relaying off, nothing fits).
        if packets == 1 || !self.limiter.relaying() {
            return Ok(());
        }
        for d in run.chunks_mut(segment) {
            let wg = d.len().saturating_sub(channel::HEADER_LEN);
            if self.limiter.allow(source, from.ip(), wg, now) {
                channel::rewrite_as_relayed(d, d.len(), &source);
                wire.send_run(to, d, d.len());
            }
        }
        Ok(())
    }
}

/// What one datagram is, for the fast path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Relay-data on this channel.
    Channel(u64),
    /// Starts as relay-data but cannot be.
    Malformed,
    /// Anything else: the core's.
    Other,
}

impl Kind {
    fn of(datagram: &[u8]) -> Kind {
        if datagram.first() != Some(&channel::RELAY_DATA) {
            return Kind::Other;
        }
        match channel::parse(datagram) {
            Some((id, _)) => Kind::Channel(id),
            None => Kind::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PublicKey;
    use crate::relay::RelayLimits;
    use crate::relay::channel::{HEADER_LEN, RELAYED_DATA, RelayChannels, frame};

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 10], port))
    }

    /// What the fast path asked of the wire, in order.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Vec<(SocketAddr, Vec<u8>, usize)>,
        handed: Vec<(SocketAddr, Vec<u8>, usize)>,
    }

    impl FastWire for Recorder {
        fn send_run(&mut self, to: SocketAddr, datagrams: &[u8], segment: usize) {
            self.sent.push((to, datagrams.to_vec(), segment));
        }
        fn hand_over(&mut self, from: SocketAddr, datagrams: &[u8], segment: usize) {
            self.handed.push((from, datagrams.to_vec(), segment));
        }
    }

    /// A relay with one channel, 42, between key 1 at addr(1) and key 2 at
    /// addr(2), and a second one, 43, between keys 1 and 3 (at addr(3)).
    fn relay(limits: RelayLimits) -> (RelayChannels, FastPath) {
        let mut r = RelayChannels::new();
        let now = Instant::now();
        r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), now, || 42);
        r.on_sealed_forward((key(1), addr(1)), (key(3), addr(3)), now, || 43);
        let fast = FastPath::new(Arc::new(r.table()), SharedLimiter::new(limits));
        (r, fast)
    }

    /// `n` relay-data datagrams on `channel`, each of `wg` WireGuard bytes.
    fn run(channel: u64, n: usize, wg: usize) -> Vec<u8> {
        let mut out = Vec::new();
        frame(&mut out, channel, &vec![4u8; n * wg], wg);
        out
    }

    #[test]
    fn a_run_on_one_channel_goes_to_the_other_end_in_one_send_naming_the_sender() {
        let (_, fast) = relay(RelayLimits::default());
        let mut wire = Recorder::default();
        let mut bytes = run(42, 5, 100);
        let len = bytes.len();
        fast.on_datagrams(
            addr(1),
            &mut bytes,
            100 + HEADER_LEN,
            Instant::now(),
            &mut wire,
        );
        assert_eq!(wire.sent.len(), 1, "one send for the run");
        let (to, data, segment) = &wire.sent[0];
        assert_eq!(
            (*to, data.len(), *segment),
            (addr(2), len, 100 + HEADER_LEN)
        );
        for d in data.chunks(*segment) {
            assert_eq!(d[0], RELAYED_DATA);
            assert_eq!(channel::parse(d).map(|(p, _)| p), Some(key(1).prefix()));
        }
        let c = fast.limiter.counters();
        assert_eq!((c.forwarded, c.forwarded_bytes), (5, 500));
    }

    #[test]
    fn a_mixed_buffer_is_cut_into_runs_kept_in_order() {
        let (_, fast) = relay(RelayLimits::default());
        let mut wire = Recorder::default();
        let seg = 100 + HEADER_LEN;
        // Two on 42, one control message of the same size, three on 43.
        let mut bytes = run(42, 2, 100);
        let mut control = vec![0x57u8; seg];
        control[0] = 1;
        bytes.extend_from_slice(&control);
        bytes.extend_from_slice(&run(43, 3, 100));
        fast.on_datagrams(addr(1), &mut bytes, seg, Instant::now(), &mut wire);
        let sends: Vec<_> = wire
            .sent
            .iter()
            .map(|(to, d, _)| (*to, d.len() / seg))
            .collect();
        assert_eq!(sends, vec![(addr(2), 2), (addr(3), 3)]);
        assert_eq!(wire.handed, vec![(addr(1), control, seg)]);
        assert_eq!(fast.limiter.counters().fast_path_handed_over, 1);
    }

    #[test]
    fn unknown_channels_strangers_and_malformed_datagrams_are_dropped_and_counted() {
        let (_, fast) = relay(RelayLimits::default());
        let mut wire = Recorder::default();
        let now = Instant::now();
        fast.on_datagrams(addr(1), &mut run(44, 3, 100), 109, now, &mut wire);
        fast.on_datagrams(addr(9), &mut run(42, 2, 100), 109, now, &mut wire);
        fast.on_datagrams(addr(1), &mut [channel::RELAY_DATA; 5], 5, now, &mut wire);
        assert!(wire.sent.is_empty() && wire.handed.is_empty());
        let drops = fast.limiter.counters().fast_path_drops;
        assert_eq!(drops.get("relay-data-unknown-channel"), Some(&3));
        assert_eq!(drops.get("relay-data-wrong-source"), Some(&2));
        assert_eq!(drops.get("relay-data-malformed"), Some(&1));
    }

    #[test]
    fn a_run_over_the_limit_goes_on_only_as_far_as_the_buckets_allow() {
        let limits = RelayLimits {
            bytes_per_sec: 1000,
            burst_bytes: 250,
            packets_per_sec: 100,
            total_sources: 4,
            enabled: true,
        };
        let (_, fast) = relay(limits);
        let mut wire = Recorder::default();
        // Five of 100 bytes against a burst of 250: two go, one by one.
        fast.on_datagrams(
            addr(1),
            &mut run(42, 5, 100),
            109,
            Instant::now(),
            &mut wire,
        );
        assert_eq!(wire.sent.len(), 2);
        assert!(
            wire.sent
                .iter()
                .all(|(to, d, _)| *to == addr(2) && d.len() == 109)
        );
        assert_eq!(fast.limiter.counters().forwarded, 2);
    }

    #[test]
    fn a_relay_with_relay_limit_0_forwards_nothing_on_its_channels() {
        let (_, fast) = relay(RelayLimits::from_mbit(0));
        let mut wire = Recorder::default();
        fast.on_datagrams(
            addr(1),
            &mut run(42, 3, 100),
            109,
            Instant::now(),
            &mut wire,
        );
        assert!(wire.sent.is_empty());
        assert_eq!(fast.limiter.counters().dropped_relay_off, 3);
    }

    #[test]
    fn a_closed_channel_stops_forwarding_once_the_new_table_is_published() {
        let (mut channels, mut fast) = relay(RelayLimits::default());
        let mut wire = Recorder::default();
        let t0 = Instant::now();
        channels.expire(t0 + channel::CHANNEL_IDLE);
        assert_ne!(
            fast.table_version(),
            channels.version(),
            "the table is stale"
        );
        fast.set_table(Arc::new(channels.table()));
        fast.on_datagrams(addr(1), &mut run(42, 1, 100), 109, t0, &mut wire);
        assert!(wire.sent.is_empty());
    }
}
