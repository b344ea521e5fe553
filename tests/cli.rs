//! Bad input through the real `osbuild` binary: a one-line error that names the thing,
//! a non-zero exit, and nothing left behind.

use osbuild_testing::helpers::{free_port, output, Daemon};
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const OSBUILD: &str = env!("CARGO_BIN_EXE_osbuild");

fn osbuild(args: &[&str]) -> Output {
    output(Command::new(OSBUILD).args(args))
}

/// Assert failure with a single error line containing every `needle`.
fn assert_fails_naming(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
    for n in needles {
        assert!(
            errors[0].contains(n),
            "error should name {n:?}: {}",
            errors[0]
        );
    }
}

use osbuild_testing::helpers::stub_bootable_tree as tiny_tree;

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A repository in `dir` holding a commit of the stand-in tree on branch `b`.
fn committed_repo(dir: &Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    tiny_tree(&tree);
    let repo = dir.join("repo");
    let out = osbuild(&[
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--branch",
        "b",
        "--tree",
        tree.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    repo
}

/// `osbuild serve` of `repo` on a free port, stopped on drop.
fn serve(repo: &Path) -> (Daemon, u16) {
    let port = free_port();
    let daemon = Daemon::start(
        Command::new(OSBUILD)
            .args(["serve", "--access-log", "off", "--repo"])
            .arg(repo)
            .args(["--http", &format!("127.0.0.1:{port}")]),
        port,
        None,
    )
    .expect("starting osbuild serve");
    (daemon, port)
}

#[test]
fn commit_of_missing_tree() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let tree = dir.path().join("no-such-tree");
    let out = osbuild(&[
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--branch",
        "b",
        "--tree",
        tree.to_str().unwrap(),
    ]);
    assert_fails_naming(&out, &["no-such-tree"]);
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[test]
fn commit_of_a_tree_and_an_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let out = osbuild(&[
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--branch",
        "b",
        "--tree",
        dir.path().to_str().unwrap(),
        "--image",
        "containers-storage:localhost/os:latest",
    ]);
    assert_fails_naming(&out, &["--tree", "--image"]);
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[test]
fn commit_of_tree_not_ostree_ready() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("plain");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("usr/lib/modules/6.1.0/")).unwrap();
    fs::write(tree.join("usr/lib/modules/6.1.0/vmlinuz"), "k").unwrap();
    let repo = dir.path().join("repo");
    let out = osbuild(&[
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--branch",
        "b",
        "--tree",
        tree.to_str().unwrap(),
    ]);
    assert_fails_naming(&out, &["plain", "/usr/etc"]);
    fs::remove_dir(tree.join("etc")).unwrap();
    let out = osbuild(&[
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--branch",
        "b",
        "--tree",
        tree.to_str().unwrap(),
    ]);
    assert_fails_naming(&out, &["initramfs"]);
    assert_eq!(entries(dir.path()), ["plain"]);
}

