//! `edgeqi-agent`: the EdgeQI edge daemon and its command line.
//!
//! `edgeqi-agent [run]` runs the agent; `edgeqi-agent check-config` validates
//! the configuration (file, flags and environment together), prints every
//! problem, and on success prints the effective configuration.

mod agent;
mod batcher;
mod config;
mod delivery;
mod detect;
mod frame;
mod heartbeat;
mod model_cli;
mod motion_gate;
mod outbox;
mod pipeline;
mod process_cli;
mod remote_config;
mod sampler;
mod snapshot;
mod source;
mod systemd;
mod tracker;
mod uplink;
mod zones;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{AgentConfig, LogFormat, Overrides};

/// Exit status for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "edgeqi-agent",
    version,
    about = "EdgeQI edge agent: cameras in, detections out over MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    global: GlobalArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration and print the effective one.
    CheckConfig {
        /// Print the effective configuration as JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
    /// Run the camera pipeline over a recording, print what it found and
    /// send it to the aggregator when a broker is configured (--mqtt-url, mqtt.url).
    Process(ProcessArgs),
    /// Import or download detector models.
    Model(model_cli::ModelArgs),
    /// Run the YOLO detector on images (uses --model).
    Detect(model_cli::DetectArgs),
    /// Benchmarks (`bench detector`, uses --model).
    Bench(model_cli::BenchArgs),
}

#[derive(Debug, Args)]
struct ProcessArgs {
    /// The video file (anything GStreamer decodes: mp4, mkv, ts, …).
    file: PathBuf,
    /// Print one JSON document (detections, events, line counts, timings).
    #[arg(long)]
    json: bool,
    /// Use this configured camera's zones, lines, masks and detect_fps [default: the first camera].
    #[arg(long, value_name = "ID")]
    camera: Option<String>,
    /// Inferences per second of video [default: the camera's detect_fps, else every frame].
    #[arg(long, value_name = "FPS")]
    detect_fps: Option<f64>,
    /// Do not send the results even though a broker is configured.
    #[arg(long)]
    no_send: bool,
    /// How long to wait for the broker and the aggregator's acks when sending.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    send_timeout: u64,
    /// When the recording's first frame was taken (RFC 3339, e.g.
    /// 2026-11-23T10:00:00Z); detection times are this plus the media time
    /// [default: now]
    #[arg(long, value_name = "TIME")]
    start: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every flag also has an environment variable and a config-file key.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// TOML config file (see configs/agent.toml).
    #[arg(long, env = "EDGEQI_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node id, [A-Za-z0-9_-]{1,64} [key: node_id] [default: host name]
    #[arg(long, env = "EDGEQI_NODE_ID", global = true, value_name = "ID")]
    node_id: Option<String>,
    /// Broker, mqtt://[USER:PASSWORD@]HOST:PORT or mqtts://… [key: mqtt.url] [default: mqtt://127.0.0.1:1883]
    #[arg(long, env = "EDGEQI_MQTT_URL", global = true, value_name = "URL")]
    mqtt_url: Option<String>,
    /// MQTT user name; for the embedded broker, the node id [key: mqtt.username]
    #[arg(long, env = "EDGEQI_MQTT_USERNAME", global = true, value_name = "USER")]
    mqtt_username: Option<String>,
    /// MQTT password (prefer the env var or the config file: flags show in `ps`) [key: mqtt.password]
    #[arg(
        long,
        env = "EDGEQI_MQTT_PASSWORD",
        global = true,
        value_name = "PASSWORD",
        hide_env_values = true,
        value_parser = secret_arg
    )]
    mqtt_password: Option<config::Secret>,
    /// PEM CA certificates to trust for mqtts:// instead of the system's [key: mqtt.ca_file]
    #[arg(long, env = "EDGEQI_MQTT_CA_FILE", global = true, value_name = "FILE")]
    mqtt_ca_file: Option<PathBuf>,
    /// Camera source, [ID=]URI, repeatable; replaces [[cameras]]. URIs: rtsp://, file://PATH,
    /// v4l2:///dev/videoN, images://DIR, synthetic://. Comma-separated in the env var.
    #[arg(
        long = "source",
        env = "EDGEQI_SOURCE",
        global = true,
        value_name = "URI",
        value_delimiter = ','
    )]
    sources: Vec<String>,
    /// Detector model file [key: model] [default: none, motion detector]
    #[arg(long, env = "EDGEQI_MODEL", global = true, value_name = "FILE")]
    model: Option<PathBuf>,
    /// Where the outbox lives [key: data_dir] [default: ./data/agent]
    #[arg(long, env = "EDGEQI_DATA_DIR", global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Time between heartbeats, e.g. 10s [key: heartbeat_interval] [default: 10s]
    #[arg(
        long,
        env = "EDGEQI_HEARTBEAT_INTERVAL",
        global = true,
        value_name = "DURATION"
    )]
    heartbeat_interval: Option<String>,
    /// Log format, text or json [key: log_format] [default: text]; RUST_LOG sets the level.
    #[arg(long, env = "EDGEQI_LOG_FORMAT", global = true, value_name = "FORMAT")]
    log_format: Option<String>,
}

