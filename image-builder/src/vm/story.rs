//! `osbuild vm test`: a device's whole story in qemu, on a copy of an image. It boots;
//! upgrades from an update server; reboots into the update; takes a broken update; falls
//! back by itself. Each step is a row of a pass/fail [`Report`].
//!
//! The guest is driven over SSH as root, with a key made for the run and handed to
//! systemd as the credential `ssh.authorized_keys.root` (SMBIOS, systemd >= 252), as mkosi
//! does: a user's own image needs no test account, only an SSH server. The image itself
//! is never written: qemu boots a qcow2 overlay on it. Each boot's commands share one SSH
//! connection (OpenSSH's ControlMaster): a login costs the guest about 1.2 s of CPU under
//! TCG, a command over an open connection about 0.15 s.

use super::{Vm, VmConfig};
use crate::Format;
use anyhow::{bail, Context, Result};
use osbuild_core::cmd;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What to test.
#[derive(Debug, Clone)]
pub struct Story {
    /// The image and how to boot it; its serial log collects every boot.
    pub vm: VmConfig,
    /// Where the device upgrades from (its remote's URL is set to this).
    pub update_url: String,
    /// The ref to upgrade to; default: the one the image follows.
    pub branch: Option<String>,
    /// A ref whose head must not survive: the device switches to it and must fall back.
    pub broken: Option<String>,
    /// How long one boot may take to let root log in over SSH.
    pub boot_timeout: Duration,
    /// Boots a broken update may take before the fallback must have happened.
    pub max_boots: u32,
    /// Power cuts (qemu killed) at random moments during `osbuild admin upgrade`, and as
    /// many during the shutdown that finalizes a staged deployment; 0 for none.
    pub power_cuts: u32,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what the story expects.
    Pass,
    /// It did not; the detail says what happened.
    Fail,
    /// Not run: an earlier step failed.
    Skipped,
}

impl Outcome {
    /// As the table prints it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One row of the report.
#[derive(Debug, Clone)]
pub struct Step {
    /// What the step does.
    pub name: &'static str,
    /// How it ended.
    pub outcome: Outcome,
    /// What was seen (a failure's error, with the serial lines it quotes).
    pub detail: String,
    /// Its wall time.
    pub took: Duration,
}

/// The steps, in order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// In the order they ran.
    pub steps: Vec<Step>,
}

impl Report {
    /// Every step passed (none failed, none was skipped after a failure).
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.outcome == Outcome::Pass)
    }

    /// The pass/fail table; a failure's detail (with the serial lines it quotes) follows.
    pub fn table(&self) -> String {
        let width = self.steps.iter().map(|s| s.name.len()).max().unwrap_or(4);
        let mut out = format!(
            "{:width$}  {:7}  {:>7}  detail\n",
            "step", "result", "seconds"
        );
        let mut failures = String::new();
        for s in &self.steps {
            let first = s.detail.lines().next().unwrap_or_default();
            let _ = writeln!(
                out,
                "{:width$}  {:7}  {:>7.0}  {first}",
                s.name,
                s.outcome.name(),
                s.took.as_secs_f64()
            );
            if s.outcome == Outcome::Fail && s.detail.lines().count() > 1 {
                let _ = write!(failures, "\n{}: {}\n", s.name, s.detail);
            }
        }
        out + &failures
    }
}

/// How long a device that booted a broken update and finished starting may take to
/// reboot by itself.
const SETTLE: Duration = Duration::from_secs(120);

/// The story's steps, in order.
const STEPS: [&str; 5] = [
    "boot",
    "upgrade",
    "reboot into the update",
    "broken update staged",
    "automatic fallback",
];
/// The steps `--power-cuts` adds, after the boot and after the reboot into the update.
const CUT_STEPS: [&str; 2] = [
    "power cuts during the upgrade",
    "power cuts during finalization",
];

