//! The durable store: jobs in SQLite, PostgreSQL or MySQL/MariaDB, shared by
//! every process that opens the same URL.
//!
//! One table holds the jobs, one the hosts (pools) that claim them, one the
//! schema version. Statements are written once with `?` placeholders and a
//! `NOW` token; [`Dialect`] renders them for each engine. Every time a lease
//! depends on is the database's clock, never a host's.
//!
//! * Submit: one transaction; with a cap, serialized by a lock (advisory on
//!   PostgreSQL, a row lock on MySQL, `BEGIN IMMEDIATE` on SQLite) so the
//!   count and the insert are atomic. `unique` jobs carry a `dup_key` under
//!   a unique index over active jobs (partial index; a stored generated
//!   column on MySQL), so racing submits create one job.
//! * Claim: `SELECT ... FOR UPDATE SKIP LOCKED` of up to k pending jobs, then
//!   an update to running with a new lease token and `lease_until`.
//! * Every later write names `(id, lease_token, status = 'running')`: zero
//!   rows means the lease is gone (cancelled, rescued) and nothing changes.
//!
//! Each call runs as a task on the I/O runtime, bounded by the store's
//! timeout, so neither R nor the pool thread ever waits on a database
//! without a limit.

use crate::registry::{
    self, duplicate_key, hex, iso8601, median, Cancel, Claimed, Counts, HostInfo, Job, JobError, JobView, Lease, NewJob,
    Outcome, Progress, Report, Signal, Status, Store, StoreError, StoreResult, Submit,
};
use tokio::sync::broadcast;
use async_trait::async_trait;
use parking_lot::Mutex;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Executor, Row};
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

const ACTIVE: &str = "status IN ('pending', 'running')";
const FINISHED: &str = "status IN ('completed', 'failed', 'cancelled')";
/// Columns of a status read: no payload, result or output.
const COLUMNS: &str = "id, operation, params_hash, status, queue, priority, submitted_at, started_at, \
     completed_at, timeout_ms, attempts, max_attempts, worker_pid, lease_owner, step, progress_current, \
     progress_total, error_code, error_message, seq";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    /// The database clock in seconds since the epoch, as a double.
    fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => "((julianday('now') - 2440587.5) * 86400.0)",
            Dialect::Postgres => "(extract(epoch from clock_timestamp())::float8)",
            Dialect::MySql => "(UNIX_TIMESTAMP(NOW(6)) + 0E0)",
        }
    }

    /// Renders a statement: `NOW` becomes the clock, `?` becomes `$n` on PostgreSQL.
    pub fn sql(self, text: &str) -> String {
        let text = text.replace("NOW", self.now());
        if self != Dialect::Postgres {
            return text;
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut n = 0;
        for c in text.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            _ => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// How a writing transaction starts. SQLite takes the write lock at once,
    /// so two writers never deadlock upgrading a read lock.
    fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            _ => "BEGIN",
        }
    }

    fn schema(self) -> Vec<String> {
        let (blob, double, text, id_cols) = match self {
            Dialect::Sqlite => ("BLOB", "REAL", "TEXT", "seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE"),
            Dialect::Postgres => ("BYTEA", "DOUBLE PRECISION", "TEXT", "id VARCHAR(36) PRIMARY KEY, seq BIGSERIAL"),
            Dialect::MySql => (
                "LONGBLOB",
                "DOUBLE",
                "TEXT",
                "id VARCHAR(36) NOT NULL PRIMARY KEY, seq BIGINT NOT NULL AUTO_INCREMENT UNIQUE",
            ),
        };
        let dup = match self {
            Dialect::MySql => ", dup_active VARCHAR(64) AS (IF(status IN ('pending', 'running'), dup_key, NULL)) STORED, \
                 UNIQUE KEY asyncjobs_jobs_unique (dup_active)"
                .to_string(),
            _ => String::new(),
        };
        let engine = if self == Dialect::MySql { " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin" } else { "" };
        let mut out = vec![
            format!(
                "CREATE TABLE asyncjobs_jobs ({id_cols}, operation VARCHAR(255) NOT NULL, \
                 params_hash VARCHAR(64) NOT NULL, dup_key VARCHAR(64) NULL, status VARCHAR(16) NOT NULL, \
                 queue VARCHAR(255) NOT NULL, priority INTEGER NOT NULL, submitted_at {double} NOT NULL, \
                 run_after {double} NOT NULL, started_at {double} NULL, completed_at {double} NULL, \
                 timeout_ms BIGINT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL, \
                 lease_owner VARCHAR(64) NULL, lease_token BIGINT NOT NULL DEFAULT 0, lease_until {double} NULL, \
                 worker_pid INTEGER NULL, executor {blob} NULL, params {blob} NULL, result {blob} NULL, \
                 output {blob} NULL, step {text} NULL, progress_current {double} NULL, \
                 progress_total {double} NULL, error_code VARCHAR(64) NULL, error_message {text} NULL, \
                 error_detail {blob} NULL{dup}){engine}"
            ),
            "CREATE INDEX asyncjobs_jobs_claim ON asyncjobs_jobs (status, queue, priority, seq)".into(),
            "CREATE INDEX asyncjobs_jobs_lease ON asyncjobs_jobs (lease_owner, status)".into(),
            "CREATE INDEX asyncjobs_jobs_hash ON asyncjobs_jobs (params_hash)".into(),
            "CREATE INDEX asyncjobs_jobs_done ON asyncjobs_jobs (completed_at)".into(),
            "CREATE INDEX asyncjobs_jobs_operation ON asyncjobs_jobs (operation, status, completed_at)".into(),
            format!(
                "CREATE TABLE asyncjobs_hosts (host_id VARCHAR(64) NOT NULL PRIMARY KEY, \
                 hostname VARCHAR(255) NOT NULL, pid INTEGER NOT NULL, slots INTEGER NOT NULL, queues {text} NOT NULL, \
                 version VARCHAR(32) NOT NULL, started_at {double} NOT NULL, heartbeat_at {double} NOT NULL, \
                 stopped_at {double} NULL){engine}"
            ),
        ];
        if self != Dialect::MySql {
            out.push(format!(
                "CREATE UNIQUE INDEX asyncjobs_jobs_unique ON asyncjobs_jobs (dup_key) WHERE dup_key IS NOT NULL AND {ACTIVE}"
            ));
        }
        out
    }
}

