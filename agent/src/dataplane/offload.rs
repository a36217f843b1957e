//! TUN offloads: the `virtio_net_hdr` in front of every packet when the TUN
//! device is opened with `IFF_VNET_HDR`, checksum completion, and TCP
//! segmentation of the large (TSO) packets the kernel then hands us.
//!
//! With TSO the kernel's TCP stack sends one packet of up to 64 KiB instead
//! of ~45 MTU-sized ones; we cut it into MTU-sized segments here, which is
//! much cheaper than the kernel doing the same work per packet, either
//! into a copy or inside the packet's own buffer (no copy of the payload).
//! Pure functions on caller-owned buffers, no I/O.
//!
//! Also the ICMP "fragmentation needed" / ICMPv6 "packet too big" the data
//! plane writes back into the TUN device for a TCP packet larger than the
//! path to its peer carries ([`too_big`]), so that TCP's path MTU discovery
//! lowers its segment size.

/// Size of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;

pub const F_NEEDS_CSUM: u8 = 1;
pub const F_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_ECN: u8 = 0x80;

const TCP: u8 = 6;

/// `struct virtio_net_hdr` (little-endian fields: x86, arm and the TUN
/// default on little-endian hosts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Ones' complement sum of `data` (big-endian 16-bit words) added to `acc`,
/// not folded.
#[inline]
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc = acc.wrapping_add(w >> 32).wrapping_add(w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = rest.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data` starting from `acc`.
#[inline]
pub fn checksum(data: &[u8], acc: u64) -> u16 {
    !fold(sum(data, acc))
}

/// Completes a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the
/// 16-bit field at `start + offset` holds the pseudo-header sum; the sum
/// over `start..` replaces it. Returns false when the offsets are outside
/// the packet.
pub fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start + offset;
    if start > pkt.len() || field + 2 > pkt.len() {
        return false;
    }
    let c = checksum(&pkt[start..], 0);
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

fn pseudo_header_sum(pkt: &[u8], v6: bool, tcp_len: usize) -> u64 {
    if v6 {
        sum(&pkt[8..40], u64::from(TCP) + tcp_len as u64)
    } else {
        sum(&pkt[12..20], u64::from(TCP) + tcp_len as u64)
    }
}

/// Bytes of the offending packet an ICMP error quotes: its IP header and
/// the first 8 bytes after it (TCP ports and sequence number: what the
/// receiving stack matches the error with).
const QUOTE_AFTER_HEADER: usize = 8;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
/// IPv6's minimum MTU: no "packet too big" may say less.
pub const IPV6_MIN_MTU: usize = 1280;
/// Largest [`too_big`] answer: IPv4 with options (60 + 8 + 60 + 8).
pub const TOO_BIG_MAX: usize = 136;

/// Writes into `out` (at least [`TOO_BIG_MAX`] bytes) the ICMP error that
/// tells the sender of `pkt` — a TCP packet, or the first of a TSO batch —
/// that the path carries at most `mtu` bytes: "fragmentation needed"
/// (type 3, code 4) for IPv4 with DF, "packet too big" (type 2) for IPv6,
/// from `pkt`'s destination to its source, checksums done. Returns its
/// length, or `None` when no such answer is due: not TCP (others get their
/// packets fragmented instead), IPv4 without DF, IPv6 with extension
/// headers or `mtu` below 1280, IPv4 `mtu` below 68, a truncated packet.
pub fn too_big(pkt: &[u8], mtu: usize, out: &mut [u8]) -> Option<usize> {
    match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let df = pkt.get(6)? & 0x40 != 0;
            if ihl < 20 || !df || pkt[9] != TCP || mtu < 68 {
                return None;
            }
            let quote = pkt.get(..ihl + QUOTE_AFTER_HEADER)?;
            let len = 20 + 8 + quote.len();
            let out = out.get_mut(..len)?;
            out.fill(0);
            out[0] = 0x45;
            out[1] = 0xc0; // precedence: internetwork control, as routers send
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            out[8] = 64;
            out[9] = ICMP;
            out[12..16].copy_from_slice(&pkt[16..20]);
            out[16..20].copy_from_slice(&pkt[12..16]);
            let c = checksum(&out[..20], 0);
            out[10..12].copy_from_slice(&c.to_be_bytes());
            out[20] = 3;
            out[21] = 4;
            out[26..28].copy_from_slice(&(mtu.min(0xffff) as u16).to_be_bytes());
            out[28..].copy_from_slice(quote);
            let c = checksum(&out[20..], 0);
            out[22..24].copy_from_slice(&c.to_be_bytes());
            Some(len)
        }
        6 => {
            if *pkt.get(6)? != TCP || mtu < IPV6_MIN_MTU {
                return None;
            }
            let quote = pkt.get(..40 + QUOTE_AFTER_HEADER)?;
            let body = 8 + quote.len();
            let len = 40 + body;
            let out = out.get_mut(..len)?;
            out.fill(0);
            out[0] = 0x60;
            out[4..6].copy_from_slice(&(body as u16).to_be_bytes());
            out[6] = ICMPV6;
            out[7] = 64;
            out[8..24].copy_from_slice(&pkt[24..40]);
            out[24..40].copy_from_slice(&pkt[8..24]);
            out[40] = 2;
            out[44..48].copy_from_slice(&(mtu.min(u32::MAX as usize) as u32).to_be_bytes());
            out[48..].copy_from_slice(quote);
            let pseudo = sum(&out[8..40], u64::from(ICMPV6) + body as u64);
            let c = checksum(&out[40..], pseudo);
            out[42..44].copy_from_slice(&c.to_be_bytes());
            Some(len)
        }
        _ => None,
    }
}

/// Largest IP and TCP headers a [`TcpSegmenter`] accepts: IPv4 with
/// options (60) and TCP with options (60).
pub const MAX_TCP_HEADERS: usize = 120;

/// A large TCP packet to cut into `gso_size` segments.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegmenter {
    v6: bool,
    ip_hlen: usize,
    hlen: usize,
    gso_size: usize,
    payload_len: usize,
}

impl TcpSegmenter {
    /// Checks the packet: IPv4 or IPv6 (no extension headers) carrying TCP.
    pub fn new(pkt: &[u8], gso_size: usize) -> Option<TcpSegmenter> {
        let first = *pkt.first()?;
        let (v6, ip_hlen) = match first >> 4 {
            4 => {
                let ihl = usize::from(first & 0x0f) * 4;
                if ihl < 20 || pkt.len() < ihl || pkt[9] != TCP {
                    return None;
                }
                (false, ihl)
            }
            6 => {
                if pkt.len() < 40 || pkt[6] != TCP {
                    return None;
                }
                (true, 40)
            }
            _ => return None,
        };
        let doff = usize::from(*pkt.get(ip_hlen + 12)? >> 4) * 4;
        let hlen = ip_hlen + doff;
        if doff < 20 || pkt.len() < hlen || gso_size == 0 {
            return None;
        }
        Some(TcpSegmenter {
            v6,
            ip_hlen,
            hlen,
            gso_size,
            payload_len: pkt.len() - hlen,
        })
    }

    /// How many segments.
    pub fn count(&self) -> usize {
        self.payload_len.div_ceil(self.gso_size).max(1)
    }

    /// Largest segment.
    pub fn max_segment_len(&self) -> usize {
        self.hlen + self.gso_size.min(self.payload_len)
    }

    /// Bytes of IP and TCP headers in front of every segment: at most
    /// [`MAX_TCP_HEADERS`].
    pub fn header_len(&self) -> usize {
        self.hlen
    }

    /// Writes segment `i` of `pkt` into `out` with its headers and
    /// checksums fixed; returns its length. `out` must hold
    /// [`max_segment_len`](Self::max_segment_len) bytes.
    pub fn segment(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> usize {
        let hlen = self.hlen;
        let (off, len) = self.payload_range(i);
        let total = hlen + len;
        out[..hlen].copy_from_slice(&pkt[..hlen]);
        out[hlen..total].copy_from_slice(&pkt[hlen + off..hlen + off + len]);
        self.fix_headers(&pkt[..hlen], i, &mut out[..total]);
        total
    }

    /// Makes segment `i` inside `pkt` itself, without copying its payload:
    /// the headers go into the `header_len()` bytes just in front of the
    /// segment's payload, which held the end of segment `i - 1` (segment 0's
    /// are where they were). Returns where segment `i` now lies in `pkt`.
    ///
    /// `headers` are the packet's original headers (its first
    /// [`header_len`](Self::header_len) bytes, saved before segment 0).
    /// Call for `i = 0, 1, ...` in order, each once the previous segment is
    /// no longer needed: it is overwritten. Same bytes as [`segment`](Self::segment).
    pub fn segment_in_place(
        &self,
        pkt: &mut [u8],
        headers: &[u8],
        i: usize,
    ) -> std::ops::Range<usize> {
        let hlen = self.hlen;
        let (off, len) = self.payload_range(i);
        let seg = &mut pkt[off..off + hlen + len];
        seg[..hlen].copy_from_slice(&headers[..hlen]);
        self.fix_headers(&headers[..hlen], i, seg);
        off..off + hlen + len
    }

    /// Where segment `i`'s payload starts (after the headers) and its length.
    fn payload_range(&self, i: usize) -> (usize, usize) {
        let off = i * self.gso_size;
        (off, self.gso_size.min(self.payload_len.saturating_sub(off)))
    }

    /// Sets the lengths, IPv4 ID, sequence number, flags and checksums of
    /// segment `i` (`seg`: the original headers, then its payload).
    fn fix_headers(&self, orig: &[u8], i: usize, seg: &mut [u8]) {
        let ip_hlen = self.ip_hlen;
        let total = seg.len();
        let off = i * self.gso_size;
        let last = i + 1 >= self.count();
        if self.v6 {
            let plen = (total - 40) as u16;
            seg[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let id = u16::from_be_bytes([orig[4], orig[5]]).wrapping_add(i as u16);
            seg[4..6].copy_from_slice(&id.to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&seg[..ip_hlen], 0);
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let tcp = ip_hlen;
        let seq = u32::from_be_bytes([orig[tcp + 4], orig[tcp + 5], orig[tcp + 6], orig[tcp + 7]])
            .wrapping_add(off as u32);
        seg[tcp + 4..tcp + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = orig[tcp + 13];
        if !last {
            flags &= !(0x01 | 0x08); // FIN, PSH only on the last segment
        }
        if i > 0 {
            flags &= !0x80; // CWR only on the first
        }
        seg[tcp + 13] = flags;
        seg[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
        let ph = pseudo_header_sum(seg, self.v6, total - tcp);
        let c = checksum(&seg[tcp..total], ph);
        seg[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
    }
}

/// What [`TcpCoalescer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Appended to the pending packet.
    Appended,
    /// Became the first segment of a new pending packet.
    Started,
    /// Cannot be coalesced with the pending packet (or at all): flush, then
    /// push again or write it as it is.
    Refused,
}

