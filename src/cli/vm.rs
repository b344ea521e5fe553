//! `osbuild vm`: boot an image in qemu, on the harness the test suite uses.

use anyhow::{Context, Result};
use clap::Subcommand;
use image_builder::vm::{self, VmConfig};
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
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The disk image; the guest writes to it.
    image: PathBuf,
    /// The firmware to boot with [default: bios; uefi with --secure-boot]. A hybrid
    /// image boots under either.
    #[arg(long, value_enum)]
    firmware: Option<Firmware>,
    /// UEFI with Secure Boot on and Microsoft's keys enrolled (implies --firmware uefi).
    #[arg(long)]
    secure_boot: bool,
    /// Forward 127.0.0.1:PORT to the guest's SSH port (22).
    #[arg(long, value_name = "PORT")]
    ssh_port: Option<u16>,
    /// Forward 127.0.0.1:HOST to the guest's port GUEST (repeatable).
    #[arg(long = "forward", value_name = "HOST:GUEST", value_parser = parse_forward)]
    forwards: Vec<(u16, u16)>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    memory: u32,
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
        }
    }
}

impl RunArgs {
    fn run(&self) -> Result<ExitCode> {
        let uefi = match (self.firmware, self.secure_boot) {
            (Some(Firmware::Bios | Firmware::Hybrid), true) => {
                anyhow::bail!("--secure-boot needs UEFI: use --firmware uefi, or leave it out")
            }
            (Some(Firmware::Uefi), _) | (None, true) => true,
            (_, false) => false,
        };
        let mut config = VmConfig::new(&self.image)
            .uefi(uefi)
            .secure_boot(self.secure_boot)
            .memory_mib(self.memory);
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
