//! The plain message decoder: never panics, and what it accepts re-encodes
//! to the very same bytes (one message, one encoding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wirehub_core::proto::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = Message::decode(data) {
        let again = msg.encode().expect("a decoded message encodes");
        assert_eq!(again, data);
        assert_eq!(msg.encoded_len(), data.len());
    }
});
