//! `wh agent`: the process of the WireHub DaemonSet, one per node.
//!
//! It keeps the node's private key in a host path (made with the network's
//! workbits on first start), publishes the public key and the node's
//! endpoint in its node's `WireHubNode` (named after the Node, owned by it),
//! watches the `WireHubNetwork`, the Nodes and the `WireHubNode`s, builds
//! the [`NetworkSpec`] every node runs ([`convert::cluster_spec`]), and runs
//! the node core (`node::daemon::run`, as `wh up` does) with an updates
//! channel: a change in the cluster becomes a `SpecUpdate`, applied like
//! `wh reload` (tunnels of unchanged peers are kept). An invalid resource, or
//! a change the node refuses, is reported on the resource's status and as an
//! Event; the node keeps running the last good network. With
//! spec.remoteClusters, every agent also watches the other clusters'
//! `WireHubNode`s ([`super::remote`], read-only) and the network gains
//! their nodes after its own peers ([`super::mesh::merge`]); a refused
//! remote node or an unreachable cluster is a problem of the network
//! (Degraded, and a Warning Event from the lease holder), never a reason
//! to drop the local network.
//!
//! One agent at a time holds the network's Lease (coordination.k8s.io/v1):
//! it allocates overlay addresses and pod CIDRs (recorded once in the
//! `WireHubNode`s), writes the network's counts and conditions and emits
//! the network's Events. The Lease is kept by a task of its own
//! (`LeaseKeeper`: read from a watch, renewed on its own timer as
//! [`plan::lease`] decides), never in the rounds; a round only reads
//! whether this agent may act as holder. Every agent writes only its own
//! `WireHubNode`, and only on change (its status at least once a
//! [`plan::HEARTBEAT`]).
//!
//! The shape is kube-rs's controller: each round takes a snapshot, asks the
//! pure [`plan::plan`] what to do, applies the plan, and returns
//! `Result<Action>`; [`error_policy`] turns an error into a requeue with
//! backoff. The agent never takes the node's word for another node: what it
//! trusts passed the pins ([`Pins`]) and [`convert`]'s checks. A change
//! that matters wakes a round after `SETTLE` (longer while rounds are
//! slow: `settle`); a round builds the network again only when a node
//! that takes part changed, and a join only extends it by the one node
//! ([`NetworkMemo`]).
//!
//! Simulation (the scale bench only, never the chart): with
//! `WH_SIMULATE=1` the agent does all of the above but runs no node core,
//! only logging the network it would run; `WH_SIMULATE_NODES` then runs
//! one such agent per node named in one process ([`simulated_group`]),
//! each the same [`main`] with its own client, watches, Lease keeper and
//! `WireHubNode`, sharing only the runtime and the log (lines in a span
//! `agent{node=NAME}`).
//!
//! [`NetworkSpec`]: crate::config::NetworkSpec

use super::K8sError;
use super::alloc;
use super::convert::{self, ClusterNode, ClusterSpec, NetworkMemo, Problem};
use super::crd::{WireHubNetwork, WireHubNetworkStatus, WireHubNode, WireHubNodeStatus};
use super::mesh;
use super::metrics::RemoteNodes;
use super::metrics::{self, Shared};
use super::pins::Pins;
use super::plan::lease::{self, Step};
use super::plan::{self, EventType, PlannedEvent, Snapshot};
use super::remote::{RemoteWatches, trim_record};
use crate::cli::commands::Outcome;
use crate::config::{DEFAULT_PORT, NetworkSpec};
use crate::control::{self, Request};
use crate::dataplane::BackendKind;
use crate::keys::{PrivateKey, PublicKey, search};
use crate::node::daemon::{CNI_CONFIG_NAME, SpecUpdate};
use crate::node::launch::{DEFAULT_MTU, Mode, UpOptions};
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tracing::Instrument;

/// Default place of the node's private key (a host path in the DaemonSet).
pub const DEFAULT_KEY_FILE: &str = "/var/lib/wirehub/private.key";
/// Default address of the health and metrics endpoints.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9796";
/// How often the agent re-checks everything even without a change.
const RESYNC: Duration = Duration::from_secs(10);
/// How long a burst of changes may settle before a round, at least.
const SETTLE: Duration = Duration::from_millis(100);
/// ... and at most (when rounds take long: a loaded host).
const MAX_SETTLE: Duration = Duration::from_secs(2);
/// Event keys remembered (sent once per generation), at most.
const MAX_EVENT_KEYS: usize = 1024;
/// When the next round comes after the lease holder's write of an
/// allocation met a record changed since its watch showed it (the node's
/// agent wrote its status meanwhile, as it does right after its spec):
/// soon, not at the next [`RESYNC`], since nothing else wakes the holder
/// for a status.
const CONFLICT_RETRY: Duration = Duration::from_millis(500);
/// How long an agent takes its own write of its `WireHubNode` as done
/// while its watch does not show it yet ([`own_spec_due`]).
const OWN_SPEC_REWRITE: Duration = Duration::from_secs(30);
/// The longest wait after a failed round.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When the next round runs without a change: the result of a round, as
/// kube-runtime's `Action` (whose delay it keeps to itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    requeue_after: Duration,
}

impl Action {
    pub const fn requeue(after: Duration) -> Action {
        Action {
            requeue_after: after,
        }
    }

    pub fn requeue_after(&self) -> Duration {
        self.requeue_after
    }
}

/// The one requeue policy of a failed round: the error is logged, and the
/// round runs again after a backoff that doubles with each failure in a
/// row (1 s, 2 s, ... up to [`MAX_BACKOFF`]); a success resets it.
pub fn error_policy(error: &K8sError, failures: u32) -> Action {
    tracing::warn!(%error, failures, "round failed; retrying");
    let after = Duration::from_secs(1u64 << failures.saturating_sub(1).min(6));
    Action::requeue(after.min(MAX_BACKOFF))
}

/// The field manager of the network-wide status.
const LEADER_MANAGER: &str = "wirehub-leader";
/// The field manager of an agent's own `WireHubNode`.
const AGENT_MANAGER: &str = "wirehub-agent";

/// What the agent was told (flags, then environment, then defaults).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node_name: String,
    /// The WireHubNetwork to run (None: the only one there is).
    pub network: Option<String>,
    pub key_file: PathBuf,
    /// Namespace of the Lease (the agent's own).
    pub namespace: String,
    pub metrics_addr: SocketAddr,
    pub cni_dir: Option<PathBuf>,
    pub mtu: u32,
    pub backend: BackendKind,
    pub mode: Mode,
    /// Per-source rate the node relays for others, Mbit/s.
    pub relay_mbit: u32,
    /// No data plane: the agent does all its Kubernetes work but only
    /// notes the network it would run (`WH_SIMULATE=1`, for the scale
    /// bench's simulated nodes; never in the chart). With it,
    /// `WH_SIMULATE_NODES` runs one such agent per node named in this one
    /// process ([`simulated_group`]).
    pub simulate: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl AgentOptions {
    /// Reads `wh agent`'s keywords (`keyword` gives each one's value),
    /// falling back on the environment.
    pub fn from_keywords(keyword: impl Fn(&str) -> Option<String>) -> anyhow::Result<AgentOptions> {
        let get = |kw: &str, var: &str| keyword(kw).or_else(|| env(var));
        let node_name = get("node", "NODE_NAME").context(
            "no node name: give 'node NAME' or set NODE_NAME (the DaemonSet sets it from spec.nodeName)",
        )?;
        let metrics_addr = get("metrics-address", "WH_METRICS_ADDRESS")
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.into());
        let metrics_addr: SocketAddr = metrics_addr
            .parse()
            .with_context(|| format!("metrics-address '{metrics_addr}' is not ADDRESS:PORT"))?;
        let mtu = match get("mtu", "WH_MTU") {
            Some(m) => m
                .parse::<u32>()
                .ok()
                .filter(|m| (576..=9000).contains(m))
                .with_context(|| format!("mtu '{m}' is not a number from 576 to 9000"))?,
            None => DEFAULT_MTU,
        };
        let backend: BackendKind = get("backend", "WH_BACKEND")
            .unwrap_or_else(|| "auto".into())
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mode = match get("mode", "WH_MODE").as_deref() {
            Some("direct") => Mode::Direct,
            Some("nat") => Mode::Nat,
            _ => Mode::Unknown,
        };
        let relay_mbit = match get("relay-limit", "WH_RELAY_LIMIT") {
            Some(m) => m
                .parse::<u32>()
                .ok()
                .filter(|m| crate::relay::valid_relay_mbit(*m))
                .with_context(|| {
                    format!(
                        "relay-limit '{m}' is not a number of Mbit/s from 0 (relay for nobody) to {}",
                        crate::relay::MAX_RELAY_MBIT
                    )
                })?,
            None => crate::relay::DEFAULT_RELAY_MBIT,
        };
        let cni_dir = get("cni-dir", "WH_CNI_DIR").unwrap_or_else(|| "/etc/cni/net.d".into());
        Ok(AgentOptions {
            node_name,
            network: get("network", "WH_NETWORK"),
            key_file: PathBuf::from(
                get("key-file", "WH_KEY_FILE").unwrap_or_else(|| DEFAULT_KEY_FILE.into()),
            ),
            namespace: env("POD_NAMESPACE").unwrap_or_else(|| "kube-system".into()),
            metrics_addr,
            cni_dir: (cni_dir != "none").then(|| PathBuf::from(cni_dir)),
            mtu,
            backend,
            mode,
            relay_mbit,
            simulate: env("WH_SIMULATE").is_some_and(|v| v == "1"),
        })
    }
}

