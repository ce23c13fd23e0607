//! Messages and CloudEvents read from JSON and JSON-lines files, and their
//! delivery.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde::Deserialize;

use crate::{
    events::STRUCTURED_JSON,
    pubsub::{MessageMeta, wrap},
};

use super::{
    Outgoing, OutgoingEvent, ReplayArgs, Summary, TokenSource, deliver, http_client, progress_bar,
};

/// A binary-mode CloudEvent from a file: its headers and its body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEvent {
    headers: BTreeMap<String, String>,
    body: Option<serde_json::Value>,
}

/// One message from a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMessage {
    data: Option<serde_json::Value>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(rename = "messageId", alias = "message_id")]
    message_id: Option<String>,
    #[serde(rename = "orderingKey", alias = "ordering_key")]
    ordering_key: Option<String>,
    #[serde(rename = "publishTime", alias = "publish_time")]
    publish_time: Option<String>,
}

/// Reads messages from files and folders. `$TARGET` inside JSON data is
/// replaced by `target` (the worker's base URL), so fixtures that call back
/// into the worker work wherever it runs.
pub fn read_messages(paths: &[PathBuf], target: &str) -> anyhow::Result<Vec<Outgoing>> {
    let mut files = Vec::new();
    for path in paths {
        collect_files(path, &mut files)?;
    }
    if files.is_empty() {
        bail!("no message files (.json, .jsonl, .ndjson) found in the given paths");
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let is_lines = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson")
        );
        let parsed: Vec<(String, serde_json::Value)> = if is_lines {
            text.lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, line)| {
                    serde_json::from_str(line)
                        .map(|m| (format!("{}:{}", file.display(), i + 1), m))
                        .with_context(|| {
                            format!("{}:{}: not a message object", file.display(), i + 1)
                        })
                })
                .collect::<anyhow::Result<_>>()?
        } else {
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", file.display()))?;
            let items = match value {
                serde_json::Value::Array(items) => items,
                other => vec![other],
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("{}#{i}", file.display()), v))
                .collect()
        };
        for (origin, item) in parsed {
            out.push(read_item(origin, item, target)?);
        }
    }
    Ok(out)
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{}: no such file or folder", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir()
                || matches!(
                    entry.extension().and_then(|e| e.to_str()),
                    Some("json" | "jsonl" | "ndjson")
                )
            {
                collect_files(&entry, files)?;
            }
        }
    } else {
        files.push(path.to_owned());
    }
    Ok(())
}

/// One item of a file: a structured CloudEvent (it has `specversion`), a
/// binary one (`headers` and `body`), or a push message.
fn read_item(origin: String, item: serde_json::Value, target: &str) -> anyhow::Result<Outgoing> {
    let Some(object) = item.as_object() else {
        bail!("{origin}: not a JSON object (a message, or a CloudEvent)");
    };
    if object.contains_key("specversion") {
        return structured_event(origin, item, target);
    }
    if object.contains_key("headers") {
        let event: FileEvent = serde_json::from_value(item).with_context(|| {
            format!("{origin}: not a binary CloudEvent (expected `headers` with ce-* and content-type, and `body`)")
        })?;
        return binary_event(origin, event, target);
    }
    let message: FileMessage = serde_json::from_value(item).with_context(|| {
        format!(
            "{origin}: not a message (expected data, attributes, messageId, orderingKey, publishTime), nor a CloudEvent (specversion, or headers and body)"
        )
    })?;
    to_outgoing(origin, message, target)
}

/// A fresh id for an event or message that has none, so that replaying a
/// fixture runs it again rather than being deduplicated.
fn fresh_id() -> String {
    format!("replay-{}", uuid::Uuid::now_v7())
}

fn with_target(json: &serde_json::Value, target: &str) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_string(json)?
        .replace("$TARGET", target.trim_end_matches('/'))
        .into_bytes())
}

fn structured_event(
    origin: String,
    mut item: serde_json::Value,
    target: &str,
) -> anyhow::Result<Outgoing> {
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    let id = match text(item.get("id")) {
        Some(id) if id.is_empty() => {
            bail!("{origin}: `id` is empty (leave it out for a fresh id per replay)")
        }
        Some(id) => id,
        None => {
            let id = fresh_id();
            item["id"] = serde_json::Value::String(id.clone());
            id
        }
    };
    Ok(Outgoing {
        meta: MessageMeta {
            message_id: id,
            ..MessageMeta::default()
        },
        data: with_target(&item, target)?,
        event: Some(OutgoingEvent {
            headers: vec![("content-type".to_owned(), STRUCTURED_JSON.to_owned())],
            event_type: text(item.get("type")).unwrap_or_else(|| "-".to_owned()),
        }),
        origin,
    })
}

fn binary_event(origin: String, event: FileEvent, target: &str) -> anyhow::Result<Outgoing> {
    let mut headers: BTreeMap<String, String> = event
        .headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    if !headers.keys().any(|k| k.starts_with("ce-")) {
        bail!("{origin}: `headers` has no ce-* header (ce-specversion, ce-type, ce-source)");
    }
    let id = match headers.get("ce-id") {
        Some(id) if id.is_empty() => {
            bail!("{origin}: `ce-id` is empty (leave it out for a fresh id per replay)")
        }
        Some(id) => id.clone(),
        None => {
            let id = fresh_id();
            headers.insert("ce-id".to_owned(), id.clone());
            id
        }
    };
    // A string body is sent as its text; any other JSON as JSON.
    let data = match event.body {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(text)) => text
            .replace("$TARGET", target.trim_end_matches('/'))
            .into_bytes(),
        Some(json) => with_target(&json, target)?,
    };
    Ok(Outgoing {
        meta: MessageMeta {
            message_id: id,
            ..MessageMeta::default()
        },
        data,
        event: Some(OutgoingEvent {
            event_type: headers
                .get("ce-type")
                .cloned()
                .unwrap_or_else(|| "-".to_owned()),
            headers: headers.into_iter().collect(),
        }),
        origin,
    })
}

