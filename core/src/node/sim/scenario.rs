//! Generated networks: a topology, a start order and a fault schedule from
//! one seed, run on the simulated internet with traffic between every
//! trusted pair, and the properties each run must keep.
//!
//! Contract:
//! - [`generate`] is a pure function of the seed; [`run`] builds the
//!   network from the same seed, so `net-sim --seed S --one` replays the
//!   network a failure names.
//! - [`run`] checks, and reports as violations (never panics on them):
//!   every trusted pair delivers data within [`Bounds::first`] of both
//!   being up, and within [`Bounds::fault`] after each fault while a public
//!   node remains; a pair with a trusted public side, or two
//!   endpoint-independent mappings that can reach each other, ends direct;
//!   an untrusted node's data plane never gets data, and no relay misnames
//!   a sender; each node's DHT table, relays and overlay stay within their
//!   caps. [`run_caught`] turns a panic into a violation.
//! - What it measures comes back as values ([`Outcome`]); it prints
//!   nothing.

use super::Rng;
use super::dataplane::{self, MakeDataplane};
use super::net::{Attach, Dependence, HostSpec, LinkModel, NatModel, Net, PortAlloc, Topology};
use crate::node::overlay::PeerPath;
use std::fmt;
use std::time::{Duration, Instant};

/// The step of the traffic: pairs waiting for data send one datagram per
/// step, the others one per second.
const STEP: Duration = Duration::from_millis(100);
const IDLE_PROBE_EVERY: u32 = 10;

/// A fault of a generated network's schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The bootstrap dies and comes back, with a fresh state, after `down`.
    RestartBootstrap { down: Duration },
    /// The relay in use of a relayed pair (or else any public node) dies
    /// for good; only when another public node remains.
    KillRelayInUse,
    /// The router in front of `node` forgets its mappings.
    FlushNat { node: usize },
    /// `node` is cut from the internet for `down`, then healed.
    Partition { node: usize, down: Duration },
}

/// One generated network.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub topology: Topology,
    /// When each host starts.
    pub starts: Vec<Duration>,
    /// Applied one after the other, each once the network is settled.
    pub faults: Vec<Fault>,
}

/// The bounds the properties are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// First data of a pair after both are up.
    pub first: Duration,
    /// Data again after a fault ends (restart, heal) or strikes (a kill
    /// with another public node up, a flush).
    pub fault: Duration,
    /// A pair that can go direct is direct this long after both are up.
    pub direct: Duration,
    /// Quiet time before the next fault.
    pub quiet: Duration,
    /// No fault before every node has run this long: the nodes must have
    /// met the public nodes that started last (a node behind a NAT learns
    /// of them only through lookups; see docs/simulator.md).
    pub converge: Duration,
    /// Start times and fault durations are divided by this (1: as
    /// generated).
    pub compress: u32,
    /// End a run as soon as the faults are done and every pair that must
    /// go direct is (rather than after `direct` for every pair): the CI
    /// test's profile; the "% direct" of the other pairs is then a lower
    /// bound.
    pub early_end: bool,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            first: Duration::from_secs(10),
            fault: Duration::from_secs(10),
            direct: Duration::from_secs(10),
            quiet: Duration::from_secs(2),
            converge: Duration::from_secs(3),
            compress: 1,
            early_end: false,
        }
    }
}

impl Bounds {
    /// The CI test's profile: the same bounds, shorter runs.
    pub fn quick() -> Bounds {
        Bounds {
            quiet: Duration::from_millis(500),
            converge: Duration::from_secs(2),
            compress: 3,
            early_end: true,
            ..Bounds::default()
        }
    }
}

/// What one run measured and found wrong.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub seed: u64,
    /// A one-line description of the network.
    pub summary: String,
    /// Time from both up to first data, per ordered pair, and whether that
    /// first datagram came through a relay.
    pub first_data: Vec<(Duration, bool)>,
    /// The same, counted from when both ends and the bootstrap run (the
    /// network is up): start order taken out.
    pub first_data_running: Vec<(Duration, bool)>,
    /// Time from both up to a direct path both ways, per pair that got one.
    pub to_direct: Vec<Duration>,
    /// Time to data again after a fault, by fault kind.
    pub failovers: Vec<(&'static str, Duration)>,
    /// Per unordered trusted pair: the NAT pair's label, whether it ended
    /// direct, whether it must.
    pub direct_by_pair: Vec<(String, bool, bool)>,
    pub violations: Vec<String>,
    /// The last lines of the event trace.
    pub trace: Vec<String>,
    pub simulated: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {}: {}", self.seed, self.summary)?;
        for v in &self.violations {
            writeln!(f, "  VIOLATION {v}")?;
        }
        Ok(())
    }
}

