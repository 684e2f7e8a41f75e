//! Which topics an authenticated node may use on the embedded broker.
//!
//! A node lives in its own subtree, `edgeqi/v1/nodes/{node_id}/…`: it may
//! subscribe to any filter inside it and publish anywhere inside it except on
//! the topics the aggregator publishes *to* the node (`ack`, `config`), so a
//! node cannot forge its own acknowledgements or overwrite its retained
//! desired configuration.

use edgeqi_shared::topic::PREFIX;
use edgeqi_shared::TopicKind;

/// The part of `topic` below `edgeqi/v1/nodes/{node_id}/`, if it is there.
fn below_own_subtree<'a>(node_id: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix(PREFIX)?
        .strip_prefix('/')?
        .strip_prefix(node_id)?
        .strip_prefix('/')
        .filter(|rest| !rest.is_empty())
}

/// May `node_id` publish on `topic`?
pub fn may_publish(node_id: &str, topic: &str) -> bool {
    match below_own_subtree(node_id, topic) {
        // Wildcards are not valid in a topic name; refuse rather than pass them on.
        Some(rest) if !rest.contains(['+', '#']) => {
            rest != TopicKind::Ack.as_str() && rest != TopicKind::Config.as_str()
        }
        _ => false,
    }
}

/// May `node_id` subscribe to `filter`? Any filter inside its own subtree
/// (wildcards included) is fine; a wildcard in the node segment, a shared
/// subscription (`$share/…`) or anything outside the tree is not.
pub fn may_subscribe(node_id: &str, filter: &str) -> bool {
    below_own_subtree(node_id, filter).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_only_into_own_subtree_and_not_on_aggregator_topics() {
        for ok in [
            "edgeqi/v1/nodes/cam-1/detections",
            "edgeqi/v1/nodes/cam-1/heartbeat",
            "edgeqi/v1/nodes/cam-1/status",
            "edgeqi/v1/nodes/cam-1/events",
            "edgeqi/v1/nodes/cam-1/snapshots",
            "edgeqi/v1/nodes/cam-1/config/applied",
        ] {
            assert!(may_publish("cam-1", ok), "{ok}");
        }
        for denied in [
            "edgeqi/v1/nodes/cam-2/detections",
            "edgeqi/v1/nodes/cam-10/detections",
            "edgeqi/v1/nodes/cam/detections",
            "edgeqi/v1/nodes/cam-1/ack",
            "edgeqi/v1/nodes/cam-1/config",
            "edgeqi/v1/nodes/cam-1/",
            "edgeqi/v1/nodes/cam-1",
            "edgeqi/v1/nodes/cam-1/+",
            "edgeqi/v2/nodes/cam-1/detections",
            "other/topic",
            "",
        ] {
            assert!(!may_publish("cam-1", denied), "{denied}");
        }
    }

    #[test]
    fn subscribe_only_inside_own_subtree() {
        for ok in [
            "edgeqi/v1/nodes/cam-1/ack",
            "edgeqi/v1/nodes/cam-1/config",
            "edgeqi/v1/nodes/cam-1/#",
            "edgeqi/v1/nodes/cam-1/+",
        ] {
            assert!(may_subscribe("cam-1", ok), "{ok}");
        }
        for denied in [
            "#",
            "edgeqi/#",
            "edgeqi/v1/nodes/+/ack",
            "edgeqi/v1/nodes/#",
            "edgeqi/v1/nodes/cam-2/ack",
            "edgeqi/v1/nodes/cam-1",
            "$share/g/edgeqi/v1/nodes/cam-1/ack",
            "$SYS/#",
        ] {
            assert!(!may_subscribe("cam-1", denied), "{denied}");
        }
    }
}
