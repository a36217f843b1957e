use super::*;
use proptest::prelude::*;

const KA: &str = "zW-1lBeQ7IkT6NW6hL_NsV4eOPOwJi_rt1vO-omOEmQ";
const KB: &str = "g878Bf9ZDc4IzFSUhWFTO1VYFVmHD5XfvEsVn83Dsho";
const KC: &str = "9OtorxsAqPqZkJ-fAYNRAPr9piMWKMLnGqOVVpMUvXY";
const KBOOT: &str = "P17zMwXJFbBdJEn05RFIMADw9TX5_m2xgf31OgNKX3w";

fn tutorial() -> String {
    format!(
        "name tutorial # name of network\n\
         subnet 10.0.42.0/24 # private subnetwork\n\
         # one DHT bootstrap node\n\
         boot {KBOOT} bootstrap.wirehub.example\n\
         trust node_a {KA}\n\
         trust node_b {KB}\n"
    )
}

fn errors(text: &str) -> Vec<Diagnostic> {
    parse(text).expect_err("the text should be refused").errors
}

#[test]
fn tutorial_parses_and_allocates_from_two() {
    let parsed = parse(&tutorial()).unwrap();
    let spec = parsed.spec;
    assert!(parsed.warnings.is_empty());
    assert_eq!(spec.name, "tutorial");
    assert_eq!(spec.subnet, Some("10.0.42.0/24".parse().unwrap()));
    assert_eq!(spec.workbits, 8);
    assert_eq!(spec.namespace, "public");
    assert_eq!(spec.peers.len(), 3);
    assert_eq!(spec.peers[0].role, Role::Boot);
    assert_eq!(
        spec.peers[0].endpoint,
        Some(Endpoint {
            host: "bootstrap.wirehub.example".into(),
            port: DEFAULT_PORT
        })
    );
    let ips = spec.ipv4_addresses();
    assert_eq!(ips[0], None);
    assert_eq!(ips[1], Some("10.0.42.2".parse().unwrap()));
    assert_eq!(ips[2], Some("10.0.42.3".parse().unwrap()));
}

#[test]
fn static_ips_are_skipped_by_allocation() {
    let text =
        format!("name n\nsubnet 10.1.0.0/29\ntrust a {KA}\ntrust b 10.1.0.3 {KB}\ntrust c {KC}\n");
    let spec = parse(&text).unwrap().spec;
    let ips: Vec<_> = spec
        .ipv4_addresses()
        .into_iter()
        .map(|i| i.unwrap().to_string())
        .collect();
    assert_eq!(ips, ["10.1.0.2", "10.1.0.3", "10.1.0.4"]);
}

#[test]
fn router_is_trusted_alias_and_peer_are_not() {
    let text = format!(
        "name n\nsubnet 10.1.0.0/24\nrouter gw {KA} 203.0.113.5:1000\npeer {KB} 203.0.113.6\nalias {KC}\n"
    );
    let spec = parse(&text).unwrap().spec;
    let ips = spec.ipv4_addresses();
    assert_eq!(ips, vec![Some("10.1.0.2".parse().unwrap()), None, None]);
    assert_eq!(spec.peers[0].endpoint.as_ref().unwrap().port, 1000);
    let members = spec.members();
    assert!(members[0].ipv6.is_some());
    assert!(members[1].ipv6.is_none());
}

