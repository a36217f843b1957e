use super::*;
use crate::proto::NatKind;
use std::collections::HashSet;

fn key(first: u8, rest: u8) -> PublicKey {
    let mut k = [rest; 32];
    k[0] = first;
    PublicKey(k)
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, (i % 250) as u8], 1000 + i as u16))
}

fn cfg() -> DhtConfig {
    DhtConfig {
        required_workbits: 0,
        ..DhtConfig::default()
    }
}

fn drain(d: &mut Dht) -> Vec<Transmit> {
    std::iter::from_fn(|| d.poll_transmit()).collect()
}

fn events(d: &mut Dht) -> Vec<DhtEvent> {
    std::iter::from_fn(|| d.poll_event()).collect()
}

/// Nodes delivering to each other at once, on a fake clock.
struct Net {
    nodes: Vec<Dht>,
    keys: Vec<PublicKey>,
    dead: HashSet<usize>,
    now: Instant,
    delivered: usize,
}

impl Net {
    fn new(n: usize, config: DhtConfig) -> Net {
        let now = Instant::now();
        let keys: Vec<PublicKey> = (0..n)
            .map(|i| {
                // Spread keys: a cheap hash of i.
                let mut k = [0u8; 32];
                let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                for b in k.iter_mut() {
                    x ^= x >> 29;
                    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    *b = (x >> 56) as u8;
                }
                PublicKey(k)
            })
            .collect();
        let nodes = keys
            .iter()
            .map(|k| Dht::new(*k, config.clone(), now))
            .collect();
        Net {
            nodes,
            keys,
            dead: HashSet::new(),
            now,
            delivered: 0,
        }
    }

    fn index(&self, a: &SocketAddr) -> usize {
        (a.port() - 1000) as usize
    }

    fn run(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].poll_transmit() {
                    any = true;
                    let j = self.index(&t.to_addr);
                    assert_eq!(self.keys[j], t.to_key);
                    if self.dead.contains(&j) || self.dead.contains(&i) {
                        continue;
                    }
                    // Through the real encoding.
                    let bytes = t.message.encode().unwrap();
                    let msg = Message::decode(&bytes).unwrap();
                    self.delivered += 1;
                    let (now, from, k) = (self.now, addr(i), self.keys[i]);
                    self.nodes[j].handle_message(now, from, k, &msg);
                }
            }
            if !any {
                break;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.dead.contains(i))
                .filter_map(|(_, n)| n.poll_timeout())
                .min()
                .unwrap();
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if !self.dead.contains(&i) && n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                }
            }
            self.run();
        }
        self.now = end;
    }

    fn join_all(&mut self) {
        for i in 1..self.nodes.len() {
            let b = (i * 7919) % i;
            let (bk, ba) = (self.keys[b], addr(b));
            let now = self.now;
            self.nodes[i].add_bootstrap(bk, ba);
            self.nodes[i].bootstrap(now);
            self.run();
        }
        self.advance(Duration::from_secs(60));
    }
}

#[test]
fn bucket_index_and_distance() {
    let own = key(0b1000_0000, 0);
    assert_eq!(bucket_index(&own, &own), None);
    assert_eq!(bucket_index(&own, &key(0, 0)), Some(0));
    assert_eq!(bucket_index(&own, &key(0b1100_0000, 0)), Some(1));
    assert_eq!(bucket_index(&own, &key(0b1000_0001, 0)), Some(7));
    let mut k = own;
    k.0[31] ^= 1;
    assert_eq!(bucket_index(&own, &k), Some(255));
    assert_eq!(distance(&own, &k)[31], 1);
    assert_eq!(distance(&own, &own), [0; 32]);
}

#[test]
fn ping_is_answered_with_the_observed_address_and_both_learn() {
    let now = Instant::now();
    let (ka, kb) = (key(1, 1), key(2, 2));
    let mut a = Dht::new(ka, cfg(), now);
    let mut b = Dht::new(kb, cfg(), now);
    a.ping(kb, addr(2), now);
    let t = drain(&mut a);
    assert_eq!(t.len(), 1);
    assert!(matches!(t[0].message, Message::Ping { info: None, .. }));
    b.handle_message(now, addr(1), ka, &t[0].message);
    assert_eq!(b.len(), 1);
    let back = drain(&mut b);
    let Message::Pong { observed, .. } = back[0].message else {
        panic!()
    };
    assert_eq!(observed, addr(1));
    let later = now + Duration::from_millis(42);
    a.handle_message(later, addr(2), kb, &back[0].message);
    let ev = events(&mut a);
    assert!(ev.contains(&DhtEvent::Pong {
        key: kb,
        observed: addr(1),
        rtt: Duration::from_millis(42)
    }));
    assert!(ev.contains(&DhtEvent::NodeAdded {
        key: kb,
        addr: addr(2)
    }));
    let info: Vec<NodeInfo> = a.nodes().collect();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].rtt, Some(Duration::from_millis(42)));
    assert_eq!(info[0].last_seen, later);
    assert_eq!(info[0].bucket, bucket_index(&ka, &kb).unwrap());
}

