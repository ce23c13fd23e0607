//! The webhook job's settings: `WEBHOOK_ALLOWED_HOSTS` and
//! `WEBHOOK_MAX_RESPONSE_BYTES`, flattened into `pushworker serve`.

use anyhow::bail;
use clap::Args;

use super::allow::AllowList;

/// The default cap on a webhook response body: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1024 * 1024;

/// The largest cap accepted: the body is counted, not kept, but reading it
/// still takes the job's time.
const MAX_MAX_RESPONSE_BYTES: u64 = 1024 * 1024 * 1024;

/// Flags and environment variables of the `webhook` job.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Hosts the example `webhook` job may call (comma list): `host`,
    /// `host:port`, `[v6]` or `[v6]:port`. An entry without a port allows
    /// only the scheme's default port (http 80, https 443). A host name
    /// reaches only public addresses unless the address it resolves to is
    /// listed too, with the same port (`localhost:8080,127.0.0.1:8080`); an
    /// IP entry allows exactly that address. Empty: the job refuses every URL
    /// (in dev mode: the local server).
    #[arg(
        long = "webhook-allowed-hosts",
        env = "WEBHOOK_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Largest webhook response body read, in bytes (1 to 1073741824); a
    /// larger one fails the run permanently.
    #[arg(
        long = "webhook-max-response-bytes",
        env = "WEBHOOK_MAX_RESPONSE_BYTES",
        default_value_t = DEFAULT_MAX_RESPONSE_BYTES
    )]
    pub max_response_bytes: u64,
}

/// The webhook job's validated settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where the job may connect.
    pub allowed_hosts: AllowList,
    /// Largest response body read.
    pub max_response_bytes: u64,
}

impl WebhookConfig {
    /// Validates `allowed_hosts` and `max_response_bytes`; the error names
    /// the variable and says what to fix.
    pub fn new<S: AsRef<str>>(
        allowed_hosts: impl IntoIterator<Item = S>,
        max_response_bytes: u64,
    ) -> anyhow::Result<Self> {
        let allowed_hosts = AllowList::parse(allowed_hosts)
            .map_err(|e| anyhow::anyhow!("WEBHOOK_ALLOWED_HOSTS: {e}"))?;
        if max_response_bytes == 0 || max_response_bytes > MAX_MAX_RESPONSE_BYTES {
            bail!(
                "WEBHOOK_MAX_RESPONSE_BYTES: {max_response_bytes} is out of range; use 1 to {MAX_MAX_RESPONSE_BYTES} (default {DEFAULT_MAX_RESPONSE_BYTES})"
            );
        }
        Ok(Self {
            allowed_hosts,
            max_response_bytes,
        })
    }

    /// From the command line. With `dev_port` (dev mode) and no hosts given,
    /// the local server itself is allowed, so the webhook fixture has a
    /// target; on port 0 its port is known only once bound, so nothing is.
    pub fn from_args(args: &WebhookArgs, dev_port: Option<u16>) -> anyhow::Result<Self> {
        let given = args.allowed_hosts.iter().any(|h| !h.trim().is_empty());
        match dev_port {
            Some(port) if !given && port != 0 => Self::new(
                [format!("127.0.0.1:{port}"), format!("localhost:{port}")],
                args.max_response_bytes,
            ),
            _ => Self::new(&args.allowed_hosts, args.max_response_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_the_variable() {
        for (hosts, max, expect) in [
            (
                vec!["https://hooks.example.com"],
                1,
                "WEBHOOK_ALLOWED_HOSTS: `https://hooks.example.com` has a scheme",
            ),
            (
                vec!["ok.example", "*.example"],
                1,
                "WEBHOOK_ALLOWED_HOSTS: `*.example`",
            ),
            (vec![], 0, "WEBHOOK_MAX_RESPONSE_BYTES: 0 is out of range"),
            (
                vec![],
                MAX_MAX_RESPONSE_BYTES + 1,
                "WEBHOOK_MAX_RESPONSE_BYTES",
            ),
        ] {
            let err = WebhookConfig::new(&hosts, max).unwrap_err().to_string();
            assert!(err.contains(expect), "{hosts:?} {max}: {err}");
        }
        assert!(WebhookConfig::new(["hooks.example.com"], MAX_MAX_RESPONSE_BYTES).is_ok());
    }

    #[test]
    fn dev_mode_allows_the_local_server_unless_hosts_are_given() {
        let args = |hosts: &[&str]| WebhookArgs {
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        };
        let shown = |c: WebhookConfig| -> Vec<String> {
            c.allowed_hosts
                .entries()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let dev = WebhookConfig::from_args(&args(&[]), Some(8080)).unwrap();
        assert_eq!(shown(dev), ["127.0.0.1:8080", "localhost:8080"]);
        let given = WebhookConfig::from_args(&args(&["hooks.example.com"]), Some(8080)).unwrap();
        assert_eq!(shown(given), ["hooks.example.com"]);
        let prod = WebhookConfig::from_args(&args(&[" "]), None).unwrap();
        assert!(shown(prod).is_empty());
        let any_port = WebhookConfig::from_args(&args(&[]), Some(0)).unwrap();
        assert!(shown(any_port).is_empty(), "port 0: not yet known");
    }
}
