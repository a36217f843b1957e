//! Relay channels: relayed WireGuard traffic without per-hop sealing.
//!
//! A relayed flow starts sealed: the sender wraps each WireGuard datagram in
//! a `RelayWg` message, the relay opens it, checks the sender and its limits,
//! and seals it again for the receiver as `RelayedWg`. That costs three
//! XChaCha20-Poly1305 operations per datagram on top of WireGuard's own.
//!
//! Once the relay has forwarded a sealed datagram between two keys whose
//! addresses it has authenticated, it opens a *channel* for the pair: a random
//! 64-bit id, announced to both ends in sealed `RelayChannel` messages. From
//! then on an end sends *relay-data* datagrams, `0xFE | channel (8 bytes,
//! big-endian) | WireGuard datagram`; the relay rewrites the 9-byte header
//! into *relayed-data*, `0xFD | the sender's key, first 8 bytes | WireGuard
//! datagram`, and sends it to the other end, like a TURN channel:
//!
//! - the relay accepts a channel's datagram only from one of the two
//!   addresses it authenticated for the pair, and sends it to the other; the
//!   per-source limits apply as before;
//! - an end attributes relayed-data to the trusted peer whose key starts with
//!   the 8 bytes; WireGuard, end to end, authenticates the content (a forged
//!   or misattributed datagram fails its decryption and is dropped), so the
//!   relay still learns nothing and can change nothing, and a receiver needs
//!   no state to accept relayed data (it may just have restarted);
//! - the sender keeps sending one sealed datagram per [`SEALED_EVERY`] per
//!   channel; the relay answers with fresh announcements at most once per
//!   [`ANNOUNCE_EVERY`], so a relay that restarted (and forgot its channels)
//!   hands out new ones within a second, and ends forget channels not
//!   announced for [`CHANNEL_STALE`].
//!
//! The headers keep the datagrams of one size, so runs of them go through
//! the kernel in one system call (UDP GSO and GRO) at each hop.
//!
//! Both sides are free of I/O: [`RelayChannels`] is the relay's table,
//! [`ChannelBook`] an end's. The relay's table is the only authority on
//! channels: it publishes read-only snapshots of itself
//! ([`RelayChannels::table`], rebuilt when [`RelayChannels::version`]
//! moves) for the relay fast path ([`super::fastpath`]), which marks the
//! channels it forwards on as used; [`RelayChannels::expire`] takes those
//! marks for use, so a channel busy only on the fast path stays open.

use crate::keys::PublicKey;
use crate::proto::Message;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// First byte of a relay-data datagram (an end to its relay).
pub const RELAY_DATA: u8 = 0xFE;
/// First byte of a relayed-data datagram (a relay to an end).
pub const RELAYED_DATA: u8 = 0xFD;
/// Bytes before the WireGuard datagram: the type byte and the channel (or
/// the sender's key prefix).
pub const HEADER_LEN: usize = 9;

/// Channels a relay keeps; the least recently used goes first.
pub const MAX_CHANNELS: usize = 4096;
/// A channel unused this long is closed by the relay.
pub const CHANNEL_IDLE: Duration = Duration::from_secs(60);
/// A relay announces a channel again at most this often.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// An end sends one datagram per channel sealed this often (it refreshes
/// the announcements and recreates the channel at a relay that lost it).
pub const SEALED_EVERY: Duration = Duration::from_secs(1);
/// An end forgets a channel not announced for this long.
pub const CHANNEL_STALE: Duration = Duration::from_secs(5);
/// Channels an end keeps (peers × relays); the oldest goes first.
pub const MAX_BOOK: usize = 4096;

/// Splits a relay-data or relayed-data datagram into its header value (the
/// channel, or the sender's key prefix) and its WireGuard datagram.
pub fn parse(datagram: &[u8]) -> Option<(u64, &[u8])> {
    if datagram.len() < HEADER_LEN + 4 || !matches!(datagram[0], RELAY_DATA | RELAYED_DATA) {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&datagram[1..HEADER_LEN]);
    Some((u64::from_be_bytes(id), &datagram[HEADER_LEN..]))
}

/// Turns relay-data datagrams of `segment` bytes (the last may be shorter),
/// laid end to end, into relayed-data from `source`, in place.
pub fn rewrite_as_relayed(datagrams: &mut [u8], segment: usize, source: &PublicKey) {
    let prefix = source.prefix().to_be_bytes();
    for d in datagrams.chunks_mut(segment.max(1)) {
        if d.len() >= HEADER_LEN {
            d[0] = RELAYED_DATA;
            d[1..HEADER_LEN].copy_from_slice(&prefix);
        }
    }
}

