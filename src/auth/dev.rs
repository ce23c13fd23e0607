//! The development identity: a local RSA key trusted as both a Google-like and
//! a Clerk-like issuer, so `make run` works with no cloud account, and
//! `pushworker dev-token` can mint tokens the local server accepts.
//!
//! The key is created on first use in `DEV_DIR` (git-ignored) with mode 0600.
//! Its tokens go through exactly the same verifiers as real ones: dev mode only
//! changes where the keys come from and the defaults of audience, service
//! account, Clerk issuer and authorized parties. Dev mode refuses to start on
//! Cloud Run and binds to loopback by default.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::{KeyPair, KeySize},
    signature::{RSA_PKCS1_SHA256, RsaKeyPair},
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use serde_json::{Value, json};

// The clock and the v2 limit are the verifiers'; minting follows them.
pub use super::{clerk::MAX_V2_PERMISSION_NAMES, token::now_secs};

/// Development mode (`PUSHWORKER_DEV`, `DEV_DIR`).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Development")]
pub struct DevArgs {
    /// Development mode: trust a local signing key (created on first use in
    /// `DEV_DIR`) as both a Google-like and a Clerk-like issuer. Refused on
    /// Cloud Run.
    #[arg(long = "dev", env = "PUSHWORKER_DEV", default_value_t = false)]
    pub enabled: bool,

    /// Folder of the development signing key (git-ignored).
    #[arg(long = "dev-dir", env = "DEV_DIR", default_value = ".pushworker-dev")]
    pub dir: PathBuf,
}

/// An RSA signing key with its key id, able to mint RS256 tokens and publish
/// its public half as a JWK. Used by the development identity, and by tests
/// and the benchmark to stand up their own issuers.
pub struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    /// Parsed once: jsonwebtoken parses (and validates) the DER on every
    /// signature, which costs more than the signature itself. Boxed: it is
    /// large, and identities are moved around by value.
    pair: Box<RsaKeyPair>,
    pem: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generates a fresh RSA-2048 key.
    pub fn generate(kid: impl Into<String>) -> anyhow::Result<Self> {
        let pair = KeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
        let der = pair
            .as_der()
            .map_err(|_| anyhow::anyhow!("RSA key serialisation failed"))?;
        Self::from_pem(kid, &pkcs8_pem(der.as_ref()))
    }

    /// Loads a PKCS#8 or PKCS#1 PEM private key.
    pub fn from_pem(kid: impl Into<String>, pem: &str) -> anyhow::Result<Self> {
        let encoding =
            EncodingKey::from_rsa_pem(pem.as_bytes()).context("not an RSA private key in PEM")?;
        let pair = RsaKeyPair::from_der(encoding.as_bytes())
            .map(Box::new)
            .map_err(|e| anyhow::anyhow!("not a usable RSA private key: {e}"))?;
        Ok(Self {
            kid: kid.into(),
            encoding,
            pair,
            pem: pem.to_owned(),
        })
    }

    /// The key id put in every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PEM (for writing the dev key to disk).
    pub fn private_pem(&self) -> &str {
        &self.pem
    }

    /// The public key as a JWK (`kty`, `n`, `e`, `kid`, `alg`, `use`).
    pub fn public_jwk(&self) -> anyhow::Result<Value> {
        self.public_jwk_with_kid(&self.kid)
    }

    /// The public key as a JWK under another key id (tests use this to publish
    /// a key nobody should trust under a trusted kid).
    pub fn public_jwk_with_kid(&self, kid: &str) -> anyhow::Result<Value> {
        let jwk = Jwk::from_encoding_key(&self.encoding, Algorithm::RS256)
            .context("deriving the public key")?;
        let mut jwk = serde_json::to_value(jwk)?;
        if let Some(obj) = jwk.as_object_mut() {
            obj.insert("kid".into(), json!(kid));
            obj.insert("use".into(), json!("sig"));
            obj.insert("alg".into(), json!("RS256"));
        }
        Ok(jwk)
    }

    /// Signs `claims` with RS256 and this key's kid.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` under a caller-built header (for tests of hostile headers).
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> anyhow::Result<String> {
        if header.alg != Algorithm::RS256 {
            // Whatever jsonwebtoken makes of another algorithm with an RSA key.
            return jsonwebtoken::encode(header, claims, &self.encoding).context("signing failed");
        }
        let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut token = b64.encode(serde_json::to_vec(header)?);
        token.push('.');
        token.push_str(&b64.encode(serde_json::to_vec(claims)?));
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                token.as_bytes(),
                &mut signature,
            )
            .map_err(|_| anyhow::anyhow!("signing failed"))?;
        token.push('.');
        token.push_str(&b64.encode(signature));
        Ok(token)
    }
}

