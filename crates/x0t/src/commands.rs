//! One-shot commands on a state directory: `init`, `identity`, `ca`, `join`.

use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Serialize;
use x0_identity::authority::{AcceptError, accept_issued};
use x0_identity::keys::{sha256, verify_mldsa65};
use x0_identity::svid::cert_pem;
use x0_identity::{MeshCa, MeshPrefix, NodeKeys, StateStore, TrustDomain};
use x0_link::ca_client::{self, CaClientError};
use x0_link::{FailureReason, LinkConfig, LinkError};
use x0_wire::control::RefusalCode;
use x0_wire::{InvitationToken, NodeId};

use crate::cli::{
    AuditCommand, BenchCommand, CaCommand, Command, IdentityCommand, InitArgs, JoinArgs,
    KnowledgeArgs,
};
use x0_node::exit::{self, CmdResult, Exit};
use x0_node::state::{META_ADVERTISE, META_TRUST_DOMAIN, node_trust_domain, refresh_ca_node_svid};
use x0_node::time::{now, now_secs, rfc3339};

pub fn run(cmd: Command) -> CmdResult {
    match cmd {
        Command::Init(args) => init(args),
        Command::Identity(IdentityCommand::Show { state, json }) => show(&state.state_dir, json),
        Command::Identity(IdentityCommand::Sign { state, file, json }) => {
            sign(&state.state_dir, &file, json)
        }
        Command::Identity(IdentityCommand::Verify {
            file,
            signature,
            public_key,
            state_dir,
            json,
        }) => verify(&file, &signature, public_key, state_dir.as_deref(), json),
        Command::Ca(CaCommand::Init {
            trust_domain,
            state,
            svid_ttl,
            json,
        }) => ca_init(&trust_domain, &state.state_dir, svid_ttl, json),
        Command::Ca(CaCommand::Invite {
            state,
            ttl,
            bootstrap,
            json,
        }) => ca_invite(&state.state_dir, ttl, bootstrap, json),
        Command::Ca(CaCommand::Revoke {
            node_id,
            state,
            reason,
            json,
        }) => ca_revoke(&node_id, &state.state_dir, &reason, json),
        Command::Join(args) => join(args),
        Command::Bench(BenchCommand::Handshake { count, json, out }) => {
            x0_bench::handshake::run(count, json, &out)
        }
        Command::Bench(BenchCommand::Throughput(args)) => x0_bench::throughput::run(args),
        Command::Bench(BenchCommand::Failover(args)) => x0_bench::failover::run(args),
        Command::Bench(BenchCommand::Heal(args)) => x0_bench::heal::run(args),
        Command::Bench(BenchCommand::EbpfOverhead(args)) => x0_bench::ebpf::run(args),
        Command::Bench(BenchCommand::MetricsScrape(args)) => x0_bench::scrape::run(args),
        Command::Status(args) => crate::ctl::run(crate::ctl::View::Status, &args),
        Command::Peers(args) => crate::ctl::run(crate::ctl::View::Peers, &args),
        Command::Links(args) => crate::ctl::run(crate::ctl::View::Links, &args),
        Command::Routes(args) => crate::ctl::run(crate::ctl::View::Routes, &args),
        Command::Topology(args) => crate::ctl::run(crate::ctl::View::Topology, &args),
        Command::Incidents(args) => crate::ctl::run(crate::ctl::View::Incidents, &args),
        Command::Fault(cmd) => crate::fault::run(cmd),
        Command::Audit(AuditCommand::Verify { at, json }) => audit_verify(&at, json),
        Command::Audit(AuditCommand::Export { at }) => audit_export(&at),
        Command::Bench(BenchCommand::UdpSource(args)) => x0_bench::failover::udp_source(args),
        Command::Bench(BenchCommand::UdpSink(args)) => x0_bench::failover::udp_sink(args),
        Command::Sim(args) => x0_bench::sim::run(args),
        Command::Lab(cmd) => x0_bench::lab::run(cmd),
        Command::Demo(args) => x0_bench::demo::run(args),
        Command::Up(_) => Err(Exit::failure("internal: `up` is dispatched by main")),
    }
}

fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", human(value));
    }
}

fn trust_domain_arg(s: &str) -> Result<TrustDomain, Exit> {
    TrustDomain::new(s).map_err(|e| Exit::usage(e.to_string()))
}

