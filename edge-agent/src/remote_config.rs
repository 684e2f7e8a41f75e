//! The remote config the aggregator pushes (`…/config`, retained): checked
//! with the shared rules, kept on disk once applied so it survives a
//! restart, and merged with the config file into what each camera runs.
//!
//! Precedence: a camera listed in the remote config takes its zones, lines
//! and (when given) `detect_fps` from there, replacing the file's for that
//! camera; cameras not listed keep the file's. Cameras listed that this
//! agent does not have are reported in heartbeats and otherwise ignored —
//! the registry may be ahead of the installer. A config that fails the
//! checks is refused as a whole: the agent keeps running the one it has,
//! logs why, and reports the refusal in heartbeats until a later version
//! applies.

use std::io::Write;
use std::path::{Path, PathBuf};

use edgeqi_shared::protocol::{decode, encode, RejectReason};
use edgeqi_shared::{ConfigRejection, RemoteConfig};

use crate::config::CameraConfig;
use crate::pipeline::LiveSettings;
use crate::zones::{Line, Zone};

/// File in `data_dir` holding the last applied remote config, as received.
pub const FILE_NAME: &str = "remote-config.json";

/// What one received payload did.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A new version passed the checks, was saved and should be applied now.
    Applied { version: u64 },
    /// The version running already (a retained copy after a reconnect).
    Unchanged { version: u64 },
    /// Refused; the running config stays.
    Rejected(ConfigRejection),
    /// An empty retained message: the config was withdrawn on the broker.
    /// The agent keeps what it runs (only a new version replaces it).
    Withdrawn,
}

/// The remote config this agent runs, and the last one it refused.
#[derive(Debug)]
pub struct RemoteConfigState {
    path: PathBuf,
    node_id: String,
    max_bytes: usize,
    applied: Option<RemoteConfig>,
    rejection: Option<ConfigRejection>,
}

fn rejection(version: Option<u64>, reason: &RejectReason) -> ConfigRejection {
    ConfigRejection {
        version,
        code: reason.code().to_owned(),
        reason: reason.to_string(),
    }
}

/// The `version` of a payload that failed to decode, if it has one.
fn version_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()?
        .get("version")?
        .as_u64()
}

impl RemoteConfigState {
    /// No remote config applied and none read from disk (runs that do not
    /// subscribe to the config topic, like `process --send`).
    pub fn empty(data_dir: &Path, node_id: &str, max_bytes: usize) -> Self {
        Self {
            path: data_dir.join(FILE_NAME),
            node_id: node_id.to_owned(),
            max_bytes,
            applied: None,
            rejection: None,
        }
    }

    /// Loads the last applied config from `data_dir`. A missing file means
    /// none; a file that does not pass the checks (corrupt, another node's,
    /// from a build with other rules) is set aside and reported.
    pub fn load(data_dir: &Path, node_id: &str, max_bytes: usize) -> Self {
        let mut state = Self::empty(data_dir, node_id, max_bytes);
        let bytes = match std::fs::read(&state.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return state,
            Err(e) => {
                tracing::error!(path = %state.path.display(), error = %e,
                    "cannot read the saved remote config; running the config file alone until the aggregator sends one");
                return state;
            }
        };
        match decode::<RemoteConfig>(node_id, &bytes, state.max_bytes) {
            Ok(c) => {
                tracing::info!(version = c.version, cameras = c.config.cameras.len(),
                    path = %state.path.display(), "applying the saved remote config");
                state.applied = Some(c);
            }
            Err(reason) => {
                tracing::error!(path = %state.path.display(), code = reason.code(), %reason,
                    "the saved remote config is not usable; running the config file alone until the aggregator sends one");
                state.rejection = Some(rejection(version_of(&bytes), &reason));
            }
        }
        state
    }

    pub fn version(&self) -> Option<u64> {
        self.applied.as_ref().map(|c| c.version)
    }

