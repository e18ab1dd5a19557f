//! What a guest may use beyond the host interface, as configured in its
//! `grants` object: a directory preopened at `/data`, TCP addresses, and
//! outbound HTTP authorities. Parsed and validated at configuration time,
//! so a typo fails start-up with the entry named instead of silently
//! denying every call.

use http::uri::{Authority, Scheme, Uri};
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::path::PathBuf;

/// The capabilities one guest is granted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// Host directory preopened at `/data` (read-write).
    pub dir: Option<PathBuf>,
    /// `host:port` addresses the guest may open TCP connections to
    /// (wasi:sockets). They do not allow HTTP requests.
    pub net: Vec<String>,
    /// Authorities the guest may send HTTP requests to (wasi:http). They do
    /// not allow raw TCP connections.
    pub http: Vec<HttpGrant>,
    /// Whether an `http` entry given by name may reach a loopback, private,
    /// link-local or otherwise non-public address (`"http_private": true`);
    /// without it such a name is refused once resolved. An entry given as
    /// an IP address is taken as meant.
    pub http_private: bool,
}

impl Grants {
    /// Reads a `grants` object; the error names the offending entry.
    pub fn from_json(grants: &Map<String, Value>) -> Result<Grants, String> {
        let mut out = Grants::default();
        for (k, v) in grants {
            match (k.as_str(), v) {
                ("dir", Value::String(d)) => out.dir = Some(PathBuf::from(d)),
                ("net", Value::Array(list)) => {
                    for a in list {
                        let a = a.as_str().ok_or("\"grants.net\" must be a list of \"host:port\" strings")?;
                        out.net.push(a.to_owned());
                    }
                }
                ("http_private", Value::Bool(b)) => out.http_private = *b,
                ("http", Value::Array(list)) => {
                    for a in list {
                        let a = a.as_str().ok_or("\"grants.http\" must be a list of authority strings")?;
                        out.http.push(HttpGrant::parse(a).map_err(|why| format!("grants.http entry {a:?}: {why}"))?);
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown grant {k:?} (or wrong type); known: dir (string), net (list of host:port), \
                         http (list of host, host:port or *.domain[:port]), http_private (bool)"
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Whether the HTTP grants allow a request to `uri`.
    pub fn allows_http(&self, uri: &Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let host = host.to_ascii_lowercase();
        let port = match uri.port_u16() {
            Some(p) => p,
            None if uri.scheme() == Some(&Scheme::HTTPS) => 443,
            None => 80,
        };
        self.http.iter().any(|g| g.allows(&host, port))
    }
}

/// Whether an address is one any host on the internet could have: not
/// loopback, private (RFC 1918, unique local), link-local, shared
/// (100.64/10), unspecified, broadcast, multicast, documentation or
/// reserved, including IPv4 addresses carried in IPv6 (mapped, NAT64).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 = std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return is_public(IpAddr::V4(v4));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || s[0..6] == [0, 0, 0, 0, 0, 0])
        }
    }
}

impl<'de> serde::Deserialize<'de> for Grants {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(d)?;
        Grants::from_json(&map).map_err(serde::de::Error::custom)
    }
}

/// One `grants.http` entry: `host`, `host:port`, `*.domain` or
/// `*.domain:port`. Without a port it allows the scheme's default port
/// (80 for http, 443 for https) only, so granting `api.example.com` does not
/// open every service on that machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    host: HostPattern,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not the bare
    /// domain itself).
    Subdomains(String),
}

