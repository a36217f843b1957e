//! The agent's HTTP endpoints: `/healthz` (the process serves), `/readyz`
//! (the node runs, answers on its control socket, has written its CNI
//! configuration) and `/metrics` (peers by path, relay use, handshake ages,
//! bytes, DHT size, drops by reason, spec updates), exposed by the official
//! `prometheus-client` crate in the OpenMetrics text format and served by
//! hyper (HTTP/1.1).
//!
//! Promises: at most [`MAX_CONNECTIONS`] connections at once (more wait in
//! the kernel's backlog), each closed after [`CONNECTION_TIMEOUT`] or when
//! its headers take longer than [`HEADER_TIMEOUT`]; an accept error waits
//! [`ACCEPT_BACKOFF`] instead of spinning. Never: a write method, a body
//! read, an unbounded label set (labels are the node's peers, which the
//! network file bounds).

use crate::control::{PathStatus, Status};
use crate::node::daemon::CNI_CONFIG_NAME;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection's whole life.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send the request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors, ...).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The node's state answers are older than this: not ready.
const ANSWER_MAX_AGE: Duration = Duration::from_secs(15);

#[derive(Default)]
struct State {
    daemon_running: bool,
    interface: Option<String>,
    cni_dir: Option<PathBuf>,
    inspect: Option<(serde_json::Value, Instant)>,
    spec_valid: Option<bool>,
    generation: Option<i64>,
    updates_applied: u64,
    updates_refused: u64,
    ready: bool,
    /// Remote clusters' nodes at the last round, by outcome.
    remote_nodes: RemoteNodes,
}

/// Remote clusters' nodes at one round, by outcome (a gauge each).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNodes {
    /// Taken as peers.
    pub taken: usize,
    /// Refused (a conflict; reported on the network's status).
    pub refused: usize,
    /// Not allocated yet in their cluster.
    pub waiting: usize,
    /// Dropped: beyond the per-cluster node limit.
    pub over_node_limit: usize,
    /// Dropped: clusters beyond the limit.
    pub over_cluster_limit: usize,
}

/// What the agent's loop shares with the HTTP endpoints.
#[derive(Default)]
pub struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    pub fn set_daemon_running(&self, running: bool) {
        self.with(|s| {
            s.daemon_running = running;
            if !running {
                s.inspect = None;
            }
        });
    }

    pub fn set_interface(&self, interface: &str, cni_dir: Option<PathBuf>) {
        self.with(|s| {
            s.interface = Some(interface.to_string());
            s.cni_dir = cni_dir;
        });
    }

    pub fn set_inspect(&self, v: serde_json::Value) {
        self.with(|s| s.inspect = Some((v, Instant::now())));
    }

    pub fn set_spec_valid(&self, valid: bool) {
        self.with(|s| s.spec_valid = Some(valid));
    }

    pub fn set_generation(&self, g: i64) {
        self.with(|s| s.generation = Some(g));
    }

    pub fn generation(&self) -> Option<i64> {
        self.with(|s| s.generation)
    }

    pub fn set_ready(&self, ready: bool) {
        self.with(|s| s.ready = ready);
    }

    pub fn set_remote_nodes(&self, n: RemoteNodes) {
        self.with(|s| s.remote_nodes = n);
    }

    pub fn count_update(&self, applied: bool) {
        self.with(|s| {
            if applied {
                s.updates_applied += 1;
            } else {
                s.updates_refused += 1;
            }
        });
    }

    /// The node's last status (from `Request::Inspect`).
    pub fn status(&self) -> Option<Status> {
        self.with(|s| {
            s.inspect
                .as_ref()
                .and_then(|(v, _)| v.get("status"))
                .and_then(|st| serde_json::from_value(st.clone()).ok())
        })
    }

    /// Ready: the node runs, answered lately, and its CNI file exists.
    pub fn readiness(&self) -> Result<(), String> {
        self.with(|s| {
            if !s.daemon_running {
                return Err("the node is not running".into());
            }
            match &s.inspect {
                Some((_, at)) if at.elapsed() < ANSWER_MAX_AGE => {}
                _ => return Err("the node does not answer on its control socket".into()),
            }
            if let Some(dir) = &s.cni_dir {
                let path = dir.join(CNI_CONFIG_NAME);
                if !path.exists() {
                    return Err(format!("{} is missing", path.display()));
                }
            }
            Ok(())
        })
    }

    /// The Prometheus text exposition.
    pub fn metrics(&self) -> String {
        self.with(|s| render(s))
    }
}