/// Largest coalesced IP packet.
const MAX_COALESCED: usize = 65_000;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;

/// Receive-side coalescing (GRO) of consecutive segments of one TCP flow
/// into one large packet, written to the TUN device with a virtio header
/// that lets the kernel treat it as the segments it was: one trip through
/// the TCP stack (and one ACK) instead of one per segment.
pub struct TcpCoalescer {
    /// Virtio header room, then the packet.
    buf: Vec<u8>,
    /// Packet bytes in `buf` after the header; 0 when nothing is pending.
    len: usize,
    v6: bool,
    ip_hlen: usize,
    hlen: usize,
    gso_size: usize,
    segs: usize,
    next_seq: u32,
    /// A short or PSH segment ends the packet.
    closed: bool,
}

impl Default for TcpCoalescer {
    fn default() -> Self {
        Self::new()
    }
}

/// (v6, ip header length, ip+tcp header length, payload length) of a packet
/// that may take part in coalescing: plain TCP data with only ACK/PSH.
fn coalescable(pkt: &[u8]) -> Option<(bool, usize, usize, usize)> {
    let first = *pkt.first()?;
    let (v6, ip_hlen, ip_len) = match first >> 4 {
        4 => {
            if first & 0x0f != 5 || pkt.len() < 20 || pkt[9] != TCP {
                return None;
            }
            // No fragments: MF clear, offset zero.
            if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
                return None;
            }
            (false, 20, usize::from(u16::from_be_bytes([pkt[2], pkt[3]])))
        }
        6 => {
            if pkt.len() < 40 || pkt[6] != TCP {
                return None;
            }
            (
                true,
                40,
                40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]])),
            )
        }
        _ => return None,
    };
    if ip_len != pkt.len() {
        return None;
    }
    let doff = usize::from(*pkt.get(ip_hlen + 12)? >> 4) * 4;
    let hlen = ip_hlen + doff;
    if doff < 20 || pkt.len() <= hlen {
        return None;
    }
    let flags = pkt[ip_hlen + 13];
    if flags & TCP_ACK == 0 || flags & !(TCP_ACK | TCP_PSH) != 0 {
        return None;
    }
    Some((v6, ip_hlen, hlen, pkt.len() - hlen))
}

