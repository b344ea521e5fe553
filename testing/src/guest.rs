//! Driving a booted example OS (examples/overlay: a root shell on the serial console and
//! a unit that reports the booted commit) from a test: boot to the report line, wait for
//! the shell, run commands and read their output. Shared by the end-to-end suites.

use crate::helpers::{free_port, osbuild_bin, Daemon};
use crate::vm::{Vm, VmConfig};
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a boot may take under TCG, to the report line or the shell.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// Run osbuild, failing with its command line and stderr; returns the last line of stdout.
pub fn osbuild(args: &[&str]) -> Result<String> {
    let out = cmd::run(Command::new(osbuild_bin()).args(args))?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
}

/// `osbuild commit` of `tree` to `branch` in `repo` (created when missing), with `version`
/// when given; returns the checksum it printed.
pub fn commit(repo: &Path, branch: &str, tree: &Path, version: Option<&str>) -> Result<String> {
    let mut c = Command::new(osbuild_bin());
    c.arg("commit")
        .arg("--repo")
        .arg(repo)
        .args(["--branch", branch])
        .arg("--tree")
        .arg(tree);
    if let Some(v) = version {
        c.args(["--version", v]);
    }
    let out = cmd::run(&mut c)?;
    let checksum = out.lines().last().unwrap_or_default().trim().to_string();
    anyhow::ensure!(
        checksum.len() == 64,
        "commit printed {checksum:?}, not a checksum"
    );
    Ok(checksum)
}

/// `osbuild serve` of `repo` over HTTP on a free loopback port, until the [`Daemon`] is
/// dropped; the URL is `http://127.0.0.1:PORT/repo/`.
pub fn serve(repo: &Path) -> Result<(Daemon, u16)> {
    let port = free_port();
    let daemon = Daemon::start(
        Command::new(osbuild_bin())
            .args(["serve", "--access-log", "off", "--repo"])
            .arg(repo)
            .args(["--http", &format!("127.0.0.1:{port}")]),
        port,
        None,
    )?;
    Ok((daemon, port))
}

/// Step timings, printed as they end and listed at the end for the record.
#[derive(Debug, Default)]
pub struct Timings(pub Vec<(String, Duration)>);

impl Timings {
    /// Run `f` as the step `step`, recording how long it took.
    pub fn time<T>(&mut self, step: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let r = f().with_context(|| format!("step {step}"))?;
        let took = start.elapsed();
        eprintln!("{step}: {:.1}s", took.as_secs_f64());
        self.0.push((step.to_string(), took));
        Ok(r)
    }

    /// Print every step's time under `title`.
    pub fn report(&self, title: &str) {
        eprintln!("{title} timings:");
        for (step, d) in &self.0 {
            eprintln!("  {step}: {:.1}s", d.as_secs_f64());
        }
    }
}

/// The value of `key=` in the report line the example OS prints at boot.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Boot `config` and check the report line: the booted commit and the release file.
pub fn boot_into(config: VmConfig, commit: &str, release: &str) -> Result<Vm> {
    let mut vm = Vm::boot(config)?;
    let line = vm.wait_for("OSBUILD-BOOTED", BOOT_TIMEOUT)?;
    anyhow::ensure!(
        field(&line, "commit") == Some(commit),
        "booted {line:?}, expected commit {commit}"
    );
    anyhow::ensure!(
        field(&line, "release") == Some(release),
        "booted {line:?}, expected release {release}"
    );
    Ok(vm)
}

/// Wait until the serial console's root shell answers. The boot marker and the autologin
/// race: input typed before the getty starts is thrown away, and the prompt may come
/// before the marker or after it, so ask until the shell echoes.
pub fn shell_ready(vm: &mut Vm) -> Result<()> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        // Split by quotes: what is typed cannot match, only what the shell prints.
        vm.send_line("echo SHELL''-READY")?;
        match vm.wait_for("SHELL-READY", Duration::from_secs(10)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
    }
}

/// Run `command` in the guest's root shell (see [`shell_ready`]) and return what it
/// printed, on one line. The marker is split by quotes in what is typed, so only the
/// output can match it.
pub fn probe(vm: &mut Vm, name: &str, command: &str) -> Result<String> {
    vm.send_line(&format!(
        "echo \"PROBE\"\"-{name}=$({command} 2>&1 | tr '\\n' ' ')\""
    ))?;
    let marker = format!("PROBE-{name}=");
    let line = vm.wait_for(&marker, Duration::from_secs(120))?;
    let value = line.split_once(&marker).map(|(_, v)| v).unwrap_or_default();
    Ok(value.trim().to_string())
}

/// Run each `(name, command, expected)` check in the guest; fail listing every command
/// whose output does not contain what was expected.
pub fn check_all(vm: &mut Vm, what: &str, checks: &[(&str, &str, &str)]) -> Result<()> {
    let mut failed = Vec::new();
    for (name, command, expected) in checks {
        let got = probe(vm, name, command)?;
        eprintln!("{what}: {name}: {got}");
        if !got.contains(expected) {
            failed.push(format!(
                "{name}: `{command}` gave {got:?}, expected {expected:?}"
            ));
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{what} checks failed:\n{}",
        failed.join("\n")
    );
    Ok(())
}
