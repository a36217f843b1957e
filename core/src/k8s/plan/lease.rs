//! Who holds the network's Lease, as values: from the Lease as last seen
//! (or none) and the time, the one step an agent takes (create it, take it,
//! renew it, or wait), the Lease it writes, and how long a holder may act
//! as one.
//!
//! Owns: the rules of the Lease (when it lapses, when its holder renews it,
//! what a claim writes, in which order the others take a lapsed one).
//! Promises: an agent takes a Lease only when it is missing, has no holder
//! or lapsed; the agents of a cluster do not all try at once when it
//! lapses: each waits its own [`takeover_delay`], spread over a window that
//! grows with the number of candidates (so about one tries per
//! [`STAGGER_PER_CANDIDATE`], and the first sees its write before most of
//! the others try); it renews its own every
//! [`RENEW_EVERY`], on a timer of its own, whatever its rounds do; it acts
//! as holder only until [`MARGIN`] before the Lease it last wrote would
//! lapse, so two agents never both act as holder while their clocks agree
//! within that margin. Never: I/O, the clock (callers pass `now`), the API
//! (the agent's lease keeper writes what [`claim`] gives).

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// How long the Lease lasts without renewal.
pub const LEASE_SECONDS: i32 = 20;
/// How often its holder renews it.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A holder stops acting as one this long before its Lease would lapse.
pub const MARGIN: Duration = Duration::from_secs(5);
/// How soon a failed write is tried again.
pub const RETRY: Duration = Duration::from_secs(1);

/// The spread of takeovers per candidate: N agents that see a lapsed
/// Lease try over a window of N times this (at most [`MAX_STAGGER`]).
pub const STAGGER_PER_CANDIDATE: Duration = Duration::from_millis(10);
/// The widest window of takeovers.
pub const MAX_STAGGER: Duration = Duration::from_secs(10);

/// The one thing to do about the Lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// There is none: create it, held by this agent.
    Create,
    /// It is free or lapsed: take it.
    Take,
    /// It is this agent's and a renewal is due.
    Renew,
    /// Nothing to write: look again after `after` (or when the Lease
    /// changes). `holder` is who holds it (this agent, another, nobody).
    Wait { holder: String, after: Duration },
}

/// When a Lease renewed at `renewed` for `seconds` lapses.
fn lapses(renewed: Timestamp, seconds: i32) -> Timestamp {
    renewed + SignedDuration::from_secs(i64::from(seconds.max(1)))
}

/// `to - from`, or zero when `to` is past.
fn until(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

/// How long after a Lease lapsed agent `me` waits before it tries to take
/// it, among `candidates` agents: a point of a window of
/// `candidates` x [`STAGGER_PER_CANDIDATE`] (at most [`MAX_STAGGER`]) drawn
/// from a hash of the agent's name and the lapsed Lease, so the order
/// changes from one takeover to the next and every agent computes it alone.
/// A lone candidate does not wait.
pub fn takeover_delay(me: &str, lapsed: &LeaseSpec, candidates: usize) -> Duration {
    let window = STAGGER_PER_CANDIDATE
        .saturating_mul(u32::try_from(candidates).unwrap_or(u32::MAX))
        .min(MAX_STAGGER);
    if candidates <= 1 || window.is_zero() {
        return Duration::ZERO;
    }
    // FNV-1a over the name, the holder and the renew time: stable across
    // processes and builds (the std hasher promises neither).
    let renewed = lapsed
        .renew_time
        .as_ref()
        .map(|t| t.0.as_nanosecond())
        .unwrap_or(0);
    let holder = lapsed.holder_identity.as_deref().unwrap_or("");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = me
        .bytes()
        .chain([0])
        .chain(holder.bytes())
        .chain([0])
        .chain(renewed.to_le_bytes());
    for b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let nanos = u128::from(h) * window.as_nanos() / (u128::from(u64::MAX) + 1);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// What agent `me`, one of `candidates` agents, does about the Lease it
/// last saw (`None`: there is none). `acting`: whether it acts as holder
/// now (an agent that finds the Lease in its name but does not act as
/// holder, having just restarted, renews it at once). Another's lapsed
/// Lease is taken only after this agent's [`takeover_delay`].
pub fn decide(
    lease: Option<&LeaseSpec>,
    me: &str,
    acting: bool,
    now: Timestamp,
    candidates: usize,
) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let seconds = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS);
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return Step::Take;
    };
    let lapse = lapses(renewed, seconds);
    if holder.is_empty() || (holder == me && now >= lapse) {
        return Step::Take;
    }
    if holder != me && now >= lapse {
        let delay = takeover_delay(me, spec, candidates);
        let turn = lapse + SignedDuration::try_from(delay).unwrap_or_default();
        if now >= turn {
            return Step::Take;
        }
        return Step::Wait {
            holder,
            after: until(now, turn),
        };
    }
    if holder == me {
        let due = renewed + SignedDuration::try_from(RENEW_EVERY).unwrap_or_default();
        if now >= due || !acting {
            return Step::Renew;
        }
        return Step::Wait {
            holder,
            after: until(now, due),
        };
    }
    Step::Wait {
        holder,
        after: until(now, lapse),
    }
}

