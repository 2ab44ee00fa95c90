//! The guard every user-supplied URL passes (a Mastodon instance, an image, a return URL).
//!
//! Two checks: `check_url` refuses bad schemes and IP literals in private, loopback, link-local and
//! other non-public ranges before anything is stored; the [`GuardedResolver`] that every outgoing
//! HTTP client uses refuses to connect to such addresses when a host name resolves to one (so DNS
//! rebinding cannot slip past a check made earlier). Tests allow loopback explicitly.

use std::{
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
    #[error("the host is a private, loopback or link-local address")]
    PrivateAddress,
}

/// What the guard lets through. The default is strict; tests set `allow_private`.
#[derive(Debug, Clone, Default)]
pub struct SsrfGuard {
    allow_private: bool,
}

impl SsrfGuard {
    pub fn strict() -> Self {
        Self {
            allow_private: false,
        }
    }

    /// Lets private and loopback addresses through: for tests and local development only.
    pub fn allowing_private() -> Self {
        Self {
            allow_private: true,
        }
    }

    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Parses and checks a URL without resolving it.
    pub fn check_url(&self, raw: &str) -> Result<Url, SsrfError> {
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

    /// A DNS resolver for reqwest that drops every non-public address.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }
}

/// Whether an address is globally routable (not private, loopback, link-local, CGNAT,
/// documentation, multicast, unspecified or an IPv4-mapped form of one of those).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
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
        || seg0 == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || seg0 == 0x64 && ip.segments()[1] == 0xff9b) // NAT64
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
            let host = format!("{}:0", name.as_str());
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host)
                .await?
                .filter(|a| guard.allows_addr(a.ip()))
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
    fn the_test_guard_lets_loopback_through() {
        assert!(
            SsrfGuard::allowing_private()
                .check_url("http://127.0.0.1:9/")
                .is_ok()
        );
    }
}
