//! The local web dashboard: a page, the JSON API it uses, `/metrics` and `/health`, served
//! on 127.0.0.1 only (README "Dashboard").
//!
//! - Access: every route but `/health` and the page's static files needs
//!   `Authorization: Bearer TOKEN`, the token in `home/dashboard.token` (as Syncthing's API
//!   key). The page reads it from the URL's fragment (`#token=…`), which browsers never
//!   send to a server, so it is in no log. A custom header also keeps other sites'
//!   pages from calling the API (no CORS is offered).
//! - The `Host` header must name 127.0.0.1 or localhost with our port, so that a DNS
//!   rebinding page cannot reach the API through another name.
//! - The API is the control socket's, over HTTP: each route makes one [`Request`] and
//!   answers its [`Reply`] as JSON; a failure is `{"error": message, "kind": kind}` with
//!   400 (usage), 404, 409 (busy), 503 (unavailable), 403 (refused) or 500 (local).
//!
//! | route | answer |
//! |---|---|
//! | `GET /` , `/app.js`, `/app.css` | the page (no external assets) |
//! | `GET /health` | `{"status":"up"}`, no token needed |
//! | `GET /metrics` | Prometheus text format ([`crate::metrics`]) |
//! | `GET /api/status` | as `peer status --json` |
//! | `GET /api/snapshots` | as `peer snapshots --json` |
//! | `GET /api/ls?snapshot=ID&path=PATH` | one directory of a snapshot |
//! | `POST /api/schedules/{name}/run` | 202: the run started |
//! | `POST /api/restore` `{"snapshot", "path", "target", "overwrite"}` | the restore's summary, once done |

use super::Inner;
use crate::control::{ErrorKind, Reply, Request};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::sync::Arc;
use tokio::sync::mpsc;

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const APP_CSS: &str = include_str!("web/app.css");

/// What the handlers share.
struct Web {
    inner: Arc<Inner>,
    token: String,
    port: u16,
}

type Shared = State<Arc<Web>>;

/// Why the dashboard's token could not be had.
#[derive(Debug, thiserror::Error)]
pub(super) enum TokenError {
    /// The file holds less than a token.
    #[error("{0} is too short to be a token; delete it to get a new one")]
    TooShort(String),
    /// Reading or writing it failed.
    #[error("{path}: {source}")]
    Io {
        /// The token file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Reads `home/dashboard.token`, or makes one (32 random bytes as hex, mode 0600).
pub(super) fn load_or_make_token(path: &std::path::Path) -> Result<String, TokenError> {
    use rand::TryRng;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_string()),
        Ok(_) => return Err(TokenError::TooShort(path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(TokenError::Io { path: path.display().to_string(), source }),
    }
    let io = |source| TokenError::Io { path: path.display().to_string(), source };
    let mut raw = [0u8; 32];
    rand::rngs::SysRng.try_fill_bytes(&mut raw).map_err(|e| io(std::io::Error::other(e)))?;
    let token = hex::encode(raw);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(token.as_bytes()).and_then(|_| f.sync_all()).map_err(io)?;
    Ok(token)
}

/// Binds 127.0.0.1:`port` (0: any free port) and returns the listener and its port.
pub(super) async fn bind(port: u16) -> std::io::Result<(tokio::net::TcpListener, u16)> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = l.local_addr()?.port();
    Ok((l, port))
}

/// Serves the dashboard on `listener` until the task is aborted.
pub(super) async fn serve(inner: Arc<Inner>, listener: tokio::net::TcpListener, port: u16, token: String) {
    let web = Arc::new(Web { inner, token, port });
    // Stops taking connections when the daemon stops; the ones open finish (or are
    // abandoned with the rest of the daemon's work, see `lifetime`).
    let stop = web.inner.life.stop_token();
    let api = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/api/snapshots", get(snapshots))
        .route("/api/ls", get(ls))
        .route("/api/schedules/{name}/run", post(run_schedule))
        .route("/api/restore", post(restore))
        .route_layer(axum::middleware::from_fn_with_state(web.clone(), authorized));
    let app = Router::new()
        .route("/", get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/app.js", get(|| async { page("text/javascript; charset=utf-8", APP_JS) }))
        .route("/app.css", get(|| async { page("text/css; charset=utf-8", APP_CSS) }))
        .route("/health", get(|| async { axum::Json(serde_json::json!({"status": "up"})) }))
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(web.clone(), local_host))
        .with_state(web);
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await {
        tracing::warn!("dashboard: {e}");
    }
}

/// A static file, with headers that keep it from being framed or loading anything else.
fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Refuses a request whose `Host` is not 127.0.0.1 or localhost with our port.
async fn local_host(
    State(web): Shared,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let ok = [format!("127.0.0.1:{}", web.port), format!("localhost:{}", web.port)].iter().any(|h| h == host);
    if !ok {
        return error(StatusCode::FORBIDDEN, "refused", "the dashboard answers only to 127.0.0.1 and localhost");
    }
    next.run(req).await
}

/// Refuses a request without the right bearer token (compared in constant time).
async fn authorized(
    State(web): Shared,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use subtle::ConstantTimeEq;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(web.token.as_bytes())) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is needed: open the URL that 'peer dashboard' prints",
        );
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

