//! The server side: an archive repository served over HTTP at `/repo/`, the URL layout
//! that clients configure with `ostree remote add NAME http://HOST:PORT/repo/`.

pub mod http;

pub use http::{bind, router, serve, Server};
