//! The floor for `bench/run`: a minimal Pingora pass-through with the product's Pingora version,
//! allocator (mimalloc) and server settings, and nothing else. Every request goes to one plain
//! HTTP upstream at the same path; no routing, no auth, no header changes, no log.
//!
//! ```sh
//! cargo run --release --example bare_passthrough -- --listen 127.0.0.1:8090 --upstream 127.0.0.1:8091 --threads 1
//! ```

use async_trait::async_trait;
use clap::Parser;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::time::Duration;

// The proxy's own allocator glue (mimalloc, plain blocks where the layout allows): the floor is
// measured with what the proxy runs with.
#[global_allocator]
static GLOBAL: orion_proxy::allocator::Mimalloc = orion_proxy::allocator::Mimalloc;

#[derive(Parser)]
struct Args {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// Plain HTTP upstream, `ip:port`.
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads, as `server.threads` in orion-proxy's config.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Read buffer of each downstream connection in bytes (Pingora's default: 64 KiB). Only for
    /// experiments: the floor in `bench/run` keeps Pingora's default, as orion-proxy does.
    #[arg(long)]
    l4_read_buffer: Option<usize>,
}

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        // The same keep-alive behaviour toward the upstream as orion-proxy's endpoints.
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        Ok(Box::new(peer))
    }
}

fn main() {
    let args = Args::parse();
    // Same server settings as orion-proxy's `server::build`.
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 256,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Bare {
            upstream: args.upstream,
        },
        "bare-passthrough",
    );
    match args.l4_read_buffer {
        None => proxy.add_tcp(&args.listen),
        Some(read) => proxy.add_listener(ListenerConfig::tcp(args.listen.as_str()).l4_buffer(
            L4BufferSettings {
                read: Some(read),
                write: None,
                ..Default::default()
            },
        )),
    }
    server.add_service(proxy);
    server.run(RunArgs::default());
}
