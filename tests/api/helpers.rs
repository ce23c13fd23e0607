//! Test harness: a real worker on port 0, a real key server on loopback that
//! counts its fetches, and RS256 tokens minted here with keys made here.
//! Nothing is mocked and auth is never switched off.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::header, response::IntoResponse, routing::get};
use pushworker::{
    auth::{Principal, dev::SigningKey},
    config::{
        ClerkConfig, Config, GoogleConfig, KeyCacheConfig, KeySource, LogFormat, RunsConfig,
        Secret, TriggerPolicy,
    },
    events::EventContext,
    jobs::{Job, JobContext, JobDeps, JobError, JobRegistry, RunSource, webhook},
    pubsub::MessageMeta,
    runs::RunStore,
    server::HttpServerConfig,
    startup::Application,
};
use reqwest::Method;
use serde_json::{Value, json};

pub const AUDIENCE: &str = "https://pushworker.test/pubsub/push";
pub const SERVICE_ACCOUNT: &str = "pusher@acme-prod.iam.gserviceaccount.com";
pub const SCHEDULER_ACCOUNT: &str = "scheduler@acme-prod.iam.gserviceaccount.com";
pub const CLERK_ISSUER: &str = "https://clerk.pushworker.test";
pub const AZP: &str = "https://admin.pushworker.test";
pub const TRIGGER: &str = "org:jobs:trigger";

/// Keys shared by the tests of this binary (RSA generation is not free).
pub struct TestKeys {
    pub google: SigningKey,
    pub clerk: SigningKey,
    /// A key nobody trusts.
    pub rogue: SigningKey,
}

pub static KEYS: LazyLock<TestKeys> = LazyLock::new(|| TestKeys {
    google: SigningKey::generate("google-1").expect("keygen"),
    clerk: SigningKey::generate("clerk-1").expect("keygen"),
    rogue: SigningKey::generate("rogue-1").expect("keygen"),
});

pub fn now() -> i64 {
    pushworker::auth::dev::now_secs()
}

/// Claims of a valid Google push token.
pub fn google_claims() -> Value {
    json!({
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "azp": "112233445566778899000",
        "sub": "112233445566778899000",
        "email": SERVICE_ACCOUNT,
        "email_verified": true,
        "iat": now() - 10,
        "exp": now() + 3600,
    })
}

/// Claims of a valid Clerk v2 session token with these permissions.
pub fn clerk_v2_claims(permissions: &[&str]) -> Value {
    let perms: Vec<String> = permissions.iter().map(|p| p.to_string()).collect();
    let (fea, per, fpm) = pushworker::auth::dev::encode_v2_permissions(&perms);
    json!({
        "iss": CLERK_ISSUER,
        "sub": "user_2abc",
        "sid": "sess_2abc",
        "azp": AZP,
        "iat": now() - 5,
        "nbf": now() - 10,
        "exp": now() + 60,
        "v": 2,
        "fea": fea,
        "o": { "id": "org_1", "slg": "acme", "rol": "member", "per": per, "fpm": fpm },
    })
}

/// Claims of a valid Clerk v1 session token with these permissions.
pub fn clerk_v1_claims(permissions: &[&str]) -> Value {
    json!({
        "iss": CLERK_ISSUER,
        "sub": "user_1abc",
        "sid": "sess_1abc",
        "azp": AZP,
        "iat": now() - 5,
        "nbf": now() - 10,
        "exp": now() + 60,
        "org_id": "org_1",
        "org_slug": "acme",
        "org_role": "org:member",
        "org_permissions": permissions,
    })
}

/// Sets (or with `Value::Null`, removes) a claim.
pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    let obj = claims.as_object_mut().expect("object");
    if value.is_null() {
        obj.remove(key);
    } else {
        obj.insert(key.to_owned(), value);
    }
    claims
}

pub fn google_token() -> String {
    KEYS.google.sign(&google_claims()).expect("sign")
}

pub fn clerk_token(permissions: &[&str]) -> String {
    KEYS.clerk
        .sign(&clerk_v2_claims(permissions))
        .expect("sign")
}

/// How the key server answers.
#[derive(Clone, Debug)]
pub enum Mode {
    Ok,
    Down,
    Slow(Duration),
    Garbage,
}

