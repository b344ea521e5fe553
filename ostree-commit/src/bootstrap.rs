//! `osbuild bootstrap`: a minimal bootable Debian tree made with mmdebstrap, given an
//! ostree-capable initramfs and converted to the OSTree layout.

use crate::cache::Cache;
use crate::customize;
use crate::layout::{self, TreeInfo};
use crate::manifest::{ImageFile, Manifest, Services, User};
use crate::source::{Base, Built, Source};
use anyhow::{Context, Result};
use osbuild_core::{cmd, fsutil::Staging, progress::Progress};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to bootstrap.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// Where the root filesystem comes from.
    pub base: Base,
    /// The static hostname; the base's own when unset.
    pub hostname: Option<String>,
    /// Directories copied over the tree in order (with /etc still at /etc) before
    /// conversion.
    pub overlays: Vec<PathBuf>,
    /// Accounts to create.
    pub users: Vec<User>,
    /// Files to write, after the overlays and users.
    pub files: Vec<ImageFile>,
    /// Units to enable and disable.
    pub services: Services,
    /// Scripts run chrooted in the tree, in order, last.
    pub scripts: Vec<PathBuf>,
    /// Where downloaded packages and the base are cached; nothing is cached when unset.
    pub cache: Option<Cache>,
}

impl Bootstrap {
    /// What `manifest` describes.
    pub fn from_manifest(manifest: &Manifest) -> Result<Self> {
        Ok(Bootstrap {
            base: manifest.base().clone(),
            // mmdebstrap copies the build host's name: never let it into an image.
            hostname: manifest.hostname().map(str::to_string).or_else(|| {
                matches!(manifest.base(), Base::Debian(_) | Base::Image(_))
                    .then(|| "localhost".into())
            }),
            overlays: manifest.overlays().to_vec(),
            users: manifest.users().to_vec(),
            files: manifest.files().to_vec(),
            services: manifest.services().clone(),
            scripts: manifest.scripts().post.clone(),
            cache: None,
        })
    }
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            base: Base::default(),
            hostname: Some("osbuild".into()),
            overlays: Vec::new(),
            users: Vec::new(),
            files: Vec::new(),
            services: Services::default(),
            scripts: Vec::new(),
            cache: None,
        }
    }
}

impl Bootstrap {
    /// What the base cache keys the base on: everything that determines the base, and
    /// nothing that is applied to it afterwards. `None` when the base is not cached
    /// (tarball and directory bases: they are cheap to redo).
    pub fn base_key(&self) -> Option<String> {
        self.base.source().cache_key()
    }
}

impl Bootstrap {
    /// The SHA-256 of everything the tree is made from, given the base image's manifest
    /// digest, and osbuild's version: the same inputs make the same tree, so a commit that
    /// records them need not be made again. `None` when overlays or scripts are used, whose
    /// content is not digested, or a file cannot be read.
    pub fn inputs_digest(&self, image_digest: &str) -> Option<String> {
        use sha2::{Digest, Sha256};
        if !self.overlays.is_empty() || !self.scripts.is_empty() {
            return None;
        }
        let mut h = Sha256::new();
        h.update(concat!("osbuild ", env!("CARGO_PKG_VERSION"), "\0"));
        h.update(format!("{:?}\0{image_digest}\0", self.base));
        h.update(format!(
            "{:?}\0{:?}\0{:?}\0",
            self.hostname, self.users, self.services
        ));
        for f in &self.files {
            h.update(format!("{:?}\0{:o}\0{:?}\0", f.path, f.mode, f.owner));
            match &f.content {
                crate::FileContent::Inline(text) => h.update(text.as_bytes()),
                crate::FileContent::Source(path) => h.update(fs::read(path).ok()?),
            }
            h.update(b"\0");
        }
        Some(osbuild_core::hex(h.finalize()))
    }
}

/// A bootstrapped tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrapped {
    /// What validation learned of it.
    pub info: TreeInfo,
    /// The container image it was made from.
    pub image: Option<crate::ImageOrigin>,
}

