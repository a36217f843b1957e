//! The network file parser: never panics, on any text; an accepted file
//! gives a network whose derived names answer for every node, and a
//! refused one says where (every error has a line).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wirehub_core::config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse(text) {
        Ok(parsed) => {
            // What the daemon derives from a network must hold too.
            let own = wirehub_core::keys::PrivateKey::from_bytes([7; 32]).public_key();
            let _ = wirehub_core::names::config_names::ConfigNames::new(&parsed.spec, own);
        }
        Err(d) => {
            assert!(!d.errors.is_empty(), "refused without an error");
            let lines = text.lines().count().max(1);
            for e in &d.errors {
                assert!(e.line <= lines + 1, "error at line {} of {lines}", e.line);
            }
        }
    }
});