/// The URL with its password replaced, safe for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (auth, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((user_pass, host)) = auth.rsplit_once('@') else { return url.to_owned() };
    let user = user_pass.split_once(':').map_or(user_pass, |(u, _)| u);
    let tail = tail.split_once('?').map_or(tail, |(p, _)| p);
    if user_pass.contains(':') {
        format!("{scheme}://{user}:***@{host}{tail}")
    } else {
        format!("{scheme}://{user}@{host}{tail}")
    }
}

fn password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let auth = rest.split('/').next()?;
    let user_pass = auth.rsplit_once('@')?.0;
    let pass = user_pass.split_once(':')?.1;
    (!pass.is_empty()).then(|| pass.to_owned())
}

/// Which engine a URL names, and the URL sqlx should open.
pub fn parse_url(url: &str) -> Result<(Dialect, String), String> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
        "sqlite" => {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            if !path.starts_with('/') {
                return Err(format!("a SQLite store needs an absolute path, as in sqlite:///srv/jobs.db, not {url}"));
            }
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            Ok((Dialect::Sqlite, format!("sqlite://{path}?mode=rwc")))
        }
        "postgres" | "postgresql" => Ok((Dialect::Postgres, url.to_owned())),
        "mysql" | "mariadb" => Ok((Dialect::MySql, url.replacen("mariadb:", "mysql:", 1))),
        _ => Err(format!(
            "unknown store {}: use \"memory\", sqlite:///path, postgres://... or mysql://...",
            redact(url)
        )),
    }
}

struct Db {
    pool: AnyPool,
    dialect: Dialect,
    /// Typical durations by operation, with when they were read.
    typical: Mutex<HashMap<String, (Instant, Option<f64>)>>,
}

/// A store in a database.
pub struct SqlStore {
    db: Arc<Db>,
    described: String,
    secret: Option<String>,
    timeout: Duration,
    lease: Duration,
    /// Fed by a LISTEN connection on PostgreSQL.
    signals: Option<Arc<broadcast::Sender<Signal>>>,
    /// Wakes this process's waiters when a job ends through this handle.
    finished: tokio::sync::Notify,
}

/// The NOTIFY channel: payload "s" for a submit, "c:<id>" for a cancel.
const CHANNEL: &str = "asyncjobs";

type Tx = sqlx::Transaction<'static, sqlx::Any>;

fn q(sql: String) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(AssertSqlSafe(sql))
}

fn status_of(s: &str) -> Status {
    Status::parse(s).unwrap_or(Status::Failed)
}

fn uuid(s: &str) -> Uuid {
    Uuid::try_parse(s).unwrap_or(Uuid::nil())
}

fn hash32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = s.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
    }
    out
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn job_from_row(row: &AnyRow, with_result: bool) -> Result<Job, sqlx::Error> {
    let error_code: Option<String> = row.try_get("error_code")?;
    let error = match error_code {
        Some(code) => {
            let mut e = JobError::new(&code, row.try_get::<Option<String>, _>("error_message")?.unwrap_or_default());
            if with_result {
                e.detail = row.try_get::<Option<Vec<u8>>, _>("error_detail")?.map(Arc::from);
            }
            Some(Box::new(e))
        }
        None => None,
    };
    let step: Option<String> = row.try_get("step")?;
    let current: Option<f64> = row.try_get("progress_current")?;
    let total: Option<f64> = row.try_get("progress_total")?;
    let progress =
        (step.is_some() || current.is_some() || total.is_some()).then(|| Box::new(Progress { step, current, total }));
    Ok(Job {
        id: uuid(&row.try_get::<String, _>("id")?),
        operation: Arc::from(row.try_get::<String, _>("operation")?),
        params_hash: hash32(&row.try_get::<String, _>("params_hash")?),
        status: status_of(&row.try_get::<String, _>("status")?),
        queue: Arc::from(row.try_get::<String, _>("queue")?),
        priority: row.try_get::<i64, _>("priority")? as i32,
        submitted_at: row.try_get("submitted_at")?,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        timeout_ms: row.try_get::<i64, _>("timeout_ms")?.max(0) as u64,
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts")?.max(0) as u32,
        result: if with_result { row.try_get::<Option<Vec<u8>>, _>("result")?.map(Arc::from) } else { None },
        error,
        progress,
        worker_pid: row.try_get::<Option<i64>, _>("worker_pid")?.map(|p| p as u32),
        host: row.try_get::<Option<String>, _>("lease_owner")?.map(Arc::from),
    })
}

