//! compose/: the image and compose file brought up with podman-compose, exactly as a user
//! would, then pushed to over SSH and pulled from over HTTP, and taken down again.
//!
//! The user-facing files are used as they are; what these machines need is injected here:
//! podman runs with `--runtime runc` (crun fails here) and explicit `nofile`/`nproc`
//! ulimits, and never pulls (no registry is reachable). The base image comes from
//! compose/make-base.sh (cached: made once, then reused). The image gets the debug binary
//! of this build, through the compose file's OSBUILD_BINARY build argument, in a staged
//! copy of the build context. Needs root (mmdebstrap, rootful podman).

use osbuild_core::cmd;
use osbuild_testing::helpers::{
    commit_files, free_port, init_archive, osbuild_bin, ostree, repo_arg, run, text,
    workspace_root, PODMAN_ARGS,
};
use osbuild_testing::{ostree_push, require, sshd, Need};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The files of compose/ that the image and the compose file are made of.
const COMPOSE_FILES: [&str; 4] = [
    "Containerfile",
    "compose.yaml",
    "entrypoint.sh",
    "serve.toml",
];

/// Every variable compose.yaml reads; the outer environment's values are dropped so the
/// test sees only its own.
const COMPOSE_VARS: [&str; 8] = [
    "OSBUILD_BASE",
    "OSBUILD_BINARY",
    "OSBUILD_IMAGE",
    "OSBUILD_HTTP_PORT",
    "OSBUILD_SSH_PORT",
    "OSBUILD_SSH_DIR",
    "OSBUILD_AUTHORIZED_KEYS",
    "OSBUILD_SERVE_CONFIG",
];

/// The longest the server may take to come up before the test gives up (a hang guard, not
/// a measurement).
const READY_LIMIT: Duration = Duration::from_secs(300);

/// A commit of a one-file tree on `branch`, with the summary updated as pushes need.
fn commit(repo: &Path, branch: &str, content: &str) -> String {
    commit_files(
        repo,
        branch,
        &[("usr/share/data", content.as_bytes())],
        None,
    )
}

/// Pull `branch` over HTTP into a fresh repository and return the commit it got.
fn pull(dir: &Path, http_port: u16, branch: &str) -> String {
    let repo = tempfile::tempdir_in(dir).expect("creating a temporary directory");
    init_archive(repo.path());
    ostree(&[
        "remote",
        "add",
        "--no-gpg-verify",
        &repo_arg(repo.path()),
        "served",
        &format!("http://127.0.0.1:{http_port}/repo/"),
    ]);
    ostree(&["pull", &repo_arg(repo.path()), "served", branch]);
    ostree(&[
        "rev-parse",
        &repo_arg(repo.path()),
        &format!("served:{branch}"),
    ])
}

/// One podman-compose project: a staged copy of the build context, its own image name,
/// ports and project name, taken down (containers, volumes, network, image) on drop.
struct Compose {
    /// The staged build context: compose/ and target/debug/osbuild.
    context: PathBuf,
    project: String,
    image: String,
    http_port: u16,
    ssh_port: u16,
    torn_down: bool,
}

impl Compose {
    fn stage(dir: &Path, authorized_keys: &str) -> Compose {
        let context = dir.join("context");
        let compose = context.join("compose");
        std::fs::create_dir_all(compose.join("secrets")).unwrap();
        for f in COMPOSE_FILES {
            let src = workspace_root().join("compose").join(f);
            std::fs::copy(&src, compose.join(f)).unwrap_or_else(|e| {
                panic!("copying {} into the build context: {e}", src.display())
            });
        }
        std::fs::write(compose.join("secrets/authorized_keys"), authorized_keys).unwrap();
        let binary = context.join("target/debug/osbuild");
        std::fs::create_dir_all(binary.parent().unwrap()).unwrap();
        let osbuild = osbuild_bin();
        if std::fs::hard_link(&osbuild, &binary).is_err() {
            std::fs::copy(&osbuild, &binary).unwrap_or_else(|e| {
                panic!("copying {} into the build context: {e}", osbuild.display())
            });
        }
        let unique = format!(
            "{}{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
                % 1_000_000_000
        );
        Compose {
            context,
            project: format!("osbuildtest{unique}"),
            image: format!("localhost/osbuild-serve-test:{unique}"),
            http_port: free_port(),
            ssh_port: free_port(),
            torn_down: false,
        }
    }

