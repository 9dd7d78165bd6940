//! The OpenAPI document: served at `/openapi.json` without credentials, equal to the shipped
//! `openapi.json`, valid for `openapi-spec-validator` (installed by `scripts/setup`), and
//! covering every configured route.

use crate::harness::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

async fn served(h: &Harness) -> Value {
    let resp = h.http.get(h.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_is_the_shipped_one_and_covers_every_route() {
    let h = Harness::start().await;
    let doc = served(&h).await;
    let shipped: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("openapi.json")).unwrap()).unwrap();
    assert!(
        doc == shipped,
        "openapi.json is stale: regenerate it with `cargo run -q -- openapi > openapi.json`"
    );
    assert_eq!(doc["openapi"], "3.1.0");

    // Every configured route, with its method, and its permission.
    let defaults: serde_yaml::Value =
        serde_yaml::from_str(orion_proxy::config::DEFAULTS_YAML).unwrap();
    let routes = defaults["routes"].as_sequence().unwrap();
    assert!(routes.len() > 60, "{}", routes.len());
    for r in routes {
        let path = r["path"].as_str().unwrap();
        let method = r["method"].as_str().unwrap().to_ascii_lowercase();
        let op = &doc["paths"][path][&method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        if let Some(p) = r["permission"].as_str() {
            assert_eq!(op["x-permission"], p, "{method} {path}");
        } else {
            assert_eq!(
                op["security"],
                serde_json::json!([]),
                "{method} {path} is public"
            );
        }
    }
    // The token endpoint, the error body and the facade's request schemas.
    assert!(doc["paths"]["/oauth/token"]["post"].is_object());
    assert!(
        doc["components"]["schemas"]["Error"]["required"]
            .as_array()
            .unwrap()
            .len()
            >= 9
    );
    let create = &doc["paths"]["/v1/instances"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["$ref"];
    assert_eq!(create, "#/components/schemas/facade_instance_create");
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["facade_instance_create"]["additionalProperties"],
        false
    );
    assert!(schemas["facade_instance_patch"]["properties"]["memory"].is_object());
    // Every route's shipped schema is the file in schemas/, and each is referenced.
    for r in routes {
        if let Some(name) = r["schema"].as_str() {
            let file: Value = serde_json::from_str(
                &std::fs::read_to_string(repo(&format!("schemas/{name}.json"))).unwrap(),
            )
            .unwrap();
            let keys = |v: &Value| {
                v["properties"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
            };
            let component = name.replace('.', "_");
            assert_eq!(keys(&schemas[&component]), keys(&file), "{name}");
            assert_eq!(schemas[&component]["required"], file["required"], "{name}");
            // Its $defs came along.
            if let Some(defs) = file["$defs"].as_object() {
                for d in defs.keys() {
                    assert!(
                        schemas[format!("{component}_{d}")].is_object(),
                        "{component}_{d}"
                    );
                }
            }
            let path = r["path"].as_str().unwrap();
            let method = r["method"].as_str().unwrap().to_ascii_lowercase();
            let body = doc["paths"][path][&method]["requestBody"]["content"].to_string();
            assert!(
                body.contains(&format!("#/components/schemas/{component}\"")),
                "{method} {path}: {body}"
            );
        }
    }
    // OrionVM answers the attachment PUTs and the context calls with bare arrays.
    let ok_schema = |path: &str, method: &str| {
        doc["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
            .clone()
    };
    for (path, method) in [
        ("/api/v1/instances/{id}/disks", "put"),
        ("/api/v1/instances/{id}/public_keys", "put"),
        ("/api/v1/instances/{id}/network_adapters", "put"),
        ("/api/v1/instances/{id}/availability_group", "put"),
        ("/api/v1/instances/{id}/context", "get"),
        ("/api/v1/instances/{id}/context", "post"),
        ("/api/v1/instances/{id}/context", "put"),
        ("/api/v1/instances/{id}/context/{key}", "delete"),
    ] {
        assert_eq!(ok_schema(path, method)["type"], "array", "{method} {path}");
    }
    for (path, method) in [
        ("/api/v1/instances/{id}", "put"),
        ("/api/v1/instances/{id}/start", "post"),
        ("/api/v1/regions/{id}", "get"),
    ] {
        assert_eq!(
            ok_schema(path, method)["$ref"],
            "#/components/schemas/Object",
            "{method} {path}"
        );
    }
    assert!(schemas["SnapshotRequest"].is_object());
    assert!(
        !doc.to_string().contains("\"#/$defs/"),
        "a $defs reference was left"
    );

    // A config with its own route table gets a document of exactly those routes.
    let h2 = Harness::start_with(|c| {
        c.extra_top = "routes:\n  - {name: health, method: GET, path: \"/health\", kind: health}\n  - {name: doc, method: GET, path: \"/openapi.json\", kind: openapi}\n  - {name: regions, method: GET, path: \"/api/v1/regions\", permission: \"catalog:read\", list: true}\n".into();
    })
    .await;
    let small = served(&h2).await;
    let mut paths: Vec<&String> = small["paths"].as_object().unwrap().keys().collect();
    // The admin listener's management operations are documented whatever the route table.
    assert!(paths.iter().any(|p| *p == "/admin/api-keys"));
    paths.retain(|p| !p.starts_with("/admin/"));
    paths.sort();
    assert_eq!(
        paths,
        vec![
            "/api/v1/regions",
            "/health",
            "/oauth/token",
            "/openapi.json"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_openapi_3_1() {
    let validator = std::env::var("OPENAPI_SPEC_VALIDATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo("target/openapi-venv/bin/openapi-spec-validator"));
    assert!(
        validator.exists(),
        "{} is missing: run scripts/setup (it installs openapi-spec-validator from PyPI)",
        validator.display()
    );
    let h = Harness::start().await;
    let doc = served(&h).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(&validator).arg(&file).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "invalid: {text}");
    assert!(text.contains("OK"), "{text}");

    // The validator does fail on a broken document.
    let mut broken = doc.clone();
    broken["paths"]["/v1/instances"]["get"]["responses"] = Value::String("nope".into());
    std::fs::write(&file, serde_json::to_vec(&broken).unwrap()).unwrap();
    let out = Command::new(&validator).arg(&file).output().unwrap();
    assert!(
        !out.status.success(),
        "the validator accepted a broken document"
    );
}

/// `/docs`: the Redoc page over `/openapi.json`, without credentials, and Redoc's script from
/// the binary (no CDN: the page names no other host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_serve_redoc_from_the_binary() {
    let h = Harness::start().await;
    let r = h.http.get(h.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let media = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(media.starts_with("text/html"), "{media}");
    let page = r.text().await.unwrap();
    assert!(
        page.contains(r#"<redoc spec-url="/openapi.json">"#),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    let script = page
        .split("<script src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let r = h.http.get(h.url(script)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let js = r.bytes().await.unwrap();
    let shipped = std::fs::read(repo("assets/redoc/redoc.standalone.js")).unwrap();
    assert_eq!(js.len(), shipped.len());
    assert!(
        js[..] == shipped[..],
        "the served script is the shipped bundle"
    );
    // The document the page loads is served too.
    assert_eq!(
        h.http
            .get(h.url("/openapi.json"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
