//! The two line formats: Cloud Logging JSON, and text with every field
//! escaped.
//!
//! A JSON line holds `severity`, `time` (RFC 3339), `message`, the fields of
//! the event and of every enclosing span (so each line of a run carries its
//! job, message id, delivery attempt, run id and principal kind), and:
//! - `logging.googleapis.com/trace` = `projects/P/traces/T` and
//!   `logging.googleapis.com/spanId`, from the span fields `trace_id` and
//!   `span_id` (see [`super::trace_context`]), so a request's lines group
//!   under its trace in the Logs Explorer;
//! - `httpRequest` for the one request line each request writes (fields named
//!   `http.*`), which Cloud Logging shows as a request log.

use std::fmt::{self, Write as _};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
    span::{Attributes, Id, Record},
};
use tracing_subscriber::{
    Layer,
    field::RecordFields,
    fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, format::Writer},
    layer::Context,
    registry::LookupSpan,
};

// --- Text -------------------------------------------------------------------

/// Text fields as `name=value`, the message bare, each value's control
/// characters escaped.
///
/// Hand-written: tracing-subscriber's own field formatter escapes only ANSI
/// sequences, and a newline or carriage return in a `Display` value would
/// still start or overwrite a line.
pub(super) struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = EscapedVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapedVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapedVisitor<'_> {
    fn write(&mut self, field: &Field, value: &dyn fmt::Debug) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        let name = field.name();
        if name != "message" {
            write!(self.writer, "{}=", name.strip_prefix("r#").unwrap_or(name))?;
        }
        write!(Escaped(&mut self.writer), "{value:?}")
    }
}

impl Visit for EscapedVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.write(field, value);
        }
    }
}

/// Writes through to `W` with every control character (C0, DEL, C1) escaped
/// as Rust writes it: `\n`, `\r`, `\t`, else `\u{1b}`.
struct Escaped<'a, W>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some((at, c)) = rest.char_indices().find(|(_, c)| c.is_control()) {
            self.0.write_str(&rest[..at])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

// --- JSON -------------------------------------------------------------------

/// Fields as names and JSON-encoded values, in one buffer. A span keeps one
/// in its extensions; each line merges its spans' and its event's into a
/// per-thread one, so a line allocates nothing once the buffers have grown.
#[derive(Default)]
struct Fields {
    json: Vec<u8>,
    entries: Vec<(&'static str, std::ops::Range<usize>)>,
    /// Where `Debug` values are formatted before they are encoded.
    text: String,
}

impl Fields {
    fn clear(&mut self) {
        self.json.clear();
        self.entries.clear();
    }

    /// The encoded value of `name`.
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, at)| &self.json[at.clone()])
    }

    /// Appends `value`, encoded; a later value of a name replaces the
    /// earlier one in its place.
    fn put(&mut self, name: &'static str, value: impl serde::Serialize) {
        let start = self.json.len();
        if serde_json::to_writer(&mut self.json, &value).is_err() {
            self.json.truncate(start);
            self.json.extend_from_slice(b"null");
        }
        self.put_encoded(name, start);
    }

    /// Makes the bytes from `start` to the end the value of `name`.
    fn put_encoded(&mut self, name: &'static str, start: usize) {
        let at = start..self.json.len();
        match self.entries.iter_mut().find(|(k, _)| *k == name) {
            Some(entry) => entry.1 = at,
            None => self.entries.push((name, at)),
        }
    }

    /// Takes every field of `other`, its values winning.
    fn merge(&mut self, other: &Fields) {
        for (name, at) in &other.entries {
            let start = self.json.len();
            self.json.extend_from_slice(&other.json[at.clone()]);
            self.put_encoded(name, start);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: serde_json writes those as `null`.
        self.put(field.name(), value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        let _ = write!(text, "{value:?}");
        self.put(field.name(), text.as_str());
        self.text = text;
    }
}

/// Keeps each span's fields, encoded, for [`CloudLogging`] to write on every
/// line inside the span.
pub(super) struct SpanFields;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        fields.text = String::new();
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }
}

/// The fmt layer's own text copy of span fields, which the JSON lines do not
/// use ([`SpanFields`] keeps them): nothing.
pub(super) struct NoFields;

impl<'w> FormatFields<'w> for NoFields {
    fn format_fields<R: RecordFields>(&self, _: Writer<'w>, _: R) -> fmt::Result {
        Ok(())
    }

    fn add_fields(&self, _: &mut FormattedFields<Self>, _: &Record<'_>) -> fmt::Result {
        Ok(())
    }
}

/// Cloud Logging's JSON line.
pub(super) struct CloudLogging {
    /// `"projects/P/traces/`, encoded, when the project is known.
    trace_prefix: Option<Vec<u8>>,
}