    fn host_key(&self) -> PathBuf {
        self.context
            .join("compose/secrets/ssh/ssh_host_ed25519_key")
    }

    /// podman-compose for this project, with the flags these machines need.
    fn podman_compose(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("podman-compose");
        for var in COMPOSE_VARS {
            cmd.env_remove(var);
        }
        cmd.current_dir(&self.context)
            .env("OSBUILD_BINARY", "target/debug/osbuild")
            .env("OSBUILD_IMAGE", &self.image)
            .env("OSBUILD_HTTP_PORT", self.http_port.to_string())
            .env("OSBUILD_SSH_PORT", self.ssh_port.to_string())
            .args(["-p", &self.project, "-f", "compose/compose.yaml"])
            // What podman needs on these machines, for every build and run podman-compose starts.
            .arg(format!(
                "--podman-build-args={} --pull=never",
                PODMAN_ARGS.join(" ")
            ))
            .arg(format!(
                "--podman-run-args={} --pull=never",
                PODMAN_ARGS.join(" ")
            ))
            .args(args);
        cmd
    }

    /// The names of this project's containers, running or not.
    fn containers(&self) -> Vec<String> {
        self.labelled(&["ps", "-a", "--format", "{{.Names}}"])
    }

    /// The names of this project's volumes.
    fn volumes(&self) -> Vec<String> {
        self.labelled(&["volume", "ls", "--format", "{{.Name}}"])
    }

    /// `podman LIST…` filtered on the label podman-compose puts on what it makes.
    fn labelled(&self, list: &[&str]) -> Vec<String> {
        run(Command::new("podman").args(list).args([
            "--filter",
            &format!("label=io.podman.compose.project={}", self.project),
        ]))
        .lines()
        .map(str::to_string)
        .collect()
    }

    fn logs(&self, container: &str) -> String {
        cmd::output(Command::new("podman").args(["logs", container]))
            .map(|o| text(&o))
            .unwrap_or_else(|e| format!("({e})"))
    }

