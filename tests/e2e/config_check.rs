//! `orion-proxy check`: a valid config passes; each kind of bad config is refused with a
//! message naming the key, all errors at once, exit status non-zero.

use crate::harness::*;
use std::process::Command;

fn check(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s3cr3t-value").unwrap();
    let yaml = yaml.replace(
        "SECRET_FILE",
        &dir.path().join("secret").display().to_string(),
    );
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let run = check_config(&path);
    (run.ok, run.text())
}

const GOOD: &str = r#"
server: {listen: "127.0.0.1:18080"}
accounts:
  main:
    endpoints: [{url: "http://127.0.0.1:18081"}]
    credentials: {type: static_token, token: {file: "SECRET_FILE"}}
tenants:
  default: {account: main}
api_keys:
  - {name: ci, hash: "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824", roles: [viewer], tenant: default}
"#;

#[test]
fn a_good_config_passes() {
    let (ok, text) = check(GOOD);
    assert!(ok, "{text}");
    assert!(text.contains("OK"), "{text}");
    assert!(!text.contains("s3cr3t-value"));
}

#[test]
fn bad_configs_name_their_keys() {
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown key",
            GOOD.replace("server: {", "server: {colour: blue, "),
            &["server", "colour"],
        ),
        (
            "bad address",
            GOOD.replace("127.0.0.1:18080", "not-an-address"),
            &["server.listen"],
        ),
        (
            "wrong type",
            GOOD.replace("server: {", "server: {threads: many, "),
            &["server.threads"],
        ),
        (
            "unknown tenant",
            GOOD.replace("tenant: default}", "tenant: nowhere}"),
            &["api_keys[0]", "tenant", "nowhere"],
        ),
        (
            "unknown role",
            GOOD.replace("roles: [viewer]", "roles: [wizard]"),
            &["api_keys[0]", "roles", "wizard"],
        ),
        (
            "bad hash",
            GOOD.replace("sha256:2cf2", "md5:2cf2"),
            &["api_keys[0]", "hash"],
        ),
        (
            "secret in plain text",
            GOOD.replace("{file: \"SECRET_FILE\"}", "\"plain-secret\""),
            &["accounts.main.credentials"],
        ),
        (
            "missing secret",
            GOOD.replace(
                "{file: \"SECRET_FILE\"}",
                "{env: ORION_TEST_NOT_SET_ANYWHERE}",
            ),
            &[
                "accounts.main.credentials.token",
                "ORION_TEST_NOT_SET_ANYWHERE",
            ],
        ),
        (
            "bad endpoint URL",
            GOOD.replace("http://127.0.0.1:18081", "ftp://x"),
            &["accounts.main.endpoints[0].url"],
        ),
        (
            "tenant without account",
            GOOD.replace("default: {account: main}", "default: {account: other}"),
            &["tenants.default.account", "other"],
        ),
        (
            "body limit past Pingora's buffer",
            GOOD.replace("server: {", "server: {max_body_bytes: 1000000, "),
            &["server.max_body_bytes"],
        ),
        (
            "bad role pattern",
            format!("{GOOD}roles:\n  viewer: [\"Instances Read\"]\n"),
            &["roles.viewer[0]"],
        ),
        ("not YAML", "server: [unclosed".to_string(), &["YAML"]),
    ];
    for (what, yaml, needles) in cases {
        let (ok, text) = check(&yaml);
        assert!(!ok, "{what}: accepted\n{text}");
        for n in needles {
            assert!(text.contains(n), "{what}: message lacks '{n}':\n{text}");
        }
        assert!(
            !text.contains("plain-secret"),
            "{what}: a config error must not echo a secret: {text}"
        );
    }
}

#[test]
fn several_errors_are_reported_at_once() {
    let yaml = GOOD
        .replace("roles: [viewer]", "roles: [wizard]")
        .replace("tenant: default}", "tenant: nowhere}");
    let (ok, text) = check(&yaml);
    assert!(!ok);
    assert!(
        text.contains("wizard") && text.contains("nowhere"),
        "{text}"
    );
}

#[test]
fn the_shipped_configs_parse() {
    // The production example references credentials that only exist on a server, so `check`
    // stops at resolving them; everything before that (schema, keys, routes) must be fine.
    let prod = std::fs::read_to_string("conf/orion-proxy.yaml").unwrap();
    let (ok, text) = check(&prod);
    assert!(!ok);
    assert!(
        text.contains("credential orionvm-client-id") || text.contains("CREDENTIALS_DIRECTORY"),
        "{text}"
    );
    assert!(orion_proxy::config::parse(&prod).is_ok());
    assert!(orion_proxy::config::parse(orion_proxy::demo::DEMO_YAML).is_ok());
}