/// Writes relay-data datagrams into `out` (cleared first), one per
/// WireGuard datagram in `datagrams` (laid end to end, each `segment` bytes
/// but the last): they stay of one size but the last, `segment +
/// HEADER_LEN`.
pub fn frame(out: &mut Vec<u8>, channel: u64, datagrams: &[u8], segment: usize) {
    out.clear();
    for d in datagrams.chunks(segment.max(1)) {
        out.push(RELAY_DATA);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(d);
    }
}

#[derive(Debug, Clone)]
struct Channel {
    /// The two ends, keys in byte order, with their authenticated addresses.
    ends: [(PublicKey, SocketAddr); 2],
    last_used: Instant,
    announced: Instant,
    /// Set by the fast path when it forwards on the channel; taken for use
    /// by [`RelayChannels::expire`].
    used: Arc<AtomicBool>,
}

/// A read-only snapshot of the relay's channels, as the fast path needs it:
/// each channel's two ends and its use mark.
#[derive(Debug, Default)]
pub struct ChannelTable {
    version: u64,
    routes: HashMap<u64, TableEntry>,
}

#[derive(Debug)]
struct TableEntry {
    ends: [(PublicKey, SocketAddr); 2],
    used: Arc<AtomicBool>,
}

impl ChannelTable {
    /// The [`RelayChannels::version`] it was taken at.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// As [`RelayChannels::route`]: the sender's key and the other end's
    /// address, for a datagram on `channel` from `source`; the channel is
    /// marked used.
    pub fn route(
        &self,
        channel: u64,
        source: SocketAddr,
    ) -> Result<(PublicKey, SocketAddr), ChannelDrop> {
        let e = self.routes.get(&channel).ok_or(ChannelDrop::Unknown)?;
        let route = pick(&e.ends, source)?;
        e.used.store(true, Ordering::Relaxed);
        Ok(route)
    }
}

/// The sender's key and the other end's address, if `source` is one of
/// the two ends' addresses.
fn pick(
    ends: &[(PublicKey, SocketAddr); 2],
    source: SocketAddr,
) -> Result<(PublicKey, SocketAddr), ChannelDrop> {
    let [a, b] = *ends;
    if a.1 == source {
        Ok((a.0, b.1))
    } else if b.1 == source {
        Ok((b.0, a.1))
    } else {
        Err(ChannelDrop::WrongSource)
    }
}

/// Why a relay-data datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelDrop {
    /// No such channel (never opened, closed, or the relay restarted).
    Unknown,
    /// The channel exists but the datagram came from neither end's address.
    WrongSource,
}

impl ChannelDrop {
    pub fn reason(self) -> &'static str {
        match self {
            ChannelDrop::Unknown => "relay-data-unknown-channel",
            ChannelDrop::WrongSource => "relay-data-wrong-source",
        }
    }
}

/// The relay's channels.
#[derive(Debug, Default)]
pub struct RelayChannels {
    by_id: HashMap<u64, Channel>,
    by_pair: BTreeMap<(PublicKey, PublicKey), u64>,
    /// Moves whenever a channel opens, closes or an end moves.
    version: u64,
}

fn ordered(a: PublicKey, b: PublicKey) -> (PublicKey, PublicKey) {
    if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    }
}

