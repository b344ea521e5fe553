//! The SSH push listener against real clients: the Python ostree-push 1.2.0 client pushes
//! to it (interop (a)), and OpenSSH's `ssh` is refused everything but the protocol.

// Tests look at the exit status and output of the programs they run, which
// osbuild_core::cmd turns into errors.
#![allow(clippy::disallowed_methods)]

use osbuild_testing::repo::{commit_files, init_archive, ostree, repo_arg};
use osbuild_testing::{ostree_push, sshd};
use ostree_serve::receive::Policy;
use ostree_serve::ssh::{SshOptions, SshServer};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn commit(repo: &Path, branch: &str, content: &str) -> String {
    commit_files(
        repo,
        branch,
        &[("usr/share/data", content.as_bytes())],
        None,
    )
}

struct Setup {
    dir: tempfile::TempDir,
    client: PathBuf,
    server: PathBuf,
    key: sshd::KeyPair,
    known_hosts: PathBuf,
    port: u16,
    _rt: tokio::runtime::Runtime,
}

impl Setup {
    fn new(authorized_options: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let client = dir.path().join("client");
        let server = dir.path().join("server");
        init_archive(&client);
        init_archive(&server);
        let key = sshd::KeyPair::generate(&dir.path().join("id_ed25519")).unwrap();
        let ak = dir.path().join("authorized_keys");
        std::fs::write(
            &ak,
            format!("{authorized_options}{}\n", key.public_line().unwrap()),
        )
        .unwrap();
        let host_key = dir.path().join("host_key");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let opts = SshOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            host_key: host_key.clone(),
            authorized_keys: ak,
            repo: server.clone(),
            policy: Policy::default(),
        };
        let ssh = rt.block_on(SshServer::bind(&opts)).unwrap();
        let port = ssh.local_addr().unwrap().port();
        rt.spawn(ssh.run(std::future::pending()));
        // The missing host key was generated, in OpenSSH format.
        let host_pub = sshd::public_line_of(&host_key).unwrap();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, sshd::known_hosts_line(port, &host_pub)).unwrap();
        Setup {
            dir,
            client,
            server,
            key,
            known_hosts,
            port,
            _rt: rt,
        }
    }

    fn ssh_options(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.key.private.display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]
    }

    fn ssh(&self, extra: &[&str]) -> Output {
        Command::new("ssh")
            .args(self.ssh_options())
            .args(["-p", &self.port.to_string()])
            .args(extra)
            .output()
            .unwrap()
    }

    fn ostree_push(&self, refs: &[&str]) -> Output {
        let venv = ostree_push::venv(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
        Command::new(venv.join("bin/ostree-push"))
            .arg(format!("--repo={}", self.client.display()))
            .args(self.ssh_options())
            .arg(format!(
                "ssh://root@127.0.0.1:{}{}",
                self.port,
                self.server.display()
            ))
            .args(refs)
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn python_ostree_push_client_pushes_and_checksums_are_kept() {
    let s = Setup::new("");
    let c1 = commit(&s.client, "os/x86_64", "one");
    let out = s.ostree_push(&["os/x86_64"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ostree(&["rev-parse", &repo_arg(&s.server), "os/x86_64"]),
        c1
    );
    ostree(&["fsck", &repo_arg(&s.server)]);

    // Nothing new: success, nothing moves.
    let out = s.ostree_push(&["os/x86_64"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("No refs need updating"),
        "{}",
        text(&out)
    );

    let c2 = commit(&s.client, "os/x86_64", "two");
    let out = s.ostree_push(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ostree(&["rev-parse", &repo_arg(&s.server), "os/x86_64"]),
        c2
    );
    assert!(ostree(&["static-delta", "list", &repo_arg(&s.server)]).contains(&format!("{c1}-{c2}")));
    // The session's forward is gone with the session: nothing listens for it any more.
    assert!(!s.dir.path().join("leftover").exists());
}

#[test]
fn everything_but_the_protocol_is_refused() {
    let s = Setup::new("");
    let target = "root@127.0.0.1".to_string();
    // A command other than the receiver.
    let out = s.ssh(&[&target, "id"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("uid="), "{}", text(&out));
    // A shell.
    let out = Command::new("ssh")
        .args(s.ssh_options())
        .args(["-p", &s.port.to_string(), "-T", &target])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    // Local forwarding (direct-tcpip).
    let out = s.ssh(&["-W", "127.0.0.1:22", &target]);
    assert!(!out.status.success(), "{}", text(&out));
    // The receiver naming another repository.
    let out = s.ssh(&[&target, "ostree-receive-1 /etc http://127.0.0.1:1 x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not served here"), "{}", text(&out));
    // The receiver pointed at a port that is not this session's forward.
    let repo = s.server.display().to_string();
    let out = s.ssh(&[
        &target,
        &format!("ostree-receive-1 {repo} http://127.0.0.1:1 x"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("forwarded port"), "{}", text(&out));
    // Bad usage is exit status 2.
    let out = s.ssh(&[&target, "ostree-receive-1 --bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn unknown_keys_and_restricted_keys() {
    let s = Setup::new("restrict ");
    let c1 = commit(&s.client, "b", "x");
    // `restrict` forbids the remote forward the protocol needs.
    let out = s.ostree_push(&["b"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(ostree(&["refs", &repo_arg(&s.server)]).is_empty());
    let _ = c1;

    // A key that is not authorized.
    let other = sshd::KeyPair::generate(&s.dir.path().join("other")).unwrap();
    let out = Command::new("ssh")
        .args([
            "-i",
            other.private.to_str().unwrap(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", s.known_hosts.display()))
        .args([
            "-p",
            &s.port.to_string(),
            "root@127.0.0.1",
            "ostree-receive-1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));

    let s2 = Setup::new("restrict,port-forwarding ");
    commit(&s2.client, "b", "x");
    let out = s2.ostree_push(&["b"]);
    assert!(out.status.success(), "{}", text(&out));
}
