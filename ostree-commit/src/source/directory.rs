//! A base copied from a directory that already holds a root filesystem.

use super::Source;
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A root filesystem in a directory, copied (never changed in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// The directory.
    pub path: PathBuf,
}

impl Source for Directory {
    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }

    fn check(&self) -> Result<()> {
        if !self.path.is_dir() {
            anyhow::bail!("base directory {} does not exist", self.path.display());
        }
        Ok(())
    }

    fn build(&self, dir: &Path, _packages: Option<&Path>) -> Result<super::Built> {
        // cp keeps modes, links, hard links, ownership and xattrs exactly, which a
        // hand-written walk would have to reimplement.
        let mut src = self.path.as_os_str().to_owned();
        src.push("/.");
        cmd::run(Command::new("cp").arg("-a").arg(src).arg(dir))
            .with_context(|| format!("copying base directory {}", self.path.display()))?;
        Ok(super::Built::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_without_touching_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(base.join("etc")).unwrap();
        std::fs::write(base.join("etc/hostname"), "base\n").unwrap();
        let source = Directory { path: base.clone() };
        source.check().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        source.build(&out, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("etc/hostname")).unwrap(),
            "base\n"
        );
        std::fs::write(out.join("etc/hostname"), "changed\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(base.join("etc/hostname")).unwrap(),
            "base\n"
        );
        let err = Directory {
            path: dir.path().join("nope"),
        }
        .check()
        .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
