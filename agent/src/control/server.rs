//! The daemon's side of the control socket.

use super::{Request, Response};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// A request and where to send its answer.
pub type Call = (Request, oneshot::Sender<Response>);

/// Why the control socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("interface {0} is already up (its control socket {1} answers)")]
    InUse(String, PathBuf),
    #[error("cannot create the control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A bound control socket that removes its file when dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

/// Binds a Unix socket at `path` that is mode 0600 from the moment it can
/// be reached there: bound and restricted inside a fresh directory only
/// root can enter, then renamed into place (a socket keeps its listener
/// across a rename). A plain bind followed by chmod leaves a moment in which
/// any local user may connect.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let private = dir.join(format!(
        ".bind-{}-{}",
        std::process::id(),
        crate::keys::random_u64()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let staged = private.join("sock");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

impl ControlSocket {
    /// Binds `path` (mode 0600). A stale socket left by a dead daemon is
    /// replaced; a live one is an error.
    pub fn bind(interface: &str, path: &Path) -> Result<Self, ServeError> {
        let io = |source| ServeError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(interface.to_string(), path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        let listener = bind_private(path).map_err(io)?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Accepts connections forever, forwarding each request to `calls`.
    pub async fn serve(self, calls: mpsc::Sender<Call>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, calls.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn handle(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 + 1)).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error(format!("bad request: {e}")),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((request, tx)).await.is_err() {
                    Response::Error("the daemon is stopping".into())
                } else {
                    rx.await.unwrap_or_else(|_| {
                        Response::Error("the daemon dropped the request".into())
                    })
                }
            }
        };
        let Ok(mut text) = serde_json::to_string(&response) else {
            return;
        };
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

use tokio::io::AsyncReadExt as _;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn the_control_socket_is_root_only_from_its_first_moment_and_leaves_no_staging_behind() {
        let dir = std::env::temp_dir().join(format!("wh-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wh-test.sock");
        let socket = ControlSocket::bind("wh-test", &path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("wh-test.sock")]);
        // The listener still answers at the renamed path.
        let client = tokio::net::UnixStream::connect(&path);
        let (accepted, connected) = tokio::join!(socket.listener.accept(), client);
        assert!(accepted.is_ok() && connected.is_ok());
        drop(socket);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