#[test]
fn a_pong_from_the_wrong_key_is_not_taken_as_the_answer() {
    let now = Instant::now();
    let mut a = Dht::new(key(1, 1), cfg(), now);
    a.ping(key(2, 2), addr(2), now);
    let t = drain(&mut a);
    let Message::Ping { id, .. } = t[0].message else {
        panic!()
    };
    let forged = Message::Pong {
        id,
        observed: addr(9),
        info: None,
    };
    a.handle_message(now, addr(3), key(3, 3), &forged);
    assert!(
        !events(&mut a)
            .iter()
            .any(|e| matches!(e, DhtEvent::Pong { .. }))
    );
    assert_eq!(a.counters().unmatched_responses, 1);
}

/// Pongs to the caller's own pings (id 0, or the top bit set: keepalives
/// of direct paths and relays) teach the table but are not counted as
/// unmatched responses; only the DHT's own ids are.
#[test]
fn pongs_to_the_callers_pings_are_not_unmatched_responses() {
    let now = Instant::now();
    let mut a = Dht::new(key(1, 1), cfg(), now);
    for id in [0, CALLER_IDS | 7] {
        let pong = Message::Pong {
            id,
            observed: addr(9),
            info: None,
        };
        a.handle_message(now, addr(2), key(2, 2), &pong);
    }
    assert_eq!(a.counters().unmatched_responses, 0);
    assert_eq!(a.len(), 1, "the sender entered the table");
    for _ in 0..100 {
        a.ping(key(3, 3), addr(3), now);
    }
    for t in drain(&mut a) {
        let Message::Ping { id, .. } = t.message else {
            panic!()
        };
        assert!(id != 0 && id & CALLER_IDS == 0, "{id:x}");
    }
}

#[test]
fn find_node_is_answered_with_the_closest_without_the_requester() {
    let now = Instant::now();
    let own = key(0, 0);
    let mut d = Dht::new(own, cfg(), now);
    for i in 1..=40u8 {
        d.handle_message(
            now,
            addr(i as usize),
            key(i, i),
            &Message::Ping { id: 1, info: None },
        );
    }
    drain(&mut d);
    let target = key(17, 0);
    let requester = key(17, 17);
    d.handle_message(
        now,
        addr(17),
        requester,
        &Message::FindNode {
            id: 5,
            target,
            info: None,
        },
    );
    let t = drain(&mut d);
    let Message::Nodes { id, nodes } = &t[0].message else {
        panic!()
    };
    assert_eq!(*id, 5);
    assert_eq!(nodes.len(), 20);
    assert!(nodes.iter().all(|r| r.key != requester && r.key != own));
    let want: Vec<PublicKey> = {
        let mut all: Vec<PublicKey> = (1..=40u8)
            .map(|i| key(i, i))
            .filter(|k| *k != requester)
            .collect();
        all.sort_by_key(|k| distance(k, &target));
        all.truncate(20);
        all
    };
    assert_eq!(nodes.iter().map(|r| r.key).collect::<Vec<_>>(), want);
    // Each record carries the address the node was seen at.
    assert!(nodes.iter().all(|r| r.endpoints.len() == 1));
}

