//! Where the webhook job may connect: the allow-list (`WEBHOOK_ALLOWED_HOSTS`),
//! which addresses count as non-public, and the DNS resolver that applies both
//! to the addresses actually connected to.
//!
//! The rules:
//! - an entry is `host` or `host:port` (`[v6]` or `[v6]:port` for IPv6); one
//!   without a port allows only the scheme's default port (http 80, https 443);
//! - an IP-literal entry allows exactly that address (a URL must name the
//!   same address: `[::ffff:127.0.0.1]` is not `127.0.0.1`), public or not;
//! - a host-name entry reaches only public addresses, unless the address it
//!   resolves to is listed as well, with the same port(s) as the name
//!   (`localhost:8080,127.0.0.1:8080`). The check runs on the addresses the
//!   client then connects to, so a name cannot resolve to something else
//!   between check and connect (DNS rebinding).

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use ipnet::{Ipv4Net, Ipv6Net};
use url::Host;

/// The ports an entry without a port stands for when the scheme is not known
/// (in the resolver): both defaults, so the check stays on the safe side.
const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// One allow-list entry: a host and, optionally, a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    host: Host<String>,
    port: Option<u16>,
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

impl Entry {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. Host names are
    /// normalised as URLs are (lower case, punycode, IPv4 number forms).
    pub fn parse(text: &str) -> Result<Self, String> {
        const EXAMPLE: &str = "e.g. `hooks.example.com`, `10.0.0.5:8443` or `[fd00::5]:8443`";
        if text.contains("://") {
            return Err(format!(
                "`{text}` has a scheme; write only the host and an optional port, {EXAMPLE}"
            ));
        }
        if text.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "`{text}` is not host or host:port (no path, query or user), {EXAMPLE}"
            ));
        }
        if text.contains('*') {
            return Err(format!(
                "`{text}`: wildcards are not supported; list each host, {EXAMPLE}"
            ));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or_else(|| {
                format!("`{text}`: an IPv6 address needs a closing `]`, e.g. `[fd00::5]:8443`")
            })?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("`{text}`: after `]` only `:port` may follow, e.g. `[fd00::5]:8443`")
                })?),
            };
            (format!("[{inner}]"), port)
        } else {
            match text.matches(':').count() {
                0 => (text.to_owned(), None),
                1 => {
                    let (host, port) = text.split_once(':').unwrap_or((text, ""));
                    (host.to_owned(), Some(port))
                }
                _ => {
                    return Err(format!(
                        "`{text}` looks like an IPv6 address: write it in brackets, `[{text}]`, or `[{text}]:PORT` with a port"
                    ));
                }
            }
        };
        let port = port
            .map(|p| match p.parse::<u16>() {
                Ok(port) if port > 0 => Ok(port),
                _ => Err(format!(
                    "`{text}`: port `{p}` is not a number from 1 to 65535"
                )),
            })
            .transpose()?;
        let host = Host::parse(&host)
            .map_err(|e| format!("`{text}`: `{host}` is not a host name or IP address ({e})"))?;
        if let Some(ip) = host_ip(&host)
            && ip.is_unspecified()
        {
            return Err(format!(
                "`{text}`: {ip} means \"any address\" and is no destination; list the address the service listens on, e.g. `127.0.0.1:8080`"
            ));
        }
        Ok(Self { host, port })
    }

    /// Whether this entry allows `host` on the URL's port: with a port, the
    /// URL's port (explicit or its scheme's default) must equal it; without,
    /// the URL must use its scheme's default port.
    fn allows(&self, host: &Host<String>, url_port: Option<u16>, effective_port: u16) -> bool {
        self.host == *host
            && match self.port {
                Some(port) => port == effective_port,
                None => url_port.is_none(),
            }
    }

    /// The ports this entry allows when the scheme is not known.
    fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        let defaults = DEFAULT_PORTS
            .iter()
            .copied()
            .filter(|_| self.port.is_none());
        self.port.into_iter().chain(defaults)
    }
}

fn host_ip(host: &Host<String>) -> Option<IpAddr> {
    match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        Host::Domain(_) => None,
    }
}

/// The parsed `WEBHOOK_ALLOWED_HOSTS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The allow-list is empty.
    Empty,
    /// No entry allows this host and port.
    NotListed {
        /// `host:port` as the URL has them.
        target: String,
    },
}

