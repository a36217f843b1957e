//! Whether the relay in use for a peer delivers data, free of I/O.
//!
//! Owns, per peer and relay its traffic went through lately, when data was
//! first sent through that relay without anything from the peer arriving
//! through it since, and when it was last probed. Pairs, not peers: the
//! two ends of a relayed flow may each send through another relay, and
//! move between them, so what a relay delivered is judged per relay. A relay that answers its
//! own pings but drops what it should forward passes every liveness check
//! of [`super::RelayHealth`]; this watch catches it by what arrives.
//!
//! Promises: a peer that gets data through a relay and answers nothing
//! through it (a one-way flow) is probed end to end through the same relay
//! after [`PROBE_AFTER`], again every [`PROBE_EVERY`]; anything from the
//! peer through that relay (data or the probe's answer) clears the watch;
//! after [`DELIVERY_DEAD`] of silence, with a probe out for at least
//! [`PROBE_WAIT`], the relay is reported failed for that peer once, and is
//! remembered as failed for that peer for [`FAILED_FOR`] (the caller skips
//! it even when a fresh record of the peer lists it first).
//! A pair nothing was sent through for [`IDLE`] is forgotten.
//! Bounded: at most [`MAX_WATCHED`] pairs, new ones beyond are not watched;
//! at most [`MAX_FAILED_PER_PEER`] failed relays remembered per peer.
//!
//! Never: sends, decides where traffic goes next, or judges a relay for
//! other peers (the peer may be the one that is gone).

use crate::keys::PublicKey;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Silence through a relay, data going out, before the peer is probed.
pub const PROBE_AFTER: Duration = Duration::from_millis(500);
/// Probes of one peer at most this often.
pub const PROBE_EVERY: Duration = Duration::from_millis(300);
/// Silence after which the relay has failed for the peer.
pub const DELIVERY_DEAD: Duration = Duration::from_millis(1500);
/// A probe gets this long to come back before silence counts.
pub const PROBE_WAIT: Duration = Duration::from_millis(600);
/// Pairs watched at once (and peers with failed relays remembered).
pub const MAX_WATCHED: usize = 4096;
/// A pair nothing went through for this long is no longer watched.
pub const IDLE: Duration = Duration::from_secs(5);
/// A relay that failed a peer is not used for it again for this long.
pub const FAILED_FOR: Duration = Duration::from_secs(30);
/// Failed relays remembered per peer.
pub const MAX_FAILED_PER_PEER: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Watch {
    last_sent: Instant,
    /// Bytes of the last datagram sent: probes are as large.
    last_size: usize,
    /// First send since the peer was last heard through the relay.
    unanswered_since: Option<Instant>,
    /// First probe of this silence, and the last.
    first_probe: Option<Instant>,
    last_probe: Option<Instant>,
}

/// What the caller does for the watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryAction {
    /// Send `peer` a probe of `size` bytes (as large as its data) through
    /// `relay`, the way data goes.
    Probe {
        peer: PublicKey,
        relay: PublicKey,
        size: usize,
    },
    /// `relay` delivered nothing from `peer` for [`DELIVERY_DEAD`]: move
    /// the peer to another relay.
    Failed { peer: PublicKey, relay: PublicKey },
}

/// Delivery through the relays in use, per peer.
#[derive(Debug, Default)]
pub struct RelayDelivery {
    /// (peer, relay) -> its watch.
    watched: BTreeMap<(PublicKey, PublicKey), Watch>,
    /// Per peer: relays that failed it, and when.
    failed: BTreeMap<PublicKey, Vec<(PublicKey, Instant)>>,
}

impl RelayDelivery {
    pub fn new() -> Self {
        Self::default()
    }

    /// Data went to `peer` through `relay`, datagrams of `size` bytes.
    pub fn on_sent(&mut self, peer: PublicKey, relay: PublicKey, size: usize, now: Instant) {
        if !self.watched.contains_key(&(peer, relay)) && self.watched.len() >= MAX_WATCHED {
            return;
        }
        let w = self.watched.entry((peer, relay)).or_insert(Watch {
            last_sent: now,
            last_size: size,
            unanswered_since: None,
            first_probe: None,
            last_probe: None,
        });
        w.last_sent = now;
        w.last_size = size;
        w.unanswered_since.get_or_insert(now);
    }

