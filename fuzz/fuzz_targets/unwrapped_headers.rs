//! Unwrapped (`no_wrapper`) deliveries: header name/value pairs and a body.
//!
//! The input is structured (`arbitrary`): a list of headers, each a name
//! (one of the names that matter, in any case, or raw bytes) and a raw value,
//! then the body (the rest of the input). Pairs HTTP would refuse (invalid
//! names or values) are skipped, as a server never sees them.
//!
//! Checked for every input:
//! - `parse_unwrapped` never panics; `parse_push` picks it exactly when the
//!   message-id header is there, and gives the same answer;
//! - the id, publish time, subscription, ordering key and delivery attempt
//!   come from their `x-goog-pubsub-*` headers (first value, visible ASCII,
//!   non-empty), and a missing or unusable id is `NoMessageId`;
//! - the data is the body, byte for byte;
//! - attributes: never `authorization` nor any other transport header (the
//!   list `pushworker::pubsub::is_transport_header` keeps: `x-goog-*`, `x-forwarded-*`,
//!   `host`, `cookie`, ...); every other header with a visible-ASCII value is
//!   one, with its last such value; nothing else is;
//! - round trip: the message wrapped (as the dead-letter path and replay do)
//!   and parsed again is the same message, only no longer unwrapped.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use pushworker::pubsub::{
    EnvelopeError, is_transport_header, is_unwrapped, parse_push, parse_unwrapped, parse_wrapped,
    wrap,
};

/// Names the parse treats specially, and a few ordinary ones.
const KNOWN: [&str; 32] = [
    "authorization",
    "Authorization",
    "AUTHORIZATION",
    "x-goog-pubsub-message-id",
    "X-Goog-PubSub-Message-Id",
    "x-goog-pubsub-publish-time",
    "x-goog-pubsub-subscription-name",
    "x-goog-pubsub-ordering-key",
    "x-goog-pubsub-delivery-attempt",
    "x-goog-other",
    "x-cloud-trace-context",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-expected-rq-timeout-ms",
    "x-request-id",
    "host",
    "content-type",
    "content-length",
    "user-agent",
    "accept-encoding",
    "forwarded",
    "from",
    "via",
    "traceparent",
    "cookie",
    "te",
    "transfer-encoding",
    "job",
    "tenant",
    "googclient_schemaencoding",
    "x-goog",
    "authorization-hint",
];

#[derive(Debug, Arbitrary)]
enum Name {
    /// One of [`KNOWN`] (index modulo its length).
    Known(u8),
    /// Raw bytes (often not a valid name: then the pair is skipped).
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Header {
    name: Name,
    value: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    headers: Vec<Header>,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let mut headers = HeaderMap::new();
    for h in &input.headers {
        let name = match &h.name {
            Name::Known(i) => {
                HeaderName::from_bytes(KNOWN[usize::from(*i) % KNOWN.len()].as_bytes())
            }
            Name::Raw(bytes) => HeaderName::from_bytes(bytes),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_bytes(&h.value)) {
            headers.append(name, value);
        }
    }
    let body = input.body;

    let result = parse_unwrapped(&headers, body);
    if is_unwrapped(&headers) {
        assert_eq!(parse_push(&headers, body), result);
    } else {
        assert_eq!(parse_push(&headers, body), parse_wrapped(body));
    }

    // The metadata headers: first value, visible ASCII, non-empty.
    let meta = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let Some(id) = meta("x-goog-pubsub-message-id") else {
        assert_eq!(result, Err(EnvelopeError::NoMessageId));
        return;
    };
    let msg = result.expect("an unwrapped delivery with an id parses");
    assert_eq!(msg.meta.message_id, id);
    assert_eq!(msg.data, body);
    assert!(msg.meta.unwrapped);
    assert_eq!(msg.meta.publish_time, meta("x-goog-pubsub-publish-time"));
    assert_eq!(
        msg.meta.subscription,
        meta("x-goog-pubsub-subscription-name")
    );
    assert_eq!(msg.meta.ordering_key, meta("x-goog-pubsub-ordering-key"));
    assert_eq!(
        msg.meta.delivery_attempt,
        meta("x-goog-pubsub-delivery-attempt").and_then(|v| v.parse::<u32>().ok())
    );

    // Attributes: exactly the non-transport headers, each with its last
    // visible-ASCII value.
    let mut expected = BTreeMap::new();
    for (name, value) in &headers {
        if let Ok(value) = value.to_str()
            && !is_transport_header(name.as_str())
        {
            expected.insert(name.as_str().to_owned(), value.to_owned());
        }
    }
    for name in msg.meta.attributes.keys() {
        assert!(
            !name.eq_ignore_ascii_case("authorization"),
            "the Authorization header became an attribute"
        );
        assert!(
            !is_transport_header(name),
            "transport header {name:?} became an attribute"
        );
    }
    assert_eq!(msg.meta.attributes, expected);

    // Re-wrapped, it is the same message.
    let rewrapped = serde_json::to_vec(&wrap(&msg.meta, &msg.data)).expect("json");
    let again = parse_wrapped(&rewrapped).expect("a re-wrapped delivery parses");
    let mut wrapped_meta = msg.meta.clone();
    wrapped_meta.unwrapped = false;
    assert_eq!(again.meta, wrapped_meta);
    assert_eq!(again.data, msg.data);
});
