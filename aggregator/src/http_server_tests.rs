//! The listener over real sockets: each timeout, the cap, upgrades, the peer
//! address, shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::routing::{get, post};
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{serve, HttpLimits};

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/peer",
            get(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                    peer.to_string()
                },
            ),
        )
        .route(
            "/echo",
            post(|body: axum::body::Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    // A quiet feed: one push after a long silence.
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    let _ = socket.send(Message::Text("late news".into())).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                })
            }),
        )
}

struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: HttpLimits) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, app(), limits, rx));
    Server { addr, stop, task }
}

fn limits() -> HttpLimits {
    HttpLimits {
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        max_connections: 64,
    }
}

/// Reads until the server closes the connection (EOF or reset) or `max`
/// passes; returns what came and when it ended (`None`: still open).
async fn read_to_close(s: &mut TcpStream, max: Duration) -> (Vec<u8>, Option<Duration>) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = max.saturating_sub(t.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return (out, None),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(t.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response (head and a Content-Length body) off a keep-alive connection.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().expect("length"))
                })
                .unwrap_or(0);
            if out.len() >= head_end + 4 + len {
                return text;
            }
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn half_sent_headers_are_cut_after_the_header_timeout() {
    let srv = start(HttpLimits {
        header_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(srv.addr).await.expect("connect");
    c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .expect("write");
    let (got, closed) = read_to_close(&mut c, Duration::from_secs(3)).await;
    let closed = closed.expect("closed by the server");
    assert!(got.is_empty(), "no response to half a head: {got:?}");
    assert!(closed >= Duration::from_millis(250), "{closed:?}");
    // A client that connects and sends nothing goes the same way.
    let mut c = TcpStream::connect(srv.addr).await.expect("connect");
    let (_, closed) = read_to_close(&mut c, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "silent connection closed");
    // The server still answers.
    let mut c = TcpStream::connect(srv.addr).await.expect("connect");
    c.write_all(GET).await.expect("write");
    assert!(read_response(&mut c).await.ends_with("hello"));
}

#[tokio::test]
async fn idle_keep_alives_close_after_the_idle_timeout_not_the_header_timeout() {
    let srv = start(HttpLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(1000),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(srv.addr).await.expect("connect");
    c.write_all(GET).await.expect("write");
    assert!(read_response(&mut c).await.ends_with("hello"));
    // Longer than the header timeout, shorter than the idle timeout: still open.
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.write_all(GET).await.expect("write");
    assert!(read_response(&mut c).await.ends_with("hello"), "kept alive");
    let t = Instant::now();
    let (got, closed) = read_to_close(&mut c, Duration::from_secs(4)).await;
    let closed = closed.expect("idle connection closed");
    assert!(got.is_empty());
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "closed after {closed:?} ({:?} since the response)",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_half_sent_body_is_cut_after_the_body_timeout() {
    let srv = start(HttpLimits {
        body_timeout: Duration::from_millis(400),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(srv.addr).await.expect("connect");
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nonly a little")
        .await
        .expect("write");
    let (got, closed) = read_to_close(&mut c, Duration::from_secs(4)).await;
    let closed = closed.expect("connection cut");
    assert!(closed >= Duration::from_millis(350), "{closed:?}");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // A whole body in time is fine.
    let mut c = TcpStream::connect(srv.addr).await.expect("connect");
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .await
        .expect("write");
    assert!(read_response(&mut c).await.ends_with("5 bytes"));
}

#[tokio::test]
async fn at_the_cap_a_new_connection_waits_and_is_served_when_one_closes() {
    let srv = start(HttpLimits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let mut a = TcpStream::connect(srv.addr).await.expect("a");
    a.write_all(GET).await.expect("write");
    read_response(&mut a).await;
    let mut b = TcpStream::connect(srv.addr).await.expect("b");
    b.write_all(GET).await.expect("write");
    read_response(&mut b).await;
    // The third connects (the kernel's backlog) but is not served yet…
    let mut third = TcpStream::connect(srv.addr).await.expect("third connects");
    third.write_all(GET).await.expect("write");
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "no answer while at the cap, and no error either"
    );
    // …and is answered as soon as another connection closes.
    drop(a);
    let t = Instant::now();
    assert!(read_response(&mut third).await.ends_with("hello"));
    assert!(t.elapsed() < Duration::from_secs(2));
    // Many more than the cap, one after another: all served.
    drop(b);
    drop(third);
    for _ in 0..10 {
        let mut c = TcpStream::connect(srv.addr).await.expect("connect");
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let (got, _) = read_to_close(&mut c, Duration::from_secs(3)).await;
        assert!(String::from_utf8_lossy(&got).ends_with("hello"));
    }
}

#[tokio::test]
async fn a_quiet_websocket_outlives_the_idle_timeout() {
    let srv = start(HttpLimits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..limits()
    })
    .await;
    let mut c = TcpStream::connect(srv.addr).await.expect("connect");
    c.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The 101, then (after 1.2 s of silence, 4x the idle timeout) a text frame.
    let t = Instant::now();
    while !String::from_utf8_lossy(&got).contains("late news") {
        let n = tokio::time::timeout(Duration::from_secs(4), c.read(&mut buf))
            .await
            .expect("the push arrives")
            .expect("read");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
    assert!(t.elapsed() >= Duration::from_millis(1100));
}

#[tokio::test]
async fn handlers_see_the_peer_address_and_shutdown_ends_the_server() {
    let srv = start(limits()).await;
    let mut c = TcpStream::connect(srv.addr).await.expect("connect");
    let me = c.local_addr().expect("local");
    c.write_all(b"GET /peer HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    assert!(read_response(&mut c).await.ends_with(&me.to_string()));
    // An idle keep-alive does not hold shutdown up.
    srv.stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(2), srv.task)
        .await
        .expect("server stopped")
        .expect("join");
    let (_, closed) = read_to_close(&mut c, Duration::from_secs(2)).await;
    assert!(closed.is_some());
}
