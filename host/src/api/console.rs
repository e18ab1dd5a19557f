//! The web console at `/console/` on the API port: the static files built
//! from `console/` (Preact + TypeScript, `scripts/build-console`), compiled
//! into the binary from the committed `console/dist` (`build/console_assets.rs`),
//! so a gateway serves it with no Node and no network.
//!
//! Invariants:
//! - The files hold no data, so serving them needs no token. Everything the
//!   page shows comes from the public REST API, called with the user's token
//!   and decided by the same policies as any other client.
//! - Every response carries a strict Content-Security-Policy: scripts,
//!   styles and images from this origin only, no inline script, requests
//!   only to this origin (`connect-src 'self'`), no framing, no forms
//!   posted anywhere.
//! - `assets/` names carry a content hash and are cached as immutable;
//!   everything else (`index.html`) is revalidated on every load, so a new
//!   gateway's console is picked up by a reload.
//! - The browser rules (`api::browser`) apply as to every route; this module
//!   adds no exception to them.
//! - STATEGATE_CONSOLE=false leaves these routes out.

use super::rest::error_response;
use crate::model::Error;
use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

/// A file of the built console, by its path under `console/dist`.
pub struct Asset {
    pub path: &'static str,
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   font-src 'self'; connect-src 'self'; manifest-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router {
    Router::new()
        // Relative, so the console also works behind a proxy that adds a prefix.
        .route("/console", get(|| async { redirect("console/") }))
        .route("/console/", get(|| async { serve("index.html") }))
        .route("/console/{*path}", get(|Path(path): Path<String>| async move { serve(&path) }))
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, HeaderValue::from_static(to))]).into_response()
}

fn serve(path: &str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return error_response(&Error::NotFound(format!("console file {path:?}")));
    };
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = Response::new(Body::from(asset.bytes));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "webmanifest") => "application/json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_console_is_embedded() {
        let index = ASSETS.iter().find(|a| a.path == "index.html").expect("console/dist/index.html is embedded");
        let html = std::str::from_utf8(index.bytes).unwrap();
        // Every script and stylesheet the page loads is an embedded, hashed file.
        for name in html.split('"').filter(|s| s.starts_with("./assets/")) {
            assert!(ASSETS.iter().any(|a| a.path == &name[2..]), "{name} is not embedded");
        }
        assert!(!html.contains("<script>") && !html.contains("http://") && !html.contains("https://"), "{html}");
    }

    #[test]
    fn headers_cache_hashed_files_and_revalidate_the_page() {
        let index = serve("index.html");
        assert_eq!(index.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(index.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(index.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("connect-src 'self'"));
        let script = ASSETS.iter().find(|a| a.path.ends_with(".js")).unwrap();
        let js = serve(script.path);
        assert!(js.headers()[header::CACHE_CONTROL].to_str().unwrap().contains("immutable"));
        assert_eq!(js.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(serve("nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
