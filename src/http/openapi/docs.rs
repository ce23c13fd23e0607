//! `GET /docs`: Swagger UI over `/openapi.json`, shipped inside the binary
//! as the admin page is ([`crate::http::admin`]).
//!
//! The page is `assets/docs/index.html`, `docs.js` and `docs.css`; Swagger UI itself is
//! npm's `swagger-ui-dist`, vendored into `assets/docs/vendor/` by
//! `scripts/vendor-swagger-ui.sh` (no CDN, nothing fetched at run time). It
//! signs people in as `/admin` does (ClerkJS, or the development sign-in
//! under `make run`), hands the session token to Swagger UI, and every
//! "Try it out" sends `Authorization: Bearer <token>`. Its responses carry
//! the admin page's Content-Security-Policy and headers.

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderValue, header},
    response::Response,
    routing::get,
};

use super::super::{
    AppState,
    admin::{SignIn, asset, content_security_policy, with_clerk_script, with_security_headers},
};
use crate::config::Config;

const INDEX_HTML: &str = include_str!("../../../assets/docs/index.html");
const DOCS_JS: &str = include_str!("../../../assets/docs/docs.js");
const DOCS_CSS: &str = include_str!("../../../assets/docs/docs.css");
const SWAGGER_UI_JS: &str = include_str!("../../../assets/docs/vendor/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &str = include_str!("../../../assets/docs/vendor/swagger-ui.css");

/// The `/docs` routes.
pub(super) fn router(config: &Config) -> Router<AppState> {
    let sign_in = SignIn::from_config(config);
    let csp = HeaderValue::from_str(&content_security_policy(&sign_in))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    let html: Arc<str> = with_clerk_script(INDEX_HTML, &sign_in).into();
    let page = |body: Arc<str>, content_type: &'static str| {
        get(move || {
            let body = Arc::clone(&body);
            async move { ([(header::CONTENT_TYPE, content_type)], body.to_string()) }
        })
    };
    Router::new()
        .route("/docs", page(html, "text/html; charset=utf-8"))
        .route(
            "/docs/docs.js",
            asset(DOCS_JS, "text/javascript; charset=utf-8"),
        )
        .route("/docs/docs.css", asset(DOCS_CSS, "text/css; charset=utf-8"))
        .route(
            "/docs/swagger-ui-bundle.js",
            asset(SWAGGER_UI_JS, "text/javascript; charset=utf-8"),
        )
        .route(
            "/docs/swagger-ui.css",
            asset(SWAGGER_UI_CSS, "text/css; charset=utf-8"),
        )
        .layer(axum::middleware::map_response(move |response: Response| {
            let csp = csp.clone();
            async move { with_security_headers(response, csp) }
        }))
}
