//! The accept loop: a bounded number of connections, each closed when it
//! sits idle, so clients that open connections and send nothing cannot
//! starve the ones that ask.
//!
//! - At most [`Limits::max_connections`] are open. A new connection over
//!   the limit takes the place of the open connection that has been idle
//!   longest (no request in flight); with none idle, it is closed at once.
//! - A connection with no request in flight and no bytes moved for
//!   [`Limits::idle_timeout`] is closed, and a request's headers must
//!   arrive within that time (hyper's header-read timeout: a client that
//!   trickles them a byte at a time is cut off too).
//! - Failing accepts (the process out of file descriptors) are retried
//!   after a pause instead of spinning.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// How many connections, and how long one may idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most. Default 1 024.
    pub max_connections: usize,
    /// How long a connection may wait without a request. Default 10 s.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 1024, idle_timeout: Duration::from_secs(10) }
    }
}

/// What the loop knows of one open connection.
struct Conn {
    /// Milliseconds since the loop started, when bytes last moved.
    last: AtomicU64,
    /// Requests being answered.
    in_flight: AtomicUsize,
    /// Closes the connection now.
    close: Notify,
}

/// A socket that notes when bytes move.
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
    epoch: Instant,
}

impl Tracked {
    fn touch(&self) {
        self.conn.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes; then stops accepting and lets open requests finish (for at
/// most the idle timeout).
pub async fn serve_limited(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let epoch = Instant::now();
    let open: Arc<Mutex<HashMap<u64, Arc<Conn>>>> = Arc::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    for id in 0u64.. {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}; retrying in 50 ms");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while tasks.try_join_next().is_some() {}
        let conn = Arc::new(Conn {
            last: AtomicU64::new(epoch.elapsed().as_millis() as u64),
            in_flight: AtomicUsize::new(0),
            close: Notify::new(),
        });
        {
            let mut map = open.lock().expect("poisoned");
            if map.len() >= limits.max_connections {
                let idlest = map
                    .iter()
                    .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
                    .min_by_key(|(_, c)| c.last.load(Ordering::Relaxed))
                    .map(|(&k, c)| (k, c.clone()));
                match idlest {
                    Some((k, c)) => {
                        c.close.notify_one();
                        map.remove(&k);
                    }
                    // Every connection is answering: this one waits no turn.
                    None => continue,
                }
            }
            map.insert(id, conn.clone());
        }
        let (router, open, mut stop) = (router.clone(), open.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let io = TokioIo::new(Tracked { inner: stream, conn: conn.clone(), epoch });
            let c = conn.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let c = c.clone();
                c.in_flight.fetch_add(1, Ordering::Relaxed);
                let answer = router.clone().oneshot(req.map(axum::body::Body::new));
                async move {
                    let r = answer.await;
                    c.in_flight.fetch_sub(1, Ordering::Relaxed);
                    c.last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                    r
                }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .serve_connection(io, service);
            tokio::pin!(served);
            let idle_ms = limits.idle_timeout.as_millis() as u64;
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = served.as_mut() => break,
                    _ = conn.close.notified() => break,
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        served.as_mut().graceful_shutdown();
                    }
                    _ = tokio::time::sleep(Duration::from_millis(idle_ms.clamp(10, 1000))) => {
                        let quiet = epoch.elapsed().as_millis() as u64 - conn.last.load(Ordering::Relaxed);
                        if conn.in_flight.load(Ordering::Relaxed) == 0 && quiet >= idle_ms {
                            break;
                        }
                    }
                }
            }
            open.lock().expect("poisoned").remove(&id);
        });
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(limits.idle_timeout, async { while tasks.join_next().await.is_some() {} }).await;
    Ok(())
}
