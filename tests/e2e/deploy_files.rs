//! The Dockerfile and the systemd unit: no engine runs here, so check that they parse as their
//! formats and carry what the deployment depends on.

const DOCKER_INSTRUCTIONS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

#[test]
fn dockerfile_parses_and_is_multi_stage_non_root() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(stripped) = t.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
        } else {
            current.push_str(t);
            logical.push(std::mem::take(&mut current));
        }
    }
    assert!(current.is_empty(), "a continuation line runs off the end");
    for l in &logical {
        let word = l.split_whitespace().next().unwrap().to_ascii_uppercase();
        assert!(
            DOCKER_INSTRUCTIONS.contains(&word.as_str()),
            "unknown instruction: {l}"
        );
    }
    let froms: Vec<_> = logical.iter().filter(|l| l.starts_with("FROM")).collect();
    assert!(
        froms.len() >= 2 && froms[0].contains(" AS build"),
        "multi-stage: {froms:?}"
    );
    assert!(
        logical
            .iter()
            .any(|l| l.starts_with("COPY --from=build") && l.contains("orion-proxy"))
    );
    let user = logical
        .iter()
        .rev()
        .find(|l| l.starts_with("USER"))
        .expect("a USER");
    assert!(!user.contains("root") && !user.ends_with(" 0"), "{user}");
    assert!(
        text.contains("cmake"),
        "the build stage installs cmake for Pingora"
    );
    for dir in ["conf", "schemas"] {
        assert!(
            logical
                .iter()
                .any(|l| l.starts_with("COPY") && !l.contains("--from") && l.contains(dir)),
            "{dir}"
        );
    }
}

#[test]
fn systemd_unit_is_hardened_notifies_and_reloads_with_a_report() {
    let text = std::fs::read_to_string("systemd/orion-proxy@.service").unwrap();
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if t.starts_with('[') {
            assert!(t.ends_with(']'), "{t}");
            section = t.to_string();
            continue;
        }
        let (k, _) = t
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {t}"));
        keys.push((section.clone(), k.to_string(), t.to_string()));
    }
    let has = |s: &str, line: &str| keys.iter().any(|(sec, _, l)| sec == s && l == line);
    assert!(has("[Service]", "NoNewPrivileges=yes"));
    assert!(has("[Service]", "ProtectSystem=strict"));
    assert!(has("[Service]", "DynamicUser=yes"));
    assert!(has("[Service]", "Type=notify"));
    assert!(has(
        "[Service]",
        "ExecReload=/usr/bin/orion-proxy reload -c /etc/orion-proxy/orion-proxy.yaml"
    ));
    assert!(has(
        "[Service]",
        "ExecStart=/usr/bin/orion-proxy run --upgrade -c /etc/orion-proxy/orion-proxy.yaml"
    ));
    assert!(has("[Service]", "RuntimeDirectoryPreserve=yes"));
    assert!(
        keys.iter()
            .any(|(s, k, _)| s == "[Service]" && k == "LoadCredential")
    );
    assert!(
        keys.iter()
            .any(|(s, k, _)| s == "[Service]" && k == "TimeoutStopSec")
    );
    assert!(keys.iter().any(|(s, k, l)| s == "[Service]"
        && k == "ExecStart"
        && l.contains("orion-proxy run --upgrade -c")));
    assert!(has("[Install]", "WantedBy=multi-user.target"));
}
