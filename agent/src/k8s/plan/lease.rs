//! Who holds the network's Lease, as values: from the Lease as last seen
//! (or none) and the time, the one step an agent takes (create it, take it,
//! renew it, or wait), the Lease it writes, and how long a holder may act
//! as one.
//!
//! Owns: the rules of the Lease (when it lapses, when its holder renews it,
//! what a claim writes). Promises: an agent takes a Lease only when it is
//! missing, has no holder or lapsed; it renews its own every
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

/// What agent `me` does about the Lease it last saw (`None`: there is
/// none). `acting`: whether it acts as holder now (an agent that finds the
/// Lease in its name but does not act as holder, having just restarted,
/// renews it at once).
pub fn decide(lease: Option<&LeaseSpec>, me: &str, acting: bool, now: Timestamp) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let seconds = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS);
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return Step::Take;
    };
    let lapse = lapses(renewed, seconds);
    if holder.is_empty() || now >= lapse {
        return Step::Take;
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
        assert_eq!(decide(None, "n1", false, at(0)), Step::Create);
    }

    #[test]
    fn a_lease_held_by_another_is_left_alone_until_it_lapses() {
        let lease = held("n2", 0);
        assert_eq!(
            decide(Some(&lease), "n1", true, at(15)),
            Step::Wait {
                holder: "n2".into(),
                after: Duration::from_secs(5)
            }
        );
        assert_eq!(decide(Some(&lease), "n1", true, at(20)), Step::Take);
    }

    #[test]
    fn a_lease_without_holder_or_renew_time_is_taken() {
        let mut lease = held("", 0);
        assert_eq!(decide(Some(&lease), "n1", true, at(1)), Step::Take);
        lease.holder_identity = Some("n2".into());
        lease.renew_time = None;
        assert_eq!(decide(Some(&lease), "n1", true, at(1)), Step::Take);
    }

    #[test]
    fn the_holder_renews_every_period_and_waits_in_between() {
        let lease = held("n1", 0);
        assert_eq!(
            decide(Some(&lease), "n1", true, at(2)),
            Step::Wait {
                holder: "n1".into(),
                after: Duration::from_secs(3)
            }
        );
        assert_eq!(decide(Some(&lease), "n1", true, at(5)), Step::Renew);
        assert_eq!(decide(Some(&lease), "n1", true, at(19)), Step::Renew);
    }

    #[test]
    fn a_restarted_holder_renews_its_lease_at_once() {
        assert_eq!(
            decide(Some(&held("n1", 0)), "n1", false, at(1)),
            Step::Renew
        );
    }

    #[test]
    fn a_holder_whose_lease_lapsed_takes_it_again() {
        assert_eq!(decide(Some(&held("n1", 0)), "n1", true, at(25)), Step::Take);
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
    fn the_sighting_renewed_last_is_the_newer() {
        let (old, new) = (held("n1", 0), held("n2", 3));
        assert_eq!(newer(Some(&old), Some(&new)), Some(&new));
        assert_eq!(newer(Some(&new), Some(&old)), Some(&new));
        assert_eq!(newer(None, Some(&old)), Some(&old));
        assert_eq!(newer(Some(&old), None), Some(&old));
        assert_eq!(newer(None, None), None);
    }
}
