//! Pub/Sub push deliveries: the wrapped JSON envelope and unwrapped
//! (`no_wrapper`) bodies with metadata headers, parsed into one
//! [`PushMessage`].
//!
//! Facts this relies on (docs/platform-notes.md, "Pub/Sub push"): the
//! wrapped envelope sends both `messageId` and `message_id` (and both casings
//! of the publish time), so each casing is its own field rather than a serde
//! alias, which would reject the pair as a duplicate; `data` and `attributes`
//! may be absent; `deliveryAttempt` appears only with a dead-letter policy.
//! Unwrapped bodies are the raw data; `x-goog-pubsub-*` headers carry the
//! metadata and every attribute arrives as a header of its own name
//! (lower-cased by HTTP). The Content-Type is never relied on: the emulator
//! sends form-encoded for raw bytes.

pub mod dead_letter;
pub mod gcp;

use std::{borrow::Cow, collections::BTreeMap};

use axum::http::HeaderMap;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Pub/Sub: the job attribute, the dead-letter topic and the emulator.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Pub/Sub")]
pub struct PubsubArgs {
    /// Message attribute that names the job on `POST /pubsub/push`.
    #[arg(long, env = "JOB_ATTRIBUTE", default_value = "job")]
    pub job_attribute: String,

    /// Topic that poison messages are published to (`projects/P/topics/T`)
    /// before their push is acked. Unset: permanent failures are nacked and
    /// left to the subscription's dead-letter policy.
    #[arg(long, env = "DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// `host:port` of the Pub/Sub emulator; when set, every Pub/Sub client
    /// (dead-letter publisher, replay bridge) talks to it without credentials.
    #[arg(long, env = "PUBSUB_EMULATOR_HOST")]
    pub pubsub_emulator_host: Option<String>,
}

/// Largest message data accepted: Pub/Sub's own limit on a message.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

/// Largest push body accepted: the data base64-encoded inside JSON, plus room
/// for up to 100 attributes and the envelope.
pub const MAX_BODY_BYTES: usize = MAX_MESSAGE_BYTES / 3 * 4 + 4 + 1024 * 1024;

const H_MESSAGE_ID: &str = "x-goog-pubsub-message-id";
const H_PUBLISH_TIME: &str = "x-goog-pubsub-publish-time";
const H_SUBSCRIPTION: &str = "x-goog-pubsub-subscription-name";
const H_ORDERING_KEY: &str = "x-goog-pubsub-ordering-key";
const H_DELIVERY_ATTEMPT: &str = "x-goog-pubsub-delivery-attempt";

/// A message's metadata, as the job sees it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MessageMeta {
    /// Pub/Sub's message id.
    pub message_id: String,
    /// Publish time (RFC 3339), if sent.
    pub publish_time: Option<String>,
    /// `projects/P/subscriptions/S`, if sent.
    pub subscription: Option<String>,
    /// The message's attributes.
    pub attributes: BTreeMap<String, String>,
    /// Ordering key, if any.
    pub ordering_key: Option<String>,
    /// Delivery attempt, when the subscription has a dead-letter policy.
    pub delivery_attempt: Option<u32>,
    /// Whether the delivery was unwrapped (`no_wrapper`).
    pub unwrapped: bool,
}

/// A decoded push delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    /// Metadata.
    pub meta: MessageMeta,
    /// The decoded data (empty when the message had none).
    pub data: Vec<u8>,
}

/// Why a push body is not a usable delivery. Each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not the JSON of a push envelope.
    #[error(
        "body is not a Pub/Sub push envelope ({0}); unwrapped subscriptions must enable write_metadata"
    )]
    NotEnvelope(String),
    /// No `message` object.
    #[error("envelope has no `message` object")]
    NoMessage,
    /// No message id (wrapped: `message.messageId`; unwrapped: the header).
    #[error("message has no messageId")]
    NoMessageId,
    /// `message.data` is not base64.
    #[error("message.data is not valid base64")]
    BadBase64,
    /// Decoded data is over Pub/Sub's limit.
    #[error("message data is larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    message: Option<Object<WireMessage<'a>>>,
    subscription: Option<String>,
    #[serde(rename = "deliveryAttempt")]
    delivery_attempt: Option<u32>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    /// Borrowed from the body unless it has JSON escapes (`\/`): serde's
    /// `borrow` does not reach through `Option`, and a copy of the data,
    /// nearly all of a large push, would hold it twice.
    #[serde(borrow, deserialize_with = "borrowed_text", default)]
    data: Option<Cow<'a, str>>,
    attributes: Option<BTreeMap<String, String>>,
    #[serde(rename = "messageId")]
    message_id: Option<String>,
    #[serde(rename = "message_id")]
    message_id_snake: Option<String>,
    #[serde(rename = "publishTime")]
    publish_time: Option<String>,
    #[serde(rename = "publish_time")]
    publish_time_snake: Option<String>,
    #[serde(rename = "orderingKey")]
    ordering_key: Option<String>,
}

