//! The helpers every test shares: running commands (panicking with the command line and
//! stderr, as test helpers should), real repositories made with the `ostree` CLI, free
//! ports, and long-running servers that are waited for and killed on drop.

use anyhow::{bail, Context, Result};
use osbuild_core::cmd;
use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// How long a server may take to start listening (generous: two shared cores).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

// ---- commands ----

/// Run `cmd`, panicking with its command line and stderr tail if it fails; returns its
/// stdout, trimmed.
pub fn run(cmd: &mut Command) -> String {
    match cmd::run(cmd) {
        Ok(stdout) => stdout.trim().to_string(),
        Err(e) => panic!("{e}"),
    }
}

/// Run `cmd` to completion whatever its exit status (the test checks it); panics only if
/// it cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd::output(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// stdout followed by stderr, as text: what a failing assertion should show.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---- trees ----

/// The smallest tree libostree deploys and `osbuild commit` accepts, at `root`: a kernel
/// (`kernel` is its content) and initramfs under /usr/lib/modules, and /usr/etc.
pub fn deployable_tree(root: &Path, kernel: &[u8]) {
    let modules = root.join("usr/lib/modules/6.1.0-test");
    for (path, content) in [
        (modules.join("vmlinuz"), kernel),
        (modules.join("initramfs.img"), b"an initramfs\n".as_slice()),
        (root.join("usr/etc/os-release"), b"ID=test\n".as_slice()),
    ] {
        let dir = path.parent().expect("a file has a parent");
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        fs::write(&path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

/// A temporary directory (under [`target_tmp`]) for tests that deploy with libostree,
/// which makes every deployment immutable (`chattr +i`): on drop the flags are cleared
/// first, or the directory could not be removed and each run would leave its sysroots.
#[derive(Debug)]
pub struct SysrootDir(tempfile::TempDir);

impl SysrootDir {
    /// A new, empty directory.
    pub fn new() -> SysrootDir {
        SysrootDir(tempfile::tempdir_in(target_tmp()).expect("creating a directory in target/tmp"))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for SysrootDir {
    fn default() -> Self {
        SysrootDir::new()
    }
}

impl Drop for SysrootDir {
    fn drop(&mut self) {
        // Deployments sit at <sysroot>/ostree/deploy/<os>/deploy/<checksum>.<serial>; the
        // sysroot is this directory or one level below it.
        let levels = ["*/ostree/deploy/*/deploy/*.*", "ostree/deploy/*/deploy/*.*"];
        for pattern in levels {
            let mut dirs = vec![self.path().to_path_buf()];
            for part in pattern.split('/') {
                dirs = dirs.iter().flat_map(|d| matching(d, part)).collect();
            }
            for dir in dirs.iter().filter(|d| d.is_dir() && !d.is_symlink()) {
                let _ = cmd::run(Command::new("chattr").arg("-i").arg(dir));
            }
        }
    }
}

/// The entries of `dir` matching `part`: a literal name, `*`, or `*.*` (a dot in it).
fn matching(dir: &Path, part: &str) -> Vec<PathBuf> {
    match part {
        "*" | "*.*" => fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| part == "*" || e.file_name().to_string_lossy().contains('.'))
            .map(|e| e.path())
            .collect(),
        name => vec![dir.join(name)],
    }
}

// ---- the osbuild binary ----

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("osbuild-testing lives in the workspace")
        .to_path_buf()
}

/// `target/<profile>`: the directory of the running test binary's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in target/<profile>/deps", exe.display()))
        .to_path_buf()
}

/// `target/tmp`, for fixtures shared between test binaries (cargo's CARGO_TARGET_TMPDIR,
/// found at run time so that library code can use it too).
pub fn target_tmp() -> PathBuf {
    let dir = profile_dir()
        .parent()
        .expect("target/<profile> has a parent")
        .join("tmp");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// The `osbuild` binary of this build, for tests outside the root package (which cannot
/// use `CARGO_BIN_EXE_osbuild`): `$OSBUILD_BIN`, or `target/<profile>/osbuild`, which
/// `cargo test --workspace` builds. Panics if it is missing or older than the sources, so
/// a test never runs a stale binary.
pub fn osbuild_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(find_osbuild_bin).clone()
}

fn find_osbuild_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("OSBUILD_BIN") {
        return bin.into();
    }
    let bin = profile_dir().join("osbuild");
    let built = fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; build it first: cargo build --bin osbuild",
                bin.display()
            )
        });
    let root = workspace_root();
    for crate_dir in [
        "src",
        "core/src",
        "ostree-commit/src",
        "ostree-serve/src",
        "image-builder/src",
        "admin/src",
    ] {
        if let Some((path, changed)) = newest(&root.join(crate_dir)) {
            assert!(
                changed <= built,
                "{} is older than {}: rebuild it first: cargo build --bin osbuild",
                bin.display(),
                path.display()
            );
        }
    }
    bin
}

