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
//!
//! Modules: `dialect` (the engines' SQL differences, the schema and its
//! migration, store URLs) and `db` (each store operation as statements and
//! transactions); here the [`SqlStore`] handle that bounds and runs them.
//! May import: `job`, `sys`, `metrics`, `store`.

mod db;
pub mod dialect;

pub use dialect::{parse_url, redact, Dialect, SCHEMA_VERSION};

use crate::job::{hex, Cancel, Claimed, Counts, JobError, JobView, Lease, NewJob, Outcome, Report, Status, Submit};
use crate::store::{Fault, HostInfo, HostView, ListQuery, Page, Signal, Store, StoreError, StoreResult};
use crate::sys;
use async_trait::async_trait;
use crate::schedule::Schedule;
use crate::store::PutSchedule;
use db::{clip, json_strings, parse_json_strings, placeholders, status_of, text_bytes, uuid, Db};
use dialect::{migrate, q, scrub, secrets, session_setup, text, FINISHED};
use parking_lot::Mutex;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Executor, Row};
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

/// A store in a database.
pub struct SqlStore {
    db: Arc<Db>,
    described: String,
    /// Credentials in the URL, scrubbed from every message.
    secrets: Vec<String>,
    timeout: Duration,
    lease: Duration,
    /// Fed by a LISTEN connection on PostgreSQL.
    signals: Option<Arc<broadcast::Sender<Signal>>>,
    /// Wakes this process's waiters when a job ends through this handle.
    finished: tokio::sync::Notify,
}

/// The NOTIFY channel: payload "s" for a submit, "c:<id>" for a cancel.
const CHANNEL: &str = "asyncjobs";

/// Operation and queue names are VARCHAR(255): characters on every engine.
const NAME_CHARS: usize = 255;

/// A statement's bytes beyond its large values: SQL text and the others.
const PACKET_SLACK: u64 = 8 << 10;

/// Whether a driver error refuses what was sent for good, or may pass.
/// Refusals: SQLSTATE class 22 (data exception: a value too long for its
/// column, say) and 54 (a program limit) on PostgreSQL and MySQL; MySQL's
/// packet and row size limits; SQLite's "string or blob too big".
fn fault_of(e: &sqlx::Error, max_packet: Option<u64>) -> Fault {
    let sqlx::Error::Database(db) = e else { return Fault::Unavailable };
    #[cfg(feature = "mysql")]
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // ER_NET_PACKET_TOO_LARGE, ER_WARN_ALLOWED_PACKET_OVERFLOWED; ER_TOO_BIG_ROWSIZE.
        match my.number() {
            1153 | 1301 => return Fault::TooLarge(max_packet),
            1118 => return Fault::TooLarge(None),
            _ => {}
        }
    }
    #[cfg(feature = "sqlite")]
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLITE_TOOBIG
        return if db.code().as_deref() == Some("18") { Fault::TooLarge(None) } else { Fault::Unavailable };
    }
    match db.code().as_deref().map(|c| c.get(..2).unwrap_or(c)) {
        Some("22") => Fault::Invalid,
        Some("54") => Fault::TooLarge(None),
        _ => Fault::Unavailable,
    }
}