#[test]
fn closest_walks_buckets_in_distance_order() {
    let now = Instant::now();
    let own = key(0x55, 0x55);
    let mut d = Dht::new(own, cfg(), now);
    let mut keys = Vec::new();
    for i in 0..200u32 {
        let mut k = [0u8; 32];
        let mut x = (i as u64 + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in k.iter_mut() {
            x ^= x >> 31;
            x = x.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            *b = (x >> 56) as u8;
        }
        keys.push(PublicKey(k));
        d.handle_message(
            now,
            addr(i as usize),
            PublicKey(k),
            &Message::Ping { id: 1, info: None },
        );
    }
    let in_table: Vec<PublicKey> = d.nodes().map(|n| n.key).collect();
    for t in keys.iter().take(30).chain([&own]) {
        let got: Vec<PublicKey> = d.closest(t, 20).into_iter().map(|r| r.key).collect();
        let mut want = in_table.clone();
        want.sort_by_key(|k| distance(k, t));
        want.truncate(20);
        assert_eq!(got, want);
    }
}

#[test]
fn lookup_finds_a_target_in_a_small_network() {
    let mut net = Net::new(120, cfg());
    net.join_all();
    let target = net.keys[77];
    let now = net.now;
    let id = net.nodes[3].lookup(target, now);
    net.run();
    net.advance(Duration::from_secs(1));
    let done = events(&mut net.nodes[3])
        .into_iter()
        .find_map(|e| match e {
            DhtEvent::LookupDone {
                id: i,
                found,
                verified,
                closest,
                stats,
                ..
            } if i == id => Some((found, verified, closest, stats)),
            _ => None,
        })
        .expect("lookup done");
    let (found, verified, closest, stats) = done;
    assert_eq!(found.unwrap().endpoints[0], addr(77));
    assert!(verified);
    assert!(!closest.is_empty());
    assert!(stats.requests >= 1 && stats.responses >= 1);
    assert!(stats.bytes_sent > 0 && stats.bytes_received > 0);
}

#[test]
fn self_lookup_ends_when_the_k_closest_have_answered() {
    let mut net = Net::new(80, cfg());
    net.join_all();
    // Every node knows its K closest neighbours: the K closest of all keys.
    for i in [5usize, 40, 79] {
        let me = net.keys[i];
        let mut all: Vec<PublicKey> = net.keys.iter().copied().filter(|k| *k != me).collect();
        all.sort_by_key(|k| distance(k, &me));
        let known: HashSet<PublicKey> = net.nodes[i].nodes().map(|n| n.key).collect();
        let hits = all[..20].iter().filter(|k| known.contains(k)).count();
        assert!(hits >= 19, "node {i} knows {hits} of its 20 closest");
    }
}

#[test]
fn dead_nodes_are_retried_then_fail_and_the_lookup_still_ends() {
    let mut c = cfg();
    c.request_timeout = Duration::from_millis(500);
    c.retries = 1;
    let now = Instant::now();
    let own = key(0, 0);
    let mut d = Dht::new(own, c, now);
    let dead = key(0x80, 1);
    d.handle_message(now, addr(1), dead, &Message::Ping { id: 1, info: None });
    drain(&mut d);
    events(&mut d);
    let target = key(0x81, 0);
    d.lookup(target, now);
    let t1 = drain(&mut d);
    assert_eq!(t1.len(), 1);
    assert!(matches!(t1[0].message, Message::FindNode { .. }));
    assert_eq!(d.poll_timeout(), Some(now + Duration::from_millis(500)));
    d.handle_timeout(now + Duration::from_millis(500));
    let t2 = drain(&mut d);
    assert_eq!(t2.len(), 1, "one retry");
    assert_eq!(t2[0].to_key, dead);
    d.handle_timeout(now + Duration::from_millis(1000));
    assert!(drain(&mut d).is_empty());
    let ev = events(&mut d);
    assert!(
        !ev.contains(&DhtEvent::NodeRemoved { key: dead }),
        "one failure alone, with no replacement waiting, is not enough"
    );
    let done = ev.iter().find_map(|e| match e {
        DhtEvent::LookupDone { found, stats, .. } => Some((found.clone(), stats.clone())),
        _ => None,
    });
    let (found, stats) = done.expect("lookup over");
    assert!(found.is_none());
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.failures, 1);
    assert_eq!(d.len(), 1);
    // Two more lookups fail on it: now it is removed.
    let mut t = now + Duration::from_millis(1000);
    for _ in 1..table::EVICT_AFTER_FAILURES {
        d.lookup(target, t);
        drain(&mut d);
        for _ in 0..2 {
            t += Duration::from_millis(500);
            d.handle_timeout(t);
            drain(&mut d);
        }
    }
    assert!(events(&mut d).contains(&DhtEvent::NodeRemoved { key: dead }));
    assert_eq!(d.len(), 0);
}

/// A node slowed by a busy machine misses a request or two: it stays in
/// the table (nothing waits for its place), and its next answer clears
/// its failures.
#[test]
fn a_slow_live_node_is_not_evicted_by_a_missed_request_or_two() {
    let mut c = cfg();
    c.request_timeout = Duration::from_millis(500);
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    let slow = key(0x80, 1);
    d.handle_message(now, addr(1), slow, &Message::Ping { id: 1, info: None });
    drain(&mut d);
    let mut t = now;
    for round in 0..10 {
        // Two lookups time out on it, then it answers a ping late.
        for _ in 0..2 {
            d.lookup(key(0x81, round), t);
            drain(&mut d);
            for _ in 0..2 {
                t += Duration::from_millis(500);
                d.handle_timeout(t);
                drain(&mut d);
            }
        }
        d.handle_message(t, addr(1), slow, &Message::Ping { id: 2, info: None });
        drain(&mut d);
    }
    assert!(
        !events(&mut d).contains(&DhtEvent::NodeRemoved { key: slow }),
        "a node that keeps talking stays"
    );
    assert_eq!(d.len(), 1);
}

/// A node whose table emptied (a storm evicted everybody, or a bootstrap
/// node nobody answers) looks itself up as soon as anyone contacts it,
/// not after the back-off grown meanwhile, and refills its table.
#[test]
fn a_node_that_lost_its_table_rebuilds_it_as_soon_as_anyone_answers() {
    let mut net = Net::new(40, cfg());
    net.join_all();
    let lost = 7;
    let full = net.nodes[lost].len();
    assert!(full >= 20, "{full}");
    // Its table is lost (a restart keeping its key, or evictions), and it
    // went on alone long enough for the back-off to grow.
    let cfg_lost = net.nodes[lost].config().clone();
    net.nodes[lost] = Dht::new(net.keys[lost], cfg_lost, net.now);
    let now = net.now;
    net.nodes[lost].bootstrap(now);
    net.advance(Duration::from_secs(200));
    assert_eq!(net.nodes[lost].len(), 0);
    // Somebody pings it.
    let other = 3;
    let (now, k, a) = (net.now, net.keys[lost], addr(lost));
    net.nodes[other].ping(k, a, now);
    net.run();
    net.advance(Duration::from_secs(3));
    let rebuilt = net.nodes[lost].len();
    assert!(
        rebuilt >= full * 3 / 4,
        "3 s after a first contact the table holds {rebuilt} of {full}"
    );
}

