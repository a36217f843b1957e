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
    )
        .prop_map(|(key, endpoints, nat, relays)| NodeRecord {
            key,
            endpoints,
            nat,
            relays,
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
fn encode_refuses_over_bounds_and_seal_refuses_too_large() {
    let r = NodeRecord {
        key: PublicKey([1; 32]),
        endpoints: vec!["192.0.2.1:1".parse().unwrap(); MAX_ENDPOINTS + 1],
        nat: NatKind::Public,
        relays: vec![],
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
