//! `orion-proxy demo --json` starts the simulator and the proxy, prints what a script needs on
//! its first line, and the README's curl examples work against it.

use crate::harness::DemoProcess;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_its_urls_and_keys_and_they_work() {
    let demo = DemoProcess::start().await;
    let info = &demo.info;
    for k in ["proxy_url", "admin_url", "metrics_url", "simulator_url"] {
        assert!(demo.url(k).starts_with("http://127.0.0.1:"), "{k}: {info}");
    }
    for role in ["viewer", "operator", "admin", "other_tenant_admin"] {
        assert_eq!(demo.key(role).len(), 64, "{role}");
    }
    let proxy = demo.url("proxy_url");
    let admin_url = demo.url("admin_url");
    let http = reqwest::Client::new();
    let (admin, viewer) = (demo.key("admin"), demo.key("viewer"));
    let list: Value = http
        .get(format!("{proxy}/api/v1/instances"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!list.as_array().unwrap().is_empty());
    let id = list[0]["id"].as_str().unwrap();
    let r = http
        .post(format!("{proxy}/api/v1/instances/{id}/stop"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a viewer may not power instances");
    let r = http
        .get(format!("{admin_url}/admin/config"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the admin API is for admins");
    let r = http
        .get(format!("{admin_url}/admin/config"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = http
        .get(demo.url("metrics_url"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("orion_proxy_requests_total"), "{metrics}");
}

/// Runs the README's "Try it against the demo" block with the demo's printed key and ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_examples_work_against_the_demo() {
    let demo = DemoProcess::start().await;
    let (ok, stdout, stderr) = demo.run_readme_block("## Try it against the demo");
    assert!(ok, "README block failed: {stderr}\n{stdout}");
    assert!(stdout.contains("\"status\":\"ok\""), "{stdout}");
    assert!(stdout.contains("\"state\""), "{stdout}");
    assert!(stdout.contains("401 Unauthorized"), "{stdout}");
    assert!(stdout.contains("orion_proxy_requests_total"), "{stdout}");
    assert!(!stdout.contains("internal_error"), "{stdout}");
}