/// Keeps the password out of `Debug` output of the parsed arguments.
fn secret_arg(s: &str) -> Result<config::Secret, String> {
    Ok(config::Secret(s.to_owned()))
}

impl GlobalArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            node_id: self.node_id.clone(),
            mqtt_url: self.mqtt_url.clone(),
            mqtt_username: self.mqtt_username.clone(),
            mqtt_password: self.mqtt_password.as_ref().map(|s| s.0.clone()),
            mqtt_ca_file: self.mqtt_ca_file.clone(),
            sources: self
                .sources
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            model: self.model.clone(),
            data_dir: self.data_dir.clone(),
            heartbeat_interval: self.heartbeat_interval.clone(),
            log_format: self.log_format.clone(),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Model tools need no agent configuration.
    match &cli.command {
        Some(Command::Model(a)) => return model_cli::model(a),
        Some(Command::Detect(a)) => return model_cli::detect(a, cli.global.model.as_deref()),
        Some(Command::Bench(a)) => return model_cli::bench(a, cli.global.model.as_deref()),
        _ => {}
    }
    let config = match AgentConfig::load(cli.global.config.as_deref(), &cli.global.overrides()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("error: {errors}");
            eprintln!(
                "Fix these and try again; `edgeqi-agent check-config` re-checks without starting."
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig { json } => {
            let table = config.to_toml_table();
            let text = if json {
                serde_json::to_string_pretty(&table).map_err(|e| e.to_string())
            } else {
                toml::to_string(&table).map_err(|e| e.to_string())
            };
            match text {
                Ok(text) => {
                    println!("{text}");
                    eprintln!("configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot print the effective configuration: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Process(args) => run_process(&config, &args),
        // Dispatched before the configuration is read.
        Command::Model(_) | Command::Detect(_) | Command::Bench(_) => ExitCode::SUCCESS,
        Command::Run => {
            init_logging(config.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(agent::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_process(config: &AgentConfig, args: &ProcessArgs) -> ExitCode {
    init_logging(config.log_format);
    let mut report = match process_cli::process(
        config,
        &args.file,
        args.camera.as_deref(),
        args.detect_fps,
        args.start,
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Sent before printing, so the printed report says what was delivered.
    let mut send_error = None;
    if config.mqtt.url_given && !args.no_send {
        let timeout = std::time::Duration::from_secs(args.send_timeout);
        let sent = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(agent::deliver_recording(
                    config,
                    report.recording(),
                    timeout,
                ))
            });
        match sent {
            Ok(s) if s.unacked_batches > 0 => {
                send_error = Some(format!(
                    "{} batches were not acknowledged within {timeout:?}; they wait in {} for the next run",
                    s.unacked_batches, s.outbox
                ));
                report.sent = Some(s);
            }
            Ok(s) => report.sent = Some(s),
            Err(e) => send_error = Some(format!("{e:#}")),
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: cannot print the results: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        process_cli::print_summary(&report);
    }
    match send_error {
        Some(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        None => ExitCode::SUCCESS,
    }
}
