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

/// The Dockerfile's instructions, continuation lines joined, comments and blank lines left out.
fn logical_lines(text: &str) -> Vec<String> {
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
    logical
}

/// Every `FROM` with its `${ARG}` replaced by the ARG's default: the image it pulls.
fn base_images(logical: &[String]) -> Vec<String> {
    let mut args = std::collections::BTreeMap::new();
    let mut images = Vec::new();
    for l in logical {
        if let Some(arg) = l.strip_prefix("ARG ") {
            if let Some((k, v)) = arg.trim().split_once('=') {
                args.insert(k.to_string(), v.trim_matches('"').to_string());
            }
        } else if let Some(from) = l.strip_prefix("FROM ") {
            let image = from
                .split_whitespace()
                .find(|w| !w.starts_with("--"))
                .unwrap()
                .to_string();
            let image = args.iter().fold(image, |i, (k, v)| {
                i.replace(&format!("${{{k}}}"), v)
                    .replace(&format!("${k}"), v)
            });
            images.push(image);
        }
    }
    images
}

#[test]
fn the_base_images_are_pinned_by_digest() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let images = base_images(&logical_lines(&text));
    assert_eq!(images.len(), 2, "{images:?}");
    for image in &images {
        // name:tag@sha256:<64 hex>: the tag says which version, the digest is what is pulled.
        let (name_tag, digest) = image
            .split_once("@sha256:")
            .unwrap_or_else(|| panic!("{image} is not pinned by digest"));
        assert!(
            digest.len() == 64
                && digest
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{image}: the digest is not 64 hex digits"
        );
        let (_, tag) = name_tag
            .split_once(':')
            .unwrap_or_else(|| panic!("{image}: no tag beside the digest"));
        assert!(
            tag.contains("bookworm") && tag != "latest",
            "{image}: a specific Debian release"
        );
    }
    assert!(images[0].starts_with("rust:1."), "{images:?}");
    assert!(images[1].starts_with("debian:"), "{images:?}");
}

/// The build stage's build context: what its `COPY` lines (not `--from`) bring in.
fn build_context(logical: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stage = 0;
    for l in logical {
        if l.starts_with("FROM ") {
            stage += 1;
        } else if stage == 1
            && let Some(copy) = l.strip_prefix("COPY ")
            && !copy.contains("--from")
        {
            let words: Vec<&str> = copy.split_whitespace().collect();
            out.extend(words[..words.len() - 1].iter().map(|w| w.to_string()));
        }
    }
    out
}

/// The image builds from what its build stage copies: every file the crate reads at compile
/// time (`include_str!`/`include_bytes!`) and every path crate of the workspace (the vendored
/// patches too) is inside it, and cargo resolves the locked workspace from that context alone.
#[test]
fn the_image_build_context_holds_what_the_build_reads() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let context = build_context(&logical_lines(&text));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let inside = |p: &std::path::Path| {
        let rel = p.strip_prefix(root).unwrap_or(p);
        context
            .iter()
            .any(|c| rel == std::path::Path::new(c) || rel.starts_with(std::path::Path::new(c)))
    };
    let mut stack = vec![root.join("src"), root.join("crates")];
    let mut included = 0;
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("target") {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let src = std::fs::read_to_string(&p).unwrap();
            for macro_ in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in src.match_indices(macro_) {
                    let rest = &src[at + macro_.len()..];
                    let file = &rest[..rest.find('"').unwrap()];
                    let full = p.parent().unwrap().join(file);
                    let full = full.canonicalize().unwrap_or(full);
                    assert!(
                        inside(&full),
                        "{} includes {}, which the image's build stage does not copy ({context:?})",
                        p.display(),
                        full.display()
                    );
                    included += 1;
                }
            }
        }
    }
    assert!(included > 10, "found {included} includes");

    // cargo resolves the locked workspace (path crates, [patch] vendored crates) from a copy of
    // exactly the build context, offline.
    let scratch = tempfile::tempdir().unwrap();
    for c in &context {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(root.join(c))
            .arg(scratch.path())
            .status()
            .unwrap();
        assert!(status.success(), "cp {c}");
    }
    let meta = std::process::Command::new("cargo")
        .args(["metadata", "--offline", "--locked", "--format-version", "1"])
        .current_dir(scratch.path())
        .output()
        .unwrap();
    assert!(
        meta.status.success(),
        "cargo metadata in the image's build context: {}",
        String::from_utf8_lossy(&meta.stderr)
    );
}

#[test]
fn dockerfile_parses_and_is_multi_stage_non_root() {
    let text = std::fs::read_to_string("Dockerfile").unwrap();
    let logical = logical_lines(&text);
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
