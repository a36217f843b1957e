//! What the plugin remembers between calls: one small JSON file per
//! attachment under `<stateDir>/<network>/`, and a lock file that serializes
//! the changes to records and to the nftables table.

use crate::error::{CniError, CniResult};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub host_veth: String,
    /// Pod addresses (no prefix).
    pub ips: Vec<IpAddr>,
}

pub struct Store {
    dir: PathBuf,
    root: PathBuf,
}

/// Held while records or the nft table change.
pub struct Lock {
    _f: Flock<File>,
}

impl Store {
    pub fn new(state_dir: &Path, network: &str) -> Store {
        Store {
            dir: state_dir.join(network),
            root: state_dir.to_path_buf(),
        }
    }

    pub fn lock(&self) -> CniResult<Lock> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| CniError::state(format!("create {}", self.dir.display()), e))?;
        let p = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| CniError::state(format!("open {}", p.display()), e))?;
        let f = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| CniError::state(format!("lock {}", p.display()), e))?;
        Ok(Lock { _f: f })
    }

    fn file(&self, container_id: &str, ifname: &str) -> PathBuf {
        // Both parts were validated (no '/', no NUL) before we get here;
        // escaping '_' keeps (a_b, c) and (a, b_c) apart.
        self.dir.join(format!(
            "{}_{}.json",
            escape_part(container_id),
            escape_part(ifname)
        ))
    }

    pub fn save(&self, r: &Record, _lock: &Lock) -> CniResult<()> {
        let p = self.file(&r.container_id, &r.ifname);
        let tmp = p.with_extension("tmp");
        let data = serde_json::to_vec_pretty(r).map_err(|e| CniError::state("encode record", e))?;
        std::fs::write(&tmp, data)
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|e| CniError::state(format!("write {}", p.display()), e))
    }

    pub fn load(&self, container_id: &str, ifname: &str) -> Option<Record> {
        let data = std::fs::read(self.file(container_id, ifname)).ok()?;
        let record: Record = serde_json::from_slice(&data).ok()?;
        // A record is only ever the one of this attachment.
        (record.container_id == container_id && record.ifname == ifname).then_some(record)
    }

    pub fn remove(&self, container_id: &str, ifname: &str, _lock: &Lock) -> CniResult<()> {
        let p = self.file(container_id, ifname);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::state(format!("remove {}", p.display()), e)),
        }
    }

    fn rules_file(&self, table: &str) -> PathBuf {
        self.root.join(format!("nft-{table}.rules"))
    }

    /// The nft rules last written for `table` (see `nft::rules_script`).
    pub fn nft_rules(&self, table: &str) -> Option<String> {
        std::fs::read_to_string(self.rules_file(table)).ok()
    }

    pub fn set_nft_rules(&self, table: &str, rules: Option<&str>, _lock: &Lock) {
        let p = self.rules_file(table);
        // Only a memo: when it is wrong the next ADD rewrites the rules.
        let _ = match rules {
            Some(r) => std::fs::write(&p, r),
            None => std::fs::remove_file(&p),
        };
    }

    /// Every record of this network.
    pub fn list(&self) -> Vec<Record> {
        list_dir(&self.dir)
    }

    /// How many attachments exist in any network of this state directory
    /// (the nft table is shared by all of them).
    pub fn count_all(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        rd.flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| list_dir(&e.path()).len())
            .sum()
    }
}

/// One part of a record's file name: `%` and `_` escaped, so that the `_`
/// between the container ID and the interface name is unambiguous.
fn escape_part(part: &str) -> String {
    part.replace('%', "%25").replace('_', "%5F")
}

fn list_dir(dir: &Path) -> Vec<Record> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_list_remove() {
        let d = std::env::temp_dir().join(format!("whcni-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let s = Store::new(&d, "net1");
        let other = Store::new(&d, "net2");
        let l = s.lock().unwrap();
        let r = Record {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            host_veth: "wh0123456789a".into(),
            ips: vec!["10.244.1.2".parse().unwrap()],
        };
        s.save(&r, &l).unwrap();
        assert_eq!(s.load("c1", "eth0"), Some(r.clone()));
        assert_eq!(s.list().len(), 1);
        drop(l);
        let l = other.lock().unwrap();
        other
            .save(
                &Record {
                    container_id: "c2".into(),
                    ..r.clone()
                },
                &l,
            )
            .unwrap();
        assert_eq!(s.count_all(), 2);
        s.remove("c1", "eth0", &l).unwrap();
        s.remove("c1", "eth0", &l).unwrap();
        assert_eq!(s.count_all(), 1);
        assert!(s.load("c1", "eth0").is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn attachments_whose_names_join_alike_keep_their_own_records() {
        let d = std::env::temp_dir().join(format!("whcni-state-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let s = Store::new(&d, "net1");
        let l = s.lock().unwrap();
        let record = |container_id: &str, ifname: &str| Record {
            container_id: container_id.into(),
            ifname: ifname.into(),
            netns: "/run/netns/x".into(),
            host_veth: "wh0123456789a".into(),
            ips: vec!["10.244.1.2".parse().unwrap()],
        };
        s.save(&record("a_b", "c"), &l).unwrap();
        s.save(&record("a", "b_c"), &l).unwrap();
        assert_eq!(s.list().len(), 2);
        assert_eq!(s.load("a_b", "c"), Some(record("a_b", "c")));
        assert_eq!(s.load("a", "b_c"), Some(record("a", "b_c")));
        s.remove("a", "b_c", &l).unwrap();
        assert_eq!(s.load("a_b", "c"), Some(record("a_b", "c")));
        let _ = std::fs::remove_dir_all(&d);
    }
}
