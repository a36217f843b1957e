//! Freshness without agreeing clocks: what a codec remembers of each peer's
//! clock, the stateless cookies it hands out, the challenge datagram that
//! carries them, and the node's own clock offset as its peers see it.
//!
//! Owns: a bounded table of per-peer clock state (the peer's offset, the
//! newest and the floor of its timestamps, the cookie it last gave us), the
//! two cookie secrets, and a bounded list of messages sealed to peers not
//! heard from yet (to seal again once they challenge). Promises: a datagram
//! is judged fresh only by (a) a cookie this process issued less than 30 s
//! ago, (b) the sender's own earlier timestamps and its learned offset, or
//! (c) with [`FirstContact::ClockWindow`], our clock within the window. A
//! restarted process has new secrets and no table, so with
//! [`FirstContact::Challenge`] it accepts nothing it accepted before.
//! When the caller gives the source address of datagrams, cookies are
//! bound to it and a peer's history counts only from an address it proved
//! (by echoing a cookie sent there): a
//! datagram from any other address is challenged, and a challenge is never
//! larger than the datagram, so a forged source address gets nothing
//! larger than what was sent to us (no reflection, no amplification).
//! Never does I/O and reads no clock: the time comes in as a value. The
//! rules are docs/protocol.md section 5; the reasoning docs/threat-model.md.

use super::codec::OpenError;
use super::generations::Generations;
use super::message::Message;
use crate::keys::{Blake2b256, KEY_LEN, PublicKey};
use blake2::Digest;
use std::collections::VecDeque;
use std::net::IpAddr;

/// First byte of a challenge datagram.
pub const CHALLENGE: u8 = 0xFC;
/// A challenge: first byte, version, challenger key, echoed timestamp,
/// challenger's clock, cookie, MAC.
pub const CHALLENGE_LEN: usize = 1 + 1 + KEY_LEN + 8 + 8 + COOKIE_LEN + MAC_LEN;
/// A cookie: its issue number and a MAC.
pub const COOKIE_LEN: usize = 16;
/// Set in the sealed timestamp field when a cookie follows it.
pub const COOKIE_FLAG: u64 = 1 << 63;
/// Cookie secrets rotate this often; a cookie is accepted for one rotation
/// after the one it was made in: 15 to 30 s.
pub const COOKIE_ROTATE_MS: u64 = 15_000;
/// A sender attaches a peer's cookie this long after receiving it.
pub const COOKIE_USE_MS: u64 = 10_000;
/// A challenge is believed only if it echoes a timestamp of ours at most
/// this old (a round trip).
pub const ECHO_MAX_AGE_MS: u64 = 10_000;
/// Without a cookie, a known sender's timestamp must be within this of our
/// clock plus its learned offset...
pub const OFFSET_TOLERANCE_MS: u64 = 10_000;
/// ...and at most this much older than the newest it sent.
pub const REORDER_MS: u64 = 10_000;
/// Most messages kept to seal again after a challenge, in all and for one
/// peer (what one challenge makes us send again), and for how long. A
/// bootstrap answers many first contacts at once: with 32 in all, the
/// answers a new node challenged were gone when its challenge came
/// (net-sim seed 9707992274483525137), and its lookups waited for their
/// retry.
pub const PENDING_MAX: usize = 256;
pub const PENDING_PER_PEER: usize = 32;
pub const PENDING_TTL_MS: u64 = 10_000;
/// The own-clock estimate needs this many distinct peers heard from within
/// [`CLOCK_PEER_TTL_MS`].
pub const CLOCK_MIN_PEERS: usize = 3;
pub const CLOCK_PEER_TTL_MS: u64 = 600_000;
/// Offsets smaller than this are not worth telling the user.
pub const CLOCK_REPORT_MS: i64 = 10_000;

const MAC_LEN: usize = 16;
const COOKIE_SECRET_LABEL: &[u8] = b"WireHub v1 cookie secret";
const COOKIE_LABEL: &[u8] = b"WireHub v1 cookie";
const CHALLENGE_KEY_LABEL: &[u8] = b"WireHub v1 challenge key";

