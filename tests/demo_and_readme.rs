//! `orion-proxy demo --json` starts the simulator and the proxy, prints what a script needs on
//! its first line, and the README's curl examples work against it.

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: std::process::Child,
    info: Value,
}

impl Drop for Demo {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let mut child = Command::new(common::binary())
        .args(["demo", "--json", "--ephemeral"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    // Keep draining the access log so the pipe never fills.
    std::thread::spawn(move || for _ in reader.lines() {});
    let info: Value = serde_json::from_str(&first)
        .unwrap_or_else(|e| panic!("first line is not JSON ({e}): {first}"));
    Demo { child, info }
}

async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{url}/ready")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the demo did not become ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_its_urls_and_keys_and_they_work() {
    let demo = start_demo();
    let info = &demo.info;
    for k in ["proxy_url", "admin_url", "metrics_url", "simulator_url"] {
        assert!(
            info[k].as_str().unwrap().starts_with("http://127.0.0.1:"),
            "{k}: {info}"
        );
    }
    for role in ["viewer", "operator", "admin", "other_tenant_admin"] {
        assert_eq!(info["api_keys"][role].as_str().unwrap().len(), 64, "{role}");
    }
    let proxy = info["proxy_url"].as_str().unwrap();
    wait_ready(proxy).await;
    let http = reqwest::Client::new();
    let admin = info["api_keys"]["admin"].as_str().unwrap();
    let viewer = info["api_keys"]["viewer"].as_str().unwrap();
    let list: Value = http
        .get(format!("{proxy}/api/v1/instances"))
        .bearer_auth(admin)
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
        .bearer_auth(viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a viewer may not power instances");
    let r = http
        .get(format!(
            "{}/admin/config",
            info["admin_url"].as_str().unwrap()
        ))
        .bearer_auth(viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "the admin API is for admins");
    let r = http
        .get(format!(
            "{}/admin/config",
            info["admin_url"].as_str().unwrap()
        ))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let metrics = http
        .get(info["metrics_url"].as_str().unwrap())
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
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is needed for this test (scripts/setup installs it)");
    }
    let demo = start_demo();
    let info = &demo.info;
    let proxy = info["proxy_url"].as_str().unwrap();
    wait_ready(proxy).await;
    let readme = std::fs::read_to_string("README.md").unwrap();
    let start = readme
        .find("## Try it against the demo")
        .expect("README section");
    let block_start = readme[start..].find("```sh").unwrap() + start + 5;
    let block_end = readme[block_start..].find("```").unwrap() + block_start;
    let port = |u: &str| {
        u.rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches("/metrics")
            .to_string()
    };
    let script = readme[block_start..block_end]
        .replace(
            "<the admin key the demo printed>",
            info["api_keys"]["admin"].as_str().unwrap(),
        )
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", port(proxy)))
        .replace(
            "127.0.0.1:9091",
            &format!("127.0.0.1:{}", port(info["admin_url"].as_str().unwrap())),
        )
        .replace(
            "127.0.0.1:9090",
            &format!("127.0.0.1:{}", port(info["metrics_url"].as_str().unwrap())),
        );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README block failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"status\":\"ok\""), "{stdout}");
    assert!(stdout.contains("\"state\""), "{stdout}");
    assert!(stdout.contains("401 Unauthorized"), "{stdout}");
    assert!(stdout.contains("orion_proxy_requests_total"), "{stdout}");
    assert!(!stdout.contains("internal_error"), "{stdout}");
}