#[test]
fn three_mistakes_give_three_errors_with_lines() {
    let text = format!(
        "name n\nsubnet 10.0.0.0/24\ntrust a {}\ntrust b 10.9.0.1 {KB}\nboot {KC}\n",
        &KA[..42]
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert_eq!(errs[0].line, 3);
    assert!(
        errs[0].message.contains("42 characters"),
        "{}",
        errs[0].message
    );
    assert_eq!(errs[1].line, 4);
    assert!(
        errs[1].message.contains("outside the subnet"),
        "{}",
        errs[1].message
    );
    assert_eq!(errs[2].line, 5);
    assert!(errs[2].message.contains("endpoint"), "{}", errs[2].message);
}

#[test]
fn each_listed_mistake_is_named() {
    let cases: Vec<(String, &str, usize, usize)> = vec![
        (
            format!("name n\nsubnet 10.0.0.1/24\ntrust a {KA}\n"),
            "not a network address",
            2,
            8,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/24\ntrust a {KA}\ntrust b {KA}\n"),
            "already used on line 3",
            4,
            9,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/24\ntrust a {KA}\ntrust a {KB}\n"),
            "hostname 'a' is already used",
            4,
            7,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/24\ntrust a 10.0.0.2 {KA}\ntrust b 10.0.0.2 {KB}\n"),
            "already given on line 3",
            4,
            9,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/24\npeer {KA} host:port\n"),
            "port 'port' is not a number",
            3,
            50,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/24\npeer {KA} host:70000\n"),
            "out of range",
            3,
            50,
        ),
        (format!("name n\nboot {KA}\n"), "needs an endpoint", 2, 49),
        (
            format!("name n\ntrust a {KA}\nsubnet 10.0.0.0/24\n"),
            "'subnet' must come before it",
            2,
            1,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/30\ntrust a {KA}\ntrust b {KB}\n"),
            "no address left",
            4,
            9,
        ),
        ("subnet 10.0.0.0/24\n".to_string(), "no 'name' line", 1, 1),
        (
            format!("name n\nsubnet 10.0.0.0/24\ntrust a b c {KA}\n"),
            "one word too many before the key",
            3,
            11,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/24\ntrust {KA} h1 h2\n"),
            "one word too many after",
            3,
            54,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/24\npeer 10.0.0.9 {KA}\n"),
            "cannot take one",
            3,
            6,
        ),
        ("name n\nworkbit lots\n".to_string(), "not a number", 2, 9),
        (
            format!("name n\nsubnet 10.0.0.0/24\ntrust 9a {KA}\n"),
            "does not start with a letter",
            3,
            7,
        ),
        (
            "name n\nsubnet 10.0.0.0/24\ntrust a\n".to_string(),
            "no public key",
            3,
            7,
        ),
        (
            format!("name n\nsubnet 10.0.0.0/24\ntrust a {}!\n", &KA[..42]),
            "key '",
            3,
            9,
        ),
        (
            "name n\nsubnet nope\n".to_string(),
            "not an IPv4 network",
            2,
            8,
        ),
    ];
    for (text, needle, line, column) in cases {
        let errs = errors(&text);
        let hit = errs.iter().find(|e| e.message.contains(needle));
        let Some(e) = hit else {
            panic!("no error containing {needle:?} for {text:?}: {errs:#?}");
        };
        assert_eq!((e.line, e.column), (line, column), "{needle}: {e}");
    }
}

#[test]
fn unknown_directive_is_a_warning_with_its_line() {
    let text = format!("name n\nfrobnicate yes\nsubnet 10.0.0.0/24\ntrust a {KA}\n");
    let parsed = parse(&text).unwrap();
    assert_eq!(parsed.warnings.len(), 1);
    assert_eq!(parsed.warnings[0].line, 2);
    assert!(parsed.warnings[0].message.contains("frobnicate"));
}

#[test]
fn endpoints_parse_in_every_form() {
    let e = |s: &str| Endpoint::parse(s);
    assert_eq!(e("1.2.3.4").unwrap().port, DEFAULT_PORT);
    assert_eq!(e("1.2.3.4:5").unwrap().port, 5);
    assert_eq!(
        e("[fd00::1]:7").unwrap(),
        Endpoint {
            host: "fd00::1".into(),
            port: 7
        }
    );
    assert_eq!(e("fd00::1").unwrap().port, DEFAULT_PORT);
    assert_eq!(e("[fd00::1]").unwrap().port, DEFAULT_PORT);
    assert_eq!(e("host.example:9").unwrap().host, "host.example");
    assert!(e(":9").is_err());
    assert!(e("[fd00::1").is_err());
    assert!(e("a/b").is_err());
    assert_eq!(e("[fd00::1]:7").unwrap().to_string(), "[fd00::1]:7");
}

#[test]
fn display_round_trips_the_tutorial() {
    let spec = parse(&tutorial()).unwrap().spec;
    let again = parse(&spec.to_string()).unwrap().spec;
    assert_eq!(spec, again);
    assert!(spec.validate().is_ok());
}

fn key_strategy() -> impl Strategy<Value = PublicKey> {
    any::<[u8; 32]>().prop_map(PublicKey)
}

fn name_strategy() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,12}"
}

fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| Endpoint {
            host: std::net::Ipv4Addr::from(ip).to_string(),
            port
        }),
        (any::<[u16; 8]>(), 1u16..).prop_map(|(ip, port)| Endpoint {
            host: std::net::Ipv6Addr::from(ip).to_string(),
            port
        }),
        ("[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5})?", 1u16..)
            .prop_map(|(host, port)| Endpoint { host, port }),
    ]
}

prop_compose! {
    fn spec_strategy()(
        name in name_strategy(),
        prefix in 16u8..=24,
        net in any::<u32>(),
        workbits in 0u8..=20,
        namespace in name_strategy(),
        raw in proptest::collection::vec(
            (0usize..5, proptest::option::of(name_strategy()), key_strategy(), proptest::option::of(endpoint_strategy()), any::<bool>()),
            0..12),
    ) -> NetworkSpec {
        // Routers below route 10.244.i.0/24: keep the overlay subnet apart.
        let net = if net >> 16 == 0x0af4 { net ^ 0x8000_0000 } else { net };
        let subnet = Ipv4Net::new(Ipv4Addr::from(net), prefix).unwrap().trunc();
        let mut used_names = std::collections::HashSet::new();
        used_names.insert(name.clone());
        let mut peers = Vec::new();
        let mut next_static = u32::from(subnet.broadcast()) - 1;
        for (i, (role, hostname, key, endpoint, static_ip)) in raw.into_iter().enumerate() {
            let role = Role::ALL[role];
            let hostname = hostname.map(|h| format!("{h}{i}")).filter(|h| used_names.insert(h.clone()));
            let endpoint = if role == Role::Boot { Some(endpoint.unwrap_or(Endpoint { host: "boot.example".into(), port: 1 })) } else { endpoint };
            let static_ip = (static_ip && role.is_trusted()).then(|| { next_static -= 1; Ipv4Addr::from(next_static + 1) });
            let routes = if role == Role::Router { vec![format!("10.244.{i}.0/24").parse().unwrap(), format!("fd00:{}::/64", i + 1).parse().unwrap()] } else { Vec::new() };
            peers.push(PeerSpec { role, hostname, static_ip, key, endpoint, routes });
        }
        NetworkSpec { name, subnet: Some(subnet), workbits, namespace, peers }
    }
}

proptest! {
    #[test]
    fn printed_spec_parses_to_the_same_spec(spec in spec_strategy()) {
        let text = spec.to_string();
        let parsed = parse(&text);
        prop_assert!(parsed.is_ok(), "{}\n{:?}", text, parsed.err());
        prop_assert_eq!(parsed.unwrap().spec, spec);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }

    #[test]
    fn arbitrary_lines_of_words_never_panic(lines in proptest::collection::vec(
        proptest::collection::vec(prop_oneof![
            Just("name".to_string()), Just("subnet".to_string()), Just("trust".to_string()),
            Just("boot".to_string()), Just("router".to_string()), Just("10.0.0.0/24".to_string()),
            Just(KA.to_string()), Just(KB.to_string()), Just("1.2.3.4:5".to_string()),
            Just("[::1]:x".to_string()), Just("#".to_string()), "[ -~]{0,50}",
        ], 0..6), 0..20)) {
        let text = lines.iter().map(|l| l.join(" ")).collect::<Vec<_>>().join("\n");
        let _ = parse(&text);
    }
}