/// Run the story. Errors are for what stops it from starting (no qemu-img, no ssh); a
/// device that misbehaves is a failed step in the report.
pub fn run(story: &Story) -> Result<Report> {
    if !story.vm.format.is_disk() {
        bail!(
            "{} is a live ISO: a live system cannot be upgraded; test a disk image (raw or qcow2)",
            story.vm.image.display()
        );
    }
    let work = tempfile::Builder::new()
        .prefix("osbuild-vm-test-")
        .tempdir()
        .context("creating the test's work directory")?;
    let overlay = overlay(&story.vm, work.path())?;
    let key = work.path().join("key");
    // The shared connections' sockets: in /tmp, as a socket's path has at most 107 bytes
    // (ssh adds 17 while it sets one up) and TMPDIR can be long.
    let control = tempfile::Builder::new()
        .prefix("osbuild-ssh-")
        .tempdir_in("/tmp")
        .context("creating a directory in /tmp for the SSH connections")?;
    cmd::run(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "osbuild-vm-test",
                "-f",
            ])
            .arg(&key),
    )
    .context("making the test's SSH key (is openssh-client installed?)")?;
    let public = std::fs::read(key.with_extension("pub")).context("reading the SSH key")?;
    let port = free_port()?;
    let mut vm = story.vm.clone();
    vm.image = overlay;
    vm.format = Format::Qcow2;
    vm.log = story.vm.log_path();
    let vm = vm
        .forward(port, 22)
        .credential("ssh.authorized_keys.root", public);
    let mut device = Device {
        config: vm,
        guest: Guest {
            key,
            port,
            control: control.path().join("boot"),
            boot: 0,
        },
        timeout: story.boot_timeout,
        shutdown: None,
        finalize: None,
    };
    let mut rng = Rng::seeded();
    let mut report = Report::default();
    let mut run_step = |name: &'static str, f: &mut dyn FnMut() -> Result<String>| {
        let start = Instant::now();
        let failed_before = report.steps.iter().any(|s| s.outcome != Outcome::Pass);
        let (outcome, detail) = if failed_before {
            (Outcome::Skipped, String::new())
        } else {
            match f() {
                Ok(detail) => (Outcome::Pass, detail),
                Err(e) => (Outcome::Fail, format!("{e:#}")),
            }
        };
        report.steps.push(Step {
            name,
            outcome,
            detail,
            took: start.elapsed(),
        });
    };
    let mut current: Option<Vm> = None;
    let mut booted = Deployment::default();
    let mut staged = Deployment::default();
    let mut remote = String::new();
    let mut first = String::new();
    run_step(STEPS[0], &mut || {
        let (vm, status) = device.boot_to_login()?;
        current = Some(vm);
        booted = status.booted()?;
        first = booted.checksum.clone();
        let (name, _) = booted.remote_and_branch()?;
        device.guest.set_url(&name, &story.update_url)?;
        remote = name;
        Ok(format!("booted {booted}"))
    });
    if story.power_cuts > 0 {
        run_step(CUT_STEPS[0], &mut || {
            let n = story.power_cuts;
            power_cuts(&mut device, &mut current, &mut booted, |d, vm| {
                d.cut_upgrades(vm, n, &mut rng)
            })
        });
    }
    run_step(STEPS[1], &mut || {
        let (_, branch) = booted.remote_and_branch()?;
        let guest = &device.guest;
        let target = story.branch.clone().unwrap_or(branch);
        let status = guest.status()?;
        // A power cut late in an upgrade can leave the update deployed and even booted
        // (images whose upgrades deploy at once rather than stage): what this step makes.
        if let Some(ahead) = status.staged() {
            staged = ahead;
            return Ok(format!(
                "{staged} was already deployed by an upgrade cut short"
            ));
        }
        if booted.checksum != first {
            staged = booted.clone();
            return Ok(format!(
                "{staged} already boots: an upgrade cut short deployed it"
            ));
        }
        let said = guest.stage(&remote, &target, &booted)?;
        staged = guest.status()?.staged().with_context(|| {
            format!(
                "nothing was staged: {remote}:{target} at {} is the booted commit {} ({})",
                story.update_url,
                short(&booted.checksum),
                said.trim()
            )
        })?;
        Ok(format!("staged {staged} from {}", story.update_url))
    });
    run_step(STEPS[2], &mut || {
        let vm = current.take().context("no running device")?;
        device.reboot(vm)?;
        let (vm, status) = device.boot_to_login()?;
        current = Some(vm);
        let now = status.booted()?;
        anyhow::ensure!(
            now.checksum == staged.checksum,
            "booted {now}, not the update {staged}"
        );
        let status = device.guest.settled_status()?;
        anyhow::ensure!(
            status.trial().is_none(),
            "the boot of {now} was not marked good: {}",
            status.json
        );
        booted = now;
        Ok(format!("booted {booted}; the boot was marked good"))
    });
    if story.power_cuts > 0 {
        run_step(CUT_STEPS[1], &mut || {
            let n = story.power_cuts;
            power_cuts(&mut device, &mut current, &mut booted, |d, vm| {
                d.cut_finalizations(vm, n, &mut rng)
            })
        });
    }
    // Without a broken ref the story ends here: its last steps are not rows.
    let Some(broken) = &story.broken else {
        return Ok(report);
    };
    let mut bad = Deployment::default();
    run_step(STEPS[3], &mut || {
        let guest = &device.guest;
        guest.stage(&remote, broken, &booted)?;
        bad = guest
            .status()?
            .staged()
            .with_context(|| format!("switching to {remote}:{broken} staged nothing"))?;
        Ok(format!("staged {bad} from {remote}:{broken}"))
    });
    run_step(STEPS[4], &mut || {
        let vm = current.take().context("no running device")?;
        device.reboot(vm)?;
        let (vm, detail) = device.fall_back(&booted, &bad, story.max_boots)?;
        current = Some(vm);
        Ok(detail)
    });
    drop(current);
    Ok(report)
}