impl SqlStore {
    /// Opens (and creates or upgrades the schema of) the store at `url`,
    /// waiting at most `timeout` for each call, this one included. Leases
    /// last `lease` without renewal.
    pub fn open(url: &str, timeout: Duration, lease: Duration) -> Result<SqlStore, StoreError> {
        let secrets = secrets(url);
        let described = redact(url);
        let (dialect, sqlx_url) = parse_url(url).map_err(StoreError::unavailable)?;
        let fail = |what: &str, e: String| {
            StoreError::unavailable(scrub(format!("cannot open the store {described}: {what}: {e}"), &secrets))
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
                            conn.execute(*stmt).await?;
                        }
                        Ok(())
                    })
                })
                .connect_with(opts)
                .await?;
            migrate(&pool, dialect).await?;
            // MySQL refuses (or drops the connection on) a statement larger than this.
            let max_packet = match dialect {
                Dialect::MySql => {
                    let v: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)").fetch_one(&pool).await?;
                    Some(v.max(0) as u64)
                }
                _ => None,
            };
            Ok::<_, sqlx::Error>((pool, max_packet))
        };
        let (pool, max_packet) = sys::block_on(async move {
            match tokio::time::timeout(timeout, sys::runtime().spawn(connect)).await {
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                Ok(Err(e)) => Err(format!("internal error: {e}")),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Ok(Ok(opened))) => Ok(opened),
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
            db: Arc::new(Db { pool, dialect, max_packet, typical: Mutex::new(HashMap::new()) }),
            described,
            secrets,
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
        crate::metrics::store_call(what);
        let fut = f(self.db.clone());
        let task = sys::runtime().spawn(tokio::time::timeout(self.timeout, fut));
        let (fault, msg) = match task.await {
            Ok(Ok(Ok(v))) => return Ok(v),
            Ok(Ok(Err(e))) => (fault_of(&e, self.db.max_packet), e.to_string()),
            Ok(Err(_)) => (Fault::Unavailable, format!("no answer within {} ms", self.timeout.as_millis())),
            Err(e) => (Fault::Unavailable, format!("internal error: {e}")),
        };
        crate::metrics::store_error(what);
        let msg = match fault {
            Fault::Unavailable => format!("store {} unavailable ({what}): {msg}", self.described),
            // A refusal is about what was sent, not where: no address.
            _ => format!("the store refused the {what}: {msg}"),
        };
        Err(StoreError { fault, message: scrub(msg, &self.secrets) })
    }

    /// A write of `bytes` in one statement, refused before it is sent when
    /// the server would refuse it (MySQL's max_allowed_packet): `what` says
    /// what is that large.
    fn check_packet(&self, bytes: usize, what: &str) -> StoreResult<()> {
        match self.db.max_packet {
            Some(max) if bytes as u64 + PACKET_SLACK > max => Err(StoreError::too_large(
                format!(
                    "{what} {bytes} bytes, more than the {max} bytes the store takes in one statement \
                     (max_allowed_packet of its MySQL/MariaDB server)"
                ),
                Some(max),
            )),
            _ => Ok(()),
        }
    }

    /// Deletes every job, host and schedule (for tests and benchmarks).
    pub async fn truncate(&self) -> StoreResult<()> {
        self.run("truncate", |db| async move {
            for table in ["asyncjobs_jobs", "asyncjobs_hosts", "asyncjobs_deps", "asyncjobs_schedules"] {
                db.pool.execute(format!("DELETE FROM {table}").as_str()).await?;
            }
            Ok(())
        })
        .await
    }
}

