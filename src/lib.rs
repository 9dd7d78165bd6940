//! orion-proxy: an edge proxy on Pingora in front of OrionVM's v1 API.
//!
//! Each concern has its own module; `proxy` is the one `ProxyHttp` implementation that calls
//! into them from its phases and the only code that writes to a client. The module map, who
//! owns what state, and the request's path through the phases: `docs/ARCHITECTURE.md`.

pub mod admin;
pub mod allocator;
pub mod auth;
pub mod clock;
pub mod config;
pub mod demo;
pub mod errors;
pub mod facade;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod observe;
pub mod proxy;
pub mod request;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod store;
pub mod upstream;
pub mod validate;