fn require_keys(store: &StateStore) -> Result<NodeKeys, Exit> {
    store.node_keys()?.ok_or_else(|| {
        Exit::new(
            exit::NO_INPUT,
            format!(
                "{}: no node identity here; run `x0t init --state-dir {}` first",
                store.dir().display(),
                store.dir().display()
            ),
        )
    })
}

fn require_ca(store: &StateStore) -> Result<MeshCa, Exit> {
    store.ca()?.ok_or_else(|| {
        Exit::new(
            exit::NO_INPUT,
            format!(
                "{}: no mesh CA here; run `x0t ca init --trust-domain DOMAIN --state-dir {}` on the CA node",
                store.dir().display(),
                store.dir().display()
            ),
        )
    })
}

#[derive(Serialize)]
struct InitView {
    node_id: NodeId,
    created: bool,
    state_dir: String,
    overlay_addr: Option<String>,
    svid_issued: bool,
}

fn init(args: InitArgs) -> CmdResult {
    let td = args
        .trust_domain
        .as_deref()
        .map(trust_domain_arg)
        .transpose()?;
    let store = StateStore::open(&args.state.state_dir)?;
    if let Some(td) = &td {
        match node_trust_domain(&store)? {
            Some(existing) if &existing != td => {
                return Err(Exit::usage(format!(
                    "this state directory belongs to trust domain {existing}, not {td}"
                )));
            }
            _ => store.set_meta(META_TRUST_DOMAIN, td.as_str())?,
        }
    }
    let (keys, created) = match store.node_keys()? {
        Some(k) => (k, false),
        None => {
            let k = NodeKeys::generate().map_err(|e| Exit::failure(e.to_string()))?;
            let created = store.create_node_keys(&k, now_secs())?;
            (require_keys(&store).unwrap_or(k), created)
        }
    };
    let svid_issued = refresh_ca_node_svid(&store)?;
    let view = InitView {
        node_id: keys.node_id(),
        created,
        state_dir: store.dir().display().to_string(),
        overlay_addr: node_trust_domain(&store)?
            .map(|td| MeshPrefix::of(&td).address_of(keys.node_id()).to_string()),
        svid_issued,
    };
    print(args.json, &view, |v| {
        let mut s = if v.created {
            format!("created node identity {} in {}", v.node_id, v.state_dir)
        } else {
            format!(
                "a node identity already exists in {} (node {}); it was left unchanged",
                v.state_dir, v.node_id
            )
        };
        if v.svid_issued {
            s.push_str("\nthis state directory also holds the mesh CA: issued this node's SVID");
        }
        s
    });
    Ok(())
}

#[derive(Serialize)]
struct IdentityView {
    node_id: NodeId,
    trust_domain: Option<String>,
    mesh_prefix: Option<String>,
    overlay_addr: Option<String>,
    spiffe_id: Option<String>,
    svid_pem: Option<String>,
    svid_not_after: Option<String>,
    bundle_pem: Option<String>,
    mldsa65_public_key: String,
    tls_public_key: String,
    is_ca: bool,
    ca_fingerprint: Option<String>,
    ca_addr: Option<String>,
}

