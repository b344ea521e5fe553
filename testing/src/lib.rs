//! Test support for the osbuild workspace:
//!
//! - [`helpers`]: running commands, `ostree` CLI repositories, free ports, servers
//!   ([`helpers::Daemon`]) and the `osbuild` binary under test;
//! - [`need`]: the one policy for tests that need root, qemu, podman, sshd, …
//!   ([`require`]);
//! - [`gpg`]: a throwaway signing key shared by a test process;
//! - [`fixture`]: slow fixtures cached under target/, keyed by their inputs;
//! - [`vm`]: the qemu VM harness (image_builder's, re-exported);
//! - [`guest`]: booting an example OS and running checks in its serial shell;
//! - [`sshd`]: SSH keys and a real OpenSSH sshd;
//! - [`ostree_push`]: the reference ostree-push client and receiver;
//! - [`garage`]: a real Garage S3 store (one node or a cluster) on loopback.

pub mod fixture;
pub mod garage;
pub mod gpg;
pub mod guest;
pub mod helpers;
pub mod need;
pub mod ostree_push;
pub mod sshd;
/// The qemu VM harness, which `osbuild vm` uses too.
pub use image_builder::vm;

pub use need::{require, Need};

/// Virtual CPUs of the tests' guests. The suite runs two guests at a time on two cores:
/// there a one-CPU guest booted and ran `ostree fsck` for 20-25 % less CPU time than a
/// two-CPU one (TCG pays for every cross-CPU interrupt and for the vCPUs' contention).
pub const GUEST_CPUS: u32 = 1;

/// How the tests boot `image`: [`vm::VmConfig::new`] with [`GUEST_CPUS`].
pub fn guest_config(image: impl AsRef<std::path::Path>) -> vm::VmConfig {
    vm::VmConfig::new(image.as_ref()).cpus(GUEST_CPUS)
}
