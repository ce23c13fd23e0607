//! The authentication settings as flags and environment variables;
//! [`crate::config`] validates them into the verifiers' settings.

/// The issuers, the trigger policy and the key cache (`GOOGLE_*`, `CLERK_*`,
/// `AUTH_*`, `TOKEN_CACHE_*`, `TRIGGER_*`, `JWKS_*`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Accepted `aud` values for Google tokens (comma list): the push
    /// subscription's / Scheduler job's configured audience.
    #[arg(long, env = "GOOGLE_AUDIENCES", value_delimiter = ',')]
    pub google_audiences: Vec<String>,

    /// Service-account emails allowed in with a Google token (comma list, exact
    /// match).
    #[arg(long, env = "GOOGLE_SERVICE_ACCOUNTS", value_delimiter = ',')]
    pub google_service_accounts: Vec<String>,

    /// Where Google's signing keys are fetched: an https URL or `file://PATH`.
    #[arg(long, env = "GOOGLE_JWKS_URL")]
    pub google_jwks_url: Option<String>,

    /// The Clerk instance's Frontend API URL, e.g. `https://clerk.example.com`.
    #[arg(long, env = "CLERK_ISSUER")]
    pub clerk_issuer: Option<String>,

    /// Clerk publishable key (`pk_test_…`/`pk_live_…`); the issuer is derived
    /// from it when `CLERK_ISSUER` is unset.
    #[arg(long, env = "CLERK_PUBLISHABLE_KEY")]
    pub clerk_publishable_key: Option<String>,

    /// Where Clerk's signing keys are fetched (default
    /// `$CLERK_ISSUER/.well-known/jwks.json`); also `file://PATH`.
    #[arg(long, env = "CLERK_JWKS_URL")]
    pub clerk_jwks_url: Option<String>,

    /// PEM public key of the Clerk instance: verify Clerk tokens with no
    /// network at all (takes precedence over `CLERK_JWKS_URL`).
    #[arg(long, env = "CLERK_JWT_KEY", hide_env_values = true)]
    pub clerk_jwt_key: Option<String>,

    /// Allowed `azp` origins of Clerk tokens (comma list).
    #[arg(long, env = "CLERK_AUTHORIZED_PARTIES", value_delimiter = ',')]
    pub clerk_authorized_parties: Vec<String>,

    /// Clock skew allowed on exp/nbf/iat, in seconds (at most 60).
    #[arg(long, env = "AUTH_LEEWAY_SECS", default_value_t = 5)]
    pub auth_leeway_secs: u64,

    /// Most verified tokens remembered, so that a token sent again (as
    /// Pub/Sub does on every push) skips the signature check until it
    /// expires or its key leaves the key set. 0 turns the cache off.
    #[arg(long, env = "TOKEN_CACHE_MAX_ENTRIES", default_value_t = 10_000)]
    pub token_cache_max_entries: usize,

    /// Clerk permission that allows triggering jobs (and posting envelopes).
    #[arg(long, env = "TRIGGER_PERMISSION", default_value = "org:jobs:trigger")]
    pub trigger_permission: String,

    /// Clerk organization roles that may trigger jobs even without the
    /// permission (comma list, e.g. `org:admin`; empty by default).
    #[arg(long, env = "TRIGGER_ROLES", value_delimiter = ',')]
    pub trigger_roles: Vec<String>,

    /// Shortest time signing keys are cached, whatever `Cache-Control` says.
    #[arg(long, env = "JWKS_MIN_TTL_SECS", default_value_t = 60)]
    pub jwks_min_ttl_secs: u64,

    /// Longest time signing keys are cached, whatever `Cache-Control` says.
    #[arg(long, env = "JWKS_MAX_TTL_SECS", default_value_t = 86_400)]
    pub jwks_max_ttl_secs: u64,

    /// Least time between two key fetches that are not due to expiry (unknown
    /// `kid`, retry after a failure), in milliseconds.
    #[arg(long, env = "JWKS_REFRESH_COOLDOWN_MS", default_value_t = 10_000)]
    pub jwks_refresh_cooldown_ms: u64,

    /// How long the last good keys keep serving after their TTL when
    /// refreshes fail, in seconds.
    #[arg(long, env = "JWKS_MAX_STALE_SECS", default_value_t = 21_600)]
    pub jwks_max_stale_secs: u64,

    /// Timeout of one key fetch (connect and body), in milliseconds.
    #[arg(long, env = "JWKS_FETCH_TIMEOUT_MS", default_value_t = 3_000)]
    pub jwks_fetch_timeout_ms: u64,
}
