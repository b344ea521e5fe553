//! syslinux (extlinux) on the ext4 root, BIOS with an MBR. libostree's syslinux backend
//! rewrites `/boot/loader/syslinux.cfg` on every deploy; extlinux reads it through the
//! link `/boot/syslinux/syslinux.cfg -> ../loader/syslinux.cfg`.

use super::{open_rw, Needed};
use crate::layout::{Layout, SECTOR};
use crate::mount::LoopMount;
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// Syslinux's MBR boot code; it chain-loads the active partition's boot sector.
const MBR_CODE: &str = "/usr/lib/syslinux/mbr/mbr.bin";

pub(super) fn needs() -> Vec<Needed> {
    vec![
        Needed::host(MBR_CODE, "syslinux-common"),
        Needed::host("/usr/bin/extlinux", "extlinux"),
    ]
}

/// libostree's syslinux backend only updates an existing config, and it must reach it
/// through boot/syslinux/syslinux.cfg -> ../loader/syslinux.cfg so that the menu always
/// follows the current boot/loader symlink.
pub(super) fn prepare_sysroot(sysroot: &Path) -> Result<()> {
    let boot = sysroot.join("boot");
    (|| {
        fs::create_dir_all(boot.join("loader.0"))?;
        fs::write(boot.join("loader.0/syslinux.cfg"), "")?;
        symlink("loader.0", boot.join("loader"))?;
        fs::create_dir_all(boot.join("syslinux"))?;
        symlink("../loader/syslinux.cfg", boot.join("syslinux/syslinux.cfg"))
    })()
    .with_context(|| format!("preparing {} for the boot menu", boot.display()))
}

/// The MBR boot code, then extlinux into the root filesystem (the one step that needs a
/// mount).
pub(super) fn install_disk(layout: &Layout, image: &Path) -> Result<()> {
    let code = fs::read(MBR_CODE)
        .with_context(|| format!("reading {MBR_CODE} (install the syslinux-common package)"))?;
    let n = code.len().min(440);
    let mut f = open_rw(image)?;
    f.write_all(&code[..n])
        .with_context(|| format!("writing the MBR boot code into {}", image.display()))?;
    drop(f);

    let root = layout.root();
    let mount = LoopMount::new(image, root.start, root.size)?;
    let installed = cmd::run(
        Command::new("extlinux")
            .arg("--install")
            .arg(mount.path().join("boot/syslinux")),
    );
    if installed.is_err() && mount.interrupted() {
        // Ctrl-C reached extlinux too; say why, once the mount is undone.
        drop(mount);
        anyhow::bail!("interrupted by a signal; the root partition was unmounted");
    }
    installed.context("installing extlinux")?;
    mount.unmount()?;
    // The partition's boot sector must know where the partition starts; the loop mount of
    // a partition at an offset reports 0.
    let mut f = open_rw(image)?;
    f.seek(SeekFrom::Start(root.start + 0x1c))
        .and_then(|_| f.write_all(&((root.start / SECTOR) as u32).to_le_bytes()))
        .with_context(|| format!("patching the boot sector in {}", image.display()))
}