impl AllowList {
    /// Parses the entries (blank ones are skipped); the error names the
    /// first bad entry and says how to write it.
    pub fn parse<S: AsRef<str>>(entries: impl IntoIterator<Item = S>) -> Result<Self, String> {
        let entries = entries
            .into_iter()
            .map(|e| e.as_ref().trim().to_owned())
            .filter(|e| !e.is_empty())
            .map(|e| Entry::parse(&e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { entries })
    }

    /// The entries, in the order given.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Checks the URL's host and port (not its addresses: see
    /// [`GuardedResolver`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refusal> {
        if self.entries.is_empty() {
            return Err(Refusal::Empty);
        }
        let host = url.host().map(|h| h.to_owned());
        let effective_port = url.port_or_known_default();
        let allowed = match (&host, effective_port) {
            (Some(host), Some(port)) => self
                .entries
                .iter()
                .any(|e| e.allows(host, url.port(), port)),
            _ => false,
        };
        if allowed {
            return Ok(());
        }
        let target = match (host, effective_port) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => url.as_str().to_owned(),
        };
        Err(Refusal::NotListed { target })
    }

    /// Whether an IP-literal entry allows `ip` on every one of `ports`.
    fn lists_ip_on(&self, ip: IpAddr, ports: &BTreeSet<u16>) -> bool {
        ports.iter().all(|&port| {
            self.entries
                .iter()
                .any(|e| host_ip(&e.host) == Some(ip) && e.ports().any(|p| p == port))
        })
    }

    /// The ports the host-name entries for `name` allow (empty when none
    /// names it).
    fn ports_of(&self, name: &str) -> BTreeSet<u16> {
        self.entries
            .iter()
            .filter(|e| matches!(&e.host, Host::Domain(d) if d.eq_ignore_ascii_case(name)))
            .flat_map(Entry::ports)
            .collect()
    }

    /// Splits the addresses `name` resolved to into those the webhook may
    /// connect to and those it may not (with the reason).
    pub fn filter(
        &self,
        name: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> (Vec<SocketAddr>, Vec<(IpAddr, &'static str)>) {
        let ports = self.ports_of(name);
        let mut kept = Vec::new();
        let mut refused = Vec::new();
        for addr in addrs {
            let ip = addr.ip();
            let reason = if ports.is_empty() {
                // Only listed names reach the resolver; anything else is refused.
                Some("not listed")
            } else {
                classify(ip).filter(|_| !self.lists_ip_on(ip, &ports))
            };
            match reason {
                None => kept.push(addr),
                Some(reason) => refused.push((ip, reason)),
            }
        }
        (kept, refused)
    }
}

/// IPv4 ranges that are not public, with the reason given in errors.
const V4_RANGES: [(Ipv4Net, &str); 15] = [
    (v4(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8)"),
    (v4(10, 0, 0, 0, 8), "private (10.0.0.0/8)"),
    (v4(100, 64, 0, 0, 10), "shared/CGNAT (100.64.0.0/10)"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (
        v4(169, 254, 0, 0, 16),
        "link-local (169.254.0.0/16, the metadata server's range)",
    ),
    (v4(172, 16, 0, 0, 12), "private (172.16.0.0/12)"),
    (
        v4(192, 0, 0, 0, 24),
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (v4(192, 0, 2, 0, 24), "documentation (192.0.2.0/24)"),
    (
        v4(192, 88, 99, 0, 24),
        "6to4 relay anycast (192.88.99.0/24)",
    ),
    (v4(192, 168, 0, 0, 16), "private (192.168.0.0/16)"),
    (v4(198, 18, 0, 0, 15), "benchmarking (198.18.0.0/15)"),
    (v4(198, 51, 100, 0, 24), "documentation (198.51.100.0/24)"),
    (v4(203, 0, 113, 0, 24), "documentation (203.0.113.0/24)"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved or broadcast (240.0.0.0/4)"),
];

/// IPv6 ranges that are not public. IPv4-mapped, NAT64 and 6to4 addresses
/// are judged by the IPv4 address they carry ([`classify`]).
const V6_RANGES: [(Ipv6Net, &str); 10] = [
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 96), "IPv4-compatible (::/96)"),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "local NAT64 (64:ff9b:1::/48)",
    ),
    (
        v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "discard-only (100::/64)",
    ),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),
        "IETF protocol assignments (2001::/23)",
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        "documentation (2001:db8::/32)",
    ),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "unique local (fc00::/7)",
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 9),
        "link-local or site-local (fe80::/9, fec0::/10)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(s: [u16; 8], prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        prefix,
    )
}

