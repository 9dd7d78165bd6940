//! A real `redis-server` (Debian's package, installed by `scripts/setup`) on a free loopback
//! port, which a test can stop and start again on the same port; stopped on drop. With
//! [`RedisServer::start_tls`] it listens only for TLS (a certificate from a private CA made by
//! the `openssl` command) and admits only an ACL user with a password. Either way its clients
//! may run only the commands of README's ACL line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    pub tls: Option<RedisTls>,
}

/// What a client of a TLS server needs (files in the server's temporary directory).
#[derive(Clone)]
pub struct RedisTls {
    /// The CA that signed the server's certificate (for 127.0.0.1).
    pub ca_file: PathBuf,
    /// Another CA, which signed nothing the server shows.
    pub other_ca_file: PathBuf,
    /// The ACL user: the only one allowed in, with README's rules (keys under `e2e:` only).
    pub user: String,
    pub password: String,
    /// The password, alone in a file (for a `{file: ...}` secret reference).
    pub password_file: PathBuf,
}

fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 16];
    c.write_all(b"PING\r\n").is_ok()
        && c.read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// The rules of README's ACL line ("TLS and ACL" in the deployment section) for keys under
/// `e2e:`: every server here admits its clients with exactly those, so that a command the proxy
/// needs and the line forgets fails the tests.
fn readme_acl_rules() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER orion-proxy on >PASSWORD "))
        .expect("README's ACL line (ACL SETUSER orion-proxy on >PASSWORD ...)");
    let rules: Vec<String> = line
        .split_whitespace()
        .skip(5)
        .map(str::to_string)
        .collect();
    assert!(
        rules.first().map(String::as_str) == Some("~orion-proxy:*"),
        "README's ACL line should start its rules with ~orion-proxy:*: {line}"
    );
    std::iter::once("~e2e:*".to_string())
        .chain(rules.into_iter().skip(1))
        .collect()
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`) made by the `openssl` command in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=orion test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}.pem"))
}

/// A CA, a server certificate for 127.0.0.1 it signs, another CA, and the ACL user's password.
fn make_tls(dir: &Path) -> RedisTls {
    let ca_file = make_ca(dir, "ca");
    let other_ca_file = make_ca(dir, "other-ca");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let password_file = dir.join("redis-password");
    std::fs::write(&password_file, &password).unwrap();
    RedisTls {
        ca_file,
        other_ca_file,
        user: "orion".into(),
        password,
        password_file,
    }
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A server that speaks only TLS and admits only the ACL user of [`RedisTls`].
    pub fn start_tls() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> RedisServer {
        let mut dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let tls = tls.then(|| make_tls(dir.path()));
            let mut s = RedisServer {
                child: None,
                port: super::free_port(),
                dir,
                tls,
            };
            if s.spawn() {
                return s;
            }
            dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
        }
        panic!("redis-server did not start (scripts/setup installs it)");
    }

    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let rules = readme_acl_rules();
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => {
                // The default user (no password), limited as README says.
                cmd.args(["--port", &port])
                    .args(["--user", "default", "reset", "on", "nopass"])
                    .args(&rules);
            }
            Some(t) => {
                let pw = format!(">{}", t.password);
                cmd.args(["--port", "0", "--tls-port", &port])
                    .args([
                        "--tls-cert-file",
                        "server.pem",
                        "--tls-key-file",
                        "server.key",
                    ])
                    .args(["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"])
                    .args(["--user", "default", "off"])
                    .args(["--user", &t.user, "reset", "on", &pw])
                    .args(&rules);
            }
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self.answers_ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    fn answers_ping(&self) -> bool {
        let Some(t) = &self.tls else {
            return answers_ping(self.port);
        };
        // redis-cli (Debian's redis-tools, beside redis-server) speaks TLS.
        Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&t.ca_file)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "--user",
                &t.user,
            ])
            .env("REDISCLI_AUTH", &t.password)
            .arg("PING")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// The `state:` section for this server.
    pub fn state_yaml(&self, extra: &str) -> String {
        match &self.tls {
            None => format!(
                "state:\n  backend: redis\n  task_lease_ms: 3000\n  sync_interval_ms: 50\n{extra}  redis: {{url: \"{}\", prefix: \"e2e:\", command_timeout_ms: 500}}\n",
                self.url()
            ),
            Some(t) => self.state_yaml_tls(extra, &t.ca_file),
        }
    }

    /// The `state:` section for this TLS server, trusting `ca_file`, as the ACL user whose
    /// password is read from a file (TLS handshakes on a loaded machine get generous timeouts).
    pub fn state_yaml_tls(&self, extra: &str, ca_file: &Path) -> String {
        let t = self.tls.as_ref().expect("a TLS server");
        format!(
            "state:\n  backend: redis\n  sync_interval_ms: 50\n{extra}  redis:\n    url: \"{}\"\n    ca_file: \"{}\"\n    username: {}\n    password: {{file: \"{}\"}}\n    prefix: \"e2e:\"\n    connect_timeout_ms: 5000\n    command_timeout_ms: 2000\n",
            self.url(),
            ca_file.display(),
            t.user,
            t.password_file.display()
        )
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("redis-server did not start again on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