fn random_dependence(rng: &mut Rng) -> Dependence {
    match rng.below(3) {
        0 => Dependence::EndpointIndependent,
        1 => Dependence::AddressDependent,
        _ => Dependence::AddressAndPortDependent,
    }
}

fn random_nat(rng: &mut Rng) -> NatModel {
    NatModel {
        mapping: random_dependence(rng),
        filtering: random_dependence(rng),
        ports: if rng.chance(0.5) {
            PortAlloc::Random
        } else {
            PortAlloc::Sequential
        },
        timeout: Duration::from_secs(rng.between(30, 120)),
        hairpin: rng.chance(0.5),
    }
}

/// The network of `seed`: 1-3 public nodes (host 0 the bootstrap, a third
/// of the networks with no other), 2-8 nodes behind NATs of random kinds
/// (a quarter of the networks with a carrier-grade NAT in front of some),
/// start times within 3 s, and (in most networks) one or two faults.
pub fn generate(seed: u64) -> Scenario {
    let mut rng = Rng::new(seed);
    let publics = 1 + rng.below(3);
    let behind = 2 + rng.below(7);
    let cgnats = if rng.chance(0.25) {
        vec![random_nat(&mut rng)]
    } else {
        Vec::new()
    };
    let mut hosts = vec![HostSpec {
        attach: Attach::Public,
        trusted: false,
    }];
    for _ in 1..publics {
        hosts.push(HostSpec {
            attach: Attach::Public,
            trusted: rng.chance(0.5),
        });
    }
    for _ in 0..behind {
        let cgnat = (!cgnats.is_empty() && rng.chance(0.5)).then_some(0);
        hosts.push(HostSpec {
            attach: Attach::Behind {
                home: random_nat(&mut rng),
                cgnat,
            },
            trusted: true,
        });
    }
    let link = LinkModel {
        hop: Duration::from_millis(20),
        jitter: Duration::from_millis(rng.below(6) as u64),
        loss: if rng.chance(0.3) {
            rng.below(11) as f64 / 1000.0
        } else {
            0.0
        },
    };
    let starts = hosts
        .iter()
        .map(|_| Duration::from_millis(rng.below(3000) as u64))
        .collect();
    let mut faults = Vec::new();
    let n = hosts.len();
    let trusted: Vec<usize> = (1..n).filter(|i| hosts[*i].trusted).collect();
    for _ in 0..rng.below(3) {
        let f = match rng.below(4) {
            0 => Fault::RestartBootstrap {
                down: Duration::from_millis(rng.between(500, 4000)),
            },
            1 => Fault::KillRelayInUse,
            2 => Fault::FlushNat {
                node: publics + rng.below(behind),
            },
            _ => Fault::Partition {
                node: trusted[rng.below(trusted.len())],
                down: Duration::from_millis(rng.between(1000, 5000)),
            },
        };
        faults.push(f);
    }
    Scenario {
        seed,
        topology: Topology {
            hosts,
            cgnats,
            link,
        },
        starts,
        faults,
    }
}

/// How a host is reached, for the "% direct by NAT pair" table.
fn nat_label(t: &Topology, i: usize) -> String {
    match t.hosts[i].attach {
        Attach::Public => "public".into(),
        Attach::Behind { home, cgnat } => {
            let mut s = format!("{}M", home.mapping.short());
            if let Some(c) = cgnat {
                s += &format!("+cgn({}M)", t.cgnats[c].mapping.short());
            }
            s
        }
    }
}

/// Whether today's punching must open a direct path between `i` and `j`:
/// a public side, or endpoint-independent mappings all the way on both
/// sides that can reach each other (two hosts behind one carrier-grade NAT
/// need it to hairpin).
fn must_go_direct(t: &Topology, i: usize, j: usize) -> bool {
    let eim = |h: usize| match t.hosts[h].attach {
        Attach::Public => true,
        Attach::Behind { home, cgnat } => {
            home.mapping == Dependence::EndpointIndependent
                && cgnat.is_none_or(|c| t.cgnats[c].mapping == Dependence::EndpointIndependent)
        }
    };
    let cgnat = |h: usize| match t.hosts[h].attach {
        Attach::Behind { cgnat, .. } => cgnat,
        Attach::Public => None,
    };
    let public = |h: usize| t.hosts[h].attach == Attach::Public;
    if let (Some(a), Some(b)) = (cgnat(i), cgnat(j))
        && a == b
        && !t.cgnats[a].hairpin
    {
        return false;
    }
    public(i) || public(j) || (eim(i) && eim(j))
}

