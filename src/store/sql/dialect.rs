//! What differs between the engines: the clock, placeholders, locking, the
//! schema and its migration, and the store URLs each accepts.
//!
//! May import: nothing of the crate but `store::sql`'s own modules.

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow, AnyTypeInfoKind};
use sqlx::error::BoxDynError;
use sqlx::{Any, AnyPool, Arguments, Column, ColumnIndex, Encode, Executor, Row, Type};


/// The schema this build writes and reads. Version 2 (asyncjobs 0.2) adds
/// the job model: handler jobs with JSON params and results, parents and
/// children, dependencies, delays and schedules. Version 3 (0.2 as well)
/// adds submitters, tags, concurrency keys, unique keys, queue settings
/// and the event log.
pub const SCHEMA_VERSION: i64 = 3;

pub(super) const ACTIVE: &str = "status IN ('pending', 'running')";
pub(super) const FINISHED: &str = "status IN ('completed', 'failed', 'cancelled')";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    /// The database clock in seconds since the epoch, as a double.
    pub(super) fn now(self) -> &'static str {
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

    /// A placeholder whose text goes into a JSON column.
    pub(super) fn json_in(self) -> &'static str {
        match self {
            Dialect::Postgres => "CAST(? AS JSON)",
            _ => "?",
        }
    }

    /// A JSON column's type. The text is kept as written (PostgreSQL's
    /// `json`, not `jsonb`; on MySQL/MariaDB text checked by `JSON_VALID`,
    /// which is what MariaDB's `JSON` is), because `jsonb` and MySQL's
    /// binary `JSON` reorder an object's keys: R would read back a list
    /// or data frame with its names in another order. SQL's JSON operators
    /// and functions read these columns all the same.
    fn json_column(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => "TEXT NULL".into(),
            Dialect::Postgres => "JSON NULL".into(),
            Dialect::MySql => format!("LONGTEXT NULL CHECK (JSON_VALID({column}))"),
        }
    }

    /// A JSON column read as text.
    pub(super) fn json_out(self, column: &str) -> String {
        match self {
            Dialect::Postgres => format!("CAST({column} AS TEXT)"),
            Dialect::MySql => format!("CAST({column} AS CHAR)"),
            Dialect::Sqlite => column.to_string(),
        }
    }

    /// Locks the rows a read returns until the transaction ends (SQLite
    /// locks the whole database at `BEGIN IMMEDIATE`).
    pub(super) fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            _ => " FOR UPDATE",
        }
    }

    pub(super) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            _ => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// How a writing transaction starts. SQLite takes the write lock at once,
    /// so two writers never deadlock upgrading a read lock.
    pub(super) fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            _ => "BEGIN",
        }
    }

    /// Version 1 of the schema (asyncjobs 0.1), which [`migrate`] creates
    /// and then upgrades step by step; public for the upgrade's tests.
    pub fn schema(self) -> Vec<String> {
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

    /// Column types of later versions (a double, a text) and a table's options.
    fn types(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Dialect::Sqlite => ("REAL", "TEXT", ""),
            Dialect::Postgres => ("DOUBLE PRECISION", "TEXT", ""),
            Dialect::MySql => ("DOUBLE", "TEXT", " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"),
        }
    }

    /// Version 2's additions to version 1: columns (table, name, type), then
    /// tables and indexes (name, statement). Each is applied only when it is
    /// missing, so an upgrade cut short (MySQL's DDL is not transactional)
    /// picks up where it stopped.
    fn upgrade_to_2(self) -> (Vec<(&'static str, &'static str, String)>, Vec<(&'static str, String)>) {
        let (double, text, engine) = self.types();
        let jobs = "asyncjobs_jobs";
        let columns = vec![
            (jobs, "handler", "SMALLINT NOT NULL DEFAULT 0".to_string()),
            (jobs, "params_json", self.json_column("params_json")),
            (jobs, "result_json", self.json_column("result_json")),
            (jobs, "parent_id", "VARCHAR(36) NULL".to_string()),
            (jobs, "children", "INTEGER NOT NULL DEFAULT 0".to_string()),
            (jobs, "waiting", "INTEGER NOT NULL DEFAULT 0".to_string()),
            (jobs, "schedule_name", "VARCHAR(255) NULL".to_string()),
            (jobs, "slot_at", format!("{double} NULL")),
            (jobs, "signature", "VARCHAR(64) NULL".to_string()),
            ("asyncjobs_hosts", "operations", format!("{text} NULL")),
        ];
        let others = vec![
            (
                "asyncjobs_deps",
                format!(
                    "CREATE TABLE IF NOT EXISTS asyncjobs_deps (job_id VARCHAR(36) NOT NULL, dep_id VARCHAR(36) NOT NULL, \
                     PRIMARY KEY (job_id, dep_id)){engine}"
                ),
            ),
            ("asyncjobs_deps_dep", "CREATE INDEX asyncjobs_deps_dep ON asyncjobs_deps (dep_id)".to_string()),
            (
                "asyncjobs_schedules",
                format!(
                    "CREATE TABLE IF NOT EXISTS asyncjobs_schedules (name VARCHAR(255) NOT NULL PRIMARY KEY, \
                     cron VARCHAR(255) NOT NULL, tz VARCHAR(64) NOT NULL, operation VARCHAR(255) NOT NULL, \
                     params {}, queue VARCHAR(255) NOT NULL, priority INTEGER NOT NULL, \
                     timeout_ms BIGINT NOT NULL, max_attempts INTEGER NOT NULL, missed VARCHAR(8) NOT NULL, \
                     next_at {double} NOT NULL, last_at {double} NULL, created_at {double} NOT NULL){engine}",
                    self.json_column("params")
                ),
            ),
            ("asyncjobs_schedules_next", "CREATE INDEX asyncjobs_schedules_next ON asyncjobs_schedules (next_at)".to_string()),
            ("asyncjobs_jobs_parent", "CREATE INDEX asyncjobs_jobs_parent ON asyncjobs_jobs (parent_id)".to_string()),
            (
                "asyncjobs_jobs_slot",
                "CREATE UNIQUE INDEX asyncjobs_jobs_slot ON asyncjobs_jobs (schedule_name, slot_at)".to_string(),
            ),
        ];
        (columns, others)
    }

    /// Version 3's additions to version 2, as [`Dialect::upgrade_to_2`]'s.
    fn upgrade_to_3(self) -> (Vec<(&'static str, &'static str, String)>, Vec<(&'static str, String)>) {
        let (double, text, engine) = self.types();
        let seq = match self {
            Dialect::Sqlite => "seq INTEGER PRIMARY KEY AUTOINCREMENT",
            Dialect::Postgres => "seq BIGSERIAL PRIMARY KEY",
            Dialect::MySql => "seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
        };
        let jobs = "asyncjobs_jobs";
        let columns = vec![
            (jobs, "submitted_by", "VARCHAR(255) NULL".to_string()),
            (jobs, "tags", format!("{text} NULL")),
            (jobs, "concurrency_key", "VARCHAR(255) NULL".to_string()),
            (jobs, "concurrency_limit", "INTEGER NOT NULL DEFAULT 0".to_string()),
            (jobs, "unique_key", "VARCHAR(64) NULL".to_string()),
        ];
        let others = vec![
            (
                "asyncjobs_tags",
                format!(
                    "CREATE TABLE IF NOT EXISTS asyncjobs_tags (job_id VARCHAR(36) NOT NULL, tag VARCHAR(255) NOT NULL, \
                     PRIMARY KEY (job_id, tag)){engine}"
                ),
            ),
            ("asyncjobs_tags_tag", "CREATE INDEX asyncjobs_tags_tag ON asyncjobs_tags (tag, job_id)".to_string()),
            (
                "asyncjobs_events",
                format!(
                    "CREATE TABLE IF NOT EXISTS asyncjobs_events ({seq}, job_id VARCHAR(36) NOT NULL, \
                     at {double} NOT NULL, kind VARCHAR(16) NOT NULL, host VARCHAR(64) NULL, \
                     attempt INTEGER NOT NULL, detail {text} NULL){engine}"
                ),
            ),
            ("asyncjobs_events_job", "CREATE INDEX asyncjobs_events_job ON asyncjobs_events (job_id, seq)".to_string()),
            (
                "asyncjobs_queues",
                format!(
                    "CREATE TABLE IF NOT EXISTS asyncjobs_queues (name VARCHAR(255) NOT NULL PRIMARY KEY, \
                     paused SMALLINT NOT NULL DEFAULT 0, max_running INTEGER NULL){engine}"
                ),
            ),
            ("asyncjobs_jobs_twin", "CREATE INDEX asyncjobs_jobs_twin ON asyncjobs_jobs (unique_key, seq)".to_string()),
            ("asyncjobs_jobs_by", "CREATE INDEX asyncjobs_jobs_by ON asyncjobs_jobs (submitted_by, submitted_at)".to_string()),
            ("asyncjobs_jobs_ckey", "CREATE INDEX asyncjobs_jobs_ckey ON asyncjobs_jobs (concurrency_key, status)".to_string()),
            (
                "asyncjobs_jobs_opsub",
                "CREATE INDEX asyncjobs_jobs_opsub ON asyncjobs_jobs (operation, submitted_at)".to_string(),
            ),
        ];
        (columns, others)
    }
}

/// `?` for a double that is there, a literal NULL for one that is not:
/// sqlx 0.8's Any driver binds a NULL double as a float4 NULL, and
/// PostgreSQL keeps that parameter type for the statement it caches, so a
/// later double would be refused. No statement binds a NULL double.
pub(super) fn double_or_null(v: Option<f64>) -> &'static str {
    if v.is_some() {
        "?"
    } else {
        "NULL"
    }
}

