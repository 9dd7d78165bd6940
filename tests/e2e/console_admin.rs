//! Managing API usage through the admin API (`/admin/api-keys`, `/admin/clients`): every
//! endpoint, secrets shown once and never in logs, audit records or later answers, changes in
//! effect at once, kept across a restart with `state.dir` (a 0600 file holding hashes only);
//! and the console's sign-in hardening that needs no browser (rate limit, audit, headers).

use crate::harness::*;
use serde_json::{Value, json};
use std::time::Duration;

fn builder(sim: &orion_sim::SimHandle, state_dir: &std::path::Path) -> ConfigBuilder {
    let mut b = ConfigBuilder::new(&sim.url());
    let signing = state_dir.with_extension("signing");
    std::fs::write(&signing, "k".repeat(48)).unwrap();
    b.extra_top = format!(
        "state:\n  dir: \"{}\"\nconsole:\n  sign_in_failures_per_minute: 3\n\
         oauth:\n  signing_key: {{file: \"{}\"}}\nlimits:\n  policies:\n    default: {{quota: 100000, window_seconds: 60}}\n    slow: {{quota: 2, window_seconds: 3600}}\n",
        state_dir.display(),
        signing.display()
    );
    b
}

async fn admin(
    http: &reqwest::Client,
    p: &ProxyProcess,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http
        .request(method, format!("{}{path}", p.admin_url))
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn api(http: &reqwest::Client, p: &ProxyProcess, key: &str) -> u16 {
    http.get(format!("{}/api/v1/regions", p.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn token(http: &reqwest::Client, p: &ProxyProcess, id: &str, secret: &str) -> Option<String> {
    let r = http
        .post(format!("{}/oauth/token", p.url))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}),
        )
        .send()
        .await
        .unwrap();
    if r.status() != 200 {
        return None;
    }
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_clients_managed_at_run_time_survive_a_restart() {
    use reqwest::Method as M;
    let sim = start_sim(sim_options()).await;
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    let b = builder(&sim, &state_dir);
    let root = b.key("admin").to_string();
    let http = reqwest::Client::new();
    let p = ProxyProcess::start(&b).await;
    let mut secrets: Vec<String> = Vec::new();

    // Issue a key: 201, the key shown once.
    let (s, created) = admin(
        &http,
        &p,
        &root,
        M::POST,
        "/admin/api-keys",
        Some(json!({"name": "ci", "roles": ["viewer"], "tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    secrets.push(key.clone());
    assert_eq!(
        (created["principal"].as_str(), created["enabled"].as_bool()),
        (Some("key:ci"), Some(true))
    );
    assert_eq!(api(&http, &p, &key).await, 200);
    // Refused inputs: unknown role, tenant, policy; a duplicate name; a YAML name.
    for (body, field) in [
        (
            json!({"name": "x", "roles": ["wizard"], "tenant": "acme"}),
            "roles",
        ),
        (
            json!({"name": "x", "roles": ["viewer"], "tenant": "nowhere"}),
            "tenant",
        ),
        (
            json!({"name": "x", "roles": ["viewer"], "tenant": "acme", "policy": "nope"}),
            "policy",
        ),
    ] {
        let (s, e) = admin(&http, &p, &root, M::POST, "/admin/api-keys", Some(body)).await;
        assert_eq!(s, 400, "{e}");
        assert!(e["details"][field].is_array(), "{e}");
    }
    for name in ["ci", "admin"] {
        let (s, _) = admin(
            &http,
            &p,
            &root,
            M::POST,
            "/admin/api-keys",
            Some(json!({"name": name, "roles": ["viewer"], "tenant": "acme"})),
        )
        .await;
        assert_eq!(s, 409, "{name}");
    }
    // A tenant administrator (globex) manages its own tenant only: acme's key is not listed
    // nor changeable (404), acme is not its tenant to issue in, process_admin is not its to grant.
    let globex = b.key("other_tenant_admin").to_string();
    let (s, list) = admin(&http, &p, &globex, M::GET, "/admin/api-keys", None).await;
    assert_eq!(s, 200);
    assert!(
        list["api_keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "globex"),
        "{list}"
    );
    let (s, _) = admin(
        &http,
        &p,
        &globex,
        M::POST,
        &format!("/admin/api-keys/{id}/disable"),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(api(&http, &p, &key).await, 200);
    let (s, e) = admin(
        &http,
        &p,
        &globex,
        M::POST,
        "/admin/api-keys",
        Some(json!({"name": "g1", "roles": ["viewer"], "tenant": "acme"})),
    )
    .await;
    assert_eq!((s, e["details"]["tenant"].is_array()), (400, true), "{e}");
    let (s, e) = admin(
        &http,
        &p,
        &globex,
        M::POST,
        "/admin/api-keys",
        Some(json!({"name": "g2", "roles": ["admin", "process_admin"], "tenant": "globex"})),
    )
    .await;
    assert_eq!((s, e["details"]["roles"].is_array()), (400, true), "{e}");
    // Not for a non-admin.
    let (s, _) = admin(
        &http,
        &p,
        b.key("operator"),
        M::GET,
        "/admin/api-keys",
        None,
    )
    .await;
    assert_eq!(s, 403);

    // The listing shows config keys read-only and the managed one, never a key or a hash.
    let (s, list) = admin(&http, &p, &root, M::GET, "/admin/api-keys", None).await;
    assert_eq!(s, 200);
    let text = list.to_string();
    assert!(!text.contains(&key) && !text.contains("sha256:"), "{text}");
    let rows = list["api_keys"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["name"] == "admin" && r["source"] == "config" && r["id"].is_null())
    );
    assert!(
        rows.iter()
            .any(|r| r["id"] == id.as_str() && r["source"] == "runtime")
    );

    // Disable: 401 at once; enable: 200 again.
    let (s, v) = admin(
        &http,
        &p,
        &root,
        M::POST,
        &format!("/admin/api-keys/{id}/disable"),
        None,
    )
    .await;
    assert_eq!((s, v["enabled"].as_bool()), (200, Some(false)));
    assert_eq!(api(&http, &p, &key).await, 401);
    let (s, _) = admin(
        &http,
        &p,
        &root,
        M::POST,
        &format!("/admin/api-keys/{id}/enable"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(api(&http, &p, &key).await, 200);
    // A policy of its own: `slow` allows two calls an hour (a window no test run crosses).
    let (s, v) = admin(
        &http,
        &p,
        &root,
        M::PATCH,
        &format!("/admin/api-keys/{id}"),
        Some(json!({"policy": "slow"})),
    )
    .await;
    assert_eq!((s, v["policy"].as_str()), (200, Some("slow")));
    let statuses = [
        api(&http, &p, &key).await,
        api(&http, &p, &key).await,
        api(&http, &p, &key).await,
    ];
    assert_eq!(statuses, [200, 200, 429]);
    let (s, _) = admin(
        &http,
        &p,
        &root,
        M::PATCH,
        &format!("/admin/api-keys/{id}"),
        Some(json!({"policy": null})),
    )
    .await;
    assert_eq!(s, 200);
    // Rotate: 201 with a new key; the old one stops working.
    let (s, rotated) = admin(
        &http,
        &p,
        &root,
        M::POST,
        &format!("/admin/api-keys/{id}/rotate"),
        None,
    )
    .await;
    assert_eq!(s, 201, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_string();
    secrets.push(new_key.clone());
    assert_ne!(new_key, key);
    assert_eq!(api(&http, &p, &key).await, 401);
    assert_eq!(api(&http, &p, &new_key).await, 200);

    // A client with a secret shown once: tokens work, disable stops them, rotate changes it.
    let (s, client) = admin(
        &http,
        &p,
        &root,
        M::POST,
        "/admin/clients",
        Some(json!({"client_id": "robot", "roles": ["viewer"], "tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{client}");
    let cid = client["id"].as_str().unwrap().to_string();
    let secret = client["client_secret"].as_str().unwrap().to_string();
    secrets.push(secret.clone());
    let t = token(&http, &p, "robot", &secret)
        .await
        .expect("a token for the managed client");
    assert_eq!(api(&http, &p, &t).await, 200);
    let (s, _) = admin(
        &http,
        &p,
        &root,
        M::POST,
        &format!("/admin/clients/{cid}/disable"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(api(&http, &p, &t).await, 401);
    assert!(token(&http, &p, "robot", &secret).await.is_none());
    let (s, _) = admin(
        &http,
        &p,
        &root,
        M::POST,
        &format!("/admin/clients/{cid}/enable"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, rotated) = admin(
        &http,
        &p,
        &root,
        M::POST,
        &format!("/admin/clients/{cid}/rotate"),
        None,
    )
    .await;
    assert_eq!(s, 201);
    let secret2 = rotated["client_secret"].as_str().unwrap().to_string();
    secrets.push(secret2.clone());
    assert!(token(&http, &p, "robot", &secret).await.is_none());
    // The old token is bound to the old secret.
    assert_eq!(api(&http, &p, &t).await, 401);
    let t2 = token(&http, &p, "robot", &secret2)
        .await
        .expect("a token with the new secret");
    let (s, list) = admin(&http, &p, &root, M::GET, "/admin/clients", None).await;
    assert_eq!(s, 200);
    assert!(!list.to_string().contains("argon2"), "{list}");

    // A throwaway key, deleted: 401, and 404 on a second delete.
    let (_, gone) = admin(
        &http,
        &p,
        &root,
        M::POST,
        "/admin/api-keys",
        Some(json!({"name": "temp", "roles": ["viewer"], "tenant": "acme"})),
    )
    .await;
    let gone_key = gone["key"].as_str().unwrap().to_string();
    secrets.push(gone_key.clone());
    let gone_id = gone["id"].as_str().unwrap();
    let (s, _) = admin(
        &http,
        &p,
        &root,
        M::DELETE,
        &format!("/admin/api-keys/{gone_id}"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(api(&http, &p, &gone_key).await, 401);
    let (s, _) = admin(
        &http,
        &p,
        &root,
        M::DELETE,
        &format!("/admin/api-keys/{gone_id}"),
        None,
    )
    .await;
    assert_eq!(s, 404);

    // Every change is an audit record with its action and the credential's id.
    let audit = p.audit_log();
    for (action, resource) in [
        ("admin.api_key.create", None),
        ("admin.api_key.disable", Some(id.as_str())),
        ("admin.api_key.enable", Some(id.as_str())),
        ("admin.api_key.policy", Some(id.as_str())),
        ("admin.api_key.rotate", Some(id.as_str())),
        ("admin.api_key.delete", Some(gone_id)),
        ("admin.client.create", None),
        ("admin.client.disable", Some(cid.as_str())),
        ("admin.client.rotate", Some(cid.as_str())),
    ] {
        assert!(
            audit.iter().any(|r| r["event.action"] == action
                && r["user.id"] == "key:admin"
                && resource.is_none_or(|id| r["orion.resource.id"] == id)),
            "no {action} record: {audit:?}"
        );
    }

    // The state file: mode 0600, hashes only.
    let file = state_dir.join("credentials.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions())
            & 0o777;
    assert_eq!(mode, 0o600);
    let stored = std::fs::read_to_string(&file).unwrap();

    // Restart on the same state.dir: the key and the client still work, the deleted key not.
    let logs = format!(
        "{}{}{}",
        p.access_log_text(),
        p.stderr(),
        std::fs::read_to_string(p.audit_log_path()).unwrap_or_default()
    );
    drop(p);
    let p = ProxyProcess::start(&b).await;
    assert_eq!(api(&http, &p, &new_key).await, 200);
    assert_eq!(api(&http, &p, &t2).await, 200);
    assert_eq!(api(&http, &p, &gone_key).await, 401);
    assert!(token(&http, &p, "robot", &secret2).await.is_some());
    let (_, list) = admin(&http, &p, &root, M::GET, "/admin/api-keys", None).await;
    let all = format!("{logs}{}{}{stored}{list}", p.access_log_text(), p.stderr());
    // No secret anywhere: logs, audit, state file, later answers.
    for s in &secrets {
        assert!(!all.contains(s.as_str()), "a secret leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_is_rate_limited_audited_and_hardened() {
    let sim = start_sim(sim_options()).await;
    let state = tempfile::tempdir().unwrap();
    let b = builder(&sim, &state.path().join("state"));
    let p = ProxyProcess::start(&b).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = format!("{}/ui/login", p.admin_url);
    let origin = p.admin_url.clone();
    let post = |form: Vec<(&'static str, String)>, origin: Option<String>| {
        let mut r = http.post(&login).form(&form);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    // The sign-in page: strict headers.
    let page = http.get(&login).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let h = page.headers();
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["referrer-policy"], "same-origin");
    // Without a matching Origin: refused, even with a good key.
    let r = post(vec![("key", b.key("admin").to_string())], None)
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(
        vec![("key", b.key("admin").to_string())],
        Some("http://evil.example".into()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    // A credential without a console role: refused (the viewer has none).
    let r = post(
        vec![("key", b.key("viewer").to_string())],
        Some(origin.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    // Wrong keys: 401, then 429 past the limit (3 per minute here; the viewer's refusal counted).
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = post(
            vec![("key", orion_proxy::auth::api_keys::generate())],
            Some(origin.clone()),
        )
        .await
        .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 429]);
    // Even the right key waits now.
    let r = post(
        vec![("key", b.key("admin").to_string())],
        Some(origin.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // Every attempt is audited, the refused ones too.
    poll("the sign-in records", Duration::from_secs(30), || async {
        let audit = p.audit_log();
        let n = audit
            .iter()
            .filter(|r| r["event.action"] == "console.sign_in")
            .count();
        (n >= 7).then_some(())
    })
    .await;
    let audit = p.audit_log();
    assert!(
        audit.iter().any(
            |r| r["event.action"] == "console.sign_in" && r["http.response.status_code"] == 401
        )
    );
    assert!(
        audit.iter().any(
            |r| r["event.action"] == "console.sign_in" && r["http.response.status_code"] == 429
        )
    );
    // No key in the audit trail or the logs.
    let all = format!(
        "{}{}{}",
        serde_json::to_string(&audit).unwrap(),
        p.access_log_text(),
        p.stderr()
    );
    assert!(!all.contains(b.key("admin")) && !all.contains(b.key("viewer")));
    // The assets are embedded and served without a session; pages need one.
    let js = http
        .get(format!("{}/ui/assets/uPlot.iife.min.js", p.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), 200);
    let lic = http
        .get(format!("{}/ui/assets/uPlot.LICENSE.txt", p.admin_url))
        .send()
        .await
        .unwrap();
    assert!(lic.text().await.unwrap().contains("MIT"));
    let r = http
        .get(format!("{}/ui/audit", p.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["location"].to_str().unwrap()
        ),
        (303, "/ui/login")
    );
}

/// A console session is only as good as the credential it was opened with: once that key or
/// client is disabled, rotated or deleted (through the admin API or the console), the session's
/// next request is refused, pages and actions alike, and a new sign-in is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_session_ends_when_its_credential_is_disabled_rotated_or_deleted() {
    use crate::harness::console::Console;
    use reqwest::Method as M;
    let sim = start_sim(sim_options()).await;
    let state = tempfile::tempdir().unwrap();
    let b = builder(&sim, &state.path().join("state"));
    let root = b.key("admin").to_string();
    let p = ProxyProcess::start(&b).await;
    let http = reqwest::Client::new();
    let call = |method: M, path: String| {
        let (http, root) = (http.clone(), root.clone());
        let p = &p;
        async move { admin(&http, p, &root, method, &path, None).await }
    };
    // The root operator acts through the console.
    let mut rootc = Console::new(&p.admin_url);
    assert_eq!(rootc.sign_in_key(&root).await, 303);

    // A managed key with a console role.
    let (s, made) = admin(
        &http,
        &p,
        &root,
        M::POST,
        "/admin/api-keys",
        Some(json!({"name": "operator-ui", "roles": ["console:write"], "tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    let mut key = made["key"].as_str().unwrap().to_string();
    let mut op = Console::new(&p.admin_url);

    // Disabled through the admin API: the next page is refused, and so is an action posted
    // with the CSRF token the session had.
    assert_eq!(op.sign_in_key(&key).await, 303);
    let csrf = op.csrf("/ui/credentials").await;
    assert_eq!(
        call(M::POST, format!("/admin/api-keys/{id}/disable"))
            .await
            .0,
        200
    );
    let refused = op
        .post_from(
            "/ui/credentials/api-keys",
            None,
            &[
                ("csrf", &csrf),
                ("name", "sneaky"),
                ("roles", "viewer"),
                ("tenant", "acme"),
            ],
        )
        .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(!op.signed_in("/ui/credentials").await);
    // Its old cookie stays dead once the key is enabled again: the session was ended.
    assert_eq!(
        call(M::POST, format!("/admin/api-keys/{id}/enable"))
            .await
            .0,
        200
    );
    assert!(!op.signed_in("/ui/credentials").await);
    let (_, list) = call(M::GET, "/admin/api-keys".into()).await;
    assert!(!list.to_string().contains("sneaky"), "{list}");

    // Disabled through the console.
    assert_eq!(op.sign_in_key(&key).await, 303);
    assert!(op.signed_in("/ui/clients").await);
    let done = rootc
        .post(
            &format!("/ui/credentials/api-keys/{id}/disable"),
            "/ui/credentials",
            &[],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(!op.signed_in("/ui/clients").await);
    assert_eq!(
        call(M::POST, format!("/admin/api-keys/{id}/enable"))
            .await
            .0,
        200
    );

    // Rotated through the console: the session of the old key ends; the new key signs in.
    assert_eq!(op.sign_in_key(&key).await, 303);
    let done = rootc
        .post(
            &format!("/ui/credentials/api-keys/{id}/rotate"),
            "/ui/credentials",
            &[],
        )
        .await;
    assert_eq!(done.status, 201, "{}", done.body);
    assert!(!op.signed_in("/ui/clients").await);
    assert_eq!(op.sign_in_key(&key).await, 401);
    let (s, rotated) = call(M::POST, format!("/admin/api-keys/{id}/rotate")).await;
    assert_eq!(s, 201);
    key = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(op.sign_in_key(&key).await, 303);
    assert!(op.signed_in("/ui/clients").await);

    // Deleted through the admin API.
    assert_eq!(
        call(M::DELETE, format!("/admin/api-keys/{id}")).await.0,
        200
    );
    assert!(!op.signed_in("/ui/clients").await);

    // A client: rotated through the admin API, then deleted through the console.
    let (s, made) = admin(
        &http,
        &p,
        &root,
        M::POST,
        "/admin/clients",
        Some(json!({"client_id": "watcher", "roles": ["console:read"], "tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    let cid = made["id"].as_str().unwrap().to_string();
    let secret = made["client_secret"].as_str().unwrap().to_string();
    let mut watcher = Console::new(&p.admin_url);
    assert_eq!(watcher.sign_in_client("watcher", &secret).await, 303);
    assert!(watcher.signed_in("/ui/tasks").await);
    let (s, rotated) = call(M::POST, format!("/admin/clients/{cid}/rotate")).await;
    assert_eq!(s, 201);
    assert!(!watcher.signed_in("/ui/tasks").await);
    let secret2 = rotated["client_secret"].as_str().unwrap().to_string();
    assert_eq!(watcher.sign_in_client("watcher", &secret).await, 401);
    assert_eq!(watcher.sign_in_client("watcher", &secret2).await, 303);
    assert!(watcher.signed_in("/ui/tasks").await);
    let done = rootc
        .post(
            &format!("/ui/credentials/clients/{cid}/delete"),
            "/ui/credentials",
            &[],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(!watcher.signed_in("/ui/tasks").await);
    // The root operator's own session was never affected.
    assert!(rootc.signed_in("/ui/credentials").await);
    // Each ended session is in the audit trail as a refused console request.
    poll("the refusals audited", Duration::from_secs(30), || async {
        p.audit_log()
            .iter()
            .any(|r| {
                r["event.action"] == "console.refused" && r["http.response.status_code"] == 401
            })
            .then_some(())
    })
    .await;
}
