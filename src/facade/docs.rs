//! The browsable API documentation: a Redoc page over `/openapi.json` at `/docs`, and Redoc's
//! standalone script at `/docs/redoc.standalone.js`. Both are embedded in the binary (no CDN,
//! nothing read from the disk at run time); the script is Redoc's published bundle, kept in
//! `assets/redoc/` with its licence and version.

/// The Redoc page. It loads the document from `/openapi.json` and the script from the proxy.
pub const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>orion-proxy API</title>
<style>body { margin: 0; padding: 0; }</style>
</head>
<body>
<redoc spec-url="/openapi.json"></redoc>
<script src="/docs/redoc.standalone.js"></script>
</body>
</html>
"#;

/// Redoc's standalone bundle (`assets/redoc/`).
pub const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

/// The media type and bytes served at `path` (`/docs` or its script).
pub fn asset(path: &str) -> (&'static str, &'static [u8]) {
    if path.ends_with(".js") {
        ("text/javascript; charset=utf-8", REDOC_JS)
    } else {
        ("text/html; charset=utf-8", PAGE.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_points_at_the_document_and_the_embedded_script() {
        let (media, page) = asset("/docs");
        assert!(media.starts_with("text/html"));
        let page = std::str::from_utf8(page).unwrap();
        assert!(page.contains(r#"<redoc spec-url="/openapi.json">"#));
        assert!(page.contains(r#"src="/docs/redoc.standalone.js""#));
        let (media, js) = asset("/docs/redoc.standalone.js");
        assert!(media.starts_with("text/javascript"));
        assert!(js.len() > 500_000, "the whole bundle: {}", js.len());
    }
}