    pub fn rejection(&self) -> Option<&ConfigRejection> {
        self.rejection.as_ref()
    }

    /// A message on the config topic that the MQTT client refused unread
    /// for being above `limit` (`mqtt.max_packet_size`): refused like any
    /// other bad config, version unknown; the running config stays.
    pub fn refuse_oversized(&mut self, bytes: usize, limit: usize) -> ConfigRejection {
        let reason = RejectReason::TooLarge { size: bytes, limit };
        let r = ConfigRejection {
            version: None,
            code: reason.code().to_owned(),
            reason: format!(
                "{reason} (mqtt.max_packet_size); the MQTT connection dropped it unread, \
                 and the agent retries the config subscription later"
            ),
        };
        tracing::error!(running = ?self.version(), code = %r.code, reason = %r.reason,
            "refused a remote config; keeping the one in use");
        self.rejection = Some(r.clone());
        r
    }

    /// Checks a payload from `…/config` and, when it is a new valid
    /// version, saves it and makes it the applied one.
    pub fn receive(&mut self, payload: &[u8]) -> Received {
        if payload.is_empty() {
            tracing::info!(
                version = ?self.version(),
                "the retained remote config was withdrawn; keeping the one in use"
            );
            return Received::Withdrawn;
        }
        let config = match decode::<RemoteConfig>(&self.node_id, payload, self.max_bytes) {
            Ok(c) => c,
            Err(reason) => {
                let r = rejection(version_of(payload), &reason);
                tracing::error!(version = ?r.version, running = ?self.version(), code = reason.code(),
                    %reason, "refused a remote config; keeping the one in use");
                self.rejection = Some(r.clone());
                return Received::Rejected(r);
            }
        };
        // Any other version applies: normally a newer one, but a lower one
        // means the aggregator's registry was restored, and it is the truth.
        if self.version() == Some(config.version) {
            return Received::Unchanged {
                version: config.version,
            };
        }
        if let Err(e) = self.save(&config) {
            // Still apply it: the aggregator wants it now; after a restart
            // the retained copy brings it back.
            tracing::error!(path = %self.path.display(), error = %e,
                "cannot save the remote config; it applies now but the next start begins without it");
        }
        let version = config.version;
        tracing::info!(
            version,
            previous = ?self.version(),
            cameras = config.config.cameras.len(),
            "applying remote config"
        );
        self.applied = Some(config);
        self.rejection = None;
        Received::Applied { version }
    }

