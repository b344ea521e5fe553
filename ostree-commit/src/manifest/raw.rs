//! The manifest as written: one serde struct per TOML table, each declared through
//! `section!` so that its keys, their doc comments, types and defaults also form the
//! reference in docs/manifest.md (see `docs.rs`). Values that a later check may reject
//! are [`Spanned`], so that the error can point at them.

use super::flags::{FlagAction, FlagScope};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use toml::Spanned;

/// One key of a table, as the reference lists it.
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) name: &'static str,
    // The type and default are only for the reference, which tests generate.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) ty: &'static str,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) default: &'static str,
    pub(crate) doc: &'static [&'static str],
    /// The command-line flag that overrides the key, if any.
    pub(crate) flag: Option<FlagDecl>,
}

/// A flag as a key declares it: `flag Tree "suite" "SUITE" Set`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlagDecl {
    pub(crate) scope: FlagScope,
    pub(crate) name: &'static str,
    pub(crate) value_name: &'static str,
    pub(crate) action: FlagAction,
}

/// One table of the manifest, as the reference lists it.
#[derive(Debug)]
pub(crate) struct Section {
    pub(crate) table: &'static str,
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) doc: &'static [&'static str],
    pub(crate) keys: &'static [Key],
}

impl Section {
    /// What a key of this table is called in errors: `base.` for `[base]`, nothing at the
    /// top level.
    pub(crate) fn key_prefix(&self) -> String {
        let name = self.table.trim_matches(|c| c == '[' || c == ']');
        if self.table.starts_with('[') {
            format!("{name}.")
        } else {
            String::new()
        }
    }
}

/// Declares a table's struct and its [`Section`] (for the reference in docs/manifest.md
/// and the flags that override keys): each field is `/// doc` lines, then
/// `name: RustType, "type in the docs", "default in the docs";`, with
/// `, flag SCOPE "flag" "VALUE" ACTION` before the `;` when a flag overrides the key.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        $table:literal struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty, $tyname:literal, $default:literal
                    $(, flag $scope:ident $flag:literal $value:literal $action:ident)?;
            )*
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            $( $(#[doc = $doc])* pub(crate) $field: $ty, )*
        }

        impl $name {
            pub(crate) const SECTION: Section = Section {
                table: $table,
                doc: &[$($sdoc),*],
                keys: &[$(Key {
                    name: stringify!($field),
                    ty: $tyname,
                    default: $default,
                    doc: &[$($doc),*],
                    flag: section!(@flag $($scope $flag $value $action)?),
                }),*],
            };
        }
    };
    (@flag) => { None };
    (@flag $scope:ident $flag:literal $value:literal $action:ident) => {
        Some(FlagDecl {
            scope: FlagScope::$scope,
            name: $flag,
            value_name: $value,
            action: FlagAction::$action,
        })
    };
}

type Str = Spanned<String>;
type List = Option<Vec<Str>>;

