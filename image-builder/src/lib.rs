//! The image builder: pull a commit from a remote, deploy it into a fresh sysroot through
//! libostree, and lay that sysroot out on a bootable disk image.

mod bootloader;
mod cpio;
mod deploy;
mod disk;
mod esp;
mod format;
mod iso;
mod layout;
mod live;
mod mount;
mod options;
mod provision;
mod pull;
mod size;
pub mod vm;

pub use deploy::{Deployed, Sysroot};
pub use iso::ISO_LABEL;
pub use layout::{Layout, Partition, Role};
pub use options::{
    check, check_format, Bootloader, DiskOnly, Firmware, Format, Incompatible, PartitionTable,
};
pub use provision::Provision;
pub use size::{parse_size, Size};

use anyhow::{Context, Result};
use bootloader::{Boot, Sources};
use osbuild_core::fsutil::Staging;
use std::path::{Path, PathBuf};

/// The filesystem label of the root partition; the kernel finds it with `root=LABEL=…`,
/// GRUB with `search --label`.
pub const ROOT_LABEL: &str = "osbuild-root";
/// OVMF's firmware code (Debian package `ovmf`), for the qemu command line printed.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's variable store template; each VM needs a writable copy.
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot (needs `-machine q35,smm=on`).
const OVMF_CODE_SECURE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// A variable store with Microsoft's keys enrolled and Secure Boot on.
const OVMF_VARS_SECURE: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
/// The EFI system partition's FAT label (at most 11 characters).
pub const ESP_LABEL: &str = "ESP";

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
    /// The GPG public key the device's remote verifies commits with (the build's pull
    /// too); none leaves verification off.
    pub gpg_key: Option<std::path::PathBuf>,
    /// The stateroot (`ostree admin os-init` name).
    pub os: String,
    /// Disk size, or `auto`: the content plus headroom (an ISO takes only `auto`).
    pub size: Size,
    /// The boot loader installed on the disk.
    pub bootloader: Bootloader,
    /// The firmware the disk boots under.
    pub firmware: Firmware,
    /// UEFI boots through Debian's signed chain: shim, signed GRUB, the signed kernel.
    pub secure_boot: bool,
    /// The partition table; when unset, the boot loader's usual one.
    pub partition_table: Option<PartitionTable>,
    /// The output's format.
    pub format: Format,
    /// Compress a qcow2 image.
    pub compress: bool,
    /// Extra kernel arguments after the built-in root, rw and console ones.
    pub kargs: Vec<String>,
    /// What this one device gets in its /etc and /var.
    pub provision: Provision,
    /// Where the scratch sysroot is built; when unset, /dev/shm if it has room (see
    /// [`default_work_dir`]), else beside the output.
    pub work_dir: Option<PathBuf>,
}

impl ImageSpec {
    /// The defaults: remote `origin`, stateroot `debian`, size auto, GRUB on a hybrid
    /// BIOS and UEFI GPT disk, raw.
    pub fn new(url: &str, branch: Option<&str>) -> Self {
        ImageSpec {
            url: url.to_string(),
            branch: branch.map(str::to_string),
            remote_url: None,
            remote_name: "origin".into(),
            gpg_key: None,
            os: "debian".into(),
            size: Size::Auto,
            bootloader: Bootloader::Grub,
            firmware: Firmware::Hybrid,
            secure_boot: false,
            partition_table: None,
            format: Format::Raw,
            compress: false,
            kargs: Vec::new(),
            provision: Provision::default(),
            work_dir: None,
        }
    }

    /// The partition table the disk gets.
    pub fn table(&self) -> PartitionTable {
        self.partition_table
            .unwrap_or_else(|| self.bootloader.default_table())
    }

    fn boot(&self) -> Boot {
        Boot {
            bootloader: self.bootloader,
            firmware: self.firmware,
            secure_boot: self.secure_boot,
        }
    }

    /// Check everything that can be checked before pulling: the choices go together and
    /// the host has the tools they need.
    pub fn check(&self) -> Result<()> {
        if !self.format.is_disk() {
            self.check_iso()?;
        } else {
            check(
                self.bootloader,
                self.firmware,
                self.table(),
                self.secure_boot,
            )?;
            self.boot().check(&Sources { deployment: None })?;
        }
        self.provision.check()?;
        if let Some(key) = &self.gpg_key {
            anyhow::ensure!(
                key.is_file(),
                "--gpg-key {}: no such file (give the public key that signs the commits, e.g. from `gpg --export KEYID`)",
                key.display()
            );
            // It lists the key's fingerprints for the import.
            anyhow::ensure!(
                Path::new("/usr/bin/gpg").exists(),
                "--gpg-key needs /usr/bin/gpg (install gpg)"
            );
        }
        if self.format == Format::Qcow2 && !Path::new("/usr/bin/qemu-img").exists() {
            anyhow::bail!("--format qcow2 needs /usr/bin/qemu-img (install qemu-utils)");
        }
        Ok(())
    }

