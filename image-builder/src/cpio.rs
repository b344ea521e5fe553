//! A newc ("070701") cpio writer: the format the kernel unpacks an initramfs from. Archives
//! concatenated after the tree's own initramfs are unpacked over it, so a small archive
//! written here adds files to any initramfs without rebuilding it.
//!
//! Entries are written in the order given; every parent directory must come before what
//! it holds (the kernel creates no missing parents). Times are 0, owners root, so the same
//! input gives the same bytes.

use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A directory (`mode` without the type bits).
    Dir { path: String, mode: u32 },
    /// A regular file.
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    /// A symbolic link to `target`.
    Symlink { path: String, target: String },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const TRAILER: &str = "TRAILER!!!";

impl Entry {
    pub(crate) fn dir(path: &str) -> Entry {
        Entry::Dir {
            path: path.to_string(),
            mode: 0o755,
        }
    }

    pub(crate) fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.to_string(),
            mode,
            data: data.into(),
        }
    }

    pub(crate) fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.to_string(),
            target: target.to_string(),
        }
    }

    pub(crate) fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path
            }
        }
    }
}

/// Write `entries` and the trailer as one newc archive.
pub(crate) fn write(out: &mut impl Write, entries: &[Entry]) -> io::Result<()> {
    let mut written = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        let (mode, nlink, data): (u32, u32, &[u8]) = match e {
            Entry::Dir { mode, .. } => (S_IFDIR | mode, 2, &[]),
            Entry::File { mode, data, .. } => (S_IFREG | mode, 1, data),
            Entry::Symlink { target, .. } => (S_IFLNK | 0o777, 1, target.as_bytes()),
        };
        written += member(out, written, ino, mode, nlink, e.path(), data)?;
    }
    member(out, written, 0, 0, 1, TRAILER, &[])?;
    Ok(())
}

/// One header, name and data, each padded to 4 bytes; returns the bytes written.
fn member(
    out: &mut impl Write,
    offset: u64,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
) -> io::Result<u64> {
    let name = name.trim_start_matches('/');
    let namesize = name.len() + 1;
    let mut header = String::from("070701");
    for field in [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        0, // rdevmajor
        0, // rdevminor
        namesize as u32,
        0, // check
    ] {
        header.push_str(&format!("{field:08x}"));
    }
    let mut n = offset;
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    n += (header.len() + namesize) as u64;
    n += pad(out, n)?;
    out.write_all(data)?;
    n += data.len() as u64;
    n += pad(out, n)?;
    Ok(n - offset)
}

fn pad(out: &mut impl Write, at: u64) -> io::Result<u64> {
    let padding = (4 - at % 4) % 4;
    out.write_all(&[0u8; 3][..padding as usize])?;
    Ok(padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn archive(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, entries).unwrap();
        out
    }

    #[test]
    fn layout_is_newc() {
        let bytes = archive(&[Entry::file("a", 0o644, b"xyz".to_vec())]);
        // Header 110 bytes + "a\0" = 112 (aligned), data 3 + 1 padding.
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(&bytes[110..112], b"a\0");
        assert_eq!(&bytes[112..115], b"xyz");
        assert_eq!(bytes[115], 0);
        assert_eq!(&bytes[116..122], b"070701");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(bytes.len() % 4, 0);
        // Mode field: a regular file, 0644.
        assert_eq!(&bytes[14..22], b"000081a4");
    }

    #[test]
    fn cpio_reads_it_back() {
        if !std::path::Path::new("/usr/bin/cpio").exists() {
            eprintln!("skipped: /usr/bin/cpio is missing (install cpio)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.cpio");
        let entries = [
            Entry::dir("etc"),
            Entry::dir("etc/x"),
            Entry::file("etc/x/script.sh", 0o755, b"#!/bin/sh\necho hi\n".to_vec()),
            Entry::file("etc/x/odd", 0o600, b"12345".to_vec()),
            Entry::symlink("etc/x/link", "script.sh"),
        ];
        std::fs::write(&img, archive(&entries)).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        osbuild_core::cmd::run(
            Command::new("sh")
                .arg("-c")
                .arg(format!("cpio -id --quiet < {}", img.display()))
                .current_dir(&out),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("etc/x/script.sh")).unwrap(),
            "#!/bin/sh\necho hi\n"
        );
        assert_eq!(std::fs::read(out.join("etc/x/odd")).unwrap(), b"12345");
        assert_eq!(
            std::fs::read_link(out.join("etc/x/link")).unwrap(),
            std::path::Path::new("script.sh")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("etc/x/script.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
