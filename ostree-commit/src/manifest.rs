//! `osbuild.toml`, the manifest: one TOML file describing one operating system — its
//! base, packages, files, users, services, kernel, scripts, remote and push destination.
//!
//! [`Manifest::load`] parses and checks everything that can be checked without the
//! network (keys, types, names, the files it refers to) and reports the first problem as
//! a [`ManifestError`] naming the key and its line and column. Paths in the manifest are
//! relative to its directory; the loaded manifest holds them absolute.
//!
//! The keys are declared once, in `manifest/raw.rs`, with the command-line flags that
//! override them ([`key_flags`], applied by [`Overrides`]); docs/manifest.md's reference
//! is generated from those declarations and a test keeps the two equal.

mod check;
#[cfg(test)]
mod docs;
mod flags;
mod load;
mod raw;
#[cfg(test)]
mod tests;

pub use flags::{key_flags, FlagAction, FlagScope, KeyFlag, Overrides, RemoteFlags};

use crate::{Base, Destination};
use load::parse;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use toml::Spanned;

/// The architecture `{arch}` stands for in a ref.
const ARCH: &str = "x86_64";
/// The ref when the manifest sets none.
const DEFAULT_REF: &str = "{name}/{suite}/{arch}";
const DEFAULT_SHELL: &str = "/bin/bash";
const DEFAULT_REMOTE: &str = "origin";
const DEFAULT_MODE: u32 = 0o644;
/// Where users' home directories live: /home is not writable in an ostree deployment.
const HOME_ROOT: &str = "/var/home";

/// A manifest that was read and checked: names are valid, referenced files exist, paths
/// are absolute and defaults are filled in.
#[derive(Debug, Clone)]
pub struct Manifest {
    path: PathBuf,
    name: String,
    version: Option<String>,
    /// SOURCE_DATE_EPOCH when it was set at load, for `{date}`.
    source_date_epoch: Option<i64>,
    hostname: Option<String>,
    ostree_ref: String,
    base: Base,
    overlays: Vec<PathBuf>,
    files: Vec<ImageFile>,
    users: Vec<User>,
    services: Services,
    kernel_args: Vec<String>,
    scripts: Scripts,
    remote: Option<Remote>,
    push: Option<PushTarget>,
    sign: Option<Sign>,
    image: ImageSettings,
}

/// GPG signing of commits and the summary (`[sign]`, `--gpg-sign`, `--gpg-homedir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sign {
    /// The signing keys: IDs or fingerprints.
    pub key_ids: Vec<String>,
    /// The GPG home holding their secret keys; GPG's default when unset.
    pub homedir: Option<PathBuf>,
}

/// The `[image]` table: make-image's settings for this OS, each unset when the manifest
/// leaves it to make-image's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSettings {
    /// The boot loader.
    pub bootloader: Option<image_builder::Bootloader>,
    /// The firmware.
    pub firmware: Option<image_builder::Firmware>,
    /// The partition table.
    pub partition_table: Option<image_builder::PartitionTable>,
    /// The output format.
    pub format: Option<image_builder::Format>,
    /// The disk size.
    pub size: Option<image_builder::Size>,
    /// Secure Boot.
    pub secure_boot: Option<bool>,
    /// The stateroot name.
    pub os: Option<String>,
}

/// An extra APT repository for a Debian base, and the key that signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptRepository {
    /// The APT source entry, without `signed-by` (the keyring is installed for it).
    pub sources: AptSources,
    /// The signing key file, absolute.
    pub keyring: PathBuf,
}

/// An APT source entry in one of APT's two formats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AptSources {
    /// One `deb ...` line, for a `.list` file.
    OneLine(String),
    /// A deb822 stanza, for a `.sources` file.
    Deb822(String),
}

/// A file written into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// The path in the image, absolute.
    pub path: PathBuf,
    /// What the file holds.
    pub content: FileContent,
    /// The permission bits (at most 0o7777).
    pub mode: u32,
    /// Who owns the file.
    pub owner: Owner,
}

