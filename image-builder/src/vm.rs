//! Boots a disk image under qemu (TCG only) and drives its serial console.
//!
//! A [`Vm`] owns the qemu process, a reader thread that logs the serial
//! console to a file, and a temporary directory (console socket, UEFI
//! variables). Dropping it kills qemu, so a failing test never leaves one
//! behind; qemu is also killed by the kernel if the test process dies.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use image_builder::vm::{Vm, VmConfig};
//!
//! let ssh = 2222;
//! let config = VmConfig::new("target/disk.qcow2")
//!     .uefi(true)
//!     .forward(ssh, 22)
//!     .log("target/boot1.log");
//! let mut vm = Vm::boot(config.clone())?;
//! vm.wait_for("login:", Duration::from_secs(600))?;
//! vm.send_line("root")?;
//! # Ok(()) }
//! ```

mod console;
pub mod story;

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;

use console::Shared;

/// The qemu binary; a fixed path so a stray one in `$PATH` cannot change behaviour.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// Read-only OVMF firmware code (Debian package `ovmf`), 4 MiB flash layout.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// Template for the UEFI variable store; each VM writes to its own copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot; needs SMM (`-machine q35,smm=on`).
pub const OVMF_CODE_SECURE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// A variable store with Microsoft's keys enrolled and Secure Boot enabled.
pub const OVMF_VARS_SECURE: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// How many lines of serial output error messages quote.
const TAIL_LINES: usize = 40;
/// How long qemu may take to create the console socket (slow under load).
const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);
/// A write that blocks this long means the guest stopped reading its console.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for buffered console output once qemu has exited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `wait_for` waits for the rest of a matched line at most...
const LINE_GRACE: Duration = Duration::from_millis(500);
/// ...or until output pauses this long (a prompt is never terminated).
const LINE_QUIET: Duration = Duration::from_millis(100);
/// How often to check a process whose exit is not signalled otherwise.
const POLL: Duration = Duration::from_millis(50);
/// Unix socket paths longer than this do not fit `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 107;

/// Disk image format, as passed to qemu's `-drive format=`: make-image's own output
/// formats, so the harness boots whatever it writes.
pub use crate::Format as ImageFormat;

/// What to boot and how. Build with [`VmConfig::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Disk image; qemu writes to it (no snapshot), so a reboot keeps changes. A live ISO
    /// ([`ImageFormat::Iso`]) is attached read-only as a CD-ROM and booted from.
    pub image: PathBuf,
    /// The image's format.
    pub format: ImageFormat,
    /// Boot with OVMF instead of SeaBIOS.
    pub uefi: bool,
    /// UEFI with Secure Boot on and Microsoft's keys enrolled (implies `uefi`).
    pub secure_boot: bool,
    /// Guest memory.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// `(host_port, guest_port)` TCP forwards, bound to 127.0.0.1 on the host.
    pub forwards: Vec<(u16, u16)>,
    /// Raw serial output is appended here (parent directories are created).
    /// Empty means `<image>.serial.log`.
    pub log: PathBuf,
    /// systemd credentials `(name, value)` passed as SMBIOS OEM strings (type 11), which
    /// systemd imports at boot (since 252), e.g. `ssh.authorized_keys.root`.
    pub credentials: Vec<(String, Vec<u8>)>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            image: PathBuf::new(),
            format: ImageFormat::Raw,
            uefi: false,
            secure_boot: false,
            memory_mib: 1024,
            cpus: 2,
            forwards: Vec::new(),
            log: PathBuf::new(),
            credentials: Vec::new(),
        }
    }
}

impl VmConfig {
    /// Defaults for `image`: format from its extension, log next to it.
    pub fn new(image: impl Into<PathBuf>) -> Self {
        let image = image.into();
        Self {
            format: ImageFormat::from_path(&image),
            log: default_log(&image),
            image,
            ..Self::default()
        }
    }

    /// Sets the image format (instead of guessing from the extension).
    pub fn format(mut self, format: ImageFormat) -> Self {
        self.format = format;
        self
    }