fn borrowed_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'de>>::deserialize(deserializer)?.map(|t| t.0))
}

/// A struct read only from a JSON object. serde's derived structs also take a
/// JSON array (the fields in order), and `[{"messageId":"1"},null,null]` is
/// no push envelope (caught by the `push_envelope` fuzz target).
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectVisitor(std::marker::PhantomData))
            .map(Object)
    }
}

/// Standard base64, padding optional (Pub/Sub pads; hand-made envelopes may not).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Whether a request is an unwrapped delivery (metadata in headers).
pub fn is_unwrapped(headers: &HeaderMap) -> bool {
    headers.contains_key(H_MESSAGE_ID)
}

/// Parses a push delivery, wrapped or unwrapped.
pub fn parse_push(headers: &HeaderMap, body: &[u8]) -> Result<PushMessage, EnvelopeError> {
    if is_unwrapped(headers) {
        parse_unwrapped(headers, body)
    } else {
        parse_wrapped(body)
    }
}

/// Parses the wrapped JSON envelope.
pub fn parse_wrapped(body: &[u8]) -> Result<PushMessage, EnvelopeError> {
    let Object(envelope): Object<Envelope<'_>> =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotEnvelope(e.to_string()))?;
    let Object(message) = envelope.message.ok_or(EnvelopeError::NoMessage)?;
    let message_id = message
        .message_id
        .or(message.message_id_snake)
        .filter(|id| !id.is_empty())
        .ok_or(EnvelopeError::NoMessageId)?;
    let data = match message.data.as_deref() {
        None | Some("") => Vec::new(),
        Some(text) => {
            if text.len() / 4 * 3 > MAX_MESSAGE_BYTES + 3 {
                return Err(EnvelopeError::TooLarge);
            }
            BASE64
                .decode(text.as_bytes())
                .map_err(|_| EnvelopeError::BadBase64)?
        }
    };
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    Ok(PushMessage {
        meta: MessageMeta {
            message_id,
            publish_time: message.publish_time.or(message.publish_time_snake),
            subscription: envelope.subscription,
            attributes: message.attributes.unwrap_or_default(),
            ordering_key: message.ordering_key.filter(|k| !k.is_empty()),
            delivery_attempt: envelope.delivery_attempt,
            unwrapped: false,
        },
        data,
    })
}

/// Headers that are never message attributes in an unwrapped delivery: the
/// transport's own, and above all `authorization`, which must never reach a
/// job or a log as an "attribute". `name` is lower case, as `HeaderName`s are.
pub fn is_transport_header(name: &str) -> bool {
    const EXACT: [&str; 17] = [
        "authorization",
        "host",
        "content-type",
        "content-length",
        "content-encoding",
        "user-agent",
        "accept",
        "accept-encoding",
        "connection",
        "forwarded",
        "from",
        "via",
        "traceparent",
        "tracestate",
        "te",
        "transfer-encoding",
        "cookie",
    ];
    const PREFIXES: [&str; 5] = [
        "x-goog-",
        "x-forwarded-",
        "x-cloud-",
        "x-envoy-",
        "x-request-",
    ];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Parses an unwrapped delivery: raw data, metadata and attributes in headers.
pub fn parse_unwrapped(headers: &HeaderMap, body: &[u8]) -> Result<PushMessage, EnvelopeError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .filter(|v| !v.is_empty())
    };
    let message_id = header(H_MESSAGE_ID).ok_or(EnvelopeError::NoMessageId)?;
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(EnvelopeError::TooLarge);
    }
    let attributes = headers
        .iter()
        .filter(|(name, _)| !is_transport_header(name.as_str()))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    Ok(PushMessage {
        meta: MessageMeta {
            message_id,
            publish_time: header(H_PUBLISH_TIME),
            subscription: header(H_SUBSCRIPTION),
            attributes,
            ordering_key: header(H_ORDERING_KEY),
            delivery_attempt: header(H_DELIVERY_ATTEMPT).and_then(|v| v.parse().ok()),
            unwrapped: true,
        },
        data: body.to_vec(),
    })
}

