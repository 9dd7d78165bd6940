//! Lists: paging across the edges, each filter, multi-key sort, `X-Total-Count` and `Link`, bad
//! parameters named in a 400, and the mirror's untouched bare array without parameters.

use crate::harness::facade::*;
use crate::harness::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// A harness with 8 acme instances in settled states: the 2 seeded ones and 6 more.
async fn harness() -> (Harness, String) {
    let h = Harness::start_with(|c| c.extra_top = facade_config(10_000)).await;
    let key = h.key("admin").to_string();
    let mut ids = Vec::new();
    for (name, memory, region, start) in [
        ("alpha", 1024, "SY3", true),
        ("bravo", 2048, "ME2", false),
        ("charlie", 4096, "SY3", false),
        ("delta-web", 1024, "ME2", true),
        ("echo-web", 8192, "SY3", true),
        ("foxtrot", 2048, "SY3", false),
    ] {
        ids.push((
            create_basic(&h, &key, name, memory, region, start).await,
            start,
        ));
    }
    for (id, start) in &ids {
        wait_state(&h, &key, id, if *start { "running" } else { "stopped" }).await;
    }
    (h, key)
}

struct Listed {
    status: u16,
    total: Option<usize>,
    links: BTreeMap<String, String>,
    body: Value,
}

async fn list(h: &Harness, key: &str, path: &str) -> Listed {
    let resp = h.get(key, path).await;
    let status = resp.status().as_u16();
    let total = resp
        .headers()
        .get("x-total-count")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let mut links = BTreeMap::new();
    if let Some(l) = resp.headers().get("link") {
        for part in l.to_str().unwrap().split(", ") {
            let (url, rel) = part.split_once("; ").unwrap();
            let rel = rel.trim_start_matches("rel=\"").trim_end_matches('"');
            links.insert(rel.to_string(), url.trim_matches(['<', '>']).to_string());
        }
    }
    let body = resp.json().await.unwrap();
    Listed {
        status,
        total,
        links,
        body,
    }
}