section! {
    /// The keys at the top of the file, before any table.
    "top level" struct RawManifest {
        /// The operating system's name: one ref segment (letters, digits, `-`, `.`, `_`).
        name: Str, "string", "required";
        /// The commit's version, shown by `ostree admin status`. `{date}` becomes the build
        /// time in UTC as `YYYYMMDD.HHMM`, taken from `SOURCE_DATE_EPOCH` when it is set.
        version: Option<Str>, "string", "none: commits carry no version", flag Commit "version" "VERSION" Set;
        /// The image's host name (RFC 1123: letters, digits and `-`, dot-separated labels).
        hostname: Option<Str>, "string", "`localhost` on a Debian base (never the build host's name); a tarball's or directory's own; `osbuild` without a manifest", flag Tree "hostname" "HOSTNAME" Set;
        /// The branch commits go to. `{name}`, `{suite}` (the Debian suite) and `{arch}`
        /// (`x86_64`) are replaced; a tarball or directory base has no suite, so its
        /// manifest must set a `ref` without `{suite}`. The result must be a valid ostree
        /// ref: segments of letters, digits, `-`, `.`, `_` separated by `/`.
        r#ref: Option<Str>, "string", "`\"{name}/{suite}/{arch}\"`", flag Commit "branch" "REF" Set;
        /// What the tree is built from: see `[base]`.
        base: Option<Spanned<RawBase>>, "table", "required";
        /// Debian packages installed into a distro base, by name, besides the kernel and
        /// the packages every bootable tree gets. A tarball or directory base brings its
        /// own system: packages are an error there.
        packages: List, "list of strings", "`[]`", flag Tree "package" "PACKAGE" AddList;
        /// Directories copied over the tree in order with their modes and owners,
        /// `OVERLAY/etc/x` becoming `/etc/x` (the manifest's beside it, then `--overlay`'s
        /// from the current directory).
        overlays: List, "list of paths", "`[]`", flag Tree "overlay" "DIR" Add;
        /// Single files written into the tree: see `[[files]]`.
        files: Option<Vec<Spanned<RawFile>>>, "array of tables", "`[]`";
        /// Login users: see `[[users]]`.
        users: Option<Vec<Spanned<RawUser>>>, "array of tables", "`[]`";
        /// systemd units to enable or disable: see `[services]`.
        services: Option<Spanned<RawServices>>, "table", "nothing changed";
        /// The kernel: see `[kernel]`.
        kernel: Option<RawKernel>, "table", "see `[kernel]`";
        /// Scripts run in the tree: see `[scripts]`.
        scripts: Option<RawScripts>, "table", "no scripts";
        /// Where devices upgrade from: see `[remote]`.
        remote: Option<Spanned<RawRemote>>, "table", "no remote configured";
        /// Where `osbuild push` sends commits: see `[push]`.
        push: Option<Spanned<RawPush>>, "table", "no destination";
        /// How commits and the summary are signed: see `[sign]`.
        sign: Option<Spanned<RawSign>>, "table", "commits are not signed";
        /// How `osbuild make-image` makes disk images of this OS: see `[image]`.
        image: Option<RawImage>, "table", "make-image's defaults";
    }
}

section! {
    /// What the tree is built from: exactly one of `distro`, `tarball`, `directory` or
    /// `image`.
    /// `suite`, `mirror`, `components` and `repositories` (and the top-level `packages`
    /// and `[kernel] package`) apply to a distro only.
    "[base]" struct RawBase {
        /// Bootstrap a distribution with mmdebstrap. Only `"debian"` is supported.
        distro: Option<Str>, "string", "none";
        /// The Debian suite (codename), e.g. `bookworm` or `trixie`.
        suite: Option<Str>, "string", "`\"bookworm\"`", flag Tree "suite" "SUITE" Set;
        /// The Debian mirror: an `http://`, `https://` or `file:/` URL.
        mirror: Option<Str>, "string", "mmdebstrap's (`http://deb.debian.org/debian`)", flag Tree "mirror" "URL" Set;
        /// The archive components enabled from the mirror.
        components: List, "list of strings", "`[\"main\"]`";
        /// The init system: `systemd`, or `openrc` (OpenRC on sysvinit-core; osbuild's
        /// dracut module mounts the deployment, and its OpenRC services finalize staged
        /// upgrades at shutdown and run the health checks).
        init: Option<Str>, "string", "`\"systemd\"`", flag Tree "init" "INIT" Set;
        /// Extra APT repositories: see `[[base.repositories]]`.
        repositories: Option<Vec<Spanned<RawRepository>>>, "array of tables", "`[]`";
        /// A root filesystem tarball beside the manifest: a tar archive, plain or
        /// compressed with gzip, xz or zstd (told by its first bytes, not its name).
        tarball: Option<Str>, "path", "none";
        /// A root filesystem directory beside the manifest, copied as the base.
        directory: Option<Str>, "path", "none";
        /// A container image as `TRANSPORT:REF`, fetched with skopeo: `containers-storage:`
        /// (what `podman build` made), `docker://` (a registry), `oci:DIR[:TAG]`,
        /// `oci-archive:FILE` or `docker-archive:FILE` (paths beside the manifest). It must
        /// hold a kernel; without `/usr/lib/modules/KVER/initramfs.img`, osbuild builds the
        /// initramfs with the image's dracut and ostree-boot.
        image: Option<Str>, "string", "none", flag Tree "image" "TRANSPORT:REF" Set;
    }
}

