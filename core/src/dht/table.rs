//! The routing table: k-buckets indexed by the length of the common prefix
//! of a key with ours, each of at most K live entries plus a bounded
//! replacement cache. A new node never evicts a live one: it waits in the
//! replacement cache, and takes a place only when an entry fails. An entry
//! whose bucket has no replacement waiting is kept through
//! [`EVICT_AFTER_FAILURES`] - 1 failed requests in a row: a live node slowed
//! by a busy machine (a storm of nodes starting at once) is not taken for a
//! dead one, and tables do not empty out.

use crate::keys::PublicKey;
use crate::proto::{MAX_ENDPOINTS, NatKind, NodeRecord};
use std::net::SocketAddr;

/// Failed requests in a row after which an entry is removed even when no
/// replacement waits for its place.
pub const EVICT_AFTER_FAILURES: u8 = 3;

/// XOR distance, compared as a big-endian 256-bit number.
pub fn distance(a: &PublicKey, b: &PublicKey) -> [u8; 32] {
    let mut d = [0u8; 32];
    for (i, x) in d.iter_mut().enumerate() {
        *x = a.0[i] ^ b.0[i];
    }
    d
}

/// Sorts a group of equally ranked entries and moves them to `out`, up to `n`.
fn take<'a>(group: &mut Vec<([u8; 32], &'a Entry)>, out: &mut Vec<&'a Entry>, n: usize) {
    group.sort_unstable_by_key(|a| a.0);
    for (_, e) in group.drain(..) {
        if out.len() >= n {
            break;
        }
        out.push(e);
    }
}

/// The bucket a key falls in, seen from `own`: the number of leading bits
/// they share (0 = the farther half of the key space). `None` for `own`.
pub fn bucket_index(own: &PublicKey, key: &PublicKey) -> Option<usize> {
    let d = distance(own, key);
    let mut n = 0usize;
    for b in d {
        if b == 0 {
            n += 8;
        } else {
            return Some(n + b.leading_zeros() as usize);
        }
    }
    None
}

/// What a node said about itself beyond the address we see it at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extra {
    pub endpoints: Vec<SocketAddr>,
    pub relays: Vec<(PublicKey, SocketAddr)>,
}

/// One known node. Times are milliseconds since the DHT's epoch.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: PublicKey,
    /// Where its messages come from: where we send.
    pub addr: SocketAddr,
    pub last_seen: u64,
    /// Last measured round trip in ms, `u32::MAX` when never measured.
    pub rtt_ms: u32,
    pub nat: NatKind,
    /// It relays for others (its record says so; assumed until it tells).
    pub relay_service: bool,
    /// A liveness ping is outstanding.
    pub pinging: bool,
    /// Requests that failed in a row since it was last heard from.
    pub failures: u8,
    /// Only when the node announced more than its address (rare): keeps
    /// the common entry small.
    pub extra: Option<Box<Extra>>,
}

impl Entry {
    pub fn new(key: PublicKey, addr: SocketAddr, now: u64) -> Self {
        Entry {
            key,
            addr,
            last_seen: now,
            rtt_ms: u32::MAX,
            nat: NatKind::Unknown,
            relay_service: true,
            pinging: false,
            failures: 0,
            extra: None,
        }
    }

    /// Takes in what the node told about itself (its own record).
    pub fn apply_info(&mut self, info: &NodeRecord) {
        self.nat = info.nat;
        self.relay_service = info.relay_service;
        let trivial = info.relays.is_empty() && info.endpoints.iter().all(|e| *e == self.addr);
        self.extra = if trivial {
            None
        } else {
            Some(Box::new(Extra {
                endpoints: info.endpoints.clone(),
                relays: info.relays.clone(),
            }))
        };
    }

