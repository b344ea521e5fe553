//! HTTP behaviour on the wire, with raw requests over TCP: confinement to the repository,
//! ranges, validators, cache headers, methods, and resistance to slow clients.

// Tests look at the exit status and output of the programs they run, which
// osbuild_core::cmd turns into errors.
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use osbuild_testing::helpers::ostree;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every way out of the repository is refused with 400 or 404, and the server keeps
/// serving afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn traversal_attempts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    // A secret beside the repository, and links that point at it from inside.
    std::fs::write(dir.path().join("secret"), "do not serve").unwrap();
    std::os::unix::fs::symlink("../secret", repo.path.join("leak")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), repo.path.join("refs/heads/abs"))
        .unwrap();
    std::os::unix::fs::symlink("/etc", repo.path.join("etc")).unwrap();
    let server = Running::plain(&repo.path).await;

    let attempts = [
        "/repo/../secret",
        "/repo/../../../../etc/passwd",
        "/repo/objects/../../secret",
        "/repo/%2e%2e/secret",
        "/repo/%2E%2E/%2E%2E/etc/passwd",
        "/repo/..%2fsecret",
        "/repo/%2e%2e%2fsecret",
        "/repo/objects%2f..%2f..%2fsecret",
        "/repo//etc/passwd",
        "/repo/%2fetc/passwd",
        "/etc/passwd",
        "/repo/config%00.txt",
        "/repo/%00",
        "/repo/..\\secret",
        "/repo/..%5csecret",
        "/repo/leak",
        "/repo/refs/heads/abs",
        "/repo/etc/passwd",
        "http://test/../secret",
    ];
    for path in attempts {
        let resp = get(server.addr, path).await;
        assert!(
            resp.status == 400 || resp.status == 404,
            "{path}: status {}",
            resp.status
        );
        assert!(
            !String::from_utf8_lossy(&resp.body).contains("do not serve")
                && !String::from_utf8_lossy(&resp.body).contains("root:"),
            "{path} leaked"
        );
    }
    // A raw NUL byte in the request line is malformed HTTP.
    let resp = raw(
        server.addr,
        b"GET /repo/config\0 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 400);

    let resp = get(server.addr, "/repo/config").await;
    assert_eq!(resp.status, 200);
    assert!(String::from_utf8_lossy(&resp.body).contains("mode=archive"));
    server.stop().await;
}