impl RelayChannels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Moves whenever what [`RelayChannels::table`] returns would change
    /// (a channel opened or closed, an end moved).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A snapshot of the channels for the fast path.
    pub fn table(&self) -> ChannelTable {
        ChannelTable {
            version: self.version,
            routes: self
                .by_id
                .iter()
                .map(|(id, ch)| {
                    let entry = TableEntry {
                        ends: ch.ends,
                        used: Arc::clone(&ch.used),
                    };
                    (*id, entry)
                })
                .collect(),
        }
    }

    /// The relay just forwarded a sealed WireGuard datagram from `from` to
    /// `to`, both at addresses it authenticated. Opens the pair's channel if
    /// needed, and returns the announcements to send (to each end: the
    /// other end and the channel), when the channel is new, an end moved,
    /// or the last announcement is [`ANNOUNCE_EVERY`] old.
    pub fn on_sealed_forward(
        &mut self,
        from: (PublicKey, SocketAddr),
        to: (PublicKey, SocketAddr),
        now: Instant,
        random: impl FnOnce() -> u64,
    ) -> Vec<(PublicKey, SocketAddr, Message)> {
        if from.0 == to.0 {
            return Vec::new();
        }
        let pair = ordered(from.0, to.0);
        let ends = if pair.0 == from.0 {
            [from, to]
        } else {
            [to, from]
        };
        let id = match self.by_pair.get(&pair).copied() {
            Some(id) => {
                let Some(ch) = self.by_id.get_mut(&id) else {
                    return Vec::new();
                };
                let moved = ch.ends != ends;
                if moved {
                    self.version += 1;
                }
                ch.ends = ends;
                ch.last_used = now;
                if !moved && now.saturating_duration_since(ch.announced) < ANNOUNCE_EVERY {
                    return Vec::new();
                }
                ch.announced = now;
                id
            }
            None => self.open(pair, ends, now, random),
        };
        // Both ends may send on it, each towards the other.
        vec![
            (
                to.0,
                to.1,
                Message::RelayChannel {
                    peer: from.0,
                    channel: id,
                },
            ),
            (
                from.0,
                from.1,
                Message::RelayChannel {
                    peer: to.0,
                    channel: id,
                },
            ),
        ]
    }

    /// Opens a channel for `pair` under a fresh non-zero id.
    fn open(
        &mut self,
        pair: (PublicKey, PublicKey),
        ends: [(PublicKey, SocketAddr); 2],
        now: Instant,
        random: impl FnOnce() -> u64,
    ) -> u64 {
        if self.by_id.len() >= MAX_CHANNELS {
            self.evict_oldest();
        }
        let mut id = random();
        while id == 0 || self.by_id.contains_key(&id) {
            id = id.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        self.by_id.insert(
            id,
            Channel {
                ends,
                last_used: now,
                announced: now,
                used: Arc::new(AtomicBool::new(false)),
            },
        );
        self.by_pair.insert(pair, id);
        self.version += 1;
        id
    }

    /// Where a relay-data datagram on `channel` from `source` goes: the
    /// sender's key (for the limits) and the other end's address.
    pub fn route(
        &mut self,
        channel: u64,
        source: SocketAddr,
        now: Instant,
    ) -> Result<(PublicKey, SocketAddr), ChannelDrop> {
        let ch = self.by_id.get_mut(&channel).ok_or(ChannelDrop::Unknown)?;
        let route = pick(&ch.ends, source)?;
        ch.last_used = now;
        Ok(route)
    }

    /// `key` now talks from `addr` (an authenticated message proved it):
    /// its channels follow it.
    pub fn rebind(&mut self, key: &PublicKey, addr: SocketAddr) {
        for ch in self.by_id.values_mut() {
            for end in &mut ch.ends {
                if end.0 == *key && end.1 != addr {
                    end.1 = addr;
                    self.version += 1;
                }
            }
        }
    }

    /// Closes the channels idle for [`CHANNEL_IDLE`]; a channel the fast
    /// path marked used since the last call counts as used `now`.
    pub fn expire(&mut self, now: Instant) {
        let by_pair = &mut self.by_pair;
        let before = self.by_id.len();
        self.by_id.retain(|_, ch| {
            if ch.used.swap(false, Ordering::Relaxed) {
                ch.last_used = now;
            }
            let keep = now.saturating_duration_since(ch.last_used) < CHANNEL_IDLE;
            if !keep {
                by_pair.remove(&(ch.ends[0].0, ch.ends[1].0));
            }
            keep
        });
        if self.by_id.len() != before {
            self.version += 1;
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((&id, ch)) = self
            .by_id
            .iter()
            .min_by_key(|(id, ch)| (ch.last_used, **id))
        {
            let pair = (ch.ends[0].0, ch.ends[1].0);
            self.by_id.remove(&id);
            self.by_pair.remove(&pair);
            self.version += 1;
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    channel: u64,
    announced: Instant,
    /// When the last datagram on this channel went out sealed.
    last_sealed: Option<Instant>,
}

/// An end's channels: which id to use towards a peer through a relay.
#[derive(Debug, Default)]
pub struct ChannelBook {
    outbound: BTreeMap<(PublicKey, PublicKey), Entry>,
}

/// How to send datagrams to a peer through a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The channel the relay announced: datagrams go as relay-data. `None`:
    /// every datagram goes sealed in a `RelayWg` message.
    pub channel: Option<u64>,
    /// Send the first datagram sealed (the periodic refresh).
    pub seal_first: bool,
}

impl Route {
    const SEALED: Route = Route {
        channel: None,
        seal_first: true,
    };
}

impl ChannelBook {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.outbound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.outbound.is_empty()
    }

    /// `relay` announced `channel` for our flow with `peer`.
    pub fn learn(&mut self, relay: PublicKey, peer: PublicKey, channel: u64, now: Instant) {
        if !self.outbound.contains_key(&(relay, peer)) && self.outbound.len() >= MAX_BOOK {
            let oldest = self
                .outbound
                .iter()
                .min_by_key(|(_, e)| e.announced)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.outbound.remove(&k);
            }
        }
        let last_sealed = self
            .outbound
            .get(&(relay, peer))
            .and_then(|old| old.last_sealed);
        self.outbound.insert(
            (relay, peer),
            Entry {
                channel,
                announced: now,
                last_sealed,
            },
        );
    }

    /// The channel to `peer` through `relay`, if one is announced and not
    /// stale (no refresh is counted).
    pub fn channel(&self, relay: PublicKey, peer: PublicKey, now: Instant) -> Option<u64> {
        self.outbound
            .get(&(relay, peer))
            .filter(|e| now.saturating_duration_since(e.announced) < CHANNEL_STALE)
            .map(|e| e.channel)
    }

    /// How to send to `peer` through `relay` now; a refresh it asks for
    /// counts as done.
    pub fn send_via(&mut self, relay: PublicKey, peer: PublicKey, now: Instant) -> Route {
        let Some(e) = self.outbound.get_mut(&(relay, peer)) else {
            return Route::SEALED;
        };
        if now.saturating_duration_since(e.announced) >= CHANNEL_STALE {
            self.outbound.remove(&(relay, peer));
            return Route::SEALED;
        }
        let seal_first = match e.last_sealed {
            Some(t) => now.saturating_duration_since(t) >= SEALED_EVERY,
            None => true,
        };
        if seal_first {
            e.last_sealed = Some(now);
        }
        Route {
            channel: Some(e.channel),
            seal_first,
        }
    }

    /// Forgets every channel through `relay` (it died, or was replaced).
    pub fn forget_relay(&mut self, relay: &PublicKey) {
        self.outbound.retain(|(r, _), _| r != relay);
    }

    /// Forgets channels not announced for [`CHANNEL_STALE`].
    pub fn expire(&mut self, now: Instant) {
        self.outbound
            .retain(|_, e| now.saturating_duration_since(e.announced) < CHANNEL_STALE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 10], port))
    }

    fn announced(msgs: &[(PublicKey, SocketAddr, Message)]) -> Vec<(PublicKey, PublicKey, u64)> {
        msgs.iter()
            .filter_map(|(to, _, m)| match m {
                Message::RelayChannel { peer, channel } => Some((*to, *peer, *channel)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn frame_and_parse_round_trip() {
        let mut out = Vec::new();
        frame(&mut out, 0x0102_0304_0506_0708, &[4, 0, 0, 0, 9], 5);
        assert_eq!(out[0], RELAY_DATA);
        assert_eq!(out.len(), HEADER_LEN + 5);
        assert_eq!(
            parse(&out),
            Some((0x0102_0304_0506_0708, &[4u8, 0, 0, 0, 9][..]))
        );
        assert_eq!(
            parse(&out[..HEADER_LEN + 3]),
            None,
            "too short for WireGuard"
        );
        // Three datagrams of 5, 5 and 4 bytes: three frames of 14, 14, 13.
        let wg: Vec<u8> = (0..14).map(|i| if i % 5 == 0 { 4 } else { i }).collect();
        frame(&mut out, 7, &wg, 5);
        assert_eq!(out.len(), 3 * HEADER_LEN + 14);
        let frames: Vec<_> = out
            .chunks(5 + HEADER_LEN)
            .map(|f| parse(f).map(|(c, d)| (c, d.to_vec())))
            .collect();
        let want = vec![
            Some((7, wg[..5].to_vec())),
            Some((7, wg[5..10].to_vec())),
            Some((7, wg[10..].to_vec())),
        ];
        assert_eq!(frames, want);
        assert_eq!(parse(&[0xFF; 20]), None, "not relay data");
        assert_eq!(parse(&[]), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_datagrams_parse_without_panic_and_keep_their_payload(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            if let Some((_, wg)) = parse(&bytes) {
                proptest::prop_assert_eq!(wg, &bytes[HEADER_LEN..]);
                proptest::prop_assert!(matches!(bytes[0], RELAY_DATA | RELAYED_DATA));
            }
            let mut copy = bytes.clone();
            rewrite_as_relayed(&mut copy, 7, &key(3));
            proptest::prop_assert_eq!(copy.len(), bytes.len());
        }
    }

    #[test]
    fn first_forward_opens_a_channel_announced_to_both_ends_receiver_first() {
        let mut r = RelayChannels::new();
        let now = Instant::now();
        let msgs = r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), now, || 42);
        let a = announced(&msgs);
        assert_eq!(a, vec![(key(2), key(1), 42), (key(1), key(2), 42)]);
        assert_eq!(msgs[0].1, addr(2));
        assert_eq!(msgs[1].1, addr(1));
        // The same pair within a second: no new announcement, same channel.
        assert!(
            r.on_sealed_forward((key(2), addr(2)), (key(1), addr(1)), now, || 7)
                .is_empty()
        );
        assert_eq!(r.len(), 1);
        // After a second: announced again, same id.
        let later = now + ANNOUNCE_EVERY;
        let again =
            announced(&r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), later, || 7));
        assert_eq!(again, vec![(key(2), key(1), 42), (key(1), key(2), 42)]);
    }

    #[test]
    fn a_channel_forwards_between_its_two_addresses_only() {
        let mut r = RelayChannels::new();
        let now = Instant::now();
        r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), now, || 42);
        assert_eq!(r.route(42, addr(1), now), Ok((key(1), addr(2))));
        assert_eq!(r.route(42, addr(2), now), Ok((key(2), addr(1))));
        assert_eq!(r.route(42, addr(3), now), Err(ChannelDrop::WrongSource));
        assert_eq!(r.route(43, addr(1), now), Err(ChannelDrop::Unknown));
    }

    #[test]
    fn an_end_that_moves_takes_its_channels_along() {
        let mut r = RelayChannels::new();
        let now = Instant::now();
        r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), now, || 42);
        r.rebind(&key(2), addr(20));
        assert_eq!(r.route(42, addr(1), now), Ok((key(1), addr(20))));
        assert_eq!(r.route(42, addr(2), now), Err(ChannelDrop::WrongSource));
        // A sealed forward from a new address re-announces at once.
        let msgs = r.on_sealed_forward((key(1), addr(10)), (key(2), addr(20)), now, || 7);
        assert_eq!(announced(&msgs).len(), 2);
        assert_eq!(r.route(42, addr(10), now), Ok((key(1), addr(20))));
    }

    #[test]
    fn idle_channels_close_and_the_table_is_bounded() {
        let mut r = RelayChannels::new();
        let t0 = Instant::now();
        r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), t0, || 42);
        r.expire(t0 + CHANNEL_IDLE);
        assert!(r.is_empty());
        assert_eq!(r.route(42, addr(1), t0), Err(ChannelDrop::Unknown));
        // A zero or colliding random id is replaced.
        let zero = announced(&r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), t0, || 0));
        assert_ne!(zero[0].2, 0);
        let taken = zero[0].2;
        let other =
            announced(&r.on_sealed_forward((key(3), addr(3)), (key(4), addr(4)), t0, || taken));
        assert_ne!(other[0].2, taken);
        assert_eq!(r.len(), 2);
        let mut big = RelayChannels::new();
        for i in 0..(MAX_CHANNELS + 10) {
            let mut a = [0u8; 32];
            a[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let mut b = a;
            b[31] = 1;
            let port = (i % 60_000) as u16;
            let t = t0 + Duration::from_millis(i as u64);
            big.on_sealed_forward(
                (PublicKey(a), addr(port)),
                (PublicKey(b), addr(port + 1)),
                t,
                || i as u64 + 1,
            );
        }
        assert_eq!(big.len(), MAX_CHANNELS);
        // The least recently used went first.
        assert_eq!(big.route(1, addr(0), t0), Err(ChannelDrop::Unknown));
        assert!(
            big.route(
                MAX_CHANNELS as u64 + 10,
                addr((MAX_CHANNELS + 9) as u16),
                t0
            )
            .is_ok()
        );
    }

    #[test]
    fn the_published_table_routes_as_the_relay_does_and_follows_its_changes() {
        let mut r = RelayChannels::new();
        let now = Instant::now();
        let v0 = r.version();
        r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), now, || 42);
        assert_ne!(r.version(), v0, "a new channel is a new version");
        let t = r.table();
        assert_eq!(t.version(), r.version());
        assert_eq!(t.route(42, addr(1)), Ok((key(1), addr(2))));
        assert_eq!(t.route(42, addr(2)), Ok((key(2), addr(1))));
        assert_eq!(t.route(42, addr(3)), Err(ChannelDrop::WrongSource));
        assert_eq!(t.route(43, addr(1)), Err(ChannelDrop::Unknown));
        // Traffic that changes nothing keeps the version.
        let v1 = r.version();
        r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), now, || 7);
        r.rebind(&key(2), addr(2));
        assert_eq!(r.version(), v1);
        // An end that moves is a new version; the old snapshot is stale.
        r.rebind(&key(2), addr(20));
        assert_ne!(r.version(), v1);
        assert_eq!(r.table().route(42, addr(1)), Ok((key(1), addr(20))));
    }

    #[test]
    fn a_channel_busy_on_the_fast_path_only_stays_open_and_an_idle_one_closes() {
        let mut r = RelayChannels::new();
        let t0 = Instant::now();
        r.on_sealed_forward((key(1), addr(1)), (key(2), addr(2)), t0, || 42);
        r.on_sealed_forward((key(3), addr(3)), (key(4), addr(4)), t0, || 43);
        let t = r.table();
        // Only channel 42 carries traffic, on the fast path, each tick.
        let mut now = t0;
        while now < t0 + 2 * CHANNEL_IDLE {
            now += Duration::from_secs(1);
            assert!(t.route(42, addr(1)).is_ok());
            r.expire(now);
        }
        assert!(r.route(42, addr(1), now).is_ok(), "kept open by its use");
        assert_eq!(r.route(43, addr(3), now), Err(ChannelDrop::Unknown));
        assert_eq!(r.table().len(), 1, "the next snapshot lacks the closed one");
    }

    #[test]
    fn the_relay_names_the_sender_by_its_key_prefix() {
        let mut buf = Vec::new();
        let wg: Vec<u8> = (0..14).map(|i| if i % 5 == 0 { 4 } else { i }).collect();
        frame(&mut buf, 7, &wg, 5);
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        rewrite_as_relayed(&mut buf, 5 + HEADER_LEN, &PublicKey(k));
        for (i, d) in buf.chunks(5 + HEADER_LEN).enumerate() {
            assert_eq!(d[0], RELAYED_DATA);
            let (prefix, w) = parse(d).expect("relayed data");
            assert_eq!(prefix, 0x1122_3344_5566_7788);
            assert_eq!(w, &wg[i * 5..(i * 5 + 5).min(14)]);
        }
    }

    #[test]
    fn an_end_uses_the_channel_between_sealed_refreshes() {
        let mut b = ChannelBook::new();
        let t0 = Instant::now();
        let (relay, peer) = (key(9), key(2));
        let on = |seal_first| Route {
            channel: Some(42),
            seal_first,
        };
        assert_eq!(b.send_via(relay, peer, t0), Route::SEALED, "no channel yet");
        b.learn(relay, peer, 42, t0);
        assert_eq!(b.send_via(relay, peer, t0), on(true), "first use refreshes");
        assert_eq!(b.send_via(relay, peer, t0), on(false));
        assert_eq!(b.send_via(key(8), peer, t0), Route::SEALED, "another relay");
        let t1 = t0 + SEALED_EVERY;
        assert_eq!(b.send_via(relay, peer, t1), on(true), "refresh due");
        assert_eq!(b.send_via(relay, peer, t1), on(false));
        // Not announced again for CHANNEL_STALE: back to sealed, forgotten.
        let t2 = t0 + CHANNEL_STALE;
        assert_eq!(b.send_via(relay, peer, t2), Route::SEALED);
        assert!(b.is_empty());
    }

    #[test]
    fn a_new_announcement_replaces_the_old_channel() {
        let mut b = ChannelBook::new();
        let t0 = Instant::now();
        let (relay, peer) = (key(9), key(2));
        b.learn(relay, peer, 42, t0);
        b.learn(relay, peer, 43, t0);
        assert_eq!(b.send_via(relay, peer, t0).channel, Some(43));
        b.forget_relay(&relay);
        assert!(b.is_empty());
    }
}
