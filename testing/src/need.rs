//! One policy for tests that need something from the machine (root, qemu, podman, …):
//! [`require`] says whether it is all there. When something is missing, the test **fails**
//! under `CI=true` (CI must run everything), and otherwise is reported as skipped, by
//! name, on the real stderr (libtest would swallow `eprintln!`), then returns early.
//!
//! ```no_run
//! use osbuild_testing::{require, Need};
//!
//! fn boots() {
//!     if !require(&[Need::Root, Need::Qemu]) {
//!         return;
//!     }
//!     // …
//! }
//! ```

use std::io::Write;
use std::path::Path;

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Running as root (loop mounts, chroot, tmpfs, rootful podman).
    Root,
    /// `qemu-system-x86_64`.
    Qemu,
    /// The OVMF UEFI firmware.
    Ovmf,
    /// `mmdebstrap`, to bootstrap Debian.
    Mmdebstrap,
    /// `podman`.
    Podman,
    /// `podman-compose`.
    PodmanCompose,
    /// OpenSSH's server, `/usr/sbin/sshd`.
    Sshd,
    /// OpenSSH's client tools: `ssh`, `ssh-keygen`, `ssh-agent`, `ssh-add`.
    SshClient,
    /// `systemd-analyze`, to verify units.
    SystemdAnalyze,
    /// `gpg`, to sign commits.
    Gpg,
    /// Python 3 with `venv` (for the reference ostree-push client from PyPI).
    PythonVenv,
    /// The `ostree` CLI.
    Ostree,
    /// The Debian archive at deb.debian.org, for tests that bootstrap.
    DebianMirror,
    /// `skopeo`, through which osbuild fetches container images.
    Skopeo,
    /// Debian's `docker-registry` (the CNCF distribution registry), started by tests on
    /// loopback.
    DockerRegistry,
    /// Garage, the S3 store the publishing tests run (`cargo install garage`).
    Garage,
    /// GRUB for BIOS and UEFI images, Debian's signed shim and GRUB for Secure Boot,
    /// systemd-boot, and the tools for the ESP and qcow2 images.
    Grub,
}

impl Need {
    /// Why it is missing and how to install it, or `None` when it is there.
    pub fn missing(self) -> Option<String> {
        let tool = |name: &str, package: &str| {
            (!in_path(name)).then(|| format!("{name} is not installed (apt install {package})"))
        };
        match self {
            Need::Root => (!is_root()).then(|| "needs root (run the tests as root)".to_string()),
            Need::Qemu => (!Path::new(crate::vm::QEMU).exists()).then(|| {
                format!(
                    "{} is not installed (apt install qemu-system-x86)",
                    crate::vm::QEMU
                )
            }),
            Need::Ovmf => [crate::vm::OVMF_CODE, crate::vm::OVMF_VARS]
                .into_iter()
                .find(|f| !Path::new(f).exists())
                .map(|f| format!("{f} is missing (apt install ovmf)")),
            Need::Mmdebstrap => tool("mmdebstrap", "mmdebstrap"),
            Need::Podman => tool("podman", "podman runc"),
            Need::PodmanCompose => tool("podman-compose", "podman-compose"),
            Need::Sshd => (!Path::new("/usr/sbin/sshd").exists()).then(|| {
                "/usr/sbin/sshd is not installed (apt install openssh-server)".to_string()
            }),
            Need::SshClient => ["ssh", "ssh-keygen", "ssh-agent", "ssh-add"]
                .into_iter()
                .find_map(|t| tool(t, "openssh-client")),
            Need::SystemdAnalyze => tool("systemd-analyze", "systemd"),
            Need::Gpg => tool("gpg", "gpg"),
            Need::Ostree => tool("ostree", "ostree"),
            Need::Skopeo => tool("skopeo", "skopeo"),
            Need::Garage => crate::garage::binary().is_none().then(|| {
                "garage is not installed (scripts/install-garage.sh builds it with cargo install)"
                    .to_string()
            }),
            Need::DockerRegistry => tool("docker-registry", "docker-registry"),
            Need::Grub => [
                ("/usr/lib/grub/i386-pc/boot.img", "grub-pc-bin"),
                ("/usr/lib/grub/x86_64-efi/linux.mod", "grub-efi-amd64-bin"),
                ("/usr/bin/grub-mkimage", "grub-common"),
                ("/usr/bin/mcopy", "mtools"),
                ("/usr/sbin/mkfs.vfat", "dosfstools"),
                ("/usr/bin/qemu-img", "qemu-utils"),
                ("/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
                (
                    "/usr/lib/shim/mmx64.efi.signed",
                    "shim-helpers-amd64-signed",
                ),
                (
                    "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
                    "grub-efi-amd64-signed",
                ),
                (
                    "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                    "systemd-boot-efi",
                ),
            ]
            .into_iter()
            .find(|(f, _)| !Path::new(f).exists())
            .map(|(f, p)| format!("{f} is missing (apt install {p})")),
            Need::DebianMirror => {
                use std::net::{TcpStream, ToSocketAddrs};
                let host = "deb.debian.org:80";
                let reachable = host.to_socket_addrs().is_ok_and(|mut addrs| {
                    addrs.any(|a| {
                        TcpStream::connect_timeout(&a, std::time::Duration::from_secs(10)).is_ok()
                    })
                });
                (!reachable).then(|| {
                    format!("{host} cannot be reached (network access to the Debian archive)")
                })
            }
            Need::PythonVenv => {
                // Debian splits venv's ensurepip into python3-venv.
                let ok = Path::new("/usr/bin/python3").exists()
                    && osbuild_core::cmd::output(
                        std::process::Command::new("/usr/bin/python3")
                            .args(["-c", "import ensurepip, venv"]),
                    )
                    .is_ok_and(|o| o.status.success());
                (!ok)
                    .then(|| "python3 venv is not installed (apt install python3-venv)".to_string())
            }
        }
    }
}

/// Whether `name` is an executable file in a directory of `$PATH`.
fn in_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(name))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// The effective uid is 0 (read from /proc: no unsafe libc call needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether the run must not skip anything: `CI` is set to `true` (or `1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether everything in `needs` is there. If not: under CI, panic (the test fails,
/// naming what is missing); otherwise print `SKIPPED <test>: <why>` to the real stderr
/// and return `false`, and the test returns early.
///
/// The test's name is the name libtest gives the thread that runs it.
pub fn require(needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    let why = missing.join("; ");
    if in_ci() {
        panic!("{test}: {why}; CI=true runs every test, so this is a failure (bash scripts/install-deps.sh installs everything, and scripts/install-garage.sh Garage)");
    }
    // Written to the real stderr: libtest captures eprintln! but not this.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_tools_are_not_missing() {
        // sh is on every machine these tests run on; a made-up tool never is.
        assert!(in_path("sh"));
        assert!(!in_path("osbuild-no-such-tool"));
        assert!(require(&[]));
    }
}
