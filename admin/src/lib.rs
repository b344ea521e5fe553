//! The device side: what is deployed, what is booted, what comes next; upgrades and
//! rollbacks through libostree's Sysroot API.

pub mod bootmenu;
pub mod cli;
pub mod device;
mod durable;
pub mod esp;
pub mod fallback;
pub mod growroot;
mod grubenv;
pub mod health;
mod rollback;
mod space;
mod status;
mod sysroot;
mod upgrade;

pub use rollback::{rollback, Rollback};
pub use status::{json_schema, status, Deployment, Role, Status};
pub use upgrade::{upgrade, Update, Upgrade};
