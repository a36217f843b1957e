//! Sealing and opening datagrams: the per-peer key derivation and its cache,
//! the timestamp window, the replay cache, and the drop counters.

use super::message::{EncodeError, Message};
use crate::keys::{Blake2b256, KEY_LEN, PrivateKey, PublicKey};
use blake2::Digest;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use std::collections::HashMap;

/// First byte of every WireHub datagram (WireGuard's are 1 to 4).
pub const MAGIC: u8 = 0xFF;
/// Protocol version, second byte.
pub const VERSION: u8 = 1;
/// Length of the nonce (XChaCha20-Poly1305).
pub const NONCE_LEN: usize = 24;
/// Length of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Magic, version, sender key, nonce: the clear header.
pub const HEADER_LEN: usize = 1 + 1 + KEY_LEN + NONCE_LEN;
/// The sealed timestamp before the message.
pub const TIMESTAMP_LEN: usize = 8;
/// Bytes a sealed datagram adds to the plain encoding of its message.
pub const SEAL_OVERHEAD: usize = HEADER_LEN + TIMESTAMP_LEN + TAG_LEN;
/// The shortest datagram that can be valid (a message is at least its type byte).
pub const MIN_DATAGRAM: usize = SEAL_OVERHEAD + 1;
/// The longest datagram a node sends or accepts.
pub const MAX_DATAGRAM: usize = 2048;
/// Control messages other than relayed ones should fit in this (IPv6's
/// minimum MTU); the DHT packs `Nodes` answers to stay under it.
pub const CONTROL_BUDGET: usize = 1280;
/// Timestamps further than this from the receiver's clock are refused.
pub const DEFAULT_MAX_SKEW_MS: u64 = 30_000;

const KEY_LABEL: &[u8] = b"WireHub v1 control key";
const NONCE_LABEL: &[u8] = b"WireHub v1 nonce";
const ALIAS_LABEL: &[u8] = b"WireHub v1 alias proof";

/// True when a datagram is a WireHub control message (rather than WireGuard).
pub fn is_control(datagram: &[u8]) -> bool {
    datagram.first() == Some(&MAGIC)
}

/// The size of the sealed datagram that carries `msg`.
pub fn sealed_len(msg: &Message) -> usize {
    SEAL_OVERHEAD + msg.encoded_len()
}

/// The symmetric key of the pair (a, b), as both sides derive it:
/// BLAKE2b-256(label || X25519 || lower key || higher key || namespace).
pub fn derive_key(
    shared: &[u8; KEY_LEN],
    a: &PublicKey,
    b: &PublicKey,
    namespace: &str,
) -> [u8; 32] {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Blake2b256::new();
    h.update(KEY_LABEL);
    h.update(shared);
    h.update(lo.as_bytes());
    h.update(hi.as_bytes());
    h.update(namespace.as_bytes());
    h.finalize().into()
}

/// The proof that the holder of `alias_secret` vouches for `real`, made
/// for one `verifier`: BLAKE2b-256(label || X25519(alias, verifier) || alias
/// || real || verifier). Only the verifier (and the alias holder) can check it.
pub fn alias_proof(alias_secret: &PrivateKey, real: &PublicKey, verifier: &PublicKey) -> [u8; 32] {
    let shared = alias_secret.diffie_hellman(verifier);
    alias_mac(&shared, &alias_secret.public_key(), real, verifier)
}

fn alias_mac(
    shared: &[u8; 32],
    alias: &PublicKey,
    real: &PublicKey,
    verifier: &PublicKey,
) -> [u8; 32] {
    let mut h = Blake2b256::new();
    h.update(ALIAS_LABEL);
    h.update(shared);
    h.update(alias.as_bytes());
    h.update(real.as_bytes());
    h.update(verifier.as_bytes());
    h.finalize().into()
}

/// Why a message could not be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("sealed message would be {0} bytes, more than {MAX_DATAGRAM}")]
    TooLarge(usize),
    #[error("the peer key is a low-order point")]
    WeakKey,
}

