//! What osbuild puts into every tree it builds so that the device keeps its boot menu
//! right on its own: the menu generator and the units that run it after deploys.

use std::path::PathBuf;

/// Where the menu generator is installed in the tree.
pub const BOOT_MENU_BIN: &str = "/usr/libexec/osbuild/boot-menu";
/// The path unit that regenerates the menu when libostree swaps `/boot/loader`; to be
/// enabled in the tree.
pub const BOOT_MENU_PATH_UNIT: &str = "osbuild-boot-menu.path";

/// A file of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFile {
    /// Absolute path in the tree.
    pub path: &'static str,
    /// What it holds.
    pub content: DeviceContent,
    /// Its mode.
    pub mode: u32,
}

/// A file's content: text, or a file of the build host (a binary) to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceContent {
    /// Text.
    Text(String),
    /// Copied from this host path.
    Copy(PathBuf),
}

/// The files, with the menu generator copied from `boot_menu_bin` on the build host.
pub fn files(boot_menu_bin: PathBuf) -> Vec<DeviceFile> {
    let text = |path, content: &str, mode| DeviceFile {
        path,
        content: DeviceContent::Text(content.to_string()),
        mode,
    };
    vec![
        DeviceFile {
            path: BOOT_MENU_BIN,
            content: DeviceContent::Copy(boot_menu_bin),
            mode: 0o755,
        },
        // Staged deploys (`ostree admin upgrade`) write their entries at shutdown.
        text(
            "/usr/lib/systemd/system/ostree-finalize-staged.service.d/50-osbuild-boot-menu.conf",
            &format!(
                "# osbuild: GRUB's menu follows the entries finalize-staged has just written.\n\
                 [Service]\nExecStop={BOOT_MENU_BIN}\n"
            ),
            0o644,
        ),
        // Deploys made while the system runs (`ostree admin deploy`, undeploy).
        text(
            "/usr/lib/systemd/system/osbuild-boot-menu.path",
            "[Unit]\nDescription=Watch for new ostree boot entries\n\n\
             [Path]\nPathChanged=/sysroot/boot/loader\nUnit=osbuild-boot-menu.service\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            0o644,
        ),
        text(
            "/usr/lib/systemd/system/osbuild-boot-menu.service",
            &format!(
                "[Unit]\nDescription=Regenerate GRUB's menu from ostree's boot entries\n\n\
                 [Service]\nType=oneshot\nExecStart={BOOT_MENU_BIN}\n"
            ),
            0o644,
        ),
    ]
}
