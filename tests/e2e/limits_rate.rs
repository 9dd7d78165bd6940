//! Rate limits: the IETF RateLimit fields over a sequence of requests, 429 with Retry-After
//! and the error body, recovery after the window, one bucket per principal, route and role
//! policies, the legacy fields.

use crate::harness::*;
use std::time::Duration;

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// `"default";r=4;t=57` -> (name, r, t)
fn parse_limit(v: &str) -> Vec<(String, u64, u64)> {
    v.split(", ")
        .map(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap().trim_matches('"').to_string();
            let mut r = None;
            let mut t = None;
            for p in parts {
                let (k, val) = p.split_once('=').unwrap();
                match k {
                    "r" => r = Some(val.parse().unwrap()),
                    "t" => t = Some(val.parse().unwrap()),
                    other => panic!("unexpected parameter {other} in {v}"),
                }
            }
            (name, r.expect("r"), t.expect("t"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_count_down_then_429_with_retry_after() {
    let h = Harness::start_with(|c| {
        c.extra_top = "limits:\n  policies:\n    default: {quota: 5, window_seconds: 60}\n".into();
    })
    .await;
    let key = h.key("viewer");
    let mut last_t = u64::MAX;
    for expected in (0..5).rev() {
        let r = h.get(key, "/api/v1/regions").await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "ratelimit-policy").as_deref(),
            Some("\"default\";q=5;w=60")
        );
        let limit = parse_limit(&header(&r, "ratelimit").expect("RateLimit field"));
        assert_eq!(limit.len(), 1);
        let (name, remaining, reset) = &limit[0];
        assert_eq!(name, "default");
        assert_eq!(*remaining, expected);
        assert!(*reset >= 1 && *reset <= 60, "t={reset}");
        assert!(*reset <= last_t, "t does not grow within a window");
        last_t = *reset;
        assert!(
            header(&r, "x-ratelimit-limit").is_none(),
            "legacy fields only when asked"
        );
    }
    let calls_before = h.sim.calls().count("GET", "/api/v1/regions");
    let r = h.get(key, "/api/v1/regions").await;
    let retry_after: u64 = header(&r, "retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    let limit = parse_limit(&header(&r, "ratelimit").unwrap());
    assert_eq!(limit[0].1, 0);
    assert_eq!(retry_after, limit[0].2, "Retry-After is the window's reset");
    assert!((1..=60).contains(&retry_after));
    let body = expect_error(r, 429, "rate_limited").await;
    assert_eq!(body["details"]["policy"][0], "default");
    assert_eq!(
        h.sim.calls().count("GET", "/api/v1/regions"),
        calls_before,
        "a refused request never reaches OrionVM"
    );

    let metrics = h.proxy.scrape().await;
    assert_eq!(
        metrics.value("orion_proxy_rate_limited_total", &[("policy", "default")]),
        1.0,
        "{}",
        metrics.text
    );

    // Another principal has its own bucket.
    let r = h.get(h.key("operator"), "/api/v1/regions").await;
    assert_eq!(r.status(), 200);
    assert_eq!(parse_limit(&header(&r, "ratelimit").unwrap())[0].1, 4);
    // And the first one is still refused.
    assert_eq!(h.get(key, "/api/v1/regions").await.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_comes_back_after_the_window() {
    let h = Harness::start_with(|c| {
        c.extra_top = "limits:\n  policies:\n    default: {quota: 2, window_seconds: 1}\n".into();
    })
    .await;
    let key = h.key("viewer");
    poll("a 429", Duration::from_secs(5), || async {
        (h.get(key, "/api/v1/regions").await.status() == 429).then_some(())
    })
    .await;
    let r = poll("the quota back", Duration::from_secs(5), || async {
        let r = h.get(key, "/api/v1/regions").await;
        (r.status() == 200).then_some(r)
    })
    .await;
    let limit = parse_limit(&header(&r, "ratelimit").unwrap());
    assert_eq!(limit[0].1, 1, "a fresh window: one left after this one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_role_policies_and_legacy_fields() {
    let h = Harness::start_with(|c| {
        c.extra_top = concat!(
            "limits:\n",
            "  legacy_headers: true\n",
            "  policies:\n",
            "    default: {quota: 100, window_seconds: 60}\n",
            "    admins: {quota: 1000, window_seconds: 60}\n",
            "    power: {quota: 2, window_seconds: 60}\n",
            "  roles: {admin: admins}\n",
            "  routes: {\"instances.st*\": power, \"instances.stop\": power}\n",
        )
        .into();
    })
    .await;
    let op = h.key("operator");
    let r = h.get(op, "/api/v1/regions").await;
    assert_eq!(
        header(&r, "ratelimit-policy").as_deref(),
        Some("\"default\";q=100;w=60")
    );
    assert_eq!(header(&r, "x-ratelimit-limit").as_deref(), Some("100"));
    assert_eq!(header(&r, "x-ratelimit-remaining").as_deref(), Some("99"));
    let reset: u64 = header(&r, "x-ratelimit-reset").unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset));

    let id = h.first_instance(op).await;
    // instances.stop: the caller's policy and the route's.
    let r = h
        .post(
            op,
            &format!("/api/v1/instances/{id}/stop"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        header(&r, "ratelimit-policy").as_deref(),
        Some("\"default\";q=100;w=60, \"power\";q=2;w=60")
    );
    let limit = parse_limit(&header(&r, "ratelimit").unwrap());
    assert_eq!(limit[0].0, "default");
    assert_eq!(limit[1].0, "power");
    assert_eq!(limit[1].1, 1);
    assert_eq!(
        header(&r, "x-ratelimit-limit").as_deref(),
        Some("2"),
        "legacy fields report the tightest policy"
    );
    // instances.start matches the pattern: the same bucket.
    let _ = h
        .post(
            op,
            &format!("/api/v1/instances/{id}/start"),
            serde_json::json!({}),
        )
        .await;
    let r = h
        .post(
            op,
            &format!("/api/v1/instances/{id}/start"),
            serde_json::json!({}),
        )
        .await;
    let body = expect_error(r, 429, "rate_limited").await;
    assert_eq!(body["details"]["policy"][0], "power");

    // An admin's role policy replaces the default.
    let r = h.get(h.key("admin"), "/api/v1/regions").await;
    assert_eq!(
        header(&r, "ratelimit-policy").as_deref(),
        Some("\"admins\";q=1000;w=60")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_can_be_switched_off_and_bad_policies_are_refused() {
    let h = Harness::start_with(|c| {
        c.extra_top =
            "limits:\n  enabled: false\n  policies:\n    default: {quota: 1, window_seconds: 60}\n"
                .into();
    })
    .await;
    for _ in 0..3 {
        let r = h.get(h.key("viewer"), "/api/v1/regions").await;
        assert_eq!(r.status(), 200);
        assert!(header(&r, "ratelimit").is_none());
    }
    // `orion-proxy check` names the path of every bad value.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ConfigBuilder::new(&h.sim.url());
    cfg.extra_top = concat!(
        "limits:\n",
        "  policies:\n",
        "    power: {quota: 0, window_seconds: 60}\n",
        "  roles: {nobody: power}\n",
        "  routes: {\"nothing.*\": missing}\n",
    )
    .into();
    let path = cfg.write(dir.path(), &Ports::free());
    let run = check_config(&path);
    assert!(!run.ok);
    let text = run.text();
    assert!(text.contains("limits.policies.power.quota"), "{text}");
    assert!(text.contains("limits.roles.nobody"), "{text}");
    assert!(
        text.contains("limits.routes.nothing.*: unknown policy 'missing'"),
        "{text}"
    );
    assert!(
        text.contains("limits.routes.nothing.*: matches no route"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_a_principal_are_limited_per_address() {
    let h = Harness::start_with(|c| {
        c.extra_top = concat!(
            "limits:\n",
            "  policies:\n",
            "    default: {quota: 100, window_seconds: 60}\n",
            "    public: {quota: 3, window_seconds: 60}\n",
            "  anonymous_policy: public\n",
        )
        .into();
    })
    .await;
    // The harness polled /health while the proxy started: the address may have used some.
    let r = poll("a 429 on /health", Duration::from_secs(5), || async {
        let r = h.http.get(h.url("/ready")).send().await.unwrap();
        (r.status() == 429).then_some(r)
    })
    .await;
    let limit = parse_limit(&header(&r, "ratelimit").unwrap());
    assert_eq!(limit[0].0, "public");
    assert!(header(&r, "retry-after").is_some());
    expect_error(r, 429, "rate_limited").await;
    // Authenticated callers are counted per principal, not per address.
    let r = h.get(h.key("viewer"), "/api/v1/regions").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        parse_limit(&header(&r, "ratelimit").unwrap())[0].0,
        "default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_a_reload() {
    let h = Harness::start_with(|c| {
        c.extra_top = "limits:\n  policies:\n    default: {quota: 2, window_seconds: 60}\n".into();
    })
    .await;
    let key = h.key("viewer");
    for _ in 0..2 {
        assert_eq!(h.get(key, "/api/v1/regions").await.status(), 200);
    }
    assert_eq!(h.get(key, "/api/v1/regions").await.status(), 429);
    // Reload a changed file (another policy added): the used quota stays used.
    h.proxy
        .edit_config(|text| format!("{text}    other: {{quota: 5, window_seconds: 60}}\n"));
    h.reload_ok().await;
    let r = h.get(key, "/api/v1/regions").await;
    assert_eq!(r.status(), 429, "a reload does not hand out a fresh quota");
}