/// Keys in bucket 0 of `key(0, 0)`: first bit set.
fn far(i: u8) -> PublicKey {
    key(0x80 | (i >> 1), i)
}

#[test]
fn a_full_bucket_keeps_live_entries_and_replaces_a_stale_one_only_if_it_fails() {
    let mut c = cfg();
    c.stale_after = Duration::from_secs(60);
    c.request_timeout = Duration::from_millis(500);
    c.retries = 0;
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    for i in 0..20 {
        d.handle_message(
            now,
            addr(i as usize),
            far(i),
            &Message::Ping { id: 1, info: None },
        );
    }
    drain(&mut d);
    assert_eq!(d.len(), 20);
    events(&mut d);
    // A newcomer while everyone is live: waits, evicts nobody, pings nobody.
    d.handle_message(
        now,
        addr(100),
        far(100),
        &Message::Ping { id: 1, info: None },
    );
    assert_eq!(d.len(), 20);
    assert!(d.record_of(&far(100)).is_none());
    assert!(
        drain(&mut d)
            .iter()
            .all(|t| matches!(t.message, Message::Pong { .. }))
    );
    assert!(events(&mut d).is_empty());
    // Later, all but entry 0 and 1 are heard from again; 0 and 1 are stale.
    let later = now + Duration::from_secs(61);
    for i in 2..20 {
        d.handle_message(
            later,
            addr(i as usize),
            far(i),
            &Message::Ping { id: 1, info: None },
        );
    }
    drain(&mut d);
    // Another newcomer: the least recently seen stale entry (0) is pinged.
    d.handle_message(
        later,
        addr(101),
        far(101),
        &Message::Ping { id: 1, info: None },
    );
    let pings: Vec<Transmit> = drain(&mut d)
        .into_iter()
        .filter(|t| matches!(t.message, Message::Ping { .. }))
        .collect();
    assert_eq!(pings.len(), 1);
    assert_eq!(pings[0].to_key, far(0));
    // Entry 0 answers: it stays, nobody is replaced.
    let Message::Ping { id, .. } = pings[0].message else {
        panic!()
    };
    d.handle_message(
        later,
        addr(0),
        far(0),
        &Message::Pong {
            id,
            observed: addr(999),
            info: None,
        },
    );
    assert!(d.record_of(&far(0)).is_some());
    // The next newcomer pings entry 1, which stays silent: it is replaced
    // by the most recent replacement.
    d.handle_message(
        later,
        addr(102),
        far(102),
        &Message::Ping { id: 1, info: None },
    );
    let pings: Vec<Transmit> = drain(&mut d)
        .into_iter()
        .filter(|t| matches!(t.message, Message::Ping { .. }))
        .collect();
    assert_eq!(pings[0].to_key, far(1));
    events(&mut d);
    d.handle_timeout(later + Duration::from_millis(500));
    let ev = events(&mut d);
    assert!(ev.contains(&DhtEvent::NodeRemoved { key: far(1) }));
    assert!(ev.contains(&DhtEvent::NodeAdded {
        key: far(102),
        addr: addr(102)
    }));
    assert!(ev.contains(&DhtEvent::PingTimeout {
        key: far(1),
        addr: addr(1)
    }));
    assert_eq!(d.len(), 20);
    assert!(d.record_of(&far(1)).is_none());
}

#[test]
fn replacement_cache_is_bounded() {
    let mut c = cfg();
    c.replacement_cache = 3;
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    for i in 0..120 {
        d.handle_message(
            now,
            addr(i as usize),
            far(i),
            &Message::Ping { id: 1, info: None },
        );
    }
    assert_eq!(d.len(), 20);
    assert!(d.table.buckets[0].replacements.len() <= 3);
}