/// Bootstrap a tree into `output`, which must not exist. Nothing is left at `output` on
/// failure.
pub fn bootstrap(spec: &Bootstrap, output: &Path) -> Result<Bootstrapped> {
    if output.exists() {
        anyhow::bail!(
            "output {} already exists; remove it or choose another path",
            output.display()
        );
    }
    let source = spec.base.source();
    source.check()?;
    for overlay in &spec.overlays {
        if !overlay.is_dir() {
            anyhow::bail!("overlay {} is not a directory", overlay.display());
        }
    }
    for script in &spec.scripts {
        if !script.is_file() {
            anyhow::bail!("post script {} does not exist", script.display());
        }
    }
    let staging = Staging::new(output)?;
    let dir = staging.path();
    fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;

    let packages = spec.cache.as_ref().map(Cache::packages);
    let built = match (&spec.cache, source.cache_key()) {
        (Some(cache), Some(key)) => {
            cache.provide_base(&key, dir, |d| {
                build_base(source, d, packages.as_deref()).map(drop)
            })?;
            Built::default()
        }
        _ => build_base(source, dir, packages.as_deref())?,
    };

    host_keys(dir).context("removing the base's SSH host keys")?;
    configure(spec, dir).context("configuring the bootstrapped tree")?;
    for overlay in &spec.overlays {
        copy_overlay(overlay, dir)?;
    }
    customize::add_users(dir, &spec.users)?;
    customize::write_files(dir, &spec.files)?;
    customize::set_services(dir, &spec.services)?;
    customize::run_scripts(dir, &spec.scripts)?;
    normalise(dir).context("removing logs and caches from the tree")?;
    let info = layout::convert(dir).context("converting the tree to the OSTree layout")?;
    staging.commit()?;
    Ok(Bootstrapped {
        info,
        image: built.image,
    })
}

fn build_base(source: &dyn Source, dir: &Path, packages: Option<&Path>) -> Result<Built> {
    let what = source.describe();
    let progress = Progress::spinner(format!("Bootstrapping {what}"));
    // A base may print its own progress (mmdebstrap does): the spinner steps aside.
    let built = progress.suspend(|| source.build(dir, packages))?;
    progress.finish(format!("Bootstrapped {what}"));
    Ok(built)
}

/// The unit that generates the SSH host keys on a device's first boot.
const SSH_KEYGEN_UNIT: &str = "osbuild-ssh-keygen.service";

/// Host keys made when the base was built would be the same on every device (and differ
/// from build to build): remove them, and have each device generate its own on first
/// boot, before sshd starts. Keys that overlays or files add later are kept.
fn host_keys(dir: &Path) -> Result<()> {
    let ssh = dir.join("etc/ssh");
    for entry in fs::read_dir(&ssh).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("ssh_host_") && (name.ends_with("_key") || name.ends_with("_key.pub")) {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    // A base without systemd starts sshd its own way, keys included.
    if !dir.join("usr/sbin/sshd").exists() || !dir.join("usr/bin/systemctl").exists() {
        return Ok(());
    }
    let unit = dir.join("usr/lib/systemd/system").join(SSH_KEYGEN_UNIT);
    fs::create_dir_all(unit.parent().unwrap_or(dir))
        .with_context(|| format!("creating the directory of {}", unit.display()))?;
    write(
        &unit,
        "[Unit]\n\
         Description=Generate the SSH host keys this device does not have yet\n\
         Before=ssh.service\n\
         ConditionFileIsExecutable=/usr/bin/ssh-keygen\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/usr/bin/ssh-keygen -A\n\
         RemainAfterExit=yes\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target ssh.service\n",
    )?;
    cmd::run(
        Command::new("chroot")
            .arg(dir)
            .args(["systemctl", "enable", SSH_KEYGEN_UNIT]),
    )
    .context("enabling the SSH host key generation")?;
    Ok(())
}

/// Files that record when or in what order the tree was built rather than what it holds:
/// logs, and caches that apt, dpkg and ldconfig rebuild on the device. mmdebstrap removes
/// most of them; customisation (a post script running apt) can bring them back.
const BUILD_LEFTOVERS: &[&str] = &[
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
    "var/log/apt/eipp.log.xz",
    "var/cache/ldconfig/aux-cache",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/dbus/machine-id",
];

/// Directories whose files are build leftovers too (the directories themselves stay).
const LEFTOVER_DIRS: &[(&str, &str)] = &[
    ("var/cache/apt/archives", ".deb"),
    ("var/lib/apt/lists", ""),
];

/// Remove what would make two builds of the same manifest differ, or leak the build.
fn normalise(dir: &Path) -> Result<()> {
    for path in BUILD_LEFTOVERS {
        osbuild_core::fsutil::remove_all(&dir.join(path))?;
    }
    for (sub, suffix) in LEFTOVER_DIRS {
        for entry in fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file && name != "lock" && name.ends_with(suffix) {
                osbuild_core::fsutil::remove_all(&entry.path())?;
            }
        }
    }
    Ok(())
}

