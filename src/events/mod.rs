//! CloudEvents 1.0 over HTTP, as Eventarc delivers them to `POST /events`:
//! parsed into one [`CloudEvent`] whatever the content mode, and routed to a
//! job ([`routes`]).
//!
//! - **Binary mode**: the context is in `ce-*` headers (percent-encoded, as
//!   the HTTP binding says), the body is the data and `Content-Type` its
//!   media type. Eventarc sends this.
//! - **Structured mode**: `Content-Type: application/cloudevents+json`, the
//!   body one JSON object holding the attributes and `data` (JSON) or
//!   `data_base64` (bytes).
//! - **Batch mode** (`application/cloudevents-batch+json`), other structured
//!   formats, and a request that is neither mode are refused
//!   ([`EventError::is_unsupported_media`]: a 415).
//!
//! `specversion` must be `1.0`; `id`, `source` and `type` must be there and
//! not empty; `subject`, when sent, must not be empty; `time` must be RFC 3339.
//! No attribute may hold a control character (the CloudEvents type system
//! forbids them, and the ledger's keys are joined with one). A bad event is
//! an [`EventError`] naming the attribute.
//!
//! Job payloads are JSON, so the data's media type must be JSON
//! (`application/json`, `text/json` or `…+json`) or unset.
//!
//! A Pub/Sub message that reaches us through an Eventarc trigger
//! ([`PUBSUB_MESSAGE_PUBLISHED`]) carries a push envelope as its data;
//! [`pubsub_message`] unwraps it like a push.

pub mod routes;

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use base64::Engine as _;
use serde::Serialize;
use time::OffsetDateTime;

pub use routes::{EventArgs, EventRoutes, RouteError};

use crate::pubsub::{self, EnvelopeError, MessageMeta, PushMessage};

/// The only CloudEvents version accepted.
pub const SPEC_VERSION: &str = "1.0";

/// The type of a Pub/Sub message delivered through Eventarc.
pub const PUBSUB_MESSAGE_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";

/// The media type of structured-mode JSON events.
pub const STRUCTURED_JSON: &str = "application/cloudevents+json";

/// How the event reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentMode {
    /// Context in `ce-*` headers, data in the body.
    Binary,
    /// One `application/cloudevents+json` object.
    Structured,
}

/// An event's context attributes, as a job sees them in its
/// [`crate::jobs::JobContext`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventContext {
    /// `id`: unique within its `source`.
    pub id: String,
    /// `source`: where the event happened (a URI-reference).
    pub source: String,
    /// `type` (`google.cloud.storage.object.v1.finalized`, …).
    #[serde(rename = "type")]
    pub event_type: String,
    /// `subject`, when sent (`objects/path/to/file` for Cloud Storage).
    pub subject: Option<String>,
    /// `time`, when sent.
    #[serde(with = "time::serde::rfc3339::option")]
    pub time: Option<OffsetDateTime>,
    /// `datacontenttype`: the data's media type, when sent.
    pub data_content_type: Option<String>,
    /// `dataschema`, when sent.
    pub data_schema: Option<String>,
    /// Every other attribute (extensions), as text.
    pub extensions: BTreeMap<String, String>,
    /// Binary or structured.
    pub mode: ContentMode,
}

/// A parsed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    /// Its context.
    pub context: EventContext,
    /// Its data (empty when it has none).
    pub data: Vec<u8>,
}

/// Why a request is not an event we can take. Each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// A required attribute is missing.
    #[error(
        "CloudEvent has no `{0}` attribute (binary mode: the `ce-{0}` header; structured mode: the `{0}` member)"
    )]
    Missing(&'static str),
    /// An attribute with a value it may not have.
    #[error("CloudEvent attribute `{name}` {problem}")]
    BadAttribute {
        /// The attribute.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Another CloudEvents version.
    #[error(
        "CloudEvent specversion `{0}` is not supported: send CloudEvents 1.0 (specversion `1.0`)"
    )]
    SpecVersion(String),
    /// A structured body that is not one JSON object.
    #[error("structured CloudEvent is not a JSON object: {0}")]
    NotJson(String),
    /// Batch mode.
    #[error(
        "batched CloudEvents (application/cloudevents-batch+json) are not accepted: send one event per request, in binary or structured mode"
    )]
    Batch,
    /// Neither binary nor structured JSON mode.
    #[error(
        "{0}: send binary mode (ce-id, ce-source, ce-specversion and ce-type headers, the data as the body) or structured mode (Content-Type: application/cloudevents+json)"
    )]
    UnsupportedMode(String),
    /// Data that is not JSON.
    #[error(
        "CloudEvent data of type `{0}` is not supported: job payloads are JSON (send application/json data)"
    )]
    UnsupportedData(String),
    /// A Pub/Sub event whose data is not a Pub/Sub message.
    #[error("the {PUBSUB_MESSAGE_PUBLISHED} event's data is not a Pub/Sub message: {0}")]
    PubsubData(EnvelopeError),
}