/// A statement built at run time (every statement here is: the dialect
/// renders it), to bind and run like a sqlx query:
/// `q(sql).bind(a).execute(&pool)`.
pub(super) fn q(sql: String) -> Stmt {
    Stmt { sql, args: Ok(AnyArguments::default()) }
}

/// sqlx 0.8's `query()` borrows its text, so a statement rendered into a
/// `String` could not be built and run in one expression; this owns both
/// the text and the arguments, and lends the text to sqlx when it runs.
pub(super) struct Stmt {
    sql: String,
    /// The first argument that failed to encode is reported when the statement runs.
    args: Result<AnyArguments<'static>, BoxDynError>,
}

impl Stmt {
    pub(super) fn bind<T>(mut self, value: T) -> Self
    where
        T: 'static + Encode<'static, Any> + Type<Any>,
    {
        if let Ok(args) = &mut self.args {
            if let Err(e) = args.add(value) {
                self.args = Err(e);
            }
        }
        self
    }

    pub(super) async fn execute<'c, E: Executor<'c, Database = Any>>(self, executor: E) -> Result<AnyQueryResult, sqlx::Error> {
        let args = self.args.map_err(sqlx::Error::Encode)?;
        sqlx::query_with(&self.sql, args).execute(executor).await
    }

    pub(super) async fn fetch_one<'c, E: Executor<'c, Database = Any>>(self, executor: E) -> Result<AnyRow, sqlx::Error> {
        let args = self.args.map_err(sqlx::Error::Encode)?;
        sqlx::query_with(&self.sql, args).fetch_one(executor).await
    }

