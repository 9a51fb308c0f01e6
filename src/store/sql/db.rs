//! Each store operation as the statements and transactions that do it, on
//! a connection pool. [`super::SqlStore`] runs them on the I/O runtime, each
//! bounded by the store's timeout.
//!
//! May import: `job`, `sys`, `store`, and `store::sql::dialect`.

use super::dialect::{double_or_null, q, text, Dialect, ACTIVE};
use crate::job::{
    duplicate_key, hex, median, Cancel, Claimed, Job, JobError, JobView, Lease, NewJob, Outcome, Progress, Status, Submit,
};
use crate::schedule::{Missed, Schedule};
use crate::store::{ListQuery, Page, PutSchedule};
use crate::sys::iso8601;
use parking_lot::Mutex;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Executor, Row};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Columns of a status read: no payload, result or output.
pub(super) const COLUMNS: &str = "id, operation, params_hash, status, queue, priority, submitted_at, started_at, \
     completed_at, timeout_ms, attempts, max_attempts, worker_pid, lease_owner, step, progress_current, \
     progress_total, error_code, error_message, seq, handler, parent_id, children, waiting, schedule_name, run_after, slot_at";

/// At most this many dependents fail with one failed job (a chain's tail).
const MAX_CASCADE: usize = 10_000;

pub(super) struct Db {
    pub(super) pool: AnyPool,
    pub(super) dialect: Dialect,
    /// MySQL's max_allowed_packet, read when the store opens.
    pub(super) max_packet: Option<u64>,
    /// Typical durations by operation, with when they were read.
    pub(super) typical: Mutex<HashMap<String, (Instant, Option<f64>)>>,
}

pub(super) type Tx = sqlx::Transaction<'static, sqlx::Any>;


pub(super) fn status_of(s: &str) -> Status {
    Status::parse(s).unwrap_or(Status::Failed)
}

pub(super) fn uuid(s: &str) -> Uuid {
    Uuid::try_parse(s).unwrap_or(Uuid::nil())
}

pub(super) fn hash32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = s.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
    }
    out
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(super) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Bytes of text a column of type TEXT holds on this engine: MySQL's TEXT
/// is 64 KiB (less a margin for a clipped character), the others' unbounded.
pub(super) fn text_bytes(dialect: Dialect) -> usize {
    if dialect == Dialect::MySql { 65_000 } else { usize::MAX }
}

pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// A list of strings as a JSON array (the host registry's operations).
pub(super) fn json_strings(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| {
            let mut out = String::from('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    c => out.push(c),
                }
            }
            out.push('"');
            out
        })
        .collect();
    format!("[{}]", quoted.join(","))
}

/// The strings of a JSON array [`json_strings`] wrote.
pub(super) fn parse_json_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut item = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('u') => {
                        let hex: String = chars.by_ref().take(4).collect();
                        item.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                    }
                    Some(e) => item.push(e),
                    None => {}
                },
                c => item.push(c),
            }
        }
        out.push(item);
    }
    out
}

fn schedule_from_row(r: &AnyRow) -> Result<Schedule, sqlx::Error> {
    Ok(Schedule {
        name: r.try_get("name")?,
        cron: r.try_get("cron")?,
        tz: r.try_get("tz")?,
        operation: r.try_get("operation")?,
        params: text(r, "params_text")?.unwrap_or_else(|| "null".into()).into_bytes(),
        queue: r.try_get("queue")?,
        priority: r.try_get::<i64, _>("priority")? as i32,
        timeout_ms: r.try_get::<i64, _>("timeout_ms")?.max(0) as u64,
        max_attempts: r.try_get::<i64, _>("max_attempts")?.max(1) as u32,
        missed: Missed::parse(&r.try_get::<String, _>("missed")?).unwrap_or_default(),
        next_at: r.try_get("next_at")?,
        last_at: r.try_get("last_at")?,
        created_at: r.try_get("created_at")?,
    })
}

