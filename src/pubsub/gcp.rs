//! Building google-cloud-pubsub clients for real Pub/Sub or the emulator.
//!
//! The crate ignores `PUBSUB_EMULATOR_HOST` (docs/platform-notes.md,
//! "Crates"), so every builder here is given the endpoint and, for the
//! emulator, anonymous credentials explicitly. Against real Pub/Sub the crate's default
//! credentials apply: Application Default Credentials locally, the runtime
//! service account on Cloud Run.

use anyhow::Context;
use google_cloud_auth::credentials::{Credentials, anonymous};
use google_cloud_pubsub::client::{Publisher, Subscriber, SubscriptionAdmin, TopicAdmin};

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
