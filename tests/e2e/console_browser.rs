//! The web console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by `scripts/setup`; Selenium from PyPI in `target/ui-venv`) against the running
//! demo: `tests/ui/console.py` does every scenario and saves each page's screenshot under
//! `target/ui-screenshots/`. Bounded: the script is killed after three minutes.

use crate::harness::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let root = env!("CARGO_MANIFEST_DIR");
    let python = format!("{root}/target/ui-venv/bin/python");
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: run scripts/setup"
    );
    let demo = DemoProcess::start().await;
    let shots = format!("{root}/target/ui-screenshots");
    let mut child = Command::new(&python)
        .arg(format!("{root}/tests/ui/console.py"))
        .env("ADMIN_URL", demo.url("admin_url"))
        .env("PROXY_URL", demo.url("proxy_url"))
        .env("DEMO_KEYS", demo.info["api_keys"].to_string())
        .env("SCREENSHOTS", &shots)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the browser test");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let status = status.unwrap_or_else(|| panic!("the browser test took over 3 minutes:\n{text}"));
    assert!(status.success(), "the browser test failed:\n{text}");
    for page in [
        "overview",
        "endpoints",
        "clients",
        "client",
        "audit",
        "tasks",
        "configuration",
        "credentials",
        "sign-in",
        "read-only",
    ] {
        assert!(
            std::path::Path::new(&format!("{shots}/{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
