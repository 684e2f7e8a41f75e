//! `edgeqi-aggregator`: embedded (or external) MQTT broker, ingest with
//! end-to-end acks, storage, REST API and live WebSocket feed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use edgeqi_aggregator::config::{AggregatorConfig, BrokerMode, Overrides};
use edgeqi_aggregator::{accounts, api, broker, incidents, ingest, live, registry, store};

/// EdgeQI aggregator: receives detections and heartbeats from edge agents over
/// MQTT, stores them, acknowledges them end to end, and serves the REST API
/// and live WebSocket feed.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file (see configs/aggregator.toml).
    #[arg(long, env = "EDGEQI_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the embedded MQTT broker [key mqtt.listen, default 0.0.0.0:1883].
    #[arg(long, env = "EDGEQI_MQTT_LISTEN")]
    mqtt_listen: Option<String>,
    /// Embedded broker: also accept MQTT over TLS here, e.g. 0.0.0.0:8883 [key mqtt.tls_listen].
    #[arg(long, env = "EDGEQI_MQTT_TLS_LISTEN")]
    mqtt_tls_listen: Option<String>,
    /// PEM certificate chain of the TLS listener [key mqtt.tls_cert].
    #[arg(long, env = "EDGEQI_MQTT_TLS_CERT")]
    mqtt_tls_cert: Option<String>,
    /// PEM private key of the TLS listener [key mqtt.tls_key].
    #[arg(long, env = "EDGEQI_MQTT_TLS_KEY")]
    mqtt_tls_key: Option<String>,
    /// Embedded broker: let clients without credentials in, with no topic limits (demos only) [key mqtt.allow_anonymous].
    #[arg(long, env = "EDGEQI_MQTT_ALLOW_ANONYMOUS")]
    mqtt_allow_anonymous: bool,
    /// Let alert webhooks reach loopback, private, link-local and other internal addresses [key alerts.allow_private_webhooks].
    #[arg(long, env = "EDGEQI_ALERTS_ALLOW_PRIVATE_WEBHOOKS")]
    alerts_allow_private_webhooks: bool,
    /// Use this external broker (mqtt://[USER:PASSWORD@]host:port or mqtts://…) instead of the embedded one [key mqtt.url].
    #[arg(long, env = "EDGEQI_MQTT_URL")]
    mqtt_url: Option<String>,
    /// HTTP address for the REST API and WebSocket [key http_listen, default 0.0.0.0:8080].
    #[arg(long, env = "EDGEQI_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB [key database_url, default sqlite://./data/edgeqi.db].
    #[arg(long, env = "EDGEQI_DATABASE_URL")]
    database_url: Option<String>,
    /// YOLO model classifying citizen report photos [key model]; none: reports get category "other".
    #[arg(long, env = "EDGEQI_MODEL")]
    model: Option<String>,
    /// Tenant of citizen reports that name none (an existing tenant id) [key reports.default_tenant_id]; unset: no tenant.
    #[arg(long, env = "EDGEQI_REPORTS_DEFAULT_TENANT_ID")]
    reports_default_tenant_id: Option<String>,
    /// Log format: text or json [key log_format].
    #[arg(long, env = "EDGEQI_LOG_FORMAT")]
    log_format: Option<String>,
}

