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
    /// The complete package list given to mmdebstrap: the kernel, the base set, then the
    /// extra packages sorted, each once (apt installs a set: the order changes nothing,
    /// and so must not change the base cache's key).
    pub fn package_list(&self) -> Vec<String> {
        let mut pkgs = vec![self.kernel.clone()];
        pkgs.extend(BASE_PACKAGES.iter().map(|s| s.to_string()));
        let mut extra: Vec<&String> = self.packages.iter().filter(|p| !pkgs.contains(p)).collect();
        extra.sort();
        extra.dedup();
        pkgs.extend(extra.into_iter().cloned());
        pkgs
    }

    /// The mmdebstrap command that builds the tree into `dir`, keeping the packages it
    /// downloads in `packages` when given (mmdebstrap's local package cache recipe: what
    /// is there is copied in before apt runs, what apt downloaded is copied out after; its
    /// cleanup step then empties /var/cache/apt, so no package ends up in the tree).
    fn mmdebstrap(&self, dir: &Path, packages: Option<&Path>) -> Command {
        let mut cmd = Command::new("mmdebstrap");
        cmd.arg("--mode=root")
            .arg("--variant=minbase")
            .arg(format!("--components={}", self.components.join(",")))
            .arg(format!("--include={}", self.package_list().join(",")));
        if let Some(packages) = packages {
            let packages = shell_quote(&packages.to_string_lossy());
            // The essential packages too are kept in /var/cache/apt/archives until
            // sync-out, rather than deleted once extracted.
            cmd.arg("--skip=essential/unlink")
                .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
                .arg(format!(
                    "--setup-hook=sync-in {packages} /var/cache/apt/archives/"
                ))
                .arg(format!(
                    "--customize-hook=sync-out /var/cache/apt/archives {packages}"
                ));
        }
        // dracut needs /proc, /sys and /dev, which mmdebstrap mounts only while hooks run.
        // The distro initramfs is host-only at best: rebuild it generic, with the ostree
        // module that ostree-boot ships. --reproducible clamps the archive's times to
        // SOURCE_DATE_EPOCH (inherited through chroot) and sorts its entries.
        cmd.arg(
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

/// `s` as one shell word: mmdebstrap runs hooks through the shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Debian {
    /// The base cache key with SOURCE_DATE_EPOCH at `epoch`: exactly what determines the
    /// tree, that is the command line, with the paths that vary from build to build
    /// replaced, and SOURCE_DATE_EPOCH, which mmdebstrap, dpkg and dracut write into it.
    fn key_at(&self, epoch: Option<&str>) -> String {
        let line =
            cmd::display(&self.mmdebstrap(Path::new("@TARGET@"), Some(Path::new("@PACKAGES@"))));
        format!("{line}\nSOURCE_DATE_EPOCH={epoch:?}\n")
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

    fn cache_key(&self) -> Option<String> {
        Some(self.key_at(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref()))
    }

    fn build(&self, dir: &Path, packages: Option<&Path>) -> Result<()> {
        if let Some(packages) = packages {
            std::fs::create_dir_all(packages)
                .with_context(|| format!("creating the package cache {}", packages.display()))?;
        }
        // mmdebstrap takes minutes: its progress goes to the terminal as it runs, and on
        // failure the tail of its stderr is in the error.
        cmd::run_inherit(&mut self.mmdebstrap(dir, packages))
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
        let line = cmd::display(&debian.mmdebstrap(Path::new("/tmp/root"), None));
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

    #[test]
    fn the_package_cache_is_synced_in_and_out() {
        let debian = Debian::default();
        let cmd = debian.mmdebstrap(Path::new("/t"), Some(Path::new("/c/my packages")));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.iter().any(|a| a == "--skip=essential/unlink"),
            "{args:?}"
        );
        assert!(
            args.iter()
                .any(|a| a == "--setup-hook=sync-in '/c/my packages' /var/cache/apt/archives/"),
            "{args:?}"
        );
        assert!(
            args.iter()
                .any(|a| a == "--customize-hook=sync-out /var/cache/apt/archives '/c/my packages'"),
            "{args:?}"
        );
        let line = cmd::display(&debian.mmdebstrap(Path::new("/t"), None));
        assert!(!line.contains("sync-"), "{line}");
    }

    #[test]
    fn the_cache_key_is_what_makes_the_base() {
        let key = Debian::default().cache_key().unwrap();
        assert!(key.contains(" bookworm @TARGET@"), "{key}");
        assert!(
            key.contains("sync-in") && key.contains("@PACKAGES@"),
            "{key}"
        );
        // Each input that changes the base changes the key.
        for other in [
            Debian {
                suite: "trixie".into(),
                ..Debian::default()
            },
            Debian {
                mirror: Some("http://mirror.example/debian".into()),
                ..Debian::default()
            },
            Debian {
                components: vec!["main".into(), "contrib".into()],
                ..Debian::default()
            },
            Debian {
                kernel: "linux-image-amd64".into(),
                ..Debian::default()
            },
            Debian {
                packages: vec!["curl".into()],
                ..Debian::default()
            },
        ] {
            assert_ne!(other.cache_key().unwrap(), key, "{other:?}");
        }
        // The packages are a set.
        let ab = Debian {
            packages: vec!["jq".into(), "curl".into()],
            ..Debian::default()
        };
        let ba = Debian {
            packages: vec!["curl".into(), "jq".into(), "curl".into(), "dbus".into()],
            ..Debian::default()
        };
        assert_eq!(ab.cache_key(), ba.cache_key());
        let base = Debian::default();
        assert_ne!(base.key_at(Some("1700000000")), base.key_at(None));
        assert_ne!(
            base.key_at(Some("1700000000")),
            base.key_at(Some("1700000001"))
        );
        assert!(ab.package_list().ends_with(&["curl".into(), "jq".into()]));
    }
}
