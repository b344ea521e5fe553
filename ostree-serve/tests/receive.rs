//! Receive semantics against real repositories made with the `ostree` CLI: checksums are
//! kept, refs only move forward, publication is atomic and serialized per repository.

use osbuild_testing::gpg;
use osbuild_testing::helpers::{commit_files, init_archive, ostree, repo_arg, rev_parse};
use ostree_serve::receive::{self, Policy, ReceiveArgs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

fn init(p: &Path) {
    init_archive(p);
}

/// Commit `files` to `branch` with a timestamp that grows with `seq` (ostree's clock has
/// one-second resolution).
fn commit(repo: &Path, branch: &str, files: &[(&str, &str)], seq: u64) -> String {
    let files: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_bytes())).collect();
    commit_files(repo, branch, &files, Some(1_700_000_000 + seq))
}

/// Serve `repo` the way the push tunnel does, on loopback; returns its URL.
fn serve(repo: &Path) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let router = ostree_serve::router(repo).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/repo"), rt)
}

fn args(url: &str, refs: &[&str]) -> ReceiveArgs {
    ReceiveArgs {
        update_summary: true,
        repo: String::new(),
        url: url.to_string(),
        refs: refs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn rev(repo: &Path, r: &str) -> String {
    rev_parse(repo, r)
}

struct Fixture {
    _dir: tempfile::TempDir,
    client: PathBuf,
    server: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("client");
    let server = dir.path().join("server");
    init(&client);
    init(&server);
    Fixture {
        _dir: dir,
        client,
        server,
    }
}

#[test]
fn keeps_checksums_and_moves_forward_only() {
    let f = fixture();
    let c1 = commit(&f.client, "os/x86_64", &[("usr/a", "1")], 1);
    let (url, _rt) = serve(&f.client);
    let mut log = Vec::new();
    let up = receive::receive(
        &f.server,
        &args(&url, &["os/x86_64"]),
        &Policy::default(),
        &mut log,
    )
    .unwrap();
    assert_eq!(up.len(), 1);
    assert_eq!(
        rev(&f.server, "os/x86_64"),
        c1,
        "the client's checksum is kept"
    );
    ostree(&["fsck", &repo_arg(&f.server)]);
    assert!(ostree(&["summary", "--view", &repo_arg(&f.server)]).contains("os/x86_64"));

    // Nothing new: nothing to do, and still success.
    let up = receive::receive(
        &f.server,
        &args(&url, &["os/x86_64"]),
        &Policy::default(),
        &mut log,
    )
    .unwrap();
    assert!(up.is_empty());
    assert!(String::from_utf8_lossy(&log).contains("No refs need updating"));

    // A descendant moves the ref, with a static delta from the old head.
    let c2 = commit(&f.client, "os/x86_64", &[("usr/a", "2")], 2);
    let up = receive::receive(&f.server, &args(&url, &[]), &Policy::default(), &mut log).unwrap();
    assert_eq!(up[0].old.as_deref(), Some(c1.as_str()));
    assert_eq!(rev(&f.server, "os/x86_64"), c2);
    let deltas = ostree(&["static-delta", "list", &repo_arg(&f.server)]);
    assert!(deltas.contains(&format!("{c1}-{c2}")), "{deltas}");
    ostree(&["fsck", &repo_arg(&f.server)]);
}

#[test]
fn refuses_non_fast_forward_unless_forced_and_allowed() {
    let f = fixture();
    let c1 = commit(&f.client, "b", &[("f", "1")], 1);
    let (url, _rt) = serve(&f.client);
    receive::receive(
        &f.server,
        &args(&url, &["b"]),
        &Policy::default(),
        &mut Vec::new(),
    )
    .unwrap();

    // An unrelated history for the same ref.
    let other = f.client.parent().unwrap().join("other");
    init(&other);
    let c3 = commit(&other, "b", &[("f", "other")], 5);
    let (url2, _rt2) = serve(&other);
    let err = receive::receive(
        &f.server,
        &args(&url2, &["b"]),
        &Policy::default(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("not a fast-forward"), "{err:#}");
    assert_eq!(rev(&f.server, "b"), c1, "the ref did not move");

    let mut forced = args(&url2, &["b"]);
    forced.force = true;
    let err =
        receive::receive(&f.server, &forced, &Policy::default(), &mut Vec::new()).unwrap_err();
    assert!(format!("{err:#}").contains("not allowed"), "{err:#}");
    let policy = Policy {
        allow_force: true,
        ..Default::default()
    };
    receive::receive(&f.server, &forced, &policy, &mut Vec::new()).unwrap();
    assert_eq!(rev(&f.server, "b"), c3);
}

#[test]
fn refuses_older_commits_and_dry_run_changes_nothing() {
    let f = fixture();
    commit(&f.client, "b", &[("f", "1")], 10);
    let (url, _rt) = serve(&f.client);
    receive::receive(
        &f.server,
        &args(&url, &["b"]),
        &Policy::default(),
        &mut Vec::new(),
    )
    .unwrap();
    let head = rev(&f.server, "b");
    // A child commit dated before its parent.
    commit(&f.client, "b", &[("f", "2")], 5);
    let err = receive::receive(
        &f.server,
        &args(&url, &["b"]),
        &Policy::default(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("not newer"), "{err:#}");

    let c3 = commit(&f.client, "b", &[("f", "3")], 20);
    let mut dry = args(&url, &["b"]);
    dry.dry_run = true;
    let up = receive::receive(&f.server, &dry, &Policy::default(), &mut Vec::new()).unwrap();
    assert_eq!(up[0].new, c3);
    assert_eq!(rev(&f.server, "b"), head, "a dry run moves nothing");
}

#[test]
fn unknown_ref_is_named() {
    let f = fixture();
    commit(&f.client, "b", &[("f", "1")], 1);
    let (url, _rt) = serve(&f.client);
    let err = receive::receive(
        &f.server,
        &args(&url, &["nope"]),
        &Policy::default(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
}

#[test]
fn concurrent_pushes_different_refs_both_land_same_ref_one_wins() {
    let f = fixture();
    let base = commit(&f.client, "same", &[("f", "0")], 1);
    let (url, _rt) = serve(&f.client);
    receive::receive(
        &f.server,
        &args(&url, &["same"]),
        &Policy::default(),
        &mut Vec::new(),
    )
    .unwrap();

    // Two pushers, each with its own descendant of `base` on "same" and its own ref.
    let mut pushers = Vec::new();
    for (i, name) in ["p1", "p2"].iter().enumerate() {
        let repo = f.client.parent().unwrap().join(name);
        ostree(&["init", "--mode=archive", &repo_arg(&repo)]);
        ostree(&[
            "pull-local",
            &repo_arg(&repo),
            f.client.to_str().unwrap(),
            "same",
        ]);
        commit(&repo, "same", &[("f", name)], 10 + i as u64);
        commit(&repo, &format!("own/{name}"), &[("g", name)], 10 + i as u64);
        pushers.push(repo);
    }
    let urls: Vec<_> = pushers.iter().map(|p| serve(p)).collect();
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = urls
        .iter()
        .zip(["p1", "p2"])
        .map(|((url, _), name)| {
            let (server, url, barrier) = (f.server.clone(), url.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let own = format!("own/{name}");
                receive::receive(
                    &server,
                    &args(&url, &["same", &own]),
                    &Policy::default(),
                    &mut Vec::new(),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        wins, 1,
        "exactly one push to the same ref wins: {results:?}"
    );
    let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(
        format!("{loser:#}").contains("not a fast-forward"),
        "{loser:#}"
    );
    assert_ne!(rev(&f.server, "same"), base);

    // Different refs: pushed alone, each lands.
    for (name, (url, _)) in ["p1", "p2"].iter().zip(&urls) {
        let own = format!("own/{name}");
        let r = receive::receive(
            &f.server,
            &args(url, &[&own]),
            &Policy::default(),
            &mut Vec::new(),
        );
        assert!(r.is_ok(), "{r:?}");
    }
    ostree(&["fsck", &repo_arg(&f.server)]);
}

#[test]
fn required_signatures_are_checked_and_kept() {
    let f = fixture();
    let key = gpg::throwaway_key();
    let (url, _rt) = serve(&f.client);
    let policy = Policy {
        require_signature: true,
        trusted_keyring: Some(key.keyring.clone()),
        allow_force: false,
    };

    // Unsigned: refused, nothing published.
    commit(&f.client, "signed", &[("f", "1")], 1);
    let err = receive::receive(
        &f.server,
        &args(&url, &["signed"]),
        &policy,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").to_lowercase().contains("signature"),
        "{err:#}"
    );
    assert!(ostree(&["refs", &repo_arg(&f.server)]).is_empty());

    // Signed by the trusted key: accepted, and the signature travels with the commit.
    let c2 = commit(&f.client, "signed", &[("f", "2")], 2);
    ostree(&[
        "gpg-sign",
        &repo_arg(&f.client),
        &c2,
        &key.key_id,
        &format!("--gpg-homedir={}", key.home.display()),
    ]);
    receive::receive(
        &f.server,
        &args(&url, &["signed"]),
        &policy,
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(rev(&f.server, "signed"), c2);
    let meta = f
        .server
        .join(format!("objects/{}/{}.commitmeta", &c2[..2], &c2[2..]));
    assert!(
        meta.is_file(),
        "the detached signature is kept on the server"
    );
}
