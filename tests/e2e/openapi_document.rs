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

/// The admin listener serves its own document (public, like the proxy listener's), equal to the
/// shipped `admin-openapi.json`, and Redoc over it at `/docs`; the proxy listener's document has
/// no admin operation (the proxy listener does not serve them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_its_own_document_and_docs() {
    let h = Harness::start().await;
    let r = h
        .http
        .get(format!("{}/openapi.json", h.proxy.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = r.json().await.unwrap();
    let shipped: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("admin-openapi.json")).unwrap())
            .unwrap();
    assert!(
        doc == shipped,
        "admin-openapi.json is stale: regenerate it with `cargo run -q -- openapi --admin > admin-openapi.json`"
    );
    assert_eq!(doc["openapi"], "3.1.0");
    for scheme in ["bearer", "apiKey"] {
        assert!(doc["components"]["securitySchemes"][scheme].is_object());
    }
    // Every error is declared as problem+json and as application/json.
    for (name, r) in doc["components"]["responses"].as_object().unwrap() {
        for media in ["application/problem+json", "application/json"] {
            assert_eq!(
                r["content"][media]["schema"]["$ref"], "#/components/schemas/Error",
                "{name} {media}"
            );
        }
    }
    let proxy_doc = served(&h).await;
    let proxy_paths: Vec<&String> = proxy_doc["paths"].as_object().unwrap().keys().collect();
    assert!(
        proxy_paths.iter().all(|p| !p.starts_with("/admin")),
        "{proxy_paths:?}"
    );
    // The proxy listener's document does not offer what it does not serve.
    let r = h.get(h.key("admin"), "/admin/config").await;
    assert_eq!(r.status(), 404);

    let r = h
        .http
        .get(format!("{}/docs", h.proxy.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(
        page.contains(r#"<redoc spec-url="/openapi.json">"#),
        "{page}"
    );
    let r = h
        .http
        .get(format!("{}/docs/redoc.standalone.js", h.proxy.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 500_000);
}

/// The admin document against the admin router: every documented operation is served (called
/// with a process administrator's key, it answers one of its documented statuses, never the
/// router's 404 or 405), and what is not documented is not served (404 for an unknown path, 405
/// for a documented path with another method). Ids are a credential the test issues first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_operation_is_documented_and_every_documented_one_is_served() {
    let h = Harness::start().await;
    let admin = h.key("admin").to_string();
    let doc: Value = h
        .http
        .get(format!("{}/openapi.json", h.proxy.admin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let call = |method: &str, path: &str, body: Option<Value>| {
        let mut b = h
            .http
            .request(
                method.parse().unwrap(),
                format!("{}{path}", h.proxy.admin_url),
            )
            .bearer_auth(&admin);
        if let Some(body) = body {
            b = b.json(&body);
        }
        b.send()
    };
    // A runtime-managed key and client to act on.
    let mut ids = std::collections::HashMap::new();
    for (kind, field) in [("api-keys", "name"), ("clients", "client_id")] {
        let r = call(
            "POST",
            &format!("/admin/{kind}"),
            Some(serde_json::json!({field: "doc-check", "roles": ["viewer"], "tenant": "acme"})),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201, "{kind}");
        let v: Value = r.json().await.unwrap();
        ids.insert(kind, v["id"].as_str().unwrap().to_string());
    }
    let paths = doc["paths"].as_object().unwrap();
    let mut calls = Vec::new();
    for (template, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            calls.push((template.clone(), method.to_ascii_uppercase(), op.clone()));
        }
    }
    // Deletes last (the other calls act on the credentials).
    calls.sort_by_key(|(_, m, _)| m == "DELETE");
    assert!(calls.len() >= 22, "{}", calls.len());
    for (template, method, op) in &calls {
        let kind = if template.starts_with("/admin/clients") {
            "clients"
        } else {
            "api-keys"
        };
        let path = template.replace("{id}", ids.get(kind).map(String::as_str).unwrap_or(""));
        let body = match (method.as_str(), path.rsplit('/').next()) {
            ("PATCH", _) => Some(serde_json::json!({"policy": null})),
            ("POST", Some("api-keys")) => Some(
                serde_json::json!({"name": "doc-check-2", "roles": ["viewer"], "tenant": "acme"}),
            ),
            ("POST", Some("clients")) => Some(
                serde_json::json!({"client_id": "doc-check-2", "roles": ["viewer"], "tenant": "acme"}),
            ),
            _ => None,
        };
        let r = call(method, &path, body).await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!(
            op["responses"][status.to_string()].is_object(),
            "{method} {path} answered {status}, which its operation does not declare: {text}"
        );
        assert!(
            status < 300,
            "{method} {path}: a documented operation with a valid call answers {status}: {text}"
        );
    }
    // Not documented, not served.
    for (method, path, status) in [
        ("GET", "/admin/nothing-here", 404),
        ("GET", "/admin/api-keysX", 404),
        ("GET", "/admin/api-keys/k_1/enable/more", 404),
        ("GET", "/metrics", 404),
        ("DELETE", "/admin/config", 405),
        ("GET", "/admin/reload", 405),
        ("PUT", "/admin/api-keys", 405),
    ] {
        let r = call(method, path, None).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        assert!(
            paths
                .get(path)
                .and_then(|p| p.get(method.to_ascii_lowercase()))
                .is_none(),
            "{method} {path} is documented"
        );
    }
}
