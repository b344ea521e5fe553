//! The slow tests of the osbuild workspace (bootc's `tests-integration` model): everything
//! that needs root, qemu, podman, sshd or systemd-analyze lives in `tests/` here, and each
//! test states what it needs with `osbuild_testing::require`, which fails it under
//! `CI=true` and reports it as skipped otherwise. This library is empty.
