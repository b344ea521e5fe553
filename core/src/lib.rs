//! Shared plumbing for the osbuild crates.
//!
//! Every crate uses the `ostree`, `gio` and `glib` re-exported here, so that the whole
//! workspace agrees on one version of the GLib bindings (the ostree-rs-ext pattern).

pub mod accounts;
pub mod cmd;
pub mod fsutil;
pub mod progress;
pub mod repo;
pub mod time;

pub use ostree;
pub use ostree::gio;
pub use ostree::glib;
