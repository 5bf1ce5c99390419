//! `convnet serve`: a trained model's web page and JSON API, on axum over our own accept
//! loop (connection bound, timeouts, graceful stop); inference runs on blocking threads,
//! never on the async ones.
mod conn;
mod model;

pub use model::{BadRequest, Examples, LayerOutput, ModelInfo, Prediction, ServedModel, Top};

use crate::error::{Error, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a server listens and what it allows a client.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// Connections open at once; past them a new one is answered 503. None: sized from the
    /// limit on open files (raised to its hard limit), less a reserve.
    pub max_connections: Option<usize>,
    /// Time from a request head's first byte to its end.
    pub header_timeout: Duration,
    /// Time a body may take beyond what [`ServeConfig::min_body_rate`] allows for its size:
    /// a body of n bytes must be in within `body_timeout + n / min_body_rate`.
    pub body_timeout: Duration,
    /// Slowest upload accepted, in bytes per second (at least 1).
    pub min_body_rate: u64,
    /// Time a kept-alive connection may wait for its next request (or a client may take to
    /// read an answer).
    pub idle_timeout: Duration,
    /// On stop, time the requests in flight have to finish before the server exits anyway.
    pub drain_timeout: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            body_limit: 8 << 20,
            max_connections: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            min_body_rate: 16 << 10,
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// After a request is refused before its whole body was read (413, 415, ...), how long and
/// how much more of the body is read and discarded, so that a client still sending reads
/// the answer instead of a reset (the "lingering close" of nginx and hyper servers).
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 << 20;

/// The page's files, compiled in: no network is needed to show it.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

struct App {
    model: ServedModel,
    config: ServeConfig,
}

/// A server bound to its address, not yet answering.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    app: Arc<App>,
    max_connections: usize,
}

/// Binds `config.host:config.port` for `model` (raising the process's soft limit on open
/// files to its hard limit, as connections are files).
pub fn bind(model: ServedModel, config: &ServeConfig) -> Result<Server> {
    if config.min_body_rate == 0 {
        return Err(Error::invalid(
            "the minimum body rate must be at least 1 byte/s",
        ));
    }
    for (what, d) in [
        ("header", config.header_timeout),
        ("body", config.body_timeout),
        ("idle", config.idle_timeout),
    ] {
        if d.is_zero() {
            return Err(Error::invalid(format!(
                "the {what} timeout must be positive"
            )));
        }
    }
    let fds = conn::raise_fd_limit();
    let max_connections = match config.max_connections {
        Some(0) => return Err(Error::invalid("the connection bound must be at least 1")),
        // The semaphore counting them takes at most u32::MAX permits at once.
        Some(n) => n.min(u32::MAX as usize),
        None => conn::connections_for(fds),
    };
    let what = format!("{}:{}", config.host, config.port);
    let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))
        .map_err(|e| Error::invalid(format!("cannot listen on {what}: {e}")))?;
    // The standard library listens with a backlog of 128: a burst of connections past it
    // waits on SYN retransmits (a second or more). The kernel caps what is asked at
    // net.core.somaxconn; listening again on a listening socket only changes the backlog.
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: listen on a socket we own; a failure leaves the first backlog in force.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::invalid(format!("cannot listen on {what}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::invalid(format!("cannot listen on {what}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("convnet-serve")
        .build()
        .map_err(|e| Error::invalid(format!("cannot start the server's runtime: {e}")))?;
    Ok(Server {
        runtime,
        listener,
        addr,
        app: Arc::new(App {
            model,
            config: config.clone(),
        }),
        max_connections,
    })
}

impl Server {
    /// The address it listens on (with the port chosen when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound on open connections in force (configured, or sized from the file limit).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Answers requests until `stop` completes, then stops accepting and finishes the
    /// requests in flight (for at most the config's drain timeout).
    pub fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Server {
            runtime,
            listener,
            app,
            max_connections,
            ..
        } = self;
        let config = app.config.clone();
        let drain = config.drain_timeout;
        let served = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::invalid(format!("cannot listen: {e}")))?;
            let (tx, rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                stop.await;
                let _ = tx.send(true);
            });
            conn::serve(listener, router(app), config, rx, max_connections).await;
            Ok(())
        });
        // Whatever still runs after the drain (an inference past its bound) is abandoned
        // rather than waited for without end.
        runtime.shutdown_timeout(drain.min(Duration::from_secs(1)));
        served
    }

    /// Answers requests until Ctrl-C or SIGTERM.
    pub fn run_until_ctrl_c(self) -> Result<()> {
        self.run_until(stop_signal())
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM; never without a handler for either.
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/model", get(model_info))
        .route("/api/examples/{k}", get(example))
        .route("/api/predict", post(predict))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page or API") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed here",
            )
        })
        .with_state(app)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A 4xx/5xx answer: `{"error": message}`.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn model_info(State(app): State<Arc<App>>) -> Response {
    Json(app.model.info()).into_response()
}

