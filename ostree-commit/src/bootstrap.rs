//! `osbuild bootstrap`: a minimal bootable Debian tree made with mmdebstrap, given an
//! ostree-capable initramfs and converted to the OSTree layout.

use crate::layout::{self, TreeInfo};
use anyhow::{Context, Result};
use osbuild_core::{cmd, fsutil::Staging, progress::Progress};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Packages every bootable tree needs: a kernel, an init, udev, the ostree boot integration
/// (prepare-root, finalize-staged, the dracut module) and dracut to build the initramfs.
pub(crate) const BASE_PACKAGES: &[&str] = &[
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

/// What to bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Debian or Ubuntu suite, e.g. `bookworm`.
    pub suite: String,
    /// Archive mirror; mmdebstrap's default when unset.
    pub mirror: Option<String>,
    /// The kernel package.
    pub kernel: String,
    /// Packages beyond the base set.
    pub packages: Vec<String>,
    /// The static hostname.
    pub hostname: String,
    /// A directory copied over the tree (with /etc still at /etc) before conversion.
    pub overlay: Option<PathBuf>,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            suite: "bookworm".into(),
            mirror: None,
            kernel: "linux-image-cloud-amd64".into(),
            packages: Vec::new(),
            hostname: "osbuild".into(),
            overlay: None,
        }
    }
}

impl Bootstrap {
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

/// Bootstrap a tree into `output`, which must not exist. Nothing is left at `output` on
/// failure.
pub fn bootstrap(spec: &Bootstrap, output: &Path) -> Result<TreeInfo> {
    if output.exists() {
        anyhow::bail!(
            "output {} already exists; remove it or choose another path",
            output.display()
        );
    }
    if let Some(overlay) = &spec.overlay {
        if !overlay.is_dir() {
            anyhow::bail!("overlay {} is not a directory", overlay.display());
        }
    }
    let staging = Staging::new(output)?;
    let dir = staging.path();
    fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;

    let progress = Progress::spinner(format!(
        "Bootstrapping Debian {} with mmdebstrap",
        spec.suite
    ));
    cmd::run(&mut spec.mmdebstrap(dir)).context("bootstrapping with mmdebstrap")?;
    progress.finish("Bootstrapped the base system");

    configure(spec, dir).context("configuring the bootstrapped tree")?;
    if let Some(overlay) = &spec.overlay {
        copy_overlay(overlay, dir)?;
    }
    let info = layout::convert(dir).context("converting the tree to the OSTree layout")?;
    staging.commit()?;
    Ok(info)
}

/// The settings a bootable appliance needs beyond the packages: identity, network, mounts.
fn configure(spec: &Bootstrap, dir: &Path) -> Result<()> {
    let etc = dir.join("etc");
    write(&etc.join("hostname"), &format!("{}\n", spec.hostname))?;
    write(
        &etc.join("hosts"),
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            spec.hostname
        ),
    )?;
    // ostree-prepare-root mounts / and /sysroot; nothing else needs mounting.
    write(
        &etc.join("fstab"),
        "# The root filesystem is mounted by ostree-prepare-root.\n",
    )?;
    // An empty machine-id makes systemd generate one on each device's first boot.
    write(&etc.join("machine-id"), "")?;
    let network = etc.join("systemd/network");
    fs::create_dir_all(&network).with_context(|| format!("creating {}", network.display()))?;
    write(
        &network.join("80-dhcp.network"),
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    )?;
    cmd::run(
        // The tree's own systemctl: enabling works offline in a chroot.
        Command::new("chroot")
            .arg(dir)
            .args(["systemctl", "enable", "systemd-networkd.service"]),
    )
    .context("enabling systemd-networkd")?;
    Ok(())
}

fn write(path: &Path, content: &str) -> Result<()> {
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

fn copy_overlay(overlay: &Path, dir: &Path) -> Result<()> {
    // cp keeps modes, links and ownership exactly, which a hand-written walk would have to
    // reimplement.
    let mut src = overlay.as_os_str().to_owned();
    src.push("/.");
    cmd::run(Command::new("cp").arg("-a").arg(src).arg(dir))
        .with_context(|| format!("copying overlay {}", overlay.display()))?;
    Ok(())
}
