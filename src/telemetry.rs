//! Logging: readable text locally; on Cloud Run (or with `LOG_FORMAT=json`)
//! one JSON object per line on stdout in Cloud Logging's structured format.
//!
//! The JSON layer writes `severity`, `message`, `time`, the fields of the
//! event and of every enclosing span (so each line of a run carries its job,
//! message id, delivery attempt, run id and principal kind), and:
//! - `logging.googleapis.com/trace` = `projects/P/traces/T` and
//!   `logging.googleapis.com/spanId`, from the request's `traceparent` or
//!   `X-Cloud-Trace-Context` (see [`trace_context`]), so a request's lines
//!   group under its trace in the Logs Explorer;
//! - `httpRequest` for the one request line each request writes (fields named
//!   `http.*`), which Cloud Logging shows as a request log.
//!
//! Nothing here logs headers or bodies; tokens never reach a log line.
//! `RUST_LOG` filters (default `info`).

use std::{
    io::Write as _,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{LevelFilter, Targets},
    fmt,
    layer::Context,
    prelude::*,
    registry::LookupSpan,
};

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, from `main`.
///
/// `RUST_LOG` of levels and targets (`info`, `warn,pushworker=debug`), the
/// usual case, is read as a static [`Targets`] filter; only a spec that needs
/// more (span or field directives) gets an [`EnvFilter`], which costs on
/// every entry into a span, i.e. on every poll of every request.
pub fn init(format: LogFormat, project_id: Option<String>) {
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (targets, env_filter) = filter(&spec);
    let registry = tracing_subscriber::registry()
        .with(targets)
        .with(env_filter);
    match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).init(),
        LogFormat::Json => registry.with(CloudLogging { project_id }).init(),
    }
}

/// The filter for a `RUST_LOG` spec: `info` when it is empty or unreadable.
fn filter(spec: &str) -> (Option<Targets>, Option<EnvFilter>) {
    let info = || (Some(Targets::new().with_default(LevelFilter::INFO)), None);
    let spec = spec.trim();
    if spec.is_empty() {
        return info();
    }
    if let Ok(targets) = spec.parse::<Targets>() {
        return (Some(targets), None);
    }
    match EnvFilter::try_new(spec) {
        Ok(env) => (None, Some(env)),
        Err(_) => info(),
    }
}

/// Reads the trace and span ids of a request: W3C `traceparent`
/// (`00-TRACE-SPAN-FLAGS`, hex span) first, else `X-Cloud-Trace-Context`
/// (`TRACE/SPAN;o=1`, decimal span). Returns the 32-hex trace id and the
/// 16-hex span id, either of which may be absent; malformed values are
/// ignored.
pub fn trace_context(headers: &axum::http::HeaderMap) -> (Option<String>, Option<String>) {
    let is_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        if parts.len() == 4
            && is_hex(parts[1], 32)
            && is_hex(parts[2], 16)
            && parts[1] != "0".repeat(32)
        {
            return (
                Some(parts[1].to_ascii_lowercase()),
                Some(parts[2].to_ascii_lowercase()),
            );
        }
    }
    if let Some(xc) = headers
        .get("x-cloud-trace-context")
        .and_then(|v| v.to_str().ok())
    {
        let (trace, rest) = xc.trim().split_once('/').unwrap_or((xc.trim(), ""));
        let trace = trace.split(';').next().unwrap_or_default();
        if is_hex(trace, 32) {
            let span = rest
                .split(';')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .map(|s| format!("{s:016x}"));
            return (Some(trace.to_ascii_lowercase()), span);
        }
    }
    (None, None)
}

/// The Cloud Logging JSON layer.
struct CloudLogging {
    project_id: Option<String>,
}

