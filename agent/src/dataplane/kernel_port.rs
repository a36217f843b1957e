//! One public UDP port for kernel WireGuard and the daemon: two stateless
//! nftables rules in a table of our own.
//!
//! Kernel WireGuard binds the node's public port `P`; the daemon's socket
//! binds a private port `Q`. In the namespace of the interface:
//!
//! ```text
//!   prerouting (raw):  udp dport P, first payload byte >= 0xFC  ->  notrack, dport := Q
//!   output     (raw):  udp sport Q                              ->  notrack, sport := P
//! ```
//!
//! WireHub's own datagrams (sealed control `0xFF`, relay-data `0xFE`,
//! relayed-data `0xFD`, challenges `0xFC`) reach the daemon and leave from `P`, so NAT mappings
//! and hole punching stay shared with WireGuard; WireGuard's datagrams
//! (first byte 1..=4) never leave the kernel. The port rewrite is stateless
//! (no conntrack entry, no NAT table): the kernel fixes the UDP checksum.
//!
//! Owns: the table `inet wirehub-<interface>` (replaced whole when
//! installed, deleted by [`PortShare::remove`]). Never touches another
//! table. Programs nftables through the `nft` program (package `nftables`),
//! run in the namespace of the calling thread; where it is missing or the
//! kernel has no nf_tables, [`available`] says so and the kernel backend
//! falls back to loopback proxies.

use super::netns::Netns;
use std::io::{self, Write};
use std::process::{Command, Stdio};

/// The first payload byte from which a datagram on the public port is
/// WireHub's (`0xFC` challenge, `0xFD` relayed-data, `0xFE` relay-data,
/// `0xFF` sealed): the lowest of them, the challenge.
pub const FIRST_WIREHUB_BYTE: u8 = crate::proto::CHALLENGE;
const _: () = assert!(FIRST_WIREHUB_BYTE <= 0xFD && FIRST_WIREHUB_BYTE > 4);

/// The nftables table of an interface.
pub fn table_name(iface: &str) -> String {
    format!("wirehub-{iface}")
}

/// The whole ruleset for `iface`: replaces the table if it exists (a
/// previous daemon's), atomically.
pub fn ruleset(iface: &str, public: u16, private: u16) -> String {
    let t = table_name(iface);
    format!(
        "table inet {t} {{}}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tchain wirehub-in {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tudp dport {public} @th,64,8 >= {FIRST_WIREHUB_BYTE:#04x} notrack udp dport set {private}\n\
         \t}}\n\
         \tchain wirehub-out {{\n\
         \t\ttype filter hook output priority raw; policy accept;\n\
         \t\tudp sport {private} notrack udp sport set {public}\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft -f -` with `script` in the calling thread's namespace.
fn nft(script: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(io::Error::other(format!(
        "nft failed ({}): {}",
        out.status,
        err.trim()
    )))
}

/// Whether nftables can hold our rules here: loads and deletes a throwaway
/// table with the same kind of rules.
pub fn available() -> bool {
    let iface = format!("probe{}", std::process::id());
    let mut script = ruleset(&iface, 1, 2);
    script += &format!("delete table inet {}\n", table_name(&iface));
    match nft(&script) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!("nftables cannot share WireGuard's port: {e}");
            false
        }
    }
}

/// The installed rules of one interface.
#[derive(Debug)]
pub struct PortShare {
    iface: String,
    public: u16,
    private: u16,
    removed: bool,
}