    /// The disk-only options this spec sets.
    fn disk_only(&self) -> Vec<DiskOnly> {
        [
            (DiskOnly::Size, self.size != Size::Auto),
            (DiskOnly::PartitionTable, self.partition_table.is_some()),
            (DiskOnly::SecureBoot, self.secure_boot),
            (DiskOnly::Compress, self.compress),
        ]
        .into_iter()
        .filter_map(|(o, set)| set.then_some(o))
        .collect()
    }

    /// The checks of a live ISO: no disk-only option, a boot loader that runs on the
    /// firmware (the ISO boots BIOS through isolinux and UEFI through GRUB, whichever
    /// --bootloader names; syslinux still means BIOS only), and the host's tools.
    fn check_iso(&self) -> Result<()> {
        check_format(self.format, &self.disk_only())?;
        if !self.bootloader.supports(self.firmware) {
            return Err(Incompatible::Firmware {
                bootloader: self.bootloader,
                firmware: self.firmware,
                hint: "a live ISO boots UEFI through GRUB: use --bootloader grub (the default)",
            }
            .into());
        }
        iso::check(self.firmware, &Sources { deployment: None })
    }

    /// The kernel command line of the deployment.
    pub fn kernel_args(&self) -> Vec<String> {
        let mut args = if self.format.is_disk() {
            vec![
                format!("root=LABEL={ROOT_LABEL}"),
                "rw".to_string(),
                "console=ttyS0,115200".to_string(),
                // A kernel that panics reboots, so the automatic fallback can count the
                // failed boot (osbuild_admin::fallback).
                "panic=10".to_string(),
            ]
        } else {
            live::kernel_args(ISO_LABEL)
        };
        if self.format.is_disk() && self.bootloader == Bootloader::SystemdBoot {
            args.extend(bootloader::SYSTEMD_BOOT_KARGS.iter().map(|a| a.to_string()));
        }
        args.extend(self.kargs.iter().cloned());
        args
    }
}

/// What was built.
#[derive(Debug, Clone)]
pub struct Image {
    /// The deployed commit.
    pub checksum: String,
    /// The partitions; none on an ISO.
    pub layout: Option<Layout>,
    /// The boot loader.
    pub bootloader: Bootloader,
    /// The firmware it boots under.
    pub firmware: Firmware,
    /// Whether UEFI boots through the signed chain.
    pub secure_boot: bool,
    /// The file format.
    pub format: Format,
    /// The image's size in bytes as written (its apparent size).
    pub size: u64,
    /// The bytes the sparse image file takes on disk.
    pub allocated: u64,
}

impl Image {
    /// A qemu command line that boots the image at `path` (TCG; a UEFI boot needs a
    /// writable copy of OVMF's variable store).
    pub fn qemu_command(&self, path: &Path) -> String {
        let mut c = String::from("qemu-system-x86_64 -machine q35 -m 1024 -smp 2 -nographic");
        if self.secure_boot {
            c = c.replace("-machine q35", "-machine q35,smm=on");
            c.push_str(" -global driver=cfi.pflash01,property=secure,value=on");
            c.push_str(" -drive if=pflash,format=raw,unit=0,readonly=on,file=");
            c.push_str(OVMF_CODE_SECURE);
            c.push_str(" -drive if=pflash,format=raw,unit=1,file=vars.fd");
        } else if self.firmware == Firmware::Uefi {
            c.push_str(" -drive if=pflash,format=raw,unit=0,readonly=on,file=");
            c.push_str(OVMF_CODE);
            c.push_str(" -drive if=pflash,format=raw,unit=1,file=vars.fd");
        }
        let file = osbuild_core::cmd::quote_word(&path.display().to_string());
        if self.format.is_disk() {
            c.push_str(&format!(
                " -drive file={file},format={},if=virtio",
                self.format.qemu_format()
            ));
        } else {
            // A CD-ROM on virtio-scsi: Debian's cloud kernel has no AHCI driver.
            c.push_str(&format!(
                " -drive file={file},format=raw,if=none,id=cd0,media=cdrom,readonly=on \
                 -device virtio-scsi-pci -device scsi-cd,drive=cd0"
            ));
        }
        c.push_str(" -nic user,model=virtio-net-pci");
        if self.secure_boot {
            c = format!("cp {OVMF_VARS_SECURE} vars.fd && {c}");
        } else if self.firmware == Firmware::Uefi {
            c = format!("cp {OVMF_VARS} vars.fd && {c}");
        }
        c
    }
}

