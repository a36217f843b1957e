//! The `wh` command line, in the original WireHub's keyword style:
//! `wh up ./config private-key ./node.sk interface wh0 listen-port 62096 mode nat`.
//!
//! Every command is described once in [`COMMANDS`]; parsing, `wh help`, usage
//! errors and shell completion all read that table. Exit codes: 0 success,
//! 1 runtime failure, 2 usage error.
//!
//! Standard output is written only through [`out`]: a reader that goes away
//! (`wh show | head -1`) ends the command quietly with status 0, never a
//! panic (`print!` panics on a closed pipe, hence the lint below).

#![deny(clippy::print_stdout)]

pub mod commands;
pub mod completion;

use commands::Failure;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;

/// What a keyword's value (or a positional argument) is, for completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// A path to a file.
    File,
    /// The name of a running WireHub interface.
    Interface,
    /// A peer of a running interface: a key, key prefix or hostname.
    Peer,
    /// A whole number.
    Number,
    /// Free text.
    Text,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
}

/// A `keyword VALUE` pair a command accepts.
#[derive(Debug)]
pub struct Keyword {
    pub name: &'static str,
    pub value: Value,
    pub help: &'static str,
}

/// A positional argument.
#[derive(Debug)]
pub struct Positional {
    pub name: &'static str,
    pub value: Value,
    pub required: bool,
}

/// One `wh` command.
#[derive(Debug)]
pub struct Command {
    pub name: &'static str,
    pub summary: &'static str,
    pub positionals: &'static [Positional],
    pub keywords: &'static [Keyword],
    /// `--flags` without value.
    pub flags: &'static [(&'static str, &'static str)],
    pub details: &'static str,
}

impl Command {
    /// The one-line synopsis, e.g. `wh workbit [namespace NS]`.
    pub fn synopsis(&self) -> String {
        let mut s = format!("wh {}", self.name);
        for p in self.positionals {
            if p.required {
                s += &format!(" <{}>", p.name);
            } else {
                s += &format!(" [{}]", p.name);
            }
        }
        for k in self.keywords {
            s += &format!(" [{} {}]", k.name, value_name(k.value, k.name));
        }
        for (f, _) in self.flags {
            s += &format!(" [{f}]");
        }
        s
    }

    pub fn help(&self) -> String {
        let mut s = format!("{}\n\nUsage: {}\n", self.summary, self.synopsis());
        if !self.keywords.is_empty() || !self.flags.is_empty() {
            s += "\nKeywords:\n";
            for k in self.keywords {
                let head = format!("{} {}", k.name, value_name(k.value, k.name));
                s += &format!("  {head:<28} {}\n", k.help);
            }
            for (f, help) in self.flags {
                s += &format!("  {f:<28} {help}\n");
            }
        }
        if !self.details.is_empty() {
            s += &format!("\n{}\n", self.details);
        }
        s
    }
}

fn value_name(v: Value, keyword: &str) -> String {
    match v {
        Value::File => "FILE".into(),
        Value::Interface => "INTERFACE".into(),
        Value::Peer => "PEER".into(),
        Value::Number => "N".into(),
        Value::Text => keyword.to_ascii_uppercase().replace('-', "_"),
        Value::Choice(c) => c.join("|"),
    }
}

const NAMESPACE: Keyword = Keyword {
    name: "namespace",
    value: Value::Text,
    help: "namespace of the proof of work (default: public)",
};

