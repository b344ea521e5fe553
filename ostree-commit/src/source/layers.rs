//! Applying a container image's layers, in order, to a directory: the OCI image spec's
//! changeset rules. A layer is a tar archive (plain, gzip or zstd, told by its first
//! bytes); `.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq` empties its
//! directory of what the layers below put there; hard links point at paths in the tree;
//! device nodes and FIFOs, which an OSTree commit cannot hold, are skipped and counted.

use anyhow::{bail, Context, Result};
use osbuild_core::fsutil::remove_all;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// The marker of an opaque directory.
const OPAQUE: &str = ".wh..wh..opq";
/// The prefix of a whiteout file.
const WHITEOUT: &str = ".wh.";

/// What applying one layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Entries written.
    pub(crate) entries: u64,
    /// Paths deleted by whiteouts (opaque directories count each child removed).
    pub(crate) removed: u64,
    /// Device nodes and FIFOs left out, by path.
    pub(crate) skipped: Vec<String>,
}

/// How a layer blob is compressed, told by its first bytes (media types lie: a
/// containers-storage image says `tar` for what it hands out, a registry `tar+gzip`).
fn decompressed<'a>(blob: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut blob = BufReader::with_capacity(256 * 1024, blob);
    let head = blob.fill_buf().context("reading the layer")?;
    Ok(match head {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(
            ruzstd::decoding::StreamingDecoder::new(blob)
                .map_err(|e| anyhow::anyhow!("the layer is not valid zstd: {e}"))?,
        ),
        _ => Box::new(blob),
    })
}

/// A path inside the tree from a tar entry's name: relative, without `.` or `..`.
fn inside(name: &Path) -> Result<PathBuf> {
    let mut path = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => path.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("entry {} leaves the root filesystem", name.display())
            }
        }
    }
    Ok(path)
}

/// Directory `rel` of the tree, resolved, when it exists and symlinks on the way keep
/// it inside `root`: a whiteout must never delete through a link to the build host.
fn within(root: &Path, rel: &Path) -> Result<Option<PathBuf>> {
    let Ok(dir) = root.join(rel).canonicalize() else {
        return Ok(None);
    };
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {}", root.display()))?;
    Ok(dir.starts_with(&root).then_some(dir))
}

