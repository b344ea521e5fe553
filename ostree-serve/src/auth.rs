//! HTTP basic auth against an Apache htpasswd file.
//!
//! bcrypt is deliberately slow (milliseconds per check) and `ostree pull` makes one request
//! per object, so a credential that verified once is remembered (as a SHA-256 of the
//! `Authorization` header, in memory only) and later requests cost one hash.

use anyhow::{Context, Result};
use base64::Engine;
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Bound on remembered credentials; past it the memory starts over.
const CACHE_LIMIT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    /// `$2y$`, `$2b$`, `$2a$`: `htpasswd -B`.
    Bcrypt(String),
    /// `{SHA}base64(sha1(password))`: `htpasswd -s`.
    Sha1([u8; 20]),
    /// `$apr1$salt$hash`: `htpasswd -m`, the default of Debian's htpasswd.
    Apr1 { salt: String, encoded: String },
}

/// The users of an htpasswd file and the credentials already verified.
#[derive(Debug, Clone)]
pub(crate) struct Htpasswd {
    users: Arc<HashMap<String, Hash>>,
    verified: Arc<Mutex<HashSet<[u8; 32]>>>,
}

impl Htpasswd {
    /// Load the file, refusing entries whose hash format is unsupported (naming the line),
    /// so a typo does not silently lock everyone out.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading htpasswd file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing htpasswd file {}", path.display()))
    }

    fn parse(text: &str) -> Result<Self> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .with_context(|| format!("line {}: expected USER:HASH", n + 1))?;
            let hash =
                parse_hash(hash).with_context(|| format!("line {}: user {user:?}", n + 1))?;
            users.insert(user.to_string(), hash);
        }
        anyhow::ensure!(!users.is_empty(), "no users in the file");
        Ok(Htpasswd {
            users: Arc::new(users),
            verified: Arc::default(),
        })
    }

    /// Whether an `Authorization` header value carries valid credentials. May take
    /// milliseconds (bcrypt): call it off the async worker threads.
    pub(crate) fn check(&self, authorization: &[u8]) -> bool {
        let key: [u8; 32] = sha2::Sha256::digest(authorization).into();
        if self.lock().contains(&key) {
            return true;
        }
        let ok = self.verify(authorization);
        if ok {
            let mut seen = self.lock();
            if seen.len() >= CACHE_LIMIT {
                seen.clear();
            }
            seen.insert(key);
        }
        ok
    }

    /// Whether the credentials were verified before, without doing the slow check.
    pub(crate) fn check_cached(&self, authorization: &[u8]) -> bool {
        let key: [u8; 32] = sha2::Sha256::digest(authorization).into();
        self.lock().contains(&key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        // A panic while holding this lock cannot leave the set inconsistent.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verify(&self, authorization: &[u8]) -> bool {
        let Some((user, password)) = parse_basic(authorization) else {
            return false;
        };
        if self.verify_pair(&user, password.as_bytes()) {
            return true;
        }
        // libostree (2022.7) sends the user and password of a remote URL exactly as
        // written, without undoing percent-encoding: accept the decoded form too, so
        // `https://device:pass%20word@host/repo/` works for the password "pass word".
        if user.contains('%') || password.contains('%') {
            let user = percent_encoding::percent_decode_str(&user).decode_utf8_lossy();
            let password: Vec<u8> = percent_encoding::percent_decode_str(&password).collect();
            return self.verify_pair(&user, &password);
        }
        false
    }

    fn verify_pair(&self, user: &str, password: &[u8]) -> bool {
        self.users
            .get(user)
            .is_some_and(|hash| hash_matches(hash, password))
    }
}