/// Fields recorded on a span, kept in its extensions. Field names are
/// static, so only the values allocate.
struct SpanFields(Vec<(&'static str, Value)>);

/// Collects fields; a later value of the same name replaces an earlier one
/// (an event's own fields override its spans', inner spans outer ones).
struct JsonVisitor<'a>(&'a mut Vec<(&'static str, Value)>);

impl JsonVisitor<'_> {
    fn put(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field.name(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field.name(), Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field.name(), Value::from(format!("{value:?}")));
    }
}

fn severity(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "ERROR",
        tracing::Level::WARN => "WARNING",
        tracing::Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

/// RFC 3339 UTC time with microseconds, without a date crate.
#[cfg(test)]
fn rfc3339(now: SystemTime) -> String {
    let mut out = Vec::new();
    let _ = write_rfc3339(&mut out, now);
    String::from_utf8(out).unwrap_or_default()
}

/// Writes RFC 3339 UTC time with microseconds.
fn write_rfc3339(out: &mut Vec<u8>, now: SystemTime) -> std::io::Result<()> {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

impl<S> Layer<S> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(fields));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<SpanFields>()
        {
            values.record(&mut JsonVisitor(&mut fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // The spans' fields are borrowed, not copied, while the line is
        // written: their extensions stay locked for that long.
        let spans: Vec<_> = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: Vec<_> = spans.iter().map(|span| span.extensions()).collect();
        let mut own = Vec::with_capacity(8);
        event.record(&mut JsonVisitor(&mut own));
        let mut fields: Vec<(&'static str, &Value)> = Vec::with_capacity(24);
        let span_fields = extensions
            .iter()
            .filter_map(|e| e.get::<SpanFields>())
            .flat_map(|f| f.0.iter());
        // A later value of a name replaces an earlier one: inner spans
        // outer ones, the event's own fields its spans'.
        for (name, value) in span_fields.chain(own.iter()) {
            match fields.iter_mut().find(|(k, _)| k == name) {
                Some(slot) => slot.1 = value,
                None => fields.push((name, value)),
            }
        }
        LINE.with(|line| {
            // Reused per thread: a line costs no allocation of its own.
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            if self.write_line(&mut line, event, fields).is_ok() {
                let _ = std::io::stdout().lock().write_all(&line);
            }
        });
    }
}

thread_local! {
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl CloudLogging {
    /// One Cloud Logging line: severity, time, message, trace, span id,
    /// `httpRequest` (the `http.*` fields), target, then the other fields.
    fn write_line(
        &self,
        out: &mut Vec<u8>,
        event: &Event<'_>,
        mut fields: Vec<(&'static str, &Value)>,
    ) -> std::io::Result<()> {
        fn take<'v>(fields: &mut Vec<(&'static str, &'v Value)>, name: &str) -> Option<&'v Value> {
            let at = fields.iter().position(|(k, _)| *k == name)?;
            Some(fields.remove(at).1)
        }
        out.extend_from_slice(b"{\"severity\":\"");
        out.extend_from_slice(severity(event.metadata().level()).as_bytes());
        out.extend_from_slice(b"\",\"time\":\"");
        write_rfc3339(out, SystemTime::now())?;
        out.extend_from_slice(b"\",\"message\":");
        match take(&mut fields, "message") {
            Some(message) => serde_json::to_writer(&mut *out, message)?,
            None => out.extend_from_slice(b"\"\""),
        }
        if let Some(Value::String(trace)) = take(&mut fields, "trace_id") {
            out.extend_from_slice(b",\"logging.googleapis.com/trace\":");
            match &self.project_id {
                Some(p) => {
                    serde_json::to_writer(&mut *out, &format!("projects/{p}/traces/{trace}"))?
                }
                None => serde_json::to_writer(&mut *out, &trace)?,
            }
        }
        if let Some(span_id) = take(&mut fields, "span_id") {
            out.extend_from_slice(b",\"logging.googleapis.com/spanId\":");
            serde_json::to_writer(&mut *out, span_id)?;
        }
        let mut http = fields
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("http.")?, v)))
            .peekable();
        if http.peek().is_some() {
            out.extend_from_slice(b",\"httpRequest\":{");
            for (i, (name, value)) in http.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, name)?;
                out.push(b':');
                serde_json::to_writer(&mut *out, value)?;
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"target\":");
        serde_json::to_writer(&mut *out, event.metadata().target())?;
        for (name, value) in fields.iter().filter(|(k, _)| !k.starts_with("http.")) {
            out.push(b',');
            serde_json::to_writer(&mut *out, name)?;
            out.push(b':');
            serde_json::to_writer(&mut *out, value)?;
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    #[test]
    fn trace_context_from_both_header_formats() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_context(&h),
            (
                Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
                Some("00f067aa0ba902b7".into())
            )
        );
        let mut h = HeaderMap::new();
        h.insert(
            "x-cloud-trace-context",
            "105445aa7843bc8bf206b12000100000/1;o=1".parse().unwrap(),
        );
        assert_eq!(
            trace_context(&h),
            (
                Some("105445aa7843bc8bf206b12000100000".into()),
                Some("0000000000000001".into())
            )
        );
        let mut h = HeaderMap::new();
        h.insert("traceparent", "garbage".parse().unwrap());
        assert_eq!(trace_context(&h), (None, None));
    }

    /// Levels and targets get the static filter; span directives need
    /// EnvFilter; nothing, or nonsense, is `info`.
    #[test]
    fn rust_log_picks_the_cheapest_filter_that_reads_it() {
        let is_targets = |spec: &str| matches!(filter(spec), (Some(_), None));
        assert!(is_targets(""));
        assert!(is_targets("warn"));
        assert!(is_targets("info,pushworker=debug,hyper=warn"));
        assert!(matches!(
            filter("[request{job=echo}]=debug"),
            (None, Some(_))
        ));
        let (targets, env) = filter("pushworker=notalevel[");
        assert!(env.is_none());
        let targets = targets.unwrap();
        assert!(targets.would_enable("pushworker", &tracing::Level::INFO));
        assert!(!targets.would_enable("pushworker", &tracing::Level::DEBUG));
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_872_896 - 7200);
        assert_eq!(rfc3339(t), "2026-11-28T11:34:56.000000Z");
    }
}