/// How a sender we hold no state for is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstContact {
    /// Accepted when its timestamp is within the skew window of our clock
    /// (no round trip); challenged otherwise. Replays of the window before
    /// a restart are accepted once after it.
    #[default]
    ClockWindow,
    /// Always challenged: freshness is proven by a cookie round trip, never
    /// by clocks. Safe across restarts; costs one round trip per new peer.
    Challenge,
}

/// The node's clock against its peers': the negated median of the offsets
/// of distinct peers heard from recently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ClockEstimate {
    /// Our clock minus the network's, in milliseconds (positive: ahead).
    pub offset_ms: i64,
    /// Distinct peers the median is over.
    pub peers: usize,
}

/// "2 min 3 s ahead of the network", "1 h behind the network": our clock
/// offset (positive: ahead) in its two largest units.
pub fn describe_offset(offset_ms: i64) -> String {
    let secs = (offset_ms.unsigned_abs() + 500) / 1000;
    let units = [("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)];
    let side = if offset_ms < 0 {
        "behind the network"
    } else {
        "ahead of the network"
    };
    let Some(i) = units.iter().position(|(_, n)| secs >= *n) else {
        return format!("0 s {side}");
    };
    let (name, n) = units[i];
    let mut text = format!("{} {name}", secs / n);
    if let Some((next, m)) = units.get(i + 1)
        && (secs % n) / m > 0
    {
        text += &format!(" {} {next}", (secs % n) / m);
    }
    format!("{text} {side}")
}

/// The MAC key of challenges between a pair, from the pair's AEAD key.
pub(super) fn challenge_key(pair_key: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2b256::new();
    h.update(CHALLENGE_KEY_LABEL);
    h.update(pair_key);
    h.finalize().into()
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A challenge's fields (after its first two bytes).
pub(super) struct Challenge {
    pub from: PublicKey,
    /// The timestamp of the challenged datagram (the recipient's clock).
    pub echo: u64,
    /// The challenger's clock when it challenged.
    pub clock: u64,
    pub cookie: [u8; COOKIE_LEN],
}

impl Challenge {
    const BODY: usize = CHALLENGE_LEN - MAC_LEN;

    fn mac(body: &[u8], mac_key: &[u8; 32], recipient: &PublicKey) -> [u8; MAC_LEN] {
        let mut h = Blake2b256::new();
        h.update(mac_key);
        h.update(body);
        h.update(recipient.as_bytes());
        let full: [u8; 32] = h.finalize().into();
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&full[..MAC_LEN]);
        mac
    }

    /// The datagram, authenticated for `recipient` under the pair's `mac_key`.
    pub(super) fn encode(&self, version: u8, mac_key: &[u8; 32], recipient: &PublicKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHALLENGE_LEN);
        out.push(CHALLENGE);
        out.push(version);
        out.extend_from_slice(self.from.as_bytes());
        out.extend_from_slice(&self.echo.to_be_bytes());
        out.extend_from_slice(&self.clock.to_be_bytes());
        out.extend_from_slice(&self.cookie);
        let mac = Self::mac(&out, mac_key, recipient);
        out.extend_from_slice(&mac);
        out
    }

    /// The fields of a challenge datagram of the right length, unchecked.
    pub(super) fn parse(d: &[u8]) -> Option<Challenge> {
        if d.len() != CHALLENGE_LEN {
            return None;
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let mut key = [0u8; KEY_LEN];
        key.copy_from_slice(&d[2..2 + KEY_LEN]);
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&d[Self::BODY - COOKIE_LEN..Self::BODY]);
        Some(Challenge {
            from: PublicKey(key),
            echo: u64_at(2 + KEY_LEN),
            clock: u64_at(2 + KEY_LEN + 8),
            cookie,
        })
    }

    /// Whether the MAC of challenge datagram `d` is right for us.
    pub(super) fn verify(d: &[u8], mac_key: &[u8; 32], recipient: &PublicKey) -> bool {
        d.len() == CHALLENGE_LEN
            && equal(
                &Self::mac(&d[..Self::BODY], mac_key, recipient),
                &d[Self::BODY..],
            )
    }
}

/// What we know of one peer's clock.
#[derive(Debug, Clone)]
struct PeerClock {
    /// Its clock minus ours, from the datagrams it sent (or its challenge).
    offset_ms: i64,
    /// The newest timestamp accepted from it.
    newest: u64,
    /// Its datagrams must have a timestamp above this (the datagram that
    /// proved it fresh, or a tag the replay cache forgot).
    floor: u64,
    /// The issue number of the newest cookie of ours it used.
    last_cookie: u32,
    /// When (our clock) it last sent a fresh datagram or a challenge.
    heard_ms: u64,
    /// Its cookie for us, and when we got it.
    cookie: Option<([u8; COOKIE_LEN], u64)>,
    /// The newest timestamp of ours it challenged and we answered: a
    /// challenge is answered once (a copy sent from elsewhere gets nothing).
    answered: u64,
    /// The last two source addresses it proved it receives at.
    proven: [Option<IpAddr>; 2],
}

impl PeerClock {
    fn in_order(&self, ts: u64) -> bool {
        ts > self.floor && ts.saturating_add(REORDER_MS) >= self.newest
    }

    /// Whether datagrams from `src` (unknown: `None`) may be judged by this
    /// peer's history.
    fn proven_at(&self, src: Option<IpAddr>) -> bool {
        src.is_none() || self.proven.contains(&src)
    }

    fn prove(&mut self, src: Option<IpAddr>) {
        if src.is_some() && self.proven[0] != src {
            self.proven = [src, self.proven[0]];
        }
    }

    fn skew(&self, now: u64, ts: u64) -> i64 {
        (ts as i128 - (now as i128 + self.offset_ms as i128))
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

/// Why a datagram is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Its timestamp is within the window of our clock (first contact).
    Clock,
    /// It carries our cookie number `n`.
    Cookie { n: u32 },
    /// It follows what its sender sent before.
    History,
}

/// The two cookie secrets and the issue counter.
struct Cookies {
    seed: [u8; 32],
    generation: u64,
    current: [u8; 32],
    previous: [u8; 32],
    rotated_at: Option<u64>,
    issued: u32,
}

impl Cookies {
    fn secret(seed: &[u8; 32], generation: u64) -> [u8; 32] {
        let mut h = Blake2b256::new();
        h.update(COOKIE_SECRET_LABEL);
        h.update(seed);
        h.update(generation.to_le_bytes());
        h.finalize().into()
    }

    fn new(seed: [u8; 32]) -> Self {
        Cookies {
            current: Self::secret(&seed, 1),
            previous: Self::secret(&seed, 0),
            seed,
            generation: 1,
            rotated_at: None,
            issued: 0,
        }
    }

    fn rotate(&mut self) {
        self.generation += 1;
        self.previous = self.current;
        self.current = Self::secret(&self.seed, self.generation);
    }

    /// Rotates as time requires: once per period, twice when a whole period
    /// was missed or the clock went back (then no older cookie stays valid).
    fn refresh(&mut self, now: u64) {
        let Some(at) = self.rotated_at else {
            self.rotated_at = Some(now);
            return;
        };
        if now < at || now - at >= 2 * COOKIE_ROTATE_MS {
            self.rotate();
            self.rotate();
            self.rotated_at = Some(now);
        } else if now - at >= COOKIE_ROTATE_MS {
            self.rotate();
            self.rotated_at = Some(now);
        }
    }

    fn make(
        secret: &[u8; 32],
        sender: &PublicKey,
        src: Option<IpAddr>,
        n: u32,
    ) -> [u8; COOKIE_LEN] {
        let mut h = Blake2b256::new();
        h.update(COOKIE_LABEL);
        h.update(secret);
        h.update(sender.as_bytes());
        match src {
            None => h.update([0u8]),
            Some(IpAddr::V4(a)) => {
                h.update([4u8]);
                h.update(a.octets());
            }
            Some(IpAddr::V6(a)) => {
                h.update([6u8]);
                h.update(a.octets());
            }
        }
        h.update(n.to_be_bytes());
        let full: [u8; 32] = h.finalize().into();
        let mut c = [0u8; COOKIE_LEN];
        c[..4].copy_from_slice(&n.to_be_bytes());
        c[4..].copy_from_slice(&full[..COOKIE_LEN - 4]);
        c
    }

    fn issue(&mut self, now: u64, sender: &PublicKey, src: Option<IpAddr>) -> [u8; COOKIE_LEN] {
        self.refresh(now);
        self.issued = self.issued.wrapping_add(1);
        Self::make(&self.current, sender, src, self.issued)
    }

    /// The issue number of a valid cookie of `sender`, sent to `src`.
    fn check(
        &mut self,
        now: u64,
        sender: &PublicKey,
        src: Option<IpAddr>,
        cookie: &[u8; COOKIE_LEN],
    ) -> Option<u32> {
        self.refresh(now);
        let mut n = [0u8; 4];
        n.copy_from_slice(&cookie[..4]);
        let n = u32::from_be_bytes(n);
        [&self.current, &self.previous]
            .iter()
            .any(|s| equal(&Self::make(s, sender, src, n), cookie))
            .then_some(n)
    }
}

/// A message sealed to a peer that may not know us, kept to seal again.
struct Pending {
    to: PublicKey,
    at: u64,
    message: Message,
}

/// The per-codec freshness state. Sender ids are the first 8 bytes of keys.
pub(super) struct Freshness {
    pub(super) mode: FirstContact,
    window_ms: u64,
    peers: Generations<u64, PeerClock>,
    cookies: Cookies,
    pending: VecDeque<Pending>,
    /// Our clock at the first datagram sealed or received: challenges
    /// echoing anything older are not believed.
    started: Option<u64>,
}

pub(super) fn sender_id(k: &PublicKey) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&k.0[..8]);
    u64::from_le_bytes(b)
}

