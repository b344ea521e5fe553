//! UEFI Secure Boot: Debian's Microsoft-signed shim, its signed GRUB and the tree's
//! signed kernel, laid out on the ESP as Debian's grub-install does. The signed GRUB
//! cannot load modules and has no syslinux parser; its built-in prefix is `/EFI/debian`,
//! where a stub grub.cfg finds the root filesystem and reads the menu osbuild generates
//! from libostree's boot entries (osbuild_admin::bootmenu), the same menu as unsigned GRUB.

use super::{Needed, Sources};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

const SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
const MOK_MANAGER: &str = "/usr/lib/shim/mmx64.efi.signed";
const GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";

pub(super) fn needs() -> Vec<Needed> {
    vec![
        Needed::data(SHIM, "shim-signed"),
        Needed::data(MOK_MANAGER, "shim-helpers-amd64-signed"),
        Needed::data(GRUB, "grub-efi-amd64-signed"),
    ]
}

/// The stub config the signed GRUB reads from its prefix on the ESP.
fn stub_config() -> String {
    format!(
        "# Written by osbuild make-image: the menu is on the root filesystem.\n\
         search --no-floppy --label {} --set=root\n\
         set prefix=($root)/boot/grub\n\
         configfile $prefix/grub.cfg\n",
        crate::ROOT_LABEL
    )
}

pub(super) fn esp_files(sources: &Sources, work: &Path) -> Result<Vec<(String, PathBuf)>> {
    let stub = work.join("grub-stub.cfg");
    fs::write(&stub, stub_config()).with_context(|| format!("writing {}", stub.display()))?;
    let (shim, mm, grub) = (
        sources.find(SHIM),
        sources.find(MOK_MANAGER),
        sources.find(GRUB),
    );
    let mut files = Vec::new();
    // EFI/debian is what a boot entry would name; EFI/BOOT is the removable-media path
    // that firmware without boot variables (a fresh disk) starts: shim there loads the
    // grubx64.efi beside it.
    for dir in ["EFI/debian", "EFI/BOOT"] {
        let first = if dir == "EFI/BOOT" {
            "BOOTX64.EFI"
        } else {
            "shimx64.efi"
        };
        files.push((format!("{dir}/{first}"), shim.clone()));
        files.push((format!("{dir}/grubx64.efi"), grub.clone()));
        files.push((format!("{dir}/mmx64.efi"), mm.clone()));
        files.push((format!("{dir}/grub.cfg"), stub.clone()));
    }
    Ok(files)
}