/// Garbage, oversized and odd requests get a 4xx, never a crash.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_4xx_and_the_server_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let server = Running::plain(&repo.path).await;
    let long_uri = format!(
        "GET /repo/{} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a/".repeat(40_000)
    );
    let big_header = format!(
        "GET /repo/config HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "x".repeat(100_000)
    );
    let cases: Vec<(&[u8], &[u16])> = vec![
        (b"HELLO\r\n\r\n", &[400]),
        (b"GET\r\n\r\n", &[400]),
        (b"GET /repo/config HTTP/9.9\r\n\r\n", &[400, 505]),
        (
            b"GET /repo/config HTTP/1.1\r\nno colon here\r\n\r\n",
            &[400],
        ),
        (b"G@T /repo/config HTTP/1.1\r\nHost: t\r\n\r\n", &[400, 405]),
        (
            b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            &[400, 404, 405],
        ),
        (
            b"GET /repo/config HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
            &[400],
        ),
        (long_uri.as_bytes(), &[400, 404, 414, 431]),
        (big_header.as_bytes(), &[400, 431]),
    ];
    for (req, expected) in cases {
        let t = std::time::Instant::now();
        let resp = raw(server.addr, req).await;
        eprintln!(
            "TIMING {:?} {:?}",
            String::from_utf8_lossy(&req[..req.len().min(30)]),
            t.elapsed()
        );
        assert!(
            expected.contains(&resp.status),
            "{:?}: status {}",
            String::from_utf8_lossy(&req[..req.len().min(60)]),
            resp.status
        );
    }
    // A client that connects and hangs up at once, or sends half a request.
    drop(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /repo/con").await.unwrap();
    drop(half);

    assert_eq!(get(server.addr, "/repo/config").await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let object = largest_object(&repo.path);
    let content = std::fs::read(repo.path.join(&object)).unwrap();
    let len = content.len();
    assert!(len > 512 * 1024, "the big object is streamed");
    let server = Running::plain(&repo.path).await;
    let url = format!("/repo/{object}");

    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, len - 1),
        ("bytes=-500", len - 500, len - 1),
        ("bytes=300000-300010", 300_000, 300_010),
        (&format!("bytes=10-{}", len + 1000) as &str, 10, len - 1),
    ] {
        let resp = request(server.addr, "GET", &url, &[&format!("Range: {range}")]).await;
        assert_eq!(resp.status, 206, "{range}");
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {start}-{end}/{len}").as_str()),
            "{range}"
        );
        assert_eq!(
            resp.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
        assert!(resp.body == content[start..=end], "{range}: wrong bytes");
    }
    // The same on a small file, read in one go.
    let resp = request(server.addr, "GET", "/repo/config", &["Range: bytes=1-4"]).await;
    assert_eq!(resp.status, 206);
    assert_eq!(resp.body, b"core");
    // And on a small object, the first time from its file, then from memory.
    let commit = format!("objects/{}/{}.commit", &repo.commit[..2], &repo.commit[2..]);
    let bytes = std::fs::read(repo.path.join(&commit)).unwrap();
    for _ in 0..2 {
        let resp = request(
            server.addr,
            "GET",
            &format!("/repo/{commit}"),
            &["Range: bytes=2-9"],
        )
        .await;
        assert_eq!(resp.status, 206);
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes 2-9/{}", bytes.len()).as_str())
        );
        assert_eq!(resp.body, bytes[2..=9]);
        let resp = request(
            server.addr,
            "GET",
            &format!("/repo/{commit}"),
            &["Range: bytes=99999-"],
        )
        .await;
        assert_eq!(resp.status, 416);
    }

    for range in [format!("bytes={len}-"), "bytes=-0".to_string()] {
        let resp = request(server.addr, "GET", &url, &[&format!("Range: {range}")]).await;
        assert_eq!(resp.status, 416, "{range}");
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes */{len}").as_str())
        );
    }
    // Malformed or multiple ranges are ignored: the whole file.
    for range in ["bytes=5-1", "bytes=0-1,4-5", "lines=1-2"] {
        let resp = request(server.addr, "GET", &url, &[&format!("Range: {range}")]).await;
        assert_eq!(resp.status, 200, "{range}");
        assert_eq!(resp.body.len(), len);
    }
    // If-Range with the current ETag keeps the range; a stale one gets the whole file.
    let etag = get(server.addr, &url)
        .await
        .header("etag")
        .unwrap()
        .to_string();
    let resp = request(
        server.addr,
        "GET",
        &url,
        &["Range: bytes=0-9", &format!("If-Range: {etag}")],
    )
    .await;
    assert_eq!(resp.status, 206);
    let resp = request(
        server.addr,
        "GET",
        &url,
        &["Range: bytes=0-9", "If-Range: \"stale\""],
    )
    .await;
    assert_eq!(resp.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn validators_and_conditional_requests() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let server = Running::plain(&repo.path).await;
    let object = largest_object(&repo.path);
    let size = std::fs::metadata(repo.path.join(&object)).unwrap().len();
    let commit = format!(
        "/repo/objects/{}/{}.commit",
        &repo.commit[..2],
        &repo.commit[2..]
    );
    // A mutable file, a big object, and a small one (served from memory after the first
    // request, so it is asked for twice).
    for path in [
        "/repo/summary".to_string(),
        format!("/repo/{object}"),
        commit.clone(),
        commit,
    ] {
        let full = get(server.addr, &path).await;
        assert_eq!(full.status, 200);
        let etag = full.header("etag").expect("ETag").to_string();
        let modified = full
            .header("last-modified")
            .expect("Last-Modified")
            .to_string();

        let resp = request(
            server.addr,
            "GET",
            &path,
            &[&format!("If-None-Match: {etag}")],
        )
        .await;
        assert_eq!(resp.status, 304, "{path}");
        assert!(resp.body.is_empty());
        assert_eq!(resp.header("etag"), Some(etag.as_str()));

        let resp = request(
            server.addr,
            "GET",
            &path,
            &[&format!("If-Modified-Since: {modified}")],
        )
        .await;
        assert_eq!(resp.status, 304, "{path}");

        let resp = request(server.addr, "GET", &path, &["If-None-Match: \"other\""]).await;
        assert_eq!(resp.status, 200);
        let resp = request(
            server.addr,
            "GET",
            &path,
            &["If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT"],
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, full.body);
    }
    // HEAD: the same headers with the real length, and no body.
    let resp = request(server.addr, "HEAD", &format!("/repo/{object}"), &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert!(resp.body.is_empty());
    let summary_len = std::fs::metadata(repo.path.join("summary")).unwrap().len();
    let resp = request(server.addr, "HEAD", "/repo/summary", &[]).await;
    assert_eq!(
        resp.header("content-length"),
        Some(summary_len.to_string().as_str())
    );
    assert!(resp.body.is_empty());

    // Rewriting the summary changes its ETag even within the same second.
    let before = get(server.addr, "/repo/summary").await;
    let r = format!("--repo={}", repo.path.display());
    ostree(&["summary", "-u", &r, "--add-metadata=changed='yes'"]);
    let after = get(server.addr, "/repo/summary").await;
    assert_ne!(before.header("etag"), after.header("etag"));
    let resp = request(
        server.addr,
        "GET",
        "/repo/summary",
        &[&format!(
            "If-None-Match: {}",
            before.header("etag").unwrap()
        )],
    )
    .await;
    assert_eq!(resp.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_control_and_content_type_per_path_class() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    // A static delta, so deltas/ has something to serve.
    let r = format!("--repo={}", repo.path.display());
    ostree(&[
        "static-delta",
        "generate",
        &r,
        "--empty",
        &format!("--to={}", repo.commit),
    ]);
    let delta_part = walk_files(&repo.path.join("deltas"))
        .into_iter()
        .next()
        .expect("a delta file");
    let delta_part = delta_part
        .strip_prefix(&repo.path)
        .unwrap()
        .display()
        .to_string();
    let server = Running::plain(&repo.path).await;

    let immutable = "public, max-age=31536000, immutable";
    let cases = [
        (
            format!("/repo/{}", largest_object(&repo.path)),
            immutable,
            "application/octet-stream",
        ),
        (
            format!(
                "/repo/objects/{}/{}.commit",
                &repo.commit[..2],
                &repo.commit[2..]
            ),
            immutable,
            "application/octet-stream",
        ),
        (
            format!("/repo/{delta_part}"),
            immutable,
            "application/octet-stream",
        ),
        (
            "/repo/summary".to_string(),
            "no-cache",
            "application/octet-stream",
        ),
        (
            "/repo/config".to_string(),
            "no-cache",
            "text/plain; charset=utf-8",
        ),
        (
            format!("/repo/refs/heads/{BRANCH}"),
            "no-cache",
            "text/plain; charset=utf-8",
        ),
    ];
    for (path, cache, ctype) in cases {
        let resp = get(server.addr, &path).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.header("cache-control"), Some(cache), "{path}");
        assert_eq!(resp.header("content-type"), Some(ctype), "{path}");
        let on_disk = std::fs::metadata(repo.path.join(path.trim_start_matches("/repo/"))).unwrap();
        assert_eq!(
            resp.header("content-length"),
            Some(on_disk.len().to_string().as_str())
        );
        assert_eq!(resp.body.len() as u64, on_disk.len());
    }
    let resp = get(server.addr, &format!("/repo/refs/heads/{BRANCH}")).await;
    assert_eq!(String::from_utf8_lossy(&resp.body).trim(), repo.commit);
    server.stop().await;
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn only_get_and_head_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let server = Running::plain(&repo.path).await;
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let resp = request(server.addr, method, "/repo/config", &["Content-Length: 0"]).await;
        assert_eq!(resp.status, 405, "{method}");
        assert_eq!(resp.header("allow"), Some("GET,HEAD"));
    }
    // A body sent with a refused method is not read, and does not upset the server.
    let resp = request(
        server.addr,
        "PUT",
        "/repo/config",
        &["Content-Length: 5\r\n\r\nhello"],
    )
    .await;
    assert_eq!(resp.status, 405);
    let config = std::fs::read_to_string(repo.path.join("config")).unwrap();
    assert!(config.contains("mode=archive"), "the file is untouched");
    assert_eq!(get(server.addr, "/repo/config").await.status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn directories_are_not_listed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let server = Running::plain(&repo.path).await;
    for path in [
        "/repo/",
        "/repo",
        "/",
        "/repo/objects",
        "/repo/objects/",
        "/repo/refs/heads/",
    ] {
        let resp = get(server.addr, path).await;
        assert_eq!(resp.status, 404, "{path}");
        assert!(resp.body.is_empty(), "{path}");
    }
    server.stop().await;
}

/// On shutdown, a download in progress finishes, idle connections are closed, and the
/// port stops accepting.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_requests_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let object = largest_object(&repo.path);
    let content = std::fs::read(repo.path.join(&object)).unwrap();
    let mut server = Running::plain(&repo.path).await;
    let addr = server.addr;

    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut busy = tokio::net::TcpStream::connect(addr).await.unwrap();
    busy.write_all(format!("GET /repo/{object} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Read only the first bytes, so the rest of the body is still to be sent.
    let mut received = vec![0u8; 64];
    busy.read_exact(&mut received).await.unwrap();

    let task = server.begin_stop();
    busy.read_to_end(&mut received).await.unwrap();
    let resp = parse_response(&received);
    assert_eq!(resp.status, 200);
    assert!(
        resp.body == content,
        "the whole body arrives after shutdown began"
    );
    let mut buf = [0u8; 16];
    assert_eq!(
        idle.read(&mut buf).await.unwrap(),
        0,
        "idle connections are closed"
    );
    task.await.unwrap().unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Clients that send their headers one byte per second are dropped once the header
/// timeout passes, so they cannot hold the connection slots: with every slot taken by
/// such clients, a normal client is still served.
#[tokio::test(flavor = "multi_thread")]
async fn slowloris_clients_are_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let repo = make_repo(dir.path());
    let mut cfg = config(&repo.path);
    cfg.header_timeout = Some(2);
    cfg.max_connections = Some(2);
    let server = Running::start(cfg).await;

    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(slowloris(server.addr)))
        .collect();
    // Let both slow clients take the two slots before the normal client comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = get(server.addr, "/repo/config").await;
    assert_eq!(resp.status, 200);
    for s in slow {
        assert!(s.await.unwrap(), "a slow client was never disconnected");
    }
    server.stop().await;
}

/// Send a never-ending request head, one byte per second, and report whether the server
/// hung up. Bounded so that a server that never does fails the test instead of hanging.
async fn slowloris(addr: std::net::SocketAddr) -> bool {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let head = b"GET /repo/config HTTP/1.1\r\nHost: t\r\nX-Slow: "
        .iter()
        .chain(std::iter::repeat(&b'a'));
    let mut buf = [0u8; 1024];
    for &byte in head.take(120) {
        if wr.write_all(&[byte]).await.is_err() {
            return true;
        }
        tokio::select! {
            // EOF, a reset or an error response: the server gave up on us.
            _ = rd.read(&mut buf) => return true,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    false
}