struct KeyServerState {
    google: Mutex<Vec<Value>>,
    clerk: Mutex<Vec<Value>>,
    mode: Mutex<Mode>,
    max_age: AtomicU64,
    google_fetches: AtomicUsize,
    clerk_fetches: AtomicUsize,
}

/// A JWKS server on loopback that counts fetches.
#[derive(Clone)]
pub struct KeyServer {
    pub base: String,
    state: Arc<KeyServerState>,
}

async fn serve_jwks(state: &KeyServerState, keys: &Mutex<Vec<Value>>) -> axum::response::Response {
    let mode = state.mode.lock().unwrap().clone();
    match mode {
        Mode::Down => {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
        }
        Mode::Garbage => {
            return (axum::http::StatusCode::OK, "{\"keys\": not json").into_response();
        }
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Ok => {}
    }
    let body = json!({ "keys": keys.lock().unwrap().clone() });
    let max_age = state.max_age.load(Ordering::SeqCst);
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={max_age}, must-revalidate, no-transform"),
        )],
        Json(body),
    )
        .into_response()
}

impl KeyServer {
    pub async fn start() -> Self {
        let state = Arc::new(KeyServerState {
            google: Mutex::new(vec![KEYS.google.public_jwk().unwrap()]),
            clerk: Mutex::new(vec![KEYS.clerk.public_jwk().unwrap()]),
            mode: Mutex::new(Mode::Ok),
            max_age: AtomicU64::new(3600),
            google_fetches: AtomicUsize::new(0),
            clerk_fetches: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route(
                "/google/certs",
                get(|State(s): State<Arc<KeyServerState>>| async move {
                    s.google_fetches.fetch_add(1, Ordering::SeqCst);
                    serve_jwks(&s, &s.google).await
                }),
            )
            .route(
                "/clerk/.well-known/jwks.json",
                get(|State(s): State<Arc<KeyServerState>>| async move {
                    s.clerk_fetches.fetch_add(1, Ordering::SeqCst);
                    serve_jwks(&s, &s.clerk).await
                }),
            )
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Self { base, state }
    }

    pub fn google_url(&self) -> String {
        format!("{}/google/certs", self.base)
    }

    pub fn clerk_url(&self) -> String {
        format!("{}/clerk/.well-known/jwks.json", self.base)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn set_max_age(&self, secs: u64) {
        self.state.max_age.store(secs, Ordering::SeqCst);
    }

    pub fn set_google_keys(&self, keys: Vec<Value>) {
        *self.state.google.lock().unwrap() = keys;
    }

    pub fn google_fetches(&self) -> usize {
        self.state.google_fetches.load(Ordering::SeqCst)
    }

    pub fn clerk_fetches(&self) -> usize {
        self.state.clerk_fetches.load(Ordering::SeqCst)
    }
}

/// What a test job saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub payload: Value,
    pub meta: Option<MessageMeta>,
    pub attempt: u32,
    pub source: RunSource,
    pub principal: Principal,
    /// The CloudEvent's context, on an event.
    pub event: Option<EventContext>,
}

/// `record`: remembers every run.
#[derive(Clone, Default)]
pub struct Record(pub Arc<Mutex<Vec<Seen>>>);

impl Job for Record {
    const NAME: &'static str = "record";
    const DESCRIPTION: &'static str = "Test job: records what it saw.";
    type Payload = Value;
    type Output = Value;

    async fn run(&self, payload: Value, ctx: JobContext) -> Result<Value, JobError> {
        self.0.lock().unwrap().push(Seen {
            payload: payload.clone(),
            meta: ctx.message.as_deref().cloned(),
            attempt: ctx.attempt,
            source: ctx.source,
            principal: (*ctx.principal).clone(),
            event: ctx.event.as_deref().cloned(),
        });
        Ok(json!({ "recorded": true }))
    }
}

/// `flaky`: always fails transiently.
pub struct Flaky;
impl Job for Flaky {
    const NAME: &'static str = "flaky";
    const DESCRIPTION: &'static str = "Test job: transient failure.";
    type Payload = Value;
    type Output = ();
    async fn run(&self, _: Value, _: JobContext) -> Result<(), JobError> {
        Err(JobError::Transient(
            "database connection reset (secret=hunter2)".into(),
        ))
    }
}

/// `flaky_once`: fails transiently on the first delivery of each message,
/// then succeeds (and records the run).
#[derive(Clone, Default)]
pub struct FlakyOnce {
    pub attempts: Arc<Mutex<BTreeMap<String, u32>>>,
    pub record: Record,
}
impl Job for FlakyOnce {
    const NAME: &'static str = "flaky_once";
    const DESCRIPTION: &'static str = "Test job: transient failure on the first delivery.";
    type Payload = Value;
    type Output = Value;
    async fn run(&self, payload: Value, ctx: JobContext) -> Result<Value, JobError> {
        let id = ctx
            .message
            .as_ref()
            .map(|m| m.message_id.clone())
            .unwrap_or_default();
        let seen = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(id).or_default();
            *n += 1;
            *n
        };
        if seen == 1 {
            return Err(JobError::Transient("first delivery fails".into()));
        }
        self.record.run(payload, ctx).await
    }
}

/// `reject`: always fails permanently.
pub struct Reject;
impl Job for Reject {
    const NAME: &'static str = "reject";
    const DESCRIPTION: &'static str = "Test job: permanent failure.";
    type Payload = Value;
    type Output = ();
    async fn run(&self, _: Value, _: JobContext) -> Result<(), JobError> {
        Err(JobError::Permanent("order 42 does not exist".into()))
    }
}

/// `explode`: panics.
pub struct Explode;
impl Job for Explode {
    const NAME: &'static str = "explode";
    const DESCRIPTION: &'static str = "Test job: panics.";
    type Payload = Value;
    type Output = ();
    #[allow(clippy::panic)]
    async fn run(&self, _: Value, _: JobContext) -> Result<(), JobError> {
        panic!("boom")
    }
}

/// `count`: counts its runs in a counter the test holds (shared by every
/// instance built from the same [`Options`]), then waits `millis`, so that
/// deliveries overlap. On its first run only, `hang_first: true` makes it
/// wait forever, ignoring cancellation (a stuck or dying instance).
#[derive(Clone)]
pub struct Count(pub Arc<AtomicUsize>);

impl Job for Count {
    const NAME: &'static str = "count";
    const DESCRIPTION: &'static str = "Test job: counts its runs, then waits.";
    type Payload = Value;
    type Output = Value;