impl Freshness {
    pub(super) fn new(mode: FirstContact, window_ms: u64, capacity: usize, seed: [u8; 32]) -> Self {
        Freshness {
            mode,
            window_ms,
            peers: Generations::new(capacity),
            cookies: Cookies::new(seed),
            pending: VecDeque::new(),
            started: None,
        }
    }

    pub(super) fn start(&mut self, now: u64) {
        self.started.get_or_insert(now);
    }

    /// Judges the freshness of an authenticated datagram from `sender` at
    /// `src` (when known) with timestamp `ts` (and `cookie`, if it carried
    /// one). Nothing changes until [`Freshness::accept`]. Every refusal is
    /// answered with a challenge: only a round trip can tell a replay from
    /// a sender whose clock or history changed, or prove an address.
    pub(super) fn judge(
        &mut self,
        now: u64,
        sender: &PublicKey,
        src: Option<IpAddr>,
        ts: u64,
        cookie: Option<&[u8; COOKIE_LEN]>,
    ) -> Result<Verdict, OpenError> {
        let peer = self.peers.get_mut(&sender_id(sender)).cloned();
        if let Some(c) = cookie {
            let n = self
                .cookies
                .check(now, sender, src, c)
                .ok_or(OpenError::BadCookie)?;
            return match peer {
                // Out of order with what it sent before: only a cookie
                // issued after that (a new challenge) may restart its history.
                Some(p) if !p.in_order(ts) && n <= p.last_cookie => Err(OpenError::Replay),
                _ => Ok(Verdict::Cookie { n }),
            };
        }
        if src.is_some() && !peer.as_ref().is_some_and(|p| p.proven_at(src)) {
            // Whatever its clock says, an address it never proved gets a
            // challenge first (no larger than the datagram).
            return Err(match &peer {
                Some(p) if ts <= p.floor => OpenError::Replay,
                Some(_) => OpenError::UnprovenSource,
                None if self.mode == FirstContact::Challenge => OpenError::FirstContact,
                None => OpenError::UnprovenSource,
            });
        }
        if let Some(p) = &peer
            && p.in_order(ts)
            && p.skew(now, ts).unsigned_abs() <= OFFSET_TOLERANCE_MS
        {
            return Ok(Verdict::History);
        }
        let clock_skew = ts as i128 - now as i128;
        let above_floor = peer.as_ref().is_none_or(|p| ts > p.floor);
        if self.mode == FirstContact::ClockWindow
            && above_floor
            && clock_skew.unsigned_abs() <= self.window_ms as u128
        {
            return Ok(Verdict::Clock);
        }
        Err(match (&peer, self.mode) {
            (Some(p), _) if ts <= p.floor => OpenError::Replay,
            (Some(p), _) if !p.in_order(ts) => OpenError::Stale {
                behind_ms: p.newest.saturating_sub(ts).min(i64::MAX as u64) as i64,
            },
            (Some(p), _) => OpenError::Timestamp {
                skew_ms: p.skew(now, ts),
            },
            (None, FirstContact::ClockWindow) => OpenError::Timestamp {
                skew_ms: clock_skew.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
            },
            (None, FirstContact::Challenge) => OpenError::FirstContact,
        })
    }

