//! `osbuild receive` on a server that runs OpenSSH (interop (c)): as sshd's ForceCommand,
//! and installed as `ostree-receive-1`, with the real ostree-push 1.2.0 client pushing.

use osbuild_testing::repo::{commit_files, init_archive, ostree, repo_arg};
use osbuild_testing::{ostree_push, sshd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OSBUILD: &str = env!("CARGO_BIN_EXE_osbuild");

fn commit(repo: &Path, branch: &str, content: &str) -> String {
    commit_files(repo, branch, &[("data", content.as_bytes())], None)
}

struct Setup {
    dir: tempfile::TempDir,
    client: PathBuf,
    server: PathBuf,
    key: sshd::KeyPair,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let client = dir.path().join("client");
        let server = dir.path().join("server");
        init_archive(&client);
        init_archive(&server);
        let key = sshd::KeyPair::generate(&dir.path().join("id_ed25519")).unwrap();
        Setup {
            dir,
            client,
            server,
            key,
        }
    }

    fn push(&self, sshd: &sshd::Sshd, refs: &[&str]) -> Output {
        let kh = self.dir.path().join("known_hosts");
        std::fs::write(&kh, sshd.known_hosts_line().unwrap()).unwrap();
        let venv = ostree_push::venv(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
        Command::new(venv.join("bin/ostree-push"))
            .arg(format!("--repo={}", self.client.display()))
            .args(["-i", self.key.private.to_str().unwrap()])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .arg(format!(
                "ssh://root@127.0.0.1:{}{}",
                sshd.port,
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
fn as_force_command() {
    let s = Setup::new();
    // The sshd_config lines the README documents for the pushing user.
    let force = format!(
        "ForceCommand {OSBUILD} receive --repo {}",
        s.server.display()
    );
    let config = [
        force.as_str(),
        "AllowTcpForwarding remote",
        "PermitListen localhost:*",
        "X11Forwarding no",
        "AllowAgentForwarding no",
        "PermitTTY no",
    ];
    let sshd = sshd::Sshd::start(s.dir.path(), &s.key.public_line().unwrap(), &config).unwrap();
    let c1 = commit(&s.client, "os/x86_64", "1");
    let out = s.push(&sshd, &["os/x86_64"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ostree(&["rev-parse", &repo_arg(&s.server), "os/x86_64"]),
        c1,
        "checksum kept"
    );
    ostree(&["fsck", &repo_arg(&s.server)]);

    // Pushing to another path than the one the ForceCommand serves is refused.
    let other = s.dir.path().join("other");
    init_archive(&other);
    let kh = s.dir.path().join("known_hosts");
    let venv = ostree_push::venv(Path::new(env!("CARGO_TARGET_TMPDIR"))).unwrap();
    let out = Command::new(venv.join("bin/ostree-push"))
        .arg(format!("--repo={}", s.client.display()))
        .args(["-i", s.key.private.to_str().unwrap(), "-o"])
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .arg(format!(
            "ssh://root@127.0.0.1:{}{}",
            sshd.port,
            other.display()
        ))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not served here"), "{}", text(&out));
}

#[test]
fn installed_as_ostree_receive_1() {
    let s = Setup::new();
    let bin = s.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(OSBUILD, bin.join("ostree-receive-1")).unwrap();
    // Root's shell start-up files on these machines reorder PATH; sshd's SetEnv wins.
    let path = format!("SetEnv PATH={}:/usr/bin:/bin", bin.display());
    let sshd = sshd::Sshd::start(s.dir.path(), &s.key.public_line().unwrap(), &[&path]).unwrap();
    let c1 = commit(&s.client, "b", "1");
    let out = s.push(&sshd, &["b"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ostree(&["rev-parse", &repo_arg(&s.server), "b"]), c1);
    let c2 = commit(&s.client, "b", "2");
    let out = s.push(&sshd, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(ostree(&["rev-parse", &repo_arg(&s.server), "b"]), c2);
}