pub(super) fn job_from_row(row: &AnyRow, with_result: bool) -> Result<Job, sqlx::Error> {
    let error_code: Option<String> = row.try_get("error_code")?;
    let error = match error_code {
        Some(code) => {
            let mut e = JobError::new(&code, text(row, "error_message")?.unwrap_or_default());
            if with_result {
                e.detail = row.try_get::<Option<Vec<u8>>, _>("error_detail")?.map(Arc::from);
            }
            Some(Box::new(e))
        }
        None => None,
    };
    let step = text(row, "step")?;
    let current: Option<f64> = row.try_get("progress_current")?;
    let total: Option<f64> = row.try_get("progress_total")?;
    let progress =
        (step.is_some() || current.is_some() || total.is_some()).then(|| Box::new(Progress { step, current, total }));
    let submitted_at: f64 = row.try_get("submitted_at")?;
    let run_after: f64 = row.try_get("run_after")?;
    let json: Option<String> = if with_result { text(row, "result_text")? } else { None };
    let json_result = json.is_some();
    let result = match json {
        Some(text) => Some(Arc::from(text.into_bytes().as_slice())),
        None if with_result => row.try_get::<Option<Vec<u8>>, _>("result")?.map(Arc::from),
        None => None,
    };
    Ok(Job {
        id: uuid(&row.try_get::<String, _>("id")?),
        operation: Arc::from(row.try_get::<String, _>("operation")?),
        params_hash: hash32(&row.try_get::<String, _>("params_hash")?),
        status: status_of(&row.try_get::<String, _>("status")?),
        queue: Arc::from(row.try_get::<String, _>("queue")?),
        priority: row.try_get::<i64, _>("priority")? as i32,
        submitted_at,
        started_at: row.try_get("started_at")?,
        completed_at: row.try_get("completed_at")?,
        timeout_ms: row.try_get::<i64, _>("timeout_ms")?.max(0) as u64,
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts")?.max(0) as u32,
        result_json: json_result,
        result,
        error,
        progress,
        worker_pid: row.try_get::<Option<i64>, _>("worker_pid")?.map(|p| p as u32),
        host: row.try_get::<Option<String>, _>("lease_owner")?.map(Arc::from),
        handler: row.try_get::<i64, _>("handler")? != 0,
        parent: row.try_get::<Option<String>, _>("parent_id")?.map(|p| uuid(&p)),
        // An immediate job's run_after is its submit time (a clock read apart).
        run_at: (run_after > submitted_at + 0.001).then_some(run_after),
        waiting: row.try_get::<i64, _>("waiting")?.max(0) as u32,
        children: row.try_get::<i64, _>("children")?.max(0) as u32,
        schedule: row.try_get::<Option<String>, _>("schedule_name")?.map(Arc::from),
        slot_at: row.try_get("slot_at")?,
    })
}

impl Db {
    pub(super) fn sql(&self, text: &str) -> String {
        self.dialect.sql(text)
    }