/// One ordered pair's traffic state.
struct PairState {
    from: usize,
    to: usize,
    /// Waiting for data sent at or after this instant, and why.
    waiting: Option<(Instant, &'static str)>,
    both_up: Option<Instant>,
    /// Past its bound: since when, and the violation to complete when the
    /// data comes after all.
    overdue: Option<(Instant, usize)>,
}

/// What the run loop is doing about faults.
enum Pending {
    /// Bring a node back (or heal it) at this instant.
    Restart(usize, Instant, &'static str),
    Heal(usize, Instant),
}

/// Runs `scn`, checking its properties within `bounds`, with the fake
/// data plane.
pub fn run(scn: &Scenario, bounds: Bounds, verbose: bool) -> Outcome {
    run_with(scn, bounds, verbose, dataplane::fake)
}

/// [`run`] with the data planes `plane` builds.
pub fn run_with(scn: &Scenario, bounds: Bounds, verbose: bool, plane: MakeDataplane) -> Outcome {
    let t = &scn.topology;
    let mut net = Net::build_with(t, scn.seed ^ 0x0005_EED0_F0E7, plane);
    net.verbose = verbose;
    let n = t.hosts.len();
    let public: Vec<usize> = (0..n)
        .filter(|i| t.hosts[*i].attach == Attach::Public)
        .collect();
    let trusted: Vec<usize> = (0..n).filter(|i| net.nodes[*i].trusted).collect();
    let mut out = Outcome {
        seed: scn.seed,
        summary: summary(scn),
        ..Outcome::default()
    };
    let mut pairs: Vec<PairState> = Vec::new();
    for &i in &trusted {
        for &j in &trusted {
            if i != j {
                pairs.push(PairState {
                    from: i,
                    to: j,
                    waiting: None,
                    both_up: None,
                    overdue: None,
                });
            }
        }
    }
    let mut direct_at: Vec<Option<Duration>> = vec![None; pairs.len()];
    let mut started = vec![false; n];
    let mut faults = scn.faults.iter();
    let mut pending: Option<Pending> = None;
    let mut faults_done = false;
    let mut quiet_since = net.now.mono;
    // When the bootstrap (node 0) first ran.
    let mut boot_up: Option<Instant> = None;
    let mut step: u32 = 0;
    let compress = bounds.compress.max(1);
    let starts: Vec<Duration> = scn.starts.iter().map(|s| *s / compress).collect();
    let last_start = starts.iter().max().copied().unwrap_or_default();
    // Simulated time allowed in all: starts, each fault and its recovery.
    let limit = last_start
        + bounds.first
        + bounds.direct
        + (bounds.fault + Duration::from_secs(7)) * scn.faults.len() as u32;
    loop {
        let now = net.now.mono;
        let elapsed = net.elapsed();
        for (i, s) in started.iter_mut().enumerate() {
            if !*s && elapsed >= starts[i] {
                *s = true;
                net.start(i);
            }
        }
        if boot_up.is_none() && net.is_up(0) {
            boot_up = Some(now);
        }
        // Pairs whose ends are both up for the first time.
        for p in pairs.iter_mut() {
            if p.both_up.is_none() && net.is_up(p.from) && net.is_up(p.to) {
                p.both_up = Some(now);
                p.waiting = Some((now, "first"));
            }
        }
        // Faults: one at a time, once every pair has its data and the
        // network was quiet for 2 s.
        match pending {
            Some(Pending::Restart(i, at, kind)) if now >= at => {
                net.start(i);
                pending = None;
                wait_all(&mut pairs, &net, now, kind);
            }
            Some(Pending::Heal(i, at)) if now >= at => {
                net.set_cut(i, false);
                pending = None;
                wait_all(&mut pairs, &net, now, "partition-healed");
            }
            Some(_) => {}
            None => {
                let settled = started.iter().all(|s| *s)
                    && pairs.iter().all(|p| p.waiting.is_none())
                    && now - quiet_since >= bounds.quiet
                    && elapsed >= last_start + bounds.converge;
                if settled && !faults_done {
                    match faults.next() {
                        Some(f) => {
                            pending = apply(&mut net, *f, compress, &public, &mut pairs, now);
                        }
                        None => faults_done = true,
                    }
                    quiet_since = now;
                }
            }
        }
        // Traffic.
        for p in pairs.iter() {
            if !net.is_up(p.from) || !net.is_up(p.to) {
                continue;
            }
            if p.waiting.is_some() || step.is_multiple_of(IDLE_PROBE_EVERY) {
                net.send_data(p.from, p.to, (step & 0xff) as u8);
            }
        }
        net.run_for(STEP);
        step += 1;
        let now = net.now.mono;
        for a in net.take_arrivals() {
            if let Some(p) = pairs.iter_mut().find(|p| p.from == a.from && p.to == a.to)
                && let Some((since, v)) = p.overdue
                && a.sent >= since
            {
                out.violations[v] +=
                    &format!(" (data came {:.1} s after)", (a.at - since).as_secs_f64());
                p.overdue = None;
            }
            if let Some(p) = pairs.iter_mut().find(|p| p.from == a.from && p.to == a.to)
                && let Some((since, kind)) = p.waiting
                && a.sent >= since
            {
                let took = a.at - since;
                if kind == "first" {
                    out.first_data.push((took, a.relayed));
                    let running = boot_up.map_or(since, |b| since.max(b));
                    out.first_data_running
                        .push((a.at.saturating_duration_since(running), a.relayed));
                } else {
                    out.failovers.push((kind, took));
                }
                p.waiting = None;
                quiet_since = quiet_since.max(a.at);
            }
        }
        for (k, p) in pairs.iter_mut().enumerate() {
            if let Some((since, kind)) = p.waiting {
                let bound = if kind == "first" {
                    bounds.first
                } else {
                    bounds.fault
                };
                if now - since > bound {
                    out.violations.push(format!(
                        "n{} -> n{}: no data within {:?} ({kind}, since {:.1} s)",
                        p.from,
                        p.to,
                        bound,
                        (since - (now - net.elapsed())).as_secs_f64()
                    ));
                    p.waiting = None;
                    p.overdue = Some((since, out.violations.len() - 1));
                }
            }
            if direct_at[k].is_none()
                && p.from < p.to
                && let Some(up) = p.both_up
                && both_direct(&net, p.from, p.to)
            {
                direct_at[k] = Some(now - up);
            }
        }
        let all_up_long = pairs
            .iter()
            .all(|p| p.both_up.is_some_and(|u| now - u >= bounds.direct));
        let idle = pairs.iter().all(|p| p.waiting.is_none()) && pending.is_none();
        let directs_done = bounds.early_end
            && pairs.iter().all(|p| {
                p.both_up.is_some()
                    && (p.from > p.to
                        || !must_go_direct(t, p.from, p.to)
                        || both_direct(&net, p.from, p.to))
            });
        if (faults_done && idle && (all_up_long || directs_done)) || net.elapsed() >= limit {
            if !(faults_done && idle) {
                out.violations.push(format!(
                    "the run did not settle within {limit:?} (faults done: {faults_done})"
                ));
            }
            break;
        }
    }
    // Direct paths, as today's punching must open them.
    for (k, p) in pairs.iter().enumerate() {
        if p.from > p.to || !net.is_up(p.from) || !net.is_up(p.to) {
            continue;
        }
        let direct = both_direct(&net, p.from, p.to);
        let must = must_go_direct(t, p.from, p.to);
        let mut labels = [nat_label(t, p.from), nat_label(t, p.to)];
        labels.sort();
        out.direct_by_pair
            .push((format!("{} x {}", labels[0], labels[1]), direct, must));
        if let Some(d) = direct_at[k] {
            out.to_direct.push(d);
        }
        if must && !direct {
            out.violations.push(format!(
                "n{} ({}) and n{} ({}) did not end direct",
                p.from,
                nat_label(t, p.from),
                p.to,
                nat_label(t, p.to)
            ));
        }
    }
    check_state(&net, &mut out);
    if verbose {
        note_state(&mut net);
    }
    out.simulated = net.elapsed();
    out.trace = net.trace().cloned().collect();
    out
}

/// Each running node's view at the end, into the trace: its NAT verdict,
/// kept relays, DHT size and path to each trusted peer.
fn note_state(net: &mut Net) {
    let mut lines = Vec::new();
    for (i, n) in net.nodes.iter().enumerate() {
        let Some(c) = n.core.as_ref() else {
            continue;
        };
        let name = |k: &crate::keys::PublicKey| {
            net.index_of(k).map_or("?".to_string(), |j| format!("n{j}"))
        };
        let relays: Vec<String> = c.kept_relays().iter().map(|r| name(&r.0)).collect();
        let mut paths = Vec::new();
        for (j, m) in net.nodes.iter().enumerate() {
            if j != i && m.trusted {
                let p = match c.path(&m.public) {
                    Some(PeerPath::Direct(a)) => format!("direct {a}"),
                    Some(PeerPath::Relayed(r)) => format!(
                        "via {}",
                        r.iter().map(|x| name(&x.0)).collect::<Vec<_>>().join(",")
                    ),
                    None => "none".into(),
                };
                paths.push(format!("n{j}: {p}"));
            }
        }
        lines.push(format!(
            "end: n{i} nat {:?}, relays [{}], dht {}, paths {{{}}}",
            c.own_record().nat,
            relays.join(","),
            c.dht_len(),
            paths.join("; ")
        ));
    }
    for l in lines {
        net.note(l);
    }
}

/// Every pair of nodes both up waits for data sent from `now`.
fn wait_all(pairs: &mut [PairState], net: &Net, now: Instant, kind: &'static str) {
    for p in pairs.iter_mut() {
        p.overdue = None;
        if net.is_up(p.from) && net.is_up(p.to) && p.both_up.is_some() {
            p.waiting = Some((now, kind));
        }
    }
}

fn both_direct(net: &Net, i: usize, j: usize) -> bool {
    let direct = |a: usize, b: usize| {
        net.nodes[a]
            .core
            .as_ref()
            .is_some_and(|c| matches!(c.path(&net.public_key(b)), Some(PeerPath::Direct(_))))
    };
    direct(i, j) && direct(j, i)
}

/// Applies fault `f` now; what must happen later comes back.
fn apply(
    net: &mut Net,
    f: Fault,
    compress: u32,
    public: &[usize],
    pairs: &mut Vec<PairState>,
    now: Instant,
) -> Option<Pending> {
    let up_public: Vec<usize> = public.iter().copied().filter(|i| net.is_up(*i)).collect();
    match f {
        Fault::RestartBootstrap { down } => {
            net.kill(0);
            if up_public.len() > 1 {
                // Another public node remains: no path may break at all.
                wait_all(pairs, net, now, "bootstrap-killed");
            }
            Some(Pending::Restart(
                0,
                now + down / compress,
                "bootstrap-restarted",
            ))
        }
        Fault::KillRelayInUse => {
            if up_public.len() < 2 {
                net.note("no relay killed: it is the last public node");
                return None;
            }
            let relay = pairs
                .iter()
                .filter_map(|p| {
                    let c = net.nodes[p.from].core.as_ref()?;
                    match c.path(&net.public_key(p.to)) {
                        Some(PeerPath::Relayed(r)) => r.first().and_then(|r| net.index_of(&r.0)),
                        _ => None,
                    }
                })
                .find(|i| up_public.contains(i))
                .unwrap_or(up_public[up_public.len() - 1]);
            net.note(format_args!("the relay in use, n{relay}, dies for good"));
            net.kill(relay);
            pairs.retain(|p| p.from != relay && p.to != relay);
            wait_all(pairs, net, now, "relay-killed");
            None
        }
        Fault::FlushNat { node } => {
            net.flush_nat(node);
            wait_all(pairs, net, now, "nat-flushed");
            None
        }
        Fault::Partition { node, down } => {
            net.set_cut(node, true);
            for p in pairs.iter_mut() {
                p.waiting = None;
            }
            Some(Pending::Heal(node, now + down / compress))
        }
    }
}

/// Bounded state: each node's DHT table holds at most the other nodes,
/// its kept relays stay within what it wants, the overlay knows only the
/// trusted; the untrusted get no data; no relay misnames a sender.
fn check_state(net: &Net, out: &mut Outcome) {
    let n = net.nodes.len();
    for (i, node) in net.nodes.iter().enumerate() {
        if !node.trusted && node.delivered_count > 0 {
            out.violations.push(format!(
                "untrusted n{i}'s data plane got {} datagrams",
                node.delivered_count
            ));
        }
        let Some(c) = node.core.as_ref() else {
            continue;
        };
        if c.dht_len() >= n {
            out.violations.push(format!(
                "n{i}'s DHT table holds {} of {n} nodes",
                c.dht_len()
            ));
        }
        if c.kept_relays().len() > crate::relay::RELAYS_WANTED {
            out.violations
                .push(format!("n{i} keeps {} relays", c.kept_relays().len()));
        }
        for k in node.peers.keys() {
            if net.index_of(k).is_none_or(|j| !net.nodes[j].trusted) {
                out.violations
                    .push(format!("n{i}'s data plane has an untrusted peer {k}"));
            }
        }
    }
    if net.misattributed > 0 {
        out.violations.push(format!(
            "{} relayed datagrams named another sender",
            net.misattributed
        ));
    }
}

/// [`run`], with a panic of a core (or of the simulator) as a violation.
pub fn run_caught(scn: &Scenario, bounds: Bounds, verbose: bool) -> Outcome {
    run_caught_with(scn, bounds, verbose, dataplane::fake)
}

/// [`run_caught`] with the data planes `plane` builds.
pub fn run_caught_with(
    scn: &Scenario,
    bounds: Bounds,
    verbose: bool,
    plane: MakeDataplane,
) -> Outcome {
    let go = || run_with(scn, bounds, verbose, plane);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(go)) {
        Ok(o) => o,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome {
                seed: scn.seed,
                summary: summary(scn),
                violations: vec![format!("panic: {msg}")],
                ..Outcome::default()
            }
        }
    }
}

