//! Helpers shared by the integration tests: real repositories made with the `ostree` CLI,
//! a server on a loopback port, and a raw HTTP client that sends exactly the bytes given.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code, unreachable_pub)]

use ostree_serve::{ServeConfig, Server};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const BRANCH: &str = "test/x86_64";

use osbuild_testing::helpers::{noise, ostree};

pub(crate) struct TestRepo {
    pub(crate) path: PathBuf,
    pub(crate) commit: String,
}

/// An archive repository under `dir/repo` with one commit of small files and one file of
/// about 1 MiB (streamed rather than read in one go by the server), and a summary.
pub(crate) fn make_repo(dir: &Path) -> TestRepo {
    let repo = dir.join("repo");
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("usr/share/many")).unwrap();
    std::fs::write(tree.join("usr/share/hello"), "hello world\n").unwrap();
    for i in 0..20 {
        std::fs::write(
            tree.join(format!("usr/share/many/{i}")),
            format!("file {i}\n"),
        )
        .unwrap();
    }
    std::fs::write(tree.join("usr/share/big"), noise(1 << 20, 7)).unwrap();
    let r = format!("--repo={}", repo.display());
    ostree(&["init", "--mode=archive", &r]);
    let t = format!("--tree=dir={}", tree.display());
    let commit = ostree(&["commit", &r, &format!("--branch={BRANCH}"), &t]);
    ostree(&["summary", "-u", &r]);
    TestRepo {
        path: repo,
        commit: commit.trim().to_string(),
    }
}

/// The repository-relative path of the largest object file.
pub(crate) fn largest_object(repo: &Path) -> String {
    let mut best = (0, String::new());
    for dir in std::fs::read_dir(repo.join("objects")).unwrap() {
        let dir = dir.unwrap();
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let f = f.unwrap();
            let len = f.metadata().unwrap().len();
            if len > best.0 {
                best = (
                    len,
                    format!(
                        "objects/{}/{}",
                        dir.file_name().to_string_lossy(),
                        f.file_name().to_string_lossy()
                    ),
                );
            }
        }
    }
    best.1
}

/// A server running on a loopback port; stops (gracefully) when dropped or `stop`ped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    pub(crate) async fn start(mut cfg: ServeConfig) -> Running {
        cfg.http.get_or_insert("127.0.0.1:0".parse().unwrap());
        cfg.access_log.get_or_insert(false);
        let server = Server::from_config(&cfg)
            .await
            .expect("starting the server");
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Running {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub(crate) async fn plain(repo: &Path) -> Running {
        Self::start(config(repo)).await
    }

    /// Ask for shutdown and hand back the server's task, to await when the test wants.
    pub(crate) fn begin_stop(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("the server is running")
    }

    /// Shut down and check that the server ended without error.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub(crate) fn config(repo: &Path) -> ServeConfig {
    ServeConfig {
        repo: Some(repo.to_path_buf()),
        ..Default::default()
    }
}

#[derive(Debug)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Send `request` as is and read the whole answer (the server closes: requests made here
/// say `Connection: close`, and malformed ones make it close).
pub(crate) async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    parse_response(&buf)
}

pub(crate) fn parse_response(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// `GET path` (or another method) with extra header lines, closing after the answer.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &[&str],
) -> RawResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes()).await
}

pub(crate) async fn get(addr: SocketAddr, path: &str) -> RawResponse {
    request(addr, "GET", path, &[]).await
}

/// A self-signed certificate for 127.0.0.1, as an operator would make with openssl.
pub fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    osbuild_testing::helpers::run(std::process::Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    (cert, key)
}