#[test]
fn routers_carry_their_routed_subnets() {
    let text = format!(
        "name n\nsubnet 10.1.0.0/24\nrouter gw {KA} 203.0.113.5 10.244.1.0/24,fd00:1::/64\nrouter gw2 {KB} 10.244.2.0/24\n"
    );
    let spec = parse(&text).unwrap().spec;
    assert_eq!(spec.peers[0].routes.len(), 2);
    assert_eq!(spec.peers[0].endpoint.as_ref().unwrap().host, "203.0.113.5");
    assert_eq!(
        spec.peers[1].routes,
        vec!["10.244.2.0/24".parse::<IpNet>().unwrap()]
    );
    assert!(spec.peers[1].endpoint.is_none());
    assert_eq!(parse(&spec.to_string()).unwrap().spec, spec);
    let errs = errors(&format!(
        "name n\nsubnet 10.1.0.0/24\nrouter gw {KA} 10.244.1.1/24\n"
    ));
    assert!(errs[0].message.contains("host bits"), "{errs:?}");
    // Only routers route: on a trust line a CIDR is a bad endpoint.
    assert!(
        parse(&format!(
            "name n\nsubnet 10.1.0.0/24\ntrust a {KA} 10.244.1.0/24\n"
        ))
        .is_err()
    );
}

#[test]
fn a_router_may_not_claim_a_default_route_or_a_host_only_range() {
    for (routed, said) in [
        ("0.0.0.0/0", "too wide"),
        ("0.0.0.0/1", "too wide"),
        ("128.0.0.0/1", "too wide"),
        ("::/0", "too wide"),
        ("2000::/3", "too wide"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.1.0/24", "link-local"),
        ("224.0.0.0/8", "multicast"),
        ("fe80::/64", "link-local"),
        ("ff02::/16", "multicast"),
    ] {
        let errs = errors(&format!(
            "name n\nsubnet 10.1.0.0/24\nrouter gw {KA} {routed}\n"
        ));
        assert_eq!(errs.len(), 1, "{routed}: {errs:?}");
        assert_eq!((errs[0].line, errs[0].column), (3, 55), "{routed}");
        assert!(
            errs[0].message.contains(routed) && errs[0].message.contains(said),
            "{routed}: {}",
            errs[0].message
        );
    }
    // The widest accepted prefixes.
    assert!(
        parse(&format!(
            "name n\nsubnet 192.168.9.0/24\nrouter gw {KA} 10.0.0.0/8,fd00::/16\n"
        ))
        .is_ok()
    );
}

#[test]
fn routed_subnets_overlap_neither_the_overlay_nor_each_other() {
    let overlay = errors(&format!(
        "name n\nsubnet 10.1.0.0/24\nrouter gw {KA} 10.0.0.0/8\n"
    ));
    assert!(
        overlay[0]
            .message
            .contains("overlaps the network's subnet 10.1.0.0/24"),
        "{overlay:?}"
    );
    // The IPv6 overlay prefix comes from the network's name.
    let v6 = Ipv6Net::new(
        Ipv6Addr::from({
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&crate::keys::ula_prefix("n"));
            a
        }),
        64,
    )
    .unwrap();
    let errs = errors(&format!(
        "name n\nsubnet 10.1.0.0/24\nrouter gw {KA} {v6}\n"
    ));
    assert!(errs[0].message.contains("IPv6 overlay prefix"), "{errs:?}");
    let errs = errors(&format!(
        "name n\nsubnet 10.1.0.0/24\nrouter gw {KA} 10.244.1.0/24\nrouter gw2 {KB} 10.244.0.0/16\n"
    ));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].line, 4);
    assert!(
        errs[0]
            .message
            .contains("overlaps 10.244.1.0/24, routed on line 3"),
        "{}",
        errs[0].message
    );
}

/// The old way of checking a built spec: print it, parse it back.
fn valid_by_printing(spec: &NetworkSpec) -> bool {
    parse(&spec.to_string()).is_ok_and(|p| &p.spec == spec)
}

