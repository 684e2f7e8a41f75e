//! `GET /api/v1/ws`: the live feed as typed JSON text frames.
//!
//! A client may narrow the feed with query parameters (`types`, `node_id`,
//! `camera_id`, `label`, `min_score`) or by sending a filter object at any
//! time. A client too slow to keep up gets a `{"type":"lagged"}` frame with
//! the number of events it missed and stays connected.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};

use super::auth::Authed;
use super::{ApiError, AppState};
use crate::live::LiveEvent;

/// What a client wants to see; empty means everything.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveFilter {
    /// Comma-separated in the query string, a list in a filter message.
    #[serde(default, deserialize_with = "comma_or_list")]
    pub types: Option<Vec<String>>,
    pub node_id: Option<String>,
    pub camera_id: Option<String>,
    pub label: Option<String>,
    pub min_score: Option<f32>,
    /// Ignored here: the auth extractor reads it.
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
    /// Set by the server from the caller's tenant, never by the client.
    #[serde(skip)]
    pub allowed_nodes: Option<Vec<String>>,
    /// The caller's tenant (server-set); alerts and incidents are scoped by it.
    #[serde(skip)]
    pub tenant_id: Option<i64>,
}

fn comma_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => None,
        Some(Raw::One(s)) => Some(
            s.split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        ),
        Some(Raw::Many(v)) => Some(v),
    })
}

impl LiveFilter {
    pub fn matches(&self, e: &LiveEvent) -> bool {
        if let LiveEvent::Alert(v) | LiveEvent::Incident(v) = e {
            // Alerts and incidents carry their tenant (a rule's, an
            // incident's), not a node: a tenant's client sees its own only,
            // like GET /incidents; tenantless ones (citizen reports) are for
            // global callers.
            if self.tenant_id.is_some()
                && v.get("tenant_id").and_then(|t| t.as_i64()) != self.tenant_id
            {
                return false;
            }
        } else if let Some(allowed) = &self.allowed_nodes {
            if !e.node_id().is_some_and(|n| allowed.iter().any(|a| a == n)) {
                return false;
            }
        }
        if let Some(types) = &self.types {
            if !types.iter().any(|t| t == e.kind()) {
                return false;
            }
        }
        if let Some(node) = &self.node_id {
            if e.node_id() != Some(node.as_str()) {
                return false;
            }
        }
        match e {
            LiveEvent::Detection(d) => {
                self.camera_id.as_ref().is_none_or(|c| *c == d.camera_id)
                    && self.label.as_ref().is_none_or(|l| *l == d.label)
                    && self.min_score.is_none_or(|m| d.score >= m)
            }
            LiveEvent::Alert(a) => {
                let field = |k: &str| a.get(k).and_then(|v| v.as_str());
                self.camera_id
                    .as_deref()
                    .is_none_or(|c| field("camera_id") == Some(c))
                    && self
                        .label
                        .as_deref()
                        .is_none_or(|l| field("label") == Some(l))
            }
            _ => true,
        }
    }
}

/// The live feed as JSON text frames `{"type": "detection"|"heartbeat"|"node_status"|"incident"|"lagged", "data": …}`,
/// limited to the caller's tenant. Send a filter object at any time to change what comes.
#[utoipa::path(get, path = "/ws", tag = "live", operation_id = "live_feed",
    security(("jwt" = ["viewer"])),
    params(
        ("types" = Option<String>, Query, description = "comma-separated event types"),
        ("node_id" = Option<String>, Query),
        ("camera_id" = Option<String>, Query),
        ("label" = Option<String>, Query),
        ("min_score" = Option<f32>, Query),
    ),
    responses(
        (status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, description = "not a WebSocket upgrade, or a bad filter", body = super::openapi::ErrorBody),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    Authed(who): super::auth::AsViewer,
    Query(mut filter): Query<LiveFilter>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // A tenant's client only ever sees its tenant's nodes.
    filter.tenant_id = who.tenant_id;
    filter.allowed_nodes = match who.tenant_id {
        None => None,
        Some(t) => Some(state.accounts.tenant_nodes(t).await?),
    };
    let rx = state.live.subscribe();
    Ok(ws.on_upgrade(move |socket: WebSocket| async move {
        metrics::gauge!("edgeqi_ws_clients").increment(1.0);
        let (sink, stream) = socket.split();
        serve(sink, stream, rx, filter).await;
        metrics::gauge!("edgeqi_ws_clients").decrement(1.0);
    }))
}

/// The per-client loop, generic over the socket halves so tests can use channels.
pub async fn serve<S, R>(
    mut sink: S,
    mut stream: R,
    mut rx: broadcast::Receiver<LiveEvent>,
    mut filter: LiveFilter,
) where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let hello = json!({"type": "hello", "data": {"protocol": 1, "filter": describe(&filter)}});
    if sink
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let outgoing = tokio::select! {
            event = rx.recv() => match event {
                Ok(e) if filter.matches(&e) => serde_json::to_string(&e).ok(),
                Ok(_) => None,
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!("edgeqi_ws_lagged_total").increment(1);
                    tracing::warn!(missed, "WebSocket client lagged");
                    Some(json!({"type": "lagged", "data": {"missed": missed}}).to_string())
                }
                Err(RecvError::Closed) => return,
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => Some(match serde_json::from_str::<LiveFilter>(&t) {
                    Ok(mut f) => {
                        f.allowed_nodes = filter.allowed_nodes.take();
                        f.tenant_id = filter.tenant_id;
                        filter = f;
                        json!({"type": "subscribed", "data": {"filter": describe(&filter)}}).to_string()
                    }
                    Err(e) => json!({"type": "error", "data": {"message": format!("bad filter: {e}")}}).to_string(),
                }),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => None,
            },
        };
        if let Some(text) = outgoing {
            if sink.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
    }
}

fn describe(f: &LiveFilter) -> serde_json::Value {
    json!({
        "types": f.types, "node_id": f.node_id, "camera_id": f.camera_id,
        "label": f.label, "min_score": f.min_score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_tenant_sees_its_own_incidents_only() {
        let tenant = LiveFilter {
            tenant_id: Some(1),
            allowed_nodes: Some(vec!["gate-01".into()]),
            ..LiveFilter::default()
        };
        let global = LiveFilter::default();
        let incident = |t: serde_json::Value| LiveEvent::Incident(json!({"id": 7, "tenant_id": t}));
        assert!(tenant.matches(&incident(json!(1))));
        assert!(!tenant.matches(&incident(json!(2))));
        assert!(!tenant.matches(&incident(serde_json::Value::Null)));
        for t in [json!(1), json!(2), serde_json::Value::Null] {
            assert!(global.matches(&incident(t)));
        }
    }
}
