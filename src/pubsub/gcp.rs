//! Building google-cloud-pubsub clients for real Pub/Sub or the emulator.
//!
//! The crate ignores `PUBSUB_EMULATOR_HOST` (docs/platform-notes.md,
//! "Crates"), so every builder here is given the endpoint and, for the
//! emulator, anonymous credentials explicitly. Against real Pub/Sub the crate's default
//! credentials apply: Application Default Credentials locally, the runtime
//! service account on Cloud Run.

use std::time::Duration;

use anyhow::Context;
use google_cloud_auth::credentials::{Credentials, anonymous};
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::{
    client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin},
    error::PublishError,
    model::Message,
};

/// Where Pub/Sub is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PubsubTarget {
    /// `host:port` of the emulator; `None` for real Pub/Sub.
    pub emulator_host: Option<String>,
}

impl PubsubTarget {
    /// Reads `PUBSUB_EMULATOR_HOST` (empty means unset).
    pub fn from_env() -> Self {
        Self::new(std::env::var("PUBSUB_EMULATOR_HOST").ok())
    }

    /// The emulator at `host` (`host:port`), or real Pub/Sub for `None`.
    pub fn new(host: Option<String>) -> Self {
        Self {
            emulator_host: host
                .filter(|h| !h.trim().is_empty())
                .map(|h| h.trim().to_owned()),
        }
    }

    fn emulator(&self) -> Option<(String, Credentials)> {
        self.emulator_host.as_ref().map(|host| {
            let endpoint = if host.starts_with("http") {
                host.clone()
            } else {
                format!("http://{host}")
            };
            (endpoint, anonymous::Builder::new().build())
        })
    }

    /// A batching publisher for `topic` (`projects/P/topics/T`).
    pub async fn publisher(&self, topic: &str) -> anyhow::Result<Publisher> {
        let mut builder = Publisher::builder(topic.to_owned());
        if let Some((endpoint, creds)) = self.emulator() {
            builder = builder.with_endpoint(endpoint).with_credentials(creds);
        }
        builder
            .build()
            .await
            .with_context(|| format!("creating a publisher for {topic}"))
    }

    /// A streaming-pull subscriber client.
    pub async fn subscriber(&self) -> anyhow::Result<Subscriber> {
        let mut builder = Subscriber::builder();
        if let Some((endpoint, creds)) = self.emulator() {
            builder = builder.with_endpoint(endpoint).with_credentials(creds);
        }
        builder.build().await.context("creating a subscriber")
    }

    /// The topic admin client.
    pub async fn topic_admin(&self) -> anyhow::Result<TopicAdmin> {
        let mut builder = TopicAdmin::builder();
        if let Some((endpoint, creds)) = self.emulator() {
            builder = builder.with_endpoint(endpoint).with_credentials(creds);
        }
        builder
            .build()
            .await
            .context("creating a topic admin client")
    }

    /// The subscription admin client.
    pub async fn subscription_admin(&self) -> anyhow::Result<SubscriptionAdmin> {
        let mut builder = SubscriptionAdmin::builder();
        if let Some((endpoint, creds)) = self.emulator() {
            builder = builder.with_endpoint(endpoint).with_credentials(creds);
        }
        builder
            .build()
            .await
            .context("creating a subscription admin client")
    }
}

/// A kind of Pub/Sub resource, for checking and naming full resource names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `projects/P/topics/T`.
    Topic,
    /// `projects/P/subscriptions/S`.
    Subscription,
}

impl Resource {
    fn collection(self) -> &'static str {
        match self {
            Self::Topic => "topics",
            Self::Subscription => "subscriptions",
        }
    }

    /// `topic` or `subscription`.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Subscription => "subscription",
        }
    }

    /// Checks that `name` is a full resource name of this kind and returns it
    /// trimmed; the error says which shape is expected. Project ids and
    /// resource ids are at least 3 characters long.
    pub fn full_name(self, name: &str) -> Result<String, String> {
        let name = name.trim();
        let parts: Vec<&str> = name.split('/').collect();
        if parts.len() == 4
            && parts[0] == "projects"
            && parts[2] == self.collection()
            && parts[1].len() >= 3
            && parts[3].len() >= 3
        {
            Ok(name.to_owned())
        } else {
            Err(format!(
                "`{name}` is not a full {} name (projects/PROJECT/{}/{})",
                self.noun(),
                self.collection(),
                self.noun().to_uppercase()
            ))
        }
    }
}

/// Whether a Pub/Sub call failed because the resource does not exist.
pub fn is_not_found(error: &google_cloud_pubsub::Error) -> bool {
    error.status().is_some_and(|s| s.code == Code::NotFound)
}

/// Why a confirmed publish did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// No answer within the timeout.
    #[error("publish to {topic} timed out after {timeout:?}")]
    Timeout {
        /// The topic.
        topic: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The topic does not exist.
    #[error(
        "publish to {topic} failed: the topic does not exist (NOT_FOUND); check its project and name, and PUBSUB_EMULATOR_HOST"
    )]
    NotFound {
        /// The topic.
        topic: String,
    },
    /// Any other refusal.
    #[error("publish to {topic} failed: {source}")]
    Failed {
        /// The topic.
        topic: String,
        /// What the client said.
        source: PublishError,
    },
}

/// Publishes `message` and waits up to `timeout` for the server to confirm
/// it; returns the new message id. Only a confirmed publish may be followed by
/// an ack of the message it copies.
pub async fn publish_confirmed(
    publisher: &Publisher,
    topic: &str,
    message: Message,
    timeout: Duration,
) -> Result<String, PublishFailure> {
    confirm(publisher.publish(message), topic, timeout).await
}

/// Waits up to `timeout` for a publish already handed to the publisher, so a
/// caller can hand over several in order (ordering keys) and await them apart.
pub async fn confirm(
    publish: google_cloud_pubsub::publisher::PublishFuture,
    topic: &str,
    timeout: Duration,
) -> Result<String, PublishFailure> {
    match tokio::time::timeout(timeout, publish).await {
        Err(_) => Err(PublishFailure::Timeout {
            topic: topic.to_owned(),
            timeout,
        }),
        Ok(Ok(id)) => Ok(id),
        Ok(Err(PublishError::Rpc(e))) if is_not_found(&e) => Err(PublishFailure::NotFound {
            topic: topic.to_owned(),
        }),
        Ok(Err(source)) => Err(PublishFailure::Failed {
            topic: topic.to_owned(),
            source,
        }),
    }
}
