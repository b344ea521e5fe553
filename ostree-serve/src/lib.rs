//! The server side: an archive repository served over HTTP(S) at `/repo/`, the URL layout
//! that clients configure with `ostree remote add NAME http://HOST:PORT/repo/`, and pushes
//! received over SSH.
//!
//! [`router`] is the bare file server (shared with the SSH push tunnel); [`Server`] puts
//! the listener, limits, timeouts, TLS, basic auth and the access log around it, as set by
//! a [`ServeConfig`]. [`receive`] takes pushed commits, behind [`ssh::SshServer`] or
//! OpenSSH.

mod access_log;
mod auth;
mod config;
mod http;
pub mod receive;
pub mod s3;
mod server;
pub mod ssh;
mod tls;

pub use config::{ServeConfig, Settings, TlsFiles};
pub use http::router;
pub use server::{serve_config, Server};
