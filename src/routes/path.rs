//! Path normalisation: what the proxy forwards is exactly what it checked.
//!
//! `//api/v1/x` (a base URL with a trailing slash) is `/api/v1/x`; a trailing slash is dropped;
//! dot segments, encoded slashes and backslashes, NUL bytes and over-long paths are refused.

use std::fmt;

pub const MAX_PATH_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    TooLong,
    NotAbsolute,
    DotSegment,
    EncodedSeparator,
    BadByte,
    BadEncoding,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::TooLong => "path is too long",
            PathError::NotAbsolute => "path must start with /",
            PathError::DotSegment => "path must not contain . or .. segments",
            PathError::EncodedSeparator => "path must not contain encoded slashes or backslashes",
            PathError::BadByte => "path contains a forbidden character",
            PathError::BadEncoding => "path has an invalid percent-encoding",
        })
    }
}

/// Normalises a request path (without its query). The result starts with `/`, has no empty,
/// `.` or `..` segments and no trailing slash (except the root itself).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(raw.as_bytes()) {
        return Ok(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    for segment in raw.split('/') {
        if segment.is_empty() {
            continue;
        }
        check_segment(segment)?;
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Whether an absolute path is already normal and every segment passes [`check_segment`]
/// (the common case, checked in two cheap passes): no escape, backslash, control byte or
/// space; no empty segment (`//`, a trailing slash); no segment starting with a dot (which
/// covers `.` and `..`; other dotted segments take the full check).
fn is_plain(raw: &[u8]) -> bool {
    // Without an early exit the check compiles to vector compares.
    let special = raw.iter().fold(false, |bad, &b| {
        bad | (b <= 0x20) | (b == 0x7f) | (b == b'%') | (b == b'\\')
    });
    !special
        && (raw.len() == 1 || raw.last() != Some(&b'/'))
        && !raw
            .windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

/// Checks one segment: its escapes are well formed and decode to no separator or control
/// byte, and it is not `.` or `..` (decoded). Counts what the decoded segment would hold
/// instead of decoding it (no allocation per segment).
fn check_segment(segment: &str) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    // Decoded length, and how many of the decoded bytes are dots.
    let (mut len, mut dots) = (0usize, 0usize);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let decoded = match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
                let value = std::str::from_utf8(hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(PathError::BadEncoding)?;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    0..=0x1f | 0x7f => return Err(PathError::BadByte),
                    _ => {}
                }
                i += 3;
                value
            }
            b'\\' => return Err(PathError::EncodedSeparator),
            0..=0x20 | 0x7f => return Err(PathError::BadByte),
            _ => {
                i += 1;
                b
            }
        };
        len += 1;
        dots += usize::from(decoded == b'.');
    }
    if dots == len && (len == 1 || len == 2) {
        return Err(PathError::DotSegment);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapses_and_trims() {
        assert_eq!(
            normalize("//api/v1/instances").unwrap(),
            "/api/v1/instances"
        );
        assert_eq!(
            normalize("/api//v1/instances/").unwrap(),
            "/api/v1/instances"
        );
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("///").unwrap(), "/");
    }

    #[test]
    fn refuses_traversal_and_encoded_separators() {
        for bad in [
            "/api/v1/../admin",
            "/api/v1/./instances",
            "/api/v1/%2e%2e/x",
            "/api/v1/%2E./x",
            "/api/v1/%2e/x",
            "/api/v1/x/.%2E",
            "/api/v1/instances%2Fx",
            "/api/v1/instances%2fx",
            "/api/v1/a%5cb",
            "/api/v1/a\\b",
            "/api/v1/a%00b",
            "/api/v1/a%zz",
            "/api/v1/a%2",
        ] {
            assert!(normalize(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(normalize("api/v1").unwrap_err(), PathError::NotAbsolute);
        assert_eq!(
            normalize(&"/a".repeat(2000)).unwrap_err(),
            PathError::TooLong
        );
    }

    #[test]
    fn the_plain_path_check_agrees_with_the_full_one() {
        for raw in [
            "/",
            "/api/v1/instances/3b0c2f6e-1111-4222-8333-944455556666",
            "/api/v1/instances/",
            "/api//v1",
            "/api/./v1",
            "/api/../v1",
            "/api/.well-known",
            "/api/v1/a%20b",
            "/api/v1/a b",
            "/api/v1/a\\b",
            "/api/v1/\u{7f}",
            "/api/v1/caf\u{e9}",
            "/a.b/c..",
        ] {
            if is_plain(raw.as_bytes()) {
                let mut full = String::new();
                for segment in raw.split('/').filter(|s| !s.is_empty()) {
                    check_segment(segment).unwrap();
                    full.push('/');
                    full.push_str(segment);
                }
                assert_eq!(if full.is_empty() { "/" } else { &full }, raw);
            }
        }
        assert!(is_plain(b"/api/v1/instances/3b0c2f6e"));
        assert!(!is_plain(b"/api/v1/instances/"));
    }

    #[test]
    fn keeps_ordinary_encodings() {
        assert_eq!(
            normalize("/api/v1/instances/abc/context/my%20key").unwrap(),
            "/api/v1/instances/abc/context/my%20key"
        );
        // Only `.` and `..` are dot segments.
        assert_eq!(normalize("/a/.../.b/c.").unwrap(), "/a/.../.b/c.");
        assert_eq!(normalize("/a/%2e%2e%2e").unwrap(), "/a/%2e%2e%2e");
    }
}