    /// Records an accepted datagram from `src` (a cookie proves `src`).
    pub(super) fn accept(
        &mut self,
        now: u64,
        sender: &PublicKey,
        src: Option<IpAddr>,
        ts: u64,
        verdict: Verdict,
    ) {
        let measured = ts as i64 - now as i64;
        let id = sender_id(sender);
        let Some(p) = self.peers.get_mut(&id) else {
            let (floor, last_cookie) = match verdict {
                Verdict::Cookie { n } => (ts.saturating_sub(1), n),
                _ => (0, 0),
            };
            let mut p = PeerClock {
                offset_ms: measured,
                newest: ts,
                floor,
                last_cookie,
                heard_ms: now,
                cookie: None,
                answered: 0,
                proven: [None; 2],
            };
            if matches!(verdict, Verdict::Cookie { .. }) {
                p.prove(src);
            }
            self.peers.insert(id, p);
            return;
        };
        p.heard_ms = now;
        if matches!(verdict, Verdict::Cookie { .. }) {
            p.prove(src);
        }
        match verdict {
            Verdict::Cookie { n } if !p.in_order(ts) => {
                // A new history: the sender's clock went back, or it restarted.
                p.offset_ms = measured;
                p.newest = ts;
                p.floor = ts.saturating_sub(1);
                p.last_cookie = n;
            }
            Verdict::Cookie { n } => {
                p.offset_ms = measured;
                p.newest = p.newest.max(ts);
                p.last_cookie = p.last_cookie.max(n);
            }
            // Without a cookie the offset only grows: a delayed datagram
            // never drags it back (datagrams cannot arrive early).
            Verdict::History | Verdict::Clock => {
                p.offset_ms = p.offset_ms.max(measured);
                p.newest = p.newest.max(ts);
            }
        }
    }

