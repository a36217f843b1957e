//! Several clusters, one overlay: the thin shell. Owns one read-only
//! watch of `WireHubNode`s per remote cluster of spec.remoteClusters, on
//! that cluster's API server, with a client made from the kubeconfig in
//! the Secret the resource names (in the agent's namespace).
//!
//! Beside it, a watch of that cluster's `WireHubNetwork`s, so that its
//! nodes join only while its network of this name agrees with ours
//! ([`super::mesh::network_mismatch`]).
//!
//! Promises: at most [`MAX_REMOTE_CLUSTERS`] clusters, each with a store
//! bounded at [`MAX_REMOTE_NODES`] nodes (those beyond it at the last list
//! are counted) and [`MAX_REMOTE_NETWORKS`] networks; each watch started again
//! only when its Secret's kubeconfig changes (the Secret is read again at
//! most once a [`SECRET_RECHECK`]); a watch that fails keeps the members
//! it last saw (routes are not dropped because an API server is away) and
//! is reported as a [`Problem`] naming the cluster, as is a missing or
//! unusable Secret; a change of a remote node's spec wakes a round. What
//! the members become is [`super::mesh`]'s decision. Never: a write to a
//! remote cluster, a decision about a member, a panic on what a remote
//! API server or a Secret holds.

use super::convert::{Problem, record_nodes};
use super::crd::{RemoteCluster, WireHubNetwork, WireHubNetworkSpec, WireHubNode};
use super::mesh::{MAX_REMOTE_CLUSTERS, MAX_REMOTE_NODES, RemoteMembers, RemoteNetwork};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tracing::Instrument;

/// How often the Secret of a running watch is read again.
pub const SECRET_RECHECK: Duration = Duration::from_secs(60);
/// A remote cluster's API server cannot be read (its watch fails).
pub const REMOTE_CLUSTER_UNREACHABLE: &str = "RemoteClusterUnreachable";
/// A remote cluster's Secret is missing, lacks its key or cannot be read.
pub const REMOTE_SECRET_MISSING: &str = "RemoteSecretMissing";
/// A remote cluster's kubeconfig cannot be used.
pub const REMOTE_KUBECONFIG_INVALID: &str = "RemoteKubeconfigInvalid";
/// The kubeconfig key of a Secret when the resource names none.
pub const DEFAULT_SECRET_KEY: &str = "kubeconfig";
/// The most `WireHubNetwork`s kept of one remote cluster.
pub const MAX_REMOTE_NETWORKS: usize = 64;

/// What the watches of one remote cluster have seen, bounded.
#[derive(Debug, Default)]
struct Seen {
    /// Its `WireHubNode`s by name (at most [`MAX_REMOTE_NODES`]).
    nodes: BTreeMap<String, WireHubNode>,
    /// The nodes of the list in progress, swapped in when it is complete.
    listing_nodes: Option<BTreeMap<String, WireHubNode>>,
    /// Nodes beyond [`MAX_REMOTE_NODES`] at the last list.
    over_limit: usize,
    /// Its `WireHubNetwork`s by name (at most [`MAX_REMOTE_NETWORKS`]),
    /// None until first listed.
    networks: Option<BTreeMap<String, WireHubNetworkSpec>>,
    listing_networks: Option<BTreeMap<String, WireHubNetworkSpec>>,
    /// The last error of each watch, None once it reads again.
    node_error: Option<String>,
    network_error: Option<String>,
}

/// Which of a cluster's two watches an event or an error comes from.
enum Update {
    Node(Result<watcher::Event<WireHubNode>, watcher::Error>),
    Network(Result<watcher::Event<WireHubNetwork>, watcher::Error>),
}

