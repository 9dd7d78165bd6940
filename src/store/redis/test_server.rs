//! A real `redis-server` on a free loopback port for the unit tests (Debian's package, installed
//! by `scripts/setup`), stopped on drop.

use super::{Redis, Settings};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub struct TestRedis {
    child: Child,
    pub port: u16,
}

impl TestRedis {
    pub fn start() -> TestRedis {
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (scripts/setup installs it)");
            let mut s = TestRedis { child, port };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = s.child.try_wait() {
                    break;
                }
                if let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    use std::io::{Read, Write};
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 16];
                    if c.write_all(b"PING\r\n").is_ok()
                        && c.read(&mut buf)
                            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
                    {
                        return s;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = s.child.kill();
        }
        panic!("redis-server did not start");
    }

    pub fn backend(&self, prefix: &str) -> Arc<Redis> {
        backend_at(self.port, prefix)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn backend_at(port: u16, prefix: &str) -> Arc<Redis> {
    Redis::connect(&Settings {
        url: format!("redis://127.0.0.1:{port}/0"),
        tls: false,
        root_cert: None,
        username: None,
        password: None,
        prefix: prefix.into(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        pool_size: 2,
        on_error: |_| {},
        on_change: |_| {},
    })
    .expect("redis settings")
}