/// One labelled family of float gauges.
type Gauges = Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>;
/// One labelled family of counters.
type Counters = Family<Vec<(String, String)>, Counter<f64, AtomicU64>>;

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A registry holding one snapshot of the state: built at each scrape, so
/// a peer that left is not reported forever.
fn registry(s: &State) -> Registry {
    let mut r = Registry::default();
    let gauge =
        |r: &mut Registry, name: &str, help: &str, samples: Vec<(Vec<(String, String)>, f64)>| {
            let family = Gauges::default();
            for (l, v) in samples {
                family.get_or_create(&l).set(v);
            }
            r.register(name, help, family);
        };
    let counter =
        |r: &mut Registry, name: &str, help: &str, samples: Vec<(Vec<(String, String)>, f64)>| {
            let family = Counters::default();
            for (l, v) in samples {
                family.get_or_create(&l).inc_by(v);
            }
            r.register(name, help, family);
        };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    gauge(
        &mut r,
        "wirehub_node_up",
        "1 while the node core runs",
        vec![(vec![], flag(s.daemon_running))],
    );
    gauge(
        &mut r,
        "wirehub_node_ready",
        "1 when the node reaches every other node",
        vec![(vec![], flag(s.ready))],
    );
    gauge(
        &mut r,
        "wirehub_spec_valid",
        "1 when the WireHubNetwork can be used as it is",
        vec![(vec![], flag(s.spec_valid.unwrap_or(false)))],
    );
    gauge(
        &mut r,
        "wirehub_spec_generation",
        "generation of the WireHubNetwork the node runs",
        vec![(vec![], s.generation.unwrap_or(0) as f64)],
    );
    counter(
        &mut r,
        "wirehub_spec_updates",
        "network updates sent to the node, by result",
        vec![
            (labels(&[("result", "applied")]), s.updates_applied as f64),
            (labels(&[("result", "refused")]), s.updates_refused as f64),
        ],
    );
    let rn = s.remote_nodes;
    gauge(
        &mut r,
        "wirehub_remote_nodes",
        "other clusters' nodes at the last round, by outcome (dropped: over a limit)",
        [
            ("taken", rn.taken),
            ("refused", rn.refused),
            ("waiting", rn.waiting),
            ("dropped_over_node_limit", rn.over_node_limit),
            ("dropped_over_cluster_limit", rn.over_cluster_limit),
        ]
        .into_iter()
        .map(|(o, n)| (labels(&[("outcome", o)]), n as f64))
        .collect(),
    );
    let Some((inspect, _)) = &s.inspect else {
        return r;
    };
    let status: Option<Status> = inspect
        .get("status")
        .and_then(|st| serde_json::from_value(st.clone()).ok());
    if let Some(st) = &status {
        register_peers(&mut r, st, &gauge, &counter);
    }
    let dht = inspect
        .get("dht_size")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    gauge(
        &mut r,
        "wirehub_dht_nodes",
        "nodes in the DHT routing table",
        vec![(vec![], dht)],
    );
    let drops: Vec<(Vec<(String, String)>, f64)> = inspect
        .get("drops")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_f64().map(|n| (labels(&[("reason", k)]), n)))
                .collect()
        })
        .unwrap_or_default();
    counter(
        &mut r,
        "wirehub_drops",
        "datagrams the node dropped, by reason",
        drops,
    );
    r
}