    /// Something authentic from `peer` arrived through `relay`.
    pub fn on_heard(&mut self, peer: &PublicKey, relay: &PublicKey) {
        if let Some(w) = self.watched.get_mut(&(*peer, *relay)) {
            w.unanswered_since = None;
            w.first_probe = None;
            w.last_probe = None;
        }
    }

    /// How long data has gone to `peer` through `relay` with nothing heard
    /// back through it (`None` while answered, or when nothing was sent).
    pub fn unanswered_for(
        &self,
        peer: &PublicKey,
        relay: &PublicKey,
        now: Instant,
    ) -> Option<Duration> {
        let w = self.watched.get(&(*peer, *relay))?;
        w.unanswered_since.map(|t| now.saturating_duration_since(t))
    }

    /// Forgets the relays that failed `peer` (all of its relays did: the
    /// peer, not the relays, is the likelier fault; try them again).
    pub fn forgive(&mut self, peer: &PublicKey) {
        self.failed.remove(peer);
    }

    /// The relays that failed `peer` within [`FAILED_FOR`] of `now`.
    pub fn failed_for(&self, peer: &PublicKey, now: Instant) -> Vec<PublicKey> {
        self.failed.get(peer).map_or_else(Vec::new, |v| {
            v.iter()
                .filter(|(_, at)| now.saturating_duration_since(*at) < FAILED_FOR)
                .map(|(r, _)| *r)
                .collect()
        })
    }

    fn remember_failed(&mut self, peer: PublicKey, relay: PublicKey, now: Instant) {
        self.failed.retain(|_, v| {
            v.retain(|(_, at)| now.saturating_duration_since(*at) < FAILED_FOR);
            !v.is_empty()
        });
        if !self.failed.contains_key(&peer) && self.failed.len() >= MAX_WATCHED {
            return;
        }
        let v = self.failed.entry(peer).or_default();
        v.retain(|(r, _)| *r != relay);
        if v.len() >= MAX_FAILED_PER_PEER {
            v.remove(0);
        }
        v.push((relay, now));
    }

    /// Stops watching peers no longer relayed (`relayed`: the peers whose
    /// path goes through relays).
    pub fn retain(&mut self, relayed: &[PublicKey]) {
        self.watched.retain(|(peer, _), _| relayed.contains(peer));
    }

    /// Probes due and relays failed at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<DeliveryAction> {
        self.watched
            .retain(|_, w| now.saturating_duration_since(w.last_sent) < IDLE);
        let mut actions = Vec::new();
        let mut failed = Vec::new();
        for (&(peer, relay), w) in &mut self.watched {
            let Some(since) = w.unanswered_since else {
                continue;
            };
            let silent = now.saturating_duration_since(since);
            let probed_long_enough = w
                .first_probe
                .is_some_and(|t| now.saturating_duration_since(t) >= PROBE_WAIT);
            if silent >= DELIVERY_DEAD && probed_long_enough {
                failed.push((peer, relay));
                actions.push(DeliveryAction::Failed { peer, relay });
                continue;
            }
            let probe_due = w
                .last_probe
                .is_none_or(|t| now.saturating_duration_since(t) >= PROBE_EVERY);
            if silent >= PROBE_AFTER && probe_due {
                w.first_probe.get_or_insert(now);
                w.last_probe = Some(now);
                actions.push(DeliveryAction::Probe {
                    peer,
                    relay,
                    size: w.last_size,
                });
            }
        }
        for (peer, relay) in failed {
            self.watched.remove(&(peer, relay));
            self.remember_failed(peer, relay, now);
        }
        actions
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.watched.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn key() -> PublicKey {
        PrivateKey::generate().unwrap().public_key()
    }

    /// Runs `d` from `t0` for `ms`, sending to `peer` through `relay`
    /// every 100 ms; `answers(at)` says whether the peer's answer arrives
    /// then. Returns the actions with their times (ms since `t0`).
    fn drive(
        d: &mut RelayDelivery,
        t0: Instant,
        ms: u64,
        (peer, relay): (PublicKey, PublicKey),
        answers: impl Fn(u64) -> bool,
    ) -> Vec<(u64, DeliveryAction)> {
        let mut out = Vec::new();
        for t in (0..ms).step_by(50) {
            let now = t0 + Duration::from_millis(t);
            if t % 100 == 0 {
                d.on_sent(peer, relay, 100, now);
            }
            if answers(t) {
                d.on_heard(&peer, &relay);
            }
            out.extend(d.poll(now).into_iter().map(|a| (t, a)));
        }
        out
    }