/// Apply one layer (`blob`, compressed or not) over `root`.
pub(crate) fn apply(root: &Path, blob: impl Read) -> Result<Applied> {
    let mut archive = tar::Archive::new(decompressed(blob)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut applied = Applied::default();
    // What this layer wrote: an opaque marker hides only what the layers below put there.
    let mut written: HashSet<PathBuf> = HashSet::new();
    let not_tar = "the layer is not a valid tar archive";
    for entry in archive.entries().context(not_tar)? {
        let mut entry = entry.context(not_tar)?;
        let raw = entry
            .path()
            .context("reading an entry's name")?
            .into_owned();
        let path = inside(&raw)?;
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue; // the root itself
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == OPAQUE {
            let Some(dir) = within(root, parent)? else {
                continue;
            };
            for child in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let rel = parent.join(child.file_name());
                if !written.contains(&rel) {
                    remove_all(&child.path())?;
                    applied.removed += 1;
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let Some(dir) = within(root, parent)? else {
                continue;
            };
            let target = dir.join(hidden);
            if target.symlink_metadata().is_ok() {
                remove_all(&target)?;
                applied.removed += 1;
            }
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            applied.skipped.push(format!("/{}", path.display()));
            continue;
        }
        let dest = root.join(&path);
        // A path of a lower layer is replaced, never written through: a regular file may
        // be hard-linked elsewhere in the tree, and a directory only merges with a
        // directory.
        if let Ok(old) = dest.symlink_metadata() {
            if !(old.is_dir() && kind.is_dir()) {
                remove_all(&dest)?;
            }
        }
        let unpacked = entry
            .unpack_in(root)
            .with_context(|| format!("writing /{}", path.display()))?;
        if !unpacked {
            bail!("entry {} leaves the root filesystem", raw.display());
        }
        written.insert(path);
        applied.entries += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// A synthetic layer, built entry by entry.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Layer(tar::Builder::new(Vec::new()))
        }

        fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h
        }

        fn dir(mut self, path: &str) -> Self {
            let mut h = Self::header(tar::EntryType::Directory, 0o755);
            h.set_size(0);
            self.0.append_data(&mut h, path, std::io::empty()).unwrap();
            self
        }

        fn file(mut self, path: &str, content: &str) -> Self {
            self = self.file_owned(path, content, 0o644, 0);
            self
        }

        fn file_owned(mut self, path: &str, content: &str, mode: u32, uid: u64) -> Self {
            let mut h = Self::header(tar::EntryType::Regular, mode);
            h.set_uid(uid);
            h.set_size(content.len() as u64);
            self.0
                .append_data(&mut h, path, content.as_bytes())
                .unwrap();
            self
        }

        fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
            let mut h = Self::header(kind, 0o777);
            h.set_size(0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        fn device(mut self, kind: tar::EntryType, path: &str) -> Self {
            let mut h = Self::header(kind, 0o600);
            h.set_size(0);
            self.0.append_data(&mut h, path, std::io::empty()).unwrap();
            self
        }

        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn read(root: &Path, path: &str) -> Option<String> {
        fs::read_to_string(root.join(path)).ok()
    }

    fn exists(root: &Path, path: &str) -> bool {
        root.join(path).symlink_metadata().is_ok()
    }

    fn base(root: &Path) {
        let layer = Layer::new()
            .dir("etc")
            .file("etc/keep", "keep\n")
            .file("etc/gone", "gone\n")
            .dir("etc/gone.d")
            .file("etc/gone.d/a", "a\n")
            .dir("opt/app")
            .file("opt/app/old", "old\n")
            .dir("opt/app/sub")
            .file("opt/app/sub/deep", "deep\n")
            .file("usr/bin/tool", "v1\n")
            .link(tar::EntryType::Link, "usr/bin/tool-alias", "usr/bin/tool")
            .link(tar::EntryType::Symlink, "bin", "usr/bin")
            .bytes();
        let applied = apply(root, layer.as_slice()).unwrap();
        assert_eq!(applied.removed, 0);
        assert!(applied.skipped.is_empty());
    }

    #[test]
    fn a_whiteout_deletes_a_file_or_a_directory_of_the_layers_below() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        base(root);
        let layer = Layer::new()
            .file("etc/.wh.gone", "")
            .file("etc/.wh.gone.d", "")
            .file("etc/.wh.never-there", "")
            .bytes();
        let applied = apply(root, layer.as_slice()).unwrap();
        assert_eq!(applied.removed, 2);
        assert!(!exists(root, "etc/gone") && !exists(root, "etc/gone.d"));
        assert!(!exists(root, "etc/.wh.gone"), "markers are never written");
        assert_eq!(read(root, "etc/keep").as_deref(), Some("keep\n"));
    }

    #[test]
    fn an_opaque_directory_hides_only_what_lower_layers_put_there() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        base(root);
        // The marker may come before or after this layer's own entries in the directory.
        let layer = Layer::new()
            .dir("opt/app")
            .file("opt/app/before", "before\n")
            .file("opt/app/.wh..wh..opq", "")
            .file("opt/app/after", "after\n")
            .bytes();
        apply(root, layer.as_slice()).unwrap();
        let mut left: Vec<_> = fs::read_dir(root.join("opt/app"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["after", "before"]);
    }

    #[test]
    fn replacing_a_hard_linked_file_leaves_its_other_name_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        base(root);
        let (a, b) = (root.join("usr/bin/tool"), root.join("usr/bin/tool-alias"));
        assert_eq!(a.metadata().unwrap().ino(), b.metadata().unwrap().ino());
        let layer = Layer::new().file("usr/bin/tool", "v2\n").bytes();
        apply(root, layer.as_slice()).unwrap();
        assert_eq!(read(root, "usr/bin/tool").as_deref(), Some("v2\n"));
        assert_eq!(read(root, "usr/bin/tool-alias").as_deref(), Some("v1\n"));
    }

    #[test]
    fn a_path_changes_kind_across_layers() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        base(root);
        // A directory becomes a file, a file a directory, a symlink a directory.
        let layer = Layer::new()
            .file("opt/app/sub", "now a file\n")
            .dir("etc/keep")
            .file("etc/keep/inside", "x\n")
            .dir("bin")
            .bytes();
        apply(root, layer.as_slice()).unwrap();
        assert_eq!(read(root, "opt/app/sub").as_deref(), Some("now a file\n"));
        assert_eq!(read(root, "etc/keep/inside").as_deref(), Some("x\n"));
        let bin = root.join("bin").symlink_metadata().unwrap();
        assert!(bin.is_dir());
        // The old symlink's target is untouched.
        assert_eq!(read(root, "usr/bin/tool").as_deref(), Some("v1\n"));
    }

    #[test]
    fn modes_owners_and_symlinks_are_kept_and_devices_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let layer = Layer::new()
            .file_owned("usr/bin/su", "su\n", 0o4755, 0)
            .file_owned("home/user/.profile", "p\n", 0o600, 1000)
            .link(
                tar::EntryType::Symlink,
                "etc/localtime",
                "/usr/share/zoneinfo/UTC",
            )
            .device(tar::EntryType::Char, "dev/null")
            .device(tar::EntryType::Fifo, "run/initctl")
            .bytes();
        let applied = apply(root, layer.as_slice()).unwrap();
        assert_eq!(applied.skipped, ["/dev/null", "/run/initctl"]);
        let su = root.join("usr/bin/su").metadata().unwrap();
        assert_eq!(su.permissions().mode() & 0o7777, 0o4755);
        let profile = root.join("home/user/.profile").metadata().unwrap();
        assert_eq!((profile.uid(), profile.mode() & 0o777), (1000, 0o600));
        assert_eq!(
            fs::read_link(root.join("etc/localtime")).unwrap(),
            Path::new("/usr/share/zoneinfo/UTC")
        );
    }

    #[test]
    fn compressed_layers_are_recognised_by_their_first_bytes() {
        let layer = Layer::new().file("etc/motd", "hello\n").bytes();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &layer).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            layer.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        for (what, blob) in [("plain", layer.clone()), ("gzip", gz), ("zstd", zst)] {
            let dir = tempfile::tempdir().unwrap();
            apply(dir.path(), blob.as_slice()).unwrap();
            assert_eq!(
                read(dir.path(), "etc/motd").as_deref(),
                Some("hello\n"),
                "{what}"
            );
        }
    }

    #[test]
    fn bad_layers_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = b"this is not a tar archive at all".repeat(40);
        let err = format!("{:#}", apply(dir.path(), garbage.as_slice()).unwrap_err());
        assert!(err.contains("tar"), "{err}");
        // A name climbing out of the root is refused (built by hand: tar::Builder refuses).
        let mut h = Layer::header(tar::EntryType::Regular, 0o644);
        h.as_old_mut().name[..13].copy_from_slice(b"../escape.txt");
        h.set_size(0);
        h.set_cksum();
        let mut evil = h.as_bytes().to_vec();
        evil.extend([0u8; 1024]);
        let err = format!("{:#}", apply(dir.path(), evil.as_slice()).unwrap_err());
        assert!(err.contains("leaves the root filesystem"), "{err}");
        assert!(!dir.path().parent().unwrap().join("escape.txt").exists());
    }
}
