//! End-to-end path probes in the data plane: the self-healing loop's prober
//! ([`x0_heal::Prober`]) decides what to probe; this sends the probes along their paths,
//! answers the probes of others, and hands back the answers with their round-trip times.
//!
//! **A relay cannot tell a probe from data** (or it could forward the probes and drop the
//! data). A probe is an [`x0_dataplane::control::ControlMessage`] sent *as data*:
//!
//! * overlay kind `Data`, sealed with the session to the destination like the data to it
//!   (its end-to-end counter is one of the data's); that it is a probe is only inside the
//!   end-to-end AEAD (the first byte of the opened payload, [`x0_dataplane::control::is_control`]);
//! * padded to a length drawn from the lengths of the data packets we recently sent to that
//!   destination (else to anyone; else a few bytes more than the message): the frame is as
//!   long as a data frame would be;
//! * given the overlay header data to that destination along that path gets
//!   ([`probe_header`]): no explicit path when the path starts with the route's
//!   next hop (forwarded hop by hop, as data is), the route's own path when the route is a
//!   fast-reroute backup, an explicit path otherwise (as balanced, redundant and backup data
//!   carry one), with the default hop limit and no redundancy flag;
//! * sent at a random moment within the prober's spread (one round's interval), or right
//!   before or after (at random) a data packet to the same destination when one goes out in
//!   that time, so that no schedule marks it;
//! * answered the same way, by the destination, along the reverse of the relays named
//!   *inside* the envelope (so the round trip crosses the same relays both ways), padded from
//!   the destination's own data to us.
//!
//! Relays forward it like data (a black hole drops it like data) and cannot read, forge or
//! redirect it. What remains visible is the rate (a few probes a second per path) and, on a
//! destination we send nothing to, that every frame to it is a probe (there is no data there
//! to drop). A destination without an end-to-end session yet gets its handshake started, and
//! the probe is reported as not sent.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tracing::debug;
use x0_dataplane::buf::{HEADROOM, TAILROOM};
use x0_dataplane::control::{ControlMessage, MAX_PROBE_RELAYS, SizeProfile};
use x0_dataplane::frame::ExplicitPath;
use x0_dataplane::{OverlayHeader, OverlayKind, PacketBuf};
use x0_heal::ProbeSend;
use x0_identity::NodeId;

use super::{DataPlane, Out, State};
use crate::daemon::lock;
use crate::routing::RouteTable;

/// Probes awaiting an answer that the data plane remembers (the oldest are forgotten).
const MAX_PENDING: usize = 4096;
/// A probe unanswered this long is forgotten here (the prober gives up much sooner).
const PENDING_TTL: Duration = Duration::from_secs(10);
/// Answers kept for the prober to collect.
const MAX_ANSWERS: usize = 4096;
/// Probes held for sending at most (more are refused: reported not sent).
const MAX_HELD: usize = 4096;
/// A destination sent data within this long counts as active (probed every round).
const ACTIVE_FOR: Duration = Duration::from_secs(10);
/// With no data length to imitate, a message is padded by up to this many bytes.
const FALLBACK_PAD: u64 = 64;

/// A probe handed over by the prober and not sent yet.
#[derive(Debug)]
pub(super) struct Held {
    id: u64,
    dst: NodeId,
    relays: Vec<NodeId>,
    /// Sent at this time at the latest (earlier beside a data packet to `dst`).
    send_at: Duration,
}

/// The data plane's side of probing.
#[derive(Debug, Default)]
pub(super) struct ProbeBook {
    /// Our probes in flight: ID → when sent.
    pending: HashMap<u64, Duration>,
    /// Answers to our probes: ID, round-trip time.
    answers: Vec<(u64, Duration)>,
    /// Probes waiting for their moment.
    held: Vec<Held>,
    /// Held probes that could not be sent after all (the link went away meanwhile).
    failed: Vec<u64>,
    /// Lengths of the data packets this node sent, to anyone.
    pub(super) sizes: SizeProfile,
}

