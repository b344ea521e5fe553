//! Where a tree's root filesystem comes from: each kind of base is one module behind the
//! [`Source`] trait, so that another distribution is one more module.
//!
//! A source writes a plain (not yet OSTree-shaped) root filesystem into an empty
//! directory; [`crate::bootstrap`] then configures and converts it.

mod debian;
mod directory;
mod image;
mod layers;
mod tarball;

pub use debian::{Debian, Init};
pub use directory::Directory;
pub use image::{Image, ImageOrigin, Transport};
pub use tarball::Tarball;

use anyhow::Result;
use std::path::Path;

/// One kind of base.
pub(crate) trait Source: std::fmt::Debug {
    /// What is being built, for progress messages: "Debian bookworm", "tarball base.tar".
    fn describe(&self) -> String;
    /// Refuse what cannot work before anything is downloaded or written.
    fn check(&self) -> Result<()>;
    /// What determines the root filesystem, exactly, for the base cache; `None` for a
    /// base that is not cached (cheap to redo, or its content can change unseen).
    fn cache_key(&self) -> Option<String> {
        None
    }
    /// Write the root filesystem into `dir`, an existing empty directory. Downloaded
    /// packages are kept in, and taken from, `packages` when given.
    fn build(&self, dir: &Path, packages: Option<&Path>) -> Result<Built>;
}

/// What building a base learned that the commit records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Built {
    /// The container image the tree was made from.
    pub(crate) image: Option<ImageOrigin>,
}

/// The base a tree is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// A Debian suite bootstrapped with mmdebstrap.
    Debian(Debian),
    /// A root filesystem unpacked from a tar archive.
    Tarball(Tarball),
    /// A root filesystem copied from a directory.
    Directory(Directory),
    /// A container image's root filesystem, made bootable.
    Image(Image),
}

impl Base {
    pub(crate) fn source(&self) -> &dyn Source {
        match self {
            Base::Debian(s) => s,
            Base::Tarball(s) => s,
            Base::Directory(s) => s,
            Base::Image(s) => s,
        }
    }
}

impl Default for Base {
    fn default() -> Self {
        Base::Debian(Debian::default())
    }
}
