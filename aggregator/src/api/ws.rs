//! `GET /api/v1/ws`: the live feed as typed JSON text frames.
//!
//! A client may narrow the feed with query parameters (`types`, `node_id`,
//! `camera_id`, `label`, `min_score`) or by sending a filter object at any
//! time. A client too slow to keep up gets a `{"type":"lagged"}` frame with
//! the number of events it missed and stays connected.
//!
//! What one client can make the server hold is bounded ([`WsLimits`]): an
//! incoming message or frame over [`MAX_MESSAGE_BYTES`] ends the socket with
//! close code 1009; a filter is at most [`MAX_FILTER_VALUES`] types of at
//! most [`MAX_FILTER_VALUE_CHARS`] characters, like every other value (a
//! filter over that is refused with an `error` frame and the old one stays;
//! in the query string it is a 400). Outgoing, the client shares the live
//! bus's bounded ring (it lags, ingest never waits), the socket buffers one
//! frame at a time, and a client that takes more than `send_timeout` to take
//! a frame is dropped. The server pings every `ping_interval`; a client not
//! heard from (pong or anything else) in three intervals is dropped, so a
//! vanished client does not hold its connection forever. (The HTTP idle
//! timeout does not apply: an upgraded socket leaves the HTTP listener's
//! timers, see `crate::http_server`.)

use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
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

/// Largest message or frame a client may send (a filter is a few hundred bytes).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Most entries of `types`.
pub const MAX_FILTER_VALUES: usize = 16;
/// Longest `types` entry, `node_id`, `camera_id` or `label`.
pub const MAX_FILTER_VALUE_CHARS: usize = 128;

/// Per-client bounds of the live feed beyond the filter's.
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    /// A frame the client does not take within this is the end of it.
    pub send_timeout: Duration,
    /// How often the server pings; three silent intervals end the socket.
    pub ping_interval: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            send_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
        }
    }
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
    /// Refuses filters of unbounded size (the whole message is bounded by
    /// [`MAX_MESSAGE_BYTES`] already; this bounds what is kept and echoed).
    pub fn check(&self) -> Result<(), String> {
        let long = |name: &str, v: &Option<String>| match v {
            Some(v) if v.chars().count() > MAX_FILTER_VALUE_CHARS => Err(format!(
                "{name} is {} characters; at most {MAX_FILTER_VALUE_CHARS}",
                v.chars().count()
            )),
            _ => Ok(()),
        };
        long("node_id", &self.node_id)?;
        long("camera_id", &self.camera_id)?;
        long("label", &self.label)?;
        if let Some(types) = &self.types {
            if types.len() > MAX_FILTER_VALUES {
                return Err(format!(
                    "types has {} entries; at most {MAX_FILTER_VALUES}",
                    types.len()
                ));
            }
            for t in types {
                long("a types entry", &Some(t.clone()))?;
            }
        }
        if let Some(m) = self.min_score {
            if !(0.0..=1.0).contains(&m) {
                return Err(format!("min_score is {m}; it must be 0..=1"));
            }
        }
        Ok(())
    }

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
        (status = 400, description = "not a WebSocket upgrade, or a bad filter (over the size bounds, min_score outside 0..=1)", body = super::openapi::ErrorBody),
    ))]
pub async fn upgrade(
    State(state): State<AppState>,
    Authed(who): super::auth::AsViewer,
    Query(mut filter): Query<LiveFilter>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    filter
        .check()
        .map_err(|e| ApiError::BadRequest(format!("bad filter: {e}")))?;
    // A tenant's client only ever sees its tenant's nodes.
    filter.tenant_id = who.tenant_id;
    filter.allowed_nodes = match who.tenant_id {
        None => None,
        Some(t) => Some(state.accounts.tenant_nodes(t).await?),
    };
    let rx = state.live.subscribe();
    let ws = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES);
    Ok(ws.on_upgrade(move |socket: WebSocket| async move {
        metrics::gauge!("edgeqi_ws_clients").increment(1.0);
        let (sink, stream) = socket.split();
        serve(sink, stream, rx, filter).await;
        metrics::gauge!("edgeqi_ws_clients").decrement(1.0);
    }))
}

