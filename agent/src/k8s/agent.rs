//! `wh agent`: the process of the WireHub DaemonSet, one per node.
//!
//! It keeps the node's private key in a host path (made with the network's
//! workbits on first start), publishes the public key and the node's
//! endpoint on its Node, watches the `WireHubNetwork` and the Nodes, builds
//! the [`NetworkSpec`] every node runs ([`convert::cluster_spec`]), and runs
//! the node core (`node::daemon::run`, as `wh up` does) with an updates
//! channel: a change in the cluster becomes a `SpecUpdate`, applied like
//! `wh reload` (tunnels of unchanged peers are kept). An invalid resource, or
//! a change the node refuses, is reported on the resource's status and as an
//! Event; the node keeps running the last good network.
//!
//! One agent at a time holds the network's Lease (coordination.k8s.io/v1):
//! it allocates overlay addresses and pod CIDRs (recorded on the Nodes),
//! writes the network's conditions, emits the network's Events and removes
//! the status entries of Nodes that are gone. Every agent writes its own
//! node's status entry with server-side apply under its own field manager,
//! so no agent ever overwrites another's.
//!
//! [`NetworkSpec`]: crate::config::NetworkSpec

use super::alloc;
use super::convert::{self, ClusterNode, ClusterSpec, Problem};
use super::crd::{Condition, NodeStatus, PeerPath, WireHubNetwork, WireHubNetworkStatus};
use super::metrics::{self, Shared};
use super::{ANN_ENDPOINT, ANN_OVERLAY_IP, ANN_POD_CIDR, ANN_PUBLIC_KEY, K8sError};
use crate::cli::Args;
use crate::cli::commands::Outcome;
use crate::config::{DEFAULT_PORT, NetworkSpec};
use crate::control::{self, PathStatus, Request};
use crate::dataplane::BackendKind;
use crate::keys::{PrivateKey, PublicKey, search};
use crate::node::daemon::{CNI_CONFIG_NAME, SpecUpdate};
use crate::node::launch::{DEFAULT_MTU, Mode, UpOptions};
use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};

/// Default place of the node's private key (a host path in the DaemonSet).
pub const DEFAULT_KEY_FILE: &str = "/var/lib/wirehub/private.key";
/// Default address of the health and metrics endpoints.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9796";
/// How long the leader's Lease lasts without renewal.
const LEASE_SECONDS: i32 = 20;
/// How often the agent re-checks everything even without a change.
const RESYNC: Duration = Duration::from_secs(10);
/// An own status entry is rewritten at least this often (a heartbeat).
const HEARTBEAT: Duration = Duration::from_secs(30);
/// A node entry older than this counts as not ready.
const STALE: Duration = Duration::from_secs(90);
/// Normal or Warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The field manager of the network-wide status.
const LEADER_MANAGER: &str = "wirehub-leader";

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
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl AgentOptions {
    /// Reads `wh agent`'s keywords, falling back on the environment.
    pub fn from_args(args: &Args) -> anyhow::Result<AgentOptions> {
        let get = |kw: &str, var: &str| args.get(kw).map(str::to_string).or_else(|| env(var));
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
                .filter(|m| (1..=1_000_000).contains(m))
                .with_context(|| {
                    format!("relay-limit '{m}' is not a number of Mbit/s from 1 to 1000000")
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
        })
    }
}