    /// Boots with OVMF's Secure Boot build and Microsoft's keys enrolled (implies UEFI).
    pub fn secure_boot(mut self, on: bool) -> Self {
        self.secure_boot = on;
        self.uefi |= on;
        self
    }

    /// Boot with OVMF (UEFI) instead of SeaBIOS.
    pub fn uefi(mut self, uefi: bool) -> Self {
        self.uefi = uefi;
        self
    }

    /// Sets the guest memory.
    pub fn memory_mib(mut self, memory_mib: u32) -> Self {
        self.memory_mib = memory_mib;
        self
    }

    /// Sets the number of virtual CPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Adds a forward from 127.0.0.1:`host_port` to the guest's `guest_port`.
    pub fn forward(mut self, host_port: u16, guest_port: u16) -> Self {
        self.forwards.push((host_port, guest_port));
        self
    }

    /// Passes the systemd credential `name` with `value` to the guest (SMBIOS type 11).
    pub fn credential(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.credentials.push((name.to_string(), value.into()));
        self
    }

    /// Sets the serial log file.
    pub fn log(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = log.into();
        self
    }

    /// The serial log path, applying the default for an empty `log`.
    pub fn log_path(&self) -> PathBuf {
        if self.log.as_os_str().is_empty() {
            default_log(&self.image)
        } else {
            self.log.clone()
        }
    }
}

fn default_log(image: &Path) -> PathBuf {
    let mut log = image.as_os_str().to_owned();
    log.push(".serial.log");
    PathBuf::from(log)
}

/// A running qemu guest. Dropping it kills qemu and removes its temp files.
///
/// The `Vm` must stay on (and be dropped by) the thread that booted it: the
/// kernel's parent-death signal fires when the *spawning thread* exits, so a
/// `Vm` booted on a short-lived thread gets its qemu killed with that thread.
pub struct Vm {
    config: VmConfig,
    log: PathBuf,
    child: Child,
    shared: Arc<Shared>,
    /// Write half of the console socket; also used to stop the reader.
    console: UnixStream,
    reader: Option<JoinHandle<()>>,
    /// Byte offset into the cleaned output where the next `wait_for` starts.
    cursor: usize,
    /// qemu's stdout and stderr, quoted when it fails.
    qemu_output: PathBuf,
    /// Holds the console socket and UEFI vars; removed after qemu is dead.
    _runtime_dir: tempfile::TempDir,
}