#[test]
fn keygen_prints_a_usable_key() {
    let out = Command::new(binary())
        .args([
            "keygen", "--name", "ci", "--role", "operator", "--tenant", "acme",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ork_"))
        .expect("a key line");
    assert_eq!(key.len(), 64);
    let hash = format!(
        "sha256:{}",
        hex::encode(orion_proxy::auth::api_keys::hash_key(key))
    );
    assert!(text.contains(&hash), "{text}");
}

/// A config that names, for each kind, something only the deployment host has (secrets from the
/// environment, a file and a systemd credential; the listener's certificate and key; a CA
/// bundle; a JWKS file; log directories), and services a check must not contact: OrionVM, a
/// JWKS URL, Redis and an OTLP collector on loopback ports that the test listens on.
fn host_bound_config(absent: &std::path::Path, ports: &[u16]) -> String {
    let [upstream, jwks, redis, otlp] = ports else {
        panic!("four ports")
    };
    let a = absent.display();
    format!(
        r#"
server:
  listen: "127.0.0.1:18080"
  tls: {{cert_file: "{a}/proxy.crt", key_file: "{a}/proxy.key"}}
accounts:
  main:
    endpoints: [{{url: "https://127.0.0.1:{upstream}"}}]
    ca_file: "{a}/ca.pem"
    credentials:
      type: oauth2
      client_id: {{credential: orionvm-client-id}}
      client_secret: {{env: ORION_PROXY_TEST_OFFLINE_SECRET}}
  signed:
    endpoints: [{{url: "http://127.0.0.1:{upstream}"}}]
    credentials: {{type: signature, keyid: k1, algorithm: ed25519, key: {{file: "{a}/ed25519.key"}}}}
tenants:
  default: {{account: main}}
  other: {{account: signed}}
oauth:
  signing_key: {{env: ORION_PROXY_TEST_OFFLINE_SIGNING}}
clients:
  - {{client_id: ci, secret_hash: '{hash}', roles: [viewer], tenant: default}}
jwt:
  issuers:
    - {{name: idp, issuer: "https://idp.example", audiences: [orion], algorithms: [RS256], jwks_url: "http://127.0.0.1:{jwks}/jwks.json", default_tenant: default}}
    - {{name: files, issuer: "https://files.example", audiences: [orion], algorithms: [RS256], jwks_file: "{a}/jwks.json", default_tenant: default}}
state:
  backend: redis
  redis: {{url: "redis://127.0.0.1:{redis}/0", password: {{env: ORION_PROXY_TEST_OFFLINE_REDIS}}}}
logging:
  access_log: "{a}/access.log"
  audit: {{path: "{a}/audit.log"}}
tracing:
  otlp:
    endpoint: "http://127.0.0.1:{otlp}"
    headers: {{authorization: {{env: ORION_PROXY_TEST_OFFLINE_OTLP}}}}
  sampling_ratio: 1.0
"#,
        hash = orion_proxy::auth::tokens::hash_secret("ci-secret").unwrap()
    )
}

/// `check` with `args`, without the host's secrets (`env` added): exit status, stdout, stderr.
fn check_with(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.arg("check").args(args).arg("-c").arg(config);
    for v in [
        "CREDENTIALS_DIRECTORY",
        "ORION_PROXY_TEST_OFFLINE_SECRET",
        "ORION_PROXY_TEST_OFFLINE_SIGNING",
        "ORION_PROXY_TEST_OFFLINE_REDIS",
        "ORION_PROXY_TEST_OFFLINE_OTLP",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_offline_passes_without_the_hosts_files_and_contacts_nothing() {
    // OrionVM, the JWKS URL, Redis and the collector: listeners nobody may connect to.
    let listeners: Vec<std::net::TcpListener> = (0..4)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("not-on-this-host");
    let config = dir.path().join("c.yaml");
    std::fs::write(&config, host_bound_config(&absent, &ports)).unwrap();

    // Plain check: every missing one is an error, exit status 3.
    let (code, out, err) = check_with(&config, &[], &[]);
    assert_eq!(code, 3, "{out}{err}");
    for needle in [
        "server.tls.cert_file",
        "orionvm-client-id",
        "ca_file",
        "logging",
    ] {
        assert!(err.contains(needle), "plain check lacks '{needle}':\n{err}");
    }

    // Offline: OK, and each one is listed as not checked.
    let (code, out, err) = check_with(&config, &["--offline"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK offline"), "{out}");
    assert!(err.contains("not checked here (--offline)"), "{err}");
    for needle in [
        "server.tls.cert_file",
        "server.tls.key_file",
        "orionvm-client-id",
        "ORION_PROXY_TEST_OFFLINE_SECRET",
        "ed25519.key",
        "ORION_PROXY_TEST_OFFLINE_SIGNING",
        "ORION_PROXY_TEST_OFFLINE_REDIS",
        "ORION_PROXY_TEST_OFFLINE_OTLP",
        "ca.pem",
        "jwks.json",
        "access.log",
        "audit.log",
    ] {
        assert!(
            err.contains(needle),
            "offline check lacks '{needle}':\n{err}"
        );
    }
    assert!(!absent.exists(), "check created {}", absent.display());

    // What is there is checked in full: a signing key too short is refused offline too.
    let (code, _, err) = check_with(
        &config,
        &["--offline"],
        &[("ORION_PROXY_TEST_OFFLINE_SIGNING", "short")],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("oauth.signing_key: must be at least"), "{err}");
    assert!(!err.contains("ORION_PROXY_TEST_OFFLINE_SIGNING"), "{err}");
    // And the file's own mistakes are errors as ever.
    let typo = dir.path().join("typo.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &typo,
        text.replace("  default: {account: main}", "  default: {account: mian}"),
    )
    .unwrap();
    let (code, _, err) = check_with(&typo, &["--offline"], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("mian"), "{err}");
    // --offline and --resolve contradict each other: a usage error.
    let (code, _, _) = check_with(&config, &["--offline", "--resolve"], &[]);
    assert_eq!(code, 2);

    // Neither check connected anywhere.
    for (i, what) in ["OrionVM", "the JWKS URL", "Redis", "the OTLP collector"]
        .iter()
        .enumerate()
    {
        match listeners[i].accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("check connected to {what}: {other:?}"),
        }
    }
}

#[test]
fn the_shipped_configs_pass_check_offline() {
    for config in ["conf/orion-proxy.yaml", "conf/container.yaml"] {
        let (code, out, err) = check_with(std::path::Path::new(config), &["--offline"], &[]);
        assert_eq!(code, 0, "{config}: {out}{err}");
        assert!(out.contains(": OK"), "{out}");
    }
}
