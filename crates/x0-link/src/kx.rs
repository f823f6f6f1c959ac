//! Key-exchange policy, and a record of the group each handshake really negotiated.
//!
//! quinn's public API does not say which TLS key-exchange group a connection used. Each
//! connection therefore gets its own rustls config whose groups are wrapped in
//! a recording group: the wrapper notes the group whose exchange *completed* (on the client,
//! when the server's share arrives; on the server, when it answers the client's share), which is
//! by construction the negotiated one.

use std::sync::{Arc, LazyLock, Mutex};

use rustls::crypto::aws_lc_rs::{self as provider, kx_group};
use rustls::crypto::{
    ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup,
};
use rustls::{Error, NamedGroup, ProtocolVersion};

/// Which key-exchange groups a link offers and accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KxPolicy {
    /// Only X25519MLKEM768 (hybrid X25519 + ML-KEM-768). The default.
    #[default]
    PostQuantumOnly,
    /// X25519MLKEM768 first, then classical X25519 and P-256. Removes the post-quantum
    /// guarantee for peers that do not offer the hybrid; named dangerous in the config.
    AllowClassicalDangerous,
    /// Only classical X25519. Exists so tests can play a peer that lacks post-quantum support.
    ClassicalOnlyForTesting,
}

/// Where a handshake's negotiated group is written.
#[derive(Debug, Clone, Default)]
struct GroupRecord(Arc<Mutex<Option<NamedGroup>>>);

impl GroupRecord {
    fn get(&self) -> Option<NamedGroup> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, g: Option<NamedGroup>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = g;
    }
}

/// A key-exchange group that records itself in a [`GroupRecord`] when it completes.
#[derive(Debug)]
struct RecordingGroup {
    inner: &'static dyn SupportedKxGroup,
    record: GroupRecord,
}

struct RecordingExchange {
    inner: Box<dyn ActiveKeyExchange>,
    record: GroupRecord,
}

impl SupportedKxGroup for RecordingGroup {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        Ok(Box::new(RecordingExchange {
            inner: self.inner.start()?,
            record: self.record.clone(),
        }))
    }

    fn start_and_complete(&self, peer_pub_key: &[u8]) -> Result<CompletedKeyExchange, Error> {
        let done = self.inner.start_and_complete(peer_pub_key)?;
        self.record.set(Some(self.inner.name()));
        Ok(done)
    }

    fn name(&self) -> NamedGroup {
        self.inner.name()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        self.inner.usable_for_version(version)
    }
}

impl ActiveKeyExchange for RecordingExchange {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        let group = self.inner.group();
        let secret = self.inner.complete(peer_pub_key)?;
        self.record.set(Some(group));
        Ok(secret)
    }

    fn pub_key(&self) -> &[u8] {
        self.inner.pub_key()
    }

    fn group(&self) -> NamedGroup {
        self.inner.group()
    }
}

/// One set of recording groups. rustls wants `&'static` groups, so slots are leaked once and
/// reused: a slot is lent to one handshake at a time (TLS 1.3 exchanges keys only during the
/// handshake), and the pool never grows beyond the peak number of concurrent handshakes.
#[derive(Debug)]
struct KxSlot {
    record: GroupRecord,
    hybrid: RecordingGroup,
    x25519: RecordingGroup,
    p256: RecordingGroup,
}

static POOL: Mutex<Vec<&'static KxSlot>> = Mutex::new(Vec::new());

/// The aws-lc-rs provider, built once; each connection's provider is a copy with its own groups.
static BASE_PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(provider::default_provider);

/// A handshake's loan of a recording slot. Build the connection's rustls config with
/// [`KxRecorder::provider`], read [`KxRecorder::negotiated`] once the handshake is done, and drop
/// the recorder after the handshake finished or failed.
#[derive(Debug)]
pub struct KxRecorder {
    slot: &'static KxSlot,
}

impl KxRecorder {
    /// Borrows a slot from the pool (or creates one).
    pub fn new() -> Self {
        let pooled = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let slot = pooled.unwrap_or_else(|| {
            let record = GroupRecord::default();
            let group = |inner| RecordingGroup {
                inner,
                record: record.clone(),
            };
            Box::leak(Box::new(KxSlot {
                hybrid: group(kx_group::X25519MLKEM768),
                x25519: group(kx_group::X25519),
                p256: group(kx_group::SECP256R1),
                record,
            }))
        });
        slot.record.set(None);
        Self { slot }
    }

    /// A TLS crypto provider (aws-lc-rs) whose groups follow `policy` and record into this slot.
    pub fn provider(&self, policy: KxPolicy) -> Arc<CryptoProvider> {
        let s = self.slot;
        let kx_groups: Vec<&'static dyn SupportedKxGroup> = match policy {
            KxPolicy::PostQuantumOnly => vec![&s.hybrid],
            KxPolicy::AllowClassicalDangerous => vec![&s.hybrid, &s.x25519, &s.p256],
            KxPolicy::ClassicalOnlyForTesting => vec![&s.x25519],
        };
        Arc::new(CryptoProvider {
            kx_groups,
            ..BASE_PROVIDER.clone()
        })
    }

    /// The group whose key exchange completed, if any.
    pub fn negotiated(&self) -> Option<NamedGroup> {
        self.slot.record.get()
    }
}

impl Default for KxRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for KxRecorder {
    fn drop(&mut self) {
        self.slot.record.set(None);
        POOL.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.slot);
    }
}

/// The registered name of a group, as logs and benchmarks print it.
pub fn group_name(g: NamedGroup) -> String {
    match g {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768".into(),
        NamedGroup::X25519 => "X25519".into(),
        NamedGroup::secp256r1 => "secp256r1".into(),
        other => format!("{other:?}"),
    }
}