    async fn run(&self, payload: Value, _: JobContext) -> Result<Value, JobError> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 && payload["hang_first"] == json!(true) {
            std::future::pending::<()>().await;
        }
        let millis = payload["millis"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(millis)).await;
        Ok(json!({ "count": n }))
    }
}

/// Settings a test may change.
#[derive(Clone)]
pub struct Options {
    pub min_ttl: Duration,
    pub cooldown: Duration,
    pub fetch_timeout: Duration,
    pub max_stale: Duration,
    pub job_timeout: Duration,
    pub trigger_roles: Vec<String>,
    pub clerk_jwt_key: Option<String>,
    pub google: bool,
    pub clerk: bool,
    pub dead_letter_topic: Option<String>,
    pub emulator_host: Option<String>,
    pub publishable_key: Option<String>,
    pub cors_allowed_origins: Vec<String>,
    /// The run ledger: PostgreSQL at this URL, or memory when `None`.
    pub database_url: Option<String>,
    /// How long a run holds its message without finishing.
    pub lease: Duration,
    pub runs_max_records: usize,
    pub payload_cap: usize,
    /// Bound of the verified-token cache (0: off).
    pub token_cache_max_entries: usize,
    /// The `count` job's counter.
    pub counter: Arc<AtomicUsize>,
    /// The PostgreSQL ledger's pool and batching.
    pub pg: pushworker::runs::postgres::PgSettings,
    /// The HTTP server's timeouts and connection bound.
    pub http: HttpServerConfig,
    /// `WEBHOOK_ALLOWED_HOSTS`.
    pub webhook_allowed_hosts: Vec<String>,
    /// `WEBHOOK_MAX_RESPONSE_BYTES`.
    pub webhook_max_response_bytes: u64,
    /// `EVENT_ROUTES`.
    pub event_routes: String,
    /// `OPENAPI_ENABLED`.
    pub openapi_enabled: bool,
    /// Only the built-in jobs, without the test jobs (some of which fail
    /// on purpose): the registry `pushworker serve` has.
    pub builtin_jobs_only: bool,
    /// `METRICS_ADDR` (`None`: off).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// The routes of the tests' events: Cloud Storage to `storage-object`,
/// orders to `record`, and the orders under `orders/slow/` to `count`.
pub const TEST_EVENT_ROUTES: &str = "google.cloud.storage.object.v1.*=storage-object,\
    com.example.order.v1.created=record,com.example.order.v1.created:orders/slow/=count";

impl Default for Options {
    fn default() -> Self {
        Self {
            min_ttl: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(3),
            max_stale: Duration::from_secs(3600),
            job_timeout: Duration::from_secs(1),
            trigger_roles: Vec::new(),
            clerk_jwt_key: None,
            google: true,
            clerk: true,
            dead_letter_topic: None,
            emulator_host: None,
            publishable_key: None,
            cors_allowed_origins: Vec::new(),
            database_url: None,
            lease: Duration::from_secs(31),
            runs_max_records: 10_000,
            payload_cap: 64 * 1024,
            token_cache_max_entries: 10_000,
            counter: Arc::new(AtomicUsize::new(0)),
            pg: pushworker::runs::postgres::PgSettings::default(),
            http: HttpServerConfig::default(),
            webhook_allowed_hosts: vec!["127.0.0.1".to_owned()],
            webhook_max_response_bytes: webhook::settings::DEFAULT_MAX_RESPONSE_BYTES,
            event_routes: TEST_EVENT_ROUTES.to_owned(),
            openapi_enabled: true,
            builtin_jobs_only: false,
            metrics_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }
}

/// The webhook job's settings from `options`.
pub fn webhook_config(options: &Options) -> webhook::WebhookConfig {
    webhook::WebhookConfig::new(
        &options.webhook_allowed_hosts,
        options.webhook_max_response_bytes,
    )
    .expect("valid webhook settings")
}

pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub keys: KeyServer,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// The app's run ledger.
    pub runs: Arc<dyn RunStore>,
    /// Runs of the `count` job.
    pub counter: Arc<AtomicUsize>,
    /// `http://127.0.0.1:PORT` of the metrics listener, unless off.
    pub metrics_base: Option<String>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let keys = KeyServer::start().await;
    spawn_app_on(keys, options).await
}

pub fn config(keys: &KeyServer, options: &Options) -> Config {
    Config {
        host: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 0,
        google: options.google.then(|| GoogleConfig {
            audiences: vec![AUDIENCE.to_owned()],
            service_accounts: vec![SERVICE_ACCOUNT.to_owned(), SCHEDULER_ACCOUNT.to_owned()],
            keys: KeySource::Url(keys.google_url()),
        }),
        clerk: options.clerk.then(|| ClerkConfig {
            issuer: CLERK_ISSUER.to_owned(),
            authorized_parties: vec![AZP.to_owned()],
            keys: match &options.clerk_jwt_key {
                Some(pem) => KeySource::Pem(pem.clone()),
                None => KeySource::Url(keys.clerk_url()),
            },
            publishable_key: options.publishable_key.clone(),
        }),
        leeway: Duration::from_secs(5),
        token_cache_max_entries: options.token_cache_max_entries,
        trigger: TriggerPolicy {
            permission: TRIGGER.to_owned(),
            roles: options.trigger_roles.clone(),
        },
        job_attribute: "job".to_owned(),
        job_timeout: options.job_timeout,
        key_cache: KeyCacheConfig {
            min_ttl: options.min_ttl,
            max_ttl: Duration::from_secs(86_400),
            refresh_cooldown: options.cooldown,
            max_stale: options.max_stale,
            fetch_timeout: options.fetch_timeout,
        },
        webhook: webhook_config(options),
        dead_letter_topic: options.dead_letter_topic.clone(),
        pubsub: pushworker::pubsub::gcp::PubsubTarget::new(options.emulator_host.clone()),
        cors_allowed_origins: options.cors_allowed_origins.clone(),
        events: pushworker::events::EventRoutes::parse(&options.event_routes)
            .expect("valid EVENT_ROUTES"),
        runs: RunsConfig {
            database_url: options.database_url.clone().map(Secret::new),
            lease: options.lease,
            max_records: options.runs_max_records,
            payload_cap: options.payload_cap,
            postgres: options.pg,
            ..RunsConfig::defaults(options.job_timeout)
        },
        shutdown_grace: Duration::from_secs(2),
        http: options.http.clone(),
        openapi_enabled: options.openapi_enabled,
        metrics: pushworker::telemetry::metrics::MetricsConfig {
            addr: options.metrics_addr,
        },
        project_id: None,
        log_format: LogFormat::Text,
        dev_mode: false,
        dev_identity: None,
    }
}

pub async fn spawn_app_on(keys: KeyServer, options: Options) -> TestApp {
    let record = Record::default();
    let seen = Arc::clone(&record.0);
    let http = reqwest::Client::new();
    let builtin = JobRegistry::builtin(&JobDeps {
        http,
        webhook: webhook_config(&options),
    })
    .expect("built-in jobs");
    let jobs = if options.builtin_jobs_only {
        builtin
    } else {
        builtin
            .register(FlakyOnce {
                attempts: Arc::default(),
                record: record.clone(),
            })
            .register(record)
            .register(Flaky)
            .register(Reject)
            .register(Explode)
            .register(Count(Arc::clone(&options.counter)))
    };
    let app = Application::build_with_jobs(config(&keys, &options), Some(jobs))
        .await
        .expect("build app");
    let port = app.port();
    let metrics_base = app.metrics_addr().map(|a| format!("http://{a}"));
    let runs = Arc::clone(&app.state().runs);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr: format!("http://127.0.0.1:{port}"),

        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        keys,
        seen,
        runs,
        counter: Arc::clone(&options.counter),
        metrics_base,
        _shutdown: tx,
    }
}

