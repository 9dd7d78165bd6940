//! Issue 13, finding 10: the admin role was global (globex's admin read acme's audit records,
//! usage and key names, and could reload). A tenant administrator (`admin`) now sees and
//! exports only its tenant's entries and may not reload; a process administrator
//! (`process_admin`) administers the process. Both ways, on a harness and on the demo.

use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Traffic of both tenants that leaves audit records and usage counts.
async fn traffic(h: &Harness) {
    let acme = h.key("operator").to_string();
    let globex = h.key("other_tenant_admin").to_string();
    for key in [&acme, &globex] {
        let id = h.first_instance(key).await;
        let r = h
            .post(key, &format!("/api/v1/instances/{id}/stop"), json!({}))
            .await;
        assert!(r.status().is_success(), "{}", r.status());
    }
    // Both mutations are in the audit trail before anyone looks.
    poll("both tenants audited", Duration::from_secs(20), || async {
        let log = h.proxy.audit_log();
        let has = |t: &str| log.iter().any(|r| r["organization.id"] == t);
        (has("acme") && has("globex")).then_some(())
    })
    .await;
}

async fn audit_tenants(h: &Harness, key: &str, query: &str) -> (u16, Vec<String>) {
    let r = h
        .proxy
        .admin_get(key, &format!("/admin/audit{query}"))
        .await;
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let tenants = if status == 200 {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["organization.id"].as_str().unwrap_or("-").to_string()
            })
            .collect()
    } else {
        Vec::new()
    };
    (status, tenants)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_admin_sees_only_its_tenant_and_may_not_reload() {
    let h = Harness::start().await;
    traffic(&h).await;
    let globex_admin = h.key("other_tenant_admin").to_string();

    // Audit: only globex's records, whatever is asked; another tenant is refused.
    let (status, tenants) = audit_tenants(&h, &globex_admin, "").await;
    assert_eq!(status, 200);
    assert!(!tenants.is_empty());
    assert!(tenants.iter().all(|t| t == "globex"), "{tenants:?}");
    let (status, tenants) = audit_tenants(&h, &globex_admin, "?format=jsonl&limit=100").await;
    assert_eq!(status, 200);
    assert!(tenants.iter().all(|t| t == "globex"), "{tenants:?}");
    let r = h
        .proxy
        .admin_get(&globex_admin, "/admin/audit?tenant=acme")
        .await;
    expect_error(r, 403, "forbidden").await;
    let r = h
        .proxy
        .admin_get(&globex_admin, "/admin/audit?tenant=acme&format=csv")
        .await;
    expect_error(r, 403, "forbidden").await;

    // Usage: only globex.
    let usage: Value = ok_json(h.proxy.admin_get(&globex_admin, "/admin/usage").await).await;
    let clients = usage["clients"].as_array().unwrap();
    assert!(!clients.is_empty(), "{usage}");
    assert!(clients.iter().all(|c| c["tenant"] == "globex"), "{usage}");
    let r = h
        .proxy
        .admin_get(&globex_admin, "/admin/usage?tenant=acme")
        .await;
    expect_error(r, 403, "forbidden").await;

    // Config: its tenant, its account, its keys; no other tenant's key names.
    let config: Value = ok_json(h.proxy.admin_get(&globex_admin, "/admin/config").await).await;
    let text = config.to_string();
    assert_eq!(config["scope"], json!({"tenant": "globex"}));
    assert_eq!(config["tenants"], json!({"globex": "globex-orionvm"}));
    assert!(config["accounts"].get("acme-orionvm").is_none(), "{text}");
    assert!(config["accounts"].get("globex-orionvm").is_some(), "{text}");
    for k in config["api_keys"].as_array().unwrap() {
        assert_eq!(k["tenant"], "globex", "{text}");
    }
    assert!(!text.contains("acme"), "acme named in {text}");

    // Process operations are refused.
    let r = h.proxy.admin_post(&globex_admin, "/admin/reload").await;
    expect_error(r, 403, "forbidden").await;
    let r = h
        .proxy
        .admin_get(&globex_admin, "/admin/endpoints/stats")
        .await;
    expect_error(r, 403, "forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_admin_administers_every_tenant_and_the_process() {
    let h = Harness::start().await;
    traffic(&h).await;
    let admin = h.key("admin").to_string();
    let (status, tenants) = audit_tenants(&h, &admin, "").await;
    assert_eq!(status, 200);
    assert!(tenants.iter().any(|t| t == "acme"), "{tenants:?}");
    assert!(tenants.iter().any(|t| t == "globex"), "{tenants:?}");
    let (_, tenants) = audit_tenants(&h, &admin, "?tenant=globex").await;
    assert!(!tenants.is_empty() && tenants.iter().all(|t| t == "globex"));
    let usage: Value = ok_json(h.proxy.admin_get(&admin, "/admin/usage").await).await;
    let clients = usage["clients"].as_array().unwrap();
    assert!(clients.iter().any(|c| c["tenant"] == "acme"), "{usage}");
    assert!(clients.iter().any(|c| c["tenant"] == "globex"), "{usage}");
    let config: Value = ok_json(h.proxy.admin_get(&admin, "/admin/config").await).await;
    assert_eq!(config["scope"], "process");
    assert_eq!(config["tenants"].as_object().unwrap().len(), 2);
    let r = h.proxy.admin_get(&admin, "/admin/endpoints/stats").await;
    assert_eq!(r.status(), 200);
    h.reload_ok().await;
    // Neither admin role: refused.
    let r = h.proxy.admin_get(h.key("operator"), "/admin/config").await;
    expect_error(r, 403, "forbidden").await;
}

/// The demo: `admin` administers the process; `acme_admin` and `globex_admin` their tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_has_a_process_admin_and_a_tenant_admin_per_tenant() {
    let demo = DemoProcess::start().await;
    let http = reqwest::Client::new();
    let admin_url = demo.url("admin_url");
    let get = |key: String, path: &str| {
        http.get(format!("{admin_url}{path}"))
            .bearer_auth(key)
            .send()
    };
    for (label, tenant) in [("acme_admin", "acme"), ("globex_admin", "globex")] {
        let key = demo.key(label);
        assert!(!key.is_empty(), "demo --json names {label}");
        let config: Value = ok_json(get(key.clone(), "/admin/config").await.unwrap()).await;
        assert_eq!(config["scope"], json!({"tenant": tenant}), "{label}");
        assert_eq!(config["tenants"].as_object().unwrap().len(), 1, "{config}");
        let r = http
            .post(format!("{admin_url}/admin/reload"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        expect_error(r, 403, "forbidden").await;
    }
    let config: Value = ok_json(get(demo.key("admin"), "/admin/config").await.unwrap()).await;
    assert_eq!(config["scope"], "process");
    let r = http
        .post(format!("{admin_url}/admin/reload"))
        .bearer_auth(demo.key("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