impl Seen {
    /// Takes one event of the node watch; whether a round should look
    /// (a node's spec changed, it came or went, a list completed).
    fn on_node(&mut self, event: watcher::Event<WireHubNode>) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing_nodes = Some(BTreeMap::new());
                self.over_limit = 0;
                false
            }
            watcher::Event::InitApply(r) => {
                let listing = self.listing_nodes.get_or_insert_with(BTreeMap::new);
                if listing.len() < MAX_REMOTE_NODES {
                    listing.insert(r.name_any(), trimmed(r));
                } else {
                    self.over_limit += 1;
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(listed) = self.listing_nodes.take() {
                    self.nodes = listed;
                }
                true
            }
            watcher::Event::Apply(r) => {
                let name = r.name_any();
                let changed = self.nodes.get(&name).is_none_or(|old| old.spec != r.spec);
                if self.nodes.contains_key(&name) || self.nodes.len() < MAX_REMOTE_NODES {
                    self.nodes.insert(name, trimmed(r));
                    changed
                } else {
                    false
                }
            }
            watcher::Event::Delete(r) => self.nodes.remove(&r.name_any()).is_some(),
        }
    }

    /// Takes one event of the network watch; whether a round should look.
    fn on_network(&mut self, event: watcher::Event<WireHubNetwork>) -> bool {
        let keep = |map: &mut BTreeMap<String, WireHubNetworkSpec>, r: WireHubNetwork| {
            let name = r.name_any();
            if map.contains_key(&name) || map.len() < MAX_REMOTE_NETWORKS {
                map.insert(name, r.spec);
            }
        };
        match event {
            watcher::Event::Init => {
                self.listing_networks = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(r) => {
                keep(self.listing_networks.get_or_insert_with(BTreeMap::new), r);
                false
            }
            watcher::Event::InitDone => {
                self.networks = Some(self.listing_networks.take().unwrap_or_default());
                true
            }
            watcher::Event::Apply(r) => {
                let networks = self.networks.get_or_insert_with(BTreeMap::new);
                let before = networks.get(&r.name_any()).cloned();
                keep(networks, r.clone());
                networks.get(&r.name_any()) != before.as_ref()
            }
            watcher::Event::Delete(r) => self
                .networks
                .as_mut()
                .is_some_and(|n| n.remove(&r.name_any()).is_some()),
        }
    }

    /// What the cluster's network named `network` is, as last seen.
    fn network(&self, network: &str) -> RemoteNetwork {
        match &self.networks {
            None => RemoteNetwork::Unknown,
            Some(n) => n.get(network).map_or(RemoteNetwork::Absent, |s| {
                RemoteNetwork::Present(Box::new(s.clone()))
            }),
        }
    }
}

/// A remote node as kept: without the bookkeeping of its metadata.
fn trimmed(mut r: WireHubNode) -> WireHubNode {
    trim_record(&mut r);
    r
}

/// A `WireHubNode` as every agent keeps it, of its own cluster or a
/// remote one: spec, status and owners, not the bookkeeping of its
/// metadata (managedFields, annotations).
pub(super) fn trim_record(r: &mut WireHubNode) {
    r.metadata.managed_fields = None;
    r.metadata.annotations = None;
}

/// One running watch.
struct Watch {
    /// The kubeconfig it was started with.
    kubeconfig: String,
    /// Where it reads (for messages).
    server: String,
    seen: Arc<Mutex<Seen>>,
    checked: Instant,
    task: tokio::task::AbortHandle,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watches of the remote clusters of one network.
#[derive(Default)]
pub struct RemoteWatches {
    watches: BTreeMap<String, Watch>,
    /// Why a cluster has no watch (its Secret), by cluster.
    problems: BTreeMap<String, Problem>,
}

impl RemoteWatches {
    /// Starts, restarts or stops watches so that there is one per cluster
    /// of `wanted` (the first [`MAX_REMOTE_CLUSTERS`]).
    pub async fn sync(
        &mut self,
        client: &Client,
        namespace: &str,
        wanted: &[RemoteCluster],
        changed: &Arc<Notify>,
    ) {
        let wanted = &wanted[..wanted.len().min(MAX_REMOTE_CLUSTERS)];
        self.watches
            .retain(|name, _| wanted.iter().any(|r| r.name == *name));
        self.problems
            .retain(|name, _| wanted.iter().any(|r| r.name == *name));
        for r in wanted {
            if self
                .watches
                .get(&r.name)
                .is_some_and(|w| w.checked.elapsed() < SECRET_RECHECK)
            {
                continue;
            }
            let text = match read_kubeconfig(client, namespace, r).await {
                Ok(text) => text,
                Err(p) => {
                    // A watch already running keeps going on what it has.
                    self.problems.insert(r.name.clone(), p);
                    continue;
                }
            };
            if let Some(w) = self.watches.get_mut(&r.name)
                && w.kubeconfig == text
            {
                w.checked = Instant::now();
                self.problems.remove(&r.name);
                continue;
            }
            match start(&r.name, text, changed).await {
                Ok(w) => {
                    tracing::info!(cluster = %r.name, server = %w.server, "watching a remote cluster");
                    self.watches.insert(r.name.clone(), w);
                    self.problems.remove(&r.name);
                }
                Err(message) => {
                    self.watches.remove(&r.name);
                    self.problems.insert(
                        r.name.clone(),
                        Problem {
                            reason: REMOTE_KUBECONFIG_INVALID,
                            message,
                        },
                    );
                }
            }
        }
    }

