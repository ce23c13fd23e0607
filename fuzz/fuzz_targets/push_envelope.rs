//! Any bytes as the body of a wrapped Pub/Sub push (no unwrapped headers).
//!
//! Checked for every input:
//! - `parse_wrapped` never panics, and `parse_push` routes a request without
//!   `x-goog-pubsub-message-id` (with or without other headers) to the same
//!   parse and the same answer;
//! - an accepted envelope has a non-empty id, is not marked unwrapped, holds
//!   at most `MAX_MESSAGE_BYTES` of data and no empty ordering key;
//! - what it holds is what the JSON says, read independently through
//!   `serde_json::Value`: the id (`messageId`, else `message_id`), the data
//!   (the base64 of `message.data`), the attributes and `deliveryAttempt`;
//! - round trip: `wrap` of the parsed message, parsed again, is the same
//!   message (metadata and data), as replay and the dead-letter path rely on.
#![no_main]

use base64::Engine as _;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use pushworker::pubsub::{MAX_MESSAGE_BYTES, parse_push, parse_wrapped, wrap};
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let parsed = parse_wrapped(body);

    // No unwrapped headers: parse_push is the wrapped parse, even beside the
    // headers every push carries.
    assert_eq!(parse_push(&HeaderMap::new(), body), parsed);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer x.y.z"),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-goog-pubsub-other", HeaderValue::from_static("1"));
    assert_eq!(parse_push(&headers, body), parsed);

    let Ok(msg) = parsed else {
        return;
    };
    assert!(!msg.meta.message_id.is_empty(), "accepted without an id");
    assert!(!msg.meta.unwrapped);
    assert!(msg.data.len() <= MAX_MESSAGE_BYTES);
    assert_ne!(msg.meta.ordering_key.as_deref(), Some(""));

    // Independently, through serde_json's own tree. (A body the typed parse
    // took may still be one the tree refuses, e.g. an out-of-range number in
    // an ignored field: then there is nothing to compare with.)
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let message = &value["message"];
        let id = match &message["messageId"] {
            Value::String(id) => id.as_str(),
            _ => message["message_id"].as_str().unwrap_or_default(),
        };
        assert_eq!(msg.meta.message_id, id, "id is not the envelope's");
        let data = match message["data"].as_str() {
            None | Some("") => Vec::new(),
            // Padding is optional: decode without it.
            Some(text) => base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(text.trim_end_matches('='))
                .expect("accepted data is base64"),
        };
        assert_eq!(msg.data, data, "data is not the envelope's");
        let attributes = match &message["attributes"] {
            Value::Null => Default::default(),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string attribute").to_owned()))
                .collect(),
            other => panic!("accepted attributes that are not an object: {other}"),
        };
        assert_eq!(msg.meta.attributes, attributes);
        assert_eq!(
            msg.meta.delivery_attempt.map(u64::from),
            value["deliveryAttempt"].as_u64()
        );
    }

    // Round trip through the envelope the replay tool and tests build.
    let rewrapped = serde_json::to_vec(&wrap(&msg.meta, &msg.data)).expect("json");
    let again = parse_wrapped(&rewrapped).expect("a re-wrapped message parses");
    assert_eq!(again, msg, "wrap then parse changed the message");
});