/// Run one kind of power cuts on the running device; `booted` follows where it ends up.
fn power_cuts(
    device: &mut Device,
    current: &mut Option<Vm>,
    booted: &mut Deployment,
    cuts: impl FnOnce(&mut Device, Vm) -> Result<(Vm, String)>,
) -> Result<String> {
    let vm = current.take().context("no running device")?;
    let (vm, detail) = cuts(device, vm)?;
    *current = Some(vm);
    *booted = device.guest.status()?.booted()?;
    Ok(detail)
}

/// A qcow2 overlay on the image, in `dir`: the device writes there.
fn overlay(vm: &VmConfig, dir: &Path) -> Result<PathBuf> {
    let image = std::fs::canonicalize(&vm.image)
        .with_context(|| format!("reading the image {}", vm.image.display()))?;
    let overlay = dir.join("device.qcow2");
    cmd::run(
        Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                vm.format.qemu_format(),
                "-b",
            ])
            .arg(&image)
            .arg(&overlay),
    )
    .with_context(|| format!("making a copy-on-write overlay of {}", image.display()))?;
    Ok(overlay)
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free local port")?;
    Ok(listener.local_addr()?.port())
}

/// The device: how to boot it and reach it.
struct Device {
    config: VmConfig,
    guest: Guest,
    timeout: Duration,
    /// How long the last reboot took from `systemctl reboot` to qemu's exit.
    shutdown: Option<Duration>,
    /// How long the last finalization at shutdown took, where the console showed it.
    finalize: Option<Duration>,
}

/// The console lines of a staged deployment's finalization: systemd prints them as it
/// stops `ostree-finalize-staged.service` at shutdown, which writes the deployment.
const FINALIZE_UNIT: &str = "Finalize Staged Deployment";

/// When, since a reboot began, the console showed the finalization start and end.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    started: Option<Duration>,
    ended: Option<Duration>,
}

impl Window {
    /// Note what the console has shown since byte `from` (at most 50 ms late).
    fn watch(&mut self, vm: &Vm, from: usize, start: Instant) {
        self.scan(vm.output().get(from..).unwrap_or_default(), start.elapsed());
    }

    /// Note the finalization's lines in `text`, as seen at `now`.
    fn scan(&mut self, text: &str, now: Duration) {
        for line in text.lines().filter(|l| l.contains(FINALIZE_UNIT)) {
            if line.contains("Stopping") && self.started.is_none() {
                self.started = Some(now);
            }
            if line.contains("Stopped") && self.ended.is_none() {
                self.ended = Some(now);
            }
        }
    }

    fn took(&self) -> Option<Duration> {
        Some(self.ended?.saturating_sub(self.started?))
    }
}

/// Where a boot ended up.
enum Boot {
    /// Root logged in over SSH.
    Up(Vm),
    /// qemu exited (the guest rebooted or powered off) first; its console is kept.
    Exited(Vm),
}