/// Every command `wh` knows, in the order `wh help` lists them.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "show",
        summary: "Show the running interfaces, their peers and paths (the default command).",
        positionals: &[
            Positional {
                name: "INTERFACE|all|interfaces",
                value: Value::Interface,
                required: false,
            },
            Positional {
                name: "light|all",
                value: Value::Choice(&["light", "all"]),
                required: false,
            },
        ],
        keywords: &[],
        flags: &[(
            "--json",
            "print the same as JSON: an object for INTERFACE, else a list",
        )],
        details: "Peers are marked ● direct, ◒ behind NAT, ○ relayed, ◌ alias.",
    },
    Command {
        name: "up",
        summary: "Bring a WireHub network up on this host.",
        positionals: &[Positional {
            name: "CONFIG",
            value: Value::File,
            required: true,
        }],
        keywords: &[
            Keyword {
                name: "private-key",
                value: Value::File,
                help: "the node's private key (default: a new key, as a public DHT node)",
            },
            Keyword {
                name: "interface",
                value: Value::Text,
                help: "interface name (default: wh- and 8 characters of the public key)",
            },
            Keyword {
                name: "listen-port",
                value: Value::Number,
                help: "UDP port (default: 62096)",
            },
            Keyword {
                name: "mode",
                value: Value::Choice(&["unknown", "direct", "nat"]),
                help: "skip NAT detection: direct (public address) or nat",
            },
            Keyword {
                name: "backend",
                value: Value::Choice(&["auto", "embedded", "kernel", "userspace"]),
                help: "WireGuard data plane (default: auto)",
            },
            Keyword {
                name: "mtu",
                value: Value::Number,
                help: "MTU of the interface (default: 1420)",
            },
            Keyword {
                name: "cni-dir",
                value: Value::File,
                help: "where a router node writes its CNI configuration (default: /etc/cni/net.d)",
            },
            Keyword {
                name: "dns",
                value: Value::Choice(&["on", "off"]),
                help: "DNS responder for the network's names on the overlay IPv4 (default: on)",
            },
            Keyword {
                name: "dns-port",
                value: Value::Number,
                help: "port of the DNS responder (default: 53)",
            },
            Keyword {
                name: "hosts",
                value: Value::Choice(&["on", "off"]),
                help: "keep the network's names in a block of /etc/hosts (default: off)",
            },
            Keyword {
                name: "relay-limit",
                value: Value::Number,
                help: "Mbit/s this node relays for each source, 0: for nobody (default: 2000)",
            },
        ],
        flags: &[(
            "--foreground",
            "stay in the foreground and log to stderr (for systemd and containers)",
        )],
        details: "",
    },
    Command {
        name: "down",
        summary: "Stop a running interface and remove everything it made.",
        positionals: &[Positional {
            name: "INTERFACE",
            value: Value::Interface,
            required: true,
        }],
        keywords: &[],
        flags: &[],
        details: "Returns once the daemon has exited (its port, interface and routes are free): 'wh down I && wh up ...' works. Fails if it is still running after 10 s.",
    },
    Command {
        name: "reload",
        summary: "Re-read the network file of a running interface.",
        positionals: &[Positional {
            name: "INTERFACE",
            value: Value::Interface,
            required: true,
        }],
        keywords: &[],
        flags: &[],
        details: "A file with errors changes nothing; running tunnels of unchanged peers are kept.",
    },
    Command {
        name: "inspect",
        summary: "Print the whole state of an interface as JSON.",
        positionals: &[Positional {
            name: "INTERFACE",
            value: Value::Interface,
            required: true,
        }],
        keywords: &[],
        flags: &[],
        details: "",
    },
    Command {
        name: "lookup",
        summary: "Look a peer up in the DHT and print its record.",
        positionals: &[
            Positional {
                name: "INTERFACE",
                value: Value::Interface,
                required: true,
            },
            Positional {
                name: "PEER",
                value: Value::Peer,
                required: true,
            },
        ],
        keywords: &[],
        flags: &[],
        details: "",
    },
    Command {
        name: "ping",
        summary: "Ping a peer over the WireHub control protocol and print the round trip.",
        positionals: &[
            Positional {
                name: "INTERFACE",
                value: Value::Interface,
                required: true,
            },
            Positional {
                name: "PEER",
                value: Value::Peer,
                required: true,
            },
        ],
        keywords: &[],
        flags: &[],
        details: "",
    },
    Command {
        name: "forget",
        summary: "Forget what an interface knows of a peer (it is looked up again).",
        positionals: &[
            Positional {
                name: "INTERFACE",
                value: Value::Interface,
                required: true,
            },
            Positional {
                name: "PEER",
                value: Value::Peer,
                required: true,
            },
        ],
        keywords: &[],
        flags: &[],
        details: "",
    },
    Command {
        name: "resolve",
        summary: "Resolve a hostname of a running network to its overlay addresses, or an address to its name.",
        positionals: &[Positional {
            name: "NAME|IP",
            value: Value::Peer,
            required: true,
        }],
        keywords: &[],
        flags: &[],
        details: "",
    },
    Command {
        name: "nc",
        summary: "Zero-netcat: an encrypted peer-to-peer pipe from one invitation (also '0nc').",
        positionals: &[Positional {
            name: "INVITATION",
            value: Value::Text,
            required: false,
        }],
        keywords: &[],
        flags: &[],
        details: "Without INVITATION: listen, print an invitation alone on one line of stderr, and pipe stdin/stdout with the one peer that uses it.\nWith INVITATION: join that listener. '-' reads the invitation from the first line of stdin (the rest is sent), 'file PATH' from a file: unlike an argument, neither shows in ps. 'boot KEY HOST:PORT' (repeatable) replaces config/public's bootstrap nodes.\nExit codes: 0 the other side closed, 1 failure, 3 invitation damaged or refused (already used), 4 timeout.",
    },
    Command {
        name: "genkey",
        summary: "Print a new private key (standard base64, as wg genkey).",
        positionals: &[Positional {
            name: "CONFIG",
            value: Value::File,
            required: false,
        }],
        keywords: &[
            Keyword {
                name: "workbit",
                value: Value::Number,
                help: "search a key with at least N workbits",
            },
            NAMESPACE,
            Keyword {
                name: "threads",
                value: Value::Number,
                help: "search threads (default: every core)",
            },
        ],
        flags: &[],
        details: "With CONFIG, workbit and namespace come from the network file. A long search shows its progress on a terminal; Ctrl-C stops it.",
    },
    Command {
        name: "pubkey",
        summary: "Read a private key on stdin and print its public key (43 URL-safe base64 characters).",
        positionals: &[],
        keywords: &[],
        flags: &[],
        details: "",
    },
    Command {
        name: "workbit",
        summary: "Read a key on stdin and print its workbits (leading zero bits of BLAKE2b-256(key || namespace)).",
        positionals: &[],
        keywords: &[NAMESPACE],
        flags: &[],
        details: "The key is a private key (standard base64 with '=', as wh genkey prints) or a public key (43 URL-safe characters, as wh pubkey prints).",
    },
    Command {
        name: "orchid",
        summary: "Read a key on stdin and print the node's stable IPv6 overlay address.",
        positionals: &[Positional {
            name: "CONFIG",
            value: Value::File,
            required: false,
        }],
        keywords: &[Keyword {
            name: "namespace",
            value: Value::Text,
            help: "name of the network the address is for (default: public)",
        }],
        flags: &[],
        details: "The prefix is a ULA /64 derived from the network's name (or CONFIG's), the interface identifier from the key: see docs/addressing.md.\nThe key is read as for wh workbit.",
    },
    Command {
        name: "check",
        summary: "Validate a network file and print its nodes and their addresses.",
        positionals: &[Positional {
            name: "CONFIG",
            value: Value::File,
            required: true,
        }],
        keywords: &[],
        flags: &[("--json", "print the network as JSON")],
        details: "Every error of the file is printed with its line and column.",
    },
    Command {
        name: "agent",
        summary: "Run the Kubernetes node agent (the WireHub DaemonSet's process).",
        positionals: &[],
        keywords: &[
            Keyword {
                name: "node",
                value: Value::Text,
                help: "this node's name (default: $NODE_NAME)",
            },
            Keyword {
                name: "network",
                value: Value::Text,
                help: "the WireHubNetwork to run (default: $WH_NETWORK, else the only one)",
            },
            Keyword {
                name: "key-file",
                value: Value::File,
                help: "the node's private key, made on first start (default: $WH_KEY_FILE, else /var/lib/wirehub/private.key)",
            },
            Keyword {
                name: "metrics-address",
                value: Value::Text,
                help: "where /healthz, /readyz and /metrics listen (default: $WH_METRICS_ADDRESS, else 0.0.0.0:9796)",
            },
            Keyword {
                name: "cni-dir",
                value: Value::File,
                help: "where the node writes its CNI configuration, or none (default: $WH_CNI_DIR, else /etc/cni/net.d)",
            },
            Keyword {
                name: "mtu",
                value: Value::Number,
                help: "MTU of the overlay interface (default: $WH_MTU, else 1420)",
            },
            Keyword {
                name: "backend",
                value: Value::Choice(&["auto", "embedded", "kernel", "userspace"]),
                help: "WireGuard data plane (default: $WH_BACKEND, else auto)",
            },
            Keyword {
                name: "mode",
                value: Value::Choice(&["unknown", "direct", "nat"]),
                help: "skip NAT detection (default: $WH_MODE, else detect)",
            },
            Keyword {
                name: "relay-limit",
                value: Value::Number,
                help: "Mbit/s the node relays for each source, 0: for nobody (default: $WH_RELAY_LIMIT, else 2000)",
            },
        ],
        flags: &[],
        details: "Needs in-cluster credentials (or $KUBECONFIG). The Lease used to elect the agent that allocates lives in $POD_NAMESPACE (default kube-system). See docs/kubernetes.md.",
    },
    Command {
        name: "crd",
        summary: "Print the WireHubNetwork and WireHubNode CustomResourceDefinitions (YAML), generated from the Rust types.",
        positionals: &[],
        keywords: &[],
        flags: &[],
        details: "crds/wirehub.yaml and the chart's copy are this command's output: wh crd > crds/wirehub.yaml",
    },
    Command {
        name: "network",
        summary: "Print a WireHubNetwork as a network file (for hosts outside the cluster), or a network file as a WireHubNetwork.",
        positionals: &[Positional {
            name: "SOURCE",
            value: Value::File,
            required: false,
        }],
        keywords: &[Keyword {
            name: "cluster",
            value: Value::Text,
            help: "read the WireHubNetwork NAME and the WireHubNodes from the cluster ($KUBECONFIG) instead of SOURCE",
        }],
        flags: &[],
        details: "SOURCE is a file or - (stdin): a resource with its WireHubNodes (YAML or JSON, as kubectl get -o yaml prints them) prints as the network file its nodes run; a network file prints as a resource.\nkubectl get wirehubnetworks,wirehubnodes -o yaml | wh network -",
    },
    Command {
        name: "completion",
        summary: "Print a shell completion script.",
        positionals: &[Positional {
            name: "SHELL",
            value: Value::Choice(&["bash", "zsh", "fish"]),
            required: true,
        }],
        keywords: &[],
        flags: &[],
        details: "bash: source <(wh completion bash)\nzsh:  source <(wh completion zsh)\nfish: wh completion fish | source",
    },
    Command {
        name: "help",
        summary: "Print help about wh or one of its commands.",
        positionals: &[Positional {
            name: "COMMAND",
            value: Value::Choice(&[]),
            required: false,
        }],
        keywords: &[],
        flags: &[],
        details: "",
    },
    Command {
        name: "version",
        summary: "Print the version of wh.",
        positionals: &[],
        keywords: &[],
        flags: &[],
        details: "",
    },
];

