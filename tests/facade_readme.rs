//! The README's facade block runs as written against `orion-proxy demo`.

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_facade_block_runs_against_the_demo() {
    let mut child = Command::new(common::binary())
        .args(["demo", "--json", "--ephemeral"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let _demo = Demo(child);
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    std::thread::spawn(move || for _ in reader.lines() {});
    let info: Value = serde_json::from_str(&first).unwrap();
    let proxy = info["proxy_url"].as_str().unwrap().to_string();
    common::poll("the demo is ready", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("{proxy}/ready")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .find("## The REST facade (`/v1`)")
        .expect("README facade section");
    let start = readme[section..].find("```sh").unwrap() + section + 5;
    let end = readme[start..].find("```").unwrap() + start;
    let script = readme[start..end]
        .replace(
            "<the admin key the demo printed>",
            info["api_keys"]["admin"].as_str().unwrap(),
        )
        .replace("http://127.0.0.1:8080", &proxy);
    let out = Command::new("timeout")
        .args(["120", "bash", "-euo", "pipefail", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README facade block failed ({:?}): {}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "orion-proxy",
        "x-total-count: 2",
        "rel=\"next\"",
        "409 Conflict",
        "retry-after: 2",
        "\"error\":\"invalid_state\"",
        "\"steps_done\":[\"stop\",\"wait_stopped\",\"start\",\"wait_running\"]",
        "\"memory\":2048",
        "\"type\":\"snapshot\"",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.trim_end().ends_with("202"),
        "DELETE answers 202:\n{stdout}"
    );
    assert!(!stdout.contains("internal_error"), "{stdout}");
}
