//! Zero-netcat in the lab: a 10 MiB file through an invitation between two
//! hosts behind NATs (an easy one and a hard one: the pipe is relayed), an
//! invitation used twice, a tampered invitation, a local process that
//! connects to the listener first (it gets nothing), and the invitation
//! never on a command line.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab, Nat, read_invitation, require_lab, sha256, wh_bin, wh_nc};

/// The address the listener's pipe socket listens on in `host` (once it
/// listens): `ss` prints it as `ADDR%IFACE:PORT` for a socket bound to a
/// device.
fn listening_address(host: &Host, timeout: Duration) -> (String, u16) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let out = Command::new("ip")
            .args(["netns", "exec", &host.netns, "ss", "-Hltn", "sport = :5555"])
            .output()
            .expect("ss");
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some((addr, port)) = text
            .split_whitespace()
            .nth(3)
            .and_then(|local| local.rsplit_once(':'))
        {
            let addr = addr.split('%').next().unwrap_or(addr).to_string();
            return (addr, port.parse().expect("port"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the listener did not listen within {timeout:?}");
}

/// Command lines of this machine's processes that contain `text`.
fn processes_showing(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(text) {
                found.push(cmdline);
            }
        }
    }
    found
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
    let mut listener = wh_nc(&a, &boot_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listener");
    let inv = read_invitation(&mut listener);
    assert!(
        inv.len() > 80
            && inv
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
        "not an invitation: {inv:?}"
    );

    // A local process on the listener's host connects first: it must get
    // nothing (before, the listener took the first connection to its port).
    let pipe_addr = listening_address(&a, Duration::from_secs(20));
    let snooped = lab.dir.join("snooped.bin");
    let mut snooper = Command::new("ip")
        .args(["netns", "exec", &a.netns, "timeout", "60", "bash", "-c"])
        .arg(format!(
            "exec 3<>/dev/tcp/{}/{} && cat <&3",
            pipe_addr.0, pipe_addr.1
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&snooped).expect("snoop file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("snooper");

    let output = lab.dir.join("output.bin");
    let start = Instant::now();
    // The invitation goes in as the first line of the joiner's stdin.
    let mut joiner = wh_nc(&b, &["-", boot_args[0], boot_args[1], boot_args[2]])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&output).expect("out"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("joiner");
    joiner
        .stdin
        .as_mut()
        .expect("joiner stdin")
        .write_all(format!("{inv}\n").as_bytes())
        .expect("write the invitation");
    assert_eq!(
        processes_showing(&inv),
        Vec::<String>::new(),
        "the invitation shows in ps"
    );
    // The listener sends the file: write it to its stdin.
    let mut stdin = listener.stdin.take().expect("stdin");
    let data = std::fs::read(&input).expect("input");
    let writer = std::thread::spawn(move || {
        let r = stdin.write_all(&data);
        (r, stdin)
    });
    // Wait until the joiner has everything.
    let deadline = Instant::now() + wirehub_e2e::patience(Duration::from_secs(90));
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
    let _ = snooper.kill();
    let _ = snooper.wait();
    assert_eq!(
        std::fs::metadata(&snooped).map(|m| m.len()).unwrap_or(0),
        0,
        "a local connection to the listener received data"
    );

    // A second use of the same invitation, while the listener is up: refused.
    let second = wh_nc(
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
