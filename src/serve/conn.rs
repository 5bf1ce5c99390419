//! The server's connections: the accept loop with its bound (503 past it), the head and idle
//! timeouts, and the graceful stop that drains the requests in flight.
use super::ServeConfig;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Connections past the bound that may be answered 503 at once; beyond these a new
/// connection is closed unanswered, so that refusing costs bounded descriptors too.
const REJECTING: usize = 64;

/// File descriptors left to everything but connections (the model's files, standard
/// streams, the runtime's own) when the bound is sized from the limit.
const RESERVED_FDS: u64 = 128;

/// How long a refused connection may take to read its 503 before it is closed.
const REJECT_LINGER: Duration = Duration::from_secs(1);

/// The most a request head may hold (start line and headers): hyper's smallest buffer.
const MAX_HEAD_BYTES: usize = 16 << 10;

/// Raises the soft limit on open files to the hard one (connections are files) and gives the
/// soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        // Linux refuses an unlimited soft limit for open files; a million is its default
        // ceiling (fs.nr_open).
        let want = lim.rlim_max.min(1 << 20);
        if want > lim.rlim_cur {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = want;
            }
        }
    }
    // rlim_t is u64 on 64-bit Linux but not on every target.
    #[allow(clippy::unnecessary_cast)]
    let soft = lim.rlim_cur as u64;
    soft
}

/// The connection bound for a limit of `fds` open files: what the reserve and the 503
/// answers leave, at least 1.
pub fn connections_for(fds: u64) -> usize {
    fds.saturating_sub(RESERVED_FDS + REJECTING as u64).max(1) as usize
}

/// What one connection is doing, for its watchdog: when it last read or wrote, when the
/// head of its current request began to arrive, and how many requests are being answered.
struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read or written.
    last: AtomicU64,
    /// Milliseconds since `epoch` + 1 of the first byte of a head not yet complete; 0 when
    /// no head is arriving.
    head: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            head: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn read(&self, n: usize) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        // The first byte after the last answer starts a head (and its timeout).
        if n > 0 && self.busy.load(Ordering::Acquire) == 0 && self.head.load(Ordering::Acquire) == 0
        {
            self.head.store(now + 1, Ordering::Release);
        }
    }

    fn wrote(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    /// The moment this connection is closed unless something happens first: a head's
    /// deadline while one arrives, the idle deadline between requests, none while a request
    /// is answered (its handler bounds the body's time itself).
    fn deadline(&self, cfg: &ServeConfig) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let head = self.head.load(Ordering::Acquire);
        let (from, limit) = if head > 0 {
            (head - 1, cfg.header_timeout)
        } else {
            (self.last.load(Ordering::Relaxed), cfg.idle_timeout)
        };
        Some(self.epoch + Duration::from_millis(from) + limit)
    }
}

/// Marks a request as being answered for as long as it lives.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Busy {
        a.busy.fetch_add(1, Ordering::AcqRel);
        a.head.store(0, Ordering::Release);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.wrote();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket that records its reads and writes in an [`Activity`].
struct Tracked {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.activity.read(buf.filled().len() - before);
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = r {
            self.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(_)) = r {
            self.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Completes when the connection has overstayed a deadline of [`Activity::deadline`].
async fn watchdog(activity: &Activity, cfg: &ServeConfig) {
    loop {
        let now = Instant::now();
        match activity.deadline(cfg) {
            Some(d) if d <= now => return,
            Some(d) => tokio::time::sleep_until(d.into()).await,
            // A request is being answered: look again once its answer may be out.
            None => tokio::time::sleep(cfg.header_timeout.min(cfg.idle_timeout)).await,
        }
    }
}

/// Serves one accepted connection until it closes, times out, or the server stops (then
/// its request in flight is finished first).
async fn connection(
    stream: TcpStream,
    router: Router,
    cfg: Arc<ServeConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = Busy::new(&activity);
            let mut router = router.clone();
            async move {
                let answer = tower_service::Service::call(&mut router, req).await;
                drop(busy);
                answer
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // The watchdog times heads (from their first byte) and idle keep-alive apart;
        // hyper's own timer would time both from the end of the previous answer.
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES.max(8192))
        .max_headers(64);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = watchdog(&activity, &cfg) => return,
        _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    // Stopping: the request in flight is answered, an idle connection closes at once.
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = watchdog(&activity, &cfg) => {}
    }
}

/// Answers a connection past the bound with 503 and closes it, having read what the client
/// sent for a moment so that it reads the answer rather than a reset.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":"the server is at its connection limit; try again shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REJECT_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        // Up to 64 KiB of the request, or the client's close.
        while read < 64 << 10 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// Accepts connections on `listener` until `stop` turns true, then waits for the open ones
/// to finish their requests, for at most `cfg.drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: ServeConfig,
    mut stop: watch::Receiver<bool>,
    max_connections: usize,
) {
    let cfg = Arc::new(cfg);
    let open = Arc::new(Semaphore::new(max_connections));
    let refusing = Arc::new(Semaphore::new(REJECTING));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(_) => {
                // Out of descriptors or a connection reset before it was accepted: wait a
                // little instead of spinning, then go on.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Ok(permit) = open.clone().try_acquire_owned() {
            let (router, cfg, stop) = (router.clone(), cfg.clone(), stop.clone());
            tokio::spawn(async move {
                connection(stream, router, cfg, stop).await;
                drop(permit);
            });
        } else if let Ok(permit) = refusing.clone().try_acquire_owned() {
            tokio::spawn(async move {
                refuse(stream).await;
                drop(permit);
            });
        }
        // Else the connection is dropped: closed unanswered.
    }
    drop(listener);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(cfg.drain_timeout, open.acquire_many(all)).await;
}
