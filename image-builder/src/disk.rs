//! Writing the disk: the partition table, the ext4 root made from the sysroot directory
//! (`mkfs.ext4 -d`, no mount), the ESP, and the boot loader's code.

use crate::bootloader::{Boot, Sources};
use crate::layout::{Layout, Role};
use crate::options::Bootloader;
use anyhow::{Context, Result};
use osbuild_core::cmd;
use osbuild_core::progress::Progress;
use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// The root filesystem's overhead over its content: inode tables, the journal, reserved
/// blocks, and directories' blocks.
const FS_OVERHEAD: u64 = 96 << 20;
/// What `--size auto` adds over the minimum: room for an upgrade's new objects and a
/// second deployment, and for /var.
const AUTO_HEADROOM: u64 = 1 << 30;

/// Write the disk image at `path`.
pub(crate) fn write(
    boot: Boot,
    sources: &Sources,
    layout: &Layout,
    sysroot: &Path,
    path: &Path,
    work: &Path,
) -> Result<()> {
    let esp = layout.get(Role::Esp);
    // mkfs and the boot loader tools report nothing while they run: count the steps.
    let steps = 3 + u64::from(esp.is_some());
    let bar = Progress::counter("Writing the disk image");
    let step = |n: u64, what: &str| {
        bar.set(n, steps);
        bar.set_message(what.to_string());
    };
    step(0, "partition table");
    let mut file = File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_len(layout.size)
        .with_context(|| format!("sizing {} to {} bytes", path.display(), layout.size))?;
    layout.write_table(&mut file)?;
    drop(file);
    // The ESP's files are gathered before the root filesystem is made from the sysroot:
    // systemd-boot's sync writes its boot links into the sysroot.
    let esp_files = match esp {
        Some(_) => boot.esp_files(sources, sysroot, work)?,
        None => Vec::new(),
    };
    step(
        1,
        &format!("root filesystem, {} MiB", layout.root().size >> 20),
    );
    mkfs_root(boot.bootloader, layout, sysroot, path)?;
    if let Some(esp) = esp {
        step(2, "EFI system partition");
        crate::esp::write(path, esp, &esp_files)?;
    }
    step(steps - 1, &format!("boot loader {}", boot.bootloader));
    boot.install_disk(sources, layout, path, work)?;
    bar.finish(format!(
        "Wrote {} partitions and the {} boot loader",
        layout.partitions.len(),
        boot.bootloader
    ));
    Ok(())
}

/// Build the root filesystem from the directory, directly inside the image file.
fn mkfs_root(bootloader: Bootloader, layout: &Layout, sysroot: &Path, image: &Path) -> Result<()> {
    let root = layout.root();
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-L", crate::ROOT_LABEL]);
    if bootloader == Bootloader::Syslinux {
        // syslinux cannot read ext4 with 64-bit block numbers.
        c.args(["-O", "^64bit"]);
    }
    cmd::run(
        c.arg("-E")
            .arg(format!("offset={}", root.start))
            .arg("-d")
            .arg(sysroot)
            .arg(image)
            .arg(format!("{}k", root.size / 1024)),
    )
    .context("creating the root filesystem")?;
    Ok(())
}

/// The bytes the sysroot's files take, each hard-linked file counted once (the
/// deployment's files are hard links into the repo).
pub(crate) fn content_size(dir: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry.with_context(|| format!("reading {}", d.display()))?;
            let meta = entry
                .metadata()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            // Whole 4 KiB blocks, as ext4 stores them.
            total += meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

/// The smallest root partition that holds `content` bytes.
pub(crate) fn min_root(content: u64) -> u64 {
    (content + content / 10 + FS_OVERHEAD).next_multiple_of(crate::layout::ALIGN)
}

/// The root partition `--size auto` makes for `content` bytes.
pub(crate) fn auto_root(content: u64) -> u64 {
    min_root(content) + AUTO_HEADROOM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_links_count_once() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/c"), b"x").unwrap();
        let size = content_size(dir.path()).unwrap();
        // a (3 blocks) + d (1 block of directory) + c (1 block).
        assert_eq!(size, 5 * 4096);
        assert!(min_root(size) > size);
        assert!(auto_root(size) > min_root(size));
        assert_eq!(min_root(size) % crate::layout::ALIGN, 0);
    }
}
