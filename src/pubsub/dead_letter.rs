//! Dead-lettering poison messages from the push path.
//!
//! When `DEAD_LETTER_TOPIC` is set, a permanent failure (undecodable data,
//! unknown job, payload that does not fit, a job's own permanent error) is
//! published to that topic with the original data and attributes plus
//! attributes saying why, and only once the publish is confirmed is the push
//! acknowledged. If the publish fails the push is nacked (503), so the message
//! is never lost: Pub/Sub redelivers and the next attempt tries again.
//!
//! The publisher is created once at start-up and flushed on shutdown.

use std::{collections::HashMap, time::Duration};

use google_cloud_pubsub::{client::Publisher, model::Message};

use super::{
    MessageMeta,
    gcp::{PubsubTarget, publish_confirmed},
};

/// Attributes added to a dead-lettered message.
pub mod attr {
    /// Machine-readable error kind (`invalid_payload`, `unknown_job`, …).
    pub const ERROR_KIND: &str = "pushworker.error_kind";
    /// Human-readable reason.
    pub const ERROR: &str = "pushworker.error";
    /// The job it was meant for, if known.
    pub const JOB: &str = "pushworker.job";
    /// The original message id.
    pub const MESSAGE_ID: &str = "pushworker.original_message_id";
    /// The subscription it came from.
    pub const SUBSCRIPTION: &str = "pushworker.subscription";
    /// The delivery attempt that gave up.
    pub const ATTEMPT: &str = "pushworker.delivery_attempt";
    /// The original publish time.
    pub const PUBLISH_TIME: &str = "pushworker.original_publish_time";
}

/// Why a message is being dead-lettered.
#[derive(Debug, Clone)]
pub struct Reason<'a> {
    /// Error kind.
    pub kind: &'a str,
    /// Error text.
    pub text: String,
    /// Job name, if known.
    pub job: Option<&'a str>,
}

/// The dead-letter publisher.
pub struct DeadLetter {
    topic: String,
    publisher: Publisher,
    timeout: Duration,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Largest attribute value Pub/Sub accepts is 1024 bytes; keep error text short.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl DeadLetter {
    /// Creates the publisher for `topic` (`projects/P/topics/T`).
    pub async fn new(
        target: &PubsubTarget,
        topic: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            topic: topic.to_owned(),
            publisher: target.publisher(topic).await?,
            timeout,
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes the message with the reason attributes and waits for the
    /// server's confirmation. Returns the dead-letter message id.
    pub async fn publish(
        &self,
        meta: &MessageMeta,
        data: &[u8],
        reason: &Reason<'_>,
    ) -> anyhow::Result<String> {
        let mut attributes: HashMap<String, String> = meta
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        attributes.insert(attr::ERROR_KIND.into(), reason.kind.to_owned());
        attributes.insert(attr::ERROR.into(), clip(&reason.text, 1000));
        attributes.insert(attr::MESSAGE_ID.into(), meta.message_id.clone());
        if let Some(job) = reason.job {
            attributes.insert(attr::JOB.into(), job.to_owned());
        }
        if let Some(sub) = &meta.subscription {
            attributes.insert(attr::SUBSCRIPTION.into(), sub.clone());
        }
        if let Some(t) = &meta.publish_time {
            attributes.insert(attr::PUBLISH_TIME.into(), t.clone());
        }
        attributes.insert(
            attr::ATTEMPT.into(),
            meta.delivery_attempt.unwrap_or(1).to_string(),
        );
        let message = Message::new()
            .set_data(data.to_vec())
            .set_attributes(attributes);
        Ok(publish_confirmed(&self.publisher, &self.topic, message, self.timeout).await?)
    }

    /// Sends whatever is still buffered (call on shutdown).
    pub async fn flush(&self) {
        self.publisher.flush().await;
    }
}