/// One mistake made in a spec (index picks the peer, modulo their number).
#[derive(Debug, Clone)]
enum Mistake {
    BadHostname(String),
    KeyAsHostname,
    HostnameIsNetworkName,
    DuplicateKey,
    DuplicateHostname,
    StaticIp(u32),
    Route(String),
    DropEndpoint,
    Endpoint(String, u16),
    NoSubnet,
    Subnet(u32, u8),
    Workbits(u8),
    Namespace(String),
    Name(String),
}

fn mistake_strategy() -> impl Strategy<Value = Mistake> {
    prop_oneof![
        "[a-z0-9 #.!-]{0,70}".prop_map(Mistake::BadHostname),
        Just(Mistake::KeyAsHostname),
        Just(Mistake::HostnameIsNetworkName),
        Just(Mistake::DuplicateKey),
        Just(Mistake::DuplicateHostname),
        any::<u32>().prop_map(Mistake::StaticIp),
        prop_oneof![
            Just("0.0.0.0/0".to_string()),
            Just("10.244.0.0/16".to_string()),
            Just("10.244.1.0/24".to_string()),
            Just("127.0.0.0/8".to_string()),
            Just("fd00:1::/48".to_string()),
            Just("192.168.0.0/24".to_string()),
        ]
        .prop_map(Mistake::Route),
        Just(Mistake::DropEndpoint),
        ("[a-z0-9 :#.\\[\\]]{0,12}", any::<u16>()).prop_map(|(h, p)| Mistake::Endpoint(h, p)),
        Just(Mistake::NoSubnet),
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Mistake::Subnet(a, l)),
        any::<u8>().prop_map(Mistake::Workbits),
        "[a-z #]{0,6}".prop_map(Mistake::Namespace),
        "[a-z0-9 #_-]{0,8}".prop_map(Mistake::Name),
    ]
}

