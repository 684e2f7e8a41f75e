//! Reading TOML config files so that a user sees every problem at once.
//!
//! [`ConfigDoc`] hands out typed values by dotted path and records, instead of
//! stopping at, each wrong type, bad value and unknown key. [`ConfigDoc::finish`]
//! then reports them all, with the file name and key, in one error.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

/// Every problem found in one config source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub source_name: String,
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  - {}", p.message)?;
            } else {
                write!(f, "\n  - {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

/// A parsed TOML document being read key by key.
#[derive(Debug)]
pub struct ConfigDoc {
    source_name: String,
    root: toml::Table,
    read: BTreeSet<String>,
    problems: Vec<ConfigProblem>,
}

impl ConfigDoc {
    /// An empty document (no file given): every key takes its default.
    pub fn empty(source_name: impl Into<String>) -> Self {
        Self {
            source_name: source_name.into(),
            root: toml::Table::new(),
            read: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    pub fn parse(text: &str, source_name: impl Into<String>) -> Result<Self, ConfigErrors> {
        let source_name = source_name.into();
        match text.parse::<toml::Table>() {
            Ok(root) => Ok(Self {
                source_name,
                root,
                read: BTreeSet::new(),
                problems: Vec::new(),
            }),
            Err(e) => Err(ConfigErrors {
                source_name,
                problems: vec![ConfigProblem {
                    key: String::new(),
                    message: format!("not valid TOML: {}", e.to_string().trim()),
                }],
            }),
        }
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source_name: name.clone(),
            problems: vec![ConfigProblem {
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        Self::parse(&text, name)
    }

    fn lookup(&self, path: &str) -> Option<&toml::Value> {
        let mut parts = path.split('.');
        let mut value = self.root.get(parts.next()?)?;
        for part in parts {
            value = value.as_table()?.get(part)?;
        }
        Some(value)
    }

    /// The value at `path` if present and of the right type; a wrong type is
    /// recorded as a problem and yields `None`.
    pub fn get<T: DeserializeOwned>(&mut self, path: &str) -> Option<T> {
        self.read.insert(path.to_owned());
        let value = self.lookup(path)?.clone();
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(path, e.message().trim().to_owned());
                None
            }
        }
    }

    /// Like [`ConfigDoc::get`], then checks the value: `check` returns the
    /// reason it is wrong.
    pub fn get_checked<T: DeserializeOwned>(
        &mut self,
        path: &str,
        check: impl FnOnce(&T) -> Result<(), String>,
    ) -> Option<T> {
        let v = self.get::<T>(path)?;
        match check(&v) {
            Ok(()) => Some(v),
            Err(msg) => {
                self.problem(path, msg);
                None
            }
        }
    }

    /// Records a problem found by the caller (cross-key checks, say).
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Reports every problem, plus every key nobody asked for.
    pub fn finish(mut self) -> Result<(), ConfigErrors> {
        let mut unknown = Vec::new();
        collect_unknown(&self.root, "", &self.read, &mut unknown);
        for key in unknown {
            let hint = self.suggest(&key);
            self.problem(&key, format!("unknown key{hint}"));
        }
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors {
                source_name: self.source_name,
                problems: self.problems,
            })
        }
    }

    fn suggest(&self, key: &str) -> String {
        let (parent, leaf) = key.rsplit_once('.').unwrap_or(("", key));
        let siblings: Vec<&str> = self
            .read
            .iter()
            .filter_map(|k| {
                let (p, l) = k.rsplit_once('.').unwrap_or(("", k.as_str()));
                (p == parent).then_some(l)
            })
            .collect();
        let close = siblings
            .iter()
            .find(|s| edit_distance(s, leaf) <= 2)
            .map(|s| format!(" (did you mean `{s}`?)"));
        close.unwrap_or_else(|| {
            if siblings.is_empty() {
                String::new()
            } else {
                format!(" (known here: {})", siblings.join(", "))
            }
        })
    }
}

fn collect_unknown(
    table: &toml::Table,
    prefix: &str,
    read: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if read.contains(&path) {
            continue;
        }
        match v {
            toml::Value::Table(t) if read.iter().any(|r| r.starts_with(&format!("{path}."))) => {
                collect_unknown(t, &path, read, out)
            }
            _ => out.push(path),
        }
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A duration written as `500ms`, `10s`, `5m`, `2h`, `1d`, or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (examples: 500ms, 10s, 5m, 2h)"))?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86400.0,
            other => {
                return Err(format!(
                    "unknown duration unit {other:?} in {s:?} (use ms, s, m, h or d)"
                ))
            }
        };
        if !secs.is_finite() || secs < 0.0 || secs > 1e9 {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(HumanDuration(Duration::from_secs_f64(secs)))
    }
}

/// Written back in the largest unit that keeps it whole (`10m`, `36h`, `1500ms`).
impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        let secs = self.0.as_secs();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs >= n && secs.is_multiple_of(n) {
                return write!(f, "{}{unit}", secs / n);
            }
        }
        write!(f, "{secs}s")
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration such as \"10s\" or a number of seconds")
        })? {
            Raw::Secs(s) => Ok(HumanDuration(Duration::from_secs(s))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A size written as `64MiB`, `1GB`, `512KiB`, or a bare number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (examples: 512KiB, 64MiB, 1GB)"))?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kb" => 1e3,
            "kib" | "k" => 1024.0,
            "mb" => 1e6,
            "mib" | "m" => 1024.0 * 1024.0,
            "gb" => 1e9,
            "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
                ))
            }
        };
        let bytes = n * mult;
        if !bytes.is_finite() || bytes < 0.0 || bytes > 1e15 {
            return Err(format!("{s:?} is out of range"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size such as \"64MiB\" or a number of bytes")
        })? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_at_once() {
        let mut doc = ConfigDoc::parse(
            r#"
node_id = 7
heartbeat_interval = "10 parsecs"
[outbox]
max_bytes = "64MiB"
max_byts = 1
[mqtt]
url = "mqtt://localhost:1883"
[unknown_section]
x = 1
"#,
            "agent.toml",
        )
        .expect("valid toml");
        assert_eq!(doc.get::<String>("node_id"), None);
        assert_eq!(doc.get::<HumanDuration>("heartbeat_interval"), None);
        assert_eq!(
            doc.get::<ByteSize>("outbox.max_bytes"),
            Some(ByteSize(64 << 20))
        );
        assert_eq!(
            doc.get::<String>("mqtt.url").as_deref(),
            Some("mqtt://localhost:1883")
        );
        let err = doc.finish().expect_err("problems");
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "node_id",
                "heartbeat_interval",
                "outbox.max_byts",
                "unknown_section"
            ]
        );
        let text = err.to_string();
        assert!(text.starts_with("agent.toml has 4 problems:"), "{text}");
        assert!(text.contains("did you mean `max_bytes`?"), "{text}");
        assert!(text.contains("parsecs"), "{text}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err = ConfigDoc::parse("a = [", "x.toml").expect_err("bad toml");
        assert!(err.to_string().contains("x.toml has 1 problem"), "{err}");
    }

    #[test]
    fn checked_values() {
        let mut doc = ConfigDoc::parse("fps = 0", "t").expect("toml");
        let v = doc.get_checked::<f64>("fps", |v| {
            if *v > 0.0 {
                Ok(())
            } else {
                Err("must be > 0".into())
            }
        });
        assert_eq!(v, None);
        assert_eq!(
            doc.finish().expect_err("bad").problems[0].message,
            "must be > 0"
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            "500ms".parse::<HumanDuration>(),
            Ok(HumanDuration(Duration::from_millis(500)))
        );
        assert_eq!(
            "2m".parse::<HumanDuration>(),
            Ok(HumanDuration(Duration::from_secs(120)))
        );
        assert_eq!(
            "15".parse::<HumanDuration>(),
            Ok(HumanDuration(Duration::from_secs(15)))
        );
        assert!("5 fortnights".parse::<HumanDuration>().is_err());
        assert_eq!("1KiB".parse::<ByteSize>(), Ok(ByteSize(1024)));
        assert_eq!("2MB".parse::<ByteSize>(), Ok(ByteSize(2_000_000)));
        assert!("lots".parse::<ByteSize>().is_err());
    }
}
