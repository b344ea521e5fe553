//! The server side: an archive repository served over HTTP(S) at `/repo/`, the URL layout
//! that clients configure with `ostree remote add NAME http://HOST:PORT/repo/`.
//!
//! [`router`] is the bare file server (shared with the SSH push tunnel); [`Server`] puts
//! the listener, limits, timeouts, TLS, basic auth and the access log around it, as set by
//! a [`ServeConfig`].

mod access_log;
pub mod auth;
pub mod config;
pub mod http;
pub mod receive;
mod server;
pub mod ssh;
pub mod tls;

pub use config::ServeConfig;
pub use http::{router, router_with, RouterOptions};
pub use server::{bind, serve, serve_config, Server};
