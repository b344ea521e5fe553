//! Shared plumbing for the osbuild crates.
//!
//! Every crate uses the `ostree`, `gio` and `glib` re-exported here, so that the whole
//! workspace agrees on one version of the GLib bindings (the ostree-rs-ext pattern).

pub mod accounts;
pub mod cmd;
pub mod fsutil;
pub mod parallel;
pub mod progress;
pub mod repo;
pub mod time;

pub use ostree;

/// Bytes as lowercase hexadecimal: checksums and digests as ostree, sha256sum and S3
/// ETags spell them.
pub fn hex(bytes: impl AsRef<[u8]>) -> String {
    use std::fmt::Write;
    bytes.as_ref().iter().fold(
        String::with_capacity(bytes.as_ref().len() * 2),
        |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        },
    )
}
pub use ostree::gio;
pub use ostree::glib;

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(super::hex([0x00u8, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(super::hex(Vec::<u8>::new()), "");
    }
}
