//! Rules for the names a manifest holds. Each returns what is wrong, phrased so that it
//! can follow "key: ".

/// A segment of an ostree ref: `[\w\d][-._\w\d]*`, with `\w` in ASCII as libostree's
/// GRegex matches it.
fn ref_segment(s: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if word(c)) && chars.all(|c| word(c) || "-.".contains(c))
}

/// One ref segment, as the OS name and remote names must be.
pub(crate) fn segment(s: &str, what: &str) -> Result<(), String> {
    if ref_segment(s) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid {what}: use letters, digits, '-', '.' and '_', starting with a letter, digit or '_'"
        ))
    }
}

/// A GPG key as GPG's `--local-user` takes it: an ID, a fingerprint or a user ID, on one
/// line, not an option.
pub(crate) fn gpg_key_id(s: &str) -> Result<(), String> {
    if s.trim().is_empty() || s.starts_with('-') || s.chars().any(char::is_control) {
        Err(format!(
            "{s:?} is not a GPG key: give its ID or fingerprint (gpg --list-secret-keys shows them)"
        ))
    } else {
        Ok(())
    }
}

/// An ostree ref: ref segments separated by `/`.
pub(crate) fn ostree_ref(s: &str) -> Result<(), String> {
    if s.split('/').all(ref_segment) {
        Ok(())
    } else {
        Err(format!(
            "the ref {s:?} is not a valid ostree ref: use segments of letters, digits, '-', '.' and '_' separated by '/'"
        ))
    }
}

/// A user or group name by Debian's adduser rules: `^[a-z_][a-z0-9_-]*\$?$`, up to 32.
pub(crate) fn user_name(s: &str) -> Result<(), String> {
    let body = s.strip_suffix('$').unwrap_or(s);
    let mut chars = body.chars();
    let ok = s.len() <= 32
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name: use up to 32 lowercase letters, digits, '_' and '-', starting with a letter or '_' (a final '$' is allowed)"
        ))
    }
}

/// The user ids a manifest may give: Debian's FIRST_UID..=LAST_UID.
pub(crate) const UIDS: std::ops::RangeInclusive<i64> = 1000..=59999;

/// A file owner: `user`, `user:group`, each a name or a numeric id.
pub(crate) fn owner_part(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        return Ok(());
    }
    user_name(s)
}

/// The suffixes of units `systemctl enable` and `disable` accept.
const UNIT_SUFFIXES: [&str; 9] = [
    "service",
    "socket",
    "timer",
    "target",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
];

/// A systemd unit name: `prefix[@instance].suffix`, at most 255 characters of
/// `[A-Za-z0-9:_.\-]` plus the one `@`.
pub(crate) fn unit_name(s: &str) -> Result<(), String> {
    let valid = (|| {
        let (stem, suffix) = s.rsplit_once('.')?;
        if !UNIT_SUFFIXES.contains(&suffix) || s.len() > 255 {
            return None;
        }
        let (prefix, instance) = match stem.split_once('@') {
            Some((p, i)) => (p, Some(i)),
            None => (stem, None),
        };
        let chars_ok = |t: &str| {
            t.chars()
                .all(|c| c.is_ascii_alphanumeric() || ":_.-\\".contains(c))
        };
        let instance_ok = match instance {
            None => true,
            Some(i) => !i.contains('@') && chars_ok(i),
        };
        (!prefix.is_empty() && chars_ok(prefix) && instance_ok).then_some(())
    })();
    valid.ok_or_else(|| {
        format!(
            "{s:?} is not a systemd unit name: write the full name with its type, e.g. \"ssh.service\" ({})",
            UNIT_SUFFIXES.map(|x| format!(".{x}")).join(", ")
        )
    })
}

/// A Debian package name (policy 5.6.1): `[a-z0-9][a-z0-9+.-]+`.
pub(crate) fn package_name(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let ok = s.len() >= 2
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a Debian package name: use lowercase letters, digits, '+', '-' and '.', starting with a letter or digit"
        ))
    }
}

/// A Debian suite or component name.
pub(crate) fn archive_word(s: &str, what: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid {what}: use lowercase letters, digits, '-' and '.'"
        ))
    }
}

