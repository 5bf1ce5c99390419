//! `convnet serve`: a trained model's web page and JSON API, on axum; inference runs on
//! blocking threads, never on the async ones.
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

/// Where and how a server listens.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Largest request body, in bytes.
    pub body_limit: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            body_limit: 8 << 20,
        }
    }
}

/// The page's files, compiled in: no network is needed to show it.
const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

struct App {
    model: ServedModel,
    body_limit: usize,
}

/// A server bound to its address, not yet answering.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    app: Arc<App>,
}

/// Binds `config.host:config.port` for `model`.
pub fn bind(model: ServedModel, config: &ServeConfig) -> Result<Server> {
    let what = format!("{}:{}", config.host, config.port);
    let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))
        .map_err(|e| Error::invalid(format!("cannot listen on {what}: {e}")))?;
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
            body_limit: config.body_limit,
        }),
    })
}

impl Server {
    /// The address it listens on (with the port chosen when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests until `stop` completes, then finishes the requests in flight.
    pub fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Server {
            runtime,
            listener,
            app,
            ..
        } = self;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::invalid(format!("cannot listen: {e}")))?;
            axum::serve(listener, router(app))
                .with_graceful_shutdown(stop)
                .await
                .map_err(|e| Error::invalid(format!("the server stopped: {e}")))
        })
    }

    /// Answers requests until Ctrl-C.
    pub fn run_until_ctrl_c(self) -> Result<()> {
        self.run_until(async {
            // Without a signal handler there is nothing to wait for but the process's end.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        })
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
            return error(
                StatusCode::BAD_REQUEST,
                &format!("activations={v}: give 1 or 0"),
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
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "Content-Type is {}: send image/png or image/jpeg",
                content_type.as_deref().unwrap_or("missing")
            ),
        );
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over the limit of {} bytes", app.body_limit),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > app.body_limit) {
        return too_large();
    }
    let Ok(bytes) = axum::body::to_bytes(body, app.body_limit).await else {
        return too_large();
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
