//! The EFI system partition, made without mounting: `mkfs.vfat` at the partition's offset
//! inside the disk image, then `mmd` and `mcopy` addressing the same offset.

use crate::layout::{Partition, SECTOR};
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Make a FAT filesystem on `part` of `image` holding `files` (path on the ESP, source).
pub(crate) fn write(image: &Path, part: &Partition, files: &[(String, PathBuf)]) -> Result<()> {
    cmd::run(
        Command::new("mkfs.vfat")
            // FAT32 needs at least 65525 clusters, else readers take it for FAT16:
            // one sector per cluster gives that from 32 MiB.
            .args(["-F", "32", "-s", "1", "-n", crate::ESP_LABEL])
            .arg(format!("--offset={}", part.start / SECTOR))
            .arg(image)
            .arg((part.size / 1024).to_string()),
    )
    .context("creating the EFI system partition's filesystem")?;
    // mtools names a filesystem inside a file as FILE@@OFFSET.
    fill(&format!("{}@@{}", image.display(), part.start), files)
}

/// A FAT image file of its own, `size` bytes, holding `files`: the El Torito EFI boot
/// image of an ISO.
pub(crate) fn write_image(image: &Path, size: u64, files: &[(String, PathBuf)]) -> Result<()> {
    cmd::run(
        Command::new("mkfs.vfat")
            .arg("-C")
            .arg(image)
            .arg((size / 1024).to_string()),
    )
    .with_context(|| format!("creating the FAT image {}", image.display()))?;
    fill(&image.display().to_string(), files)
}

/// Copy `files` (path in the filesystem, source) into the FAT filesystem mtools names
/// `target`, creating their directories.
fn fill(target: &str, files: &[(String, PathBuf)]) -> Result<()> {
    let mut dirs = BTreeSet::new();
    for (dest, _) in files {
        let mut parts: Vec<&str> = dest.split('/').collect();
        parts.pop();
        for i in 1..=parts.len() {
            dirs.insert(parts[..i].join("/"));
        }
    }
    // BTreeSet order puts every parent before its children.
    for dir in &dirs {
        cmd::run(mtools("mmd").args(["-i", target]).arg(format!("::/{dir}")))
            .with_context(|| format!("creating /{dir} in {target}"))?;
    }
    for (dest, src) in files {
        cmd::run(
            mtools("mcopy")
                .args(["-i", target])
                .arg(src)
                .arg(format!("::/{dest}")),
        )
        .with_context(|| format!("copying {} to {target}", src.display()))?;
    }
    Ok(())
}

/// An mtools command that does not check the image's geometry against a drive's (there
/// is no drive; the filesystem is at an offset in a file).
fn mtools(tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.env("MTOOLS_SKIP_CHECK", "1");
    c
}
