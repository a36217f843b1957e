//! Opt-in `/etc/hosts` management: one marked block per network,
//!
//! ```text
//! # BEGIN wirehub lab
//! 10.0.42.2  node_a.lab node_a
//! # END wirehub lab
//! ```
//!
//! added on up, replaced on reload, removed on down. Lines outside the block
//! are never changed, nor is their order; a block keeps its place in the
//! file when replaced. The file is written atomically (a temporary file in
//! the same directory, with the original's mode and owner, then a rename);
//! a file that is itself a mount point (containers bind-mount `/etc/hosts`)
//! cannot be renamed over and is rewritten in place instead.
//!
//! [`render`] and [`replace_block`] are pure; [`apply`] and [`remove`] do
//! the I/O.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a hosts file was not changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostsError {
    #[error(
        "network name '{0}' cannot mark a hosts block (letters, digits, '.', '-' and '_' only)"
    )]
    BadNetwork(String),
    #[error(
        "the hosts block of network '{network}' opened on line {line} is never closed ('{end}' is missing); the file was left as it is"
    )]
    Unterminated {
        network: String,
        line: usize,
        end: String,
    },
}

impl From<HostsError> for io::Error {
    fn from(e: HostsError) -> Self {
        let kind = match e {
            HostsError::BadNetwork(_) => io::ErrorKind::InvalidInput,
            HostsError::Unterminated { .. } => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// The block's first line.
pub fn begin_marker(network: &str) -> String {
    format!("# BEGIN wirehub {network}")
}

/// The block's last line.
pub fn end_marker(network: &str) -> String {
    format!("# END wirehub {network}")
}

fn valid_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['#', '-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

fn check_network(network: &str) -> Result<(), HostsError> {
    if valid_word(network) {
        Ok(())
    } else {
        Err(HostsError::BadNetwork(network.to_string()))
    }
}

/// The block for a network, markers included, each line ending in `\n`.
/// Names that no hosts file can hold (spaces, `#`, ...) are left out, and so
/// are entries left without a name.
pub fn render(network: &str, entries: &[(IpAddr, Vec<String>)]) -> Result<String, HostsError> {
    check_network(network)?;
    let mut s = begin_marker(network);
    s.push('\n');
    for (ip, names) in entries {
        let names: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| valid_word(n))
            .collect();
        if names.is_empty() {
            continue;
        }
        s.push_str(&format!("{ip}\t{}\n", names.join(" ")));
    }
    s.push_str(&end_marker(network));
    s.push('\n');
    Ok(s)
}

/// `text` with the network's block replaced by `block` (or removed when
/// `None`); a block that was not there is appended at the end. Every other
/// line is kept byte for byte.
pub fn replace_block(text: &str, network: &str, block: Option<&str>) -> Result<String, HostsError> {
    check_network(network)?;
    let begin = begin_marker(network);
    let end = end_marker(network);
    let mut out = String::with_capacity(text.len() + block.map_or(0, str::len));
    let mut placed = false;
    let mut inside: Option<usize> = None;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        match inside {
            None if bare == begin => {
                inside = Some(i + 1);
                if !placed {
                    if let Some(b) = block {
                        out.push_str(b);
                    }
                    placed = true;
                }
            }
            None => out.push_str(line),
            Some(_) if bare == end => inside = None,
            Some(_) => {}
        }
    }
    if let Some(line) = inside {
        return Err(HostsError::Unterminated {
            network: network.to_string(),
            line,
            end,
        });
    }
    if !placed && let Some(b) = block {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(b);
    }
    Ok(out)
}

/// Writes (or replaces) the network's block in the hosts file at `path`,
/// creating the file (mode 0644) when it does not exist. Nothing is written
/// when the block is already as it should be.
pub fn apply(path: &Path, network: &str, entries: &[(IpAddr, Vec<String>)]) -> io::Result<()> {
    let block = render(network, entries)?;
    update(path, network, Some(&block))
}

/// Removes the network's block from the hosts file at `path`, if it is there.
pub fn remove(path: &Path, network: &str) -> io::Result<()> {
    check_network(network)?;
    update(path, network, None)
}

fn update(path: &Path, network: &str, block: Option<&str>) -> io::Result<()> {
    // Follow a symbolic link: the link stays, its target changes.
    let path = match fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(e),
    };
    let (text, meta) = match fs::read(&path) {
        Ok(bytes) => (
            String::from_utf8(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not UTF-8 text; it was left as it is", path.display()),
                )
            })?,
            Some(fs::metadata(&path)?),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if block.is_none() {
                return Ok(());
            }
            (String::new(), None)
        }
        Err(e) => return Err(e),
    };
    let new = replace_block(&text, network, block)?;
    if new == text && meta.is_some() {
        return Ok(());
    }
    write_atomic(&path, new.as_bytes(), meta.as_ref())
}

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(
        ".{}.wirehub-{}-{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(path.with_file_name(tmp))
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// and a rename, with the original's mode and (best effort) owner.
fn write_atomic(path: &Path, bytes: &[u8], meta: Option<&fs::Metadata>) -> io::Result<()> {
    let mode = meta.map_or(0o644, |m| m.permissions().mode() & 0o7777);
    let tmp = temp_path(path)?;
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if let Some(m) = meta {
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, path) {
        Ok(()) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Ok(d) = fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            Ok(())
        }
        // A mount point (a bind-mounted /etc/hosts) cannot be replaced.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let _ = fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), "the hosts file is a mount point; rewriting it in place");
            let mut f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)?;
            f.write_all(bytes)?;
            f.sync_all()
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir()
                .join(format!("wirehub-hosts-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const ORIGINAL: &str = "127.0.0.1\tlocalhost\n# a comment the user wrote\n::1\tlocalhost ip6-localhost\n\n192.0.2.7 printer # keep me\n";

    fn entries(names: &[(&str, &str)], net: &str) -> Vec<(IpAddr, Vec<String>)> {
        names
            .iter()
            .map(|(ip, n)| {
                (
                    ip.parse().unwrap(),
                    vec![format!("{n}.{net}"), n.to_string()],
                )
            })
            .collect()
    }

    fn others(text: &str) -> Vec<&str> {
        let mut inside = false;
        text.lines()
            .filter(|l| {
                if l.starts_with("# BEGIN wirehub") {
                    inside = true;
                }
                let keep = !inside;
                if l.starts_with("# END wirehub") {
                    inside = false;
                }
                keep
            })
            .collect()
    }

    #[test]
    fn other_lines_are_untouched_and_mode_is_kept() {
        let d = TempDir::new("untouched");
        let path = d.0.join("hosts");
        fs::write(&path, ORIGINAL).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        apply(&path, "lab", &entries(&[("10.0.42.2", "node_a")], "lab")).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(ORIGINAL), "{text}");
        assert!(
            text.ends_with(
                "# BEGIN wirehub lab\n10.0.42.2\tnode_a.lab node_a\n# END wirehub lab\n"
            )
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(&d.0).unwrap().count(), 1);
    }

    #[test]
    fn block_is_replaced_in_place_not_duplicated() {
        let d = TempDir::new("replace");
        let path = d.0.join("hosts");
        fs::write(&path, ORIGINAL).unwrap();
        apply(&path, "lab", &entries(&[("10.0.42.2", "node_a")], "lab")).unwrap();
        // The user adds a line after the block.
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("203.0.113.5 after\n");
        fs::write(&path, &text).unwrap();
        let two = entries(&[("10.0.42.2", "node_a"), ("10.0.42.3", "node_b")], "lab");
        apply(&path, "lab", &two).unwrap();
        apply(&path, "lab", &two).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("# BEGIN wirehub lab").count(), 1, "{text}");
        assert_eq!(text.matches("# END wirehub lab").count(), 1, "{text}");
        assert!(
            text.contains("10.0.42.3\tnode_b.lab node_b\n# END wirehub lab\n203.0.113.5 after\n"),
            "{text}"
        );
        assert!(!text.contains("\n\n# BEGIN"), "{text}");
        assert_eq!(others(&text), {
            let mut v = others(ORIGINAL);
            v.push("203.0.113.5 after");
            v
        });
    }

    #[test]
    fn two_networks_side_by_side_and_removal() {
        let d = TempDir::new("two");
        let path = d.0.join("hosts");
        fs::write(&path, ORIGINAL).unwrap();
        apply(&path, "lab", &entries(&[("10.0.42.2", "node_a")], "lab")).unwrap();
        apply(&path, "home", &entries(&[("10.0.7.2", "nas")], "home")).unwrap();
        apply(&path, "lab", &entries(&[("10.0.42.9", "node_z")], "lab")).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("# BEGIN wirehub lab\n10.0.42.9\tnode_z.lab node_z\n# END wirehub lab\n# BEGIN wirehub home\n10.0.7.2\tnas.home nas\n# END wirehub home\n"), "{text}");
        assert!(!text.contains("node_a"));
        remove(&path, "lab").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("wirehub lab"), "{text}");
        assert!(text.contains("# BEGIN wirehub home"), "{text}");
        remove(&path, "home").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), ORIGINAL);
        // Removing what is not there changes nothing.
        remove(&path, "home").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), ORIGINAL);
    }

    #[test]
    fn a_network_name_that_prefixes_another_is_not_confused() {
        let text = "# BEGIN wirehub lab2\n10.0.0.1\tx.lab2 x\n# END wirehub lab2\n";
        let out = replace_block(text, "lab", None).unwrap();
        assert_eq!(out, text);
    }

    #[test]
    fn unterminated_block_leaves_the_file_alone() {
        let d = TempDir::new("unterminated");
        let path = d.0.join("hosts");
        let broken = format!("{ORIGINAL}# BEGIN wirehub lab\n10.0.42.2 node_a\n192.0.2.8 mine\n");
        fs::write(&path, &broken).unwrap();
        let err = apply(&path, "lab", &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("never closed"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), broken);
        assert!(remove(&path, "lab").is_err());
    }

    #[test]
    fn missing_file_bad_names_and_no_final_newline() {
        let d = TempDir::new("missing");
        let path = d.0.join("hosts");
        remove(&path, "lab").unwrap();
        assert!(!path.exists());
        let e = vec![
            (
                "10.0.42.2".parse().unwrap(),
                vec!["ok".to_string(), "bad name".to_string(), "#x".to_string()],
            ),
            ("10.0.42.3".parse().unwrap(), vec!["\nevil".to_string()]),
        ];
        apply(&path, "lab", &e).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "# BEGIN wirehub lab\n10.0.42.2\tok\n# END wirehub lab\n"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert!(apply(&path, "bad net", &e).is_err());
        assert!(apply(&path, "x\n# BEGIN", &e).is_err());
        let out = replace_block("127.0.0.1 localhost", "lab", Some("B\n")).unwrap();
        assert_eq!(out, "127.0.0.1 localhost\nB\n");
    }

    #[test]
    fn symlinked_file_keeps_its_link() {
        let d = TempDir::new("link");
        let real = d.0.join("real-hosts");
        let link = d.0.join("hosts");
        fs::write(&real, ORIGINAL).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        apply(&link, "lab", &entries(&[("10.0.42.2", "node_a")], "lab")).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(fs::read_to_string(&real).unwrap().contains("node_a.lab"));
    }
}