/// `wh agent ...`: runs until SIGTERM.
pub fn run(keyword: impl Fn(&str) -> Option<String>) -> Outcome {
    let opts = AgentOptions::from_keywords(keyword).map_err(|e| {
        crate::cli::commands::Failure::Usage(crate::cli::Usage {
            command: Some("agent"),
            message: format!("{e:#}"),
        })
    })?;
    let group = match env("WH_SIMULATE_NODES") {
        Some(names) => simulated_group(&opts, &names).map_err(|message| {
            crate::cli::commands::Failure::Usage(crate::cli::Usage {
                command: Some("agent"),
                message,
            })
        })?,
        None => Vec::new(),
    };
    crate::node::daemon::init_logging("info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if group.is_empty() {
        runtime.block_on(main(opts))?;
    } else {
        let every = env("WH_SIMULATE_EVERY_MS")
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        runtime.block_on(run_group(group, every));
    }
    Ok(0)
}

/// The most agents one process runs in simulation (`WH_SIMULATE_NODES`).
pub const MAX_SIMULATED_NODES: usize = 5000;

/// Simulation only (the scale bench, `WH_SIMULATE=1`): the options of
/// each agent one process runs when `WH_SIMULATE_NODES` names several
/// nodes (names separated by commas). Each is `base` for its own node,
/// with its key (and pins) in a folder of its own beside `base`'s key file
/// (`DIR/private.key` becomes `DIR/NODE/private.key`). Refused: outside
/// simulation (a real node runs one agent), an empty or repeated name, a
/// name that is no file name, more than [`MAX_SIMULATED_NODES`].
pub fn simulated_group(base: &AgentOptions, names: &str) -> Result<Vec<AgentOptions>, String> {
    if !base.simulate {
        return Err(
            "WH_SIMULATE_NODES runs several simulated agents in one process: it needs WH_SIMULATE=1"
                .into(),
        );
    }
    let names: Vec<&str> = names.split(',').map(str::trim).collect();
    if names.len() > MAX_SIMULATED_NODES {
        return Err(format!(
            "WH_SIMULATE_NODES names {} nodes; one process runs at most {MAX_SIMULATED_NODES}",
            names.len()
        ));
    }
    let dir = base
        .key_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let file = base
        .key_file
        .file_name()
        .map_or_else(|| "private.key".into(), |f| f.to_os_string());
    let mut seen = HashSet::new();
    let mut group = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(format!(
                "WH_SIMULATE_NODES: name {} ('{name}') is not a node name",
                i + 1
            ));
        }
        if !seen.insert(name) {
            return Err(format!("WH_SIMULATE_NODES: node '{name}' is named twice"));
        }
        group.push(AgentOptions {
            node_name: name.to_string(),
            key_file: dir.join(name).join(&file),
            ..base.clone()
        });
    }
    Ok(group)
}

/// Simulation only: each agent of `group` in this process, one started
/// every `every`, each exactly as `wh agent` runs it ([`main`]: its own
/// client, watches, Lease keeper, `WireHubNode`), its log lines in a span
/// naming its node (`agent{node=NAME}`). Returns when every agent stopped
/// (SIGTERM stops them all); an agent that fails is logged, the others
/// go on.
async fn run_group(group: Vec<AgentOptions>, every: Duration) {
    let mut agents = tokio::task::JoinSet::new();
    // Each agent stops on SIGTERM once it runs; one that arrives while
    // they are still being started stops them all here.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    for (i, opts) in group.into_iter().enumerate() {
        if i > 0 {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = term.recv() => {
                    tracing::info!(started = i, "terminated while starting the agents");
                    agents.abort_all();
                    return;
                }
            }
        }
        let span = tracing::info_span!("agent", node = %opts.node_name);
        agents.spawn(
            async move {
                if let Err(e) = main(opts).await {
                    tracing::error!(error = %format!("{e:#}"), "the agent stopped");
                }
            }
            .instrument(span),
        );
    }
    while agents.join_next().await.is_some() {}
}

/// Reads the node's key, or makes one meeting `workbits` and keeps it.
/// Returns the key and whether it was just made.
pub fn load_or_create_key(
    path: &Path,
    workbits: u8,
    namespace: &str,
) -> Result<(PrivateKey, bool), K8sError> {
    let io = |source| K8sError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = text.trim().parse::<PrivateKey>().map_err(|e| {
                K8sError::Key(format!(
                    "{} does not hold a private key ({e}); move it away to make a new one",
                    path.display()
                ))
            })?;
            return Ok((key, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let state = search::SearchState::new();
    let key = search::search(workbits, namespace, threads, &state)
        .ok_or_else(|| K8sError::Key("the key search stopped".into()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(format!("{}\n", key.to_base64()).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok((key, true))
}

/// The running node core.
struct Daemon {
    updates: mpsc::Sender<SpecUpdate>,
    done: oneshot::Receiver<Result<(), String>>,
    interface: String,
    listen_port: u16,
    /// The last spec the node accepted.
    running: NetworkSpec,
}

/// How long a node waits for other nodes before it starts alone.
const ALONE_GRACE: Duration = Duration::from_secs(5);

/// Everything the agent's loop keeps between rounds.
struct Agent {
    opts: AgentOptions,
    client: Client,
    nodes: Store<Node>,
    networks: Store<WireHubNetwork>,
    records: Store<WireHubNode>,
    shared: Arc<Shared>,
    key: Option<(PrivateKey, PublicKey)>,
    daemon: Option<Daemon>,
    /// Whether this agent acted as the Lease's holder at its last round
    /// (shared with the watch of the `WireHubNode`s: see [`Agent::is_leader`]).
    leading: Arc<AtomicBool>,
    /// The lease keeper of the network named here, and until when it says
    /// this agent may act as holder.
    lease: Option<(String, watch::Receiver<Option<Instant>>, LeaseTasks)>,
    /// Wakes the loop for a round (a change, a new lease holder).
    changed: Arc<Notify>,
    /// Why the node has no key, if it has none.
    key_problem: Option<Problem>,
    /// Why the node refused the last update, until one is accepted.
    update_problem: Option<Problem>,
    /// Why the node core failed (the agent then exits).
    failed: Option<Problem>,
    /// What the last round found wrong with the network (to log changes),
    /// and about which generation.
    last_network_problems: Vec<Problem>,
    last_problems_generation: Option<i64>,
    /// Events already sent, so each is sent once per generation (at most
    /// [`MAX_EVENT_KEYS`]).
    events_sent: HashMap<String, i64>,
    /// The own status last written, and when.
    last_status: Option<(WireHubNodeStatus, Instant)>,
    /// The network status last written.
    last_network_status: Option<WireHubNetworkStatus>,
    /// Failed rounds in a row (for the backoff).
    failures: u32,
    /// How long the last round took.
    last_round: Duration,
    stopping: bool,
    /// The node's CNI configuration as the node core last wrote it.
    cni_config: Option<String>,
    /// Since when the node could have started (alone).
    could_start: Option<Instant>,
    /// The key first seen for each Node object (kept beside the key file).
    pins: Pins,
    /// Simulation only: the network the node would run.
    simulated: Option<NetworkSpec>,
    /// The last network built, reused while its nodes are the same.
    memo: NetworkMemo,
    /// What this agent allocated as lease holder that its watch may not
    /// show yet.
    written: alloc::Written,
    /// The watches of the network's remote clusters.
    remotes: RemoteWatches,
    /// Whether a write of this round's allocations met a record changed
    /// meanwhile (the next round then comes after [`CONFLICT_RETRY`]).
    write_conflict: bool,
    /// The own `WireHubNode` as this agent last applied it, and when (its
    /// watch may not show it yet: [`own_spec_due`]).
    own_spec_written: Option<(serde_json::Value, Instant)>,
    /// Whether the last round found no Node of this agent's own (logged
    /// once until it is found).
    own_node_missing: bool,
}

async fn main(opts: AgentOptions) -> anyhow::Result<()> {
    tracing::info!(node = %opts.node_name, network = ?opts.network, "wirehub agent starting");
    let shared = Arc::new(Shared::default());
    tokio::spawn(metrics::serve(opts.metrics_addr, Arc::clone(&shared)).in_current_span());
    let client = Client::try_default()
        .await
        .map_err(|e| K8sError::Config(e.to_string()))?;
    let changed = Arc::new(Notify::new());

    let (records, records_writer) = reflector::store::<WireHubNode>();
    // Whether this agent held the Lease at its last round.
    let leading = Arc::new(AtomicBool::new(false));
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let node_stream = reflector::reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), list_watch())
            .default_backoff()
            .modify(trim_node),
    )
    .touched_objects();
    // Only what the network is built from counts: not the kubelets'
    // heartbeats.
    let (me, holder, known) = (
        opts.node_name.clone(),
        Arc::clone(&leading),
        records.clone(),
    );
    tokio::spawn(
        forward_changes(
            node_stream,
            Arc::clone(&changed),
            "nodes",
            move |n: &Node| {
                let agent = known
                    .get(&reflector::ObjectRef::new(&n.name_any()))
                    .is_some();
                node_fingerprint(n, &me, holder.load(Ordering::Relaxed), agent)
            },
        )
        .in_current_span(),
    );

    let (networks, networks_writer) = reflector::store::<WireHubNetwork>();
    let mut net_config = list_watch();
    if let Some(name) = &opts.network {
        net_config = net_config.fields(&format!("metadata.name={name}"));
    }
    let net_stream = reflector::reflector(
        networks_writer,
        watcher(Api::<WireHubNetwork>::all(client.clone()), net_config),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(
        forward_changes(
            net_stream,
            Arc::clone(&changed),
            "wirehubnetworks",
            // Its spec (generation), not its status: the lease holder's
            // status writes do not wake every agent.
            |n: &WireHubNetwork| format!("{:?}/{:?}", n.metadata.generation, n.metadata.uid),
        )
        .in_current_span(),
    );

    let record_stream = reflector::reflector(
        records_writer,
        watcher(Api::<WireHubNode>::all(client.clone()), list_watch())
            .default_backoff()
            .modify(trim_record),
    )
    .touched_objects();
    // What others trust wakes the agent; statuses (heartbeats) are read at
    // the next round.
    let (me, holder) = (opts.node_name.clone(), Arc::clone(&leading));
    tokio::spawn(
        forward_changes(
            record_stream,
            Arc::clone(&changed),
            "wirehubnodes",
            move |r: &WireHubNode| record_fingerprint(r, &me, holder.load(Ordering::Relaxed)),
        )
        .in_current_span(),
    );

    let mut agent = Agent::new(opts, client, nodes, networks, records, shared);
    agent.changed = Arc::clone(&changed);
    agent.leading = leading;
    agent.load_pins();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let next_round = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(next_round);
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let daemon_done = async {
            match agent.daemon.as_mut() {
                Some(d) => Some((&mut d.done).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of changes settle (nodes joining together,
                // an allocation for each): one round for all of them.
                tokio::time::sleep(settle(agent.last_round, agent.is_leader())).await;
                let after = agent.round().await;
                next_round.as_mut().reset(tokio::time::Instant::now() + after);
            }
            _ = &mut next_round => {
                let after = agent.round().await;
                next_round.as_mut().reset(tokio::time::Instant::now() + after);
            }
            _ = poll.tick() => {
                if agent.poll_daemon().await {
                    let after = agent.round().await;
                    next_round.as_mut().reset(tokio::time::Instant::now() + after);
                }
            }
            r = daemon_done => {
                let result = match r {
                    Some(Ok(r)) => r,
                    _ => Err("the node stopped without a word".into()),
                };
                agent.daemon = None;
                agent.shared.set_daemon_running(false);
                match result {
                    Ok(()) if agent.stopping => break,
                    Ok(()) => {
                        tracing::warn!("the node stopped (wh down?); stopping the agent, the DaemonSet restarts it");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the node failed");
                        agent.report_down(&e).await;
                        return Err(anyhow::anyhow!("the node failed: {e}"));
                    }
                }
            }
            _ = term.recv() => {
                tracing::info!("terminated; stopping the node");
                agent.stopping = true;
                if agent.daemon.is_none() {
                    break;
                }
                // The node core got the same SIGTERM and stops by itself;
                // wait for it (it removes its interface, routes and CNI file).
                if let Some(d) = agent.daemon.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(15), d.done).await;
                }
                agent.keep_cni_config();
                break;
            }
        }
    }
    tracing::info!("wirehub agent stopped");
    Ok(())
}

/// How long changes settle before a round, given how long the last round
/// took: [`SETTLE`] on an idle host, as long as a round takes when rounds
/// are slow (a loaded host: then a burst costs fewer rounds), never more
/// than [`MAX_SETTLE`]. Always [`SETTLE`] for the lease holder: every
/// other agent waits for its allocations, and one agent's rounds do not
/// load the host.
fn settle(last_round: Duration, leader: bool) -> Duration {
    if leader {
        return SETTLE;
    }
    last_round.clamp(SETTLE, MAX_SETTLE)
}

/// The network's problems to log: every one for a new generation of the
/// network, else those that were not there last time.
fn problems_to_log<'a>(
    problems: &'a [Problem],
    last: &[Problem],
    same_generation: bool,
) -> Vec<&'a Problem> {
    let logged: HashSet<&str> = if same_generation {
        last.iter().map(|p| p.message.as_str()).collect()
    } else {
        HashSet::new()
    };
    problems
        .iter()
        .filter(|p| !logged.contains(p.message.as_str()))
        .collect()
}

