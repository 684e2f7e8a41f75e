//! The HTTP listener of the REST API and WebSocket: accept loop, connection
//! cap, per-connection timeouts, graceful shutdown.
//!
//! `axum::serve` has no timeouts: a client that sends half its headers, half
//! its body, or nothing after a response keeps its connection (and a file
//! descriptor) for as long as it likes, and enough of them exhaust the
//! process's descriptors. Here every connection is in one of three phases,
//! each with its own bound ([`HttpLimits`]):
//!
//! - *reading a request head* (from accept, or from the first byte after an
//!   idle spell): the head must be complete within `header_timeout`;
//! - *busy* (a handler runs): the request body must arrive within
//!   `body_timeout` of its head ([`DeadlineBody`]; the handler then answers
//!   400 and hyper closes the connection), the handler itself is not timed;
//! - *idle* (a response is out, or being written): closed after
//!   `idle_timeout` without progress in either direction, so a keep-alive
//!   left open and a client that stops reading its response both go.
//!
//! hyper's own `header_read_timeout` would also time the idle wait (it
//! starts the moment hyper waits for the next head), so it is off and the
//! phases above are tracked from the socket's reads and writes
//! ([`TrackedIo`]) and the service's calls. A WebSocket leaves this machinery
//! on upgrade: hyper hands the socket to the WebSocket task, which keeps the
//! client with its own pings ([`crate::api::ws`]), so a quiet live feed is
//! not an idle connection.
//!
//! At most `max_connections` are open at once; at the cap the loop stops
//! accepting (new connections wait in the kernel's backlog and are served
//! as others close) instead of accepting and failing, and an accept error
//! such as "too many open files" pauses the loop briefly rather than
//! spinning on it. The permit of a connection lives in its socket wrapper,
//! so an upgraded WebSocket still counts until its socket closes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Connection limits (`[http]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request head must be complete this long after it starts (`http.header_timeout`).
    pub header_timeout: Duration,
    /// A request body must be complete this long after its head (`http.body_timeout`).
    pub body_timeout: Duration,
    /// A connection without a request in progress and without traffic is
    /// closed after this long (`http.idle_timeout`).
    pub idle_timeout: Duration,
    /// Connections open at once, WebSockets included (`http.max_connections`).
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            // A 10 MiB report photo over a slow mobile link (~1 Mbit/s).
            body_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

/// Where a connection stands; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head { since: Instant },
    Busy { requests: usize },
    Idle { since: Instant },
}

/// The phase of one connection, shared by its socket wrapper, its service
/// and its watchdog (which `changed` wakes).
#[derive(Debug)]
struct ConnState {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl ConnState {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Head {
                since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let next = f(*p);
        if next != *p {
            *p = next;
            drop(p);
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: after an idle spell, that is a new request head.
    fn on_read(&self) {
        self.update(|p| match p {
            Phase::Idle { .. } => Phase::Head {
                since: Instant::now(),
            },
            p => p,
        });
    }

    /// Bytes went out: a response is making progress.
    fn on_write(&self) {
        self.update(|p| match p {
            Phase::Idle { .. } => Phase::Idle {
                since: Instant::now(),
            },
            p => p,
        });
    }

    fn request_started(&self) {
        self.update(|p| match p {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        });
    }

    fn response_ready(&self) {
        self.update(|p| match p {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        });
    }

    /// When the connection is to be closed unless the phase changes first.
    fn deadline(&self, limits: &HttpLimits) -> Option<(Instant, &'static str)> {
        match *self.phase.lock().unwrap_or_else(|e| e.into_inner()) {
            Phase::Head { since } => Some((since + limits.header_timeout, "header timeout")),
            Phase::Idle { since } => Some((since + limits.idle_timeout, "idle timeout")),
            Phase::Busy { .. } => None,
        }
    }
}

/// The socket of one connection: reports reads and writes to its
/// [`ConnState`] and holds the connection's slot under the cap.
struct TrackedIo {
    inner: TcpStream,
    state: Arc<ConnState>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_read();
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.state.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The error a request body gives when it is not complete in time.
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s (http.body_timeout); send it at once",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
#[derive(Debug)]
pub struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Accept errors that concern one connection only (the client gave up
/// before we accepted): go on at once.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// How long the accept loop pauses after an error such as EMFILE: long
/// enough not to spin, short enough to pick up again as soon as connections
/// close.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` turns true, then stops
/// accepting, lets each connection finish its request in flight and returns
/// once they have (upgraded WebSockets are not waited for).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Every connection task holds a sender; all dropped = all done.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut warned_at: Option<Instant> = None;
    let mut suppressed = 0u64;
    let mut cap_warned_at: Option<Instant> = None;
    loop {
        if slots.available_permits() == 0
            && cap_warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            cap_warned_at = Some(Instant::now());
            tracing::warn!(
                max_connections = limits.max_connections,
                "HTTP connection cap reached; new connections wait until others close (http.max_connections)"
            );
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS…: pause instead of spinning, and
                // say so at most every 10 s.
                if warned_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(error = %e, suppressed, pause_ms = ACCEPT_ERROR_PAUSE.as_millis() as u64,
                        "cannot accept HTTP connections; pausing (raise the descriptor limit or lower http.max_connections)");
                    warned_at = Some(Instant::now());
                    suppressed = 0;
                } else {
                    suppressed += 1;
                }
                drop(permit);
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            permit,
            app.clone(),
            limits,
            shutdown.clone(),
            done_tx.clone(),
        ));
    }
    drop(done_tx);
    let _ = done_rx.recv().await;
}

/// One connection, from accept to close (or to a WebSocket upgrade).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    app: Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
    _done: tokio::sync::mpsc::Sender<()>,
) {
    metrics::gauge!("edgeqi_http_connections").increment(1.0);
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(TrackedIo {
        inner: stream,
        state: state.clone(),
        _permit: permit,
    });
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let state = svc_state.clone();
        state.request_started();
        let mut req = req.map(|b| Body::new(DeadlineBody::new(b, limits.body_timeout)));
        // Rate limits and the audit log read the peer from here.
        req.extensions_mut().insert(ConnectInfo(peer));
        let call = tower_service::Service::call(&mut app.clone(), req);
        async move {
            let resp = call.await;
            state.response_ready();
            resp
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Timed by the phases above instead (it would also time idle waits).
        .header_read_timeout(None)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = state.deadline(&limits);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            _ = state.changed.notified() => {}
            _ = sleep_until(deadline.map(|d| d.0)), if deadline.is_some() => {
                if let Some((at, why)) = state.deadline(&limits) {
                    if Instant::now() >= at {
                        metrics::counter!("edgeqi_http_timeouts_total", "kind" => why).increment(1);
                        tracing::debug!(%peer, reason = why, "closing HTTP connection");
                        break; // dropping the connection closes the socket
                    }
                }
            }
            _ = shutdown.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    metrics::gauge!("edgeqi_http_connections").decrement(1.0);
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(test)]
#[path = "http_server_tests.rs"]
mod tests;
