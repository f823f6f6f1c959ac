//! The listener's TLS exporter before the handshake completes.
//!
//! In TLS 1.3 the exporter master secret depends on the transcript up to the server's Finished
//! (RFC 8446 §7.1), so a server knows every exporter value as soon as it has sent its Finished,
//! one flight before the client's Finished arrives. rustls derives the secret there but lets
//! `export_keying_material` answer only once the handshake is complete. [`ExporterCapture`]
//! is the connection's rustls `KeyLog`: it keeps only the exporter master secret, and
//! [`ExporterCapture::exporter`] computes `TLS-Exporter(EXPORTER_LABEL, "", 32)` from it exactly
//! as rustls does. The listener signs its proof of possession over that value and sends it as
//! 0.5-RTT data; once the handshake completes it checks the value against rustls's own export
//! and refuses the link if they differ.

use std::sync::Mutex;

use rustls::KeyLog;
use rustls::Tls13CipherSuite;
use rustls::crypto::aws_lc_rs::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
use rustls::crypto::tls13::OkmBlock;
use x0_identity::proof::{EXPORTER_LABEL, EXPORTER_LEN};

/// The `KeyLog` label of the exporter master secret.
const EXPORTER_SECRET: &str = "EXPORTER_SECRET";

/// Catches one connection's exporter master secret (nothing else) as rustls derives it.
#[derive(Default)]
pub(crate) struct ExporterCapture {
    secret: Mutex<Option<OkmBlock>>,
}

impl std::fmt::Debug for ExporterCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExporterCapture").finish_non_exhaustive()
    }
}

impl KeyLog for ExporterCapture {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == EXPORTER_SECRET {
            *self.secret.lock().unwrap_or_else(|e| e.into_inner()) = Some(OkmBlock::new(secret));
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label == EXPORTER_SECRET
    }
}

/// The TLS 1.3 suite whose hash has `len` bytes of output (the exporter secret's length).
fn suite_for(len: usize) -> Option<&'static Tls13CipherSuite> {
    [TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256]
        .into_iter()
        .filter_map(|s| s.tls13())
        .find(|t| t.common.hash_provider.output_len() == len)
}

impl ExporterCapture {
    /// `TLS-Exporter(EXPORTER_LABEL, "", EXPORTER_LEN)` of this connection, once the secret was
    /// derived (on a server: when it sent its Finished). The secret is consumed (and zeroed).
    pub(crate) fn exporter(&self) -> Option<[u8; EXPORTER_LEN]> {
        let secret = self
            .secret
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let suite = suite_for(secret.as_ref().len())?;
        let empty_hash = suite.common.hash_provider.hash(&[]);
        // Derive-Secret(exporter_master_secret, label, "") ...
        let derived = suite.hkdf_provider.expander_for_okm(&secret).expand_block(
            &expand_label_info(
                suite.common.hash_provider.output_len(),
                EXPORTER_LABEL,
                empty_hash.as_ref(),
            )
            .parts(),
        );
        // ... then HKDF-Expand-Label(that, "exporter", Hash(context = ""), length).
        let mut out = [0u8; EXPORTER_LEN];
        suite
            .hkdf_provider
            .expander_for_okm(&derived)
            .expand_slice(
                &expand_label_info(EXPORTER_LEN, b"exporter", empty_hash.as_ref()).parts(),
                &mut out,
            )
            .ok()?;
        Some(out)
    }
}

/// The `HkdfLabel` of RFC 8446 §7.1, as the parts HKDF-Expand concatenates.
struct ExpandLabelInfo<'a> {
    output_len: [u8; 2],
    label_len: [u8; 1],
    label: &'a [u8],
    context_len: [u8; 1],
    context: &'a [u8],
}

fn expand_label_info<'a>(
    output_len: usize,
    label: &'a [u8],
    context: &'a [u8],
) -> ExpandLabelInfo<'a> {
    ExpandLabelInfo {
        output_len: (output_len as u16).to_be_bytes(),
        label_len: [(b"tls13 ".len() + label.len()) as u8],
        label,
        context_len: [context.len() as u8],
        context,
    }
}

impl ExpandLabelInfo<'_> {
    fn parts(&self) -> [&[u8]; 6] {
        [
            &self.output_len,
            &self.label_len,
            b"tls13 ",
            self.label,
            &self.context_len,
            self.context,
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::crypto::CryptoProvider;
    use rustls::crypto::aws_lc_rs::default_provider;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ClientConnection, RootCertStore, ServerConnection, SupportedCipherSuite};

    use super::*;

    /// Runs a TLS 1.3 handshake in memory with `suite`; returns the server's capture (read
    /// right after its first flight) and both ends' exporters from rustls.
    fn handshake(
        suite: SupportedCipherSuite,
    ) -> (
        Option<[u8; EXPORTER_LEN]>,
        [u8; EXPORTER_LEN],
        [u8; EXPORTER_LEN],
    ) {
        let provider = Arc::new(CryptoProvider {
            cipher_suites: vec![suite],
            ..default_provider()
        });
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.invalid".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let capture = Arc::new(ExporterCapture::default());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        server_config.key_log = capture.clone();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client =
            ClientConnection::new(Arc::new(client_config), "x.invalid".try_into().unwrap())
                .unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        let pump = |from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8])| {
            let mut buf = Vec::new();
            from(&mut buf);
            to(&buf);
        };
        // ClientHello → server; server's flight (up to its Finished) back.
        pump(
            &mut |b| {
                client.write_tls(b).unwrap();
            },
            &mut |b| {
                server.read_tls(&mut &b[..]).unwrap();
                server.process_new_packets().unwrap();
            },
        );
        assert!(server.is_handshaking());
        let early = capture.exporter();
        pump(
            &mut |b| {
                server.write_tls(b).unwrap();
            },
            &mut |b| {
                client.read_tls(&mut &b[..]).unwrap();
                client.process_new_packets().unwrap();
            },
        );
        pump(
            &mut |b| {
                client.write_tls(b).unwrap();
            },
            &mut |b| {
                server.read_tls(&mut &b[..]).unwrap();
                server.process_new_packets().unwrap();
            },
        );
        assert!(!server.is_handshaking() && !client.is_handshaking());
        let at_server = server
            .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, Some(b""))
            .unwrap();
        let at_client = client
            .export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, Some(b""))
            .unwrap();
        (early, at_server, at_client)
    }

    #[test]
    fn the_early_exporter_is_the_sessions_exporter_for_both_hashes() {
        for suite in [TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256] {
            let (early, at_server, at_client) = handshake(suite);
            assert_eq!(at_server, at_client);
            assert_eq!(early, Some(at_server), "{suite:?}");
        }
    }

    #[test]
    fn the_secret_is_used_once() {
        let capture = ExporterCapture::default();
        assert_eq!(capture.exporter(), None);
        capture.log(EXPORTER_SECRET, &[0; 32], &[7; 48]);
        assert!(capture.exporter().is_some());
        assert_eq!(capture.exporter(), None);
        // Other secrets are never kept.
        assert!(!capture.will_log("CLIENT_TRAFFIC_SECRET_0"));
        capture.log("CLIENT_TRAFFIC_SECRET_0", &[0; 32], &[7; 48]);
        assert_eq!(capture.exporter(), None);
    }
}
