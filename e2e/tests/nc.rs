//! Zero-netcat in the lab: a 10 MiB file through an invitation between two
//! hosts behind NATs (an easy one and a hard one: the pipe is relayed), an
//! invitation used twice, a tampered invitation.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab, Nat, require_lab, wh_bin};

fn nc(lab: &Lab, host: &Host, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &host.netns])
        .arg(wh_bin())
        .arg("nc")
        .args(args);
    c.env("WH_RUN_DIR", &host.run_dir)
        .env("WH_NC_TIMEOUT_SECS", "15");
    let _ = lab;
    c
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Reads the invitation, alone on one line of the listener's stderr.
fn invitation(child: &mut Child) -> String {
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = lines.next().and_then(Result::ok).unwrap_or_default();
    // Keep draining stderr so the listener never blocks on it.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    line.trim().to_string()
}

#[test]
fn zero_netcat_pipes_10_mib_between_two_nats_once_per_invitation() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let (boot_pk, dht) = lab.public_dht(2).expect("public DHT");
    let boot = dht[0].clone();
    let (a, _) = lab.home_host("alice", Nat::Easy).expect("alice");
    let (b, _) = lab.home_host("bob", Nat::Hard).expect("bob");
    let (c, _) = lab.home_host("carol", Nat::Easy).expect("carol");
    let boot_endpoint = format!("{}:62096", boot.ip);
    let boot_args = ["boot", boot_pk.as_str(), boot_endpoint.as_str()];

    let input = lab.dir.join("input.bin");
    let status = Command::new("head")
        .args(["-c", "10485760", "/dev/urandom"])
        .stdout(std::fs::File::create(&input).expect("file"))
        .status()
        .expect("head");
    assert!(status.success());

    // The listener's stdin stays open until the end: it must still be up
    // when the invitation is used a second time.
    let mut listener = nc(&lab, &a, &boot_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listener");
    let inv = invitation(&mut listener);
    assert!(
        inv.len() > 80
            && inv
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
        "not an invitation: {inv:?}"
    );

    let output = lab.dir.join("output.bin");
    let start = Instant::now();
    let mut joiner = nc(
        &lab,
        &b,
        &[inv.as_str(), boot_args[0], boot_args[1], boot_args[2]],
    )
    .stdin(Stdio::piped())
    .stdout(std::fs::File::create(&output).expect("out"))
    .stderr(Stdio::piped())
    .spawn()
    .expect("joiner");
    // The listener sends the file: write it to its stdin.
    let mut stdin = listener.stdin.take().expect("stdin");
    let data = std::fs::read(&input).expect("input");
    let writer = std::thread::spawn(move || {
        let r = stdin.write_all(&data);
        (r, stdin)
    });
    // Wait until the joiner has everything.
    let deadline = Instant::now() + Duration::from_secs(90);
    while std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0) < 10_485_760
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    let (written, stdin) = writer.join().expect("writer");
    written.expect("write to the listener");
    assert_eq!(
        std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0),
        10_485_760,
        "the joiner did not receive 10 MiB"
    );
    assert_eq!(sha256(&input), sha256(&output));
    eprintln!("10 MiB through zero-netcat (easy NAT to hard NAT) in {elapsed:?}");

    // A second use of the same invitation, while the listener is up: refused.
    let second = nc(
        &lab,
        &c,
        &[inv.as_str(), boot_args[0], boot_args[1], boot_args[2]],
    )
    .stdin(Stdio::null())
    .output()
    .expect("second joiner");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "second use: {err}");
    assert!(err.contains("already used"), "{err}");

    // A tampered invitation: one character changed.
    let mut chars: Vec<char> = inv.chars().collect();
    chars[30] = if chars[30] == 'x' { 'y' } else { 'x' };
    let tampered: String = chars.into_iter().collect();
    let out = Command::new(wh_bin())
        .args(["nc", tampered.as_str()])
        .stdin(Stdio::null())
        .output()
        .expect("nc");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("invitation is damaged"), "{err}");

    // Closing the listener's stdin ends both sides cleanly.
    drop(stdin);
    let mut joiner_stdin = joiner.stdin.take();
    drop(joiner_stdin.take());
    let wait = |child: &mut Child| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(s)) = child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        None
    };
    assert_eq!(wait(&mut joiner), Some(0), "joiner exit");
    assert_eq!(wait(&mut listener), Some(0), "listener exit");
}
