//! The README's deployment section as an operator runs it, and the Debian package.
//!
//! The install steps run literally in a scratch root (the README names `ROOT`, `SUDO` and
//! `BINARY` for that), ending with `check` of the shipped production example, which must pass
//! without DNS and leave no file behind. The package is built from the debug binary with
//! cargo-deb (`scripts/package --debug`), inspected with `dpkg-deb`, extracted with `dpkg -x`,
//! and its unit verified with `systemd-analyze verify`.

use crate::harness::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The first ```sh block after `heading` in the README.
fn readme_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(ROOT_DIR).join("README.md")).unwrap();
    let at = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no '{heading}'"));
    let start = readme[at..].find("```sh\n").unwrap() + at + 6;
    let end = readme[start..].find("```").unwrap() + start;
    readme[start..end].to_string()
}

fn files_under(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn the_readme_install_steps_and_check_pass_in_a_scratch_root() {
    let root = tempfile::tempdir().unwrap();
    let script = readme_block("### Install");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(ROOT_DIR)
        .env("ROOT", root.path())
        .env("SUDO", "")
        .env("BINARY", binary())
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the README's install steps:\n{text}");
    assert!(text.contains("orion-proxy.yaml: OK"), "{text}");
    let config = root.path().join("etc/orion-proxy/orion-proxy.yaml");
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .contains("api.orionvm.com"),
        "the production example, OrionVM's host name and all"
    );

    // `check` again: it creates no file (no audit trail, no log, no socket).
    let before = files_under(root.path());
    let check = Command::new(root.path().join("usr/bin/orion-proxy"))
        .args(["check", "-c"])
        .arg(&config)
        .env(
            "CREDENTIALS_DIRECTORY",
            root.path().join("etc/orion-proxy/credentials"),
        )
        .output()
        .unwrap();
    assert!(check.status.success());
    assert_eq!(before, files_under(root.path()), "check created files");
    assert!(!root.path().join("var/log/orion-proxy/audit.log").exists());

    // Without the credentials the unit would load, the same file is refused: exit status 3.
    let refused = Command::new(root.path().join("usr/bin/orion-proxy"))
        .args(["check", "-c"])
        .arg(&config)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("orionvm-client-id"));
}

#[test]
fn exit_statuses_are_documented_and_kept() {
    let help = Command::new(binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    assert!(
        help.contains("Exit status: 0 ok; 1 runtime failure")
            && help.contains("2 usage error")
            && help.contains("3 invalid config"),
        "{help}"
    );
    let usage = Command::new(binary())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "server: {colour: blue}\naccounts: {}\ntenants: {}\n").unwrap();
    for cmd in ["check", "run"] {
        let out = Command::new(binary())
            .args([cmd, "-c"])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd}");
    }
    // No process on the control socket: a runtime failure.
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "server: {{control_socket: \"{}\"}}\n",
            dir.path().join("none.sock").display()
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["reload", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("none.sock"));
    let readme = std::fs::read_to_string(Path::new(ROOT_DIR).join("README.md")).unwrap();
    assert!(readme.contains("### Exit status"));
}

#[tokio::test]
async fn health_asks_the_configured_listener() {
    let proxy = ProxyProcess::start(&ConfigBuilder::unreachable()).await;
    let ok = Command::new(binary())
        .args(["health", "-c"])
        .arg(&proxy.config_path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let gone = Command::new(binary())
        .args(["health", "--url"])
        .arg(format!("http://127.0.0.1:{}/health", free_port()))
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
}

#[test]
fn the_dockerfile_passes_hadolint_and_has_a_healthcheck() {
    let hadolint = Path::new(ROOT_DIR).join("target/tools-venv/bin/hadolint");
    let out = Command::new(&hadolint)
        .arg("Dockerfile")
        .current_dir(ROOT_DIR)
        .output()
        .unwrap_or_else(|e| panic!("{} (scripts/setup installs it): {e}", hadolint.display()));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(Path::new(ROOT_DIR).join("Dockerfile")).unwrap();
    assert!(text.contains("HEALTHCHECK") && text.contains("\"health\""));
    assert!(text.contains("COPY conf/container.yaml /etc/orion-proxy/orion-proxy.yaml"));
    // The image's config is valid as shipped (offline: its secrets live in the container).
    let container =
        std::fs::read_to_string(Path::new(ROOT_DIR).join("conf/container.yaml")).unwrap();
    let model = orion_proxy::config::parse(&container).unwrap();
    assert!(model.server.listen.starts_with("0.0.0.0:"));
    assert!(model.server.metrics_listen.unwrap().starts_with("0.0.0.0:"));
    assert_eq!(model.logging.access_log, "stdout");
    // SIGTERM drains the whole grace period, then 2 s of runtime shutdown: `docker stop` kills
    // at 10 s, before the audit trail is flushed, unless that fits.
    assert!(
        model.server.grace_period_seconds + 2 < 10,
        "grace_period_seconds {} does not fit docker stop's 10 s",
        model.server.grace_period_seconds
    );
}

#[test]
fn the_deb_package_carries_everything_and_its_unit_verifies() {
    let out = Command::new("scripts/package")
        .arg("--debug")
        .current_dir(ROOT_DIR)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/package --debug: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.trim().ends_with(".deb"))
        .map(|l| l.trim().to_string())
        .expect("cargo deb prints the package's path");
    let contents = Command::new("dpkg-deb")
        .args(["--contents", &deb])
        .output()
        .unwrap();
    let contents = String::from_utf8_lossy(&contents.stdout).to_string();
    for path in [
        "./usr/bin/orion-proxy",
        "./lib/systemd/system/orion-proxy@.service",
        "./etc/orion-proxy/orion-proxy.yaml",
        "./etc/orion-proxy/container.yaml",
        "./usr/share/orion-proxy/schemas/instances.create.json",
        "./usr/share/man/man1/orion-proxy.1.gz",
        "./usr/share/man/man1/orion-proxy-check.1.gz",
        "./usr/share/man/man1/orion-proxy-run.1.gz",
        "./usr/share/bash-completion/completions/orion-proxy",
        "./usr/share/zsh/vendor-completions/_orion-proxy",
        "./usr/share/fish/vendor_completions.d/orion-proxy.fish",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }
    let info = Command::new("dpkg-deb")
        .args(["--info", &deb])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    assert!(
        info.contains("Package: orion-proxy") && info.contains("postinst"),
        "{info}"
    );
    assert!(info.contains("conffiles"), "{info}");

    // Installed into a scratch root: the unit verifies against it (the system's own units
    // provide the targets it names).
    let root = tempfile::tempdir().unwrap();
    let x = Command::new("dpkg")
        .args(["-x", &deb])
        .arg(root.path())
        .status()
        .unwrap();
    assert!(x.success());
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for e in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "target") && p.is_file() {
            std::fs::copy(&p, units.join(p.file_name().unwrap())).unwrap();
        }
    }
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.path().display()))
        .arg("orion-proxy@blue.service")
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let man = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc {}/usr/share/man/man1/orion-proxy.1.gz",
            root.path().display()
        ))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH orion-proxy"));
    // The page of `check` documents --offline and the exit statuses.
    let check = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc {}/usr/share/man/man1/orion-proxy-check.1.gz",
            root.path().display()
        ))
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        check.contains("offline") && check.contains("not checked") && check.contains("Exit status"),
        "{check}"
    );
}
