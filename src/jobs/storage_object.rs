//! `storage-object`: a Cloud Storage object event (`google.cloud.storage.object.v1.*`,
//! delivered by Eventarc to `POST /events`), answered with the object it
//! names. The example of an event job: the payload is the event's data
//! ([`StorageObjectData`], the shape Google publishes for these events), and
//! the event's own context (type, subject, time) is in
//! [`JobContext::event`]. Start from this file to write one that does real
//! work (resize an image, index a document).
//!
//! Routed by `EVENT_ROUTES` (by default every `google.cloud.storage.object.v1.*`
//! event runs it). It may also run by hand (`POST /jobs/storage-object` with
//! the same JSON), without an event.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Job, JobContext, JobError};

/// The type prefix of the events this job handles.
pub const EVENT_TYPE_PREFIX: &str = "google.cloud.storage.object.v1.";

/// Answers a Cloud Storage object event with the object it names.
#[derive(Debug, Clone, Copy)]
pub struct StorageObject;

/// Customer-supplied encryption of an object.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerEncryption {
    /// The algorithm (`AES256`).
    pub encryption_algorithm: Option<String>,
    /// SHA-256 of the key, base64.
    pub key_sha256: Option<String>,
}

/// An object's metadata, as Cloud Storage's events carry it (JSON names as
/// Google writes them; 64-bit numbers are strings, as in all of Google's
/// JSON). Fields this type does not name are kept in `other`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageObjectData {
    /// The bucket.
    pub bucket: String,
    /// The object's name (its path in the bucket).
    pub name: String,
    /// The content generation (a 64-bit number, as a string).
    pub generation: Option<String>,
    /// The metadata generation (a 64-bit number, as a string).
    pub metageneration: Option<String>,
    /// `Content-Type` of the object.
    pub content_type: Option<String>,
    /// Size in bytes (a 64-bit number, as a string).
    pub size: Option<String>,
    /// MD5 of the data, base64.
    pub md5_hash: Option<String>,
    /// CRC32C of the data, base64.
    pub crc32c: Option<String>,
    /// When it was created (RFC 3339).
    pub time_created: Option<String>,
    /// When its metadata last changed (RFC 3339).
    pub updated: Option<String>,
    /// When it was deleted (RFC 3339), on deletion and archive events.
    pub time_deleted: Option<String>,
    /// `STANDARD`, `NEARLINE`, …
    pub storage_class: Option<String>,
    /// When the storage class last changed.
    pub time_storage_class_updated: Option<String>,
    /// `storage#object`.
    pub kind: Option<String>,
    /// `bucket/name/generation`.
    pub id: Option<String>,
    /// The object's API link.
    pub self_link: Option<String>,
    /// The object's download link.
    pub media_link: Option<String>,
    /// HTTP entity tag.
    pub etag: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// User metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Number of components, for composite objects.
    pub component_count: Option<u32>,
    /// Cloud KMS key that encrypts the object.
    pub kms_key_name: Option<String>,
    /// Customer-supplied encryption, if any.
    pub customer_encryption: Option<CustomerEncryption>,
    /// Event-based hold.
    pub event_based_hold: Option<bool>,
    /// Temporary hold.
    pub temporary_hold: Option<bool>,
    /// End of the retention period (RFC 3339).
    pub retention_expiration_time: Option<String>,
    /// Anything else the event carried.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// What a run answers: the object, and the event that named it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, JsonSchema)]
pub struct StorageObjectOutput {
    /// `gs://bucket/name`.
    pub object: String,
    /// The bucket.
    pub bucket: String,
    /// The object's name.
    pub name: String,
    /// Its generation, when sent.
    pub generation: Option<String>,
    /// Its size in bytes, when sent.
    pub size_bytes: Option<u64>,
    /// Its `Content-Type`, when sent.
    pub content_type: Option<String>,
    /// What happened (`finalized`, `deleted`, `archived`,
    /// `metadataUpdated`): the event type's last part; absent when run by
    /// hand.
    pub action: Option<String>,
    /// The event's id, when run for one.
    pub event_id: Option<String>,
}

impl Job for StorageObject {
    const NAME: &'static str = "storage-object";
    const DESCRIPTION: &'static str =
        "Example event job: answers a Cloud Storage object event with the object it names.";
    type Payload = StorageObjectData;
    type Output = StorageObjectOutput;

    fn output_schema() -> Option<schemars::Schema> {
        Some(schemars::schema_for!(StorageObjectOutput))
    }

    async fn run(
        &self,
        object: StorageObjectData,
        ctx: JobContext,
    ) -> Result<StorageObjectOutput, JobError> {
        let event = ctx.event.as_deref();
        // A route sending other events here is a mistake a retry cannot fix.
        if let Some(event) = event
            && !event.event_type.starts_with(EVENT_TYPE_PREFIX)
        {
            return Err(JobError::Permanent(format!(
                "storage-object handles {EVENT_TYPE_PREFIX}* events, not `{}`: fix EVENT_ROUTES",
                event.event_type
            )));
        }
        let size_bytes = object
            .size
            .as_deref()
            .map(|s| {
                s.parse::<u64>().map_err(|_| {
                    JobError::Permanent(format!("size `{s}` is not a number of bytes"))
                })
            })
            .transpose()?;
        let output = StorageObjectOutput {
            object: format!("gs://{}/{}", object.bucket, object.name),
            action: event
                .and_then(|e| e.event_type.strip_prefix(EVENT_TYPE_PREFIX))
                .map(str::to_owned),
            event_id: event.map(|e| e.id.clone()),
            bucket: object.bucket,
            name: object.name,
            generation: object.generation,
            size_bytes,
            content_type: object.content_type,
        };
        // Debug: the request line already carries the job, event and run.
        tracing::debug!(
            object = output.object.as_str(),
            action = output.action.as_deref(),
            "storage object event"
        );
        Ok(output)
    }
}
