//! A client generated from `openapi.json` by openapi-python-client (from PyPI, installed by
//! `scripts/setup` into `target/openapi-venv`) is installed with pip and runs the facade's
//! lifecycle against the demo: list, create, get, power off, delete (`openapi_client.py`). The
//! generator must take the whole document: an operation or schema it drops fails the test.

use crate::harness::DemoProcess;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_facade_lifecycle_against_the_demo() {
    let venv = repo("target/openapi-venv/bin");
    let generator = venv.join("openapi-python-client");
    assert!(
        generator.exists(),
        "{} is missing: run scripts/setup (it installs openapi-python-client from PyPI)",
        generator.display()
    );
    let dir = tempfile::tempdir().unwrap();
    // No post hooks: the generated code is used as the generator writes it (no ruff needed).
    std::fs::write(dir.path().join("config.yaml"), "post_hooks: []\n").unwrap();
    let out = run(
        "openapi-python-client generate",
        Command::new(&generator)
            .args(["generate", "--meta", "setup", "--path"])
            .arg(repo("openapi.json"))
            .arg("--output-path")
            .arg(dir.path().join("client"))
            .arg("--config")
            .arg(dir.path().join("config.yaml")),
    );
    for dropped in [
        "will not be generated",
        "Unable to",
        "Could not",
        "duplicate",
    ] {
        assert!(
            !out.contains(dropped),
            "the generator dropped part of the document ({dropped}): {out}"
        );
    }
    let site = dir.path().join("site");
    run(
        "pip install the generated client",
        Command::new(venv.join("pip"))
            .args([
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--target",
            ])
            .arg(&site)
            .arg(dir.path().join("client")),
    );
    // Every generated module is valid Python (the generator has written invalid code before).
    run(
        "compileall",
        Command::new(venv.join("python"))
            .args(["-m", "compileall", "-q"])
            .arg(site.join("orion_proxy_client")),
    );

    let demo = DemoProcess::start().await;
    let proxy = demo.url("proxy_url");
    let key = demo.key("admin");
    let script = repo("tests/e2e/openapi_client.py");
    let python = venv.join("python");
    let text = tokio::task::spawn_blocking(move || {
        run(
            "the generated client's lifecycle",
            Command::new(python)
                .arg(script)
                .arg(proxy)
                .arg(key)
                .env("PYTHONPATH", site),
        )
    })
    .await
    .unwrap();
    for step in [
        "list: 200",
        "create: 201",
        "get: 200",
        "poweroff: 202",
        "delete: 202",
        "lifecycle ok",
    ] {
        assert!(text.contains(step), "{step} missing: {text}");
    }
}