    /// Writes the config next to the outbox: temp file, fsync, rename, so a
    /// crash leaves the old file or the new one, never half of one.
    fn save(&self, config: &RemoteConfig) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&encode(config))?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // The rename itself must reach the disk too.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// What `camera` runs with: the remote entry for it if there is one,
    /// else the config file's settings.
    pub fn settings_for(&self, camera: &CameraConfig) -> LiveSettings {
        let remote = self
            .applied
            .as_ref()
            .and_then(|c| c.config.cameras.iter().find(|r| r.id == camera.id));
        match remote {
            None => LiveSettings::of(camera),
            Some(r) => LiveSettings {
                detect_fps: r.detect_fps.or(camera.detect_fps),
                zones: r.zones.iter().map(Zone::from).collect(),
                lines: r.lines.iter().map(Line::from).collect(),
            },
        }
    }

    /// Settings of every camera of the config file, in order.
    pub fn settings(&self, cameras: &[CameraConfig]) -> Vec<(String, LiveSettings)> {
        cameras
            .iter()
            .map(|c| (c.id.clone(), self.settings_for(c)))
            .collect()
    }

    /// `cameras` with the remote settings merged in: what the pipelines
    /// start with.
    pub fn merged(&self, cameras: &[CameraConfig]) -> Vec<CameraConfig> {
        cameras
            .iter()
            .map(|c| {
                let s = self.settings_for(c);
                CameraConfig {
                    detect_fps: s.detect_fps,
                    zones: s.zones,
                    lines: s.lines,
                    ..c.clone()
                }
            })
            .collect()
    }

    /// Camera ids of the applied config that are not among `cameras`.
    pub fn unknown_cameras(&self, cameras: &[CameraConfig]) -> Vec<String> {
        self.applied
            .iter()
            .flat_map(|c| &c.config.cameras)
            .filter(|r| !cameras.iter().any(|c| c.id == r.id))
            .map(|r| r.id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentConfig, Overrides};
    use edgeqi_shared::protocol::DEFAULT_MAX_PAYLOAD_BYTES as LIMIT;

    fn cameras() -> Vec<CameraConfig> {
        let doc = edgeqi_shared::config::ConfigDoc::parse(
            r#"
[[cameras]]
id = "gate"
uri = "synthetic://"
detect_fps = 4
lines = [{ id = "file-line", from = [0.0, 0.5], to = [1.0, 0.5] }]
[[cameras]]
id = "yard"
uri = "synthetic://"
zones = [{ id = "file-zone", polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]] }]
"#,
            "agent.toml",
        )
        .expect("toml");
        AgentConfig::from_doc(doc, &Overrides::default())
            .expect("config")
            .cameras
    }

    fn payload(version: u64, cameras: &str) -> Vec<u8> {
        format!(
            r#"{{"v":1,"node_id":"n1","version":{version},"issued_at":"2026-11-23T10:00:00Z","config":{{"cameras":{cameras}}}}}"#
        )
        .into_bytes()
    }

    const GATE_REMOTE: &str = r#"[{"id":"gate","heading":90,
        "lines":[{"id":"remote-line","from":[0.5,0.0],"to":[0.5,1.0]}]},
        {"id":"ghost","zones":[]}]"#;

    #[test]
    fn remote_replaces_the_listed_camera_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let cams = cameras();
        let mut s = RemoteConfigState::load(dir.path(), "n1", LIMIT);
        assert_eq!(s.version(), None);
        assert_eq!(s.settings(&cams)[0].1.lines[0].id, "file-line");

        assert_eq!(
            s.receive(&payload(3, GATE_REMOTE)),
            Received::Applied { version: 3 }
        );
        let settings = s.settings(&cams);
        let gate = &settings[0].1;
        assert_eq!(gate.lines.len(), 1);
        assert_eq!(gate.lines[0].id, "remote-line");
        assert!(gate.zones.is_empty(), "remote replaces, it does not merge");
        assert_eq!(
            gate.detect_fps,
            Some(4.0),
            "no remote detect_fps: the file's"
        );
        assert_eq!(
            settings[1].1.zones[0].id, "file-zone",
            "unlisted camera keeps the file's"
        );
        assert_eq!(s.unknown_cameras(&cams), ["ghost"]);
        // The retained copy after a reconnect changes nothing.
        assert_eq!(
            s.receive(&payload(3, GATE_REMOTE)),
            Received::Unchanged { version: 3 }
        );

        // A restart starts from the saved copy.
        let again = RemoteConfigState::load(dir.path(), "n1", LIMIT);
        assert_eq!(again.version(), Some(3));
        assert_eq!(again.merged(&cams)[0].lines[0].id, "remote-line");
        // Another node's data dir is not trusted.
        let other = RemoteConfigState::load(dir.path(), "n2", LIMIT);
        assert_eq!(other.version(), None);
        assert_eq!(
            other.rejection().map(|r| r.code.as_str()),
            Some("node_id_mismatch")
        );
    }

    #[test]
    fn a_bad_config_is_refused_and_the_running_one_stays() {
        let dir = tempfile::tempdir().expect("tmp");
        let cams = cameras();
        let mut s = RemoteConfigState::load(dir.path(), "n1", LIMIT);
        s.receive(&payload(3, GATE_REMOTE));
        let bad = payload(
            4,
            r#"[{"id":"gate","lines":[{"id":"l","from":[0.5,0.5],"to":[1.5,0.5]}]}]"#,
        );
        let Received::Rejected(r) = s.receive(&bad) else {
            panic!("must refuse")
        };
        assert_eq!(r.version, Some(4));
        assert_eq!(r.code, "invalid_field");
        assert!(
            r.reason.contains("config.cameras[0].lines[0]"),
            "{}",
            r.reason
        );
        assert_eq!(s.version(), Some(3), "keeps running version 3");
        assert_eq!(s.settings(&cams)[0].1.lines[0].id, "remote-line");
        assert_eq!(s.rejection(), Some(&r));
        // Garbage, another node's config, an empty (withdrawn) message.
        assert!(matches!(s.receive(b"{nope"), Received::Rejected(_)));
        let foreign = String::from_utf8(payload(5, "[]"))
            .expect("utf8")
            .replace("\"n1\"", "\"n2\"");
        let Received::Rejected(r) = s.receive(foreign.as_bytes()) else {
            panic!("must refuse")
        };
        assert_eq!(r.code, "node_id_mismatch");
        assert_eq!(s.receive(b""), Received::Withdrawn);
        assert_eq!(s.version(), Some(3));
        // The saved copy is still version 3.
        assert_eq!(
            RemoteConfigState::load(dir.path(), "n1", LIMIT).version(),
            Some(3)
        );
        // A later good version clears the error; an empty camera list hands
        // every camera back to the file.
        assert_eq!(
            s.receive(&payload(5, "[]")),
            Received::Applied { version: 5 }
        );
        assert_eq!(s.rejection(), None);
        assert_eq!(s.settings(&cams)[0].1.lines[0].id, "file-line");
    }

    /// Refuses `payload` with `code`, keeps running version 3, and keeps
    /// the reason short enough for a heartbeat.
    fn refused(s: &mut RemoteConfigState, payload: &[u8], code: &str) -> ConfigRejection {
        let Received::Rejected(r) = s.receive(payload) else {
            panic!("must refuse ({code})")
        };
        assert_eq!(r.code, code, "{}", r.reason);
        assert!(r.reason.len() < 4096, "{} bytes of reason", r.reason.len());
        assert_eq!(s.version(), Some(3), "keeps running version 3");
        assert_eq!(s.rejection(), Some(&r));
        r
    }

    #[test]
    fn hostile_documents_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = RemoteConfigState::load(dir.path(), "n1", LIMIT);
        assert_eq!(
            s.receive(&payload(3, GATE_REMOTE)),
            Received::Applied { version: 3 }
        );

        // 50 MB: refused on its length before any parsing.
        let mut huge = payload(4, "[]");
        huge.resize(50 << 20, b' ');
        let r = refused(&mut s, &huge, "too_large");
        assert!(r.reason.contains(&LIMIT.to_string()), "{}", r.reason);

        // Nested 100,000 levels deep (within the size limit): serde_json's
        // recursion limit refuses it; the stack is fine (this thread's is
        // the test harness's 2 MiB).
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let deep = format!(
                r#"{{"v":1,"node_id":"n1","version":4,"config":{{"cameras":[{{"id":"gate","zones":{}{}}}]}}}}"#,
                open.repeat(100_000),
                close.repeat(100_000)
            );
            assert!(deep.len() < LIMIT);
            let r = refused(&mut s, deep.as_bytes(), "invalid_json");
            assert!(r.reason.contains("recursion limit"), "{}", r.reason);
        }

        // Another protocol version, higher or lower.
        for v in ["2", "0", "\"1\"", "null"] {
            let doc = String::from_utf8(payload(4, "[]")).expect("utf8").replacen(
                "\"v\":1",
                &format!("\"v\":{v}"),
                1,
            );
            let r = refused(&mut s, doc.as_bytes(), "unsupported_version");
            assert_eq!(r.version, Some(4), "the refused version is still named");
        }

        // Thousands of cameras, zones, corners, lines: over the shared
        // bounds, one short reason.
        let zone = r#"{"id":"z","polygon":[[0,0],[1,0],[1,1]]}"#;
        let cams = format!(
            "[{}]",
            (0..2000)
                .map(|i| format!(r#"{{"id":"c{i}","zones":[{zone}]}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = refused(&mut s, &payload(4, &cams), "invalid_field");
        assert!(
            r.reason.contains("2000 cameras; a node has at most 64"),
            "{}",
            r.reason
        );
        let zones = format!(
            r#"[{{"id":"gate","zones":[{}]}}]"#,
            (0..3000)
                .map(|i| format!(r#"{{"id":"z{i}","polygon":[[0,0],[1,0],[1,1]]}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = refused(&mut s, &payload(4, &zones), "invalid_field");
        assert!(r.reason.contains("3000 zones"), "{}", r.reason);
        let corners = format!(
            r#"[{{"id":"gate","zones":[{{"id":"z","polygon":[{}]}}]}}]"#,
            vec!["[0.5,0.5]"; 20_000].join(",")
        );
        let r = refused(&mut s, &payload(4, &corners), "invalid_field");
        assert!(r.reason.contains("got 20000 points"), "{}", r.reason);
        let lines = format!(
            r#"[{{"id":"gate","lines":[{}]}}]"#,
            (0..1000)
                .map(|i| format!(r#"{{"id":"l{i}","from":[0,0],"to":[1,1]}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = refused(&mut s, &payload(4, &lines), "invalid_field");
        assert!(r.reason.contains("1000 lines"), "{}", r.reason);
        // 64 cameras each wrong in many ways: every problem found, the
        // reason names the first few and counts the rest.
        let bad = format!(
            "[{}]",
            (0..64)
                .map(|i| format!(r#"{{"id":"c{i}","heading":-1,"detect_fps":0,"zones":[{{"id":"bad id","polygon":[[2,2],[3,3],[4,4]]}}]}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let r = refused(&mut s, &payload(4, &bad), "invalid_field");
        assert!(r.reason.contains("more problems"), "{}", r.reason);

        // The running config is untouched on disk too.
        assert_eq!(
            RemoteConfigState::load(dir.path(), "n1", LIMIT).version(),
            Some(3)
        );
    }

    #[test]
    fn a_lower_version_applies_as_the_protocol_says() {
        // §5.5: a lower version means the registry was restored; the node
        // follows it (it is not a hostile input, and refusing it would
        // leave the node out of sync for good).
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = RemoteConfigState::load(dir.path(), "n1", LIMIT);
        assert_eq!(
            s.receive(&payload(7, GATE_REMOTE)),
            Received::Applied { version: 7 }
        );
        assert_eq!(
            s.receive(&payload(2, "[]")),
            Received::Applied { version: 2 }
        );
        assert_eq!(s.version(), Some(2));
    }

    #[test]
    fn an_oversized_message_is_a_refusal_with_a_reason() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = RemoteConfigState::load(dir.path(), "n1", LIMIT);
        s.receive(&payload(3, GATE_REMOTE));
        let r = s.refuse_oversized(50 << 20, LIMIT);
        assert_eq!((r.code.as_str(), r.version), ("too_large", None));
        assert!(r.reason.contains("mqtt.max_packet_size"), "{}", r.reason);
        assert_eq!(s.version(), Some(3));
        assert_eq!(s.rejection(), Some(&r));
        // A good version later clears it.
        s.receive(&payload(4, "[]"));
        assert_eq!(s.rejection(), None);
    }

    #[test]
    fn a_corrupt_saved_file_is_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join(FILE_NAME),
            br#"{"v":1,"node_id":"n1","version":9"#,
        )
        .expect("write");
        let s = RemoteConfigState::load(dir.path(), "n1", LIMIT);
        assert_eq!(s.version(), None);
        assert_eq!(s.rejection().map(|r| r.code.as_str()), Some("invalid_json"));
    }
}
