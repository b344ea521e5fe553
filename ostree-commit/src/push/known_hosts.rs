//! Host key verification against OpenSSH `known_hosts` files: plain and hashed
//! (`|1|salt|hash`) host names, `[host]:port` entries, patterns with `*`, `?` and `!`,
//! and `@revoked` markers. `@cert-authority` lines are ignored: host certificates are
//! not accepted.

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{KeyInit, Mac};
use russh::keys::ssh_key::PublicKey;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// What the known_hosts files say about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum HostKeyStatus {
    /// A line for this host holds this key.
    Known,
    /// No line for this host holds a key of this type.
    Unknown,
    /// A line for this host holds a different key of the same type: possibly an attack.
    Changed { path: PathBuf, line: usize },
    /// The key is marked `@revoked`.
    Revoked { path: PathBuf, line: usize },
}

/// The name a host is recorded under: `host`, or `[host]:port` off port 22. Lowercase,
/// as OpenSSH compares names.
pub(super) fn host_entry_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

struct Entry<'a> {
    marker: Option<&'a str>,
    hosts: &'a str,
    key: PublicKey,
    line: usize,
}

/// The lines of one file that parse; others are skipped, as ssh does.
fn entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next()?;
        let marker = if first.starts_with('@') {
            let m = first;
            first = fields.next()?;
            Some(m)
        } else {
            None
        };
        let (kind, data) = (fields.next()?, fields.next()?);
        let key = PublicKey::from_openssh(&format!("{kind} {data}")).ok()?;
        Some(Entry {
            marker,
            hosts: first,
            key,
            line: i + 1,
        })
    })
}

/// Whether `name` (already lowercase) matches a comma-separated host pattern list. A
/// matching negated pattern wins over any positive one.
fn hosts_match(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(hashed) = pattern.strip_prefix("|1|") {
            matched |= hashed_match(hashed, name);
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(&negated.to_ascii_lowercase(), name) {
                return false;
            }
        } else {
            matched |= wildcard_match(&pattern.to_ascii_lowercase(), name);
        }
    }
    matched
}