/// The Lease spec `me` writes to create, take or renew `current`: held by
/// `me`, renewed `now`; a change of holder sets the acquire time and counts
/// a transition.
pub fn claim(current: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseSpec {
    let mut spec = current.cloned().unwrap_or_default();
    let taken_over = spec.holder_identity.as_deref() != Some(me);
    if current.is_none() {
        spec.lease_transitions = Some(0);
        spec.acquire_time = Some(MicroTime(now));
    } else if taken_over {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.acquire_time = Some(MicroTime(now));
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(LEASE_SECONDS);
    spec.renew_time = Some(MicroTime(now));
    spec
}

/// How long an agent whose write of the Lease was sent `since` ago (and
/// succeeded) may act as holder: until [`MARGIN`] before it lapses,
/// counted from when the write was sent.
pub fn acting_for(since: Duration) -> Duration {
    Duration::from_secs(LEASE_SECONDS.unsigned_abs().into())
        .saturating_sub(MARGIN)
        .saturating_sub(since)
}

/// Which of two sightings of the Lease is the newer: the one renewed last
/// (the watch may lag behind this agent's own last write, or be ahead of
/// it when another agent took over).
pub fn newer<'a>(a: Option<&'a LeaseSpec>, b: Option<&'a LeaseSpec>) -> Option<&'a LeaseSpec> {
    let renewed = |s: &LeaseSpec| s.renew_time.as_ref().map(|t| t.0);
    match (a, b) {
        (Some(x), Some(y)) if renewed(y) > renewed(x) => Some(y),
        (Some(x), _) => Some(x),
        (None, y) => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn held(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(at(renewed))),
            acquire_time: Some(MicroTime(at(0))),
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_lease_is_created() {
        assert_eq!(decide(None, "n1", false, at(0), 1), Step::Create);
    }

    #[test]
    fn a_lease_held_by_another_is_left_alone_until_it_lapses() {
        let lease = held("n2", 0);
        assert_eq!(
            decide(Some(&lease), "n1", true, at(15), 1),
            Step::Wait {
                holder: "n2".into(),
                after: Duration::from_secs(5)
            }
        );
        assert_eq!(decide(Some(&lease), "n1", true, at(20), 1), Step::Take);
    }

    #[test]
    fn a_lease_without_holder_or_renew_time_is_taken() {
        let mut lease = held("", 0);
        assert_eq!(decide(Some(&lease), "n1", true, at(1), 1), Step::Take);
        lease.holder_identity = Some("n2".into());
        lease.renew_time = None;
        assert_eq!(decide(Some(&lease), "n1", true, at(1), 1), Step::Take);
    }

    #[test]
    fn the_holder_renews_every_period_and_waits_in_between() {
        let lease = held("n1", 0);
        assert_eq!(
            decide(Some(&lease), "n1", true, at(2), 1),
            Step::Wait {
                holder: "n1".into(),
                after: Duration::from_secs(3)
            }
        );
        assert_eq!(decide(Some(&lease), "n1", true, at(5), 1), Step::Renew);
        assert_eq!(decide(Some(&lease), "n1", true, at(19), 1), Step::Renew);
    }

    #[test]
    fn a_restarted_holder_renews_its_lease_at_once() {
        assert_eq!(
            decide(Some(&held("n1", 0)), "n1", false, at(1), 1),
            Step::Renew
        );
    }

    #[test]
    fn a_holder_whose_lease_lapsed_takes_it_again() {
        assert_eq!(
            decide(Some(&held("n1", 0)), "n1", true, at(25), 1),
            Step::Take
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let taken = claim(Some(&held("n2", 0)), "n1", at(30));
        assert_eq!(taken.holder_identity.as_deref(), Some("n1"));
        assert_eq!(taken.lease_transitions, Some(3));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(taken.renew_time, Some(MicroTime(at(30))));
        let renewed = claim(Some(&held("n1", 0)), "n1", at(5));
        assert_eq!(renewed.lease_transitions, Some(2));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
        let created = claim(None, "n1", at(7));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(LEASE_SECONDS));
    }

    #[test]
    fn a_holder_stops_acting_a_margin_before_its_lease_lapses() {
        assert_eq!(acting_for(Duration::ZERO), Duration::from_secs(15));
        assert_eq!(acting_for(Duration::from_secs(4)), Duration::from_secs(11));
        assert_eq!(acting_for(Duration::from_secs(60)), Duration::ZERO);
    }

    #[test]
    fn a_thousand_agents_do_not_all_take_a_lapsed_lease_at_once() {
        let lease = held("n0", 0);
        let names: Vec<String> = (1..=1000).map(|i| format!("node-{i}")).collect();
        let delays: Vec<Duration> = names
            .iter()
            .map(|n| takeover_delay(n, &lease, names.len()))
            .collect();
        // Spread over the whole window: in any 100 ms of it, a few dozen
        // try, not a thousand.
        let window = MAX_STAGGER;
        assert!(delays.iter().all(|d| *d < window), "{delays:?}");
        for start in (0..100).map(|i| Duration::from_millis(i * 100)) {
            let end = start + Duration::from_millis(100);
            let at_once = delays.iter().filter(|d| **d >= start && **d < end).count();
            assert!(
                at_once <= 30,
                "{at_once} agents try within {start:?}..{end:?}"
            );
        }
        // The first tries within the first tens of milliseconds.
        let first = delays.iter().min().copied().unwrap_or(window);
        assert!(first < Duration::from_millis(100), "first after {first:?}");
        // decide follows the delay: one agent waits, then takes.
        let me = &names[0];
        let delay = takeover_delay(me, &lease, 1000);
        let lapse = LEASE_SECONDS as i64;
        assert!(delay > Duration::ZERO);
        assert_eq!(
            decide(Some(&lease), me, false, at(lapse), 1000),
            Step::Wait {
                holder: "n0".into(),
                after: delay
            }
        );
        let after = lapse + delay.as_secs() as i64 + 1;
        assert_eq!(decide(Some(&lease), me, false, at(after), 1000), Step::Take);
    }

    #[test]
    fn the_order_of_takeovers_changes_from_one_lapse_to_the_next() {
        let names: Vec<String> = (1..=50).map(|i| format!("node-{i}")).collect();
        let first = |lease: &LeaseSpec| {
            names
                .iter()
                .min_by_key(|n| takeover_delay(n, lease, names.len()))
                .cloned()
        };
        let firsts: std::collections::BTreeSet<_> =
            (0..10).map(|r| first(&held("n0", r * 30))).collect();
        assert!(firsts.len() > 3, "always the same few first: {firsts:?}");
    }

    #[test]
    fn a_lone_candidate_and_a_former_holder_take_a_lapsed_lease_at_once() {
        assert_eq!(takeover_delay("n1", &held("n2", 0), 1), Duration::ZERO);
        assert_eq!(
            decide(Some(&held("n2", 0)), "n1", false, at(20), 1),
            Step::Take
        );
        assert_eq!(
            decide(Some(&held("n1", 0)), "n1", true, at(20), 1000),
            Step::Take
        );
    }

    #[test]
    fn the_sighting_renewed_last_is_the_newer() {
        let (old, new) = (held("n1", 0), held("n2", 3));
        assert_eq!(newer(Some(&old), Some(&new)), Some(&new));
        assert_eq!(newer(Some(&new), Some(&old)), Some(&new));
        assert_eq!(newer(None, Some(&old)), Some(&old));
        assert_eq!(newer(Some(&old), None), Some(&old));
        assert_eq!(newer(None, None), None);
    }
}
