//! `/admin`: the admin page, shipped inside the binary.
//!
//! The page is three static files under `assets/admin/` (HTML, one script, one
//! stylesheet) and uPlot for its charts under `assets/admin/vendor/`, embedded
//! at compile time: one binary serves the worker and its admin page, there is
//! no build step and nothing else to deploy. The page
//! calls the same API as everyone else (`/auth/whoami`, `/jobs`, `/runs`) with
//! `Authorization: Bearer`; it has no privileges of its own.
//!
//! How the page signs people in is decided once, at start-up, from the
//! configuration ([`SignIn`]):
//!
//! - **Clerk**: the HTML is templated with the ClerkJS `<script>` of the
//!   instance's Frontend API, derived from `CLERK_PUBLISHABLE_KEY` (public by
//!   design; the secret key is never involved). ClerkJS keeps the session and
//!   hands out short-lived tokens with `Clerk.session.getToken()`.
//! - **Development** (`--dev`, with the development Clerk issuer): ClerkJS
//!   cannot work against a local key, so the page offers a development sign-in
//!   instead. `POST /admin/dev/session` mints a 60-second development Clerk
//!   token for a chosen persona. The route exists only in dev mode, answers
//!   only peers on loopback, and only for an `Origin` that is both an
//!   authorized party and a loopback origin, which becomes the token's `azp`.
//!   The page keeps the token in a variable, never in storage or cookies.
//! - **Unconfigured**: the page explains what to set.
//!
//! Every response under `/admin` carries a Content-Security-Policy that allows
//! scripts, connections and frames only from this origin and the Clerk
//! Frontend API (none at all in dev mode), with no inline script anywhere, plus
//! `nosniff`, `no-referrer` and framing refused: the page handles bearer
//! tokens, so nothing else may run in it or embed it.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{ConnectInfo, State, rejection::JsonRejection},
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
    routing::{MethodRouter, get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Error};
use crate::{
    auth::{
        clerk::issuer_from_publishable_key,
        dev::{DevClerkUser, DevIdentity},
        token::now_secs,
    },
    config::Config,
};

const INDEX_HTML: &str = include_str!("../../assets/admin/index.html");
const APP_JS: &str = include_str!("../../assets/admin/app.js");
const APP_CSS: &str = include_str!("../../assets/admin/app.css");
/// uPlot, for the Overview charts: npm's `uplot`, vendored by
/// `scripts/vendor-uplot.sh`. It styles its elements through the CSSOM
/// (`el.style.x = …`), which `style-src 'self'` allows: no inline style.
const UPLOT_JS: &str = include_str!("../../assets/admin/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/admin/vendor/uPlot.min.css");

/// Where the HTML template takes the ClerkJS `<script>` tag.
const CLERK_SCRIPT_SLOT: &str = "<!-- clerk-js -->";

/// Lifetime of a development session token: Clerk's own is 60 s, and the page
/// refreshes it the way ClerkJS does, so expiry is exercised locally too.
pub const DEV_TOKEN_LIFETIME_SECS: i64 = 60;

/// The path of ClerkJS on a Frontend API (major version pinned).
const CLERK_JS_PATH: &str = "/npm/@clerk/clerk-js@5/dist/clerk.browser.js";

/// Clerk's image host (user avatars in the user button).
const CLERK_IMAGES: &str = "https://img.clerk.com";

/// How the admin page signs people in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn {
    /// ClerkJS from the instance's Frontend API.
    Clerk {
        /// `pk_test_…`/`pk_live_…`.
        publishable_key: String,
        /// `https://<frontend-api-host>`, derived from the publishable key.
        frontend_api: String,
    },
    /// The development sign-in (dev mode with the development Clerk issuer).
    Dev,
    /// Nobody can sign in; `reason` says what to configure.
    Unconfigured {
        /// What is missing.
        reason: &'static str,
    },
}

