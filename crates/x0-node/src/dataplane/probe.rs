//! End-to-end path probes in the data plane: the self-healing loop's prober
//! ([`x0_heal::Prober`]) decides what to probe; this sends the probes along explicit paths,
//! answers the probes of others, and hands back the answers with their round-trip times.
//!
//! A probe is an [`x0_dataplane::control::ControlMessage`] in the end-to-end envelope
//! ([`OverlayKind::E2eControl`]), sealed with the session to the destination: relays forward
//! it like data (a black hole drops it like data) but cannot read, forge or redirect it. The
//! destination answers along the reverse of the relays named *inside* the envelope, so the
//! round trip crosses the same relays both ways. A destination without an end-to-end session
//! yet gets its handshake started, and the probe is reported as not sent.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tracing::debug;
use x0_dataplane::buf::{HEADROOM, TAILROOM};
use x0_dataplane::control::{ControlMessage, MAX_PROBE_RELAYS};
use x0_dataplane::frame::{ExplicitPath, RecvError};
use x0_dataplane::{OpenError, OverlayHeader, OverlayKind, PacketBuf};
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
/// A destination sent data within this long counts as active (probed every round).
const ACTIVE_FOR: Duration = Duration::from_secs(10);

/// The data plane's side of probing.
#[derive(Debug, Default)]
pub(super) struct ProbeBook {
    /// Our probes in flight: ID → when sent.
    pending: HashMap<u64, Duration>,
    /// Answers to our probes: ID, round-trip time.
    answers: Vec<(u64, Duration)>,
}

impl DataPlane {
    /// Sends `probes` (each to its destination through its relays); returns the IDs of those
    /// that could not be sent (no end-to-end session yet — its handshake is started — or no
    /// link to the first hop).
    pub(crate) fn send_probes(&self, probes: &[ProbeSend]) -> Vec<u64> {
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
                let msg = ControlMessage::ProbeRequest {
                    id: p.id,
                    relays: p.relays.clone(),
                };
                let ready = st.probes.pending.len() < MAX_PENDING
                    && self.session_ready(st, &table, p.dst, now, &mut out);
                if ready && self.send_control(st, &table, p.dst, &p.relays, &msg, now, &mut out) {
                    st.probes.pending.insert(p.id, now);
                    st.counters.probes_sent += 1;
                } else {
                    unsent.push(p.id);
                }
            }
        }
        self.flush(&mut out);
        unsent
    }

    /// Answers to our probes since the last call: probe ID and round-trip time.
    pub(crate) fn take_probe_replies(&self) -> Vec<(u64, Duration)> {
        std::mem::take(&mut lock(&self.state).probes.answers)
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

    /// Seals `msg` for `dst` and sends it through `relays` (explicit path). False if it could
    /// not be sent.
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
        let mut body = Vec::with_capacity(msg.encoded_len());
        if msg.encode(&mut body).is_err() {
            return false;
        }
        let mut nodes = relays.to_vec();
        nodes.push(dst);
        let Ok(path) = ExplicitPath::new(&nodes, 0) else {
            return false;
        };
        let mut overlay = OverlayHeader::new(OverlayKind::E2eControl, self.me, dst);
        overlay.path = Some(path);
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
        if overlay.prepend_to(&mut pb).is_err() {
            return false;
        }
        self.send_link(st, table, &overlay, &mut pb, now, &mut out.udp)
    }

    /// An end-to-end control message from `overlay.source`, in `pb` (still sealed).
    pub(super) fn handle_control(
        &self,
        st: &mut State,
        table: &RouteTable,
        overlay: &OverlayHeader,
        pb: &mut PacketBuf<'_>,
        now: Duration,
        out: &mut Out,
    ) {
        let source = overlay.source;
        let Some(session) = st.sessions.get_mut(&source) else {
            return st.counters.drop("e2e_no_session");
        };
        match session.e2e.open(now, overlay, pb) {
            Ok(_) => {}
            Err(RecvError::Open(OpenError::Replay(_))) => return st.counters.drop("e2e_replay"),
            Err(_) => return st.counters.drop("e2e_auth"),
        }
        let Ok(msg) = ControlMessage::decode(pb.data()) else {
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
