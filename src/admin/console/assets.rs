//! The console's static files, embedded in the binary (no CDN, works air-gapped). The vendored
//! libraries and their licences are under `assets/vendor/` (refreshed by `scripts/vendor-ui`).

/// The content type and bytes of an asset by name.
pub fn get(name: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match name {
        "console.css" => (
            "text/css; charset=utf-8",
            include_bytes!("assets/console.css"),
        ),
        "console.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("assets/console.js"),
        ),
        "uPlot.iife.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("assets/vendor/uplot/uPlot.iife.min.js"),
        ),
        "uPlot.min.css" => (
            "text/css; charset=utf-8",
            include_bytes!("assets/vendor/uplot/uPlot.min.css"),
        ),
        "uPlot.LICENSE.txt" => (
            "text/plain; charset=utf-8",
            include_bytes!("assets/vendor/uplot/LICENSE"),
        ),
        _ => return None,
    })
}
