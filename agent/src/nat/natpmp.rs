//! NAT-PMP (RFC 6886): the other way a home router may map the node's UDP
//! port, tried when no UPnP IGD answers. [`codec`] encodes requests and
//! parses answers (no I/O); [`map`], [`unmap`] and [`default_gateway`] talk
//! to the router.
//!
//! Requests go to the default gateway's port 5351 from a connected UDP
//! socket (so an ICMP "port unreachable" ends the attempt at once), and are
//! retransmitted after 250 ms, doubling, [`TRIES`] times in all.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::net::UdpSocket;

/// The port a NAT-PMP server listens on.
pub const SERVER_PORT: u16 = 5351;
/// Sends of one request before giving up (250 ms, doubling: 3.75 s in all).
pub const TRIES: u32 = 4;
const FIRST_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NatPmpError {
    #[error("answer of {0} bytes is too short")]
    Short(usize),
    #[error("answer has version {0}, not 0")]
    Version(u8),
    #[error("answer has opcode {got}, expected {expected}")]
    Opcode { got: u8, expected: u8 },
    #[error("the gateway refused: {0}")]
    Refused(ResultCode),
    #[error("no answer from the gateway")]
    NoAnswer,
    #[error("no default IPv4 gateway")]
    NoGateway,
    #[error("{0}")]
    Io(String),
}

/// A non-zero result code of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultCode(pub u16);

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.0 {
            1 => "unsupported version",
            2 => "not authorized / refused",
            3 => "network failure",
            4 => "out of resources",
            5 => "unsupported opcode",
            _ => "unknown result code",
        };
        write!(f, "{what} ({})", self.0)
    }
}

/// Encoding and parsing, free of I/O.
pub mod codec {
    use super::{NatPmpError, ResultCode};
    use std::net::Ipv4Addr;

    pub const OP_EXTERNAL_ADDRESS: u8 = 0;
    pub const OP_MAP_UDP: u8 = 1;
    /// Answers carry the request's opcode plus 128.
    pub const ANSWER: u8 = 128;

    /// "What is your external address?"
    pub fn external_address_request() -> [u8; 2] {
        [0, OP_EXTERNAL_ADDRESS]
    }

    /// "Map UDP `internal` (on the sender's address), preferably to
    /// `external`, for `lifetime` seconds" (0: remove the mapping).
    pub fn map_udp_request(internal: u16, external: u16, lifetime: u32) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[1] = OP_MAP_UDP;
        b[4..6].copy_from_slice(&internal.to_be_bytes());
        b[6..8].copy_from_slice(&external.to_be_bytes());
        b[8..12].copy_from_slice(&lifetime.to_be_bytes());
        b
    }

    fn header(bytes: &[u8], len: usize, op: u8) -> Result<(), NatPmpError> {
        if bytes.len() < len {
            return Err(NatPmpError::Short(bytes.len()));
        }
        if bytes[0] != 0 {
            return Err(NatPmpError::Version(bytes[0]));
        }
        if bytes[1] != ANSWER + op {
            return Err(NatPmpError::Opcode {
                got: bytes[1],
                expected: ANSWER + op,
            });
        }
        let code = u16::from_be_bytes([bytes[2], bytes[3]]);
        if code != 0 {
            return Err(NatPmpError::Refused(ResultCode(code)));
        }
        Ok(())
    }

    /// The external address in an answer to [`external_address_request`].
    pub fn parse_external_address(bytes: &[u8]) -> Result<Ipv4Addr, NatPmpError> {
        header(bytes, 12, OP_EXTERNAL_ADDRESS)?;
        Ok(Ipv4Addr::new(bytes[8], bytes[9], bytes[10], bytes[11]))
    }

    /// A mapping the gateway granted.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Mapping {
        pub internal: u16,
        pub external: u16,
        pub lifetime: u32,
    }

    /// The mapping in an answer to [`map_udp_request`].
    pub fn parse_map_udp(bytes: &[u8]) -> Result<Mapping, NatPmpError> {
        header(bytes, 16, OP_MAP_UDP)?;
        Ok(Mapping {
            internal: u16::from_be_bytes([bytes[8], bytes[9]]),
            external: u16::from_be_bytes([bytes[10], bytes[11]]),
            lifetime: u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        })
    }
}

/// The default IPv4 gateway, from `/proc/net/route`.
pub fn default_gateway() -> Result<Ipv4Addr, NatPmpError> {
    let table = std::fs::read_to_string("/proc/net/route")
        .map_err(|e| NatPmpError::Io(format!("cannot read /proc/net/route: {e}")))?;
    gateway_in_route_table(&table).ok_or(NatPmpError::NoGateway)
}

/// The gateway of the default route in the text of `/proc/net/route`
/// (addresses in hexadecimal, host byte order).
fn gateway_in_route_table(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[1] != "00000000" {
            return None;
        }
        let gw = u32::from_str_radix(f[2], 16).ok()?;
        (gw != 0).then(|| Ipv4Addr::from(gw.to_le_bytes()))
    })
}

