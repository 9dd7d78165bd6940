//! The integration tests, in one binary: the OrionVM simulator in-process and the proxy binary
//! as a child process, talking HTTP on loopback ports. One module per area; `harness` holds
//! what they share.

// The whole binary is test code: a failed unwrap is a failed test (the workspace denies them
// everywhere else).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod admin_tenants;
mod bad_requests;
mod body_pipeline;
mod client_shapes;
mod config_check;
mod console_admin;
mod console_browser;
mod console_tls;
mod demo_and_readme;
mod deploy_files;
mod deployment;
mod errors;
mod facade_instances;
mod facade_lifecycle;
mod facade_lists;
mod facade_readme;
mod fuzz_and_reload;
mod hostile_network;
mod idempotency;
mod identity_demo;
mod identity_jwt;
mod identity_permissions;
mod identity_tokens;
mod limits_budget;
mod limits_cache;
mod limits_endpoints;
mod limits_rate;
mod mirror_lifecycle;
mod observe_audit;
mod observe_audit_writer;
mod observe_ecs;
mod observe_logs;
mod observe_metrics;
mod observe_reload;
mod observe_tls;
mod observe_traces;
mod openapi_client;
mod openapi_document;
mod reload;
mod secrets;
mod service_ops;
mod signing_e2e;
mod sim_contract;
mod state_redis;
mod tls_upstream;
mod trust;