/// How every watch of the agent lists: from the API server's watch cache
/// (resourceVersion 0), not a quorum read of etcd. Each agent lists every
/// Node and `WireHubNode` when it starts and whenever its watch restarts;
/// at 1,000 nodes the quorum reads of 1,000 agents starting timed out
/// (504) on the lab's API server. The cache may be a little behind; the
/// watch that follows brings what it missed. (The lease holder's
/// allocations rely on its view of the records, from this watch: see the
/// scale bench's notes in docs/kubernetes.md.)
fn list_watch() -> watcher::Config {
    watcher::Config::default().any_semantic()
}

/// Whether the agent applies its own `WireHubNode` (`body`) now: not when
/// its watch shows the record as it should be (`shown`), nor when it
/// applied this very body less than [`OWN_SPEC_REWRITE`] ago (`last`): its
/// watch lags. At 1,000 nodes the agents' LISTs of the records took 25 s
/// (p50) to 60 s (504), and every round applied the record again: 4,798
/// writes from 871 agents in 6 minutes, which slowed the LISTs further.
/// A record someone else changed is put back at the latest
/// [`OWN_SPEC_REWRITE`] after the agent's last write.
fn own_spec_due(
    shown: bool,
    body: &serde_json::Value,
    last: Option<&(serde_json::Value, Instant)>,
    now: Instant,
) -> bool {
    !shown
        && last.is_none_or(|(written, at)| {
            written != body || now.saturating_duration_since(*at) >= OWN_SPEC_REWRITE
        })
}