/// Sends `request` to the gateway until an answer `parse` accepts comes
/// (answers it rejects as malformed are skipped; a refusal ends it).
async fn exchange<T>(
    gateway: Ipv4Addr,
    request: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, NatPmpError>,
) -> Result<T, NatPmpError> {
    let io = |e: std::io::Error| NatPmpError::Io(e.to_string());
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(io)?;
    socket
        .connect(SocketAddrV4::new(gateway, SERVER_PORT))
        .await
        .map_err(io)?;
    let mut wait = FIRST_WAIT;
    let mut buf = [0u8; 64];
    for _ in 0..TRIES {
        socket.send(request).await.map_err(io)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(io(e)),
                Ok(Ok(n)) => match parse(&buf[..n]) {
                    Ok(v) => return Ok(v),
                    Err(e @ NatPmpError::Refused(_)) => return Err(e),
                    Err(e) => tracing::debug!(error = %e, "ignored a NAT-PMP answer"),
                },
            }
        }
        wait *= 2;
    }
    Err(NatPmpError::NoAnswer)
}

/// Maps UDP `port` on the gateway for `lifetime`; returns the external
/// endpoint and the lifetime granted.
pub async fn map(
    gateway: Ipv4Addr,
    port: u16,
    lifetime: Duration,
) -> Result<(SocketAddr, Duration), NatPmpError> {
    let ip = exchange(
        gateway,
        &codec::external_address_request(),
        codec::parse_external_address,
    )
    .await?;
    let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
    let m = exchange(
        gateway,
        &codec::map_udp_request(port, port, secs),
        codec::parse_map_udp,
    )
    .await?;
    Ok((
        SocketAddr::from((ip, m.external)),
        Duration::from_secs(u64::from(m.lifetime)),
    ))
}

/// Removes the mapping of UDP `port`.
pub async fn unmap(gateway: Ipv4Addr, port: u16) -> Result<(), NatPmpError> {
    exchange(
        gateway,
        &codec::map_udp_request(port, 0, 0),
        codec::parse_map_udp,
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::codec::*;
    use super::*;

    #[test]
    fn requests_are_laid_out_as_rfc_6886_says() {
        assert_eq!(external_address_request(), [0, 0]);
        assert_eq!(
            map_udp_request(62096, 62096, 600),
            [0, 1, 0, 0, 0xF2, 0x90, 0xF2, 0x90, 0, 0, 0x02, 0x58]
        );
        assert_eq!(map_udp_request(62096, 0, 0)[6..], [0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn answers_parse_and_errors_name_what_is_wrong() {
        let ext = [0, 128, 0, 0, 0, 0, 0, 9, 198, 51, 101, 11];
        assert_eq!(
            parse_external_address(&ext),
            Ok(Ipv4Addr::new(198, 51, 101, 11))
        );
        let map = [
            0, 129, 0, 0, 0, 0, 0, 9, 0xF2, 0x90, 0x9C, 0x40, 0, 0, 0x0E, 0x10,
        ];
        assert_eq!(
            parse_map_udp(&map),
            Ok(Mapping {
                internal: 62096,
                external: 40000,
                lifetime: 3600
            })
        );
        assert_eq!(parse_map_udp(&map[..15]), Err(NatPmpError::Short(15)));
        assert_eq!(parse_map_udp(&ext), Err(NatPmpError::Short(12)));
        let mut v1 = map;
        v1[0] = 1;
        assert_eq!(parse_map_udp(&v1), Err(NatPmpError::Version(1)));
        assert_eq!(
            parse_external_address(&map[..12]),
            Err(NatPmpError::Opcode {
                got: 129,
                expected: 128
            })
        );
        let mut refused = map;
        refused[3] = 2;
        let e = parse_map_udp(&refused).unwrap_err();
        assert_eq!(e, NatPmpError::Refused(ResultCode(2)));
        assert!(e.to_string().contains("refused"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_answers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_external_address(&bytes);
            let _ = parse_map_udp(&bytes);
        }

        #[test]
        fn arbitrary_route_tables_never_panic(text in "\\PC{0,300}") {
            let _ = gateway_in_route_table(&text);
        }
    }

    #[test]
    fn the_default_gateway_comes_from_the_route_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t116433C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth0\t106433C6\t00000000\t0001\t0\t0\t0\tF0FFFFFF\t0\t0\t0\n";
        assert_eq!(
            gateway_in_route_table(table),
            Some(Ipv4Addr::new(198, 51, 100, 17))
        );
        let no_default = "Iface\tDestination\tGateway\n eth0\t106433C6\t00000000\t0001\n";
        assert_eq!(gateway_in_route_table(no_default), None);
        assert_eq!(gateway_in_route_table(""), None);
    }
}
