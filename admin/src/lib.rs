//! The device side: what is deployed, what is booted, what comes next.

mod status;

pub use status::{status, Deployment, Status};