#[test]
fn low_workbit_keys_never_enter_the_table_nor_a_lookup() {
    let mut c = cfg();
    c.required_workbits = 6;
    c.namespace = "test".into();
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    let (weak, strong): (Vec<PublicKey>, Vec<PublicKey>) = (1..=255u8)
        .map(|i| key(i, i))
        .partition(|k| k.workbits("test") < 6);
    assert!(!strong.is_empty() && !weak.is_empty());
    for (i, k) in weak.iter().enumerate().take(30) {
        d.handle_message(now, addr(i), *k, &Message::Ping { id: 1, info: None });
    }
    assert_eq!(d.len(), 0);
    assert!(d.counters().low_workbits_ignored >= 30);
    d.handle_message(
        now,
        addr(200),
        strong[0],
        &Message::Ping { id: 1, info: None },
    );
    assert_eq!(d.len(), 1);
    drain(&mut d);
    // A lookup does not ask the weak keys another node tells it about.
    d.lookup(key(0x42, 0), now);
    let t = drain(&mut d);
    assert_eq!(t.len(), 1);
    let Message::FindNode { id, .. } = t[0].message else {
        panic!()
    };
    let nodes = weak
        .iter()
        .take(5)
        .map(|k| NodeRecord::new(*k, addr(7)))
        .collect();
    d.handle_message(now, addr(200), strong[0], &Message::Nodes { id, nodes });
    assert!(drain(&mut d).is_empty());
}

#[test]
fn lookups_are_bounded() {
    let mut c = cfg();
    c.max_lookups = 2;
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    d.handle_message(
        now,
        addr(1),
        key(9, 9),
        &Message::Ping { id: 1, info: None },
    );
    events(&mut d);
    d.lookup(key(1, 0), now);
    d.lookup(key(2, 0), now);
    let third = d.lookup(key(3, 0), now);
    assert_eq!(d.active_lookups(), 2);
    let refused = events(&mut d).into_iter().any(
        |e| matches!(e, DhtEvent::LookupDone { id, stats, .. } if id == third && stats.refused),
    );
    assert!(refused);
}

#[test]
fn a_caller_that_starts_only_what_there_is_room_for_is_never_refused_and_leaves_the_dhts_slots() {
    let mut c = cfg();
    c.max_lookups = 6;
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    d.handle_message(
        now,
        addr(1),
        key(9, 9),
        &Message::Ping { id: 1, info: None },
    );
    events(&mut d);
    let before = d.active_lookups();
    assert_eq!(d.room_for_lookups(), 6 - LOOKUP_SLOTS_KEPT - before);
    for i in 0..10u8 {
        if d.room_for_lookups() > 0 {
            d.lookup(key(i + 1, 0), now);
        }
    }
    assert_eq!(d.room_for_lookups(), 0);
    assert_eq!(d.active_lookups(), 6 - LOOKUP_SLOTS_KEPT);
    let refused = events(&mut d)
        .into_iter()
        .any(|e| matches!(e, DhtEvent::LookupDone { stats, .. } if stats.refused));
    assert!(!refused, "a lookup was refused");
}

#[test]
fn pending_requests_are_bounded() {
    let mut c = cfg();
    c.max_pending = 5;
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    for i in 1..50u8 {
        d.ping(key(i, i), addr(i as usize), now);
    }
    assert_eq!(drain(&mut d).len(), 5);
}

#[test]
fn queues_are_bounded() {
    let mut c = cfg();
    c.max_queue = 10;
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    for i in 1..100u8 {
        d.handle_message(
            now,
            addr(i as usize),
            key(i, i),
            &Message::Ping { id: 1, info: None },
        );
    }
    assert_eq!(drain(&mut d).len(), 10);
    assert_eq!(events(&mut d).len(), 10);
    assert!(d.counters().transmits_dropped > 0);
}

#[test]
fn idle_buckets_are_refreshed() {
    let mut c = cfg();
    c.refresh_interval = Duration::from_secs(600);
    c.stale_after = Duration::from_secs(100_000);
    c.maintenance_interval = Duration::from_secs(5);
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    d.handle_message(now, addr(1), far(1), &Message::Ping { id: 1, info: None });
    drain(&mut d);
    d.handle_timeout(now + Duration::from_secs(300));
    assert!(drain(&mut d).is_empty());
    d.handle_timeout(now + Duration::from_secs(601));
    let t = drain(&mut d);
    assert_eq!(t.len(), 1);
    let Message::FindNode { target, .. } = t[0].message else {
        panic!("{t:?}")
    };
    assert_eq!(bucket_index(&key(0, 0), &target), Some(0));
}

#[test]
fn stale_entries_get_liveness_pings() {
    let mut c = cfg();
    c.stale_after = Duration::from_secs(60);
    c.refresh_interval = Duration::from_secs(100_000);
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), c, now);
    for i in 0..3 {
        d.handle_message(
            now,
            addr(i as usize),
            far(i),
            &Message::Ping { id: 1, info: None },
        );
    }
    drain(&mut d);
    d.handle_timeout(now + Duration::from_secs(61));
    let pinged: HashSet<PublicKey> = drain(&mut d)
        .into_iter()
        .filter(|t| matches!(t.message, Message::Ping { .. }))
        .map(|t| t.to_key)
        .collect();
    assert_eq!(pinged, (0..3).map(far).collect());
}