    pub(super) async fn fetch_optional<'c, E: Executor<'c, Database = Any>>(self, executor: E) -> Result<Option<AnyRow>, sqlx::Error> {
        let args = self.args.map_err(sqlx::Error::Encode)?;
        sqlx::query_with(&self.sql, args).fetch_optional(executor).await
    }

    pub(super) async fn fetch_all<'c, E: Executor<'c, Database = Any>>(self, executor: E) -> Result<Vec<AnyRow>, sqlx::Error> {
        let args = self.args.map_err(sqlx::Error::Encode)?;
        sqlx::query_with(&self.sql, args).fetch_all(executor).await
    }
}

/// A TEXT column's value. sqlx 0.8's Any driver hands MySQL's TEXT columns
/// over as bytes (it takes them for BLOBs); they hold UTF-8, decoded here.
/// Other columns, and every column on the other engines, are read as text.
pub(super) fn text<I: ColumnIndex<AnyRow> + Copy>(row: &AnyRow, col: I) -> Result<Option<String>, sqlx::Error> {
    if row.try_column(col)?.type_info().kind() != AnyTypeInfoKind::Blob {
        return row.try_get(col);
    }
    let Some(bytes) = row.try_get::<Option<Vec<u8>>, _>(col)? else { return Ok(None) };
    String::from_utf8(bytes).map(Some).map_err(|e| sqlx::Error::Decode(e.into()))
}