fn tcp_seq(pkt: &[u8], ip_hlen: usize) -> u32 {
    u32::from_be_bytes([
        pkt[ip_hlen + 4],
        pkt[ip_hlen + 5],
        pkt[ip_hlen + 6],
        pkt[ip_hlen + 7],
    ])
}

impl TcpCoalescer {
    pub fn new() -> TcpCoalescer {
        TcpCoalescer {
            buf: vec![0u8; VNET_HDR_LEN + MAX_COALESCED],
            len: 0,
            v6: false,
            ip_hlen: 0,
            hlen: 0,
            gso_size: 0,
            segs: 0,
            next_seq: 0,
            closed: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offers a decrypted IP packet.
    pub fn push(&mut self, pkt: &[u8]) -> Push {
        let Some((v6, ip_hlen, hlen, payload)) = coalescable(pkt) else {
            return Push::Refused;
        };
        let psh = pkt[ip_hlen + 13] & TCP_PSH != 0;
        if self.len == 0 {
            if psh || pkt.len() > MAX_COALESCED {
                return Push::Refused;
            }
            self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
            self.len = pkt.len();
            self.v6 = v6;
            self.ip_hlen = ip_hlen;
            self.hlen = hlen;
            self.gso_size = payload;
            self.segs = 1;
            self.next_seq = tcp_seq(pkt, ip_hlen).wrapping_add(payload as u32);
            self.closed = false;
            return Push::Started;
        }
        let cur = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len];
        let same_ip = if v6 {
            // Version, traffic class, flow label; hop limit; addresses.
            cur[..4] == pkt[..4] && cur[7] == pkt[7] && cur[8..40] == pkt[8..40]
        } else {
            // TOS (with ECN), DF, TTL, addresses.
            cur[1] == pkt[1] && cur[6] == pkt[6] && cur[8] == pkt[8] && cur[12..20] == pkt[12..20]
        };
        let t = ip_hlen;
        let mergeable = !self.closed
            && v6 == self.v6
            && hlen == self.hlen
            && same_ip
            && payload <= self.gso_size
            && self.len + payload <= MAX_COALESCED
            && tcp_seq(pkt, t) == self.next_seq
            // ports, ack number, data offset
            && cur[t..t + 4] == pkt[t..t + 4]
            && cur[t + 8..t + 13] == pkt[t + 8..t + 13]
            // options (timestamps included) must match exactly
            && cur[t + 20..hlen] == pkt[t + 20..hlen];
        if !mergeable {
            return Push::Refused;
        }
        let start = VNET_HDR_LEN + self.len;
        self.buf[start..start + payload].copy_from_slice(&pkt[hlen..]);
        self.len += payload;
        self.segs += 1;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        if psh {
            self.buf[VNET_HDR_LEN + t + 13] |= TCP_PSH;
        }
        if psh || payload < self.gso_size {
            self.closed = true;
        }
        Push::Appended
    }

    /// The pending packet, framed with its virtio header, ready for one TUN
    /// write; clears the coalescer. `None` when nothing is pending.
    pub fn take(&mut self) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.len);
        let total = VNET_HDR_LEN + len;
        if self.segs == 1 {
            VnetHdr {
                flags: F_DATA_VALID,
                ..VnetHdr::default()
            }
            .write(&mut self.buf[..VNET_HDR_LEN]);
            return Some(&self.buf[..total]);
        }
        let ip_hlen = self.ip_hlen;
        let pkt = &mut self.buf[VNET_HDR_LEN..total];
        if self.v6 {
            pkt[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            pkt[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(&pkt[..20], 0);
            pkt[10..12].copy_from_slice(&c.to_be_bytes());
        }
        // Partial checksum: the pseudo-header sum; the kernel (or nobody,
        // for local delivery) completes it.
        let ph = fold(pseudo_header_sum(pkt, self.v6, len - ip_hlen));
        pkt[ip_hlen + 16..ip_hlen + 18].copy_from_slice(&ph.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if self.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: self.hlen as u16,
            gso_size: self.gso_size as u16,
            csum_start: ip_hlen as u16,
            csum_offset: 16,
        }
        .write(&mut self.buf[..VNET_HDR_LEN]);
        Some(&self.buf[..total])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference: 16-bit words, end-around carry.
    fn reference(data: &[u8], init: u32) -> u16 {
        let mut s = init;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u32::from(u16::from_be_bytes([c[0], c[1]]))
            } else {
                u32::from(c[0]) << 8
            };
            s += w;
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    /// A TCP packet too big for the path gets the ICMP error its sender's
    /// stack acts on: from its destination, quoting its header and ports,
    /// with the path's MTU and valid checksums.
    #[test]
    fn a_tcp_packet_with_df_too_big_for_the_path_is_answered_fragmentation_needed() {
        let mut pkt = tcp_packet(false, 1400, 0x10);
        pkt[6] = 0x40; // DF
        let mut out = [0u8; TOO_BIG_MAX];
        let n = too_big(&pkt, 1340, &mut out).expect("an answer");
        let icmp = &out[..n];
        assert_eq!(n, 20 + 8 + 20 + 8);
        assert_eq!(checksum(&icmp[..20], 0), 0, "IP header checksum");
        assert_eq!(icmp[9], ICMP);
        assert_eq!(&icmp[12..16], &pkt[16..20], "from the packet's destination");
        assert_eq!(&icmp[16..20], &pkt[12..16], "to its source");
        assert_eq!((icmp[20], icmp[21]), (3, 4), "fragmentation needed");
        assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1340);
        assert_eq!(checksum(&icmp[20..], 0), 0, "ICMP checksum");
        assert_eq!(&icmp[28..], &pkt[..28], "the header and 8 bytes quoted");
    }

    #[test]
    fn only_tcp_with_df_is_answered_over_ipv4() {
        let mut out = [0u8; TOO_BIG_MAX];
        let no_df = tcp_packet(false, 1400, 0x10);
        assert_eq!(too_big(&no_df, 1340, &mut out), None, "no DF: fragmented");
        let mut udp = tcp_packet(false, 1400, 0x10);
        udp[6] = 0x40;
        udp[9] = 17;
        assert_eq!(too_big(&udp, 1340, &mut out), None, "UDP: fragmented");
        assert_eq!(too_big(&[0x45, 0, 0], 1340, &mut out), None, "truncated");
    }

    #[test]
    fn an_ipv6_tcp_packet_too_big_is_answered_packet_too_big_down_to_1280() {
        let pkt = tcp_packet(true, 1400, 0x10);
        let mut out = [0u8; TOO_BIG_MAX];
        let n = too_big(&pkt, 1320, &mut out).expect("an answer");
        let icmp = &out[..n];
        assert_eq!(n, 40 + 8 + 40 + 8);
        assert_eq!(icmp[6], ICMPV6);
        assert_eq!(&icmp[8..24], &pkt[24..40], "from the packet's destination");
        assert_eq!(&icmp[24..40], &pkt[8..24], "to its source");
        assert_eq!(icmp[40], 2, "packet too big");
        assert_eq!(
            u32::from_be_bytes([icmp[44], icmp[45], icmp[46], icmp[47]]),
            1320
        );
        let pseudo = sum(&icmp[8..40], u64::from(ICMPV6) + (n - 40) as u64);
        assert_eq!(checksum(&icmp[40..], pseudo), 0, "ICMPv6 checksum");
        assert_eq!(&icmp[48..], &pkt[..48]);
        assert_eq!(too_big(&pkt, 1200, &mut out), None, "below IPv6's minimum");
    }

    #[test]
    fn checksum_matches_reference() {
        let data: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in [0, 1, 2, 7, 8, 9, 63, 64, 1000, 1001] {
            assert_eq!(checksum(&data[..n], 0), reference(&data[..n], 0), "{n}");
        }
    }

    fn tcp_packet(v6: bool, payload: usize, flags: u8) -> Vec<u8> {
        let ip_hlen = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; ip_hlen + 32 + payload];
        if v6 {
            p[0] = 0x60;
            p[6] = TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&[0xfd, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            p[24..40].copy_from_slice(&[0xfd, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        } else {
            p[0] = 0x45;
            p[4..6].copy_from_slice(&0xfff0u16.to_be_bytes());
            p[8] = 64;
            p[9] = TCP;
            p[12..16].copy_from_slice(&[10, 0, 42, 1]);
            p[16..20].copy_from_slice(&[10, 0, 42, 2]);
        }
        let t = ip_hlen;
        p[t..t + 2].copy_from_slice(&5201u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&0xffff_ff00u32.to_be_bytes());
        p[t + 12] = 8 << 4; // 32-byte header (with options)
        p[t + 13] = flags;
        for (i, b) in p[t + 32..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let total = p.len();
        if v6 {
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        } else {
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let c = checksum(&p[..20], 0);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        p
    }

    fn verify(seg: &[u8], v6: bool) {
        let ip_hlen = if v6 { 40 } else { 20 };
        if !v6 {
            assert_eq!(checksum(&seg[..20], 0), 0, "IPv4 header checksum");
            assert_eq!(usize::from(u16::from_be_bytes([seg[2], seg[3]])), seg.len());
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([seg[4], seg[5]])),
                seg.len() - 40
            );
        }
        let ph = pseudo_header_sum(seg, v6, seg.len() - ip_hlen);
        assert_eq!(checksum(&seg[ip_hlen..], ph), 0, "TCP checksum");
    }

    #[test]
    fn segments_tcp_v4_and_v6() {
        for v6 in [false, true] {
            let pkt = tcp_packet(v6, 5000, 0x18 | 0x01 | 0x80); // PSH ACK FIN CWR
            let s = TcpSegmenter::new(&pkt, 1368).unwrap();
            assert_eq!(s.count(), 4);
            let mut out = vec![0u8; s.max_segment_len()];
            let mut payload = Vec::new();
            for i in 0..s.count() {
                let n = s.segment(&pkt, i, &mut out);
                let seg = &out[..n];
                verify(seg, v6);
                let t = if v6 { 40 } else { 20 };
                let seq = u32::from_be_bytes(seg[t + 4..t + 8].try_into().unwrap());
                assert_eq!(seq, 0xffff_ff00u32.wrapping_add((i * 1368) as u32));
                let flags = seg[t + 13];
                assert_eq!(flags & 0x01 != 0, i == 3, "FIN on last only");
                assert_eq!(flags & 0x08 != 0, i == 3, "PSH on last only");
                assert_eq!(flags & 0x80 != 0, i == 0, "CWR on first only");
                if !v6 {
                    let id = u16::from_be_bytes([seg[4], seg[5]]);
                    assert_eq!(id, 0xfff0u16.wrapping_add(i as u16));
                }
                payload.extend_from_slice(&seg[t + 32..]);
            }
            assert_eq!(payload, pkt[pkt.len() - 5000..]);
        }
    }

    #[test]
    fn segmenting_in_place_gives_the_same_segments_as_segmenting_into_a_copy() {
        for v6 in [false, true] {
            // 1368: a usual MSS; 7: segments smaller than their headers.
            for (payload, gso) in [(5000, 1368), (5000, 5000), (300, 7)] {
                let pkt = tcp_packet(v6, payload, 0x18 | 0x01 | 0x80);
                let s = TcpSegmenter::new(&pkt, gso).unwrap();
                let headers = pkt[..s.header_len()].to_vec();
                let mut in_place = pkt.clone();
                let mut copy = vec![0u8; s.max_segment_len()];
                for i in 0..s.count() {
                    let n = s.segment(&pkt, i, &mut copy);
                    let r = s.segment_in_place(&mut in_place, &headers, i);
                    assert_eq!(&in_place[r], &copy[..n], "v6 {v6}, gso {gso}, segment {i}");
                }
            }
        }
    }

    #[test]
    fn completes_partial_checksums() {
        let mut pkt = tcp_packet(false, 100, 0x10);
        let tcp_len = pkt.len() - 20;
        let ph = fold(pseudo_header_sum(&pkt, false, tcp_len));
        pkt[36..38].copy_from_slice(&ph.to_be_bytes());
        assert!(complete_checksum(&mut pkt, 20, 16));
        verify(&pkt, false);
        assert!(!complete_checksum(&mut pkt, 200, 16));
    }

    #[test]
    fn refuses_non_tcp() {
        let mut pkt = tcp_packet(false, 10, 0);
        pkt[9] = 17;
        assert!(TcpSegmenter::new(&pkt, 1000).is_none());
        assert!(TcpSegmenter::new(&[], 1000).is_none());
        assert!(TcpSegmenter::new(&tcp_packet(true, 10, 0), 0).is_none());
    }

    #[test]
    fn vnet_header_round_trips() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6 | GSO_ECN,
            hdr_len: 72,
            gso_size: 1368,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(VnetHdr::parse(&b[..9]), None);
    }

    #[test]
    fn coalesces_what_segmentation_cut() {
        for v6 in [false, true] {
            let pkt = tcp_packet(v6, 4000, 0x18); // PSH ACK
            let s = TcpSegmenter::new(&pkt, 1368).unwrap();
            let mut seg = vec![0u8; s.max_segment_len()];
            let mut gro = TcpCoalescer::new();
            for i in 0..s.count() {
                let n = s.segment(&pkt, i, &mut seg);
                let want = if i == 0 {
                    Push::Started
                } else {
                    Push::Appended
                };
                assert_eq!(gro.push(&seg[..n]), want, "segment {i}");
            }
            // The PSH segment closed it.
            let n = s.segment(&pkt, 0, &mut seg);
            assert_eq!(gro.push(&seg[..n]), Push::Refused);
            let framed = gro.take().unwrap().to_vec();
            assert!(gro.is_empty());
            let h = VnetHdr::parse(&framed).unwrap();
            assert_eq!(h.flags, F_NEEDS_CSUM);
            assert_eq!(h.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!(h.gso_size, 1368);
            let out = &framed[VNET_HDR_LEN..];
            assert_eq!(out.len(), pkt.len());
            // Same bytes as the original except the checksum field.
            let t = if v6 { 40 } else { 20 };
            assert_eq!(out[..t + 16], pkt[..t + 16]);
            assert_eq!(out[t + 18..], pkt[t + 18..]);
            if !v6 {
                assert_eq!(checksum(&out[..20], 0), 0);
            }
            // Completing the partial checksum gives a valid segment.
            let mut full = out.to_vec();
            assert!(complete_checksum(&mut full, t, 16));
            let ph = pseudo_header_sum(&full, v6, full.len() - t);
            assert_eq!(checksum(&full[t..], ph), 0);
        }
    }

    #[test]
    fn refuses_gaps_other_flows_and_flags() {
        let pkt = tcp_packet(false, 3000, 0x10);
        let s = TcpSegmenter::new(&pkt, 1000).unwrap();
        let mut a = vec![0u8; s.max_segment_len()];
        let mut c = vec![0u8; s.max_segment_len()];
        let na = s.segment(&pkt, 0, &mut a);
        let nc = s.segment(&pkt, 2, &mut c);
        let mut gro = TcpCoalescer::new();
        assert_eq!(gro.push(&a[..na]), Push::Started);
        assert_eq!(gro.push(&c[..nc]), Push::Refused, "sequence gap");
        let mut other = c[..nc].to_vec();
        other[20..22].copy_from_slice(&9999u16.to_be_bytes());
        assert_eq!(gro.push(&other), Push::Refused, "other flow");
        // A lone segment comes back as it was, marked valid.
        let framed = gro.take().unwrap();
        assert_eq!(VnetHdr::parse(framed).unwrap().flags, F_DATA_VALID);
        assert_eq!(&framed[VNET_HDR_LEN..], &a[..na]);
        // SYN, FIN, pure ACKs are never coalesced.
        let syn = tcp_packet(false, 10, 0x02);
        assert_eq!(gro.push(&syn), Push::Refused);
        let fin = tcp_packet(false, 10, 0x11);
        assert_eq!(gro.push(&fin), Push::Refused);
        let ack = tcp_packet(false, 0, 0x10);
        assert_eq!(gro.push(&ack), Push::Refused);
        assert!(gro.take().is_none());
    }
}