fn make_mistake(spec: &mut NetworkSpec, at: usize, m: Mistake) {
    let n = spec.peers.len();
    let i = if n == 0 { 0 } else { at % n };
    let other = if n == 0 { 0 } else { (at / 7) % n };
    let name = spec.name.clone();
    let key_of_other = spec.peers.get(other).map(|p| p.key);
    let host_of_other = spec.peers.get(other).and_then(|p| p.hostname.clone());
    let subnet = spec.subnet;
    match m {
        Mistake::Subnet(a, l) => {
            spec.subnet = Some(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap());
            return;
        }
        Mistake::NoSubnet => {
            spec.subnet = None;
            return;
        }
        Mistake::Workbits(w) => {
            spec.workbits = w;
            return;
        }
        Mistake::Namespace(ns) => {
            spec.namespace = ns;
            return;
        }
        Mistake::Name(nm) => {
            spec.name = nm;
            return;
        }
        _ => {}
    }
    let Some(p) = spec.peers.get_mut(i) else {
        return;
    };
    match m {
        Mistake::BadHostname(h) => p.hostname = Some(h),
        Mistake::KeyAsHostname => p.hostname = Some(format!("a{}", &KA[1..])),
        Mistake::HostnameIsNetworkName => p.hostname = Some(name),
        Mistake::DuplicateKey => p.key = key_of_other.unwrap_or(p.key),
        Mistake::DuplicateHostname => p.hostname = host_of_other,
        Mistake::StaticIp(a) => {
            // Inside the subnet most of the time, its edges, or anywhere.
            p.static_ip = Some(match (a % 4, subnet) {
                (0, Some(s)) => s.network(),
                (1, Some(s)) => s.broadcast(),
                (2, Some(s)) => Ipv4Addr::from(u32::from(s.network()) + 2 + a % 3),
                _ => Ipv4Addr::from(a),
            })
        }
        Mistake::Route(r) => p.routes.push(r.parse().unwrap()),
        Mistake::DropEndpoint => p.endpoint = None,
        Mistake::Endpoint(host, port) => p.endpoint = Some(Endpoint { host, port }),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// validate() checks the spec itself; it must pass exactly the specs
    /// that printing and parsing back kept (its old way), whatever is
    /// wrong with them.
    #[test]
    fn validate_passes_exactly_what_survives_printing_and_parsing(
        mut spec in spec_strategy(),
        mistakes in proptest::collection::vec((any::<usize>(), mistake_strategy()), 0..3),
    ) {
        for (at, m) in mistakes {
            make_mistake(&mut spec, at, m);
        }
        let direct = spec.validate();
        prop_assert_eq!(
            direct.is_ok(),
            valid_by_printing(&spec),
            "{}\nvalidate: {:?}\nparse: {:?}",
            spec,
            direct,
            parse(&spec.to_string()).err()
        );
    }
}

fn peer(role: Role, hostname: Option<&str>, key: &str) -> PeerSpec {
    PeerSpec {
        role,
        hostname: hostname.map(str::to_string),
        static_ip: None,
        key: key.parse().unwrap(),
        endpoint: None,
        routes: Vec::new(),
    }
}

#[test]
fn each_mistake_of_a_built_spec_is_named_with_its_peer() {
    let base = || {
        let mut s = NetworkSpec::new("n");
        s.subnet = Some("10.0.0.0/24".parse().unwrap());
        s.peers = vec![
            peer(Role::Trust, Some("a"), KA),
            peer(Role::Router, Some("b"), KB),
        ];
        s
    };
    type Edit = fn(&mut NetworkSpec);
    let cases: Vec<(Edit, &str)> = vec![
        (
            |s| s.peers[1].key = s.peers[0].key,
            "peer 2 (router b): key zW-1lBeQ7I is already used by peer 1 (trust a); each key appears once",
        ),
        (
            |s| s.peers[1].hostname = Some("a".into()),
            "peer 2 (router a): hostname 'a' is already used by peer 1 (trust a)",
        ),
        (
            |s| s.peers[0].hostname = Some("n".into()),
            "peer 1 (trust n): hostname 'n' is the network's name",
        ),
        (
            |s| s.peers[0].hostname = Some("9a".into()),
            "peer 1 (trust 9a): hostname '9a' does not start with a letter",
        ),
        (
            |s| s.peers[0].hostname = Some(format!("a{}", &KA[1..])),
            "would be read as a public key",
        ),
        (
            |s| {
                s.peers[0].static_ip = Some("10.0.0.7".parse().unwrap());
                s.peers[1].static_ip = Some("10.0.0.7".parse().unwrap());
            },
            "peer 2 (router b): static IP 10.0.0.7 is already given by peer 1 (trust a)",
        ),
        (
            |s| s.peers[0].static_ip = Some("10.9.0.1".parse().unwrap()),
            "peer 1 (trust a): static IP 10.9.0.1 is outside the subnet 10.0.0.0/24",
        ),
        (
            |s| s.peers[0].static_ip = Some("10.0.0.255".parse().unwrap()),
            "peer 1 (trust a): static IP 10.0.0.255 is the network or broadcast address",
        ),
        (|s| s.peers[1].role = Role::Peer, ""),
        (
            |s| {
                s.peers[1].role = Role::Peer;
                s.peers[1].static_ip = Some("10.0.0.9".parse().unwrap());
            },
            "peer 2 (peer b): only trusted nodes ('trust', 'router') have a private IP; 'peer' cannot take one",
        ),
        (
            |s| s.subnet = None,
            "peer 1 (trust a): 'trust' gives a node a private IP, so the network needs a 'subnet'",
        ),
        (
            |s| s.peers[1].role = Role::Boot,
            "peer 2 (boot b): a 'boot' peer needs an endpoint",
        ),
        (
            |s| {
                s.peers[1].endpoint = Some(Endpoint {
                    host: "h".into(),
                    port: 0,
                })
            },
            "peer 2 (router b): port 0 is not a port",
        ),
        (
            |s| {
                s.peers[1].endpoint = Some(Endpoint {
                    host: "a b".into(),
                    port: 1,
                })
            },
            "peer 2 (router b): endpoint host 'a b' has the character ' '",
        ),
        (
            |s| s.peers[0].routes = vec!["10.244.1.0/24".parse().unwrap()],
            "peer 1 (trust a): only 'router' peers route subnets; 'trust' cannot route 10.244.1.0/24",
        ),
        (
            |s| s.peers[1].routes = vec!["10.244.1.1/24".parse().unwrap()],
            "peer 2 (router b): routed subnet '10.244.1.1/24' has host bits set; did you mean 10.244.1.0/24?",
        ),
        (
            |s| s.peers[1].routes = vec!["0.0.0.0/0".parse().unwrap()],
            "peer 2 (router b): routed subnet 0.0.0.0/0 is too wide",
        ),
        (
            |s| s.peers[1].routes = vec!["10.0.0.0/8".parse().unwrap()],
            "peer 2 (router b): routed subnet 10.0.0.0/8 overlaps the network's subnet 10.0.0.0/24",
        ),
        (
            |s| {
                s.peers[0].role = Role::Router;
                s.peers[0].routes = vec!["10.244.0.0/16".parse().unwrap()];
                s.peers[1].routes = vec!["10.244.3.0/24".parse().unwrap()];
            },
            "peer 2 (router b): routed subnet 10.244.3.0/24 overlaps 10.244.0.0/16, routed by peer 1 (router a); each address has one router",
        ),
        (
            |s| s.subnet = Some("10.0.0.0/30".parse().unwrap()),
            "peer 2 (router b): no address left for this node",
        ),
        (
            |s| s.subnet = Some("10.0.0.1/24".parse().unwrap()),
            "subnet 10.0.0.1/24 is not a network address",
        ),
        (
            |s| s.workbits = 65,
            "workbit '65' is not a number from 0 to 64",
        ),
        (
            |s| s.namespace = "two words".into(),
            "namespace 'two words' must be one word",
        ),
        (
            |s| s.name = "".into(),
            "network name '' does not start with a letter",
        ),
    ];
    assert!(base().validate().is_ok());
    for (edit, needle) in cases {
        let mut spec = base();
        edit(&mut spec);
        let result = spec.validate();
        assert_eq!(
            result.is_ok(),
            valid_by_printing(&spec),
            "{needle}: {result:?}"
        );
        if needle.is_empty() {
            assert!(result.is_ok(), "{result:?}");
            continue;
        }
        let errors = result.expect_err(needle);
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "no error containing {needle:?}: {errors:#?}"
        );
    }
}