    #[test]
    fn a_relay_that_delivers_nothing_fails_within_1_5_s_after_probes() {
        let (peer, relay) = (key(), key());
        let mut d = RelayDelivery::new();
        let acts = drive(&mut d, Instant::now(), 4000, (peer, relay), |_| false);
        let probes: Vec<u64> = acts
            .iter()
            .filter(|(_, a)| matches!(a, DeliveryAction::Probe { .. }))
            .map(|(t, _)| *t)
            .collect();
        let failed: Vec<u64> = acts
            .iter()
            .filter(|(_, a)| *a == DeliveryAction::Failed { peer, relay })
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(probes.first(), Some(&500), "first probe after 0.5 s");
        assert!(probes.len() >= 3, "{probes:?}");
        assert_eq!(failed.first(), Some(&1500), "failed after 1.5 s: {acts:?}");
        let later = Instant::now() + Duration::from_secs(5);
        assert_eq!(d.failed_for(&peer, later), vec![relay], "remembered");
        assert!(
            d.failed_for(&peer, later + FAILED_FOR).is_empty(),
            "for a while"
        );
    }

    #[test]
    fn a_peer_that_answers_only_probes_keeps_its_relay() {
        // A one-way flow: the peer says nothing but answers each probe
        // 50 ms after it.
        let (peer, relay) = (key(), key());
        let mut d = RelayDelivery::new();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut answer_at = None;
        for t in (0..10_000u64).step_by(50) {
            let now = t0 + Duration::from_millis(t);
            d.on_sent(peer, relay, 100, now);
            if answer_at == Some(t) {
                d.on_heard(&peer, &relay);
            }
            for a in d.poll(now) {
                if matches!(a, DeliveryAction::Probe { .. }) {
                    answer_at = Some(t + 50);
                }
                out.push(a);
            }
        }
        assert!(
            !out.iter()
                .any(|a| matches!(a, DeliveryAction::Failed { .. })),
            "{out:?}"
        );
        assert!(out.len() >= 10, "probed about once a second: {out:?}");
    }

    #[test]
    fn a_two_way_flow_needs_no_probe_and_each_relay_is_judged_on_its_own() {
        let (peer, relay, other) = (key(), key(), key());
        let mut d = RelayDelivery::new();
        let t0 = Instant::now();
        let acts = drive(&mut d, t0, 5000, (peer, relay), |t| t % 100 == 50);
        assert!(acts.is_empty(), "{acts:?}");
        // Sending through two relays in turn (the path moves between
        // them), answers coming only through `relay`: `other` fails.
        let mut failed = Vec::new();
        for t in (5000..9000u64).step_by(50) {
            let now = t0 + Duration::from_millis(t);
            let through = if (t / 500) % 2 == 0 { relay } else { other };
            d.on_sent(peer, through, 100, now);
            d.on_heard(&peer, &relay);
            failed.extend(d.poll(now).into_iter().filter_map(|a| match a {
                DeliveryAction::Failed { relay: r, .. } => Some(r),
                DeliveryAction::Probe { .. } => None,
            }));
        }
        assert_eq!(failed, vec![other]);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(d.failed_for(&peer, later), vec![other]);
    }

    #[test]
    fn a_relay_no_longer_used_is_not_probed() {
        let (peer, relay) = (key(), key());
        let mut d = RelayDelivery::new();
        let t0 = Instant::now();
        d.on_sent(peer, relay, 100, t0);
        assert!(d.poll(t0 + IDLE).is_empty());
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn the_watch_is_bounded_and_forgets_peers_no_longer_relayed() {
        let mut d = RelayDelivery::new();
        let now = Instant::now();
        let relay = key();
        let peers: Vec<PublicKey> = (0..MAX_WATCHED + 10).map(|_| key()).collect();
        for p in &peers {
            d.on_sent(*p, relay, 100, now);
        }
        assert_eq!(d.len(), MAX_WATCHED);
        d.retain(&[peers[0]]);
        assert_eq!(d.len(), 1);
    }
}