/// One line: the hosts, the link, the faults.
pub fn summary(scn: &Scenario) -> String {
    let t = &scn.topology;
    let hosts: Vec<String> = t
        .hosts
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let what = match h.attach {
                Attach::Public => "public".to_string(),
                Attach::Behind { home, cgnat } => match cgnat {
                    Some(c) => format!("{}+cgn[{}]", home.label(), t.cgnats[c].label()),
                    None => home.label(),
                },
            };
            let role = if i == 0 {
                "boot"
            } else if h.trusted {
                "trust"
            } else {
                "dht"
            };
            format!("n{i}:{role}:{what}@{}ms", scn.starts[i].as_millis())
        })
        .collect();
    format!(
        "{} | jitter {:?} loss {:.1}% | faults {:?}",
        hosts.join(" "),
        t.link.jitter,
        t.link.loss * 100.0,
        scn.faults
    )
}

/// Seeds of failed networks a [`Tally`] keeps (the count goes on).
const MAX_FAILED_SEEDS: usize = 100;

/// The distributions over many runs.
#[derive(Debug, Default)]
pub struct Tally {
    pub networks: usize,
    pub failures: usize,
    /// The first failed seeds.
    pub failed: Vec<u64>,
    first_direct: Vec<f64>,
    first_relayed: Vec<f64>,
    running_direct: Vec<f64>,
    running_relayed: Vec<f64>,
    to_direct: Vec<f64>,
    failovers: std::collections::BTreeMap<&'static str, Vec<f64>>,
    /// NAT pair -> (ended direct, pairs, pairs that must).
    by_pair: std::collections::BTreeMap<String, (u64, u64, u64)>,
    /// The slowest networks by measure (first data counted from a running
    /// network, each fault's recovery): the [`MAX_SLOWEST`] slowest
    /// (ms, seed) of each, to replay with `net-sim --seed S --one`.
    slowest: std::collections::BTreeMap<&'static str, Vec<(u64, u64)>>,
    pub simulated: Duration,
}