/// Finds a command by name.
pub fn command(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// The arguments of one command line, once checked against its command.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub positionals: Vec<String>,
    pub keywords: HashMap<&'static str, String>,
    pub flags: Vec<&'static str>,
}

impl Args {
    pub fn get(&self, keyword: &str) -> Option<&str> {
        self.keywords.get(keyword).map(String::as_str)
    }

    pub fn flag(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    /// A keyword's value as a number, with a usage error naming it.
    pub fn number<T: std::str::FromStr>(&self, keyword: &str) -> Result<Option<T>, Usage> {
        self.get(keyword)
            .map(|v| {
                v.parse().map_err(|_| Usage {
                    command: None,
                    message: format!("'{keyword}' takes a number, not '{v}'"),
                })
            })
            .transpose()
    }

    pub fn positional(&self, i: usize) -> Option<&str> {
        self.positionals.get(i).map(String::as_str)
    }
}

/// A usage error: the message and the command whose help to point at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub command: Option<&'static str>,
    pub message: String,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.command {
            Some(c) => write!(f, "{}; see 'wh help {c}'", self.message),
            None => write!(f, "{}; see 'wh help'", self.message),
        }
    }
}

/// Checks the words after the command name against the command's table.
pub fn parse_args(cmd: &'static Command, words: &[String]) -> Result<Args, Usage> {
    let usage = |message: String| Usage {
        command: Some(cmd.name),
        message,
    };
    let mut args = Args::default();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        if let Some(k) = cmd.keywords.iter().find(|k| k.name == w) {
            let Some(v) = words.get(i + 1) else {
                return Err(usage(format!(
                    "'{w}' needs a value: {w} {}",
                    value_name(k.value, k.name)
                )));
            };
            if let Value::Choice(choices) = k.value
                && !choices.contains(&v.as_str())
            {
                return Err(usage(format!(
                    "'{w}' is one of {}, not '{v}'",
                    choices.join(", ")
                )));
            }
            if args.keywords.insert(k.name, v.clone()).is_some() {
                return Err(usage(format!("'{w}' is given twice")));
            }
            i += 2;
            continue;
        }
        if let Some((f, _)) = cmd.flags.iter().find(|(f, _)| *f == w) {
            args.flags.push(f);
        } else if w.starts_with("--") && w.len() > 2 {
            return Err(usage(format!("unknown option '{w}'")));
        } else if args.positionals.len() < cmd.positionals.len() {
            args.positionals.push(w.to_string());
        } else {
            let known: Vec<&str> = cmd.keywords.iter().map(|k| k.name).collect();
            return Err(usage(if known.is_empty() {
                format!("unexpected argument '{w}'")
            } else {
                format!("unexpected argument '{w}' (keywords: {})", known.join(", "))
            }));
        }
        i += 1;
    }
    if let Some(missing) = cmd
        .positionals
        .iter()
        .skip(args.positionals.len())
        .find(|p| p.required)
    {
        return Err(usage(format!("missing {}", missing.name)));
    }
    Ok(args)
}

