//! Sealing and opening datagrams: the per-peer key derivation and its cache,
//! the replay cache, and the drop counters. Whether a datagram is fresh is
//! [`super::freshness`]'s to judge; this module runs the checks in order and
//! turns the verdict into a message, a challenge to send, or a drop.
//!
//! Cost bound: an X25519 is a function of the key pair only, so it runs at
//! most once per sender key while that key stays cached. The result enters
//! a cache of *unverified* keys before the tag is checked (a sender that
//! repeats one key with garbage costs one X25519, then an AEAD check per
//! datagram), and moves to the cache of *verified* keys once a datagram
//! authenticates: garbage never evicts a peer that proved itself. New keys
//! are derived only within a per-source-address budget and an aggregate
//! one ([`super::budget`]); beyond, the datagram is dropped and counted
//! (`dh_source_limited`, `dh_busy`) before any X25519. A source whose
//! datagrams fail authentication beyond its budget is held off for a
//! while: its datagrams are dropped (`held_off`) before any cryptography,
//! except those of a verified peer from an address it proved.

use super::budget::{DhBudget, DhLimits};
use super::freshness::{
    CHALLENGE, COOKIE_FLAG, COOKIE_LEN, Challenge, ClockEstimate, FirstContact, Freshness, Verdict,
    challenge_key, sender_id,
};
use super::generations::Generations;
use super::message::{EncodeError, Message};
use crate::keys::{Blake2b256, KEY_LEN, PrivateKey, PublicKey};
use blake2::Digest;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

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