section! {
    /// An extra APT repository for a distro base, available while packages are installed.
    "[[base.repositories]]" struct RawRepository {
        /// The APT source: one `deb ...` line, or a deb822 stanza with `Types:`, `URIs:`
        /// and `Suites:` fields.
        sources: Str, "string", "required";
        /// The repository's signing key (binary `.gpg` or armored `.asc`) beside the
        /// manifest.
        keyring: Str, "path", "required";
    }
}

section! {
    /// A file written into the tree. Exactly one of `content` and `source`.
    "[[files]]" struct RawFile {
        /// Where the file goes in the image: an absolute path without `.` or `..`.
        path: Str, "string", "required";
        /// The file's text.
        content: Option<Str>, "string", "none";
        /// A file beside the manifest whose bytes are copied.
        source: Option<Str>, "path", "none";
        /// The permission bits: an octal string such as `"0644"` or a TOML octal integer
        /// such as `0o644` (a decimal integer is refused, as `644` is almost always a
        /// mistake).
        mode: Option<Spanned<RawMode>>, "string or integer", "`\"0644\"`";
        /// `"user:group"` or `"user"` (then the user's login group, as `chown user:`),
        /// names or numeric ids.
        owner: Option<Str>, "string", "`\"root:root\"`";
    }
}

section! {
    /// A login user, created in the image with its home directory under `/var/home`.
    "[[users]]" struct RawUser {
        /// The login name, by Debian's adduser rules: lowercase letters, digits, `_` and
        /// `-`, starting with a letter or `_`, optionally ending in `$`; up to 32 characters.
        name: Str, "string", "required";
        /// The user id, from 1000 to 59999 (Debian's range for regular users).
        uid: Option<Spanned<i64>>, "integer", "the next free id";
        /// Supplementary groups, which must exist in the image.
        groups: List, "list of strings", "`[]`";
        /// The password as a crypt(3) hash (e.g. from `mkpasswd -m yescrypt`).
        password_hash: Option<Str>, "string", "no password: the account is locked";
        /// Lines written to `~/.ssh/authorized_keys`.
        ssh_authorized_keys: List, "list of strings", "`[]`";
        /// The login shell, an absolute path.
        shell: Option<Str>, "string", "`\"/bin/bash\"`";
    }
}

section! {
    /// systemd units switched on or off in the image, by full unit name
    /// (`.service`, `.socket`, `.timer`, `.target`, `.path`, `.mount`, `.automount`,
    /// `.swap` or `.slice`).
    "[services]" struct RawServices {
        /// Units enabled.
        enable: List, "list of strings", "`[]`";
        /// Units disabled.
        disable: List, "list of strings", "`[]`";
    }
}

section! {
    /// The kernel installed into the base and its command line.
    "[kernel]" struct RawKernel {
        /// The Debian kernel package (distro bases only).
        package: Option<Str>, "string", "`\"linux-image-cloud-amd64\"`", flag Tree "kernel" "PACKAGE" Set;
        /// Arguments added to every image's kernel command line, one per entry, without
        /// spaces.
        args: List, "list of strings", "`[]`";
    }
}

section! {
    /// Scripts beside the manifest, run chrooted in the tree by the interpreter their
    /// `#!` line names (which must exist in the tree).
    "[scripts]" struct RawScripts {
        /// Run in order after the tree is assembled, before it is converted and committed.
        post: List, "list of paths", "`[]`";
    }
}

section! {
    /// The ostree remote devices upgrade from, written into the image.
    "[remote]" struct RawRemote {
        /// The repository URL devices pull upgrades from: `http://`, `https://` or
        /// `file://`.
        url: Str, "string", "required", flag Image "remote-url" "URL" Set;
        /// The remote's name in the device's repository config.
        name: Option<Str>, "string", "`\"origin\"`", flag Image "remote-name" "NAME" Set;
        /// The GPG public key (binary or armored) devices verify commits with: make-image
        /// imports it into the device's remote and turns verification on, so unsigned
        /// commits are refused. In the manifest, a path beside it.
        gpg_key: Option<Str>, "path", "none: signatures are not verified", flag Image "gpg-key" "FILE" Set;
    }
}