    /// Every remote cluster's members in `network` as last seen, in the
    /// order of the clusters' names, and what is wrong with the watches.
    pub fn members(&self, network: &str) -> (Vec<RemoteMembers>, Vec<Problem>) {
        let mut problems: Vec<Problem> = self.problems.values().cloned().collect();
        let mut members = Vec::new();
        for (cluster, w) in &self.watches {
            let Ok(seen) = w.seen.lock() else { continue };
            if let Some(e) = seen.node_error.as_ref().or(seen.network_error.as_ref()) {
                problems.push(Problem {
                    reason: REMOTE_CLUSTER_UNREACHABLE,
                    message: format!(
                        "remote cluster {cluster} ({}) cannot be read, its nodes stay as last seen: {e}",
                        w.server
                    ),
                });
            }
            let records: Vec<WireHubNode> = seen.nodes.values().cloned().collect();
            members.push(RemoteMembers {
                cluster: cluster.clone(),
                network: seen.network(network),
                nodes: record_nodes(network, &records),
                over_limit: seen.over_limit,
            });
        }
        (members, problems)
    }
}

/// The kubeconfig of remote cluster `r`, from its Secret in `namespace`.
async fn read_kubeconfig(
    client: &Client,
    namespace: &str,
    r: &RemoteCluster,
) -> Result<String, Problem> {
    let secret = &r.kubeconfig_secret;
    let key = secret.key.as_deref().unwrap_or(DEFAULT_SECRET_KEY);
    let missing = |what: String| Problem {
        reason: REMOTE_SECRET_MISSING,
        message: format!("remote cluster {}: {what}", r.name),
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = api.get_opt(&secret.name).await.map_err(|e| {
        missing(format!(
            "cannot read Secret {namespace}/{}: {e}",
            secret.name
        ))
    })?;
    let Some(found) = found else {
        return Err(missing(format!(
            "Secret {namespace}/{} does not exist",
            secret.name
        )));
    };
    let Some(bytes) = found.data.as_ref().and_then(|d| d.get(key)) else {
        return Err(missing(format!(
            "Secret {namespace}/{} has no key '{key}'",
            secret.name
        )));
    };
    String::from_utf8(bytes.0.clone()).map_err(|_| {
        missing(format!(
            "Secret {namespace}/{}'s key '{key}' is not UTF-8 text",
            secret.name
        ))
    })
}

/// A watch of the `WireHubNode`s of the cluster the kubeconfig `text`
/// reaches, or why it cannot be made (naming the cluster).
async fn start(cluster: &str, text: String, changed: &Arc<Notify>) -> Result<Watch, String> {
    let bad = |e: String| format!("remote cluster {cluster}: the kubeconfig cannot be used: {e}");
    let kubeconfig = Kubeconfig::from_yaml(&text).map_err(|e| bad(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| bad(e.to_string()))?;
    let nodes = watcher(
        Api::<WireHubNode>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .map(Update::Node);
    let networks = watcher(
        Api::<WireHubNetwork>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .map(Update::Network);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let task = tokio::spawn(
        follow(
            cluster.to_string(),
            futures::stream::select(nodes, networks),
            Arc::clone(&seen),
            Arc::clone(changed),
        )
        .in_current_span(),
    )
    .abort_handle();
    Ok(Watch {
        kubeconfig: text,
        server,
        seen,
        checked: Instant::now(),
        task,
    })
}

/// Follows a remote cluster's two watches into `seen`: records their
/// errors, and wakes a round when a node's spec changes (not for status
/// heartbeats), when a network changes, when a list is complete and when
/// a watch fails or recovers.
async fn follow<S>(cluster: String, stream: S, seen: Arc<Mutex<Seen>>, changed: Arc<Notify>)
where
    S: futures::Stream<Item = Update>,
{
    futures::pin_mut!(stream);
    while let Some(update) = stream.next().await {
        let Ok(mut seen) = seen.lock() else { return };
        let wake = match update {
            Update::Node(Ok(e)) => {
                recovered(&cluster, "WireHubNode", &mut seen.node_error) | seen.on_node(e)
            }
            Update::Network(Ok(e)) => {
                recovered(&cluster, "WireHubNetwork", &mut seen.network_error) | seen.on_network(e)
            }
            Update::Node(Err(e)) => failed(&cluster, "WireHubNode", &mut seen.node_error, &e),
            Update::Network(Err(e)) => {
                failed(&cluster, "WireHubNetwork", &mut seen.network_error, &e)
            }
        };
        if wake {
            changed.notify_one();
        }
    }
}

/// Records that a watch of `what` failed; true when it was reading before.
fn failed(cluster: &str, what: &str, slot: &mut Option<String>, e: &watcher::Error) -> bool {
    let first = slot.replace(e.to_string()).is_none();
    if first {
        tracing::warn!(%cluster, error = %e, "remote cluster {what} watch failed");
    }
    first
}

/// Records that a watch of `what` reads; true when it was failing before.
fn recovered(cluster: &str, what: &str, slot: &mut Option<String>) -> bool {
    let was_failing = slot.take().is_some();
    if was_failing {
        tracing::info!(%cluster, "remote cluster {what} watch reads again");
    }
    was_failing
}

/// The shell's refusals against kube-rs's mock API server (and a closed
/// port on loopback): a Secret that is missing, lacks its key or holds no
/// usable kubeconfig becomes a problem naming the cluster and the Secret,
/// and no watch; an API server that cannot be reached, a problem naming
/// the cluster and its address.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::crd::SecretKey;
    use http::{Request as HttpRequest, Response as HttpResponse, StatusCode};
    use kube::client::Body;
    use tower_test::mock;

    type Handle = mock::Handle<HttpRequest<Body>, HttpResponse<Body>>;

    fn b() -> RemoteCluster {
        RemoteCluster {
            name: "b".into(),
            kubeconfig_secret: SecretKey {
                name: "cluster-b".into(),
                key: None,
            },
        }
    }

    fn reply(status: StatusCode, body: serde_json::Value) -> HttpResponse<Body> {
        HttpResponse::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    /// One sync of cluster b, the API server answering the Secret's GET
    /// with `status` and `body`; the problems it leaves and whether a
    /// watch runs.
    async fn sync_with(status: StatusCode, body: serde_json::Value) -> (Vec<Problem>, usize) {
        let (service, mut handle): (_, Handle) = mock::pair();
        let client = Client::new(service, "default");
        let server = tokio::spawn(async move {
            if let Some((request, send)) = handle.next_request().await {
                assert_eq!(
                    request.uri().path(),
                    "/api/v1/namespaces/kube-system/secrets/cluster-b"
                );
                send.send_response(reply(status, body));
            }
        });
        let mut watches = RemoteWatches::default();
        watches
            .sync(&client, "kube-system", &[b()], &Arc::new(Notify::new()))
            .await;
        let _ = server.await;
        let (members, problems) = watches.members("lab");
        (problems, members.len())
    }

    fn remote_node(name: &str, network: &str) -> WireHubNode {
        let mut n = WireHubNode::new(
            name,
            crate::k8s::crd::WireHubNodeSpec {
                network: network.into(),
                public_key: None,
                endpoints: Vec::new(),
                overlay_ipv4: None,
                pod_cidr: None,
                pod_cidrs: Vec::new(),
            },
        );
        n.metadata.managed_fields = Some(Vec::new());
        n
    }

    fn remote_network(name: &str, subnet: &str) -> WireHubNetwork {
        WireHubNetwork::new(
            name,
            WireHubNetworkSpec {
                subnet: subnet.into(),
                ..crate::k8s::fixtures::lab_spec()
            },
        )
    }

    /// Lists `nodes` as a watch's first list does.
    fn list_nodes(seen: &mut Seen, nodes: impl IntoIterator<Item = WireHubNode>) -> bool {
        seen.on_node(watcher::Event::Init);
        for n in nodes {
            seen.on_node(watcher::Event::InitApply(n));
        }
        seen.on_node(watcher::Event::InitDone)
    }

    #[test]
    fn a_cluster_s_network_is_unknown_until_listed_then_absent_or_present() {
        let mut seen = Seen::default();
        assert_eq!(seen.network("lab"), RemoteNetwork::Unknown);
        seen.on_network(watcher::Event::Init);
        seen.on_network(watcher::Event::InitApply(remote_network(
            "other",
            "10.1.0.0/24",
        )));
        assert_eq!(
            seen.network("lab"),
            RemoteNetwork::Unknown,
            "the list is not complete"
        );
        assert!(seen.on_network(watcher::Event::InitDone));
        assert_eq!(seen.network("lab"), RemoteNetwork::Absent);
        assert!(seen.on_network(watcher::Event::Apply(remote_network("lab", "10.0.0.0/24"))));
        assert!(
            matches!(seen.network("lab"), RemoteNetwork::Present(s) if s.subnet == "10.0.0.0/24")
        );
        assert!(
            !seen.on_network(watcher::Event::Apply(remote_network("lab", "10.0.0.0/24"))),
            "the same spec again wakes nobody"
        );
        assert!(seen.on_network(watcher::Event::Delete(remote_network("lab", "10.0.0.0/24"))));
        assert_eq!(seen.network("lab"), RemoteNetwork::Absent);
    }

    #[test]
    fn a_cluster_s_nodes_are_kept_up_to_the_limit_and_the_rest_counted() {
        let mut seen = Seen::default();
        let many = (0..MAX_REMOTE_NODES + 3).map(|i| remote_node(&format!("n{i}"), "lab"));
        assert!(list_nodes(&mut seen, many));
        assert_eq!(seen.nodes.len(), MAX_REMOTE_NODES);
        assert_eq!(seen.over_limit, 3);
        assert!(
            !seen.on_node(watcher::Event::Apply(remote_node("beyond", "lab"))),
            "a node beyond the limit is not kept"
        );
        assert_eq!(seen.nodes.len(), MAX_REMOTE_NODES);
        assert!(
            seen.nodes
                .values()
                .all(|n| n.metadata.managed_fields.is_none())
        );
    }

    #[test]
    fn a_relist_replaces_the_nodes_only_once_complete() {
        let mut seen = Seen::default();
        list_nodes(
            &mut seen,
            [remote_node("a", "lab"), remote_node("b", "lab")],
        );
        seen.on_node(watcher::Event::Init);
        seen.on_node(watcher::Event::InitApply(remote_node("b", "lab")));
        assert_eq!(
            seen.nodes.len(),
            2,
            "the old list stays until the new one is done"
        );
        seen.on_node(watcher::Event::InitDone);
        assert_eq!(seen.nodes.keys().collect::<Vec<_>>(), ["b"]);
        assert!(seen.on_node(watcher::Event::Delete(remote_node("b", "lab"))));
        assert!(seen.nodes.is_empty());
    }

    #[tokio::test]
    async fn a_missing_secret_is_a_problem_naming_the_cluster_and_the_secret() {
        let (problems, watches) = sync_with(
            StatusCode::NOT_FOUND,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        )
        .await;
        assert_eq!(watches, 0);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].reason, REMOTE_SECRET_MISSING);
        assert_eq!(
            problems[0].message,
            "remote cluster b: Secret kube-system/cluster-b does not exist"
        );
    }

    #[tokio::test]
    async fn a_secret_without_the_kubeconfig_key_is_a_problem_naming_the_key() {
        let (problems, _) = sync_with(
            StatusCode::OK,
            serde_json::json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "cluster-b"}, "data": {"other": "eA=="}}),
        )
        .await;
        assert_eq!(problems[0].reason, REMOTE_SECRET_MISSING);
        assert!(problems[0].message.contains("has no key 'kubeconfig'"));
    }

