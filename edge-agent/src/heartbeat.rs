//! Heartbeats: what the node tells the aggregator every `heartbeat_interval`.
//!
//! System figures come from sysinfo: CPU since the previous heartbeat,
//! memory, free space on the disk holding `data_dir` (the outbox lives
//! there), and the first temperature sensor found, if any.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use edgeqi_shared::{CameraHealth, ConfigRejection, Heartbeat, OutboxHealth, PROTOCOL_VERSION};
use sysinfo::{Components, Disks, System};

/// Reads system figures; kept between heartbeats because CPU usage is a
/// difference between two refreshes.
#[derive(Debug)]
pub struct SystemProbe {
    sys: System,
    disks: Disks,
    components: Components,
    data_dir: PathBuf,
    started: Instant,
}

/// Everything a heartbeat carries that the probe does not measure.
#[derive(Debug)]
pub struct AgentState<'a> {
    pub node_id: &'a str,
    pub interval_s: u32,
    pub detector: &'a str,
    pub fps: f32,
    pub outbox: Option<OutboxHealth>,
    pub cameras: Vec<CameraHealth>,
    /// Remote config version running, the last refusal, cameras it names
    /// that this agent does not have.
    pub config_version: Option<u64>,
    pub config_error: Option<ConfigRejection>,
    pub config_unknown_cameras: Vec<String>,
}

impl SystemProbe {
    pub fn new(data_dir: &Path) -> Self {
        let mut sys = System::new();
        sys.refresh_cpu_usage();
        Self {
            sys,
            disks: Disks::new_with_refreshed_list(),
            components: Components::new_with_refreshed_list(),
            data_dir: std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned()),
            started: Instant::now(),
        }
    }

    /// Free and total bytes of the disk whose mount point holds `data_dir`.
    fn disk_space(&mut self) -> Option<(u64, u64)> {
        self.disks.refresh(true);
        self.disks
            .list()
            .iter()
            .filter(|d| self.data_dir.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| (d.available_space(), d.total_space()))
    }

    fn temperature(&mut self) -> Option<f32> {
        self.components.refresh(false);
        self.components
            .list()
            .iter()
            .find_map(|c| c.temperature().filter(|t| t.is_finite()))
    }

    pub fn heartbeat(&mut self, state: AgentState<'_>) -> Heartbeat {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        let cpu = self.sys.global_cpu_usage();
        let disk = self.disk_space();
        let backlog = state.outbox.as_ref().map_or(0, |o| o.pending_batches);
        Heartbeat {
            v: PROTOCOL_VERSION,
            node_id: state.node_id.to_owned(),
            ts: Utc::now(),
            uptime_s: self.started.elapsed().as_secs(),
            cpu_pct: if cpu.is_finite() { cpu.max(0.0) } else { 0.0 },
            mem_used_bytes: self.sys.used_memory(),
            mem_total_bytes: self.sys.total_memory(),
            backlog,
            fps: if state.fps.is_finite() {
                state.fps.max(0.0)
            } else {
                0.0
            },
            version: env!("CARGO_PKG_VERSION").to_owned(),
            interval_s: state.interval_s.max(1),
            disk_free_bytes: disk.map(|d| d.0),
            disk_total_bytes: disk.map(|d| d.1),
            temperature_c: self.temperature(),
            detector: Some(state.detector.to_owned()),
            outbox: state.outbox,
            cameras: state.cameras,
            config_version: state.config_version,
            config_error: state.config_error,
            config_unknown_cameras: state.config_unknown_cameras,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgeqi_shared::protocol::{decode, encode, DEFAULT_MAX_PAYLOAD_BYTES};

    #[test]
    fn heartbeat_is_valid_protocol() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut probe = SystemProbe::new(dir.path());
        let hb = probe.heartbeat(AgentState {
            node_id: "n1",
            interval_s: 10,
            detector: "motion",
            fps: 9.5,
            outbox: Some(OutboxHealth {
                pending_batches: 3,
                ..OutboxHealth::default()
            }),
            cameras: vec![],
            config_version: Some(2),
            config_error: None,
            config_unknown_cameras: vec![],
        });
        assert_eq!(hb.backlog, 3);
        assert!(hb.mem_total_bytes > 0);
        let back: Heartbeat =
            decode("n1", &encode(&hb), DEFAULT_MAX_PAYLOAD_BYTES).expect("decodes");
        assert_eq!(back.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(back.config_version, Some(2));
    }
}