fn show(dir: &Path, json: bool) -> CmdResult {
    let store = StateStore::open_existing(dir)?;
    let keys = require_keys(&store)?;
    refresh_ca_node_svid(&store)?;
    let td = node_trust_domain(&store)?;
    let membership = store.membership()?;
    let ca = store.ca()?;
    let view = IdentityView {
        node_id: keys.node_id(),
        trust_domain: td.as_ref().map(|t| t.to_string()),
        mesh_prefix: td.as_ref().map(|t| MeshPrefix::of(t).to_string()),
        overlay_addr: td
            .as_ref()
            .map(|t| MeshPrefix::of(t).address_of(keys.node_id()).to_string()),
        spiffe_id: membership
            .as_ref()
            .map(|m| m.trust_domain.node_id(keys.node_id()).to_string()),
        svid_pem: membership.as_ref().map(|m| cert_pem(&m.svid_der)),
        svid_not_after: membership.as_ref().map(|m| rfc3339(m.not_after_unix)),
        bundle_pem: membership.as_ref().map(|m| m.bundle_pem.clone()),
        mldsa65_public_key: B64.encode(keys.mldsa_public_key()),
        tls_public_key: B64.encode(
            keys.tls_spki_der()
                .map_err(|e| Exit::failure(e.to_string()))?,
        ),
        is_ca: ca.is_some(),
        ca_fingerprint: ca.as_ref().map(|c| hex::encode(c.fingerprint())),
        ca_addr: membership.as_ref().and_then(|m| m.ca_addr.clone()),
    };
    print(json, &view, |v| {
        let none = || "-".to_string();
        format!(
            "node_id:       {}\ntrust_domain:  {}\noverlay_addr:  {}\nspiffe_id:     {}\nsvid_expires:  {}\nis_ca:         {}\nmldsa65_public_key: {}…",
            v.node_id,
            v.trust_domain.clone().unwrap_or_else(none),
            v.overlay_addr.clone().unwrap_or_else(none),
            v.spiffe_id
                .clone()
                .unwrap_or_else(|| "- (no SVID yet: join a mesh)".into()),
            v.svid_not_after.clone().unwrap_or_else(none),
            v.is_ca,
            &v.mldsa65_public_key[..32],
        )
    });
    Ok(())
}

fn read_file(path: &Path) -> Result<Vec<u8>, Exit> {
    std::fs::read(path).map_err(|e| Exit::new(exit::NO_INPUT, format!("{}: {e}", path.display())))
}

#[derive(Serialize)]
struct SignView {
    algorithm: &'static str,
    node_id: NodeId,
    signature: String,
    public_key: String,
}

fn sign(dir: &Path, file: &Path, json: bool) -> CmdResult {
    let store = StateStore::open_existing(dir)?;
    let keys = require_keys(&store)?;
    let data = read_file(file)?;
    let sig = keys
        .sign_mldsa(&data)
        .map_err(|e| Exit::failure(e.to_string()))?;
    let view = SignView {
        algorithm: "ML-DSA-65",
        node_id: keys.node_id(),
        signature: B64.encode(sig),
        public_key: B64.encode(keys.mldsa_public_key()),
    };
    print(json, &view, |v| v.signature.clone());
    Ok(())
}

#[derive(Serialize)]
struct VerifyView {
    valid: bool,
    algorithm: &'static str,
}

fn verify(
    file: &Path,
    signature: &str,
    public_key: Option<String>,
    state_dir: Option<&Path>,
    json: bool,
) -> CmdResult {
    let key = match (public_key, state_dir) {
        (Some(k), _) => B64
            .decode(k.trim())
            .map_err(|_| Exit::usage("--public-key is not base64"))?,
        (None, Some(dir)) => {
            let store = StateStore::open_existing(dir)?;
            require_keys(&store)?.mldsa_public_key().to_vec()
        }
        (None, None) => return Err(Exit::usage("give --public-key or --state-dir")),
    };
    let sig = B64
        .decode(signature.trim())
        .map_err(|_| Exit::usage("--signature is not base64"))?;
    let data = read_file(file)?;
    let valid = verify_mldsa65(&key, &data, &sig).is_ok();
    print(
        json,
        &VerifyView {
            valid,
            algorithm: "ML-DSA-65",
        },
        |v| {
            if v.valid {
                "valid".into()
            } else {
                "INVALID".into()
            }
        },
    );
    if valid {
        Ok(())
    } else {
        Err(Exit::failure("signature does not verify"))
    }
}

#[derive(Serialize)]
struct CaInitView {
    trust_domain: String,
    created: bool,
    ca_fingerprint: String,
    mesh_prefix: String,
    svid_ttl_s: u64,
    node_svid_issued: bool,
}

