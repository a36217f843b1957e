//! `wh` in scripts, as a shell user meets it: every printing command ends
//! quietly when its reader goes away, `wh down` returns once the daemon has
//! released everything (so `wh down && wh up` always works), `wh show` names
//! a node without a hostname and prints JSON, and each usual mistake gets a
//! one-line error that says what to do, with the documented exit code.
//! `wh nc`'s output side ends its pipe the same way.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use wirehub_e2e::{Host, Lab, require_lab, wh_bin};

/// A network of one trusted node: the node gets an interface.
fn one_node_network(lab: &Lab, name: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = lab.genkey(name).expect("key");
    let config = lab
        .write(
            &format!("{name}.conf"),
            &format!("name solo\nsubnet 10.0.42.0/24\ntrust {name} {pk}\n"),
        )
        .expect("config");
    (config, sk)
}

/// Runs `wh ARGS` on `host` with standard output a pipe whose read end is
/// already closed (the reader went away before the first byte), `stdin`
/// on standard input, and backtraces asked for.
fn wh_into_closed_pipe(host: Option<&Host>, args: &[&str], stdin: &[u8]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let mut cmd = match host {
        Some(h) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &h.netns])
                .arg(wh_bin())
                .env("WH_RUN_DIR", &h.run_dir);
            c
        }
        None => Command::new(wh_bin()),
    };
    let mut child = cmd
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wh");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin);
    }
    child.wait_with_output().expect("wh output")
}

