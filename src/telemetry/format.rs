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

use serde::ser::{SerializeMap as _, Serializer as _};
use serde_json::Value;
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

/// A field's name and value.
type Entry = (&'static str, Value);

/// The fields of a span, as JSON values, in its extensions.
#[derive(Default)]
struct Fields(Vec<Entry>);

impl Fields {
    /// A later value of a name replaces the earlier one.
    fn put(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(entry) => entry.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field.name(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field.name(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field.name(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field.name(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those become `null`.
        self.put(field.name(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field.name(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field.name(), format!("{value:?}").into());
    }
}

/// Keeps each span's fields as JSON values, for [`CloudLogging`] to write
/// on every line inside the span.
pub(super) struct SpanFields;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
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
    project_id: Option<String>,
}

impl CloudLogging {
    pub(super) fn new(project_id: Option<String>) -> Self {
        Self { project_id }
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

/// Every name once, with the value of the last source that has it (outer
/// spans first, the event last).
fn merge<'a>(sources: impl IntoIterator<Item = &'a Fields>) -> Vec<(&'static str, &'a Value)> {
    let mut merged: Vec<(&'static str, &Value)> = Vec::with_capacity(16);
    for (name, value) in sources.into_iter().flat_map(|f| &f.0) {
        match merged.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value,
            None => merged.push((name, value)),
        }
    }
    merged
}

/// `httpRequest`: the `http.*` fields without their prefix.
struct HttpRequest<'a>(&'a [(&'static str, &'a Value)]);

impl serde::Serialize for HttpRequest<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in self.0 {
            if let Some(name) = name.strip_prefix("http.") {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

impl CloudLogging {
    /// One line: severity, time, message, trace, span id, `httpRequest`,
    /// target, then the other fields.
    fn write_line(
        &self,
        out: &mut Vec<u8>,
        event: &Event<'_>,
        fields: &[(&'static str, &Value)],
    ) -> serde_json::Result<()> {
        const SPECIAL: [&str; 3] = ["message", "trace_id", "span_id"];
        let get = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let mut line = serde_json::Serializer::new(&mut *out);
        let mut map = line.serialize_map(None)?;
        map.serialize_entry("severity", severity(event.metadata().level()))?;
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        map.serialize_entry("time", &now)?;
        map.serialize_entry("message", get("message").unwrap_or(&Value::Null))?;
        if let Some(Value::String(trace)) = get("trace_id") {
            match &self.project_id {
                Some(p) => map.serialize_entry(
                    "logging.googleapis.com/trace",
                    &format!("projects/{p}/traces/{trace}"),
                )?,
                None => map.serialize_entry("logging.googleapis.com/trace", trace)?,
            }
        }
        if let Some(span_id) = get("span_id") {
            map.serialize_entry("logging.googleapis.com/spanId", span_id)?;
        }
        if fields.iter().any(|(k, _)| k.starts_with("http.")) {
            map.serialize_entry("httpRequest", &HttpRequest(fields))?;
        }
        map.serialize_entry("target", event.metadata().target())?;
        for (name, value) in fields
            .iter()
            .filter(|(k, _)| !k.starts_with("http.") && !SPECIAL.contains(k))
        {
            map.serialize_entry(name, value)?;
        }
        map.end()?;
        out.push(b'\n');
        Ok(())
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
        let spans: Vec<_> = ctx
            .event_scope()
            .map(|scope| scope.from_root().collect())
            .unwrap_or_default();
        let extensions: Vec<_> = spans.iter().map(|span| span.extensions()).collect();
        let mut own = Fields::default();
        event.record(&mut own);
        let fields = merge(
            extensions
                .iter()
                .filter_map(|e| e.get::<Fields>())
                .chain(std::iter::once(&own)),
        );
        let mut out = Vec::with_capacity(512);
        self.write_line(&mut out, event, &fields)
            .map_err(|_| fmt::Error)?;
        // serde_json writes UTF-8 only.
        writer.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
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

    /// A later record of a name replaces the earlier one; across sources
    /// (outer span, inner span, event), the last source wins, and each name
    /// comes once.
    #[test]
    fn later_values_of_a_name_win() {
        let mut outer = Fields::default();
        outer.put("job", "echo".into());
        outer.put("attempt", 1.into());
        outer.put("job", "sleep".into());
        let mut own = Fields::default();
        own.put("attempt", 2.into());
        own.put("message", "hi".into());
        let merged = merge([&outer, &own]);
        assert_eq!(
            merged,
            [
                ("job", &Value::from("sleep")),
                ("attempt", &Value::from(2)),
                ("message", &Value::from("hi"))
            ]
        );
    }
}