/// Why a datagram was dropped. Each variant has a counter in [`DropCounters`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a WireHub datagram (first byte is not 0xFF)")]
    NotOurs,
    #[error("datagram of {0} bytes is too short")]
    Truncated(usize),
    #[error("datagram of {0} bytes is longer than {MAX_DATAGRAM}")]
    Oversized(usize),
    #[error("unknown protocol version {0}")]
    BadVersion(u8),
    #[error("datagram claims to come from our own key")]
    FromSelf,
    #[error("sender key has {have} workbits, the network requires {need}")]
    LowWorkbits { have: u8, need: u8 },
    #[error("sender key is a low-order point")]
    WeakKey,
    #[error("authentication failed")]
    BadTag,
    #[error("timestamp is {skew_ms} ms away from our clock")]
    Timestamp { skew_ms: i64 },
    #[error("replayed datagram")]
    Replay,
    #[error("malformed message: {0}")]
    Malformed(#[from] super::message::DecodeError),
}

/// Datagrams dropped, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropCounters {
    pub not_ours: u64,
    pub truncated: u64,
    pub oversized: u64,
    pub bad_version: u64,
    pub from_self: u64,
    pub low_workbits: u64,
    pub weak_key: u64,
    pub bad_tag: u64,
    pub timestamp: u64,
    pub replay: u64,
    pub malformed: u64,
}

impl DropCounters {
    pub fn total(&self) -> u64 {
        self.not_ours
            + self.truncated
            + self.oversized
            + self.bad_version
            + self.from_self
            + self.low_workbits
            + self.weak_key
            + self.bad_tag
            + self.timestamp
            + self.replay
            + self.malformed
    }
}

/// What a codec did, for `wh show` and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub sealed: u64,
    pub opened: u64,
    /// X25519 computations: one per new peer, not one per packet.
    pub dh_computations: u64,
    pub key_cache_hits: u64,
    pub key_cache_misses: u64,
    pub key_cache_len: u64,
    pub replay_cache_len: u64,
    pub dropped: DropCounters,
}

/// Settings of a [`Codec`].
#[derive(Debug, Clone)]
pub struct CodecConfig {
    /// Datagrams from keys with fewer workbits are dropped before any X25519.
    pub required_workbits: u8,
    /// The workbits namespace; also mixed into every derived key, so two
    /// networks with different namespaces cannot read each other.
    pub namespace: String,
    /// Most peers whose derived key is cached.
    pub key_cache: usize,
    /// Most datagram tags remembered against replay.
    pub replay_cache: usize,
    /// Accepted clock difference, each way.
    pub max_skew_ms: u64,
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            required_workbits: crate::keys::DEFAULT_WORKBITS,
            namespace: crate::keys::DEFAULT_NAMESPACE.to_string(),
            key_cache: 4096,
            replay_cache: 65_536,
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
        }
    }
}

/// A bounded map in two generations: lookups promote from the old one;
/// when the young one is half the capacity, the old one is dropped.
/// O(1) per operation, at most `capacity` entries.
struct KeyCache {
    young: HashMap<PublicKey, XChaCha20Poly1305>,
    old: HashMap<PublicKey, XChaCha20Poly1305>,
    half: usize,
}