#[test]
fn commit_prints_checksum_and_ostree_accepts_repo() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    tiny_tree(&tree);
    let repo = dir.path().join("repo");
    let out = osbuild(&[
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--branch",
        "test/b",
        "--tree",
        tree.to_str().unwrap(),
        "--version",
        "1.0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let checksum = stdout.lines().last().unwrap().trim().to_string();
    assert_eq!(checksum.len(), 64, "{stdout}");
    let r = format!("--repo={}", repo.display());
    for args in [
        vec!["fsck", &r],
        vec!["log", &r, "test/b"],
        vec!["ls", &r, "test/b", "/usr/lib"],
    ] {
        let o = output(Command::new("ostree").args(&args));
        assert!(
            o.status.success(),
            "ostree {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let log = output(Command::new("ostree").args(["log", &r, "test/b"]));
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(
        log.contains(&checksum) && log.contains("Version: 1.0"),
        "{log}"
    );
    let summary = output(Command::new("ostree").args(["summary", "--view", &r]));
    assert!(String::from_utf8_lossy(&summary.stdout).contains("test/b"));
}

#[test]
fn make_image_from_unreachable_url() {
    let dir = tempfile::tempdir().unwrap();
    // A port that nothing listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/repo/");
    let output = dir.path().join("disk.img");
    let out = osbuild(&[
        "make-image",
        "--url",
        &url,
        "--branch",
        "b",
        "--output",
        output.to_str().unwrap(),
        "--size",
        "512M",
    ]);
    assert_fails_naming(&out, &[&url]);
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[test]
fn make_image_of_unknown_branch() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    tiny_tree(&tree);
    let repo = dir.path().join("repo");
    let out = osbuild(&[
        "commit",
        "--repo",
        repo.to_str().unwrap(),
        "--branch",
        "real",
        "--tree",
        tree.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let (_serve, port) = serve(&repo);
    let work = dir.path().join("out");
    fs::create_dir(&work).unwrap();
    let output = work.join("disk.img");
    let url = format!("http://127.0.0.1:{port}/repo/");
    let out = osbuild(&[
        "make-image",
        "--url",
        &url,
        "--branch",
        "no-such-branch",
        "--output",
        output.to_str().unwrap(),
        "--size",
        "512M",
    ]);
    assert_fails_naming(&out, &["no-such-branch"]);
    assert!(entries(&work).is_empty(), "{:?}", entries(&work));
}

#[test]
fn make_image_into_missing_directory() {
    let out = osbuild(&[
        "make-image",
        "--url",
        "http://127.0.0.1:1/repo/",
        "--branch",
        "b",
        "--output",
        "/nonexistent-dir/disk.img",
    ]);
    assert_fails_naming(&out, &["/nonexistent-dir"]);
}

#[test]
fn serve_on_port_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let repo = committed_repo(dir.path());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = osbuild(&["serve", "--repo", repo.to_str().unwrap(), "--http", &addr]);
    assert_fails_naming(&out, &[&addr, "in use"]);
}

#[test]
fn serve_of_missing_repo() {
    let out = osbuild(&[
        "serve",
        "--repo",
        "/nonexistent-repo",
        "--http",
        "127.0.0.1:0",
    ]);
    assert_fails_naming(&out, &["/nonexistent-repo"]);
}

#[test]
fn serve_with_ssh_generates_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let repo = committed_repo(dir.path());
    let key = osbuild_testing::sshd::KeyPair::generate(&dir.path().join("id")).unwrap();
    let ak = dir.path().join("authorized_keys");
    fs::write(&ak, key.public_line().unwrap()).unwrap();
    let host_key = dir.path().join("keys/host_ed25519");
    fs::create_dir(dir.path().join("keys")).unwrap();

    // --ssh without --authorized-keys is a usage error naming the option.
    let out = osbuild(&[
        "serve",
        "--repo",
        repo.to_str().unwrap(),
        "--ssh",
        "127.0.0.1:0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--authorized-keys"));

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(OSBUILD)
        .args([
            "serve",
            "--repo",
            repo.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ])
        .args([
            "--ssh",
            &format!("127.0.0.1:{port}"),
            "--authorized-keys",
            ak.to_str().unwrap(),
        ])
        .args(["--host-key", host_key.to_str().unwrap()])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the SSH listener did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&host_key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let public = osbuild_testing::sshd::public_line_of(&host_key).unwrap();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
}

#[test]
fn serve_print_config_merges_file_and_flags_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serve.toml");
    // The keys --ssh needs are in the file, --ssh itself on the command line.
    fs::write(
        &file,
        "repo = \"repo\"\nauthorized-keys = \"ak\"\nhost-key = \"hk\"\n",
    )
    .unwrap();
    let out = osbuild(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--ssh",
        "127.0.0.1:2222",
        "--access-log=false",
        "--print-config",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = dir.path().join("printed.toml");
    fs::write(&printed, stdout.as_bytes()).unwrap();
    let back = ostree_serve::ServeConfig::from_file(&printed).unwrap();
    assert_eq!(back.repo, Some(dir.path().join("repo")), "{stdout}");
    assert_eq!(back.authorized_keys, Some(dir.path().join("ak")));
    assert_eq!(back.ssh, Some("127.0.0.1:2222".parse().unwrap()));
    assert_eq!(back.access_log, Some(false));
    // Defaults are spelled out, and the text prints itself again.
    assert_eq!(back.http, Some("127.0.0.1:8080".parse().unwrap()));
    let again = osbuild(&[
        "serve",
        "--config",
        printed.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(again.status.success());
    assert_eq!(String::from_utf8_lossy(&again.stdout), stdout);

    // Without the host key anywhere: one error naming the flag and the key.
    fs::write(&file, "repo = \"repo\"\nauthorized-keys = \"ak\"\n").unwrap();
    let out = osbuild(&[
        "serve",
        "--config",
        file.to_str().unwrap(),
        "--ssh",
        "127.0.0.1:2222",
        "--print-config",
    ]);
    assert_fails_naming(&out, &["--host-key", "`host-key`"]);
    assert!(out.stdout.is_empty());
}

#[test]
fn installed_as_ostree_receive_keeps_the_protocol_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["ostree-receive-1", "ostree-receive"] {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(OSBUILD, &link).unwrap();
        // Usage errors are status 2, even for what osbuild itself would take as --help.
        for args in [&[][..], &["--help"][..], &["/srv/repo"][..]] {
            let out = output(Command::new(&link).args(args));
            assert_eq!(out.status.code(), Some(2), "{name} {args:?}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("usage: ostree-receive-1"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // A receive that fails is status 1.
        let missing = dir.path().join("no-such-repo");
        let out =
            output(Command::new(&link).args([missing.to_str().unwrap(), "http://127.0.0.1:1/"]));
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-repo"));
    }
}

#[test]
fn commit_push_without_destination_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    tiny_tree(&tree);
    // In a fresh directory, where the default --repo (./repo) would be created.
    let cwd = dir.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    let out = output(
        Command::new(OSBUILD)
            .args(["commit-push", "--branch", "foo", "--tree"])
            .arg(&tree)
            .current_dir(&cwd),
    );
    assert_fails_naming(
        &out,
        &[
            "commit-push needs a destination: pass ssh://USER@HOST:PORT/PATH, --server HOST, \
           or set [push] destination in osbuild.toml",
        ],
    );
    assert!(entries(&cwd).is_empty(), "{:?}", entries(&cwd));
}

#[test]
fn completions_man_pages_and_version() {
    let out = osbuild(&["completions", "bash"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("commit-push"));
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let out = osbuild(&["man", "--output", man.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(man.join("osbuild-commit-push.1").is_file());
    let out = osbuild(&["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && version.starts_with("osbuild ") && version.contains(" ("),
        "{version}"
    );
}

#[test]
fn commit_push_to_a_server_by_its_parts() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    tiny_tree(&tree);
    let push = PushServer::start(dir.path());
    // --repo defaults to ./repo, --user to the local user; the port comes from --server.
    let cwd = dir.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    let out = output(
        Command::new(OSBUILD)
            .args(["commit-push", "--branch", "foo", "--tree"])
            .arg(&tree)
            .args(["--server", &format!("127.0.0.1:{}", push.port), "--path"])
            .arg(&push.served)
            .arg("--identity")
            .arg(&push.key.private)
            .arg("--known-hosts")
            .arg(dir.path().join("known_hosts"))
            .arg("--accept-new-host-key")
            .current_dir(&cwd),
    );
    let local = assert_pushed(&out, &cwd.join("repo"), &push.served);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&local));
}

/// A commit-push of `foo` that succeeded, with the same commit on both ends; returns it.
fn assert_pushed(out: &Output, local: &Path, served: &Path) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let commit = osbuild_testing::helpers::rev_parse(local, "foo");
    assert_eq!(osbuild_testing::helpers::rev_parse(served, "foo"), commit);
    commit
}

/// `osbuild serve --ssh` on a free port, accepting one generated key, in `dir`.
struct PushServer {
    _server: Daemon,
    port: u16,
    served: std::path::PathBuf,
    key: osbuild_testing::sshd::KeyPair,
    host_key: std::path::PathBuf,
}

impl PushServer {
    fn start(dir: &Path) -> Self {
        let served = dir.join("served");
        osbuild_testing::helpers::init_archive(&served);
        let key = osbuild_testing::sshd::KeyPair::generate(&dir.join("id")).unwrap();
        let ak = dir.join("authorized_keys");
        fs::write(&ak, key.public_line().unwrap()).unwrap();
        let port = free_port();
        let host_key = dir.join("host_key");
        let server = Daemon::start(
            Command::new(OSBUILD)
                .args(["serve", "--access-log=false", "--http", "127.0.0.1:0"])
                .arg("--repo")
                .arg(&served)
                .args(["--ssh", &format!("127.0.0.1:{port}"), "--authorized-keys"])
                .arg(&ak)
                .arg("--host-key")
                .arg(&host_key),
            port,
            None,
        )
        .expect("starting osbuild serve --ssh");
        PushServer {
            _server: server,
            port,
            served,
            key,
            host_key,
        }
    }
}

#[test]
fn commit_push_as_typed_in_a_manifest_directory() {
    let dir = tempfile::tempdir().unwrap();
    let push = PushServer::start(dir.path());
    let os = dir.path().join("os");
    plain_tree(&os.join("base"));
    fs::copy(&push.key.private, os.join("deploy_key")).unwrap();
    // The server's key is known, as a user's known_hosts would have it.
    let host_public = output(
        Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&push.host_key),
    );
    assert!(host_public.status.success());
    fs::write(
        os.join("known_hosts"),
        format!(
            "[127.0.0.1]:{} {}",
            push.port,
            String::from_utf8_lossy(&host_public.stdout)
        ),
    )
    .unwrap();
    let user = String::from_utf8_lossy(&output(Command::new("id").arg("-un")).stdout)
        .trim()
        .to_string();
    fs::write(
        os.join("osbuild.toml"),
        format!(
            "name = \"demo\"\nref = \"{{name}}/{{arch}}\"\n[base]\ndirectory = \"base\"\n\
             [push]\ndestination = \"ssh://{user}@127.0.0.1:{}{}\"\n\
             identity = \"deploy_key\"\nknown_hosts = \"known_hosts\"\n",
            push.port,
            push.served.display()
        ),
    )
    .unwrap();
    // Exactly as users are told to type it.
    let out = output(
        Command::new(OSBUILD)
            .args(["commit-push", "--branch", "foo"])
            .current_dir(&os),
    );
    assert_pushed(&out, &os.join("repo"), &push.served);
}

/// A plain (not yet OSTree-shaped) root filesystem: enough for the manifest's users, files
/// and services and for the layout conversion, not for booting.
fn plain_tree(root: &Path) {
    for d in [
        "etc",
        "usr/lib/modules/6.1.0-test",
        "usr/lib/systemd/system",
        "var/lib",
        "home",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
    fs::write(root.join("etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    fs::write(root.join("usr/lib/os-release"), "ID=test\n").unwrap();
    fs::write(root.join("usr/lib/modules/6.1.0-test/vmlinuz"), "kernel").unwrap();
    fs::write(
        root.join("usr/lib/modules/6.1.0-test/initramfs.img"),
        "initramfs",
    )
    .unwrap();
    fs::write(
        root.join("usr/lib/systemd/system/hello.service"),
        "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
}

fn ostree_out(repo: &Path, args: &[&str]) -> String {
    let out = output(
        Command::new("ostree")
            .arg(format!("--repo={}", repo.display()))
            .args(args),
    );
    assert!(
        out.status.success(),
        "ostree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn commit_from_a_manifest_applies_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    plain_tree(&base);
    fs::create_dir_all(dir.path().join("overlay/etc")).unwrap();
    fs::write(dir.path().join("overlay/etc/motd"), "from the overlay\n").unwrap();
    fs::write(dir.path().join("app.conf"), "port = 8090\n").unwrap();
    fs::write(
        dir.path().join("osbuild.toml"),
        r#"name = "demo"
version = "1.{date}"
hostname = "demo-box"
ref = "{name}/{arch}"
overlays = ["overlay"]

[base]
directory = "base"

[[files]]
path = "/etc/app/app.conf"
source = "app.conf"
mode = "0640"
owner = "admin"

[[files]]
path = "/usr/share/demo/inline"
content = "inline text\n"

[[users]]
name = "admin"
uid = 1500
groups = ["sudo"]
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXlmb3J0ZXN0aW5nb25seTEyMzQ1 admin@test"]

[services]
enable = ["hello.service"]
"#,
    )
    .unwrap();
    // As users type it: in the manifest's directory, with ./repo as the default.
    let out = output(
        Command::new(OSBUILD)
            .args(["commit"])
            .current_dir(dir.path())
            .env("SOURCE_DATE_EPOCH", "1764547200"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checksum = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let repo = dir.path().join("repo");
    assert_eq!(
        ostree_out(&repo, &["rev-parse", "demo/x86_64"]).trim(),
        checksum
    );
    assert!(ostree_out(&repo, &["show", "demo/x86_64"]).contains("Version: 1.20251201.0000"));
    let cat = |path: &str| ostree_out(&repo, &["cat", "demo/x86_64", path]);
    assert_eq!(cat("/usr/etc/hostname"), "demo-box\n");
    assert_eq!(cat("/usr/etc/motd"), "from the overlay\n");
    assert_eq!(cat("/usr/etc/app/app.conf"), "port = 8090\n");
    assert_eq!(cat("/usr/share/demo/inline"), "inline text\n");
    assert!(cat("/usr/etc/passwd").contains("admin:x:1500:1500::/var/home/admin:/bin/bash"));
    assert!(cat("/usr/etc/group").contains("sudo:x:27:admin"));
    assert!(cat("/usr/etc/ssh/authorized_keys.d/admin").contains("admin@test"));
    assert!(cat("/usr/lib/tmpfiles.d/osbuild-users.conf").contains("d /var/home/admin 0700"));
    // ostree ls: mode, uid, gid, size, path.
    let ls = ostree_out(&repo, &["ls", "demo/x86_64", "/usr/etc/app/app.conf"]);
    let fields: Vec<&str> = ls.split_whitespace().collect();
    assert_eq!(&fields[..3], ["-00640", "1500", "1500"], "{ls}");
    let wants = ostree_out(
        &repo,
        &[
            "ls",
            "demo/x86_64",
            "/usr/etc/systemd/system/multi-user.target.wants/hello.service",
        ],
    );
    assert!(
        wants.contains("/usr/lib/systemd/system/hello.service"),
        "{wants}"
    );
    // The work tree is gone: only what was there, the repo and its checksum cache.
    assert_eq!(
        entries(dir.path()),
        [
            ".repo.osbuild-checksums",
            "app.conf",
            "base",
            "osbuild.toml",
            "overlay",
            "repo"
        ]
    );
}

#[test]
fn manifest_errors_name_file_key_line_and_column_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("osbuild.toml");
    fs::create_dir(dir.path().join("base")).unwrap();
    for (text, needles) in [
        (
            "name = \"demo\"\nref = \"{name}/{arch}\"\ncolour = \"blue\"\n[base]\ndirectory = \"base\"\n",
            &["osbuild.toml:3:1", "colour"][..],
        ),
        (
            "name = \"demo\"\nref = \"{name}/{arch}\"\n[base]\ndirectory = \"missing\"\n",
            &["osbuild.toml:4:", "base.directory", "missing"][..],
        ),
        (
            "name = \"demo\"\n[base]\ndistro = \"debian\"\n[[users]]\nname = \"Bad Name\"\n",
            &["osbuild.toml:5:", "users[0].name"][..],
        ),
        (
            "name = \"demo\"\n[base]\ndistro = \"debian\"\n[[users]]\nname = \"alice\"\nuid = \"1000\"\n",
            &["osbuild.toml:6:7", "users[0].uid", "invalid type"][..],
        ),
        (
            "name = \"demo\"\n[base]\ndistro = \"debian\"\n[[base.repositories]]\nsources = \"deb http://deb.debian.org/debian trixie-backports main\"\nkeyring = \"keys/missing.gpg\"\n",
            &["osbuild.toml:6:11", "base.repositories[0].keyring", "keys/missing.gpg", "does not exist"][..],
        ),
    ] {
        fs::write(&manifest, text).unwrap();
        let out = output(Command::new(OSBUILD)
            .args(["commit"])
            .current_dir(dir.path())
            );
        assert_fails_naming(&out, needles);
        assert_eq!(entries(dir.path()), ["base", "osbuild.toml"], "{text}");
    }
    // A service the tree does not have: refused after the base is copied, leaving nothing.
    plain_tree(&dir.path().join("base"));
    fs::write(
        &manifest,
        "name = \"demo\"\nref = \"{name}/{arch}\"\n[base]\ndirectory = \"base\"\n[services]\nenable = [\"nginx.service\"]\n",
    )
    .unwrap();
    let out = output(
        Command::new(OSBUILD)
            .args(["commit"])
            .current_dir(dir.path()),
    );
    assert_fails_naming(&out, &["nginx.service", "not in the tree"]);
    assert_eq!(entries(dir.path()), ["base", "osbuild.toml"]);
}
