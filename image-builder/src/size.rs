//! Human-readable sizes: `4G`, `512M`, `2048K` or plain bytes.

use anyhow::Result;
use std::fmt;
use std::str::FromStr;

/// A disk size: bytes, or `auto` (the content plus headroom).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Exactly this many bytes (rounded down to whole MiB).
    Bytes(u64),
    /// The content plus headroom for an upgrade.
    Auto,
}

impl FromStr for Size {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Size> {
        if s.trim() == "auto" {
            Ok(Size::Auto)
        } else {
            parse_size(s).map(Size::Bytes)
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Auto => f.write_str("auto"),
            Size::Bytes(n) => write!(f, "{n}"),
        }
    }
}

/// Parse a size with an optional binary suffix (K, M, G, T; an optional `iB` or `B`).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => anyhow::bail!("invalid size {s:?}: unknown unit {c:?} (use K, M, G or T)"),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "invalid size {s:?}: expected a number with an optional K, M, G or T suffix"
        )
    })?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| anyhow::anyhow!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2048k").unwrap(), 2 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("4X").unwrap_err().to_string().contains("4X"));
        assert!(parse_size("big").is_err());
        assert_eq!("auto".parse::<Size>().unwrap(), Size::Auto);
        assert_eq!("1G".parse::<Size>().unwrap(), Size::Bytes(1 << 30));
        assert!("autumn".parse::<Size>().is_err());
    }
}