impl SignIn {
    /// Decides the sign-in of the page from the configuration.
    pub fn from_config(config: &Config) -> Self {
        let Some(clerk) = &config.clerk else {
            return Self::Unconfigured {
                reason: "Clerk is not configured: set CLERK_PUBLISHABLE_KEY and CLERK_AUTHORIZED_PARTIES (the origin this page is served from).",
            };
        };
        if let Some(pk) = &clerk.publishable_key {
            return match issuer_from_publishable_key(pk) {
                Ok(frontend_api) => Self::Clerk {
                    publishable_key: pk.clone(),
                    frontend_api,
                },
                Err(_) => Self::Unconfigured {
                    reason: "CLERK_PUBLISHABLE_KEY is not a valid publishable key.",
                },
            };
        }
        if config.dev_mode
            && config.dev_identity.is_some()
            && clerk.issuer == DevIdentity::CLERK_ISSUER
        {
            return Self::Dev;
        }
        Self::Unconfigured {
            reason: "The page needs CLERK_PUBLISHABLE_KEY to load ClerkJS (CLERK_ISSUER alone is enough for the API, not for signing in).",
        }
    }

    /// The origin the page may load scripts from and connect to, besides its
    /// own.
    pub fn clerk_origin(&self) -> Option<&str> {
        match self {
            Self::Clerk { frontend_api, .. } => Some(frontend_api),
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Clerk { .. } => "clerk",
            Self::Dev => "dev",
            Self::Unconfigured { .. } => "unconfigured",
        }
    }
}

/// The Content-Security-Policy of every `/admin` response.
pub fn content_security_policy(sign_in: &SignIn) -> String {
    match sign_in.clerk_origin() {
        Some(clerk) => format!(
            "default-src 'self'; script-src 'self' {clerk}; connect-src 'self' {clerk}; \
             img-src 'self' data: {CLERK_IMAGES}; style-src 'self' 'unsafe-inline'; \
             frame-src {clerk}; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; \
             form-action 'self'; frame-ancestors 'none'"
        ),
        // No ClerkJS: nothing injects styles, so not even inline styles.
        None => "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; \
                 style-src 'self'; frame-src 'none'; worker-src 'self' blob:; object-src 'none'; \
                 base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
            .to_owned(),
    }
}

/// Escapes text for an HTML attribute value in double quotes.
fn attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page's HTML: the template with the ClerkJS tag (Clerk mode) or nothing.
///
/// ClerkJS is loaded `defer`, before the page's own deferred script, so that
/// `app.js` runs after it in document order and finds `window.Clerk` (or
/// knows it failed to load) without an inline handler.
pub fn index_html(sign_in: &SignIn) -> String {
    with_clerk_script(INDEX_HTML, sign_in)
}

/// `template` with the ClerkJS tag (Clerk mode) or nothing in its
/// `<!-- clerk-js -->` slot: the admin page's, and the API docs page's,
/// which signs in the same way.
pub(super) fn with_clerk_script(template: &str, sign_in: &SignIn) -> String {
    let tag = match sign_in {
        SignIn::Clerk {
            publishable_key,
            frontend_api,
        } => format!(
            r#"<script defer crossorigin="anonymous" id="clerk-js" data-clerk-publishable-key="{}" src="{}"></script>"#,
            attribute(publishable_key),
            attribute(&format!("{frontend_api}{CLERK_JS_PATH}")),
        ),
        _ => String::new(),
    };
    template.replace(CLERK_SCRIPT_SLOT, &tag)
}

/// Everything the page needs to know about the server, public by design.
fn page_config(sign_in: &SignIn, config: &Config) -> Value {
    let mut body = json!({
        "sign_in": sign_in.name(),
        "trigger_permission": config.trigger.permission,
    });
    match sign_in {
        SignIn::Clerk { frontend_api, .. } => {
            body["frontend_api"] = json!(frontend_api);
            body["clerk_js"] = json!(format!("{frontend_api}{CLERK_JS_PATH}"));
        }
        SignIn::Dev => {
            body["personas"] = json!(
                Persona::ALL
                    .iter()
                    .map(|p| json!({ "id": p.id(), "label": p.label(), "description": p.description(&config.trigger.permission) }))
                    .collect::<Vec<_>>()
            );
            body["token_lifetime_secs"] = json!(DEV_TOKEN_LIFETIME_SECS);
        }
        SignIn::Unconfigured { reason } => body["reason"] = json!(reason),
    }
    body
}

