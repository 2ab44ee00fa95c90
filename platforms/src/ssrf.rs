//! The guard every user-supplied URL passes (a Mastodon instance, an image, a return URL).
//!
//! Two checks: `check_url` refuses bad schemes and IP literals in private, loopback, link-local and
//! other non-public ranges before anything is stored; the [`GuardedResolver`] that every outgoing
//! HTTP client uses refuses to connect to such addresses when a host name resolves to one (so DNS
//! rebinding cannot slip past a check made earlier). Tests allow loopback explicitly.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use url::{Host, Url};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    #[error("not a valid absolute URL")]
    Malformed,
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("URLs with credentials are not allowed")]
    Credentials,
    #[error("URLs with control characters (CR, LF, NUL, ...) are not allowed")]
    ControlCharacter,
    #[error("the host is a private, loopback or link-local address")]
    PrivateAddress,
}

/// What the guard lets through. The default is strict; tests set `allow_private`.
#[derive(Debug, Clone, Default)]
pub struct SsrfGuard {
    allow_private: bool,
    /// Host names answered without DNS (tests only: a name that resolves to a private address).
    hosts: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl SsrfGuard {
    pub fn strict() -> Self {
        Self::default()
    }

    /// Lets private and loopback addresses through: for tests and local development only.
    pub fn allowing_private() -> Self {
        Self {
            allow_private: true,
            ..Self::default()
        }
    }

    /// Answers `host` with `addrs` instead of asking DNS, like an `/etc/hosts` line. For tests.
    pub fn with_host(mut self, host: &str, addrs: &[IpAddr]) -> Self {
        Arc::make_mut(&mut self.hosts).insert(host.to_ascii_lowercase(), addrs.to_vec());
        self
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Parses and checks a URL without resolving it.
    pub fn check_url(&self, raw: &str) -> Result<Url, SsrfError> {
        // The URL parser drops tabs, CR and LF silently; the raw text is what gets stored.
        if raw.chars().any(char::is_control) {
            return Err(SsrfError::ControlCharacter);
        }
        let url = Url::parse(raw).map_err(|_| SsrfError::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SsrfError::Scheme);
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SsrfError::Credentials);
        }
        let blocked = match url.host() {
            None => return Err(SsrfError::Malformed),
            Some(Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
            Some(Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost") || !d.contains('.')
            }
        };
        if blocked && !self.allow_private {
            return Err(SsrfError::PrivateAddress);
        }
        Ok(url)
    }

    pub fn allows_addr(&self, addr: IpAddr) -> bool {
        self.allow_private || is_public(addr)
    }

    /// `check_url`, then resolves a host name and refuses it when none of its addresses is
    /// allowed: a name pointing at a private address is refused up front rather than failing
    /// later as a network error. A name that does not resolve passes (the call will fail then).
    pub async fn check_url_resolved(&self, raw: &str) -> Result<Url, SsrfError> {
        let url = self.check_url(raw)?;
        if self.allow_private {
            return Ok(url);
        }
        if let Some(Host::Domain(d)) = url.host()
            && let Ok(addrs) = self.lookup(d).await
            && !addrs.is_empty()
            && !addrs.iter().any(|a| self.allows_addr(*a))
        {
            return Err(SsrfError::PrivateAddress);
        }
        Ok(url)
    }

    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(addrs) = self.hosts.get(&host) {
            return Ok(addrs.clone());
        }
        Ok(tokio::net::lookup_host(format!("{host}:0"))
            .await?
            .map(|a| a.ip())
            .collect())
    }

    /// A DNS resolver for reqwest that drops every non-public address.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }
}

/// Whether an address is globally routable (not private, loopback, link-local, CGNAT,
/// documentation, multicast or unspecified). An IPv6 address that carries an IPv4 address
/// (IPv4-mapped, IPv4-compatible, 6to4, NAT64, Teredo) is judged by the IPv4 address it reaches.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6) && embedded_v4(v6).iter().all(|v4| is_public_v4(*v4)),
    }
}

