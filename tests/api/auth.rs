//! The authentication table: every kind of token the worker must accept, and
//! every kind it must refuse, with the status and RFC 6750 challenge each gets.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with an arbitrary JSON header, signed by `key` (RS256 signature
/// over whatever header is given).
fn raw_header_token(header: Value, claims: &Value) -> String {
    let valid = KEYS.google.sign(claims).unwrap();
    let mut parts = valid.split('.');
    let _ = parts.next();
    let payload = parts.next().unwrap();
    let signature = parts.next().unwrap();
    format!(
        "{}.{payload}.{signature}",
        b64(header.to_string().as_bytes())
    )
}

fn header_with(extra: &[(&str, Value)]) -> Header {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KEYS.google.kid().to_owned());
    for (k, v) in extra {
        match *k {
            "jku" => header.jku = Some(v.as_str().unwrap().to_owned()),
            "x5u" => header.x5u = Some(v.as_str().unwrap().to_owned()),
            "jwk" => header.jwk = Some(serde_json::from_value(v.clone()).unwrap()),
            "x5c" => header.x5c = Some(serde_json::from_value(v.clone()).unwrap()),
            "crit" => header.crit = Some(serde_json::from_value(v.clone()).unwrap()),
            _ => unreachable!(),
        }
    }
    header
}

/// Every valid kind of token gets through, and `whoami` says who it is.
#[tokio::test]
async fn valid_tokens_are_accepted_and_typed() {
    let app = spawn_app().await;

    let response = app.whoami(&google_token()).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["principal"]["kind"], "google");
    assert_eq!(body["principal"]["email"], SERVICE_ACCOUNT);
    assert_eq!(body["principal"]["audience"], AUDIENCE);
    assert_eq!(body["can_trigger"], true);

    let bare_issuer = KEYS
        .google
        .sign(&with(google_claims(), "iss", json!("accounts.google.com")))
        .unwrap();
    assert_eq!(
        app.whoami(&bare_issuer).await.status(),
        200,
        "issuer without https://"
    );

    let aud_array = KEYS
        .google
        .sign(&with(google_claims(), "aud", json!(["other", AUDIENCE])))
        .unwrap();
    assert_eq!(
        app.whoami(&aud_array).await.status(),
        200,
        "aud array containing ours"
    );

    let expired_within_leeway = KEYS
        .google
        .sign(&with(google_claims(), "exp", json!(now() - 2)))
        .unwrap();
    assert_eq!(
        app.whoami(&expired_within_leeway).await.status(),
        200,
        "2 s past exp is within the 5 s leeway"
    );

    let response = app
        .whoami(&clerk_token(&[TRIGGER, "org:reports:read"]))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["principal"]["kind"], "clerk");
    assert_eq!(body["principal"]["user_id"], "user_2abc");
    assert_eq!(body["principal"]["session_id"], "sess_2abc");
    assert_eq!(body["principal"]["organization"]["role"], "org:member");
    assert_eq!(
        body["principal"]["organization"]["permissions"],
        json!(["org:jobs:trigger", "org:reports:read"])
    );
    assert_eq!(body["can_trigger"], true);

    let v1 = KEYS.clerk.sign(&clerk_v1_claims(&[TRIGGER])).unwrap();
    let response = app.whoami(&v1).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["principal"]["organization"]["permissions"],
        json!([TRIGGER])
    );
    assert_eq!(body["principal"]["organization"]["slug"], "acme");

    let no_perm = app.whoami(&clerk_token(&["org:reports:read"])).await;
    assert_eq!(no_perm.status(), 200);
    let body: Value = no_perm.json().await.unwrap();
    assert_eq!(body["can_trigger"], false);
    assert!(
        body["trigger_denied_reason"]
            .as_str()
            .unwrap()
            .contains(TRIGGER)
    );
}