impl HttpGrant {
    pub fn parse(text: &str) -> Result<HttpGrant, &'static str> {
        if text.contains("://") {
            return Err("give an authority (host or host:port), not a URL");
        }
        if text.is_empty() || text.contains(['/', '@', '?', '#', ' ']) {
            return Err("not an authority: expected host, host:port, *.domain or *.domain:port");
        }
        let (wildcard, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if rest.contains('*') {
            return Err("a wildcard is allowed only as a leading \"*.\"");
        }
        let authority: Authority = rest
            .parse()
            .map_err(|_| "not an authority: expected host, host:port, *.domain or *.domain:port")?;
        let host = authority.host().to_ascii_lowercase();
        let bracketed = host.starts_with('[') && host.ends_with(']');
        if !bracketed && !host.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')) {
            return Err("the host must be a DNS name or an IP address");
        }
        if wildcard && (bracketed || !host.contains(|c: char| c.is_ascii_alphabetic())) {
            return Err("a wildcard needs a domain name after \"*.\"");
        }
        // From the text: `Authority::port` hides a port that is not a u16.
        let port = match authority.as_str().strip_prefix(authority.host()).and_then(|p| p.strip_prefix(':')) {
            None => None,
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or("the port must be 1 to 65535")?),
        };
        Ok(HttpGrant {
            host: if wildcard {
                HostPattern::Subdomains(format!(".{host}"))
            } else {
                HostPattern::Exact(host)
            },
            port,
        })
    }

    /// `host` is lower-case; `port` is explicit or the scheme's default.
    fn allows(&self, host: &str, port: u16) -> bool {
        let host_ok = match &self.host {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        };
        let port_ok = match self.port {
            Some(p) => p == port,
            None => port == 80 || port == 443,
        };
        host_ok && port_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(entries: &[&str]) -> Grants {
        let json = serde_json::json!({ "http": entries });
        Grants::from_json(json.as_object().unwrap()).unwrap()
    }

    fn allows(g: &Grants, uri: &str) -> bool {
        g.allows_http(&uri.parse().unwrap())
    }

    #[test]
    fn wasm_http_grants_match_host_and_port() {
        let g = grants(&["api.example.com", "127.0.0.1:8080", "*.hooks.example.org:9000", "[::1]:81"]);
        assert!(allows(&g, "https://api.example.com/check"));
        assert!(allows(&g, "http://API.Example.com/"));
        assert!(!allows(&g, "http://api.example.com:8443/"), "no port = default ports only");
        assert!(!allows(&g, "http://example.com/"));
        assert!(!allows(&g, "http://api.example.com.evil.net/"));
        assert!(allows(&g, "http://127.0.0.1:8080/x"));
        assert!(!allows(&g, "http://127.0.0.1:8081/x"));
        assert!(!allows(&g, "http://127.0.0.1/x"));
        assert!(allows(&g, "http://a.hooks.example.org:9000/"));
        assert!(allows(&g, "http://b.a.hooks.example.org:9000/"));
        assert!(!allows(&g, "http://hooks.example.org:9000/"), "the wildcard needs a subdomain");
        assert!(!allows(&g, "http://a.hooks.example.org/"));
        assert!(!allows(&g, "http://evilhooks.example.org:9000/"));
        assert!(allows(&g, "http://[::1]:81/"));
        // userinfo does not change the host the request goes to
        assert!(!allows(&g, "http://api.example.com@evil.net/"));
    }

    #[test]
    fn wasm_public_addresses_are_told_from_internal_ones() {
        for internal in [
            "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "255.255.255.255",
            "224.0.0.1", "::1", "::", "fe80::1", "fc00::1", "fd12::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "::ffff:1.1.1.1", "64:ff9b::101:101"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let g = Grants::from_json(serde_json::json!({"http": ["localhost:8080"], "http_private": true}).as_object().unwrap()).unwrap();
        assert!(g.http_private);
        let err = Grants::from_json(serde_json::json!({"http_private": "yes"}).as_object().unwrap()).unwrap_err();
        assert!(err.contains("http_private (bool)"), "{err}");
    }

    #[test]
    fn wasm_bad_grants_are_refused_with_the_entry_named() {
        for (bad, says) in [
            ("http://api.example.com", "not a URL"),
            ("api.example.com/path", "not an authority"),
            ("user@api.example.com", "not an authority"),
            ("", "not an authority"),
            ("*", "wildcard"),
            ("a.*.example.com", "wildcard"),
            ("*.1.2.3.4", "wildcard needs a domain"),
            ("api.example.com:0", "port"),
            ("api.example.com:99999", "port"),
            ("api_example.com", "DNS name"),
        ] {
            let json = serde_json::json!({ "http": [bad] });
            let err = Grants::from_json(json.as_object().unwrap()).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")) && err.contains(says), "{bad:?}: {err}");
        }
        let err = Grants::from_json(serde_json::json!({"http": "a.com"}).as_object().unwrap()).unwrap_err();
        assert!(err.contains("unknown grant \"http\""), "{err}");
        let err = Grants::from_json(serde_json::json!({"http": [1]}).as_object().unwrap()).unwrap_err();
        assert!(err.contains("grants.http"), "{err}");
    }
}