/// A uniformly random number (padding lengths, send moments): from the system's generator,
/// so that no relay can predict it.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // Never seen; a fixed value only makes the choice predictable, not wrong.
        return 0;
    }
    u64::from_le_bytes(b)
}

/// A uniformly random duration below `spread`.
fn random_below(spread: Duration) -> Duration {
    let us = u64::try_from(spread.as_micros()).unwrap_or(u64::MAX);
    if us == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(random_u64() % us)
}

/// The padded length of a control message of `min` bytes to a destination whose recent data
/// lengths are `to_dst`, given the node's (`any`) and a random number.
fn padded_len(to_dst: Option<&SizeProfile>, any: &SizeProfile, min: usize, random: u64) -> usize {
    to_dst
        .and_then(|p| p.draw(random, min))
        .or_else(|| any.draw(random, min))
        .unwrap_or_else(|| min + (random % FALLBACK_PAD) as usize)
}

/// The overlay header of a control message from `me` to `dst` through `relays`: the one
/// data to `dst` gets when the path is the one data takes (hop by hop from the route's next
/// hop, or the route's fast-reroute path), else an explicit path, as data sent on another
/// path (balanced, redundant, backup) carries. Either way of kind `Data`, with the default
/// hop limit.
fn probe_header(
    me: NodeId,
    table: &RouteTable,
    dst: NodeId,
    relays: &[NodeId],
) -> Option<OverlayHeader> {
    let mut nodes = relays.to_vec();
    nodes.push(dst);
    if let Some(route) = table.routes.get(&dst) {
        let data = super::routed_header(me, table, OverlayKind::Data, dst);
        let same = match &data.path {
            Some(p) => p.nodes() == nodes.as_slice(),
            None => !route.via_backup && Some(&route.next_hop) == nodes.first(),
        };
        if same {
            return Some(data);
        }
    }
    let mut h = OverlayHeader::new(OverlayKind::Data, me, dst);
    h.path = Some(ExplicitPath::new(&nodes, 0).ok()?);
    Some(h)
}

/// The end-to-end plaintext of `msg`: encoded and padded to a data length drawn with
/// `random` from `to_dst` (the data we sent to its destination), else `any` (to anyone),
/// at most `mtu`.
fn control_plaintext(
    msg: &ControlMessage,
    to_dst: Option<&SizeProfile>,
    any: &SizeProfile,
    mtu: usize,
    random: u64,
) -> Option<Vec<u8>> {
    let min = msg.encoded_len();
    let len = padded_len(to_dst, any, min, random).min(mtu.max(min));
    let mut body = Vec::with_capacity(len);
    msg.encode_padded(&mut body, len).ok()?;
    Some(body)
}

impl DataPlane {
    /// Takes `probes` (each to its destination through its relays) and sends each at a random
    /// moment within `spread`, or beside a data packet to its destination before that;
    /// returns the IDs of those that cannot be sent (no end-to-end session yet — its
    /// handshake is started — or too many held).
    pub(crate) fn send_probes(&self, probes: &[ProbeSend], spread: Duration) -> Vec<u64> {
        let now = self.now();
        let table = self.routing.table();
        let mut out = Out::default();
        let mut unsent = Vec::new();
        {
            let mut st = lock(&self.state);
            let st = &mut *st;
            if st.probes.pending.len() + probes.len() > MAX_PENDING {
                st.probes
                    .pending
                    .retain(|_, sent| now.saturating_sub(*sent) < PENDING_TTL);
            }
            for p in probes {
                let ready = st.probes.pending.len() + st.probes.held.len() < MAX_PENDING
                    && st.probes.held.len() < MAX_HELD
                    && self.session_ready(st, &table, p.dst, now, &mut out);
                if ready {
                    st.probes.held.push(Held {
                        id: p.id,
                        dst: p.dst,
                        relays: p.relays.clone(),
                        send_at: now + random_below(spread),
                    });
                } else {
                    unsent.push(p.id);
                }
            }
            self.send_due_probes(st, &table, now, &mut out);
        }
        self.flush(&mut out);
        unsent
    }

