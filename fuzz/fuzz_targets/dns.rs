//! The DNS responder: never panics on any datagram or TCP message, answers
//! only queries, and never answers more than a UDP client may take.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wirehub_core::names::config_names::ConfigNames;
use wirehub_core::names::dns::{DnsConfig, Transport, Verdict, respond};

fuzz_target!(|data: &[u8]| {
    let own = wirehub_core::keys::PrivateKey::from_bytes([7; 32]).public_key();
    let network = format!("name fuzz\nsubnet 10.0.42.0/24\ntrust alpha {own}\n");
    let spec = wirehub_core::config::parse(&network)
        .expect("the fuzz network parses")
        .spec;
    let names = ConfigNames::new(&spec, own);
    let cfg = DnsConfig::default();
    for transport in [Transport::Udp, Transport::Tcp] {
        if let Verdict::Reply { bytes, .. } = respond(data, &names, &cfg, transport) {
            assert!(
                data.len() >= 12,
                "answered a datagram shorter than a header"
            );
            assert_eq!(bytes[..2], data[..2], "the answer carries the query's id");
            if matches!(transport, Transport::Udp) {
                assert!(bytes.len() <= 65_535);
            }
        }
    }
});