fn pkcs8_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// The development identity on disk.
#[derive(Debug)]
pub struct DevIdentity {
    dir: PathBuf,
    key: SigningKey,
}

/// What a development Clerk token says about its user.
#[derive(Debug, Clone)]
pub struct DevClerkUser {
    /// `sub`.
    pub user_id: String,
    /// `sid`.
    pub session_id: String,
    /// Active organization id (none: no `o`/`org_*` claims).
    pub org_id: Option<String>,
    /// Role without the `org:` prefix, e.g. `admin`.
    pub role: String,
    /// Permissions in full form, `org:<feature>:<perm>`.
    pub permissions: Vec<String>,
    /// Emit v1 claims (`org_*`) instead of v2 (`o`, `fea`).
    pub v1: bool,
    /// `azp`.
    pub authorized_party: String,
}

impl DevIdentity {
    /// Audience of development Google tokens.
    pub const GOOGLE_AUDIENCE: &'static str = "pushworker-dev";
    /// Service account of development Google tokens.
    pub const SERVICE_ACCOUNT: &'static str = "dev-pusher@pushworker-dev.iam.gserviceaccount.com";
    /// Issuer of development Clerk tokens.
    pub const CLERK_ISSUER: &'static str = "https://clerk.pushworker.localhost";
    const KEY_FILE: &'static str = "signing-key.pem";
    const JWKS_FILE: &'static str = "jwks.json";

    /// The authorized parties trusted in dev mode: the local server's origins.
    pub fn authorized_parties(port: u16) -> Vec<String> {
        vec![
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}"),
        ]
    }

    /// Loads the key from `dir`, or creates it (and its JWKS) on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let key_path = dir.join(Self::KEY_FILE);
        let key = if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            SigningKey::from_pem(kid_for(&pem), &pem)?
        } else {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let fresh = SigningKey::generate("pending")?;
            let pem = fresh.private_pem().to_owned();
            write_private(&key_path, &pem)?;
            std::fs::write(dir.join(".gitignore"), "*\n").ok();
            SigningKey::from_pem(kid_for(&pem), &pem)?
        };
        let jwks = json!({ "keys": [key.public_jwk()?] });
        std::fs::write(dir.join(Self::JWKS_FILE), serde_json::to_vec_pretty(&jwks)?)
            .with_context(|| format!("writing the dev JWKS in {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            key,
        })
    }

    /// Path of the JWKS that dev mode trusts.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join(Self::JWKS_FILE)
    }

    /// The signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Mints a Google-shaped ID token (as Pub/Sub, Scheduler or Tasks send).
    pub fn google_token(
        &self,
        email: &str,
        audience: &str,
        lifetime_secs: i64,
    ) -> anyhow::Result<String> {
        let now = now_secs();
        self.key.sign(&json!({
            "iss": "https://accounts.google.com",
            "aud": audience,
            "azp": "100000000000000000000",
            "sub": "100000000000000000000",
            "email": email,
            "email_verified": true,
            "iat": now,
            "exp": now + lifetime_secs,
        }))
    }

    /// Mints a Clerk-shaped session token.
    pub fn clerk_token(&self, user: &DevClerkUser, lifetime_secs: i64) -> anyhow::Result<String> {
        let names = v2_parts(&user.permissions).1.len();
        if !user.v1 && user.org_id.is_some() && names > MAX_V2_PERMISSION_NAMES {
            anyhow::bail!(
                "a v2 Clerk token carries at most {MAX_V2_PERMISSION_NAMES} distinct permission names, not {names} (use fewer, or v1 claims)"
            );
        }
        self.key
            .sign(&clerk_claims(Self::CLERK_ISSUER, user, lifetime_secs))
    }
}

/// Builds Clerk session-token claims, v1 or v2, for `user`.
pub fn clerk_claims(issuer: &str, user: &DevClerkUser, lifetime_secs: i64) -> Value {
    let now = now_secs();
    let mut claims = json!({
        "iss": issuer,
        "sub": user.user_id,
        "sid": user.session_id,
        "azp": user.authorized_party,
        "iat": now,
        "nbf": now - 5,
        "exp": now + lifetime_secs,
        "fva": [0, -1],
    });
    let Some(obj) = claims.as_object_mut() else {
        return claims;
    };
    if let Some(org_id) = &user.org_id {
        if user.v1 {
            obj.insert("org_id".into(), json!(org_id));
            obj.insert("org_slug".into(), json!("dev-org"));
            obj.insert("org_role".into(), json!(format!("org:{}", user.role)));
            obj.insert("org_permissions".into(), json!(user.permissions));
        } else {
            let (fea, per, fpm) = encode_v2_permissions(&user.permissions);
            obj.insert("v".into(), json!(2));
            obj.insert("fea".into(), json!(fea));
            obj.insert(
                "o".into(),
                json!({ "id": org_id, "slg": "dev-org", "rol": user.role, "per": per, "fpm": fpm }),
            );
        }
    } else if !user.v1 {
        obj.insert("v".into(), json!(2));
    }
    claims
}