fn names(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facade_and_mirror_lists() {
    let (h, key) = harness().await;
    let all: Vec<Value> = ok_json(h.get(&key, "/api/v1/instances").await)
        .await
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(all.len(), 8);

    // The facade's body, defaults and headers.
    let l = list(&h, &key, "/v1/instances").await;
    assert_eq!(l.status, 200);
    assert_eq!(
        (
            l.body["total"].as_u64(),
            l.body["limit"].as_u64(),
            l.body["offset"].as_u64()
        ),
        (Some(8), Some(50), Some(0))
    );
    assert_eq!(l.total, Some(8));
    assert_eq!(
        names(&l.body["items"]),
        names(&Value::Array(all.clone())),
        "OrionVM's order without sort"
    );
    // One page: first and last are the same page, no prev/next.
    assert_eq!(l.links.keys().collect::<Vec<_>>(), vec!["first", "last"]);
    assert_eq!(l.links["first"], "/v1/instances?limit=50&offset=0");
    assert_eq!(l.links["last"], "/v1/instances?limit=50&offset=0");

    // Last partial page: 8 items by 3, offset 6 has 2, with prev and no next.
    let l = list(&h, &key, "/v1/instances?limit=3&offset=6&sort=name").await;
    assert_eq!(names(&l.body["items"]), vec!["web-1", "worker-1"]);
    assert_eq!(l.total, Some(8));
    assert_eq!(l.links["prev"], "/v1/instances?sort=name&limit=3&offset=3");
    assert_eq!(l.links["last"], "/v1/instances?sort=name&limit=3&offset=6");
    assert!(!l.links.contains_key("next"));
    // A middle page has both.
    let l = list(&h, &key, "/v1/instances?limit=3&offset=3&sort=name").await;
    assert_eq!(
        names(&l.body["items"]),
        vec!["delta-web", "echo-web", "foxtrot"]
    );
    assert_eq!(l.links["next"], "/v1/instances?sort=name&limit=3&offset=6");
    assert_eq!(l.links["prev"], "/v1/instances?sort=name&limit=3&offset=0");
    // page/per_page, and links in the same words.
    let l = list(&h, &key, "/v1/instances?page=3&per_page=3&sort=name").await;
    assert_eq!(names(&l.body["items"]), vec!["web-1", "worker-1"]);
    assert_eq!(l.body["offset"], 6);
    assert_eq!(
        l.links["first"],
        "/v1/instances?sort=name&page=1&per_page=3"
    );
    assert_eq!(l.links["prev"], "/v1/instances?sort=name&page=2&per_page=3");
    // Past the end: an empty page, the total still counts.
    let l = list(&h, &key, "/v1/instances?offset=100").await;
    assert_eq!(
        (l.body["items"].as_array().unwrap().len(), l.total),
        (0, Some(8))
    );
    // Empty: nothing matches.
    let l = list(&h, &key, "/v1/instances?name=nobody").await;
    assert_eq!((l.body["total"].as_u64(), l.total), (Some(0), Some(0)));
    assert_eq!(l.body["items"], json!([]));
    assert_eq!(l.links.keys().collect::<Vec<_>>(), vec!["first", "last"]);

    // Each filter, against what the whole list says.
    let expect = |f: &dyn Fn(&Value) -> bool| -> Vec<String> {
        let mut v: Vec<String> = all
            .iter()
            .filter(|i| f(i))
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("state=running", expect(&|i| i["state"] == "running")),
        ("state=stopped", expect(&|i| i["state"] == "stopped")),
        ("region=ME2", expect(&|i| i["region"]["code"] == "ME2")),
        ("region=sy3", expect(&|i| i["region"]["code"] == "SY3")),
        ("name=charlie", vec!["charlie".to_string()]),
        (
            "name~=WEB",
            expect(&|i| i["name"].as_str().unwrap().contains("web")),
        ),
        (
            "memory_min=4096",
            expect(&|i| i["memory"].as_u64().unwrap() >= 4096),
        ),
        (
            "memory_max=2048",
            expect(&|i| i["memory"].as_u64().unwrap() <= 2048),
        ),
        (
            "state=running&region=SY3&memory_max=2048",
            expect(&|i| {
                i["state"] == "running"
                    && i["region"]["code"] == "SY3"
                    && i["memory"].as_u64().unwrap() <= 2048
            }),
        ),
    ];
    for (q, want) in cases {
        assert!(
            !want.is_empty() || q.starts_with("name="),
            "{q} selects something"
        );
        let l = list(&h, &key, &format!("/v1/instances?{q}&sort=name")).await;
        assert_eq!(names(&l.body["items"]), want, "{q}");
        assert_eq!(l.total, Some(want.len()), "{q}");
    }
    assert_eq!(
        expect(&|i| i["name"].as_str().unwrap().contains("web")).len(),
        3,
        "web-1, delta-web, echo-web"
    );

    // Multi-key sort: state ascending, then memory descending, then name.
    let l = list(&h, &key, "/v1/instances?sort=state,-memory,name").await;
    let mut want = all.clone();
    want.sort_by(|a, b| {
        a["state"]
            .as_str()
            .cmp(&b["state"].as_str())
            .then(b["memory"].as_u64().cmp(&a["memory"].as_u64()))
            .then(a["name"].as_str().cmp(&b["name"].as_str()))
    });
    assert_eq!(names(&l.body["items"]), names(&Value::Array(want)));
    let l = list(&h, &key, "/v1/instances?sort=-name").await;
    let mut want = names(&Value::Array(all.clone()));
    want.sort();
    want.reverse();
    assert_eq!(names(&l.body["items"]), want);

    // Bad parameters: 400 naming them, and OrionVM is not asked.
    let lists_before = h.sim.calls().count("GET", "/api/v1/instances");
    for (q, name) in [
        ("limit=5000", "limit"),
        ("limit=0", "limit"),
        ("offset=-1", "offset"),
        ("page=0", "page"),
        ("page=2&limit=5", "page"),
        ("sort=size", "sort"),
        ("memory_min=lots", "memory_min"),
        ("colour=red", "colour"),
    ] {
        let err = expect_error(
            h.get(&key, &format!("/v1/instances?{q}")).await,
            400,
            "invalid_parameter",
        )
        .await;
        assert!(err["details"][name].is_array(), "{q}: {err}");
        assert!(
            err["detail"].as_str().unwrap().starts_with(name),
            "{q}: {err}"
        );
    }
    let err = expect_error(
        h.get(&key, "/api/v1/instances?limit=10&colour=red").await,
        400,
        "invalid_parameter",
    )
    .await;
    assert!(err["details"]["colour"].is_array(), "{err}");
    assert_eq!(
        h.sim.calls().count("GET", "/api/v1/instances"),
        lists_before
    );

    // The mirror with list parameters: still a bare array, shaped, with the headers.
    let l = list(
        &h,
        &key,
        "/api/v1/instances?state=stopped&sort=-memory&limit=2",
    )
    .await;
    assert_eq!(l.status, 200);
    let stopped = expect(&|i| i["state"] == "stopped");
    assert_eq!(l.total, Some(stopped.len()));
    assert!(l.body.is_array());
    assert_eq!(names(&l.body), vec!["worker-1", "charlie"]);
    assert_eq!(
        l.links["next"],
        "/api/v1/instances?state=stopped&sort=-memory&limit=2&offset=2"
    );
    // Other mirror lists too.
    let l = list(&h, &key, "/api/v1/regions?sort=-name").await;
    assert_eq!(names(&l.body), vec!["Sydney 3", "Melbourne 2"]);
    assert_eq!(l.total, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_without_list_parameters_is_orionvms_bare_array_untouched() {
    let h = Harness::start().await;
    let key = h.key("admin").to_string();
    let direct = |path: &str| {
        let url = format!("{}{path}", h.sim.url());
        let http = h.http.clone();
        async move {
            let resp = http
                .get(url)
                .bearer_auth(ACME_STATIC_TOKEN)
                .send()
                .await
                .unwrap();
            resp.bytes().await.unwrap()
        }
    };
    for path in [
        "/api/v1/regions",
        "/api/v1/templates",
        "/api/v1/public_keys",
        "/api/v1/disks",
        "/api/v1/instances?unrelated=1",
    ] {
        let before = h.sim.calls().count("GET", path.split('?').next().unwrap());
        let resp = h.get(&key, path).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert!(resp.headers().get("x-total-count").is_none(), "{path}");
        assert!(resp.headers().get("link").is_none(), "{path}");
        let through = resp.bytes().await.unwrap();
        let straight = direct(path).await;
        assert_eq!(through, straight, "{path}: the same bytes as OrionVM's");
        assert!(
            serde_json::from_slice::<Value>(&through)
                .unwrap()
                .is_array()
        );
        assert_eq!(
            h.sim.calls().count("GET", path.split('?').next().unwrap()),
            before + 2,
            "{path}"
        );
    }
    // The query reached OrionVM as it was sent (the proxy's call carries a traceparent).
    let last = h
        .sim
        .recent_requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/instances" && !r.header_values("traceparent").is_empty())
        .unwrap();
    assert_eq!(last.query.as_deref(), Some("unrelated=1"));
}

/// The proxy reads OrionVM's answer whole only for its own calls (here: a list it pages), and
/// then at most `accounts.NAME.max_response_bytes`; past it the caller gets a 502 in the error
/// body. The same list proxied as it is streams through, unlimited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_past_max_response_bytes_is_a_502() {
    let h =
        Harness::start_with(|c| c.account_extra = "    max_response_bytes: 2048\n".into()).await;
    let key = h.key("admin").to_string();
    for i in 0..4 {
        create_basic(&h, &key, &format!("big-{i}"), 1024, "SY3", false).await;
    }
    let streamed = h.get(&key, "/api/v1/instances").await;
    assert_eq!(streamed.status(), 200);
    let len = streamed.bytes().await.unwrap().len();
    assert!(len > 2048, "OrionVM's list is {len} bytes");
    let paged = h.get(&key, "/api/v1/instances?limit=1").await;
    assert_eq!(paged.status(), 502);
    let body: Value = paged.json().await.unwrap();
    assert_eq!(body["error"], "upstream_response_too_large", "{body}");
    assert!(body["request_id"].is_string());
    // A list under the limit is still paged.
    let regions = h.get(&key, "/api/v1/regions?limit=1").await;
    assert_eq!(regions.status(), 200);
    assert_eq!(
        regions
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