fn ca_init(td: &str, dir: &Path, svid_ttl: std::time::Duration, json: bool) -> CmdResult {
    let td = trust_domain_arg(td)?;
    if svid_ttl.as_secs() < 2 {
        return Err(Exit::usage("--svid-ttl must be at least 2s"));
    }
    let store = StateStore::open(dir)?;
    if let Some(existing) = node_trust_domain(&store)?
        && existing != td
    {
        return Err(Exit::usage(format!(
            "this state directory belongs to trust domain {existing}, not {td}"
        )));
    }
    let (ca, created) = match store.ca()? {
        Some(ca) => (ca, false),
        None => {
            let ca = MeshCa::create(td.clone(), now()).map_err(|e| Exit::failure(e.to_string()))?;
            let created = store.create_ca(&ca, svid_ttl, now_secs())?;
            (require_ca(&store)?, created)
        }
    };
    store.set_meta(META_TRUST_DOMAIN, ca.trust_domain().as_str())?;
    let node_svid_issued = refresh_ca_node_svid(&store)?;
    let view = CaInitView {
        trust_domain: ca.trust_domain().to_string(),
        created,
        ca_fingerprint: hex::encode(ca.fingerprint()),
        mesh_prefix: MeshPrefix::of(ca.trust_domain()).to_string(),
        svid_ttl_s: store.svid_ttl()?.as_secs(),
        node_svid_issued,
    };
    print(json, &view, |v| {
        let mut s = if v.created {
            format!(
                "created mesh CA for trust domain {} (fingerprint {}, overlay prefix {})",
                v.trust_domain, v.ca_fingerprint, v.mesh_prefix
            )
        } else {
            format!(
                "a mesh CA for {} already exists here (fingerprint {}); it was left unchanged",
                v.trust_domain, v.ca_fingerprint
            )
        };
        if v.node_svid_issued {
            s.push_str("\nissued this node's own SVID (this is the mesh's first node)");
        }
        s
    });
    Ok(())
}

#[derive(Serialize)]
struct InviteView {
    token: String,
    invitation_id: String,
    expires_at: String,
    bootstrap: String,
    trust_domain: String,
    ca_fingerprint: String,
}

fn ca_invite(
    dir: &Path,
    ttl: std::time::Duration,
    bootstrap: Option<String>,
    json: bool,
) -> CmdResult {
    let store = StateStore::open_existing(dir)?;
    let ca = require_ca(&store)?;
    let bootstrap = match bootstrap.or(store.meta(META_ADVERTISE)?) {
        Some(b) => b,
        None => {
            return Err(Exit::usage(
                "no bootstrap address known: start the CA node's daemon (`x0t up`) with a specific \
                 `listen` or `advertise` address, or pass --bootstrap HOST:PORT",
            ));
        }
    };
    if bootstrap
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return Err(Exit::usage(format!(
            "--bootstrap must be HOST:PORT, got {bootstrap:?}"
        )));
    }
    if ttl.as_secs() == 0 {
        return Err(Exit::usage("--ttl must be at least 1s"));
    }
    let token = x0_identity::invitation::new_invitation(&store, &ca, &bootstrap, ttl, now_secs())?;
    let view = InviteView {
        token: token.to_text(),
        invitation_id: hex::encode(token.invitation_id),
        expires_at: rfc3339(token.expires_at_unix),
        bootstrap,
        trust_domain: token.trust_domain.clone(),
        ca_fingerprint: hex::encode(token.ca_fingerprint),
    };
    print(json, &view, |v| v.token.clone());
    Ok(())
}

#[derive(Serialize)]
struct RevokeView {
    node_id: NodeId,
    newly_revoked: bool,
    revocation_serial: u64,
    was_member: bool,
}

fn ca_revoke(node: &str, dir: &Path, reason: &str, json: bool) -> CmdResult {
    let node: NodeId = node.parse().map_err(|e| Exit::usage(format!("{e}")))?;
    let mut store = StateStore::open_existing(dir)?;
    let ca = require_ca(&store)?;
    if store.node_keys()?.is_some_and(|k| k.node_id() == node) {
        return Err(Exit::usage("refusing to revoke the CA node itself"));
    }
    let was_member = store.is_member(node)?;
    let newly = store.revoke(&ca, node, reason, now_secs())?.is_some();
    let serial = store.revocation_list()?.map(|(_, l)| l.serial).unwrap_or(0);
    let view = RevokeView {
        node_id: node,
        newly_revoked: newly,
        revocation_serial: serial,
        was_member,
    };
    print(json, &view, |v| {
        let mut s = if v.newly_revoked {
            format!(
                "revoked node {} (revocation list serial {})",
                v.node_id, v.revocation_serial
            )
        } else {
            format!("node {} was already revoked", v.node_id)
        };
        if !v.was_member {
            s.push_str("\nnote: this CA never issued an SVID to that node");
        }
        s
    });
    Ok(())
}

