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
