//! OpenSSH `authorized_keys`: keys and the options that restrict them.

use anyhow::{Context, Result};
use russh::keys::PublicKey;
use std::net::IpAddr;
use std::path::Path;

/// One key line with the options this server honours.
#[derive(Debug, Clone)]
pub(crate) struct AuthorizedKey {
    pub(crate) key: PublicKey,
    /// `command="…"`: the only command the key may run.
    pub(crate) command: Option<String>,
    /// `from="…"`: patterns the client's address must match.
    pub(crate) from: Option<Vec<String>>,
    /// Port forwarding allowed (off under `restrict` or `no-port-forwarding`, unless
    /// `port-forwarding` turns it back on).
    pub(crate) port_forwarding: bool,
    pub(crate) line: usize,
}

impl AuthorizedKey {
    /// Whether a client at `addr` may use this key (`from=`).
    pub(crate) fn allows_from(&self, addr: Option<IpAddr>) -> bool {
        let Some(patterns) = &self.from else {
            return true;
        };
        let Some(addr) = addr else {
            return false;
        };
        let addr = addr.to_canonical().to_string();
        let mut allowed = false;
        for p in patterns {
            if let Some(neg) = p.strip_prefix('!') {
                if wildcard(neg, &addr) {
                    return false;
                }
            } else if wildcard(p, &addr) {
                allowed = true;
            }
        }
        allowed
    }
}

/// OpenSSH's `*` and `?` patterns.
fn wildcard(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// Parse an authorized_keys file. Lines with unknown key types are an error that names the
/// line, so a typo never silently locks a user out or lets one in.
pub(crate) fn load(path: &Path) -> Result<Vec<AuthorizedKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading authorized keys {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

pub(crate) fn parse(text: &str) -> Result<Vec<AuthorizedKey>> {
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (options, keytext) = if looks_like_key_type(line) {
            ("", line)
        } else {
            split_options(line).with_context(|| format!("line {n}: malformed options"))?
        };
        let key = PublicKey::from_openssh(keytext.trim())
            .map_err(|e| anyhow::anyhow!("line {n}: not a public key: {e}"))?;
        let mut entry = AuthorizedKey {
            key,
            command: None,
            from: None,
            port_forwarding: true,
            line: n,
        };
        for opt in split_list(options) {
            let (name, value) = match opt.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), Some(unquote(v))),
                None => (opt.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("restrict", None) | ("no-port-forwarding", None) => entry.port_forwarding = false,
                ("port-forwarding", None) => entry.port_forwarding = true,
                ("command", Some(v)) => entry.command = Some(v),
                ("from", Some(v)) => entry.from = Some(v.split(',').map(str::to_string).collect()),
                // Options about ptys, X11, agents and the like restrict what this server
                // never offers anyway.
                _ => {}
            }
        }
        keys.push(entry);
    }
    Ok(keys)
}

fn looks_like_key_type(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    first.starts_with("ssh-") || first.starts_with("ecdsa-") || first.starts_with("sk-")
}

/// Split `opts key…` at the first space outside quotes.
fn split_options(line: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return Some((&line[..i], &line[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Split the comma-separated option list, keeping commas inside quotes.
fn split_list(options: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in options.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn unquote(v: &str) -> String {
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    v.replace("\\\"", "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMtlD8Zmmr9QeyuhFVrOZPwO3XUjxA/iv2C34HCkVfyx user@host";

    #[test]
    fn parses_options() {
        let text = format!(
            "# comment\n{KEY}\nrestrict,command=\"osbuild receive --repo /srv/a,b\",from=\"127.0.0.1,!10.*\" {KEY}\nrestrict,port-forwarding {KEY}\n"
        );
        let keys = parse(&text).unwrap();
        assert_eq!(keys.len(), 3);
        assert!(keys[0].port_forwarding && keys[0].command.is_none());
        assert!(!keys[1].port_forwarding);
        assert_eq!(
            keys[1].command.as_deref(),
            Some("osbuild receive --repo /srv/a,b")
        );
        assert!(keys[1].allows_from(Some("127.0.0.1".parse().unwrap())));
        assert!(!keys[1].allows_from(Some("10.0.0.1".parse().unwrap())));
        assert!(!keys[1].allows_from(Some("192.168.1.1".parse().unwrap())));
        assert!(keys[2].port_forwarding);
    }

    #[test]
    fn bad_line_is_named() {
        let err = parse(&format!("{KEY}\nssh-ed25519 notbase64\n")).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("127.0.0.*", "127.0.0.1"));
        assert!(wildcard("?27.0.0.1", "127.0.0.1"));
        assert!(!wildcard("10.*", "127.0.0.1"));
    }
}
