//! GRUB's environment block (`/boot/grub/grubenv`): 1024 bytes of `name=value` lines
//! after a header, padded with `#`. GRUB's `save_env` rewrites it in place, so it must
//! exist at its full size before GRUB first writes to it.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const HEADER: &str = "# GRUB Environment Block\n";
const SIZE: usize = 1024;

/// Where the block lives in a sysroot.
pub(crate) fn path(sysroot: &Path) -> PathBuf {
    sysroot.join("boot/grub/grubenv")
}

/// The variables of the block at `path`; none when it does not exist.
pub(crate) fn read(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// The block holding `vars`, exactly [`SIZE`] bytes.
pub(crate) fn encode(vars: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut text = HEADER.to_string();
    for (k, v) in vars {
        anyhow::ensure!(
            !k.contains(['=', '\n']) && !v.contains('\n'),
            "GRUB environment variable {k:?}={v:?} cannot be stored"
        );
        text.push_str(&format!("{k}={v}\n"));
    }
    anyhow::ensure!(
        text.len() <= SIZE,
        "GRUB's environment block is full ({} bytes)",
        text.len()
    );
    let mut block = text.into_bytes();
    block.resize(SIZE, b'#');
    Ok(block)
}

/// Replace the block at `path` with one holding `vars` (durably; see crate::durable).
pub(crate) fn write(path: &Path, vars: &BTreeMap<String, String>) -> Result<()> {
    let block = encode(vars)?;
    crate::durable::replace(path, |f| f.write_all(&block))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_1024_bytes_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("grubenv");
        assert!(read(&p).unwrap().is_empty());
        let vars = BTreeMap::from([
            ("osbuild_tries".to_string(), "3".to_string()),
            ("osbuild_trying".to_string(), "abc.0".to_string()),
        ]);
        write(&p, &vars).unwrap();
        let bytes = fs::read(&p).unwrap();
        assert_eq!(bytes.len(), SIZE);
        assert!(bytes.starts_with(b"# GRUB Environment Block\nosbuild_tries=3\n"));
        assert_eq!(read(&p).unwrap(), vars);
        let big = BTreeMap::from([("x".to_string(), "y".repeat(2000))]);
        assert!(encode(&big).is_err());
    }
}
