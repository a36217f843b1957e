//! Opening datagrams: arbitrary bytes never panic and are refused; a
//! message the decoder accepts, sealed by a real peer, opens to itself once
//! and is refused as a replay the second time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;
use wirehub_core::keys::PrivateKey;
use wirehub_core::proto::{Codec, CodecConfig, MAGIC, Message, OpenError};

const NOW: u64 = 1_700_000_000_000;

struct Pair {
    a: Codec,
    b: Codec,
    /// Milliseconds since NOW: time goes on, one millisecond per input.
    clock: u64,
}

static PAIR: Mutex<Option<Pair>> = Mutex::new(None);

fn config() -> CodecConfig {
    CodecConfig {
        required_workbits: 0,
        namespace: "fuzz".into(),
        key_cache: 16,
        replay_cache: 1024,
        ..CodecConfig::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = PAIR.lock().unwrap();
    let pair = guard.get_or_insert_with(|| Pair {
        a: Codec::with_nonce_seed(PrivateKey::from_bytes([1; 32]), config(), [1; 32]),
        b: Codec::with_nonce_seed(PrivateKey::from_bytes([2; 32]), config(), [2; 32]),
        clock: 0,
    });
    pair.clock += 1;
    let now = NOW + pair.clock;
    // Raw bytes, as received from anyone.
    assert!(pair.b.open(now, data).is_err());
    let mut forced = data.to_vec();
    if let Some(f) = forced.first_mut() {
        *f = MAGIC;
    }
    assert!(pair.b.open(now, &forced).is_err());
    // The same bytes read as a message, sealed by a real peer.
    if let Ok(msg) = Message::decode(data) {
        let to = pair.b.public_key();
        if let Ok(sealed) = pair.a.seal(now, &to, &msg) {
            let (from, got) = pair.b.open(now, &sealed).expect("a sealed message opens");
            assert_eq!(from, pair.a.public_key());
            assert_eq!(got, msg);
            assert_eq!(pair.b.open(now, &sealed), Err(OpenError::Replay));
        }
    }
});