impl fmt::Debug for Vm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vm")
            .field("pid", &self.child.id())
            .field("image", &self.config.image)
            .field("log", &self.log)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Starts qemu and connects to its serial console before the guest runs.
    ///
    /// qemu waits for the console connection (`server=on,wait=on`), so no
    /// firmware or boot output is ever lost.
    pub fn boot(config: VmConfig) -> Result<Vm> {
        let (runtime_dir, vars) = prepare(&config)?;
        let socket = runtime_dir.path().join("serial.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "console socket path {} is too long for a unix socket: set TMPDIR to a shorter directory",
                socket.display()
            );
        }

        let log_path = config.log_path();
        let mut log = open_log(&log_path)?;
        let args = qemu_args(&config, &socket, vars.as_deref());
        writeln!(
            log,
            "\n===== osbuild vm: starting {QEMU} {} =====",
            display_args(&args)
        )
        .with_context(|| format!("writing serial log {}", log_path.display()))?;

        let qemu_output = runtime_dir.path().join("qemu-output.log");
        let stdout = File::create(&qemu_output)
            .with_context(|| format!("creating {}", qemu_output.display()))?;
        let stderr = stdout
            .try_clone()
            .with_context(|| format!("duplicating {}", qemu_output.display()))?;
        let mut cmd = Command::new(QEMU);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // Tied to this thread: the kernel kills qemu if the test process dies without
        // running destructors (SIGKILL, a runner's timeout), so no stray qemu keeps
        // eating the machine's cores.
        let mut child = osbuild_core::cmd::spawn_tied(&mut cmd)?;
        let (console, shared, reader) = match attach_console(&mut child, &socket, &qemu_output, log)
        {
            Ok(attached) => attached,
            Err(e) => {
                // Never leave qemu running (it would wait forever for us).
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };

        Ok(Vm {
            config,
            log: log_path,
            child,
            shared,
            console,
            reader: Some(reader),
            cursor: 0,
            qemu_output,
            _runtime_dir: runtime_dir,
        })
    }

    /// The configuration this VM was booted with, e.g. to boot it again.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The serial log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// qemu's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// All serial output so far, with terminal escape sequences, `\r` and other
    /// control characters removed (the log file keeps the raw bytes).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.shared.lock().text).into_owned()
    }

    /// Moves the cursor to the end of the output received so far, so that the
    /// next [`wait_for`](Self::wait_for) only sees output that arrives later
    /// (e.g. the answer to a command about to be sent).
    pub fn mark(&mut self) {
        self.cursor = self.shared.lock().text.len();
    }

    /// Waits until `needle` appears in the serial output after the cursor and
    /// returns the whole line containing it (trailing whitespace trimmed).
    ///
    /// The cursor starts at the beginning of the output and moves past the
    /// returned line, so successive calls match successive events. A line
    /// without its `\n` yet (a `login: ` prompt) gets up to 0.5 s to complete,
    /// less if output pauses for 100 ms; the cursor then moves to the end of
    /// the output received so far. Matching is on the cleaned text of [`output`]
    /// (no colour codes, no `\r`), and `needle` should not contain `\n`.
    ///
    /// Fails on timeout or when qemu exits first, quoting the last lines of
    /// serial output and the log path.
    ///
    /// [`output`]: Self::output
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let shared = Arc::clone(&self.shared);
        let mut state = shared.lock();
        let mut from = self.cursor;
        loop {
            if let Some(found) = console::find_line(&state.text, from, needle.as_bytes()) {
                let found = if found.terminated {
                    found
                } else {
                    rest_of_line(&shared, state, found, needle)
                };
                self.cursor = found.next_cursor;
                return Ok(found.line);
            }
            // A match can straddle what has arrived and what is still to come.
            from = state
                .text
                .len()
                .saturating_sub(needle.len().saturating_sub(1))
                .max(self.cursor);
            if state.closed {
                let text = state.text.clone();
                let read_error = state.read_error.clone();
                drop(state);
                let why = match read_error {
                    Some(e) => format!("the serial console failed ({e})"),
                    None => format!("qemu exited ({})", self.exit_status_description()),
                };
                return Err(self.error_with_output(
                    &format!("{why} before {needle:?} appeared on the serial console"),
                    &text,
                    true,
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                let text = state.text.clone();
                drop(state);
                return Err(self.error_with_output(
                    &format!(
                        "timed out after {timeout:?} waiting for {needle:?} on the serial console"
                    ),
                    &text,
                    false,
                ));
            }
            state = shared.wait(state, deadline - now);
        }
    }

    /// Writes `text` to the serial console as typed, without a line ending.
    ///
    /// All of it is sent at once. Linux buffers that fine, but firmware may
    /// not: SeaBIOS's serial console (and iPXE on top of it) keeps only 15
    /// keys, so there send short pieces and wait for each one's echo.
    pub fn send(&mut self, text: &str) -> Result<()> {
        self.console
            .write_all(text.as_bytes())
            .and_then(|()| self.console.flush())
            .with_context(|| format!("writing {text:?} to the serial console"))
    }

    /// Types `text` followed by Enter (`\r`, what a terminal sends; the guest's
    /// tty turns it into `\n`).
    pub fn send_line(&mut self, text: &str) -> Result<()> {
        self.send(&format!("{text}\r"))
    }

    /// Waits for qemu to exit, i.e. for the guest to power off or reboot
    /// (`-no-reboot` turns a reboot into an exit), and for the rest of its
    /// console output. Boot a new `Vm` on the same image to continue.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("checking whether qemu exited")?
            {
                self.drain_console();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let text = self.shared.lock().text.clone();
                return Err(self.error_with_output(
                    &format!("timed out after {timeout:?} waiting for qemu to exit"),
                    &text,
                    false,
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits (briefly) until the reader has seen EOF, so all output is in.
    fn drain_console(&self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut state = self.shared.lock();
        while !state.closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self.shared.wait(state, deadline - now);
        }
    }

    /// qemu's exit status once its console closed, which precedes the exit.
    fn exit_status_description(&mut self) -> String {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => return "closed its console but is still running".into(),
                Err(e) => return format!("status unknown: {e}"),
            }
        }
    }

    /// Whether qemu has exited (the guest powered off or rebooted), without waiting.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        let status = self
            .child
            .try_wait()
            .context("checking whether qemu exited")?;
        if status.is_some() {
            self.drain_console();
        }
        Ok(status)
    }

    /// An error saying `what`, quoting the last lines of serial output and the log path.
    pub fn error(&self, what: &str) -> anyhow::Error {
        let text = self.shared.lock().text.clone();
        self.error_with_output(what, &text, false)
    }

    fn error_with_output(&self, what: &str, text: &[u8], with_qemu_output: bool) -> anyhow::Error {
        let mut msg = format!(
            "{what} (qemu pid {}, image {})\n--- last {TAIL_LINES} lines of serial output ---\n{}\n--- full serial log: {} ---",
            self.child.id(),
            self.config.image.display(),
            console::tail(text, TAIL_LINES),
            self.log.display(),
        );
        if let Some(e) = &self.shared.lock().log_error {
            msg.push_str(&format!("\n(writing the serial log failed: {e})"));
        }
        if with_qemu_output {
            let qemu = read_tail(&self.qemu_output);
            if !qemu.is_empty() {
                msg.push_str(&format!("\n--- qemu stderr ---\n{qemu}"));
            }
        }
        anyhow!(msg)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Errors are ignored: the process may already be gone, and a
        // destructor has no one to report to.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // qemu's death closes the socket, but shut it down too in case the
        // reader is stuck for any other reason; then the log is complete.
        let _ = self.console.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Gives an unterminated matched line a moment to complete, since it may
/// have been read in pieces; returns once it is, once output pauses (a
/// prompt) or after [`LINE_GRACE`].
fn rest_of_line(
    shared: &Shared,
    mut state: MutexGuard<'_, console::State>,
    mut found: console::Found,
    needle: &str,
) -> console::Found {
    let grace_end = Instant::now() + LINE_GRACE;
    loop {
        let now = Instant::now();
        if found.terminated || state.closed || now >= grace_end {
            return found;
        }
        let len = state.text.len();
        state = shared.wait(state, LINE_QUIET.min(grace_end - now));
        if state.text.len() == len {
            return found;
        }
        // Searching from the match position finds the same match again.
        if let Some(again) = console::find_line(&state.text, found.pos, needle.as_bytes()) {
            found = again;
        }
    }
}

/// Connects to the console and starts the reader; returns the write half.
fn attach_console(
    child: &mut Child,
    socket: &Path,
    qemu_output: &Path,
    log: File,
) -> Result<(UnixStream, Arc<Shared>, JoinHandle<()>)> {
    let stream = connect_console(child, socket, qemu_output)?;
    let console = stream
        .try_clone()
        .context("duplicating the serial console socket")?;
    console
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .context("setting the serial console write timeout")?;
    let shared = Arc::new(Shared::default());
    let reader = console::spawn_reader(stream, log, Arc::clone(&shared))?;
    Ok((console, shared, reader))
}

/// Connects to qemu's console socket, which appears once qemu has parsed its
/// arguments; qemu then waits for this connection before starting the guest.
fn connect_console(child: &mut Child, socket: &Path, qemu_output: &Path) -> Result<UnixStream> {
    let deadline = Instant::now() + SOCKET_TIMEOUT;
    loop {
        if let Some(status) = child
            .try_wait()
            .context("checking whether qemu is running")?
        {
            bail!(
                "qemu exited ({status}) before opening its serial console\n--- qemu stderr ---\n{}",
                read_tail(qemu_output)
            );
        }
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "connecting to qemu's serial console {}\n--- qemu stderr ---\n{}",
                        socket.display(),
                        read_tail(qemu_output)
                    )
                })
            }
        }
    }
}