    #[tokio::test]
    async fn a_kubeconfig_that_does_not_parse_starts_no_watch() {
        // "not: [yaml" in base64.
        let (problems, watches) = sync_with(
            StatusCode::OK,
            serde_json::json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "cluster-b"}, "data": {"kubeconfig": "bm90OiBbeWFtbA=="}}),
        )
        .await;
        assert_eq!(watches, 0);
        assert_eq!(problems[0].reason, REMOTE_KUBECONFIG_INVALID);
        assert!(
            problems[0]
                .message
                .starts_with("remote cluster b: the kubeconfig cannot be used")
        );
    }

    #[tokio::test]
    async fn an_api_server_that_cannot_be_reached_is_reported_as_unreachable() {
        // A closed port on loopback: the watch fails at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {{server: \"https://127.0.0.1:{closed}\", insecure-skip-tls-verify: true}}\nusers:\n- name: r\n  user: {{token: t}}\ncontexts:\n- name: b\n  context: {{cluster: b, user: r}}\ncurrent-context: b\n"
        );
        let changed = Arc::new(Notify::new());
        let watch = start("b", text, &changed).await.unwrap();
        let mut watches = RemoteWatches::default();
        watches.watches.insert("b".into(), watch);
        tokio::time::timeout(Duration::from_secs(10), changed.notified())
            .await
            .unwrap();
        let (members, problems) = watches.members("lab");
        assert_eq!(members.len(), 1, "the cluster's last members are kept");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].reason, REMOTE_CLUSTER_UNREACHABLE);
        assert!(
            problems[0].message.starts_with(&format!(
                "remote cluster b (https://127.0.0.1:{closed}/) cannot be read"
            )),
            "{}",
            problems[0].message
        );
    }
}