/// Why `ip` is not a public address, or `None` when it is.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(ip) => V4_RANGES
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, reason)| *reason),
        IpAddr::V6(ip) => {
            if let Some(v4) = embedded_v4(ip) {
                return classify(IpAddr::V4(v4));
            }
            V6_RANGES
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|(_, reason)| *reason)
        }
    }
}

/// The IPv4 address an IPv4-mapped (`::ffff:a.b.c.d`), NAT64
/// (`64:ff9b::a.b.c.d`) or 6to4 (`2002:AABB:CCDD::`) address reaches.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
    const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
    let o = ip.octets();
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if NAT64.contains(&ip) {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if SIX_TO_FOUR.contains(&ip) {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

/// A host name resolved only to addresses the webhook may not call.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AddressRefused(pub String);

/// A DNS resolver for the webhook's client: resolves with the system
/// resolver, then keeps only the addresses [`AllowList::filter`] allows, so
/// the connection goes only where the allow-list says.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow: Arc<AllowList>,
}

impl GuardedResolver {
    /// A resolver applying `allow`.
    pub fn new(allow: Arc<AllowList>) -> Self {
        Self { allow }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = Arc::clone(&self.allow);
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let (kept, refused) = allow.filter(&name, resolved);
            if kept.is_empty() {
                if refused.is_empty() {
                    return Err(format!("`{name}` resolved to no address").into());
                }
                return Err(Box::new(refused_error(&allow, &name, &refused)) as _);
            }
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

fn refused_error(
    allow: &AllowList,
    name: &str,
    refused: &[(IpAddr, &'static str)],
) -> AddressRefused {
    let list: Vec<String> = refused
        .iter()
        .map(|(ip, reason)| format!("{ip} ({reason})"))
        .collect();
    let port = allow.ports_of(name).into_iter().next().unwrap_or(80);
    let example = match refused[0].0 {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    };
    AddressRefused(format!(
        "url: host `{name}` resolves only to addresses the webhook may not call: {}; a host name reaches a non-public address only when WEBHOOK_ALLOWED_HOSTS lists that address too, with the same port (e.g. `{example}`), or call a public address",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(entries).expect("valid allow-list")
    }

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).expect("URL")
    }

    #[test]
    fn entries_parse_and_normalise() {
        for (text, shown) in [
            ("hooks.example.com", "hooks.example.com"),
            ("Hooks.Example.COM:8443", "hooks.example.com:8443"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("127.1", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[FD00::5]:8443", "[fd00::5]:8443"),
            ("bücher.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(Entry::parse(text).unwrap().to_string(), shown, "{text}");
        }
        assert_eq!(
            list(&[" a.example ", "", "b.example:81"]).entries().len(),
            2,
            "trimmed, blanks skipped"
        );
    }

    #[test]
    fn bad_entries_say_how_to_write_them() {
        for (text, expect) in [
            ("https://hooks.example.com", "has a scheme"),
            ("hooks.example.com/path", "no path"),
            ("user@hooks.example.com", "no path, query or user"),
            ("*.example.com", "wildcards are not supported"),
            ("hooks.example.com:0", "from 1 to 65535"),
            ("hooks.example.com:http", "from 1 to 65535"),
            ("hooks.example.com:", "from 1 to 65535"),
            ("::1", "in brackets"),
            ("[::1", "closing `]`"),
            ("[::1]8080", "only `:port`"),
            ("[not-v6]", "not a host name or IP address"),
            ("0.0.0.0:8080", "no destination"),
            ("[::]:8080", "no destination"),
        ] {
            let err = Entry::parse(text).unwrap_err();
            assert!(err.contains(expect), "{text}: {err}");
            assert!(
                err.contains(&format!("`{text}`")),
                "{text}: names the entry: {err}"
            );
        }
    }

    #[test]
    fn an_entry_without_a_port_allows_only_the_default_port() {
        let allow = list(&["hooks.example.com", "10.0.0.5:8443", "[fd00::5]"]);
        for (target, allowed) in [
            ("http://hooks.example.com/x", true),
            ("https://hooks.example.com/x", true),
            ("http://hooks.example.com:80/x", true),
            ("https://hooks.example.com:443/x", true),
            ("http://hooks.example.com:8080/x", false),
            ("http://hooks.example.com:443/x", false),
            ("https://hooks.example.com:80/x", false),
            ("http://HOOKS.example.com/x", true),
            ("http://other.example.com/x", false),
            ("http://sub.hooks.example.com/x", false),
            ("https://10.0.0.5:8443/x", true),
            ("http://10.0.0.5:8443/x", true),
            ("http://10.0.0.5/x", false),
            ("http://10.0.0.6:8443/x", false),
            ("http://[fd00::5]/x", true),
            ("http://[fd00::5]:8080/x", false),
            ("http://[::ffff:10.0.0.5]:8443/x", false),
            ("http://167772165:8443/x", true),
        ] {
            let result = allow.check_url(&url(target));
            assert_eq!(result.is_ok(), allowed, "{target}: {result:?}");
        }
        assert_eq!(
            allow.check_url(&url("http://hooks.example.com:8080/")),
            Err(Refusal::NotListed {
                target: "hooks.example.com:8080".into()
            })
        );
        assert_eq!(
            AllowList::default().check_url(&url("http://hooks.example.com/")),
            Err(Refusal::Empty)
        );
    }

    #[test]
    fn non_public_addresses_are_classified() {
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.168.1.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "fe80::1",
            "fec0::1",
            "fc00::1",
            "fd00::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(classify(ip).is_some(), "{ip} is not public");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "169.253.255.255",
            "2606:4700:4700::1111",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(classify(ip), None, "{ip} is public");
        }
        assert!(
            classify("169.254.169.254".parse().unwrap())
                .unwrap()
                .contains("metadata")
        );
    }

    fn addrs(ips: &[&str]) -> Vec<SocketAddr> {
        ips.iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), 0))
            .collect()
    }

    fn kept(allow: &AllowList, name: &str, ips: &[&str]) -> Vec<String> {
        allow
            .filter(name, addrs(ips))
            .0
            .iter()
            .map(|a| a.ip().to_string())
            .collect()
    }

    #[test]
    fn a_name_reaches_a_non_public_address_only_when_it_is_listed_with_its_ports() {
        let both = ["127.0.0.1", "::1", "8.8.8.8"];
        assert_eq!(
            kept(&list(&["localhost:8080"]), "localhost", &both),
            ["8.8.8.8"]
        );
        assert_eq!(
            kept(
                &list(&["localhost:8080", "127.0.0.1:8080"]),
                "localhost",
                &both
            ),
            ["127.0.0.1", "8.8.8.8"]
        );
        assert_eq!(
            kept(
                &list(&["localhost:8080", "127.0.0.1:9090"]),
                "localhost",
                &both
            ),
            ["8.8.8.8"],
            "the address is listed on another port only"
        );
        assert_eq!(
            kept(
                &list(&["localhost:8080", "localhost:8081", "127.0.0.1:8080"]),
                "localhost",
                &both
            ),
            ["8.8.8.8"],
            "the name allows 8081 too, the address does not"
        );
        assert_eq!(
            kept(&list(&["localhost", "127.0.0.1"]), "localhost", &both),
            ["127.0.0.1", "8.8.8.8"],
            "both without a port"
        );
        assert_eq!(
            kept(&list(&["localhost", "127.0.0.1:80"]), "localhost", &both),
            ["8.8.8.8"],
            "no port means 80 or 443; the address allows 80 only"
        );
        assert_eq!(
            kept(
                &list(&["localhost:8080", "127.0.0.1:8080"]),
                "LOCALHOST",
                &both
            ),
            ["127.0.0.1", "8.8.8.8"]
        );
        assert!(
            kept(
                &list(&["a.example:8080", "127.0.0.1:8080"]),
                "b.example",
                &both
            )
            .is_empty(),
            "a name nobody listed reaches nothing"
        );
        assert_eq!(
            kept(
                &list(&["evil.example", "127.0.0.1"]),
                "evil.example",
                &["::ffff:127.0.0.1"]
            ),
            Vec::<String>::new(),
            "a mapped form is not the listed address"
        );
    }

    #[test]
    fn the_refusal_says_what_to_list() {
        let allow = list(&["localhost:8080"]);
        let (_, refused) = allow.filter("localhost", addrs(&["127.0.0.1", "::1"]));
        let message = refused_error(&allow, "localhost", &refused).0;
        assert!(message.contains("127.0.0.1 (loopback)"), "{message}");
        assert!(message.contains("::1 (loopback)"), "{message}");
        assert!(message.contains("`127.0.0.1:8080`"), "{message}");
        assert!(message.contains("WEBHOOK_ALLOWED_HOSTS"), "{message}");
    }
}
