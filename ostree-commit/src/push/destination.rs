//! Where a push goes: `ssh://[user@]host[:port]/path` or the scp form `[user@]host:path`,
//! the two forms ostree-push accepts.

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

/// The SSH port used when the destination names none.
pub(super) const DEFAULT_PORT: u16 = 22;

/// A remote repository reached over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Login name; the local user's when unset (as with `ssh`).
    pub user: Option<String>,
    /// Host name or address, without brackets for IPv6 literals.
    pub host: String,
    /// Only an `ssh://` URL can set it.
    pub port: Option<u16>,
    /// The repository path on the server, as given: absolute in URLs, relative to the
    /// login directory when the scp form has no leading `/`.
    pub path: String,
}

impl Destination {
    /// The SSH port: the one given, else 22.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }

    fn parse_url(rest: &str, original: &str) -> Result<Self> {
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => bail!(
                "destination {original:?} has no repository path (ssh://[USER@]HOST[:PORT]/PATH)"
            ),
        };
        if path.len() <= 1 {
            bail!(
                "destination {original:?} has no repository path (ssh://[USER@]HOST[:PORT]/PATH)"
            );
        }
        let (user, hostport) = split_user(authority, original)?;
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                bail!("destination {original:?} has an unclosed '[' in the host");
            };
            match after {
                "" => (host, None),
                p if p.starts_with(':') => (host, Some(&p[1..])),
                _ => bail!("destination {original:?}: unexpected {after:?} after the host"),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => bail!("destination {original:?} has an invalid port {p:?}"),
            },
        };
        Ok(Destination {
            user,
            host: check_host(host, original)?,
            port,
            path: path.to_string(),
        })
    }

    fn parse_scp(s: &str) -> Result<Self> {
        let usage = "expected [USER@]HOST:PATH or ssh://[USER@]HOST[:PORT]/PATH";
        // The host part ends at the first ':' outside brackets, so `[::1]:repo` works.
        let (user, rest) = match s.find(['@', ':', '[']) {
            Some(i) if s.as_bytes()[i] == b'@' => {
                let (u, r) = split_user(s, s)?;
                (u, r)
            }
            _ => (None, s),
        };
        let (host, path) = if let Some(v6) = rest.strip_prefix('[') {
            match v6.split_once("]:") {
                Some(hp) => hp,
                None => bail!("destination {s:?}: {usage}"),
            }
        } else {
            match rest.split_once(':') {
                Some(hp) => hp,
                None => bail!("destination {s:?} has no ':' before the repository path: {usage}"),
            }
        };
        if path.is_empty() {
            bail!("destination {s:?} has no repository path: {usage}");
        }
        Ok(Destination {
            user,
            host: check_host(host, s)?,
            port: None,
            path: path.to_string(),
        })
    }
}

/// Split `user@rest` at the last '@', as ssh does (user names may contain '@').
fn split_user<'a>(s: &'a str, original: &str) -> Result<(Option<String>, &'a str)> {
    // Only an '@' before the path counts.
    let head = s.split(['/', ':']).next().unwrap_or(s);
    let head_end = match s.find('[') {
        Some(b) if b < head.len() => b,
        _ => head.len(),
    };
    match s[..head_end].rfind('@') {
        Some(i) => {
            let user = &s[..i];
            if user.is_empty() {
                bail!("destination {original:?} has an empty user name before '@'");
            }
            Ok((Some(user.to_string()), &s[i + 1..]))
        }
        None => Ok((None, s)),
    }
}

fn check_host(host: &str, original: &str) -> Result<String> {
    if host.is_empty() {
        bail!("destination {original:?} has no host");
    }
    if host.starts_with('-')
        || host
            .chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        bail!("destination {original:?} has an invalid host {host:?}");
    }
    Ok(host.to_string())
}

impl FromStr for Destination {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some((scheme, rest)) = s.split_once("://") {
            if scheme != "ssh" {
                bail!("destination {s:?}: scheme {scheme:?} is not supported, only ssh://");
            }
            Self::parse_url(rest, s)
        } else {
            Self::parse_scp(s)
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        match self.port {
            // A URL path is absolute; a relative scp path with a port cannot be a URL.
            Some(p) if self.path.starts_with('/') => {
                write!(f, "ssh://{user}{host}:{p}{}", self.path)
            }
            _ => write!(f, "{user}{host}:{}", self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(user: Option<&str>, host: &str, port: Option<u16>, path: &str) -> Destination {
        Destination {
            user: user.map(str::to_string),
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn urls() {
        let cases = [
            ("ssh://h/srv/repo", d(None, "h", None, "/srv/repo")),
            ("ssh://me@h/srv/repo", d(Some("me"), "h", None, "/srv/repo")),
            (
                "ssh://me@h:2222/srv/repo",
                d(Some("me"), "h", Some(2222), "/srv/repo"),
            ),
            ("ssh://h:22/r", d(None, "h", Some(22), "/r")),
            ("ssh://[::1]:2222/r", d(None, "::1", Some(2222), "/r")),
            ("ssh://u@[fe80::1]/r", d(Some("u"), "fe80::1", None, "/r")),
            ("ssh://a@b@h/r", d(Some("a@b"), "h", None, "/r")),
            ("ssh://h/r@x:y", d(None, "h", None, "/r@x:y")),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<Destination>().unwrap(), want, "{s}");
        }
    }

    #[test]
    fn scp_form() {
        let cases = [
            ("h:repo", d(None, "h", None, "repo")),
            ("me@h:/srv/repo", d(Some("me"), "h", None, "/srv/repo")),
            (
                "me@h.example.org:a/b:c",
                d(Some("me"), "h.example.org", None, "a/b:c"),
            ),
            ("[::1]:repo", d(None, "::1", None, "repo")),
            ("u@[::1]:/r", d(Some("u"), "::1", None, "/r")),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<Destination>().unwrap(), want, "{s}");
        }
    }

    #[test]
    fn bad_destinations_are_named() {
        for (s, why) in [
            ("http://h/r", "scheme"),
            ("ssh://h", "no repository path"),
            ("ssh://h/", "no repository path"),
            ("ssh:///r", "no host"),
            ("ssh://h:0/r", "invalid port"),
            ("ssh://h:x/r", "invalid port"),
            ("ssh://h:70000/r", "invalid port"),
            ("ssh://@h/r", "empty user"),
            ("ssh://[::1/r", "unclosed"),
            ("hostonly", "no ':'"),
            ("h:", "no repository path"),
            (":repo", "no host"),
            ("@h:r", "empty user"),
            ("-oProxyCommand=x:r", "invalid host"),
        ] {
            let err = s.parse::<Destination>().unwrap_err().to_string();
            assert!(err.contains(why), "{s}: {err}");
            assert!(err.contains(s), "{s}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "ssh://me@h:2222/srv/repo",
            "h:repo",
            "me@h:/srv/repo",
            "[::1]:repo",
            "ssh://[::1]:2222/r",
        ] {
            let parsed: Destination = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
            assert_eq!(parsed.to_string().parse::<Destination>().unwrap(), parsed);
        }
        assert_eq!("ssh://h/r".parse::<Destination>().unwrap().port(), 22);
    }
}
