//! orion-proxy: an edge proxy on Pingora in front of OrionVM's v1 API.
pub mod sim;