impl PortShare {
    /// Installs the rules in `netns`: WireHub's datagrams to `public` go to
    /// `private`, and what the daemon sends from `private` leaves from
    /// `public`.
    pub fn install(netns: &Netns, iface: &str, public: u16, private: u16) -> io::Result<Self> {
        if !iface
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "interface name {iface:?}: only letters, digits, '-', '_' and '.' can name an nftables table"
                ),
            ));
        }
        let script = ruleset(iface, public, private);
        netns.run(|| nft(&script))??;
        tracing::info!(iface, public, private, "nftables shares the public port");
        Ok(PortShare {
            iface: iface.to_string(),
            public,
            private,
            removed: false,
        })
    }

    /// The port WireGuard listens on.
    pub fn public_port(&self) -> u16 {
        self.public
    }

    /// The daemon's own port.
    pub fn private_port(&self) -> u16 {
        self.private
    }

    /// Deletes the table (once; a table already gone is fine).
    pub fn remove(&mut self, netns: &Netns) {
        if self.removed {
            return;
        }
        self.removed = true;
        let t = table_name(&self.iface);
        let script = format!("table inet {t} {{}}\ndelete table inet {t}\n");
        match netns.run(|| nft(&script)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) | Err(e) => tracing::warn!(iface = self.iface, "removing {t}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_redirects_only_wirehub_datagrams_and_replaces_an_old_table() {
        let r = ruleset("wh-abc", 62096, 40000);
        assert!(r.starts_with("table inet wirehub-wh-abc {}\ndelete table inet wirehub-wh-abc\n"));
        assert!(r.contains("udp dport 62096 @th,64,8 >= 0xfc notrack udp dport set 40000"));
        assert!(r.contains("udp sport 40000 notrack udp sport set 62096"));
        assert_eq!(r.matches("priority raw").count(), 2);
    }

    /// Runs `f` on a thread in a new, empty network namespace (gone with
    /// the thread) with `lo` up; `None` where that is not allowed.
    fn in_fresh_netns<R: Send>(f: impl FnOnce() -> R + Send) -> Option<R> {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare affects this thread only.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                let up = Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status();
                up.is_ok_and(|s| s.success()).then(f)
            })
            .join()
            // A failed assertion in `f` fails the test.
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn udp(addr: std::net::IpAddr, port: u16) -> std::net::UdpSocket {
        let s = std::net::UdpSocket::bind((addr, port)).expect("bind");
        s.set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .expect("timeout");
        s
    }

    /// Which of `sockets` receives the next datagram (by index).
    fn receiver(sockets: &[&std::net::UdpSocket]) -> Option<usize> {
        let mut buf = [0u8; 64];
        sockets.iter().position(|s| s.recv_from(&mut buf).is_ok())
    }

    #[test]
    fn wirehub_datagrams_reach_the_daemon_and_leave_from_the_public_port() {
        let nft_here = Command::new("nft").arg("--version").output().is_ok();
        let ran = nft_here.then(|| {
            in_fresh_netns(|| {
                let netns = Netns::current().expect("netns");
                let mut share =
                    PortShare::install(&netns, "wh-test", 62096, 40000).expect("install the rules");
                for lo in [
                    std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
                    std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                ] {
                    // A stand-in for WireGuard on the public port, the daemon on
                    // the private one, and a peer.
                    let (wg, daemon, peer) = (udp(lo, 62096), udp(lo, 40000), udp(lo, 0));
                    for (first, want) in
                        [(0xFF, 1), (0xFE, 1), (0xFD, 1), (0xFC, 1), (4, 0), (1, 0)]
                    {
                        peer.send_to(&[first, 0, 0, 0, 9, 9, 9, 9], (lo, 62096))
                            .expect("send");
                        assert_eq!(
                            receiver(&[&wg, &daemon]),
                            Some(want),
                            "{lo}: first byte {first:#x}"
                        );
                    }
                    daemon
                        .send_to(&[0xFF, 1, 2, 3], peer.local_addr().expect("addr"))
                        .expect("send");
                    let mut buf = [0u8; 16];
                    let (_, from) = peer.recv_from(&mut buf).expect("the daemon's reply");
                    assert_eq!(
                        from.port(),
                        62096,
                        "{lo}: the daemon's datagram leaves from"
                    );
                }
                share.remove(&netns);
                let peer = udp(std::net::Ipv4Addr::LOCALHOST.into(), 0);
                let daemon = udp(std::net::Ipv4Addr::LOCALHOST.into(), 40000);
                peer.send_to(&[0xFF, 0, 0, 0], ("127.0.0.1", 62096))
                    .expect("send");
                assert_eq!(receiver(&[&daemon]), None, "rules left after remove");
            })
        });
        if ran.flatten().is_none() {
            eprintln!("skipped: needs root and nftables (nft) to make a namespace and load rules");
        }
    }
}
