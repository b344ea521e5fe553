//! `osbuild vm`: boot an image in qemu, on the harness the test suite uses.

use anyhow::{Context, Result};
use clap::Subcommand;
use image_builder::vm::{self, story, VmConfig};
use image_builder::Firmware;
use std::path::PathBuf;
use std::process::ExitCode;

/// Boot images in qemu (TCG).
#[derive(Debug, clap::Args)]
pub(crate) struct VmArgs {
    #[command(subcommand)]
    verb: VmVerb,
}

#[derive(Debug, Subcommand)]
enum VmVerb {
    /// Boot IMAGE (raw, qcow2 or a live ISO, by its extension) with its serial console on
    /// this terminal (Ctrl-A X quits qemu), or logged to --log FILE; exits with qemu.
    Run(RunArgs),
    /// Run a device's whole story on IMAGE, on a copy-on-write overlay (IMAGE is not
    /// changed): boot; upgrade from --update-url; reboot into the update; with
    /// --broken-ref, switch to that ref's head and watch the device fall back by itself.
    /// Prints a pass/fail table; exits 1 when a step fails. Root logs in over SSH with a key
    /// made for the run, passed as the systemd credential ssh.authorized_keys.root (SMBIOS),
    /// so the image needs openssh-server and systemd >= 252, and no test account.
    Test(TestArgs),
}

/// How to boot the image, for `run` and `test`.
#[derive(Debug, clap::Args)]
struct BootArgs {
    /// The firmware to boot with [default: bios; uefi with --secure-boot]. A hybrid
    /// image boots under either.
    #[arg(long, value_enum)]
    firmware: Option<Firmware>,
    /// UEFI with Secure Boot on and Microsoft's keys enrolled (implies --firmware uefi).
    #[arg(long)]
    secure_boot: bool,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    memory: u32,
    /// Virtual CPUs. Under TCG each is a host thread: give 1 where guests share the
    /// host's cores.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
}

impl BootArgs {
    fn config(&self, image: &std::path::Path) -> Result<VmConfig> {
        let uefi = match (self.firmware, self.secure_boot) {
            (Some(Firmware::Bios | Firmware::Hybrid), true) => {
                anyhow::bail!("--secure-boot needs UEFI: use --firmware uefi, or leave it out")
            }
            (Some(Firmware::Uefi), _) | (None, true) => true,
            (_, false) => false,
        };
        Ok(VmConfig::new(image)
            .uefi(uefi)
            .secure_boot(self.secure_boot)
            .memory_mib(self.memory)
            .cpus(self.cpus))
    }
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// The disk image (raw or qcow2); made with a remote (make-image --remote-url).
    image: PathBuf,
    /// The update server the device upgrades from; its remote's URL is set to this.
    #[arg(long, value_name = "URL")]
    update_url: String,
    /// The ref to upgrade to [default: the one the image follows].
    #[arg(long = "ref", value_name = "REF")]
    branch: Option<String>,
    /// A ref whose head is a broken update: the device switches to it and must come back
    /// to the update by itself (health checks, boot counting).
    #[arg(long, value_name = "REF")]
    broken_ref: Option<String>,
    #[command(flatten)]
    boot: BootArgs,
    /// How long one boot may take until root logs in over SSH.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    boot_timeout: u64,
    /// Boots the broken update may take before the device must be back.
    #[arg(long, value_name = "N", default_value_t = 6)]
    max_boots: u32,
    /// Cut the power (kill qemu) N times at random moments of `osbuild admin upgrade`, and
    /// N times during the shutdown that finalizes a staged deployment; after each, the
    /// device must boot a good deployment, and after the last of each kind pass
    /// `ostree fsck`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    power_cuts: u32,
    /// Append every boot's serial console to FILE [default: IMAGE.vm-test.log].
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The disk image; the guest writes to it.
    image: PathBuf,
    #[command(flatten)]
    boot: BootArgs,
    /// Forward 127.0.0.1:PORT to the guest's SSH port (22).
    #[arg(long, value_name = "PORT")]
    ssh_port: Option<u16>,
    /// Forward 127.0.0.1:HOST to the guest's port GUEST (repeatable).
    #[arg(long = "forward", value_name = "HOST:GUEST", value_parser = parse_forward)]
    forwards: Vec<(u16, u16)>,
    /// Append the serial console to FILE instead of attaching it to the terminal.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?}: expected HOST:GUEST, two port numbers, e.g. 8080:80");
    let (host, guest) = s.split_once(':').ok_or_else(bad)?;
    Ok((
        host.parse().map_err(|_| bad())?,
        guest.parse().map_err(|_| bad())?,
    ))
}

impl VmArgs {
    pub(crate) fn run(&self) -> Result<ExitCode> {
        match &self.verb {
            VmVerb::Run(a) => a.run(),
            VmVerb::Test(a) => a.run(),
        }
    }
}

impl RunArgs {
    fn run(&self) -> Result<ExitCode> {
        let mut config = self.boot.config(&self.image)?;
        let ssh = self.ssh_port.map(|p| (p, 22));
        for (host, guest) in ssh.into_iter().chain(self.forwards.iter().copied()) {
            config = config.forward(host, guest);
        }
        let status = vm::run(&config, self.log.as_deref())
            .with_context(|| format!("booting {}", self.image.display()))?;
        Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
            None => ExitCode::FAILURE,
        })
    }
}

impl TestArgs {
    fn run(&self) -> Result<ExitCode> {
        let mut log = self.image.as_os_str().to_owned();
        log.push(".vm-test.log");
        let log = self.log.clone().unwrap_or_else(|| PathBuf::from(log));
        let story = story::Story {
            vm: self.boot.config(&self.image)?.log(&log),
            update_url: self.update_url.clone(),
            branch: self.branch.clone(),
            broken: self.broken_ref.clone(),
            boot_timeout: std::time::Duration::from_secs(self.boot_timeout),
            max_boots: self.max_boots,
            power_cuts: self.power_cuts,
        };
        let report =
            story::run(&story).with_context(|| format!("testing {}", self.image.display()))?;
        print!("{}", report.table());
        println!("serial console of every boot: {}", log.display());
        Ok(if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_are_two_ports() {
        assert_eq!(parse_forward("8080:80"), Ok((8080, 80)));
        for bad in ["8080", "a:80", "8080:", "70000:1"] {
            let err = parse_forward(bad).unwrap_err();
            assert!(err.contains("HOST:GUEST"), "{err}");
        }
    }
}