/// The overlap of routed subnets, checked by lookups, names the same
/// earlier claim as a scan of every claim in order would.
fn first_overlap_by_scan(claims: &[(IpNet, usize)], net: &IpNet) -> Option<(IpNet, usize)> {
    claims.iter().find(|(c, _)| overlaps(net, c)).copied()
}

proptest! {
    #[test]
    fn route_claims_find_the_first_overlap_as_a_scan_would(
        nets in proptest::collection::vec((0u32..64, 4u8..=12, any::<bool>()), 1..40),
    ) {
        let mut claims = Claims::default();
        let mut scanned = Vec::new();
        for (i, (start, len, v6)) in nets.into_iter().enumerate() {
            let net = if v6 {
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(u128::from(start) << 118), len).unwrap().trunc())
            } else {
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(start << 26), len).unwrap().trunc())
            };
            prop_assert_eq!(claims.first_overlap(&net), first_overlap_by_scan(&scanned, &net), "{}", net);
            claims.claim(net, i);
            scanned.push((net, i));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A spec that was valid without one peer is valid with it exactly
    /// when the one-peer check says so.
    #[test]
    fn checking_one_added_peer_agrees_with_validating_the_whole_spec(
        mut spec in spec_strategy(),
        mistakes in proptest::collection::vec((any::<usize>(), mistake_strategy()), 0..2),
        at in any::<usize>(),
    ) {
        for (at, m) in mistakes {
            make_mistake(&mut spec, at, m);
        }
        prop_assume!(!spec.peers.is_empty());
        let added = at % spec.peers.len();
        let mut without = spec.clone();
        without.peers.remove(added);
        prop_assume!(without.validate().is_ok());
        prop_assert_eq!(spec.valid_with_added(added), spec.validate().is_ok(), "{}", spec);
    }
}
