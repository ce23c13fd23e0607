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

/// Where a field's value sits in a [`Fields`] buffer.
type Slot = (&'static str, std::ops::Range<usize>);

/// Fields as JSON text: each value is written as JSON once, when it is
/// recorded, into one buffer; `slots` says where each one is. A span keeps
/// its fields this way in its extensions, so a line copies bytes instead of
/// re-serialising values, and recording a field costs no allocation of its
/// own (a push's request span is recorded seven times).
#[derive(Default)]
struct Fields {
    json: Vec<u8>,
    slots: smallvec::SmallVec<[Slot; 12]>,
}

impl Fields {
    fn with_capacity(bytes: usize) -> Self {
        Self {
            json: Vec::with_capacity(bytes),
            slots: smallvec::SmallVec::new(),
        }
    }

    fn clear(&mut self) {
        self.json.clear();
        self.slots.clear();
    }

    /// The JSON text of `name`'s value, if recorded.
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.slots
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, range)| &self.json[range.clone()])
    }

    /// Records a value written by `write`: a later value of the same name
    /// replaces an earlier one, whose text is cut out of the buffer (a span
    /// that records one field over and over does not grow).
    fn put(&mut self, name: &'static str, write: impl FnOnce(&mut Vec<u8>)) {
        if let Some(at) = self.slots.iter().position(|(k, _)| *k == name) {
            let (_, old) = self.slots.remove(at);
            self.json.drain(old.clone());
            for (_, range) in &mut self.slots {
                if range.start >= old.end {
                    *range = range.start - old.len()..range.end - old.len();
                }
            }
        }
        let start = self.json.len();
        write(&mut self.json);
        self.slots.push((name, start..self.json.len()));
    }
}

/// Writes a JSON string's contents (without the quotes), escaped, from
/// `Display` or `Debug` output: no intermediate `String`.
struct JsonEscaper<'a>(&'a mut Vec<u8>);

/// The length of `bytes`' prefix that JSON needs no escape in (no `"`, `\\`
/// or control character), eight bytes at a time: log lines are mostly such
/// text, and a byte-at-a-time check was most of the cost of writing one.
fn clean_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Nonzero where a byte of `x` is zero (exact in its lowest such byte,
    // which is all that decides here: the scan stops at the first word hit).
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word);
        // Bytes below 0x20 have their top three bits clear.
        let control = zero_byte(x & u64::from_ne_bytes([0xe0; 8]));
        let quote = zero_byte(x ^ u64::from_ne_bytes([b'"'; 8]));
        let backslash = zero_byte(x ^ u64::from_ne_bytes([b'\\'; 8]));
        if control | quote | backslash != 0 {
            break;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .unwrap_or(bytes.len() - at)
}

impl std::fmt::Write for JsonEscaper<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let out = &mut *self.0;
        let bytes = s.as_bytes();
        let start = clean_prefix(bytes);
        out.extend_from_slice(&bytes[..start]);
        let mut clean = start;
        for (i, &b) in bytes.iter().enumerate().skip(start) {
            let escape: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..0x20 => &[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ],
                _ => continue,
            };
            out.extend_from_slice(&bytes[clean..i]);
            out.extend_from_slice(escape);
            clean = i + 1;
        }
        out.extend_from_slice(&bytes[clean..]);
        Ok(())
    }
}

/// `value`'s `Display` as a JSON string.
fn write_display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    use std::fmt::Write as _;
    out.push(b'"');
    let _ = write!(JsonEscaper(out), "{value}");
    out.push(b'"');
}

/// `value` as a JSON string, without going through `fmt`.
fn write_str(out: &mut Vec<u8>, value: &str) {
    out.push(b'"');
    let _ = std::fmt::Write::write_str(&mut JsonEscaper(out), value);
    out.push(b'"');
}

