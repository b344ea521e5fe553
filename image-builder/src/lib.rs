//! The image builder: pull a commit from a remote, deploy it into a fresh sysroot through
//! libostree, and lay that sysroot out on a bootable disk image.

mod deploy;
mod disk;
mod pull;
mod size;

pub use deploy::{Deployed, Sysroot};
pub use disk::{Bootloader, Disk};
pub use size::parse_size;

use anyhow::{Context, Result};
use osbuild_core::fsutil::Staging;
use std::path::Path;

/// The filesystem label of the root partition; the kernel finds it with `root=LABEL=…`.
pub const ROOT_LABEL: &str = "osbuild-root";

/// What to put on the image.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Where the builder pulls from.
    pub url: String,
    /// The ref to deploy; when unset, the only ref the server's summary lists.
    pub branch: Option<String>,
    /// The URL the device pulls upgrades from; `url` when unset.
    pub remote_url: Option<String>,
    /// The remote's name in the device's repo config.
    pub remote_name: String,
    /// The stateroot (`ostree admin os-init` name).
    pub os: String,
    /// Disk size in bytes.
    pub size: u64,
    /// The boot loader installed on the disk.
    pub bootloader: Bootloader,
    /// Extra kernel arguments after the built-in root, rw and console ones.
    pub kargs: Vec<String>,
}

impl ImageSpec {
    /// The defaults: remote `origin`, stateroot `debian`, 4 GiB, syslinux.
    pub fn new(url: &str, branch: Option<&str>) -> Self {
        ImageSpec {
            url: url.to_string(),
            branch: branch.map(str::to_string),
            remote_url: None,
            remote_name: "origin".into(),
            os: "debian".into(),
            size: 4 << 30,
            bootloader: Bootloader::Syslinux,
            kargs: Vec::new(),
        }
    }

    /// The kernel command line of the deployment.
    pub fn kernel_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("root=LABEL={ROOT_LABEL}"),
            "rw".to_string(),
            "console=ttyS0,115200".to_string(),
        ];
        args.extend(self.kargs.iter().cloned());
        args
    }
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Image {
    /// The deployed commit.
    pub checksum: String,
    /// The image's size in bytes as written (its apparent size).
    pub size: u64,
    /// The bytes the sparse image file takes on disk.
    pub allocated: u64,
}

/// Build the image at `output`. Nothing is left at `output`, nor beside it, on failure.
pub fn make_image(spec: &ImageSpec, output: &Path) -> Result<Image> {
    let staging = Staging::new(output)?;
    let parent = staging
        .path()
        .parent()
        .context("output has no parent directory")?
        .to_path_buf();
    // The sysroot is built beside the output, on the same filesystem, and removed after.
    let work = tempfile::Builder::new()
        .prefix(".osbuild-sysroot-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a work directory in {}", parent.display()))?;
    let sysroot_dir = work.path().join("sysroot");
    let sysroot = Sysroot::create(&sysroot_dir, spec.bootloader)?;
    let result = (|| -> Result<Deployed> {
        let deployed = sysroot.deploy_from_remote(spec)?;
        let disk = Disk::new(spec.size, spec.bootloader)?;
        disk.write(&sysroot_dir, staging.path())
            .with_context(|| format!("writing the disk image {}", output.display()))?;
        Ok(deployed)
    })();
    // Deployments are immutable (chattr +i); the work directory cannot be removed otherwise.
    // A failure to release must not hide why the build failed.
    let released = sysroot.release();
    let deployed = match (result, released) {
        (Ok(deployed), Ok(())) => deployed,
        (Ok(_), Err(e)) => return Err(e),
        (Err(e), Ok(())) => return Err(e),
        (Err(e), Err(cleanup)) => {
            tracing::warn!("cleaning up after the failed build: {cleanup:#}");
            return Err(e);
        }
    };
    // Report what was written, not what was asked for (the size is rounded to sectors).
    let meta = std::fs::metadata(staging.path())
        .with_context(|| format!("reading {}", staging.path().display()))?;
    staging.commit()?;
    Ok(Image {
        checksum: deployed.checksum,
        size: meta.len(),
        allocated: std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
    })
}
