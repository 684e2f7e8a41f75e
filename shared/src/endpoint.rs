//! `mqtt://host:port` / `mqtts://host:port` broker URLs, parsed once for
//! both the agent and the aggregator.

use std::fmt;

/// A broker address from a `--mqtt-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl MqttEndpoint {
    /// Parses `mqtt://HOST[:PORT]` (default port 1883) or `mqtts://HOST[:PORT]` (8883).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!("{url:?} must start with mqtt:// or mqtts://"));
        };
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') || hostport.contains('@') {
            return Err(format!(
                "{url:?} must be mqtt://HOST:PORT (put credentials in the config file, not the URL)"
            ));
        }
        let default_port = if tls { 8883 } else { 1883 };
        // Bracketed IPv6: mqtt://[::1]:1883
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in IPv6 address"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let port = match port {
            None => default_port,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url:?}: port {p:?} is not a number in 1..=65535"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl fmt::Display for MqttEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let e = MqttEndpoint::parse("mqtt://broker.local:1884").expect("ok");
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("broker.local", 1884, false)
        );
        assert_eq!(MqttEndpoint::parse("mqtts://b").expect("ok").port, 8883);
        assert_eq!(
            MqttEndpoint::parse("mqtt://[::1]:9").expect("ok").host,
            "::1"
        );
        assert_eq!(
            MqttEndpoint::parse("mqtt://h:1/").expect("ok").to_string(),
            "mqtt://h:1"
        );
        for bad in [
            "tcp://h:1",
            "mqtt://",
            "mqtt://h:x",
            "mqtt://h:0",
            "mqtt://u:p@h:1",
            "mqtt://h:1/path",
        ] {
            assert!(MqttEndpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
