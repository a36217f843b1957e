use super::freshness;
use super::*;
use crate::keys::{PrivateKey, PublicKey};
use proptest::prelude::*;
use std::net::{IpAddr, SocketAddr};

const NOW: u64 = 1_700_000_000_000;

fn cfg(workbits: u8) -> CodecConfig {
    CodecConfig {
        required_workbits: workbits,
        namespace: "test".into(),
        ..CodecConfig::default()
    }
}

/// A receiver (key 2) whose replay cache holds 16 entries only.
fn small_cache_receiver() -> Codec {
    Codec::with_nonce_seed(
        key_from(2),
        CodecConfig {
            replay_cache: 16,
            ..cfg(0)
        },
        [2; 32],
    )
}

fn key_from(seed: u8) -> PrivateKey {
    PrivateKey::from_bytes([seed; 32])
}

fn pair() -> (Codec, Codec) {
    let a = Codec::with_nonce_seed(key_from(1), cfg(0), [1; 32]);
    let b = Codec::with_nonce_seed(key_from(2), cfg(0), [2; 32]);
    (a, b)
}

fn arb_key() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey)
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
    ]
}

fn arb_nat() -> impl Strategy<Value = NatKind> {
    (0u8..5).prop_map(|v| NatKind::from_u8(v).unwrap())
}

