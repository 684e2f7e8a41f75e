//! Webhook deliveries: one signed JSON POST per alert, retried with
//! exponential backoff and jitter, every attempt written to the delivery log.
//!
//! Signature: `X-EdgeQI-Signature: sha256=HEX`, the HMAC-SHA256 under the
//! rule's secret of `{X-EdgeQI-Timestamp}.{body}` (the timestamp is Unix
//! seconds, fresh for every attempt), so a receiver can check both that the
//! body is ours and that it is recent. See docs/OPERATIONS.md.

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

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Delivered(u16),
    /// Worth another try: 5xx, 408, 429, a timeout or a connection error.
    Retry(Option<u16>, String),
    /// The receiver refused it for good (other 4xx, or a redirect).
    Refused(u16, String),
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
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.webhook_timeout))
            // Every status is an answer to log, not an error to unwrap.
            .http_status_as_error(false)
            // A redirect would re-send the signed body somewhere unchecked.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(concat!("edgeqi-aggregator/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
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