impl KeyCache {
    fn new(capacity: usize) -> Self {
        KeyCache {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    fn get(&mut self, k: &PublicKey) -> Option<XChaCha20Poly1305> {
        if let Some(c) = self.young.get(k) {
            return Some(c.clone());
        }
        let c = self.old.remove(k)?;
        self.insert(*k, c.clone());
        Some(c)
    }

    fn insert(&mut self, k: PublicKey, c: XChaCha20Poly1305) {
        if self.young.len() >= self.half {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, c);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    fn heap_bytes(&self) -> usize {
        let per = std::mem::size_of::<(PublicKey, XChaCha20Poly1305)>() + 1;
        (self.young.capacity() + self.old.capacity()) * per
    }
}

/// Tags of accepted datagrams, in two generations, each tag with its
/// timestamp and (the first 8 bytes of) its sender's key. A generation is
/// retired after twice the skew window (its datagrams are then too old to
/// pass the window anyway) or, under a flood, when it holds half the
/// capacity. Retiring a generation early forgets tags that could still be
/// replayed: for each sender in it, the highest timestamp it had becomes
/// that sender's *floor*, and a later datagram from that sender whose
/// timestamp is not above it is refused. Floors are per sender, so one
/// busy or flooding peer never costs another peer its datagrams; a floor is
/// dropped once the window has passed it.
struct ReplayCache {
    current: HashMap<u128, (u64, u64)>,
    current_since: u64,
    previous: HashMap<u128, (u64, u64)>,
    floors: HashMap<u64, u64>,
    half: usize,
    skew_ms: u64,
}

fn sender_id(k: &PublicKey) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k.0[..8]);
    u64::from_le_bytes(b)
}

impl ReplayCache {
    fn new(capacity: usize, skew_ms: u64) -> Self {
        ReplayCache {
            current: HashMap::new(),
            current_since: 0,
            previous: HashMap::new(),
            floors: HashMap::new(),
            half: (capacity / 2).max(1),
            skew_ms,
        }
    }

    fn seen(&self, sender: &PublicKey, ts: u64, tag: u128) -> bool {
        self.current.contains_key(&tag)
            || self.previous.contains_key(&tag)
            || self
                .floors
                .get(&sender_id(sender))
                .is_some_and(|f| ts <= *f)
    }