/// `org:<feature>:<perm>` permissions split into the features and the
/// distinct names (both in first-seen order) and the pairs.
type V2Parts<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<(&'a str, &'a str)>);

fn v2_parts(permissions: &[String]) -> V2Parts<'_> {
    let mut features: Vec<&str> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    let parsed: Vec<(&str, &str)> = permissions
        .iter()
        .filter_map(|p| {
            let rest = p.strip_prefix("org:")?;
            rest.split_once(':')
        })
        .collect();
    for (feature, name) in &parsed {
        if !features.contains(feature) {
            features.push(feature);
        }
        if !names.contains(name) {
            names.push(name);
        }
    }
    (features, names, parsed)
}

/// Encodes `org:<feature>:<perm>` permissions the way Clerk's v2 tokens do:
/// `fea` lists the org features, `per` the permission names, and `fpm` one
/// bitmask per feature over `per` (bit i = `per[i]`). At most
/// [`MAX_V2_PERMISSION_NAMES`] distinct names fit the masks; names past that
/// are left out of them (grant nothing), and [`DevIdentity::clerk_token`]
/// refuses such a list rather than mint it.
pub fn encode_v2_permissions(permissions: &[String]) -> (String, String, String) {
    let (features, names, parsed) = v2_parts(permissions);
    let masks: Vec<String> = features
        .iter()
        .map(|f| {
            let mut mask: u128 = 0;
            for (feature, name) in &parsed {
                if feature == f
                    && let Some(i) = names.iter().position(|n| n == name)
                    && i < MAX_V2_PERMISSION_NAMES
                {
                    mask |= 1 << i;
                }
            }
            mask.to_string()
        })
        .collect();
    let fea = features
        .iter()
        .map(|f| format!("o:{f}"))
        .collect::<Vec<_>>()
        .join(",");
    (fea, names.join(","), masks.join(","))
}

fn kid_for(pem: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pem.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("dev-{hex}")
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(permissions: Vec<String>) -> DevClerkUser {
        DevClerkUser {
            user_id: "user_1".into(),
            session_id: "sess_1".into(),
            org_id: Some("org_1".into()),
            role: "member".into(),
            permissions,
            v1: false,
            authorized_party: "http://localhost:8080".into(),
        }
    }

    /// The pre-parsed signer makes exactly the token jsonwebtoken makes
    /// (RSASSA-PKCS1-v1_5 is deterministic), and it verifies.
    #[test]
    fn signing_matches_jsonwebtoken_and_verifies() {
        let key = SigningKey::generate("k1").expect("key");
        let claims = json!({ "iss": "x", "sub": "y", "exp": now_secs() + 60 });
        let ours = key.sign(&claims).expect("sign");
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("k1".into());
        let theirs = jsonwebtoken::encode(&header, &claims, &key.encoding).expect("encode");
        assert_eq!(ours, theirs);
        let jwk: Jwk = serde_json::from_value(key.public_jwk().expect("jwk")).expect("jwk");
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("decoding key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(&ours, &decoding, &validation).expect("verifies");
        assert_eq!(data.claims, claims);
    }

    /// Regression (found by the property tests): more than 64 distinct names
    /// overflowed the u64 mask (a panic in debug builds, wrong bits in
    /// release). Bit 127 is the last one the verifier reads.
    #[test]
    fn v2_masks_hold_up_to_128_names() {
        let permissions: Vec<String> = (0..MAX_V2_PERMISSION_NAMES)
            .map(|i| format!("org:jobs:p{i}"))
            .collect();
        let (fea, per, fpm) = encode_v2_permissions(&permissions);
        assert_eq!(fea, "o:jobs");
        assert_eq!(per.split(',').count(), MAX_V2_PERMISSION_NAMES);
        assert_eq!(fpm, u128::MAX.to_string());
    }

    #[test]
    fn names_past_the_masks_grant_nothing_and_are_refused() {
        let mut permissions: Vec<String> = (0..MAX_V2_PERMISSION_NAMES)
            .map(|i| format!("org:a:p{i}"))
            .collect();
        permissions.push("org:b:last".into());
        let (fea, _, fpm) = encode_v2_permissions(&permissions);
        assert_eq!(fea, "o:a,o:b");
        assert_eq!(fpm, format!("{},0", u128::MAX));

        let dir = std::env::temp_dir().join(format!("pushworker-dev-test-{}", std::process::id()));
        let identity = DevIdentity::load_or_create(&dir).unwrap();
        let refused = identity.clerk_token(&user(permissions), 60);
        std::fs::remove_dir_all(&dir).ok();
        assert!(refused.unwrap_err().to_string().contains("at most 128"));
    }
}