/// The IPv4 addresses an IPv6 address reaches through a translation or tunnel.
fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = ip.octets();
    let s = ip.segments();
    let v4 = |a: &[u8]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d (deprecated, RFC 4291 2.5.5.1).
        [0, 0, 0, 0, 0, 0xffff | 0, _, _] => vec![v4(&o[12..16])],
        // 6to4 2002:AABB:CCDD::/16 (RFC 3056).
        [0x2002, ..] => vec![v4(&o[2..6])],
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => vec![v4(&o[12..16])],
        // Local-use NAT64 64:ff9b:1::/48 (RFC 8215): a /48 prefix puts the IPv4 address in
        // octets 6-7 and 9-10 (octet 8 is reserved, RFC 6052 2.2).
        [0x64, 0xff9b, 1, ..] => vec![Ipv4Addr::new(o[6], o[7], o[9], o[10])],
        // Teredo 2001::/32 (RFC 4380): the server's address, and the client's, inverted.
        [0x2001, 0, ..] => vec![
            v4(&o[4..8]),
            Ipv4Addr::from(!u32::from_be_bytes([o[12], o[13], o[14], o[15]])),
        ],
        _ => Vec::new(),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF 192.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg0 = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (seg0 & 0xfe00) == 0xfc00 // unique local
        || (seg0 & 0xffc0) == 0xfe80 // link local
        || (seg0 & 0xffc0) == 0xfec0 // site local
        || seg0 == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

/// Resolves through the system resolver and keeps only the addresses the guard allows.
#[derive(Debug)]
pub struct GuardedResolver {
    guard: SsrfGuard,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = guard
                .lookup(name.as_str())
                .await?
                .into_iter()
                .filter(|a| guard.allows_addr(*a))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(std::io::Error::other(SsrfError::PrivateAddress))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_loopback_literals_are_refused() {
        let g = SsrfGuard::strict();
        for bad in [
            "http://127.0.0.1/",
            "http://10.1.2.3/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]/",
            "http://localhost:8080/",
            "http://intranet/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            assert_eq!(
                g.check_url(bad).unwrap_err(),
                SsrfError::PrivateAddress,
                "{bad}"
            );
        }
    }

    #[test]
    fn public_urls_pass_and_other_schemes_do_not() {
        let g = SsrfGuard::strict();
        assert!(g.check_url("https://mastodon.social/@x").is_ok());
        assert!(g.check_url("https://93.184.216.34/").is_ok());
        assert_eq!(
            g.check_url("file:///etc/passwd").unwrap_err(),
            SsrfError::Scheme
        );
        assert_eq!(
            g.check_url("gopher://x.org").unwrap_err(),
            SsrfError::Scheme
        );
        assert_eq!(
            g.check_url("https://u:p@x.org").unwrap_err(),
            SsrfError::Credentials
        );
        assert_eq!(g.check_url("not a url").unwrap_err(), SsrfError::Malformed);
    }

    #[test]
    fn ipv6_forms_embedding_a_private_ipv4_address_are_refused() {
        let g = SsrfGuard::strict();
        for bad in [
            "http://[::127.0.0.1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[2002:7f00:1::1]/",
            "http://[2002:a9fe:a9fe::]/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://[64:ff9b::10.1.2.3]/",
            "http://[64:ff9b:1:7f00:0:100::]/",
            // Teredo: server 65.54.227.120, client 127.0.0.1 (inverted: 80ff:fffe).
            "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
            // Teredo with a private server.
            "http://[2001:0:a00:1::1]/",
        ] {
            assert_eq!(
                g.check_url(bad).unwrap_err(),
                SsrfError::PrivateAddress,
                "{bad}"
            );
        }
        for good in [
            "http://[::ffff:93.184.216.34]/",
            "http://[2002:5db8:d822::1]/",
            "http://[64:ff9b::93.184.216.34]/",
            "http://[2606:4700::1111]/",
        ] {
            assert!(g.check_url(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn control_characters_are_refused_even_where_the_parser_would_drop_them() {
        let g = SsrfGuard::allowing_private();
        for bad in [
            "https://blog.example/a\r\nSet-Cookie: x=1",
            "https://blog.example/\ta",
            "https://blog.example/\u{0}",
            "https://blog.example/\u{7f}",
        ] {
            assert_eq!(
                g.check_url(bad).unwrap_err(),
                SsrfError::ControlCharacter,
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_private_address_is_refused_up_front() {
        let private =
            SsrfGuard::strict().with_host("intranet.example", &["10.0.0.5".parse().unwrap()]);
        assert_eq!(
            private
                .check_url_resolved("https://intranet.example/")
                .await
                .unwrap_err(),
            SsrfError::PrivateAddress
        );
        let public =
            SsrfGuard::strict().with_host("social.example", &["93.184.216.34".parse().unwrap()]);
        assert!(
            public
                .check_url_resolved("https://social.example/")
                .await
                .is_ok()
        );
    }

    #[test]
    fn the_test_guard_lets_loopback_through() {
        assert!(
            SsrfGuard::allowing_private()
                .check_url("http://127.0.0.1:9/")
                .is_ok()
        );
    }
}