    pub(super) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.pool.begin_with(self.dialect.begin()).await
    }

    pub(super) async fn find_active<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
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

    pub(super) async fn submit(&self, job: NewJob, limit: usize) -> Result<Submit, sqlx::Error> {
        let hash = hex(&job.hash());
        let mut tx = self.begin().await?;
        if job.parent.is_some() {
            // A retried parent's child was made by its first run: that one it is.
            let sql = self.sql("SELECT 1 FROM asyncjobs_jobs WHERE id = ?");
            if q(sql).bind(job.id.to_string()).fetch_optional(&mut *tx).await?.is_some() {
                tx.rollback().await?;
                return Ok(Submit::Accepted);
            }
        }
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
            let active: i64 =
                q(format!("SELECT COUNT(*) FROM asyncjobs_jobs WHERE {ACTIVE}")).fetch_one(&mut *tx).await?.try_get(0)?;
            if active as u64 >= limit as u64 {
                tx.rollback().await?;
                return Ok(Submit::Full { limit });
            }
        }
        // Dependencies, locked until the insert commits, so that none ends
        // unseen in between: each must exist; those not completed are waited for.
        let mut waiting = Vec::new();
        let mut failed = None;
        for dep in &job.depends_on {
            let sql = self.sql(&format!("SELECT status FROM asyncjobs_jobs WHERE id = ?{}", self.dialect.for_update()));
            let Some(row) = q(sql).bind(dep.to_string()).fetch_optional(&mut *tx).await? else {
                tx.rollback().await?;
                return Ok(Submit::UnknownDependency(*dep));
            };
            match status_of(&row.try_get::<String, _>(0)?) {
                Status::Completed => {}
                Status::Pending | Status::Running => {
                    if !waiting.contains(dep) {
                        waiting.push(*dep);
                    }
                }
                other => failed = failed.or(Some((*dep, other))),
            }
        }
        let (operation, id, parent) = (job.operation.clone(), job.id, job.parent);
        let failed = failed.map(|(dep, status)| {
            let why = if status == Status::Cancelled { "was cancelled" } else { "failed" };
            format!("Job {dep}, which this job depends on, {why}")
        });
        let ready = waiting.is_empty() && failed.is_none();
        let inserted = self.insert_job(&mut *tx, job, &hash, waiting.len(), failed).await;
        match inserted {
            Ok(()) => {
                if !waiting.is_empty() {
                    let sql = self.sql(&format!(
                        "INSERT INTO asyncjobs_deps (job_id, dep_id) VALUES {}",
                        vec!["(?, ?)"; waiting.len()].join(", ")
                    ));
                    let mut insert = q(sql);
                    for dep in &waiting {
                        insert = insert.bind(id.to_string()).bind(dep.to_string());
                    }
                    insert.execute(&mut *tx).await?;
                }
                if let Some(p) = parent {
                    let sql = self.sql("UPDATE asyncjobs_jobs SET children = children + 1 WHERE id = ?");
                    q(sql).bind(p.to_string()).execute(&mut *tx).await?;
                }
                if ready && self.dialect == Dialect::Postgres {
                    tx.execute("SELECT pg_notify('asyncjobs', 's')").await?;
                }
                tx.commit().await?;
                Ok(Submit::Accepted)
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                // A unique twin won the race: report it.
                tx.rollback().await?;
                let twin = self.find_active(&self.pool, &operation, &hash).await?;
                match twin {
                    Some(twin) => Ok(Submit::Duplicate(uuid(&twin))),
                    None => Err(sqlx::Error::Protocol("a unique job's twin ended while it was submitted; submit again".into())),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Inserts a job row: pending (waiting for `waiting` dependencies), or
    /// failed at once with DEPENDENCY_FAILED when `failed` says why.
    async fn insert_job<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
        &self,
        executor: E,
        job: NewJob,
        hash: &str,
        waiting: usize,
        failed: Option<String>,
    ) -> Result<(), sqlx::Error> {
        let dup_key = (job.unique && failed.is_none()).then(|| hex(&duplicate_key(&job.operation, &job.hash())));
        let (status, completed) = if failed.is_some() { ("failed", "NOW") } else { ("pending", "NULL") };
        let slot_at = double_or_null(job.slot.as_ref().map(|s| s.at));
        let sql = self.sql(&format!(
            "INSERT INTO asyncjobs_jobs (id, operation, params_hash, dup_key, status, queue, priority, \
             submitted_at, run_after, timeout_ms, max_attempts, executor, params, params_json, handler, parent_id, \
             waiting, schedule_name, slot_at, signature, completed_at, error_code, error_message) \
             VALUES (?, ?, ?, ?, '{status}', ?, ?, NOW, NOW + ?, ?, ?, ?, ?, {}, ?, ?, ?, ?, {slot_at}, ?, {completed}, ?, ?)",
            self.dialect.json_in()
        ));
        let handler = job.executor.is_empty();
        let keep = failed.is_none();
        let (params, params_json) = match (job.params_json, keep) {
            (_, false) => (None, None),
            (true, true) => (None, Some(String::from_utf8_lossy(&job.params).into_owned())),
            (false, true) => (Some(Arc::unwrap_or_clone(job.params)), None),
        };
        let slot = job.slot.clone();
        let mut insert = q(sql)
            .bind(job.id.to_string())
            .bind(job.operation)
            .bind(hash.to_owned())
            .bind(dup_key)
            .bind(job.queue)
            .bind(job.priority)
            .bind(job.delay.max(0.0))
            .bind(job.timeout_ms.min(i64::MAX as u64) as i64)
            .bind(job.max_attempts as i32)
            .bind(keep.then_some(job.executor))
            .bind(params)
            .bind(params_json)
            .bind(handler as i32)
            .bind(job.parent.map(|p| p.to_string()))
            .bind(waiting as i32)
            .bind(slot.as_ref().map(|s| s.schedule.clone()));
        if let Some(s) = slot {
            insert = insert.bind(s.at);
        }
        insert
            .bind(job.signature.map(|s| hex(&s)))
            .bind(failed.as_ref().map(|_| "DEPENDENCY_FAILED".to_string()))
            .bind(failed)
            .execute(executor)
            .await?;
        Ok(())
    }

    /// A job ended: the jobs waiting on it go on (it completed) or fail.
    pub(super) async fn settle_dependents(&self, id: Uuid, outcome: &Outcome) -> Result<(), sqlx::Error> {
        if !outcome.completed() {
            let why = if matches!(outcome, Outcome::Cancelled) { "was cancelled" } else { "failed" };
            return self.fail_dependents(id, why).await;
        }
        let sql = self.sql(
            "UPDATE asyncjobs_jobs SET waiting = waiting - 1 WHERE status = 'pending' AND waiting > 0 \
             AND id IN (SELECT job_id FROM asyncjobs_deps WHERE dep_id = ?)",
        );
        let done = q(sql).bind(id.to_string()).execute(&self.pool).await?;
        if done.rows_affected() > 0 && self.dialect == Dialect::Postgres {
            self.pool.execute("SELECT pg_notify('asyncjobs', 's')").await?;
        }
        Ok(())
    }

    /// Fails, with DEPENDENCY_FAILED, the pending jobs that wait on `id`,
    /// then those that wait on them.
    async fn fail_dependents(&self, id: Uuid, why: &str) -> Result<(), sqlx::Error> {
        let mut todo = vec![(id, why.to_string())];
        let mut n = 0;
        while let Some((dep, why)) = todo.pop() {
            let sql = self.sql(
                "SELECT d.job_id FROM asyncjobs_deps d JOIN asyncjobs_jobs j ON j.id = d.job_id \
                 WHERE d.dep_id = ? AND j.status = 'pending'",
            );
            let rows = q(sql).bind(dep.to_string()).fetch_all(&self.pool).await?;
            for r in &rows {
                let job: String = r.try_get(0)?;
                let sql = self.sql(
                    "UPDATE asyncjobs_jobs SET status = 'failed', completed_at = NOW, error_code = 'DEPENDENCY_FAILED', \
                     error_message = ?, executor = NULL, params = NULL, lease_token = lease_token + 1 \
                     WHERE id = ? AND status = 'pending'",
                );
                let message = format!("Job {dep}, which this job depends on, {why}");
                let done = q(sql).bind(message).bind(job.clone()).execute(&self.pool).await?;
                n += 1;
                if done.rows_affected() == 1 && n < MAX_CASCADE {
                    todo.push((uuid(&job), "failed".to_string()));
                }
            }
        }
        Ok(())
    }

    /// The dependencies a pending job still waits for.
    async fn waiting_for(&self, id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        let sql = self.sql(
            "SELECT d.dep_id FROM asyncjobs_deps d JOIN asyncjobs_jobs j ON j.id = d.dep_id \
             WHERE d.job_id = ? AND j.status <> 'completed' ORDER BY j.seq",
        );
        let rows = q(sql).bind(id.to_string()).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(uuid(&r.try_get::<String, _>(0)?))).collect()
    }

    async fn children(&self, id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        let sql = self.sql("SELECT id FROM asyncjobs_jobs WHERE parent_id = ? ORDER BY seq");
        let rows = q(sql).bind(id.to_string()).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(uuid(&r.try_get::<String, _>(0)?))).collect()
    }

    const SCHEDULE_COLUMNS: &'static str =
        "name, cron, tz, operation, queue, priority, timeout_ms, max_attempts, missed, next_at, last_at, created_at";

    pub(super) async fn put_schedule(&self, s: Schedule, replace: bool) -> Result<PutSchedule, sqlx::Error> {
        for _ in 0..3 {
            let mut tx = self.begin().await?;
            let sql = self.sql(&format!(
                "SELECT {}, {} AS params_text FROM asyncjobs_schedules WHERE name = ?{}",
                Self::SCHEDULE_COLUMNS,
                self.dialect.json_out("params"),
                self.dialect.for_update()
            ));
            let old = q(sql).bind(s.name.clone()).fetch_optional(&mut *tx).await?;
            let old = old.map(|r| schedule_from_row(&r)).transpose()?;
            let sql = match &old {
                Some(old) if old.same_definition(&s) => {
                    tx.rollback().await?;
                    return Ok(PutSchedule::Unchanged);
                }
                Some(old) if !replace => {
                    tx.rollback().await?;
                    return Ok(PutSchedule::Taken(Box::new(old.clone())));
                }
                Some(_) => format!(
                    "UPDATE asyncjobs_schedules SET cron = ?, tz = ?, operation = ?, params = {}, queue = ?, priority = ?, \
                     timeout_ms = ?, max_attempts = ?, missed = ?, next_at = ?, created_at = ?, last_at = {} WHERE name = ?",
                    self.dialect.json_in(),
                    double_or_null(s.last_at)
                ),
                None => format!(
                    "INSERT INTO asyncjobs_schedules (cron, tz, operation, params, queue, priority, timeout_ms, \
                     max_attempts, missed, next_at, created_at, last_at, name) VALUES (?, ?, ?, {}, ?, ?, ?, ?, ?, ?, ?, {}, ?)",
                    self.dialect.json_in(),
                    double_or_null(s.last_at)
                ),
            };
            let mut write = q(self.sql(&sql))
                .bind(s.cron.clone())
                .bind(s.tz.clone())
                .bind(s.operation.clone())
                .bind(String::from_utf8_lossy(&s.params).into_owned())
                .bind(s.queue.clone())
                .bind(s.priority)
                .bind(s.timeout_ms.min(i64::MAX as u64) as i64)
                .bind(s.max_attempts as i32)
                .bind(s.missed.as_str())
                .bind(s.next_at)
                .bind(s.created_at);
            if let Some(last) = s.last_at {
                write = write.bind(last);
            }
            let r = write.bind(s.name.clone()).execute(&mut *tx).await;
            match r {
                Ok(_) => {
                    tx.commit().await?;
                    return Ok(if old.is_some() { PutSchedule::Replaced } else { PutSchedule::Created });
                }
                // Another process added it meanwhile: look again.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => tx.rollback().await?,
                Err(e) => return Err(e),
            }
        }
        Err(sqlx::Error::Protocol(format!("the schedule {} kept changing while it was written", s.name)))
    }

    pub(super) async fn drop_schedule(&self, name: String) -> Result<bool, sqlx::Error> {
        let sql = self.sql("DELETE FROM asyncjobs_schedules WHERE name = ?");
        Ok(q(sql).bind(name).execute(&self.pool).await?.rows_affected() > 0)
    }

    pub(super) async fn schedules(&self) -> Result<Vec<Schedule>, sqlx::Error> {
        let sql = format!(
            "SELECT {}, {} AS params_text FROM asyncjobs_schedules ORDER BY next_at, name",
            Self::SCHEDULE_COLUMNS,
            self.dialect.json_out("params")
        );
        let rows = q(sql).fetch_all(&self.pool).await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Adds each slot's job unless a host fired it already (the unique key
    /// on schedule and slot), then moves the schedule's next slot on.
    pub(super) async fn fire(&self, name: String, next_at: f64, next: f64, jobs: Vec<NewJob>) -> Result<usize, sqlx::Error> {
        let mut added = 0;
        let mut last = None;
        for job in jobs {
            last = job.slot.as_ref().map(|s| s.at).or(last);
            let hash = hex(&job.hash());
            match self.insert_job(&self.pool, job, &hash, 0, None).await {
                Ok(()) => added += 1,
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(e) => return Err(e),
            }
        }
        let sql = self.sql(&format!(
            "UPDATE asyncjobs_schedules SET next_at = ?, last_at = COALESCE({}, last_at) WHERE name = ? AND next_at = ?",
            double_or_null(last)
        ));
        let mut update = q(sql).bind(next);
        if let Some(last) = last {
            update = update.bind(last);
        }
        update.bind(name).bind(next_at).execute(&self.pool).await?;
        if added > 0 && self.dialect == Dialect::Postgres {
            self.pool.execute("SELECT pg_notify('asyncjobs', 's')").await?;
        }
        Ok(added)
    }

    pub(super) async fn typical(&self, operation: &str) -> Result<Option<f64>, sqlx::Error> {
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

    pub(super) async fn get(&self, id: Uuid, with_result: bool) -> Result<Option<JobView>, sqlx::Error> {
        let extra = if with_result {
            format!(", result, {} AS result_text, error_detail", self.dialect.json_out("result_json"))
        } else {
            String::new()
        };
        let sql = self.sql(&format!("SELECT {COLUMNS}{extra}, NOW AS now_ FROM asyncjobs_jobs WHERE id = ?"));
        let Some(row) = q(sql).bind(id.to_string()).fetch_optional(&self.pool).await? else { return Ok(None) };
        let job = job_from_row(&row, with_result)?;
        let now: f64 = row.try_get("now_")?;
        let position = if job.status == Status::Pending && job.waiting == 0 {
            let seq: i64 = row.try_get("seq")?;
            let sql = self.sql(
                "SELECT COUNT(*) FROM asyncjobs_jobs WHERE status = 'pending' AND waiting = 0 AND queue = ? \
                 AND (priority > ? OR (priority = ? AND seq <= ?))",
            );
            let n: i64 = q(sql)
                .bind(job.queue.to_string())
                .bind(job.priority)
                .bind(job.priority)
                .bind(seq)
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
            Some(n.max(1) as usize)
        } else {
            None
        };
        let typical = if job.status.is_terminal() { None } else { self.typical(&job.operation).await? };
        let waiting_for = if job.waiting > 0 && job.status == Status::Pending { self.waiting_for(id).await? } else { Vec::new() };
        let children = if job.children > 0 { self.children(id).await? } else { Vec::new() };
        Ok(Some(JobView { job, position, typical, now, waiting_for, children }))
    }

    pub(super) async fn claim(&self, host: String, queues: Vec<String>, k: usize, lease_secs: f64) -> Result<Vec<Claimed>, sqlx::Error> {
        if queues.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let ready =
            format!("status = 'pending' AND waiting = 0 AND queue IN ({}) AND run_after <= NOW", placeholders(queues.len()));
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
            "SELECT id, lease_token, timeout_ms, executor, params, operation, {} AS params_text, queue, attempts, \
             parent_id, signature FROM asyncjobs_jobs \
             WHERE lease_owner = ? AND status = 'running' AND id IN ({list}) ORDER BY priority DESC, seq",
            self.dialect.json_out("params_json")
        ));
        let mut select = q(sql).bind(host);
        for id in &ids {
            select = select.bind(id.clone());
        }
        let rows = select.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let json: Option<String> = text(r, 6)?;
                let params_json = json.is_some();
                let params = match json {
                    Some(text) => text.into_bytes(),
                    None => r.try_get::<Option<Vec<u8>>, _>(4)?.unwrap_or_default(),
                };
                Ok(Claimed {
                    lease: Lease { id: uuid(&r.try_get::<String, _>(0)?), token: r.try_get(1)? },
                    timeout_ms: r.try_get::<i64, _>(2)?.max(0) as u64,
                    executor: r.try_get::<Option<Vec<u8>>, _>(3)?.unwrap_or_default(),
                    params: Arc::new(params),
                    params_json,
                    operation: Arc::from(r.try_get::<String, _>(5)?),
                    queue: Arc::from(r.try_get::<String, _>(7)?),
                    attempt: r.try_get::<i64, _>(8)?.max(0) as u32,
                    parent: r.try_get::<Option<String>, _>(9)?.map(|p| uuid(&p)),
                    signature: r.try_get::<Option<String>, _>(10)?.map(|s| hash32(&s)),
                })
            })
            .collect()
    }

    pub(super) async fn finish(&self, lease: Lease, outcome: Outcome, output: Option<Vec<u8>>) -> Result<bool, sqlx::Error> {
        let (status, result, json, error) = match &outcome {
            Outcome::Completed(bytes) => (Status::Completed, Some(bytes.clone()), None, None),
            Outcome::CompletedJson(text) => (Status::Completed, None, Some(String::from_utf8_lossy(text).into_owned()), None),
            Outcome::Failed(e) => (Status::Failed, None, None, Some(e.clone())),
            Outcome::Cancelled => (Status::Cancelled, None, None, Some(JobError::new("CANCELLED", "Job was cancelled"))),
        };
        let sql = self.sql(&format!(
            "UPDATE asyncjobs_jobs SET status = ?, completed_at = NOW, result = ?, result_json = {}, error_code = ?, \
             error_message = ?, error_detail = ?, output = COALESCE(?, output), executor = NULL, params = NULL, \
             lease_until = NULL WHERE id = ? AND lease_token = ? AND status = 'running'",
            self.dialect.json_in()
        ));
        // A code longer than its column, or a message longer than MySQL's
        // TEXT, is cut rather than refused: the outcome must land.
        let text_limit = text_bytes(self.dialect);
        let done = q(sql)
            .bind(status.as_str())
            .bind(result)
            .bind(json)
            .bind(error.as_ref().map(|e| clip(&e.code, 64).to_owned()))
            .bind(error.as_ref().map(|e| clip(&e.message, text_limit).to_owned()))
            .bind(error.as_ref().and_then(|e| e.detail.as_ref().map(|d| d.to_vec())))
            .bind(output)
            .bind(lease.id.to_string())
            .bind(lease.token)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        self.settle_dependents(lease.id, &outcome).await?;
        Ok(true)
    }

    /// A page of a listing: filtered, sorted and limited by the database
    /// (index asyncjobs_jobs_list: status, seq), `seq` as the cursor.
    pub(super) async fn list(&self, query: &ListQuery, after: Option<i64>) -> Result<Page, sqlx::Error> {
        let mut wheres = Vec::new();
        let f = &query.filter;
        if let Some(s) = &f.statuses {
            wheres.push(format!("status IN ({})", placeholders(s.len())));
        }
        if let Some(o) = &f.operations {
            wheres.push(if o.is_empty() { "1 = 0".into() } else { format!("operation IN ({})", placeholders(o.len())) });
        }
        let (op, dir) = if query.newest_first { ("<", "DESC") } else { (">", "ASC") };
        if after.is_some() {
            wheres.push(format!("seq {op} ?"));
        }
        let filter = if wheres.is_empty() { String::new() } else { format!(" WHERE {}", wheres.join(" AND ")) };
        let limit = query.limit.saturating_add(1).min(i64::MAX as usize) as i64;
        let sql = self.sql(&format!("SELECT {COLUMNS} FROM asyncjobs_jobs{filter} ORDER BY seq {dir} LIMIT ?"));
        let mut select = q(sql);
        for st in f.statuses.iter().flatten() {
            select = select.bind(st.as_str());
        }
        for op in f.operations.iter().flatten() {
            select = select.bind(op.clone());
        }
        if let Some(seq) = after {
            select = select.bind(seq);
        }
        let rows = select.bind(limit).fetch_all(&self.pool).await?;
        let more = rows.len() > query.limit;
        let rows = &rows[..rows.len().min(query.limit)];
        let next = match rows.last() {
            Some(r) if more => Some(format!("s{}", r.try_get::<i64, _>("seq")?)),
            _ => None,
        };
        let jobs = rows.iter().map(|r| job_from_row(r, false)).collect::<Result<_, _>>()?;
        Ok(Page { jobs, next })
    }

    pub(super) async fn cancel(&self, id: Uuid) -> Result<Cancel, sqlx::Error> {
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
                self.fail_dependents(id, "was cancelled").await?;
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

    pub(super) async fn renew(&self, host: String, held: Vec<Lease>, lease_secs: f64) -> Result<Vec<Lease>, sqlx::Error> {
        let sql = self.sql("UPDATE asyncjobs_hosts SET heartbeat_at = NOW WHERE host_id = ?");
        q(sql).bind(host.clone()).execute(&self.pool).await?;
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut renewed = Vec::with_capacity(held.len());
        // Bounded statements: a host holds as many leases as it has slots, but slots are many at most.
        for chunk in held.chunks(500) {
            let list = placeholders(chunk.len());
            let sql = self.sql(&format!(
                "UPDATE asyncjobs_jobs SET lease_until = NOW + ? WHERE lease_owner = ? AND status = 'running' AND id IN ({list})"
            ));
            let mut update = q(sql).bind(lease_secs).bind(host.clone());
            for l in chunk {
                update = update.bind(l.id.to_string());
            }
            update.execute(&self.pool).await?;
            let sql = self.sql(&format!(
                "SELECT id, lease_token FROM asyncjobs_jobs WHERE lease_owner = ? AND status = 'running' AND id IN ({list})"
            ));
            let mut select = q(sql).bind(host.clone());
            for l in chunk {
                select = select.bind(l.id.to_string());
            }
            for r in select.fetch_all(&self.pool).await? {
                let lease = Lease { id: uuid(&r.try_get::<String, _>(0)?), token: r.try_get(1)? };
                if chunk.contains(&lease) {
                    renewed.push(lease);
                }
            }
        }
        Ok(renewed)
    }

    /// Puts a running job back in the queue (when attempts remain) or fails it.
    pub(super) async fn requeue_or_fail(&self, lease: Lease, attempts_left: bool, delay: f64, error: &JobError) -> Result<bool, sqlx::Error> {
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
            let done = q(sql)
                .bind(error.code.clone())
                .bind(error.message.clone())
                .bind(lease.id.to_string())
                .bind(lease.token)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() == 1 {
                self.fail_dependents(lease.id, "failed").await?;
            }
            done
        };
        Ok(done.rows_affected() == 1)
    }

    /// One host rescues at a time: the others skip their turn. The lock is
    /// transaction-scoped, so it cannot outlive a failed or abandoned call.
    /// (Each rescue is fenced by the lease token anyway; the lock saves work.)
    pub(super) async fn rescue(&self) -> Result<Vec<Uuid>, sqlx::Error> {
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

    pub(super) async fn rescue_locked(&self) -> Result<Vec<Uuid>, sqlx::Error> {
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

    pub(super) async fn release(&self, host: String, error: JobError) -> Result<Vec<Uuid>, sqlx::Error> {
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
