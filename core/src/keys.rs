//! Keys: X25519 key pairs, their text forms, the proof of work on public keys
//! ("workbits"), and the stable IPv6 overlay address derived from a key.
//!
//! Text forms, chosen so that WireGuard's tools and WireHub's interoperate:
//! - a private key prints as standard base64 with padding (44 characters), the
//!   form `wg genkey` prints and `wg` accepts;
//! - a public key prints as URL-safe base64 without padding (43 characters),
//!   the form the original WireHub used in network files.
//!
//! Both parsers accept either alphabet, so a key copied from `wg pubkey`
//! works anywhere a WireHub public key is expected.
//!
//! Nothing here does I/O.

pub mod search;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use blake2::digest::consts::U32;
use blake2::{Blake2b, Digest};
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// BLAKE2b with a 256-bit output.
pub type Blake2b256 = Blake2b<U32>;

/// Length in bytes of every key.
pub const KEY_LEN: usize = 32;

/// Default namespace of the proof of work, as in the original.
pub const DEFAULT_NAMESPACE: &str = "public";

/// Default number of workbits a network requires, as in the original.
pub const DEFAULT_WORKBITS: u8 = 8;

/// Why a text could not be read as a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a key is 43 characters of base64 (44 with '=' padding), this is {0} characters")]
    Length(usize),
    #[error("a key is base64 (A-Z a-z 0-9 and '-' '_' or '+' '/'): {0}")]
    Base64(String),
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let text = text.trim();
    let len = text.chars().count();
    let unpadded = text.strip_suffix('=').unwrap_or(text);
    if unpadded.len() != 43 || len > 44 {
        return Err(KeyError::Length(len));
    }
    // Accept both alphabets: map the standard one onto the URL-safe one.
    let normalized: String = unpadded
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let bytes = URL_SAFE_NO_PAD
        .decode(normalized.as_bytes())
        .map_err(|e| KeyError::Base64(e.to_string()))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(len))
}

/// A public key: the identity of a node, its DHT identifier, its WireGuard peer key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The first 8 bytes, big-endian: how relayed data names its sender.
    pub fn prefix(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_be_bytes(b)
    }

    /// URL-safe base64 without padding: 43 characters.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Standard base64 with padding, the form `wg` prints and reads.
    pub fn to_wg_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The first `n` characters of the text form, used to name interfaces
    /// and to show peers compactly.
    pub fn short(&self, n: usize) -> String {
        let mut s = self.to_base64();
        s.truncate(n);
        s
    }

    /// Leading zero bits of BLAKE2b-256(key || namespace).
    pub fn workbits(&self, namespace: &str) -> u8 {
        workbits(&self.0, namespace)
    }

    /// The node's stable IPv6 overlay address in the given network namespace.
    pub fn orchid(&self, namespace: &str) -> Ipv6Addr {
        orchid(&self.0, namespace)
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short(10))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A private key. Its bytes are clamped as X25519 (and `wg genkey`) require.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; KEY_LEN]);

impl PrivateKey {
    /// Takes raw bytes and clamps them.
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(bytes)
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::getrandom(&mut bytes)?;
        Ok(Self::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn public_key(&self) -> PublicKey {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// X25519(self, peer): the raw shared secret. Never use it as a key
    /// directly; derive one with a label (see `proto`).
    pub fn diffie_hellman(&self, peer: &PublicKey) -> [u8; KEY_LEN] {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0))
            .to_bytes()
    }

    /// Standard base64 with padding: the form `wg genkey` prints.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        decode_key(s).map(Self::from_bytes)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// Leading zero bits of BLAKE2b-256(public key || namespace).
pub fn workbits(public: &[u8; KEY_LEN], namespace: &str) -> u8 {
    let mut h = Blake2b256::new();
    h.update(public);
    h.update(namespace.as_bytes());
    leading_zero_bits(&h.finalize())
}

fn leading_zero_bits(bytes: &[u8]) -> u8 {
    let mut n: u32 = 0;
    for b in bytes {
        if *b == 0 {
            n += 8;
        } else {
            n += b.leading_zeros();
            break;
        }
    }
    n.min(u8::MAX as u32) as u8
}

/// Domain-separation labels for the IPv6 derivation.
const ULA_LABEL: &[u8] = b"wirehub ula prefix v1";
const IID_LABEL: &[u8] = b"wirehub interface id v1";

/// The ULA /48 prefix of a network: `fd` followed by the first 40 bits of
/// BLAKE2b-256(label || namespace), subnet ID 0. See docs/addressing.md.
pub fn ula_prefix(namespace: &str) -> [u8; 8] {
    let mut h = Blake2b256::new();
    h.update(ULA_LABEL);
    h.update(namespace.as_bytes());
    let d = h.finalize();
    [0xfd, d[0], d[1], d[2], d[3], d[4], 0, 0]
}

/// The stable IPv6 overlay address of a key in a namespace: the network's ULA
/// /64 followed by the first 64 bits of BLAKE2b-256(label || public key).
pub fn orchid(public: &[u8; KEY_LEN], namespace: &str) -> Ipv6Addr {
    let prefix = ula_prefix(namespace);
    let mut h = Blake2b256::new();
    h.update(IID_LABEL);
    h.update(public);
    let d = h.finalize();
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&prefix);
    a[8..].copy_from_slice(&d[..8]);
    Ipv6Addr::from(a)
}

