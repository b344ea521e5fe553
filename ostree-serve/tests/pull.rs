//! The real `ostree` CLI pulls from `osbuild serve`'s router.

use osbuild_testing::helpers::ostree;
use std::path::Path;

fn make_repo(dir: &Path) -> String {
    let repo = dir.join("repo");
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("usr/share")).unwrap();
    std::fs::write(tree.join("usr/share/hello"), "hello world\n").unwrap();
    let r = format!("--repo={}", repo.display());
    ostree(&["init", "--mode=archive", &r]);
    let t = format!("--tree=dir={}", tree.display());
    let csum = ostree(&["commit", &r, "--branch=test/x86_64", &t]);
    ostree(&["summary", "-u", &r]);
    csum.trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn ostree_pull_from_served_repo() {
    let dir = tempfile::tempdir().unwrap();
    let csum = make_repo(dir.path());
    let server =
        ostree_serve::Server::new(&dir.path().join("repo"), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));

    let client = dir.path().join("client");
    let url = format!("http://{addr}/repo/");
    let c = format!("--repo={}", client.display());
    let pulled = tokio::task::spawn_blocking(move || {
        ostree(&["init", "--mode=bare-user", &c]);
        ostree(&["remote", "add", "--no-gpg-verify", &c, "origin", &url]);
        ostree(&["pull", &c, "origin", "test/x86_64"]);
        ostree(&["fsck", &c]);
        ostree(&["rev-parse", &c, "origin:test/x86_64"])
    })
    .await
    .unwrap();
    assert_eq!(pulled.trim(), csum);

    // Traversal out of the repo is refused.
    let resp = raw_get(addr, "/repo/../../etc/passwd").await;
    assert!(
        resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.1 404"),
        "{resp}"
    );
    let _ = tx.send(());
    handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn port_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    make_repo(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = ostree_serve::Server::new(&dir.path().join("repo"), addr)
        .await
        .expect_err("binding a taken port must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("already in use"),
        "{msg}"
    );
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    buf
}