/// The general help page.
pub fn general_help() -> String {
    let mut s = String::from(
        "wh: WireHub builds decentralized, peer-to-peer and secure overlay networks on WireGuard.\n\nUsage: wh [COMMAND] [ARGS...]\n\nCommands:\n",
    );
    for c in COMMANDS {
        s += &format!("  {:<11} {}\n", c.name, c.summary);
    }
    s += "\n'wh help COMMAND' tells more about a command. Without a command, wh shows the running interfaces.\n";
    s
}

/// Writes `text` to standard output at once. A closed standard output (the
/// reader stopped early: `| head`, `| grep -q`) is [`Failure::StdoutClosed`],
/// which [`main`] turns into a quiet exit with status 0; any other write
/// error is a runtime failure.
pub fn out(text: impl fmt::Display) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(stdout_failure)
}

/// How a failed write to standard output ends a command (see [`out`]).
pub fn stdout_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Failure::StdoutClosed
    } else {
        Failure::Runtime(anyhow::Error::new(e).context("cannot write to standard output"))
    }
}

/// An error and its causes on one line, each separated by ': ', leaving out
/// a cause whose text its effect already quotes (many errors print their
/// source: `cannot create TUN device wh0: Operation not permitted`).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line += ": ";
        }
        line += &text;
    }
    line
}