/// The page, rendered once at start-up.
#[derive(Debug)]
struct Page {
    html: String,
    config: String,
    csp: HeaderValue,
}

/// A file embedded in the binary, served as it is.
pub(super) fn asset(body: &'static str, content_type: &'static str) -> MethodRouter<AppState> {
    get(move || async move { ([(header::CONTENT_TYPE, content_type)], body) })
}

/// The `/admin` routes for this configuration (the development sign-in only
/// in dev mode: in any other mode the route does not exist).
pub(super) fn router(config: &Config) -> Router<AppState> {
    let sign_in = SignIn::from_config(config);
    let csp = HeaderValue::from_str(&content_security_policy(&sign_in))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    let page = Arc::new(Page {
        html: index_html(&sign_in),
        config: page_config(&sign_in, config).to_string(),
        csp,
    });
    let serve = |body: fn(&Page) -> String, content_type: &'static str| {
        let page = Arc::clone(&page);
        get(move || {
            let page = Arc::clone(&page);
            async move { ([(header::CONTENT_TYPE, content_type)], body(&page)) }
        })
    };
    let mut router = Router::new()
        .route(
            "/admin",
            serve(|p| p.html.clone(), "text/html; charset=utf-8"),
        )
        .route("/admin/", get(|| async { Redirect::permanent("/admin") }))
        .route(
            "/admin/app.js",
            asset(APP_JS, "text/javascript; charset=utf-8"),
        )
        .route("/admin/app.css", asset(APP_CSS, "text/css; charset=utf-8"))
        .route(
            "/admin/config.json",
            serve(|p| p.config.clone(), "application/json"),
        )
        .route(
            "/admin/vendor/uPlot.iife.min.js",
            asset(UPLOT_JS, "text/javascript; charset=utf-8"),
        )
        .route(
            "/admin/vendor/uPlot.min.css",
            asset(UPLOT_CSS, "text/css; charset=utf-8"),
        );
    if sign_in == SignIn::Dev {
        router = router.route("/admin/dev/session", post(dev_session));
    }
    let headers = Arc::clone(&page);
    router.layer(axum::middleware::map_response(move |response: Response| {
        let csp = headers.csp.clone();
        async move { with_security_headers(response, csp) }
    }))
}

/// The page's CSP, `nosniff`, `no-referrer`, framing refused, and
/// `no-cache` unless the response set its own caching.
pub(super) fn with_security_headers(mut response: Response, csp: HeaderValue) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache"));
    response
}

/// Who the development sign-in signs in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    /// An organization admin with the trigger permission.
    Admin,
    /// A member without it: sees jobs and runs, cannot run them.
    Viewer,
}

impl Persona {
    const ALL: [Self; 2] = [Self::Admin, Self::Viewer];

    fn id(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Viewer => "Viewer",
        }
    }

    fn description(self, permission: &str) -> String {
        match self {
            Self::Admin => format!("organization admin with {permission}: may run jobs"),
            Self::Viewer => format!("organization member without {permission}: read-only"),
        }
    }

    /// The development Clerk user of this persona, for a token whose `azp`
    /// is `origin`.
    pub fn user(self, permission: &str, origin: &str) -> DevClerkUser {
        let (role, permissions) = match self {
            Self::Admin => ("admin", vec![permission.to_owned()]),
            Self::Viewer => ("member", Vec::new()),
        };
        DevClerkUser {
            user_id: format!("user_dev_{}", self.id()),
            session_id: format!("sess_dev_{}", self.id()),
            org_id: Some("org_dev".to_owned()),
            role: role.to_owned(),
            permissions,
            v1: false,
            authorized_party: origin.to_owned(),
        }
    }
}

/// Body of `POST /admin/dev/session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DevSessionRequest {
    persona: Persona,
}