section! {
    /// How `osbuild commit` signs each commit and the repository's summary
    /// (`summary.sig`), with GPG through libostree (gpgme). Devices verify them with the
    /// public key (`[remote] gpg_key`). Debian 12's libostree has no ed25519 signing.
    "[sign]" struct RawSign {
        /// The GPG keys that sign: key IDs or fingerprints, each with its secret key in
        /// the GPG home.
        gpg_key: Vec<Str>, "list of strings", "required", flag Commit "gpg-sign" "KEYID" Add;
        /// The GPG home holding the secret keys, a directory beside the manifest.
        gpg_homedir: Option<Str>, "path", "`$GNUPGHOME`, else `~/.gnupg`", flag Commit "gpg-homedir" "DIR" Set;
    }
}

section! {
    /// Where `osbuild push` sends commits.
    "[push]" struct RawPush {
        /// `ssh://[USER@]HOST[:PORT]/PATH` or `[USER@]HOST:PATH`.
        destination: Str, "string", "required";
        /// The SSH private key, beside the manifest.
        identity: Option<Str>, "path", "the SSH agent and `~/.ssh` keys";
        /// The known_hosts file, beside the manifest.
        known_hosts: Option<Str>, "path", "`~/.ssh/known_hosts`";
    }
}

section! {
    /// How `osbuild make-image --manifest FILE` makes this OS's disk images. Each key has
    /// a make-image flag, which overrides it.
    "[image]" struct RawImage {
        /// The boot loader: `grub`, `syslinux` or `systemd-boot` (UEFI only).
        bootloader: Option<Str>, "string", "`\"grub\"`", flag Image "bootloader" "BOOTLOADER" Set;
        /// The firmware the image boots under: `hybrid` (BIOS and UEFI), `bios` or `uefi`.
        firmware: Option<Str>, "string", "`\"hybrid\"`", flag Image "firmware" "FIRMWARE" Set;
        /// The partition table: `gpt` or `mbr`.
        partition_table: Option<Str>, "string", "`\"gpt\"`, `\"mbr\"` for syslinux", flag Image "partition-table" "TABLE" Set;
        /// The output's format: `raw`, `qcow2` or `iso` (a live ISO).
        format: Option<Str>, "string", "from the output's extension", flag Image "format" "FORMAT" Set;
        /// The disk size, such as `"4G"`, or `"auto"`: the content plus 1 GiB.
        size: Option<Str>, "string", "`\"auto\"`", flag Image "size" "SIZE" Set;
        /// Boot UEFI through Debian's signed shim and GRUB, for Secure Boot.
        secure_boot: Option<bool>, "boolean", "`false`", flag Image "secure-boot" "" Switch;
        /// The stateroot (`ostree admin os-init`) name.
        os: Option<Str>, "string", "`\"debian\"`", flag Image "os" "NAME" Set;
    }
}

/// Every table, in the order the reference lists them.
pub(crate) const SECTIONS: &[Section] = &[
    RawManifest::SECTION,
    RawBase::SECTION,
    RawRepository::SECTION,
    RawFile::SECTION,
    RawUser::SECTION,
    RawServices::SECTION,
    RawKernel::SECTION,
    RawScripts::SECTION,
    RawRemote::SECTION,
    RawPush::SECTION,
    RawSign::SECTION,
    RawImage::SECTION,
];

/// A file mode as written: an octal string or an integer.
#[derive(Debug)]
pub(crate) enum RawMode {
    Text(String),
    Number(i64),
}

impl<'de> Deserialize<'de> for RawMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = RawMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal string like \"0644\" or an octal integer like 0o644")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMode, E> {
                Ok(RawMode::Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawMode, E> {
                Ok(RawMode::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawMode, E> {
                Ok(RawMode::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }
        }
        d.deserialize_any(ModeVisitor)
    }
}