/// A host name by RFC 1123: dot-separated labels of 1–63 letters, digits and `-`, not
/// starting or ending with `-`, at most 253 characters.
pub(crate) fn hostname(s: &str) -> Result<(), String> {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if s.len() <= 253 && s.split('.').all(label) {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid host name: use dot-separated labels of letters, digits and '-', each up to 63 characters"
        ))
    }
}

/// A URL with one of the given schemes and something after it.
/// One of the enum's values, by its command-line name (`systemd-boot`).
pub(crate) fn choice<T: clap::ValueEnum>(s: &str) -> Result<T, String> {
    T::from_str(s, false).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|x| x.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        format!("{s:?} is not one of {}", names.join(", "))
    })
}

pub(crate) fn url(s: &str, schemes: &[&str]) -> Result<(), String> {
    let ok = schemes.iter().any(|scheme| {
        s.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a URL starting with {}",
            schemes.join(", ")
        ))
    }
}

/// A single line: no control characters, not empty.
pub(crate) fn one_line(s: &str, what: &str) -> Result<(), String> {
    if s.trim().is_empty() || s.chars().any(char::is_control) {
        Err(format!(
            "the {what} must be one non-empty line without control characters"
        ))
    } else {
        Ok(())
    }
}

/// Replace `{placeholder}`s in `template` with `value(name)`; an unknown placeholder or a
/// stray brace is an error naming the ones allowed.
pub(crate) fn render(
    template: &str,
    allowed: &[&str],
    mut value: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let names = || {
        allowed
            .iter()
            .map(|a| format!("{{{a}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let Some(end) = after.find('}').filter(|_| after.starts_with('{')) else {
            return Err(format!(
                "stray brace in {template:?}: braces only enclose a placeholder ({})",
                names()
            ));
        };
        let name = &after[1..end];
        if !allowed.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in {template:?}: use {}",
                names()
            ));
        }
        out.push_str(&value(name)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// UTC `YYYYMMDD.HHMM` for seconds since the epoch.
pub(crate) fn utc_date(secs: i64) -> String {
    let day_secs = secs.rem_euclid(86400);
    let (year, month, day) = osbuild_core::time::civil_from_days(secs.div_euclid(86400));
    format!(
        "{year:04}{month:02}{day:02}.{:02}{:02}",
        day_secs / 3600,
        day_secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(user_name("alice").is_ok());
        assert!(user_name("_svc-1").is_ok());
        assert!(user_name("machine$").is_ok());
        assert!(user_name("Alice").is_err());
        assert!(user_name("1alice").is_err());
        assert!(user_name("a$b").is_err());
        assert!(user_name(&"a".repeat(33)).is_err());
        assert!(user_name(&"a".repeat(32)).is_ok());
        assert!(unit_name("ssh.service").is_ok());
        assert!(unit_name("getty@tty1.service").is_ok());
        assert!(unit_name("serial-getty@.service").is_ok());
        assert!(unit_name("ssh").is_err());
        assert!(unit_name("ssh.conf").is_err());
        assert!(unit_name(".service").is_err());
        assert!(unit_name("a b.service").is_err());
        assert!(ostree_ref("demo/bookworm/x86_64").is_ok());
        assert!(ostree_ref("demo//x86_64").is_err());
        assert!(ostree_ref("-demo/x").is_err());
        assert!(ostree_ref("demo/x/").is_err());
        assert!(package_name("linux-image-cloud-amd64").is_ok());
        assert!(package_name("g++").is_ok());
        assert!(package_name("Vim").is_err());
        assert!(hostname("edge-01.example").is_ok());
        assert!(hostname("-edge").is_err());
        assert!(hostname("edge_01").is_err());
        assert!(owner_part("0").is_ok());
        assert!(owner_part("").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "19700101.0000");
        // 2024-02-29T23:59:59Z
        assert_eq!(utc_date(1_709_251_199), "20240229.2359");
        // 2026-12-01T20:45:00Z
        assert_eq!(utc_date(1_796_157_900), "20261201.2045");
    }

    #[test]
    fn templates() {
        let v = |n: &str| Ok(n.to_uppercase());
        assert_eq!(render("{a}/x/{b}", &["a", "b"], v).unwrap(), "A/x/B");
        assert!(render("{c}", &["a"], v).unwrap_err().contains("{c}"));
        assert!(render("a}", &["a"], v).is_err());
        assert!(render("{a", &["a"], v).is_err());
    }
}
