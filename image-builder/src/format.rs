//! Converting the raw disk into the output format.

use crate::options::Format;
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::path::Path;
use std::process::Command;

/// Write `raw` to `output` as `format` (qcow2 through `qemu-img convert`, compressed when
/// `compress`). Raw images are written in place and not converted.
pub(crate) fn convert(raw: &Path, output: &Path, format: Format, compress: bool) -> Result<()> {
    match format {
        Format::Raw => Ok(()),
        Format::Iso => anyhow::bail!("an ISO is not converted from a disk image"),
        Format::Qcow2 => {
            let mut c = Command::new("qemu-img");
            c.args(["convert", "-f", "raw", "-O", "qcow2"]);
            if compress {
                c.arg("-c");
            }
            cmd::run(c.arg(raw).arg(output))
                .with_context(|| format!("converting the disk to qcow2 at {}", output.display()))?;
            Ok(())
        }
    }
}