    /// The replay cache forgot tags of `sender_id` up to timestamp `ts`:
    /// its datagrams must now be newer.
    pub(super) fn raise_floor(&mut self, id: u64, ts: u64) {
        if let Some(p) = self.peers.get_mut(&id) {
            p.floor = p.floor.max(ts);
        }
    }

    /// Whether `sender` proved it receives at `src` (always, when the
    /// address is not known).
    pub(super) fn proven(&mut self, sender: &PublicKey, src: Option<IpAddr>) -> bool {
        src.is_none()
            || self
                .peers
                .get_mut(&sender_id(sender))
                .is_some_and(|p| p.proven_at(src))
    }

    /// A cookie for `sender`, to send in a challenge to `src`.
    pub(super) fn issue_cookie(
        &mut self,
        now: u64,
        sender: &PublicKey,
        src: Option<IpAddr>,
    ) -> [u8; COOKIE_LEN] {
        self.cookies.issue(now, sender, src)
    }

    /// Whether a challenge from `from` echoing our timestamp `echo` answers
    /// a datagram this process sealed recently, and was not answered yet.
    pub(super) fn echo_is_new(&mut self, now: u64, from: &PublicKey, echo: u64) -> bool {
        echo <= now
            && now - echo <= ECHO_MAX_AGE_MS
            && self.started.is_some_and(|s| echo >= s)
            && self
                .peers
                .get_mut(&sender_id(from))
                .is_none_or(|p| echo > p.answered)
    }