/// Copies the OVMF variable store template to a private, writable file.
fn copy_ovmf_vars(dir: &Path, secure_boot: bool) -> Result<PathBuf> {
    let (code, template) = ovmf(secure_boot);
    for firmware in [code, template] {
        if !Path::new(firmware).exists() {
            bail!("UEFI firmware {firmware} not found: install the `ovmf` package");
        }
    }
    let vars = dir.join("OVMF_VARS.fd");
    fs::copy(template, &vars)
        .with_context(|| format!("copying {template} to {}", vars.display()))?;
    // The template may be read-only; qemu opens unit 1 read-write.
    fs::set_permissions(&vars, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} writable", vars.display()))?;
    Ok(vars)
}

/// The firmware code and variable store template.
fn ovmf(secure_boot: bool) -> (&'static str, &'static str) {
    if secure_boot {
        (OVMF_CODE_SECURE, OVMF_VARS_SECURE)
    } else {
        (OVMF_CODE, OVMF_VARS)
    }
}

fn open_log(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| {
            format!("creating directory {} for the serial log", parent.display())
        })?;
    }
    // Appending keeps the output of earlier boots of the same test (e.g.
    // before a reboot) in one file.
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening serial log {}", path.display()))
}

/// The last lines of a small diagnostic file, or a note why it is unreadable.
fn read_tail(path: &Path) -> String {
    let mut bytes = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => console::tail(&bytes, 20),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The qemu arguments (without the program name) for `config`.
fn qemu_args(config: &VmConfig, socket: &Path, uefi_vars: Option<&Path>) -> Vec<OsString> {
    qemu_args_for(config, Console::Socket(socket), uefi_vars)
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Copy)]
enum Console<'a> {
    /// A socket the harness reads (qemu waits for it; a reboot exits qemu).
    Socket(&'a Path),
    /// This terminal, multiplexed with qemu's monitor (Ctrl-A X quits, Ctrl-A C is the
    /// monitor); the guest reboots as a machine does.
    Terminal,
    /// Appended to a file; the guest reboots as a machine does.
    File(&'a Path),
}

fn qemu_args_for(
    config: &VmConfig,
    console: Console<'_>,
    uefi_vars: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-machine",
        // Secure Boot firmware keeps its variables in SMM.
        if config.secure_boot {
            "q35,smm=on"
        } else {
            "q35"
        },
        // TCG only: KVM guests hang on the machines these tests run on.
        "-accel",
        "tcg",
        "-m",
        &config.memory_mib.to_string(),
        "-smp",
        &config.cpus.to_string(),
        // Also makes SeaBIOS print to the serial console; implies -display none.
        "-nographic",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if let Console::Socket(_) = console {
        // A reboot exits qemu; tests boot a fresh Vm on the same image.
        args.extend(["-monitor", "none", "-no-reboot"].map(OsString::from));
    }
    if let Some(vars) = uefi_vars {
        if config.secure_boot {
            args.push("-global".into());
            args.push("driver=cfi.pflash01,property=secure,value=on".into());
        }
        args.push("-drive".into());
        args.push(opt(
            "if=pflash,format=raw,unit=0,readonly=on,file=",
            Path::new(ovmf(config.secure_boot).0),
            "",
        ));
        args.push("-drive".into());
        args.push(opt("if=pflash,format=raw,unit=1,file=", vars, ""));
    }
    args.push("-drive".into());
    if config.format.is_disk() {
        args.push(opt(
            "file=",
            &config.image,
            &format!(",format={},if=virtio", config.format.qemu_format()),
        ));
    } else {
        // A CD-ROM on virtio-scsi, which SeaBIOS and OVMF boot from (El Torito) and
        // Debian's cloud kernel reads (it has no AHCI driver for q35's own controller).
        args.push(opt(
            "file=",
            &config.image,
            ",format=raw,if=none,id=cd0,media=cdrom,readonly=on",
        ));
        args.extend(
            [
                "-device",
                "virtio-scsi-pci,id=scsi0",
                "-device",
                "scsi-cd,drive=cd0,bus=scsi0.0,bootindex=0",
            ]
            .map(OsString::from),
        );
    }
    for (name, value) in &config.credentials {
        // Base64 holds no comma, so the value needs no escaping for qemu.
        args.push("-smbios".into());
        args.push(
            format!(
                "type=11,value=io.systemd.credential.binary:{name}={}",
                base64::engine::general_purpose::STANDARD.encode(value)
            )
            .into(),
        );
    }
    let mut nic = String::from("user,model=virtio-net-pci");
    for (host, guest) in &config.forwards {
        nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    args.push("-nic".into());
    args.push(nic.into());
    match console {
        Console::Socket(socket) => {
            // wait=on: qemu starts the guest only once we are connected.
            args.push("-chardev".into());
            args.push(opt("socket,id=ser0,server=on,wait=on,path=", socket, ""));
            args.push("-serial".into());
            args.push("chardev:ser0".into());
        }
        Console::Terminal => args.extend(["-serial", "mon:stdio"].map(OsString::from)),
        Console::File(log) => {
            args.extend(["-monitor", "none", "-chardev"].map(OsString::from));
            args.push(opt("file,id=ser0,append=on,path=", log, ""));
            args.extend(["-serial", "chardev:ser0"].map(OsString::from));
        }
    }
    args
}

/// Check that the image and qemu are there; a runtime directory (removed on drop) with
/// the VM's own copy of the UEFI variables when it boots UEFI.
fn prepare(config: &VmConfig) -> Result<(tempfile::TempDir, Option<PathBuf>)> {
    fs::metadata(&config.image)
        .with_context(|| format!("checking disk image {}", config.image.display()))?;
    if !Path::new(QEMU).exists() {
        bail!("{QEMU} not found: install the `qemu-system-x86` package");
    }
    let runtime_dir = tempfile::Builder::new()
        .prefix("osbuild-vm-")
        .tempdir()
        .context("creating the VM's runtime directory")?;
    let vars = if config.uefi {
        Some(copy_ovmf_vars(runtime_dir.path(), config.secure_boot)?)
    } else {
        None
    };
    Ok((runtime_dir, vars))
}

/// `osbuild vm run`: boot `config`'s image until the guest powers off (or qemu is
/// quit), with the serial console on this terminal, or appended to `log` when given
/// (then qemu's own messages go to stderr). The UEFI variables live as long as the run.
/// Returns qemu's exit status.
pub fn run(config: &VmConfig, log: Option<&Path>) -> Result<ExitStatus> {
    let (_runtime_dir, vars) = prepare(config)?;
    let console = match log {
        Some(log) => {
            // Created (with its directory) here, so a bad path is our error, not qemu's.
            open_log(log)?;
            Console::File(log)
        }
        None => Console::Terminal,
    };
    let args = qemu_args_for(config, console, vars.as_deref());
    eprintln!("{QEMU} {}", display_args(&args));
    let mut cmd = Command::new(QEMU);
    cmd.args(&args);
    if log.is_some() {
        cmd.stdin(Stdio::null());
    }
    // Tied to this thread: qemu dies with osbuild.
    let mut child = osbuild_core::cmd::spawn_tied(&mut cmd)?;
    child.wait().context("waiting for qemu")
}

/// `prefix` + `path` + `suffix`, with `path` escaped for qemu's `key=value,...`
/// option syntax (`,` becomes `,,`) and kept byte-exact (it need not be UTF-8).
fn opt(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut out = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(out)
}

fn display_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