/// The most recently modified file under `dir`.
fn newest(dir: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut best: Option<(PathBuf, SystemTime)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(|t| (path, t))
        };
        if let Some(c) = candidate {
            best = match best {
                Some(b) if b.1 >= c.1 => Some(b),
                _ => Some(c),
            };
        }
    }
    best
}

// ---- ports and servers ----

/// What podman needs on these machines: runc (crun fails here) and limits the sandbox
/// allows.
pub const PODMAN_ARGS: [&str; 6] = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// xorshift: reproducible pseudo-random numbers from a seed the test prints, so that a
/// failure can be replayed.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock; the seed is printed, prefixed with `what`.
    pub fn from_clock(what: &str) -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        eprintln!("{what}: seed {seed}");
        Rng(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` bytes: incompressible content.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// `ostree pull` of `branch` from `url` into a fresh bare-user repository at
/// `dir/client` (remote `origin`, no GPG): the real client, as a device pulls.
pub fn pull_fresh(dir: &Path, url: &str, branch: &str) -> Output {
    let client = dir.join("client");
    let _ = fs::remove_dir_all(&client);
    let r = format!("--repo={}", client.display());
    run(Command::new("ostree").args(["init", "--mode=bare-user", &r]));
    run(Command::new("ostree").args(["remote", "add", &r, "--no-gpg-verify", "origin", url]));
    output(Command::new("ostree").args(["pull", &r, "origin", branch]))
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Another process may grab it before the server binds it; that is unlikely enough for
/// tests. Panics if no port can be bound, as a test cannot go on then.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e:#}"))
}

/// [`free_port`] for callers that want to handle the error.
pub fn try_free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free TCP port")?;
    Ok(listener
        .local_addr()
        .context("reading the address of the bound port")?
        .port())
}

/// Wait until something accepts connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        if Instant::now() >= deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A long-running child (a server, an agent), started with [`cmd::spawn_tied`] so the
/// kernel kills it if the test process dies, and killed on drop.
///
/// Like every tied child it must stay on the thread that started it.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    command: String,
    log: Option<PathBuf>,
}

impl Daemon {
    /// Start `cmd`, with stdout and stderr appended to `log` when given (else inherited),
    /// without waiting for anything.
    pub fn spawn(cmd: &mut Command, log: Option<&Path>) -> Result<Daemon> {
        let command = cmd::display(cmd);
        cmd.stdin(Stdio::null());
        if let Some(log) = log {
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            let copy = file
                .try_clone()
                .with_context(|| format!("duplicating {}", log.display()))?;
            cmd.stdout(file).stderr(copy);
        }
        let child = cmd::spawn_tied(cmd)?;
        Ok(Daemon {
            child,
            command,
            log: log.map(Path::to_path_buf),
        })
    }

    /// Start `cmd` and wait until it listens on 127.0.0.1:`port`; fails early, quoting
    /// its log, if it exits first.
    pub fn start(cmd: &mut Command, port: u16, log: Option<&Path>) -> Result<Daemon> {
        let mut daemon = Daemon::spawn(cmd, log)?;
        daemon.wait_until(
            &format!("listening on 127.0.0.1:{port}"),
            START_TIMEOUT,
            || TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok(),
        )?;
        Ok(daemon)
    }

    /// Poll `ready` until it holds; fails if the process exits first or on timeout.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .try_wait()
                .with_context(|| format!("checking on `{}`", self.command))?
            {
                bail!(
                    "`{}` exited ({status}) before {what}{}",
                    self.command,
                    self.log_note()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` not {what} after {timeout:?}{}",
                    self.command,
                    self.log_note()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_note(&self) -> String {
        match &self.log {
            Some(log) => {
                let text = fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                format!("; the end of {}:\n{tail}", log.display())
            }
            None => String::new(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The child, e.g. to take its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Wait for it to exit by itself.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .with_context(|| format!("waiting for `{}`", self.command))
    }

    /// Kill it (SIGKILL) and reap it.
    pub fn kill(&mut self) {
        // Errors mean it is gone already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---- ostree ----

/// Run `ostree ARGS…` and return its trimmed stdout; panics with its stderr on failure.
pub fn ostree(args: &[&str]) -> String {
    run(Command::new("ostree").args(args))
}

/// `--repo=PATH`.
pub fn repo_arg(repo: &Path) -> String {
    format!("--repo={}", repo.display())
}

/// Create a repository in `mode` (`archive`, `bare-user`, …).
pub fn init(repo: &Path, mode: &str) {
    ostree(&["init", &format!("--mode={mode}"), &repo_arg(repo)]);
}

/// Create an archive-mode repository.
pub fn init_archive(repo: &Path) {
    init(repo, "archive");
}

/// Regenerate the summary, as a publishing repository does after each commit.
pub fn summary(repo: &Path) {
    ostree(&["summary", "-u", &repo_arg(repo)]);
}

/// Commit the directory `tree` to `branch` (on top of its head), with a fixed timestamp
/// when given, then update the summary. Returns the checksum.
pub fn commit_tree(repo: &Path, branch: &str, tree: &Path, timestamp: Option<u64>) -> String {
    let mut args = vec![
        "commit".to_string(),
        repo_arg(repo),
        format!("--branch={branch}"),
        format!("--tree=dir={}", tree.display()),
    ];
    if let Some(t) = timestamp {
        args.push(format!("--timestamp=@{t}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let checksum = ostree(&refs);
    summary(repo);
    checksum
}

/// Commit a tree holding exactly `files` (relative path, content).
pub fn commit_files(
    repo: &Path,
    branch: &str,
    files: &[(&str, &[u8])],
    timestamp: Option<u64>,
) -> String {
    let tree = tempfile::tempdir().expect("creating a temporary directory");
    for (name, content) in files {
        let p = tree.path().join(name);
        write_file(&p, content);
    }
    commit_tree(repo, branch, tree.path(), timestamp)
}

/// The commit a ref points at.
pub fn rev_parse(repo: &Path, refspec: &str) -> String {
    ostree(&["rev-parse", &repo_arg(repo), refspec])
}

/// Write `content` to `path`, creating its parent directories; panics naming the path.
pub fn write_file(path: &Path, content: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    fs::write(path, content).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Deterministic incompressible bytes, so objects stay large once compressed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree in the OSTree layout with a stand-in kernel and initramfs: enough to validate,
/// commit and deploy, not to boot.
pub fn stub_bootable_tree(root: &Path) {
    let moddir = root.join("usr/lib/modules/6.1.0-test");
    fs::create_dir_all(root.join("usr/etc"))
        .unwrap_or_else(|e| panic!("creating {}/usr/etc: {e}", root.display()));
    write_file(&moddir.join("vmlinuz"), "kernel");
    write_file(&moddir.join("initramfs.img"), "initramfs");
    write_file(&root.join("usr/lib/os-release"), "ID=test\n");
}

// ---- push fixtures ----

/// What every push test starts from: a temporary directory with a client and a server
/// archive repository, an SSH key pair for the pushing user and a known_hosts path, plus a
/// tree to commit from. Commits get timestamps one second apart (receivers refuse a commit
/// that is not newer than the one it replaces, and a test commits faster than that).
#[derive(Debug)]
pub struct PushFixture {
    /// Holds everything; removed on drop.
    pub dir: tempfile::TempDir,
    /// The pushing side's repository.
    pub client: PathBuf,
    /// The receiving side's repository.
    pub server: PathBuf,
    /// The pushing user's key.
    pub key: crate::sshd::KeyPair,
    /// Where the server's host key is recorded (written by the test).
    pub known_hosts: PathBuf,
    tree: PathBuf,
    commits: std::cell::Cell<u64>,
}

impl PushFixture {
    /// Make the repositories and the key.
    pub fn new() -> PushFixture {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let client = dir.path().join("client");
        let server = dir.path().join("server");
        init_archive(&client);
        init_archive(&server);
        let key = crate::sshd::KeyPair::generate(&dir.path().join("id_ed25519"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        PushFixture {
            known_hosts: dir.path().join("known_hosts"),
            tree: dir.path().join("tree"),
            dir,
            client,
            server,
            key,
            commits: Default::default(),
        }
    }

    /// A path inside the fixture's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Add `usr/share/doc/FILE` (with `content`) to the client's tree and commit the tree to
    /// `branch`, with the subject `add FILE`. `--no-bindings`, as `osbuild commit` does.
    /// Returns the checksum.
    pub fn commit(&self, branch: &str, file: &str, content: &str) -> String {
        write_file(&self.tree.join("usr/share/doc").join(file), content);
        let n = self.commits.get() + 1;
        self.commits.set(n);
        let checksum = ostree(&[
            "commit",
            &repo_arg(&self.client),
            "--no-bindings",
            &format!("--timestamp=@{}", 1_700_000_000 + n),
            &format!("--branch={branch}"),
            &format!("--subject=add {file}"),
            &format!("--tree=dir={}", self.tree.display()),
        ]);
        summary(&self.client);
        checksum
    }

    /// What the server's `refspec` points at.
    pub fn server_rev(&self, refspec: &str) -> String {
        rev_parse(&self.server, refspec)
    }

    /// OpenSSH client options: our key only, our known_hosts strictly, never a prompt.
    pub fn ssh_options(&self) -> Vec<String> {
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

    /// The reference client, ostree-push 1.2.0, pushing the client's `refs` (all when
    /// empty) to the server repository over SSH on 127.0.0.1:`port`; its output, whatever
    /// its exit status. Verbose, so the output also names the tunnel port
    /// (`… to remote port N`).
    pub fn ostree_push(&self, port: u16, refs: &[&str]) -> Output {
        let venv = crate::ostree_push::venv(&target_tmp()).unwrap_or_else(|e| panic!("{e:#}"));
        output(
            Command::new(venv.join("bin/ostree-push"))
                .arg("-v")
                .arg(repo_arg(&self.client))
                .args(self.ssh_options())
                .arg(format!(
                    "ssh://root@127.0.0.1:{port}{}",
                    self.server.display()
                ))
                .args(refs),
        )
    }
}

impl Default for PushFixture {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_can_be_bound() {
        let port = free_port();
        // A process forked by a parallel test may briefly hold a copy of free_port's
        // socket until it execs, so allow a few retries.
        let mut result = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        for _ in 0..20 {
            if result.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            result = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
        }
        result.expect("binding the port free_port returned");
    }

    #[test]
    fn daemon_start_waits_for_the_port_and_reports_an_early_exit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("log");
        let err = Daemon::start(
            Command::new("sh").args(["-c", "echo cannot bind >&2; exit 7"]),
            free_port(),
            Some(&log),
        )
        .expect_err("the server exits at once");
        let msg = format!("{err:#}");
        assert!(msg.contains("exit status: 7"), "{msg}");
        assert!(msg.contains("cannot bind"), "{msg}");
        assert!(msg.contains("sh -c"), "{msg}");

        let port = free_port();
        let script = format!("exec python3 -m http.server --bind 127.0.0.1 {port}");
        let server = Daemon::start(Command::new("sh").args(["-c", &script]), port, Some(&log))
            .expect("python3's http.server starts");
        wait_for_port(port, Duration::from_secs(1)).expect("still listening");
        let pid = server.id();
        drop(server);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the server {pid} survived its drop"
        );
    }
}
