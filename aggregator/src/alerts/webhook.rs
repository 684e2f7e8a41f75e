//! Webhook deliveries: one signed JSON POST per alert, retried with
//! exponential backoff and jitter, every attempt written to the delivery log.
//!
//! Signature: `X-EdgeQI-Signature: sha256=HEX`, the HMAC-SHA256 under the
//! rule's secret of `{X-EdgeQI-Timestamp}.{body}` (the timestamp is Unix
//! seconds, fresh for every attempt), so a receiver can check both that the
//! body is ours and that it is recent. See docs/OPERATIONS.md.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use tokio::sync::Semaphore;

use super::store::{AlertStore, Attempt};
use super::AlertSettings;

pub const SIGNATURE_HEADER: &str = "x-edgeqi-signature";
pub const TIMESTAMP_HEADER: &str = "x-edgeqi-timestamp";
pub const DELIVERY_HEADER: &str = "x-edgeqi-delivery";
pub const EVENT_HEADER: &str = "x-edgeqi-event";

/// `sha256=HEX` of HMAC-SHA256(secret, "{timestamp}.{body}").
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What a receiver does: recompute and compare in constant time.
pub fn verify(secret: &[u8], timestamp: i64, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(tag) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let msg = [timestamp.to_string().as_bytes(), b".", body].concat();
    ring::hmac::verify(&key, &msg, &tag).is_ok()
}

/// The wait before attempt `n + 1` after `n` failed ones: the base doubled
/// per attempt, capped, then "equal jitter" (half fixed, half random) so
/// many failing deliveries do not retry in lockstep.
pub fn backoff(n: u32, base: Duration, max: Duration) -> Duration {
    let exp = base
        .saturating_mul(1u32 << n.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    half + Duration::from_secs_f64(half.as_secs_f64() * rand::rng().random::<f64>())
}

/// Why an address is no place for a webhook, or `None` for a public one:
/// loopback, private (RFC 1918, unique local), shared (RFC 6598),
/// link-local (cloud metadata lives there), unspecified, multicast and
/// broadcast addresses reach the aggregator's own host or network, not a
/// receiver on the internet. IPv4 inside IPv6 (mapped, NAT64) counts as the
/// IPv4 address.
pub fn internal_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4(v4);
            }
            let seg = v6.segments();
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return internal_v4(Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                ));
            }
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("private")
            } else if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xffc0 == 0xfec0 {
                Some("link-local")
            } else {
                None
            }
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() || (o[0] == 100 && (64..128).contains(&o[1])) {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 0 {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

/// What to tell an operator whose webhook points inside.
fn refusal(what: &str, kind: &str) -> String {
    format!(
        "{what} is an internal ({kind}) address: webhooks may not reach the aggregator's \
         own host or network unless alerts.allow_private_webhooks is set"
    )
}

/// The check at rule create/update time: the URL's host must not be an
/// internal address literal or a `localhost` name. Names are resolved, and
/// checked again, at every delivery (see [`GuardedResolver`]); a name that
/// resolves inside is refused then.
pub fn check_destination(url: &str, allow_private: bool) -> Result<(), String> {
    if allow_private {
        return Ok(());
    }
    let Some(host) = url
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
    else {
        return Ok(()); // the URL check proper reports what is wrong with it
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if let Some(kind) = internal_address(ip) {
            return Err(refusal(&format!("actions.webhook.url host {host}"), kind));
        }
    }
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(refusal(
            &format!("actions.webhook.url host {host}"),
            "loopback",
        ));
    }
    Ok(())
}

/// Resolves webhook hosts like ureq does, then drops internal addresses
/// unless they are allowed. The connection goes to the addresses checked
/// here, so a name that resolves differently later (DNS rebinding) cannot
/// slip past the check.
#[derive(Debug)]
pub struct GuardedResolver {
    allow_private: bool,
    inner: ureq::unversioned::resolver::DefaultResolver,
}

/// The error of a delivery whose host resolves to internal addresses only.
#[derive(Debug)]
pub struct InternalDestination(pub String);

impl std::fmt::Display for InternalDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InternalDestination {}

impl ureq::unversioned::resolver::Resolver for GuardedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let found = self.inner.resolve(uri, config, timeout)?;
        if self.allow_private {
            return Ok(found);
        }
        let mut kept = self.inner.empty();
        let mut refused = None;
        for addr in found.iter() {
            match internal_address(addr.ip()) {
                None => kept.push(*addr),
                Some(kind) => refused = refused.or(Some((addr.ip(), kind))),
            }
        }
        match refused {
            Some((ip, kind)) if kept.is_empty() => {
                Err(ureq::Error::Other(Box::new(InternalDestination(refusal(
                    &format!(
                        "{} resolves to {ip}, which",
                        uri.host().unwrap_or("the host")
                    ),
                    kind,
                )))))
            }
            _ => Ok(kept),
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Delivered(u16),
    /// Worth another try: 5xx, 408, 429, a timeout or a connection error.
    Retry(Option<u16>, String),
    /// The receiver refused it for good (other 4xx, or a redirect).
    Refused(u16, String),
    /// The host is (or resolves to) an internal address: never sent.
    Blocked(String),
}

/// Sends webhooks: one shared HTTP agent and a limit on requests in flight.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    agent: ureq::Agent,
    slots: Arc<Semaphore>,
    store: AlertStore,
    settings: AlertSettings,
}