fn parse_hash(hash: &str) -> Result<Hash> {
    if hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$") {
        // Check the format now rather than on the first request.
        hash.parse::<bcrypt::HashParts>()
            .map_err(|e| anyhow::anyhow!("malformed bcrypt hash: {e}"))?;
        Ok(Hash::Bcrypt(hash.to_string()))
    } else if let Some(b64) = hash.strip_prefix("{SHA}") {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("malformed {SHA} hash")?;
        let digest: [u8; 20] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("malformed {{SHA}} hash: not 20 bytes"))?;
        Ok(Hash::Sha1(digest))
    } else if let Some(rest) = hash.strip_prefix("$apr1$") {
        let (salt, encoded) = rest.split_once('$').context("malformed $apr1$ hash")?;
        anyhow::ensure!(
            salt.len() <= 8 && encoded.len() == 22,
            "malformed $apr1$ hash"
        );
        Ok(Hash::Apr1 {
            salt: salt.to_string(),
            encoded: encoded.to_string(),
        })
    } else {
        anyhow::bail!(
            "unsupported password hash (use bcrypt: `htpasswd -B`; {{SHA}} and $apr1$ are also accepted)"
        )
    }
}

/// The user name of a `Basic` header, for the access log.
pub(crate) fn user_of(authorization: &[u8]) -> Option<String> {
    parse_basic(authorization).map(|(user, _)| user)
}

/// `Basic base64(user:password)` into its parts.
fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn hash_matches(hash: &Hash, password: &[u8]) -> bool {
    match hash {
        Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        Hash::Sha1(digest) => {
            let got: [u8; 20] = sha1::Sha1::digest(password).into();
            constant_time_eq(&got, digest)
        }
        Hash::Apr1 { salt, encoded } => constant_time_eq(
            apr1(password, salt.as_bytes()).as_bytes(),
            encoded.as_bytes(),
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Apache's MD5-crypt variant (`$apr1$`), returning the 22-character encoded hash.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    use md5::Md5;
    const MAGIC: &[u8] = b"$apr1$";
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();

    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = ctx.finalize();

    // 1000 rounds, to make brute force slower.
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize();
    }

    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let b = |i: usize| u32::from(fin[i]);
    for (x, y, z) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((b(x) << 16) | (b(y) << 8) | b(z), 4);
    }
    put(b(11), 2);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {b64}").into_bytes()
    }

    // Lines made by Apache's htpasswd (apache2-utils): -m, -s and -B.
    const FILE: &str = "\
# comment
alice:$apr1$gP4zK.I8$6.w.0fb4Q.mcN4le1ChZV1
bob:$apr1$K3B4ThPB$el6oBEXaba62qYRbDwd310
carol:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=
dave:$2y$05$JqgAl4266WHVS/gf1nbmO.aVuIaze6IcRKtWMg.i6RBbgWKGmgZdq
";

    #[test]
    fn apache_hashes_verify() {
        let h = Htpasswd::parse(FILE).unwrap();
        assert!(h.check(&header("alice", "secret")));
        assert!(h.check(&header("bob", "a longer pass phrase!")));
        assert!(h.check(&header("carol", "secret")));
        assert!(h.check(&header("dave", "secret")));
        assert!(h.check_cached(&header("dave", "secret")));
        assert!(!h.check(&header("alice", "Secret")));
        assert!(!h.check(&header("dave", "secret2")));
        assert!(!h.check(&header("eve", "secret")));
        assert!(!h.check(b"Bearer abc"));
        assert!(!h.check(b"Basic !!!"));
        assert!(!h.check_cached(&header("dave", "secret2")));
        // Percent-encoded as in a URL, the way libostree passes it on.
        assert!(h.check(&header("carol", "s%65cret")));
        assert!(h.check(&header("c%61rol", "secret")));
        assert!(!h.check(&header("carol", "s%66cret")));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        let h = Htpasswd::parse(FILE).unwrap();
        let mut v = header("carol", "secret");
        v[..5].copy_from_slice(b"BASIC");
        assert!(h.check(&v));
    }

    #[test]
    fn unsupported_hashes_name_the_line() {
        let err = format!(
            "{:#}",
            Htpasswd::parse("a:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\nb:plain\n").unwrap_err()
        );
        assert!(err.contains("line 2") && err.contains("\"b\""), "{err}");
        assert!(Htpasswd::parse("# nobody\n").is_err());
        assert!(Htpasswd::parse("x:$2y$05$short").is_err());
    }

    #[test]
    fn load_names_the_file() {
        let err = format!(
            "{:#}",
            Htpasswd::load(Path::new("/nonexistent/htpasswd")).unwrap_err()
        );
        assert!(err.contains("/nonexistent/htpasswd"), "{err}");
    }
}