/// Refused tokens: (case, token, status, expected challenge fragment).
#[tokio::test]
async fn bad_tokens_are_refused_with_the_right_status() {
    let app = spawn_app().await;
    let g = google_claims;
    let sign_g = |claims: Value| KEYS.google.sign(&claims).unwrap();
    let sign_c = |claims: Value| KEYS.clerk.sign(&claims).unwrap();
    let c = || clerk_v2_claims(&[TRIGGER]);
    let valid = google_token();
    let public_pem_hmac = {
        // HS256 keyed with the issuer's public key: the classic confusion attack.
        let jwk = KEYS.google.public_jwk().unwrap();
        let secret = jwk["n"].as_str().unwrap().as_bytes().to_vec();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(KEYS.google.kid().to_owned());
        jsonwebtoken::encode(&header, &g(), &EncodingKey::from_secret(&secret).unwrap()).unwrap()
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": KEYS.google.kid()})
            .to_string()
            .as_bytes()),
        b64(g().to_string().as_bytes())
    );
    let alg_none_with_sig =
        raw_header_token(json!({"alg": "none", "kid": KEYS.google.kid()}), &g());
    let rs512 = {
        let mut header = Header::new(Algorithm::RS512);
        header.kid = Some(KEYS.google.kid().to_owned());
        KEYS.google.sign_with_header(&header, &g()).unwrap()
    };
    let no_kid = KEYS
        .google
        .sign_with_header(&Header::new(Algorithm::RS256), &g())
        .unwrap();
    let rogue_under_trusted_kid = {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(KEYS.google.kid().to_owned());
        KEYS.rogue.sign_with_header(&header, &g()).unwrap()
    };
    let jwk_header = KEYS
        .rogue
        .sign_with_header(
            &header_with(&[("jwk", KEYS.rogue.public_jwk().unwrap())]),
            &g(),
        )
        .unwrap();
    let jku = KEYS
        .google
        .sign_with_header(
            &header_with(&[("jku", json!("https://evil.example/jwks"))]),
            &g(),
        )
        .unwrap();
    let x5u = KEYS
        .google
        .sign_with_header(
            &header_with(&[("x5u", json!("https://evil.example/cert"))]),
            &g(),
        )
        .unwrap();
    let x5c = KEYS
        .google
        .sign_with_header(
            &header_with(&[("x5c", json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"]))]),
            &g(),
        )
        .unwrap();
    let crit = raw_header_token(
        json!({"alg": "RS256", "kid": KEYS.google.kid(), "crit": ["exp-ext"], "exp-ext": 1}),
        &g(),
    );
    let oversized = sign_g(with(g(), "padding", json!("x".repeat(9000))));
    let truncated = valid[..valid.len() / 2].to_owned();
    let clerk_iss_google_key = sign_g(c());
    let google_iss_clerk_key = sign_c(g());
    let mut tampered = valid.clone();
    tampered.replace_range(valid.len() - 6.., "AAAAAA");

    let invalid = "invalid_token";
    let scope = "insufficient_scope";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "expired an hour ago",
            sign_g(with(g(), "exp", json!(now() - 3600))),
            401,
            invalid,
        ),
        (
            "expired beyond the leeway by 3 s",
            sign_g(with(g(), "exp", json!(now() - 8))),
            401,
            invalid,
        ),
        (
            "nbf in the future",
            sign_g(with(g(), "nbf", json!(now() + 120))),
            401,
            invalid,
        ),
        (
            "iat in the future",
            sign_g(with(g(), "iat", json!(now() + 120))),
            401,
            invalid,
        ),
        (
            "missing iat",
            sign_g(with(g(), "iat", Value::Null)),
            401,
            invalid,
        ),
        (
            "missing exp",
            sign_g(with(g(), "exp", Value::Null)),
            401,
            invalid,
        ),
        (
            "wrong aud",
            sign_g(with(g(), "aud", json!("https://other.example/push"))),
            401,
            invalid,
        ),
        (
            "aud array without ours",
            sign_g(with(g(), "aud", json!(["a", "b"]))),
            401,
            invalid,
        ),
        (
            "missing aud",
            sign_g(with(g(), "aud", Value::Null)),
            401,
            invalid,
        ),
        (
            "wrong iss",
            sign_g(with(g(), "iss", json!("https://evil.example"))),
            401,
            invalid,
        ),
        (
            "Clerk issuer signed by the Google key",
            clerk_iss_google_key,
            401,
            invalid,
        ),
        (
            "Google issuer signed by the Clerk key",
            google_iss_clerk_key,
            401,
            invalid,
        ),
        (
            "email_verified false",
            sign_g(with(g(), "email_verified", json!(false))),
            401,
            invalid,
        ),
        (
            "email_verified the string \"true\" (Google issues a boolean)",
            sign_g(with(g(), "email_verified", json!("true"))),
            401,
            invalid,
        ),
        (
            "email_verified missing",
            sign_g(with(g(), "email_verified", Value::Null)),
            401,
            invalid,
        ),
        (
            "missing email",
            sign_g(with(g(), "email", Value::Null)),
            401,
            invalid,
        ),
        (
            "service account not in the list",
            sign_g(with(
                g(),
                "email",
                json!("intruder@acme-prod.iam.gserviceaccount.com"),
            )),
            403,
            scope,
        ),
        (
            "look-alike: upper case",
            sign_g(with(g(), "email", json!(SERVICE_ACCOUNT.to_uppercase()))),
            403,
            scope,
        ),
        (
            "look-alike: suffix",
            sign_g(with(
                g(),
                "email",
                json!(format!("{SERVICE_ACCOUNT}.evil.com")),
            )),
            403,
            scope,
        ),
        (
            "look-alike: prefix",
            sign_g(with(g(), "email", json!(format!("x{SERVICE_ACCOUNT}")))),
            403,
            scope,
        ),
        (
            "look-alike: trailing space",
            sign_g(with(g(), "email", json!(format!("{SERVICE_ACCOUNT} ")))),
            403,
            scope,
        ),
        (
            "unknown kid",
            {
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some("no-such-kid".into());
                KEYS.google.sign_with_header(&h, &g()).unwrap()
            },
            401,
            invalid,
        ),
        ("missing kid", no_kid, 401, invalid),
        (
            "a key nobody trusts under a trusted kid",
            rogue_under_trusted_kid,
            401,
            invalid,
        ),
        ("tampered signature", tampered, 401, invalid),
        ("alg none, empty signature", alg_none, 401, invalid),
        (
            "alg none, with a signature",
            alg_none_with_sig,
            401,
            invalid,
        ),
        (
            "HS256 keyed with the public key",
            public_pem_hmac,
            401,
            invalid,
        ),
        ("RS512", rs512, 401, invalid),
        ("jku header", jku, 401, invalid),
        ("x5u header", x5u, 401, invalid),
        ("embedded jwk header", jwk_header, 401, invalid),
        ("x5c header", x5c, 401, invalid),
        ("unknown crit", crit, 401, invalid),
        ("garbage", "not-a-token".to_owned(), 401, invalid),
        ("garbage with dots", "a.b.c".to_owned(), 401, invalid),
        ("truncated", truncated, 401, invalid),
        ("oversized", oversized, 401, invalid),
        (
            "Clerk: wrong azp",
            sign_c(with(c(), "azp", json!("https://evil.example"))),
            401,
            invalid,
        ),
        (
            "Clerk: missing azp",
            sign_c(with(c(), "azp", Value::Null)),
            401,
            invalid,
        ),
        (
            "Clerk: sts pending",
            sign_c(with(c(), "sts", json!("pending"))),
            401,
            invalid,
        ),
        (
            "Clerk: missing sid",
            sign_c(with(c(), "sid", Value::Null)),
            401,
            invalid,
        ),
        (
            "Clerk: missing sub",
            sign_c(with(c(), "sub", Value::Null)),
            401,
            invalid,
        ),
        (
            "Clerk: missing nbf",
            sign_c(with(c(), "nbf", Value::Null)),
            401,
            invalid,
        ),
        (
            "Clerk: expired",
            sign_c(with(c(), "exp", json!(now() - 30))),
            401,
            invalid,
        ),
        (
            "Clerk: other instance",
            sign_c(with(c(), "iss", json!("https://clerk.other.test"))),
            401,
            invalid,
        ),
        (
            "Clerk: trailing slash on iss",
            sign_c(with(c(), "iss", json!(format!("{CLERK_ISSUER}/")))),
            401,
            invalid,
        ),
    ];

    let mut failures = Vec::new();
    for (case, token, status, error) in &cases {
        let response = app.whoami(token).await;
        let got = response.status().as_u16();
        let www = challenge(&response);
        let body = response.text().await.unwrap();
        if got != *status || !www.contains(&format!("error=\"{error}\"")) {
            failures.push(format!(
                "{case}: expected {status} {error}, got {got} `{www}` {body}"
            ));
        }
        assert!(
            !body.contains(token.as_str()),
            "{case}: the body echoes the token"
        );
    }
    assert!(
        failures.is_empty(),
        "{} case(s) wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Header-level refusals happen before any token parsing.
#[tokio::test]
async fn authorization_header_shape_is_checked_first() {
    let app = spawn_app().await;
    let token = google_token();
    let lower = format!("bearer {token}");
    let upper = format!("BEARER {token}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:pass")
    );
    let bearer = format!("Bearer {token}");
    let cases: Vec<(&str, Vec<&str>, u16, &str)> = vec![
        ("scheme in lower case", vec![lower.as_str()], 200, ""),
        ("scheme in upper case", vec![upper.as_str()], 200, ""),
        ("no header", vec![], 401, "Bearer"),
        ("wrong scheme", vec![basic.as_str()], 401, "Bearer"),
        (
            "scheme only",
            vec!["Bearer"],
            401,
            "Bearer error=\"invalid_token\"",
        ),
        (
            "two Authorization headers",
            vec![bearer.as_str(), bearer.as_str()],
            400,
            "error=\"invalid_request\"",
        ),
    ];
    for (case, headers, status, www) in cases {
        let response = app.whoami_raw(&headers).await;
        assert_eq!(response.status().as_u16(), status, "{case}");
        if status != 200 {
            let got = challenge(&response);
            assert!(got.contains(www), "{case}: challenge `{got}`");
            if status == 401 && !www.contains("error=") {
                assert_eq!(
                    got, "Bearer",
                    "{case}: no error code when no token was presented"
                );
            }
        }
    }
}

/// With one issuer unconfigured, its tokens are refused, the other still works.
#[tokio::test]
async fn an_unconfigured_issuer_is_refused() {
    let app = spawn_app_with(Options {
        clerk: false,
        ..Options::default()
    })
    .await;
    assert_eq!(app.whoami(&clerk_token(&[TRIGGER])).await.status(), 401);
    assert_eq!(app.whoami(&google_token()).await.status(), 200);

    let app = spawn_app_with(Options {
        google: false,
        ..Options::default()
    })
    .await;
    assert_eq!(app.whoami(&google_token()).await.status(), 401);
    assert_eq!(app.whoami(&clerk_token(&[TRIGGER])).await.status(), 200);
}

/// `CLERK_JWT_KEY`: Clerk tokens verify with no key server at all.
#[tokio::test]
async fn clerk_pem_key_needs_no_network() {
    // The PEM of the public key, derived through aws-lc-rs from the private PEM.
    let pem = public_pem(KEYS.clerk.private_pem());
    let app = spawn_app_with(Options {
        clerk_jwt_key: Some(pem),
        ..Options::default()
    })
    .await;
    assert_eq!(app.whoami(&clerk_token(&[TRIGGER])).await.status(), 200);
    assert_eq!(app.keys.clerk_fetches(), 0, "no fetch with a PEM key");
    let forged = KEYS.rogue.sign(&clerk_v2_claims(&[TRIGGER])).unwrap();
    assert_eq!(app.whoami(&forged).await.status(), 401);
}

fn public_pem(private_pem: &str) -> String {
    use aws_lc_rs::{encoding::AsDer, rsa::KeyPair, signature::KeyPair as _};
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            private_pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let pair = KeyPair::from_pkcs8(&der).unwrap();
    let spki = pair.public_key().as_der().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    pem
}