/// True when a datagram is a challenge (section 5 of docs/protocol.md).
pub fn is_challenge(datagram: &[u8]) -> bool {
    datagram.first() == Some(&CHALLENGE)
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
    #[error("timestamp is {skew_ms} ms away from the sender's expected clock")]
    Timestamp { skew_ms: i64 },
    #[error("first datagram of a sender we hold no state for: it must prove freshness")]
    FirstContact,
    #[error("timestamp is {behind_ms} ms behind what the sender sent before")]
    Stale { behind_ms: i64 },
    #[error("the cookie is not one we issued in the last 30 s")]
    BadCookie,
    #[error("replayed datagram")]
    Replay,
    #[error("malformed message: {0}")]
    Malformed(#[from] super::message::DecodeError),
    #[error("challenge refused: {0}")]
    BadChallenge(&'static str),
    #[error("a challenge (handled), not a message")]
    Challenge,
    #[error("a known sender at an address it did not prove it receives at")]
    UnprovenSource,
    #[error("the source sent too many datagrams that failed authentication lately")]
    HeldOff,
    #[error("new sender key from a source over its key-derivation budget")]
    DhSourceLimited,
    #[error("new sender key while the node's key-derivation budget is spent")]
    DhBusy,
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
    pub first_contact: u64,
    pub stale: u64,
    pub bad_cookie: u64,
    pub replay: u64,
    pub malformed: u64,
    pub bad_challenge: u64,
    /// Authentic, from an address its sender did not prove yet: challenged.
    pub unproven_source: u64,
    /// New keys refused before their X25519: the source address was over
    /// its budget...
    pub dh_source_limited: u64,
    /// ...or the whole node was.
    pub dh_busy: u64,
    /// From a source held off after too many authentication failures.
    pub held_off: u64,
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
            + self.first_contact
            + self.stale
            + self.bad_cookie
            + self.replay
            + self.malformed
            + self.bad_challenge
            + self.unproven_source
            + self.dh_source_limited
            + self.dh_busy
            + self.held_off
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
    /// Keys derived for senders that did not authenticate yet (garbage
    /// under one key hits here: no X25519 again).
    pub unverified_hits: u64,
    pub unverified_len: u64,
    /// Sources held off now (see [`DropCounters::held_off`]).
    pub held_off_len: u64,
    pub replay_cache_len: u64,
    /// Challenges sent for datagrams we could not judge fresh.
    pub challenges_sent: u64,
    /// Challenges received and believed.
    pub challenges_received: u64,
    /// Messages sealed again (with the cookie) after a challenge.
    pub resent: u64,
    /// Datagrams accepted on the strength of our cookie.
    pub cookies_accepted: u64,
    /// Answers from an address their sender did not prove, handed to the
    /// caller to match against its requests ([`Received::Answer`]).
    pub unproven_answers: u64,
    /// Peers whose clock we track; messages kept for a challenge.
    pub peer_clocks_len: u64,
    pub pending_len: u64,
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
    /// Most sender keys derived but not yet authenticated that are cached.
    pub unverified_cache: usize,
    /// X25519 budgets for new sender keys (per source address, aggregate).
    pub dh_limits: DhLimits,
    /// Most datagram tags remembered against replay.
    pub replay_cache: usize,
    /// Accepted clock difference, each way, for a first contact judged by
    /// our clock ([`FirstContact::ClockWindow`]).
    pub max_skew_ms: u64,
    /// How a sender we hold no state for is judged.
    pub first_contact: FirstContact,
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig {
            required_workbits: crate::keys::DEFAULT_WORKBITS,
            namespace: crate::keys::DEFAULT_NAMESPACE.to_string(),
            key_cache: 4096,
            unverified_cache: 1024,
            dh_limits: DhLimits::default(),
            replay_cache: 65_536,
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
            first_contact: FirstContact::default(),
        }
    }
}

/// A peer's derived keys: the AEAD, and the MAC key of challenges.
#[derive(Clone)]
struct Pair {
    cipher: XChaCha20Poly1305,
    mac_key: [u8; 32],
}

impl Pair {
    fn derive(shared: &[u8; 32], own: &PublicKey, peer: &PublicKey, namespace: &str) -> Pair {
        let key = derive_key(shared, own, peer, namespace);
        Pair {
            cipher: XChaCha20Poly1305::new(&key.into()),
            mac_key: challenge_key(&key),
        }
    }
}

/// What [`Codec::receive`] made of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A fresh message from `from`.
    Message { from: PublicKey, message: Message },
    /// An authentic datagram from `to` whose freshness could not be judged
    /// (`dropped` says why; it is counted): send `challenge` back where it
    /// came from. It is never larger than the datagram.
    Challenge {
        to: PublicKey,
        challenge: Vec<u8>,
        dropped: OpenError,
    },
    /// An authentic answer (`pong`, `nodes`) from an address `from` did not
    /// prove, received directly: it is fresh only if it answers a request
    /// we sent to that address and still wait for (its random id), which
    /// the caller knows and the codec does not. Accepting it sends nothing
    /// back, so a forged source gains nothing. Send `challenge` back where
    /// it came from either way, as for [`Received::Challenge`]: only its
    /// echoed cookie proves the address for what `from` sends later.
    Answer {
        from: PublicKey,
        message: Message,
        challenge: Vec<u8>,
    },
    /// `from` challenged one of our recent datagrams; `resend` are the
    /// messages we had sealed for it since, sealed again with its cookie,
    /// to send where the challenge came from.
    Challenged {
        from: PublicKey,
        resend: Vec<Vec<u8>>,
    },
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
///
/// Retiring early also returns, per sender, the highest timestamp retired,
/// for the sender's floor in [`Freshness`] (in the sender's own clock, so
/// it holds for a sender whose clock is far from ours). The floors here,
/// judged by our clock, keep at most half the capacity.
struct ReplayCache {
    current: HashMap<u128, (u64, u64)>,
    current_since: u64,
    previous: HashMap<u128, (u64, u64)>,
    floors: HashMap<u64, u64>,
    half: usize,
    skew_ms: u64,
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

    /// Remembers a tag; returns the per-sender floors of a generation
    /// retired early (empty otherwise), in sender order. Which senders get
    /// a floor here when the floors are full is decided in that order too,
    /// never in the hash map's: the same datagrams always leave the same
    /// floors (a simulator run replays exactly).
    fn insert(&mut self, now: u64, sender: &PublicKey, ts: u64, tag: u128) -> BTreeMap<u64, u64> {
        let mut raised = BTreeMap::new();
        let aged = now.saturating_sub(self.current_since) >= 2 * self.skew_ms;
        if aged || self.current.len() >= self.half {
            let retired = std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
            self.current_since = now;
            let horizon = now.saturating_sub(self.skew_ms);
            self.floors.retain(|_, f| *f >= horizon);
            if !aged {
                for (_, (t, id)) in retired {
                    let r = raised.entry(id).or_insert(0);
                    *r = t.max(*r);
                }
                for (&id, &t) in &raised {
                    if t >= horizon
                        && (self.floors.len() < self.half || self.floors.contains_key(&id))
                    {
                        let f = self.floors.entry(id).or_insert(0);
                        *f = (*f).max(t);
                    }
                }
            }
        }
        self.current.insert(tag, (ts, sender_id(sender)));
        raised
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
    keys: Generations<PublicKey, Pair>,
    /// Derived for senders not authenticated yet; `None`: a weak key.
    unverified: Generations<PublicKey, Option<Pair>>,
    budget: DhBudget,
    replay: ReplayCache,
    fresh: Freshness,
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
    /// simulator). The cookie secrets derive from it too. Never reuse a seed
    /// with the same private key in real use.
    pub fn with_nonce_seed(private: PrivateKey, config: CodecConfig, seed: [u8; 32]) -> Self {
        let public = private.public_key();
        Codec {
            keys: Generations::new(config.key_cache),
            unverified: Generations::new(config.unverified_cache),
            budget: DhBudget::new(config.dh_limits),
            replay: ReplayCache::new(config.replay_cache, config.max_skew_ms),
            fresh: Freshness::new(
                config.first_contact,
                config.max_skew_ms,
                config.key_cache,
                seed,
            ),
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
        c.unverified_len = self.unverified.len() as u64;
        c.held_off_len = self.budget.held_off_len() as u64;
        c.replay_cache_len = self.replay.len() as u64;
        c.peer_clocks_len = self.fresh.peers_len() as u64;
        c.pending_len = self.fresh.pending_len() as u64;
        c
    }

    /// Bytes the caches hold on the heap (by capacity), for memory estimates.
    pub fn heap_bytes(&self) -> usize {
        self.keys.heap_bytes()
            + self.unverified.heap_bytes()
            + self.replay.heap_bytes()
            + self.fresh.heap_bytes()
            + self.scratch.capacity()
    }

    /// Our clock against our peers', once enough distinct peers were heard
    /// from (see [`ClockEstimate`]).
    pub fn clock_estimate(&self, now_ms: u64) -> Option<ClockEstimate> {
        self.fresh.estimate(now_ms)
    }

    /// The pair keys of a peer we send to (one X25519 the first time).
    fn pair_to(&mut self, peer: &PublicKey) -> Result<Pair, SealError> {
        if let Some(p) = self.keys.get_mut(peer) {
            self.counters.key_cache_hits += 1;
            return Ok(p.clone());
        }
        self.counters.key_cache_misses += 1;
        self.counters.dh_computations += 1;
        let shared = self.private.diffie_hellman(peer);
        if shared == [0u8; 32] {
            return Err(SealError::WeakKey);
        }
        let pair = Pair::derive(&shared, &self.public, peer, &self.config.namespace);
        self.keys.insert(*peer, pair.clone());
        Ok(pair)
    }

    /// The pair keys of a sender, and whether it is not verified yet (then
    /// they enter the verified cache only once something authenticates
    /// with them, so garbage cannot push real peers out). In order: the
    /// verified cache, the unverified one, the workbits, the budgets of
    /// `src` and of the node, and only then the (costly) X25519, whose
    /// result is cached unverified before any tag is checked.
    fn pair_from(
        &mut self,
        now_ms: u64,
        src: Option<IpAddr>,
        sender: &PublicKey,
    ) -> Result<(Pair, bool), OpenError> {
        if let Some(p) = self.keys.get_mut(sender) {
            self.counters.key_cache_hits += 1;
            return Ok((p.clone(), false));
        }
        if let Some(p) = self.unverified.get_mut(sender) {
            self.counters.unverified_hits += 1;
            return p.clone().map(|p| (p, true)).ok_or(OpenError::WeakKey);
        }
        let have = sender.workbits(&self.config.namespace);
        if have < self.config.required_workbits {
            return Err(OpenError::LowWorkbits {
                have,
                need: self.config.required_workbits,
            });
        }
        self.budget.allow(now_ms, src)?;
        self.counters.key_cache_misses += 1;
        self.counters.dh_computations += 1;
        let shared = self.private.diffie_hellman(sender);
        let pair = (shared != [0u8; 32])
            .then(|| Pair::derive(&shared, &self.public, sender, &self.config.namespace));
        self.unverified.insert(*sender, pair.clone());
        pair.map(|p| (p, true)).ok_or(OpenError::WeakKey)
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

    /// Like [`Codec::seal`], writing into `out` (cleared first). Carries the
    /// cookie `to` gave us lately, if any; keeps `msg` to seal again if `to`
    /// was not heard from lately and challenges it.
    pub fn seal_into(
        &mut self,
        now_ms: u64,
        to: &PublicKey,
        msg: &Message,
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        self.fresh.start(now_ms);
        let cookie = self.fresh.cookie_for(now_ms, to);
        let len = sealed_len(msg) + cookie.map_or(0, |_| COOKIE_LEN);
        if len > MAX_DATAGRAM {
            return Err(SealError::TooLarge(len));
        }
        let pair = self.pair_to(to)?;
        out.clear();
        out.push(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(self.public.as_bytes());
        let nonce = self.next_nonce();
        out.extend_from_slice(&nonce);
        match cookie {
            Some(c) => {
                out.extend_from_slice(&(now_ms | COOKIE_FLAG).to_be_bytes());
                out.extend_from_slice(&c);
            }
            None => out.extend_from_slice(&(now_ms & !COOKIE_FLAG).to_be_bytes()),
        }
        msg.encode_into(out)?;
        let mut aad = [0u8; HEADER_LEN + KEY_LEN];
        aad[..HEADER_LEN].copy_from_slice(&out[..HEADER_LEN]);
        aad[HEADER_LEN..].copy_from_slice(to.as_bytes());
        let tag = pair
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut out[HEADER_LEN..])
            .map_err(|_| SealError::TooLarge(len))?;
        out.extend_from_slice(&tag);
        self.fresh.keep_pending(now_ms, to, msg);
        self.counters.sealed += 1;
        Ok(())
    }

    /// Opens a sealed datagram received at `now_ms`, for callers that do not
    /// answer challenges (see [`Codec::receive`]): a datagram that would be
    /// challenged is an error, and a challenge is [`OpenError::Challenge`].
    pub fn open(
        &mut self,
        now_ms: u64,
        datagram: &[u8],
    ) -> Result<(PublicKey, Message), OpenError> {
        match self.receive(now_ms, datagram)? {
            Received::Message { from, message } => Ok((from, message)),
            Received::Challenge { dropped, .. } => Err(dropped),
            Received::Answer { .. } => Err(OpenError::UnprovenSource),
            Received::Challenged { .. } => Err(OpenError::Challenge),
        }
    }

    /// Receives a datagram at `now_ms` whose source address is not known
    /// (relayed): only the node's aggregate key budget applies. See
    /// [`Codec::receive_from`].
    pub fn receive(&mut self, now_ms: u64, datagram: &[u8]) -> Result<Received, OpenError> {
        self.receive_at(now_ms, None, datagram)
    }

    /// Receives a datagram from `src` at `now_ms`: a sealed message (checks,
    /// in this order: the magic byte, the size, the version, the sender's
    /// key caches, workbits and `src`'s and the node's budget (all before
    /// any X25519), the tag, freshness, replay, and the message) or a
    /// challenge. Every drop is counted by reason.
    pub fn receive_from(
        &mut self,
        now_ms: u64,
        src: IpAddr,
        datagram: &[u8],
    ) -> Result<Received, OpenError> {
        self.receive_at(now_ms, Some(src), datagram)
    }

    fn receive_at(
        &mut self,
        now_ms: u64,
        src: Option<IpAddr>,
        datagram: &[u8],
    ) -> Result<Received, OpenError> {
        self.fresh.start(now_ms);
        let r = if is_challenge(datagram) {
            self.on_challenge(now_ms, src, datagram)
        } else {
            self.open_sealed(now_ms, src, datagram)
        };
        match &r {
            Ok(Received::Message { .. }) => self.counters.opened += 1,
            Ok(Received::Challenge { dropped, .. }) => {
                self.counters.challenges_sent += 1;
                self.count_drop(dropped, datagram.len());
            }
            Ok(Received::Answer { .. }) => self.counters.unproven_answers += 1,
            Ok(Received::Challenged { resend, .. }) => {
                self.counters.challenges_received += 1;
                self.counters.resent += resend.len() as u64;
            }
            Err(e) => self.count_drop(e, datagram.len()),
        }
        r
    }

    fn count_drop(&mut self, e: &OpenError, len: usize) {
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
            OpenError::FirstContact => d.first_contact += 1,
            OpenError::Stale { .. } => d.stale += 1,
            OpenError::BadCookie => d.bad_cookie += 1,
            OpenError::Replay => d.replay += 1,
            OpenError::Malformed(_) => d.malformed += 1,
            OpenError::BadChallenge(_) => d.bad_challenge += 1,
            OpenError::UnprovenSource => d.unproven_source += 1,
            OpenError::DhSourceLimited => d.dh_source_limited += 1,
            OpenError::DhBusy => d.dh_busy += 1,
            OpenError::HeldOff => d.held_off += 1,
            OpenError::Challenge => {}
        }
        tracing::trace!(error = %e, len, "dropped datagram");
    }

    fn open_sealed(
        &mut self,
        now_ms: u64,
        src: Option<IpAddr>,
        datagram: &[u8],
    ) -> Result<Received, OpenError> {
        let sender = Self::check_header(&self.public, datagram)?;
        self.check_held_off(now_ms, src, &sender)?;
        let (pair, fresh_key) = self.pair_from(now_ms, src, &sender)?;
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
        if pair
            .cipher
            .decrypt_in_place_detached(nonce, &aad, &mut self.scratch, tag)
            .is_err()
        {
            return Err(self.failed(now_ms, src));
        }
        if fresh_key {
            self.keys.insert(sender, pair.clone());
        }
        let (ts, cookie, body_at) = split_plaintext(&self.scratch)?;
        let verdict = match self.fresh.judge(now_ms, &sender, src, ts, cookie.as_ref()) {
            Ok(v) => v,
            Err(e) => {
                let answer = match e {
                    OpenError::UnprovenSource | OpenError::FirstContact if src.is_some() => {
                        Message::decode(&self.scratch[body_at..])
                            .ok()
                            .filter(is_answer)
                    }
                    _ => None,
                };
                let challenge = self.challenge_bytes(now_ms, sender, src, ts, &pair);
                return Ok(match answer {
                    Some(message) => Received::Answer {
                        from: sender,
                        message,
                        challenge,
                    },
                    None => Received::Challenge {
                        to: sender,
                        challenge,
                        dropped: e,
                    },
                });
            }
        };
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag_bytes);
        let tag_id = u128::from_le_bytes(t);
        if self.replay.seen(&sender, ts, tag_id) {
            return Err(OpenError::Replay);
        }
        let message = Message::decode(&self.scratch[body_at..])?;
        for (id, floor) in self.replay.insert(now_ms, &sender, ts, tag_id) {
            self.fresh.raise_floor(id, floor);
        }
        self.fresh.accept(now_ms, &sender, src, ts, verdict);
        if matches!(verdict, Verdict::Cookie { .. }) {
            self.counters.cookies_accepted += 1;
        }
        Ok(Received::Message {
            from: sender,
            message,
        })
    }

    /// Refuses a datagram from a held-off source, unless its sender is a
    /// verified peer at an address it proved (a peer sharing a source with
    /// a flooder, or whose address a flooder forges, keeps talking).
    fn check_held_off(
        &mut self,
        now_ms: u64,
        src: Option<IpAddr>,
        sender: &PublicKey,
    ) -> Result<(), OpenError> {
        let Some(ip) = src else {
            return Ok(());
        };
        if !self.budget.held_off(now_ms, ip) {
            return Ok(());
        }
        if self.keys.get_mut(sender).is_some() && self.fresh.proven(sender, src) {
            return Ok(());
        }
        Err(OpenError::HeldOff)
    }

    /// A datagram from `src` failed authentication: counts it against the
    /// source's budget.
    fn failed(&mut self, now_ms: u64, src: Option<IpAddr>) -> OpenError {
        if let Some(ip) = src {
            self.budget.failed(now_ms, ip);
        }
        OpenError::BadTag
    }

    /// The checks before any cryptography; returns the sender's key.
    fn check_header(own: &PublicKey, datagram: &[u8]) -> Result<PublicKey, OpenError> {
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
        if sender == *own {
            return Err(OpenError::FromSelf);
        }
        Ok(sender)
    }

    /// The challenge answering an authentic datagram from `to` (timestamp
    /// `echo`) that could not be judged fresh. It is [`CHALLENGE_LEN`]
    /// bytes, shorter than any sealed datagram.
    fn challenge_bytes(
        &mut self,
        now_ms: u64,
        to: PublicKey,
        src: Option<IpAddr>,
        echo: u64,
        pair: &Pair,
    ) -> Vec<u8> {
        let c = Challenge {
            from: self.public,
            echo,
            clock: now_ms,
            cookie: self.fresh.issue_cookie(now_ms, &to, src),
        };
        c.encode(VERSION, &pair.mac_key, &to)
    }

    /// A peer challenged one of our datagrams: learn its clock and cookie,
    /// and seal again what we kept for it.
    fn on_challenge(
        &mut self,
        now_ms: u64,
        src: Option<IpAddr>,
        datagram: &[u8],
    ) -> Result<Received, OpenError> {
        let c = Challenge::parse(datagram).ok_or(OpenError::BadChallenge("wrong length"))?;
        if datagram[1] != VERSION {
            return Err(OpenError::BadVersion(datagram[1]));
        }
        if c.from == self.public {
            return Err(OpenError::FromSelf);
        }
        self.check_held_off(now_ms, src, &c.from)?;
        let (pair, fresh_key) = self.pair_from(now_ms, src, &c.from)?;
        if !Challenge::verify(datagram, &pair.mac_key, &self.public) {
            return Err(self.failed(now_ms, src));
        }
        if fresh_key {
            self.keys.insert(c.from, pair);
        }
        if !self.fresh.echo_is_new(now_ms, &c.from, c.echo) {
            return Err(OpenError::BadChallenge(
                "it answers no datagram we sent lately, or one already answered",
            ));
        }
        // To an address the peer did not prove, our answers (which can be
        // many times the size of the challenge) are not sent again: only
        // our requests, as a first contact needs.
        let proven = self.fresh.proven(&c.from, src);
        let messages = self.fresh.challenged(now_ms, &c);
        let mut resend = Vec::with_capacity(messages.len());
        for m in messages.iter().filter(|m| proven || !is_answer(m)) {
            match self.seal(now_ms, &c.from, m) {
                Ok(d) => resend.push(d),
                Err(e) => tracing::debug!(error = %e, "cannot seal a message again"),
            }
        }
        Ok(Received::Challenged {
            from: c.from,
            resend,
        })
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

/// Whether a message answers a request (and may be larger than it).
fn is_answer(m: &Message) -> bool {
    matches!(
        m,
        Message::Pong { .. }
            | Message::Nodes { .. }
            | Message::ProbeAck { .. }
            | Message::AliasAck { .. }
    )
}

/// A plaintext's timestamp, cookie (when its flag is set) and where the
/// message starts.
fn split_plaintext(
    plain: &[u8],
) -> Result<(u64, Option<[u8; COOKIE_LEN]>, usize), super::message::DecodeError> {
    let mut raw = [0u8; TIMESTAMP_LEN];
    raw.copy_from_slice(&plain[..TIMESTAMP_LEN]);
    let raw = u64::from_be_bytes(raw);
    if raw & COOKIE_FLAG == 0 {
        return Ok((raw, None, TIMESTAMP_LEN));
    }
    let end = TIMESTAMP_LEN + COOKIE_LEN;
    let bytes = plain
        .get(TIMESTAMP_LEN..end)
        .ok_or(super::message::DecodeError::Truncated)?;
    let mut cookie = [0u8; COOKIE_LEN];
    cookie.copy_from_slice(bytes);
    Ok((raw & !COOKIE_FLAG, Some(cookie), end))
}

#[cfg(test)]
mod replay_cache_tests {
    use super::*;

    fn key(b: u8) -> PublicKey {
        let mut k = [0u8; 32];
        k[0] = b;
        PublicKey(k)
    }

    /// A cache of 8 (4 per generation, at most 4 floors) holding floors
    /// for two senders retires early a generation of four others (the
    /// generation before the last): two of them get floors.
    fn floors_after_a_crowd() -> Vec<u64> {
        let mut cache = ReplayCache::new(8, 1_000);
        let sends = [(1, 10), (2, 10), (3, 2_000), (4, 2_000)]
            .into_iter()
            .chain((5..=13).map(|s| (s, 2_005)));
        for (n, (sender, ts)) in sends.enumerate() {
            let now = 2_000 + n as u64;
            cache.insert(now, &key(sender), ts, u128::from(sender));
        }
        let mut floors: Vec<u64> = cache.floors.keys().copied().collect();
        floors.sort_unstable();
        floors
    }

    /// Every cache hashes with its own random keys: two caches fed the
    /// same datagrams still keep the same floors (a run replays exactly).
    #[test]
    fn the_same_datagrams_leave_the_same_floors_whatever_the_hash_order() {
        let first = floors_after_a_crowd();
        assert_eq!(first.len(), 4, "{first:?}");
        for _ in 0..20 {
            assert_eq!(floors_after_a_crowd(), first);
        }
    }
}
