//! The device side: what is deployed, what is booted, what comes next.

pub mod bootmenu;
pub mod device;
mod durable;
pub mod esp;
pub mod growroot;
mod status;

pub use status::{status, Deployment, Status};
