//! The one-shot commands, run as a user would run them.

mod support;

use std::os::unix::fs::PermissionsExt;

use base64::Engine as _;
use support::*;
use x0_wire::InvitationToken;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[test]
fn init_twice_never_overwrites_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("n");
    let first = run_json(&["init", "--state-dir", s(&state), "--json"]);
    assert_eq!(first["created"], true);
    let again = run(&["init", "--state-dir", s(&state)]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("already exists"),
        "{}",
        stdout(&again)
    );
    let second = run_json(&["init", "--state-dir", s(&state), "--json"]);
    assert_eq!(second["created"], false);
    assert_eq!(first["node_id"], second["node_id"]);

    let db = state.join("state.db");
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn ca_node_has_a_valid_svid_without_joining_in_either_order() {
    for order in ["init-first", "ca-first"] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("ca");
        let ca_init = [
            "ca",
            "init",
            "--trust-domain",
            "mesh.test",
            "--state-dir",
            s(&state),
            "--json",
        ];
        let init = ["init", "--state-dir", s(&state), "--json"];
        if order == "init-first" {
            run_json(&init);
            assert_eq!(run_json(&ca_init)["node_svid_issued"], true);
        } else {
            assert_eq!(run_json(&ca_init)["node_svid_issued"], false);
            assert_eq!(run_json(&init)["svid_issued"], true);
        }
        let show = run_json(&["identity", "show", "--state-dir", s(&state), "--json"]);
        let node_id = show["node_id"].as_str().unwrap();
        assert_eq!(
            show["spiffe_id"],
            format!("spiffe://mesh.test/node/{node_id}")
        );
        assert_eq!(show["is_ca"], true);
        let overlay: std::net::Ipv6Addr = show["overlay_addr"].as_str().unwrap().parse().unwrap();
        assert_eq!(overlay.octets()[0], 0xfd, "overlay address is a ULA");
        let pk = B64
            .decode(show["mldsa65_public_key"].as_str().unwrap())
            .unwrap();
        assert_eq!(pk.len(), 1952, "raw FIPS 204 ML-DSA-65 public key");

        let td = x0_identity::TrustDomain::new("mesh.test").unwrap();
        let bundle =
            x0_identity::TrustBundle::from_pem(td, show["bundle_pem"].as_str().unwrap()).unwrap();
        let svid =
            rustls_pki_types::CertificateDer::from(pem_der(show["svid_pem"].as_str().unwrap()));
        let v = bundle
            .verify(
                &svid,
                &[],
                rustls_pki_types::UnixTime::now(),
                x0_identity::Role::Server,
            )
            .unwrap();
        assert_eq!(v.node_id.to_string(), node_id);
        assert!(
            v.not_after_unix - v.not_before_unix <= 3600 + 60,
            "default lifetime 1 h"
        );
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(body).unwrap()
}

#[test]
fn identity_without_membership_shows_no_svid() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("n");
    run_json(&["init", "--state-dir", s(&state), "--json"]);
    let show = run_json(&["identity", "show", "--state-dir", s(&state), "--json"]);
    assert!(show["spiffe_id"].is_null());
    assert!(show["overlay_addr"].is_null(), "no trust domain known yet");
    run_json(&[
        "init",
        "--state-dir",
        s(&state),
        "--trust-domain",
        "mesh.test",
        "--json",
    ]);
    let show = run_json(&["identity", "show", "--state-dir", s(&state), "--json"]);
    assert!(show["overlay_addr"].is_string());
}