/// Collects fields into a [`Fields`].
struct JsonVisitor<'a>(&'a mut Fields);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.put(field.name(), |out| write_str(out, value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.put(field.name(), |out| {
            out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        });
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.put(field.name(), |out| {
            out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        });
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.put(field.name(), |out| {
            out.extend_from_slice(if value { b"true" } else { b"false" });
        });
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.put(field.name(), |out| {
            // JSON has no NaN or infinity.
            if value.is_finite() {
                let _ = write!(out, "{value}");
            } else {
                out.extend_from_slice(b"null");
            }
        });
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.put(field.name(), |out| write_display(out, value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        struct AsDisplay<'a>(&'a dyn std::fmt::Debug);
        impl std::fmt::Display for AsDisplay<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
        self.0
            .put(field.name(), |out| write_display(out, AsDisplay(value)));
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

/// Writes RFC 3339 UTC time with microseconds (digits by hand: `write!`
/// costs more than the rest of the line's fixed parts).
fn write_rfc3339(out: &mut Vec<u8>, now: SystemTime) -> std::io::Result<()> {
    /// `n`'s last `width` decimal digits, zero-padded.
    fn digits(out: &mut Vec<u8>, n: u64, width: u32) {
        for place in (0..width).rev() {
            out.push(b'0' + (n / 10u64.pow(place) % 10) as u8);
        }
    }
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
    if !(0..=9999).contains(&year) {
        return Err(std::io::Error::other("year out of RFC 3339's range"));
    }
    // All in range now: year 0..=9999, the rest small and non-negative.
    let [year, month, day, rem] = [year, month, day, rem].map(|n| n.unsigned_abs());
    digits(out, year, 4);
    out.push(b'-');
    digits(out, month, 2);
    out.push(b'-');
    digits(out, day, 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, rem % 3600 / 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    out.push(b'.');
    digits(out, u64::from(d.subsec_micros()), 6);
    out.push(b'Z');
    Ok(())
}

impl<S> Layer<S> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        // Room for a request span's fields once recorded (about 200 bytes).
        let mut fields = Fields::with_capacity(256);
        attrs.record(&mut JsonVisitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(&mut JsonVisitor(fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // The spans' fields are read in place while the line is written:
        // their extensions stay locked for that long.
        let spans: smallvec::SmallVec<[_; 8]> = ctx
            .event_scope(event)
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: smallvec::SmallVec<[_; 8]> =
            spans.iter().map(|span| span.extensions()).collect();
        SCRATCH.with(|scratch| {
            // Reused per thread: a line costs no allocation of its own.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return;
            };
            let Scratch { pending, own } = &mut *scratch;
            own.clear();
            event.record(&mut JsonVisitor(own));
            // Outer spans first, the event's own fields last: a later
            // source's value of a name replaces an earlier one's.
            let mut sources: smallvec::SmallVec<[&Fields; 8]> = extensions
                .iter()
                .filter_map(|e| e.get::<Fields>())
                .collect();
            sources.push(own);
            let now = SystemTime::now();
            let start = pending.bytes.len();
            if self
                .write_line(&mut pending.bytes, event, &sources, now)
                .is_err()
            {
                pending.bytes.truncate(start);
                return;
            }
            let urgent = matches!(
                *event.metadata().level(),
                tracing::Level::ERROR | tracing::Level::WARN
            );
            if pending.due(urgent, now) {
                pending.write_to(&mut std::io::stdout().lock());
            }
        });
    }
}

/// Per-thread buffers for writing a line.
#[derive(Default)]
struct Scratch {
    pending: Pending,
    own: Fields,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// How many bytes of lines a worker thread holds before it writes them.
const BATCH_BYTES: usize = 16 * 1024;
/// How long a worker thread holds its oldest unwritten line, at most, while
/// it keeps logging.
const BATCH_HOLD: std::time::Duration = std::time::Duration::from_millis(20);

/// Lines this thread has written but not yet handed to stdout.
///
/// Why: on a platform, stdout is a pipe to a log collector, and one `write`
/// per line woke the collector once per request, which cost pushes both
/// throughput and CPU when stdout is a drained pipe (`STDOUT=pipe
/// scripts/bench-ab.sh` compares two builds; on /dev/null they do not differ). A runtime worker thread (one the
/// runtime has parked at least once, see [`flush_worker`]) keeps its `info`
/// and `debug` lines here and writes them in one call when it goes idle,
/// when they reach [`BATCH_BYTES`], or when the oldest is [`BATCH_HOLD`] old
/// as another line comes. A `warning` or `error` line is written at once,
/// with every line before it, so what explains a failure is never held
/// back; any other thread (start-up, shutdown, blocking tasks) writes each
/// line at once. Lines are whole in every write, and a thread's lines keep
/// their order.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// When the oldest held line was written.
    since: Option<SystemTime>,
    /// Whether this thread holds lines at all: set by [`flush_worker`].
    batching: bool,
}

impl Pending {
    /// A line was just appended at `now`: whether what is held must be
    /// written now.
    fn due(&mut self, urgent: bool, now: SystemTime) -> bool {
        let since = *self.since.get_or_insert(now);
        // A clock that steps back counts as due.
        let held_too_long = now.duration_since(since).map_or(true, |d| d >= BATCH_HOLD);
        !self.batching || urgent || self.bytes.len() >= BATCH_BYTES || held_too_long
    }

    /// Writes every held line to `out` (stdout, locked), in one call.
    fn write_to(&mut self, out: &mut impl std::io::Write) {
        if !self.bytes.is_empty() {
            let _ = out.write_all(&self.bytes);
            self.bytes.clear();
            // A huge line once should not keep its buffer for good.
            if self.bytes.capacity() > 4 * BATCH_BYTES {
                self.bytes.shrink_to(BATCH_BYTES);
            }
        }
        self.since = None;
    }
}

/// A thread that ends without its runtime's stop hook still writes its lines.
impl Drop for Pending {
    fn drop(&mut self) {
        self.write_to(&mut std::io::stdout().lock());
    }
}

/// Writes the lines this thread holds; from now on the thread holds its
/// `info` and `debug` lines until it goes idle (see [`Pending`]).
///
/// For the runtime's `on_thread_park` and `on_thread_stop` hooks, which
/// only its worker threads call: a worker calls it each time it runs out of
/// work, so at low load every line is written as soon as its request is
/// done, and under load a worker writes its lines in batches.
pub fn flush_worker() {
    SCRATCH.with(|scratch| {
        if let Ok(mut scratch) = scratch.try_borrow_mut() {
            scratch.pending.batching = true;
            scratch.pending.write_to(&mut std::io::stdout().lock());
        }
    });
}

/// The value of `name` as the line shows it: the last source's that has it.
fn last<'a>(sources: &[&'a Fields], name: &str) -> Option<&'a [u8]> {
    sources.iter().rev().find_map(|f| f.get(name))
}

/// Every field once, in order, with the value that wins (see [`last`]).
fn winners<'a>(sources: &'a [&'a Fields]) -> impl Iterator<Item = (&'static str, &'a [u8])> {
    sources.iter().enumerate().flat_map(move |(i, fields)| {
        fields
            .slots
            .iter()
            .filter(move |(name, _)| sources[i + 1..].iter().all(|f| f.get(name).is_none()))
            .map(|(name, range)| (*name, &fields.json[range.clone()]))
    })
}

/// Writes `"name":` with `name` escaped as a JSON string.
fn write_key(out: &mut Vec<u8>, name: &str) {
    write_str(out, name);
    out.push(b':');
}

impl CloudLogging {
    /// One Cloud Logging line: severity, time, message, trace, span id,
    /// `httpRequest` (the `http.*` fields), target, then the other fields.
    fn write_line(
        &self,
        out: &mut Vec<u8>,
        event: &Event<'_>,
        sources: &[&Fields],
        now: SystemTime,
    ) -> std::io::Result<()> {
        const SPECIAL: [&str; 3] = ["message", "trace_id", "span_id"];
        out.extend_from_slice(b"{\"severity\":\"");
        out.extend_from_slice(severity(event.metadata().level()).as_bytes());
        out.extend_from_slice(b"\",\"time\":\"");
        write_rfc3339(out, now)?;
        out.extend_from_slice(b"\",\"message\":");
        out.extend_from_slice(last(sources, "message").unwrap_or(b"\"\""));
        // A trace id is recorded as a string (32 hex digits) or not at all.
        if let Some(trace) = last(sources, "trace_id")
            .and_then(|t| t.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")))
        {
            out.extend_from_slice(b",\"logging.googleapis.com/trace\":\"");
            if let Some(p) = &self.project_id {
                out.extend_from_slice(b"projects/");
                let _ = std::fmt::Write::write_str(&mut JsonEscaper(out), p);
                out.extend_from_slice(b"/traces/");
            }
            out.extend_from_slice(trace);
            out.push(b'"');
        }
        if let Some(span_id) = last(sources, "span_id") {
            out.extend_from_slice(b",\"logging.googleapis.com/spanId\":");
            out.extend_from_slice(span_id);
        }
        let mut http = winners(sources)
            .filter_map(|(k, v)| Some((k.strip_prefix("http.")?, v)))
            .peekable();
        if http.peek().is_some() {
            out.extend_from_slice(b",\"httpRequest\":{");
            for (i, (name, value)) in http.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_key(out, name);
                out.extend_from_slice(value);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"target\":");
        write_str(out, event.metadata().target());
        for (name, value) in
            winners(sources).filter(|(k, _)| !k.starts_with("http.") && !SPECIAL.contains(k))
        {
            out.push(b',');
            write_key(out, name);
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    /// A worker's `info` lines wait for one write until it goes idle, the
    /// batch is full or the oldest is too old; a warning goes out at once
    /// with what came before it; a thread that is not a worker never holds.
    #[test]
    fn a_worker_holds_info_lines_until_a_batch_is_due() {
        let t0 = UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let ms = |n| t0 + std::time::Duration::from_millis(n);
        let mut out = Vec::new();
        let mut p = Pending::default();
        let mut line = |p: &mut Pending, text: &str, urgent, now| {
            p.bytes.extend_from_slice(text.as_bytes());
            if p.due(urgent, now) {
                p.write_to(&mut out);
            }
        };

        line(&mut p, "a\n", false, ms(0));
        assert!(p.bytes.is_empty(), "not a worker: written at once");
        p.batching = true;
        line(&mut p, "b\n", false, ms(1));
        line(&mut p, "c\n", false, ms(5));
        assert_eq!(p.bytes, b"b\nc\n", "held");
        line(&mut p, "w\n", true, ms(6));
        assert!(p.bytes.is_empty(), "a warning takes what came before");
        line(&mut p, "d\n", false, ms(10));
        line(&mut p, "e\n", false, ms(29));
        assert_eq!(p.bytes, b"d\ne\n", "the oldest is 19 ms old");
        line(&mut p, "f\n", false, ms(30));
        assert!(p.bytes.is_empty(), "the oldest is 20 ms old");
        line(&mut p, "g\n", false, ms(40));
        line(&mut p, "h\n", false, ms(39));
        assert!(p.bytes.is_empty(), "a clock that steps back writes");
        let big = "x".repeat(BATCH_BYTES - 1) + "\n";
        line(&mut p, "i\n", false, ms(50));
        line(&mut p, &big, false, ms(51));
        assert!(p.bytes.is_empty(), "a full batch is written");
        line(&mut p, "j\n", false, ms(60));
        p.write_to(&mut out);
        assert!(p.bytes.is_empty() && p.since.is_none(), "idle: written");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("a\nb\nc\nw\nd\ne\nf\ng\nh\ni\n{big}j\n"),
            "every line once, in order"
        );
    }

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

    /// Every string comes out as the JSON string of itself, whichever byte
    /// needs escaping and wherever it sits (the eight-byte scan's edges).
    #[test]
    fn strings_are_escaped_as_json_reads_them() {
        let mut cases: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        cases.extend(["", "plain ascii", "é ü 日本 🦀", "a\u{7f}b", "\u{2028}"].map(String::from));
        for at in 0..20 {
            for special in ['"', '\\', '\n', '\u{1}', '\u{1f}'] {
                let mut text = "x".repeat(at);
                text.push(special);
                text.push_str("tail of the text");
                cases.push(text);
            }
        }
        for case in cases {
            let mut out = Vec::new();
            write_str(&mut out, &case);
            let back: String = serde_json::from_slice(&out).unwrap_or_else(|e| {
                panic!("{case:?} wrote {:?}: {e}", String::from_utf8_lossy(&out))
            });
            assert_eq!(back, case);
            let mut shown = Vec::new();
            write_display(&mut shown, &case);
            assert_eq!(shown, out, "Display and str agree for {case:?}");
        }
        assert_eq!(clean_prefix(b"0123456789abcdef\"x"), 16);
        assert_eq!(clean_prefix(b"01234567\n"), 8);
        assert_eq!(clean_prefix(b"abc"), 3);
    }

    /// A later record of a name replaces the earlier one; across sources
    /// (outer span, inner span, event), the last source wins, and each name
    /// is written once, with the source that wins.
    #[test]
    fn later_values_of_a_name_win() {
        let mut outer = Fields::default();
        outer.put("job", |o| write_str(o, "echo"));
        outer.put("attempt", |o| o.extend_from_slice(b"1"));
        outer.put("job", |o| write_str(o, "sleep"));
        assert_eq!(outer.get("job"), Some(&b"\"sleep\""[..]));
        assert_eq!(outer.get("attempt"), Some(&b"1"[..]));
        for _ in 0..100 {
            outer.put("job", |o| write_str(o, "sleep"));
        }
        assert_eq!(
            outer.json.len(),
            "1\"sleep\"".len(),
            "replaced text is cut out"
        );
        let mut own = Fields::default();
        own.put("attempt", |o| o.extend_from_slice(b"2"));
        own.put("message", |o| write_str(o, "hi"));
        let sources = [&outer, &own];
        let fields: Vec<_> = winners(&sources)
            .map(|(k, v)| (k, String::from_utf8_lossy(v).into_owned()))
            .collect();
        assert_eq!(
            fields,
            [
                ("job", "\"sleep\"".to_owned()),
                ("attempt", "2".to_owned()),
                ("message", "\"hi\"".to_owned())
            ]
        );
        assert_eq!(last(&sources, "attempt"), Some(&b"2"[..]));
        assert_eq!(last(&sources, "nothing"), None);
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_872_896 - 7200);
        assert_eq!(rfc3339(t), "2026-11-28T11:34:56.000000Z");
    }
}
