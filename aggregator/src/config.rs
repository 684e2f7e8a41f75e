//! The aggregator's configuration: TOML file, then environment, then flags.
//!
//! Every key is documented in `configs/aggregator.toml`; every problem in the
//! file and flags is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgeqi_shared::config::{ByteSize, ConfigDoc, ConfigErrors, HumanDuration};
use edgeqi_shared::protocol::DEFAULT_MAX_PAYLOAD_BYTES;

const fn default_http_listen() -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8080)
}
const fn default_mqtt_listen() -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 1883)
}
fn default_database_url() -> String {
    "sqlite://./data/edgeqi.db".into()
}
fn default_client_id() -> String {
    "edgeqi-aggregator".into()
}
/// Three descriptors each: about 12,300 with the HTTP cap, inside common
/// hard limits (20,000 and up; the systemd unit sets 65,536).
const fn default_mqtt_max_connections() -> usize {
    4096
}
const fn default_keep_alive() -> Duration {
    Duration::from_secs(15)
}
const fn default_live_buffer() -> usize {
    4096
}
const fn default_node_sweep() -> Duration {
    Duration::from_secs(2)
}
const fn default_db_max_connections() -> usize {
    8
}
const fn default_db_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
const fn default_db_statement_timeout() -> Duration {
    Duration::from_secs(60)
}
const fn default_retention_interval() -> Duration {
    Duration::from_secs(3600)
}
const fn default_ingest_group_max_detections() -> usize {
    50_000
}
/// An agent offline for months still delivers what its outbox kept.
const fn default_ingest_max_age() -> Duration {
    Duration::from_secs(365 * 86_400)
}
/// NTP keeps clocks within milliseconds; minutes cover a box that is still syncing.
const fn default_ingest_max_clock_skew() -> Duration {
    Duration::from_secs(10 * 60)
}

/// Where MQTT traffic comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum BrokerMode {
    /// Run rumqttd in-process behind the gateway, listening here.
    Embedded {
        /// Plain MQTT listener (`None`: `mqtt.listen = "off"`, TLS only).
        listen: Option<SocketAddr>,
        tls: Option<TlsListener>,
        /// Let clients without credentials in, without topic limits (demo).
        allow_anonymous: bool,
    },
    /// Connect to an existing broker (`mqtt://host:port` or `mqtts://…`).
    External { url: String },
}

impl std::fmt::Debug for BrokerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerMode::Embedded {
                listen,
                tls,
                allow_anonymous,
            } => f
                .debug_struct("Embedded")
                .field("listen", listen)
                .field("tls", tls)
                .field("allow_anonymous", allow_anonymous)
                .finish(),
            // The URL may carry a password: it is logged at start-up.
            BrokerMode::External { url } => f
                .debug_struct("External")
                .field("url", &edgeqi_shared::endpoint::redact_userinfo(url))
                .finish(),
        }
    }
}

/// The embedded broker's MQTT-over-TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListener {
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Clone, PartialEq, Eq)]
pub struct AggregatorConfig {
    pub http_listen: SocketAddr,
    pub database_url: String,
    pub broker: BrokerMode,
    pub mqtt_client_id: String,
    pub mqtt_username: Option<String>,
    pub mqtt_password: Option<String>,
    pub mqtt_keep_alive: Duration,
    /// Client connections the embedded broker's gateway holds at once.
    pub mqtt_max_connections: usize,
    /// Largest MQTT packet accepted by the broker and the ingest client, and
    /// the payload size limit of ingest.
    pub max_packet_size: usize,
    pub live_buffer: usize,
    pub node_sweep_interval: Duration,
    pub admin_token: Option<String>,
    pub log_format: String,
    /// Where users, tenants, API keys and the audit log live (sqlite://).
    pub accounts_database_url: String,
    /// Lifetime of a session token from `POST /api/v1/auth/login`.
    pub token_ttl: Duration,
    /// YOLO model (imported safetensors) that classifies citizen report photos.
    pub model: Option<std::path::PathBuf>,
    /// PostgreSQL pool (ignored by SQLite).
    pub database: crate::store::postgres::PgSettings,
    pub retention: crate::store::RetentionPolicy,
    /// How often retention (and partition creation) runs.
    pub retention_interval: Duration,
    /// Group commit: the most detections stored in one transaction.
    pub ingest_group_max_detections: usize,
    /// Payload timestamps older than this are refused (`ingest.max_age`).
    pub ingest_max_age: Duration,
    /// Payload timestamps further ahead of our clock than this are refused
    /// (`ingest.max_clock_skew`).
    pub ingest_max_clock_skew: Duration,
    /// Alert evaluator queue and webhook sending (`[alerts]`).
    pub alerts: crate::alerts::AlertSettings,
    /// Tenant of citizen reports that name none (`reports.default_tenant_id`;
    /// `None`: such reports belong to no tenant). Checked against the
    /// account store at start-up by [`AggregatorConfig::check_accounts`].
    pub reports_default_tenant: Option<i64>,
    /// Pixel and decoded-size caps of report photos (`reports.max_photo_*`).
    pub photo_limits: crate::incidents::photo::PhotoLimits,
    /// Report photos decoded (and analysed) at once (`reports.max_concurrent_decodes`).
    pub photo_decodes: usize,
    /// Timeouts and connection cap of the HTTP listener (`[http]`).
    pub http: crate::http_server::HttpLimits,
}

