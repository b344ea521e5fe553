//! osbuild: build, ship and upgrade immutable OSTree-based Debian systems.
//!
//! The `osbuild` binary is [`cli`]: each verb parses its options and calls one library
//! crate (ostree-commit, ostree-serve, image-builder, osbuild-admin).

pub mod cli;