/// rumqttd's per-connection lines (`disconnected` and "no-connection id … is
/// already gone" at ERROR for every client that goes away, …) are off: its
/// router has a slot for every client the gateway's cap lets in, and every
/// connection reaches
/// rumqttd through the gateway, which logs how each one ended with the
/// client's address; rumqttd only ever sees loopback. Its router and the
/// rest stay at warn.
const DEFAULT_LOG_FILTER: &str =
    "info,rumqttd=warn,rumqttd::server::broker=off,rumqttd::router::routing=off";

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        config: cli.config,
        http_listen: cli.http_listen,
        mqtt_listen: cli.mqtt_listen,
        mqtt_url: cli.mqtt_url,
        database_url: cli.database_url,
        log_format: cli.log_format,
        admin_token: std::env::var("EDGEQI_ADMIN_TOKEN").ok(),
        model: cli.model,
        mqtt_allow_anonymous: cli.mqtt_allow_anonymous,
        alerts_allow_private_webhooks: cli.alerts_allow_private_webhooks,
        mqtt_tls_listen: cli.mqtt_tls_listen,
        mqtt_tls_cert: cli.mqtt_tls_cert,
        mqtt_tls_key: cli.mqtt_tls_key,
        reports_default_tenant_id: cli.reports_default_tenant_id,
    };
    let config = match AggregatorConfig::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(&config.log_format);
    check_descriptors(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the descriptor limit and warns when the connection caps do not
/// fit in it (see [`edgeqi_aggregator::fd_budget`]).
fn check_descriptors(config: &AggregatorConfig) {
    use edgeqi_aggregator::fd_budget;
    let limit = fd_budget::raise_limit();
    let embedded = matches!(config.broker, BrokerMode::Embedded { .. });
    let demand = fd_budget::Demand {
        mqtt_connections: if embedded {
            config.mqtt_max_connections
        } else {
            0
        },
        http_connections: config.http.max_connections,
        database_connections: config.database.max_connections,
    };
    match fd_budget::check(&demand, limit) {
        Ok(()) => tracing::debug!(?limit, needed = demand.descriptors(), "descriptor budget"),
        Err(why) => tracing::warn!(?limit, "{why}"),
    }
}

async fn run(config: AggregatorConfig) -> anyhow::Result<()> {
    tracing::info!(
        ?config,
        version = env!("CARGO_PKG_VERSION"),
        "starting edgeqi-aggregator"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let accounts = accounts::open(&config.accounts_database_url)?;
    config.check_accounts(&*accounts).await?;
    api::auth::bootstrap_admin(&accounts, config.admin_token.is_some()).await?;
    let jwt_secret = accounts.secret("jwt-hs256").await?;
    let analyzer: Option<Arc<dyn incidents::PhotoAnalyzer>> = match &config.model {
        Some(path) => {
            let path = path.clone();
            let a = tokio::task::spawn_blocking(move || incidents::yolo::YoloAnalyzer::load(&path))
                .await?
                .map_err(anyhow::Error::msg)?;
            tracing::info!(
                model = incidents::PhotoAnalyzer::name(&a),
                "citizen reports are classified by YOLO"
            );
            Some(Arc::new(a))
        }
        None => {
            tracing::warn!("no --model: citizen reports are not classified (category \"other\")");
            None
        }
    };
    let mut incidents =
        incidents::Incidents::new(incidents::open(&config.accounts_database_url)?, analyzer);
    incidents.report_tenant = config.reports_default_tenant;
    incidents.photos =
        incidents::photo::PhotoDecoder::new(config.photo_limits, config.photo_decodes);
    let incidents = Arc::new(incidents);
    let auth = Arc::new(api::auth::AuthKeys::new(
        &jwt_secret,
        chrono::Duration::from_std(config.token_ttl).unwrap_or(chrono::Duration::hours(12)),
        config.admin_token.clone(),
    ));
    let Some(store) = connect_store(&config).await? else {
        tracing::info!("stopped before the database was reachable");
        return Ok(());
    };
    let node_credentials =
        accounts::node_credentials::NodeCredentials::open(&config.accounts_database_url)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut gateway_tasks = Vec::new();
    // Where ingest connects, and as whom.
    let (endpoint, ingest_username, ingest_password) = match &config.broker {
        BrokerMode::Embedded {
            listen,
            tls,
            allow_anonymous,
        } => {
            let embedded =
                broker::start_embedded(config.max_packet_size, config.mqtt_max_connections)?;
            let gateway = broker::gateway::Gateway::new(
                broker::gateway::Policy {
                    credentials: node_credentials.clone(),
                    allow_anonymous: *allow_anonymous,
                    reserved_client_id: config.mqtt_client_id.clone(),
                    max_packet_size: config.max_packet_size,
                    max_connections: config.mqtt_max_connections,
                },
                embedded.clone(),
            );
            if *allow_anonymous {
                tracing::warn!("MQTT anonymous access is on: clients without credentials get in, with no topic limits");
            }
            if let Some(addr) = listen {
                let listener = broker::gateway::bind(*addr).await?;
                gateway_tasks.push(tokio::spawn(gateway.clone().serve(
                    listener,
                    None,
                    shutdown_rx.clone(),
                )));
            }
            if let Some(t) = tls {
                let acceptor = broker::gateway::tls_acceptor(&t.cert, &t.key)?;
                let listener = broker::gateway::bind(t.listen).await?;
                gateway_tasks.push(tokio::spawn(gateway.clone().serve(
                    listener,
                    Some(acceptor),
                    shutdown_rx.clone(),
                )));
            }
            let endpoint = edgeqi_shared::MqttEndpoint {
                host: embedded.internal.ip().to_string(),
                port: embedded.internal.port(),
                tls: false,
                credentials: None,
            };
            (
                endpoint,
                Some(config.mqtt_client_id.clone()),
                Some(embedded.token.to_string()),
            )
        }
        BrokerMode::External { url } => {
            let endpoint = edgeqi_shared::MqttEndpoint::parse(url).map_err(anyhow::Error::msg)?;
            // mqtt.username / mqtt.password win over credentials in the URL.
            let (user, password) = match (&config.mqtt_username, &endpoint.credentials) {
                (Some(u), _) => (Some(u.clone()), config.mqtt_password.clone()),
                (None, Some(c)) => (Some(c.username.clone()), c.password.clone()),
                (None, None) => (None, None),
            };
            (endpoint, user, password)
        }
    };
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for HTTP on {} (choose another --http-listen)",
                config.http_listen
            )
        })?;
    let http_addr = http.local_addr()?;

    let live = live::LiveBus::new(config.live_buffer);
    let health = Arc::new(ingest::IngestHealth::default());
    let events = edgeqi_aggregator::events::EventStore::open(&config.accounts_database_url)?;
    let (alerts, evaluator) = edgeqi_aggregator::alerts::Alerts::open(
        &config.accounts_database_url,
        config.alerts.clone(),
    )?;
    alerts.rules_changed().await?;
    let registry = registry::Registry::open(&config.accounts_database_url, config.max_packet_size)?;
    let evaluator_task = tokio::spawn(evaluator.run(
        edgeqi_aggregator::alerts::EngineDeps {
            incidents: incidents.clone(),
            live: live.clone(),
            accounts: accounts.clone(),
            registry: registry.clone(),
        },
        shutdown_rx.clone(),
    ));
    let settings = ingest::IngestSettings {
        endpoint: endpoint.clone(),
        client_id: config.mqtt_client_id.clone(),
        username: ingest_username,
        password: ingest_password,
        keep_alive: config.mqtt_keep_alive,
        max_packet_size: config.max_packet_size,
        group_max_detections: config.ingest_group_max_detections,
        max_age: config.ingest_max_age,
        max_clock_skew: config.ingest_max_clock_skew,
        events: Some(events.clone()),
        alerts: Some(alerts.feed()),
        registry: Some(registry.clone()),
    };
    let ingest_task = tokio::spawn(ingest::run(
        settings,
        store.clone(),
        live.clone(),
        health.clone(),
        shutdown_rx.clone(),
    ));
    let sweep_task = tokio::spawn(ingest::sweep_nodes(
        store.clone(),
        live.clone(),
        config.node_sweep_interval,
        shutdown_rx.clone(),
    ));

    let retention_task = tokio::spawn(run_retention(
        store.clone(),
        config.retention.clone(),
        config.retention_interval,
        shutdown_rx.clone(),
    ));

    let app = api::router(api::AppState {
        store,
        live,
        ingest: health,
        accounts,
        auth,
        incidents,
        events: events.clone(),
        reviews: edgeqi_aggregator::reviews::ReviewStore::open(&config.accounts_database_url)?,
        alerts,
        registry,
        metrics: Some(api::MetricsEndpoint {
            handle: metrics,
            // A secret, so from the environment only (like EDGEQI_ADMIN_TOKEN).
            token: std::env::var("EDGEQI_METRICS_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        }),
        node_credentials: node_credentials.with_reserved(&config.mqtt_client_id),
    });
    tracing::info!(http = %http_addr, broker = %endpoint, bootstrap_token = config.admin_token.is_some(), "aggregator ready");
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(systemd_watchdog());

    // Timeouts, connection cap, ConnectInfo for rate limits and audit.
    let server_task = tokio::spawn(edgeqi_aggregator::http_server::serve(
        http,
        app,
        config.http,
        shutdown_rx.clone(),
    ));

    wait_for_signal().await;
    tracing::info!("shutting down");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    watchdog.abort();
    let _ = ingest_task.await;
    for t in gateway_tasks {
        let _ = t.await;
    }
    let _ = sweep_task.await;
    let _ = retention_task.await;
    let _ = evaluator_task.await;
    // WebSocket connections do not end by themselves: do not wait forever.
    let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// Applies the retention policy (and, on PostgreSQL, creates partitions
/// ahead) at start-up and then periodically. A failure is logged and retried
/// at the next tick: retention never stops ingest.
async fn run_retention(
    store: Arc<dyn store::Store>,
    policy: store::RetentionPolicy,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match store.apply_retention(&policy, chrono::Utc::now()).await {
            Ok(r) => tracing::info!(?r, "retention applied"),
            Err(e) => tracing::warn!(error = %e, "retention failed; will retry"),
        }
    }
}

/// Opens the store, waiting for a database that is not reachable yet (a
/// PostgreSQL that starts after us, a network blip at boot) instead of
/// exiting: the embedded broker is not started meanwhile, so agents keep
/// buffering in their outboxes. Configuration errors (bad URL, a schema newer
/// than this binary, an unopenable SQLite file) still fail at once. Returns
/// `None` when a stop signal arrives first.
async fn connect_store(config: &AggregatorConfig) -> anyhow::Result<Option<Arc<dyn store::Store>>> {
    let mut backoff = Duration::from_secs(1);
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        match store::connect(&config.database_url, &config.database).await {
            Ok(s) => return Ok(Some(s)),
            Err(store::StoreError::Unavailable(why)) => {
                tracing::warn!(
                    database = %store::redact_url(&config.database_url),
                    error = %why,
                    retry_in_s = backoff.as_secs(),
                    "database unreachable at start-up; waiting for it (check that it runs and that --database-url is right)"
                );
                notify_systemd(&[sd_notify::NotifyState::Status("waiting for the database")]);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => return Ok(None),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Pings systemd's watchdog at half its interval while the runtime is alive.
async fn systemd_watchdog() {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_micros(usec / 2));
    loop {
        tick.tick().await;
        notify_systemd(&[sd_notify::NotifyState::Watchdog]);
    }
}