impl Device {
    /// Boot once, until root logs in or qemu exits (a reboot).
    fn boot(&mut self) -> Result<Boot> {
        self.guest.next_boot();
        let mut vm = Vm::boot(self.config.clone())?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if vm.exited()?.is_some() {
                return Ok(Boot::Exited(vm));
            }
            if self.guest.reachable() {
                return Ok(Boot::Up(vm));
            }
            if Instant::now() > deadline {
                return Err(vm.error(&format!(
                    "boot {}: root could not log in over SSH within {:?}; the image needs an SSH \
                     server (openssh-server) and systemd >= 252, which installs the test's key \
                     from the credential ssh.authorized_keys.root",
                    self.guest.boot, self.timeout
                )));
            }
            // Each second of a boot is a second of the test: a login is tried every one.
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Boot once and log in; a boot that ends in a reboot is a failure.
    fn boot_to_login(&mut self) -> Result<(Vm, Status)> {
        match self.boot()? {
            Boot::Up(vm) => {
                let status = self.guest.status()?;
                Ok((vm, status))
            }
            Boot::Exited(vm) => Err(vm.error(&format!(
                "boot {}: the device rebooted or powered off before root could log in",
                self.guest.boot
            ))),
        }
    }

    /// Reboot the guest as a user would, and wait for qemu to exit.
    fn reboot(&mut self, mut vm: Vm) -> Result<()> {
        let from = vm.output().len();
        let start = Instant::now();
        // The connection drops as the guest goes down: its exit status says nothing.
        let _ = self.guest.run("systemctl reboot");
        let mut window = Window::default();
        while vm.exited()?.is_none() {
            window.watch(&vm, from, start);
            if start.elapsed() > Duration::from_secs(300) {
                return Err(vm.error("the device did not reboot within 300 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        vm.wait_exit(Duration::from_secs(10))
            .context("the device did not reboot")?;
        window.watch(&vm, from, start);
        self.shutdown = Some(start.elapsed());
        if let Some(took) = window.took() {
            self.finalize = Some(took);
        }
        Ok(())
    }

    /// Cut the power `n` times at random moments while `osbuild admin upgrade` runs. After
    /// each cut the device must boot to a good deployment (the one it ran, or the update
    /// if the cut came after the upgrade deployed it), marked good; after the last,
    /// `ostree fsck` must pass.
    fn cut_upgrades(&mut self, mut vm: Vm, n: u32, rng: &mut Rng) -> Result<(Vm, String)> {
        let before = self.guest.status()?.booted()?;
        // Cuts land within this many seconds of the upgrade's start; once an upgrade is
        // seen to end before its cut, within its duration.
        let mut span = Duration::from_secs(30);
        let mut cuts = Vec::new();
        for i in 1..=n {
            let mut upgrade = self
                .guest
                .ssh("osbuild admin upgrade")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting `osbuild admin upgrade` over SSH")?;
            let at = span.mul_f64(0.05 + 0.95 * rng.fraction());
            let start = Instant::now();
            let mut ended = None;
            while start.elapsed() < at {
                if ended.is_none() && upgrade.try_wait()?.is_some() {
                    ended = Some(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(vm);
            let _ = upgrade.kill();
            let _ = upgrade.wait();
            let when = match ended {
                Some(t) => {
                    span = t;
                    format!(
                        "{:.1}s (the upgrade had ended at {:.1}s)",
                        at.as_secs_f64(),
                        t.as_secs_f64()
                    )
                }
                None => format!("{:.1}s into the upgrade", at.as_secs_f64()),
            };
            let what = format!("power cut {i} of {n}, {when}");
            let (next, _) = self
                .boot_to_login()
                .with_context(|| format!("booting after {what}"))?;
            vm = next;
            let target = self
                .guest
                .head(before.refspec.as_deref().unwrap_or_default());
            let allowed: Vec<&str> = std::iter::once(before.checksum.as_str())
                .chain(target.as_deref())
                .collect();
            let booted = self
                .check_after_cut(&allowed, i == n)
                .with_context(|| format!("after {what}"))?;
            cuts.push(format!("{when} -> {}", short(&booted.checksum)));
        }
        Ok((
            vm,
            format!(
                "{}, each followed by a good boot, the last by a clean fsck: {}",
                plural(n, "cut"),
                cuts.join("; ")
            ),
        ))
    }

    /// Cut the power `n` times at random moments of the finalization of a staged
    /// deployment (a redeployment of the booted ref's head, told apart by a kernel
    /// argument `osbuild.power-cut=I`) at shutdown. Where the console shows the
    /// finalization (systemd's status lines), each cut lands within it, over the duration
    /// it took at the last reboot; otherwise anywhere in the shutdown. After each cut the
    /// device must boot the old or the new deployment, marked good; after the last,
    /// `ostree fsck` must pass.
    fn cut_finalizations(&mut self, mut vm: Vm, n: u32, rng: &mut Rng) -> Result<(Vm, String)> {
        let mut finalized = 0;
        let mut cuts = Vec::new();
        for i in 1..=n {
            let booted = self.guest.status()?.booted()?;
            let refspec = booted
                .refspec
                .clone()
                .with_context(|| format!("{booted} has no origin refspec to redeploy"))?;
            let said = self.guest.run(&format!(
                "ostree admin deploy --stage --karg=osbuild.power-cut={i} {} 2>&1",
                cmd::quote_word(&refspec)
            ))?;
            let status = self.guest.status()?;
            let staged = status.with_role("staged").with_context(|| {
                format!(
                    "`ostree admin deploy --stage {refspec}` staged nothing ({}): {}",
                    said.trim(),
                    status.json
                )
            })?;
            let from = vm.output().len();
            let start = Instant::now();
            let _ = self.guest.run("systemctl reboot");
            let mut window = Window::default();
            // The span the cut is drawn from, and where it starts.
            let (span, zero) = match self.finalize {
                Some(took) => {
                    while window.started.is_none() && vm.exited()?.is_none() {
                        anyhow::ensure!(
                            start.elapsed() < Duration::from_secs(300),
                            "the device did not start finalizing within 300 s of `systemctl reboot`"
                        );
                        window.watch(&vm, from, start);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    (took, window.started.unwrap_or_default())
                }
                None => (
                    self.shutdown.unwrap_or(Duration::from_secs(20)),
                    Duration::ZERO,
                ),
            };
            let at = span.mul_f64(0.05 + 0.95 * rng.fraction());
            let mut exited = false;
            while start.elapsed() < zero + at {
                exited |= vm.exited()?.is_some();
                window.watch(&vm, from, start);
                std::thread::sleep(Duration::from_millis(20));
            }
            window.watch(&vm, from, start);
            drop(vm);
            let phase = if self.finalize.is_some() {
                "finalization"
            } else {
                "shutdown"
            };
            let mut when = format!("{:.1}s into the {phase}", at.as_secs_f64());
            if let Some(took) = window.took() {
                // It ended before the cut: the next draws use its duration.
                let _ = write!(when, " (it had ended at {:.1}s)", took.as_secs_f64());
                self.finalize = Some(took);
            } else if exited {
                when.push_str(" (the device had rebooted)");
            }
            let what = format!("power cut {i} of {n}, {when}");
            let (next, _) = self
                .boot_to_login()
                .with_context(|| format!("booting after {what}"))?;
            vm = next;
            let now = self
                .check_after_cut(
                    &[booted.checksum.as_str(), staged.checksum.as_str()],
                    i == n,
                )
                .with_context(|| format!("after {what}"))?;
            let cmdline = self.guest.run("cat /proc/cmdline")?;
            let new = cmdline
                .split_whitespace()
                .any(|a| a == format!("osbuild.power-cut={i}"));
            finalized += u32::from(new);
            cuts.push(format!(
                "{when} -> {} deployment {}",
                if new { "new" } else { "old" },
                short(&now.checksum)
            ));
        }
        Ok((
            vm,
            format!(
                "{} ({finalized} booted the new deployment), each followed by a good boot, \
                 the last by a clean fsck: {}",
                plural(n, "cut"),
                cuts.join("; ")
            ),
        ))
    }

    /// After a power cut: the boot settled and was marked good, it runs one of `allowed`,
    /// and with `fsck` the repository passes `ostree fsck`. Once after the last cut of a
    /// kind is enough: libostree never rewrites an object it has, so damage any cut did
    /// to a kept object is still there for it to find (a cut-short pull's leftovers that
    /// a later cut's recovery removed were never part of a deployment), and each fsck
    /// costs about half a minute of TCG on a SampleOS device.
    fn check_after_cut(&self, allowed: &[&str], fsck: bool) -> Result<Deployment> {
        let status = self.guest.settled_status()?;
        let booted = status.booted()?;
        anyhow::ensure!(
            allowed.contains(&booted.checksum.as_str()),
            "booted {booted}, which is none of {allowed:?}"
        );
        anyhow::ensure!(
            status.trial().is_none(),
            "the boot of {booted} was not marked good: {}",
            status.json
        );
        if fsck {
            self.guest
                .run("ostree fsck --quiet 2>&1")
                .context("`ostree fsck` on the device failed")?;
        }
        Ok(booted)
    }

    /// Boot until the device settles after the broken update `bad`: back on `good`, the
    /// default again, with `bad` kept behind it. Boots that end in a reboot (a panic, a
    /// failed health check) are the tries the boot loader counts.
    fn fall_back(
        &mut self,
        good: &Deployment,
        bad: &Deployment,
        max_boots: u32,
    ) -> Result<(Vm, String)> {
        let mut failed = 0;
        for _ in 0..max_boots {
            let vm = match self.boot()? {
                Boot::Exited(_) => {
                    failed += 1;
                    continue;
                }
                Boot::Up(vm) => vm,
            };
            // Up, but the health checks may still fail and reboot it: wait for the boot
            // to settle, or for the reboot.
            let mut vm = vm;
            let status = match self.guest.settled_status() {
                Ok(status) => status,
                Err(_) => {
                    vm.wait_exit(Duration::from_secs(300))
                        .context("the device stopped answering but did not reboot")?;
                    failed += 1;
                    continue;
                }
            };
            let booted = status.booted()?;
            if booted.checksum == bad.checksum {
                // Its checks failed (it is going down) or it is kept: a device that
                // falls back reboots as soon as its checks have run.
                if vm.wait_exit(SETTLE).is_err() {
                    bail!(
                        "the broken update {bad} booted and stayed up (no fallback within {SETTLE:?} \
                         of its startup): {}",
                        status.json
                    );
                }
                failed += 1;
                continue;
            }
            anyhow::ensure!(
                booted.checksum == good.checksum,
                "booted {booted}, neither the good {good} nor the broken {bad}"
            );
            let deployments = status.deployments();
            let order: Vec<&str> = deployments.iter().map(|d| d.checksum.as_str()).collect();
            anyhow::ensure!(
                order.first() == Some(&good.checksum.as_str())
                    && order.get(1) == Some(&bad.checksum.as_str()),
                "back on {good}, but it is not the default with {bad} kept behind it: {}",
                status.json
            );
            let record = status.json["boot"]["record"]["fallback"]["failed"]
                .as_str()
                .map(|f| format!("; status records the fallback from {}", short(f)))
                .unwrap_or_default();
            return Ok((
                vm,
                format!(
                    "back on {} after {failed} failed boot(s) of {}{record}",
                    short(&good.checksum),
                    short(&bad.checksum)
                ),
            ));
        }
        bail!(
            "the device did not come back to {good} within {max_boots} boots after the broken update {bad} \
             ({failed} of them rebooted before root could log in; serial log: {})",
            self.config.log_path().display()
        )
    }
}

/// root on the guest, over SSH through qemu's port forward.
struct Guest {
    key: PathBuf,
    port: u16,
    /// Where the shared connections' sockets go: `{control}-{boot}`.
    control: PathBuf,
    /// Which boot the commands go to, counted from 1 (0 before the first).
    boot: u32,
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.disconnect();
    }
}

impl Guest {
    /// The next commands go to a new boot: a new connection, on a socket of its own (the
    /// last boot's connection ends when its qemu does; it is told to go all the same).
    fn next_boot(&mut self) {
        self.disconnect();
        self.boot += 1;
    }

    /// Close this boot's shared connection, if it is open.
    fn disconnect(&self) {
        if self.boot > 0 {
            let _ = cmd::output(
                Command::new("ssh")
                    .args(["-O", "exit", "-o"])
                    .arg(self.control_path())
                    .arg("root@127.0.0.1"),
            );
        }
    }

    fn control_path(&self) -> String {
        format!("ControlPath={}-{}", self.control.display(), self.boot)
    }

    fn ssh(&self, script: &str) -> Command {
        // `timeout`: a guest that goes down mid-command can leave ssh waiting.
        let mut c = Command::new("timeout");
        c.args(["--kill-after=5", "1800", "ssh", "-i"])
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            // The first command of a boot opens the connection the others share; it
            // stays open in the background until the guest goes down or the next boot.
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=yes", "-o"])
            .arg(self.control_path())
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            .args(["-o", "LogLevel=ERROR", "root@127.0.0.1", script]);
        c
    }

    /// Run `script` as root; its stdout, or an error with its stderr.
    fn run(&self, script: &str) -> Result<String> {
        cmd::run(&mut self.ssh(script)).with_context(|| format!("running `{script}` on the device"))
    }

    fn reachable(&self) -> bool {
        cmd::output(&mut self.ssh("true")).is_ok_and(|o| o.status.success())
    }

    fn status(&self) -> Result<Status> {
        let text = self
            .run("osbuild admin status --json")
            .context("the image needs the osbuild binary (every tree osbuild builds has it)")?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("reading `osbuild admin status --json`: {text}"))?;
        Ok(Status { json })
    }

    /// The status once the boot has settled: startup is finished, so the health checks
    /// have passed (the boot is marked good). An error if the device is going down
    /// instead (they failed).
    fn settled_status(&self) -> Result<Status> {
        let state = self.run("systemctl is-system-running --wait || true")?;
        anyhow::ensure!(
            matches!(state.trim(), "running" | "degraded"),
            "the device is {}",
            state.trim()
        );
        self.status()
    }

    /// Point the remote `name` at `url`, wherever it is configured.
    fn set_url(&self, name: &str, url: &str) -> Result<()> {
        let key = cmd::quote_word(&format!("remote \"{name}\".url"));
        let group = cmd::quote_word(&format!("[remote \"{name}\"]"));
        // In the repo's config (make-image's --remote-url, a manifest's [remote]), or in a
        // file of /etc/ostree/remotes.d; `ostree remote show-url` checks the result. The
        // URL is the script's $0, so it is never parsed as shell.
        let script = format!(
            "set -e; r=/ostree/repo; \
             if ostree --repo=$r config get {key} >/dev/null 2>&1; then \
               ostree --repo=$r config set {key} \"$0\"; \
             else \
               f=$(grep -l -F -x {group} /etc/ostree/remotes.d/*.conf 2>/dev/null | head -n1); \
               test -n \"$f\" || {{ echo 'the device has no remote {name}' >&2; exit 1; }}; \
               awk -v g={group} -v u=\"$0\" '/^\\[/ {{ in_ = ($0 == g) }} in_ && /^url[ \\t]*=/ {{ $0 = \"url=\" u }} {{ print }}' \"$f\" >\"$f.new\"; \
               mv \"$f.new\" \"$f\"; \
             fi; ostree --repo=$r remote show-url {remote}",
            remote = cmd::quote_word(name),
        );
        let shown = self
            .run(&format!(
                "sh -c {} {}",
                cmd::quote_word(&script),
                cmd::quote_word(url)
            ))
            .with_context(|| format!("pointing the device's remote {name} at {url}"))?;
        anyhow::ensure!(
            shown.trim() == url,
            "the device's remote {name} still has the URL {}",
            shown.trim()
        );
        Ok(())
    }

    /// The commit `refspec` points at in the device's repo, if it has it.
    fn head(&self, refspec: &str) -> Option<String> {
        self.run(&format!("ostree rev-parse {}", cmd::quote_word(refspec)))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Stage `remote:branch`: an upgrade when the device follows it, else a switch.
    fn stage(&self, remote: &str, branch: &str, booted: &Deployment) -> Result<String> {
        let refspec = format!("{remote}:{branch}");
        let verb = if booted.refspec.as_deref() == Some(refspec.as_str()) {
            "ostree admin upgrade".to_string()
        } else {
            format!("ostree admin switch {}", cmd::quote_word(&refspec))
        };
        self.run(&format!("{verb} 2>&1"))
    }
}

/// `osbuild admin status --json`, as the device printed it.
struct Status {
    json: Value,
}

/// A deployment, as status names it.
#[derive(Debug, Clone, Default)]
struct Deployment {
    checksum: String,
    version: Option<String>,
    refspec: Option<String>,
    role: String,
}

impl std::fmt::Display for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", short(&self.checksum))?;
        if let Some(v) = &self.version {
            write!(f, " (version {v})")?;
        }
        Ok(())
    }
}

impl Deployment {
    /// The booted deployment's remote and branch, from its origin.
    fn remote_and_branch(&self) -> Result<(String, String)> {
        let refspec = self.refspec.as_deref().unwrap_or_default();
        match refspec.split_once(':') {
            Some((remote, branch)) if !remote.is_empty() && !branch.is_empty() => {
                Ok((remote.to_string(), branch.to_string()))
            }
            _ => bail!(
                "the booted deployment follows {refspec:?}, not a remote's ref: make the image \
                 with a remote (make-image --remote-url, or [remote] in the manifest)"
            ),
        }
    }
}

impl Status {
    fn deployments(&self) -> Vec<Deployment> {
        self.json["deployments"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|d| Deployment {
                        checksum: d["checksum"].as_str().unwrap_or_default().to_string(),
                        version: d["version"].as_str().map(str::to_string),
                        refspec: d["refspec"].as_str().map(str::to_string),
                        role: d["role"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn with_role(&self, role: &str) -> Option<Deployment> {
        self.deployments().into_iter().find(|d| d.role == role)
    }

    fn booted(&self) -> Result<Deployment> {
        self.with_role("booted")
            .with_context(|| format!("no booted deployment in the status: {}", self.json))
    }

    /// The deployment that boots next instead of the booted one: staged (finalized at
    /// shutdown) or pending (deployed at once, as on syslinux images).
    fn staged(&self) -> Option<Deployment> {
        self.with_role("staged")
            .or_else(|| self.with_role("pending"))
    }

    /// The deployment on trial, if the boot loader is counting one's tries.
    fn trial(&self) -> Option<String> {
        self.json["boot"]["trial"]["deployment"]
            .as_str()
            .map(str::to_string)
    }
}

/// Where power cuts land: xorshift64*, seeded from the clock (no two runs cut alike).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Rng(nanos | 1)
    }

    /// Uniform in [0, 1).
    fn fraction(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// "1 cut", "2 cuts".
fn plural(n: u32, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &'static str, outcome: Outcome, detail: &str) -> Step {
        Step {
            name,
            outcome,
            detail: detail.into(),
            took: Duration::from_secs(61),
        }
    }

    #[test]
    fn the_table_has_a_row_per_step_and_the_failure_in_full() {
        let report = Report {
            steps: vec![
                step("boot", Outcome::Pass, "booted abc"),
                step("upgrade", Outcome::Fail, "no update\nlast serial lines"),
                step("reboot into the update", Outcome::Skipped, ""),
            ],
        };
        assert!(!report.passed());
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("step "), "{table}");
        assert!(
            lines[1].contains("pass") && lines[1].contains("61"),
            "{table}"
        );
        assert!(lines[2].contains("FAIL") && lines[2].ends_with("no update"));
        assert!(lines[3].contains("skipped"), "{table}");
        assert!(
            table.contains("upgrade: no update\nlast serial lines"),
            "{table}"
        );
        let ok = Report {
            steps: vec![step("boot", Outcome::Pass, "")],
        };
        assert!(ok.passed());
    }

    #[test]
    fn the_finalization_is_read_off_systemds_status_lines() {
        let mut w = Window::default();
        // Started at boot by osbuild-boot-menu.service: not the finalization.
        w.scan(
            "[  OK  ] Started ostree-finalize-st…OSTree Finalize Staged Deployment.\n",
            Duration::from_secs(1),
        );
        assert!(w.started.is_none() && w.took().is_none());
        let s = Duration::from_secs(4);
        w.scan(
            "         Stopping ostree-finalize-s…Tree Finalize Staged Deployment...\n",
            s,
        );
        assert_eq!(w.started, Some(s));
        assert!(w.took().is_none());
        let text = "         Stopping ostree-finalize-s…Tree Finalize Staged Deployment...\n\
                    [  OK  ] Stopped ostree-finalize-st…OSTree Finalize Staged Deployment.\n";
        w.scan(text, Duration::from_secs(7));
        assert_eq!(w.started, Some(s));
        assert_eq!(w.took(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn cuts_land_anywhere_in_their_span() {
        let mut rng = Rng(42);
        let draws: Vec<f64> = (0..10_000).map(|_| rng.fraction()).collect();
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)));
        // Both ends of the span are reached: no moment of an upgrade is left out.
        assert!(draws.iter().any(|f| *f < 0.01) && draws.iter().any(|f| *f > 0.99));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn the_remote_comes_from_the_origin() {
        let d = |refspec: Option<&str>| Deployment {
            refspec: refspec.map(str::to_string),
            ..Deployment::default()
        };
        assert_eq!(
            d(Some("origin:os/x86_64")).remote_and_branch().unwrap(),
            ("origin".to_string(), "os/x86_64".to_string())
        );
        for bad in [None, Some("os/x86_64"), Some(":os"), Some("origin:")] {
            let err = d(bad).remote_and_branch().unwrap_err().to_string();
            assert!(err.contains("--remote-url"), "{err}");
        }
    }
}