/// A wrapped envelope for `data` with these attributes.
pub fn envelope(data: &[u8], attributes: &[(&str, &str)], message_id: &str) -> Value {
    let meta = MessageMeta {
        message_id: message_id.to_owned(),
        publish_time: Some("2026-11-28T10:00:00.123Z".to_owned()),
        subscription: Some("projects/acme-prod/subscriptions/work-push".to_owned()),
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ordering_key: None,
        delivery_attempt: Some(1),
        unwrapped: false,
    };
    pushworker::pubsub::wrap(&meta, data)
}

impl TestApp {
    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    /// `method` on `path` with `token` as the bearer, sent.
    async fn send(&self, method: Method, path: &str, token: &str) -> reqwest::Response {
        self.authed(method, path, token).send().await.unwrap()
    }

    /// The same with a JSON body.
    async fn send_json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.authed(method, path, token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A request to `path` with `token` as the bearer.
    fn authed(&self, method: Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.addr))
            .header("authorization", Self::bearer(token))
    }

    pub async fn healthz(&self) -> reqwest::Response {
        self.client
            .get(format!("{}/healthz", self.addr))
            .send()
            .await
            .unwrap()
    }

    pub async fn readyz(&self) -> reqwest::Response {
        self.client
            .get(format!("{}/readyz", self.addr))
            .send()
            .await
            .unwrap()
    }

    pub async fn whoami(&self, token: &str) -> reqwest::Response {
        self.send(Method::GET, "/auth/whoami", token).await
    }

    /// `GET /auth/whoami` with raw `Authorization` header values (zero, one or more).
    pub async fn whoami_raw(&self, authorization: &[&str]) -> reqwest::Response {
        let mut request = self.client.get(format!("{}/auth/whoami", self.addr));
        for value in authorization {
            request = request.header("authorization", *value);
        }
        request.send().await.unwrap()
    }

    pub async fn list_jobs(&self, token: &str) -> reqwest::Response {
        self.send(Method::GET, "/jobs", token).await
    }

    pub async fn trigger(&self, job: &str, token: &str, body: &Value) -> reqwest::Response {
        self.send_json(Method::POST, &format!("/jobs/{job}"), token, body)
            .await
    }

    pub async fn push(&self, token: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(format!("{}/pubsub/push", self.addr))
            .header("authorization", Self::bearer(token))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn push_to(
        &self,
        job: &str,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/pubsub/push/{job}", self.addr))
            .header("authorization", Self::bearer(token))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn push_unwrapped(
        &self,
        token: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/pubsub/push", self.addr))
            .header("authorization", Self::bearer(token))
            .header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        request.body(body).send().await.unwrap()
    }

    /// `POST /events` with these headers (a binary event's `ce-*` and
    /// `content-type`, or a structured one's `content-type`) and body.
    pub async fn event(
        &self,
        token: &str,
        headers: &[(String, String)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}/events", self.addr))
            .header("authorization", Self::bearer(token));
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.body(body).send().await.unwrap()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// `POST /jobs/{job}` with an `Idempotency-Key`.
    pub async fn trigger_with_key(
        &self,
        job: &str,
        token: &str,
        key: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.client
            .post(format!("{}/jobs/{job}", self.addr))
            .header("authorization", Self::bearer(token))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `GET /runs?{query}`.
    pub async fn list_runs(&self, token: &str, query: &str) -> reqwest::Response {
        self.send(Method::GET, &format!("/runs?{query}"), token)
            .await
    }

    /// `GET /runs/stats?{query}`.
    pub async fn run_stats(&self, token: &str, query: &str) -> reqwest::Response {
        self.send(Method::GET, &format!("/runs/stats?{query}"), token)
            .await
    }

    /// `GET /runs/{id}`.
    pub async fn get_run(&self, token: &str, id: &str) -> reqwest::Response {
        self.send(Method::GET, &format!("/runs/{id}"), token).await
    }

    /// `POST /runs/{id}/cancel`.
    pub async fn cancel_run(&self, token: &str, id: &str) -> reqwest::Response {
        self.send(Method::POST, &format!("/runs/{id}/cancel"), token)
            .await
    }

    /// `POST /runs/{id}/rerun`.
    pub async fn rerun_run(&self, token: &str, id: &str) -> reqwest::Response {
        self.send(Method::POST, &format!("/runs/{id}/rerun"), token)
            .await
    }

    /// `POST /runs/rerun` with this filter.
    pub async fn rerun_runs(&self, token: &str, filter: &Value) -> reqwest::Response {
        self.send_json(Method::POST, "/runs/rerun", token, filter)
            .await
    }

    /// `GET /runs/rerun/{bulk_id}`.
    pub async fn rerun_progress(&self, token: &str, bulk_id: &str) -> reqwest::Response {
        self.send(Method::GET, &format!("/runs/rerun/{bulk_id}"), token)
            .await
    }

    /// Every run the ledger lists for `query` (all pages, newest first).
    pub async fn all_runs(&self, query: &str) -> Vec<Value> {
        let token = clerk_token(&[VIEW]);
        let mut runs = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut parts = vec!["limit=200".to_owned()];
            if !query.is_empty() {
                parts.push(query.to_owned());
            }
            if let Some(c) = &cursor {
                parts.push(format!("cursor={c}"));
            }
            let page_query = parts.join("&");
            let response = self.list_runs(&token, &page_query).await;
            assert_eq!(response.status(), 200, "GET /runs?{page_query}");
            let body: Value = response.json().await.unwrap();
            runs.extend(body["runs"].as_array().unwrap().iter().cloned());
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return runs,
            }
        }
    }

    /// The verified-token cache's counters, as `/readyz` reports them.
    pub async fn token_cache_stats(&self) -> Value {
        let body: Value = self.readyz().await.json().await.unwrap();
        body["token_cache"].clone()
    }

    /// How many times the `count` job has run.
    pub fn count(&self) -> usize {
        self.counter.load(Ordering::SeqCst)
    }
}

/// The permission that lets Clerk users read the run ledger.
pub const VIEW: &str = "org:jobs:read";

/// Where the machine's PostgreSQL listens (trust auth, user `postgres`);
/// `PUSHWORKER_TEST_PG` overrides it (`host:port`).
pub fn pg_addr() -> String {
    std::env::var("PUSHWORKER_TEST_PG").unwrap_or_else(|_| "127.0.0.1:5432".to_owned())
}

/// A fresh PostgreSQL database for one test, dropped (with its connections)
/// when this value is dropped, even if the test panicked.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        use sqlx::Connection as _;
        let name = format!("pushworker_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&Self::url_at(&pg_addr(), "postgres"))
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth); see README");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Self { name }
    }

    fn url_at(addr: &str, database: &str) -> String {
        format!("postgres://postgres@{addr}/{database}")
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        Self::url_at(&pg_addr(), &self.name)
    }

    /// The database's URL through another address (a [`PgProxy`]).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        Self::url_at(&addr.to_string(), &self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use sqlx::Connection as _;
                let mut conn =
                    sqlx::PgConnection::connect(&TestDb::url_at(&pg_addr(), "postgres")).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

