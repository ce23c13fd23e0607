//! The trace context of a request, from its headers.

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
}