/// A Node as every agent keeps it (each keeps every Node): only what the
/// network is built from ([`ClusterNode::from_node`]: name, uid, labels,
/// pod CIDRs, addresses) and the resourceVersion; not the bookkeeping of
/// its metadata (managedFields, annotations) nor the kubelet's status
/// (images, conditions, capacity), which a real Node carries by the KiB.
fn trim_node(n: &mut Node) {
    n.metadata.managed_fields = None;
    n.metadata.annotations = None;
    if let Some(status) = n.status.as_mut() {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}

/// What of a Node wakes an agent when it changes: what the network is
/// built from ([`ClusterNode::from_node`]; not the kubelets' heartbeats).
/// A Node where no agent published a record yet (`agent`: whether it has
/// a `WireHubNode`) changes nothing another node runs: it wakes only the
/// lease holder (which names it in the network's status) and the node's
/// own agent.
fn node_fingerprint(n: &Node, me: &str, leading: bool, agent: bool) -> String {
    if !agent && !leading && n.metadata.name.as_deref() != Some(me) {
        return "no agent yet".into();
    }
    format!("{:?}", ClusterNode::from_node(n))
}

/// What of a `WireHubNode` wakes an agent when it changes: what others
/// trust (spec, owner). A record still waiting for its overlay address
/// changes nothing another node runs: it wakes only the lease holder (which
/// allocates it) and the node's own agent (`leading`: whether this agent
/// held the Lease at its last round; one that takes the Lease runs a round
/// then, and allocates what waits).
fn record_fingerprint(r: &WireHubNode, me: &str, leading: bool) -> String {
    if r.spec.overlay_ipv4.is_none() && !leading && r.metadata.name.as_deref() != Some(me) {
        return "waiting for its allocation".into();
    }
    format!("{:?}/{:?}", r.spec, r.metadata.owner_references)
}

/// Wakes the agent's loop when an object changed in a way that matters
/// (its `fingerprint` differs from the last one seen under its name).
async fn forward_changes<S, T, E>(
    stream: S,
    changed: Arc<Notify>,
    what: &'static str,
    fingerprint: impl Fn(&T) -> String,
) where
    S: futures::Stream<Item = Result<T, E>>,
    T: ResourceExt,
    E: std::fmt::Display,
{
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(obj) => {
                let print = fingerprint(&obj);
                if seen.insert(obj.name_any(), print.clone()).as_ref() != Some(&print) {
                    changed.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching {what}"),
        }
    }
}

/// The tasks of a lease keeper (its watch and its timer), stopped when
/// dropped.
struct LeaseTasks(Vec<tokio::task::AbortHandle>);

impl Drop for LeaseTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The network's Lease, kept on a timer of its own, never in the rounds
/// (a round delayed by load must not let the Lease lapse): it reads the
/// Lease from a watch (no GET), takes it when it is missing or lapsed,
/// renews it while this agent holds it ([`lease::decide`]), and tells the
/// rounds until when this agent may act as holder. A change of holder
/// wakes the rounds, so a new holder allocates at once.
struct LeaseKeeper {
    api: Api<Lease>,
    name: String,
    me: String,
    /// The Lease as the watch shows it.
    seen: Store<Lease>,
    /// The Lease as this agent last wrote it (the watch may lag behind).
    written: Option<Lease>,
    /// Until when this agent may act as holder.
    acting: watch::Sender<Option<Instant>>,
    changed: Arc<Notify>,
    /// The cluster's Nodes: how many agents may try to take a lapsed Lease
    /// (their takeovers are spread over a window that grows with them).
    nodes: Store<Node>,
}

impl LeaseKeeper {
    /// Starts the watch of `network`'s Lease and the keeper's timer.
    fn start(
        client: Client,
        namespace: &str,
        network: &str,
        me: &str,
        changed: Arc<Notify>,
        nodes: Store<Node>,
    ) -> (LeaseTasks, watch::Receiver<Option<Instant>>) {
        let name = format!("wirehub-{network}");
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let (seen, writer) = reflector::store::<Lease>();
        let stream = reflector::reflector(
            writer,
            watcher(
                api.clone(),
                list_watch().fields(&format!("metadata.name={name}")),
            ),
        )
        .default_backoff()
        .touched_objects();
        let lease_changed = Arc::new(Notify::new());
        let watch_task = tokio::spawn(
            forward_changes(stream, Arc::clone(&lease_changed), "leases", |l: &Lease| {
                l.metadata.resource_version.clone().unwrap_or_default()
            })
            .in_current_span(),
        );
        let (acting, rx) = watch::channel(None);
        let keeper = LeaseKeeper {
            api,
            name,
            me: me.to_string(),
            seen,
            written: None,
            acting,
            changed,
            nodes,
        };
        let timer_task = tokio::spawn(keeper.run(lease_changed).in_current_span());
        (
            LeaseTasks(vec![watch_task.abort_handle(), timer_task.abort_handle()]),
            rx,
        )
    }

    /// Once the watch listed the Lease: a step, then a wait until the next
    /// one is due or the Lease changes.
    async fn run(mut self, lease_changed: Arc<Notify>) {
        if self.seen.wait_until_ready().await.is_err() {
            return;
        }
        loop {
            let after = self.step().await;
            tokio::select! {
                _ = tokio::time::sleep(after) => {}
                _ = lease_changed.notified() => {}
            }
        }
    }

    /// Whether this agent acts as holder now.
    fn is_acting(&self) -> bool {
        self.acting
            .borrow()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Sets until when this agent acts as holder; a round follows a change
    /// of holder.
    fn set_acting(&self, until: Option<Instant>) {
        let was = self.is_acting();
        self.acting.send_replace(until);
        if self.is_acting() != was {
            self.changed.notify_one();
        }
    }

    /// Does what [`lease::decide`] says about the newest sighting of the
    /// Lease; returns when to look again.
    async fn step(&mut self) -> Duration {
        let seen = self
            .seen
            .get(&reflector::ObjectRef::new(&self.name).within(&self.api_namespace()));
        let newest = lease::newer(
            seen.as_ref().and_then(|l| l.spec.as_ref()),
            self.written.as_ref().and_then(|l| l.spec.as_ref()),
        );
        let current: Option<Lease> = match (&seen, &self.written) {
            (Some(s), _) if s.spec.as_ref() == newest => Some((**s).clone()),
            (_, Some(w)) if w.spec.as_ref() == newest => Some(w.clone()),
            (s, _) => s.as_deref().cloned(),
        };
        let now = Timestamp::now();
        let sent = Instant::now();
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let candidates = self.nodes.state().len();
        let step = lease::decide(spec, &self.me, self.is_acting(), now, candidates);
        let written = match &step {
            Step::Wait { holder, after } => {
                if *holder != self.me {
                    self.set_acting(None);
                }
                return (*after).clamp(lease::STAGGER_PER_CANDIDATE, lease::RENEW_EVERY);
            }
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(lease::claim(None, &self.me, now)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Step::Take | Step::Renew => {
                let mut lease = current.clone().unwrap_or_default();
                lease.spec = Some(lease::claim(spec, &self.me, now));
                // Written over the version seen: a conflict means another
                // agent wrote it meanwhile.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                self.written = Some(lease);
                self.set_acting(Some(Instant::now() + lease::acting_for(sent.elapsed())));
                lease::RENEW_EVERY
            }
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
                // Someone else wrote (or removed) it: the watch tells who.
                tracing::debug!(lease = %self.name, ?step, code = e.code, "lost the race for the lease");
                self.written = None;
                if step != Step::Renew {
                    self.set_acting(None);
                }
                lease::RETRY
            }
            Err(e) => {
                // Acting continues until its margin, then stops by itself.
                tracing::warn!(lease = %self.name, error = %e, "cannot write the lease");
                lease::RETRY
            }
        }
    }

    fn api_namespace(&self) -> String {
        self.api.namespace().unwrap_or_default().to_string()
    }
}

fn now_rfc3339() -> String {
    Timestamp::now().to_string()
}

impl Agent {
    /// An agent that has done nothing yet: no key, no node, not leader.
    fn new(
        opts: AgentOptions,
        client: Client,
        nodes: Store<Node>,
        networks: Store<WireHubNetwork>,
        records: Store<WireHubNode>,
        shared: Arc<Shared>,
    ) -> Agent {
        Agent {
            opts,
            client,
            nodes,
            networks,
            records,
            shared,
            key: None,
            daemon: None,
            leading: Arc::new(AtomicBool::new(false)),
            lease: None,
            changed: Arc::new(Notify::new()),
            key_problem: None,
            update_problem: None,
            failed: None,
            last_network_problems: Vec::new(),
            last_problems_generation: None,
            events_sent: HashMap::new(),
            last_status: None,
            last_network_status: None,
            failures: 0,
            last_round: Duration::ZERO,
            stopping: false,
            cni_config: None,
            could_start: None,
            pins: Pins::default(),
            simulated: None,
            memo: NetworkMemo::default(),
            written: alloc::Written::default(),
            remotes: RemoteWatches::default(),
            write_conflict: false,
            own_spec_written: None,
            own_node_missing: false,
        }
    }

    /// Whether this agent acted as the Lease's holder at its last round.
    fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Where the pins live: beside the node's key, in the agent's host path.
    fn pins_path(&self) -> PathBuf {
        self.opts.key_file.with_file_name("pins.json")
    }

    /// Reads the pins a previous agent of this node kept. A missing file is
    /// a first start; an unreadable one is reported and replaced.
    fn load_pins(&mut self) {
        let path = self.pins_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => match Pins::from_text(&text) {
                Some(pins) => {
                    tracing::info!(file = %path.display(), pins = pins.len(), "node key pins");
                    self.pins = pins;
                }
                None => {
                    tracing::warn!(file = %path.display(), "not a pins file: starting with no pins")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot read the pins"),
        }
    }

    /// Writes the pins aside and renames them into place.
    fn save_pins(&self) {
        let path = self.pins_path();
        let tmp = path.with_extension("tmp");
        let written =
            std::fs::write(&tmp, self.pins.to_text()).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "cannot keep the pins");
        }
    }

    /// The cluster's nodes whose keys match their pins; the others are
    /// reported as problems of the network.
    /// Its own node carries the key the agent holds, whatever its record
    /// says (a forged record is rewritten at the next round).
    fn pinned_nodes(&mut self, network: &str) -> (Vec<ClusterNode>, Vec<Problem>) {
        let mut nodes = self.cluster_nodes(network);
        if let Some((_, public)) = &self.key {
            for n in nodes.iter_mut().filter(|n| n.name == self.opts.node_name) {
                n.key = n.key.map(|_| *public);
            }
        }
        let checked = self.pins.check(nodes, &self.opts.node_name);
        if checked.changed {
            self.save_pins();
        }
        let refused = checked
            .refused
            .into_iter()
            .map(|(node, p)| {
                tracing::warn!(%node, "{}", p.message);
                p
            })
            .collect();
        (checked.nodes, refused)
    }

    fn network(&self) -> Option<Arc<WireHubNetwork>> {
        let all = self.networks.state();
        match &self.opts.network {
            Some(name) => all.into_iter().find(|n| n.name_any() == *name),
            None if all.len() == 1 => all.into_iter().next(),
            None => None,
        }
    }

    /// Every Node, with what its `WireHubNode` says when the record
    /// belongs to it ([`convert::record_belongs`]).
    fn cluster_nodes(&self, network: &str) -> Vec<ClusterNode> {
        let records: HashMap<String, Arc<WireHubNode>> = self
            .records
            .state()
            .into_iter()
            .map(|r| (r.name_any(), r))
            .collect();
        self.nodes
            .state()
            .iter()
            .map(|n| {
                ClusterNode::from_objects(n, records.get(&n.name_any()).map(|r| &**r), network)
            })
            .collect()
    }

    /// One round and its outcome: when the next one is due.
    async fn round(&mut self) -> Duration {
        let started = Instant::now();
        let result = self.reconcile().await;
        self.last_round = started.elapsed();
        match result {
            Ok(action) => {
                self.failures = 0;
                action.requeue_after()
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                error_policy(&e, self.failures).requeue_after()
            }
        }
    }

    /// One round: the key, the snapshot, the plan, then the plan applied
    /// (own object, allocations as leader, the node core, statuses, events).
    async fn reconcile(&mut self) -> Result<Action, K8sError> {
        if self.stopping {
            return Ok(Action::requeue(RESYNC));
        }
        let Some(net) = self.network() else {
            let n = self.networks.state().len();
            match (&self.opts.network, n) {
                (Some(name), _) => tracing::info!("waiting for WireHubNetwork {name}"),
                (None, 0) => tracing::info!("waiting for a WireHubNetwork"),
                (None, _) => tracing::warn!(
                    "{n} WireHubNetworks exist: tell the agent which one (network NAME, or WH_NETWORK)"
                ),
            }
            return Ok(Action::requeue(RESYNC));
        };
        let name = net.name_any();
        self.ensure_key(&net).await;
        let listen_port = self
            .daemon
            .as_ref()
            .map(|d| d.listen_port)
            .unwrap_or(net.spec.listen_port.unwrap_or(DEFAULT_PORT));
        let (mut nodes, refused) = self.pinned_nodes(&name);
        let leader = self.lease_holder(&name);
        self.leading.store(leader, Ordering::Relaxed);
        let mut network_problems = refused;
        if leader {
            network_problems.extend(self.allocate(&net, &mut nodes).await?);
        }
        // Only the lease holder reads the records' statuses (the network's
        // status): the others do not copy every record every round.
        let records: Vec<WireHubNode> = if leader {
            self.records.state().iter().map(|r| (**r).clone()).collect()
        } else {
            Vec::new()
        };
        let inspect = self.shared.status();
        let node_problems: Vec<Problem> = [&self.key_problem, &self.update_problem, &self.failed]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let public = self.key.as_ref().map(|(_, p)| *p);
        let built = self.memo.cluster_spec(&name, &net.spec, &nodes, true);
        // Other clusters' nodes, read from their API servers, after every
        // local peer ([`mesh::merge`]); what is refused is the network's
        // problem, never a reason to drop the local network.
        self.remotes
            .sync(
                &self.client,
                &self.opts.namespace,
                &net.spec.remote_clusters,
                &self.changed,
            )
            .await;
        let (remote_members, remote_problems) = self.remotes.members(&name);
        network_problems.extend(remote_problems);
        let built = built.map(|cs| {
            let m = mesh::merge(cs, &net.spec, &remote_members);
            self.shared.set_remote_nodes(RemoteNodes {
                taken: m.remote_members.len(),
                refused: m.refused.len(),
                waiting: m.waiting,
                over_node_limit: m.dropped_over_node_limit,
                over_cluster_limit: m.dropped_over_cluster_limit,
            });
            network_problems.extend(m.refused);
            m.cluster
        });
        let snapshot = Snapshot {
            me: &self.opts.node_name,
            network: &net,
            nodes: &nodes,
            records: &records,
            built: Some(&built),
            key: public.as_ref(),
            listen_port,
            running: self
                .daemon
                .as_ref()
                .map(|d| &d.running)
                .or(self.simulated.as_ref()),
            running_generation: self.shared.generation(),
            inspect: inspect.as_ref(),
            node_problems: &node_problems,
            network_problems: &network_problems,
            leader,
            now: Timestamp::now(),
        };
        let plan = plan::plan(&snapshot);
        self.log_problems(&plan.network_problems, net.metadata.generation);
        self.shared.set_spec_valid(plan.spec_valid);
        self.write_own_spec(&plan.own_spec).await?;
        if let Some(cs) = plan.run
            && self.failed.is_none()
        {
            self.run_network(&net, cs).await;
        }
        self.write_own_status(plan.own_status).await?;
        if let Some(status) = plan.network_status {
            self.write_network_status(&name, status).await?;
        }
        for e in plan.events {
            self.event_once(&net, e).await;
        }
        if std::mem::take(&mut self.write_conflict) {
            return Ok(Action::requeue(CONFLICT_RETRY));
        }
        Ok(Action::requeue(RESYNC))
    }

    /// Loads or makes the node's key once; a failure is kept as a problem
    /// of the node (and tried again next round).
    async fn ensure_key(&mut self, net: &WireHubNetwork) {
        let workbits = net.spec.workbits.unwrap_or(crate::keys::DEFAULT_WORKBITS);
        let namespace = net
            .spec
            .namespace
            .clone()
            .unwrap_or_else(|| crate::keys::DEFAULT_NAMESPACE.into());
        if self.key.is_none() {
            let path = self.opts.key_file.clone();
            let ns = namespace.clone();
            let made =
                tokio::task::spawn_blocking(move || load_or_create_key(&path, workbits, &ns)).await;
            match made {
                Ok(Ok((key, created))) => {
                    let public = key.public_key();
                    tracing::info!(key = %public, created, file = %self.opts.key_file.display(), "node key");
                    self.key = Some((key, public));
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "no node key");
                    self.key_problem = Some(Problem {
                        reason: "NoKey",
                        message: e.to_string(),
                    });
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "key search failed");
                    return;
                }
            }
        }
        self.key_problem = self.key.as_ref().and_then(|(_, public)| {
            (public.workbits(&namespace) < workbits).then(|| Problem {
                reason: "KeyBelowWorkbits",
                message: format!(
                    "the node's key {} has {} workbits in namespace '{namespace}', the network requires {workbits}; delete {} on the node and restart its agent to make a new key",
                    public.short(10),
                    public.workbits(&namespace),
                    self.opts.key_file.display()
                ),
            })
        });
    }

    /// Logs the network's problems when they change: every one for a new
    /// generation of the network, else only those not logged last time (a
    /// node joining would otherwise log again every node still waiting: N
    /// lines per agent per join).
    fn log_problems(&mut self, problems: &[Problem], generation: Option<i64>) {
        if problems == self.last_network_problems.as_slice()
            && generation == self.last_problems_generation
        {
            return;
        }
        let same = generation == self.last_problems_generation;
        for p in problems_to_log(problems, &self.last_network_problems, same) {
            tracing::warn!(generation, reason = p.reason, "{}", p.message);
        }
        self.last_network_problems = problems.to_vec();
        self.last_problems_generation = generation;
    }

    /// Writes the agent's own fields of its `WireHubNode` (server-side
    /// apply, owned by its Node) when the record differs.
    async fn write_own_spec(
        &mut self,
        spec: &Option<super::crd::WireHubNodeSpec>,
    ) -> Result<(), K8sError> {
        let Some(spec) = spec else {
            return Ok(());
        };
        let me = &self.opts.node_name;
        let Some(node) = self.nodes.get(&reflector::ObjectRef::new(me)) else {
            // Said once until it is there (every round said it: 7,330
            // lines from 1,000 agents whose watches were slow to list).
            if !std::mem::replace(&mut self.own_node_missing, true) {
                tracing::warn!(node = %me, "my Node is not in the cluster (yet)");
            }
            return Ok(());
        };
        self.own_node_missing = false;
        let current = self.records.get(&reflector::ObjectRef::new(me));
        let owned = current
            .as_ref()
            .is_some_and(|r| convert::record_belongs(r, &node, &spec.network));
        let shown = owned && !plan::own_spec_differs(current.as_deref(), spec);
        let uid = node.metadata.uid.clone().unwrap_or_default();
        let body = json!({
            "apiVersion": "wirehub.io/v1alpha1",
            "kind": "WireHubNode",
            "metadata": {
                "name": me,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": me, "uid": uid}],
            },
            "spec": {
                "network": spec.network,
                "publicKey": spec.public_key,
                "endpoints": spec.endpoints,
            },
        });
        let now = Instant::now();
        if !own_spec_due(shown, &body, self.own_spec_written.as_ref(), now) {
            return Ok(());
        }
        let api: Api<WireHubNode> = Api::all(self.client.clone());
        api.patch(
            me,
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        tracing::info!(node = %me, key = ?spec.public_key, endpoints = ?spec.endpoints, "published my WireHubNode");
        self.own_spec_written = Some((body, now));
        Ok(())
    }

    /// Starts the keeper of `network`'s Lease once (again if the network
    /// changed), and reads whether this agent may act as its holder now.
    fn lease_holder(&mut self, network: &str) -> bool {
        if self.lease.as_ref().is_none_or(|(n, _, _)| n != network) {
            let (tasks, acting) = LeaseKeeper::start(
                self.client.clone(),
                &self.opts.namespace,
                network,
                &self.opts.node_name,
                Arc::clone(&self.changed),
                self.nodes.clone(),
            );
            self.lease = Some((network.to_string(), acting, tasks));
        }
        let leader = self
            .lease
            .as_ref()
            .and_then(|(_, acting, _)| *acting.borrow())
            .is_some_and(|until| Instant::now() < until);
        if leader != self.is_leader() {
            tracing::info!(leader, lease = %format!("wirehub-{network}"), "network lease");
        }
        leader
    }

    /// Leader only: gives every selected node with a key what it lacks,
    /// recorded in its `WireHubNode` (a merge patch of the allocation fields: it
    /// never creates a record, and leaves the agent's fields alone); `nodes`
    /// learn it at once. Returns what cannot be allocated.
    async fn allocate(
        &mut self,
        net: &WireHubNetwork,
        nodes: &mut [ClusterNode],
    ) -> Result<Vec<Problem>, K8sError> {
        let name = net.name_any();
        let Ok((header, _, externals)) = convert::resource_peers(&name, &net.spec) else {
            return Ok(Vec::new());
        };
        // This cluster's part of the subnet (spec.nodeSubnet).
        let Ok(Some(subnet)) = convert::node_subnet(&net.spec, header.subnet) else {
            return Ok(Vec::new());
        };
        // Planned from the view with this agent's own recent allocations,
        // which its watch may not show yet.
        let view = self.written.fill(nodes);
        let selected: Vec<&ClusterNode> = view
            .iter()
            .filter(|n| n.selected(&net.spec.node_selector))
            .collect();
        // Addresses the external peers hold (numbered as in the full spec).
        let mut probe = header.clone();
        probe.peers = externals;
        for n in &selected {
            if let (Some(ip), Some(key)) = (n.overlay_ip, n.key) {
                probe.peers.push(crate::config::PeerSpec {
                    role: crate::config::Role::Trust,
                    hostname: None,
                    static_ip: Some(ip),
                    key,
                    endpoint: None,
                    routes: Vec::new(),
                });
            }
        }
        let in_use = convert::addresses_in_use(&probe);
        // The header parsed, so did the pod subnets.
        let pods = convert::PodSubnets::from_spec(&net.spec, Some(subnet), &header.name)
            .unwrap_or_default();
        let (plan, problems) = alloc::plan(subnet, &pods, &selected, &in_use);
        let api: Api<WireHubNode> = Api::all(self.client.clone());
        for a in plan {
            let mut fields = serde_json::Map::new();
            if let Some(ip) = a.overlay_ip {
                fields.insert("overlayIpv4".into(), json!(ip.to_string()));
            }
            if let Some(c) = a.pod_cidr {
                fields.insert("podCidr".into(), json!(c.to_string()));
            }
            if a.pod_cidr.is_some() || a.pod_cidr_v6.is_some() {
                // The whole list: what was recorded before stays in it.
                let view_node = view.iter().find(|n| n.name == a.node);
                let v4 = a.pod_cidr.or(view_node.and_then(|n| n.recorded_pod_cidr));
                let v6 = a
                    .pod_cidr_v6
                    .or(view_node.and_then(|n| n.recorded_pod_cidr_v6));
                let list: Vec<String> = v4
                    .map(|c| c.to_string())
                    .into_iter()
                    .chain(v6.map(|c| c.to_string()))
                    .collect();
                fields.insert("podCidrs".into(), json!(list));
            }
            if !self.patch_as_seen(&api, &a.node, fields).await? {
                continue;
            }
            tracing::info!(node = %a.node, overlay_ip = ?a.overlay_ip, pod_cidr = ?a.pod_cidr, pod_cidr_v6 = ?a.pod_cidr_v6, "allocated");
            self.written.note(&a);
            if let Some(n) = nodes.iter_mut().find(|n| n.name == a.node) {
                n.overlay_ip = n.overlay_ip.or(a.overlay_ip);
                n.recorded_pod_cidr = n.recorded_pod_cidr.or(a.pod_cidr);
                n.recorded_pod_cidr_v6 = n.recorded_pod_cidr_v6.or(a.pod_cidr_v6);
            }
        }
        self.restore_allocations(nodes).await?;
        Ok(problems)
    }

    /// Merge-patches `fields` into the spec of `node`'s record only if the
    /// record is still the version this agent saw (its resourceVersion):
    /// an allocation is written once, never over one made meanwhile (by a
    /// previous lease holder whose writes this agent had not seen yet).
    /// False when the record is unknown or changed (the next round sees
    /// the new state, and comes soon: [`CONFLICT_RETRY`]).
    async fn patch_as_seen(
        &mut self,
        api: &Api<WireHubNode>,
        node: &str,
        fields: serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, K8sError> {
        let Some(version) = self
            .records
            .get(&reflector::ObjectRef::new(node))
            .and_then(|r| r.metadata.resource_version.clone())
        else {
            return Ok(false);
        };
        let body = json!({"metadata": {"resourceVersion": version}, "spec": fields});
        match api
            .patch(node, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(%node, "its WireHubNode changed meanwhile; next round soon");
                self.write_conflict = true;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Leader only: records whose allocations differ from the pinned ones
    /// (someone else's token wrote them) get the pinned values back.
    async fn restore_allocations(&mut self, nodes: &[ClusterNode]) -> Result<(), K8sError> {
        let api: Api<WireHubNode> = Api::all(self.client.clone());
        for n in nodes {
            let Some(r) = self.records.get(&reflector::ObjectRef::new(&n.name)) else {
                continue;
            };
            let mut fields = serde_json::Map::new();
            let differs = |recorded: &Option<String>, pinned: Option<String>| {
                recorded.is_some() && pinned.is_some() && *recorded != pinned
            };
            let ip = n.overlay_ip.map(|i| i.to_string());
            if differs(&r.spec.overlay_ipv4, ip.clone()) {
                fields.insert("overlayIpv4".into(), json!(ip));
            }
            let cidr = n.recorded_pod_cidr.map(|c| c.to_string());
            if differs(&r.spec.pod_cidr, cidr.clone()) {
                fields.insert("podCidr".into(), json!(cidr));
            }
            // The list, when it names another block of a family than the
            // pinned one.
            let (v4, v6) = convert::split_families(
                &r.spec
                    .pod_cidrs
                    .iter()
                    .filter_map(|c| c.trim().parse().ok())
                    .collect::<Vec<_>>(),
            );
            let moved = v4.zip(n.recorded_pod_cidr).is_some_and(|(a, b)| a != b)
                || v6.zip(n.recorded_pod_cidr_v6).is_some_and(|(a, b)| a != b);
            if moved {
                let list: Vec<String> = n
                    .recorded_pod_cidr
                    .map(|c| c.to_string())
                    .into_iter()
                    .chain(n.recorded_pod_cidr_v6.map(|c| c.to_string()))
                    .collect();
                fields.insert("podCidrs".into(), json!(list));
            }
            if fields.is_empty() {
                continue;
            }
            let restored = format!("{fields:?}");
            if self.patch_as_seen(&api, &n.name, fields).await? {
                tracing::warn!(node = %n.name, %restored, "put the pinned allocations back in a WireHubNode someone else changed");
            }
        }
        Ok(())
    }

    /// Starts the node core with `cs`, or sends it `cs` as an update.
    async fn run_network(&mut self, net: &WireHubNetwork, cs: ClusterSpec) {
        let Some((key, public)) = self.key.clone() else {
            return;
        };
        let generation = net.metadata.generation.unwrap_or_default();
        if self.opts.simulate {
            if self.simulated.as_ref() != Some(&cs.spec) {
                tracing::info!(
                    members = cs.members.len(),
                    generation,
                    "simulated node: network"
                );
                self.simulated = Some(cs.spec);
                self.shared.set_generation(generation);
            }
            return;
        }
        if let Some(d) = &mut self.daemon {
            if d.running == cs.spec {
                self.shared.set_generation(generation);
                self.update_problem = None;
                return;
            }
            let (tx, rx) = oneshot::channel();
            let update = SpecUpdate {
                spec: cs.spec.clone(),
                reply: Some(tx),
            };
            if d.updates.send(update).await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(10), rx).await {
                Ok(Ok(Ok(summary))) => {
                    tracing::info!(generation, "network updated: {summary}");
                    d.running = cs.spec;
                    self.update_problem = None;
                    self.shared.count_update(true);
                    self.shared.set_generation(generation);
                    if self.leading.load(Ordering::Relaxed) {
                        let note = format!(
                            "generation {generation} applied on {}: {summary}",
                            self.opts.node_name
                        );
                        self.event_once(
                            net,
                            PlannedEvent {
                                key: "updated".into(),
                                type_: EventType::Normal,
                                reason: "Updated",
                                action: "Reload",
                                note,
                            },
                        )
                        .await;
                    }
                }
                Ok(Ok(Err(why))) => {
                    tracing::warn!(generation, "network update refused: {why}");
                    self.shared.count_update(false);
                    self.update_problem = Some(Problem {
                        reason: "UpdateRefused",
                        message: format!(
                            "generation {generation} refused, the node keeps the last network: {why}"
                        ),
                    });
                    let note = format!("node {}: {why}", self.opts.node_name);
                    let key = format!("refused/{}", self.opts.node_name);
                    self.event_once(
                        net,
                        PlannedEvent {
                            key,
                            type_: EventType::Warning,
                            reason: "UpdateRefused",
                            action: "Reload",
                            note,
                        },
                    )
                    .await;
                }
                _ => tracing::warn!("the node did not answer an update"),
            }
            return;
        }
        if cs.members.len() < 2 {
            // Alone so far: the other agents may be starting too; give the
            // allocation a moment so the node starts knowing them.
            let since = *self.could_start.get_or_insert_with(Instant::now);
            if since.elapsed() < ALONE_GRACE {
                return;
            }
        }
        let listen_port = net.spec.listen_port.unwrap_or(DEFAULT_PORT);
        let interface = format!("wh-{}", public.short(8));
        let opts = UpOptions {
            config_path: PathBuf::new(),
            interface: interface.clone(),
            listen_port,
            mode: self.opts.mode,
            backend: self.opts.backend,
            mtu: self.opts.mtu,
            cni_dir: self.opts.cni_dir.clone(),
            dns: false,
            dns_port: 53,
            hosts_file: None,
            relay_mbit: self.opts.relay_mbit,
        };
        let (updates, rx) = mpsc::channel(4);
        let (done_tx, done) = oneshot::channel();
        let spec = cs.spec.clone();
        let started = std::thread::Builder::new()
            .name("wirehub-node".into())
            .spawn(move || {
                let r = crate::node::daemon::run_blocking(opts, spec, key, Some(rx))
                    .map_err(|e| format!("{e:#}"));
                let _ = done_tx.send(r);
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the node thread");
            return;
        }
        tracing::info!(%interface, listen_port, generation, members = ?cs.members, "node started");
        self.daemon = Some(Daemon {
            updates,
            done,
            interface: interface.clone(),
            listen_port,
            running: cs.spec,
        });
        self.shared.set_daemon_running(true);
        self.shared
            .set_interface(&interface, self.opts.cni_dir.clone());
        self.shared.set_generation(generation);
    }

    /// Reads the node's state over its control socket (for status and
    /// metrics). True when what the status says of it changed (its NAT, a
    /// path's kind): a round then reports it at once.
    async fn poll_daemon(&mut self) -> bool {
        let Some(d) = &self.daemon else {
            return false;
        };
        let interface = d.interface.clone();
        let answer = tokio::task::spawn_blocking(move || {
            control::client::request(&interface, &Request::Inspect)
        })
        .await;
        let v = match answer {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "node state");
                return false;
            }
            Err(_) => return false,
        };
        if let Some(dir) = &self.opts.cni_dir
            && let Ok(text) = std::fs::read_to_string(dir.join(CNI_CONFIG_NAME))
        {
            self.cni_config = Some(text);
        }
        let print = |s: Option<control::Status>| {
            s.map(|s| {
                let kinds: Vec<(String, std::mem::Discriminant<control::PathStatus>)> = s
                    .peers
                    .iter()
                    .map(|p| (p.key.clone(), std::mem::discriminant(&p.path)))
                    .collect();
                (s.nat, kinds)
            })
        };
        let before = print(self.shared.status());
        self.shared.set_inspect(v);
        before != print(self.shared.status())
    }

    /// Writes its own `WireHubNode`'s status (server-side apply) when it
    /// changed or a heartbeat is due.
    async fn write_own_status(&mut self, mut status: WireHubNodeStatus) -> Result<(), K8sError> {
        self.shared.set_ready(status.ready);
        let due = plan::status_due(
            self.last_status.as_ref().map(|(s, _)| s),
            self.last_status
                .as_ref()
                .map_or(Duration::MAX, |(_, at)| at.elapsed()),
            &status,
        );
        let me = &self.opts.node_name;
        if !due || self.records.get(&reflector::ObjectRef::new(me)).is_none() {
            return Ok(());
        }
        status.last_update = Some(now_rfc3339());
        let body = json!({
            "apiVersion": "wirehub.io/v1alpha1",
            "kind": "WireHubNode",
            "metadata": {"name": me},
            "status": status,
        });
        let api: Api<WireHubNode> = Api::all(self.client.clone());
        api.patch_status(
            me,
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        self.last_status = Some((status, Instant::now()));
        Ok(())
    }

    /// Leader only: the network's counts and conditions, when they changed.
    async fn write_network_status(
        &mut self,
        name: &str,
        status: WireHubNetworkStatus,
    ) -> Result<(), K8sError> {
        let current = self
            .network()
            .and_then(|n| n.status.clone())
            .unwrap_or_default();
        if current == status || self.last_network_status.as_ref() == Some(&status) {
            return Ok(());
        }
        let degraded = |s: &WireHubNetworkStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True")
                .map(|c| (c.reason.clone(), c.message.clone()))
        };
        if let Some((reason, message)) = degraded(&status)
            && degraded(&current).map(|d| d.0) != Some(reason.clone())
        {
            tracing::warn!(reason = ?reason, "network degraded: {}", message.unwrap_or_default());
        }
        let body = json!({
            "apiVersion": "wirehub.io/v1alpha1",
            "kind": "WireHubNetwork",
            "metadata": {"name": name},
            "status": status,
        });
        let api: Api<WireHubNetwork> = Api::all(self.client.clone());
        api.patch_status(
            name,
            &PatchParams::apply(LEADER_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
        self.last_network_status = Some(status);
        Ok(())
    }

    /// Publishes an Event about the network once per `key` and generation.
    /// A core/v1 Event in the namespace `default` (where events about a
    /// cluster-scoped object go): Kubernetes before 1.22 refuses an
    /// events.k8s.io/v1 Event about a cluster-scoped object, and `kubectl
    /// describe` finds these.
    async fn event_once(&mut self, net: &WireHubNetwork, e: PlannedEvent) {
        let PlannedEvent {
            key,
            type_,
            reason,
            action,
            note,
        } = e;
        let generation = net.metadata.generation.unwrap_or_default();
        if self.events_sent.get(&key) == Some(&generation) {
            return;
        }
        let now = Timestamp::now();
        let mut reference = net.object_ref(&());
        reference.namespace = None;
        let event = CoreEvent {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", net.name_any(), now.as_nanosecond())),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            involved_object: reference,
            reason: Some(reason.into()),
            message: Some(note.chars().take(1000).collect()),
            type_: Some(type_.as_str().into()),
            action: Some(action.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some("wirehub-agent".into()),
                host: Some(self.opts.node_name.clone()),
            }),
            reporting_component: Some("wirehub-agent".into()),
            reporting_instance: Some(self.opts.node_name.clone()),
            ..CoreEvent::default()
        };
        let api: Api<CoreEvent> = Api::namespaced(self.client.clone(), "default");
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                // Bounded: forgetting sends an event again, at worst.
                if self.events_sent.len() >= MAX_EVENT_KEYS {
                    self.events_sent.clear();
                }
                self.events_sent.insert(key, generation);
            }
            Err(e) => tracing::warn!(error = %e, "cannot publish an event"),
        }
    }

    /// On SIGTERM (a restart, an upgrade): puts the node's CNI configuration
    /// back after the node core removed it, so that the node stays Ready
    /// while its agent is replaced (pods created meanwhile get their
    /// addresses and are reached once the agent is back). Uninstalling
    /// WireHub leaves the file: remove it from the nodes then.
    fn keep_cni_config(&self) {
        let (Some(dir), Some(text)) = (&self.opts.cni_dir, &self.cni_config) else {
            return;
        };
        let path = dir.join(CNI_CONFIG_NAME);
        let tmp = dir.join(format!(".{CNI_CONFIG_NAME}.agent"));
        match std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "CNI configuration kept for the next agent")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the CNI configuration")
            }
        }
    }

    /// The node failed: say so on the status before exiting.
    async fn report_down(&mut self, why: &str) {
        self.failed = Some(Problem {
            reason: "NodeFailed",
            message: why.to_string(),
        });
        self.last_status = None;
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "cannot report the failure");
        }
    }
}