/// The settings a bootable appliance needs beyond the packages: identity, network, mounts.
fn configure(spec: &Bootstrap, dir: &Path) -> Result<()> {
    let etc = dir.join("etc");
    if let Some(hostname) = &spec.hostname {
        write(&etc.join("hostname"), &format!("{hostname}\n"))?;
        write(
            &etc.join("hosts"),
            &format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            ),
        )?;
    }
    // ostree-prepare-root mounts / and /sysroot; nothing else needs mounting.
    let mut fstab = "# The root filesystem is mounted by ostree-prepare-root.\n".to_string();
    if has_sbin(dir, "openrc-run") {
        // Debian's mountall.sh runs `mount -o remount /usr` with /usr's fstab options.
        // Without a line, mount takes the read-only bind's options and remounts the
        // filesystem under it, so / and /var turn read-only too; `rbind` keeps the
        // remount to the bind mount itself (`bind` alone does not, in util-linux 2.38).
        fstab += "# /usr is prepare-root's read-only bind mount: remounting it must stay a bind remount.\n\
                  /usr /usr none rbind,ro,noauto 0 0\n";
    }
    write(&etc.join("fstab"), &fstab)?;
    // An empty machine-id makes systemd generate one on each device's first boot.
    write(&etc.join("machine-id"), "")?;
    let network = etc.join("systemd/network");
    fs::create_dir_all(&network).with_context(|| format!("creating {}", network.display()))?;
    write(
        &network.join("80-dhcp.network"),
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
    )?;
    if !dir
        .join("usr/lib/systemd/system/systemd-networkd.service")
        .exists()
    {
        // Without systemd-networkd (an OpenRC tree), ifupdown does the same at boot; a
        // base with neither brings its own network setup.
        if has_sbin(dir, "ifup") {
            let conf = etc.join("network/interfaces.d/osbuild-dhcp");
            fs::create_dir_all(conf.parent().unwrap_or(&etc))
                .with_context(|| format!("creating the directory of {}", conf.display()))?;
            write(
                &conf,
                "# osbuild: DHCP on the wired interfaces, as systemd-networkd does on a\n\
                 # systemd tree.\n\
                 auto lo\niface lo inet loopback\n\n\
                 auto /en*=wired /eth*=wired\niface wired inet dhcp\n",
            )?;
        }
        return Ok(());
    }
    cmd::run(
        // The tree's own systemctl: enabling works offline in a chroot.
        Command::new("chroot")
            .arg(dir)
            .args(["systemctl", "enable", "systemd-networkd.service"]),
    )
    .context("enabling systemd-networkd")?;
    Ok(())
}

/// Whether the tree has the system command `name`, merged /usr or not.
fn has_sbin(dir: &Path, name: &str) -> bool {
    ["usr/sbin", "sbin"]
        .iter()
        .any(|d| dir.join(d).join(name).exists())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::FileContent;
    use crate::source::{Debian, Directory, Tarball};

    #[test]
    fn the_base_key_leaves_out_what_is_applied_to_the_base() {
        let plain = Bootstrap::default();
        let key = plain.base_key().unwrap();
        let customised = Bootstrap {
            hostname: Some("other".into()),
            overlays: vec!["/overlay".into()],
            files: vec![ImageFile {
                path: "/etc/motd".into(),
                content: FileContent::Inline("hi\n".into()),
                mode: 0o644,
                owner: crate::manifest::Owner {
                    user: "root".into(),
                    group: None,
                },
            }],
            scripts: vec!["/post.sh".into()],
            cache: Some(Cache::new("/elsewhere")),
            ..Bootstrap::default()
        };
        assert_eq!(customised.base_key().unwrap(), key);
        let more = Bootstrap {
            base: Base::Debian(Debian {
                packages: vec!["curl".into()],
                ..Debian::default()
            }),
            ..Bootstrap::default()
        };
        assert_ne!(more.base_key().unwrap(), key);
        // Tarball and directory bases are not cached.
        for base in [
            Base::Tarball(Tarball {
                path: "/b.tar".into(),
            }),
            Base::Directory(Directory { path: "/b".into() }),
        ] {
            let spec = Bootstrap {
                base,
                ..Bootstrap::default()
            };
            assert_eq!(spec.base_key(), None);
        }
    }

    #[test]
    fn host_keys_and_build_leftovers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "etc/ssh",
            "var/log/apt",
            "var/cache/apt/archives/partial",
            "var/lib/apt/lists",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in [
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "etc/ssh/sshd_config",
            "var/log/dpkg.log",
            "var/log/apt/history.log",
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/archives/curl_8.0_amd64.deb",
            "var/cache/apt/archives/lock",
            "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
            "var/cache/ldconfig/aux-cache",
        ] {
            create_parent(&root.join(f));
            fs::write(root.join(f), "x").unwrap();
        }
        // No sshd in the tree: the keys go, no unit is installed.
        host_keys(root).unwrap();
        normalise(root).unwrap();
        let mut left: Vec<String> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    left.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        left.sort();
        assert_eq!(left, ["etc/ssh/sshd_config", "var/cache/apt/archives/lock"]);
        assert!(root.join("var/cache/apt/archives/partial").is_dir());
        assert!(!root
            .join("usr/lib/systemd/system")
            .join(SSH_KEYGEN_UNIT)
            .exists());
    }

    fn create_parent(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
    }
}
