//! The body's own checks: its size limit (enforced by the proxy as bytes arrive, see
//! `proxy::body`), JSON parsing with a nesting bound.

#[derive(Debug)]
pub enum BodyError {
    TooLarge {
        limit: usize,
    },
    InvalidJson(String),
    /// The client went away or sent a broken body.
    Read,
    /// The body did not arrive within `server.timeouts.body_read_ms`.
    Timeout,
}

/// Maximum nesting of arrays and objects accepted in a JSON body.
pub const MAX_DEPTH: usize = 64;

/// Parses a JSON body. Nesting is checked before parsing so that a deeply nested body is a
/// clear 400, not a stack overflow.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, BodyError> {
    check_depth(bytes, MAX_DEPTH)?;
    serde_json::from_slice(bytes).map_err(|e| {
        BodyError::InvalidJson(format!(
            "line {} column {}: {}",
            e.line(),
            e.column(),
            short(&e)
        ))
    })
}

fn short(e: &serde_json::Error) -> String {
    let s = e.to_string();
    s.split(" at line").next().unwrap_or(&s).to_string()
}

/// Fails past `max` levels of nesting. Strings are skipped to their closing quote by
/// `memchr` (most of a body's bytes are in strings); the brackets outside them are counted.
/// An unterminated string or unbalanced brackets are left to the parser.
fn check_depth(bytes: &[u8], max: usize) -> Result<(), BodyError> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(at) = bytes
                        .get(i..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    else {
                        return Ok(());
                    };
                    if bytes[i + at] == b'"' {
                        i += at + 1;
                        break;
                    }
                    // A backslash escapes the byte after it, whatever it is.
                    i += at + 2;
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(BodyError::InvalidJson(format!(
                        "nesting deeper than {max} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_in_strings_and_escapes_do_not_count() {
        let nest = |n: usize| "[".repeat(n) + &"]".repeat(n);
        let within = nest(MAX_DEPTH);
        assert!(check_depth(within.as_bytes(), MAX_DEPTH).is_ok());
        assert!(check_depth(nest(MAX_DEPTH + 1).as_bytes(), MAX_DEPTH).is_err());
        let quoted = format!(
            r#"{{"a":"{}","b":"\"{}\\"}}"#,
            "[".repeat(100),
            "{".repeat(100)
        );
        assert!(check_depth(quoted.as_bytes(), MAX_DEPTH).is_ok());
        // An escaped quote does not end the string; an escaped backslash does not escape it.
        let deep_after = format!(r#"["\"[[[", "\\", {}]"#, nest(MAX_DEPTH));
        assert!(check_depth(deep_after.as_bytes(), MAX_DEPTH).is_err());
        for cut in [r#"["abc"#, r#"["abc\"#, r#"""#, "\\"] {
            assert!(check_depth(cut.as_bytes(), MAX_DEPTH).is_ok(), "{cut}");
        }
    }

    #[test]
    fn depth_is_bounded() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(matches!(
            parse_json(deep.as_bytes()),
            Err(BodyError::InvalidJson(_))
        ));
        let ok = "[".repeat(10) + &"]".repeat(10);
        assert!(parse_json(ok.as_bytes()).is_ok());
        // brackets inside strings do not count
        let s = format!("{{\"a\": \"{}\"}}", "[".repeat(1000));
        assert!(parse_json(s.as_bytes()).is_ok());
    }

    #[test]
    fn invalid_json_says_where() {
        match parse_json(b"{\"a\": }") {
            Err(BodyError::InvalidJson(m)) => assert!(m.contains("line 1"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