impl CloudLogging {
    pub(super) fn new(project_id: Option<String>) -> Self {
        let trace_prefix = project_id.map(|p| {
            let mut prefix =
                serde_json::to_vec(&format!("projects/{p}/traces/")).unwrap_or_default();
            prefix.pop(); // the closing quote: the trace id follows
            prefix
        });
        Self { trace_prefix }
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

/// What one thread reuses for every line it writes.
#[derive(Default)]
struct Scratch {
    fields: Fields,
    line: Vec<u8>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Appends `"name":` to `out`.
fn key(out: &mut Vec<u8>, name: &str) {
    let _ = serde_json::to_writer(&mut *out, name);
    out.push(b':');
}

impl CloudLogging {
    /// One line of `fields` (outer spans first, the event last, merged):
    /// severity, time, message, trace, span id, `httpRequest`, target, then
    /// the other fields.
    fn write_line(&self, out: &mut Vec<u8>, event: &Event<'_>, fields: &Fields) {
        const SPECIAL: [&str; 3] = ["message", "trace_id", "span_id"];
        out.extend_from_slice(b"{\"severity\":\"");
        out.extend_from_slice(severity(event.metadata().level()).as_bytes());
        out.extend_from_slice(b"\",\"time\":\"");
        let _ = OffsetDateTime::now_utc().format_into(&mut *out, &Rfc3339);
        out.extend_from_slice(b"\",\"message\":");
        out.extend_from_slice(fields.get("message").unwrap_or(b"null"));
        if let Some(trace) = fields.get("trace_id").filter(|v| v.first() == Some(&b'"')) {
            out.extend_from_slice(b",\"logging.googleapis.com/trace\":");
            match &self.trace_prefix {
                Some(prefix) => {
                    out.extend_from_slice(prefix);
                    out.extend_from_slice(&trace[1..]);
                }
                None => out.extend_from_slice(trace),
            }
        }
        if let Some(span_id) = fields.get("span_id") {
            out.extend_from_slice(b",\"logging.googleapis.com/spanId\":");
            out.extend_from_slice(span_id);
        }
        let mut http = fields
            .entries
            .iter()
            .filter_map(|(k, at)| Some((k.strip_prefix("http.")?, at)))
            .peekable();
        if http.peek().is_some() {
            out.extend_from_slice(b",\"httpRequest\":{");
            for (i, (name, at)) in http.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                key(out, name);
                out.extend_from_slice(&fields.json[at.clone()]);
            }
            out.push(b'}');
        }
        out.push(b',');
        key(out, "target");
        let _ = serde_json::to_writer(&mut *out, event.metadata().target());
        for (name, at) in fields
            .entries
            .iter()
            .filter(|(k, _)| !k.starts_with("http.") && !SPECIAL.contains(k))
        {
            out.push(b',');
            key(out, name);
            out.extend_from_slice(&fields.json[at.clone()]);
        }
        out.extend_from_slice(b"}\n");
    }
}

impl<S, N> FormatEvent<S, N> for CloudLogging
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = |scratch: &mut Scratch| {
            let Scratch { fields, line } = scratch;
            fields.clear();
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    if let Some(own) = span.extensions().get::<Fields>() {
                        fields.merge(own);
                    }
                }
            }
            event.record(fields);
            line.clear();
            self.write_line(line, event, fields);
            // Every piece is serde_json's output or ASCII: UTF-8.
            writer.write_str(std::str::from_utf8(line).map_err(|_| fmt::Error)?)
        };
        // A `Debug` value that logs while it is formatted finds the scratch
        // taken, and gets a fresh one.
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => line(&mut scratch),
            Err(_) => line(&mut Scratch::default()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = String::new();
        write!(Escaped(&mut out), "{s}").unwrap();
        out
    }

    /// Every control character comes out escaped, everything else as it is.
    #[test]
    fn text_values_escape_control_characters() {
        assert_eq!(escaped("plain é 日本 🦀"), "plain é 日本 🦀");
        assert_eq!(
            escaped("evil\n2026 ERROR\x1b[31mRED\rCR\tT\u{7f}\u{9b}"),
            r"evil\n2026 ERROR\u{1b}[31mRED\rCR\tT\u{7f}\u{9b}"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            let out = escaped(&format!("a{c}b"));
            assert!(!out.chars().any(char::is_control), "{c:?} → {out:?}");
        }
    }

    /// A later record of a name replaces the earlier one in its place;
    /// across sources (outer span, inner span, event), the last source wins,
    /// and each name comes once.
    #[test]
    fn later_values_of_a_name_win() {
        let mut outer = Fields::default();
        outer.put("job", "echo");
        outer.put("attempt", 1);
        outer.put("job", "sleep");
        let mut own = Fields::default();
        own.put("attempt", 2);
        own.put("message", "hi \"there\"\n");
        let mut merged = Fields::default();
        merged.merge(&outer);
        merged.merge(&own);
        let entries: Vec<_> = merged
            .entries
            .iter()
            .map(|(k, _)| (*k, std::str::from_utf8(merged.get(k).unwrap()).unwrap()))
            .collect();
        assert_eq!(
            entries,
            [
                ("job", r#""sleep""#),
                ("attempt", "2"),
                ("message", r#""hi \"there\"\n""#)
            ]
        );
    }
}