/// `wh agent ...`: runs until SIGTERM.
pub fn run(args: &Args) -> Outcome {
    let opts = AgentOptions::from_args(args).map_err(|e| {
        crate::cli::commands::Failure::Usage(crate::cli::Usage {
            command: Some("agent"),
            message: format!("{e:#}"),
        })
    })?;
    crate::node::daemon::init_logging("info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(main(opts))?;
    Ok(0)
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
    shared: Arc<Shared>,
    key: Option<(PrivateKey, PublicKey)>,
    daemon: Option<Daemon>,
    leader: bool,
    lease_renewed: Option<Instant>,
    /// Problems of this node (status message).
    node_problems: Vec<Problem>,
    /// What the leader last found wrong with the network as a whole.
    network_problems: Vec<Problem>,
    /// Events already sent, so each is sent once per generation.
    events_sent: HashMap<String, i64>,
    last_status: Option<(NodeStatus, Instant)>,
    last_conditions: Vec<Condition>,
    stopping: bool,
    /// The node's CNI configuration as the node core last wrote it.
    cni_config: Option<String>,
    /// Since when the node could have started (alone).
    could_start: Option<Instant>,
}

async fn main(opts: AgentOptions) -> anyhow::Result<()> {
    tracing::info!(node = %opts.node_name, network = ?opts.network, "wirehub agent starting");
    let shared = Arc::new(Shared::default());
    tokio::spawn(metrics::serve(opts.metrics_addr, Arc::clone(&shared)));
    let client = Client::try_default()
        .await
        .map_err(|e| K8sError::Config(e.to_string()))?;
    let changed = Arc::new(Notify::new());

    let (nodes, nodes_writer) = reflector::store::<Node>();
    let node_stream = reflector::reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    // Only what the network is built from counts: not the kubelets'
    // heartbeats.
    tokio::spawn(forward_changes(
        node_stream,
        Arc::clone(&changed),
        "nodes",
        |n: &Node| format!("{:?}", ClusterNode::from_node(n)),
    ));

    let (networks, networks_writer) = reflector::store::<WireHubNetwork>();
    let mut net_config = watcher::Config::default();
    if let Some(name) = &opts.network {
        net_config = net_config.fields(&format!("metadata.name={name}"));
    }
    let net_stream = reflector::reflector(
        networks_writer,
        watcher(Api::<WireHubNetwork>::all(client.clone()), net_config),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(forward_changes(
        net_stream,
        Arc::clone(&changed),
        "wirehubnetworks",
        |n: &WireHubNetwork| {
            format!(
                "{}/{:?}",
                n.metadata.resource_version.as_deref().unwrap_or_default(),
                n.metadata.uid
            )
        },
    ));

    let mut agent = Agent::new(opts, client, nodes, networks, shared);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                // Let a burst of changes settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                agent.reconcile().await;
            }
            _ = resync.tick() => agent.reconcile().await,
            _ = poll.tick() => agent.poll_daemon().await,
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

fn now_rfc3339() -> String {
    Timestamp::now().to_string()
}

fn age_of(rfc3339: Option<&str>) -> Option<Duration> {
    let t: Timestamp = rfc3339?.parse().ok()?;
    let d = Timestamp::now().duration_since(t);
    d.try_into().ok()
}

impl Agent {
    /// An agent that has done nothing yet: no key, no node, not leader.
    fn new(
        opts: AgentOptions,
        client: Client,
        nodes: Store<Node>,
        networks: Store<WireHubNetwork>,
        shared: Arc<Shared>,
    ) -> Agent {
        Agent {
            opts,
            client,
            nodes,
            networks,
            shared,
            key: None,
            daemon: None,
            leader: false,
            lease_renewed: None,
            node_problems: Vec::new(),
            network_problems: Vec::new(),
            events_sent: HashMap::new(),
            last_status: None,
            last_conditions: Vec::new(),
            stopping: false,
            cni_config: None,
            could_start: None,
        }
    }

    fn network(&self) -> Option<Arc<WireHubNetwork>> {
        let all = self.networks.state();
        match &self.opts.network {
            Some(name) => all.into_iter().find(|n| n.name_any() == *name),
            None if all.len() == 1 => all.into_iter().next(),
            None => None,
        }
    }

    fn cluster_nodes(&self) -> Vec<ClusterNode> {
        self.nodes
            .state()
            .iter()
            .map(|n| ClusterNode::from_node(n))
            .collect()
    }

    /// One round: make sure of the key and the annotations, allocate (as
    /// leader), build the network, run or update the node, report.
    async fn reconcile(&mut self) {
        if self.stopping {
            return;
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
            return;
        };
        let name = net.name_any();
        let generation = net.metadata.generation.unwrap_or_default();
        self.node_problems.clear();
        let (workbits, namespace) = (
            net.spec.workbits.unwrap_or(crate::keys::DEFAULT_WORKBITS),
            net.spec
                .namespace
                .clone()
                .unwrap_or_else(|| crate::keys::DEFAULT_NAMESPACE.into()),
        );
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
                    self.node_problems.push(Problem {
                        reason: "NoKey",
                        message: e.to_string(),
                    });
                    self.write_own_status(&net, None).await;
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "key search failed");
                    return;
                }
            }
        }
        let Some((_, public)) = self.key.clone() else {
            return;
        };
        if public.workbits(&namespace) < workbits {
            self.node_problems.push(Problem {
                reason: "KeyBelowWorkbits",
                message: format!(
                    "the node's key {} has {} workbits in namespace '{namespace}', the network requires {workbits}; delete {} on the node and restart its agent to make a new key",
                    public.short(10),
                    public.workbits(&namespace),
                    self.opts.key_file.display()
                ),
            });
        }
        let listen_port = self
            .daemon
            .as_ref()
            .map(|d| d.listen_port)
            .unwrap_or(net.spec.listen_port.unwrap_or(DEFAULT_PORT));
        self.publish_annotations(&public, listen_port).await;

        let nodes = self.cluster_nodes();
        self.renew_lease(&name).await;
        self.network_problems.clear();
        if self.leader {
            self.allocate(&name, &net, &nodes).await;
        }

        let built = convert::cluster_spec(&name, &net.spec, &nodes, true);
        match built {
            Err(problems) => {
                for p in &problems {
                    tracing::warn!(generation, "invalid WireHubNetwork {name}: {}", p.message);
                }
                let message = problems
                    .iter()
                    .map(|p| p.message.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                self.network_problems.extend(problems);
                if self.leader {
                    self.event_once(
                        &net,
                        &format!("invalid/{generation}"),
                        EventType::Warning,
                        "InvalidSpec",
                        "Validate",
                        format!("generation {generation} cannot be used, the nodes keep the last good network: {message}"),
                    )
                    .await;
                }
                self.shared.set_spec_valid(false);
            }
            Ok(cs) => {
                self.shared.set_spec_valid(true);
                for (node, p) in &cs.left_out {
                    if node == &self.opts.node_name {
                        self.node_problems.push(p.clone());
                    } else if p.reason != "WaitingForKey" {
                        self.network_problems.push(p.clone());
                    }
                }
                if cs.members.contains(&self.opts.node_name) {
                    self.apply(&net, cs).await;
                } else if self.daemon.is_some() {
                    self.node_problems.push(Problem {
                        reason: "LeftOut",
                        message: "this node is no longer in the network; it keeps running the last network until its agent restarts".into(),
                    });
                }
            }
        }
        if self.daemon.is_some() && net.spec.listen_port.unwrap_or(DEFAULT_PORT) != listen_port {
            self.node_problems.push(Problem {
                reason: "RestartNeeded",
                message: format!(
                    "spec.listenPort changed to {}; the node listens on {listen_port} until its agent restarts",
                    net.spec.listen_port.unwrap_or(DEFAULT_PORT)
                ),
            });
        }
        let status = self.shared.status();
        self.write_own_status(&net, status.as_ref()).await;
        if self.leader {
            self.write_network_status(&net, &nodes).await;
        }
    }

    /// Puts the key and endpoint on the Node (merge patch, only on change).
    async fn publish_annotations(&mut self, public: &PublicKey, listen_port: u16) {
        let Some(node) = self
            .nodes
            .state()
            .into_iter()
            .find(|n| n.name_any() == self.opts.node_name)
        else {
            tracing::warn!(node = %self.opts.node_name, "my Node is not in the cluster (yet)");
            return;
        };
        let me = ClusterNode::from_node(&node);
        let endpoint = me.internal_ip.as_ref().map(|ip| {
            if ip.contains(':') {
                format!("[{ip}]:{listen_port}")
            } else {
                format!("{ip}:{listen_port}")
            }
        });
        let annotations = node.metadata.annotations.clone().unwrap_or_default();
        let mut patch = serde_json::Map::new();
        let key_text = public.to_string();
        if annotations.get(ANN_PUBLIC_KEY) != Some(&key_text) {
            patch.insert(ANN_PUBLIC_KEY.into(), json!(key_text));
        }
        if let Some(e) = endpoint
            && annotations.get(ANN_ENDPOINT) != Some(&e)
        {
            patch.insert(ANN_ENDPOINT.into(), json!(e));
        }
        if patch.is_empty() {
            return;
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let body = json!({"metadata": {"annotations": patch}});
        match api
            .patch(
                &self.opts.node_name,
                &PatchParams::default(),
                &Patch::Merge(&body),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(node = %self.opts.node_name, annotations = ?patch.keys().collect::<Vec<_>>(), "published on the Node")
            }
            Err(e) => tracing::warn!(error = %e, "cannot annotate my Node"),
        }
    }

    /// Takes or renews the network's Lease; `self.leader` says who won.
    async fn renew_lease(&mut self, network: &str) {
        if self
            .lease_renewed
            .is_some_and(|t| t.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.opts.namespace);
        let lease_name = format!("wirehub-{network}");
        let me = self.opts.node_name.clone();
        let now = Timestamp::now();
        let was = self.leader;
        let result = match api.get_opt(&lease_name).await {
            Err(e) => Err(e),
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(lease_name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(me.clone()),
                        lease_duration_seconds: Some(LEASE_SECONDS),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                api.create(&PostParams::default(), &lease)
                    .await
                    .map(|_| true)
            }
            Ok(Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let duration = spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS).max(1);
                let expired = spec
                    .renew_time
                    .as_ref()
                    .is_none_or(|t| now.duration_since(t.0).as_secs() > i64::from(duration));
                if holder == me || holder.is_empty() || expired {
                    if holder != me {
                        spec.acquire_time = Some(MicroTime(now));
                        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    }
                    spec.holder_identity = Some(me.clone());
                    spec.lease_duration_seconds = Some(LEASE_SECONDS);
                    spec.renew_time = Some(MicroTime(now));
                    api.replace(&lease_name, &PostParams::default(), &lease)
                        .await
                        .map(|_| true)
                } else {
                    Ok(false)
                }
            }
        };
        self.leader = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "lease");
                false
            }
        };
        self.lease_renewed = self.leader.then(Instant::now);
        if self.leader != was {
            tracing::info!(leader = self.leader, lease = %lease_name, "network lease");
        }
    }

    /// Leader only: gives every selected node with a key what it lacks.
    async fn allocate(&mut self, name: &str, net: &WireHubNetwork, nodes: &[ClusterNode]) {
        let Ok((header, _, externals)) = convert::resource_peers(name, &net.spec) else {
            return;
        };
        let Some(subnet) = header.subnet else {
            return;
        };
        let selected: Vec<&ClusterNode> = nodes
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
        let pod_subnet = net
            .spec
            .pod_subnet
            .as_deref()
            .and_then(|p| p.parse::<ipnet::Ipv4Net>().ok());
        let prefix = net
            .spec
            .pod_cidr_prefix
            .unwrap_or(convert::DEFAULT_POD_CIDR_PREFIX);
        let (plan, problems) = alloc::plan(subnet, pod_subnet, prefix, &selected, &in_use);
        self.network_problems.extend(problems);
        let api: Api<Node> = Api::all(self.client.clone());
        for a in plan {
            let mut ann = serde_json::Map::new();
            if let Some(ip) = a.overlay_ip {
                ann.insert(ANN_OVERLAY_IP.into(), json!(ip.to_string()));
            }
            if let Some(c) = a.pod_cidr {
                ann.insert(ANN_POD_CIDR.into(), json!(c.to_string()));
            }
            let body = json!({"metadata": {"annotations": ann}});
            match api
                .patch(&a.node, &PatchParams::default(), &Patch::Merge(&body))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %a.node, overlay_ip = ?a.overlay_ip, pod_cidr = ?a.pod_cidr, "allocated")
                }
                Err(e) => tracing::warn!(node = %a.node, error = %e, "cannot record an allocation"),
            }
        }
    }

    /// Starts the node core with `cs`, or sends it `cs` as an update.
    async fn apply(&mut self, net: &WireHubNetwork, cs: ClusterSpec) {
        let Some((key, public)) = self.key.clone() else {
            return;
        };
        let generation = net.metadata.generation.unwrap_or_default();
        if let Some(d) = &mut self.daemon {
            if d.running == cs.spec {
                self.shared.set_generation(generation);
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
                    self.shared.count_update(true);
                    self.shared.set_generation(generation);
                    if self.leader {
                        self.event_once(
                            net,
                            "updated",
                            EventType::Normal,
                            "Updated",
                            "Reload",
                            format!(
                                "generation {generation} applied on {}: {summary}",
                                self.opts.node_name
                            ),
                        )
                        .await;
                    }
                }
                Ok(Ok(Err(why))) => {
                    tracing::warn!(generation, "network update refused: {why}");
                    self.shared.count_update(false);
                    self.node_problems.push(Problem {
                        reason: "UpdateRefused",
                        message: format!("generation {generation} refused, the node keeps the last network: {why}"),
                    });
                    let note = format!("node {}: {why}", self.opts.node_name);
                    self.event_once(
                        net,
                        &format!("refused/{}", self.opts.node_name),
                        EventType::Warning,
                        "UpdateRefused",
                        "Reload",
                        note,
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
    /// metrics).
    async fn poll_daemon(&mut self) {
        let Some(d) = &self.daemon else {
            return;
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
                return;
            }
            Err(_) => return,
        };
        if let Some(dir) = &self.opts.cni_dir
            && let Ok(text) = std::fs::read_to_string(dir.join(CNI_CONFIG_NAME))
        {
            self.cni_config = Some(text);
        }
        self.shared.set_inspect(v);
    }

    /// Who a key is, for the status: a node name or a peer's hostname.
    fn names(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        if let Some(d) = &self.daemon {
            for p in &d.running.peers {
                if let Some(h) = &p.hostname {
                    m.insert(p.key.to_string(), h.clone());
                }
            }
        }
        for n in self.cluster_nodes() {
            if let Some(k) = n.key {
                m.insert(k.to_string(), n.name.clone());
            }
        }
        m
    }

    /// This node's entry of the status, from the node's own state.
    fn own_entry(&self, net: &WireHubNetwork, status: Option<&control::Status>) -> NodeStatus {
        let me = self
            .cluster_nodes()
            .into_iter()
            .find(|n| n.name == self.opts.node_name)
            .unwrap_or_default();
        let names = self.names();
        let mut entry = NodeStatus {
            name: self.opts.node_name.clone(),
            public_key: self.key.as_ref().map(|(_, p)| p.to_string()),
            endpoint: me.endpoint.as_ref().map(|e| e.to_string()),
            overlay_ipv4: me.overlay_ip.map(|i| i.to_string()),
            pod_cidr: me.pod_cidr().map(|c| c.to_string()),
            observed_generation: self.shared.generation(),
            ..NodeStatus::default()
        };
        let members: Vec<String> = self
            .daemon
            .as_ref()
            .map(|d| d.running.trusted().map(|p| p.key.to_string()).collect())
            .unwrap_or_default();
        if let Some(s) = status {
            entry.nat = Some(s.nat.clone());
            entry.overlay_ipv6 = s.ipv6.clone();
            entry.overlay_ipv4 = s.ipv4.clone().or(entry.overlay_ipv4);
            let mut peers: Vec<PeerPath> = s
                .peers
                .iter()
                .filter(|p| members.contains(&p.key))
                .map(|p| {
                    let (path, via) = match &p.path {
                        PathStatus::Direct { endpoint } => ("direct", Some(endpoint.clone())),
                        PathStatus::Relayed { via } => ("relayed", via.first().cloned()),
                        PathStatus::Unknown => ("unknown", None),
                    };
                    let via = via.map(|v| {
                        // "KEY@addr" for relays: name the relay when known.
                        match v.split_once('@') {
                            Some((k, a)) => {
                                match names.iter().find(|(key, _)| key.starts_with(k)) {
                                    Some((_, n)) => format!("{n}@{a}"),
                                    None => v.clone(),
                                }
                            }
                            None => v.clone(),
                        }
                    });
                    PeerPath {
                        name: names
                            .get(&p.key)
                            .cloned()
                            .or_else(|| p.hostname.clone())
                            .unwrap_or_else(|| p.key.chars().take(10).collect()),
                        path: path.into(),
                        via,
                        last_handshake_seconds: p.last_handshake_secs,
                    }
                })
                .collect();
            peers.sort_by(|a, b| a.name.cmp(&b.name));
            let cluster_keys: Vec<String> = self
                .cluster_nodes()
                .iter()
                .filter(|n| n.name != self.opts.node_name)
                .filter_map(|n| n.key.map(|k| k.to_string()))
                .collect();
            let all_nodes_reached = s
                .peers
                .iter()
                .filter(|p| cluster_keys.contains(&p.key) && members.contains(&p.key))
                .all(|p| !matches!(p.path, PathStatus::Unknown));
            entry.ready = self.daemon.is_some() && all_nodes_reached;
            entry.peers = peers;
        }
        if self.daemon.is_none() {
            self.node_problems_message(&mut entry, Some("the node is not running yet"));
        } else {
            self.node_problems_message(&mut entry, None);
        }
        let _ = net;
        entry
    }

    fn node_problems_message(&self, entry: &mut NodeStatus, extra: Option<&str>) {
        let mut parts: Vec<String> = self
            .node_problems
            .iter()
            .map(|p| format!("{}: {}", p.reason, p.message))
            .collect();
        if let Some(e) = extra {
            parts.push(e.to_string());
        }
        entry.message = (!parts.is_empty()).then(|| parts.join("; "));
    }

    /// Writes this node's entry (server-side apply, own field manager), when
    /// it changed or as a heartbeat.
    async fn write_own_status(&mut self, net: &WireHubNetwork, status: Option<&control::Status>) {
        let mut entry = self.own_entry(net, status);
        let unchanged = self.last_status.as_ref().is_some_and(|(last, at)| {
            let mut l = last.clone();
            l.last_update = None;
            // Handshake ages move every second: compare without them.
            let strip = |e: &mut NodeStatus| {
                for p in &mut e.peers {
                    p.last_handshake_seconds = None;
                }
            };
            strip(&mut l);
            let mut e = entry.clone();
            strip(&mut e);
            l == e && at.elapsed() < HEARTBEAT
        });
        self.shared.set_ready(entry.ready);
        if unchanged {
            return;
        }
        entry.last_update = Some(now_rfc3339());
        let name = net.name_any();
        let api: Api<WireHubNetwork> = Api::all(self.client.clone());
        let body = json!({
            "apiVersion": "wirehub.io/v1alpha1",
            "kind": "WireHubNetwork",
            "metadata": {"name": name},
            "status": {"nodes": [entry]},
        });
        let manager = format!("wirehub-agent-{}", self.opts.node_name);
        match api
            .patch_status(
                &name,
                &PatchParams::apply(&manager).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => self.last_status = Some((entry, Instant::now())),
            Err(e) => tracing::warn!(error = %e, "cannot write my status entry"),
        }
    }

    /// Leader only: the network's conditions and counts, and the removal of
    /// entries of Nodes that are gone.
    async fn write_network_status(&mut self, net: &WireHubNetwork, nodes: &[ClusterNode]) {
        let name = net.name_any();
        let generation = net.metadata.generation.unwrap_or_default();
        let status = net.status.clone().unwrap_or_default();
        let existing: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let selected: Vec<&ClusterNode> = nodes
            .iter()
            .filter(|n| n.selected(&net.spec.node_selector))
            .collect();
        // Entries of deleted Nodes: removed with a JSON patch guarded by a test.
        let api: Api<WireHubNetwork> = Api::all(self.client.clone());
        for (i, e) in status.nodes.iter().enumerate().rev() {
            if !existing.contains(&e.name.as_str()) {
                let patch: json_patch::Patch = match serde_json::from_value(json!([
                    {"op": "test", "path": format!("/status/nodes/{i}/name"), "value": e.name},
                    {"op": "remove", "path": format!("/status/nodes/{i}")},
                ])) {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(node = %e.name, "removed the status entry of a deleted Node")
                    }
                    Err(err) => tracing::debug!(error = %err, "cannot remove a stale status entry"),
                }
                return;
            }
        }
        let fresh = |e: &NodeStatus| age_of(e.last_update.as_deref()).is_some_and(|a| a < STALE);
        let entries: BTreeMap<&str, &NodeStatus> =
            status.nodes.iter().map(|e| (e.name.as_str(), e)).collect();
        // Nodes take part once their agent published a key: a selected
        // node where no agent runs (the DaemonSet's own nodeSelector, a
        // node being set up) is named, but does not hold the network back.
        let without_agent: Vec<String> = selected
            .iter()
            .filter(|n| n.key.is_none())
            .map(|n| n.name.clone())
            .collect();
        let members: Vec<&&ClusterNode> = selected.iter().filter(|n| n.key.is_some()).collect();
        let node_count = members.len() as i32;
        let mut ready = 0;
        let mut not_ready = Vec::new();
        let mut node_messages = Vec::new();
        for n in &members {
            match entries.get(n.name.as_str()) {
                Some(e) if e.ready && fresh(e) => ready += 1,
                Some(e) => {
                    not_ready.push(n.name.clone());
                    if let Some(m) = &e.message {
                        node_messages.push(format!("{}: {m}", n.name));
                    }
                }
                None => not_ready.push(n.name.clone()),
            }
        }
        let no_agent_note = if without_agent.is_empty() {
            String::new()
        } else {
            format!(" (no agent yet on {})", without_agent.join(", "))
        };
        let invalid: Vec<&Problem> = self
            .network_problems
            .iter()
            .filter(|p| p.reason == convert::INVALID_SPEC)
            .collect();
        let (ready_status, ready_reason, ready_message) = if node_count == 0 {
            ("False", "NoNodes", "no node takes part yet".to_string())
        } else if not_ready.is_empty() {
            (
                "True",
                "AllNodesReady",
                format!("{ready} of {node_count} nodes are up and reach each other{no_agent_note}"),
            )
        } else {
            (
                "False",
                "NodesNotReady",
                format!("not ready: {}{no_agent_note}", not_ready.join(", ")),
            )
        };
        let (deg_status, deg_reason, deg_message) = if !invalid.is_empty() {
            (
                "True",
                convert::INVALID_SPEC.to_string(),
                format!(
                    "generation {generation} cannot be used, the nodes keep running the last good network: {}",
                    invalid
                        .iter()
                        .map(|p| p.message.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )
        } else if let Some(p) = self.network_problems.first() {
            (
                "True",
                p.reason.to_string(),
                self.network_problems
                    .iter()
                    .map(|p| p.message.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        } else if !node_messages.is_empty() {
            ("True", "NodeProblems".to_string(), node_messages.join("; "))
        } else if !not_ready.is_empty() {
            (
                "True",
                "NodesNotReady".to_string(),
                format!("not ready: {}", not_ready.join(", ")),
            )
        } else {
            (
                "False",
                "AsExpected".to_string(),
                "nothing is wrong".to_string(),
            )
        };
        let conditions = vec![
            self.condition(
                "Ready",
                ready_status,
                ready_reason,
                &ready_message,
                generation,
                &status,
            ),
            self.condition(
                "Degraded",
                deg_status,
                &deg_reason,
                &deg_message,
                generation,
                &status,
            ),
        ];
        let summary = (conditions.clone(), node_count, ready);
        let same = self.last_conditions == summary.0
            && status.node_count == Some(node_count)
            && status.ready_nodes == Some(ready)
            && status.observed_generation == Some(generation);
        if same {
            return;
        }
        if deg_status == "True"
            && deg_reason
                != self
                    .last_conditions
                    .get(1)
                    .and_then(|c| c.reason.clone())
                    .unwrap_or_default()
        {
            tracing::warn!(reason = %deg_reason, "network degraded: {deg_message}");
        }
        let patch = WireHubNetworkStatus {
            observed_generation: Some(generation),
            node_count: Some(node_count),
            ready_nodes: Some(ready),
            conditions,
            nodes: Vec::new(),
        };
        let body = json!({
            "apiVersion": "wirehub.io/v1alpha1",
            "kind": "WireHubNetwork",
            "metadata": {"name": name},
            "status": patch,
        });
        match api
            .patch_status(
                &name,
                &PatchParams::apply(LEADER_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => self.last_conditions = summary.0,
            Err(e) => tracing::warn!(error = %e, "cannot write the network's conditions"),
        }
    }

    fn condition(
        &self,
        type_: &str,
        status: &str,
        reason: &str,
        message: &str,
        generation: i64,
        current: &WireHubNetworkStatus,
    ) -> Condition {
        let since = current
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or_else(now_rfc3339);
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.chars().take(1000).collect()),
            last_transition_time: Some(since),
            observed_generation: Some(generation),
        }
    }

    /// Publishes an Event about the network once per `key` and generation.
    /// A core/v1 Event in the namespace `default` (where events about a
    /// cluster-scoped object go): Kubernetes before 1.22 refuses an
    /// events.k8s.io/v1 Event about a cluster-scoped object, and `kubectl
    /// describe` finds these.
    async fn event_once(
        &mut self,
        net: &WireHubNetwork,
        key: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let generation = net.metadata.generation.unwrap_or_default();
        if self.events_sent.get(key) == Some(&generation) {
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
                self.events_sent.insert(key.to_string(), generation);
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
        let Some(net) = self.network() else {
            return;
        };
        self.node_problems.push(Problem {
            reason: "NodeFailed",
            message: why.to_string(),
        });
        self.last_status = None;
        self.write_own_status(&net, None).await;
    }
}

/// Error paths a real API server does not produce on demand, against
/// kube-rs's mock service: conflicts, refusals and failures are reported
/// and never crash the agent or touch the running node.
#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request as HttpRequest, Response as HttpResponse, StatusCode};
    use kube::client::Body;
    use tower_test::mock;

    type Handle = mock::Handle<HttpRequest<Body>, HttpResponse<Body>>;

    fn agent(client: Client) -> Agent {
        let (nodes, _) = reflector::store::<Node>();
        let (networks, _) = reflector::store::<WireHubNetwork>();
        Agent::new(
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
            },
            client,
            nodes,
            networks,
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
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": LEASE_SECONDS,
                     "renewTime": MicroTime(renewed)}
        })
    }

    #[tokio::test]
    async fn a_lease_held_by_another_agent_is_left_alone() {
        let (mut a, mut handle) = mock_agent();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "GET");
            assert!(
                req.uri().path().ends_with("/leases/wirehub-lab"),
                "{}",
                req.uri()
            );
            send.send_response(reply(StatusCode::OK, lease("n2", Timestamp::now())));
            // Nothing else: the agent must not try to take it.
            assert!(
                tokio::time::timeout(Duration::from_millis(200), handle.next_request())
                    .await
                    .is_err()
            );
        });
        a.renew_lease("lab").await;
        assert!(!a.leader);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_is_not_an_error() {
        let (mut a, mut handle) = mock_agent();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            let old = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(600);
            send.send_response(reply(StatusCode::OK, lease("n2", old)));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "PUT");
            send.send_response(status_error(StatusCode::CONFLICT, "Conflict"));
        });
        a.renew_lease("lab").await;
        assert!(
            !a.leader,
            "a conflict on the replace means someone else won"
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_and_held() {
        let (mut a, mut handle) = mock_agent();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(status_error(StatusCode::NOT_FOUND, "NotFound"));
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req.method(), "POST");
            send.send_response(reply(StatusCode::CREATED, lease("n1", Timestamp::now())));
        });
        a.renew_lease("lab").await;
        assert!(a.leader);
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
                                .contains("fieldManager=wirehub-agent-n1"),
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
        a.write_own_status(&net, None).await;
        assert!(
            a.last_status.is_none(),
            "a failed write is written again next round"
        );
        a.event_once(
            &net,
            "k",
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            "x".into(),
        )
        .await;
        assert!(
            a.events_sent.is_empty(),
            "a refused event is sent again next round"
        );
        server.await.unwrap();
    }
}
