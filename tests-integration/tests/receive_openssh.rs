//! `osbuild receive` on a server that runs OpenSSH (interop (c)): as sshd's ForceCommand,
//! and installed as `ostree-receive-1`, with the real ostree-push 1.2.0 client pushing.

use osbuild_testing::helpers::{init_archive, osbuild_bin, ostree, repo_arg, text, PushFixture};
use osbuild_testing::{require, sshd, Need};

/// A fixture and a running sshd with the sshd_config lines `config` makes for it, whose
/// host key is in known_hosts; `None` when the test is skipped.
fn start(config: impl FnOnce(&PushFixture) -> Vec<String>) -> Option<(PushFixture, sshd::Sshd)> {
    if !require(&[Need::Sshd, Need::SshClient, Need::PythonVenv]) {
        return None;
    }
    let f = PushFixture::new();
    let public = f.key.public_line().expect("reading the user's public key");
    let lines = config(&f);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let sshd = sshd::Sshd::start(f.dir.path(), &public, &lines).expect("starting sshd");
    let known = sshd.known_hosts_line().expect("reading sshd's host key");
    std::fs::write(&f.known_hosts, known).expect("writing known_hosts");
    Some((f, sshd))
}

#[test]
fn as_force_command() {
    // The sshd_config lines the README documents for the pushing user.
    let config = |f: &PushFixture| {
        let force = format!(
            "ForceCommand {} receive --repo {}",
            osbuild_bin().display(),
            f.server.display()
        );
        [
            force.as_str(),
            "AllowTcpForwarding remote",
            "PermitListen localhost:*",
            "X11Forwarding no",
            "AllowAgentForwarding no",
            "PermitTTY no",
        ]
        .map(String::from)
        .to_vec()
    };
    let Some((mut f, sshd)) = start(config) else {
        return;
    };
    let c1 = f.commit("os/x86_64", "data", "1");
    let out = f.ostree_push(sshd.port, &["os/x86_64"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.server_rev("os/x86_64"), c1, "checksum kept");
    ostree(&["fsck", &repo_arg(&f.server)]);

    // Pushing to another path than the one the ForceCommand serves is refused.
    f.server = f.path("other");
    init_archive(&f.server);
    let out = f.ostree_push(sshd.port, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not served here"), "{}", text(&out));
}

#[test]
fn installed_as_ostree_receive_1() {
    let bin = tempfile::tempdir().expect("temp dir");
    std::os::unix::fs::symlink(osbuild_bin(), bin.path().join("ostree-receive-1"))
        .expect("linking ostree-receive-1");
    // Root's shell start-up files on these machines reorder PATH; sshd's SetEnv wins.
    let path = format!("SetEnv PATH={}:/usr/bin:/bin", bin.path().display());
    let Some((f, sshd)) = start(|_| vec![path]) else {
        return;
    };
    let c1 = f.commit("b", "data", "1");
    let out = f.ostree_push(sshd.port, &["b"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.server_rev("b"), c1);
    let c2 = f.commit("b", "data", "2");
    let out = f.ostree_push(sshd.port, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.server_rev("b"), c2);
}