#[test]
fn signatures_verify_here_and_with_an_independent_fips204_implementation() {
    use ml_dsa::{EncodedVerifyingKey, MlDsa65, Signature, Verifier, VerifyingKey};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("n");
    run_json(&["init", "--state-dir", s(&state), "--json"]);
    let file = dir.path().join("msg.txt");
    std::fs::write(&file, b"the mesh says hello").unwrap();
    let signed = run_json(&[
        "identity",
        "sign",
        "--state-dir",
        s(&state),
        s(&file),
        "--json",
    ]);
    let sig_b64 = signed["signature"].as_str().unwrap();
    let pk_b64 = signed["public_key"].as_str().unwrap();

    assert!(
        run(&[
            "identity",
            "verify",
            "--state-dir",
            s(&state),
            "--signature",
            sig_b64,
            s(&file)
        ])
        .status
        .success()
    );
    assert!(
        run(&[
            "identity",
            "verify",
            "--public-key",
            pk_b64,
            "--signature",
            sig_b64,
            s(&file)
        ])
        .status
        .success()
    );

    // RustCrypto's ml-dsa: pure ML-DSA-65, empty context.
    let pk = B64.decode(pk_b64).unwrap();
    let vk = VerifyingKey::<MlDsa65>::decode(
        &EncodedVerifyingKey::<MlDsa65>::try_from(pk.as_slice()).unwrap(),
    );
    let sig = Signature::<MlDsa65>::try_from(B64.decode(sig_b64).unwrap().as_slice()).unwrap();
    vk.verify(b"the mesh says hello", &sig).unwrap();

    std::fs::write(&file, b"the mesh says hellp").unwrap();
    let bad = run(&[
        "identity",
        "verify",
        "--public-key",
        pk_b64,
        "--signature",
        sig_b64,
        s(&file),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stdout(&bad).contains("INVALID"));
}

#[test]
fn insecure_permissions_and_corrupt_state_are_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("n");
    run_json(&["init", "--state-dir", s(&state), "--json"]);

    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = run(&["identity", "show", "--state-dir", s(&state)]);
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert!(stderr(&o).contains("chmod 700"), "{}", stderr(&o));
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();

    let db = state.join("state.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run(&["identity", "show", "--state-dir", s(&state)]);
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert!(stderr(&o).contains("chmod 600"));
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();

    for f in ["state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(state.join(f));
    }
    let garbage = vec![0x5a_u8; 8192];
    std::fs::write(&db, &garbage).unwrap();
    let o = run(&["identity", "show", "--state-dir", s(&state)]);
    assert_eq!(o.status.code(), Some(65), "{}", stderr(&o));
    assert!(stderr(&o).contains("damaged"), "{}", stderr(&o));
    let o = run(&["init", "--state-dir", s(&state)]);
    assert_eq!(
        o.status.code(),
        Some(65),
        "init must not replace a damaged database"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the damaged file is left as it was"
    );

    let o = run(&[
        "identity",
        "show",
        "--state-dir",
        s(&dir.path().join("missing")),
    ]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_64() {
    let o = run(&[
        "ca",
        "init",
        "--trust-domain",
        "Not Valid",
        "--state-dir",
        "/tmp/x0t-never-created",
    ]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("trust domain"));
    assert!(!std::path::Path::new("/tmp/x0t-never-created").exists());
    let o = run(&["no-such-command"]);
    assert_eq!(o.status.code(), Some(64));
    let o = run(&[
        "ca",
        "revoke",
        "not-a-node-id",
        "--state-dir",
        "/tmp/x0t-never-created",
    ]);
    assert_eq!(o.status.code(), Some(64));
    let o = run(&[
        "join",
        "x0t1.garbage",
        "--state-dir",
        "/tmp/x0t-never-created",
    ]);
    assert_eq!(o.status.code(), Some(65));
    assert!(stderr(&o).contains("invalid invitation token"));
}

#[test]
fn expired_tokens_are_refused_before_any_network_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ca_node(&ca, &[]);
    let inv = run_json(&[
        "ca",
        "invite",
        "--state-dir",
        s(&ca),
        "--ttl",
        "1s",
        "--bootstrap",
        "127.0.0.1:9",
        "--json",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let o = run(&[
        "join",
        inv["token"].as_str().unwrap(),
        "--state-dir",
        s(&dir.path().join("b")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("expired"), "{}", stderr(&o));
    let token = InvitationToken::from_text(inv["token"].as_str().unwrap()).unwrap();
    assert_eq!(token.bootstrap, "127.0.0.1:9");
}

#[test]
fn invite_needs_a_known_bootstrap_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    ca_node(&ca, &[]);
    let o = run(&["ca", "invite", "--state-dir", s(&ca)]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("--bootstrap"), "{}", stderr(&o));
}

#[test]
fn state_dir_help_says_created_only_where_it_is() {
    let help = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--help");
        let o = run(&all);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        stdout(&o)
    };
    for args in [&["init"][..], &["ca", "init"], &["join"]] {
        assert!(help(args).contains("created 0700 if missing"), "{args:?}");
    }
    for args in [
        &["identity", "show"][..],
        &["identity", "sign"],
        &["ca", "invite"],
        &["ca", "revoke"],
    ] {
        let text = help(args);
        assert!(!text.contains("created"), "{args:?}: {text}");
        assert!(text.contains("must exist"), "{args:?}: {text}");
    }
    // And they do as they say: a missing directory is not created.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    for args in [
        &["identity", "show", "--state-dir"][..],
        &["ca", "invite", "--state-dir"],
    ] {
        let mut all = args.to_vec();
        all.push(s(&missing));
        let o = run(&all);
        assert_eq!(o.status.code(), Some(66), "{args:?}: {}", stderr(&o));
        assert!(!missing.exists(), "{args:?} created the directory");
    }
}