/// Where an [`ImageFile`]'s bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    /// Text given in the manifest.
    Inline(String),
    /// A file beside the manifest, absolute.
    Source(PathBuf),
}

/// A file's owner, by name or numeric id as the image resolves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The user.
    pub user: String,
    /// The group; unset means the user's login group (as `chown user:`).
    pub group: Option<String>,
}

impl Owner {
    /// `root:root`, the owner of files that do not say otherwise.
    pub fn root() -> Owner {
        Owner {
            user: "root".into(),
            group: Some("root".into()),
        }
    }
}

/// A login user created in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub name: String,
    /// The user id; unset, the next free one.
    pub uid: Option<u32>,
    /// Supplementary groups.
    pub groups: Vec<String>,
    /// The crypt(3) password hash; unset, the account has no password (locked).
    pub password_hash: Option<String>,
    /// The lines of `~/.ssh/authorized_keys`.
    pub ssh_authorized_keys: Vec<String>,
    /// The login shell.
    pub shell: String,
}

impl User {
    /// The home directory: `/var/home/NAME`.
    pub fn home(&self) -> PathBuf {
        Path::new(HOME_ROOT).join(&self.name)
    }
}

/// systemd units switched on or off, by full unit name, and OpenRC services added to
/// runlevels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    /// Units enabled.
    pub enable: Vec<String>,
    /// Units disabled.
    pub disable: Vec<String>,
    /// OpenRC services added to a runlevel, as (service, runlevel), with the tree's own
    /// `rc-update`.
    pub openrc: Vec<(String, String)>,
}

/// Scripts run chrooted in the tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scripts {
    /// Run in order before the tree is converted, absolute.
    pub post: Vec<PathBuf>,
}

/// The ostree remote devices upgrade from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The remote's name in the image's repository.
    pub name: String,
    /// The repository URL.
    pub url: String,
    /// The public key commits are verified with, absolute; none turns verification off.
    pub gpg_key: Option<PathBuf>,
}

/// Where `osbuild push` sends commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    /// The remote repository.
    pub destination: Destination,
    /// The SSH private key, absolute.
    pub identity: Option<PathBuf>,
    /// The known_hosts file, absolute.
    pub known_hosts: Option<PathBuf>,
}

/// A manifest that cannot be used, and where: the file, the key (such as
/// `users[1].name`) and its line and column.
#[derive(Debug, thiserror::Error)]
#[error("{}{}", self.location(), .kind)]
pub struct ManifestError {
    /// The manifest file.
    pub path: PathBuf,
    /// The key path, such as `users[1].name`; empty for the file as a whole.
    pub key: String,
    /// 1-based; 0 when the error has no place in the file (it could not be read).
    pub line: usize,
    /// 1-based, in characters; 0 with `line`.
    pub column: usize,
    /// What is wrong.
    pub kind: ManifestErrorKind,
}

impl ManifestError {
    fn location(&self) -> String {
        let mut s = self.path.display().to_string();
        if self.line > 0 {
            let _ = write!(s, ":{}:{}", self.line, self.column);
        }
        if !self.key.is_empty() {
            let _ = write!(s, ": {}", self.key);
        }
        s + ": "
    }
}

/// What is wrong with a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestErrorKind {
    /// The file could not be read.
    #[error("cannot read the manifest: {0}")]
    Read(std::io::Error),
    /// The file is not valid TOML.
    #[error("{0}: fix the TOML syntax")]
    Syntax(String),
    /// A key the manifest does not have (misspelt, or in the wrong table).
    #[error("{0}: fix or remove it (see docs/manifest.md)")]
    UnknownKey(String),
    /// A required key is missing.
    #[error("this key is required: add it")]
    MissingKey,
    /// A value of the wrong TOML type.
    #[error("{0}: fix the value")]
    WrongType(String),
    /// A file or directory the manifest refers to is missing or of the wrong kind.
    #[error("{}: {reason}", path.display())]
    MissingFile {
        /// The absolute path looked for.
        path: PathBuf,
        /// What is wrong with it, with the fix.
        reason: String,
    },
    /// Keys of which exactly one must be set: none or several are.
    #[error("set exactly one of {}", keys.join(", "))]
    ExactlyOne {
        /// The key paths.
        keys: Vec<String>,
    },
    /// A value that breaks a rule (a name, a range, a format); the message says which.
    #[error("{0}")]
    Invalid(String),
}

