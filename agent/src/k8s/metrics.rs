//! The agent's HTTP endpoints: `/healthz` (the process serves), `/readyz`
//! (the node runs, answers on its control socket, has written its CNI
//! configuration) and `/metrics` (Prometheus text format: peers by path,
//! relay use, handshake ages, bytes, DHT size, drops by reason, spec
//! updates). A deliberately small HTTP/1.1 server: GET only, one request per
//! connection.

use crate::control::{PathStatus, Status};
use crate::node::daemon::CNI_CONFIG_NAME;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render(s: &State) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {v}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        }
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    metric(
        "wirehub_node_up",
        "gauge",
        "1 while the node core runs",
        &[(String::new(), flag(s.daemon_running))],
    );
    metric(
        "wirehub_node_ready",
        "gauge",
        "1 when the node reaches every other node",
        &[(String::new(), flag(s.ready))],
    );
    metric(
        "wirehub_spec_valid",
        "gauge",
        "1 when the WireHubNetwork can be used as it is",
        &[(String::new(), flag(s.spec_valid.unwrap_or(false)))],
    );
    metric(
        "wirehub_spec_generation",
        "gauge",
        "generation of the WireHubNetwork the node runs",
        &[(String::new(), s.generation.unwrap_or(0) as f64)],
    );
    metric(
        "wirehub_spec_updates_total",
        "counter",
        "network updates sent to the node, by result",
        &[
            ("result=\"applied\"".into(), s.updates_applied as f64),
            ("result=\"refused\"".into(), s.updates_refused as f64),
        ],
    );
    let Some((inspect, _)) = &s.inspect else {
        return out;
    };
    let status: Option<Status> = inspect
        .get("status")
        .and_then(|st| serde_json::from_value(st.clone()).ok());
    if let Some(st) = &status {
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
        metric(
            "wirehub_peers",
            "gauge",
            "trusted peers by path",
            &[
                ("path=\"direct\"".into(), direct),
                ("path=\"relayed\"".into(), relayed),
                ("path=\"unknown\"".into(), unknown),
            ],
        );
        let relay_samples: Vec<(String, f64)> = relays
            .into_iter()
            .map(|(r, n)| (format!("relay=\"{}\"", escape(&r)), n))
            .collect();
        metric(
            "wirehub_relay_peers",
            "gauge",
            "peers reached through each relay",
            &relay_samples,
        );
        let peer_label = |p: &crate::control::PeerStatus| {
            format!(
                "peer=\"{}\"",
                escape(p.hostname.as_deref().unwrap_or(&p.key))
            )
        };
        let hs: Vec<(String, f64)> = st
            .peers
            .iter()
            .filter_map(|p| p.last_handshake_secs.map(|h| (peer_label(p), h as f64)))
            .collect();
        metric(
            "wirehub_peer_last_handshake_seconds",
            "gauge",
            "seconds since the last WireGuard handshake with each peer",
            &hs,
        );
        let rx: Vec<(String, f64)> = st
            .peers
            .iter()
            .map(|p| (peer_label(p), p.rx_bytes as f64))
            .collect();
        metric(
            "wirehub_peer_received_bytes_total",
            "counter",
            "WireGuard bytes received from each peer",
            &rx,
        );
        let tx: Vec<(String, f64)> = st
            .peers
            .iter()
            .map(|p| (peer_label(p), p.tx_bytes as f64))
            .collect();
        metric(
            "wirehub_peer_sent_bytes_total",
            "counter",
            "WireGuard bytes sent to each peer",
            &tx,
        );
    }
    let dht = inspect
        .get("dht_size")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    metric(
        "wirehub_dht_nodes",
        "gauge",
        "nodes in the DHT routing table",
        &[(String::new(), dht)],
    );
    let drops: Vec<(String, f64)> = inspect
        .get("drops")
        .and_then(|v| v.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_f64().map(|n| (format!("reason=\"{}\"", escape(k)), n)))
                .collect()
        })
        .unwrap_or_default();
    metric(
        "wirehub_drops_total",
        "counter",
        "datagrams the node dropped, by reason",
        &drops,
    );
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
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match conn.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let request = String::from_utf8_lossy(&buf[..n]);
            let (code, body, ctype) = respond(&shared, request.lines().next().unwrap_or_default());
            let head = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

fn respond(shared: &Shared, request_line: &str) -> (&'static str, String, &'static str) {
    let mut words = request_line.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or("/"),
    );
    let path = path.split('?').next().unwrap_or(path);
    if method != "GET" && method != "HEAD" {
        return ("405 Method Not Allowed", "GET only\n".into(), "text/plain");
    }
    match path {
        "/healthz" | "/livez" => ("200 OK", "ok\n".into(), "text/plain"),
        "/readyz" => match shared.readiness() {
            Ok(()) => ("200 OK", "ready\n".into(), "text/plain"),
            Err(why) => ("503 Service Unavailable", format!("{why}\n"), "text/plain"),
        },
        "/metrics" => (
            "200 OK",
            shared.metrics(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => (
            "404 Not Found",
            "try /healthz, /readyz, /metrics\n".into(),
            "text/plain",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_answer() {
        let s = Shared::default();
        assert_eq!(respond(&s, "GET /healthz HTTP/1.1").0, "200 OK");
        assert!(respond(&s, "GET /readyz HTTP/1.1").0.starts_with("503"));
        assert!(respond(&s, "POST /metrics HTTP/1.1").0.starts_with("405"));
        s.set_daemon_running(true);
        s.set_inspect(serde_json::json!({
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
        }));
        assert!(respond(&s, "GET /readyz HTTP/1.1").0.starts_with("200"));
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
    }
}
