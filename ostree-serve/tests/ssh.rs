//! The SSH push listener against real clients: the Python ostree-push 1.2.0 client pushes
//! to it (interop (a)), and OpenSSH's `ssh` is refused everything but the protocol.

use osbuild_testing::helpers::{ostree, output, repo_arg, text, PushFixture};
use osbuild_testing::sshd;
use ostree_serve::receive::Policy;
use ostree_serve::ssh::{SshOptions, SshServer};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The SSH listener serving the fixture's server repository to its key (with
/// `authorized_options` before it in authorized_keys), on a loopback port whose host key is
/// in the fixture's known_hosts. Returns the port and the runtime the listener runs on.
fn serve(f: &PushFixture, authorized_options: &str) -> (u16, tokio::runtime::Runtime) {
    let ak = f.path("authorized_keys");
    let public = f.key.public_line().expect("reading the user's public key");
    std::fs::write(&ak, format!("{authorized_options}{public}\n"))
        .expect("writing authorized_keys");
    let host_key = f.path("host_key");
    let rt = tokio::runtime::Runtime::new().expect("starting a tokio runtime");
    let opts = SshOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        host_key: host_key.clone(),
        authorized_keys: ak,
        repo: f.server.clone(),
        policy: Policy::default(),
    };
    let ssh = rt
        .block_on(SshServer::bind(&opts, None))
        .expect("binding the SSH listener");
    let port = ssh.local_addr().expect("the listener's address").port();
    rt.spawn(ssh.run(std::future::pending()));
    // The missing host key was generated, in OpenSSH format.
    let host_pub = sshd::public_line_of(&host_key).expect("reading the generated host key");
    std::fs::write(&f.known_hosts, sshd::known_hosts_line(port, &host_pub))
        .expect("writing known_hosts");
    (port, rt)
}

/// OpenSSH's `ssh` with the fixture's key and known_hosts to the listener on `port`.
fn ssh(f: &PushFixture, port: u16, extra: &[&str]) -> Output {
    output(
        Command::new("ssh")
            .args(f.ssh_options())
            .args(["-p", &port.to_string()])
            .args(extra),
    )
}

#[test]
fn python_ostree_push_client_pushes_and_checksums_are_kept() {
    let s = PushFixture::new();
    let (port, _rt) = serve(&s, "");
    let c1 = s.commit("os/x86_64", "data", "one");
    let out = s.ostree_push(port, &["os/x86_64"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ostree(&["rev-parse", &repo_arg(&s.server), "os/x86_64"]),
        c1
    );
    ostree(&["fsck", &repo_arg(&s.server)]);

    // Nothing new: success, nothing moves.
    let out = s.ostree_push(port, &["os/x86_64"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("No refs need updating"),
        "{}",
        text(&out)
    );

    let c2 = s.commit("os/x86_64", "data", "two");
    let out = s.ostree_push(port, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        ostree(&["rev-parse", &repo_arg(&s.server), "os/x86_64"]),
        c2
    );
    assert!(ostree(&["static-delta", "list", &repo_arg(&s.server)]).contains(&format!("{c1}-{c2}")));
    // The session's forward is gone with the session: nothing listens for it any more.
    let tunnel: u16 = text(&out)
        .split("to remote port ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("ostree-push -v names the tunnel port: {}", text(&out)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", tunnel)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the forward on port {tunnel} outlived its session"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn everything_but_the_protocol_is_refused() {
    let s = PushFixture::new();
    let (port, _rt) = serve(&s, "");
    let target = "root@127.0.0.1".to_string();
    // A command other than the receiver.
    let out = ssh(&s, port, &[&target, "id"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("uid="), "{}", text(&out));
    // A shell.
    let out = ssh(&s, port, &["-T", &target]);
    assert!(!out.status.success(), "{}", text(&out));
    // Local forwarding (direct-tcpip).
    let out = ssh(&s, port, &["-W", "127.0.0.1:22", &target]);
    assert!(!out.status.success(), "{}", text(&out));
    // The receiver naming another repository.
    let out = ssh(
        &s,
        port,
        &[&target, "ostree-receive-1 /etc http://127.0.0.1:1 x"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not served here"), "{}", text(&out));
    // The receiver pointed at a port that is not this session's forward.
    let repo = s.server.display().to_string();
    let out = ssh(
        &s,
        port,
        &[
            &target,
            &format!("ostree-receive-1 {repo} http://127.0.0.1:1 x"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("forwarded port"), "{}", text(&out));
    // Bad usage is exit status 2.
    let out = ssh(&s, port, &[&target, "ostree-receive-1 --bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn unknown_keys_and_restricted_keys() {
    let s = PushFixture::new();
    let (port, _rt) = serve(&s, "restrict ");
    s.commit("b", "data", "x");
    // `restrict` forbids the remote forward the protocol needs.
    let out = s.ostree_push(port, &["b"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(ostree(&["refs", &repo_arg(&s.server)]).is_empty());

    // A key that is not authorized.
    let other = sshd::KeyPair::generate(&s.path("other")).unwrap();
    let out = output(
        Command::new("ssh")
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
                &port.to_string(),
                "root@127.0.0.1",
                "ostree-receive-1",
            ]),
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));

    let s2 = PushFixture::new();
    let (port2, _rt2) = serve(&s2, "restrict,port-forwarding ");
    s2.commit("b", "data", "x");
    let out = s2.ostree_push(port2, &["b"]);
    assert!(out.status.success(), "{}", text(&out));
}