impl Manifest {
    /// `./osbuild.toml`, where commands look when given no manifest.
    pub fn default_path() -> PathBuf {
        PathBuf::from("osbuild.toml")
    }

    /// Read and check the manifest at `path`; `SOURCE_DATE_EPOCH` is read now.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            path: path.to_path_buf(),
            key: String::new(),
            line: 0,
            column: 0,
            kind: ManifestErrorKind::Read(e),
        })?;
        Self::from_str_at(&text, path)
    }

    /// Check `text` as if it were the manifest at `path` (whose directory relative paths
    /// start from); `SOURCE_DATE_EPOCH` is read now.
    pub fn from_str_at(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let epoch = std::env::var("SOURCE_DATE_EPOCH").ok();
        parse(text, path, epoch.as_deref())
    }

    /// The manifest file, absolute.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The operating system's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The image's host name, if the manifest sets one.
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    /// The ref commits go to, rendered and checked.
    pub fn ostree_ref(&self) -> &str {
        &self.ostree_ref
    }

    /// The commit version, `{date}` rendered from SOURCE_DATE_EPOCH when it was set at
    /// load, else from `now`; `None` when the manifest sets no version.
    pub fn render_version(&self, now: SystemTime) -> Option<String> {
        let secs = self
            .source_date_epoch
            .unwrap_or_else(|| match now.duration_since(UNIX_EPOCH) {
                Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
            });
        let template = self.version.as_deref()?;
        // The template was checked at load.
        check::render(template, &["date"], |_| Ok(check::utc_date(secs))).ok()
    }

    /// What the tree is built from; a Debian base holds the kernel package and the
    /// packages. Ready for [`crate::Bootstrap`].
    pub fn base(&self) -> &Base {
        &self.base
    }

    /// Extra APT repositories for a Debian base (none for other bases).
    pub fn repositories(&self) -> &[AptRepository] {
        match &self.base {
            Base::Debian(d) => &d.repositories,
            Base::Tarball(_) | Base::Directory(_) | Base::Image(_) => &[],
        }
    }

    /// Directories copied over the tree, absolute, in order.
    pub fn overlays(&self) -> &[PathBuf] {
        &self.overlays
    }

    /// Files written into the tree, in order.
    pub fn files(&self) -> &[ImageFile] {
        &self.files
    }

    /// Login users.
    pub fn users(&self) -> &[User] {
        &self.users
    }

    /// Units to enable and disable.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// Arguments added to every image's kernel command line.
    pub fn kernel_args(&self) -> &[String] {
        &self.kernel_args
    }

    /// Scripts run in the tree.
    pub fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// The remote devices upgrade from, if set.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// make-image's settings from `[image]`.
    pub fn image(&self) -> &ImageSettings {
        &self.image
    }

    /// Where `osbuild push` sends commits, if set.
    pub fn push(&self) -> Option<&PushTarget> {
        self.push.as_ref()
    }

    /// The SHA-256 of the manifest file, recorded in commits built from it.
    pub fn digest(&self) -> anyhow::Result<String> {
        use anyhow::Context;
        use sha2::Digest;
        let bytes = std::fs::read(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(osbuild_core::hex(sha2::Sha256::digest(&bytes)))
    }

    /// How commits are signed, if they are.
    pub fn sign(&self) -> Option<&Sign> {
        self.sign.as_ref()
    }
}