/// A TCP proxy between the worker and PostgreSQL that a test can cut (every
/// connection closed, new ones refused: the port stops listening) and
/// restore, on the same address. From the worker's side that is a real
/// outage; the shared PostgreSQL server is never touched.
pub struct PgProxy {
    pub addr: std::net::SocketAddr,
    upstream: String,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// While cut: the port, bound but not listening (connections are
    /// refused), so nothing else on the machine takes it before `restore`.
    held: Mutex<Option<tokio::net::TcpSocket>>,
}

impl PgProxy {
    pub async fn start() -> Self {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let proxy = Self {
            addr,
            upstream: pg_addr(),
            tasks: Arc::new(Mutex::new(Vec::new())),
            held: Mutex::new(None),
        };
        proxy.restore();
        proxy
    }

    fn try_bind(&self) -> std::io::Result<tokio::net::TcpSocket> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        Ok(socket)
    }

    fn bind(&self) -> tokio::net::TcpSocket {
        self.try_bind().unwrap()
    }

    /// Listens again and forwards new connections.
    pub fn restore(&self) {
        let held = self.held.lock().unwrap().take();
        let socket = held.unwrap_or_else(|| self.bind());
        let listener = socket.listen(128).unwrap();
        let upstream = self.upstream.clone();
        let tasks = Arc::clone(&self.tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().unwrap().push(forward.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Closes every connection and stops listening.
    pub async fn cut(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for task in tasks {
            task.abort();
        }
        // Let the aborted tasks drop their sockets, then hold the port (the
        // listener may take a moment longer to go on a loaded machine).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut attempts = 0;
        let socket = loop {
            match self.try_bind() {
                Ok(socket) => break socket,
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot hold the proxy's port {}: {e}", self.addr),
            }
        };
        *self.held.lock().unwrap() = Some(socket);
    }
}

/// The `WWW-Authenticate` header, or "".
pub fn challenge(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A free TCP port on loopback (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the worker on `port` answers `/readyz` with 200.
pub async fn wait_ready(port: u16) {
    let client = reqwest::Client::new();
    let start = std::time::Instant::now();
    while client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the worker on {port} did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The real `pushworker serve --dev` process: an empty environment plus
/// `env`, its own dev folder, a free port. Killed, and its folder removed, on
/// drop.
pub struct DevWorker {
    pub child: std::process::Child,
    pub port: u16,
    pub dir: std::path::PathBuf,
}

impl DevWorker {
    /// Starts one and waits until it is ready. With `capture`, stdout and
    /// stderr are piped (read them after it exits); otherwise discarded.
    pub async fn start(name: &str, env: &[(&str, String)], capture: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "pushworker-{name}-{}-{}",
            std::process::id(),
            now()
        ));
        let port = free_port();
        let child = Self::spawn(port, &dir, env, capture);
        wait_ready(port).await;
        Self { child, port, dir }
    }

    /// Spawns the process without waiting (restarts reuse port and folder).
    pub fn spawn(
        port: u16,
        dir: &std::path::Path,
        env: &[(&str, String)],
        capture: bool,
    ) -> std::process::Child {
        use std::process::Stdio;
        let output = || {
            if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pushworker"));
        cmd.args(["serve", "--dev", "--dev-dir"])
            .arg(dir)
            .env_clear()
            .env("PORT", port.to_string())
            // Workers run side by side: each takes a free metrics port.
            .env("METRICS_ADDR", "127.0.0.1:0")
            .stdout(output())
            .stderr(output());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The development identity this worker trusts.
    pub fn identity(&self) -> pushworker::auth::dev::DevIdentity {
        pushworker::auth::dev::DevIdentity::load_or_create(&self.dir).unwrap()
    }
}

impl Drop for DevWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A program of the Python test tools' virtualenv (`PUSHWORKER_TEST_VENV`,
/// default `.venv`, made by `scripts/test-prereqs.sh venv`).
pub fn venv_program(name: &str) -> std::path::PathBuf {
    let venv = std::env::var_os("PUSHWORKER_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv"));
    let program = venv.join("bin").join(name);
    assert!(
        program.exists(),
        "no {name} in the Python virtualenv {}: run `scripts/test-prereqs.sh venv` (make test does)",
        venv.display()
    );
    program
}

impl TestApp {
    /// `GET {path}` with no token.
    pub async fn get_public(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.addr))
            .send()
            .await
            .unwrap()
    }
}
