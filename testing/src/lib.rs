//! Test support: the qemu VM harness, cached slow fixtures and the real ostree-push.

pub mod fixture;
pub mod ostree_push;
pub mod repo;
pub mod sshd;
pub mod vm;

pub use vm::{free_port, try_free_port, ImageFormat, Vm, VmConfig};
