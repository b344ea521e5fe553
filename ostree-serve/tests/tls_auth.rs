//! HTTPS and basic auth, each pulled with the real `ostree pull` and configured the way
//! the README tells device owners to: `--set=tls-ca-path=` for a private CA, and the
//! credentials in the remote URL (libostree's libcurl fetcher sends them).

// Tests look at the exit status and output of the programs they run, which
// osbuild_core::cmd turns into errors.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use osbuild_testing::helpers::{ostree, output, run};
use std::path::Path;
use std::process::Command;

fn htpasswd(dir: &Path, user: &str, password: &str) -> std::path::PathBuf {
    let file = dir.join("htpasswd");
    run(Command::new("htpasswd").args(["-B", "-b", "-c", file.to_str().unwrap(), user, password]));
    file
}

/// `ostree pull` into a fresh repository from `url`, with extra `remote add` options;
/// the pulled commit, or ostree's error.
fn pull(client: &Path, name: &str, url: &str, remote_opts: &[&str]) -> Result<String, String> {
    let c = format!("--repo={}", client.display());
    if !client.exists() {
        ostree(&["init", "--mode=bare-user", &c]);
    }
    let mut args = vec!["remote", "add", "--no-gpg-verify", &c];
    args.extend_from_slice(remote_opts);
    args.extend_from_slice(&[name, url]);
    ostree(&args);
    let out = output(Command::new("ostree").args(["pull", &c, name, BRANCH]));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    ostree(&["fsck", &c]);
    Ok(ostree(&["rev-parse", &c, &format!("{name}:{BRANCH}")])
        .trim()
        .to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn ostree_pulls_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let (cert, key) = self_signed(dir.path());
    let mut cfg = config(&repo.path);
    cfg.tls_cert = Some(cert.clone());
    cfg.tls_key = Some(key);
    let server = Running::start(cfg).await;
    let url = format!("https://{}/repo/", server.addr);
    let client = dir.path().join("client");
    let ca = format!("--set=tls-ca-path={}", cert.display());
    let (pulled, untrusted, plain) = tokio::task::spawn_blocking({
        let url = url.clone();
        let plain_url = url.replace("https://", "http://");
        move || {
            (
                pull(&client, "r1", &url, &[&ca]),
                pull(&client, "r2", &url, &[]),
                pull(&client, "r3", &plain_url, &[]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(pulled.unwrap(), repo.commit);
    // Without the CA the certificate is refused; plain HTTP to the TLS port fails.
    assert!(untrusted.is_err());
    assert!(plain.is_err());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ostree_pulls_with_basic_auth_and_others_get_401() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let mut cfg = config(&repo.path);
    cfg.htpasswd = Some(htpasswd(dir.path(), "device", "s3cret pass"));
    let server = Running::start(cfg).await;
    let addr = server.addr;
    let client = dir.path().join("client");
    let (pulled, anonymous, wrong) = tokio::task::spawn_blocking(move || {
        (
            pull(
                &client,
                "r3",
                &format!("http://device:s3cret%20pass@{addr}/repo/"),
                &[],
            ),
            pull(&client, "r4", &format!("http://{addr}/repo/"), &[]),
            pull(
                &client,
                "r5",
                &format!("http://device:wrong@{addr}/repo/"),
                &[],
            ),
        )
    })
    .await
    .unwrap();
    assert_eq!(pulled.unwrap(), repo.commit);
    assert!(anonymous.unwrap_err().contains("401"));
    assert!(wrong.unwrap_err().contains("401"));

    let resp = get(addr, "/repo/config").await;
    assert_eq!(resp.status, 401);
    assert!(resp
        .header("www-authenticate")
        .unwrap()
        .starts_with("Basic realm="));
    assert!(resp.body.is_empty());
    // "device:s3cret pass"
    let resp = request(
        addr,
        "GET",
        "/repo/config",
        &["Authorization: Basic ZGV2aWNlOnMzY3JldCBwYXNz"],
    )
    .await;
    assert_eq!(resp.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ostree_pulls_over_tls_with_basic_auth() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let (cert, key) = self_signed(dir.path());
    let mut cfg = config(&repo.path);
    cfg.tls_cert = Some(cert.clone());
    cfg.tls_key = Some(key);
    cfg.htpasswd = Some(htpasswd(dir.path(), "device", "pw"));
    let server = Running::start(cfg).await;
    let addr = server.addr;
    let client = dir.path().join("client");
    let ca = format!("--set=tls-ca-path={}", cert.display());
    let (pulled, anonymous) = tokio::task::spawn_blocking(move || {
        (
            pull(
                &client,
                "r6",
                &format!("https://device:pw@{addr}/repo/"),
                &[&ca],
            ),
            pull(&client, "r7", &format!("https://{addr}/repo/"), &[&ca]),
        )
    })
    .await
    .unwrap();
    assert_eq!(pulled.unwrap(), repo.commit);
    assert!(anonymous.unwrap_err().contains("401"));
    server.stop().await;
}
