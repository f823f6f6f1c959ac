//! Router counters.

/// Counters of one router. All monotonically increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouterStats {
    /// Routing datagrams received.
    pub datagrams_received: u64,
    /// Routing datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes of routing datagrams sent.
    pub bytes_sent: u64,
    /// Datagrams on a link we do not know (dropped).
    pub datagrams_unknown_link: u64,
    /// Datagrams that did not parse (dropped).
    pub malformed: u64,
    /// Probes sent.
    pub probes_sent: u64,
    /// Probes received.
    pub probes_received: u64,
    /// Adverts we originated.
    pub adverts_originated: u64,
    /// Adverts received.
    pub adverts_received: u64,
    /// Adverts new to us and installed.
    pub adverts_installed: u64,
    /// Adverts sent (first transmissions and retransmissions).
    pub adverts_sent: u64,
    /// Retransmissions.
    pub retransmissions: u64,
    /// Ack datagrams sent.
    pub acks_sent: u64,
    /// Copies of what we hold that crossed ours to the same neighbour: not acknowledged
    /// explicitly (our copy acknowledges them when it arrives).
    pub acks_implied: u64,
    /// Adverts we already held.
    pub duplicates: u64,
    /// Adverts older than what we hold (dropped; our newer copy goes back).
    pub rejected_stale: u64,
    /// Adverts whose signature does not verify (dropped).
    pub rejected_bad_signature: u64,
    /// Signature verifications performed (each within its sender's budget).
    pub signature_verifications: u64,
    /// Adverts dropped unacknowledged because their sender's verification budget was spent
    /// (`verify_rate_per_s`); the sender retransmits them.
    pub adverts_deferred: u64,
    /// Forgeries (bad signatures, origins the mesh CA never admitted) charged to the neighbour
    /// that sent them (`bad_signature_penalty`).
    pub neighbor_penalties: u64,
    /// Adverts from origins we cannot authenticate (dropped).
    pub rejected_unknown_origin: u64,
    /// Adverts from origins the mesh CA never admitted (dropped; the sender is penalised).
    pub rejected_not_admitted: u64,
    /// Adverts from origins no longer admitted: revoked, or their SVID long expired (dropped).
    pub rejected_revoked: u64,
    /// Adverts of new origins refused because the database holds `max_origins` already.
    pub rejected_lsdb_full: u64,
    /// Origins whose advert was removed from the database because they lost their admission.
    pub origins_purged: u64,
    /// Times a neighbour showed us a validly signed advert of our own with a higher sequence
    /// number (or the same number and other contents): we jump past it.
    pub own_seq_recovered: u64,
    /// Adverts claiming to be our own whose signature does not verify (dropped; they change
    /// nothing).
    pub rejected_own_forged: u64,
    /// Originations refused because our sequence number reached `u64::MAX` (see
    /// [`crate::RouterEvent::SequenceExhausted`]).
    pub own_seq_exhausted: u64,
    /// Newer adverts held back because their origin's previous advert was accepted less than
    /// `min_advert_arrival` earlier (counted once per advert held back; see
    /// `docs/routing.md`, "Per-origin acceptance limit").
    pub adverts_rate_limited: u64,
    /// Neighbours declared down after silence.
    pub neighbors_down_silent: u64,
    /// Neighbours whose link the caller reported down.
    pub neighbors_down_local: u64,
    /// SPF runs.
    pub spf_runs: u64,
    /// Topology changes that scheduled a route recomputation (a link up or down, a new,
    /// changed or expired advert); a burst within `spf_delay` counts once.
    pub topology_changes: u64,
    /// Local link failures that put forwarding on fast-reroute backups.
    pub fast_reroutes: u64,
}