/// How many of the slowest networks a tally names per measure.
const MAX_SLOWEST: usize = 5;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile of `v` (nearest rank), if any.
fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let last = v.len().checked_sub(1)?;
    Some(v[(last as f64 * q).round() as usize])
}

/// "n=.. p50=.. p95=.. max=.." of `v` (ms).
fn spread(v: &[f64]) -> String {
    match (quantile(v, 0.5), quantile(v, 0.95), quantile(v, 1.0)) {
        (Some(p50), Some(p95), Some(max)) => format!(
            "n={:<6} p50={p50:>6.0} p95={p95:>6.0} max={max:>6.0}",
            v.len()
        ),
        _ => "n=0".into(),
    }
}

/// The bounds of issue 12, p95 over a batch, in ms (first data counted
/// from a running network: both ends and the bootstrap up).
pub const P95_FIRST_DIRECT_MS: f64 = 1_000.0;
pub const P95_FIRST_RELAYED_MS: f64 = 1_500.0;
pub const P95_RELAY_KILLED_MS: f64 = 1_000.0;

impl Tally {
    /// The p95 bounds this batch misses, each with its figure (empty when
    /// all are met or a measure has no sample).
    pub fn p95_bounds_missed(&self) -> Vec<String> {
        let relay_killed = self.failovers.get("relay-killed").map(Vec::as_slice);
        [
            (
                "first data direct",
                Some(self.running_direct.as_slice()),
                P95_FIRST_DIRECT_MS,
            ),
            (
                "first data relayed",
                Some(self.running_relayed.as_slice()),
                P95_FIRST_RELAYED_MS,
            ),
            ("relay in use killed", relay_killed, P95_RELAY_KILLED_MS),
        ]
        .into_iter()
        .filter_map(|(what, v, bound)| {
            let p95 = quantile(v?, 0.95)?;
            (p95 >= bound).then(|| format!("{what}: p95 {p95:.0} ms, bound {bound:.0} ms"))
        })
        .collect()
    }