/// Relays NOTIFYs to the store's subscribers for as long as the store lives,
/// reconnecting after a failure. What is missed meanwhile, polling finds.
#[cfg(feature = "postgres")]
fn listen(url: String, signals: std::sync::Weak<broadcast::Sender<Signal>>) {
    sys::runtime().spawn(async move {
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
        let n = job.operation.chars().count();
        if n > NAME_CHARS {
            return Err(StoreError::invalid(format!(
                "an operation name has at most {NAME_CHARS} characters in a database store; this one has {n}"
            )));
        }
        self.check_packet(job.params.len() + job.executor.len(), "the job's params and executor are")?;
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
        if let Some(p) = report.progress {
            sets.push("step = ?");
            sets.push(if p.current.is_some() { "progress_current = ?" } else { "progress_current = NULL" });
            sets.push(if p.total.is_some() { "progress_total = ?" } else { "progress_total = NULL" });
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
                let step = p.step.map(|s| clip(&s, text_bytes(db.dialect)).to_owned());
                query = query.bind(step);
                for v in [p.current, p.total].into_iter().flatten() {
                    query = query.bind(v);
                }
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
        let size = match outcome {
            Outcome::Completed(bytes) | Outcome::CompletedJson(bytes) => bytes.len(),
            Outcome::Failed(e) => e.message.len() + e.detail.as_ref().map_or(0, |d| d.len()),
            Outcome::Cancelled => 0,
        };
        let what = if outcome.completed() { "the result is" } else { "the error is" };
        self.check_packet(size + output.map_or(0, <[u8]>::len), what)?;
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

    async fn renew(&self, host: &str, held: &[Lease]) -> StoreResult<Vec<Lease>> {
        let (host, held) = (host.to_owned(), held.to_vec());
        let lease_secs = self.lease.as_secs_f64();
        self.run("lease renewal", move |db| async move { db.renew(host, held, lease_secs).await }).await
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
                let sql = db.sql(&format!("DELETE FROM asyncjobs_deps WHERE job_id IN ({})", placeholders(ids.len())));
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

    async fn list(&self, query: &ListQuery) -> StoreResult<Page> {
        let after = match query.after.as_deref() {
            None => None,
            Some(c) => Some(c.strip_prefix('s').and_then(|n| n.parse::<i64>().ok()).ok_or_else(|| {
                StoreError::invalid("the cursor was not made by this store (a listing's `next_cursor`)")
            })?),
        };
        if query.filter.statuses.as_ref().is_some_and(Vec::is_empty) || query.limit == 0 {
            return Ok(Page::default());
        }
        let query = query.clone();
        self.run("list", move |db| async move { db.list(&query, after).await }).await
    }

    async fn put_schedule(&self, schedule: &Schedule, replace: bool) -> StoreResult<PutSchedule> {
        let s = schedule.clone();
        self.run("schedule", move |db| async move { db.put_schedule(s, replace).await }).await
    }

    async fn drop_schedule(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        self.run("schedule", move |db| async move { db.drop_schedule(name).await }).await
    }

    async fn schedules(&self) -> StoreResult<Vec<Schedule>> {
        self.run("schedules", |db| async move { db.schedules().await }).await
    }

    async fn fire(&self, schedule: &str, next_at: f64, next: f64, jobs: Vec<NewJob>) -> StoreResult<usize> {
        let name = schedule.to_owned();
        self.run("schedule firing", move |db| async move { db.fire(name, next_at, next, jobs).await }).await
    }

    async fn register_host(&self, host: &HostInfo) -> StoreResult<()> {
        let host = host.clone();
        self.run("host registration", move |db| async move {
            let sql = db.sql(
                "INSERT INTO asyncjobs_hosts (host_id, hostname, pid, slots, queues, version, started_at, heartbeat_at, \
                 operations) VALUES (?, ?, ?, ?, ?, ?, NOW, NOW, ?)",
            );
            q(sql)
                .bind(host.id)
                .bind(host.hostname)
                .bind(host.pid as i64)
                .bind(host.slots as i64)
                .bind(host.queues.join(","))
                .bind(env!("CARGO_PKG_VERSION"))
                .bind(json_strings(&host.operations))
                .execute(&db.pool)
                .await?;
            Ok(())
        })
        .await
    }

    async fn hosts(&self) -> StoreResult<Vec<HostView>> {
        let lease = self.lease.as_secs_f64();
        self.run("hosts", move |db| async move {
            let sql = db.sql(
                "SELECT h.host_id, h.hostname, h.pid, h.slots, h.queues, h.version, h.started_at, h.heartbeat_at, \
                 h.stopped_at, h.operations, NOW AS now_, (SELECT COUNT(*) FROM asyncjobs_jobs j WHERE j.lease_owner = h.host_id \
                 AND j.status = 'running') AS running FROM asyncjobs_hosts h ORDER BY h.started_at",
            );
            let rows = q(sql).fetch_all(&db.pool).await?;
            rows.iter()
                .map(|r| {
                    let beat: f64 = r.try_get("heartbeat_at")?;
                    let now: f64 = r.try_get("now_")?;
                    let stopped_at: Option<f64> = r.try_get("stopped_at")?;
                    let queues = text(r, "queues")?.unwrap_or_default();
                    Ok(HostView {
                        info: HostInfo {
                            id: r.try_get("host_id")?,
                            hostname: r.try_get("hostname")?,
                            pid: r.try_get::<i64, _>("pid")? as u32,
                            slots: r.try_get::<i64, _>("slots")? as usize,
                            queues: queues.split(',').filter(|q| !q.is_empty()).map(str::to_owned).collect(),
                            operations: text(r, "operations")?.map(|o| parse_json_strings(&o)).unwrap_or_default(),
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