impl SqlStore {
    /// Opens (and creates or upgrades the schema of) the store at `url`,
    /// waiting at most `timeout` for each call, this one included. Leases
    /// last `lease` without renewal.
    pub fn open(url: &str, timeout: Duration, lease: Duration) -> Result<SqlStore, StoreError> {
        let secret = password(url);
        let described = redact(url);
        let (dialect, sqlx_url) = parse_url(url).map_err(StoreError)?;
        let fail = |what: &str, e: String| {
            let mut msg = format!("cannot open the store {described}: {what}: {e}");
            if let Some(p) = &secret {
                msg = msg.replace(p.as_str(), "***");
            }
            StoreError(msg)
        };
        sqlx::any::install_default_drivers();
        let opts = AnyConnectOptions::from_str(&sqlx_url).map_err(|e| fail("bad URL", e.to_string()))?;
        let max = if dialect == Dialect::Sqlite { 4 } else { 8 };
        let connect = async move {
            let pool = AnyPoolOptions::new()
                .max_connections(max)
                .min_connections(0)
                .acquire_timeout(timeout)
                .idle_timeout(Duration::from_secs(300))
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        for stmt in session_setup(dialect) {
                            conn.execute(AssertSqlSafe(stmt.to_string())).await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await?;
            migrate(&pool, dialect).await?;
            Ok::<_, sqlx::Error>(pool)
        };
        let pool = registry::block_on(async move {
            match tokio::time::timeout(timeout, registry::runtime().spawn(connect)).await {
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                Ok(Err(e)) => Err(format!("internal error: {e}")),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Ok(Ok(pool))) => Ok(pool),
            }
        })
        .map_err(|e| fail("connection failed", e))?;
        let signals = (dialect == Dialect::Postgres).then(|| {
            let (tx, _) = broadcast::channel(256);
            let tx = Arc::new(tx);
            listen(sqlx_url.clone(), Arc::downgrade(&tx));
            tx
        });
        Ok(SqlStore {
            db: Arc::new(Db { pool, dialect, typical: Mutex::new(HashMap::new()) }),
            described,
            secret,
            timeout,
            lease,
            signals,
            finished: tokio::sync::Notify::new(),
        })
    }

    /// Runs `f` on the I/O runtime, bounded by the store's timeout.
    async fn run<T, F, Fut>(&self, what: &str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Db>) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    {
        let fut = f(self.db.clone());
        let task = registry::runtime().spawn(tokio::time::timeout(self.timeout, fut));
        let msg = match task.await {
            Ok(Ok(Ok(v))) => return Ok(v),
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(_)) => format!("no answer within {} ms", self.timeout.as_millis()),
            Err(e) => format!("internal error: {e}"),
        };
        crate::metrics::store_error(what);
        let mut msg = format!("store {} unavailable ({what}): {msg}", self.described);
        if let Some(p) = &self.secret {
            msg = msg.replace(p.as_str(), "***");
        }
        Err(StoreError(msg))
    }

    /// Deletes every job and host (for tests and benchmarks).
    pub async fn truncate(&self) -> StoreResult<()> {
        self.run("truncate", |db| async move {
            db.pool.execute("DELETE FROM asyncjobs_jobs").await?;
            db.pool.execute("DELETE FROM asyncjobs_hosts").await?;
            Ok(())
        })
        .await
    }
}

/// Relays NOTIFYs to the store's subscribers for as long as the store lives,
/// reconnecting after a failure. What is missed meanwhile, polling finds.
#[cfg(feature = "postgres")]
fn listen(url: String, signals: std::sync::Weak<broadcast::Sender<Signal>>) {
    registry::runtime().spawn(async move {
        while signals.strong_count() > 0 {
            let listener = async {
                let mut l = sqlx::postgres::PgListener::connect(&url).await?;
                l.listen(CHANNEL).await?;
                Ok::<_, sqlx::Error>(l)
            };
            let Ok(Ok(mut l)) = tokio::time::timeout(Duration::from_secs(10), listener).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            loop {
                let Some(tx) = signals.upgrade() else { return };
                drop(tx);
                match tokio::time::timeout(Duration::from_secs(5), l.try_recv()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(n))) => {
                        let signal = match n.payload().split_once(':') {
                            Some(("c", id)) => Signal::Cancelled(uuid(id)),
                            _ => Signal::Submitted,
                        };
                        if let Some(tx) = signals.upgrade() {
                            let _ = tx.send(signal);
                        }
                    }
                    // The connection was lost (None) or failed: start over.
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                }
            }
        }
    });
}

#[cfg(not(feature = "postgres"))]
fn listen(_: String, _: std::sync::Weak<broadcast::Sender<Signal>>) {}

fn session_setup(dialect: Dialect) -> &'static [&'static str] {
    match dialect {
        Dialect::Sqlite => &["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", "PRAGMA busy_timeout = 10000"],
        Dialect::Postgres => &["SET lock_timeout = '10s'"],
        Dialect::MySql => &[
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET SESSION innodb_lock_wait_timeout = 10",
        ],
    }
}