    pub fn add(&mut self, o: &Outcome) {
        self.networks += 1;
        if !o.passed() {
            self.failures += 1;
            if self.failed.len() < MAX_FAILED_SEEDS {
                self.failed.push(o.seed);
            }
        }
        for (d, relayed) in &o.first_data {
            if *relayed {
                self.first_relayed.push(ms(*d));
            } else {
                self.first_direct.push(ms(*d));
            }
        }
        for (d, relayed) in &o.first_data_running {
            if *relayed {
                self.running_relayed.push(ms(*d));
            } else {
                self.running_direct.push(ms(*d));
            }
        }
        let what = |relayed: bool| {
            if relayed {
                "first relayed"
            } else {
                "first direct"
            }
        };
        let mut worst: std::collections::BTreeMap<&'static str, Duration> = Default::default();
        let measures = o.first_data_running.iter().map(|(d, r)| (what(*r), *d));
        for (what, d) in measures.chain(o.failovers.iter().map(|(k, d)| (*k, *d))) {
            let w = worst.entry(what).or_default();
            *w = (*w).max(d);
        }
        for (what, d) in worst {
            let v = self.slowest.entry(what).or_default();
            v.push((d.as_millis() as u64, o.seed));
            v.sort_by(|a, b| b.cmp(a));
            v.truncate(MAX_SLOWEST);
        }
        self.to_direct.extend(o.to_direct.iter().map(|d| ms(*d)));
        for (kind, d) in &o.failovers {
            self.failovers.entry(kind).or_default().push(ms(*d));
        }
        for (label, direct, must) in &o.direct_by_pair {
            let e = self.by_pair.entry(label.clone()).or_default();
            e.0 += u64::from(*direct);
            e.1 += 1;
            e.2 += u64::from(*must);
        }
        self.simulated += o.simulated;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "networks {}, failed {}, simulated {:.0} s",
            self.networks,
            self.failures,
            self.simulated.as_secs_f64()
        )?;
        if !self.failed.is_empty() {
            writeln!(f, "failed seeds: {:?}", self.failed)?;
        }
        writeln!(f, "time to first data after both up (ms):")?;
        writeln!(
            f,
            "  first datagram direct   {}",
            spread(&self.first_direct)
        )?;
        writeln!(
            f,
            "  first datagram relayed  {}",
            spread(&self.first_relayed)
        )?;
        writeln!(
            f,
            "time to first data after both up and the bootstrap up (ms):"
        )?;
        writeln!(
            f,
            "  first datagram direct   {}",
            spread(&self.running_direct)
        )?;
        writeln!(
            f,
            "  first datagram relayed  {}",
            spread(&self.running_relayed)
        )?;
        writeln!(f, "time to direct both ways after both up (ms):")?;
        writeln!(f, "  {}", spread(&self.to_direct))?;
        writeln!(f, "time to data again after a fault (ms):")?;
        for (kind, v) in &self.failovers {
            writeln!(f, "  {kind:<20} {}", spread(v))?;
        }
        let missed = self.p95_bounds_missed();
        if missed.is_empty() {
            writeln!(
                f,
                "p95 bounds (direct < {P95_FIRST_DIRECT_MS:.0}, relayed < {P95_FIRST_RELAYED_MS:.0}, relay killed < {P95_RELAY_KILLED_MS:.0} ms): met"
            )?;
        } else {
            writeln!(f, "p95 bounds missed: {}", missed.join("; "))?;
        }
        writeln!(f, "slowest networks (replay: net-sim --seed S --one):")?;
        for (what, v) in &self.slowest {
            let list: Vec<String> = v
                .iter()
                .map(|(ms, seed)| format!("{ms} ms {seed}"))
                .collect();
            writeln!(f, "  {what:<20} {}", list.join(", "))?;
        }
        writeln!(
            f,
            "pairs ending direct, by NAT pair (mapping; cgn = behind a carrier-grade NAT):"
        )?;
        for (label, (direct, all, must)) in &self.by_pair {
            writeln!(
                f,
                "  {label:<32} {:>5.1}% of {all:<6} (must be direct: {must})",
                *direct as f64 * 100.0 / (*all).max(1) as f64
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Networks the CI test runs (the `net-sim` benchmark runs 10,000).
    const NETWORKS: u64 = 300;

    /// The CI batch: 300 generated networks in the quick profile, two
    /// workers (about 3.5 CPU minutes in the debug profile). A failure
    /// names its seed; `net-sim --seed S --one --quick` replays it exactly.
    #[test]
    fn three_hundred_generated_networks_connect_and_keep_their_properties() {
        let started = Instant::now();
        let tally = std::sync::Mutex::new(Tally::default());
        let failures = std::sync::Mutex::new(Vec::new());
        // Two workers: the machine has two cores.
        std::thread::scope(|s| {
            for job in 0..2 {
                let (tally, failures) = (&tally, &failures);
                s.spawn(move || {
                    for k in (job..NETWORKS).step_by(2) {
                        let scn = generate(super::super::network_seed(12, k));
                        let o = run_caught(&scn, Bounds::quick(), false);
                        if !o.passed() {
                            let trace: Vec<String> =
                                o.trace.iter().rev().take(20).rev().cloned().collect();
                            failures
                                .lock()
                                .expect("no worker panics")
                                .push(format!("{o}  trace:\n    {}", trace.join("\n    ")));
                        }
                        tally.lock().expect("no worker panics").add(&o);
                    }
                });
            }
        });
        let tally = tally.into_inner().expect("no worker panics");
        eprintln!("{tally}in {:.1} s", started.elapsed().as_secs_f64());
        let failures = failures.into_inner().expect("no worker panics");
        assert_eq!(tally.networks, NETWORKS as usize);
        assert!(
            failures.is_empty(),
            "{} of {NETWORKS} networks failed (replay: net-sim --seed SEED --one --quick):\n{}",
            failures.len(),
            failures.join("\n")
        );
        // Runs replay exactly: these figures are the same on every machine.
        let missed = tally.p95_bounds_missed();
        assert!(missed.is_empty(), "p95 bounds missed: {missed:?}\n{tally}");
    }

    /// Found by the simulator (docs/simulator.md): after a NAT flush and a
    /// restart of the only public node, two relayed nodes got no path
    /// again (both ended `nat Unknown, relays []`: the restarted node stayed
    /// shunned as a relay for 30 s, and nobody pinged it). Data is back
    /// within 1 s of its restart now.
    #[test]
    fn a_lone_bootstrap_that_restarts_breaks_no_established_path_for_good() {
        let o = run_caught(&generate(6891110267847428180), Bounds::default(), false);
        assert!(o.passed(), "{o}");
    }

    /// Found by the simulator (10,000 networks, seed 1): a lone bootstrap
    /// dies twice; after the second death both NATed nodes' tables are
    /// empty, and their self-lookups (which ask the boot nodes) had backed
    /// off to 8 s and more while the tables were merely sparse: data came
    /// back 7-10 s after the bootstrap. An emptied table now looks itself
    /// up 2 s later and at most every 4 s.
    #[test]
    fn nodes_whose_lone_bootstrap_dies_twice_find_it_again_soon_after_it_returns() {
        let o = run_caught(&generate(11706980732511098069), Bounds::default(), false);
        assert!(o.passed(), "{o}");
    }

    /// Found by the simulator: a node behind a hard NAT that only ever
    /// talked to the bootstrap is cut off for good when the bootstrap dies,
    /// although two public nodes remain (the fault 1.6 s after they start).
    /// With today's cores this seed's network converges later and the fault
    /// strikes 3 s after they start, when the node has met them through
    /// lookups: it passes, but no longer reproduces the case. Kept ignored
    /// until a fault can be pinned to a time (docs/simulator.md).
    #[test]
    #[ignore = "no longer reproduces its case: the fault comes later (docs/simulator.md)"]
    fn a_node_that_knew_only_the_dead_bootstrap_finds_the_public_nodes_that_remain() {
        let bounds = Bounds {
            quiet: Duration::from_secs(1),
            converge: Duration::ZERO,
            ..Bounds::default()
        };
        let o = run_caught(&generate(14382016861059019890), bounds, false);
        assert!(o.passed(), "{o}");
    }

    /// The cores draw their randomness from the simulator's seed and keep
    /// no hash-ordered state that changes what they send: a failure found
    /// in a batch replays datagram for datagram.
    #[test]
    fn a_seed_replays_the_same_run_datagram_for_datagram() {
        // Five nodes behind three kinds of NAT, a partition and a restart.
        let scn = generate(631961877638814915);
        let first = run_caught(&scn, Bounds::quick(), true);
        let again = run_caught(&scn, Bounds::quick(), true);
        assert!(first.trace.len() > 100, "a verbose trace of the run");
        assert_eq!(first.trace, again.trace);
        assert_eq!(first.first_data, again.first_data);
        assert_eq!(first.violations, again.violations);
    }

    #[test]
    fn a_seed_always_generates_the_same_network() {
        let a = generate(42);
        let b = generate(42);
        assert_eq!(summary(&a), summary(&b));
        assert_ne!(summary(&a), summary(&generate(43)));
    }

    #[test]
    fn generated_networks_have_one_to_three_public_nodes_and_two_to_eight_behind_nats() {
        let mut only_boot = 0;
        for seed in 0..200 {
            let s = generate(seed);
            let public = s
                .topology
                .hosts
                .iter()
                .filter(|h| h.attach == Attach::Public)
                .count();
            assert!((1..=3).contains(&public), "seed {seed}: {public} public");
            let behind = s.topology.hosts.len() - public;
            assert!(
                (2..=8).contains(&behind),
                "seed {seed}: {behind} behind NATs"
            );
            only_boot += usize::from(public == 1);
        }
        assert!(
            only_boot > 30,
            "too few networks whose only public node is the bootstrap"
        );
    }
}
