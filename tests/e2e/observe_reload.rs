//! Reload leaves no trace when it fails: a config that fails validation late (after its log
//! files were checked) opens no file and starts no thread, however often it is tried; a
//! config that is swapped in retires the log writers the old one used.

use crate::harness::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The names of the process's threads (`comm`, cut at 15 characters by the kernel), sorted.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// The log writers among the threads.
fn writer_threads(pid: u32) -> Vec<String> {
    thread_names(pid)
        .into_iter()
        .filter(|n| n.contains("log"))
        .collect()
}

/// The files (not sockets, pipes or other anonymous objects) the process has open.
fn open_files(pid: u32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|f| f.ok())
        .filter_map(|f| std::fs::read_link(f.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with('/'))
        .collect()
}

/// Whether every name of `a` is in `b` at least as often (both sorted).
fn within(a: &[String], b: &[String]) -> bool {
    let mut rest = b.iter().peekable();
    a.iter().all(|x| {
        while rest.peek().is_some_and(|y| *y < x) {
            rest.next();
        }
        rest.next() == Some(x)
    })
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

async fn reload(h: &Harness) -> (u16, serde_json::Value) {
    let r = h.reload().await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// Waits (generously: the machine may be busy) until `f` holds.
async fn settle(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_reloads_leave_no_thread_and_no_file_behind() {
    let h = Harness::start().await;
    let pid = h.proxy.pid();
    let dir = h.proxy.dir.path().to_path_buf();
    let good = std::fs::read_to_string(&h.proxy.config_path).unwrap();
    let access = h.proxy.access_log_path().display().to_string();
    let audit = h.proxy.audit_log_path().display().to_string();
    assert!(good.contains(&access) && good.contains(&audit));

    // A config whose logging is valid (new files in an existing directory) but whose limits
    // name a policy that does not exist: it fails only after logging was built.
    let bad = |i: usize| {
        good.replace(
            &access,
            &dir.join(format!("new-access-{i}.log"))
                .display()
                .to_string(),
        )
        .replace(
            &audit,
            &dir.join(format!("new-audit-{i}.log")).display().to_string(),
        ) + "limits:\n  default_policy: no-such-policy\n"
    };
    // One rejected reload first, so that the admin listener's worker for reloads exists.
    h.proxy.write_config(&bad(1000));
    let (status, body) = reload(&h).await;
    assert_eq!(status, 422, "{body}");
    let errors = body["details"]["config"].to_string();
    assert!(errors.contains("no-such-policy"), "{errors}");
    assert!(
        !errors.contains("logging"),
        "logging itself is valid: {errors}"
    );

    let threads_before = thread_names(pid);
    let writers_before = writer_threads(pid);
    let files_before = open_files(pid);
    let fds_before = fd_count(pid);
    assert!(files_before.contains(&access), "{files_before:?}");
    assert!(files_before.contains(&audit), "{files_before:?}");

    for i in 0..100 {
        h.proxy.write_config(&bad(i));
        let (status, body) = reload(&h).await;
        assert_eq!(status, 422, "{body}");
    }

    settle(
        &format!("the same log writers as before ({writers_before:?})"),
        || writer_threads(pid) == writers_before,
    )
    .await;
    // Runtime pools may let an idle worker go (after 10 s) or add one, but no thread is kept
    // by the rejected configs: the threads now are among those before.
    settle("no thread but those there before", || {
        within(&thread_names(pid), &threads_before)
    })
    .await;
    assert_eq!(open_files(pid), files_before);
    assert!(
        fd_count(pid) <= fds_before + 2,
        "{} descriptors after, {fds_before} before",
        fd_count(pid)
    );
    for i in (0..100).chain([1000]) {
        for name in [format!("new-access-{i}.log"), format!("new-audit-{i}.log")] {
            assert!(!dir.join(&name).exists(), "{name} was created");
        }
    }
    // The old config still serves and still logs where it did.
    assert_eq!(h.get(h.key("admin"), "/api/v1/regions").await.status(), 200);

    // A config that is swapped in with other log files retires the old writers: their files
    // are closed and their threads gone.
    let access2 = dir.join("access-2.log").display().to_string();
    let audit2 = dir.join("audit-2.log").display().to_string();
    h.proxy
        .write_config(&good.replace(&access, &access2).replace(&audit, &audit2));
    h.reload_ok().await;
    let mut want = files_before.clone();
    want.remove(&access);
    want.remove(&audit);
    want.insert(access2.clone());
    want.insert(audit2.clone());
    settle("the old log files closed, the new ones open", || {
        open_files(pid) == want
    })
    .await;
    settle("one writer per sink", || {
        writer_threads(pid) == writers_before
    })
    .await;
    // The new files take the traffic.
    let r = h.get(h.key("admin"), "/api/v1/regions").await;
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    settle("the request in the new access log", || {
        std::fs::read_to_string(&access2)
            .unwrap_or_default()
            .contains(&rid)
    })
    .await;
    assert!(!std::fs::read_to_string(&access).unwrap().contains(&rid));
}