/// A stream of random values drawn from one 32-byte seed: the node core's
/// only source of randomness (nonce seeds, channel and probe ids), so that
/// a core given the same seed and the same inputs does the same thing (the
/// simulator replays a seed exactly). BLAKE2b over the seed and a counter:
/// as unpredictable as the seed, which the daemon draws from the operating
/// system.
#[derive(Clone)]
pub struct RandomStream {
    seed: [u8; 32],
    counter: u64,
}

impl RandomStream {
    pub fn from_seed(seed: [u8; 32]) -> RandomStream {
        RandomStream { seed, counter: 0 }
    }

    /// A stream seeded from the operating system's random source.
    pub fn from_os() -> Result<RandomStream, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)?;
        Ok(RandomStream::from_seed(seed))
    }

    /// The next 32 random bytes.
    pub fn next_bytes(&mut self) -> [u8; 32] {
        let mut h = Blake2b256::new();
        h.update(self.seed);
        h.update(self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        h.finalize().into()
    }

    pub fn next_u64(&mut self) -> u64 {
        let b = self.next_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&b[..8]);
        u64::from_le_bytes(first)
    }
}

impl fmt::Debug for RandomStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the seed.
        write!(f, "RandomStream {{ counter: {} }}", self.counter)
    }
}

/// A random number that need not be secret (receiver indices, relay
/// channel ids): from the operating system's random source, else from the
/// clock and the process id, which still spreads values.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_one_stream_and_another_seed_another() {
        let draw = |seed| {
            let mut r = RandomStream::from_seed(seed);
            (r.next_u64(), r.next_u64(), r.next_bytes())
        };
        assert_eq!(draw([7; 32]), draw([7; 32]));
        assert_ne!(draw([7; 32]), draw([8; 32]));
        let (a, b, _) = draw([7; 32]);
        assert_ne!(a, b, "successive draws differ");
    }

    // A key pair produced by `wg genkey | tee k | wg pubkey` (wireguard-tools).
    const WG_PRIVATE: &str = "oNo+kQes2W8JMC2g5Zeam2X8uHG2tod1O0xz0jpLUn4=";
    const WG_PUBLIC: &str = "KUZ0UGvQuREmnge3Tgy58jvM30KWv9ngwkjTaSQRaUU=";

    #[test]
    fn wireguard_key_pair_round_trips() {
        let sk: PrivateKey = WG_PRIVATE.parse().unwrap();
        assert_eq!(sk.to_base64(), WG_PRIVATE);
        let pk = sk.public_key();
        assert_eq!(pk.to_wg_base64(), WG_PUBLIC);
        let ours = pk.to_base64();
        assert_eq!(ours.len(), 43);
        assert!(
            ours.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(ours.parse::<PublicKey>().unwrap(), pk);
        assert_eq!(WG_PUBLIC.parse::<PublicKey>().unwrap(), pk);
    }

    #[test]
    fn generated_keys_are_clamped_and_distinct() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert_ne!(a, b);
        let bytes = a.as_bytes();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 128, 0);
        assert_eq!(bytes[31] & 64, 64);
    }

    #[test]
    fn bad_keys_are_refused_with_their_length() {
        assert_eq!("abc".parse::<PublicKey>().unwrap_err(), KeyError::Length(3));
        let k42 = "a".repeat(42);
        assert_eq!(k42.parse::<PublicKey>().unwrap_err(), KeyError::Length(42));
        let bad = format!("{}!", "a".repeat(42));
        assert!(matches!(
            bad.parse::<PublicKey>().unwrap_err(),
            KeyError::Base64(_)
        ));
    }

    #[test]
    fn diffie_hellman_agrees() {
        let a = PrivateKey::generate().unwrap();
        let b = PrivateKey::generate().unwrap();
        assert_eq!(
            a.diffie_hellman(&b.public_key()),
            b.diffie_hellman(&a.public_key())
        );
    }

    #[test]
    fn leading_zero_bits_counts() {
        assert_eq!(leading_zero_bits(&[0x80]), 0);
        assert_eq!(leading_zero_bits(&[0x01]), 7);
        assert_eq!(leading_zero_bits(&[0x00, 0x40]), 9);
        assert_eq!(leading_zero_bits(&[0; 32]), 255);
    }

    #[test]
    fn workbits_match_the_definition() {
        let pk = PrivateKey::generate().unwrap().public_key();
        let mut h = Blake2b256::new();
        h.update(pk.as_bytes());
        h.update(b"ns");
        let d = h.finalize();
        let expected = {
            let mut n = 0u32;
            'outer: for byte in d.iter() {
                for bit in (0..8).rev() {
                    if byte >> bit & 1 == 1 {
                        break 'outer;
                    }
                    n += 1;
                }
            }
            n as u8
        };
        assert_eq!(pk.workbits("ns"), expected);
    }

    #[test]
    fn orchid_is_stable_ula_and_depends_on_namespace() {
        let pk: PublicKey = WG_PUBLIC.parse().unwrap();
        let a = pk.orchid("public");
        assert_eq!(a, pk.orchid("public"));
        assert_eq!(a.octets()[0], 0xfd);
        assert_eq!(&a.octets()[6..8], &[0, 0]);
        assert_ne!(a, pk.orchid("other"));
        // Same namespace, same /64.
        let other = PrivateKey::generate().unwrap().public_key();
        assert_eq!(a.octets()[..8], other.orchid("public").octets()[..8]);
        assert_ne!(a, other.orchid("public"));
    }
}