#[test]
fn bootstrap_pings_boot_nodes_and_looks_itself_up() {
    let now = Instant::now();
    let own = key(0, 0);
    let mut d = Dht::new(own, cfg(), now);
    d.add_bootstrap(key(1, 1), addr(1));
    d.add_bootstrap(own, addr(0)); // ignored
    d.bootstrap(now);
    let t = drain(&mut d);
    assert_eq!(t.len(), 2);
    assert!(t.iter().any(|t| matches!(t.message, Message::Ping { .. })));
    assert!(
        t.iter()
            .any(|t| matches!(t.message, Message::FindNode { target, .. } if target == own))
    );
}

#[test]
fn a_sparse_table_looks_itself_up_again() {
    let now = Instant::now();
    let own = key(0, 0);
    let mut d = Dht::new(own, cfg(), now);
    d.add_bootstrap(key(1, 1), addr(1));
    d.bootstrap(now);
    drain(&mut d);
    // Boot node never answers.
    d.handle_timeout(now + Duration::from_secs(1));
    d.handle_timeout(now + Duration::from_secs(2));
    assert!(events(&mut d).contains(&DhtEvent::Bootstrapped { nodes: 0 }));
    drain(&mut d);
    let again = now + Duration::from_secs(4);
    assert!(d.poll_timeout().unwrap() <= again);
    d.handle_timeout(again);
    assert!(
        drain(&mut d)
            .iter()
            .any(|t| matches!(t.message, Message::FindNode { target, .. } if target == own))
    );
}

#[test]
fn own_record_and_peer_info_travel() {
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), cfg(), now);
    let relay = (key(7, 7), addr(7));
    d.set_own_record(NodeRecord {
        key: key(9, 9), // replaced by our key
        endpoints: vec![addr(50)],
        nat: NatKind::EndpointIndependent,
        relays: vec![relay],
        relay_service: true,
    });
    d.ping(key(1, 1), addr(1), now);
    let t = drain(&mut d);
    let Message::Ping {
        info: Some(info), ..
    } = &t[0].message
    else {
        panic!()
    };
    assert_eq!(info.key, key(0, 0));
    assert_eq!(info.nat, NatKind::EndpointIndependent);
    // A peer behind NAT tells its relays; we hand them on.
    let peer = key(2, 2);
    let peer_info = NodeRecord {
        key: peer,
        endpoints: vec![addr(60)],
        nat: NatKind::EndpointDependent,
        relays: vec![relay],
        relay_service: true,
    };
    d.handle_message(
        now,
        addr(2),
        peer,
        &Message::Ping {
            id: 1,
            info: Some(peer_info),
        },
    );
    let r = d.record_of(&peer).unwrap();
    assert_eq!(r.endpoints, vec![addr(2), addr(60)]);
    assert_eq!(r.nat, NatKind::EndpointDependent);
    assert_eq!(r.relays, vec![relay]);
    // Info naming another key is ignored.
    let liar = key(3, 3);
    d.handle_message(
        now,
        addr(3),
        liar,
        &Message::Ping {
            id: 1,
            info: Some(NodeRecord::new(key(4, 4), addr(61))),
        },
    );
    assert_eq!(d.record_of(&liar).unwrap().endpoints, vec![addr(3)]);
}

#[test]
fn nodes_answers_fit_the_control_budget() {
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), cfg(), now);
    let v6: Vec<SocketAddr> = (0..8)
        .map(|i| SocketAddr::from(([0x20, 1, 0xd, 0xb8, 0, 0, 0, i], 1)))
        .collect();
    for i in 1..=40u8 {
        let info = NodeRecord {
            key: key(i, i),
            endpoints: v6.clone(),
            nat: NatKind::Public,
            relays: vec![(key(5, 5), addr(5)); 4],
            relay_service: true,
        };
        d.handle_message(
            now,
            addr(i as usize),
            key(i, i),
            &Message::Ping {
                id: 1,
                info: Some(info),
            },
        );
    }
    drain(&mut d);
    d.handle_message(
        now,
        addr(1),
        key(1, 1),
        &Message::FindNode {
            id: 1,
            target: key(3, 3),
            info: None,
        },
    );
    let t = drain(&mut d);
    let n = crate::proto::sealed_len(&t[0].message);
    assert!(n <= crate::proto::CONTROL_BUDGET, "{n}");
    let Message::Nodes { nodes, .. } = &t[0].message else {
        panic!()
    };
    assert!(!nodes.is_empty() && nodes.len() < 20);
}