async fn example(State(app): State<Arc<App>>, UrlPath(k): UrlPath<String>) -> Response {
    let k = k.strip_suffix(".png").unwrap_or(&k);
    match k
        .parse::<usize>()
        .ok()
        .and_then(|k| app.model.example_png(k))
    {
        Some(png) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no example `{k}`: this model has {} examples",
                app.model.info().examples.len()
            ),
        ),
    }
}

/// What became of a request body read under the limits.
enum BodyRead {
    Whole(Vec<u8>),
    /// Over the limit; the rest of the body, to discard.
    TooLarge(Body),
    /// Slower than the minimum rate allows.
    TooSlow,
    /// The client went away or sent a malformed body.
    Broken,
}

/// Reads a body of at most `config.body_limit` bytes; a body of n bytes must be in within
/// `body_timeout + n / min_body_rate` of the start (so a trickle cannot hold a connection).
async fn read_body(mut body: Body, declared: Option<usize>, config: &ServeConfig) -> BodyRead {
    use http_body_util::BodyExt;
    let start = Instant::now();
    let limit = config.body_limit;
    // The declared length is within the limit here; it sizes the buffer, no more.
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    loop {
        let allowed = config.body_timeout
            + Duration::from_secs_f64(buf.len() as f64 / config.min_body_rate as f64);
        let frame = match tokio::time::timeout_at((start + allowed).into(), body.frame()).await {
            Err(_) => return BodyRead::TooSlow,
            Ok(None) => return BodyRead::Whole(buf),
            Ok(Some(Err(_))) => return BodyRead::Broken,
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return BodyRead::TooLarge(body);
            }
            buf.extend_from_slice(&data);
        }
    }
}

/// Reads and discards the rest of a refused request's body for a bounded time and size, so
/// that the client, still sending, reads the answer given it rather than a reset.
fn linger(mut body: Body) {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER_TIME, async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// An error answer to a request whose body is left unread: the connection closes after it,
/// and the body is read meanwhile ([`linger`]).
fn refuse(status: StatusCode, message: &str, body: Body) -> Response {
    linger(body);
    let mut r = error(status, message);
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

async fn predict(
    State(app): State<Arc<App>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let activations = match query.get("activations").map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true" | "") => true,
        Some(v) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                &format!("activations={v}: give 1 or 0"),
                body,
            )
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    if !matches!(content_type.as_deref(), Some("image/png" | "image/jpeg")) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "Content-Type is {}: send image/png or image/jpeg",
                content_type.as_deref().unwrap_or("missing")
            ),
            body,
        );
    }
    let limit = app.config.body_limit;
    let too_large = |body| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over the limit of {limit} bytes"),
            body,
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large(body);
    }
    let bytes = match read_body(body, declared, &app.config).await {
        BodyRead::Whole(b) => b,
        BodyRead::TooLarge(rest) => return too_large(rest),
        BodyRead::TooSlow => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body came slower than {} bytes/s after {} s",
                    app.config.min_body_rate,
                    app.config.body_timeout.as_secs_f64()
                ),
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return r;
        }
        BodyRead::Broken => return error(StatusCode::BAD_REQUEST, "the body is incomplete"),
    };
    let worker = app.clone();
    let answer =
        tokio::task::spawn_blocking(move || worker.model.predict(&bytes, activations)).await;
    match answer {
        Ok(Ok(p)) => Json(p).into_response(),
        Ok(Err(bad)) => error(
            StatusCode::from_u16(bad.status).unwrap_or(StatusCode::BAD_REQUEST),
            &bad.message,
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the prediction failed; the server goes on",
        ),
    }
}
