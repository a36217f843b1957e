//! The lab's WAN links: the delay and loss a router's link adds are real
//! (netem where the kernel has it, else the lab's delay wire), frames keep
//! their order, and the link still carries a few hundred Mbit/s.

use std::net::UdpSocket;
use std::time::{Duration, Instant};
use wirehub_e2e::wire::in_netns;
use wirehub_e2e::{Host, Lab, Link, Nat, require_lab};

/// `ping -c COUNT -i INTERVAL`: (received, transmitted, min RTT ms, avg RTT ms).
fn ping(lab: &Lab, from: &Host, to: &str, count: u32, interval: &str) -> (u32, u32, f64, f64) {
    let out = lab
        .exec_output(
            &from.netns,
            &[
                "ping",
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                interval,
                "-W",
                "1",
                to,
            ],
        )
        .expect("ping");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "200 packets transmitted, 130 received, 35% packet loss, time 1234ms"
    // "rtt min/avg/max/mdev = 40.1/40.3/41.0/0.2 ms"
    let mut sent = 0;
    let mut got = 0;
    let (mut min, mut avg) = (f64::NAN, f64::NAN);
    for line in text.lines() {
        if line.contains("packets transmitted") {
            let n: Vec<u32> = line
                .split(',')
                .filter_map(|p| p.split_whitespace().next()?.parse().ok())
                .collect();
            sent = n.first().copied().unwrap_or(0);
            got = n.get(1).copied().unwrap_or(0);
        }
        if let Some(v) = line.split(" = ").nth(1) {
            let v: Vec<f64> = v
                .trim_end_matches(" ms")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect();
            min = v.first().copied().unwrap_or(f64::NAN);
            avg = v.get(1).copied().unwrap_or(f64::NAN);
        }
    }
    eprintln!("{} -> {to}: {}", from.name, text.trim());
    (got, sent, min, avg)
}

#[test]
fn delay_and_loss_of_a_router_link_are_real() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let public = lab.public_host("pub").expect("public host");
    let (slow, slow_r) = lab
        .home_host_with("slow", Nat::Easy, Link::delay(20))
        .expect("delayed home host");
    let (fast, _) = lab.home_host("fast", Nat::Hard).expect("home host");

    // 20 ms each way through one delayed router: at least 40 ms round trip.
    let (got, sent, min, avg) = ping(&lab, &slow, &public.ip, 10, "0.05");
    assert_eq!(got, sent, "no loss asked, none expected");
    assert!(min >= 40.0, "RTT {min} ms through a 20 ms link");
    assert!(avg < 60.0, "RTT {avg} ms through a 20 ms link: too much");
    // The control, behind a router without added delay.
    let (got, sent, _, avg) = ping(&lab, &fast, &public.ip, 10, "0.05");
    assert_eq!(got, sent);
    assert!(avg < 10.0, "RTT {avg} ms without added delay");

    // Loss: 20 % each way, no delay: a ping and its reply both get through
    // 64 % of the time.
    let how = lab
        .set_link(
            &slow_r,
            Link {
                delay_ms: 0,
                loss: 0.2,
            },
        )
        .expect("set link");
    eprintln!("link shaped with {how:?}");
    let (got, sent, _, avg) = ping(&lab, &slow, &public.ip, 300, "0.005");
    let lost = 1.0 - got as f64 / sent as f64;
    assert!(
        (0.22..0.50).contains(&lost),
        "{lost:.2} lost, 0.36 expected"
    );
    assert!(avg < 10.0, "RTT {avg} ms with no delay left");

    // And back to a plain link: nothing lost.
    lab.set_link(&slow_r, Link::default()).expect("set link");
    let (got, sent, _, _) = ping(&lab, &slow, &public.ip, 50, "0.005");
    assert_eq!(got, sent);
}

#[test]
fn a_delayed_link_keeps_order_and_carries_hundreds_of_mbits() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let public = lab.public_host("pub").expect("public host");
    let (home, _) = lab
        .home_host_with("home", Nat::Easy, Link::delay(20))
        .expect("delayed home host");

    // Numbered UDP datagrams, home -> public, as fast as they go: whatever
    // arrives arrives in order.
    let dst = format!("{}:9000", public.ip);
    let (received, secs) = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            in_netns(&public.netns, || {
                let sock = UdpSocket::bind(&dst)?;
                sock.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut seen = Vec::new();
                let mut buf = [0u8; 2048];
                let mut first = None;
                let mut last = Instant::now();
                while let Ok(n) = sock.recv(&mut buf) {
                    first.get_or_insert_with(Instant::now);
                    last = Instant::now();
                    if n >= 4 {
                        seen.push(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                    }
                }
                let secs = first.map_or(0.0, |f| (last - f).as_secs_f64());
                Ok((seen, secs))
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        in_netns(&home.netns, || {
            let sock = UdpSocket::bind("0.0.0.0:0")?;
            let mut frame = [0u8; 1200];
            for i in 0u32..30_000 {
                frame[..4].copy_from_slice(&i.to_be_bytes());
                let _ = sock.send_to(&frame, &dst);
                if i % 64 == 0 {
                    // Pace a little: ~1 Gbit/s at most.
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
            Ok(())
        })
        .expect("send");
        rx.join().expect("receiver").expect("receive")
    });
    assert!(received.len() > 10_000, "only {} arrived", received.len());
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "datagrams reordered"
    );
    let mbits = received.len() as f64 * 1200.0 * 8.0 / secs.max(1e-3) / 1e6;
    eprintln!(
        "UDP: {} of 30000 in order, {mbits:.0} Mbit/s",
        received.len()
    );

    // TCP through the 40 ms round trip: iperf3, if present.
    if std::process::Command::new("iperf3")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("no iperf3: TCP throughput not measured");
        return;
    }
    let mut srv = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &public.netns,
            "iperf3",
            "-s",
            "-1",
            "-B",
            &public.ip,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 -s");
    std::thread::sleep(Duration::from_millis(300));
    let out = lab.exec(
        &home.netns,
        &["iperf3", "-c", &public.ip, "-t", "4", "-O", "1", "-J"],
    );
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out.expect("iperf3 -c")).expect("JSON");
    let mbits = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e6;
    eprintln!("TCP through the delayed link: {mbits:.0} Mbit/s");
    assert!(mbits > 200.0, "{mbits:.0} Mbit/s through the delayed link");
}
