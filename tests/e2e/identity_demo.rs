//! `orion-proxy demo` prints OAuth2 clients for both tenants (JSON and human output), and each
//! client's token works, inside its own tenant.

use crate::harness::identity::{WEB1, request_token};
use crate::harness::{ChildGuard, binary, ok_json, poll};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts the demo and returns it with its output up to the first line that `until` accepts.
fn start(json: bool, until: impl Fn(&str) -> bool) -> (ChildGuard, Vec<String>) {
    let mut args = vec!["demo", "--ephemeral"];
    if json {
        args.push("--json");
    }
    let mut child = Command::new(binary())
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..200 {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let done = until(&line);
        lines.push(line);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in reader.lines() {});
    (ChildGuard(child), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_clients_for_both_tenants_get_tokens_that_work() {
    let (_demo, lines) = start(true, |_| true);
    let info: Value = serde_json::from_str(&lines[0]).unwrap();
    let clients = info["clients"].as_array().expect("clients");
    for tenant in ["acme", "globex"] {
        assert!(
            clients.iter().any(|c| c["tenant"] == tenant),
            "a client for {tenant}: {info}"
        );
    }
    let proxy = info["proxy_url"].as_str().unwrap();
    let http = reqwest::Client::new();
    poll("demo up", Duration::from_secs(30), || async {
        http.get(format!("{proxy}/health"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await;
    for c in clients {
        let id = c["client_id"].as_str().unwrap();
        let secret = c["client_secret"].as_str().unwrap();
        assert!(c["roles"].as_array().is_some_and(|r| !r.is_empty()), "{c}");
        let r = request_token(&http, proxy, id, secret, true).await;
        let token = ok_json(r).await["access_token"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(token.len(), 64);
        let list = ok_json(
            http.get(format!("{proxy}/api/v1/instances"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let has_web1 = list.as_array().unwrap().iter().any(|i| i["id"] == WEB1);
        assert_eq!(
            has_web1,
            c["tenant"] == "acme",
            "{id} sees its own tenant's instances only"
        );
    }
}

#[test]
fn human_output_lists_the_clients() {
    let (_demo, lines) = start(false, |l| l.contains("Ctrl-C"));
    let text = lines.concat();
    assert!(text.contains("OAuth2 clients"), "{text}");
    for id in ["acme-ci", "acme-terraform", "globex-terraform"] {
        assert!(text.contains(id), "{id} in: {text}");
    }
    assert!(text.contains("/oauth/token"), "{text}");
}
