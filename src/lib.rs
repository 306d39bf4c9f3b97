//! halley: an HTTP/1.1 push ("Comet") server on io_uring.
//!
//! See `docs/architecture.md` for the map. In short:
//! - [`http`] parses and encodes HTTP/1.1 without doing any I/O or reading a clock;
//! - [`time`] is the fractional IMF-fixdate timestamp every change is stamped with;
//! - [`body`] is the shared-segment body type every response is written from;
//! - [`store`] holds resources (one shard per worker) and answers queries purely;
//! - [`worker`] is a thread with a tokio-uring runtime, its listener, its shard and its wait lists.

pub mod auth;
pub mod body;
pub mod config;
pub mod http;
pub mod metrics;
pub mod server;
pub mod store;
pub mod time;
pub mod worker;