/// The per-peer metrics: paths by kind, peers per relay, handshake ages,
/// bytes each way.
fn register_peers(
    r: &mut Registry,
    st: &Status,
    gauge: &impl Fn(&mut Registry, &str, &str, Vec<(Vec<(String, String)>, f64)>),
    counter: &impl Fn(&mut Registry, &str, &str, Vec<(Vec<(String, String)>, f64)>),
) {
    let (mut direct, mut relayed, mut unknown) = (0.0, 0.0, 0.0);
    let mut relays: std::collections::BTreeMap<String, f64> = Default::default();
    for p in &st.peers {
        match &p.path {
            PathStatus::Direct { .. } => direct += 1.0,
            PathStatus::Relayed { via } => {
                relayed += 1.0;
                if let Some(r) = via.first() {
                    let relay = r.split('@').next().unwrap_or(r).to_string();
                    *relays.entry(relay).or_default() += 1.0;
                }
            }
            PathStatus::Unknown => unknown += 1.0,
        }
    }
    gauge(
        r,
        "wirehub_peers",
        "trusted peers by path",
        vec![
            (labels(&[("path", "direct")]), direct),
            (labels(&[("path", "relayed")]), relayed),
            (labels(&[("path", "unknown")]), unknown),
        ],
    );
    gauge(
        r,
        "wirehub_relay_peers",
        "peers reached through each relay",
        relays
            .into_iter()
            .map(|(relay, n)| (labels(&[("relay", &relay)]), n))
            .collect(),
    );
    let peer = |p: &crate::control::PeerStatus| {
        labels(&[("peer", p.hostname.as_deref().unwrap_or(&p.key))])
    };
    gauge(
        r,
        "wirehub_peer_path",
        "1 for each peer, labelled with its path (direct, relayed, unknown)",
        st.peers
            .iter()
            .map(|p| {
                let path = match p.path {
                    PathStatus::Direct { .. } => "direct",
                    PathStatus::Relayed { .. } => "relayed",
                    PathStatus::Unknown => "unknown",
                };
                let mut l = peer(p);
                l.push(("path".into(), path.into()));
                (l, 1.0)
            })
            .collect(),
    );
    gauge(
        r,
        "wirehub_peer_last_handshake_seconds",
        "seconds since the last WireGuard handshake with each peer",
        st.peers
            .iter()
            .filter_map(|p| p.last_handshake_secs.map(|h| (peer(p), h as f64)))
            .collect(),
    );
    counter(
        r,
        "wirehub_peer_received_bytes",
        "WireGuard bytes received from each peer",
        st.peers
            .iter()
            .map(|p| (peer(p), p.rx_bytes as f64))
            .collect(),
    );
    counter(
        r,
        "wirehub_peer_sent_bytes",
        "WireGuard bytes sent to each peer",
        st.peers
            .iter()
            .map(|p| (peer(p), p.tx_bytes as f64))
            .collect(),
    );
}

/// The OpenMetrics text of one snapshot.
fn render(s: &State) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &registry(s));
    out
}

/// Serves the endpoints until the process ends. A port that cannot be
/// bound is logged, not fatal.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve health and metrics");
            return;
        }
    };
    tracing::info!(%addr, "health and metrics endpoints");
    serve_on(listener, shared).await
}

/// Serves on a bound listener (tests bind port 0).
pub async fn serve_on(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Closed only with the process.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, &req)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

