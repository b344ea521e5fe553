//! `osbuild push` against a real OpenSSH sshd on loopback (interop (b)): the receiver is
//! the real ostree-push 1.2.0 `ostree-receive-1` from PyPI, so the protocol, the tunnel
//! and the exit statuses are checked against the reference implementation.

use osbuild_testing::helpers::{
    osbuild_bin, ostree, output, repo_arg, run, stub_bootable_tree, text, Daemon, PushFixture,
};
use osbuild_testing::{ostree_push, require, sshd, Need};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every file of a commit with its content checksum: equal trees give equal listings
/// even when the commits differ.
fn listing(repo: &Path, rev: &str) -> String {
    ostree(&["ls", &repo_arg(repo), "-R", "-C", rev])
}

/// How many SSH connections sshd has accepted so far.
fn connections(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("sshd.log"))
        .unwrap_or_default()
        .matches("Connection from")
        .count()
}

/// Whether the test can run: sshd, the SSH client tools and what else it `needs`.
fn can_run(needs: &[Need]) -> bool {
    let mut all = vec![Need::Sshd, Need::SshClient];
    all.extend_from_slice(needs);
    require(&all)
}

/// A real sshd for the fixture's key, with `path_first` first on the PATH of its sessions
/// (where the receiver is looked up).
fn start_sshd(f: &PushFixture, path_first: &Path) -> sshd::Sshd {
    // Root's shell start-up files here reorder PATH; sshd's SetEnv wins.
    let path = format!("SetEnv PATH={}:/usr/bin:/bin", path_first.display());
    let public = f.key.public_line().expect("reading the user's public key");
    sshd::Sshd::start(f.dir.path(), &public, &[&path]).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Record the server's host key in the fixture's known_hosts.
fn trust(f: &PushFixture, sshd: &sshd::Sshd) {
    let line = sshd.known_hosts_line().expect("reading sshd's host key");
    std::fs::write(&f.known_hosts, line).expect("writing known_hosts");
}

/// A fixture and an sshd whose host key is known, receivers found first in `path_first`;
/// `None` when the test is skipped.
fn interop(
    needs: &[Need],
    path_first: impl FnOnce() -> PathBuf,
) -> Option<(PushFixture, sshd::Sshd)> {
    if !can_run(needs) {
        return None;
    }
    let f = PushFixture::new();
    let sshd = start_sshd(&f, &path_first());
    trust(&f, &sshd);
    Some((f, sshd))
}

/// The server repository as an ssh:// URL.
fn dest(f: &PushFixture, sshd: &sshd::Sshd) -> String {
    format!("ssh://root@127.0.0.1:{}{}", sshd.port, f.server.display())
}

/// Run `osbuild` with nothing of the user's SSH setup: no agent unless given, an empty
/// home.
fn osbuild(f: &PushFixture, args: &[&str], agent: Option<&Path>) -> Output {
    let mut cmd = Command::new(osbuild_bin());
    cmd.args(args).env("HOME", home(f));
    match agent {
        Some(sock) => cmd.env("SSH_AUTH_SOCK", sock),
        None => cmd.env_remove("SSH_AUTH_SOCK"),
    };
    output(&mut cmd)
}

fn home(f: &PushFixture) -> PathBuf {
    let home = f.path("home");
    std::fs::create_dir_all(&home).expect("creating the home directory");
    home
}

/// `osbuild push --repo CLIENT DEST [extra…] REF…` with our key and known_hosts.
fn push(f: &PushFixture, sshd: &sshd::Sshd, extra: &[&str], refs: &[&str]) -> Output {
    let mut args = vec![
        "push".to_string(),
        format!("--repo={}", f.client.display()),
        format!("--identity={}", f.key.private.display()),
        format!("--known-hosts={}", f.known_hosts.display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(dest(f, sshd));
    args.extend(refs.iter().map(|s| s.to_string()));
    osbuild(
        f,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
    )
}

/// The venv's bin/, where the reference `ostree-receive-1` is.
fn venv_bin() -> PathBuf {
    ostree_push::venv(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("installing ostree-push: {e:#}"))
        .join("bin")
}

#[test]
fn pushes_to_ostree_receive() {
    let Some((s, sshd)) = interop(&[Need::PythonVenv], venv_bin) else {
        return;
    };
    let c1 = s.commit("os/x86_64", "a", "first\n");

    let out = push(&s, &sshd, &[], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // The receiver's log reached our stderr.
    assert!(text(&out).contains("otpush.receive"), "{}", text(&out));
    assert_eq!(
        ostree(&["cat", &repo_arg(&s.server), "os/x86_64", "/usr/share/doc/a"]),
        "first"
    );
    assert_eq!(listing(&s.server, "os/x86_64"), listing(&s.client, &c1));
    // ostree-receive re-commits with a ref binding: same tree, same subject, other ID.
    let server_c1 = s.server_rev("os/x86_64");
    assert_ne!(server_c1, c1);
    assert_eq!(
        ostree(&[
            "show",
            &repo_arg(&s.server),
            "--print-metadata-key=ostree.ref-binding",
            "os/x86_64"
        ]),
        "['os/x86_64']"
    );
    assert!(ostree(&["show", &repo_arg(&s.server), "os/x86_64"]).contains("add a"));
    ostree(&["fsck", &repo_arg(&s.server)]);

    // The same commit again: nothing to update, still success.
    let out = push(&s, &sshd, &[], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("No refs need updating"),
        "{}",
        text(&out)
    );
    assert_eq!(s.server_rev("os/x86_64"), server_c1);

    // One more file: a push of all refs (none named) fetches only what changed.
    let c2 = s.commit("os/x86_64", "b", "second\n");
    let out = push(&s, &sshd, &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(listing(&s.server, "os/x86_64"), listing(&s.client, &c2));
    let server_c2 = s.server_rev("os/x86_64");
    assert_eq!(
        ostree(&["rev-parse", &repo_arg(&s.server), "os/x86_64^"]),
        server_c1
    );
    let fetched: u64 = text(&out)
        .lines()
        .find_map(|l| l.split(" fetched ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no object count: {}", text(&out)));
    // The commit, the dirtrees from the root down to the file, the file; nothing else.
    assert!(
        (1..=8).contains(&fetched),
        "fetched {fetched}: {}",
        text(&out)
    );
    ostree(&["fsck", &repo_arg(&s.server)]);

    // A dry run (-n reaches the receiver) leaves the server's ref alone.
    s.commit("os/x86_64", "c", "third\n");
    let out = push(&s, &sshd, &["--dry-run"], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.server_rev("os/x86_64"), server_c2);

    // A usage error of the receiver comes back as its exit status, 2.
    let out = push(
        &s,
        &sshd,
        &["--command=ostree-receive-1 --no-such-option"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(s.server_rev("os/x86_64"), server_c2);
}

#[test]
fn receive_command_fallback_and_errors() {
    let Some((s, sshd)) = interop(&[Need::PythonVenv], venv_bin) else {
        return;
    };
    s.commit("b", "a", "1");

    // Exit 127 (not found) moves on to the next command, as ostree-push does.
    let out = push(
        &s,
        &sshd,
        &["--command=no-such-receive", "--command=ostree-receive-1"],
        &["b"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        ostree(&["cat", &repo_arg(&s.server), "b", "/usr/share/doc/a"]),
        "1"
    );

    let out = push(&s, &sshd, &["--command=no-such-receive"], &["b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("none of the receive commands no-such-receive"),
        "{err}"
    );

    // A missing ref is reported before any connection is made.
    let before = connections(s.dir.path());
    let out = push(&s, &sshd, &[], &["b", "not/there"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ref not/there not found in"), "{err}");
    assert!(err.contains(&s.client.display().to_string()), "{err}");
    assert_eq!(connections(s.dir.path()), before, "sshd saw a connection");

    // A server repository that does not exist: the receiver's error, status 1.
    let out = osbuild(
        &s,
        &[
            "push",
            &format!("--repo={}", s.client.display()),
            &format!("--identity={}", s.key.private.display()),
            &format!("--known-hosts={}", s.known_hosts.display()),
            &format!("ssh://root@127.0.0.1:{}/nonexistent/repo", sshd.port),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/repo"), "{}", text(&out));
}

#[test]
fn host_keys_are_checked_against_known_hosts() {
    if !can_run(&[]) {
        return;
    }
    let s = PushFixture::new();
    // `true` as the receiver: this test is about the SSH connection, not the pull.
    let sshd = start_sshd(&s, Path::new("/usr/bin"));
    s.commit("b", "a", "1");
    let name = format!("[127.0.0.1]:{}", sshd.port);

    let out = push(&s, &sshd, &["--command=true"], &["b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&name), "{err}");
    assert!(err.contains(&s.known_hosts.display().to_string()), "{err}");
    assert!(err.contains("--accept-new-host-key"), "{err}");
    assert!(!s.known_hosts.exists(), "a refused key was recorded");

    let out = push(
        &s,
        &sshd,
        &["--command=true", "--accept-new-host-key"],
        &["b"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let recorded = std::fs::read_to_string(&s.known_hosts).unwrap();
    let host_key = sshd.host_key.public_line().unwrap();
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    assert_eq!(recorded, format!("{name} {}\n", host_key.join(" ")));
    // OpenSSH agrees with what we wrote.
    run(Command::new("ssh-keygen")
        .args(["-F", &name, "-f"])
        .arg(&s.known_hosts));

    // Now known: no flag needed.
    let out = push(&s, &sshd, &["--command=true"], &["b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Another key recorded for this host is a change, refused even with the flag.
    let other = sshd::KeyPair::generate(&s.path("other_host_key")).unwrap();
    std::fs::write(
        &s.known_hosts,
        format!("{name} {}\n", other.public_line().unwrap()),
    )
    .unwrap();
    let out = push(
        &s,
        &sshd,
        &["--command=true", "--accept-new-host-key"],
        &["b"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CHANGED") && err.contains("line 1"), "{err}");
}

#[test]
fn refused_keys_are_named_with_the_user() {
    let Some((s, sshd)) = interop(&[], || PathBuf::from("/usr/bin")) else {
        return;
    };
    s.commit("b", "a", "1");
    let stranger = sshd::KeyPair::generate(&s.path("stranger")).unwrap();
    let out = osbuild(
        &s,
        &[
            "push",
            &format!("--repo={}", s.client.display()),
            &format!("--identity={}", stranger.private.display()),
            &format!("--known-hosts={}", s.known_hosts.display()),
            "--command=true",
            &dest(&s, &sshd),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("user root"), "{err}");
    assert!(
        err.contains(&stranger.private.display().to_string()),
        "{err}"
    );

    // No key at all: say where keys are looked for.
    let out = osbuild(
        &s,
        &[
            "push",
            &format!("--repo={}", s.client.display()),
            &format!("--known-hosts={}", s.known_hosts.display()),
            "--command=true",
            &dest(&s, &sshd),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no SSH key") && err.contains("--identity"),
        "{err}"
    );
}

#[test]
fn commit_push_commits_then_pushes() {
    let Some((s, sshd)) = interop(&[Need::PythonVenv], venv_bin) else {
        return;
    };
    // A tree `osbuild commit` accepts: kernel, initramfs, os-release, /usr/etc.
    let tree = s.path("os");
    stub_bootable_tree(&tree);
    let repo = s.path("built");
    let out = osbuild(
        &s,
        &[
            "commit-push",
            &format!("--repo={}", repo.display()),
            "--branch=debian/test",
            &format!("--tree={}", tree.display()),
            "--version=7",
            &format!("--identity={}", s.key.private.display()),
            &format!("--known-hosts={}", s.known_hosts.display()),
            &dest(&s, &sshd),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let checksum = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.len() == 64)
        .unwrap_or_else(|| panic!("no checksum printed: {}", text(&out)))
        .to_string();
    assert_eq!(listing(&s.server, "debian/test"), listing(&repo, &checksum));
    assert_eq!(
        ostree(&[
            "show",
            &repo_arg(&s.server),
            "--print-metadata-key=version",
            "debian/test"
        ]),
        "'7'"
    );
}

#[test]
fn pushes_to_osbuild_receive_keeping_commit_ids() {
    // Our own receiver, installed as ostree-receive-1 behind OpenSSH: IDs survive.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(osbuild_bin(), bin.join("ostree-receive-1")).unwrap();
    let Some((s, sshd)) = interop(&[], || bin) else {
        return;
    };
    let c1 = s.commit("os/x86_64", "a", "1");
    let out = push(&s, &sshd, &[], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.server_rev("os/x86_64"), c1);
    let c2 = s.commit("os/x86_64", "b", "2");
    let out = push(&s, &sshd, &[], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.server_rev("os/x86_64"), c2);
    ostree(&["fsck", &repo_arg(&s.server)]);
}

/// A throwaway ssh-agent listening on `dir/agent.sock`, killed on drop.
fn start_agent(dir: &Path) -> (Daemon, PathBuf) {
    let sock = dir.join("agent.sock");
    let mut agent = Daemon::spawn(
        Command::new("ssh-agent").arg("-D").arg("-a").arg(&sock),
        Some(&dir.join("agent.log")),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    agent
        .wait_until(
            &format!("listening on {}", sock.display()),
            std::time::Duration::from_secs(5),
            || sock.exists(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    (agent, sock)
}

#[test]
fn keys_come_from_the_agent_and_the_home_directory() {
    let Some((s, sshd)) = interop(&[], || PathBuf::from("/usr/bin")) else {
        return;
    };
    s.commit("b", "a", "1");
    let dest = dest(&s, &sshd);
    let args = |identity: Option<&Path>| -> Vec<String> {
        let mut a = vec![
            "push".to_string(),
            format!("--repo={}", s.client.display()),
            format!("--known-hosts={}", s.known_hosts.display()),
            "--command=true".to_string(),
        ];
        if let Some(i) = identity {
            a.push(format!("--identity={}", i.display()));
        }
        a.push(dest.clone());
        a
    };
    let push_with = |a: &[String], agent: Option<&Path>| {
        osbuild(&s, &a.iter().map(String::as_str).collect::<Vec<_>>(), agent)
    };

    // The agent holds the key; a passphrase-protected copy given with --identity is
    // skipped, not fatal.
    let locked = s.path("locked");
    std::fs::copy(&s.key.private, &locked).unwrap();
    run(Command::new("ssh-keygen")
        .args(["-q", "-p", "-N", "secret", "-P", "", "-f"])
        .arg(&locked));
    let (_agent, sock) = start_agent(s.dir.path());
    run(Command::new("ssh-add")
        .arg(&s.key.private)
        .env("SSH_AUTH_SOCK", &sock));
    let out = push_with(&args(Some(&locked)), Some(&sock));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Without the agent the locked key is named as unusable.
    let out = push_with(&args(Some(&locked)), None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("passphrase-protected"), "{err}");

    // ~/.ssh/id_ed25519 when nothing else is given.
    let ssh_dir = home(&s).join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::copy(&s.key.private, ssh_dir.join("id_ed25519")).unwrap();
    let out = push_with(&args(None), None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
