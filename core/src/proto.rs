//! The sealed wire protocol: every control message, its plain encoding, and
//! the sealing that carries it between nodes. No I/O, no clock of its own:
//! callers pass the time (milliseconds since the Unix epoch) and the bytes.
//!
//! A datagram is `0xFF, version, sender key, nonce, AEAD(timestamp ||
//! message) + tag`; the first byte lets the same UDP socket carry WireGuard
//! (whose messages start with 1 to 4). The AEAD key of a pair of nodes is
//! derived once from X25519 and cached ([`Codec`]). Freshness does not
//! depend on clocks agreeing: a sender is judged against its own earlier
//! timestamps and learned offset, and one that cannot be judged is sent a
//! challenge (first byte 0xFC) whose cookie it returns ([`Codec::receive`]).
//! The byte-level specification is docs/protocol.md.
//!
//! ```
//! use wirehub_core::keys::PrivateKey;
//! use wirehub_core::proto::{Codec, CodecConfig, Message};
//! let cfg = CodecConfig { required_workbits: 0, ..CodecConfig::default() };
//! let (a, b) = (PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap());
//! let (pa, pb) = (a.public_key(), b.public_key());
//! let mut ca = Codec::new(a, cfg.clone()).unwrap();
//! let mut cb = Codec::new(b, cfg).unwrap();
//! let now = 1_700_000_000_000;
//! let bytes = ca.seal(now, &pb, &Message::Probe { id: 7 }).unwrap();
//! assert_eq!(cb.open(now, &bytes).unwrap(), (pa, Message::Probe { id: 7 }));
//! ```

mod budget;
mod codec;
mod freshness;
mod generations;
mod message;
#[cfg(test)]
mod tests;

pub use budget::DhLimits;

/// First byte of a path MTU probe (`dataplane::pmtu`): zeros follow; every
/// receiver drops it (counted as `path-mtu-probe`). Neither WireGuard
/// (1..=4) nor any of ours above.
pub const PMTU_PROBE: u8 = 0xFB;
const _: () = assert!(
    PMTU_PROBE > 4
        && PMTU_PROBE < CHALLENGE
        && PMTU_PROBE != crate::relay::channel::RELAY_DATA
        && PMTU_PROBE != crate::relay::channel::RELAYED_DATA
);
pub use codec::{
    CONTROL_BUDGET, Codec, CodecConfig, Counters, DEFAULT_MAX_SKEW_MS, DropCounters, HEADER_LEN,
    MAGIC, MAX_DATAGRAM, MIN_DATAGRAM, NONCE_LEN, OpenError, Received, SEAL_OVERHEAD, SealError,
    TAG_LEN, TIMESTAMP_LEN, VERSION, alias_proof, derive_key, is_challenge, is_control, sealed_len,
};
pub use freshness::{
    CHALLENGE, CHALLENGE_LEN, CLOCK_REPORT_MS, COOKIE_FLAG, COOKIE_LEN, ClockEstimate,
    FirstContact, describe_offset,
};
pub use message::{
    DecodeError, EncodeError, MAX_ENDPOINTS, MAX_NODES, MAX_RELAY_PAYLOAD, MAX_RELAYS, Message,
    NO_RELAY_SERVICE, NatKind, NodeRecord, PROOF_LEN, types,
};
