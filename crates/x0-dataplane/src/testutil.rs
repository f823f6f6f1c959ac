//! Test fixtures: a mesh CA issuing real SVIDs, checked against a fixed wall time.

use std::sync::Arc;
use std::time::Duration;

use rustls::time_provider::TimeProvider;
use rustls_pki_types::UnixTime;
use x0_identity::{MeshCa, NodeKeys, TrustBundle, TrustDomain};
use x0_link::kx::KxPolicy;
use x0_link::{LinkMetrics, LocalIdentity, TrustState};
use x0_wire::NodeId;

use crate::e2e::E2eConfig;

/// Wall time (Unix seconds) the CA and SVIDs start at.
pub(crate) const T0: u64 = 1_800_000_000;
/// One millisecond.
pub(crate) const MS: Duration = Duration::from_millis(1);

pub(crate) fn unix(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

/// Certificates are checked against a fixed wall time, like everything else here.
#[derive(Debug)]
pub(crate) struct FixedTime;

impl TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(unix(T0 + 60))
    }
}

/// A mesh CA and its trust bundle.
pub(crate) struct Mesh {
    ca: MeshCa,
    bundle: TrustBundle,
}

impl Mesh {
    pub(crate) fn new(td: &str) -> Self {
        let td = TrustDomain::new(td).unwrap();
        let ca = MeshCa::create(td.clone(), unix(T0)).unwrap();
        let bundle = TrustBundle::new(td, vec![ca.cert_der().clone()]).unwrap();
        Self { ca, bundle }
    }

    /// A node's config, issued by this mesh's CA, trusting `trusts`, adjusted by `adjust`.
    pub(crate) fn node_with(
        &self,
        trusts: &Mesh,
        adjust: impl FnOnce(&mut E2eConfig),
    ) -> (Arc<E2eConfig>, NodeId) {
        let keys = Arc::new(NodeKeys::generate().unwrap());
        let svid = self
            .ca
            .issue_svid(
                keys.tls_public_point(),
                keys.node_id(),
                unix(T0),
                Duration::from_secs(86_400),
            )
            .unwrap()
            .to_vec();
        let identity = LocalIdentity::new(keys.clone(), svid, None).unwrap();
        let trust = TrustState::new(trusts.bundle.clone(), Arc::new(LinkMetrics::default()));
        let mut cfg = E2eConfig::new(identity, trust, Arc::new(FixedTime));
        adjust(&mut cfg);
        (Arc::new(cfg), keys.node_id())
    }

    /// A node's config, issued by this mesh's CA, trusting `trusts`.
    pub(crate) fn node_trusting(
        &self,
        trusts: &Mesh,
        policy: KxPolicy,
    ) -> (Arc<E2eConfig>, NodeId) {
        self.node_with(trusts, |c| c.kx_policy = policy)
    }

    pub(crate) fn node(&self) -> (Arc<E2eConfig>, NodeId) {
        self.node_trusting(self, KxPolicy::PostQuantumOnly)
    }
}
