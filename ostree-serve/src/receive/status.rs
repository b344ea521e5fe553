//! The receiver's exit statuses, which ostree-push clients interpret.

/// How a receive ended, as the protocol's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the refs were received (or were already current).
    Ok,
    /// 1: the receive failed.
    Error,
    /// 2: the command line was wrong.
    Usage,
}

impl ExitStatus {
    /// The numeric status.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Ok => 0,
            ExitStatus::Error => 1,
            ExitStatus::Usage => 2,
        }
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> Self {
        std::process::ExitCode::from(status.code())
    }
}