impl std::fmt::Debug for AggregatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatorConfig")
            .field("http_listen", &self.http_listen)
            .field(
                "database_url",
                &crate::store::redact_url(&self.database_url),
            )
            .field("broker", &self.broker)
            .field("mqtt_client_id", &self.mqtt_client_id)
            .field("mqtt_username", &self.mqtt_username)
            .field("mqtt_password", &self.mqtt_password.as_ref().map(|_| "***"))
            .field("max_packet_size", &self.max_packet_size)
            .field("mqtt_max_connections", &self.mqtt_max_connections)
            .field("live_buffer", &self.live_buffer)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .field("retention", &self.retention)
            .field(
                "ingest_group_max_detections",
                &self.ingest_group_max_detections,
            )
            .field("ingest_max_age", &self.ingest_max_age)
            .field("ingest_max_clock_skew", &self.ingest_max_clock_skew)
            .field("alerts", &self.alerts)
            .field("reports_default_tenant", &self.reports_default_tenant)
            .field("photo_limits", &self.photo_limits)
            .field("photo_decodes", &self.photo_decodes)
            .field("http", &self.http)
            .finish()
    }
}

/// Values given on the command line or in `EDGEQI_…` variables; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub http_listen: Option<String>,
    pub mqtt_listen: Option<String>,
    pub mqtt_url: Option<String>,
    pub database_url: Option<String>,
    pub log_format: Option<String>,
    pub admin_token: Option<String>,
    pub model: Option<String>,
    /// `--mqtt-allow-anonymous`: true wins over the file; false leaves it to the file.
    pub mqtt_allow_anonymous: bool,
    /// `--alerts-allow-private-webhooks`: true wins over the file; false leaves it to the file.
    pub alerts_allow_private_webhooks: bool,
    pub mqtt_tls_listen: Option<String>,
    pub mqtt_tls_cert: Option<String>,
    pub mqtt_tls_key: Option<String>,
    /// `--reports-default-tenant-id` / `EDGEQI_REPORTS_DEFAULT_TENANT_ID`; empty: not set.
    pub reports_default_tenant_id: Option<String>,
}

/// A flag (or its environment variable) wins over the file's value.
fn prefer(flag: &Option<String>, from_file: Option<String>) -> Option<String> {
    flag.clone().or(from_file)
}

