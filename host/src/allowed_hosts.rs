//! `allowed_outbound_hosts`, with Spin's rules: `<scheme>://<host>[:<port>]`
//! where the scheme may be `*`; the host `*`, `*.domain`, a literal name or
//! address, or `self` (the app's own routes, reached by relative URLs); the
//! port `*`, a number, a range `start..end` (end excluded) or, when absent,
//! the scheme's well-known port.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    original: String,
    scheme: Option<String>,
    host: HostRule,
    port: PortRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    ToSelf,
    /// `.example.com` for `*.example.com`.
    Subdomain(String),
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    Any,
    One(u16),
    Range(u16, u16),
}

fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "redis" => Some(6379),
        "postgres" => Some(5432),
        "mysql" => Some(3306),
        "mqtt" => Some(1883),
        _ => None,
    }
}

impl AllowedHost {
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        let Some((scheme, rest)) = t.split_once("://") else {
            bail!("{t:?} does not contain a scheme (e.g. 'http://' or '*://'); hosts must be in the form <scheme>://<host>[:<port>]");
        };
        if scheme != "*" && (scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphabetic()))
        {
            bail!("{t:?}: invalid scheme {scheme:?}; only letters or * are allowed");
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            bail!("{t:?} has a path but is not allowed to");
        }
        let (host, port) = split_host_port(rest).with_context(|| format!("{t:?}"))?;
        let host = match host {
            "*" => HostRule::Any,
            "self" | "self.alt" => HostRule::ToSelf,
            h if h.starts_with("*.") => {
                let d = &h[1..];
                if d[1..].contains('*') || d.len() < 2 {
                    bail!("{t:?}: wildcards are allowed only as prefixes");
                }
                HostRule::Subdomain(d.to_ascii_lowercase())
            }
            h if h.contains('*') => bail!("{t:?}: wildcards are allowed only as subdomains"),
            "" => bail!("{t:?}: the host is missing"),
            h => HostRule::Literal(h.to_ascii_lowercase()),
        };
        let port = match port {
            None | Some("") => match well_known_port(scheme) {
                Some(p) => PortRule::One(p),
                None => bail!(
                    "{t:?}: no port was given and the scheme {scheme:?} has no well-known port"
                ),
            },
            Some("*") => PortRule::Any,
            Some(p) => match p.split_once("..") {
                Some((a, b)) => PortRule::Range(
                    a.parse().with_context(|| {
                        format!("{t:?}: port range {p:?} contains a non-number")
                    })?,
                    b.parse().with_context(|| {
                        format!("{t:?}: port range {p:?} contains a non-number")
                    })?,
                ),
                None => PortRule::One(
                    p.parse()
                        .with_context(|| format!("{t:?}: port {p:?} is not a number"))?,
                ),
            },
        };
        Ok(Self {
            original: t.to_owned(),
            scheme: (scheme != "*").then(|| scheme.to_owned()),
            host,
            port,
        })
    }

    fn allows_scheme(&self, scheme: &str) -> bool {
        self.scheme.as_deref().is_none_or(|s| s == scheme)
    }

    fn allows(&self, url: &Target) -> bool {
        let host_ok = match &self.host {
            HostRule::Any => true,
            HostRule::ToSelf => false,
            HostRule::Subdomain(suffix) => url.host.ends_with(suffix.as_str()),
            HostRule::Literal(h) => *h == url.host,
        };
        let port = url.port.or_else(|| well_known_port(&url.scheme));
        let port_ok = match (&self.port, port) {
            (PortRule::Any, _) => true,
            (_, None) => false,
            (PortRule::One(p), Some(q)) => *p == q,
            (PortRule::Range(a, b), Some(q)) => (*a..*b).contains(&q),
        };
        self.allows_scheme(&url.scheme) && host_ok && port_ok
    }
}

impl std::fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.original)
    }
}

