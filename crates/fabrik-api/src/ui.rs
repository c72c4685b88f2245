//! The dashboard: static files compiled into the binary (`crates/fabrik-api/ui/`, plain
//! HTML/CSS/JS and a vendored uPlot, no build step), served at `/` and `/ui/<file>` with a
//! strict Content-Security-Policy. Works offline: nothing is fetched from elsewhere.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

struct Asset {
    path: &'static str,
    bytes: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($path:literal, $type:literal) => {
        Asset {
            path: $path,
            bytes: include_bytes!(concat!("../ui/", $path)),
            content_type: $type,
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("theme.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uplot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot.LICENSE", "text/plain; charset=utf-8"),
];

/// Scripts only from this origin; uPlot sets inline styles, so styles may be inline.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

fn serve(asset: &Asset) -> Response {
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Assets change with the binary; revalidating costs little on a plant network.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `/`: the dashboard's shell.
pub(crate) async fn index() -> Response {
    match ASSETS.iter().find(|a| a.path == "index.html") {
        Some(asset) => serve(asset),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `/ui/<file>`.
pub(crate) async fn file(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => serve(asset),
        None => (StatusCode::NOT_FOUND, "no such dashboard file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_shell_references_is_embedded() {
        let index = std::str::from_utf8(ASSETS[0].bytes).unwrap();
        for reference in index.split("\"/ui/").skip(1) {
            let path = reference.split('"').next().unwrap();
            assert!(
                ASSETS.iter().any(|a| a.path == path),
                "index.html references /ui/{path}, which is not embedded"
            );
        }
        assert!(
            !index.contains("http://") && !index.contains("https://"),
            "no CDN"
        );
    }
}