#[test]
fn same_inputs_same_outputs() {
    let run = || {
        let mut net = Net::new(60, cfg());
        net.join_all();
        let now = net.now;
        net.nodes[1].lookup(net.keys[50], now);
        net.advance(Duration::from_secs(5));
        (
            net.delivered,
            net.nodes.iter().map(|n| n.len()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(run(), run());
}

/// A node measured slow (a busy machine, 800 ms round trips) gets three
/// round trips to answer, not the default second: its answers are not
/// thrown away as late.
#[test]
fn a_slow_node_gets_longer_to_answer() {
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), cfg(), now);
    let slow = key(0x80, 1);
    d.ping(slow, addr(1), now);
    let Message::Ping { id, .. } = drain(&mut d)[0].message else {
        panic!()
    };
    let later = now + Duration::from_millis(800);
    let pong = Message::Pong {
        id,
        observed: addr(0),
        info: None,
    };
    d.handle_message(later, addr(1), slow, &pong);
    d.ping(slow, addr(1), later);
    drain(&mut d);
    assert_eq!(d.poll_timeout(), Some(later + Duration::from_millis(2400)));
    // Never beyond 4 request timeouts.
    assert!(d.timeout_for(&slow) <= 4 * ms(d.config().request_timeout));
}

/// The id of the find-node request `d` queued for `to`, if any.
fn find_node_to(d: &mut Dht, to: PublicKey) -> Option<u64> {
    drain(d).into_iter().find_map(|t| match t.message {
        Message::FindNode { id, .. } if t.to_key == to => Some(id),
        _ => None,
    })
}

/// A third party gives a forged record of the target (its own endpoint
/// and relay); the target then answers itself: the lookup's result is the
/// target's word, the forged endpoint and relay are gone.
#[test]
fn the_targets_own_answer_wins_over_a_record_a_third_party_gave() {
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), cfg(), now);
    let (liar, target, relay) = (key(0x40, 1), key(0x80, 2), key(0x20, 3));
    d.handle_message(now, addr(1), liar, &Message::Ping { id: 1, info: None });
    drain(&mut d);
    let id = d.lookup(target, now);
    let ask = find_node_to(&mut d, liar).expect("the liar is asked");
    let forged = NodeRecord {
        key: target,
        endpoints: vec![addr(66)],
        nat: NatKind::Public,
        relays: vec![(relay, addr(67))],
        relay_service: true,
    };
    d.handle_message(
        now,
        addr(1),
        liar,
        &Message::Nodes {
            id: ask,
            nodes: vec![forged],
        },
    );
    let ask = find_node_to(&mut d, target).expect("the target is asked");
    d.handle_message(
        now,
        addr(2),
        target,
        &Message::Nodes {
            id: ask,
            nodes: vec![],
        },
    );
    let found = events(&mut d)
        .into_iter()
        .find_map(|e| match e {
            DhtEvent::LookupDone {
                id: i,
                found,
                verified,
                ..
            } if i == id => Some((found, verified)),
            _ => None,
        })
        .expect("lookup done");
    let (found, verified) = found;
    let found = found.expect("found");
    assert!(verified);
    assert_eq!(found.endpoints, vec![addr(2)]);
    assert!(found.relays.is_empty(), "{found:?}");
}

/// Three close nodes that never answer (behind NATs) and a farther one
/// that does: the lookup asks the farther one once the three stalled
/// (`stall_after`), not after their request timeouts and retries.
#[test]
fn a_lookup_whose_closest_nodes_never_answer_asks_the_next_once_they_stall() {
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), cfg(), now);
    let silent = [key(0x81, 1), key(0x82, 2), key(0x83, 3)];
    let answering = key(0xc0, 4);
    for (i, k) in silent.iter().chain([&answering]).enumerate() {
        d.handle_message(now, addr(i + 1), *k, &Message::Ping { id: 1, info: None });
    }
    drain(&mut d);
    d.lookup(key(0x80, 9), now);
    let first: Vec<PublicKey> = drain(&mut d).iter().map(|t| t.to_key).collect();
    assert_eq!(first, silent.to_vec(), "the three closest first");
    let stall = d.config().stall_after;
    assert!(stall < d.config().request_timeout);
    assert_eq!(d.poll_timeout(), Some(now + stall), "woken when they stall");
    d.handle_timeout(now + stall);
    let next: Vec<PublicKey> = drain(&mut d).iter().map(|t| t.to_key).collect();
    assert_eq!(
        next,
        vec![answering],
        "asked at once, no retry of the silent"
    );
    assert!(
        d.poll_timeout() > Some(now + stall),
        "nothing more to do until the requests time out"
    );
}

/// The DHT's own lookups (bootstrap, refresh) keep strict α.
#[test]
fn a_self_lookup_of_a_bootstrap_never_stalls() {
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), cfg(), now);
    for i in 0..5u8 {
        d.handle_message(
            now,
            addr(usize::from(i) + 1),
            key(0x80 + i, i + 1),
            &Message::Ping { id: 1, info: None },
        );
    }
    drain(&mut d);
    d.bootstrap(now);
    let sent = drain(&mut d).len();
    assert_eq!(sent, 3, "α requests");
    d.handle_timeout(now + d.config().stall_after);
    assert!(drain(&mut d).is_empty());
}