/// Splits `host[:port]`, keeping bracketed IPv6 addresses whole.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest
            .split_once(']')
            .context("unclosed [ in an IPv6 address")?;
        return Ok((h, tail.strip_prefix(':')));
    }
    Ok(match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    })
}

/// The scheme, host and port of an outbound URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: String,
    pub host: String,
    pub port: Option<u16>,
}

impl Target {
    /// Parses `scheme://[user@]host[:port][/…]`.
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{url:?} has no scheme"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
        let (host, port) = split_host_port(authority)?;
        if host.is_empty() {
            bail!("{url:?} has no host");
        }
        let port = match port {
            None | Some("") => None,
            Some(p) => Some(
                p.parse()
                    .with_context(|| format!("{url:?}: port {p:?} is not a number"))?,
            ),
        };
        Ok(Self {
            scheme: scheme.to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// A component's whole allow-list.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Vec<AllowedHost>);

impl AllowList {
    pub fn parse(entries: &[String]) -> Result<Self> {
        entries
            .iter()
            .map(|e| AllowedHost::parse(e))
            .collect::<Result<_>>()
            .map(Self)
    }

    /// Whether an absolute URL may be reached.
    pub fn allows_url(&self, url: &str) -> bool {
        match Target::parse(url) {
            Ok(t) => self.0.iter().any(|h| h.allows(&t)),
            Err(_) => false,
        }
    }

    /// Whether a relative URL (a request to the app itself) may be made with
    /// one of `schemes`.
    pub fn allows_relative(&self, schemes: &[&str]) -> bool {
        self.0.iter().any(|h| {
            schemes.iter().any(|s| h.allows_scheme(s))
                && matches!(h.host, HostRule::Any | HostRule::ToSelf)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    // Schemes, default and explicit ports, port ranges (end excluded), * and *.domain hosts match as in Spin.
    #[test]
    fn matching() {
        let l = list(&[
            "https://api.anthropic.com",
            "http://localhost:3000..3010",
            "redis://127.0.0.1:*",
            "*://*.example.org:8080",
        ]);
        assert!(l.allows_url("https://api.anthropic.com/v1/messages"));
        assert!(l.allows_url("https://api.anthropic.com:443/v1/messages"));
        assert!(
            !l.allows_url("http://api.anthropic.com/v1/messages"),
            "scheme differs"
        );
        assert!(
            !l.allows_url("https://api.anthropic.com:8443/"),
            "port differs"
        );
        assert!(l.allows_url("http://localhost:3009/x"));
        assert!(
            !l.allows_url("http://localhost:3010/x"),
            "range end is excluded"
        );
        assert!(l.allows_url("redis://127.0.0.1:6380"));
        assert!(l.allows_url("redis://user:pw@127.0.0.1:6379/0"));
        assert!(l.allows_url("http://a.b.example.org:8080/"));
        assert!(
            !l.allows_url("http://example.org:8080/"),
            "*.domain needs a subdomain"
        );
        assert!(!l.allows_url("https://evil.com/"));
        assert!(!l.allows_relative(&["http", "https"]));
        assert!(list(&["*://*:*"]).allows_url("ftp://x.y:21"));
    }

    // `self` allows relative URLs only; it does not match a host called self.
    #[test]
    fn self_requests() {
        let l = list(&["http://self"]);
        assert!(l.allows_relative(&["http", "https"]));
        assert!(!l.allows_url("http://self/x"));
        assert!(list(&["*://*:*"]).allows_relative(&["http"]));
    }

    // Bad entries are refused with the entry in the message.
    #[test]
    fn bad_entries() {
        for bad in [
            "example.com",
            "http://exa*mple.com",
            "http://*.*.com",
            "http://a.com/path",
            "foo://a.com",
            "http://a.com:x",
            "1http://a.com",
        ] {
            let e = AllowedHost::parse(bad).unwrap_err();
            assert!(
                format!("{e:#}").contains(bad.trim_start_matches("1")),
                "{bad}: {e:#}"
            );
        }
    }
}