    /// Learns from a (verified, recent) challenge of `from`: its clock, its
    /// cookie for us; returns our messages for it sealed since the
    /// challenged one. It proves no address: the challenge's source may be
    /// forged by the peer itself (its datagrams from there are challenged
    /// in turn).
    pub(super) fn challenged(&mut self, now: u64, c: &Challenge) -> Vec<Message> {
        let mid = c.echo + (now - c.echo) / 2;
        let offset = c.clock as i64 - mid as i64;
        let id = sender_id(&c.from);
        match self.peers.get_mut(&id) {
            Some(p) if p.in_order(c.clock) => {
                p.offset_ms = offset;
                p.newest = p.newest.max(c.clock);
                p.heard_ms = now;
                p.cookie = Some((c.cookie, now));
                p.answered = c.echo;
            }
            _ => {
                // What it sends after its challenge is fresh; what it sent
                // before is not ours to judge any more.
                let last_cookie = self.peers.get_mut(&id).map_or(0, |p| p.last_cookie);
                self.peers.insert(
                    id,
                    PeerClock {
                        offset_ms: offset,
                        newest: c.clock,
                        floor: c.clock.saturating_sub(1),
                        last_cookie,
                        heard_ms: now,
                        cookie: Some((c.cookie, now)),
                        answered: c.echo,
                        proven: [None; 2],
                    },
                );
            }
        }
        // What we sealed for it since the challenged datagram (what came
        // before was accepted, or is challenged on its own).
        let mut resend = Vec::new();
        self.pending.retain(|p| {
            let mine =
                p.to == c.from && p.at >= c.echo && now.saturating_sub(p.at) <= PENDING_TTL_MS;
            if mine {
                resend.push(p.message.clone());
            }
            !mine
        });
        resend
    }

    /// The cookie to attach to a datagram for `to`, if it gave us one lately.
    pub(super) fn cookie_for(&mut self, now: u64, to: &PublicKey) -> Option<[u8; COOKIE_LEN]> {
        let p = self.peers.get_mut(&sender_id(to))?;
        let (c, at) = p.cookie?;
        (now >= at && now - at < COOKIE_USE_MS).then_some(c)
    }

    /// Keeps `msg` to seal again if `to` challenges it (any peer may have
    /// restarted or forgotten us). Relayed data is not kept: it is too big
    /// and WireGuard resends its own.
    pub(super) fn keep_pending(&mut self, now: u64, to: &PublicKey, msg: &Message) {
        if msg.encoded_len() > super::codec::CONTROL_BUDGET {
            return;
        }
        while self
            .pending
            .front()
            .is_some_and(|p| now.saturating_sub(p.at) > PENDING_TTL_MS)
            || self.pending.len() >= PENDING_MAX
        {
            self.pending.pop_front();
        }
        let mut kept_for_peer = self.pending.iter().filter(|p| p.to == *to).count();
        while kept_for_peer >= PENDING_PER_PEER {
            if let Some(i) = self.pending.iter().position(|p| p.to == *to) {
                self.pending.remove(i);
            }
            kept_for_peer -= 1;
        }
        self.pending.push_back(Pending {
            to: *to,
            at: now,
            message: msg.clone(),
        });
    }

    /// Our clock against our peers' (see [`ClockEstimate`]).
    pub(super) fn estimate(&self, now: u64) -> Option<ClockEstimate> {
        let mut offsets: Vec<i64> = self
            .peers
            .values()
            .filter(|p| p.heard_ms <= now && now - p.heard_ms <= CLOCK_PEER_TTL_MS)
            .map(|p| p.offset_ms)
            .collect();
        let n = offsets.len();
        if n < CLOCK_MIN_PEERS {
            return None;
        }
        offsets.sort_unstable();
        let median = if n % 2 == 1 {
            offsets[n / 2]
        } else {
            ((offsets[n / 2 - 1] as i128 + offsets[n / 2] as i128) / 2) as i64
        };
        Some(ClockEstimate {
            offset_ms: median.saturating_neg(),
            peers: n,
        })
    }

    pub(super) fn peers_len(&self) -> usize {
        self.peers.len()
    }

    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.peers.heap_bytes() + self.pending.capacity() * std::mem::size_of::<Pending>()
    }
}