/// Runs `wh` with the given arguments (without the program name) and returns
/// the process exit code.
pub fn main(argv: Vec<String>) -> i32 {
    match commands::dispatch(&argv) {
        Ok(code) => code,
        // The reader has what it wanted: not a failure, and nothing to say.
        Err(Failure::StdoutClosed) => 0,
        Err(commands::Failure::Usage(u)) => {
            eprintln!("wh: {u}");
            2
        }
        Err(commands::Failure::Runtime(e)) => {
            eprintln!("wh: {}", one_line(&e));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn keyword_style_parses() {
        let up = command("up").unwrap();
        let a = parse_args(up, &words("./config private-key ./node.sk interface wh0 listen-port 62096 mode nat --foreground")).unwrap();
        assert_eq!(a.positional(0), Some("./config"));
        assert_eq!(a.get("private-key"), Some("./node.sk"));
        assert_eq!(a.get("interface"), Some("wh0"));
        assert_eq!(a.number::<u16>("listen-port").unwrap(), Some(62096));
        assert_eq!(a.get("mode"), Some("nat"));
        assert!(a.flag("--foreground"));
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        let up = command("up").unwrap();
        let e = parse_args(up, &words("")).unwrap_err();
        assert!(e.message.contains("missing CONFIG"), "{e}");
        let e = parse_args(up, &words("c mode sideways")).unwrap_err();
        assert!(e.message.contains("unknown, direct, nat"), "{e}");
        let e = parse_args(up, &words("c private-key")).unwrap_err();
        assert!(e.message.contains("needs a value"), "{e}");
        let e = parse_args(up, &words("c extra")).unwrap_err();
        assert!(e.message.contains("unexpected argument 'extra'"), "{e}");
        let e = parse_args(up, &words("c mtu 1 mtu 2")).unwrap_err();
        assert!(e.message.contains("twice"), "{e}");
        let e = parse_args(up, &words("c --fast")).unwrap_err();
        assert!(e.message.contains("unknown option"), "{e}");
        assert!(e.to_string().ends_with("see 'wh help up'"));
        let a = parse_args(up, &words("c listen-port x")).unwrap();
        assert!(a.number::<u16>("listen-port").is_err());
    }

    #[test]
    fn a_closed_stdout_ends_the_command_and_other_write_errors_fail_it() {
        let closed = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(matches!(stdout_failure(closed), Failure::StdoutClosed));
        let full = std::io::Error::from_raw_os_error(28);
        match stdout_failure(full) {
            Failure::Runtime(e) => assert!(
                one_line(&e).starts_with("cannot write to standard output: No space left"),
                "{e:#}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_error_prints_on_one_line_without_repeating_a_quoted_cause() {
        let io = std::io::Error::from_raw_os_error(1);
        let e = anyhow::Error::new(io)
            .context("cannot create TUN device wh0: Operation not permitted (os error 1)")
            .context("cannot create interface wh0");
        assert_eq!(
            one_line(&e),
            "cannot create interface wh0: cannot create TUN device wh0: Operation not permitted (os error 1)"
        );
    }

    #[test]
    fn every_command_has_help_with_its_synopsis() {
        for c in COMMANDS {
            let h = c.help();
            assert!(h.contains(&format!("wh {}", c.name)), "{h}");
        }
        assert_eq!(
            command("workbit").unwrap().synopsis(),
            "wh workbit [namespace NAMESPACE]"
        );
    }
}