fn answer<B>(shared: &Shared, req: &Request<B>) -> Response<Full<Bytes>> {
    let (code, body, ctype) = respond(shared, req.method(), req.uri().path());
    Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn respond(shared: &Shared, method: &Method, path: &str) -> (StatusCode, String, &'static str) {
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only\n".into(),
            "text/plain",
        );
    }
    match path {
        "/healthz" | "/livez" => (StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => match shared.readiness() {
            Ok(()) => (StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => (
            StatusCode::OK,
            shared.metrics(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "try /healthz, /readyz, /metrics\n".into(),
            "text/plain",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `wh inspect` says of a node with a direct peer (n1) and a peer
    /// relayed through RELAYKEY (n2).
    fn inspect_of_a_node_with_a_direct_and_a_relayed_peer() -> serde_json::Value {
        serde_json::json!({
            "status": {
                "interface": "wh-x", "network": "n", "node": null, "nat": "EASY",
                "public_key": "k", "listen_port": 1, "backend": "embedded",
                "ipv4": null, "ipv6": null, "dht": [],
                "peers": [
                    {"key": "a", "hostname": "n1", "role": "router", "ipv4": null, "ipv6": null,
                     "path": {"kind": "direct", "endpoint": "1.2.3.4:5"}, "nat": null,
                     "last_handshake_secs": 3, "rx_bytes": 10, "tx_bytes": 20},
                    {"key": "b", "hostname": "n2", "role": "router", "ipv4": null, "ipv6": null,
                     "path": {"kind": "relayed", "via": ["RELAYKEY@1.2.3.4:5"]}, "nat": null,
                     "last_handshake_secs": null, "rx_bytes": 0, "tx_bytes": 0}
                ]
            },
            "dht_size": 4,
            "drops": {"no-path-to-peer": 2}
        })
    }

    #[test]
    fn endpoints_answer() {
        let s = Shared::default();
        assert_eq!(respond(&s, &Method::GET, "/healthz").0, StatusCode::OK);
        assert_eq!(
            respond(&s, &Method::GET, "/readyz").0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(&s, &Method::POST, "/metrics").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        s.set_daemon_running(true);
        s.set_inspect(inspect_of_a_node_with_a_direct_and_a_relayed_peer());
        assert_eq!(respond(&s, &Method::GET, "/readyz").0, StatusCode::OK);
        let m = s.metrics();
        assert!(m.contains("wirehub_peers{path=\"direct\"} 1"), "{m}");
        assert!(m.contains("wirehub_peers{path=\"relayed\"} 1"), "{m}");
        assert!(
            m.contains("wirehub_relay_peers{relay=\"RELAYKEY\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("wirehub_peer_last_handshake_seconds{peer=\"n1\"} 3"),
            "{m}"
        );
        assert!(m.contains("wirehub_dht_nodes 4"), "{m}");
        assert!(
            m.contains("wirehub_drops_total{reason=\"no-path-to-peer\"} 2"),
            "{m}"
        );
        assert!(m.ends_with("# EOF\n"), "{m}");
    }

    #[test]
    fn the_dashboard_asks_only_for_metrics_the_agent_serves() {
        let s = Shared::default();
        s.set_daemon_running(true);
        s.set_inspect(inspect_of_a_node_with_a_direct_and_a_relayed_peer());
        let served = s.metrics();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/wirehub/dashboards/wirehub.json"
        );
        let dashboard = std::fs::read_to_string(path).unwrap();
        let names = regex::Regex::new(r"wirehub_[a-z_]+").unwrap();
        let mut asked: Vec<&str> = names.find_iter(&dashboard).map(|m| m.as_str()).collect();
        asked.sort();
        asked.dedup();
        assert!(asked.len() >= 8, "{asked:?}");
        for name in asked {
            assert!(
                served
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "the dashboard asks for {name}, which /metrics does not serve:\n{served}"
            );
        }
    }

    /// Sends `request` on a new connection and reads until the server closes.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_limit_do_not_stop_the_endpoints() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_on(listener, Arc::new(Shared::default())));
        // Connections that never send a byte hold their slots only until
        // the header timeout.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 4 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let started = Instant::now();
        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            started.elapsed() < HEADER_TIMEOUT * 3,
            "{:?}",
            started.elapsed()
        );
        let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.contains("wirehub_node_up 0"), "{answer}");
        drop(idle);
    }
}
