//! Several clusters, one overlay: the thin shell. Owns one read-only
//! watch of `WireHubNode`s per remote cluster of spec.remoteClusters, on
//! that cluster's API server, with a client made from the kubeconfig in
//! the Secret the resource names (in the agent's namespace).
//!
//! Promises: at most [`MAX_REMOTE_CLUSTERS`] watches, each started again
//! only when its Secret's kubeconfig changes (the Secret is read again at
//! most once a [`SECRET_RECHECK`]); a watch that fails keeps the members
//! it last saw (routes are not dropped because an API server is away) and
//! is reported as a [`Problem`] naming the cluster, as is a missing or
//! unusable Secret; a change of a remote node's spec wakes a round. What
//! the members become is [`super::mesh`]'s decision. Never: a write to a
//! remote cluster, a decision about a member, a panic on what a remote
//! API server or a Secret holds.

use super::convert::{Problem, record_nodes};
use super::crd::{RemoteCluster, WireHubNode, WireHubNodeSpec};
use super::mesh::{MAX_REMOTE_CLUSTERS, MAX_REMOTE_NODES, RemoteMembers};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Config, ResourceExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

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

/// One running watch.
struct Watch {
    /// The kubeconfig it was started with.
    kubeconfig: String,
    /// Where it reads (for messages).
    server: String,
    store: Store<WireHubNode>,
    /// The last error of the watch, None once it reads again.
    error: Arc<Mutex<Option<String>>>,
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
            let error = w.error.lock().ok().and_then(|e| e.clone());
            if let Some(e) = error {
                problems.push(Problem {
                    reason: REMOTE_CLUSTER_UNREACHABLE,
                    message: format!(
                        "remote cluster {cluster} ({}) cannot be read, its nodes stay as last seen: {e}",
                        w.server
                    ),
                });
            }
            let records: Vec<WireHubNode> = w
                .store
                .state()
                .iter()
                .take(MAX_REMOTE_NODES.saturating_add(1))
                .map(|r| (**r).clone())
                .collect();
            members.push(RemoteMembers {
                cluster: cluster.clone(),
                nodes: record_nodes(network, &records),
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
    let (store, writer) = reflector::store::<WireHubNode>();
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<WireHubNode>::all(client),
            watcher::Config::default().any_semantic(),
        ),
    )
    .default_backoff();
    let error = Arc::new(Mutex::new(None));
    let task = tokio::spawn(follow(
        cluster.to_string(),
        stream,
        Arc::clone(&error),
        Arc::clone(changed),
    ))
    .abort_handle();
    Ok(Watch {
        kubeconfig: text,
        server,
        store,
        error,
        checked: Instant::now(),
        task,
    })
}

/// Follows a remote watch: records its errors, and wakes a round when a
/// node's spec changes (not for status heartbeats), when the first list is
/// complete and when the watch fails or recovers.
async fn follow<S>(
    cluster: String,
    stream: S,
    error: Arc<Mutex<Option<String>>>,
    changed: Arc<Notify>,
) where
    S: futures::Stream<Item = Result<watcher::Event<WireHubNode>, watcher::Error>>,
{
    futures::pin_mut!(stream);
    // What each remote node said last (bounded as the members taken).
    let mut seen: HashMap<String, WireHubNodeSpec> = HashMap::new();
    while let Some(event) = stream.next().await {
        let was_failing = error.lock().map(|e| e.is_some()).unwrap_or(false);
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                if let Ok(mut slot) = error.lock() {
                    *slot = Some(e.to_string());
                }
                if !was_failing {
                    tracing::warn!(%cluster, error = %e, "remote cluster watch failed");
                    changed.notify_one();
                }
                continue;
            }
        };
        if was_failing {
            if let Ok(mut slot) = error.lock() {
                *slot = None;
            }
            tracing::info!(%cluster, "remote cluster watch reads again");
            changed.notify_one();
        }
        match event {
            watcher::Event::Apply(r) | watcher::Event::InitApply(r) => {
                let name = r.name_any();
                let fresh = seen.get(&name) != Some(&r.spec);
                if fresh && (seen.contains_key(&name) || seen.len() < MAX_REMOTE_NODES) {
                    seen.insert(name, r.spec.clone());
                    changed.notify_one();
                }
            }
            watcher::Event::Delete(r) => {
                if seen.remove(&r.name_any()).is_some() {
                    changed.notify_one();
                }
            }
            watcher::Event::InitDone => changed.notify_one(),
            watcher::Event::Init => {}
        }
    }
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
