//! Test support: a qemu VM harness for end-to-end tests of built images.

pub mod fixture;
pub mod vm;

pub use vm::{free_port, try_free_port, ImageFormat, Vm, VmConfig};