/// The URL without its credentials, safe for messages and logs: the
/// password in `user:password@` becomes `***` (also when it holds an
/// unencoded `/`, `?`, `#` or `@`), and the query (where sqlx also takes
/// `user=` and `password=`) is left out.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // sqlite:/path and the like: no authority, so no userinfo.
        return url.split_once('?').map_or(url, |(p, _)| p).to_owned();
    };
    let (user, has_password, after) = match userinfo_end(rest) {
        Some(i) => {
            let info = &rest[..i];
            let user = info.split_once(':').map_or(info, |(u, _)| u);
            (Some(user), info.contains(':'), &rest[i + 1..])
        }
        None => (None, false, rest),
    };
    let mut address = after.split(['?', '#']).next().unwrap_or("").to_owned();
    if user.is_none() {
        // No '@': what looks like host:port must have a port of digits, or it
        // is user:password with the '@' lost in the query.
        let host_end = address.find('/').unwrap_or(address.len());
        if let Some((host, port)) = address[..host_end].split_once(':') {
            if !port.is_empty() && !port.bytes().all(|b| b.is_ascii_digit()) {
                address = format!("{host}:***{}", &address[host_end..]);
            }
        }
    }
    match user {
        Some(u) if has_password => format!("{scheme}://{u}:***@{address}"),
        Some(u) => format!("{scheme}://{u}@{address}"),
        None => format!("{scheme}://{address}"),
    }
}