impl EventError {
    /// Whether this is the content mode or media type being refused (415)
    /// rather than a bad event (400).
    pub fn is_unsupported_media(&self) -> bool {
        matches!(
            self,
            Self::Batch | Self::UnsupportedMode(_) | Self::UnsupportedData(_)
        )
    }

    /// Machine-readable kind, for bodies and logs.
    pub fn kind(&self) -> &'static str {
        if self.is_unsupported_media() {
            "unsupported_media_type"
        } else {
            "invalid_event"
        }
    }
}

/// The media type of a `Content-Type` value: lower case, parameters dropped.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Whether data of this media type is JSON.
pub fn is_json_media(value: &str) -> bool {
    let media = media_type(value);
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Parses a request to `POST /events` in whichever mode it came.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<CloudEvent, EventError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                EventError::UnsupportedMode("the Content-Type header is not ASCII".into())
            })
        })
        .transpose()?;
    let media = content_type.as_deref().map(media_type);
    match media.as_deref() {
        Some(m) if m.starts_with("application/cloudevents-batch") => Err(EventError::Batch),
        Some(STRUCTURED_JSON) => parse_structured(body),
        Some(m) if m.starts_with("application/cloudevents") => Err(EventError::UnsupportedMode(
            format!("structured format `{m}` is not supported"),
        )),
        _ if headers.keys().any(|k| k.as_str().starts_with("ce-")) => {
            parse_binary(headers, content_type, body)
        }
        _ => Err(EventError::UnsupportedMode(
            "not a CloudEvent (no ce- headers, and not application/cloudevents+json)".into(),
        )),
    }
}

fn bad(name: &str, problem: impl Into<String>) -> EventError {
    EventError::BadAttribute {
        name: name.to_owned(),
        problem: problem.into(),
    }
}

/// The HTTP binding's percent-decoding of a `ce-*` header value.
fn percent_decode(name: &str, raw: &[u8]) -> Result<String, EventError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(name, "has a `%` that is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(name, "is not UTF-8 once percent-decoded"))
}

/// Attribute names are lower-case letters and digits (CloudEvents 1.0).
fn check_name(name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(bad(
            name,
            "has a name CloudEvents does not allow (lower-case letters and digits only)",
        ));
    }
    Ok(())
}

fn parse_binary(
    headers: &HeaderMap,
    content_type: Option<String>,
    body: &[u8],
) -> Result<CloudEvent, EventError> {
    let mut attributes = BTreeMap::new();
    for name in headers.keys() {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        check_name(attribute)?;
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(bad(attribute, "is sent more than once"));
        };
        attributes.insert(
            attribute.to_owned(),
            percent_decode(attribute, value.as_bytes())?,
        );
    }
    // Binary mode carries the data's type in Content-Type, not ce-datacontenttype.
    attributes.remove("datacontenttype");
    if let Some(content_type) = content_type {
        attributes.insert("datacontenttype".to_owned(), content_type);
    }
    let context = context(attributes, ContentMode::Binary)?;
    check_data_type(&context, body)?;
    Ok(CloudEvent {
        context,
        data: body.to_vec(),
    })
}

