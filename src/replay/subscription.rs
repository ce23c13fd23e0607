//! Messages pulled from a subscription, acked on 2xx and nacked otherwise.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;

use crate::pubsub::{MessageMeta, gcp::PubsubTarget};

use super::{Outgoing, ReplayArgs, Summary, TokenSource, deliver, http_client};

/// Pulls from `--subscription` and delivers each message, acking on 2xx and
/// nacking otherwise, until `--max` messages or `--idle-timeout` seconds
/// without one.
pub async fn replay_subscription(args: &ReplayArgs, subscription: &str) -> anyhow::Result<Summary> {
    let target = PubsubTarget::new(args.emulator_host.clone());
    let subscriber = target.subscriber().await?;
    let mut stream = subscriber
        .subscribe(subscription.to_owned())
        .set_max_outstanding_messages(i64::from(args.concurrency))
        .set_shutdown_behavior(google_cloud_pubsub::subscriber::ShutdownBehavior::WaitForProcessing)
        .build();
    let shutdown = stream.shutdown_token();
    let tokens = Arc::new(TokenSource::for_target(args)?);
    let client = http_client(args)?;
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(usize::from(args.concurrency)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut received = 0usize;
    let idle = Duration::from_secs(args.idle_timeout);
    while args.max.is_none_or(|max| received < max) {
        let next = match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(next)) => next,
        };
        let (message, handler) = next.with_context(|| format!("pulling from {subscription}"))?;
        received += 1;
        let outgoing = Outgoing {
            meta: MessageMeta {
                message_id: message.message_id.clone(),
                publish_time: message
                    .publish_time
                    .as_ref()
                    .and_then(|t| serde_json::to_value(t).ok())
                    .and_then(|v| v.as_str().map(str::to_owned)),
                subscription: Some(subscription.to_owned()),
                attributes: message
                    .attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ordering_key: Some(message.ordering_key.clone()).filter(|k| !k.is_empty()),
                delivery_attempt: handler
                    .delivery_attempt()
                    .and_then(|a| u32::try_from(a).ok()),
                unwrapped: args.unwrapped,
            },
            data: message.data.to_vec(),
            origin: format!("{subscription}/{}", message.message_id),
            event: None,
        };
        let permit = Arc::clone(&semaphore).acquire_owned().await?;
        let (client, args, tokens) = (client.clone(), args.clone(), Arc::clone(&tokens));
        tasks.spawn(async move {
            let result = deliver(&client, &args, &tokens, &outgoing).await;
            match &result {
                Ok(d) if d.acked() => handler.ack(),
                _ => handler.nack(),
            }
            drop(permit);
            result
        });
    }
    let mut summary = Summary::gather(tasks).await?;
    // Let pending acks and nacks reach the server before returning.
    shutdown.shutdown().await;
    summary.elapsed = started.elapsed();
    Ok(summary)
}