    /// Sends the held probes whose moment has come (called by the timer loop).
    pub(super) fn send_due_probes(
        &self,
        st: &mut State,
        table: &RouteTable,
        now: Duration,
        out: &mut Out,
    ) {
        if st.probes.held.iter().all(|h| h.send_at > now) {
            return;
        }
        let (due, later): (Vec<Held>, Vec<Held>) = std::mem::take(&mut st.probes.held)
            .into_iter()
            .partition(|h| h.send_at <= now);
        st.probes.held = later;
        for h in due {
            self.send_held(st, table, h, now, out);
        }
    }

    /// The probes held for `dst`, to go out beside a data packet to it now; and whether they
    /// go before it (at random, so that neither position marks them).
    pub(super) fn held_for(&self, st: &mut State, dst: NodeId) -> (Vec<Held>, bool) {
        if st.probes.held.is_empty() || !st.probes.held.iter().any(|h| h.dst == dst) {
            return (Vec::new(), false);
        }
        let (mine, rest): (Vec<Held>, Vec<Held>) = std::mem::take(&mut st.probes.held)
            .into_iter()
            .partition(|h| h.dst == dst);
        st.probes.held = rest;
        (mine, random_u64() & 1 == 1)
    }

    /// Sends held probes now.
    pub(super) fn send_held_now(
        &self,
        st: &mut State,
        table: &RouteTable,
        held: Vec<Held>,
        now: Duration,
        out: &mut Out,
    ) {
        for h in held {
            self.send_held(st, table, h, now, out);
        }
    }

    fn send_held(&self, st: &mut State, table: &RouteTable, h: Held, now: Duration, out: &mut Out) {
        let msg = ControlMessage::ProbeRequest {
            id: h.id,
            relays: h.relays.clone(),
        };
        if self.send_control(st, table, h.dst, &h.relays, &msg, now, out) {
            st.probes.pending.insert(h.id, now);
            st.counters.probes_sent += 1;
        } else if st.probes.failed.len() < MAX_ANSWERS {
            st.probes.failed.push(h.id);
        }
    }

    /// Answers to our probes since the last call (probe ID and round-trip time), and the
    /// probes that could not be sent after all.
    pub(crate) fn take_probe_results(&self) -> (Vec<(u64, Duration)>, Vec<u64>) {
        let mut st = lock(&self.state);
        (
            std::mem::take(&mut st.probes.answers),
            std::mem::take(&mut st.probes.failed),
        )
    }

