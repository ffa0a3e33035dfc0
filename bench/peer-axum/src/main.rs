//! Benchmark-only peer of tribist: `GET /health` runs `SELECT 1` through a connection pool and
//! answers 200 `{"status":"ok"}` (503 when the database fails); `GET /livez` answers 200
//! without the database. axum 0.8 on tokio, deadpool-postgres over tokio-postgres (NoTls).
//!
//! Environment:
//!   DATABASE_URL  the PostgreSQL to check (required; a postgres:// URL or key=value string)
//!   LISTEN        address to bind (default 127.0.0.1:0); the bound address is printed on
//!                 stderr as `listening on http://ADDR`
//!   POOL          database connections (default 4, the pool the issue measured against;
//!                 tribist's /health needs one, its checks being shared)
//!   WORKERS       tokio worker threads (default: the number of CPUs, tokio's own default).
//!                 Not 16 like tribist's workers: those block while they wait for a check, so
//!                 tribist needs a thread per waiting request; an async runtime never blocks
//!                 a thread on I/O, and threads beyond the cores only add switches. Each side
//!                 runs as it would be deployed.
//!
//! On SIGTERM or SIGINT it stops accepting, finishes the requests in flight and prints
//! `health: A answers from Q database checks` (the line tribist prints), so the benchmark
//! reads both servers the same way.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::{json, Value};
use tokio_postgres::NoTls;

/// Bound on one database check, as tribist's default TRIBIST_DB_TIMEOUT.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

struct App {
    pool: Pool,
    answers: AtomicU64,
    checks: AtomicU64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-axum: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn number(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) if v.is_empty() => Ok(default),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("{name} must be a whole number >= 1, got {v:?}")),
        },
    }
}

fn run() -> Result<(), String> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set".to_string())?;
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:0".into())
        .parse()
        .map_err(|e| format!("LISTEN: {e}"))?;
    let pool_size = number("POOL", 4)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = number("WORKERS", cpus)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(&url, listen, pool_size, workers))
}

async fn serve(
    url: &str,
    listen: SocketAddr,
    pool_size: usize,
    workers: usize,
) -> Result<(), String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("DATABASE_URL: {e}"))?;
    // Fast: a connection taken from the pool is used as it is. (Verified would send one more
    // query per request, which tribist does not do either.)
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(pool_size)
        .build()
        .map_err(|e| format!("pool: {e}"))?;
    let app = Arc::new(App {
        pool,
        answers: AtomicU64::new(0),
        checks: AtomicU64::new(0),
    });
    let router = Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .with_state(Arc::clone(&app));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot bind {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "listening on http://{addr} (pid {}, {workers} tokio worker threads, pool of {pool_size} database connections)",
        std::process::id()
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(terminated())
        .await
        .map_err(|e| format!("serve: {e}"))?;
    eprintln!(
        "health: {} answers from {} database checks",
        app.answers.load(Ordering::Relaxed),
        app.checks.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("peer-axum: cannot watch signals; stop it with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn health(State(app): State<Arc<App>>) -> (StatusCode, Json<Value>) {
    let result = match tokio::time::timeout(DB_TIMEOUT, check(&app)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {DB_TIMEOUT:?}")),
    };
    app.answers.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "fail", "error": reason })),
        ),
    }
}

/// One `SELECT 1` on a pooled connection: a statement prepared once per connection (the pool
/// caches it), then one Bind/Execute/Sync round trip per check.
async fn check(app: &App) -> Result<(), String> {
    let client = app.pool.get().await.map_err(|e| format!("pool: {e}"))?;
    let statement = client
        .prepare_cached("SELECT 1")
        .await
        .map_err(|e| format!("prepare: {e}"))?;
    app.checks.fetch_add(1, Ordering::Relaxed);
    let row = client
        .query_one(&statement, &[])
        .await
        .map_err(|e| format!("query: {e}"))?;
    match row.try_get::<_, i32>(0) {
        Ok(1) => Ok(()),
        Ok(other) => Err(format!("SELECT 1 answered {other}")),
        Err(e) => Err(format!("SELECT 1: {e}")),
    }
}

async fn livez() -> Json<Value> {
    Json(json!({ "status": "pass" }))
}
