//! Faults during a push to `osbuild serve --ssh`: the client killed, the server killed, a
//! full disk. The server repository must stay consistent (fsck passes, refs unchanged), no
//! forward may outlive its session, and a retry must finish the job.

use osbuild_core::cmd;
use osbuild_testing::helpers::{
    commit_tree, free_port, init_archive, noise, osbuild_bin, ostree, repo_arg, rev_parse, run,
    write_file, Daemon,
};
use osbuild_testing::{ostree_push, require, sshd, Need};
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BRANCH: &str = "os/x86_64";

/// A client repo with one commit of `files` files of 16 KiB: many objects, so a push can be
/// interrupted in the middle.
fn client_repo(dir: &Path, files: usize) -> (PathBuf, String) {
    let repo = dir.join("client");
    init_archive(&repo);
    let tree = dir.join("tree");
    for i in 0..files {
        let p = tree.join(format!("usr/share/data/{:02}/{i}", i % 50));
        write_file(&p, noise(16 << 10, i as u64 + 7));
    }
    let c = commit_tree(&repo, BRANCH, &tree, None);
    (repo, c)
}

/// `osbuild serve --ssh` on 127.0.0.1:`port`, its log in `dir/serve.log`.
fn start_server(dir: &Path, repo: &Path, port: u16) -> Daemon {
    Daemon::start(
        Command::new(osbuild_bin())
            .args([
                "serve",
                "--http",
                "127.0.0.1:0",
                "--access-log",
                "off",
                "--repo",
            ])
            .arg(repo)
            .args(["--ssh", &format!("127.0.0.1:{port}"), "--authorized-keys"])
            .arg(dir.join("authorized_keys"))
            .arg("--host-key")
            .arg(dir.join("host_key")),
        port,
        Some(&dir.join("serve.log")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

struct Env {
    dir: tempfile::TempDir,
    key: sshd::KeyPair,
    venv: PathBuf,
}

impl Env {
    /// None when the test is skipped (see osbuild_testing::require).
    fn new() -> Option<Env> {
        // ostree-push comes from PyPI into a venv; the client runs OpenSSH's ssh.
        if !require(&[Need::PythonVenv, Need::SshClient]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let key = sshd::KeyPair::generate(&dir.path().join("id_ed25519")).unwrap();
        std::fs::write(
            dir.path().join("authorized_keys"),
            key.public_line().unwrap(),
        )
        .unwrap();
        let venv = ostree_push::venv(Path::new(env!("CARGO_TARGET_TMPDIR")))
            .unwrap_or_else(|e| panic!("installing ostree-push: {e:#}"));
        Some(Env { dir, key, venv })
    }

    /// Start ostree-push (verbose, so each object request is logged) in its own process
    /// group, so that killing the group kills its ssh and HTTP helper processes too.
    fn push(&self, client: &Path, server_repo: &Path, port: u16) -> Child {
        let mut push = Command::new(self.venv.join("bin/ostree-push"));
        push.arg("-v")
            .arg(format!("--repo={}", client.display()))
            .args(["-i", self.key.private.to_str().unwrap()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
            ])
            .arg(format!(
                "ssh://root@127.0.0.1:{port}{}",
                server_repo.display()
            ))
            .arg(BRANCH)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        cmd::spawn_tied(&mut push).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Lines the client wrote, streamed; object requests are counted by the caller.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    for pipe in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

fn kill_group(child: &mut Child) {
    run(Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]));
    let _ = child.wait();
}

/// Read lines until `objects` object requests were seen (or the push ended); returns the
/// count and the tunnel port the server allocated.
fn watch(rx: &mpsc::Receiver<String>, stop_after: Option<usize>) -> (usize, Option<u16>) {
    let mut n = 0;
    let mut port = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(300)) {
        if let Some(rest) = line.split("to remote port ").nth(1) {
            port = rest.trim().parse().ok();
        }
        if line.contains("GET /objects/") {
            n += 1;
            if stop_after.is_some_and(|s| n >= s) {
                break;
            }
        }
    }
    (n, port)
}

fn assert_consistent_and_unmoved(server_repo: &Path) {
    ostree(&["fsck", &repo_arg(server_repo)]);
    assert_eq!(
        ostree(&["refs", &repo_arg(server_repo)]),
        "",
        "no ref may appear after a failed push"
    );
}

fn wait_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the forward on port {port} outlived its session"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn client_killed_mid_push_then_retry_fetches_only_the_rest() {
    let Some(env) = Env::new() else { return };
    let (client, commit) = client_repo(env.dir.path(), 1500);
    let server_repo = env.dir.path().join("server");
    init_archive(&server_repo);
    let port = free_port();
    let _server = start_server(env.dir.path(), &server_repo, port);

    let mut push = env.push(&client, &server_repo, port);
    let rx = lines(&mut push);
    let (first, tunnel) = watch(&rx, Some(600));
    assert!(
        first >= 600,
        "the push ended before it could be interrupted"
    );
    kill_group(&mut push);
    // The session's forward goes away with it, and the server settles.
    wait_closed(tunnel.expect("the client names the tunnel port"));
    assert_consistent_and_unmoved(&server_repo);

    let mut retry = env.push(&client, &server_repo, port);
    let rx = lines(&mut retry);
    let (second, _) = watch(&rx, None);
    let status = retry.wait().unwrap();
    assert!(status.success(), "the retry failed");
    assert_eq!(rev_parse(&server_repo, BRANCH), commit);
    ostree(&["fsck", &repo_arg(&server_repo)]);
    let total = 1500;
    eprintln!(
        "objects fetched: {first} before the kill, {second} on retry, {total} files in the commit"
    );
    assert!(
        second < total,
        "the retry fetched {second} objects: it started over"
    );
}

#[test]
fn server_killed_mid_receive_then_retry_completes() {
    let Some(env) = Env::new() else { return };
    let (client, commit) = client_repo(env.dir.path(), 1500);
    let server_repo = env.dir.path().join("server");
    init_archive(&server_repo);
    let port = free_port();
    let mut server = start_server(env.dir.path(), &server_repo, port);

    let mut push = env.push(&client, &server_repo, port);
    let rx = lines(&mut push);
    let (first, _) = watch(&rx, Some(600));
    assert!(first >= 600);
    server.kill();
    let status = push.wait().unwrap();
    assert!(!status.success(), "the push must fail when the server dies");
    assert_consistent_and_unmoved(&server_repo);

    let _server = start_server(env.dir.path(), &server_repo, port);
    let mut retry = env.push(&client, &server_repo, port);
    let rx = lines(&mut retry);
    let (second, _) = watch(&rx, None);
    assert!(retry.wait().unwrap().success());
    assert_eq!(rev_parse(&server_repo, BRANCH), commit);
    ostree(&["fsck", &repo_arg(&server_repo)]);
    eprintln!("objects fetched: {first} before the server died, {second} on retry");
}

#[test]
fn full_disk_is_a_clear_error_and_the_repo_stays_consistent() {
    // Root to mount a small tmpfs.
    if !require(&[Need::Root]) {
        return;
    }
    let Some(env) = Env::new() else { return };
    let (client, _) = client_repo(env.dir.path(), 1500);
    // A small filesystem for the server repo: 24 MiB of 1500 × 16 KiB will not fit.
    let mnt = env.dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=12m", "tmpfs"])
        .arg(&mnt));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            if let Err(e) = cmd::run(Command::new("umount").arg(&self.0)) {
                eprintln!("{e}");
            }
        }
    }
    let _unmount = Unmount(mnt.clone());
    let server_repo = mnt.join("repo");
    init_archive(&server_repo);
    let port = free_port();
    let _server = start_server(env.dir.path(), &server_repo, port);
    let mut push = env.push(&client, &server_repo, port);
    let rx = lines(&mut push);
    let mut output = Vec::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(300)) {
        output.push(l);
    }
    let status = push.wait().unwrap();
    let text = output.join("\n");
    assert!(!status.success(), "{text}");
    // libostree stops before the disk is full (min-free-space-percent), or the kernel
    // says so; either way the pusher reads why.
    assert!(
        text.contains("min-free-space") || text.contains("No space left on device"),
        "{text}"
    );
    assert_consistent_and_unmoved(&server_repo);
}
