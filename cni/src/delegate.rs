//! Running a delegated plugin (IPAM) exactly as the spec says: found by its
//! `type` in the `CNI_PATH` directories, given the same environment as this
//! plugin (with only the variables a verb needs changed), the network
//! configuration on stdin, and its result or error JSON read from stdout.

use crate::error::{CniError, CniResult, IPAM};
use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The environment this plugin was started with.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    pub fn from_pairs<I, K, V>(it: I) -> Env
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: it.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        }
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// A non-empty variable.
    pub fn get_set(&self, k: &str) -> Option<&str> {
        self.get(k).filter(|v| !v.is_empty())
    }
}

/// Find the executable `name` in the colon-separated `cni_path`.
pub fn find_plugin(name: &str, cni_path: &str) -> CniResult<PathBuf> {
    for dir in cni_path.split(':').filter(|d| !d.is_empty()) {
        let p = PathBuf::from(dir).join(name);
        if let Ok(md) = std::fs::metadata(&p)
            && md.is_file()
            && md.permissions().mode() & 0o111 != 0
        {
            return Ok(p);
        }
    }
    Err(CniError::new(
        IPAM,
        format!("IPAM plugin {name:?} not found in CNI_PATH {cni_path:?}"),
    ))
}

/// One call of a delegated plugin.
pub struct Call<'a> {
    pub plugin: &'a str,
    pub path: PathBuf,
    pub env: &'a Env,
    /// Variables to set (a `None` value removes the variable).
    pub overrides: Vec<(&'static str, Option<String>)>,
}

impl Call<'_> {
    /// Run with `config` on stdin. `Ok(stdout)` on exit 0, else the plugin's
    /// own CNI error (its code kept, its message prefixed with its name).
    pub fn run(&self, config: &Map<String, Value>) -> CniResult<Vec<u8>> {
        self.spawn(config)?.wait()
    }

    /// Start the plugin and return at once; `wait` collects its answer.
    /// Lets the caller do netlink work while the plugin runs.
    pub fn spawn(&self, config: &Map<String, Value>) -> CniResult<Pending> {
        let stdin = serde_json::to_vec(config).map_err(|e| {
            CniError::new(
                IPAM,
                format!("cannot encode config for {}: {e}", self.plugin),
            )
        })?;
        let mut cmd = Command::new(&self.path);
        cmd.env_clear();
        for (k, v) in &self.env.vars {
            if !self.overrides.iter().any(|(o, _)| o == k) {
                cmd.env(k, v);
            }
        }
        for (k, v) in &self.overrides {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            CniError::new(
                IPAM,
                format!("cannot run IPAM plugin {}: {e}", self.path.display()),
            )
        })?;
        let writer = child.stdin.take().map(|mut si| {
            // A plugin that exits without reading stdin gives EPIPE: its
            // exit status tells the rest. A thread keeps a large config from
            // blocking us on a full pipe.
            std::thread::spawn(move || {
                let _ = si.write_all(&stdin);
            })
        });
        Ok(Pending {
            child,
            writer,
            plugin: self.plugin.to_string(),
        })
    }
}

/// A delegated plugin that is running.
pub struct Pending {
    child: std::process::Child,
    writer: Option<std::thread::JoinHandle<()>>,
    plugin: String,
}

impl Pending {
    pub fn wait(self) -> CniResult<Vec<u8>> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| CniError::new(IPAM, format!("IPAM plugin {} failed: {e}", self.plugin)))?;
        if let Some(w) = self.writer {
            let _ = w.join();
        }
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(&out.stdout)
            && let Some(code) = m.get("code").and_then(Value::as_u64)
        {
            let msg = m.get("msg").and_then(Value::as_str).unwrap_or("failed");
            let mut e = CniError::new(code as u32, format!("IPAM plugin {}: {msg}", self.plugin));
            if let Some(d) = m.get("details").and_then(Value::as_str) {
                e = e.with_details(d);
            } else {
                e = e.with_details(stderr);
            }
            return Err(e);
        }
        Err(CniError::new(
            IPAM,
            format!("IPAM plugin {} exited with {}", self.plugin, out.status),
        )
        .with_details(format!(
            "stdout: {} stderr: {stderr}",
            String::from_utf8_lossy(&out.stdout).trim()
        )))
    }
}

/// The spec versions a plugin reports with VERSION (empty if it fails).
pub fn supported_versions(path: &Path, env: &Env, plugin: &str) -> Vec<String> {
    let call = Call {
        plugin,
        path: path.to_path_buf(),
        env,
        overrides: vec![("CNI_COMMAND", Some("VERSION".to_string()))],
    };
    let mut cfg = Map::new();
    cfg.insert("cniVersion".into(), Value::String("1.0.0".into()));
    match call.run(&cfg) {
        Ok(out) => serde_json::from_slice::<Value>(&out)
            .ok()
            .and_then(|v| {
                v.get("supportedVersions")?.as_array().map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &std::path::Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("whcni-deleg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_in_cni_path_and_passes_env_and_stdin() {
        let _serial = crate::spawn_lock();
        let d = tmpdir("ok");
        script(
            &d,
            "fake",
            "cat >/dev/null; echo \"{\\\"cmd\\\":\\\"$CNI_COMMAND\\\",\\\"cid\\\":\\\"$CNI_CONTAINERID\\\"}\"",
        );
        let p = find_plugin("fake", &format!("/nonexistent:{}", d.display())).unwrap();
        let env = Env::from_pairs([("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")]);
        let call = Call {
            plugin: "fake",
            path: p,
            env: &env,
            overrides: vec![("CNI_COMMAND", Some("DEL".into()))],
        };
        let out = call.run(&Map::new()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["cmd"], "DEL");
        assert_eq!(v["cid"], "c1");
        assert!(find_plugin("nope", &d.display().to_string()).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn plugin_errors_keep_their_code() {
        let _serial = crate::spawn_lock();
        let d = tmpdir("err");
        script(
            &d,
            "fake",
            "echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"busy\"}'; exit 1",
        );
        let env = Env::default();
        let call = Call {
            plugin: "fake",
            path: d.join("fake"),
            env: &env,
            overrides: vec![],
        };
        let e = call.run(&Map::new()).unwrap_err();
        assert_eq!(e.code, 11);
        assert!(e.msg.contains("busy"));
        script(&d, "fake", "echo garbage; exit 3");
        let e = call.run(&Map::new()).unwrap_err();
        assert_eq!(e.code, IPAM);
        let _ = std::fs::remove_dir_all(&d);
    }
}