/// Whether a peer address is this machine. An IPv4 loopback peer may reach a
/// dual-stack listener as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`).
pub fn is_loopback_peer(peer: &SocketAddr) -> bool {
    match peer.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Whether `origin` is a loopback origin (`http://localhost:PORT`,
/// `http://127.0.0.1:PORT`, `http://[::1]:PORT`).
fn is_loopback_origin(origin: &str) -> bool {
    url::Url::parse(origin).is_ok_and(|url| match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    })
}

/// Why a development sign-in is refused, if it is: the peer must be on
/// loopback, and the `Origin` an authorized party on loopback (it becomes the
/// token's `azp`, which the verifier checks against the same list).
pub fn dev_session_refusal(
    config: &Config,
    peer: &SocketAddr,
    origin: Option<&str>,
) -> Option<&'static str> {
    if !config.dev_mode || config.dev_identity.is_none() {
        return Some("the development sign-in exists only in development mode");
    }
    if !is_loopback_peer(peer) {
        return Some("the development sign-in is only available from this machine (loopback)");
    }
    let Some(origin) = origin else {
        return Some("the development sign-in must be requested by the admin page (no Origin)");
    };
    let authorized = config
        .clerk
        .as_ref()
        .is_some_and(|c| c.authorized_parties.iter().any(|p| p == origin));
    if !authorized || !is_loopback_origin(origin) {
        return Some(
            "the page's origin is not a loopback authorized party; open the page at http://localhost:PORT/admin or http://127.0.0.1:PORT/admin",
        );
    }
    None
}

/// `POST /admin/dev/session`: a short-lived development Clerk token for the
/// chosen persona (dev mode, loopback only).
async fn dev_session(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<DevSessionRequest>, JsonRejection>,
) -> Result<impl IntoResponse, Error> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(reason) = dev_session_refusal(&state.config, &peer, origin.as_deref()) {
        tracing::warn!(%peer, reason, "development sign-in refused");
        return Err(Error::Forbidden(reason));
    }
    let (Some(identity), Some(origin)) = (&state.config.dev_identity, origin) else {
        return Err(Error::Forbidden("not available"));
    };
    let Json(request) = body.map_err(|rejection| Error::BadRequest {
        code: "bad_body",
        message: format!(
            "expected {{\"persona\": \"admin\" | \"viewer\"}}: {}",
            rejection.body_text()
        ),
    })?;
    let user = request
        .persona
        .user(&state.config.trigger.permission, &origin);
    let token = identity
        .clerk_token(&user, DEV_TOKEN_LIFETIME_SECS)
        .context("minting a development token failed")?;
    tracing::info!(persona = request.persona.id(), %origin, "development sign-in");
    Ok((
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(json!({
            "token": token,
            "persona": request.persona.id(),
            "user_id": user.user_id,
            "expires_at": now_secs() + DEV_TOKEN_LIFETIME_SECS,
            "expires_in": DEV_TOKEN_LIFETIME_SECS,
        })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers() {
        for (peer, loopback) in [
            ("127.0.0.1:5000", true),
            ("127.8.9.10:5000", true),
            ("[::1]:5000", true),
            ("[::ffff:127.0.0.1]:5000", true),
            ("10.0.0.7:5000", false),
            ("192.168.1.20:5000", false),
            ("203.0.113.5:5000", false),
            ("[::ffff:10.0.0.7]:5000", false),
            ("[2001:db8::1]:5000", false),
            ("0.0.0.0:5000", false),
        ] {
            let addr: SocketAddr = peer.parse().unwrap();
            assert_eq!(is_loopback_peer(&addr), loopback, "{peer}");
        }
    }

    #[test]
    fn loopback_origins() {
        assert!(is_loopback_origin("http://localhost:8080"));
        assert!(is_loopback_origin("http://127.0.0.1:8080"));
        assert!(is_loopback_origin("http://[::1]:8080"));
        assert!(!is_loopback_origin("http://localhost.evil.example:8080"));
        assert!(!is_loopback_origin("https://admin.example.com"));
        assert!(!is_loopback_origin("null"));
    }

    #[test]
    fn attribute_escaping() {
        assert_eq!(attribute(r#"a"<b>&"#), "a&quot;&lt;b&gt;&amp;");
    }
}