    /// The record we give others: the address we see it at first, then the
    /// endpoints it announced.
    pub fn record(&self) -> NodeRecord {
        let mut endpoints = vec![self.addr];
        let mut relays = Vec::new();
        if let Some(x) = &self.extra {
            for e in &x.endpoints {
                if endpoints.len() < MAX_ENDPOINTS && !endpoints.contains(e) {
                    endpoints.push(*e);
                }
            }
            relays = x.relays.clone();
        }
        NodeRecord {
            key: self.key,
            endpoints,
            nat: self.nat,
            relays,
            relay_service: self.relay_service,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.extra.as_ref().map_or(0, |x| {
            std::mem::size_of::<Extra>()
                + x.endpoints.capacity() * std::mem::size_of::<SocketAddr>()
                + x.relays.capacity() * std::mem::size_of::<(PublicKey, SocketAddr)>()
        })
    }
}

#[derive(Debug, Default)]
pub(crate) struct Bucket {
    /// Live entries, least recently seen first.
    pub entries: Vec<Entry>,
    /// Candidates waiting for a place, most recent last.
    pub replacements: Vec<Entry>,
    /// When a lookup last went into this bucket's range.
    pub last_refresh: u64,
}

/// What [`Table::seen`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Updated,
    Added,
    /// The bucket is full; the node waits in the replacement cache. If an
    /// entry is stale it should be pinged: here it is.
    Full {
        ping: Option<(PublicKey, SocketAddr)>,
    },
    Ignored,
}

pub(crate) struct Table {
    pub own: PublicKey,
    pub k: usize,
    pub replacements: usize,
    pub buckets: Vec<Bucket>,
    created: u64,
}

/// Grows a vector by small steps, never past `max`, so full buckets do not
/// carry the slack of doubling.
fn push_bounded<T>(v: &mut Vec<T>, item: T, max: usize) {
    if v.len() == v.capacity() {
        let target = (v.len() * 2).max(4).min(max.max(1));
        v.reserve_exact(target.saturating_sub(v.len()).max(1));
    }
    v.push(item);
}

impl Table {
    pub fn new(own: PublicKey, k: usize, replacements: usize, now: u64) -> Self {
        Table {
            own,
            k,
            replacements,
            buckets: Vec::new(),
            created: now,
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.entries.len()).sum()
    }

    fn bucket_mut(&mut self, i: usize) -> &mut Bucket {
        while self.buckets.len() <= i {
            let created = self.created;
            self.buckets.push(Bucket {
                last_refresh: created,
                ..Bucket::default()
            });
        }
        &mut self.buckets[i]
    }

    pub fn get(&self, key: &PublicKey) -> Option<&Entry> {
        let i = bucket_index(&self.own, key)?;
        self.buckets.get(i)?.entries.iter().find(|e| e.key == *key)
    }

    pub fn get_mut(&mut self, key: &PublicKey) -> Option<&mut Entry> {
        let i = bucket_index(&self.own, key)?;
        self.buckets
            .get_mut(i)?
            .entries
            .iter_mut()
            .find(|e| e.key == *key)
    }

    pub fn contains(&self, key: &PublicKey) -> bool {
        self.get(key).is_some()
    }

    /// A node was heard from (an authenticated message from `addr`).
    pub fn seen(
        &mut self,
        key: PublicKey,
        addr: SocketAddr,
        now: u64,
        info: Option<&NodeRecord>,
        rtt_ms: Option<u32>,
        stale_after: u64,
    ) -> Seen {
        let Some(i) = bucket_index(&self.own, &key) else {
            return Seen::Ignored;
        };
        let (k, max_repl) = (self.k, self.replacements);
        let bucket = self.bucket_mut(i);
        if let Some(pos) = bucket.entries.iter().position(|e| e.key == key) {
            let mut e = bucket.entries.remove(pos);
            e.addr = addr;
            e.last_seen = now;
            e.pinging = false;
            e.failures = 0;
            if let Some(r) = rtt_ms {
                e.rtt_ms = r;
            }
            if let Some(info) = info {
                e.apply_info(info);
            }
            bucket.entries.push(e);
            return Seen::Updated;
        }
        let mut e = Entry::new(key, addr, now);
        if let Some(r) = rtt_ms {
            e.rtt_ms = r;
        }
        if let Some(info) = info {
            e.apply_info(info);
        }
        if bucket.entries.len() < k {
            bucket.replacements.retain(|r| r.key != key);
            push_bounded(&mut bucket.entries, e, k);
            return Seen::Added;
        }
        // Full: never evict a live entry; wait in the replacement cache.
        if max_repl > 0 {
            bucket.replacements.retain(|r| r.key != key);
            if bucket.replacements.len() >= max_repl {
                bucket.replacements.remove(0);
            }
            push_bounded(&mut bucket.replacements, e, max_repl);
        }
        let ping = bucket
            .entries
            .iter_mut()
            .find(|e| !e.pinging && now.saturating_sub(e.last_seen) >= stale_after)
            .map(|e| {
                e.pinging = true;
                (e.key, e.addr)
            });
        Seen::Full { ping }
    }