/// Builds the wrapped envelope Pub/Sub would send for `data` (both casings of
/// id and time). Used by replay tools, tests and the benchmark.
pub fn wrap(meta: &MessageMeta, data: &[u8]) -> serde_json::Value {
    let mut message = serde_json::json!({
        "data": base64::engine::general_purpose::STANDARD.encode(data),
        "attributes": meta.attributes,
        "messageId": meta.message_id,
        "message_id": meta.message_id,
    });
    if let Some(obj) = message.as_object_mut() {
        if let Some(t) = &meta.publish_time {
            obj.insert("publishTime".into(), t.clone().into());
            obj.insert("publish_time".into(), t.clone().into());
        }
        if let Some(k) = &meta.ordering_key {
            obj.insert("orderingKey".into(), k.clone().into());
        }
    }
    let mut envelope = serde_json::json!({ "message": message });
    if let Some(obj) = envelope.as_object_mut() {
        if let Some(s) = &meta.subscription {
            obj.insert("subscription".into(), s.clone().into());
        }
        if let Some(a) = meta.delivery_attempt {
            obj.insert("deliveryAttempt".into(), a.into());
        }
    }
    envelope
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The data is read in place from the body (no copy of a large field),
    /// and a body that escapes `/` as `\/` still decodes.
    #[test]
    fn data_is_borrowed_unless_escaped() {
        let body = br#"{"message":{"data":"aGk/","messageId":"1"}}"#;
        let Object(envelope): Object<Envelope<'_>> = serde_json::from_slice(body).unwrap();
        let Object(message) = envelope.message.unwrap();
        assert!(matches!(message.data, Some(Cow::Borrowed("aGk/"))));
        let escaped = parse_wrapped(br#"{"message":{"data":"aGk\/","messageId":"1"}}"#).unwrap();
        assert_eq!(escaped.data, parse_wrapped(body).unwrap().data);
    }

    #[test]
    fn wrapped_envelope_with_both_casings_parses() {
        let body = br#"{"subscription":"projects/p/subscriptions/s","deliveryAttempt":3,
            "message":{"data":"eyJhIjoxfQ==","attributes":{"job":"echo"},"messageId":"42","message_id":"42",
            "publishTime":"2026-01-01T00:00:00Z","publish_time":"2026-01-01T00:00:00Z","orderingKey":"k"}}"#;
        let msg = parse_wrapped(body).unwrap();
        assert_eq!(msg.data, br#"{"a":1}"#);
        assert_eq!(msg.meta.message_id, "42");
        assert_eq!(msg.meta.delivery_attempt, Some(3));
        assert_eq!(msg.meta.attributes["job"], "echo");
        assert_eq!(msg.meta.ordering_key.as_deref(), Some("k"));
    }

    #[test]
    fn round_trip_through_wrap() {
        let meta = MessageMeta {
            message_id: "7".into(),
            publish_time: Some("2026-01-01T00:00:00Z".into()),
            subscription: Some("projects/p/subscriptions/s".into()),
            attributes: [("job".to_owned(), "echo".to_owned())].into(),
            ordering_key: None,
            delivery_attempt: Some(2),
            unwrapped: false,
        };
        let body = serde_json::to_vec(&wrap(&meta, b"hello")).unwrap();
        let parsed = parse_wrapped(&body).unwrap();
        assert_eq!(parsed.meta, meta);
        assert_eq!(parsed.data, b"hello");
    }

    /// Regression (caught by the `push_envelope` fuzz target's independent
    /// check): a JSON array, as the envelope or as its message, was read as
    /// the struct its elements fill in order.
    #[test]
    fn an_array_is_not_an_envelope_or_a_message() {
        for body in [
            r#"[{"messageId":"1"},null,null]"#,
            r#"{"message":["aGk=",{"job":"echo"},"7",null,null,null,null]}"#,
        ] {
            assert!(
                matches!(
                    parse_wrapped(body.as_bytes()),
                    Err(EnvelopeError::NotEnvelope(_))
                ),
                "{body}"
            );
        }
        // The same fields as objects still parse, borrowed data included.
        let msg = parse_wrapped(br#"{"message":{"data":"aGk=","messageId":"7"}}"#).unwrap();
        assert_eq!(
            (msg.data.as_slice(), msg.meta.message_id.as_str()),
            (b"hi".as_slice(), "7")
        );
    }

    #[test]
    fn unwrapped_never_turns_authorization_into_an_attribute() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer x".parse().unwrap());
        headers.insert(H_MESSAGE_ID, "9".parse().unwrap());
        headers.insert("job", "echo".parse().unwrap());
        let msg = parse_unwrapped(&headers, b"{}").unwrap();
        assert_eq!(msg.meta.attributes.len(), 1);
        assert_eq!(msg.meta.attributes["job"], "echo");
    }
}