/// The per-client loop with the default [`WsLimits`].
pub async fn serve<S, R>(sink: S, stream: R, rx: broadcast::Receiver<LiveEvent>, filter: LiveFilter)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    serve_with(sink, stream, rx, filter, WsLimits::default()).await
}

/// The per-client loop, generic over the socket halves so tests can use channels.
pub async fn serve_with<S, R>(
    mut sink: S,
    mut stream: R,
    mut rx: broadcast::Receiver<LiveEvent>,
    mut filter: LiveFilter,
    limits: WsLimits,
) where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    // One frame at a time, each within the send timeout: a client that
    // stops reading is dropped instead of buffered for.
    async fn push<S: Sink<Message> + Unpin>(sink: &mut S, m: Message, limits: &WsLimits) -> bool {
        match tokio::time::timeout(limits.send_timeout, sink.send(m)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                metrics::counter!("edgeqi_ws_dropped_total", "reason" => "send_timeout")
                    .increment(1);
                tracing::info!(
                    timeout_s = limits.send_timeout.as_secs(),
                    "WebSocket client does not read; dropped"
                );
                false
            }
        }
    }
    let hello = json!({"type": "hello", "data": {"protocol": 1, "filter": describe(&filter)}});
    if !push(&mut sink, Message::Text(hello.to_string().into()), &limits).await {
        return;
    }
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut heard = tokio::time::Instant::now();
    loop {
        let outgoing = tokio::select! {
            event = rx.recv() => match event {
                Ok(e) if filter.matches(&e) => serde_json::to_string(&e).ok().map(|t| Message::Text(t.into())),
                Ok(_) => None,
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!("edgeqi_ws_lagged_total").increment(1);
                    tracing::warn!(missed, "WebSocket client lagged");
                    Some(Message::Text(json!({"type": "lagged", "data": {"missed": missed}}).to_string().into()))
                }
                Err(RecvError::Closed) => return,
            },
            _ = ping.tick() => {
                if heard.elapsed() > limits.ping_interval * 3 {
                    metrics::counter!("edgeqi_ws_dropped_total", "reason" => "silent").increment(1);
                    tracing::info!("WebSocket client silent for three ping intervals; dropped");
                    return;
                }
                Some(Message::Ping(Default::default()))
            }
            msg = stream.next() => {
                heard = tokio::time::Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => Some(Message::Text(match serde_json::from_str::<LiveFilter>(&t)
                        .map_err(|e| e.to_string())
                        .and_then(|f| f.check().map(|()| f))
                    {
                        Ok(mut f) => {
                            f.allowed_nodes = filter.allowed_nodes.take();
                            f.tenant_id = filter.tenant_id;
                            filter = f;
                            json!({"type": "subscribed", "data": {"filter": describe(&filter)}}).to_string()
                        }
                        Err(e) => json!({"type": "error", "data": {"message": format!("bad filter (the previous one stays): {e}")}}).to_string(),
                    }.into())),
                    Some(Err(e)) => {
                        // Mostly a message over the size limit: say so in the close frame.
                        let mut reason = format!("{e}; messages are at most {MAX_MESSAGE_BYTES} bytes");
                        while reason.len() > 120 {
                            reason.pop();
                        }
                        tracing::info!(error = %e, "WebSocket client sent a bad message; closing");
                        let code = if reason.contains("limit") { close_code::SIZE } else { close_code::PROTOCOL };
                        let close = Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        }));
                        let _ = push(&mut sink, close, &limits).await;
                        return;
                    }
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Ok(_)) => None,
                }
            }
        };
        if let Some(m) = outgoing {
            if !push(&mut sink, m, &limits).await {
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

    #[test]
    fn filters_of_unbounded_size_are_refused_with_the_bound() {
        let ok: LiveFilter = serde_json::from_value(
            json!({"types": ["detection", "alert"], "label": "bus", "min_score": 0.5}),
        )
        .expect("filter");
        assert_eq!(ok.check(), Ok(()));
        for (bad, says) in [
            (
                json!({"label": "x".repeat(15_000_000)}),
                "label is 15000000 characters; at most 128",
            ),
            (
                json!({"node_id": "n".repeat(129)}),
                "node_id is 129 characters",
            ),
            (
                json!({"camera_id": "c".repeat(500)}),
                "camera_id is 500 characters",
            ),
            (
                json!({"types": vec!["detection"; 17]}),
                "types has 17 entries; at most 16",
            ),
            (
                json!({"types": ["t".repeat(200)]}),
                "a types entry is 200 characters",
            ),
            (json!({"min_score": 2.0}), "min_score is 2"),
        ] {
            let f: LiveFilter = serde_json::from_value(bad).expect("parses");
            let err = f.check().expect_err(says);
            assert!(err.contains(says), "{err}");
            assert!(err.len() < 200, "the error does not echo the value");
        }
    }

    fn text(m: Message) -> serde_json::Value {
        match m {
            Message::Text(t) => serde_json::from_str(&t).expect("json"),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn status(node: &str) -> LiveEvent {
        LiveEvent::NodeStatus(crate::live::NodeStatusEvent {
            node_id: node.into(),
            online: true,
            cause: "status".into(),
        })
    }

    #[tokio::test]
    async fn an_oversized_filter_message_gets_an_error_and_the_old_filter_stays() {
        let bus = crate::live::LiveBus::new(16);
        let (out_tx, mut out_rx) = futures_channel::mpsc::unbounded::<Message>();
        let (in_tx, in_rx) = futures_channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let filter: LiveFilter = serde_json::from_str(r#"{"node_id":"a"}"#).expect("filter");
        let task = tokio::spawn(serve(out_tx, in_rx, bus.subscribe(), filter));
        assert_eq!(text(out_rx.next().await.expect("hello"))["type"], "hello");
        let huge = json!({"label": "x".repeat(1_000_000)}).to_string();
        in_tx
            .unbounded_send(Ok(Message::Text(huge.into())))
            .expect("send");
        let err = text(out_rx.next().await.expect("error"));
        assert_eq!(err["type"], "error");
        let msg = err["data"]["message"].as_str().expect("message");
        assert!(msg.contains("at most 128") && msg.len() < 200, "{msg}");
        // Still node a's feed.
        bus.send(status("b"));
        bus.send(status("a"));
        let e = text(out_rx.next().await.expect("event"));
        assert_eq!(e["data"]["node_id"], "a");
        drop(in_tx);
        task.await.expect("join");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout() {
        let bus = crate::live::LiveBus::new(16);
        // A sink with room for one frame that nobody reads.
        let (out_tx, _out_rx) = futures_channel::mpsc::channel::<Message>(0);
        let (_in_tx, in_rx) = futures_channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let limits = WsLimits {
            send_timeout: Duration::from_millis(200),
            ping_interval: Duration::from_secs(60),
        };
        let task = tokio::spawn(serve_with(
            out_tx,
            in_rx,
            bus.subscribe(),
            LiveFilter::default(),
            limits,
        ));
        for _ in 0..5 {
            bus.send(status("a"));
        }
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("dropped, not waited for forever")
            .expect("join");
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_and_one_that_answers_pings_is_kept() {
        let bus = crate::live::LiveBus::new(16);
        let limits = WsLimits {
            send_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_millis(100),
        };
        let (out_tx, mut out_rx) = futures_channel::mpsc::unbounded::<Message>();
        let (_in_tx, in_rx) = futures_channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let silent = tokio::spawn(serve_with(
            out_tx,
            in_rx,
            bus.subscribe(),
            LiveFilter::default(),
            limits,
        ));
        tokio::time::timeout(Duration::from_secs(2), silent)
            .await
            .expect("silent client dropped")
            .expect("join");
        let mut pings = 0;
        while let Ok(m) = out_rx.try_recv() {
            pings += usize::from(matches!(m, Message::Ping(_)));
        }
        assert!(pings >= 2, "it was pinged first ({pings})");

        let (out_tx, mut out_rx) = futures_channel::mpsc::unbounded::<Message>();
        let (in_tx, in_rx) = futures_channel::mpsc::unbounded::<Result<Message, axum::Error>>();
        let alive = tokio::spawn(serve_with(
            out_tx,
            in_rx,
            bus.subscribe(),
            LiveFilter::default(),
            limits,
        ));
        let answer = tokio::spawn(async move {
            while let Some(m) = out_rx.next().await {
                if matches!(m, Message::Ping(_))
                    && in_tx
                        .unbounded_send(Ok(Message::Pong(Default::default())))
                        .is_err()
                {
                    return;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(!alive.is_finished(), "a client that answers stays");
        alive.abort();
        answer.abort();
    }

    /// A raw WebSocket over the real listener and router.
    mod socket {
        use std::time::Duration;

        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;

        use super::super::super::tests::{fixture, ADMIN};

        async fn start() -> (
            super::super::super::tests::Fixture,
            std::net::SocketAddr,
            tokio::sync::watch::Sender<bool>,
        ) {
            let f = fixture();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (stop, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(crate::http_server::serve(
                listener,
                super::super::super::router(f.state.clone()),
                crate::http_server::HttpLimits::default(),
                rx,
            ));
            (f, addr, stop)
        }

        /// Sends the upgrade request for `query`; returns the socket and the response head.
        async fn upgrade(addr: std::net::SocketAddr, query: &str) -> (TcpStream, String) {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(
                format!(
                    "GET /api/v1/ws?access_token={ADMIN}{query} HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n\
                     Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("write");
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut b))
                    .await
                    .expect("head in time")
                    .expect("read");
                assert_eq!(n, 1, "closed in the head");
                head.push(b[0]);
            }
            (c, String::from_utf8_lossy(&head).into_owned())
        }

        /// Reads server frames until a close frame; returns its code.
        async fn close_code(c: &mut TcpStream) -> u16 {
            let mut all = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                // Server frames are unmasked: opcode byte, 7-bit length or
                // 126 + 16-bit length (hello is a few hundred bytes).
                let mut at = 0;
                while at + 4 <= all.len() {
                    let (head, len) = match all[at + 1] & 0x7f {
                        126 => (
                            4,
                            usize::from(u16::from_be_bytes([all[at + 2], all[at + 3]])),
                        ),
                        n => (2, usize::from(n)),
                    };
                    if all[at] & 0x0f == 0x8 {
                        return u16::from_be_bytes([all[at + 2], all[at + 3]]);
                    }
                    at += head + len;
                }
                let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
                    .await
                    .expect("a close frame in time")
                    .expect("read");
                assert!(n > 0, "closed without a close frame");
                all.extend_from_slice(&buf[..n]);
            }
        }

        #[tokio::test]
        async fn an_oversized_message_ends_the_socket_with_1009_before_it_is_read() {
            let (_f, addr, _stop) = start().await;
            let (mut c, head) = upgrade(addr, "").await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            // A masked text frame announcing 15 MB; only its header is sent.
            let mut frame = vec![0x81, 0x80 | 127];
            frame.extend_from_slice(&15_000_000u64.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0, 0]);
            frame.extend_from_slice(br#"{"label":"xxxxxxxx"#);
            c.write_all(&frame).await.expect("write");
            assert_eq!(close_code(&mut c).await, 1009);
        }

        #[tokio::test]
        async fn an_oversized_filter_in_the_query_string_is_a_400() {
            let (_f, addr, _stop) = start().await;
            let (mut c, head) = upgrade(addr, &format!("&label={}", "x".repeat(5000))).await;
            assert!(head.starts_with("HTTP/1.1 400"), "{head}");
            let mut body = vec![0u8; 512];
            let n = c.read(&mut body).await.expect("body");
            let body = String::from_utf8_lossy(&body[..n]);
            assert!(
                body.contains("label is 5000 characters; at most 128"),
                "{body}"
            );
            let (_, head) = upgrade(addr, "&label=bus&types=detection").await;
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        }
    }
}
