//! Health checks: executables in `/usr/lib/osbuild/health.d/` (shipped in the OS) and
//! `/etc/osbuild/health.d/` (added on the device; a file there replaces one of the same
//! name in /usr/lib, and an empty or non-executable one disables it), run in name order.
//! All must exit 0 before a boot counts as good.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The directories, lowest precedence first, relative to the root.
pub const DIRS: [&str; 2] = ["usr/lib/osbuild/health.d", "etc/osbuild/health.d"];
/// How long one check may run.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Check {
    /// Its path.
    pub path: PathBuf,
    /// Passed (exit 0 within the time limit).
    pub passed: bool,
    /// Why it failed, with the end of its output.
    pub detail: String,
}

/// The checks under `root` (`/` on a device), in name order.
pub fn checks(root: &Path) -> Result<Vec<PathBuf>> {
    let mut by_name = BTreeMap::new();
    for dir in DIRS {
        let dir = root.join(dir);
        let items = match std::fs::read_dir(&dir) {
            Ok(items) => items,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        for item in items {
            let item = item.with_context(|| format!("reading {}", dir.display()))?;
            by_name.insert(item.file_name(), item.path());
        }
    }
    let mut out = Vec::new();
    for path in by_name.into_values() {
        let meta =
            std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_file() && meta.len() > 0 && meta.permissions().mode() & 0o111 != 0 {
            out.push(path);
        }
    }
    Ok(out)
}

/// Run every check under `root`; each gets [`TIMEOUT`].
pub fn run(root: &Path) -> Result<Vec<Check>> {
    checks(root)?
        .into_iter()
        .map(|path| run_one(&path, TIMEOUT))
        .collect()
}

fn run_one(path: &Path, limit: Duration) -> Result<Check> {
    let out = tempfile::tempfile().context("creating a file for a check's output")?;
    let mut child = Command::new(path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().context("sharing a check's output file")?)
        .stderr(out.try_clone().context("sharing a check's output file")?)
        .spawn()
        .with_context(|| format!("starting health check {}", path.display()))?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for a health check")? {
            break Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = tail(out);
    let (passed, detail) = match status {
        Some(s) if s.success() => (true, String::new()),
        Some(s) => (false, format!("{s}: {output}")),
        None => (
            false,
            format!("timed out after {}s: {output}", limit.as_secs()),
        ),
    };
    Ok(Check {
        path: path.to_path_buf(),
        passed,
        detail,
    })
}

/// The last lines a check printed.
fn tail(mut f: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = f.rewind();
    let _ = f.read_to_string(&mut text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) {
        fs::create_dir_all(dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn etc_overrides_usr_and_failures_say_why() {
        let root = tempfile::tempdir().unwrap();
        let usr = root.path().join(DIRS[0]);
        let etc = root.path().join(DIRS[1]);
        script(&usr, "10-ok", "#!/bin/sh\nexit 0\n", 0o755);
        script(&usr, "20-disabled-on-device", "#!/bin/sh\nexit 1\n", 0o755);
        script(&etc, "20-disabled-on-device", "", 0o644);
        script(
            &etc,
            "30-fails",
            "#!/bin/sh\necho the disk is gone\nexit 3\n",
            0o755,
        );
        script(&usr, "40-not-executable", "#!/bin/sh\nexit 1\n", 0o644);
        let names: Vec<String> = checks(root.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-ok", "30-fails"]);
        let results = run(root.path()).unwrap();
        assert!(results[0].passed);
        assert!(!results[1].passed);
        assert!(
            results[1].detail.contains("the disk is gone"),
            "{:?}",
            results[1]
        );
        assert!(results[1].detail.contains("3"), "{:?}", results[1]);
    }

    #[test]
    fn a_hanging_check_fails() {
        let root = tempfile::tempdir().unwrap();
        script(root.path(), "hang", "#!/bin/sh\nsleep 30\n", 0o755);
        let r = run_one(&root.path().join("hang"), Duration::from_millis(300)).unwrap();
        assert!(!r.passed && r.detail.contains("timed out"), "{r:?}");
    }
}