/// Error paths a real API server does not produce on demand, against
/// kube-rs's mock service: conflicts, refusals and failures are reported
/// and never crash the agent or touch the running node.
#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request as HttpRequest, Response as HttpResponse, StatusCode};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::client::Body;
    use tower_test::mock;

    type Handle = mock::Handle<HttpRequest<Body>, HttpResponse<Body>>;

    fn options() -> AgentOptions {
        AgentOptions {
            node_name: "n1".into(),
            network: Some("lab".into()),
            key_file: PathBuf::from("/nonexistent/key"),
            namespace: "kube-system".into(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            cni_dir: None,
            mtu: DEFAULT_MTU,
            backend: BackendKind::Auto,
            mode: Mode::Unknown,
            relay_mbit: crate::relay::DEFAULT_RELAY_MBIT,
            simulate: false,
        }
    }

    #[test]
    fn a_node_is_kept_with_what_the_network_is_built_from_and_nothing_else() {
        use k8s_openapi::api::core::v1::{ContainerImage, NodeAddress, NodeSpec, NodeStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let mut n = Node {
            metadata: ObjectMeta {
                name: Some("n2".into()),
                uid: Some("u2".into()),
                resource_version: Some("7".into()),
                labels: Some([("zone".to_string(), "a".to_string())].into()),
                annotations: Some([("big".to_string(), "x".repeat(4096))].into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default(); 3]),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: Some("10.244.2.0/24".into()),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(vec![NodeAddress {
                    type_: "InternalIP".into(),
                    address: "10.0.0.2".into(),
                }]),
                images: Some(vec![ContainerImage::default(); 40]),
                ..NodeStatus::default()
            }),
        };
        let before = ClusterNode::from_node(&n);
        trim_node(&mut n);
        assert_eq!(
            format!("{:?}", ClusterNode::from_node(&n)),
            format!("{before:?}")
        );
        assert_eq!(n.metadata.resource_version.as_deref(), Some("7"));
        assert!(n.metadata.managed_fields.is_none() && n.metadata.annotations.is_none());
        assert!(n.status.as_ref().is_some_and(|s| s.images.is_none()));
    }

    #[test]
    fn an_agent_applies_its_record_again_only_when_it_changed_or_its_write_is_old() {
        let body = json!({"spec": {"publicKey": "k1"}});
        let now = Instant::now();
        assert!(own_spec_due(false, &body, None, now), "never written");
        assert!(!own_spec_due(true, &body, None, now), "the watch shows it");
        let written = (body.clone(), now);
        let later = |s: u64| now + Duration::from_secs(s);
        assert!(
            !own_spec_due(false, &body, Some(&written), later(5)),
            "written 5 s ago, the watch lags"
        );
        assert!(
            own_spec_due(false, &body, Some(&written), later(30)),
            "written 30 s ago and still not shown"
        );
        let other = json!({"spec": {"publicKey": "k2"}});
        assert!(
            own_spec_due(false, &other, Some(&written), later(1)),
            "a new key is written at once"
        );
    }

    #[test]
    fn a_simulated_group_gives_each_node_its_own_agent_and_key_folder() {
        let base = AgentOptions {
            key_file: PathBuf::from("/sim/private.key"),
            simulate: true,
            ..options()
        };
        let group = simulated_group(&base, "sim-0000, sim-0001,sim-0002").unwrap();
        let names: Vec<&str> = group.iter().map(|o| o.node_name.as_str()).collect();
        assert_eq!(names, ["sim-0000", "sim-0001", "sim-0002"]);
        assert_eq!(
            group[1].key_file,
            PathBuf::from("/sim/sim-0001/private.key")
        );
        assert!(
            group
                .iter()
                .all(|o| o.simulate && o.network == base.network)
        );
    }

    #[test]
    fn a_simulated_group_refuses_what_no_bench_means_naming_the_fault() {
        let sim = AgentOptions {
            simulate: true,
            ..options()
        };
        let err = simulated_group(&options(), "a,b").unwrap_err();
        assert!(err.contains("WH_SIMULATE=1"), "{err}");
        let err = simulated_group(&sim, "a,,b").unwrap_err();
        assert!(err.contains("name 2"), "{err}");
        let err = simulated_group(&sim, "a,../x").unwrap_err();
        assert!(err.contains("'../x'"), "{err}");
        let err = simulated_group(&sim, "a,b,a").unwrap_err();
        assert!(err.contains("'a' is named twice"), "{err}");
        let many = vec!["n"; MAX_SIMULATED_NODES + 1].join(",");
        let err = simulated_group(&sim, &many).unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }

    fn agent(client: Client) -> Agent {
        let (nodes, _) = reflector::store::<Node>();
        let (networks, _) = reflector::store::<WireHubNetwork>();
        let (records, _) = reflector::store::<WireHubNode>();
        Agent::new(
            options(),
            client,
            nodes,
            networks,
            records,
            Arc::new(Shared::default()),
        )
    }

    fn mock_agent() -> (Agent, Handle) {
        let (service, handle) = mock::pair::<HttpRequest<Body>, HttpResponse<Body>>();
        (agent(Client::new(service, "default")), handle)
    }

    fn reply(status: StatusCode, body: serde_json::Value) -> HttpResponse<Body> {
        HttpResponse::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    fn status_error(code: StatusCode, reason: &str) -> HttpResponse<Body> {
        reply(
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": format!("mock: {reason}"), "reason": reason, "code": code.as_u16()}),
        )
    }

    fn lease(holder: &str, renewed: Timestamp) -> serde_json::Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "wirehub-lab", "namespace": "kube-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": lease::LEASE_SECONDS,
                     "renewTime": MicroTime(renewed)}
        })
    }

    /// A lease keeper of agent n1 against the mock, whose watch has listed
    /// `seen` (None: no Lease).
    fn keeper(seen: Option<serde_json::Value>) -> (LeaseKeeper, Handle, Arc<Notify>) {
        let (service, handle) = mock::pair::<HttpRequest<Body>, HttpResponse<Body>>();
        let client = Client::new(service, "default");
        let (store, mut writer) = reflector::store::<Lease>();
        writer.apply_watcher_event(&watcher::Event::Init);
        if let Some(l) = seen {
            let l: Lease = serde_json::from_value(l).unwrap();
            writer.apply_watcher_event(&watcher::Event::InitApply(l));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let changed = Arc::new(Notify::new());
        let (acting, _) = watch::channel(None);
        let k = LeaseKeeper {
            api: Api::namespaced(client, "kube-system"),
            name: "wirehub-lab".into(),
            me: "n1".into(),
            seen: store,
            written: None,
            acting,
            changed: Arc::clone(&changed),
            nodes: reflector::store::<Node>().0,
        };
        (k, handle, changed)
    }

    #[tokio::test]
    async fn a_lease_held_by_another_agent_is_left_alone_without_a_request() {
        let (mut k, mut handle, _) = keeper(Some(lease("n2", Timestamp::now())));
        let server = tokio::spawn(async move {
            // Nothing at all: the watch told who holds it.
            assert!(
                tokio::time::timeout(Duration::from_millis(200), handle.next_request())
                    .await
                    .is_err()
            );
        });
        let after = k.step().await;
        assert!(!k.is_acting());
        assert!(after <= lease::RENEW_EVERY, "{after:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_an_error() {
        let old = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(600);
        let (mut k, mut handle, _) = keeper(Some(lease("n2", old)));
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "PUT");
            assert!(req.uri().path().ends_with("/leases/wirehub-lab"));
            send.send_response(status_error(StatusCode::CONFLICT, "Conflict"));
        });
        assert_eq!(k.step().await, lease::RETRY);
        assert!(
            !k.is_acting(),
            "a conflict on the replace means someone else won"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_held_and_wakes_a_round() {
        let (mut k, mut handle, changed) = keeper(None);
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "POST");
            send.send_response(reply(StatusCode::CREATED, lease("n1", Timestamp::now())));
        });
        assert_eq!(k.step().await, lease::RENEW_EVERY);
        assert!(k.is_acting());
        tokio::time::timeout(Duration::from_millis(100), changed.notified())
            .await
            .expect("a new holder's round is woken");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_holder_renews_from_its_own_write_even_when_the_watch_lags() {
        let old = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(8);
        let (mut k, mut handle, _) = keeper(Some(lease(
            "n2",
            old - k8s_openapi::jiff::SignedDuration::from_secs(600),
        )));
        k.written = Some(serde_json::from_value(lease("n1", old)).unwrap());
        k.acting
            .send_replace(Some(Instant::now() + Duration::from_secs(5)));
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "PUT");
            let body = http_body_util::BodyExt::collect(req.into_body())
                .await
                .unwrap()
                .to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["spec"]["holderIdentity"], "n1", "{body}");
            send.send_response(reply(StatusCode::OK, lease("n1", Timestamp::now())));
        });
        assert_eq!(k.step().await, lease::RENEW_EVERY);
        assert!(k.is_acting());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn failed_status_writes_and_events_are_retried_later() {
        let (mut a, mut handle) = mock_agent();
        let net = WireHubNetwork::new(
            "lab",
            serde_json::from_value(json!({"subnet": "10.99.0.0/24"})).unwrap(),
        );
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (req, send) = handle.next_request().await.unwrap();
                match req.method().as_str() {
                    "PATCH" => {
                        assert!(req.uri().path().ends_with("/wirehubnetworks/lab/status"));
                        assert!(
                            req.uri()
                                .query()
                                .unwrap_or_default()
                                .contains("fieldManager=wirehub-leader"),
                            "{}",
                            req.uri()
                        );
                        send.send_response(status_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "InternalError",
                        ));
                    }
                    "POST" => {
                        assert!(req.uri().path().ends_with("/namespaces/default/events"));
                        send.send_response(status_error(StatusCode::FORBIDDEN, "Forbidden"));
                    }
                    m => panic!("unexpected {m} {}", req.uri()),
                }
            }
        });
        let status = WireHubNetworkStatus {
            node_count: Some(3),
            ..WireHubNetworkStatus::default()
        };
        assert!(a.write_network_status("lab", status).await.is_err());
        assert!(
            a.last_network_status.is_none(),
            "a failed write is written again next round"
        );
        a.event_once(
            &net,
            PlannedEvent {
                key: "k".into(),
                type_: EventType::Warning,
                reason: "InvalidSpec",
                action: "Validate",
                note: "x".into(),
            },
        )
        .await;
        assert!(
            a.events_sent.is_empty(),
            "a refused event is sent again next round"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn an_allocation_is_written_only_over_the_record_as_seen() {
        use super::super::crd::WireHubNodeSpec;
        use http_body_util::BodyExt;
        let (mut a, mut handle) = mock_agent();
        let (records, mut writer) = reflector::store::<WireHubNode>();
        let k = PrivateKey::from_bytes([2; 32]).public_key();
        let mut r = WireHubNode::new(
            "n2",
            WireHubNodeSpec {
                network: "lab".into(),
                public_key: Some(k.to_string()),
                endpoints: Vec::new(),
                overlay_ipv4: None,
                pod_cidr: None,
                pod_cidrs: Vec::new(),
            },
        );
        r.metadata.resource_version = Some("41".into());
        writer.apply_watcher_event(&watcher::Event::Apply(r.clone()));
        a.records = records;
        let net = WireHubNetwork::new(
            "lab",
            serde_json::from_value(json!({"subnet": "10.99.0.0/24", "podSubnet": "10.244.0.0/16"}))
                .unwrap(),
        );
        let node = ClusterNode {
            name: "n2".into(),
            key: Some(k),
            ..ClusterNode::default()
        };
        let server = tokio::spawn(async move {
            for answer in [StatusCode::CONFLICT, StatusCode::OK] {
                let (req, send) = handle.next_request().await.unwrap();
                assert_eq!(req.method(), "PATCH");
                assert!(req.uri().path().ends_with("/wirehubnodes/n2"));
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body["metadata"]["resourceVersion"], "41", "{body}");
                assert_eq!(body["spec"]["overlayIpv4"], "10.99.0.254", "{body}");
                assert_eq!(body["spec"]["podCidr"], "10.244.0.0/24", "{body}");
                // The whole list of the node's blocks (this network: IPv4 only).
                assert_eq!(body["spec"]["podCidrs"], json!(["10.244.0.0/24"]), "{body}");
                if answer == StatusCode::OK {
                    send.send_response(reply(StatusCode::OK, serde_json::to_value(&r).unwrap()));
                } else {
                    send.send_response(status_error(answer, "Conflict"));
                }
            }
        });
        // Someone wrote the record meanwhile: not an error, nothing taken,
        // and the next round comes soon.
        let mut nodes = vec![node.clone()];
        assert!(a.allocate(&net, &mut nodes).await.unwrap().is_empty());
        assert!(a.write_conflict, "a conflict asks for a round soon");
        assert_eq!(
            (nodes[0].overlay_ip, nodes[0].recorded_pod_cidr),
            (None, None)
        );
        // Written over the version seen: taken.
        let mut nodes = vec![node];
        a.allocate(&net, &mut nodes).await.unwrap();
        assert_eq!(
            nodes[0].overlay_ip,
            Some(std::net::Ipv4Addr::new(10, 99, 0, 254))
        );
        server.await.unwrap();
    }

    #[test]
    fn a_record_waiting_for_its_allocation_wakes_only_the_holder_and_its_own_agent() {
        use super::super::crd::WireHubNodeSpec;
        let mut r = WireHubNode::new(
            "n2",
            WireHubNodeSpec {
                network: "lab".into(),
                public_key: Some(PrivateKey::from_bytes([2; 32]).public_key().to_string()),
                endpoints: Vec::new(),
                overlay_ipv4: None,
                pod_cidr: None,
                pod_cidrs: Vec::new(),
            },
        );
        let waiting = record_fingerprint(&r, "n1", false);
        assert_eq!(
            waiting,
            record_fingerprint(&WireHubNode::new("n3", r.spec.clone()), "n1", false)
        );
        assert_ne!(
            waiting,
            record_fingerprint(&r, "n1", true),
            "the holder allocates it"
        );
        assert_ne!(
            waiting,
            record_fingerprint(&r, "n2", false),
            "its own agent"
        );
        r.spec.overlay_ipv4 = Some("10.99.0.254".into());
        assert_ne!(
            waiting,
            record_fingerprint(&r, "n1", false),
            "allocated: every agent"
        );
    }

    #[test]
    fn a_node_without_an_agent_yet_wakes_only_the_holder_and_its_own_agent() {
        let node = |name: &str| Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        let lonely = node_fingerprint(&node("n2"), "n1", false, false);
        assert_eq!(lonely, node_fingerprint(&node("n3"), "n1", false, false));
        assert_ne!(
            lonely,
            node_fingerprint(&node("n2"), "n1", true, false),
            "the holder"
        );
        assert_ne!(
            lonely,
            node_fingerprint(&node("n2"), "n2", false, false),
            "its own agent"
        );
        assert_ne!(
            lonely,
            node_fingerprint(&node("n2"), "n1", false, true),
            "with an agent: every agent"
        );
    }

    #[test]
    fn a_new_problem_is_logged_alone_and_a_new_generation_logs_every_one() {
        let waiting = |n: &str| Problem {
            reason: "WaitingForAllocation",
            message: format!("node {n} has no overlay address or pod CIDR yet"),
        };
        let last = vec![waiting("n2")];
        let now = vec![waiting("n2"), waiting("n3")];
        assert_eq!(problems_to_log(&now, &last, true), vec![&now[1]]);
        assert_eq!(problems_to_log(&now, &last, false), vec![&now[0], &now[1]]);
        assert!(problems_to_log(&last, &now, true).is_empty());
    }

    #[test]
    fn watches_list_from_the_api_servers_cache_not_from_etcd() {
        assert_eq!(list_watch().list_semantic, watcher::ListSemantic::Any);
    }

    #[test]
    fn changes_settle_a_tenth_of_a_second_or_as_long_as_a_slow_round_up_to_two() {
        assert_eq!(settle(Duration::ZERO, false), Duration::from_millis(100));
        assert_eq!(
            settle(Duration::from_millis(700), false),
            Duration::from_millis(700)
        );
        assert_eq!(
            settle(Duration::from_secs(9), false),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_lease_holder_acts_on_a_change_after_a_tenth_of_a_second_always() {
        assert_eq!(settle(Duration::from_secs(9), true), SETTLE);
    }

    #[test]
    fn failed_rounds_back_off_up_to_a_minute_and_no_further() {
        let e = K8sError::Config("down".into());
        let waits: Vec<u64> = (1..=9)
            .map(|n| error_policy(&e, n).requeue_after().as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