fn parse_structured(body: &[u8]) -> Result<CloudEvent, EventError> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    let mut attributes = BTreeMap::new();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in object {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            _ => {
                check_name(&name)?;
                let text = match value {
                    // The JSON format reads null as absent.
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Bool(_) | serde_json::Value::Number(_)
                        if !REQUIRED.contains(&name.as_str())
                            && !OPTIONAL.contains(&name.as_str()) =>
                    {
                        value.to_string()
                    }
                    _ => return Err(bad(&name, "must be a JSON string")),
                };
                attributes.insert(name, text);
            }
        }
    }
    let context = context(attributes, ContentMode::Structured)?;
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => return Err(bad("data_base64", "may not be sent with `data`")),
        (None | Some(serde_json::Value::Null), None) => Vec::new(),
        (None, Some(serde_json::Value::String(b64))) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad("data_base64", "is not valid base64"))?,
        (None, Some(_)) => return Err(bad("data_base64", "must be a JSON string of base64")),
        (Some(value), None) => {
            // A string under a type that is not JSON is that text itself.
            match (&value, context.data_content_type.as_deref()) {
                (serde_json::Value::String(s), Some(t)) if !is_json_media(t) => {
                    s.clone().into_bytes()
                }
                _ => serde_json::to_vec(&value).map_err(|e| EventError::NotJson(e.to_string()))?,
            }
        }
    };
    check_data_type(&context, &data)?;
    Ok(CloudEvent { context, data })
}

/// Attributes every event has.
const REQUIRED: [&str; 4] = ["specversion", "id", "source", "type"];
/// Optional attributes of the spec itself (strings, unlike extensions).
const OPTIONAL: [&str; 4] = ["subject", "time", "datacontenttype", "dataschema"];

fn context(
    mut attributes: BTreeMap<String, String>,
    mode: ContentMode,
) -> Result<EventContext, EventError> {
    for (name, value) in &attributes {
        if value.chars().any(char::is_control) {
            return Err(bad(name, "contains a control character"));
        }
    }
    let mut required = |name: &'static str| -> Result<String, EventError> {
        match attributes.remove(name) {
            None => Err(EventError::Missing(name)),
            Some(v) if v.is_empty() => Err(bad(name, "must not be empty")),
            Some(v) => Ok(v),
        }
    };
    let spec_version = required("specversion")?;
    if spec_version != SPEC_VERSION {
        return Err(EventError::SpecVersion(spec_version));
    }
    let id = required("id")?;
    let source = required("source")?;
    let event_type = required("type")?;
    let subject = attributes.remove("subject");
    if subject.as_deref() == Some("") {
        return Err(bad("subject", "must not be empty when sent"));
    }
    let time = attributes
        .remove("time")
        .map(|t| {
            OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad("time", format!("`{t}` is not an RFC 3339 timestamp")))
        })
        .transpose()?;
    Ok(EventContext {
        id,
        source,
        event_type,
        subject,
        time,
        data_content_type: attributes.remove("datacontenttype"),
        data_schema: attributes.remove("dataschema"),
        extensions: attributes,
        mode,
    })
}

fn check_data_type(context: &EventContext, data: &[u8]) -> Result<(), EventError> {
    match &context.data_content_type {
        Some(t) if !data.is_empty() && !is_json_media(t) => {
            Err(EventError::UnsupportedData(media_type(t)))
        }
        _ => Ok(()),
    }
}

/// The Pub/Sub message inside a [`PUBSUB_MESSAGE_PUBLISHED`] event: its data
/// is the wrapped push envelope (`message` with base64 `data`, `attributes`
/// and `messageId`; `subscription`).
pub fn pubsub_message(data: &[u8]) -> Result<PushMessage, EventError> {
    pubsub::parse_wrapped(data).map_err(EventError::PubsubData)
}