fn error(code: StatusCode, kind: &str, message: &str) -> Response {
    (code, axum::Json(serde_json::json!({"error": message, "kind": kind}))).into_response()
}

/// A reply as an HTTP response.
fn answer(reply: Reply) -> Response {
    let json = |v: serde_json::Result<serde_json::Value>| match v {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "local", &e.to_string()),
    };
    match reply {
        Reply::Error(f) => {
            let (code, kind) = match f.kind {
                ErrorKind::Usage => (StatusCode::BAD_REQUEST, "usage"),
                ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                ErrorKind::Busy => (StatusCode::CONFLICT, "busy"),
                ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                ErrorKind::Refused => (StatusCode::FORBIDDEN, "refused"),
                ErrorKind::Local => (StatusCode::INTERNAL_SERVER_ERROR, "local"),
            };
            error(code, kind, &f.message)
        }
        Reply::Status(s) => json(serde_json::to_value(s)),
        Reply::Snapshots(v) => json(serde_json::to_value(v)),
        Reply::Ls { snapshot, entries } => json(Ok(serde_json::json!({"snapshot": snapshot, "entries": entries}))),
        Reply::Restore(s) => json(serde_json::to_value(s)),
        Reply::Schedules(v) => json(serde_json::to_value(v)),
        Reply::Ok => json(Ok(serde_json::json!({"ok": true}))),
        other => json(serde_json::to_value(other)),
    }
}

/// Runs one control request with no progress reader.
async fn call(web: &Web, req: Request) -> Reply {
    let (tx, _rx) = mpsc::channel(1);
    web.inner.clone().handle(req, &tx).await
}

async fn status(State(web): Shared) -> Response {
    answer(call(&web, Request::Status).await)
}

async fn snapshots(State(web): Shared) -> Response {
    answer(call(&web, Request::Snapshots).await)
}

#[derive(Deserialize)]
struct LsQuery {
    snapshot: Option<String>,
    #[serde(default)]
    path: String,
}

async fn ls(State(web): Shared, Query(q): Query<LsQuery>) -> Response {
    answer(call(&web, Request::Ls { snapshot: q.snapshot, path: q.path }).await)
}

async fn run_schedule(State(web): Shared, Path(name): Path<String>) -> Response {
    match web.inner.start_schedule(&name) {
        Ok(spec) => {
            let inner = web.inner.clone();
            web.inner.life.spawn(async move {
                let (tx, _rx) = mpsc::channel(1);
                inner.run_schedule(&tx, spec).await;
            });
            (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"started": name}))).into_response()
        }
        Err(f) => answer(Reply::Error(f)),
    }
}

#[derive(Deserialize)]
struct RestoreBody {
    snapshot: Option<String>,
    /// An original absolute path in the snapshot; empty = everything.
    #[serde(default)]
    path: String,
    /// An absolute directory to restore under.
    target: String,
    #[serde(default)]
    overwrite: bool,
}

async fn restore(State(web): Shared, axum::Json(b): axum::Json<RestoreBody>) -> Response {
    let target = std::path::PathBuf::from(&b.target);
    if !target.is_absolute() {
        return error(StatusCode::BAD_REQUEST, "usage", "the target must be an absolute path");
    }
    let include = if b.path.is_empty() { vec![] } else { vec![b.path.into()] };
    let req = Request::Restore {
        snapshot: b.snapshot,
        target: Some(target),
        overwrite: b.overwrite,
        include,
        limits: Default::default(),
        head: None,
    };
    answer(call(&web, req).await)
}

async fn metrics(State(web): Shared) -> Response {
    if let Ok(s) = web.inner.status().await {
        let m = &web.inner.metrics;
        Metrics::set(&m.offered, s.offered);
        Metrics::set(&m.stored_for_others, s.used_by_others);
        Metrics::set(&m.held_at_others, s.held_at_others);
        Metrics::set(&m.snapshots, s.snapshots.len() as u64);
        let now = crate::protocol::now();
        for role in ["client", "provider"] {
            let live = s.contracts.iter().filter(|c| c.role == role && c.ended.is_none() && c.expires > now).count();
            Metrics::set(&m.contracts.get_or_create(&crate::metrics::RoleLabel { role: role.into() }), live as u64);
        }
    }
    if let Ok(ns) = web.inner.net.status().await {
        Metrics::set(&web.inner.metrics.connected, ns.connected.len() as u64);
    }
    let mut r = web.inner.metrics.encode().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}