/// A user lookup that heard from someone and waits only on requests that
/// stalled (nodes behind NATs that never answer) ends then, with the
/// record it found, not after their request timeouts and retries.
#[test]
fn a_lookup_waiting_only_on_stalled_requests_ends_with_what_it_found() {
    let now = Instant::now();
    let mut d = Dht::new(key(0, 0), cfg(), now);
    let (silent, answering, target) = (key(0x81, 1), key(0xc0, 2), key(0x80, 9));
    for (i, k) in [silent, answering].iter().enumerate() {
        d.handle_message(now, addr(i + 1), *k, &Message::Ping { id: 1, info: None });
    }
    drain(&mut d);
    events(&mut d);
    let id = d.lookup(target, now);
    let ask = find_node_to(&mut d, answering).expect("the answering node is asked");
    let record = NodeRecord::new(target, addr(9));
    let nodes = vec![record.clone()];
    d.handle_message(now, addr(2), answering, &Message::Nodes { id: ask, nodes });
    // The target itself is asked now; it never answers either.
    assert!(find_node_to(&mut d, target).is_some());
    let done = |d: &mut Dht| {
        events(d).into_iter().find_map(|e| match e {
            DhtEvent::LookupDone { id: i, found, .. } if i == id => Some(found),
            _ => None,
        })
    };
    assert_eq!(done(&mut d), None, "still waiting");
    let stall = d.config().stall_after;
    d.handle_timeout(now + stall);
    assert_eq!(done(&mut d), Some(Some(record)), "over when both stalled");
    assert!(stall < d.config().request_timeout);
}

/// A node started before its bootstrap: the lookup's request to the boot
/// node is lost; the boot node comes up and answers a later ping: the
/// lookup's request goes again at once, not after its timeout.
#[test]
fn a_request_lost_while_its_node_was_down_goes_again_when_a_later_one_is_answered() {
    let now = Instant::now();
    let (own, boot) = (key(0, 0), key(0x80, 1));
    let mut d = Dht::new(own, cfg(), now);
    d.add_bootstrap(boot, addr(1));
    d.lookup(key(0x81, 0), now);
    let lost = drain(&mut d);
    assert!(
        lost.iter()
            .any(|t| t.to_key == boot && matches!(t.message, Message::FindNode { .. }))
    );
    let later = now + Duration::from_millis(300);
    d.ping(boot, addr(1), later);
    let ping_id = drain(&mut d)
        .iter()
        .find_map(|t| match t.message {
            Message::Ping { id, .. } => Some(id),
            _ => None,
        })
        .expect("a ping to the boot node");
    let answered = later + Duration::from_millis(40);
    let pong = Message::Pong {
        id: ping_id,
        observed: addr(0),
        info: None,
    };
    d.handle_message(answered, addr(1), boot, &pong);
    let again = drain(&mut d);
    assert!(
        again
            .iter()
            .any(|t| t.to_key == boot && matches!(t.message, Message::FindNode { .. })),
        "the lost find goes again at once: {again:?}"
    );
    assert_eq!(d.counters().requests_resent, 1);
    // Answered again: nothing older is left to resend.
    d.handle_message(answered, addr(1), boot, &pong);
    assert!(drain(&mut d).is_empty());
}

/// A node that answers nothing gets no more requests than before: resends
/// ride only on answers.
#[test]
fn a_silent_node_gets_no_resends() {
    let now = Instant::now();
    let (own, boot) = (key(0, 0), key(0x80, 1));
    let mut d = Dht::new(own, cfg(), now);
    d.add_bootstrap(boot, addr(1));
    d.bootstrap(now);
    let first = drain(&mut d).len();
    assert!(first > 0);
    d.handle_timeout(now + Duration::from_millis(100));
    assert!(drain(&mut d).is_empty());
    assert_eq!(d.counters().requests_resent, 0);
}

/// An answer is taken from an unproven address only when it answers a
/// request still waiting, sent to that key at that address.
#[test]
fn only_an_answer_to_a_request_still_waiting_at_that_address_is_expected() {
    let now = Instant::now();
    let (own, boot) = (key(0, 0), key(0x80, 1));
    let mut d = Dht::new(own, cfg(), now);
    d.add_bootstrap(boot, addr(1));
    d.lookup(key(0x81, 0), now);
    let id = drain(&mut d)
        .iter()
        .find_map(|t| match t.message {
            Message::FindNode { id, .. } if t.to_key == boot => Some(id),
            _ => None,
        })
        .expect("a find to the boot node");
    let nodes = Message::Nodes { id, nodes: vec![] };
    assert!(d.expects_answer(&boot, addr(1), &nodes));
    assert!(!d.expects_answer(&boot, addr(2), &nodes), "another address");
    assert!(
        !d.expects_answer(&key(0x82, 2), addr(1), &nodes),
        "another key"
    );
    let other = Message::Nodes {
        id: id ^ 1,
        nodes: vec![],
    };
    assert!(!d.expects_answer(&boot, addr(1), &other), "another id");
    let pong = Message::Pong {
        id,
        observed: addr(0),
        info: None,
    };
    assert!(
        !d.expects_answer(&boot, addr(1), &pong),
        "a find is not answered by a pong"
    );
    d.handle_message(now, addr(1), boot, &nodes);
    assert!(!d.expects_answer(&boot, addr(1), &nodes), "answered once");
}