    /// An entry failed (a ping or request timed out after its retries). It
    /// is removed when a replacement waits for its place (the most recent
    /// takes it), or after [`EVICT_AFTER_FAILURES`] failures in a row.
    /// Returns whether it was removed, and the promoted replacement.
    pub fn failed(&mut self, key: &PublicKey) -> (bool, Option<PublicKey>) {
        let Some(i) = bucket_index(&self.own, key) else {
            return (false, None);
        };
        let Some(bucket) = self.buckets.get_mut(i) else {
            return (false, None);
        };
        bucket.replacements.retain(|r| r.key != *key);
        let Some(pos) = bucket.entries.iter().position(|e| e.key == *key) else {
            return (false, None);
        };
        let e = &mut bucket.entries[pos];
        e.failures = e.failures.saturating_add(1);
        e.pinging = false;
        if bucket.replacements.is_empty() && e.failures < EVICT_AFTER_FAILURES {
            return (false, None);
        }
        bucket.entries.remove(pos);
        let promoted = bucket.replacements.pop().map(|r| {
            let k = r.key;
            bucket.entries.push(r);
            k
        });
        (true, promoted)
    }

    /// The `n` entries closest to `target`, closest first, without `exclude`.
    ///
    /// Buckets are visited in distance order, so a request for a far key
    /// reads one bucket, not the whole table: with `i` the bucket of the
    /// target, entries of bucket `i` are closest (they share at least i+1
    /// bits with it), then those of all deeper buckets (exactly i bits),
    /// then bucket i-1 (i-1 bits), i-2, and so on.
    pub fn closest(
        &self,
        target: &PublicKey,
        n: usize,
        exclude: Option<&PublicKey>,
    ) -> Vec<&Entry> {
        let len = self.buckets.len();
        let i = bucket_index(&self.own, target).unwrap_or(len).min(len);
        let mut out: Vec<&Entry> = Vec::with_capacity(n);
        let mut group: Vec<([u8; 32], &Entry)> = Vec::new();
        let ok = |e: &&Entry| Some(&e.key) != exclude;
        if i < len {
            group.extend(
                self.buckets[i]
                    .entries
                    .iter()
                    .filter(ok)
                    .map(|e| (distance(&e.key, target), e)),
            );
            take(&mut group, &mut out, n);
            if out.len() < n {
                group.extend(
                    self.buckets[i + 1..]
                        .iter()
                        .flat_map(|b| b.entries.iter())
                        .filter(ok)
                        .map(|e| (distance(&e.key, target), e)),
                );
                take(&mut group, &mut out, n);
            }
        }
        for j in (0..i).rev() {
            if out.len() >= n {
                break;
            }
            group.extend(
                self.buckets[j]
                    .entries
                    .iter()
                    .filter(ok)
                    .map(|e| (distance(&e.key, target), e)),
            );
            take(&mut group, &mut out, n);
        }
        out
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.buckets
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.entries.iter().map(move |e| (i, e)))
    }

    /// Marks the bucket of `target` as just refreshed.
    pub fn touch(&mut self, target: &PublicKey, now: u64) {
        if let Some(i) = bucket_index(&self.own, target)
            && let Some(b) = self.buckets.get_mut(i)
        {
            b.last_refresh = now;
        }
    }

    pub fn heap_bytes(&self) -> usize {
        let mut n = self.buckets.capacity() * std::mem::size_of::<Bucket>();
        for b in &self.buckets {
            n += (b.entries.capacity() + b.replacements.capacity()) * std::mem::size_of::<Entry>();
            n += b
                .entries
                .iter()
                .chain(&b.replacements)
                .map(Entry::heap_bytes)
                .sum::<usize>();
        }
        n
    }
}