fn arb_record() -> impl Strategy<Value = NodeRecord> {
    (
        arb_key(),
        prop::collection::vec(arb_addr(), 0..=MAX_ENDPOINTS),
        arb_nat(),
        prop::collection::vec((arb_key(), arb_addr()), 0..=MAX_RELAYS),
        any::<bool>(),
    )
        .prop_map(|(key, endpoints, nat, relays, relay_service)| NodeRecord {
            key,
            endpoints,
            nat,
            relays,
            relay_service,
        })
}

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=MAX_RELAY_PAYLOAD)
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), prop::option::of(arb_record()))
            .prop_map(|(id, info)| Message::Ping { id, info }),
        (any::<u64>(), arb_addr(), prop::option::of(arb_record()))
            .prop_map(|(id, observed, info)| Message::Pong { id, observed, info }),
        (any::<u64>(), arb_key(), prop::option::of(arb_record()))
            .prop_map(|(id, target, info)| Message::FindNode { id, target, info }),
        (any::<u64>(), prop::collection::vec(arb_record(), 0..=6))
            .prop_map(|(id, nodes)| Message::Nodes { id, nodes }),
        (
            any::<u64>(),
            prop::collection::vec(arb_addr(), 0..=MAX_ENDPOINTS)
        )
            .prop_map(|(id, endpoints)| Message::PunchRequest { id, endpoints }),
        any::<u64>().prop_map(|id| Message::Probe { id }),
        (any::<u64>(), arb_addr()).prop_map(|(id, observed)| Message::ProbeAck { id, observed }),
        (arb_key(), arb_payload()).prop_map(|(to, inner)| Message::Relay { to, inner }),
        (arb_key(), arb_payload()).prop_map(|(from, inner)| Message::Relayed { from, inner }),
        (arb_key(), arb_payload()).prop_map(|(to, packet)| Message::RelayWg { to, packet }),
        (arb_key(), arb_payload()).prop_map(|(from, packet)| Message::RelayedWg { from, packet }),
        (arb_key(), any::<u64>())
            .prop_map(|(peer, channel)| Message::RelayChannel { peer, channel }),
        (arb_key(), arb_key(), any::<[u8; 32]>())
            .prop_map(|(alias, real, proof)| Message::AliasAuth { alias, real, proof }),
        arb_key().prop_map(|alias| Message::AliasAck { alias }),
        (any::<u64>(), arb_payload())
            .prop_map(|(id, padding)| Message::DeliveryProbe { id, padding }),
        (any::<u64>(), arb_payload())
            .prop_map(|(id, padding)| Message::DeliveryAck { id, padding }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_message_round_trips_plain(msg in arb_message()) {
        let bytes = msg.encode().unwrap();
        prop_assert_eq!(bytes.len(), msg.encoded_len());
        prop_assert_eq!(Message::decode(&bytes).unwrap(), msg);
    }

    #[test]
    fn every_message_round_trips_sealed(msg in arb_message()) {
        let (mut a, mut b) = pair();
        let len = sealed_len(&msg);
        match a.seal(NOW, &b.public_key(), &msg) {
            Ok(bytes) => {
                prop_assert!(len <= MAX_DATAGRAM);
                prop_assert_eq!(bytes.len(), len);
                prop_assert_eq!(bytes[0], MAGIC);
                let (from, got) = b.open(NOW + 5, &bytes).unwrap();
                prop_assert_eq!(from, a.public_key());
                prop_assert_eq!(got, msg);
            }
            Err(SealError::TooLarge(n)) => prop_assert!(n > MAX_DATAGRAM),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::decode(&bytes) {
            // Strict: a decoded message re-encodes to the very same bytes.
            prop_assert_eq!(m.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn open_never_panics_on_garbage(mut bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let (_, mut b) = pair();
        if let Some(first) = bytes.first_mut() { *first = MAGIC; }
        prop_assert!(b.open(NOW, &bytes).is_err());
    }

    #[test]
    fn any_flipped_bit_is_refused(pos in 0usize..10_000, bit in 0u8..8) {
        let (mut a, mut b) = pair();
        let msg = Message::FindNode { id: 9, target: PublicKey([3; 32]), info: None };
        let mut bytes = a.seal(NOW, &b.public_key(), &msg).unwrap();
        let pos = pos % bytes.len();
        bytes[pos] ^= 1 << bit;
        prop_assert!(b.open(NOW, &bytes).is_err());
    }
}

fn sample() -> Message {
    Message::Pong {
        id: 42,
        observed: "192.0.2.1:62096".parse().unwrap(),
        info: Some(NodeRecord::new(
            PublicKey([5; 32]),
            "[2001:db8::1]:1".parse().unwrap(),
        )),
    }
}

#[test]
fn flipped_byte_is_bad_tag() {
    let (mut a, mut b) = pair();
    let mut bytes = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    let mid = bytes.len() / 2 + 10;
    bytes[mid] ^= 0x40;
    assert_eq!(b.open(NOW, &bytes), Err(OpenError::BadTag));
    // The nonce and the tag are covered too.
    let mut bytes = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    bytes[40] ^= 1;
    assert_eq!(b.open(NOW, &bytes), Err(OpenError::BadTag));
    let mut bytes = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert_eq!(b.open(NOW, &bytes), Err(OpenError::BadTag));
    assert_eq!(b.counters().dropped.bad_tag, 3);
}

#[test]
fn replay_is_refused() {
    let (mut a, mut b) = pair();
    let bytes = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    assert!(b.open(NOW, &bytes).is_ok());
    assert_eq!(b.open(NOW + 1000, &bytes), Err(OpenError::Replay));
    // A second seal of the same message is a different datagram and passes.
    let again = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    assert_ne!(again, bytes);
    assert!(b.open(NOW, &again).is_ok());
    assert_eq!(b.counters().dropped.replay, 1);
}

#[test]
fn replay_cache_is_bounded_and_stays_safe() {
    let a_key = key_from(1);
    let mut a = Codec::with_nonce_seed(a_key, cfg(0), [1; 32]);
    let mut b = small_cache_receiver();
    let first = a
        .seal(NOW, &b.public_key(), &Message::Probe { id: 0 })
        .unwrap();
    assert!(b.open(NOW, &first).is_ok());
    for i in 1..100u64 {
        let d = a
            .seal(NOW + i, &b.public_key(), &Message::Probe { id: i })
            .unwrap();
        assert!(b.open(NOW + i, &d).is_ok());
        assert!(b.counters().replay_cache_len <= 16);
    }
    // Long forgotten by the cache, still refused thanks to the floor.
    assert_eq!(b.open(NOW + 100, &first), Err(OpenError::Replay));
}

#[test]
fn a_flooding_peer_does_not_cost_others_their_datagrams() {
    let mut flood = Codec::with_nonce_seed(key_from(3), cfg(0), [3; 32]);
    let mut slow = Codec::with_nonce_seed(key_from(1), cfg(0), [1; 32]);
    let mut b = small_cache_receiver();
    let pb = b.public_key();
    for i in 0..200u64 {
        let d = flood.seal(NOW + i, &pb, &Message::Probe { id: i }).unwrap();
        assert!(b.open(NOW + i, &d).is_ok());
    }
    // A peer whose clock is 10 s behind still gets through.
    let d = slow
        .seal(NOW - 10_000, &pb, &Message::Probe { id: 1 })
        .unwrap();
    assert!(b.open(NOW + 200, &d).is_ok());
    // The flooder's own old datagrams are refused: its floor.
    let old = flood.seal(NOW, &pb, &Message::Probe { id: 0 }).unwrap();
    assert_eq!(b.open(NOW + 200, &old), Err(OpenError::Replay));
}

#[test]
fn replay_generations_expire_with_time() {
    let (mut a, mut b) = pair();
    for i in 0..10u64 {
        let t = NOW + i * 20_000;
        let d = a
            .seal(t, &b.public_key(), &Message::Probe { id: i })
            .unwrap();
        assert!(b.open(t, &d).is_ok());
    }
    assert!(b.counters().replay_cache_len < 10);
}

#[test]
fn old_and_future_timestamps_are_refused() {
    let (mut a, mut b) = pair();
    let old = a.seal(NOW - 30_001, &b.public_key(), &sample()).unwrap();
    assert_eq!(
        b.open(NOW, &old),
        Err(OpenError::Timestamp { skew_ms: -30_001 })
    );
    let future = a.seal(NOW + 30_001, &b.public_key(), &sample()).unwrap();
    assert_eq!(
        b.open(NOW, &future),
        Err(OpenError::Timestamp { skew_ms: 30_001 })
    );
    let edge = a.seal(NOW + 30_000, &b.public_key(), &sample()).unwrap();
    assert!(b.open(NOW, &edge).is_ok());
    let edge = a.seal(NOW - 30_000, &b.public_key(), &sample()).unwrap();
    assert!(b.open(NOW, &edge).is_ok());
    assert_eq!(b.counters().dropped.timestamp, 2);
}

/// A key with fewer than `bits` workbits in namespace "test".
fn weak_key(bits: u8) -> PrivateKey {
    (0u8..=255)
        .map(key_from)
        .find(|k| k.public_key().workbits("test") < bits)
        .unwrap()
}

#[test]
fn low_workbit_sender_is_refused_before_any_x25519() {
    let sender = weak_key(4);
    let mut a = Codec::with_nonce_seed(sender, cfg(0), [1; 32]);
    let mut b = Codec::with_nonce_seed(key_from(2), cfg(4), [2; 32]);
    let bytes = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    let dh_before = b.counters().dh_computations;
    assert!(matches!(
        b.open(NOW, &bytes),
        Err(OpenError::LowWorkbits { need: 4, .. })
    ));
    assert_eq!(b.counters().dh_computations, dh_before);
    assert_eq!(b.counters().dropped.low_workbits, 1);
}

#[test]
fn sender_meeting_workbits_is_accepted() {
    let sender = (0u8..=255)
        .map(key_from)
        .find(|k| k.public_key().workbits("test") >= 3)
        .unwrap();
    let mut a = Codec::with_nonce_seed(sender, cfg(0), [1; 32]);
    let mut b = Codec::with_nonce_seed(key_from(2), cfg(3), [2; 32]);
    let bytes = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    assert!(b.open(NOW, &bytes).is_ok());
}

#[test]
fn truncated_oversized_garbage_and_version() {
    let (mut a, mut b) = pair();
    let bytes = a
        .seal(NOW, &b.public_key(), &Message::Probe { id: 1 })
        .unwrap();
    assert_eq!(bytes.len(), MIN_DATAGRAM + 8);
    for n in 1..MIN_DATAGRAM {
        assert_eq!(b.open(NOW, &bytes[..n]), Err(OpenError::Truncated(n)));
    }
    // Cut inside the message (still long enough to be a datagram): bad tag.
    assert_eq!(
        b.open(NOW, &bytes[..bytes.len() - 1]),
        Err(OpenError::BadTag)
    );
    assert_eq!(b.open(NOW, &[]), Err(OpenError::NotOurs));
    assert_eq!(b.open(NOW, &[1, 0, 0, 0]), Err(OpenError::NotOurs));
    assert_eq!(b.open(NOW, &[4; 100]), Err(OpenError::NotOurs));
    let mut big = vec![0u8; MAX_DATAGRAM + 1];
    big[0] = MAGIC;
    assert_eq!(
        b.open(NOW, &big),
        Err(OpenError::Oversized(MAX_DATAGRAM + 1))
    );
    let mut v2 = bytes.clone();
    v2[1] = 2;
    assert_eq!(b.open(NOW, &v2), Err(OpenError::BadVersion(2)));
    let mut garbage = vec![0x5au8; 200];
    garbage[0] = MAGIC;
    garbage[1] = VERSION;
    assert!(b.open(NOW, &garbage).is_err());
    let c = b.counters();
    assert_eq!(c.dropped.truncated, MIN_DATAGRAM as u64 - 1);
    assert_eq!(c.dropped.not_ours, 3);
    assert_eq!(c.dropped.oversized, 1);
    assert_eq!(c.dropped.bad_version, 1);
    assert_eq!(c.opened, 0);
}

#[test]
fn from_self_and_reflection_are_refused() {
    let (mut a, b) = pair();
    let bytes = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    // Sent back to its sender unchanged: claims to be from ourselves.
    assert_eq!(a.open(NOW, &bytes), Err(OpenError::FromSelf));
    // Sender field rewritten to the receiver: same pair key, but the
    // recipient in the associated data differs, so the tag fails.
    let mut reflected = bytes.clone();
    reflected[2..34].copy_from_slice(b.public_key().as_bytes());
    assert_eq!(a.open(NOW, &reflected), Err(OpenError::BadTag));
}

#[test]
fn malformed_body_is_reported() {
    // Seal a body that is not a message, by hand, with the real key.
    let (a, mut b) = pair();
    let sk = key_from(1);
    let shared = sk.diffie_hellman(&b.public_key());
    let k = derive_key(&shared, &a.public_key(), &b.public_key(), "test");
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(&k.into());
    let mut d = vec![MAGIC, VERSION];
    d.extend_from_slice(a.public_key().as_bytes());
    d.extend_from_slice(&[7u8; NONCE_LEN]);
    d.extend_from_slice(&NOW.to_be_bytes());
    d.extend_from_slice(&[0x99, 1, 2, 3]);
    let mut aad = d[..HEADER_LEN].to_vec();
    aad.extend_from_slice(b.public_key().as_bytes());
    let tag = cipher
        .encrypt_in_place_detached(
            chacha20poly1305::XNonce::from_slice(&[7u8; NONCE_LEN]),
            &aad,
            &mut d[HEADER_LEN..],
        )
        .unwrap();
    d.extend_from_slice(&tag);
    assert_eq!(
        b.open(NOW, &d),
        Err(OpenError::Malformed(DecodeError::UnknownType(0x99)))
    );
    assert_eq!(b.counters().dropped.malformed, 1);
}

#[test]
fn derived_key_is_cached_x25519_runs_once_per_peer() {
    let (mut a, mut b) = pair();
    let pb = b.public_key();
    for i in 0..100 {
        let bytes = a.seal(NOW + i, &pb, &Message::Probe { id: i }).unwrap();
        b.open(NOW + i, &bytes).unwrap();
    }
    let ca = a.counters();
    let cb = b.counters();
    assert_eq!(ca.dh_computations, 1);
    assert_eq!(ca.key_cache_hits, 99);
    assert_eq!(cb.dh_computations, 1);
    assert_eq!(cb.key_cache_hits, 99);
    assert_eq!(ca.sealed, 100);
    assert_eq!(cb.opened, 100);
    // Answers from b to a use the same cached pair key: no new X25519.
    let back = b
        .seal(NOW, &a.public_key(), &Message::Probe { id: 1 })
        .unwrap();
    assert_eq!(b.counters().dh_computations, 1);
    a.open(NOW, &back).unwrap();
    assert_eq!(
        a.counters().dh_computations,
        1,
        "a reuses its cached key to open"
    );
}

#[test]
fn key_cache_is_bounded() {
    let mut b = Codec::with_nonce_seed(
        key_from(2),
        CodecConfig {
            key_cache: 8,
            ..cfg(0)
        },
        [2; 32],
    );
    for s in 10..60u8 {
        let mut a = Codec::with_nonce_seed(key_from(s), cfg(0), [s; 32]);
        let bytes = a
            .seal(NOW, &b.public_key(), &Message::Probe { id: 1 })
            .unwrap();
        b.open(NOW, &bytes).unwrap();
        assert!(b.counters().key_cache_len <= 8);
    }
    assert_eq!(b.counters().dh_computations, 50);
}

#[test]
fn failed_tags_do_not_fill_the_key_cache() {
    let (_, mut b) = pair();
    let mut d = vec![0u8; 120];
    d[0] = MAGIC;
    d[1] = VERSION;
    for s in 0..20u8 {
        d[2..34].copy_from_slice(key_from(s + 100).public_key().as_bytes());
        assert_eq!(b.open(NOW, &d), Err(OpenError::BadTag));
    }
    assert_eq!(b.counters().key_cache_len, 0);
}

/// A sealed-looking datagram from `sender` whose body and tag are garbage.
fn garbage_from(sender: &PublicKey, salt: u8) -> Vec<u8> {
    let mut d = vec![salt; 120];
    d[0] = MAGIC;
    d[1] = VERSION;
    d[2..34].copy_from_slice(sender.as_bytes());
    d
}

#[test]
fn garbage_under_one_key_costs_one_x25519_not_one_per_datagram() {
    let (_, mut b) = pair();
    let attacker = key_from(77).public_key();
    for i in 0..1_000u32 {
        let d = garbage_from(&attacker, i as u8);
        assert_eq!(b.open(NOW, &d), Err(OpenError::BadTag));
    }
    let c = b.counters();
    assert_eq!(c.dh_computations, 1);
    assert_eq!(c.unverified_hits, 999);
    assert_eq!(c.dropped.bad_tag, 1_000);
    assert_eq!(
        c.key_cache_len, 0,
        "garbage never enters the verified cache"
    );
}

#[test]
fn a_peer_that_sent_garbage_first_is_still_heard_once_it_authenticates() {
    let (mut a, mut b) = pair();
    let pa = a.public_key();
    assert_eq!(b.open(NOW, &garbage_from(&pa, 9)), Err(OpenError::BadTag));
    let bytes = a
        .seal(NOW, &b.public_key(), &Message::Probe { id: 1 })
        .unwrap();
    assert_eq!(b.open(NOW, &bytes).unwrap().0, pa);
    assert_eq!(b.counters().dh_computations, 1);
    assert_eq!(b.counters().key_cache_len, 1);
}

#[test]
fn garbage_under_many_keys_does_not_evict_verified_peers() {
    let (mut a, mut b) = pair();
    let pb = b.public_key();
    let bytes = a.seal(NOW, &pb, &Message::Probe { id: 1 }).unwrap();
    b.open(NOW, &bytes).unwrap();
    for s in 0..3_000u32 {
        let k = PrivateKey::from_bytes(blake2_seed(s)).public_key();
        let _ = b.open(NOW + u64::from(s), &garbage_from(&k, 1));
    }
    let before = b.counters().dh_computations;
    let bytes = a.seal(NOW + 3_000, &pb, &Message::Probe { id: 2 }).unwrap();
    b.open(NOW + 3_000, &bytes).unwrap();
    assert_eq!(
        b.counters().dh_computations,
        before,
        "the peer's key is still cached"
    );
    assert!(b.counters().unverified_len <= 1_024);
}

fn blake2_seed(n: u32) -> [u8; 32] {
    use blake2::Digest;
    let mut h = crate::keys::Blake2b256::new();
    h.update(n.to_le_bytes());
    h.finalize().into()
}

#[test]
fn new_keys_beyond_a_source_budget_are_dropped_before_any_x25519() {
    let (_, mut b) = pair();
    let src: IpAddr = "203.0.113.9".parse().unwrap();
    let limits = crate::proto::DhLimits::default();
    for s in 0..200u32 {
        let k = PrivateKey::from_bytes(blake2_seed(s)).public_key();
        let _ = b.receive_from(NOW, src, &garbage_from(&k, 1));
    }
    let c = b.counters();
    assert_eq!(c.dh_computations, u64::from(limits.per_source_burst));
    assert_eq!(
        c.dropped.dh_source_limited,
        200 - u64::from(limits.per_source_burst)
    );
    // Another address still gets its keys derived.
    let other: IpAddr = "203.0.113.10".parse().unwrap();
    let k = key_from(55).public_key();
    assert_eq!(
        b.receive_from(NOW, other, &garbage_from(&k, 1)),
        Err(OpenError::BadTag)
    );
}

#[test]
fn a_source_sending_garbage_is_held_off_but_a_proven_peer_there_is_not() {
    let (mut a, mut b) = pair();
    let (pa, pb) = (a.public_key(), b.public_key());
    let shared = ip("203.0.113.7");
    // a proves it receives at the shared address.
    let d = a.seal(NOW, &pb, &Message::Probe { id: 1 }).unwrap();
    let Ok(Received::Challenge { challenge, .. }) = b.receive_from(NOW, shared, &d) else {
        panic!("challenged");
    };
    let Ok(Received::Challenged { resend, .. }) =
        a.receive_from(NOW, ip("203.0.113.8"), &challenge)
    else {
        panic!("believed");
    };
    assert!(matches!(
        b.receive_from(NOW, shared, &resend[0]),
        Ok(Received::Message { .. })
    ));
    // A flooder behind the same address sends garbage under its key.
    let attacker = key_from(77).public_key();
    let limits = crate::proto::DhLimits::default();
    let n = 1_000u64;
    for i in 0..n {
        let _ = b.receive_from(NOW + 1, shared, &garbage_from(&attacker, i as u8));
    }
    let c = b.counters();
    assert_eq!(c.dropped.bad_tag, u64::from(limits.failures_burst) + 1);
    assert_eq!(c.dropped.held_off, n - c.dropped.bad_tag);
    assert_eq!(c.held_off_len, 1);
    // The proven peer there is still heard; the flooder, later, again.
    let d = a.seal(NOW + 2, &pb, &Message::Probe { id: 2 }).unwrap();
    assert_eq!(
        b.receive_from(NOW + 2, shared, &d)
            .unwrap_or_else(|e| panic!("{e}")),
        Received::Message {
            from: pa,
            message: Message::Probe { id: 2 }
        }
    );
    let later = NOW + 1 + limits.hold_off_ms;
    assert_eq!(
        b.receive_from(later, shared, &garbage_from(&attacker, 1)),
        Err(OpenError::BadTag)
    );
}

#[test]
fn new_keys_beyond_the_node_budget_are_dropped_before_any_x25519() {
    let mut b = Codec::with_nonce_seed(
        key_from(2),
        CodecConfig {
            dh_limits: crate::proto::DhLimits {
                burst: 30,
                ..Default::default()
            },
            ..cfg(0)
        },
        [2; 32],
    );
    for s in 0..100u32 {
        let k = PrivateKey::from_bytes(blake2_seed(s)).public_key();
        let src = IpAddr::from([10, 1, (s >> 8) as u8, s as u8]);
        let _ = b.receive_from(NOW, src, &garbage_from(&k, 1));
    }
    let c = b.counters();
    assert_eq!(c.dh_computations, 30);
    assert_eq!(c.dropped.dh_busy, 70);
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn find(id: u64) -> Message {
    Message::FindNode {
        id,
        target: key_from(9).public_key(),
        info: None,
    }
}

#[test]
fn a_known_peer_at_an_address_it_did_not_prove_gets_a_challenge_no_larger_than_its_datagram() {
    let (mut a, mut b) = pair();
    let (pa, pb) = (a.public_key(), b.public_key());
    let (at_a, at_b, victim) = (ip("203.0.113.1"), ip("203.0.113.2"), ip("203.0.113.99"));
    // First contact: b challenges; a seals its ping again with b's cookie
    // for a's address, which proves it.
    let d1 = a
        .seal(NOW, &pb, &Message::Ping { id: 1, info: None })
        .unwrap();
    let Ok(Received::Challenge { challenge, .. }) = b.receive_from(NOW, at_a, &d1) else {
        panic!("first contact is challenged");
    };
    assert!(challenge.len() <= d1.len());
    let Ok(Received::Challenged { resend, .. }) = a.receive_from(NOW + 1, at_b, &challenge) else {
        panic!("a believes the challenge");
    };
    assert_eq!(resend.len(), 1, "a request is sealed again");
    let got = b.receive_from(NOW + 2, at_a, &resend[0]);
    assert!(matches!(got, Ok(Received::Message { .. })), "{got:?}");
    // From the proven address, a request is a message...
    let d2 = a.seal(NOW + 3, &pb, &find(2)).unwrap();
    assert!(matches!(
        b.receive_from(NOW + 3, at_a, &d2),
        Ok(Received::Message { .. })
    ));
    // ...and with its source forged as a victim's (once a no longer
    // attaches b's cookie, which is bound to a's address anyway), a
    // challenge no larger than the request: nothing to reflect or amplify.
    let later = NOW + 11_000;
    let d3 = a.seal(later, &pb, &find(3)).unwrap();
    match b.receive_from(later, victim, &d3) {
        Ok(Received::Challenge {
            challenge, dropped, ..
        }) => {
            assert_eq!(dropped, OpenError::UnprovenSource);
            assert!(challenge.len() <= d3.len());
        }
        other => panic!("expected a challenge, got {other:?}"),
    }
    // (The first contact counted too: no address was proven then.)
    assert_eq!(b.counters().dropped.unproven_source, 2);
    // A challenge with a forged source does not get our answers sent
    // there again (only requests).
    let answer = b
        .seal(
            NOW + 5,
            &pa,
            &Message::Nodes {
                id: 2,
                nodes: vec![],
            },
        )
        .unwrap();
    let Ok(Received::Answer { challenge, .. }) = a.receive_from(NOW + 5, at_b, &answer) else {
        panic!("a has not proven b's address: the answer comes with a challenge");
    };
    let Ok(Received::Challenged { resend, .. }) = b.receive_from(NOW + 6, victim, &challenge)
    else {
        panic!("b believes the challenge");
    };
    assert!(resend.is_empty(), "no answer goes to the forged address");
}

#[test]
fn an_answer_from_an_unproven_address_is_left_to_the_caller_a_request_is_challenged() {
    let (mut a, mut b) = pair();
    let pa = a.public_key();
    let at_b = ip("203.0.113.2");
    let answer = b
        .seal(
            NOW,
            &pa,
            &Message::Nodes {
                id: 7,
                nodes: vec![],
            },
        )
        .unwrap();
    match a.receive_from(NOW, at_b, &answer) {
        Ok(Received::Answer {
            from,
            message: Message::Nodes { id: 7, .. },
            challenge,
        }) => {
            assert_eq!(from, b.public_key());
            assert!(challenge.len() <= answer.len());
        }
        other => panic!("expected the answer for the caller, got {other:?}"),
    }
    assert_eq!(a.counters().unproven_answers, 1);
    // A request from the same unproven address is challenged, never handed
    // over: answering it could reflect off a forged source.
    let request = b.seal(NOW + 1, &pa, &find(8)).unwrap();
    assert!(matches!(
        a.receive_from(NOW + 1, at_b, &request),
        Ok(Received::Challenge { .. })
    ));
    // Relayed (no source address), nothing is left to the caller either.
    let again = b
        .seal(
            NOW + 2,
            &pa,
            &Message::Nodes {
                id: 9,
                nodes: vec![],
            },
        )
        .unwrap();
    assert!(!matches!(
        a.receive(NOW + 2, &again),
        Ok(Received::Answer { .. })
    ));
}

#[test]
fn namespaces_do_not_mix() {
    let mut a = Codec::with_nonce_seed(key_from(1), cfg(0), [1; 32]);
    let mut b = Codec::with_nonce_seed(
        key_from(2),
        CodecConfig {
            namespace: "other".into(),
            ..cfg(0)
        },
        [2; 32],
    );
    let bytes = a.seal(NOW, &b.public_key(), &sample()).unwrap();
    assert_eq!(b.open(NOW, &bytes), Err(OpenError::BadTag));
}

#[test]
fn a_record_that_relays_for_nobody_says_so_in_bit_7_of_its_nat_byte() {
    let mut r = NodeRecord::new(PublicKey([7; 32]), "198.51.100.7:62096".parse().unwrap());
    r.nat = NatKind::Public;
    let serving = Message::Ping {
        id: 1,
        info: Some(r.clone()),
    }
    .encode()
    .unwrap();
    r.relay_service = false;
    let not_serving = Message::Ping {
        id: 1,
        info: Some(r.clone()),
    }
    .encode()
    .unwrap();
    let diff: Vec<usize> = (0..serving.len())
        .filter(|&i| serving[i] != not_serving[i])
        .collect();
    assert_eq!(diff.len(), 1, "one byte differs");
    assert_eq!(serving[diff[0]], NatKind::Public as u8);
    assert_eq!(
        not_serving[diff[0]],
        NatKind::Public as u8 | NO_RELAY_SERVICE
    );
    match Message::decode(&not_serving) {
        Ok(Message::Ping {
            info: Some(back), ..
        }) => assert_eq!(back, r),
        other => panic!("{other:?}"),
    }
}

#[test]
fn encode_refuses_over_bounds_and_seal_refuses_too_large() {
    let r = NodeRecord {
        key: PublicKey([1; 32]),
        endpoints: vec!["192.0.2.1:1".parse().unwrap(); MAX_ENDPOINTS + 1],
        nat: NatKind::Public,
        relays: vec![],
        relay_service: true,
    };
    assert!(matches!(
        Message::Ping {
            id: 1,
            info: Some(r)
        }
        .encode(),
        Err(EncodeError::TooMany {
            what: "endpoints",
            ..
        })
    ));
    let big = Message::Nodes {
        id: 1,
        nodes: vec![
            NodeRecord {
                key: PublicKey([1; 32]),
                endpoints: vec!["[2001:db8::1]:1".parse().unwrap(); MAX_ENDPOINTS],
                nat: NatKind::Public,
                relays: vec![],
                relay_service: true,
            };
            MAX_NODES
        ],
    };
    let (mut a, b) = pair();
    assert!(matches!(
        a.seal(NOW, &b.public_key(), &big),
        Err(SealError::TooLarge(_))
    ));
    let wg = Message::RelayWg {
        to: PublicKey([1; 32]),
        packet: vec![0; MAX_RELAY_PAYLOAD],
    };
    assert!(sealed_len(&wg) <= MAX_DATAGRAM);
    assert!(a.seal(NOW, &b.public_key(), &wg).is_ok());
}

#[test]
fn decode_rejects_bad_fields() {
    assert_eq!(Message::decode(&[]), Err(DecodeError::Empty));
    assert_eq!(
        Message::decode(&[0x77]),
        Err(DecodeError::UnknownType(0x77))
    );
    assert_eq!(
        Message::decode(&[types::PROBE, 0, 0]),
        Err(DecodeError::Truncated)
    );
    let mut p = Message::Probe { id: 1 }.encode().unwrap();
    p.push(0);
    assert_eq!(Message::decode(&p), Err(DecodeError::TrailingBytes(1)));
    let mut ack = vec![types::PROBE_ACK];
    ack.extend_from_slice(&[0; 8]);
    ack.push(5);
    assert_eq!(Message::decode(&ack), Err(DecodeError::BadAddressFamily(5)));
    let mut ping = vec![types::PING];
    ping.extend_from_slice(&[0; 8]);
    ping.push(2);
    assert_eq!(Message::decode(&ping), Err(DecodeError::BadOption(2)));
    let mut nodes = vec![types::NODES];
    nodes.extend_from_slice(&[0; 8]);
    nodes.push(MAX_NODES as u8 + 1);
    assert!(matches!(
        Message::decode(&nodes),
        Err(DecodeError::TooMany { what: "nodes", .. })
    ));
    let mut rec = vec![types::NODES];
    rec.extend_from_slice(&[0; 8]);
    rec.push(1);
    rec.extend_from_slice(&[9; 32]);
    rec.push(0);
    rec.push(9);
    assert_eq!(Message::decode(&rec), Err(DecodeError::BadNatKind(9)));
    let mut relay = vec![types::RELAY];
    relay.extend_from_slice(&[0; 32]);
    relay.extend_from_slice(&((MAX_RELAY_PAYLOAD + 1) as u16).to_be_bytes());
    assert!(matches!(
        Message::decode(&relay),
        Err(DecodeError::TooMany { .. })
    ));
}

#[test]
fn alias_proof_verifies_only_for_its_binding() {
    let (_, mut b) = pair();
    let alias = key_from(77);
    let real = PublicKey([8; 32]);
    let proof = alias_proof(&alias, &real, &b.public_key());
    assert!(b.verify_alias(&alias.public_key(), &real, &proof));
    assert!(!b.verify_alias(&alias.public_key(), &PublicKey([9; 32]), &proof));
    assert!(!b.verify_alias(&key_from(78).public_key(), &real, &proof));
    // Made for another verifier, it does not convince b.
    let other = alias_proof(&alias, &real, &key_from(3).public_key());
    assert!(!b.verify_alias(&alias.public_key(), &real, &other));
}

#[test]
fn relayed_inner_datagram_opens_at_the_destination() {
    let (mut a, mut b) = pair();
    let mut relay = Codec::with_nonce_seed(key_from(5), cfg(0), [5; 32]);
    let inner = a
        .seal(
            NOW,
            &b.public_key(),
            &Message::PunchRequest {
                id: 3,
                endpoints: vec!["198.51.100.7:4000".parse().unwrap()],
            },
        )
        .unwrap();
    let outer = a
        .seal(
            NOW,
            &relay.public_key(),
            &Message::Relay {
                to: b.public_key(),
                inner: inner.clone(),
            },
        )
        .unwrap();
    let (from, m) = relay.open(NOW, &outer).unwrap();
    let Message::Relay { to, inner } = m else {
        panic!()
    };
    assert_eq!(to, b.public_key());
    let delivered = relay
        .seal(NOW, &to, &Message::Relayed { from, inner })
        .unwrap();
    let (via, m) = b.open(NOW, &delivered).unwrap();
    assert_eq!(via, relay.public_key());
    let Message::Relayed { from, inner } = m else {
        panic!()
    };
    let (origin, m) = b.open(NOW, &inner).unwrap();
    assert_eq!(origin, from);
    assert!(matches!(m, Message::PunchRequest { id: 3, .. }));
}

/// The example of docs/protocol.md: private keys 0x01.. and 0x02.. (clamped),
/// namespace "public", nonce 0x07.., timestamp 1 700 000 000 000,
/// Ping { id: 1, info: None }. Keeps the document honest.
#[test]
fn documented_vector() {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let a = key_from(1);
    let b = key_from(2);
    let (pa, pb) = (a.public_key(), b.public_key());
    let shared = a.diffie_hellman(&pb);
    let k = derive_key(&shared, &pa, &pb, "public");
    let msg = Message::Ping { id: 1, info: None };
    let mut d = vec![MAGIC, VERSION];
    d.extend_from_slice(pa.as_bytes());
    d.extend_from_slice(&[7u8; NONCE_LEN]);
    d.extend_from_slice(&NOW.to_be_bytes());
    msg.encode_into(&mut d).unwrap();
    let mut aad = d[..HEADER_LEN].to_vec();
    aad.extend_from_slice(pb.as_bytes());
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(&k.into());
    let tag = cipher
        .encrypt_in_place_detached(
            chacha20poly1305::XNonce::from_slice(&[7u8; NONCE_LEN]),
            &aad,
            &mut d[HEADER_LEN..],
        )
        .unwrap();
    d.extend_from_slice(&tag);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    println!("A public  {}", hex(pa.as_bytes()));
    println!("B public  {}", hex(pb.as_bytes()));
    println!("X25519    {}", hex(&shared));
    println!("key       {}", hex(&k));
    println!("datagram  {}", hex(&d));
    let mut cb = Codec::with_nonce_seed(
        b,
        CodecConfig {
            required_workbits: 0,
            ..CodecConfig::default()
        },
        [0; 32],
    );
    assert_eq!(cb.open(NOW, &d).unwrap(), (pa, msg));
    assert_eq!(hex(&k), VECTOR_KEY);
    assert_eq!(hex(&d), VECTOR_DATAGRAM);
}

const VECTOR_KEY: &str = "e8c59dc26b144fb065f32c46a9e6ac98c2b0d5c9a0c896555ca47ab22304ae90";
const VECTOR_DATAGRAM: &str = "ff01a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a209070707070707070707070707070707070707070707070707df88d1b793f88528acae814b6b9979a15a2fd51789a754d8dbfb24a64348c594bfd3";

// ---- Freshness without agreeing clocks (docs/protocol.md section 5) ----

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

fn strict(seed: u8) -> Codec {
    Codec::with_nonce_seed(
        key_from(seed),
        CodecConfig {
            first_contact: FirstContact::Challenge,
            ..cfg(0)
        },
        [seed; 32],
    )
}

/// The challenge `b` answers datagram `d` with (at b's clock `now`).
fn challenge_of(b: &mut Codec, now: u64, d: &[u8]) -> Vec<u8> {
    match b.receive(now, d) {
        Ok(Received::Challenge { challenge, .. }) => challenge,
        other => panic!("expected a challenge, got {other:?}"),
    }
}

/// What `a` seals again when challenged (at a's clock `now`).
fn resent_by(a: &mut Codec, now: u64, challenge: &[u8]) -> Vec<Vec<u8>> {
    match a.receive(now, challenge) {
        Ok(Received::Challenged { resend, .. }) => resend,
        other => panic!("expected our messages sealed again, got {other:?}"),
    }
}

/// `a` (clock `ta`) sends `msg` to `b` (clock `tb`) for the first time:
/// challenge, answer. Returns the datagram b accepted.
fn first_contact(a: &mut Codec, ta: u64, b: &mut Codec, tb: u64, msg: &Message) -> Vec<u8> {
    let d = a.seal(ta, &b.public_key(), msg).unwrap();
    let challenge = challenge_of(b, tb, &d);
    assert!(challenge.len() <= d.len());
    let resend = resent_by(a, ta + 20, &challenge);
    assert_eq!(resend.len(), 1);
    assert_eq!(b.open(tb + 40, &resend[0]).unwrap().1, *msg);
    resend[0].clone()
}

#[test]
fn a_sender_two_minutes_ahead_joins_with_one_challenge_both_ways() {
    let (mut a, mut b) = pair();
    let ahead = NOW + 2 * MINUTE;
    let ping = Message::Ping { id: 1, info: None };
    first_contact(&mut a, ahead, &mut b, NOW, &ping);
    // b's answers open at a: a learned b's clock from the challenge.
    let pong = b.seal(NOW + 50, &a.public_key(), &sample()).unwrap();
    assert_eq!(a.open(ahead + 70, &pong).unwrap().1, sample());
    // Later, without a cookie, a is judged by its own history and offset.
    let later = a.seal(ahead + 30_000, &b.public_key(), &ping).unwrap();
    assert!(b.open(NOW + 30_000, &later).is_ok());
    assert_eq!(b.counters().challenges_sent, 1);
    assert_eq!(b.counters().cookies_accepted, 1);
    assert_eq!(a.counters().challenges_received, 1);
}

#[test]
fn a_sender_a_day_behind_joins_a_strict_receiver() {
    let mut a = strict(1);
    let mut b = strict(2);
    let behind = NOW - DAY;
    first_contact(&mut a, behind, &mut b, NOW, &Message::Probe { id: 3 });
    let back = b
        .seal(NOW + 100, &a.public_key(), &Message::Probe { id: 4 })
        .unwrap();
    assert!(a.open(behind + 120, &back).is_ok());
}

#[test]
fn replays_are_refused_after_the_offset_is_learned() {
    let (mut a, mut b) = pair();
    let ahead = NOW + HOUR;
    let original = a
        .seal(ahead, &b.public_key(), &Message::Probe { id: 1 })
        .unwrap();
    let challenge = challenge_of(&mut b, NOW, &original);
    let resend = resent_by(&mut a, ahead + 20, &challenge);
    assert!(b.open(NOW + 40, &resend[0]).is_ok());
    // The datagram that proved a fresh, again: refused.
    assert_eq!(b.open(NOW + 1_000, &resend[0]), Err(OpenError::Replay));
    // The challenged original predates the proof: refused, now and later.
    assert_eq!(b.open(NOW + 1_000, &original), Err(OpenError::Replay));
    // A datagram accepted on a's history: refused again at once, and also
    // long after the replay cache forgot it (its timestamp is too old).
    let d = a
        .seal(ahead + 15_000, &b.public_key(), &Message::Probe { id: 2 })
        .unwrap();
    assert!(b.open(NOW + 15_000, &d).is_ok());
    assert_eq!(b.open(NOW + 16_000, &d), Err(OpenError::Replay));
    for i in 1..=20u64 {
        let t = 15_000 + i * 10_000;
        let keep_alive = a
            .seal(ahead + t, &b.public_key(), &Message::Probe { id: 9 + i })
            .unwrap();
        assert!(b.open(NOW + t, &keep_alive).is_ok(), "{i}");
    }
    assert!(b.open(NOW + 216_000, &d).is_err());
    assert!(b.open(NOW + 216_000, &resend[0]).is_err());
}

#[test]
fn a_restarted_strict_receiver_accepts_none_of_what_it_accepted_before() {
    let mut a = strict(1);
    let mut b = strict(2);
    let skewed = NOW + 2 * MINUTE;
    let mut accepted = vec![first_contact(
        &mut a,
        skewed,
        &mut b,
        NOW,
        &Message::Probe { id: 1 },
    )];
    // Once a no longer attaches b's cookie (10 s), on its history alone.
    for i in 1..=10u64 {
        let t = 10_000 + i * 1000;
        let d = a
            .seal(skewed + t, &b.public_key(), &Message::Probe { id: i })
            .unwrap();
        assert!(b.open(NOW + t, &d).is_ok());
        accepted.push(d);
    }
    // b restarts: same key, new process (new random seed).
    let mut restarted = Codec::with_nonce_seed(
        key_from(2),
        CodecConfig {
            first_contact: FirstContact::Challenge,
            ..cfg(0)
        },
        [99; 32],
    );
    for (i, d) in accepted.iter().enumerate() {
        for later in [0, 1_000, 2 * MINUTE, HOUR] {
            let r = restarted.receive(NOW + 21_000 + later, d);
            assert!(
                matches!(r, Ok(Received::Challenge { .. })),
                "datagram {i} replayed {later} ms after the restart: {r:?}"
            );
        }
    }
    assert_eq!(restarted.counters().opened, 0);
    // a itself gets back in with one round trip, 3 s after its last
    // datagram: the old ones are within its reordering window, but below
    // the floor the cookie datagram set.
    let now = NOW + 23_000;
    let d = a
        .seal(skewed + 23_000, &b.public_key(), &Message::Probe { id: 50 })
        .unwrap();
    let c = challenge_of(&mut restarted, now, &d);
    let resend = resent_by(&mut a, skewed + 23_010, &c);
    assert!(restarted.open(now + 20, &resend[0]).is_ok());
    // And the replays stay refused with a's new history in place.
    for d in &accepted {
        assert!(restarted.open(now + 30, d).is_err());
    }
}

#[test]
fn a_challenge_is_believed_once_only_for_a_recent_datagram_of_ours() {
    let (mut a, mut b) = pair();
    let d = a
        .seal(NOW + HOUR, &b.public_key(), &Message::Probe { id: 1 })
        .unwrap();
    let c = challenge_of(&mut b, NOW, &d);
    // Forged: any flipped bit fails the MAC.
    for pos in [0usize, 1, 2, 40, 50, 60, CHALLENGE_LEN - 1] {
        let mut bad = c.clone();
        bad[pos] ^= 1;
        assert!(a.receive(NOW + HOUR + 10, &bad).is_err(), "{pos}");
    }
    // Echoing a datagram older than a round trip: not believed.
    assert_eq!(
        a.receive(NOW + HOUR + 10_001, &c),
        Err(OpenError::BadChallenge(
            "it answers no datagram we sent lately, or one already answered"
        ))
    );
    // In time: believed, and answered once only (a copy sent from
    // elsewhere makes a send nothing).
    assert_eq!(resent_by(&mut a, NOW + HOUR + 10, &c).len(), 1);
    assert!(matches!(
        a.receive(NOW + HOUR + 11, &c),
        Err(OpenError::BadChallenge(_))
    ));
    // Meant for another node: fails the MAC.
    let mut c3 = Codec::with_nonce_seed(key_from(3), cfg(0), [3; 32]);
    assert_eq!(c3.receive(NOW + HOUR, &c), Err(OpenError::BadTag));
    assert!(a.counters().dropped.bad_challenge >= 1);
}

#[test]
fn a_challenge_is_never_larger_than_the_datagram_it_answers() {
    const { assert!(CHALLENGE_LEN < MIN_DATAGRAM) };
    let (mut a, mut b) = pair();
    let smallest = Message::Probe { id: 1 };
    let d = a.seal(NOW + HOUR, &b.public_key(), &smallest).unwrap();
    let c = challenge_of(&mut b, NOW, &d);
    assert_eq!(c.len(), CHALLENGE_LEN);
    assert!(c.len() < d.len(), "{} vs {}", c.len(), d.len());
}

#[test]
fn cookies_expire_within_thirty_seconds() {
    let (mut a, mut b) = pair();
    let d = a
        .seal(NOW + HOUR, &b.public_key(), &Message::Probe { id: 1 })
        .unwrap();
    let c = challenge_of(&mut b, NOW, &d);
    let resend = resent_by(&mut a, NOW + HOUR + 5, &c);
    // Delivered 31 s late: the cookie's secret is gone; challenged again.
    match b.receive(NOW + 31_000, &resend[0]) {
        Ok(Received::Challenge { dropped, .. }) => assert_eq!(dropped, OpenError::BadCookie),
        other => panic!("{other:?}"),
    }
    assert_eq!(b.counters().dropped.bad_cookie, 1);
}

#[test]
fn a_cookie_proves_nothing_for_another_sender() {
    let (mut a, mut b) = pair();
    let d = a
        .seal(NOW + HOUR, &b.public_key(), &Message::Probe { id: 1 })
        .unwrap();
    let challenge = challenge_of(&mut b, NOW, &d);
    // c presents a's cookie in a datagram of its own.
    let Some(freshness::Challenge { cookie, .. }) = freshness::Challenge::parse(&challenge) else {
        panic!()
    };
    let d = sealed_by_hand(
        &key_from(3),
        &b.public_key(),
        NOW + HOUR,
        Some(cookie),
        &[0x11, 0, 0, 0, 0, 0, 0, 0, 7],
    );
    assert_eq!(b.open(NOW + 10, &d), Err(OpenError::BadCookie));
}

/// A datagram sealed by hand: timestamp, optional cookie, then `body`.
fn sealed_by_hand(
    sk: &PrivateKey,
    to: &PublicKey,
    ts: u64,
    cookie: Option<[u8; COOKIE_LEN]>,
    body: &[u8],
) -> Vec<u8> {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let from = sk.public_key();
    let k = derive_key(&sk.diffie_hellman(to), &from, to, "test");
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(&k.into());
    let mut d = vec![MAGIC, VERSION];
    d.extend_from_slice(from.as_bytes());
    d.extend_from_slice(&[9u8; NONCE_LEN]);
    match cookie {
        Some(c) => {
            d.extend_from_slice(&(ts | COOKIE_FLAG).to_be_bytes());
            d.extend_from_slice(&c);
        }
        None => d.extend_from_slice(&ts.to_be_bytes()),
    }
    d.extend_from_slice(body);
    let mut aad = d[..HEADER_LEN].to_vec();
    aad.extend_from_slice(to.as_bytes());
    let tag = cipher
        .encrypt_in_place_detached(
            chacha20poly1305::XNonce::from_slice(&[9u8; NONCE_LEN]),
            &aad,
            &mut d[HEADER_LEN..],
        )
        .unwrap();
    d.extend_from_slice(&tag);
    d
}

#[test]
fn a_flood_from_a_skewed_sender_keeps_its_old_datagrams_refused() {
    // The replay cache (16 tags) forgets early; the sender's floor, in its
    // own clock, still refuses what was forgotten, an hour behind ours.
    let mut a = strict(1);
    let mut b = Codec::with_nonce_seed(
        key_from(2),
        CodecConfig {
            replay_cache: 16,
            first_contact: FirstContact::Challenge,
            ..cfg(0)
        },
        [2; 32],
    );
    let behind = NOW - HOUR;
    let first = first_contact(&mut a, behind, &mut b, NOW, &Message::Probe { id: 0 });
    let mut sent = Vec::new();
    for i in 1..100u64 {
        let d = a
            .seal(behind + 100 + i, &b.public_key(), &Message::Probe { id: i })
            .unwrap();
        assert!(b.open(NOW + 100 + i, &d).is_ok(), "{i}");
        assert!(b.counters().replay_cache_len <= 16);
        sent.push(d);
    }
    assert_eq!(b.open(NOW + 200, &first), Err(OpenError::Replay));
    for d in &sent[..80] {
        assert!(b.open(NOW + 200, d).is_err());
    }
}

#[test]
fn every_new_cache_stays_bounded() {
    let mut b = Codec::with_nonce_seed(
        key_from(2),
        CodecConfig {
            key_cache: 8,
            first_contact: FirstContact::Challenge,
            ..cfg(0)
        },
        [2; 32],
    );
    let mut a = strict(1);
    for s in 10..70u8 {
        let mut x = strict(s);
        first_contact(&mut x, NOW + DAY, &mut b, NOW, &Message::Probe { id: 1 });
        assert!(b.counters().peer_clocks_len <= 8);
        // a writes to many peers that never answer: what it keeps is bounded.
        for id in 0..5 {
            a.seal(NOW, &key_from(s).public_key(), &Message::Probe { id })
                .unwrap();
        }
        assert!(a.counters().pending_len <= freshness::PENDING_MAX as u64);
    }
    assert_eq!(a.counters().pending_len, freshness::PENDING_MAX as u64);
    // One peer written to often: what one challenge of it makes a send
    // again is bounded too.
    let mut c = strict(3);
    for id in 0..100 {
        c.seal(NOW, &key_from(4).public_key(), &Message::Probe { id })
            .unwrap();
    }
    assert_eq!(c.counters().pending_len, freshness::PENDING_PER_PEER as u64);
}

#[test]
fn the_clock_estimate_is_the_median_of_distinct_peers() {
    // x's clock is 2 min 3 s ahead; four peers agree with true time and
    // one is a day ahead: the median ignores it.
    let mut x = Codec::with_nonce_seed(key_from(1), cfg(0), [1; 32]);
    let ahead = NOW + 123_000;
    let mut peers: Vec<Codec> = (2..7u8)
        .map(|s| Codec::with_nonce_seed(key_from(s), cfg(0), [s; 32]))
        .collect();
    for (i, p) in peers.iter_mut().enumerate() {
        let their = if i == 4 { NOW + DAY } else { NOW };
        first_contact(p, their, &mut x, ahead, &Message::Probe { id: 1 });
        let expected = (i >= 2).then_some(());
        assert_eq!(x.clock_estimate(ahead + 100).map(|_| ()), expected, "{i}");
    }
    let e = x.clock_estimate(ahead + 100).unwrap();
    assert_eq!(e.peers, 5);
    assert!((e.offset_ms - 123_000).abs() < 1_000, "{e:?}");
    assert_eq!(
        describe_offset(e.offset_ms),
        "2 min 3 s ahead of the network"
    );
}

#[test]
fn offsets_are_told_in_the_two_largest_units() {
    assert_eq!(describe_offset(123_000), "2 min 3 s ahead of the network");
    assert_eq!(describe_offset(120_400), "2 min ahead of the network");
    assert_eq!(describe_offset(-3_600_000), "1 h behind the network");
    assert_eq!(
        describe_offset(86_400_000 + 7_200_000),
        "1 d 2 h ahead of the network"
    );
    assert_eq!(describe_offset(-59_600), "1 min behind the network");
    assert_eq!(describe_offset(400), "0 s ahead of the network");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_challenges_never_panic(mut bytes in prop::collection::vec(any::<u8>(), 0..120), authentic in any::<bool>()) {
        let (mut a, b) = pair();
        a.seal(NOW, &b.public_key(), &Message::Probe { id: 1 }).unwrap();
        if let Some(first) = bytes.first_mut() { *first = CHALLENGE; }
        if authentic && bytes.len() >= CHALLENGE_LEN {
            // Random fields under a valid MAC: the paths after the MAC.
            let shared = key_from(2).diffie_hellman(&a.public_key());
            let k = derive_key(&shared, &a.public_key(), &b.public_key(), "test");
            let Some(mut c) = freshness::Challenge::parse(&bytes[..CHALLENGE_LEN]) else {
                return Err(TestCaseError::fail("parse"));
            };
            c.from = b.public_key();
            if bytes[1] % 2 == 0 {
                c.echo = NOW;
            }
            bytes = c.encode(VERSION, &freshness::challenge_key(&k), &a.public_key());
        }
        let _ = a.receive(NOW + 5, &bytes);
    }

    #[test]
    fn random_authentic_plaintexts_never_panic(
        ts in any::<u64>(),
        cookie in any::<[u8; COOKIE_LEN]>(),
        with_cookie in any::<bool>(),
        body in prop::collection::vec(any::<u8>(), 1..64),
        mode in prop_oneof![Just(FirstContact::ClockWindow), Just(FirstContact::Challenge)],
    ) {
        let mut b = Codec::with_nonce_seed(key_from(2), CodecConfig { first_contact: mode, ..cfg(0) }, [2; 32]);
        let ts = ts & !COOKIE_FLAG;
        let d = sealed_by_hand(&key_from(1), &b.public_key(), ts, with_cookie.then_some(cookie), &body);
        if let Ok(Received::Challenge { challenge, .. }) = b.receive(NOW, &d) {
            prop_assert!(challenge.len() <= d.len());
        }
        // A second time is never accepted.
        prop_assert!(b.open(NOW, &d).is_err() || b.counters().opened == 1);
    }
}
