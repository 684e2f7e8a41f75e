//! The MQTT topic tree of protocol v1: `edgeqi/v1/nodes/{node_id}/{kind}`.
//!
//! Builders for publishers, wildcard filters for the aggregator, and a parser
//! that refuses anything outside the tree (including malformed node ids).

use std::fmt;

/// Every v1 topic starts with this prefix.
pub const PREFIX: &str = "edgeqi/v1/nodes";

/// The last segment of a node topic: what the payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicKind {
    Detections,
    Heartbeat,
    Status,
    Ack,
    Config,
}

impl TopicKind {
    pub const ALL: [TopicKind; 5] = [
        TopicKind::Detections,
        TopicKind::Heartbeat,
        TopicKind::Status,
        TopicKind::Ack,
        TopicKind::Config,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TopicKind::Detections => "detections",
            TopicKind::Heartbeat => "heartbeat",
            TopicKind::Status => "status",
            TopicKind::Ack => "ack",
            TopicKind::Config => "config",
        }
    }

    fn from_segment(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Wildcard filter matching this kind for every node: `edgeqi/v1/nodes/+/{kind}`.
    pub fn filter_all_nodes(self) -> String {
        format!("{PREFIX}/+/{}", self.as_str())
    }
}

/// Analytics topics of a node: `edgeqi/v1/nodes/{node_id}/events` (track
/// events and line counts, [`crate::protocol::EventBatch`]) and
/// `…/snapshots` ([`crate::protocol::Snapshot`]), both agent → aggregator,
/// QoS 1, not retained.
///
/// Kept apart from [`TopicKind`] so that consumers matching on `TopicKind`
/// exhaustively keep compiling; a consumer that handles them can fold them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnalyticsKind {
    Events,
    Snapshots,
}

impl AnalyticsKind {
    pub const ALL: [AnalyticsKind; 2] = [AnalyticsKind::Events, AnalyticsKind::Snapshots];

    pub fn as_str(self) -> &'static str {
        match self {
            AnalyticsKind::Events => "events",
            AnalyticsKind::Snapshots => "snapshots",
        }
    }

    /// `edgeqi/v1/nodes/{node_id}/{kind}`.
    pub fn topic(self, node_id: &str) -> String {
        format!("{PREFIX}/{node_id}/{}", self.as_str())
    }

    /// Wildcard filter matching this kind for every node.
    pub fn filter_all_nodes(self) -> String {
        format!("{PREFIX}/+/{}", self.as_str())
    }

    /// Parses `edgeqi/v1/nodes/{node_id}/{events|snapshots}`; `None` for
    /// anything else, including a malformed node id.
    pub fn parse_topic(topic: &str) -> Option<(String, AnalyticsKind)> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
        let (node_id, kind) = rest.split_once('/')?;
        if !is_valid_node_id(node_id) {
            return None;
        }
        let kind = Self::ALL.into_iter().find(|k| k.as_str() == kind)?;
        Some((node_id.to_owned(), kind))
    }
}

/// A parsed v1 topic: which node, which kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub node_id: String,
    pub kind: TopicKind,
}

impl Topic {
    pub fn new(node_id: impl Into<String>, kind: TopicKind) -> Self {
        Self {
            node_id: node_id.into(),
            kind,
        }
    }

    /// Parses `edgeqi/v1/nodes/{node_id}/{kind}`; `None` for anything else.
    pub fn parse(topic: &str) -> Option<Self> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
        let (node_id, kind) = rest.split_once('/')?;
        if !is_valid_node_id(node_id) {
            return None;
        }
        Some(Self::new(node_id, TopicKind::from_segment(kind)?))
    }

    /// Like [`Topic::parse`] but keeps whatever sits in the node segment, so the
    /// aggregator can dead-letter a publish to `edgeqi/v1/nodes/bad id!/detections`
    /// with a reason instead of ignoring it.
    pub fn parse_lenient(topic: &str) -> Option<(String, TopicKind)> {
        let rest = topic.strip_prefix(PREFIX)?.strip_prefix('/')?;
        let (node_id, kind) = rest.rsplit_once('/')?;
        Some((node_id.to_owned(), TopicKind::from_segment(kind)?))
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}/{}/{}", self.node_id, self.kind.as_str())
    }
}

/// `[A-Za-z0-9_-]{1,64}`: node ids become topic segments, file names and URL
/// path segments, so nothing else is allowed.
pub fn is_valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_every_kind() {
        for kind in TopicKind::ALL {
            let t = Topic::new("gate-01", kind);
            let s = t.to_string();
            assert_eq!(s, format!("edgeqi/v1/nodes/gate-01/{}", kind.as_str()));
            assert_eq!(Topic::parse(&s), Some(t));
        }
    }

    #[test]
    fn analytics_topics() {
        for kind in AnalyticsKind::ALL {
            let t = kind.topic("gate-01");
            assert_eq!(
                AnalyticsKind::parse_topic(&t),
                Some(("gate-01".into(), kind))
            );
            assert_eq!(Topic::parse(&t), None, "not a TopicKind");
        }
        assert_eq!(AnalyticsKind::Events.topic("n"), "edgeqi/v1/nodes/n/events");
        assert_eq!(
            AnalyticsKind::parse_topic("edgeqi/v1/nodes/a b/events"),
            None
        );
        assert_eq!(
            AnalyticsKind::parse_topic("edgeqi/v1/nodes/a/detections"),
            None
        );
    }

    #[test]
    fn rejects_foreign_and_malformed_topics() {
        for bad in [
            "edgeqi/v2/nodes/a/detections",
            "edgeqi/v1/nodes/a/unknown",
            "edgeqi/v1/nodes//detections",
            "edgeqi/v1/nodes/a b/detections",
            "edgeqi/v1/nodes/a/b/detections",
            "edgeqi/v1/nodes/a",
            "other/topic",
        ] {
            assert_eq!(Topic::parse(bad), None, "{bad}");
        }
        let long = format!("edgeqi/v1/nodes/{}/heartbeat", "x".repeat(65));
        assert_eq!(Topic::parse(&long), None);
    }

    #[test]
    fn lenient_parse_keeps_bad_node_segment() {
        assert_eq!(
            Topic::parse_lenient("edgeqi/v1/nodes/bad id!/detections"),
            Some(("bad id!".to_owned(), TopicKind::Detections))
        );
    }

    #[test]
    fn node_id_pattern() {
        assert!(is_valid_node_id("Gate_01-a"));
        assert!(is_valid_node_id(&"a".repeat(64)));
        assert!(!is_valid_node_id(""));
        assert!(!is_valid_node_id(&"a".repeat(65)));
        assert!(!is_valid_node_id("gate.01"));
        assert!(!is_valid_node_id("gate/01"));
        assert!(!is_valid_node_id("gaté"));
    }

    #[test]
    fn wildcard_filters() {
        assert_eq!(
            TopicKind::Detections.filter_all_nodes(),
            "edgeqi/v1/nodes/+/detections"
        );
    }
}