/// `salt|hash`, both base64: the hash is HMAC-SHA1 of the name keyed by the salt.
fn hashed_match(hashed: &str, name: &str) -> bool {
    let Some((salt, hash)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (BASE64.decode(salt), BASE64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// Glob matching with `*` (any run) and `?` (one character).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            backtrack = Some((pi, ni));
            pi += 1;
        } else if let Some((bp, bn)) = backtrack {
            pi = bp + 1;
            ni = bn + 1;
            backtrack = Some((bp, bn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Check `key` for `host`:`port` against the files in order. Missing files count as
/// empty. A key known in any file wins; otherwise a different key of the same type for
/// the host is a change.
pub(super) fn check(
    files: &[PathBuf],
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<HostKeyStatus> {
    let name = host_entry_name(host, port);
    let mut changed = None;
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        for entry in entries(&text) {
            let same_key = entry.key.key_data() == key.key_data();
            match entry.marker {
                Some("@revoked") if same_key => {
                    return Ok(HostKeyStatus::Revoked {
                        path: path.clone(),
                        line: entry.line,
                    })
                }
                Some(_) => continue,
                None => {}
            }
            if !hosts_match(entry.hosts, &name) {
                continue;
            }
            if same_key {
                return Ok(HostKeyStatus::Known);
            }
            if entry.key.algorithm() == key.algorithm() && changed.is_none() {
                changed = Some(HostKeyStatus::Changed {
                    path: path.clone(),
                    line: entry.line,
                });
            }
        }
    }
    Ok(changed.unwrap_or(HostKeyStatus::Unknown))
}

/// The key types recorded for a host, so that key exchange can ask for one of them.
pub(super) fn known_algorithms(
    files: &[PathBuf],
    host: &str,
    port: u16,
) -> Vec<russh::keys::ssh_key::Algorithm> {
    let name = host_entry_name(host, port);
    let mut algorithms = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for entry in entries(&text) {
            if entry.marker.is_none() && hosts_match(entry.hosts, &name) {
                let a = entry.key.algorithm();
                if !algorithms.contains(&a) {
                    algorithms.push(a);
                }
            }
        }
    }
    algorithms
}

/// Append `host`'s key to `path`, creating the file (and its directory, private) if needed.
pub(super) fn learn(path: &Path, host: &str, port: u16, key: &PublicKey) -> Result<()> {
    let what = || format!("adding the host key of {host} to {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(what)?;
        }
    }
    let mut line = String::new();
    // Never glue our line onto a last line that lacks its newline.
    if let Ok(existing) = std::fs::read(path) {
        if existing.last().is_some_and(|&b| b != b'\n') {
            line.push('\n');
        }
    }
    let mut public = key.clone();
    public.set_comment("");
    let openssh = public.to_openssh().with_context(what)?;
    line.push_str(&format!(
        "{} {}\n",
        host_entry_name(host, port),
        openssh.trim_end()
    ));
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .with_context(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIYEvmqTq6bM/fhKLbFZP0wb5FfHmwFRdBxTmK2GvGxk";
    const ED_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPHNs66GFTdUHmwu7gZfuGA746RW+FtOzu/g90p82G6u";
    const EC: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBFMKm2tLONt42gsLJMTCc0do6eEHl8R44/fPk7RSMFGMoRKoFZETIZaPxsKjPx1HaPPSCFvW5wtFUQ1fcKr4EDY=";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn file(dir: &Path, text: &str) -> Vec<PathBuf> {
        let p = dir.join("known_hosts");
        std::fs::write(&p, text).unwrap();
        vec![p]
    }

    #[test]
    fn plain_entries_and_ports() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(
            dir.path(),
            &format!("# comment\n\nexample.org,10.0.0.1 {ED_A}\n[example.org]:2222\t{ED_B} c\n"),
        );
        let a = key(ED_A);
        let b = key(ED_B);
        assert_eq!(
            check(&f, "example.org", 22, &a).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(
            check(&f, "EXAMPLE.org", 22, &a).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(check(&f, "10.0.0.1", 22, &a).unwrap(), HostKeyStatus::Known);
        assert_eq!(
            check(&f, "example.org", 2222, &b).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(check(&f, "other", 22, &a).unwrap(), HostKeyStatus::Unknown);
        assert_eq!(
            check(&f, "example.org", 22, &b).unwrap(),
            HostKeyStatus::Changed {
                path: f[0].clone(),
                line: 3
            }
        );
        // Another key type for a known host is new, not changed (as in OpenSSH).
        assert_eq!(
            check(&f, "example.org", 22, &key(EC)).unwrap(),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            known_algorithms(&f, "example.org", 2222),
            vec![b.algorithm()]
        );
    }

    #[test]
    fn hashed_names() {
        // `ssh-keygen -H` of "[example.org]:2222 <ED_A>".
        let line = format!("|1|7m+oy8IiabUFej/pNABtGotauNk=|lSG74ryclF0hxsWIeAKxpw6zGiA= {ED_A}\n");
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), &line);
        let a = key(ED_A);
        assert_eq!(
            check(&f, "example.org", 2222, &a).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(
            check(&f, "example.org", 22, &a).unwrap(),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            check(&f, "example.com", 2222, &a).unwrap(),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn patterns_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(
            dir.path(),
            &format!(
                "*.example.org,!bad.example.org {ED_A}\n@cert-authority * {ED_B}\n@revoked * {EC}\nnot a key line\n"
            ),
        );
        let a = key(ED_A);
        assert_eq!(
            check(&f, "h.example.org", 22, &a).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(
            check(&f, "bad.example.org", 22, &a).unwrap(),
            HostKeyStatus::Unknown
        );
        // A CA key is not a host key: to this host it is a changed ed25519 key.
        assert_eq!(
            check(&f, "h.example.org", 22, &key(ED_B)).unwrap(),
            HostKeyStatus::Changed {
                path: f[0].clone(),
                line: 1
            }
        );
        assert_eq!(
            check(&f, "anything", 22, &key(EC)).unwrap(),
            HostKeyStatus::Revoked {
                path: f[0].clone(),
                line: 3
            }
        );
        assert!(wildcard_match("h?st*", "host.example"));
        assert!(!wildcard_match("h?st", "hst"));
        assert!(wildcard_match("*", ""));
    }

    #[test]
    fn learn_appends_a_line_check_then_knows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssh/known_hosts");
        let a = key(ED_A);
        let files = vec![path.clone()];
        assert_eq!(
            check(&files, "h", 2222, &a).unwrap(),
            HostKeyStatus::Unknown
        );
        learn(&path, "h", 2222, &a).unwrap();
        assert_eq!(check(&files, "h", 2222, &a).unwrap(), HostKeyStatus::Known);
        // A file without a final newline keeps its last line intact.
        std::fs::write(&path, format!("other {ED_B}")).unwrap();
        learn(&path, "H", 22, &a).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("other {ED_B}\nh {ED_A}\n"));
        assert_eq!(
            check(&files, "other", 22, &key(ED_B)).unwrap(),
            HostKeyStatus::Known
        );
    }
}
