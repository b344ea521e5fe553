//! The account files of a tree or a deployment (`etc/passwd`, `etc/group`, `etc/shadow`
//! under a root directory), edited as files: no chroot, no useradd, the same bytes on
//! every run. Used when a manifest adds users to a tree and when make-image provisions a
//! user into a deployment's /etc.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The fields of every line of `file` (e.g. `etc/passwd`) under `root`; a missing file
/// has none.
pub fn entries(root: &Path, file: &str) -> Result<Vec<Vec<String>>> {
    let path = root.join(file);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect())
}

/// Append `line` to `file` under `root`, keeping the file's mode.
pub fn append(root: &Path, file: &str, line: &str) -> Result<()> {
    let path = root.join(file);
    // A file that cannot be read is an error, never an empty file to append to.
    let mut text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if text.last().is_some_and(|&b| b != b'\n') {
        text.push(b'\n');
    }
    text.extend_from_slice(line.as_bytes());
    text.push(b'\n');
    write_keeping_mode(&path, &text)
}

fn write_keeping_mode(path: &Path, text: &[u8]) -> Result<()> {
    let mode = fs::metadata(path).map(|m| m.permissions().mode()).ok();
    let mut f = fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text)
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    Ok(())
}

/// A user to add.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// Login name.
    pub name: &'a str,
    /// The uid (and gid of its own group); the first free one from 1000 when unset.
    pub uid: Option<u32>,
    /// Existing groups it joins.
    pub groups: &'a [String],
    /// Home directory.
    pub home: &'a str,
    /// Login shell.
    pub shell: &'a str,
    /// Password hash for shadow; `!` (no password login) when unset.
    pub password_hash: Option<&'a str>,
}

/// Add `user` and its own group to the account files under `root`. Fails, naming it, when
/// the name, group name or uid is taken, or a group to join does not exist. Returns the
/// uid (also the gid).
pub fn add_user(root: &Path, user: &NewUser<'_>) -> Result<u32> {
    let passwd = entries(root, "etc/passwd")?;
    let groups = entries(root, "etc/group")?;
    if passwd.iter().any(|e| e[0] == user.name) {
        bail!(
            "the tree already has a user named {}: choose another name",
            user.name
        );
    }
    if groups.iter().any(|e| e[0] == user.name) {
        bail!(
            "the tree already has a group named {}: choose another user name",
            user.name
        );
    }
    let taken = |id: u32| {
        passwd.iter().any(|e| e.get(2) == Some(&id.to_string()))
            || groups.iter().any(|e| e.get(2) == Some(&id.to_string()))
    };
    let uid = match user.uid {
        Some(uid) if taken(uid) => {
            bail!("uid {uid} is already used in the tree's passwd or group: choose another")
        }
        Some(uid) => uid,
        None => (1000..60000)
            .find(|&id| !taken(id))
            .context("no free uid between 1000 and 60000")?,
    };
    for group in user.groups {
        if !groups.iter().any(|e| &e[0] == group) {
            bail!("group {group} does not exist in the tree: create it in a post script or install the package that does");
        }
    }
    append(
        root,
        "etc/passwd",
        &format!("{}:x:{uid}:{uid}::{}:{}", user.name, user.home, user.shell),
    )?;
    append(root, "etc/group", &format!("{}:x:{uid}:", user.name))?;
    // Days since the epoch of the last password change: from SOURCE_DATE_EPOCH when set, so
    // the build is reproducible; empty (no aging) otherwise.
    let changed = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|secs| (secs / 86400).to_string())
        .unwrap_or_default();
    let hash = user.password_hash.unwrap_or("!");
    append(
        root,
        "etc/shadow",
        &format!("{}:{hash}:{changed}:0:99999:7:::", user.name),
    )?;
    if !user.groups.is_empty() {
        add_to_groups(root, user.name, user.groups)?;
    }
    Ok(uid)
}

/// Add `name` to the member lists of `groups` in etc/group.
fn add_to_groups(root: &Path, name: &str, groups: &[String]) -> Result<()> {
    let path = root.join("etc/group");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::new();
    for line in text.lines() {
        let mut fields: Vec<String> = line.split(':').map(str::to_string).collect();
        if fields.len() == 4 && groups.contains(&fields[0]) {
            let mut members: Vec<&str> = fields[3].split(',').filter(|m| !m.is_empty()).collect();
            if !members.contains(&name) {
                members.push(name);
            }
            fields[3] = members.join(",");
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    write_keeping_mode(&path, out.as_bytes())
}

/// Set `user`'s password hash in etc/shadow under `root`.
pub fn set_password_hash(root: &Path, user: &str, hash: &str) -> Result<()> {
    let path = root.join("etc/shadow");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        let mut fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 1 && fields[0] == user {
            fields[1] = hash;
            found = true;
        }
        out.push_str(&fields.join(":"));
        out.push('\n');
    }
    anyhow::ensure!(found, "{} has no entry for {user}", path.display());
    write_keeping_mode(&path, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_added_and_passwords_set() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
        fs::write(root.join("etc/shadow"), "root:*:1:0:99999:7:::\n").unwrap();
        fs::set_permissions(root.join("etc/shadow"), fs::Permissions::from_mode(0o640)).unwrap();
        let groups = ["sudo".to_string()];
        let user = NewUser {
            name: "admin",
            uid: None,
            groups: &groups,
            home: "/var/home/admin",
            shell: "/bin/sh",
            password_hash: Some("*"),
        };
        assert_eq!(add_user(root, &user).unwrap(), 1000);
        let err = add_user(root, &user).unwrap_err().to_string();
        assert!(err.contains("already has a user named admin"), "{err}");
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("admin:x:1000:1000::/var/home/admin:/bin/sh\n"));
        let group = fs::read_to_string(root.join("etc/group")).unwrap();
        assert!(group.contains("sudo:x:27:admin\n") && group.contains("admin:x:1000:\n"));
        set_password_hash(root, "root", "$6$x$y").unwrap();
        let shadow = fs::read_to_string(root.join("etc/shadow")).unwrap();
        assert!(
            shadow.starts_with("root:$6$x$y:1:0:99999:7:::\nadmin:*:"),
            "{shadow}"
        );
        let mode = fs::metadata(root.join("etc/shadow"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        assert!(set_password_hash(root, "nobody", "x").is_err());
    }
}
