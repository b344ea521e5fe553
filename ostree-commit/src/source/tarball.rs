//! A base unpacked from a tar archive (plain, gzip, xz or zstd), e.g. a rootfs exported
//! from a container or made by another builder.

use super::Source;
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A root filesystem in a tar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tarball {
    /// The archive.
    pub path: PathBuf,
}

/// How an archive is compressed, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    fn detect(head: &[u8]) -> Self {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// tar's flag for the decompressor.
    fn tar_flag(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("--gzip"),
            Compression::Xz => Some("--xz"),
            Compression::Zstd => Some("--zstd"),
        }
    }
}

impl Tarball {
    /// The first bytes of the archive: enough for the compression magic and, for a plain
    /// archive, the `ustar` magic of its first header.
    fn head(&self) -> Result<Vec<u8>> {
        let mut head = Vec::with_capacity(512);
        std::fs::File::open(&self.path)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .with_context(|| format!("reading tarball {}", self.path.display()))?;
        Ok(head)
    }
}

impl Source for Tarball {
    fn describe(&self) -> String {
        format!("tarball {}", self.path.display())
    }

    fn check(&self) -> Result<()> {
        if !self.path.is_file() {
            anyhow::bail!(
                "tarball {} does not exist or is not a file",
                self.path.display()
            );
        }
        let head = self.head()?;
        if Compression::detect(&head) == Compression::None
            && head.get(257..262) != Some(b"ustar".as_slice())
        {
            anyhow::bail!(
                "{} is not a tar archive (nor gzip, xz or zstd): give a rootfs tarball",
                self.path.display()
            );
        }
        Ok(())
    }

    fn build(&self, dir: &Path, _packages: Option<&Path>) -> Result<super::Built> {
        let compression = Compression::detect(&self.head()?);
        let mut tar = Command::new("tar");
        tar.arg("--extract")
            .arg("--numeric-owner")
            .arg("--preserve-permissions")
            .args(["--xattrs", "--xattrs-include=*"])
            .args(compression.tar_flag())
            .arg("--file")
            .arg(&self.path)
            .arg("--directory")
            .arg(dir);
        cmd::run(&mut tar).with_context(|| {
            format!(
                "unpacking {} (is it a tar archive of a root filesystem?)",
                self.path.display()
            )
        })?;
        Ok(super::Built::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(dir: &Path) -> PathBuf {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::write(root.join("usr/lib/os-release"), "ID=test\n").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        root
    }

    #[test]
    fn unpacks_every_compression() {
        let dir = tempfile::tempdir().unwrap();
        let root = tree(dir.path());
        for (name, flag) in [
            ("plain.tar", None),
            ("gz.tar.gz", Some("--gzip")),
            ("xz.tar.xz", Some("--xz")),
            ("zst.tar.zst", Some("--zstd")),
        ] {
            let archive = dir.path().join(name);
            let mut create = Command::new("tar");
            create
                .arg("--create")
                .args(flag)
                .arg("--file")
                .arg(&archive)
                .arg("--directory")
                .arg(&root)
                .arg(".");
            cmd::run(&mut create).unwrap();
            let source = Tarball { path: archive };
            source.check().unwrap();
            let out = dir.path().join(format!("out-{name}"));
            std::fs::create_dir(&out).unwrap();
            source.build(&out, None).unwrap();
            assert_eq!(
                std::fs::read_to_string(out.join("usr/lib/os-release")).unwrap(),
                "ID=test\n",
                "{name}"
            );
            assert_eq!(
                std::fs::read_link(out.join("lib")).unwrap(),
                Path::new("usr/lib")
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_tar() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello, not a tarball\n".repeat(40)).unwrap();
        let err = Tarball { path: text.clone() }
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a tar archive"), "{err}");
        assert!(err.contains(&text.display().to_string()), "{err}");
        let missing = dir.path().join("missing.tar");
        let err = Tarball { path: missing }.check().unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
