//! `mqtt://[USER[:PASSWORD]@]host:port` / `mqtts://…` broker URLs, parsed once
//! for both the agent and the aggregator.
//!
//! Credentials in the URL are percent-decoded and kept out of `Display` and
//! `Debug`, because the URL is logged at start-up.

use std::fmt;

/// `USER[:PASSWORD]` from a broker URL, percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlCredentials {
    pub username: String,
    pub password: Option<String>,
}

impl fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn percent_decode(s: &str, url: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    format!("{}: bad %-escape in the credentials", redact_userinfo(url))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| format!("{}: credentials are not UTF-8", redact_userinfo(url)))
}

/// The URL with any password replaced by `***`, for error messages.
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Splits `USER[:PASSWORD]@` off the authority of `url` (the part after the
/// scheme). The last `@` separates, so an unescaped `@` in a password works.
pub fn split_userinfo<'a>(
    authority: &'a str,
    url: &str,
) -> Result<(Option<UrlCredentials>, &'a str), String> {
    let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
        return Ok((None, authority));
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u, Some(percent_decode(p, url)?)),
        None => (userinfo, None),
    };
    let username = percent_decode(user, url)?;
    if username.is_empty() {
        return Err(format!(
            "{}: empty user name before '@'",
            redact_userinfo(url)
        ));
    }
    Ok((Some(UrlCredentials { username, password }), hostport))
}

/// A broker address from a `--mqtt-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// `USER:PASSWORD@` from the URL, if any.
    pub credentials: Option<UrlCredentials>,
}

impl MqttEndpoint {
    /// Parses `mqtt://[USER[:PASSWORD]@]HOST[:PORT]` (default port 1883) or
    /// `mqtts://…` (8883).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(format!(
                "{:?} must start with mqtt:// or mqtts://",
                redact_userinfo(url)
            ));
        };
        let authority = rest.trim_end_matches('/');
        let (credentials, hostport) = split_userinfo(authority, url)?;
        if hostport.contains('/') || hostport.contains('?') {
            return Err(format!(
                "{:?} must be mqtt://[USER:PASSWORD@]HOST:PORT (no path)",
                redact_userinfo(url)
            ));
        }
        let url = redact_userinfo(url);
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
            credentials,
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
            "mqtt://@h:1",
            "mqtt://u:%zz@h:1",
            "mqtt://h:1/path",
        ] {
            assert!(MqttEndpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_are_decoded_and_never_printed() {
        let e = MqttEndpoint::parse("mqtts://node-1:p%40ss:w@rd@broker:8884").expect("ok");
        let c = e.credentials.clone().expect("credentials");
        assert_eq!(c.username, "node-1");
        assert_eq!(c.password.as_deref(), Some("p@ss:w@rd"));
        assert_eq!((e.host.as_str(), e.port), ("broker", 8884));
        assert_eq!(e.to_string(), "mqtts://broker:8884");
        assert!(!format!("{e:?}").contains("ss:w"), "{e:?}");
        let err = MqttEndpoint::parse("mqtt://u:secret@h:x").expect_err("bad port");
        assert!(!err.contains("secret"), "{err}");
        assert_eq!(
            MqttEndpoint::parse("mqtt://only-user@h")
                .expect("ok")
                .credentials
                .map(|c| (c.username, c.password)),
            Some(("only-user".into(), None))
        );
    }
}
