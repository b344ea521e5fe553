//! Start-up errors: each names the file or address at fault, and no server starts.

// Tests look at the exit status and output of the programs they run, which
// osbuild_core::cmd turns into errors.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use osbuild_testing::helpers::{ostree, run};
use ostree_serve::{ServeConfig, Server};
use std::process::Command;

async fn start_error(cfg: ServeConfig) -> String {
    let mut cfg = cfg;
    cfg.http.get_or_insert("127.0.0.1:0".parse().unwrap());
    match Server::from_config(&cfg).await {
        Ok(_) => panic!("the server started with {cfg:?}"),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_names(msg: &str, what: &[&str]) {
    for w in what {
        assert!(msg.contains(w), "{w:?} not in: {msg}");
    }
}

#[tokio::test]
async fn missing_repo() {
    let msg = start_error(config(std::path::Path::new("/nonexistent/repo"))).await;
    assert_names(&msg, &["/nonexistent/repo"]);
    let msg = start_error(ServeConfig::default()).await;
    assert_names(&msg, &["--repo"]);
}

#[tokio::test]
async fn repo_that_is_not_archive_mode() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("bare");
    ostree(&["init", "--mode=bare", &format!("--repo={}", repo.display())]);
    let msg = start_error(config(&repo)).await;
    assert_names(&msg, &[&repo.display().to_string(), "archive"]);
    // A plain directory is not a repository.
    let msg = start_error(config(dir.path())).await;
    assert_names(
        &msg,
        &[
            &dir.path().display().to_string(),
            "not an OSTree repository",
        ],
    );
}

#[tokio::test]
async fn port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut cfg = config(&repo.path);
    cfg.http = Some(addr);
    let msg = start_error(cfg).await;
    assert_names(&msg, &[&addr.to_string(), "already in use"]);
}

#[tokio::test]
async fn bad_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let (cert, key) = self_signed(dir.path());
    let other_key = dir.path().join("other.pem");
    run(Command::new("openssl").args([
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        other_key.to_str().unwrap(),
    ]));
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let bad_der = dir.path().join("bad-der.pem");
    std::fs::write(
        &bad_der,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");

    let tls = |c: &std::path::Path, k: &std::path::Path| {
        let mut cfg = config(&repo.path);
        cfg.tls_cert = Some(c.to_path_buf());
        cfg.tls_key = Some(k.to_path_buf());
        cfg
    };
    for (c, k, named) in [
        (&missing, &key, &missing),
        (&cert, &missing, &missing),
        (&garbage, &key, &garbage),
        (&not_pem, &key, &not_pem),
        (&bad_der, &key, &bad_der),
        (&cert, &not_pem, &not_pem),
        (&cert, &other_key, &cert),
    ] {
        let msg = start_error(tls(c, k)).await;
        assert_names(&msg, &[&named.display().to_string()]);
    }
    let mut only_cert = config(&repo.path);
    only_cert.tls_cert = Some(cert.clone());
    let msg = start_error(only_cert).await;
    assert_names(&msg, &[&cert.display().to_string(), "--tls-key"]);
}

#[tokio::test]
async fn bad_htpasswd_file() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let missing = dir.path().join("missing");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "device:password\n").unwrap();
    for (file, what) in [(&missing, "reading"), (&plain, "line 1")] {
        let mut cfg = config(&repo.path);
        cfg.htpasswd = Some(file.clone());
        let msg = start_error(cfg).await;
        assert_names(&msg, &[&file.display().to_string(), what]);
    }
}