/// Build the image at `output`. Nothing is left at `output`, nor beside it, on failure.
pub fn make_image(spec: &ImageSpec, output: &Path) -> Result<Image> {
    spec.check()?;
    if !spec.format.is_disk() {
        return make_iso(spec, output);
    }
    let boot = spec.boot();
    build(spec, output, Some(boot), |scratch| {
        let sysroot = scratch.sysroot;
        let sources = Sources {
            deployment: Some(scratch.deployed.root.clone()),
        };
        boot.check(&sources)?;
        let content = disk::content_size(sysroot)?;
        let layout = layout_for(spec, content, boot.esp_size(sysroot)?)?;
        boot.install_sysroot(sysroot, &layout)?;
        let raw = match spec.format {
            Format::Raw => scratch.output.to_path_buf(),
            _ => scratch.work.join("disk.raw"),
        };
        disk::write(boot, &sources, &layout, sysroot, &raw, scratch.work)
            .with_context(|| format!("writing the disk image {}", output.display()))?;
        format::convert(&raw, scratch.output, spec.format, spec.compress)?;
        Ok(Some(layout))
    })
}

/// Build the live ISO at `output`: deploy into a sysroot as for a disk (no boot loader
/// backend: the ISO's loaders boot its one entry), mark the deployment live, squash the
/// sysroot and write the ISO.
fn make_iso(spec: &ImageSpec, output: &Path) -> Result<Image> {
    build(spec, output, None, |scratch| {
        live::prepare_deployment(&scratch.deployed.root).context("marking the deployment live")?;
        iso::write(
            scratch.sysroot,
            &scratch.deployed.root,
            spec.firmware,
            scratch.output,
            scratch.work,
        )
        .with_context(|| format!("writing the live ISO {}", output.display()))?;
        Ok(None)
    })
}

/// What an image writer works with: the provisioned deployment in its scratch sysroot.
struct Scratch<'a> {
    /// The sysroot's directory.
    sysroot: &'a Path,
    /// The deployment in it.
    deployed: &'a Deployed,
    /// Where to write the image (moved into place at the end).
    output: &'a Path,
    /// A directory for the writer's own temporary files.
    work: &'a Path,
}

/// Pull and deploy the commit into a scratch sysroot set up for `boot` (none: no boot
/// loader configuration), provision it, let `write` make the image from it, then move the
/// image into place. Nothing is left at `output`, beside it, or in the work directory on
/// failure.
fn build(
    spec: &ImageSpec,
    output: &Path,
    boot: Option<Boot>,
    write: impl FnOnce(&Scratch) -> Result<Option<Layout>>,
) -> Result<Image> {
    let staging = Staging::new(output)?;
    let parent = staging
        .path()
        .parent()
        .context("output has no parent directory")?
        .to_path_buf();
    // The sysroot is built in the work directory and removed after.
    let in_memory = default_work_dir();
    let work_parent = spec
        .work_dir
        .as_deref()
        .or(in_memory.as_deref())
        .unwrap_or(&parent);
    let work = tempfile::Builder::new()
        .prefix(".osbuild-sysroot-")
        .tempdir_in(work_parent)
        .with_context(|| format!("creating a work directory in {}", work_parent.display()))?;
    let sysroot_dir = work.path().join("sysroot");
    let sysroot = Sysroot::create(&sysroot_dir, boot)?;
    let result = (|| -> Result<(Deployed, Option<Layout>)> {
        let deployed = sysroot.deploy_from_remote(spec)?;
        let var = sysroot_dir.join("ostree/deploy").join(&spec.os).join("var");
        spec.provision
            .apply(&deployed.root, &var)
            .context("provisioning the device")?;
        let layout = write(&Scratch {
            sysroot: &sysroot_dir,
            deployed: &deployed,
            output: staging.path(),
            work: work.path(),
        })?;
        Ok((deployed, layout))
    })();
    // Deployments are immutable (chattr +i); the work directory cannot be removed otherwise.
    // A failure to release must not hide why the build failed.
    let released = sysroot.release();
    let result = result.map_err(|e| match (&spec.work_dir, &in_memory) {
        (None, Some(shm)) if is_out_of_space(&e) => e.context(format!(
            "the scratch sysroot filled {}: pass --work-dir DIR on a disk with room",
            shm.display()
        )),
        _ => e,
    });
    let (deployed, layout) = match (result, released) {
        (Ok(done), Ok(())) => done,
        (Ok(_), Err(e)) | (Err(e), Ok(())) => return Err(e),
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
        layout,
        bootloader: spec.bootloader,
        firmware: spec.firmware,
        secure_boot: spec.secure_boot && spec.format.is_disk(),
        format: spec.format,
        size: meta.len(),
        allocated: std::os::unix::fs::MetadataExt::blocks(&meta) * 512,
    })
}

