//! A Debian base: mmdebstrap installs the kernel, the boot integration and the packages,
//! and rebuilds the initramfs generic, with ostree's dracut module.

use super::Source;
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::path::Path;
use std::process::Command;

/// Packages every bootable tree needs: an init, udev, the ostree boot integration
/// (prepare-root, finalize-staged, the dracut module) and dracut to build the initramfs.
const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "ostree",
    "ostree-boot",
    "dracut",
    "e2fsprogs",
    "kmod",
    "iproute2",
];

/// A Debian suite, with the packages to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debian {
    /// The suite, e.g. `bookworm` or `trixie`.
    pub suite: String,
    /// The archive mirror; mmdebstrap's default when unset.
    pub mirror: Option<String>,
    /// Archive components, e.g. `main`, `contrib`.
    pub components: Vec<String>,
    /// The kernel package.
    pub kernel: String,
    /// Packages beyond the kernel and the base set.
    pub packages: Vec<String>,
}

impl Default for Debian {
    fn default() -> Self {
        Debian {
            suite: "bookworm".into(),
            mirror: None,
            components: vec!["main".into()],
            kernel: "linux-image-cloud-amd64".into(),
            packages: Vec::new(),
        }
    }
}

impl Debian {
    /// The complete package list given to mmdebstrap.
    pub fn package_list(&self) -> Vec<String> {
        let mut pkgs = vec![self.kernel.clone()];
        pkgs.extend(BASE_PACKAGES.iter().map(|s| s.to_string()));
        pkgs.extend(self.packages.iter().cloned());
        pkgs
    }

    /// The mmdebstrap command that builds the tree into `dir`.
    fn mmdebstrap(&self, dir: &Path) -> Command {
        let mut cmd = Command::new("mmdebstrap");
        cmd.arg("--mode=root")
            .arg("--variant=minbase")
            .arg(format!("--components={}", self.components.join(",")))
            .arg(format!("--include={}", self.package_list().join(",")))
            // dracut needs /proc, /sys and /dev, which mmdebstrap mounts only while hooks run.
            // The distro initramfs is host-only at best: rebuild it generic, with the ostree
            // module that ostree-boot ships.
            .arg(
                "--customize-hook=for m in \"$1\"/usr/lib/modules/*; do k=${m##*/}; \
                 chroot \"$1\" dracut --no-hostonly --force --reproducible -a ostree \
                 --kver \"$k\" \"/usr/lib/modules/$k/initramfs.img\" || exit 1; \
                 rm -f \"$1/boot/initrd.img-$k\"; done",
            )
            .arg(&self.suite)
            .arg(dir);
        if let Some(mirror) = &self.mirror {
            cmd.arg(mirror);
        }
        cmd
    }
}

impl Source for Debian {
    fn describe(&self) -> String {
        format!("Debian {}", self.suite)
    }

    fn check(&self) -> Result<()> {
        if self.components.is_empty() {
            anyhow::bail!(
                "no archive components for Debian {}: give at least main",
                self.suite
            );
        }
        Ok(())
    }

    fn build(&self, dir: &Path) -> Result<()> {
        // mmdebstrap's own progress (downloads, unpacking, dracut) goes to the terminal.
        cmd::run(&mut self.mmdebstrap(dir))
            .with_context(|| format!("bootstrapping Debian {} with mmdebstrap", self.suite))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmdebstrap_gets_suite_components_packages_and_mirror() {
        let debian = Debian {
            suite: "trixie".into(),
            mirror: Some("http://deb.debian.org/debian".into()),
            components: vec!["main".into(), "contrib".into()],
            packages: vec!["curl".into()],
            ..Debian::default()
        };
        let line = cmd::display(&debian.mmdebstrap(Path::new("/tmp/root")));
        assert!(line.contains("--components=main,contrib"), "{line}");
        assert!(
            line.contains("--include=linux-image-cloud-amd64,systemd-sysv,"),
            "{line}"
        );
        assert!(line.contains(",curl "), "{line}");
        assert!(
            line.ends_with(" trixie /tmp/root http://deb.debian.org/debian"),
            "{line}"
        );
        let none = Debian {
            components: Vec::new(),
            ..Debian::default()
        };
        assert!(none.check().is_err());
    }
}