/// Creates the schema, or checks that the one there is ours. Serialized
/// across processes by a lock, so two first starts do not race.
async fn migrate(pool: &AnyPool, dialect: Dialect) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // DDL is transactional on SQLite and PostgreSQL (so a transaction-scoped
    // lock serves, also behind a transaction-pooling proxy); not on MySQL.
    let (lock, unlock) = match dialect {
        Dialect::Sqlite => ("BEGIN IMMEDIATE", "COMMIT"),
        Dialect::Postgres => ("BEGIN; SELECT pg_advisory_xact_lock(724500101)", "COMMIT"),
        Dialect::MySql => ("SELECT GET_LOCK('asyncjobs_schema', 30)", "SELECT RELEASE_LOCK('asyncjobs_schema')"),
    };
    conn.execute(lock).await?;
    let result = async {
        conn.execute("CREATE TABLE IF NOT EXISTS asyncjobs_schema (id INTEGER NOT NULL PRIMARY KEY, version INTEGER NOT NULL)")
            .await?;
        let version: Option<i64> =
            sqlx::query_scalar("SELECT version FROM asyncjobs_schema WHERE id = 1").fetch_optional(&mut *conn).await?;
        match version {
            None => {
                for stmt in dialect.schema() {
                    conn.execute(AssertSqlSafe(stmt)).await?;
                }
                q(dialect.sql("INSERT INTO asyncjobs_schema (id, version) VALUES (1, ?)"))
                    .bind(SCHEMA_VERSION)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
            Some(v) if v > SCHEMA_VERSION => Err(sqlx::Error::Protocol(format!(
                "the store's schema is version {v}, newer than the version {SCHEMA_VERSION} asyncjobs {} understands; \
                 upgrade asyncjobs on this host",
                env!("CARGO_PKG_VERSION")
            ))),
            // Version 1 is the first; later versions add their upgrade steps here.
            Some(_) => Ok(()),
        }?;
        if dialect == Dialect::MySql {
            // Row 2 is the rescuers' lock.
            conn.execute("INSERT IGNORE INTO asyncjobs_schema (id, version) VALUES (2, 0)").await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() && dialect != Dialect::MySql {
        let _ = conn.execute("ROLLBACK").await;
    } else {
        conn.execute(unlock).await?;
    }
    result
}

impl Db {
    fn sql(&self, text: &str) -> String {
        self.dialect.sql(text)
    }

    async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.pool.begin_with(self.dialect.begin()).await
    }

    async fn find_active<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
        &self,
        executor: E,
        operation: &str,
        hash: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        let sql = self.sql(&format!(
            "SELECT id FROM asyncjobs_jobs WHERE params_hash = ? AND operation = ? AND {ACTIVE} ORDER BY seq LIMIT 1"
        ));
        let row = q(sql).bind(hash.to_owned()).bind(operation.to_owned()).fetch_optional(executor).await?;
        row.map(|r| r.try_get(0)).transpose()
    }

    async fn submit(&self, job: NewJob, limit: usize) -> Result<Submit, sqlx::Error> {
        let params_hash = job.hash();
        let hash = hex(&params_hash);
        let mut tx = self.begin().await?;
        if job.unique {
            if let Some(id) = self.find_active(&mut *tx, &job.operation, &hash).await? {
                tx.rollback().await?;
                return Ok(Submit::Duplicate(uuid(&id)));
            }
        }
        if limit != usize::MAX {
            // Serializes capped submits, so count and insert are one step.
            match self.dialect {
                Dialect::Postgres => {
                    tx.execute("SELECT pg_advisory_xact_lock(724500102)").await?;
                }
                Dialect::MySql => {
                    tx.execute("SELECT version FROM asyncjobs_schema WHERE id = 1 FOR UPDATE").await?;
                }
                Dialect::Sqlite => {}
            }
            let active: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM asyncjobs_jobs WHERE {ACTIVE}")))
                .fetch_one(&mut *tx)
                .await?;
            if active as u64 >= limit as u64 {
                tx.rollback().await?;
                return Ok(Submit::Full { limit });
            }
        }
        let dup_key = job.unique.then(|| hex(&duplicate_key(&job.operation, &params_hash)));
        let sql = self.sql(
            "INSERT INTO asyncjobs_jobs (id, operation, params_hash, dup_key, status, queue, priority, \
             submitted_at, run_after, timeout_ms, max_attempts, executor, params) \
             VALUES (?, ?, ?, ?, 'pending', ?, ?, NOW, NOW, ?, ?, ?, ?)",
        );
        let inserted = q(sql)
            .bind(job.id.to_string())
            .bind(job.operation.clone())
            .bind(hash.clone())
            .bind(dup_key)
            .bind(job.queue)
            .bind(job.priority)
            .bind(job.timeout_ms.min(i64::MAX as u64) as i64)
            .bind(job.max_attempts as i32)
            .bind(job.executor)
            .bind(Arc::unwrap_or_clone(job.params))
            .execute(&mut *tx)
            .await;
        match inserted {
            Ok(_) => {
                if self.dialect == Dialect::Postgres {
                    tx.execute("SELECT pg_notify('asyncjobs', 's')").await?;
                }
                tx.commit().await?;
                Ok(Submit::Accepted)
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // A unique twin won the race: report it.
                tx.rollback().await?;
                let id = self.find_active(&self.pool, &job.operation, &hash).await?;
                match id {
                    Some(id) => Ok(Submit::Duplicate(uuid(&id))),
                    None => Err(sqlx::Error::Protocol("a unique job's twin ended while it was submitted; submit again".into())),
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn typical(&self, operation: &str) -> Result<Option<f64>, sqlx::Error> {
        if let Some((at, v)) = self.typical.lock().get(operation) {
            if at.elapsed() < Duration::from_secs(10) {
                return Ok(*v);
            }
        }
        let sql = self.sql(
            "SELECT completed_at - started_at FROM asyncjobs_jobs WHERE operation = ? AND status = 'completed' \
             AND started_at IS NOT NULL ORDER BY completed_at DESC LIMIT 50",
        );
        let rows = q(sql).bind(operation.to_owned()).fetch_all(&self.pool).await?;
        let v = median(rows.iter().filter_map(|r| r.try_get::<f64, _>(0).ok()).collect());
        let mut cache = self.typical.lock();
        if cache.len() > 1000 {
            cache.clear();
        }
        cache.insert(operation.to_owned(), (Instant::now(), v));
        Ok(v)
    }

    async fn get(&self, id: Uuid, with_result: bool) -> Result<Option<JobView>, sqlx::Error> {
        let extra = if with_result { ", result, error_detail" } else { "" };
        let sql = self.sql(&format!("SELECT {COLUMNS}{extra}, NOW AS now_ FROM asyncjobs_jobs WHERE id = ?"));
        let Some(row) = q(sql).bind(id.to_string()).fetch_optional(&self.pool).await? else { return Ok(None) };
        let job = job_from_row(&row, with_result)?;
        let now: f64 = row.try_get("now_")?;
        let position = if job.status == Status::Pending {
            let seq: i64 = row.try_get("seq")?;
            let sql = self.sql(
                "SELECT COUNT(*) FROM asyncjobs_jobs WHERE status = 'pending' AND queue = ? \
                 AND (priority > ? OR (priority = ? AND seq <= ?))",
            );
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                .bind(job.queue.to_string())
                .bind(job.priority)
                .bind(job.priority)
                .bind(seq)
                .fetch_one(&self.pool)
                .await?;
            Some(n.max(1) as usize)
        } else {
            None
        };
        let typical = if job.status.is_terminal() { None } else { self.typical(&job.operation).await? };
        Ok(Some(JobView { job, position, typical, now }))
    }

    async fn claim(&self, host: String, queues: Vec<String>, k: usize, lease_secs: f64) -> Result<Vec<Claimed>, sqlx::Error> {
        if queues.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let ready = format!("status = 'pending' AND queue IN ({}) AND run_after <= NOW", placeholders(queues.len()));
        // An idle host polls: one plain read, and a transaction only when there is work.
        let mut probe = q(self.sql(&format!("SELECT 1 FROM asyncjobs_jobs WHERE {ready} LIMIT 1")));
        for queue in &queues {
            probe = probe.bind(queue.clone());
        }
        if probe.fetch_optional(&self.pool).await?.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        let sql = self.sql(&format!(
            "SELECT id FROM asyncjobs_jobs WHERE {ready} ORDER BY priority DESC, seq LIMIT ?{}",
            self.dialect.skip_locked()
        ));
        let mut query = q(sql);
        for queue in &queues {
            query = query.bind(queue.clone());
        }
        let ids: Vec<String> =
            query.bind(k as i64).fetch_all(&mut *tx).await?.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        let list = placeholders(ids.len());
        let sql = self.sql(&format!(
            "UPDATE asyncjobs_jobs SET status = 'running', lease_owner = ?, lease_token = lease_token + 1, \
             lease_until = NOW + ?, started_at = NOW, attempts = attempts + 1, step = NULL, \
             progress_current = NULL, progress_total = NULL, worker_pid = NULL \
             WHERE status = 'pending' AND id IN ({list})"
        ));
        let mut update = q(sql).bind(host.clone()).bind(lease_secs);
        for id in &ids {
            update = update.bind(id.clone());
        }
        update.execute(&mut *tx).await?;
        let sql = self.sql(&format!(
            "SELECT id, lease_token, timeout_ms, executor, params, operation FROM asyncjobs_jobs \
             WHERE lease_owner = ? AND status = 'running' AND id IN ({list}) ORDER BY priority DESC, seq"
        ));
        let mut select = q(sql).bind(host);
        for id in &ids {
            select = select.bind(id.clone());
        }
        let rows = select.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    lease: Lease { id: uuid(&r.try_get::<String, _>(0)?), token: r.try_get(1)? },
                    timeout_ms: r.try_get::<i64, _>(2)?.max(0) as u64,
                    executor: r.try_get::<Option<Vec<u8>>, _>(3)?.unwrap_or_default(),
                    params: Arc::new(r.try_get::<Option<Vec<u8>>, _>(4)?.unwrap_or_default()),
                    operation: Arc::from(r.try_get::<String, _>(5)?),
                })
            })
            .collect()
    }

    async fn finish(&self, lease: Lease, outcome: Outcome, output: Option<Vec<u8>>) -> Result<bool, sqlx::Error> {
        let (status, result, error) = match outcome {
            Outcome::Completed(bytes) => (Status::Completed, Some(bytes), None),
            Outcome::Failed(e) => (Status::Failed, None, Some(e)),
            Outcome::Cancelled => (Status::Cancelled, None, Some(JobError::new("CANCELLED", "Job was cancelled"))),
        };
        let sql = self.sql(
            "UPDATE asyncjobs_jobs SET status = ?, completed_at = NOW, result = ?, error_code = ?, \
             error_message = ?, error_detail = ?, output = COALESCE(?, output), executor = NULL, params = NULL, \
             lease_until = NULL WHERE id = ? AND lease_token = ? AND status = 'running'",
        );
        let done = q(sql)
            .bind(status.as_str())
            .bind(result)
            .bind(error.as_ref().map(|e| e.code.clone()))
            .bind(error.as_ref().map(|e| e.message.clone()))
            .bind(error.as_ref().and_then(|e| e.detail.as_ref().map(|d| d.to_vec())))
            .bind(output)
            .bind(lease.id.to_string())
            .bind(lease.token)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn cancel(&self, id: Uuid) -> Result<Cancel, sqlx::Error> {
        for _ in 0..5 {
            let sql = self.sql("SELECT status, lease_token FROM asyncjobs_jobs WHERE id = ?");
            let Some(row) = q(sql).bind(id.to_string()).fetch_optional(&self.pool).await? else {
                return Ok(Cancel::NotFound);
            };
            let status = status_of(&row.try_get::<String, _>(0)?);
            let token: i64 = row.try_get(1)?;
            if status.is_terminal() {
                return Ok(Cancel::Finished(status));
            }
            let sql = self.sql(
                "UPDATE asyncjobs_jobs SET status = 'cancelled', completed_at = NOW, error_code = 'CANCELLED', \
                 error_message = 'Job was cancelled', executor = NULL, params = NULL, lease_until = NULL, \
                 lease_token = lease_token + 1 WHERE id = ? AND status = ? AND lease_token = ?",
            );
            let done = q(sql).bind(id.to_string()).bind(status.as_str()).bind(token).execute(&self.pool).await?;
            if done.rows_affected() == 1 {
                if self.dialect == Dialect::Postgres && status == Status::Running {
                    let sql = self.sql("SELECT pg_notify('asyncjobs', ?)");
                    q(sql).bind(format!("c:{id}")).execute(&self.pool).await?;
                }
                return Ok(match status {
                    Status::Pending => Cancel::WasPending,
                    _ => Cancel::WasRunning(Lease { id, token }),
                });
            }
            // Claimed, rescued or ended meanwhile: look again.
        }
        Err(sqlx::Error::Protocol("the job kept changing while it was cancelled".into()))
    }

    async fn renew(&self, host: String, lease_secs: f64) -> Result<Vec<Lease>, sqlx::Error> {
        let sql = self.sql("UPDATE asyncjobs_jobs SET lease_until = NOW + ? WHERE lease_owner = ? AND status = 'running'");
        q(sql).bind(lease_secs).bind(host.clone()).execute(&self.pool).await?;
        let sql = self.sql("UPDATE asyncjobs_hosts SET heartbeat_at = NOW WHERE host_id = ?");
        q(sql).bind(host.clone()).execute(&self.pool).await?;
        let sql = self.sql("SELECT id, lease_token FROM asyncjobs_jobs WHERE lease_owner = ? AND status = 'running'");
        let rows = q(sql).bind(host).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(Lease { id: uuid(&r.try_get::<String, _>(0)?), token: r.try_get(1)? })).collect()
    }

    /// Puts a running job back in the queue (when attempts remain) or fails it.
    async fn requeue_or_fail(&self, lease: Lease, attempts_left: bool, delay: f64, error: &JobError) -> Result<bool, sqlx::Error> {
        let done = if attempts_left {
            let sql = self.sql(
                "UPDATE asyncjobs_jobs SET status = 'pending', lease_owner = NULL, lease_until = NULL, \
                 lease_token = lease_token + 1, started_at = NULL, worker_pid = NULL, run_after = NOW + ?, \
                 error_code = NULL, error_message = ? WHERE id = ? AND lease_token = ? AND status = 'running'",
            );
            q(sql).bind(delay).bind(error.message.clone()).bind(lease.id.to_string()).bind(lease.token).execute(&self.pool).await?
        } else {
            let sql = self.sql(
                "UPDATE asyncjobs_jobs SET status = 'failed', completed_at = NOW, error_code = ?, error_message = ?, \
                 executor = NULL, params = NULL, lease_until = NULL, lease_token = lease_token + 1 \
                 WHERE id = ? AND lease_token = ? AND status = 'running'",
            );
            q(sql)
                .bind(error.code.clone())
                .bind(error.message.clone())
                .bind(lease.id.to_string())
                .bind(lease.token)
                .execute(&self.pool)
                .await?
        };
        Ok(done.rows_affected() == 1)
    }

    /// One host rescues at a time: the others skip their turn. The lock is
    /// transaction-scoped, so it cannot outlive a failed or abandoned call.
    /// (Each rescue is fenced by the lease token anyway; the lock saves work.)
    async fn rescue(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        if self.dialect == Dialect::Sqlite {
            return self.rescue_locked().await;
        }
        let mut tx = self.pool.begin().await?;
        let got = match self.dialect {
            Dialect::Postgres => sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(724500103)").fetch_one(&mut *tx).await?,
            Dialect::MySql => sqlx::query("SELECT id FROM asyncjobs_schema WHERE id = 2 FOR UPDATE SKIP LOCKED")
                .fetch_optional(&mut *tx)
                .await?
                .is_some(),
            Dialect::Sqlite => unreachable!(),
        };
        if !got {
            return Ok(Vec::new());
        }
        let result = self.rescue_locked().await;
        tx.commit().await?;
        result
    }

    async fn rescue_locked(&self) -> Result<Vec<Uuid>, sqlx::Error> {
        let sql = self.sql(
            "SELECT j.id, j.lease_token, j.attempts, j.max_attempts, j.lease_owner, h.hostname, \
             h.heartbeat_at, NOW AS now_ FROM asyncjobs_jobs j LEFT JOIN asyncjobs_hosts h ON h.host_id = j.lease_owner \
             WHERE j.status = 'running' AND j.lease_until < NOW LIMIT 100",
        );
        let rows = q(sql).fetch_all(&self.pool).await?;
        let mut rescued = Vec::new();
        for r in &rows {
            let lease = Lease { id: uuid(&r.try_get::<String, _>("id")?), token: r.try_get("lease_token")? };
            let attempts: i64 = r.try_get("attempts")?;
            let max_attempts: i64 = r.try_get("max_attempts")?;
            let owner: Option<String> = r.try_get("lease_owner")?;
            let hostname: Option<String> = r.try_get("hostname")?;
            let beat: Option<f64> = r.try_get("heartbeat_at")?;
            let now: f64 = r.try_get("now_")?;
            let pool = owner.unwrap_or_default();
            let pool = pool.get(..8).unwrap_or(&pool);
            let who = match hostname {
                Some(h) => format!("host {h} (pool {pool})"),
                None => format!("pool {pool}"),
            };
            let last = beat.map_or("no heartbeat on record".to_string(), |b| {
                format!("last heartbeat {} ({:.0} s before)", iso8601(b), (now - b).max(0.0))
            });
            let err = JobError::new("HOST_LOST", format!("The {who} running the job stopped renewing its lease; {last}"));
            let left = attempts < max_attempts;
            let delay = 2f64.powi((attempts - 1).clamp(0, 6) as i32);
            if self.requeue_or_fail(lease, left, delay, &err).await? {
                rescued.push(lease.id);
            }
        }
        // Forget hosts gone for a day.
        let sql = self.sql("DELETE FROM asyncjobs_hosts WHERE heartbeat_at < NOW - 86400");
        q(sql).execute(&self.pool).await?;
        Ok(rescued)
    }

    async fn release(&self, host: String, error: JobError) -> Result<Vec<Uuid>, sqlx::Error> {
        let sql = self.sql(
            "SELECT id, lease_token, attempts, max_attempts FROM asyncjobs_jobs WHERE lease_owner = ? AND status = 'running'",
        );
        let rows = q(sql).bind(host.clone()).fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for r in &rows {
            let lease = Lease { id: uuid(&r.try_get::<String, _>(0)?), token: r.try_get(1)? };
            let left = r.try_get::<i64, _>(2)? < r.try_get::<i64, _>(3)?;
            if self.requeue_or_fail(lease, left, 0.0, &error).await? {
                out.push(lease.id);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for SqlStore {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn shared(&self) -> bool {
        true
    }

    fn report_interval(&self) -> Duration {
        Duration::from_millis(250)
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn signals(&self) -> Option<broadcast::Receiver<Signal>> {
        self.signals.as_ref().map(|tx| tx.subscribe())
    }

    async fn submit(&self, job: NewJob, limit: usize) -> StoreResult<Submit> {
        if self.db.dialect == Dialect::MySql && job.operation.chars().count() > 255 {
            return Err(StoreError("an operation name in a MySQL store has at most 255 characters".into()));
        }
        self.run("submit", move |db| async move { db.submit(job, limit).await }).await
    }

    async fn get(&self, id: &Uuid, with_result: bool) -> StoreResult<Option<JobView>> {
        let id = *id;
        self.run("status", move |db| async move { db.get(id, with_result).await }).await
    }

    async fn find_active(&self, operation: &str, params_hash: &[u8; 32]) -> StoreResult<Option<Uuid>> {
        let (operation, hash) = (operation.to_owned(), hex(params_hash));
        self.run("duplicate check", move |db| async move {
            Ok(db.find_active(&db.pool, &operation, &hash).await?.map(|s| uuid(&s)))
        })
        .await
    }

    async fn counts(&self) -> StoreResult<Counts> {
        self.run("counts", |db| async move {
            let rows = q("SELECT status, COUNT(*) FROM asyncjobs_jobs GROUP BY status".into()).fetch_all(&db.pool).await?;
            let mut c = Counts::default();
            for r in rows {
                let n = r.try_get::<i64, _>(1)? as usize;
                match status_of(&r.try_get::<String, _>(0)?) {
                    Status::Pending => c.pending += n,
                    Status::Running => c.running += n,
                    _ => {}
                }
                c.total += n;
            }
            Ok(c)
        })
        .await
    }

    async fn typical_duration(&self, operation: &str) -> StoreResult<Option<f64>> {
        let operation = operation.to_owned();
        self.run("history", move |db| async move { db.typical(&operation).await }).await
    }

    async fn claim(&self, host: &str, queues: &[String], k: usize) -> StoreResult<Vec<Claimed>> {
        let (host, queues) = (host.to_owned(), queues.to_vec());
        let lease = self.lease.as_secs_f64();
        self.run("claim", move |db| async move { db.claim(host, queues, k, lease).await }).await
    }

    async fn report(&self, lease: &Lease, report: Report<'_>) -> StoreResult<bool> {
        let lease = *lease;
        let mut sets = Vec::new();
        if report.pid.is_some() {
            sets.push("worker_pid = ?");
        }
        if report.progress.is_some() {
            sets.push("step = ?, progress_current = ?, progress_total = ?");
        }
        if report.output.is_some() {
            sets.push("output = ?");
        }
        if sets.is_empty() {
            return Ok(true);
        }
        let pid = report.pid.map(|p| p as i64);
        let progress = report.progress.cloned();
        let output = report.output.map(<[u8]>::to_vec);
        self.run("report", move |db| async move {
            let sql = db.sql(&format!(
                "UPDATE asyncjobs_jobs SET {} WHERE id = ? AND lease_token = ? AND status = 'running'",
                sets.join(", ")
            ));
            let mut query = q(sql);
            if let Some(pid) = pid {
                query = query.bind(pid);
            }
            if let Some(p) = progress {
                query = query.bind(p.step).bind(p.current).bind(p.total);
            }
            if let Some(out) = output {
                query = query.bind(out);
            }
            let done = query.bind(lease.id.to_string()).bind(lease.token).execute(&db.pool).await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn output(&self, id: &Uuid) -> StoreResult<Option<Vec<u8>>> {
        let id = *id;
        self.run("output", move |db| async move {
            let sql = db.sql("SELECT output FROM asyncjobs_jobs WHERE id = ?");
            let row = q(sql).bind(id.to_string()).fetch_optional(&db.pool).await?;
            row.map(|r| r.try_get::<Option<Vec<u8>>, _>(0).map(Option::unwrap_or_default)).transpose()
        })
        .await
    }

    async fn finish(&self, lease: &Lease, outcome: &Outcome, output: Option<&[u8]>) -> StoreResult<bool> {
        let (lease, outcome) = (*lease, outcome.clone());
        let output = output.map(<[u8]>::to_vec);
        let done = self.run("finish", move |db| async move { db.finish(lease, outcome, output).await }).await?;
        self.finished.notify_waiters();
        Ok(done)
    }

    async fn cancel(&self, id: &Uuid) -> StoreResult<Cancel> {
        let id = *id;
        let r = self.run("cancel", move |db| async move { db.cancel(id).await }).await?;
        self.finished.notify_waiters();
        Ok(r)
    }

    fn ended(&self) -> &tokio::sync::Notify {
        &self.finished
    }

    /// Jobs run elsewhere are seen by reading them again.
    fn poll_interval(&self) -> Option<Duration> {
        Some(Duration::from_millis(100))
    }

    async fn renew(&self, host: &str) -> StoreResult<Vec<Lease>> {
        let host = host.to_owned();
        let lease_secs = self.lease.as_secs_f64();
        self.run("lease renewal", move |db| async move { db.renew(host, lease_secs).await }).await
    }

    async fn rescue(&self) -> StoreResult<Vec<Uuid>> {
        self.run("rescue", |db| async move { db.rescue().await }).await
    }

    async fn release(&self, host: &str, error: &JobError, _pending: bool) -> StoreResult<Vec<Uuid>> {
        // Pending jobs stay: another host, or this one restarted, runs them.
        let (host, error) = (host.to_owned(), error.clone());
        let ids = self.run("release", move |db| async move { db.release(host, error).await }).await?;
        self.finished.notify_waiters();
        Ok(ids)
    }

    async fn cleanup(&self, max_age: f64, batch: usize) -> StoreResult<Vec<Uuid>> {
        self.run("cleanup", move |db| async move {
            let sql = db.sql(&format!("SELECT id FROM asyncjobs_jobs WHERE {FINISHED} AND completed_at < NOW - ? LIMIT ?"));
            let ids: Vec<String> = q(sql)
                .bind(max_age)
                .bind(batch as i64)
                .fetch_all(&db.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if !ids.is_empty() {
                let sql = db.sql(&format!("DELETE FROM asyncjobs_jobs WHERE id IN ({}) AND {FINISHED}", placeholders(ids.len())));
                let mut del = q(sql);
                for id in &ids {
                    del = del.bind(id.clone());
                }
                del.execute(&db.pool).await?;
            }
            Ok(ids.iter().map(|s| uuid(s)).collect())
        })
        .await
    }

    async fn list(&self) -> StoreResult<Vec<Job>> {
        self.run("list", |db| async move {
            let rows = q(format!("SELECT {COLUMNS} FROM asyncjobs_jobs ORDER BY seq")).fetch_all(&db.pool).await?;
            rows.iter().map(|r| job_from_row(r, false)).collect()
        })
        .await
    }

    async fn register_host(&self, host: &HostInfo) -> StoreResult<()> {
        let host = host.clone();
        self.run("host registration", move |db| async move {
            let sql = db.sql(
                "INSERT INTO asyncjobs_hosts (host_id, hostname, pid, slots, queues, version, started_at, heartbeat_at) \
                 VALUES (?, ?, ?, ?, ?, ?, NOW, NOW)",
            );
            q(sql)
                .bind(host.id)
                .bind(host.hostname)
                .bind(host.pid as i64)
                .bind(host.slots as i64)
                .bind(host.queues.join(","))
                .bind(env!("CARGO_PKG_VERSION"))
                .execute(&db.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn hosts(&self) -> StoreResult<Vec<registry::HostView>> {
        let lease = self.lease.as_secs_f64();
        self.run("hosts", move |db| async move {
            let sql = db.sql(
                "SELECT h.host_id, h.hostname, h.pid, h.slots, h.queues, h.version, h.started_at, h.heartbeat_at, \
                 h.stopped_at, NOW AS now_, (SELECT COUNT(*) FROM asyncjobs_jobs j WHERE j.lease_owner = h.host_id \
                 AND j.status = 'running') AS running FROM asyncjobs_hosts h ORDER BY h.started_at",
            );
            let rows = q(sql).fetch_all(&db.pool).await?;
            rows.iter()
                .map(|r| {
                    let beat: f64 = r.try_get("heartbeat_at")?;
                    let now: f64 = r.try_get("now_")?;
                    let stopped_at: Option<f64> = r.try_get("stopped_at")?;
                    let queues: String = r.try_get("queues")?;
                    Ok(registry::HostView {
                        info: HostInfo {
                            id: r.try_get("host_id")?,
                            hostname: r.try_get("hostname")?,
                            pid: r.try_get::<i64, _>("pid")? as u32,
                            slots: r.try_get::<i64, _>("slots")? as usize,
                            queues: queues.split(',').filter(|q| !q.is_empty()).map(str::to_owned).collect(),
                        },
                        version: r.try_get("version")?,
                        started_at: r.try_get("started_at")?,
                        heartbeat_at: beat,
                        stopped_at,
                        running: r.try_get::<i64, _>("running")? as usize,
                        state: match stopped_at {
                            Some(_) => "stopped",
                            None if now - beat > lease => "lost",
                            None => "live",
                        },
                    })
                })
                .collect()
        })
        .await
    }

    async fn deregister_host(&self, host: &str) -> StoreResult<()> {
        let host = host.to_owned();
        self.run("host deregistration", move |db| async move {
            let sql = db.sql("UPDATE asyncjobs_hosts SET stopped_at = NOW WHERE host_id = ?");
            q(sql).bind(host).execute(&db.pool).await?;
            Ok(())
        })
        .await
    }
}