/// One delivery to make.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery_id: i64,
    pub url: String,
    pub secret: String,
    pub body: String,
    pub max_attempts: u32,
    /// Attempts already made (a delivery resumed after a restart).
    pub attempts_made: u32,
}

impl WebhookSender {
    pub fn new(store: AlertStore, settings: AlertSettings) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(settings.webhook_timeout))
            // Every status is an answer to log, not an error to unwrap.
            .http_status_as_error(false)
            // A redirect would re-send the signed body somewhere unchecked.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("edgeqi-aggregator/", env!("CARGO_PKG_VERSION")));
        // Through a proxy the resolver would check the proxy's address, not
        // the receiver's: with the address guard on, webhooks go direct.
        let config = if settings.allow_private_webhooks {
            config
        } else {
            config.proxy(None)
        };
        let agent = ureq::Agent::with_parts(
            config.build(),
            ureq::unversioned::transport::DefaultConnector::default(),
            GuardedResolver {
                allow_private: settings.allow_private_webhooks,
                inner: Default::default(),
            },
        );
        Self {
            agent,
            slots: Arc::new(Semaphore::new(settings.webhook_concurrency.max(1))),
            store,
            settings,
        }
    }

    /// Delivers in the background; the caller never waits.
    pub fn spawn(&self, job: Job) {
        let me = self.clone();
        tokio::spawn(async move { me.deliver(job).await });
    }

    async fn attempt(&self, job: &Job) -> Outcome {
        let agent = self.agent.clone();
        let (url, body, secret, id) = (
            job.url.clone(),
            job.body.clone(),
            job.secret.clone(),
            job.delivery_id,
        );
        let sent = tokio::task::spawn_blocking(move || {
            let now = Utc::now().timestamp();
            let signature = sign(secret.as_bytes(), now, body.as_bytes());
            agent
                .post(&url)
                .header("content-type", "application/json")
                .header(EVENT_HEADER, "alert")
                .header(DELIVERY_HEADER, id.to_string())
                .header(TIMESTAMP_HEADER, now.to_string())
                .header(SIGNATURE_HEADER, signature)
                .send(body.as_bytes())
                .map(|r| r.status().as_u16())
        })
        .await;
        match sent {
            Err(e) => Outcome::Retry(None, format!("send task failed: {e}")),
            Ok(Ok(code)) if (200..300).contains(&code) => Outcome::Delivered(code),
            Ok(Ok(code)) if code >= 500 || code == 408 || code == 429 => {
                Outcome::Retry(Some(code), format!("HTTP {code}"))
            }
            Ok(Ok(code)) => Outcome::Refused(code, format!("HTTP {code}")),
            Ok(Err(ureq::Error::Timeout(t))) => Outcome::Retry(None, format!("timed out ({t})")),
            Ok(Err(ureq::Error::Other(e))) if e.is::<InternalDestination>() => {
                Outcome::Blocked(e.to_string())
            }
            Ok(Err(e)) => Outcome::Retry(None, e.to_string()),
        }
    }

    /// Tries until delivered, refused, or out of attempts; logs each attempt.
    pub async fn deliver(&self, job: Job) {
        let mut n = job.attempts_made;
        while n < job.max_attempts {
            if n > 0 {
                let wait = backoff(
                    n,
                    self.settings.webhook_backoff,
                    self.settings.webhook_backoff_max,
                );
                tokio::time::sleep(wait).await;
            }
            n += 1;
            let outcome = {
                let Ok(_slot) = self.slots.acquire().await else {
                    return;
                };
                let started = Utc::now();
                let clock = Instant::now();
                let outcome = self.attempt(&job).await;
                (started, clock.elapsed(), outcome)
            };
            let (started_at, took, outcome) = outcome;
            let last = n >= job.max_attempts;
            let (status_code, error, attempt_outcome, status) = match &outcome {
                Outcome::Delivered(c) => (Some(*c), None, "delivered", "delivered"),
                Outcome::Refused(c, e) => (Some(*c), Some(e.clone()), "failed", "failed"),
                Outcome::Blocked(e) => (None, Some(e.clone()), "failed", "failed"),
                Outcome::Retry(c, e) if last => (*c, Some(e.clone()), "failed", "failed"),
                Outcome::Retry(c, e) => (*c, Some(e.clone()), "retry", "pending"),
            };
            metrics::counter!("edgeqi_webhook_attempts_total", "outcome" => attempt_outcome)
                .increment(1);
            tracing::info!(
                delivery = job.delivery_id,
                attempt = n,
                status_code,
                error = error.as_deref(),
                outcome = attempt_outcome,
                "webhook attempt"
            );
            let record = Attempt {
                attempt: n,
                started_at,
                duration_ms: took.as_millis() as u64,
                status_code,
                error,
                outcome: attempt_outcome.into(),
            };
            if let Err(e) = self
                .store
                .record_attempt(job.delivery_id, record, status)
                .await
            {
                tracing::error!(error = %e, delivery = job.delivery_id, "cannot log the webhook attempt");
            }
            if status != "pending" {
                metrics::counter!("edgeqi_webhook_deliveries_total", "status" => status)
                    .increment(1);
                if status == "failed" {
                    tracing::warn!(
                        delivery = job.delivery_id,
                        attempts = n,
                        url = %job.url,
                        "webhook delivery failed"
                    );
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_detect_tampering() {
        let sig = sign(b"0123456789abcdef", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert!(verify(
            b"0123456789abcdef",
            1_700_000_000,
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify(
            b"0123456789abcdef",
            1_700_000_001,
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify(
            b"0123456789abcdef",
            1_700_000_000,
            b"{\"a\":2}",
            &sig
        ));
        assert!(!verify(
            b"another-secret!!",
            1_700_000_000,
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify(b"k", 1, b"", "sha256=zz"));
    }

    #[test]
    fn internal_addresses_are_recognised() {
        let kind = |s: &str| internal_address(s.parse().expect(s));
        for (ip, want) in [
            ("127.0.0.1", Some("loopback")),
            ("127.255.0.9", Some("loopback")),
            ("::1", Some("loopback")),
            ("10.0.0.1", Some("private")),
            ("172.16.0.1", Some("private")),
            ("172.31.255.254", Some("private")),
            ("192.168.0.1", Some("private")),
            ("100.64.0.1", Some("private")),
            ("fd12:3456::1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("0.0.0.0", Some("unspecified")),
            ("::", Some("unspecified")),
            ("224.0.0.251", Some("multicast")),
            ("ff02::1", Some("multicast")),
            ("255.255.255.255", Some("broadcast")),
            ("::ffff:10.1.1.1", Some("private")),
            ("64:ff9b::7f00:1", Some("loopback")),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
            ("::ffff:8.8.8.8", None),
        ] {
            assert_eq!(kind(ip), want, "{ip}");
        }
    }

    #[test]
    fn rule_urls_naming_internal_hosts_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1/x",
            "http://[::1]:8080/x",
            "http://LOCALHOST/x",
            "http://localhost./x",
            "http://db.localhost/x",
            "http://192.168.1.1/x",
        ] {
            let e = check_destination(url, false).expect_err(url);
            assert!(e.contains("alerts.allow_private_webhooks"), "{e}");
            assert!(check_destination(url, true).is_ok(), "{url} allowed");
        }
        for url in [
            "https://hooks.example.com/x",
            "http://8.8.8.8/x",
            "http://[2606:4700::1111]/x",
        ] {
            assert!(check_destination(url, false).is_ok(), "{url}");
        }
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for n in 1..=8 {
            let full = base.saturating_mul(1 << (n - 1)).min(max);
            let d = backoff(n, base, max);
            assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?} vs {full:?}");
        }
    }
}