    fn insert(&mut self, now: u64, sender: &PublicKey, ts: u64, tag: u128) {
        let aged = now.saturating_sub(self.current_since) >= 2 * self.skew_ms;
        if aged || self.current.len() >= self.half {
            let retired = std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
            self.current_since = now;
            let horizon = now.saturating_sub(self.skew_ms);
            self.floors.retain(|_, f| *f >= horizon);
            if !aged {
                for (_, (t, id)) in retired {
                    if t >= horizon {
                        let f = self.floors.entry(id).or_insert(0);
                        *f = (*f).max(t);
                    }
                }
            }
        }
        self.current.insert(tag, (ts, sender_id(sender)));
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(u128, (u64, u64))>() + 1;
        (self.current.capacity() + self.previous.capacity()) * entry
            + self.floors.capacity() * (std::mem::size_of::<(u64, u64)>() + 1)
    }
}

/// Seals and opens datagrams for one node. Owns the node's private key.
pub struct Codec {
    private: PrivateKey,
    public: PublicKey,
    config: CodecConfig,
    keys: KeyCache,
    replay: ReplayCache,
    nonce_seed: [u8; 32],
    nonce_counter: u64,
    scratch: Vec<u8>,
    counters: Counters,
}

impl Codec {
    /// A codec whose nonces are seeded from the operating system's random source.
    pub fn new(private: PrivateKey, config: CodecConfig) -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)?;
        Ok(Self::with_nonce_seed(private, config, seed))
    }

    /// A codec with a given nonce seed (deterministic; for tests and the
    /// simulator). Never reuse a seed with the same private key in real use.
    pub fn with_nonce_seed(private: PrivateKey, config: CodecConfig, seed: [u8; 32]) -> Self {
        let public = private.public_key();
        Codec {
            keys: KeyCache::new(config.key_cache),
            replay: ReplayCache::new(config.replay_cache, config.max_skew_ms),
            private,
            public,
            config,
            nonce_seed: seed,
            nonce_counter: 0,
            scratch: Vec::new(),
            counters: Counters::default(),
        }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub fn config(&self) -> &CodecConfig {
        &self.config
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.key_cache_len = self.keys.len() as u64;
        c.replay_cache_len = self.replay.len() as u64;
        c
    }

    /// Bytes the caches hold on the heap (by capacity), for memory estimates.
    pub fn heap_bytes(&self) -> usize {
        self.keys.heap_bytes() + self.replay.heap_bytes() + self.scratch.capacity()
    }

    fn cipher(&mut self, peer: &PublicKey) -> Result<XChaCha20Poly1305, [u8; 32]> {
        if let Some(c) = self.keys.get(peer) {
            self.counters.key_cache_hits += 1;
            return Ok(c);
        }
        self.counters.key_cache_misses += 1;
        self.counters.dh_computations += 1;
        Err(self.private.diffie_hellman(peer))
    }

    fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        // A PRF of a secret seed and a counter: unique, unpredictable, and
        // free of a system call per packet.
        let mut h = blake2::Blake2b::<blake2::digest::consts::U24>::new();
        h.update(NONCE_LABEL);
        h.update(self.nonce_seed);
        h.update(self.nonce_counter.to_le_bytes());
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        h.finalize().into()
    }

    /// Seals `msg` for `to` at time `now_ms` (milliseconds since the Unix epoch).
    pub fn seal(
        &mut self,
        now_ms: u64,
        to: &PublicKey,
        msg: &Message,
    ) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::with_capacity(sealed_len(msg));
        self.seal_into(now_ms, to, msg, &mut out)?;
        Ok(out)
    }

    /// Like [`Codec::seal`], writing into `out` (cleared first).
    pub fn seal_into(
        &mut self,
        now_ms: u64,
        to: &PublicKey,
        msg: &Message,
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        let len = sealed_len(msg);
        if len > MAX_DATAGRAM {
            return Err(SealError::TooLarge(len));
        }
        let cipher = match self.cipher(to) {
            Ok(c) => c,
            Err(shared) => {
                if shared == [0u8; 32] {
                    return Err(SealError::WeakKey);
                }
                let c = XChaCha20Poly1305::new(
                    &derive_key(&shared, &self.public, to, &self.config.namespace).into(),
                );
                self.keys.insert(*to, c.clone());
                c
            }
        };
        out.clear();
        out.push(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(self.public.as_bytes());
        let nonce = self.next_nonce();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&now_ms.to_be_bytes());
        msg.encode_into(out)?;
        let mut aad = [0u8; HEADER_LEN + KEY_LEN];
        aad[..HEADER_LEN].copy_from_slice(&out[..HEADER_LEN]);
        aad[HEADER_LEN..].copy_from_slice(to.as_bytes());
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut out[HEADER_LEN..])
            .map_err(|_| SealError::TooLarge(len))?;
        out.extend_from_slice(&tag);
        self.counters.sealed += 1;
        Ok(())
    }

    /// Opens a datagram received at `now_ms`: checks, in this order, the
    /// magic byte, the size, the version, the sender's workbits (before any
    /// X25519), the tag, the timestamp window, replay, and the message.
    pub fn open(
        &mut self,
        now_ms: u64,
        datagram: &[u8],
    ) -> Result<(PublicKey, Message), OpenError> {
        let r = self.open_inner(now_ms, datagram);
        match &r {
            Ok(_) => self.counters.opened += 1,
            Err(e) => {
                let d = &mut self.counters.dropped;
                match e {
                    OpenError::NotOurs => d.not_ours += 1,
                    OpenError::Truncated(_) => d.truncated += 1,
                    OpenError::Oversized(_) => d.oversized += 1,
                    OpenError::BadVersion(_) => d.bad_version += 1,
                    OpenError::FromSelf => d.from_self += 1,
                    OpenError::LowWorkbits { .. } => d.low_workbits += 1,
                    OpenError::WeakKey => d.weak_key += 1,
                    OpenError::BadTag => d.bad_tag += 1,
                    OpenError::Timestamp { .. } => d.timestamp += 1,
                    OpenError::Replay => d.replay += 1,
                    OpenError::Malformed(_) => d.malformed += 1,
                }
                tracing::trace!(error = %e, len = datagram.len(), "dropped datagram");
            }
        }
        r
    }

    fn open_inner(
        &mut self,
        now_ms: u64,
        datagram: &[u8],
    ) -> Result<(PublicKey, Message), OpenError> {
        if !is_control(datagram) {
            return Err(OpenError::NotOurs);
        }
        if datagram.len() > MAX_DATAGRAM {
            return Err(OpenError::Oversized(datagram.len()));
        }
        if datagram.len() < MIN_DATAGRAM {
            return Err(OpenError::Truncated(datagram.len()));
        }
        if datagram[1] != VERSION {
            return Err(OpenError::BadVersion(datagram[1]));
        }
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&datagram[2..2 + KEY_LEN]);
        let sender = PublicKey(key);
        if sender == self.public {
            return Err(OpenError::FromSelf);
        }
        let mut fresh = false;
        let cipher = match self.keys.get(&sender) {
            Some(c) => {
                self.counters.key_cache_hits += 1;
                c
            }
            None => {
                // Workbits are checked before the (costly) X25519.
                let have = sender.workbits(&self.config.namespace);
                if have < self.config.required_workbits {
                    return Err(OpenError::LowWorkbits {
                        have,
                        need: self.config.required_workbits,
                    });
                }
                self.counters.key_cache_misses += 1;
                self.counters.dh_computations += 1;
                let shared = self.private.diffie_hellman(&sender);
                if shared == [0u8; 32] {
                    return Err(OpenError::WeakKey);
                }
                fresh = true;
                XChaCha20Poly1305::new(
                    &derive_key(&shared, &self.public, &sender, &self.config.namespace).into(),
                )
            }
        };
        let body_end = datagram.len() - TAG_LEN;
        let mut aad = [0u8; HEADER_LEN + KEY_LEN];
        aad[..HEADER_LEN].copy_from_slice(&datagram[..HEADER_LEN]);
        aad[HEADER_LEN..].copy_from_slice(self.public.as_bytes());
        let nonce = XNonce::from_slice(&datagram[HEADER_LEN - NONCE_LEN..HEADER_LEN]);
        let tag_bytes = &datagram[body_end..];
        let tag = Tag::from_slice(tag_bytes);
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&datagram[HEADER_LEN..body_end]);
        cipher
            .decrypt_in_place_detached(nonce, &aad, &mut self.scratch, tag)
            .map_err(|_| OpenError::BadTag)?;
        if fresh {
            // Only keys that authenticated something are cached, so garbage
            // cannot push real peers out of the cache.
            self.keys.insert(sender, cipher);
        }
        let mut ts = [0u8; TIMESTAMP_LEN];
        ts.copy_from_slice(&self.scratch[..TIMESTAMP_LEN]);
        let ts = u64::from_be_bytes(ts);
        let skew = ts as i128 - now_ms as i128;
        if skew.unsigned_abs() > self.config.max_skew_ms as u128 {
            return Err(OpenError::Timestamp {
                skew_ms: skew.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            });
        }
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag_bytes);
        let tag_id = u128::from_le_bytes(t);
        if self.replay.seen(&sender, ts, tag_id) {
            return Err(OpenError::Replay);
        }
        let msg = Message::decode(&self.scratch[TIMESTAMP_LEN..])?;
        self.replay.insert(now_ms, &sender, ts, tag_id);
        Ok((sender, msg))
    }

    /// Checks an alias proof made for us: did the holder of `alias`'s secret
    /// vouch for `real`? One X25519 per call.
    pub fn verify_alias(&mut self, alias: &PublicKey, real: &PublicKey, proof: &[u8; 32]) -> bool {
        self.counters.dh_computations += 1;
        let shared = self.private.diffie_hellman(alias);
        if shared == [0u8; 32] {
            return false;
        }
        let expected = alias_mac(&shared, alias, real, &self.public);
        // Constant time comparison.
        expected
            .iter()
            .zip(proof.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}
