//! orion-proxy: an edge proxy on Pingora in front of OrionVM's v1 API.
//!
//! Each concern has its own module; `proxy` is the one `ProxyHttp` implementation that calls
//! into them from its phases (DESIGN.md section 4).

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod errors;
pub mod facade;
pub mod limits;
pub mod observe;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod upstream;
pub mod validate;