    /// `up -d`, then wait until the server reports both listeners.
    fn up(&self) {
        run(&mut self.podman_compose(&["up", "-d"]));
        let containers = self.containers();
        assert_eq!(
            containers.len(),
            1,
            "podman-compose up should make one container: {containers:?}"
        );
        let name = &containers[0];
        let start = Instant::now();
        loop {
            let logs = self.logs(name);
            if logs.contains("Accepting pushes over SSH on 0.0.0.0:2222") {
                return;
            }
            // compose.yaml restarts a failed server: a restart is a failure here too.
            let state = run(Command::new("podman").args([
                "inspect",
                "-f",
                "{{.State.Status}} {{.RestartCount}}",
                name,
            ]));
            let (status, restarts) = state.split_once(' ').unwrap_or((&state, "0"));
            assert!(
                !["exited", "stopped", "dead"].contains(&status) && restarts == "0",
                "container {name} is {status} after {restarts} restarts, before the server \
                 was up; its logs:\n{logs}"
            );
            assert!(
                start.elapsed() < READY_LIMIT,
                "osbuild serve in {name} did not report its SSH listener; its logs:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `down` (keeping the repository volume unless `volumes`).
    fn down(&self, volumes: bool) -> Result<(), String> {
        let args: &[&str] = if volumes { &["down", "-v"] } else { &["down"] };
        cmd::run(&mut self.podman_compose(args))
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Everything the project made, gone: containers, volumes, network, image.
    fn teardown(&mut self) -> Result<(), String> {
        self.torn_down = true;
        let mut errors = Vec::new();
        if let Err(e) = self.down(true) {
            errors.push(e);
        }
        // Whatever `down` left: containers by label, the network podman-compose made
        // (its down keeps it), the image built for this run.
        let leftovers = cmd::run(Command::new("podman").args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.podman.compose.project={}", self.project),
        ]))
        .unwrap_or_else(|e| {
            errors.push(e.to_string());
            String::new()
        });
        for id in leftovers.split_whitespace() {
            if let Err(e) = cmd::run(Command::new("podman").args(["rm", "-f", id])) {
                errors.push(e.to_string());
            }
        }
        let network = format!("{}_default", self.project);
        remove_if_exists(
            &["network", "exists", &network],
            &["network", "rm", "-f", &network],
        )
        .unwrap_or_else(|e| errors.push(e));
        remove_if_exists(
            &["image", "exists", &self.image],
            &["rmi", "-f", &self.image],
        )
        .unwrap_or_else(|e| errors.push(e));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }
}

/// `podman REMOVE…` when `podman EXISTS…` says the object is there.
fn remove_if_exists(exists: &[&str], remove: &[&str]) -> Result<(), String> {
    // `podman … exists` answers with its exit status: 0 there, 1 not there.
    let there = cmd::output(Command::new("podman").args(exists))
        .map_err(|e| e.to_string())?
        .status
        .success();
    if !there {
        return Ok(());
    }
    cmd::run(Command::new("podman").args(remove))
        .map(drop)
        .map_err(|e| e.to_string())
}

impl Drop for Compose {
    fn drop(&mut self) {
        if !self.torn_down {
            if let Err(e) = self.teardown() {
                eprintln!("tearing down compose project {}: {e}", self.project);
            }
        }
    }
}

#[test]
fn compose_up_push_pull_down() {
    // Root: rootful podman, and mmdebstrap for the base image.
    if !require(&[
        Need::Root,
        Need::Podman,
        Need::PodmanCompose,
        Need::Mmdebstrap,
        Need::SshClient,
        Need::PythonVenv,
    ]) {
        return;
    }

    // The base image, without a registry; cached across runs by make-base.sh itself. Its
    // progress (mmdebstrap, podman build) shows as it runs.
    cmd::run_inherit(Command::new("bash").arg(workspace_root().join("compose/make-base.sh")))
        .unwrap_or_else(|e| panic!("making the base image with compose/make-base.sh: {e}"));

    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let key = sshd::KeyPair::generate(&dir.path().join("id_ed25519")).unwrap();
    let mut compose = Compose::stage(dir.path(), &format!("{}\n", key.public_line().unwrap()));

    compose.up();
    // The host key was generated into the bind-mounted directory on first start.
    let host_public = sshd::public_line_of(&compose.host_key())
        .unwrap_or_else(|e| panic!("reading the generated host key: {e:#}"));
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(
        &known_hosts,
        sshd::known_hosts_line(compose.ssh_port, &host_public),
    )
    .unwrap();
    let destination = format!("ssh://root@127.0.0.1:{}/srv/ostree/repo", compose.ssh_port);

    let client = dir.path().join("client");
    init_archive(&client);
    let branch = "debian/bookworm/x86_64";

    // The reference client, ostree-push 1.2.0, pushes the first commit…
    let c1 = commit(&client, branch, "one");
    let venv = ostree_push::venv(Path::new(env!("CARGO_TARGET_TMPDIR")))
        .unwrap_or_else(|e| panic!("installing the ostree-push client: {e:#}"));
    run(Command::new(venv.join("bin/ostree-push"))
        .arg(repo_arg(&client))
        .arg("-i")
        .arg(&key.private)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg(&destination)
        .arg(branch));
    // …and it is served over HTTP with the checksum it was pushed with.
    assert_eq!(pull(dir.path(), compose.http_port, branch), c1);

    // `osbuild push` fast-forwards it.
    let c2 = commit(&client, branch, "two");
    run(Command::new(osbuild_bin())
        .arg("push")
        .arg(repo_arg(&client))
        .arg("-i")
        .arg(&key.private)
        .arg("--known-hosts")
        .arg(&known_hosts)
        .arg(&destination)
        .arg(branch));
    assert_eq!(pull(dir.path(), compose.http_port, branch), c2);

    // Down and up again: the repository lives in its volume and the host key in its
    // directory, so the new container serves the same commit under the same key.
    compose.down(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compose.volumes().len(), 1, "the repository volume is kept");
    assert!(
        compose.containers().is_empty(),
        "podman-compose down left containers: {:?}",
        compose.containers()
    );
    compose.up();
    assert_eq!(
        sshd::public_line_of(&compose.host_key()).unwrap(),
        host_public,
        "the host key changed across a restart"
    );
    assert_eq!(pull(dir.path(), compose.http_port, branch), c2);

    compose.teardown().unwrap_or_else(|e| panic!("{e}"));
    let left = (compose.containers(), compose.volumes());
    assert!(
        left.0.is_empty() && left.1.is_empty(),
        "teardown left containers {:?} and volumes {:?}",
        left.0,
        left.1
    );
}