#[derive(Serialize)]
struct JoinView {
    node_id: NodeId,
    trust_domain: String,
    spiffe_id: String,
    overlay_addr: String,
    svid_not_after: String,
    ca_addr: String,
    kx_group: String,
}

fn read_token(arg: &str) -> Result<InvitationToken, Exit> {
    let text = if arg == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Exit::usage(format!("reading the token from stdin: {e}")))?;
        s
    } else {
        arg.to_owned()
    };
    InvitationToken::from_text(&text)
        .map_err(|e| Exit::new(exit::DATA, format!("invalid invitation token: {e}")))
}

fn join_error(token: &InvitationToken, e: CaClientError) -> Exit {
    let fp = hex::encode(token.ca_fingerprint);
    let msg = match &e {
        CaClientError::Refused(r) => match r.code {
            RefusalCode::InvitationUsed => {
                format!("this invitation was already used: {}", r.message)
            }
            RefusalCode::InvitationExpired => format!("this invitation has expired: {}", r.message),
            RefusalCode::UnknownInvitation => {
                "the CA does not know this invitation (wrong mesh, or the CA was re-created)".into()
            }
            RefusalCode::Busy => format!(
                "the CA node is busy with other joins; nothing was used up, try again in a few \
                 seconds ({})",
                r.message
            ),
            _ => format!("the CA refused to admit this node: {}", r.message),
        },
        CaClientError::Link {
            addr,
            source: LinkError::Failed { reason, .. },
        } if matches!(
            reason,
            FailureReason::UntrustedIssuer | FailureReason::BadCertificate | FailureReason::Other
        ) && e.to_string().contains("certificate") =>
        {
            format!(
                "the node at {addr} did not prove it belongs to the CA pinned in the invitation \
                 (CA fingerprint {fp}): wrong CA fingerprint or wrong bootstrap address; nothing was sent"
            )
        }
        other => other.to_string(),
    };
    Exit::failure(msg)
}

