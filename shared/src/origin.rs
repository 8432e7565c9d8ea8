//! Where a request came from, as API Gateway saw it: the source address (never a
//! client-controlled header) and the user agent, and the source network the limits key by.

/// Where a request came from: what the limits key by and the audit log records.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// `requestContext.http.sourceIp` (never `X-Forwarded-For`).
    pub source_ip: Option<String>,
    /// The `User-Agent` header, cut to 512 characters.
    pub user_agent: Option<String>,
}

impl Origin {
    /// The source network the limits key by: the IPv4 address, or the IPv6 /64 (one
    /// subscriber's usual allocation, so rotating addresses inside it gains nothing).
    /// `unknown` without a source address.
    pub fn network(&self) -> String {
        use std::net::IpAddr;
        match self.source_ip.as_deref().map(str::parse::<IpAddr>) {
            None => "unknown".to_owned(),
            Some(Ok(IpAddr::V4(v4))) => v4.to_string(),
            Some(Ok(IpAddr::V6(v6))) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
            // API Gateway always sends an address; anything else is kept as it came.
            Some(Err(_)) => self.source_ip.clone().unwrap_or_default(),
        }
    }

    /// What the audit log records a refusal under: the network, so that rotating addresses
    /// inside one IPv6 /64 cannot make a row per request.
    pub fn refusal_source(&self) -> Option<String> {
        self.source_ip.as_ref().map(|_| self.network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(ip: &str) -> String {
        Origin {
            source_ip: Some(ip.to_owned()),
            user_agent: None,
        }
        .network()
    }

    #[test]
    fn limits_key_ipv4_by_address_and_ipv6_by_its_64() {
        assert_eq!(network("203.0.113.7"), "203.0.113.7");
        assert_eq!(network("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            network("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            "2001:db8:1:2::/64"
        );
        assert_ne!(network("2001:db8:1:3::1"), "2001:db8:1:2::/64");
        assert_eq!(network("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(Origin::default().network(), "unknown");
    }
}
