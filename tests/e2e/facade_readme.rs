//! The README's facade block runs as written against `orion-proxy demo`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_facade_block_runs_against_the_demo() {
    let demo = crate::harness::DemoProcess::start().await;
    let (ok, stdout, stderr) = demo.run_readme_block("## The REST facade (`/v1`)");
    assert!(ok, "README facade block failed: {stderr}\n{stdout}");
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