    /// Destinations we sent data to recently.
    pub(crate) fn active_destinations(&self) -> Vec<NodeId> {
        let now = self.now();
        lock(&self.state)
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.last_data
                    .is_some_and(|t| now.saturating_sub(t) < ACTIVE_FOR)
            })
            .map(|(n, _)| *n)
            .collect()
    }

    /// Whether the end-to-end session to `dst` has keys; if not, starts its handshake.
    fn session_ready(
        &self,
        st: &mut State,
        table: &RouteTable,
        dst: NodeId,
        now: Duration,
        out: &mut Out,
    ) -> bool {
        let Ok(session) = st
            .sessions
            .get_or_insert_with(now, dst, super::Session::new)
        else {
            return false;
        };
        if session.e2e.is_established() {
            return true;
        }
        if !session.e2e.is_handshaking()
            && let Err(e) = session.e2e.initiate(now)
        {
            debug!(dst = %dst, "cannot start the end-to-end handshake for probing: {e}");
        }
        self.flush_session(st, table, dst, now, out);
        false
    }

    /// Seals `msg` for `dst`, padded like data, and sends it through `relays` as data would
    /// go. False if it could not be sent.
    #[allow(clippy::too_many_arguments)]
    fn send_control(
        &self,
        st: &mut State,
        table: &RouteTable,
        dst: NodeId,
        relays: &[NodeId],
        msg: &ControlMessage,
        now: Duration,
        out: &mut Out,
    ) -> bool {
        let Some(overlay) = probe_header(self.me, table, dst, relays) else {
            return false;
        };
        let Some(body) = control_plaintext(
            msg,
            st.sessions.get(&dst).map(|s| &s.sizes),
            &st.probes.sizes,
            self.mtu,
            random_u64(),
        ) else {
            return false;
        };
        let mut buf = vec![0u8; HEADROOM + body.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + body.len()].copy_from_slice(&body);
        let Ok(mut pb) = PacketBuf::at_headroom(&mut buf, body.len()) else {
            return false;
        };
        let Some(session) = st.sessions.get_mut(&dst) else {
            return false;
        };
        if let Err(e) = session.e2e.seal(now, &overlay, &mut pb) {
            debug!(dst = %dst, "end-to-end seal of a control message failed: {e}");
            return false;
        }
        self.send_envelope(st, table, &overlay, &mut pb, now, &mut out.udp)
    }

    /// An end-to-end control message from `source`, already opened: `payload` is the
    /// plaintext ([`x0_dataplane::control::is_control`] said so).
    pub(super) fn handle_control(
        &self,
        st: &mut State,
        table: &RouteTable,
        source: NodeId,
        payload: &[u8],
        now: Duration,
        out: &mut Out,
    ) {
        let Ok(msg) = ControlMessage::decode(payload) else {
            return st.counters.drop("control_malformed");
        };
        match msg {
            ControlMessage::ProbeRequest { id, relays } => {
                let unique: BTreeSet<&NodeId> = relays.iter().collect();
                if unique.len() != relays.len()
                    || relays.len() > MAX_PROBE_RELAYS
                    || relays.contains(&self.me)
                    || relays.contains(&source)
                {
                    return st.counters.drop("control_malformed");
                }
                let back: Vec<NodeId> = relays.iter().rev().copied().collect();
                let reply = ControlMessage::ProbeReply { id };
                if self.send_control(st, table, source, &back, &reply, now, out) {
                    st.counters.probes_answered += 1;
                } else {
                    st.counters.drop("probe_reply_unsent");
                }
            }
            ControlMessage::ProbeReply { id } => match st.probes.pending.remove(&id) {
                Some(sent) => {
                    st.counters.probe_replies += 1;
                    if st.probes.answers.len() < MAX_ANSWERS {
                        st.probes.answers.push((id, now.saturating_sub(sent)));
                    }
                }
                None => st.counters.drop("probe_stray_reply"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::routed_header;
    use super::*;
    use crate::routing::Route;
    use std::collections::{BTreeMap, BTreeSet};
    use x0_dataplane::aead::TrafficSecret;
    use x0_dataplane::frame::{E2eHeader, LinkHeader, open_link, seal_e2e, seal_link};
    use x0_dataplane::{Channel, Limits};

    const NOW: Duration = Duration::from_secs(1);

    fn id(b: u8) -> NodeId {
        NodeId::from_bytes([b; NodeId::LEN])
    }

    /// splitmix64: the test's randomness, so the figures are exact.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    fn chan_pair(seed: u8) -> (Channel, Channel) {
        let (s1, s2) = (
            TrafficSecret::new([seed; 32]),
            TrafficSecret::new([seed ^ 0xff; 32]),
        );
        let mut a = Channel::new(Limits::default());
        let mut b = Channel::new(Limits::default());
        a.install(0, &s1, &s2, Duration::ZERO).unwrap();
        b.install(0, &s2, &s1, Duration::ZERO).unwrap();
        (a, b)
    }

    /// The datagram a source sends: `plaintext` sealed end to end under `overlay`, the
    /// overlay header, the link frame (as `send_data` and `send_control` build it).
    fn frame(
        e2e: &mut Channel,
        link: &mut Channel,
        overlay: &OverlayHeader,
        plain: &[u8],
    ) -> Vec<u8> {
        let mut buf = vec![0u8; HEADROOM + plain.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + plain.len()].copy_from_slice(plain);
        let mut pb = PacketBuf::at_headroom(&mut buf, plain.len()).unwrap();
        seal_e2e(e2e, NOW, 77, overlay, &mut pb).unwrap();
        overlay.prepend_to(&mut pb).unwrap();
        seal_link(link, NOW, 5, &mut pb).unwrap();
        pb.data().to_vec()
    }

    /// Everything a relay can read of a frame, but the packet counters (each frame has its
    /// own, from the same sequences for probes and data): the link header, the overlay
    /// header, the end-to-end header, and the lengths.
    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    struct RelayView {
        link_type: u8,
        link_epoch: u8,
        link_index: u32,
        overlay: Vec<u8>,
        e2e_session: u32,
        e2e_epoch: u8,
        len: usize,
    }

    fn relay_view(link_rx: &mut Channel, dgram: &[u8]) -> RelayView {
        let mut raw = dgram.to_vec();
        let n = raw.len();
        let mut pb = PacketBuf::new(&mut raw, 0..n).unwrap();
        let lh: LinkHeader = open_link(link_rx, NOW, &mut pb).unwrap();
        let (overlay, hlen) = OverlayHeader::decode(pb.data()).unwrap();
        let eh = E2eHeader::decode(&pb.data()[hlen..]).unwrap();
        RelayView {
            link_type: dgram[0],
            link_epoch: lh.epoch,
            link_index: lh.receiver_index,
            overlay: overlay.to_vec(),
            e2e_session: eh.session,
            e2e_epoch: eh.epoch,
            len: n,
        }
    }

    /// An IP packet's plaintext of `len` bytes (IPv6 version nibble, then noise).
    fn ip_packet(len: usize, rng: &mut Rng) -> Vec<u8> {
        let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        p[0] = 0x60;
        p
    }

    /// Data lengths as a TCP flow with pings makes them: ACKs, full segments, some between.
    fn data_len(rng: &mut Rng) -> usize {
        match rng.next() % 10 {
            0..=5 => 72,
            6..=8 => 1420,
            _ => 100 + (rng.next() % 500) as usize,
        }
    }

    fn table_via(dst: NodeId, next_hop: NodeId, backup_path: Option<Vec<NodeId>>) -> RouteTable {
        let mut t = RouteTable::default();
        t.routes.insert(
            dst,
            Route {
                next_hop,
                link: 1,
                via_backup: backup_path.is_some(),
                path: backup_path,
            },
        );
        t
    }

    /// Issue 12: a relay must not be able to tell probes from data (or it could forward the
    /// probes and drop the data). A relay on the route (R) sees our data to D and our probes
    /// to D along that route, interleaved on one session: every field it can read is the
    /// same, and the probes' lengths are the data's own lengths, in the data's proportions.
    /// (Before: overlay kind 2 instead of 0, an explicit path that routed data never
    /// carries, and 26 bytes of message — every probe was recognisable.)
    #[test]
    fn a_relay_on_the_route_cannot_tell_probes_from_data() {
        let (s, r, d) = (id(1), id(2), id(3));
        let table = table_via(d, r, None);
        let (mut e2e_tx, _) = chan_pair(1);
        let (mut link_tx, mut link_rx) = chan_pair(2);
        let mut rng = Rng(7);
        let (mut to_d, mut any) = (SizeProfile::default(), SizeProfile::default());
        let mut data_views = Vec::new();
        let mut probe_views = Vec::new();
        for i in 0..4000u64 {
            let len = data_len(&mut rng);
            to_d.record(len);
            any.record(len);
            let h = routed_header(s, &table, OverlayKind::Data, d);
            let dgram = frame(&mut e2e_tx, &mut link_tx, &h, &ip_packet(len, &mut rng));
            data_views.push(relay_view(&mut link_rx, &dgram));
            if i % 4 == 3 {
                let msg = ControlMessage::ProbeRequest {
                    id: i,
                    relays: vec![r],
                };
                let h = probe_header(s, &table, d, &[r]).unwrap();
                let plain = control_plaintext(&msg, Some(&to_d), &any, 1420, rng.next()).unwrap();
                assert!(x0_dataplane::control::is_control(&plain));
                let dgram = frame(&mut e2e_tx, &mut link_tx, &h, &plain);
                probe_views.push(relay_view(&mut link_rx, &dgram));
            }
        }
        // Every field but the length: one value, the same for both.
        let fields = |v: &[RelayView]| -> BTreeSet<RelayView> {
            v.iter()
                .map(|x| RelayView {
                    len: 0,
                    ..x.clone()
                })
                .collect()
        };
        assert_eq!(fields(&data_views).len(), 1);
        assert_eq!(fields(&probe_views), fields(&data_views));
        // Lengths: the data's, in the data's proportions (1,000 probes: within 5 points).
        let share = |v: &[RelayView]| -> BTreeMap<&'static str, f64> {
            let mut m = BTreeMap::new();
            for x in v {
                let class = match x.len {
                    n if n < 200 => "small",
                    n if n > 1400 => "full",
                    _ => "middle",
                };
                *m.entry(class).or_insert(0.0) += 1.0 / v.len() as f64;
            }
            m
        };
        let data_lens: BTreeSet<usize> = data_views.iter().map(|v| v.len).collect();
        assert!(probe_views.iter().all(|v| data_lens.contains(&v.len)));
        let (ds, ps) = (share(&data_views), share(&probe_views));
        for (class, d_share) in &ds {
            let p_share = ps.get(class).copied().unwrap_or(0.0);
            assert!(
                (p_share - d_share).abs() < 0.05,
                "{class}: probes {p_share:.3}, data {d_share:.3}"
            );
        }
    }

    /// A probe on another path than the route is framed as data sent on that path
    /// (balanced, redundant or backup data carry an explicit path), and on a fast-reroute
    /// backup route exactly as the data on it; the destination's answer too.
    #[test]
    fn probes_off_the_route_look_like_data_sent_on_that_path() {
        let (s, r, d, r2) = (id(1), id(2), id(3), id(4));
        let table = table_via(d, r, None);
        // Balanced-mode data along [r2, d] (as `send_data` builds it with a path).
        let mut balanced = OverlayHeader::new(OverlayKind::Data, s, d);
        balanced.path = ExplicitPath::new(&[r2, d], 0).ok();
        assert_eq!(probe_header(s, &table, d, &[r2]), Some(balanced));
        // On a backup route the data carries the route's path: a probe along it, the same.
        let backup = table_via(d, r2, Some(vec![s, r2, d]));
        let data = routed_header(s, &backup, OverlayKind::Data, d);
        assert!(data.path.is_some());
        assert_eq!(probe_header(s, &backup, d, &[r2]), Some(data));
        // The destination answers along the reverse of the relays: on its route, no path.
        let at_d = table_via(s, r, None);
        assert_eq!(
            probe_header(d, &at_d, s, &[r]),
            Some(routed_header(d, &at_d, OverlayKind::Data, s))
        );
        // A neighbour probed directly: its route's header.
        let direct = table_via(r, r, None);
        assert_eq!(
            probe_header(s, &direct, r, &[]),
            Some(routed_header(s, &direct, OverlayKind::Data, r))
        );
    }

    #[test]
    fn padding_follows_the_destination_then_the_node_then_a_few_bytes() {
        let msg = ControlMessage::ProbeReply { id: 1 };
        let (mut to_d, mut any) = (SizeProfile::default(), SizeProfile::default());
        let n = |p: Option<&SizeProfile>, any: &SizeProfile, r| {
            control_plaintext(&msg, p, any, 1420, r).unwrap().len()
        };
        // Nothing sent yet: a few bytes more than the message.
        assert!((0..50).all(|r| (9..9 + FALLBACK_PAD as usize).contains(&n(None, &any, r))));
        any.record(300);
        assert!((0..50).all(|r| n(Some(&to_d), &any, r) == 300));
        to_d.record(80);
        assert!((0..50).all(|r| n(Some(&to_d), &any, r) == 80));
        // Never over the MTU.
        let mut big = SizeProfile::default();
        big.record(9000);
        assert_eq!(
            control_plaintext(&msg, Some(&big), &any, 1420, 3)
                .unwrap()
                .len(),
            1420
        );
    }
}