/// The memory a tmpfs work directory must have free, for the scratch sysroot (a pulled
/// and deployed OS: a Debian server is well under 2 GiB) with room to spare.
const WORK_IN_MEMORY: u64 = 4 << 30;

/// The default work directory: /dev/shm when it is a tmpfs with [`WORK_IN_MEMORY`] free
/// and as much memory available. The scratch sysroot is written once and read once by
/// mkfs; on a disk its writes compete with the image's own (measured in bench/image.sh:
/// half the build's time under load).
pub fn default_work_dir() -> Option<PathBuf> {
    let shm = Path::new("/dev/shm");
    let fs = rustix::fs::statfs(shm).ok()?;
    // TMPFS_MAGIC: a tmpfs, not a disk mounted there.
    if fs.f_type as i64 != 0x0102_1994 {
        return None;
    }
    let free = fs.f_bavail.saturating_mul(fs.f_bsize as u64);
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())?
        * 1024;
    (free >= WORK_IN_MEMORY && available >= WORK_IN_MEMORY).then(|| shm.to_path_buf())
}

/// Whether `e` was caused by a full filesystem.
fn is_out_of_space(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()))
            || c.to_string().contains("No space left on device")
    })
}

/// The partitions for `content` bytes of sysroot: `--size auto` fits the content with
/// headroom; a given size must hold the content.
fn layout_for(spec: &ImageSpec, content: u64, esp_size: u64) -> Result<Layout> {
    let table = spec.table();
    // Everything before the root and after it: a layout of the smallest size tells.
    let probe = Layout::new((1 << 30) + esp_size, table, spec.firmware, esp_size)?;
    let other = probe.size - probe.root().size;
    let min = disk::min_root(content) + other;
    let size = match spec.size {
        Size::Auto => disk::auto_root(content) + other,
        Size::Bytes(size) => {
            anyhow::ensure!(
                size >= min,
                "--size {} MiB is too small: this commit needs at least {} MiB (or use --size auto)",
                size >> 20,
                min.div_ceil(1 << 20)
            );
            size
        }
    };
    Layout::new(size, table, spec.firmware, esp_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_boot_keeps_systemd_off_the_esp_and_needs_its_package() {
        for bootloader in Bootloader::ALL {
            let mut spec = ImageSpec::new("http://example/repo/", None);
            spec.bootloader = bootloader;
            spec.kargs = vec!["quiet".into()];
            let args = spec.kernel_args();
            assert_eq!(
                args.contains(&"systemd.gpt_auto=0".to_string()),
                bootloader == Bootloader::SystemdBoot,
                "{bootloader}: {args:?}"
            );
            assert_eq!(args.last().map(String::as_str), Some("quiet"));
        }
        let boot = Boot {
            bootloader: Bootloader::SystemdBoot,
            firmware: Firmware::Uefi,
            secure_boot: false,
        };
        let loader = boot
            .needs()
            .into_iter()
            .find(|n| n.path.ends_with("systemd-bootx64.efi"))
            .expect("systemd-boot needs its EFI binary");
        assert_eq!(loader.package, "systemd-boot-efi");
        assert!(loader.in_tree, "the tree may carry its own systemd-boot");
    }

    #[test]
    fn live_iso_spec_boots_from_its_label_and_takes_no_disk_options() {
        let mut spec = ImageSpec::new("http://h/repo/", None);
        spec.format = Format::Iso;
        let args = spec.kernel_args();
        assert!(
            args.contains(&format!("root=osbuild-live:{ISO_LABEL}")),
            "{args:?}"
        );
        assert!(args.contains(&"osbuild.live".to_string()), "{args:?}");
        assert!(!args
            .iter()
            .any(|a| a == "rw" || a.starts_with("root=LABEL=")));
        assert!(spec.disk_only().is_empty());
        spec.size = Size::Bytes(1 << 30);
        spec.compress = true;
        assert_eq!(spec.disk_only(), [DiskOnly::Size, DiskOnly::Compress]);
        let err = spec.check().unwrap_err().to_string();
        assert!(
            err.starts_with("--format iso does not take --size"),
            "{err}"
        );
    }

    #[test]
    fn qemu_command_attaches_an_iso_as_a_cdrom() {
        let image = Image {
            checksum: "abc".into(),
            layout: None,
            bootloader: Bootloader::Grub,
            firmware: Firmware::Hybrid,
            secure_boot: false,
            format: Format::Iso,
            size: 0,
            allocated: 0,
        };
        let c = image.qemu_command(Path::new("/o/live.iso"));
        assert!(c.contains("-drive file=/o/live.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on -device virtio-scsi-pci -device scsi-cd,drive=cd0"), "{c}");
        assert!(!c.contains("if=virtio"), "{c}");
    }
}