/// An event as a message for the dead-letter topic: its context as `ce-*`
/// attributes (the CloudEvents Pub/Sub binding), so it can be sent again.
pub fn as_message(context: &EventContext) -> MessageMeta {
    let mut attributes = BTreeMap::from([
        ("ce-specversion".to_owned(), SPEC_VERSION.to_owned()),
        ("ce-id".to_owned(), context.id.clone()),
        ("ce-source".to_owned(), context.source.clone()),
        ("ce-type".to_owned(), context.event_type.clone()),
    ]);
    let mut put = |name: &str, value: &Option<String>| {
        if let Some(v) = value {
            attributes.insert(format!("ce-{name}"), v.clone());
        }
    };
    put("subject", &context.subject);
    put("datacontenttype", &context.data_content_type);
    put("dataschema", &context.data_schema);
    put(
        "time",
        &context.time.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
    );
    for (name, value) in &context.extensions {
        attributes.insert(format!("ce-{name}"), value.clone());
    }
    MessageMeta {
        message_id: context.id.clone(),
        attributes,
        ..MessageMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const BINARY: [(&str, &str); 5] = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "//storage.googleapis.com/projects/_/buckets/b"),
        ("ce-type", "google.cloud.storage.object.v1.finalized"),
        ("content-type", "application/json"),
    ];

    #[test]
    fn binary_mode_reads_headers_and_percent_decodes() {
        let mut pairs = BINARY.to_vec();
        pairs.push(("ce-subject", "objects/a%20b%25"));
        pairs.push(("ce-time", "2026-11-28T10:00:00.5Z"));
        pairs.push(("ce-traceparent", "00-abc"));
        let event = parse(&headers(&pairs), br#"{"bucket":"b"}"#).unwrap();
        assert_eq!(event.context.subject.as_deref(), Some("objects/a b%"));
        assert_eq!(event.context.mode, ContentMode::Binary);
        assert_eq!(event.context.extensions["traceparent"], "00-abc");
        assert_eq!(
            event.context.data_content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(event.data, br#"{"bucket":"b"}"#);
        assert!(event.context.time.is_some());
    }

    #[test]
    fn each_required_attribute_is_named_when_missing() {
        for name in REQUIRED {
            let pairs: Vec<_> = BINARY
                .iter()
                .copied()
                .filter(|(k, _)| *k != format!("ce-{name}"))
                .collect();
            assert_eq!(
                parse(&headers(&pairs), b"{}"),
                Err(EventError::Missing(name)),
                "{name}"
            );
        }
    }

    #[test]
    fn structured_mode_takes_data_or_data_base64() {
        let h = headers(&[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )]);
        let body =
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"a":1},"ext":5}"#;
        let event = parse(&h, body).unwrap();
        assert_eq!(event.data, br#"{"a":1}"#);
        assert_eq!(event.context.extensions["ext"], "5");
        let body = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"eyJhIjoxfQ=="}"#;
        assert_eq!(parse(&h, body).unwrap().data, br#"{"a":1}"#);
        let body = br#"{"specversion":"1.0","id":1,"source":"s","type":"t"}"#;
        assert!(matches!(
            parse(&h, body),
            Err(EventError::BadAttribute { name, .. }) if name == "id"
        ));
    }

    #[test]
    fn modes_and_media_types_we_do_not_take_are_415s() {
        for (pairs, body) in [
            (
                vec![("content-type", "application/cloudevents-batch+json")],
                &b"[]"[..],
            ),
            (
                vec![("content-type", "application/cloudevents+xml")],
                b"<e/>",
            ),
            (vec![("content-type", "application/json")], b"{}"),
            (
                {
                    let mut p = BINARY[..4].to_vec();
                    p.push(("content-type", "text/plain"));
                    p
                },
                b"hello",
            ),
        ] {
            let err = parse(&headers(&pairs), body).unwrap_err();
            assert!(err.is_unsupported_media(), "{pairs:?}: {err}");
        }
    }

    #[test]
    fn control_characters_and_old_versions_are_refused() {
        let mut pairs = BINARY.to_vec();
        pairs.push(("ce-subject", "a%1Fb"));
        assert!(matches!(
            parse(&headers(&pairs), b"{}"),
            Err(EventError::BadAttribute { name, .. }) if name == "subject"
        ));
        let mut pairs = BINARY.to_vec();
        pairs[0] = ("ce-specversion", "0.3");
        assert_eq!(
            parse(&headers(&pairs), b"{}"),
            Err(EventError::SpecVersion("0.3".into()))
        );
    }

    #[test]
    fn a_dead_lettered_event_keeps_its_context_as_attributes() {
        let mut pairs = BINARY.to_vec();
        pairs.push(("ce-subject", "objects/x"));
        let event = parse(&headers(&pairs), b"{}").unwrap();
        let meta = as_message(&event.context);
        assert_eq!(meta.message_id, "1");
        assert_eq!(meta.attributes["ce-subject"], "objects/x");
        assert_eq!(meta.attributes["ce-datacontenttype"], "application/json");
    }
}
