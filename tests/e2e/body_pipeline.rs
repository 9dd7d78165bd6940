//! The request body pipeline end to end: every shipped schema (mirror and facade) with one
//! valid and at least three invalid bodies, the size limit at its edge, malformed JSON, huge
//! numbers, deep nesting, strictness, switching a schema off, schema files, and rewrites that
//! arrive upstream as rewritten with the right length.

use crate::harness::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// Ids of the objects the simulator seeds the first account (acme) with.
const INSTANCE: &str = "3b0c2f6e-1111-4222-8333-944455556666";
const DISK: &str = "7c8d9e0f-1a2b-4c3d-8e4f-5a6b7c8d9e0f";
const NETWORK: &str = "2d3e4f5a-6b7c-4d8e-9f0a-1b2c3d4e5f6a";
const IP: &str = "4f5a6b7c-8d9e-4f0a-8b1c-2d3e4f5a6b7c";
const KEY: &str = "6b7c8d9e-0f1a-4b2c-8d3e-4f5a6b7c8d9e";
const REGION: &str = "9e98d1f2-3c4b-4a5d-8e6f-7a8b9c0d1e2f";
const ITIER: &str = "55f8a2b3-c4d5-4e6f-8a7b-9c0d1e2f3a4b";
const DTIER: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";

/// The shipped routes plus `extra` (YAML flow mappings), as a `routes:` block.
fn routes_with(extra: &[&str]) -> String {
    let defaults: serde_yaml::Value =
        serde_yaml::from_str(orion_proxy::config::DEFAULTS_YAML).unwrap();
    let mut out = String::from("routes:\n");
    for r in defaults["routes"].as_sequence().unwrap() {
        let flow = serde_json::to_string(r).unwrap();
        out += &format!("  - {flow}\n");
    }
    for e in extra {
        out += &format!("  - {e}\n");
    }
    out
}

/// Test-only routes that put the facade schemas in front of paths the simulator does not
/// know (it answers those 404): the facade itself is another module's work.
const FACADE_TEST_ROUTES: &[&str] = &[
    r#"{name: t.facade.create, method: POST, path: "/api/v1/facade_test/instances", permission: "instances:write", schema: facade.instance.create}"#,
    r#"{name: t.facade.patch, method: PATCH, path: "/api/v1/facade_test/instances/{id}", permission: "instances:write", schema: facade.instance.patch}"#,
];