fn join(args: JoinArgs) -> CmdResult {
    let token = read_token(&args.token)?;
    if token.expires_at_unix <= now_secs() {
        return Err(Exit::failure(format!(
            "this invitation expired at {}; ask the CA operator for a new one",
            rfc3339(token.expires_at_unix)
        )));
    }
    let td = trust_domain_arg(&token.trust_domain)?;
    let store = StateStore::open(&args.state.state_dir)?;
    if let Some(m) = store.membership()? {
        return Err(Exit::failure(format!(
            "this node is already a member of {} (SVID valid until {}); use another state directory to join another mesh",
            m.trust_domain,
            rfc3339(m.not_after_unix)
        )));
    }
    if let Some(existing) = node_trust_domain(&store)?
        && existing != td
    {
        return Err(Exit::usage(format!(
            "this node was initialised for trust domain {existing}, but the invitation is for {td}"
        )));
    }
    let keys = match store.node_keys()? {
        Some(k) => k,
        None => {
            let k = NodeKeys::generate().map_err(|e| Exit::failure(e.to_string()))?;
            store.create_node_keys(&k, now_secs())?;
            eprintln!(
                "created node identity {} in {}",
                k.node_id(),
                store.dir().display()
            );
            require_keys(&store)?
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::failure(e.to_string()))?;
    let (issued, group) = runtime
        .block_on(ca_client::join(&token, &keys, &LinkConfig::default()))
        .map_err(|e| join_error(&token, e))?;
    let membership = accept_issued(
        &store,
        &keys,
        &issued,
        Some(&token.ca_fingerprint),
        Some(token.bootstrap.clone()),
        now(),
    )
    .map_err(|e| match e {
        AcceptError::Store(s) => Exit::from(s),
        other => Exit::failure(other.to_string()),
    })?;
    store.set_meta(META_TRUST_DOMAIN, membership.trust_domain.as_str())?;
    debug_assert!(
        issued
            .bundle_der
            .iter()
            .any(|c| sha256(c) == token.ca_fingerprint)
    );
    let view = JoinView {
        node_id: keys.node_id(),
        trust_domain: membership.trust_domain.to_string(),
        spiffe_id: membership.trust_domain.node_id(keys.node_id()).to_string(),
        overlay_addr: MeshPrefix::of(&membership.trust_domain)
            .address_of(keys.node_id())
            .to_string(),
        svid_not_after: rfc3339(membership.not_after_unix),
        ca_addr: token.bootstrap.clone(),
        kx_group: group,
    };
    print(args.json, &view, |v| {
        format!(
            "joined {} as {} (overlay {}), SVID valid until {}; link to the CA node used {}",
            v.trust_domain, v.spiffe_id, v.overlay_addr, v.svid_not_after, v.kx_group
        )
    });
    Ok(())
}

/// The state directory named by `--state-dir`, or by `--config`'s `state_dir`.
fn knowledge_dir(at: &KnowledgeArgs) -> Result<std::path::PathBuf, Exit> {
    match (&at.state_dir, &at.config) {
        (Some(dir), _) => Ok(dir.clone()),
        (None, Some(cfg)) => x0_node::config::Config::load(cfg)
            .map(|c| c.state_dir)
            .map_err(|e| Exit::usage(e.to_string())),
        (None, None) => Err(Exit::usage("give --state-dir DIR or --config FILE")),
    }
}

fn knowledge_error(e: x0_heal::KnowledgeError) -> Exit {
    use x0_heal::KnowledgeError as K;
    let code = match &e {
        K::Missing(_) => exit::NO_INPUT,
        K::Corrupt { .. } | K::NewerSchema { .. } => exit::DATA,
        _ => exit::FAILURE,
    };
    Exit::new(code, e.to_string())
}

/// The node's keys and its knowledge base, opened read-only.
fn open_knowledge(at: &KnowledgeArgs) -> Result<(NodeKeys, x0_heal::KnowledgeBase), Exit> {
    let dir = knowledge_dir(at)?;
    let store = StateStore::open_existing(&dir)?;
    let keys = require_keys(&store)?;
    drop(store);
    let kb = x0_heal::KnowledgeBase::open_read_only(&dir.join(x0_identity::store::DB_FILE))
        .map_err(knowledge_error)?;
    Ok((keys, kb))
}

#[derive(Serialize)]
struct AuditVerdict {
    ok: bool,
    entries: u64,
    head_seq: Option<u64>,
    head_hash: Option<String>,
    signer: NodeId,
    first_bad_entry: Option<u64>,
    flaw: Option<String>,
}

fn audit_verify(at: &KnowledgeArgs, json: bool) -> CmdResult {
    let (keys, kb) = open_knowledge(at)?;
    let audit = kb.audit();
    let verdict = match audit.verify(keys.mldsa_public_key()) {
        Ok(v) => AuditVerdict {
            ok: true,
            entries: v.entries,
            head_seq: v.head.map(|(s, _)| s),
            head_hash: v.head.map(|(_, h)| hex::encode(h)),
            signer: keys.node_id(),
            first_bad_entry: None,
            flaw: None,
        },
        Err(x0_heal::AuditError::Broken { seq, flaw }) => AuditVerdict {
            ok: false,
            entries: audit.len().unwrap_or(0),
            head_seq: None,
            head_hash: None,
            signer: keys.node_id(),
            first_bad_entry: Some(seq),
            flaw: Some(flaw.to_string()),
        },
        Err(e) => return Err(Exit::failure(e.to_string())),
    };
    print(json, &verdict, |v| match (v.first_bad_entry, &v.flaw) {
        (Some(seq), Some(flaw)) => format!(
            "audit log BROKEN at entry {seq}: {flaw} ({} entries stored; signer {})",
            v.entries, v.signer
        ),
        _ => format!(
            "audit log OK: {} entries, chain and ML-DSA-65 signatures verified (signer {})\nhead: \
             entry {} sha256 {}",
            v.entries,
            v.signer,
            v.head_seq.map_or("-".into(), |s| s.to_string()),
            v.head_hash.as_deref().unwrap_or("-")
        ),
    });
    match verdict.first_bad_entry {
        Some(seq) => Err(Exit::failure(format!(
            "the audit log does not verify: entry {seq}: {}",
            verdict.flaw.unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

fn audit_export(at: &KnowledgeArgs) -> CmdResult {
    let (_, kb) = open_knowledge(at)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let n = kb
        .audit()
        .export_jsonl(&mut out)
        .map_err(|e| Exit::failure(e.to_string()))?;
    std::io::Write::flush(&mut out).map_err(|e| Exit::failure(e.to_string()))?;
    tracing::info!(entries = n, "audit log exported");
    Ok(())
}
