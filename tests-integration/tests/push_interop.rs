//! `osbuild push` against a real OpenSSH sshd on loopback (interop (b)): the receiver is
//! the real ostree-push 1.2.0 `ostree-receive-1` from PyPI, so the protocol, the tunnel
//! and the exit statuses are checked against the reference implementation.

use osbuild_testing::repo::{init_archive, ostree, repo_arg};
use osbuild_testing::{ostree_push, sshd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OSBUILD: &str = env!("CARGO_BIN_EXE_osbuild");

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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

struct Setup {
    dir: tempfile::TempDir,
    client: PathBuf,
    server: PathBuf,
    tree: PathBuf,
    key: sshd::KeyPair,
    known_hosts: PathBuf,
    sshd: Option<sshd::Sshd>,
    commits: std::cell::Cell<u64>,
}

impl Setup {
    /// Repos, a user key and, with `path_first` on sshd's PATH, a running sshd whose
    /// host key is in our known_hosts.
    fn new(path_first: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let client = dir.path().join("client");
        let server = dir.path().join("server");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/share/doc")).unwrap();
        init_archive(&client);
        init_archive(&server);
        let key = sshd::KeyPair::generate(&dir.path().join("id_ed25519")).unwrap();
        let mut setup = Setup {
            known_hosts: dir.path().join("known_hosts"),
            dir,
            client,
            server,
            tree,
            key,
            sshd: None,
            commits: Default::default(),
        };
        if let Some(bin) = path_first {
            setup.start_sshd(bin);
            std::fs::write(&setup.known_hosts, setup.sshd().known_hosts_line().unwrap()).unwrap();
        }
        setup
    }

    fn start_sshd(&mut self, path_first: &Path) {
        // Root's shell start-up files here reorder PATH; sshd's SetEnv wins.
        let path = format!("SetEnv PATH={}:/usr/bin:/bin", path_first.display());
        self.sshd = Some(
            sshd::Sshd::start(self.dir.path(), &self.key.public_line().unwrap(), &[&path]).unwrap(),
        );
    }

    fn sshd(&self) -> &sshd::Sshd {
        self.sshd.as_ref().expect("sshd started")
    }

    fn dest(&self) -> String {
        format!(
            "ssh://root@127.0.0.1:{}{}",
            self.sshd().port,
            self.server.display()
        )
    }

    /// Commit the tree with the real ostree CLI. `--no-bindings` as osbuild commit does:
    /// then ostree-receive's re-commit, which adds a ref binding, changes the checksum.
    /// Each commit is a second newer than the last (receivers refuse older or equal
    /// timestamps, and a test commits faster than that).
    fn commit(&self, branch: &str, file: &str, content: &str) -> String {
        std::fs::write(self.tree.join("usr/share/doc").join(file), content).unwrap();
        let n = self.commits.get() + 1;
        self.commits.set(n);
        ostree(&[
            "commit",
            &repo_arg(&self.client),
            "--no-bindings",
            &format!("--timestamp=@{}", 1_700_000_000 + n),
            &format!("--branch={branch}"),
            &format!("--subject=add {file}"),
            &format!("--tree=dir={}", self.tree.display()),
        ])
    }

    /// Run `osbuild` with nothing of the user's SSH setup: no agent, an empty home.
    fn osbuild(&self, args: &[&str]) -> Output {
        self.osbuild_with_agent(args, None)
    }

    fn home(&self) -> PathBuf {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    fn osbuild_with_agent(&self, args: &[&str], agent: Option<&Path>) -> Output {
        let mut cmd = Command::new(OSBUILD);
        cmd.args(args).env("HOME", self.home());
        match agent {
            Some(sock) => cmd.env("SSH_AUTH_SOCK", sock),
            None => cmd.env_remove("SSH_AUTH_SOCK"),
        };
        cmd.output().unwrap()
    }

    /// `osbuild push --repo CLIENT DEST [extra…] REF…` with our key and known_hosts.
    fn push(&self, extra: &[&str], refs: &[&str]) -> Output {
        let mut args = vec![
            "push".to_string(),
            format!("--repo={}", self.client.display()),
            format!("--identity={}", self.key.private.display()),
            format!("--known-hosts={}", self.known_hosts.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.dest());
        args.extend(refs.iter().map(|s| s.to_string()));
        self.osbuild(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn server_rev(&self, branch: &str) -> String {
        ostree(&["rev-parse", &repo_arg(&self.server), branch])
    }
}

fn venv_bin() -> PathBuf {
    ostree_push::venv(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap()
        .join("bin")
}

#[test]
fn pushes_to_ostree_receive() {
    let s = Setup::new(Some(&venv_bin()));
    let c1 = s.commit("os/x86_64", "a", "first\n");

    let out = s.push(&[], &["os/x86_64"]);
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
    let out = s.push(&[], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("No refs need updating"),
        "{}",
        text(&out)
    );
    assert_eq!(s.server_rev("os/x86_64"), server_c1);

    // One more file: a push of all refs (none named) fetches only what changed.
    let c2 = s.commit("os/x86_64", "b", "second\n");
    let out = s.push(&[], &[]);
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
    let out = s.push(&["--dry-run"], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.server_rev("os/x86_64"), server_c2);

    // A usage error of the receiver comes back as its exit status, 2.
    let out = s.push(&["--command=ostree-receive-1 --no-such-option"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(s.server_rev("os/x86_64"), server_c2);
}

#[test]
fn receive_command_fallback_and_errors() {
    let s = Setup::new(Some(&venv_bin()));
    s.commit("b", "a", "1");

    // Exit 127 (not found) moves on to the next command, as ostree-push does.
    let out = s.push(
        &["--command=no-such-receive", "--command=ostree-receive-1"],
        &["b"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        ostree(&["cat", &repo_arg(&s.server), "b", "/usr/share/doc/a"]),
        "1"
    );

    let out = s.push(&["--command=no-such-receive"], &["b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("none of the receive commands no-such-receive"),
        "{err}"
    );

    // A missing ref is reported before any connection is made.
    let before = connections(s.dir.path());
    let out = s.push(&[], &["b", "not/there"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ref not/there not found in"), "{err}");
    assert!(err.contains(&s.client.display().to_string()), "{err}");
    assert_eq!(connections(s.dir.path()), before, "sshd saw a connection");

    // A server repository that does not exist: the receiver's error, status 1.
    let out = s.osbuild(&[
        "push",
        &format!("--repo={}", s.client.display()),
        &format!("--identity={}", s.key.private.display()),
        &format!("--known-hosts={}", s.known_hosts.display()),
        &format!("ssh://root@127.0.0.1:{}/nonexistent/repo", s.sshd().port),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/repo"), "{}", text(&out));
}

#[test]
fn host_keys_are_checked_against_known_hosts() {
    let mut s = Setup::new(None);
    // `true` as the receiver: this test is about the SSH connection, not the pull.
    s.start_sshd(Path::new("/usr/bin"));
    s.commit("b", "a", "1");
    let name = format!("[127.0.0.1]:{}", s.sshd().port);

    let out = s.push(&["--command=true"], &["b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&name), "{err}");
    assert!(err.contains(&s.known_hosts.display().to_string()), "{err}");
    assert!(err.contains("--accept-new-host-key"), "{err}");
    assert!(!s.known_hosts.exists(), "a refused key was recorded");

    let out = s.push(&["--command=true", "--accept-new-host-key"], &["b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let recorded = std::fs::read_to_string(&s.known_hosts).unwrap();
    let host_key = s.sshd().host_key.public_line().unwrap();
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    assert_eq!(recorded, format!("{name} {}\n", host_key.join(" ")));
    // OpenSSH agrees with what we wrote.
    let found = Command::new("ssh-keygen")
        .args(["-F", &name, "-f"])
        .arg(&s.known_hosts)
        .output()
        .unwrap();
    assert!(found.status.success(), "{}", text(&found));

    // Now known: no flag needed.
    let out = s.push(&["--command=true"], &["b"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Another key recorded for this host is a change, refused even with the flag.
    let other = sshd::KeyPair::generate(&s.dir.path().join("other_host_key")).unwrap();
    std::fs::write(
        &s.known_hosts,
        format!("{name} {}\n", other.public_line().unwrap()),
    )
    .unwrap();
    let out = s.push(&["--command=true", "--accept-new-host-key"], &["b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CHANGED") && err.contains("line 1"), "{err}");
}

#[test]
fn refused_keys_are_named_with_the_user() {
    let mut s = Setup::new(None);
    s.start_sshd(Path::new("/usr/bin"));
    std::fs::write(&s.known_hosts, s.sshd().known_hosts_line().unwrap()).unwrap();
    s.commit("b", "a", "1");
    let stranger = sshd::KeyPair::generate(&s.dir.path().join("stranger")).unwrap();
    let out = s.osbuild(&[
        "push",
        &format!("--repo={}", s.client.display()),
        &format!("--identity={}", stranger.private.display()),
        &format!("--known-hosts={}", s.known_hosts.display()),
        "--command=true",
        &s.dest(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("user root"), "{err}");
    assert!(
        err.contains(&stranger.private.display().to_string()),
        "{err}"
    );

    // No key at all: say where keys are looked for.
    let out = s.osbuild(&[
        "push",
        &format!("--repo={}", s.client.display()),
        &format!("--known-hosts={}", s.known_hosts.display()),
        "--command=true",
        &s.dest(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no SSH key") && err.contains("--identity"),
        "{err}"
    );
}

#[test]
fn commit_push_commits_then_pushes() {
    let s = Setup::new(Some(&venv_bin()));
    // A tree `osbuild commit` accepts: kernel, initramfs, os-release, /usr/etc.
    let tree = s.dir.path().join("os");
    std::fs::create_dir_all(tree.join("usr/lib/modules/6.1.0-test")).unwrap();
    std::fs::create_dir_all(tree.join("usr/etc")).unwrap();
    std::fs::write(tree.join("usr/lib/modules/6.1.0-test/vmlinuz"), "k").unwrap();
    std::fs::write(tree.join("usr/lib/modules/6.1.0-test/initramfs.img"), "i").unwrap();
    std::fs::write(tree.join("usr/lib/os-release"), "ID=test\n").unwrap();
    let repo = s.dir.path().join("built");
    let out = s.osbuild(&[
        "commit-push",
        &format!("--repo={}", repo.display()),
        "--branch=debian/test",
        &format!("--tree={}", tree.display()),
        "--version=7",
        &format!("--identity={}", s.key.private.display()),
        &format!("--known-hosts={}", s.known_hosts.display()),
        &s.dest(),
    ]);
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
    std::os::unix::fs::symlink(OSBUILD, bin.join("ostree-receive-1")).unwrap();
    let s = Setup::new(Some(&bin));
    let c1 = s.commit("os/x86_64", "a", "1");
    let out = s.push(&[], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.server_rev("os/x86_64"), c1);
    let c2 = s.commit("os/x86_64", "b", "2");
    let out = s.push(&[], &["os/x86_64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(s.server_rev("os/x86_64"), c2);
    ostree(&["fsck", &repo_arg(&s.server)]);
}

/// A throwaway ssh-agent, killed on drop.
struct Agent {
    child: std::process::Child,
    sock: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Self {
        let sock = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting ssh-agent");
        let agent = Agent { child, sock };
        for _ in 0..200 {
            if agent.sock.exists() {
                return agent;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("ssh-agent did not create {}", agent.sock.display());
    }

    fn add(&self, key: &Path) {
        let out = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.sock)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-add: {}", text(&out));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn keys_come_from_the_agent_and_the_home_directory() {
    let mut s = Setup::new(None);
    s.start_sshd(Path::new("/usr/bin"));
    std::fs::write(&s.known_hosts, s.sshd().known_hosts_line().unwrap()).unwrap();
    s.commit("b", "a", "1");
    let dest = s.dest();
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
    let run = |a: &[String], agent: Option<&Path>| {
        s.osbuild_with_agent(&a.iter().map(String::as_str).collect::<Vec<_>>(), agent)
    };

    // The agent holds the key; a passphrase-protected copy given with --identity is
    // skipped, not fatal.
    let locked = s.dir.path().join("locked");
    std::fs::copy(&s.key.private, &locked).unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-q", "-p", "-N", "secret", "-P", "", "-f"])
        .arg(&locked)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let agent = Agent::start(s.dir.path());
    agent.add(&s.key.private);
    let out = run(&args(Some(&locked)), Some(&agent.sock));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Without the agent the locked key is named as unusable.
    let out = run(&args(Some(&locked)), None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("passphrase-protected"), "{err}");

    // ~/.ssh/id_ed25519 when nothing else is given.
    let ssh_dir = s.home().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::copy(&s.key.private, ssh_dir.join("id_ed25519")).unwrap();
    let out = run(&args(None), None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