async fn send(h: &Harness, method: &str, path: &str, body: &str) -> reqwest::Response {
    h.http
        .request(method.parse().unwrap(), h.url(path))
        .bearer_auth(h.key("admin"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request")
}

struct Case {
    schema: &'static str,
    method: &'static str,
    path: String,
    valid: Value,
    invalid: Vec<(Value, Vec<&'static str>)>,
}

fn cases() -> Vec<Case> {
    let i = |p: &str| format!("/api/v1/instances/{INSTANCE}{p}");
    let d = |p: &str| format!("/api/v1/disks/{DISK}{p}");
    vec![
        Case {
            schema: "instances.create",
            method: "POST",
            path: "/api/v1/instances".into(),
            valid: json!({"name": "web-2", "memory": 2048, "size": 20, "region": "SY3", "template": "ubuntu-22-04",
                "instance_performance_tier": ITIER, "disk_performance_tier": DTIER, "allocate_public_ip": true,
                "start_when_ready": false, "public_keys": [KEY]}),
            invalid: vec![
                (
                    json!({"name": "web-2", "memory": 100, "size": 20, "region": "SY3", "template": "ubuntu-22-04"}),
                    vec!["memory"],
                ),
                (
                    json!({"memory": 1024, "size": 20, "region": REGION}),
                    vec!["name", "template"],
                ),
                (
                    json!({"name": "web-2", "memory": 1024, "size": 0, "region": REGION, "template": "ubuntu-22-04", "public_keys": ["not-a-uuid"]}),
                    vec!["size", "public_keys[0]"],
                ),
            ],
        },
        Case {
            schema: "instances.assemble",
            method: "POST",
            path: "/api/v1/instances/assemble".into(),
            valid: json!({"name": "web-3", "memory": 4096, "performance_tier": ITIER, "region": REGION, "boot_device": "disk",
                "disks": [DISK], "ip_addresses": [IP], "virtualization": "hvm"}),
            invalid: vec![
                (
                    json!({"name": "web-3", "memory": 4096, "performance_tier": ITIER, "region": REGION, "disks": [DISK], "virtualization": "kvm"}),
                    vec!["virtualization"],
                ),
                (
                    json!({"name": "web-3", "memory": 4096, "performance_tier": ITIER, "region": REGION, "disks": ["boot"]}),
                    vec!["disks[0]"],
                ),
                (
                    json!({"name": "", "memory": "lots", "performance_tier": ITIER, "region": REGION, "disks": [DISK]}),
                    vec!["name", "memory"],
                ),
            ],
        },
        Case {
            schema: "instances.update",
            method: "PUT",
            path: i(""),
            valid: json!({"name": "web-1b", "memory": 4096, "start_on_crash": "true"}),
            invalid: vec![
                (json!({"boot_device": "usb"}), vec!["boot_device"]),
                (json!({"start_on_crash": "maybe"}), vec!["start_on_crash"]),
                (
                    json!({"performance_tier": "standard", "hostname": "bad_host!"}),
                    vec!["performance_tier", "hostname"],
                ),
            ],
        },
        Case {
            schema: "instances.set_disks",
            method: "PUT",
            path: i("/disks"),
            valid: json!({"disks": [DISK]}),
            invalid: vec![
                (json!({}), vec!["disks"]),
                (json!({"disks": DISK}), vec!["disks"]),
                (json!({"disks": [DISK, 123]}), vec!["disks[1]"]),
            ],
        },
        Case {
            schema: "instances.set_public_keys",
            method: "PUT",
            path: i("/public_keys"),
            valid: json!({"public_keys": [KEY]}),
            invalid: vec![
                (json!({}), vec!["public_keys"]),
                (json!({"public_keys": [KEY, KEY]}), vec!["public_keys"]),
                (
                    json!({"public_keys": [{"id": "x"}]}),
                    vec!["public_keys[0].id"],
                ),
            ],
        },
        Case {
            schema: "instances.set_availability_group",
            method: "PUT",
            path: i("/availability_group"),
            valid: json!({"availability_group": []}),
            invalid: vec![
                (json!({}), vec!["availability_group"]),
                (
                    json!({"availability_group": null}),
                    vec!["availability_group"],
                ),
                (
                    json!({"availability_group": ["x"]}),
                    vec!["availability_group[0]"],
                ),
            ],
        },
        Case {
            schema: "instances.set_network_adapters",
            method: "PUT",
            path: i("/network_adapters"),
            valid: json!({"network_adapters": [{"network": NETWORK, "ip_addresses": [IP]}]}),
            invalid: vec![
                (
                    json!({"network_adapters": [{"dhcp": true}]}),
                    vec!["network_adapters[0].network"],
                ),
                (
                    json!({"network_adapters": [{"network": "nope"}]}),
                    vec!["network_adapters[0].network"],
                ),
                (json!({}), vec!["network_adapters"]),
            ],
        },
        Case {
            schema: "instances.context",
            method: "POST",
            path: i("/context"),
            valid: json!({"key": "role", "value": "web"}),
            invalid: vec![
                (json!({"k": {"nested": 1}}), vec!["k"]),
                (json!({"context": {"k": [1]}}), vec!["context.k"]),
                (json!({"j": [true]}), vec!["j"]),
            ],
        },
        Case {
            schema: "instances.context",
            method: "PUT",
            path: i("/context"),
            valid: json!({"role": "web", "tier": 2}),
            invalid: vec![
                (json!({"role": null}), vec!["role"]),
                (json!({"context": "flat"}), vec!["context"]),
                (json!(["role"]), vec!["$"]),
            ],
        },
        Case {
            schema: "instances.remote_access",
            method: "POST",
            path: i("/remote_access"),
            valid: json!({"type": "vnc"}),
            invalid: vec![
                (json!({"type": "rdp"}), vec!["type"]),
                (json!({"type": 5}), vec!["type"]),
                (json!("vnc"), vec!["$"]),
            ],
        },
        Case {
            schema: "disks.create",
            method: "POST",
            path: "/api/v1/disks".into(),
            valid: json!({"name": "data-1", "performance_tier": DTIER, "region": REGION, "size": 50, "template": null}),
            invalid: vec![
                (
                    json!({"name": "data-1", "region": REGION, "size": 0}),
                    vec!["size"],
                ),
                (json!({"size": 10}), vec!["name", "region"]),
                (
                    json!({"name": "data-1", "region": REGION, "size": 10, "template": "Not A Slug!"}),
                    vec!["template"],
                ),
            ],
        },
        Case {
            schema: "disks.update",
            method: "PUT",
            path: d(""),
            valid: json!({"name": "renamed"}),
            invalid: vec![
                (json!({"cdrom": "maybe"}), vec!["cdrom"]),
                (json!({"name": ""}), vec!["name"]),
                (json!({"name": 5}), vec!["name"]),
            ],
        },
        Case {
            schema: "disks.resize",
            method: "POST",
            path: d("/resize"),
            valid: json!({"size": 80}),
            invalid: vec![
                (json!({}), vec!["size"]),
                (json!({"size": -1}), vec!["size"]),
                (json!({"size": 99999}), vec!["size"]),
                (json!({"size": "big"}), vec!["size"]),
            ],
        },
        Case {
            schema: "disks.clone",
            method: "POST",
            path: d("/clone"),
            valid: json!({"name": "copy-1"}),
            invalid: vec![
                (json!({"name": ""}), vec!["name"]),
                (json!({"name": "x".repeat(300)}), vec!["name"]),
                (json!({"name": ["a"]}), vec!["name"]),
            ],
        },
        Case {
            schema: "ip_addresses.create",
            method: "POST",
            path: "/api/v1/ip_addresses".into(),
            valid: json!({"network": NETWORK, "name": "ip-1"}),
            invalid: vec![
                (json!({"name": "ip-1"}), vec!["network"]),
                (json!({"network": "x"}), vec!["network"]),
                (
                    json!({"network": NETWORK, "shareable": "yes"}),
                    vec!["shareable"],
                ),
            ],
        },
        Case {
            schema: "networks.create",
            method: "POST",
            path: "/api/v1/networks".into(),
            valid: json!({"name": "private-1", "region": REGION, "specification": "10.1.0.0/24"}),
            invalid: vec![
                (
                    json!({"name": "public-2", "region": REGION, "is_public": true}),
                    vec!["is_public"],
                ),
                (
                    json!({"name": "private-2", "region": REGION, "specification": "10.0.0.0/99"}),
                    vec!["specification"],
                ),
                (json!({"name": "private-3"}), vec!["region"]),
            ],
        },
        Case {
            schema: "public_keys.create",
            method: "POST",
            path: "/api/v1/public_keys".into(),
            valid: json!({"name": "ops2", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample ops@example"}),
            invalid: vec![
                (json!({"name": "ops3", "key": "not a key"}), vec!["key"]),
                (json!({}), vec!["name", "key"]),
                (
                    json!({"name": "bad\nname", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIexample"}),
                    vec!["name"],
                ),
            ],
        },
        Case {
            schema: "facade.instance.create",
            method: "POST",
            path: "/api/v1/facade_test/instances".into(),
            valid: json!({"name": "web-9", "memory": 2048, "region": "SY3", "template": "ubuntu-22-04", "performance_tier": "Standard",
                "public_keys": [KEY], "allocate_public_ip": true, "start": false}),
            invalid: vec![
                (
                    json!({"name": "web-9", "memory": 2048, "region": "SY3", "template": "ubuntu-22-04", "colour": "red"}),
                    vec!["colour"],
                ),
                (
                    json!({"name": "web-9", "memory": "2048", "region": "SY3", "template": "ubuntu-22-04"}),
                    vec!["memory"],
                ),
                (
                    json!({"name": "web-9", "memory": 2048, "region": "Sydney!"}),
                    vec!["region", "template"],
                ),
            ],
        },
        Case {
            schema: "facade.instance.patch",
            method: "PATCH",
            path: format!("/api/v1/facade_test/instances/{INSTANCE}"),
            valid: json!({"memory": 4096, "name": "web-1c"}),
            invalid: vec![
                (json!({}), vec!["$"]),
                (json!({"memory": 100}), vec!["memory"]),
                (
                    json!({"network_adapters": [{"network": NETWORK, "mtu": 9000}]}),
                    vec!["network_adapters[0].mtu"],
                ),
                (json!({"state": "running"}), vec!["state"]),
            ],
        },
    ]
}

/// The proxy on a static token and without active health checks: these tests count the
/// requests that reach the simulator, and a probe (GET / every 2 s per account) landing between
/// `reset_calls` and the count would be counted too.
async fn start(adjust: impl FnOnce(&mut ConfigBuilder)) -> Harness {
    Harness::start_with(|c| {
        c.acme_upstream = Upstream::Static;
        c.account_extra = "    health_check: {enabled: false}\n".into();
        adjust(c);
    })
    .await
}

#[tokio::test]
async fn every_schema_passes_a_valid_body_and_lists_every_violation_by_path() {
    let h = start(|c| c.extra_top = routes_with(FACADE_TEST_ROUTES)).await;
    let all = cases();
    // Every shipped schema is exercised.
    let covered: BTreeSet<&str> = all.iter().map(|c| c.schema).collect();
    for (name, _) in orion_proxy::validate::schema::BUILTIN {
        assert!(covered.contains(name), "no test case for schema {name}");
    }
    for case in &all {
        let label = format!("{} {} ({})", case.method, case.path, case.schema);
        h.sim.reset_calls();
        let text = case.valid.to_string();
        let resp = send(&h, case.method, &case.path, &text).await;
        // Whatever OrionVM makes of it, the proxy forwarded it.
        let status = resp.status().as_u16();
        assert_ne!(status, 400, "{label}");
        let seen = h.sim.recent_requests();
        let got = seen
            .iter()
            .find(|r| r.path == case.path && r.method == case.method)
            .unwrap_or_else(|| panic!("{label}: the valid body did not reach the upstream"));
        assert_eq!(got.body, text, "{label}: forwarded byte for byte");

        for (bad, paths) in &case.invalid {
            h.sim.reset_calls();
            let resp = send(&h, case.method, &case.path, &bad.to_string()).await;
            let err = expect_error(resp, 422, "validation_failed").await;
            let keys: BTreeSet<&str> = err["details"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            let want: BTreeSet<&str> = paths.iter().copied().collect();
            assert_eq!(keys, want, "{label}: details of {bad}: {err}");
            for p in paths {
                let msgs = err["details"][p].as_array().unwrap();
                assert!(
                    !msgs.is_empty()
                        && msgs
                            .iter()
                            .all(|m| m.as_str().is_some_and(|s| !s.is_empty())),
                    "{label}: messages for {p}: {err}"
                );
            }
            assert_eq!(
                h.sim.recent_requests().len(),
                0,
                "{label}: an invalid body reached the upstream"
            );
        }
    }
}

#[tokio::test]
async fn violations_carry_readable_messages_and_the_first_in_detail() {
    let h = start(|_| {}).await;
    let resp = send(
        &h,
        "POST",
        "/api/v1/instances/assemble",
        &json!({"name": "x", "memory": 100, "performance_tier": ITIER, "region": REGION, "disks": [DISK]}).to_string(),
    )
    .await;
    let err = expect_error(resp, 422, "validation_failed").await;
    assert_eq!(
        err["details"]["memory"],
        json!(["100 is less than the minimum of 512"])
    );
    assert_eq!(err["detail"], "memory: 100 is less than the minimum of 512");
    assert_eq!(err["title"], "Request body is invalid");
}

/// A raw HTTP/1.1 exchange, for bodies reqwest would not send as they are (chunked, lying).
async fn raw(h: &Harness, request: Vec<u8>) -> (u16, String) {
    let addr = h.proxy.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The proxy may answer and close before it has read everything.
    let _ = s.write_all(&request).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn size_limit_malformed_json_huge_numbers_and_deep_nesting() {
    let h = start(|_| {}).await;
    let ctx = format!("/api/v1/instances/{INSTANCE}/context");
    // Exactly the limit (65536 bytes, Pingora's replay buffer) passes and reaches OrionVM.
    let frame = r#"{"k":""}"#.len();
    let at_limit = format!(r#"{{"k":"{}"}}"#, "v".repeat(65536 - frame));
    assert_eq!(at_limit.len(), 65536);
    h.sim.reset_calls();
    let resp = send(&h, "PUT", &ctx, &at_limit).await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let seen = h.sim.recent_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header_values("content-length"), vec!["65536"]);
    assert_eq!(seen[0].body.len(), 65536);

    // One byte more: 413 before anything goes upstream.
    let over = format!(r#"{{"k":"{}"}}"#, "v".repeat(65537 - frame));
    h.sim.reset_calls();
    let resp = send(&h, "PUT", &ctx, &over).await;
    let err = expect_error(resp, 413, "payload_too_large").await;
    assert!(err["detail"].as_str().unwrap().contains("65536"), "{err}");
    assert!(h.sim.recent_requests().is_empty());

    // Chunked, with no length announced: refused as the bytes pass the limit.
    let key = h.key("admin").to_string();
    let mut req = format!(
        "PUT {ctx} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in over.as_bytes().chunks(8192) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, text) = raw(&h, req).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    assert!(h.sim.recent_requests().is_empty());

    // Not JSON: 400.
    let resp = send(&h, "POST", "/api/v1/disks", r#"{"name": "d", "size": 10,"#).await;
    let err = expect_error(resp, 400, "invalid_json").await;
    assert!(err["detail"].as_str().unwrap().contains("line 1"), "{err}");

    // A number beyond f64: 400; a huge integer that parses: 422 on the field.
    let resp = send(
        &h,
        "POST",
        &format!("/api/v1/disks/{DISK}/resize"),
        r#"{"size": 1e400}"#,
    )
    .await;
    expect_error(resp, 400, "invalid_json").await;
    let resp = send(
        &h,
        "POST",
        &format!("/api/v1/disks/{DISK}/resize"),
        r#"{"size": 123456789012345678901234567890}"#,
    )
    .await;
    let err = expect_error(resp, 422, "validation_failed").await;
    assert!(err["details"]["size"].is_array(), "{err}");

    // Deep nesting: a clear 400, and the proxy keeps serving.
    let deep = format!(
        r#"{{"name": {}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let resp = send(&h, "POST", "/api/v1/disks", &deep).await;
    let err = expect_error(resp, 400, "invalid_json").await;
    assert!(err["detail"].as_str().unwrap().contains("nesting"), "{err}");
    let resp = h.get(h.key("admin"), "/api/v1/regions").await;
    assert_eq!(resp.status(), 200);

    // What real clients send: a JSON content type on GET and DELETE without a body, a GET
    // with a body. None is refused.
    let resp = h
        .http
        .get(h.url("/api/v1/regions"))
        .bearer_auth(h.key("admin"))
        .header("content-type", "application/json")
        .body("{\"ignored\": true}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = h
        .delete(
            h.key("admin"),
            &format!("/api/v1/instances/{INSTANCE}/context/missing"),
        )
        .await;
    assert_ne!(resp.status().as_u16(), 400);
    assert_ne!(resp.status().as_u16(), 422);
    // A start with an empty body and a JSON content type (what clients send) is forwarded.
    h.sim.reset_calls();
    let resp = send(
        &h,
        "POST",
        &format!("/api/v1/instances/{INSTANCE}/stop"),
        "",
    )
    .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(h.sim.recent_requests().len(), 1);
}

#[tokio::test]
async fn rewritten_body_arrives_upstream_with_its_length() {
    let h = start(|c| {
        let rewrite = r#"{name: instances.create, method: POST, path: "/api/v1/instances", permission: "instances:write", schema: instances.create,
        rewrite: {drop: [hostname], rename: {start: start_when_ready}, set: {allocate_public_ip: false}, defaults: {disk_performance_tier: "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"}}}"#;
        let mut routes = routes_with(&[]);
        // Replace the shipped instances.create with the rewriting one.
        routes = routes
            .lines()
            .filter(|l| !l.contains(r#""name":"instances.create""#))
            .map(|l| format!("{l}\n"))
            .collect();
        routes += &format!("  - {rewrite}\n");
        c.extra_top = routes;
    })
    .await;
    h.sim.reset_calls();
    let sent = json!({"name": "rw-1", "hostname": "chosen-by-caller", "memory": 1024, "size": 20, "region": "SY3",
        "template": "ubuntu-22-04", "start": false, "allocate_public_ip": true});
    let resp = send(&h, "POST", "/api/v1/instances", &sent.to_string()).await;
    let status = resp.status();
    let created: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{created}");
    let seen = h.sim.recent_requests();
    let got = seen
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/instances")
        .expect("create reached the upstream");
    let upstream: Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(
        upstream,
        json!({"name": "rw-1", "memory": 1024, "size": 20, "region": "SY3", "template": "ubuntu-22-04",
            "start_when_ready": false, "allocate_public_ip": false, "disk_performance_tier": DTIER})
    );
    assert_eq!(
        got.header_values("content-length"),
        vec![got.body.len().to_string()],
        "Content-Length is the rewritten body's"
    );
    assert!(got.header_values("transfer-encoding").is_empty());
    // OrionVM acted on the rewritten body: the hostname came from the name, no public address.
    assert_eq!(created["hostname"], "rw-1", "{created}");
    let adapters = created["network_adapters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for a in &adapters {
        assert_ne!(a["network"]["is_public"], true, "{created}");
    }
}

#[tokio::test]
async fn strictness_switching_off_and_schema_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("custom.json"),
        r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
            "properties": {"size": {"type": "integer", "maximum": 100}}, "required": ["size"]}"#,
    )
    .unwrap();
    let schema_dir = dir.path().display().to_string();
    let h = start(|c| {
        let routes = routes_with(&[])
            .lines()
            .filter(|l| {
                !l.contains(r#""name":"disks.resize""#) && !l.contains(r#""name":"disks.clone""#)
            })
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        c.extra_top = routes
            + r#"  - {name: disks.resize, method: POST, path: "/api/v1/disks/{id}/resize", permission: "disks:write", schema: custom.json}
  - {name: disks.clone, method: POST, path: "/api/v1/disks/{id}/clone", permission: "disks:write", schema: disks.clone, strict: true}
"#
            + &format!(
                "validation:\n  schema_dir: \"{schema_dir}\"\n  skip: [instances.assemble]\n"
            );
    })
    .await;
    // A schema file from validation.schema_dir.
    let resp = send(
        &h,
        "POST",
        &format!("/api/v1/disks/{DISK}/resize"),
        r#"{"size": 500}"#,
    )
    .await;
    let err = expect_error(resp, 422, "validation_failed").await;
    assert!(
        err["details"]["size"][0].as_str().unwrap().contains("100"),
        "{err}"
    );
    // Mirror default: unknown fields pass through; strict route: refused.
    let resp = send(
        &h,
        "PUT",
        &format!("/api/v1/disks/{DISK}"),
        r#"{"name": "n1", "future_field": 1}"#,
    )
    .await;
    assert_ne!(resp.status().as_u16(), 422);
    let resp = send(
        &h,
        "POST",
        &format!("/api/v1/disks/{DISK}/clone"),
        r#"{"name": "c1", "future_field": 1}"#,
    )
    .await;
    let err = expect_error(resp, 422, "validation_failed").await;
    assert_eq!(
        err["details"]["future_field"],
        json!(["is not allowed"]),
        "{err}"
    );
    // validation.skip: the schema is off; the body is still parsed and forwarded as is.
    h.sim.reset_calls();
    let resp = send(&h, "POST", "/api/v1/instances/assemble", r#"{"memory": 1}"#).await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        h.sim.recent_requests().len(),
        1,
        "forwarded unvalidated: {body}"
    );
    let resp = send(&h, "POST", "/api/v1/instances/assemble", r#"{"memory": "#).await;
    expect_error(resp, 400, "invalid_json").await;
}

#[tokio::test]
async fn schemas_are_compiled_at_load_and_reload_not_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("instances.create.json");
    let limit = |max: u32| {
        format!(
            r#"{{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "properties": {{"memory": {{"type": "integer", "maximum": {max}}}}}}}"#
        )
    };
    std::fs::write(&file, limit(1024)).unwrap();
    let schema_dir = dir.path().display().to_string();
    let h = start(|c| c.extra_top = format!("validation:\n  schema_dir: \"{schema_dir}\"\n")).await;
    let body = r#"{"name": "r-1", "memory": 2048}"#;
    // The shipped instances.create is replaced by the file in schema_dir.
    let resp = send(&h, "POST", "/api/v1/instances", body).await;
    expect_error(resp, 422, "validation_failed").await;
    // Changing the file changes nothing until a reload...
    std::fs::write(&file, limit(4096)).unwrap();
    let resp = send(&h, "POST", "/api/v1/instances", body).await;
    expect_error(resp, 422, "validation_failed").await;
    // ...which compiles it again.
    h.reload_ok().await;
    h.sim.reset_calls();
    let resp = send(&h, "POST", "/api/v1/instances", body).await;
    let answer: Value = resp.json().await.unwrap();
    // Past the proxy: OrionVM (the simulator) is the one judging it now.
    assert_eq!(h.sim.recent_requests().len(), 1, "{answer}");
    // A broken schema at reload: refused, the old one stays.
    std::fs::write(&file, r#"{"type": "no-such-type"}"#).unwrap();
    let r = h.reload().await;
    let err = expect_error(r, 422, "invalid_config").await;
    assert!(err.to_string().contains("instances.create"), "{err}");
    let resp = send(
        &h,
        "POST",
        "/api/v1/instances",
        r#"{"name": "r-2", "memory": 8192}"#,
    )
    .await;
    let err = expect_error(resp, 422, "validation_failed").await;
    assert!(
        err["details"]["memory"][0]
            .as_str()
            .unwrap()
            .contains("4096"),
        "{err}"
    );
}

#[test]
fn check_reports_bad_schema_config_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    let token = dir.path().join("t");
    std::fs::write(&token, "tok").unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"accounts:
  a: {{endpoints: [{{url: "http://127.0.0.1:9"}}], credentials: {{type: static_token, token: {{file: "{}"}}}}}}
tenants: {{t: {{account: a}}}}
routes:
  - {{name: x, method: POST, path: /x, schema: no.such.schema}}
  - {{name: y, method: POST, path: /y, rewrite: {{drop: ["a..b"]}}}}
validation: {{skip: [nope]}}
"#,
            token.display()
        ),
    )
    .unwrap();
    let run = check_config(&cfg);
    assert!(!run.ok);
    let text = run.text();
    assert!(
        text.contains("routes[0] (x).schema: unknown schema 'no.such.schema'"),
        "{text}"
    );
    assert!(text.contains("routes[1] (y).rewrite.drop[0]"), "{text}");
    assert!(text.contains("validation.skip[0]"), "{text}");
}
