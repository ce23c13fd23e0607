//! `GET /runs/stats`: the run ledger summed up for the admin page's
//! Overview, for the same callers as `GET /runs` (Clerk users with the view
//! or trigger permission).
//!
//! `GET /runs/stats?since=&bucket=` answers, per bucket of `bucket` (`30s`,
//! `1m`, `5m`, `1h`, `1d`: a whole number and a unit) from `since` (RFC 3339,
//! default an hour ago) to now, per job and status: how many runs started,
//! and the median and 95th percentile of their durations. `since` is rounded
//! down to a multiple of the bucket since the Unix epoch, so every bucket is
//! whole and a chart's buckets stay put from one refresh to the next. A
//! query of more than [`MAX_BUCKETS`] buckets is a 400, as is a `since` not
//! in the past.

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    AppState, Error,
    extract::CanViewRuns,
    openapi::responses::{BadRequest, Forbidden, Unauthorized, Unavailable},
    runs::{invalid, only, rfc3339},
};
use crate::runs::{StatsBucket, StatsQuery, now_micros};

/// Most buckets one answer may have (a day of minutes).
pub const MAX_BUCKETS: i128 = 1440;
/// Longest bucket.
const MAX_BUCKET_SECS: i64 = 7 * 86_400;
/// The range when `since` is not given.
const DEFAULT_RANGE: Duration = Duration::from_secs(3600);
/// The bucket when `bucket` is not given.
const DEFAULT_BUCKET_SECS: i64 = 60;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stats))
}

/// Runs per bucket, job and status.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct RunStats {
    /// The first bucket's start: `since`, rounded down to a multiple of
    /// `bucket_secs` since the Unix epoch.
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
    /// The end of the range (now): the last bucket is still filling.
    #[serde(with = "time::serde::rfc3339")]
    until: OffsetDateTime,
    /// Each bucket's length in seconds.
    bucket_secs: u64,
    /// One entry per bucket, job and status that had runs, ordered by
    /// `start`, `job`, `status`; a combination that is missing had none.
    buckets: Vec<StatsBucket>,
}

/// Reads `30s`, `5m`, `1h`, `1d` as seconds.
fn bucket_secs(text: &str) -> Option<i64> {
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    number
        .checked_mul(scale)
        .filter(|secs| (1..=MAX_BUCKET_SECS).contains(secs))
}

/// Validates the query string into a [`StatsQuery`], as of `now`.
fn parse_query(params: &HashMap<String, String>, now: OffsetDateTime) -> Result<StatsQuery, Error> {
    only(params, &["since", "bucket"])?;
    let text = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let bucket = match text("bucket") {
        None => DEFAULT_BUCKET_SECS,
        Some(v) => bucket_secs(v).ok_or_else(|| {
            invalid(
                "bucket must be a whole number and a unit (s, m, h or d), such as 1m, 5m or 1h, from 1s to 7d"
                    .to_owned(),
            )
        })?,
    };
    let since = match text("since") {
        None => now - DEFAULT_RANGE,
        Some(v) => rfc3339("since", v)?,
    };
    if since >= now {
        return Err(invalid("since must be in the past".to_owned()));
    }
    let start = since.unix_timestamp().div_euclid(bucket) * bucket;
    let since = OffsetDateTime::from_unix_timestamp(start)
        .map_err(|_| invalid("since is out of range".to_owned()))?;
    // The last bucket counts even when it has only just begun.
    let span = (now - since).whole_nanoseconds();
    let bucket_nanos = i128::from(bucket) * 1_000_000_000;
    let buckets = span / bucket_nanos + i128::from(span % bucket_nanos > 0);
    if buckets > MAX_BUCKETS {
        return Err(invalid(format!(
            "since and bucket make {buckets} buckets; at most {MAX_BUCKETS}: use a larger bucket or a later since"
        )));
    }
    Ok(StatsQuery {
        since,
        until: now,
        bucket: Duration::from_secs(bucket.unsigned_abs()),
    })
}

/// Runs per bucket, job and status: count, median and 95th percentile
/// duration.
#[utoipa::path(
    get,
    path = "/runs/stats",
    tag = "runs",
    operation_id = "run_stats",
    params(
        ("since" = Option<String>, Query, format = DateTime, description = "Start of the range (RFC 3339; default an hour ago), rounded down to a multiple of the bucket. Must be in the past."),
        ("bucket" = Option<String>, Query, pattern = "^[0-9]+[smhd]$", description = "Bucket length: a whole number and a unit, `s`, `m`, `h` or `d` (default `1m`; 1s to 7d). At most 1440 buckets."),
    ),
    security(("clerk_session" = [])),
    responses(
        (status = 200, description = "Runs per bucket, job and status.", body = RunStats),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 503, response = Unavailable),
    ),
)]
#[tracing::instrument(skip_all, fields(principal = %principal.kind()))]
async fn stats(
    State(state): State<AppState>,
    CanViewRuns(principal): CanViewRuns,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<RunStats>, Error> {
    let Query(params) =
        params.map_err(|_| invalid("the query string could not be decoded".to_owned()))?;
    let query = parse_query(&params, now_micros())?;
    let (since, until, bucket_secs) = (query.since, query.until, query.bucket.as_secs());
    let buckets = state.runs.stats(query).await?;
    Ok(Json(RunStats {
        since,
        until,
        bucket_secs,
        buckets,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)], now: OffsetDateTime) -> Result<StatsQuery, String> {
        let params = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        parse_query(&params, now).map_err(|e| e.to_string())
    }

    #[test]
    fn buckets_read_a_number_and_a_unit() {
        for (text, secs) in [
            ("1s", Some(1)),
            ("90s", Some(90)),
            ("5m", Some(300)),
            ("1h", Some(3600)),
            ("7d", Some(604_800)),
            ("8d", None),
            ("0m", None),
            ("-1m", None),
            ("1", None),
            ("m", None),
            ("1.5m", None),
            ("1w", None),
            ("1é", None),
            ("", None),
        ] {
            assert_eq!(bucket_secs(text), secs, "{text}");
        }
    }

    /// `since` goes down to a bucket boundary; the bucket count is capped.
    #[test]
    fn since_is_aligned_and_the_buckets_capped() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_130).unwrap();
        let q = query(&[], now).unwrap();
        assert_eq!(q.since.unix_timestamp(), 1_800_000_130 - 3600 - 10);
        assert_eq!(q.bucket, Duration::from_secs(60));
        assert_eq!(q.until, now);
        let q = query(&[("bucket", "1h"), ("since", "2027-01-15T06:10:00Z")], now).unwrap();
        assert_eq!(q.since.unix_timestamp() % 3600, 0);
        let day_of_seconds = [("bucket", "1s"), ("since", "2027-01-15T07:00:00Z")];
        assert!(
            query(&day_of_seconds, now)
                .unwrap_err()
                .contains("at most 1440")
        );
        assert!(
            query(&[("since", "2027-01-15T08:30:00Z")], now)
                .unwrap_err()
                .contains("in the past")
        );
    }
}