fn to_outgoing(origin: String, message: FileMessage, target: &str) -> anyhow::Result<Outgoing> {
    let data = match message.data {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::String(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .with_context(|| format!("{origin}: `data` is a string, so it must be base64 (use a JSON object for JSON payloads)"))?,
        Some(json) => with_target(&json, target)?,
    };
    // Without an id of its own a message gets a fresh one on every replay, so
    // replaying a fixture runs it again instead of being deduplicated. An
    // empty id is refused here: the worker refuses an envelope without one,
    // so the message could never be delivered.
    let id = match message.message_id {
        Some(id) if id.is_empty() => {
            bail!("{origin}: `messageId` is empty (leave it out for a fresh id per replay)")
        }
        Some(id) => id,
        None => fresh_id(),
    };
    Ok(Outgoing {
        meta: MessageMeta {
            message_id: id,
            publish_time: message.publish_time,
            subscription: Some("projects/local/subscriptions/replay".to_owned()),
            attributes: message.attributes,
            ordering_key: message.ordering_key,
            delivery_attempt: None,
            unwrapped: false,
        },
        data,
        origin,
        event: None,
    })
}

/// Replays messages from files. Returns the summary; the caller decides the
/// exit code.
pub async fn replay_files(args: &ReplayArgs) -> anyhow::Result<Summary> {
    let messages = read_messages(&args.paths, &args.target)?;
    if args.dry_run {
        for m in &messages {
            let line = match &m.event {
                Some(event) => serde_json::json!({
                    "event": {
                        "headers": event.headers.iter().cloned().collect::<BTreeMap<_, _>>(),
                        "body": String::from_utf8_lossy(&m.data),
                    }
                }),
                None => wrap(&m.meta, &m.data),
            };
            #[allow(clippy::print_stdout)]
            {
                println!("{}", serde_json::to_string(&line)?);
            }
        }
        return Ok(Summary::default());
    }
    let tokens = Arc::new(TokenSource::for_target(args)?);
    let client = http_client(args)?;
    let progress = progress_bar(messages.len() as u64);
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(usize::from(args.concurrency)));
    let mut tasks = tokio::task::JoinSet::new();
    for message in messages {
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let (client, args, tokens, progress) = (
            client.clone(),
            args.clone(),
            Arc::clone(&tokens),
            progress.clone(),
        );
        tasks.spawn(async move {
            let result = deliver(&client, &args, &tokens, &message).await;
            progress.inc(1);
            drop(permit);
            result
        });
    }
    let mut summary = Summary::gather(tasks).await?;
    progress.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(value: serde_json::Value) -> FileMessage {
        serde_json::from_value(value).unwrap()
    }

    /// Regression (found by the property tests): an empty `messageId` made an
    /// envelope the worker refuses (no message id), so the message could
    /// never run; it is now refused when the file is read.
    #[test]
    fn an_empty_message_id_is_refused_when_read() {
        let err = to_outgoing(
            "f.json#0".into(),
            message(serde_json::json!({"messageId": ""})),
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("`messageId` is empty"), "{err}");
    }

    /// Both forms of a CloudEvent fixture: headers and a body, or
    /// structured JSON; each gets a fresh id when it has none.
    #[test]
    fn cloudevent_fixtures_are_read_in_both_forms() {
        let binary = read_item(
            "f.json#0".into(),
            serde_json::json!({
                "headers": {"ce-specversion": "1.0", "ce-type": "t", "ce-source": "s",
                    "Content-Type": "application/json"},
                "body": {"url": "$TARGET/x"},
            }),
            "http://w/",
        )
        .unwrap();
        let event = binary.event.unwrap();
        assert_eq!(event.event_type, "t");
        assert!(binary.meta.message_id.starts_with("replay-"));
        assert!(
            event
                .headers
                .contains(&("ce-id".to_owned(), binary.meta.message_id.clone()))
        );
        assert!(
            event
                .headers
                .contains(&("content-type".to_owned(), "application/json".to_owned()))
        );
        assert_eq!(binary.data, br#"{"url":"http://w/x"}"#);

        let structured = read_item(
            "f.json#1".into(),
            serde_json::json!({"specversion": "1.0", "id": "7", "type": "t", "source": "s", "data": {}}),
            "",
        )
        .unwrap();
        assert_eq!(structured.meta.message_id, "7");
        assert_eq!(structured.event.unwrap().headers[0].1, STRUCTURED_JSON);
        let err = read_item(
            "f.json#2".into(),
            serde_json::json!({"headers": {}, "body": 1}),
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no ce-* header"), "{err}");
    }

    #[test]
    fn a_message_without_an_id_gets_a_fresh_one() {
        let out = to_outgoing(
            "f.json#0".into(),
            message(serde_json::json!({"data": {"a": 1}})),
            "",
        )
        .unwrap();
        assert!(out.meta.message_id.starts_with("replay-"));
        let body = serde_json::to_vec(&wrap(&out.meta, &out.data)).unwrap();
        assert_eq!(
            crate::pubsub::parse_wrapped(&body).unwrap().data,
            br#"{"a":1}"#
        );
    }
}