impl AggregatorConfig {
    pub fn load(o: &Overrides) -> Result<Self, ConfigErrors> {
        let mut doc = match &o.config {
            Some(path) => ConfigDoc::load(path)?,
            None => ConfigDoc::empty("aggregator configuration"),
        };
        let parse_addr =
            |doc: &mut ConfigDoc, key: &str, flag: &Option<String>| -> Option<SocketAddr> {
                // Read the file key even when a flag wins, so it is not reported as unknown.
                let from_file = doc.get::<String>(key);
                let raw = flag.clone().or(from_file)?;
                match raw.parse() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        doc.problem(key, format!("{raw:?} is not an address like 0.0.0.0:8080"));
                        None
                    }
                }
            };
        let http_listen =
            parse_addr(&mut doc, "http_listen", &o.http_listen).unwrap_or(default_http_listen());
        // "off": TLS only (see mqtt.tls_listen).
        let mqtt_listen = match prefer(&o.mqtt_listen, doc.get::<String>("mqtt.listen")) {
            Some(off) if off == "off" => None,
            Some(raw) => Some(raw.parse().unwrap_or_else(|_| {
                doc.problem(
                    "mqtt.listen",
                    format!("{raw:?} is not an address like 0.0.0.0:1883 (or \"off\")"),
                );
                default_mqtt_listen()
            })),
            None => Some(default_mqtt_listen()),
        };
        let tls_listen = parse_addr(&mut doc, "mqtt.tls_listen", &o.mqtt_tls_listen);
        let tls_file = |doc: &mut ConfigDoc, key: &str, flag: &Option<String>| {
            let path = prefer(flag, doc.get::<String>(key)).filter(|p| !p.is_empty())?;
            let path = PathBuf::from(path);
            if !path.is_file() {
                doc.problem(key, format!("{} does not exist", path.display()));
            }
            Some(path)
        };
        let tls_cert = tls_file(&mut doc, "mqtt.tls_cert", &o.mqtt_tls_cert);
        let tls_key = tls_file(&mut doc, "mqtt.tls_key", &o.mqtt_tls_key);
        let tls = match (tls_listen, tls_cert, tls_key) {
            (Some(listen), Some(cert), Some(key)) => Some(TlsListener { listen, cert, key }),
            (None, None, None) => None,
            (Some(_), _, _) => {
                doc.problem("mqtt.tls_listen", "needs mqtt.tls_cert and mqtt.tls_key");
                None
            }
            (None, _, _) => {
                doc.problem("mqtt.tls_cert", "is set but mqtt.tls_listen is not");
                None
            }
        };
        if mqtt_listen.is_none() && tls.is_none() {
            doc.problem(
                "mqtt.listen",
                "is \"off\" but no mqtt.tls_listen is configured: nothing would accept nodes",
            );
        }
        let allow_anonymous =
            o.mqtt_allow_anonymous || doc.get::<bool>("mqtt.allow_anonymous").unwrap_or(false);
        let mqtt_url = prefer(&o.mqtt_url, doc.get::<String>("mqtt.url")).filter(|u| !u.is_empty());
        if let Some(url) = &mqtt_url {
            if let Err(e) = edgeqi_shared::MqttEndpoint::parse(url) {
                doc.problem("mqtt.url", e);
            }
        }
        let database_url = prefer(&o.database_url, doc.get::<String>("database_url"))
            .unwrap_or_else(default_database_url);
        if !crate::store::is_supported_url(&database_url) {
            doc.problem(
                "database_url",
                format!(
                    "{:?} is not supported: use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB",
                    crate::store::redact_url(&database_url)
                ),
            );
        }
        let database = crate::store::postgres::PgSettings {
            max_connections: doc
                .get_checked::<usize>("database.max_connections", |n| {
                    if (2..=256).contains(n) {
                        Ok(())
                    } else {
                        Err("must be 2..=256".into())
                    }
                })
                .unwrap_or(default_db_max_connections()),
            connect_timeout: doc
                .get::<HumanDuration>("database.connect_timeout")
                .map_or(default_db_connect_timeout(), |d| d.0),
            statement_timeout: doc
                .get::<HumanDuration>("database.statement_timeout")
                .map_or(default_db_statement_timeout(), |d| d.0),
        };
        let keep = |doc: &mut ConfigDoc, key: &str| -> Option<chrono::Duration> {
            let d = doc.get_checked::<HumanDuration>(key, |d| {
                if d.0 >= Duration::from_secs(3600) {
                    Ok(())
                } else {
                    Err("must be at least 1h (omit the key to keep forever)".into())
                }
            })?;
            chrono::Duration::from_std(d.0).ok()
        };
        let retention = crate::store::RetentionPolicy {
            detections: keep(&mut doc, "retention.detections"),
            heartbeats: keep(&mut doc, "retention.heartbeats"),
            dead_letters: keep(&mut doc, "retention.dead_letters"),
        };
        let retention_interval = doc
            .get::<HumanDuration>("retention.interval")
            .map_or(default_retention_interval(), |d| d.0);
        let ingest_group_max_detections = doc
            .get_checked::<usize>("ingest.group_max_detections", |n| {
                if (1..=1_000_000).contains(n) {
                    Ok(())
                } else {
                    Err("must be 1..=1000000".into())
                }
            })
            .unwrap_or(default_ingest_group_max_detections());
        let ingest_max_age = doc
            .get_checked::<HumanDuration>("ingest.max_age", |d| {
                if d.0 >= Duration::from_secs(3600) {
                    Ok(())
                } else {
                    Err(
                        "must be at least 1h (agents deliver what they buffered while offline)"
                            .into(),
                    )
                }
            })
            .map_or(default_ingest_max_age(), |d| d.0);
        let ingest_max_clock_skew = doc
            .get::<HumanDuration>("ingest.max_clock_skew")
            .map_or(default_ingest_max_clock_skew(), |d| d.0);
        let mqtt_client_id = doc
            .get_checked::<String>("mqtt.client_id", |s| {
                if edgeqi_shared::topic::is_valid_node_id(s) {
                    Ok(())
                } else {
                    Err("must match [A-Za-z0-9_-]{1,64}".into())
                }
            })
            .unwrap_or_else(default_client_id);
        let mqtt_username = doc.get::<String>("mqtt.username");
        let mqtt_password = doc.get::<String>("mqtt.password");
        let mqtt_keep_alive = doc
            .get_checked::<HumanDuration>("mqtt.keep_alive", |d| {
                if d.0 >= Duration::from_secs(5) {
                    Ok(())
                } else {
                    Err("must be at least 5s".into())
                }
            })
            .map_or(default_keep_alive(), |d| d.0);
        let max_packet_size = doc
            .get_checked::<ByteSize>("mqtt.max_packet_size", |b| {
                if (64 * 1024..=256 * 1024 * 1024).contains(&b.0) {
                    Ok(())
                } else {
                    Err("must be between 64KiB and 256MiB".into())
                }
            })
            .map_or(DEFAULT_MAX_PAYLOAD_BYTES, |b| b.0 as usize);
        let live_buffer = doc
            .get_checked::<usize>("live.buffer", |n| {
                if (16..=1_000_000).contains(n) {
                    Ok(())
                } else {
                    Err("must be 16..=1000000".into())
                }
            })
            .unwrap_or(default_live_buffer());
        let node_sweep_interval = doc
            .get::<HumanDuration>("nodes.sweep_interval")
            .map_or(default_node_sweep(), |d| d.0);
        let accounts_database_url = doc
            .get::<String>("auth.accounts_database_url")
            .unwrap_or_else(|| {
                // Same file as the detections on SQLite; beside it otherwise.
                if database_url.starts_with("sqlite://") {
                    database_url.clone()
                } else {
                    "sqlite://./data/accounts.db".into()
                }
            });
        if !accounts_database_url.starts_with("sqlite://") {
            doc.problem("auth.accounts_database_url", "must be sqlite://PATH");
        }
        let model = prefer(&o.model, doc.get::<String>("model"))
            .filter(|m| !m.is_empty())
            .map(std::path::PathBuf::from);
        if let Some(m) = &model {
            if !m.is_file() {
                doc.problem("model", format!("{} does not exist (import one with `edgeqi-agent model import FILE.onnx --out FILE`)", m.display()));
            }
        }
        let token_ttl = doc
            .get_checked::<HumanDuration>("auth.token_ttl", |d| {
                if d.0 >= Duration::from_secs(60) {
                    Ok(())
                } else {
                    Err("must be at least 1m".into())
                }
            })
            .map_or(Duration::from_secs(12 * 3600), |d| d.0);
        let alert_defaults = crate::alerts::AlertSettings::default();
        let count = |doc: &mut ConfigDoc, key: &str, max: usize| {
            doc.get_checked::<usize>(key, |n| {
                if (1..=max).contains(n) {
                    Ok(())
                } else {
                    Err(format!("must be 1..={max}"))
                }
            })
        };
        let span = |doc: &mut ConfigDoc, key: &str, min: Duration| {
            doc.get_checked::<HumanDuration>(key, |d| {
                if d.0 >= min {
                    Ok(())
                } else {
                    Err(format!("must be at least {}ms", min.as_millis()))
                }
            })
            .map(|d| d.0)
        };
        let alerts = crate::alerts::AlertSettings {
            queue_capacity: count(&mut doc, "alerts.queue_capacity", 1_000_000)
                .unwrap_or(alert_defaults.queue_capacity),
            max_age: span(&mut doc, "alerts.max_age", Duration::from_secs(1))
                .unwrap_or(alert_defaults.max_age),
            webhook_timeout: span(
                &mut doc,
                "alerts.webhook_timeout",
                Duration::from_millis(100),
            )
            .unwrap_or(alert_defaults.webhook_timeout),
            webhook_backoff: span(
                &mut doc,
                "alerts.webhook_backoff",
                Duration::from_millis(10),
            )
            .unwrap_or(alert_defaults.webhook_backoff),
            webhook_backoff_max: span(
                &mut doc,
                "alerts.webhook_backoff_max",
                Duration::from_millis(10),
            )
            .unwrap_or(alert_defaults.webhook_backoff_max),
            webhook_concurrency: count(&mut doc, "alerts.webhook_concurrency", 1024)
                .unwrap_or(alert_defaults.webhook_concurrency),
            allow_private_webhooks: o.alerts_allow_private_webhooks
                || doc
                    .get::<bool>("alerts.allow_private_webhooks")
                    .unwrap_or(alert_defaults.allow_private_webhooks),
        };
        // A flag (or its variable) wins over the file; empty means not set.
        let from_file = doc.get_checked::<i64>("reports.default_tenant_id", |n| {
            if *n >= 1 {
                Ok(())
            } else {
                Err("must be a tenant id (1 or more)".into())
            }
        });
        let reports_default_tenant = match o
            .reports_default_tenant_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    doc.problem(
                        "reports.default_tenant_id",
                        format!("{raw:?} must be a tenant id (1 or more)"),
                    );
                    None
                }
            },
            None => from_file,
        };
        let photo_defaults = crate::incidents::photo::PhotoLimits::default();
        let photo_limits = crate::incidents::photo::PhotoLimits {
            max_pixels: doc
                .get_checked::<u64>("reports.max_photo_pixels", |n| {
                    if (10_000..=1_000_000_000).contains(n) {
                        Ok(())
                    } else {
                        Err("must be 10000..=1000000000".into())
                    }
                })
                .unwrap_or(photo_defaults.max_pixels),
            max_decoded_bytes: doc
                .get_checked::<ByteSize>("reports.max_photo_decoded_bytes", |b| {
                    if (1 << 20..=16u64 << 30).contains(&b.0) {
                        Ok(())
                    } else {
                        Err("must be between 1MiB and 16GiB".into())
                    }
                })
                .map_or(photo_defaults.max_decoded_bytes, |b| b.0),
        };
        let photo_decodes = count(&mut doc, "reports.max_concurrent_decodes", 256)
            .unwrap_or_else(crate::incidents::photo::default_concurrency);
        let mqtt_max_connections = count(&mut doc, "mqtt.max_connections", 1_000_000)
            .unwrap_or(default_mqtt_max_connections());
        let http_defaults = crate::http_server::HttpLimits::default();
        let http = crate::http_server::HttpLimits {
            header_timeout: span(&mut doc, "http.header_timeout", Duration::from_millis(100))
                .unwrap_or(http_defaults.header_timeout),
            body_timeout: span(&mut doc, "http.body_timeout", Duration::from_millis(100))
                .unwrap_or(http_defaults.body_timeout),
            idle_timeout: span(&mut doc, "http.idle_timeout", Duration::from_millis(100))
                .unwrap_or(http_defaults.idle_timeout),
            max_connections: count(&mut doc, "http.max_connections", 1_000_000)
                .unwrap_or(http_defaults.max_connections),
        };
        let log_format =
            prefer(&o.log_format, doc.get::<String>("log_format")).unwrap_or_else(|| "text".into());
        if !matches!(log_format.as_str(), "text" | "json") {
            doc.problem("log_format", format!("{log_format:?} must be text or json"));
        }
        doc.finish()?;
        Ok(Self {
            http_listen,
            database_url,
            broker: match mqtt_url {
                Some(url) => BrokerMode::External { url },
                None => BrokerMode::Embedded {
                    listen: mqtt_listen,
                    tls,
                    allow_anonymous,
                },
            },
            mqtt_client_id,
            mqtt_username,
            mqtt_password,
            mqtt_keep_alive,
            mqtt_max_connections,
            max_packet_size,
            live_buffer,
            node_sweep_interval,
            admin_token: o.admin_token.clone().filter(|t| !t.is_empty()),
            accounts_database_url,
            token_ttl,
            model,
            log_format,
            database,
            retention,
            retention_interval,
            ingest_group_max_detections,
            ingest_max_age,
            ingest_max_clock_skew,
            alerts,
            reports_default_tenant,
            photo_limits,
            photo_decodes,
            http,
        })
    }

    /// The checks that need the account store, run at start-up once it is
    /// open: `reports.default_tenant_id` must name an existing tenant (a
    /// typo would otherwise file every citizen report under no tenant, or
    /// under the wrong one once that id is created).
    pub async fn check_accounts(
        &self,
        accounts: &dyn crate::accounts::AccountStore,
    ) -> Result<(), ConfigErrors> {
        let Some(id) = self.reports_default_tenant else {
            return Ok(());
        };
        let problem = match accounts.tenant(id).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => format!(
                "there is no tenant {id} (create it with POST /api/v1/tenants, then restart; or remove the key)"
            ),
            Err(e) => format!("cannot look tenant {id} up: {e}"),
        };
        Err(ConfigErrors {
            source_name: "aggregator configuration".into(),
            problems: vec![edgeqi_shared::config::ConfigProblem {
                key: "reports.default_tenant_id".into(),
                message: problem,
            }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_setup() {
        let c = AggregatorConfig::load(&Overrides::default()).expect("defaults");
        assert_eq!(
            c.broker,
            BrokerMode::Embedded {
                listen: Some(default_mqtt_listen()),
                tls: None,
                allow_anonymous: false,
            }
        );
        assert_eq!(c.database_url, "sqlite://./data/edgeqi.db");
        assert_eq!(c.max_packet_size, 1 << 20);
    }

    #[test]
    fn file_flags_and_all_problems() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agg.toml");
        std::fs::write(
            &path,
            "http_listen = \"nowhere\"\n[mqtt]\nurl = \"tcp://x\"\nmax_packet_size = \"1KiB\"\nlisen = 1\n",
        )
        .expect("write");
        let err = AggregatorConfig::load(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect_err("bad");
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.clone()).collect();
        assert_eq!(
            keys,
            [
                "http_listen",
                "mqtt.url",
                "mqtt.max_packet_size",
                "mqtt.lisen"
            ]
        );

        // Flags win over the file.
        std::fs::write(&path, "http_listen = \"127.0.0.1:1\"\n").expect("write");
        let c = AggregatorConfig::load(&Overrides {
            config: Some(path),
            http_listen: Some("127.0.0.1:9".into()),
            mqtt_url: Some("mqtt://broker:1883".into()),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(c.http_listen.port(), 9);
        assert_eq!(
            c.broker,
            BrokerMode::External {
                url: "mqtt://broker:1883".into()
            }
        );
    }

    #[test]
    fn http_and_photo_limits_from_the_shipped_example_and_a_file() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/aggregator.toml");
        let c = AggregatorConfig::load(&Overrides {
            config: Some(example.into()),
            ..Default::default()
        })
        .expect("the shipped example loads");
        assert_eq!(c.http, crate::http_server::HttpLimits::default());
        assert_eq!(
            c.photo_limits,
            crate::incidents::photo::PhotoLimits::default()
        );
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("http.toml");
        std::fs::write(
            &file,
            "[http]\nheader_timeout = \"2s\"\nbody_timeout = \"30s\"\nidle_timeout = \"500ms\"\nmax_connections = 64\n\
             [reports]\nmax_photo_pixels = 1000000\nmax_photo_decoded_bytes = \"8MiB\"\nmax_concurrent_decodes = 3\n",
        )
        .expect("write");
        let c = AggregatorConfig::load(&Overrides {
            config: Some(file.clone()),
            ..Default::default()
        })
        .expect("loads");
        assert_eq!(
            c.http,
            crate::http_server::HttpLimits {
                header_timeout: Duration::from_secs(2),
                body_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_millis(500),
                max_connections: 64,
            }
        );
        assert_eq!(c.photo_limits.max_pixels, 1_000_000);
        assert_eq!(c.photo_limits.max_decoded_bytes, 8 << 20);
        assert_eq!(c.photo_decodes, 3);
        std::fs::write(
            &file,
            "[http]\nheader_timeout = \"1ms\"\nmax_connections = 0\n[reports]\nmax_photo_pixels = 5\nmax_concurrent_decodes = 0\n",
        )
        .expect("write");
        let err = AggregatorConfig::load(&Overrides {
            config: Some(file),
            ..Default::default()
        })
        .expect_err("out of range");
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "http.header_timeout",
            "http.max_connections",
            "reports.max_photo_pixels",
            "reports.max_concurrent_decodes",
        ] {
            assert!(keys.contains(&key), "{key} in {keys:?}");
        }
    }

    #[test]
    fn alert_keys_from_the_shipped_example_and_their_limits() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/aggregator.toml");
        let c = AggregatorConfig::load(&Overrides {
            config: Some(example.into()),
            ..Default::default()
        })
        .expect("the shipped example loads");
        assert_eq!(c.alerts.queue_capacity, 1024);
        assert_eq!(c.alerts.webhook_backoff_max, Duration::from_secs(300));
        assert!(
            !c.alerts.allow_private_webhooks,
            "the guard is on by default"
        );
        let allowed = AggregatorConfig::load(&Overrides {
            alerts_allow_private_webhooks: true,
            ..Default::default()
        })
        .expect("flag");
        assert!(allowed.alerts.allow_private_webhooks);
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("allow.toml");
        std::fs::write(&file, "[alerts]\nallow_private_webhooks = true\n").expect("write");
        let from_file = AggregatorConfig::load(&Overrides {
            config: Some(file),
            ..Default::default()
        })
        .expect("file key");
        assert!(from_file.alerts.allow_private_webhooks);
        let path = dir.path().join("agg.toml");
        std::fs::write(
            &path,
            "[alerts]\nqueue_capacity = 0\nwebhook_timeout = \"1ms\"\nwebhook_backoff = \"250ms\"\n",
        )
        .expect("write");
        let err = AggregatorConfig::load(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect_err("bad alert keys");
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.clone()).collect();
        assert_eq!(keys, ["alerts.queue_capacity", "alerts.webhook_timeout"]);
    }

    #[test]
    fn postgres_urls_and_retention_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agg.toml");
        std::fs::write(
            &path,
            "database_url = \"postgres://edge:pw@db/edgeqi\"\n[retention]\ndetections = \"30d\"\ndead_letters = \"1m\"\n[database]\nmax_connections = 16\n",
        )
        .expect("write");
        let err = AggregatorConfig::load(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect_err("1m retention is refused");
        assert_eq!(err.problems[0].key, "retention.dead_letters");
        std::fs::write(
            &path,
            "database_url = \"postgres://edge:pw@db/edgeqi\"\n[retention]\ndetections = \"30d\"\n[database]\nmax_connections = 16\n",
        )
        .expect("write");
        let c = AggregatorConfig::load(&Overrides {
            config: Some(path),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(c.retention.detections, Some(chrono::Duration::days(30)));
        assert_eq!(c.retention.dead_letters, None);
        assert_eq!(c.database.max_connections, 16);
        assert!(!format!("{c:?}").contains("pw@"), "{c:?}");
    }

    #[test]
    fn reports_default_tenant_from_file_and_flag() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("agg.toml");
        std::fs::write(&path, "[reports]\ndefault_tenant_id = 3\n").expect("write");
        let c = AggregatorConfig::load(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect("file key");
        assert_eq!(c.reports_default_tenant, Some(3));
        // The flag (EDGEQI_REPORTS_DEFAULT_TENANT_ID) wins; empty leaves it to the file.
        let with_flag = |flag: &str| {
            AggregatorConfig::load(&Overrides {
                config: Some(path.clone()),
                reports_default_tenant_id: Some(flag.into()),
                ..Default::default()
            })
        };
        assert_eq!(
            with_flag("7").expect("flag").reports_default_tenant,
            Some(7)
        );
        assert_eq!(
            with_flag("").expect("empty").reports_default_tenant,
            Some(3)
        );
        for bad in ["0", "-1", "north"] {
            let err = with_flag(bad).expect_err(bad);
            assert_eq!(err.problems[0].key, "reports.default_tenant_id", "{bad}");
        }
        std::fs::write(&path, "[reports]\ndefault_tenant_id = 0\n").expect("write");
        let err = AggregatorConfig::load(&Overrides {
            config: Some(path),
            ..Default::default()
        })
        .expect_err("0 is no tenant");
        assert_eq!(err.problems[0].key, "reports.default_tenant_id");
        assert_eq!(
            AggregatorConfig::load(&Overrides::default())
                .expect("defaults")
                .reports_default_tenant,
            None
        );
    }

    #[tokio::test]
    async fn a_default_report_tenant_that_does_not_exist_stops_the_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let accounts = crate::accounts::open(&url).expect("accounts");
        let tenant = accounts.create_tenant("city").await.expect("tenant");
        let with = |id: Option<i64>| AggregatorConfig {
            reports_default_tenant: id,
            ..AggregatorConfig::load(&Overrides::default()).expect("defaults")
        };
        with(None).check_accounts(&*accounts).await.expect("unset");
        with(Some(tenant.id))
            .check_accounts(&*accounts)
            .await
            .expect("exists");
        let err = with(Some(tenant.id + 1))
            .check_accounts(&*accounts)
            .await
            .expect_err("no such tenant");
        assert_eq!(err.problems[0].key, "reports.default_tenant_id");
        assert!(
            err.to_string()
                .contains(&format!("no tenant {}", tenant.id + 1)),
            "{err}"
        );
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = AggregatorConfig::load(&Overrides {
            admin_token: Some("tok-secret".into()),
            mqtt_url: Some("mqtts://agg:url-secret@broker:8883".into()),
            ..Default::default()
        })
        .expect("ok");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("tok-secret") && !shown.contains("url-secret"),
            "{shown}"
        );
    }

    #[test]
    fn mqtt_security_keys() {
        let dir = tempfile::tempdir().expect("tmp");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "x").expect("write");
        std::fs::write(&key, "x").expect("write");
        let path = dir.path().join("agg.toml");
        std::fs::write(
            &path,
            format!(
                "[mqtt]\nlisten = \"off\"\ntls_listen = \"127.0.0.1:8883\"\ntls_cert = {:?}\ntls_key = {:?}\nallow_anonymous = true\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        )
        .expect("write");
        let c = AggregatorConfig::load(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect("ok");
        assert_eq!(
            c.broker,
            BrokerMode::Embedded {
                listen: None,
                tls: Some(TlsListener {
                    listen: "127.0.0.1:8883".parse().expect("addr"),
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                allow_anonymous: true,
            }
        );

        // TLS without a key, and "off" with nothing else listening.
        std::fs::write(
            &path,
            "[mqtt]\nlisten = \"off\"\ntls_listen = \"127.0.0.1:8883\"\ntls_cert = \"/nonexistent.pem\"\n",
        )
        .expect("write");
        let err = AggregatorConfig::load(&Overrides {
            config: Some(path),
            ..Default::default()
        })
        .expect_err("incomplete TLS");
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["mqtt.tls_cert", "mqtt.tls_listen", "mqtt.listen"]);

        // The flag turns anonymous access on; the default is off.
        let c = AggregatorConfig::load(&Overrides {
            mqtt_allow_anonymous: true,
            ..Default::default()
        })
        .expect("ok");
        assert!(matches!(
            c.broker,
            BrokerMode::Embedded {
                allow_anonymous: true,
                ..
            }
        ));
    }
}