#[test]
fn every_printing_command_ends_quietly_with_status_0_when_its_reader_goes_away() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    // Two nodes that found each other: a lookup has something to print.
    let net = lab
        .trusted_network(2, &[(0, &["interface", "whpipe"])])
        .expect("network");
    let host = net.nodes[0].clone();
    lab.ping_until(&host, "10.0.42.3", Duration::from_secs(20))
        .expect("node_a reaches node_b");
    let (config, sk) = (net.config.clone(), net.keys[0].0.clone());
    let key = std::fs::read(&sk).expect("key");
    let node_b = net.keys[1].1.clone();
    let config = config.to_string_lossy().into_owned();
    let local: Vec<Vec<&str>> = vec![
        vec!["help"],
        vec!["help", "show"],
        vec!["--help"],
        vec!["show", "--help"],
        vec!["version"],
        vec!["--version"],
        vec!["completion", "bash"],
        vec!["__complete", "1", "s"],
        vec!["check", &config],
        vec!["check", &config, "--json"],
        vec!["genkey"],
        vec!["genkey", "workbit", "4"],
        vec!["pubkey"],
        vec!["workbit"],
        vec!["orchid"],
        vec!["crd"],
        vec!["network", &config],
    ];
    let daemon: Vec<Vec<&str>> = vec![
        vec![],
        vec!["show"],
        vec!["show", "all"],
        vec!["show", "whpipe", "all"],
        vec!["show", "--json"],
        vec!["show", "whpipe", "--json"],
        vec!["show", "interfaces"],
        vec!["inspect", "whpipe"],
        vec!["lookup", "whpipe", &node_b],
        vec!["resolve", "node_b"],
        vec!["ping", "whpipe", "node_b"],
        vec!["reload", "whpipe"],
    ];
    let mut failures = Vec::new();
    let runs = local
        .iter()
        .map(|a| (None, a))
        .chain(daemon.iter().map(|a| (Some(&host), a)));
    for (on, args) in runs {
        let out = wh_into_closed_pipe(on, args, &key);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(0) || !stderr.is_empty() {
            failures.push(format!(
                "wh {}: {}, stderr {stderr:?}",
                args.join(" "),
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Stops the interface however the test ends: the background daemons of
/// `wh up` are not the lab's children.
struct Down<'a> {
    lab: &'a Lab,
    host: &'a Host,
    interface: &'a str,
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.lab.wh(self.host, &["down", self.interface]);
    }
}

fn udp_port_is_free(lab: &Lab, host: &Host, port: u16) -> bool {
    let listening = lab
        .exec(
            &host.netns,
            &["ss", "-Huan", "sport", "=", &format!(":{port}")],
        )
        .unwrap_or_default();
    listening.trim().is_empty()
}

#[test]
fn wh_down_then_wh_up_works_20_times_in_a_row() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let host = lab.public_host("a").expect("host");
    let (config, sk) = one_node_network(&lab, "solo_a");
    let (config, sk) = (config.to_string_lossy(), sk.to_string_lossy());
    let up = [
        "up",
        &config,
        "private-key",
        &sk,
        "interface",
        "whcycle",
        "listen-port",
        "62111",
    ];
    let _cleanup = Down {
        lab: &lab,
        host: &host,
        interface: "whcycle",
    };
    let socket = host.run_dir.join("whcycle.sock");
    let mut downs = Vec::new();
    for cycle in 1..=20 {
        lab.wh_ok(&host, &up)
            .unwrap_or_else(|e| panic!("cycle {cycle}: wh up: {e}"));
        let start = Instant::now();
        lab.wh_ok(&host, &["down", "whcycle"])
            .unwrap_or_else(|e| panic!("cycle {cycle}: wh down: {e}"));
        downs.push(start.elapsed());
        // What `wh down` promises, checked the moment it returns.
        assert!(
            udp_port_is_free(&lab, &host, 62111),
            "cycle {cycle}: port 62111 still bound after wh down"
        );
        assert!(
            lab.exec(&host.netns, &["ip", "link", "show", "whcycle"])
                .is_err(),
            "cycle {cycle}: interface whcycle still there after wh down"
        );
        assert!(
            !socket.exists(),
            "cycle {cycle}: control socket still there"
        );
    }
    let ms: Vec<u128> = downs.iter().map(Duration::as_millis).collect();
    eprintln!("wh down took (ms): {ms:?}");
}

#[test]
fn wh_show_names_a_public_dht_node_and_prints_the_table_as_json() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let net = lab.trusted_network(2, &[]).expect("network");
    let (boot, a) = (&net.boot, &net.nodes[0]);
    lab.ping_until(a, "10.0.42.3", Duration::from_secs(20))
        .expect("node_a reaches node_b");

    let table = lab.wh_ok(boot, &["show"]).expect("show on boot");
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains("node public DHT node <"),
        "header: {header:?}"
    );

    let interface = lab
        .wh_ok(a, &["show", "interfaces"])
        .expect("interfaces")
        .trim()
        .to_string();
    let json = lab
        .wh_ok(a, &["show", &interface, "--json"])
        .expect("show --json");
    let shown: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let table = lab.wh_ok(a, &["show", &interface]).expect("show");
    assert_eq!(shown["interface"], interface.as_str());
    assert_eq!(shown["node_label"], "node_a");
    assert!(
        table.starts_with(&format!(
            "interface {interface}, network lab, node node_a <{}>",
            shown["nat"].as_str().unwrap_or("?")
        )),
        "{table}\n{json}"
    );
    let peers = shown["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 1, "{json}");
    assert_eq!(peers[0]["hostname"], "node_b");
    assert_eq!(peers[0]["path"]["kind"], "direct", "{json}");
    let endpoint = peers[0]["path"]["endpoint"].as_str().unwrap_or("?");
    assert!(
        table.contains(&format!("● node_b: {endpoint}")),
        "{table}\n{json}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&lab.wh_ok(boot, &["show", "--json"]).expect("list")).expect("JSON");
    assert_eq!(list[0]["node_label"], "public DHT node", "{list}");
    assert_eq!(list[0]["node"], serde_json::Value::Null, "{list}");
}

/// One mistake: how to make it, and what `wh` must answer.
struct Mistake {
    what: &'static str,
    args: Vec<String>,
    /// A shell prefix (run as another user, in another mount namespace).
    wrap: Vec<String>,
    run_dir: Option<PathBuf>,
    code: i32,
    says: &'static str,
}

fn mistake(what: &'static str, args: &[&str], code: i32, says: &'static str) -> Mistake {
    Mistake {
        what,
        args: args.iter().map(|a| a.to_string()).collect(),
        wrap: Vec::new(),
        run_dir: None,
        code,
        says,
    }
}

const AS_NOBODY: [&str; 6] = [
    "setpriv",
    "--reuid=nobody",
    "--regid=nogroup",
    "--clear-groups",
    "--inh-caps=-all",
    "--",
];

fn run_mistake(host: &Host, m: &Mistake) -> Output {
    let run_dir = m.run_dir.as_deref().unwrap_or(&host.run_dir);
    let wh = wh_bin();
    let mut words: Vec<String> = m.wrap.clone();
    words.push(wh.to_string_lossy().into_owned());
    words.extend(m.args.iter().cloned());
    Command::new("ip")
        .args(["netns", "exec", &host.netns])
        .args(&words)
        .env("WH_RUN_DIR", run_dir)
        .env("RUST_BACKTRACE", "1")
        // A foreground daemon logs on stderr: only its error is looked at.
        .env("WH_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .expect("run wh")
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn each_usual_mistake_gets_one_line_that_says_what_to_do() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let host = lab.public_host("a").expect("host");
    let (config, sk) = one_node_network(&lab, "solo_a");
    let (config_s, sk_s) = (path(&config), path(&sk));
    let dir = path(&lab.dir);
    let missing = path(&lab.dir.join("missing.sk"));
    let a_file = lab.write("a-file", "not a directory\n").expect("file");
    let a_file_s = path(&a_file);
    // A daemon holding the default port and an interface for down/reload.
    lab.wh_up(&host, &config, Some(&sk), &["interface", "whbusy"])
        .expect("up");
    lab.wait_daemon(&host, Duration::from_secs(10))
        .expect("daemon answers");
    // A run directory `nobody` may write, so its `wh up` gets to the TUN.
    let open_run_dir = lab.dir.join("open-run");
    std::fs::create_dir_all(&open_run_dir).expect("dir");
    sh(&["chmod", "1777", &path(&open_run_dir)]);
    sh(&["chmod", "0644", &sk_s, &config_s]);

    let mut table = vec![
        mistake(
            "no command but junk",
            &["frobnicate"],
            2,
            "unknown command 'frobnicate'",
        ),
        mistake("up without CONFIG", &["up"], 2, "missing CONFIG"),
        mistake(
            "a number that is not",
            &["genkey", "workbit", "x"],
            2,
            "'workbit' takes a number",
        ),
        mistake(
            "an MTU out of range",
            &["up", &config_s, "mtu", "10"],
            2,
            "mtu 10 is out of range",
        ),
        mistake(
            "a bad interface name",
            &["up", &config_s, "private-key", &sk_s, "interface", "a/b"],
            2,
            "interface name 'a/b' is not valid",
        ),
        mistake(
            "a config that is a directory",
            &["up", &dir],
            1,
            "Is a directory",
        ),
        mistake(
            "check of a directory",
            &["check", &dir],
            1,
            "Is a directory",
        ),
        mistake(
            "genkey for a directory",
            &["genkey", &dir],
            1,
            "Is a directory",
        ),
        mistake(
            "a key that is a directory",
            &["up", &config_s, "private-key", &dir],
            1,
            "is a directory; give the file 'wh genkey' wrote",
        ),
        mistake(
            "a key file that does not exist",
            &["up", &config_s, "private-key", &missing],
            1,
            "does not exist; make one with 'wh genkey >",
        ),
        mistake(
            "a config given as the key",
            &["up", &config_s, "private-key", &config_s],
            1,
            "does not hold a private key",
        ),
        mistake(
            "a file where the CNI directory goes",
            &["up", &config_s, "private-key", &sk_s, "cni-dir", &a_file_s],
            2,
            "is a file; give a directory",
        ),
        mistake(
            "a port already in use",
            &["up", &config_s, "private-key", &sk_s, "interface", "whtwo"],
            1,
            "Address already in use (os error 98); another program uses that port",
        ),
        mistake(
            "down of no such interface",
            &["down", "whnope"],
            1,
            "interface whnope is not running",
        ),
        mistake(
            "reload of no such interface",
            &["reload", "whnope"],
            1,
            "interface whnope is not running",
        ),
        mistake(
            "show of no such interface",
            &["show", "whnope"],
            1,
            "interface whnope is not running",
        ),
        mistake(
            "inspect of no such interface",
            &["inspect", "whnope"],
            1,
            "interface whnope is not running",
        ),
    ];
    let mut run_dir_file = mistake(
        "a run directory that is a file",
        &[
            "up",
            &config_s,
            "private-key",
            &sk_s,
            "interface",
            "whthree",
        ],
        1,
        "is a file; remove it, or choose another directory with WH_RUN_DIR",
    );
    run_dir_file.run_dir = Some(a_file.clone());
    table.push(run_dir_file);
    let mut no_tun = mistake(
        "no /dev/net/tun",
        &[
            "up",
            &config_s,
            "private-key",
            &sk_s,
            "interface",
            "whfour",
            "listen-port",
            "62200",
            "--foreground",
        ],
        1,
        "no /dev/net/tun: load the tun module",
    );
    // Hide /dev/net in a mount namespace of its own.
    no_tun.wrap = [
        "unshare",
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs none /dev/net && exec \"$0\" \"$@\"",
    ]
    .map(String::from)
    .to_vec();
    table.push(no_tun);
    let mut not_root = mistake(
        "up without root",
        &[
            "up",
            &config_s,
            "private-key",
            &sk_s,
            "interface",
            "whfive",
            "listen-port",
            "62201",
            "--foreground",
        ],
        1,
        "wh up needs root (or the CAP_NET_ADMIN capability)",
    );
    not_root.wrap = AS_NOBODY.map(String::from).to_vec();
    not_root.run_dir = Some(open_run_dir);
    table.push(not_root);
    let mut down_not_root = mistake(
        "down without root",
        &["down", "whbusy"],
        1,
        "permission denied; run wh as root",
    );
    down_not_root.wrap = AS_NOBODY.map(String::from).to_vec();
    table.push(down_not_root);

    let mut failures = Vec::new();
    for m in &table {
        let out = run_mistake(&host, m);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let one_line = stderr.lines().count() == 1;
        let clean = !stderr.contains("panicked") && !stderr.contains("Caused by");
        if out.status.code() != Some(m.code) || !stderr.contains(m.says) || !one_line || !clean {
            failures.push(format!(
                "{}: wh {} gave {} (expected {}), stderr {stderr:?}, expected it to say {:?} on one line",
                m.what,
                m.args.join(" "),
                out.status,
                m.code,
                m.says
            ));
        }
    }
    // The daemon that held the port is still there: no mistake disturbed it.
    lab.wh_ok(&host, &["show", "whbusy"])
        .expect("whbusy still up");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(status.success(), "{args:?}");
}

#[test]
fn wh_nc_ends_quietly_with_status_0_when_its_reader_goes_away() {
    require_lab!();
    let mut lab = Lab::new().expect("lab");
    let (boot_pk, dht) = lab.public_dht(0).expect("public DHT");
    let a = lab.public_host("alice").expect("alice");
    let b = lab.public_host("bob").expect("bob");
    let boot_endpoint = format!("{}:62096", dht[0].ip);
    let nc = |host: &Host| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &host.netns])
            .arg(wh_bin())
            .args(["nc"])
            .env("WH_RUN_DIR", &host.run_dir)
            .env("WH_NC_TIMEOUT_SECS", "30")
            .env("WH_LOG", "error")
            .env("RUST_BACKTRACE", "1");
        c
    };
    // The listener has something to say and keeps its input open.
    let mut listener = nc(&a)
        .args(["boot", &boot_pk, &boot_endpoint])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("listener");
    let mut to_listener = listener.stdin.take().expect("stdin");
    to_listener
        .write_all(b"more than the reader wants\n")
        .expect("write");
    let invitation = {
        use std::io::BufRead;
        let stderr = listener.stderr.take().expect("stderr");
        let mut line = String::new();
        std::io::BufReader::new(stderr)
            .read_line(&mut line)
            .expect("invitation");
        line.trim().to_string()
    };
    // The joiner's reader is gone before anything arrives; its own input
    // stays open, so only its output side can end the pipe.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let (joiner_input, _kept_open) = std::io::pipe().expect("pipe");
    let invitation_file = lab.dir.join("invitation");
    std::fs::write(&invitation_file, &invitation).expect("invitation file");
    let joiner = nc(&b)
        .arg("file")
        .arg(&invitation_file)
        .args(["boot", &boot_pk, &boot_endpoint])
        .stdin(joiner_input)
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("joiner");
    let out = joiner.wait_with_output().expect("joiner ends");
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).as_ref()
        ),
        (Some(0), ""),
        "the joiner with a closed stdout"
    );
}