/// Where `user[:password]` ends in what follows `scheme://`: the last '@'
/// that is not inside the query (an '@' after `?key=` is a value there,
/// as in `?user=me@host`).
fn userinfo_end(rest: &str) -> Option<usize> {
    let in_query = |at: usize| {
        let before = &rest[..at];
        before.find('?').is_some_and(|q| {
            let query = &before[q + 1..];
            let key = query.split('=').next().unwrap_or("");
            query.contains('=') && !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    };
    rest.match_indices('@').map(|(i, _)| i).rev().find(|&i| !in_query(i))
}

/// Keys of a store URL's query whose values are secrets.
const SECRET_KEYS: [&str; 5] = ["password", "passwd", "pwd", "sslpassword", "pass"];

/// The secrets in a URL (the userinfo's password and secret query values),
/// as written and percent-decoded, to scrub from driver messages. Secrets
/// shorter than 4 bytes are left out: scrubbing them would mangle text.
pub(super) fn secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    if let Some(i) = userinfo_end(rest) {
        if let Some((_, pass)) = rest[..i].split_once(':') {
            out.push(pass.to_owned());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split(['&', '#']) {
            if let Some((k, v)) = pair.split_once('=') {
                if SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                    out.push(v.to_owned());
                }
            }
        }
    }
    let decoded: Vec<String> = out.iter().map(|s| percent_decode(s)).collect();
    out.extend(decoded);
    out.retain(|s| s.len() >= 4);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` with every secret replaced by `***`.
pub(super) fn scrub(mut text: String, secrets: &[String]) -> String {
    for s in secrets {
        if text.contains(s.as_str()) {
            text = text.replace(s.as_str(), "***");
        }
    }
    text
}

/// Which engine a URL names, and the URL sqlx should open.
pub fn parse_url(url: &str) -> Result<(Dialect, String), String> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
        "sqlite" => {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            if !path.starts_with('/') {
                return Err(format!("a SQLite store needs an absolute path, as in sqlite:///srv/jobs.db, not {}", redact(url)));
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

pub(super) fn session_setup(dialect: Dialect) -> &'static [&'static str] {
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
pub(super) async fn migrate(pool: &AnyPool, dialect: Dialect) -> Result<(), sqlx::Error> {
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
                    conn.execute(stmt.as_str()).await?;
                }
                q(dialect.sql("INSERT INTO asyncjobs_schema (id, version) VALUES (1, 1)")).execute(&mut *conn).await?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(sqlx::Error::Protocol(format!(
                    "the store's schema is version {v}, newer than the version {SCHEMA_VERSION} asyncjobs {} understands; \
                     upgrade asyncjobs on this host",
                    env!("CARGO_PKG_VERSION")
                )))
            }
            Some(_) => {}
        }
        // Each version's steps, in order; a new store takes them all.
        let steps = [(2, dialect.upgrade_to_2()), (3, dialect.upgrade_to_3())];
        for (to, (columns, others)) in steps {
            if version.unwrap_or(1) >= to {
                continue;
            }
            for (table, column, def) in columns {
                if !column_exists(&mut conn, dialect, table, column).await? {
                    conn.execute(format!("ALTER TABLE {table} ADD COLUMN {column} {def}").as_str()).await?;
                }
            }
            for (name, stmt) in others {
                if !object_exists(&mut conn, dialect, name).await? {
                    conn.execute(stmt.as_str()).await?;
                }
            }
            q(dialect.sql("UPDATE asyncjobs_schema SET version = ? WHERE id = 1")).bind(to).execute(&mut *conn).await?;
        }
        list_indexes(&mut conn, dialect).await?;
        if dialect == Dialect::MySql {
            // Row 2 is the rescuers' lock, row 3 the claimers' under limits.
            conn.execute("INSERT IGNORE INTO asyncjobs_schema (id, version) VALUES (2, 0), (3, 0)").await?;
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

type Conn = sqlx::pool::PoolConnection<sqlx::Any>;

async fn column_exists(conn: &mut Conn, dialect: Dialect, table: &str, column: &str) -> Result<bool, sqlx::Error> {
    let sql = match dialect {
        Dialect::Sqlite => "SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?",
        Dialect::Postgres => {
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = current_schema() \
             AND table_name = ? AND column_name = ?"
        }
        Dialect::MySql => {
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
             AND table_name = ? AND column_name = ?"
        }
    };
    let sql = dialect.sql(sql);
    let n: i64 = sqlx::query_scalar(&sql).bind(table.to_owned()).bind(column.to_owned()).fetch_one(&mut **conn).await?;
    Ok(n > 0)
}

/// Whether a table or an index of this name exists.
async fn object_exists(conn: &mut Conn, dialect: Dialect, name: &str) -> Result<bool, sqlx::Error> {
    let sql = match dialect {
        Dialect::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE name = ?",
        Dialect::Postgres => "SELECT COUNT(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relname = ?",
        Dialect::MySql => "SELECT (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() \
             AND table_name = ?) + (SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() \
             AND index_name = ?)",
    };
    let sql = dialect.sql(sql);
    let mut query = sqlx::query_scalar(&sql).bind(name.to_owned());
    if dialect == Dialect::MySql {
        query = query.bind(name.to_owned());
    }
    let n: i64 = query.fetch_one(&mut **conn).await?;
    Ok(n > 0)
}

/// A step of its own, apart from the schema versions: the indexes listings
/// need, `asyncjobs_jobs_list` (status, seq) for a status filter in submit
/// order and, on PostgreSQL, `asyncjobs_jobs_seq` (seq) for submit order alone
/// (SQLite's seq is the rowid; MySQL's has its unique key). Created when
/// missing, at every open, so a store made before them gains them;
/// idempotent, and it changes nothing older builds read.
async fn list_indexes(conn: &mut sqlx::pool::PoolConnection<sqlx::Any>, dialect: Dialect) -> Result<(), sqlx::Error> {
    let wanted: &[(&str, &str)] = match dialect {
        Dialect::Postgres => &[("asyncjobs_jobs_list", "(status, seq)"), ("asyncjobs_jobs_seq", "(seq)")],
        _ => &[("asyncjobs_jobs_list", "(status, seq)")],
    };
    for (name, columns) in wanted {
        // Looked up first: CREATE INDEX takes a lock on the table even when
        // the index is there, and MySQL has no IF NOT EXISTS for it.
        let lookup = match dialect {
            Dialect::Sqlite => None,
            Dialect::Postgres => Some(
                "SELECT COUNT(*) FROM pg_indexes WHERE schemaname = current_schema() \
                 AND tablename = 'asyncjobs_jobs' AND indexname = $1",
            ),
            Dialect::MySql => Some(
                "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() \
                 AND table_name = 'asyncjobs_jobs' AND index_name = ?",
            ),
        };
        if let Some(sql) = lookup {
            let n: i64 = sqlx::query_scalar(sql).bind(*name).fetch_one(&mut **conn).await?;
            if n > 0 {
                continue;
            }
        }
        let create = match dialect {
            Dialect::MySql => format!("CREATE INDEX {name} ON asyncjobs_jobs {columns}"),
            _ => format!("CREATE INDEX IF NOT EXISTS {name} ON asyncjobs_jobs {columns}"),
        };
        conn.execute(create.as_str()).await?;
    }
    Ok(())
}
