//! Built-in HTTPS (issue 7): the real Anki client logs in and syncs over
//! `https://` with a test certificate, once with TLS 1.2 forced (what iOS
//! needs) and once with the default versions; `openssl s_client` checks which
//! versions each configuration accepts.
//!
//! The certificates (a test CA and a server certificate it signs, as the
//! README recommends for a LAN) are made with the `openssl` command at test
//! time; without it the test is skipped with a message. The client's rustls
//! takes its trust roots from `rustls-native-certs`, which reads
//! `SSL_CERT_FILE`: that is how the test CA is trusted.

#![cfg(feature = "tls")]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Account, Server, client_ok};
use tempfile::TempDir;

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes `ca.pem`, `cert.pem` (for 127.0.0.1, signed by the CA) and
/// `key.pem` into `dir`; false if openssl is missing.
fn make_certificates(dir: &Path) -> bool {
    if !openssl(dir, &["version"]) {
        return false;
    }
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let steps: [&[&str]; 3] = [
        &[
            &["req", "-x509", "-nodes", "-days", "2"][..],
            &ec,
            &[
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=test CA",
            ],
        ]
        .concat(),
        &[
            &["req", "-nodes"][..],
            &ec,
            &[
                "-keyout",
                "key.pem",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
    ];
    for step in steps {
        assert!(openssl(dir, step), "openssl {step:?} failed");
    }
    true
}

/// A temporary folder with the certificates of [`make_certificates`]; `None`
/// (and the test says it is skipped) without the `openssl` command.
fn certificates() -> Option<TempDir> {
    let certs = TempDir::new().unwrap();
    if make_certificates(certs.path()) {
        return Some(certs);
    }
    eprintln!("SKIPPED: the `openssl` command is not installed (needed to make test certificates)");
    None
}

/// True if `openssl s_client` completes a handshake with `version`
/// (`-tls1_2` or `-tls1_3`) and verifies the certificate.
fn handshake(server: &Server, ca: &Path, version: &str) -> bool {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{}", server.port()),
        ])
        .args([
            version,
            "-CAfile",
            ca.to_str().unwrap(),
            "-verify_return_error",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("Verify return code: 0 (ok)")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// One test function: it sets `SSL_CERT_FILE` for the client processes it
/// starts, and no other test in this binary runs beside it.
#[test]
fn real_client_syncs_over_https_with_tls_1_2_forced_and_with_1_3() {
    let Some(certs) = certificates() else {
        return;
    };
    let ca = certs.path().join("ca.pem");
    let cert = certs.path().join("cert.pem");
    let key = certs.path().join("key.pem");
    let tls_env = |versions: &'static str| {
        [
            ("SYNC_TLS_CERT", path_str(&cert).to_string()),
            ("SYNC_TLS_KEY", path_str(&key).to_string()),
            ("SYNC_TLS_VERSIONS", versions.to_string()),
        ]
    };
    let start = |versions: &'static str| {
        let env = tls_env(versions);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start_ours(&[("user", "pass")], &env)
    };

    // Before trusting the test CA, the real client must refuse the server:
    // this is what proves that the trust below comes from SSL_CERT_FILE.
    let mut only_1_2 = start("1.2");
    assert!(only_1_2.endpoint().starts_with("https://"));
    let untrusted = Account {
        server: &only_1_2,
        user: "user",
        password: "pass",
    }
    .run("login", None);
    assert!(untrusted.is_err(), "an untrusted certificate was accepted");

    only_1_2.trust_ca(&ca);

    assert!(handshake(&only_1_2, &ca, "-tls1_2"), "TLS 1.2 refused");
    assert!(!handshake(&only_1_2, &ca, "-tls1_3"), "TLS 1.3 accepted");

    // A full sync cycle with TLS 1.2 only: upload from A, download to B,
    // a change from B back to A.
    let dir = TempDir::new().unwrap();
    let (a, b) = (dir.path().join("a.anki2"), dir.path().join("b.anki2"));
    let user = Account {
        server: &only_1_2,
        user: "user",
        password: "pass",
    };
    let login = user.run("login", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(login["hkey"], "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d");
    client_ok(&["make", "--path", path_str(&a), "--notes", "30"]);
    assert_eq!(user.sync(&a), "FULL_UPLOAD");
    user.run("full-upload", Some(&a))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(user.sync(&b), "FULL_DOWNLOAD");
    let downloaded = user
        .run("full-download", Some(&b))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(downloaded["notes"], 30);
    client_ok(&["add-notes", "--path", path_str(&b), "--notes", "3"]);
    // (a completed normal sync reports NO_CHANGES)
    assert_eq!(user.sync(&b), "NO_CHANGES");
    assert_eq!(user.sync(&a), "NO_CHANGES");
    let counts = client_ok(&["count", "--path", path_str(&a)]);
    assert_eq!(counts["notes"], 33, "{counts}");
    drop(only_1_2);

    // The default offers both versions.
    let mut both = start("1.2,1.3");
    both.trust_ca(&ca);
    assert!(handshake(&both, &ca, "-tls1_2"), "TLS 1.2 refused");
    assert!(handshake(&both, &ca, "-tls1_3"), "TLS 1.3 refused");
    let user = Account {
        server: &both,
        user: "user",
        password: "pass",
    };
    let login = user.run("login", None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(login["hkey"], "b2619aa1529dfdc4248e6edbf3c1b2a2b014cf6d");
}

/// Issue 17: `--healthcheck` in the server's own environment speaks HTTPS
/// to a server with built-in HTTPS (as in a container image built with
/// `tls`), for either TLS version the server offers, and accepts only the
/// certificate of `SYNC_TLS_CERT`.
#[test]
fn healthcheck_speaks_https_to_a_server_with_built_in_https() {
    let Some(certs) = certificates() else {
        return;
    };
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    // A certificate of some other server, for the same key type.
    assert!(openssl(
        certs.path(),
        &[
            "req",
            "-x509",
            "-nodes",
            "-days",
            "2",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "other-key.pem",
            "-out",
            "other.pem",
            "-subj",
            "/CN=other",
        ]
    ));
    let other = certs.path().join("other.pem");
    for versions in ["1.2", "1.3", "1.2,1.3"] {
        let env = [
            ("SYNC_TLS_CERT", path_str(&cert)),
            ("SYNC_TLS_KEY", path_str(&key)),
            ("SYNC_TLS_VERSIONS", versions),
        ];
        let server = Server::start_ours(&[("user", "pass")], &env);
        let port = server.port().to_string();
        // As in a container: SYNC_HOST=0.0.0.0, checked through loopback.
        let check = |cert_file: Option<&Path>| {
            let mut cmd = Command::new(crate::support::our_binary());
            cmd.env_clear()
                .env("SYNC_BASE", certs.path())
                .env("SYNC_HOST", "0.0.0.0")
                .env("SYNC_PORT", &port)
                .env("SYNC_TLS_VERSIONS", versions)
                .arg("--healthcheck");
            if let Some(cert_file) = cert_file {
                cmd.env("SYNC_TLS_CERT", cert_file)
                    .env("SYNC_TLS_KEY", &key);
            }
            let out = cmd.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        assert_eq!(
            check(Some(&cert)),
            (Some(0), String::new()),
            "TLS {versions}"
        );
        // Plain HTTP cannot talk to it (what the check did before).
        assert_eq!(check(None).0, Some(1), "TLS {versions}");
        let (code, err) = check(Some(&other));
        assert_eq!(code, Some(1));
        assert!(err.contains("not the one in SYNC_TLS_CERT"), "{err}");
        drop(server);
        let (code, err) = check(Some(&cert));
        assert_eq!(code, Some(1));
        assert!(err.contains("unhealthy: no server answers"), "{err}");
    }
}

/// Issue 17: with built-in HTTPS, the `/` page people open in a browser
/// gives the `https://` address to type into Anki.
#[test]
fn index_page_gives_the_https_address() {
    let Some(certs) = certificates() else {
        return;
    };
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let env = [
        ("SYNC_TLS_CERT", path_str(&cert)),
        ("SYNC_TLS_KEY", path_str(&key)),
    ];
    let server = Server::start_ours(&[("user", "pass")], &env);
    let address = format!("127.0.0.1:{}", server.port());
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &address, "-CAfile"])
        .arg(certs.path().join("ca.pem"))
        .arg("-verify_return_error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    s_client
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!("GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let out = s_client.wait_with_output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(
        page.contains(&format!("\n    https://{address}/\n")),
        "{page}"
    );
}
