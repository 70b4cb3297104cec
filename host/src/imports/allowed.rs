//! One entry of the outbound allow-list, as an operator writes it for
//! `--allow-outbound` (`HOST` or `HOST:PORT`, any scheme) or as a Spin
//! manifest writes it in `allowed_outbound_hosts` (`SCHEME://HOST[:PORT]`,
//! with Spin's `*` wildcards, `*.DOMAIN`, IP ranges in CIDR form, port
//! ranges `A..B`, and `self` for the application itself). Spin's meaning
//! is kept for each: a Spin entry without a port allows only its scheme's
//! well-known one, and a scheme we do not speak (`redis://`) matches no
//! HTTP request.

use std::net::IpAddr;
use std::str::FromStr;

use hyper::http::Uri;
use hyper::http::uri::Authority;

/// The hosts that name the application itself (`http://self/PATH`), routed
/// by path in process as Spin routes them (`http_hooks`).
pub const SELF_HOSTS: [&str; 2] = ["self", "self.alt"];

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// `None`: any scheme (`*://`, or the `HOST[:PORT]` form).
    scheme: Option<String>,
    host: Host,
    port: Port,
}

#[derive(Debug, Clone, PartialEq)]
enum Host {
    Any,
    /// `*.example.com`: the suffix `.example.com`.
    Subdomain(String),
    /// The application itself (`self`).
    App,
    /// A name or address, lower-cased, IPv6 without brackets.
    Exact(String),
    /// `10.0.0.0/8`: addresses whose first `bits` bits are `network`'s.
    Network {
        network: IpAddr,
        bits: u8,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Port {
    Any,
    /// From the first to the last, both included (Spin's `A..B` leaves B
    /// out: it is read as A to B - 1).
    Between(u16, u16),
}

impl FromStr for Destination {
    type Err = String;

    /// `SCHEME://HOST[:PORT]` (Spin's form), or `HOST[:PORT]`.
    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let entry = entry.trim();
        match entry.split_once("://") {
            Some((scheme, rest)) => spin(entry, scheme, rest),
            None => plain(entry),
        }
    }
}

/// `HOST[:PORT]`: any scheme; every port unless one is given.
fn plain(entry: &str) -> Result<Destination, String> {
    let authority = Authority::from_str(entry).map_err(|err| format!("`{entry}`: {err}"))?;
    if entry.contains('@') {
        return Err(format!(
            "`{entry}`: give HOST or HOST:PORT, without user info"
        ));
    }
    Ok(Destination {
        scheme: None,
        host: Host::Exact(bare(authority.host())),
        port: authority
            .port_u16()
            .map_or(Port::Any, |port| Port::Between(port, port)),
    })
}

/// Spin's `SCHEME://HOST[:PORT]`.
fn spin(entry: &str, scheme: &str, rest: &str) -> Result<Destination, String> {
    let fail = |why: &str| format!("`{entry}`: {why}");
    let scheme = match scheme {
        "*" => None,
        name if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic()) => {
            Some(name.to_ascii_lowercase())
        }
        _ => return Err(fail("a scheme is letters, or `*`")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    // A CIDR range holds a slash, and an IPv6 one colons: tried whole first.
    let (host, port) = match rest.rsplit_once(':') {
        _ if network(rest).is_some() => (rest, None),
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let port = match port {
        None | Some("") => match default_port(scheme.as_deref()) {
            Some(port) => port,
            None => return Err(fail("give a port: this scheme has no well-known one")),
        },
        Some("*") => Port::Any,
        Some(port) => match port.split_once("..") {
            Some((start, end)) => match (start.parse(), end.parse()) {
                (Ok(start), Ok(end)) if start < end => Port::Between(start, end - 1),
                _ => return Err(fail("a port range is `START..END`, START below END")),
            },
            None => match port.parse::<u16>() {
                Ok(port) => Port::Between(port, port),
                Err(_) => return Err(fail("a port is a number, `A..B` or `*`")),
            },
        },
    };
    let host = spin_host(host).map_err(fail)?;
    Ok(Destination { scheme, host, port })
}

/// The host of a Spin entry.
fn spin_host(host: &str) -> Result<Host, &'static str> {
    if let Some(network) = network(host) {
        return Ok(network);
    }
    if host.contains('/') {
        return Err("an allowed host has no path");
    }
    if host == "*" {
        return Ok(Host::Any);
    }
    if SELF_HOSTS.contains(&host) {
        return Ok(Host::App);
    }
    if let Some(domain) = host.strip_prefix("*.")
        && !domain.contains('*')
        && !domain.is_empty()
    {
        return Ok(Host::Subdomain(format!(".{}", domain.to_ascii_lowercase())));
    }
    if host.contains('*') {
        return Err("a wildcard is a whole host (`*`) or its first label (`*.DOMAIN`)");
    }
    match Authority::from_str(host) {
        Ok(authority) if !host.contains('@') => Ok(Host::Exact(bare(authority.host()))),
        _ => Err("not a host name or address"),
    }
}

/// The well-known port of `scheme`, as Spin knows them; any port for any
/// scheme.
fn default_port(scheme: Option<&str>) -> Option<Port> {
    let port = match scheme {
        None => return Some(Port::Any),
        Some("http") => 80,
        Some("https") => 443,
        Some("redis") => 6379,
        Some("mqtt") => 1883,
        Some("mysql") => 3306,
        Some("postgres") => 5432,
        Some(_) => return None,
    };
    Some(Port::Between(port, port))
}

/// `ADDRESS/BITS` as a network, if `text` is one.
fn network(text: &str) -> Option<Host> {
    let (address, bits) = text.split_once('/')?;
    let network: IpAddr = address.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some(Host::Network { network, bits })
}

/// A host as compared: lower-case, an IPv6 address without its brackets.
fn bare(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Whether `address` is in the network of `network`'s first `bits` bits.
fn in_network(address: IpAddr, network: IpAddr, bits: u8) -> bool {
    let (address, network, width) = match (address, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(a.to_bits()), u128::from(n.to_bits()), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (a.to_bits(), n.to_bits(), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (address >> shift) == (network >> shift)
}

impl Destination {
    /// Whether a request to `uri` may go, by its scheme, host and port (the
    /// scheme's well-known port when it names none).
    pub fn allows(&self, uri: &Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        if self
            .scheme
            .as_ref()
            .is_some_and(|allowed| *allowed != scheme)
        {
            return false;
        }
        let port = uri.port_u16().or(match scheme.as_str() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        });
        let port_allowed = match self.port {
            Port::Any => true,
            Port::Between(first, last) => port.is_some_and(|port| (first..=last).contains(&port)),
        };
        let host = bare(host);
        let host_allowed = match &self.host {
            Host::Any => true,
            Host::Subdomain(suffix) => host.ends_with(suffix.as_str()),
            Host::App => SELF_HOSTS.contains(&host.as_str()),
            Host::Exact(exact) => host == *exact,
            Host::Network { network, bits } => host
                .parse()
                .is_ok_and(|address| in_network(address, *network, *bits)),
        };
        port_allowed && host_allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(entry: &str, uri: &str) -> bool {
        let destination: Destination = entry.parse().unwrap();
        destination.allows(&uri.parse().unwrap())
    }

    #[test]
    fn the_plain_form_allows_any_scheme_and_every_port_unless_named() {
        assert!(allows("api.example.com", "https://api.example.com/x"));
        assert!(allows("api.example.com", "http://API.example.com:8080/"));
        assert!(allows("127.0.0.1:8080", "http://127.0.0.1:8080/"));
        assert!(!allows("127.0.0.1:8080", "http://127.0.0.1:8081/"));
        assert!(!allows("127.0.0.1:8080", "http://127.0.0.1/"));
        assert!(allows("[::1]:80", "http://[::1]/"));
        assert!(!allows("api.example.com", "https://evil.example.com/"));
    }

    #[test]
    fn spins_form_is_read_as_spin_reads_it() {
        let cases = [
            (
                "https://api.example.com",
                "https://api.example.com/v1",
                true,
            ),
            (
                "https://api.example.com",
                "http://api.example.com/v1",
                false,
            ),
            (
                "https://api.example.com",
                "https://api.example.com:8443/",
                false,
            ),
            ("http://localhost:8080", "http://localhost:8080/", true),
            ("http://localhost:8080/", "http://localhost:8080/", true),
            ("http://*.example.com", "http://a.b.example.com/", true),
            ("http://*.example.com", "http://example.com/", false),
            ("http://*.example.com", "http://badexample.com/", false),
            (
                "*://api.example.com:*",
                "https://api.example.com:9000/",
                true,
            ),
            ("*://*:*", "http://anything:1/", true),
            ("http://*:*", "https://anything/", false),
            (
                "http://127.0.0.1:8000..8010",
                "http://127.0.0.1:8009/",
                true,
            ),
            (
                "http://127.0.0.1:8000..8010",
                "http://127.0.0.1:8010/",
                false,
            ),
            ("http://10.0.0.0/8", "http://10.1.2.3/", true),
            ("http://10.0.0.0/8", "http://11.1.2.3/", false),
            ("http://10.0.0.0/8", "http://ten.example/", false),
            ("http://[::1]:8080", "http://[::1]:8080/", true),
            ("http://self", "http://self/api", true),
            ("http://self", "http://self.alt/api", true),
            ("http://self", "http://other/api", false),
            (
                "redis://cache.example.com",
                "http://cache.example.com:6379/",
                false,
            ),
            (
                "http://*.spin.internal",
                "http://users.spin.internal/",
                true,
            ),
        ];
        for (entry, uri, expected) in cases {
            assert_eq!(allows(entry, uri), expected, "{entry} for {uri}");
        }
    }

    #[test]
    fn what_spin_refuses_is_refused() {
        let cases = [
            ("http://api.example.com/v1", "no path"),
            ("http://api.*.com", "a wildcard is a whole host"),
            ("http://*", ""),
            ("ftp://files.example.com", "no well-known one"),
            ("http://localhost:eighty", "a port is a number"),
            ("http://localhost:90..80", "START below END"),
            ("1ttp://x", "a scheme is letters"),
            ("user@host", "without user info"),
        ];
        for (entry, expected) in cases {
            match entry.parse::<Destination>() {
                Ok(parsed) if expected.is_empty() => assert_eq!(parsed.host, Host::Any),
                Ok(parsed) => panic!("{entry} parsed as {parsed:?}"),
                Err(err) => assert!(
                    err.contains(expected),
                    "{entry}: {expected:?} not in {err:?}"
                ),
            }
        }
    }
}
