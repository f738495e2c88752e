//! The store: one sqlx `AnyPool` code path over SQLite (embedded default) and
//! PostgreSQL (several gateway instances), chosen by the database URL. Migrations
//! live in `gateway/migrations/{sqlite,postgres}` and are applied in order at start.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};
use std::sync::Arc;
use std::time::Duration;

/// A store error. Messages never reach clients (the rescue layer hides them).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL's scheme is neither sqlite nor postgres.
    #[error("database url must start with sqlite:// or postgres:// (got `{0}`)")]
    UnsupportedUrl(String),
    /// The database answered with an error or could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    /// An existing store was asked for and there is none (nothing is created).
    #[error("{0}")]
    Missing(String),
    /// The database file could not be created with private permissions.
    #[error("{path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The gateway's database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's single writer, queued fairly inside this process.
    write_gate: Arc<tokio::sync::Mutex<()>>,
    /// The database file, for SQLite.
    sqlite_file: Option<Arc<std::path::Path>>,
    /// The database URL, for PostgreSQL.
    postgres_url: Option<PostgresUrl>,
}

/// How long a connection may take before the store counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL URL, for a writer that keeps a connection of its own; its `Debug`
/// does not print the URL, which may hold a password.
#[derive(Clone)]
pub struct PostgresUrl(Arc<str>);

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresUrl(..)")
    }
}

impl PostgresUrl {
    /// A new connection, outside the pool, given up after the pool's acquire timeout.
    pub async fn connect(&self) -> Result<sqlx::AnyConnection, sqlx::Error> {
        use sqlx::Connection;
        tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect(&self.0))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }
}

struct Migration {
    version: i64,
    sqlite: &'static str,
    postgres: &'static str,
}

/// Migration `$version`, from the file of that name in each backend's folder.
macro_rules! migration {
    ($version:literal, $file:literal) => {
        Migration {
            version: $version,
            sqlite: include_str!(concat!("../../migrations/sqlite/", $file)),
            postgres: include_str!(concat!("../../migrations/postgres/", $file)),
        }
    };
}

const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_init.sql"),
    migration!(2, "0002_audit.sql"),
    migration!(3, "0003_grants.sql"),
    migration!(4, "0004_audit_verify.sql"),
    migration!(5, "0005_push.sql"),
    migration!(6, "0006_linkage.sql"),
    migration!(7, "0007_pushed_records.sql"),
    migration!(8, "0008_grant_changes.sql"),
    migration!(9, "0009_break_glass.sql"),
];

/// A writing transaction from [`Store::begin_write`]; use it as the connection. Every
/// other writer of this process (the audit log included) waits while one is held: end
/// it before awaiting anything that writes.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commit (and let the next writer in).
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

/// What a writing transaction serialises on (the PostgreSQL advisory lock keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Schema migrations.
    Migrations = 7263001,
    /// The audit chain: one batch at a time across instances.
    AuditChain = 7263002,
    /// Grants: overlap checks and inserts.
    Grants = 7263003,
    /// Pushed documents: idempotency checks and inserts.
    Push = 7263004,
}

/// Create the SQLite file `path` readable by its owner only (0600; its directory
/// 0700 when created here) before SQLite opens it: SQLite gives the write-ahead log
/// and shared-memory files the database file's permissions.
pub(crate) fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let err = |source| StoreError::File { path: path.display().to_string(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

impl Store {
    /// Connect, creating an embedded database on first use, and apply pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        if let Some(rest) = url.strip_prefix("sqlite://") {
            let file = rest.split('?').next().unwrap_or(rest);
            if !file.starts_with(':') && !rest.contains("mode=memory") {
                create_private(std::path::Path::new(file))?;
            }
        }
        let store = Self::connect(url, true).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connect to a store that must already exist, creating and migrating nothing: for
    /// the `audit` commands, which inspect a store and must not mend what they inspect.
    /// A missing SQLite file, or a database without the gateway's schema, is an error.
    pub async fn open_existing(url: &str) -> Result<Store, StoreError> {
        if let Some(rest) = url.strip_prefix("sqlite://") {
            let file = rest.split('?').next().unwrap_or(rest);
            if !std::path::Path::new(file).is_file() {
                return Err(StoreError::Missing(format!("database file {file} does not exist")));
            }
            // Read it directly first, writing nothing: a truncated or foreign file fails
            // here with SQLite's own words (the pool would retry until its timeout), and
            // an empty one is not initialised by the pool's connection settings.
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = rusqlite::Connection::open_with_flags(file, flags)
                .map_err(|e| StoreError::Missing(format!("{file} cannot be opened: {e}")))?;
            if let Err(e) = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
                return Err(StoreError::Missing(format!("{file} is not a readable SQLite database: {e}")));
            }
            if conn.query_row("SELECT MAX(version) FROM kk_schema", [], |r| r.get::<_, Option<i64>>(0)).is_err() {
                return Err(StoreError::Missing(format!(
                    "{file} holds no Kakehashi schema (empty, truncated or not this gateway's)"
                )));
            }
        }
        let store = Self::connect(url, false).await?;
        let has_schema: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT MAX(version) FROM kk_schema").fetch_one(&store.pool).await;
        match has_schema {
            Ok(Some(v)) if v >= MIGRATIONS.len() as i64 => Ok(store),
            Ok(Some(v)) => Err(StoreError::Missing(format!(
                "the database has schema version {v}, older than this build's {}: start the gateway once to migrate it",
                MIGRATIONS.len()
            ))),
            Ok(None) | Err(_) => Err(StoreError::Missing(
                "the database holds no Kakehashi schema (empty, truncated or not this gateway's)".into(),
            )),
        }
    }

    async fn connect(url: &str, create: bool) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let mut sqlite_file = None;
        let mut postgres_url = None;
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            sqlite_file = Some(Arc::from(std::path::Path::new(rest.split('?').next().unwrap_or(rest))));
            // Create the file on first use; WAL gives readers and one writer concurrency.
            let sep = if rest.contains('?') { '&' } else { '?' };
            let mode = if create { "rwc" } else { "rw" };
            let url = if rest.contains("mode=") { url.to_string() } else { format!("{url}{sep}mode={mode}") };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres_url = Some(PostgresUrl(Arc::from(url)));
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.split(':').next().unwrap_or("").to_string()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // page_size applies only to a new database (it must precede WAL):
                        // audit rows are about 2.1 KB, so 4 KB pages held one row each.
                        conn.execute("PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000; PRAGMA foreign_keys=ON;").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Store { pool, backend, write_gate: Arc::default(), sqlite_file, postgres_url })
    }

    /// The engine in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The SQLite database file and the gate every writer of this process queues on,
    /// for a writer that keeps its own connection (the audit log's); `None` on PostgreSQL.
    pub fn sqlite_writer_parts(&self) -> Option<(Arc<std::path::Path>, Arc<tokio::sync::Mutex<()>>)> {
        Some((self.sqlite_file.clone()?, self.write_gate.clone()))
    }

    /// The PostgreSQL URL, for a writer that keeps a connection of its own (the audit
    /// log's); `None` on SQLite.
    pub fn postgres_writer_url(&self) -> Option<PostgresUrl> {
        self.postgres_url.clone()
    }

    /// A transaction that will write, serialised with every other holder of `lock`.
    /// SQLite has one writer at a time: writers of this process queue in order on an
    /// async gate (SQLite's own busy handler would sleep them in growing steps), then
    /// `BEGIN IMMEDIATE` takes the write lock up front, so a transaction is never
    /// refused "database is locked" when upgrading after another connection committed.
    /// PostgreSQL: a transaction-scoped advisory lock, shared by every instance.
    pub async fn begin_write(&self, lock: Lock) -> Result<WriteTx, sqlx::Error> {
        self.begin_writing(Some(lock)).await
    }

    /// A transaction that will write rows no other instance serialises on (row locks
    /// are enough on PostgreSQL), still queued in turn on SQLite. Every write while the
    /// gateway serves goes through this or [`Store::begin_write`]: a statement sent
    /// straight to the pool waits in SQLite's busy handler, which under a steady audit
    /// load almost never finds the lock free and gives up with "database is locked".
    pub async fn begin_row_write(&self) -> Result<WriteTx, sqlx::Error> {
        self.begin_writing(None).await
    }

    async fn begin_writing(&self, lock: Option<Lock>) -> Result<WriteTx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let gate = self.write_gate.clone().lock_owned().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx { tx, _gate: Some(gate) })
            }
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                if let Some(lock) = lock {
                    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(lock as i64).execute(&mut *tx).await?;
                }
                Ok(WriteTx { tx, _gate: None })
            }
        }
    }

    /// A value from `kk_meta`.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT value FROM kk_meta WHERE key = $1").bind(key).fetch_optional(&self.pool).await?)
    }

    /// Set a value in `kk_meta` only if it is not set yet; returns the value in force.
    pub async fn meta_init(&self, key: &str, value: &str) -> Result<String, StoreError> {
        // Straight to the pool: it runs at start, before this process has other writers.
        sqlx::query("INSERT INTO kk_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(self.meta(key).await?.unwrap_or_else(|| value.to_string()))
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Apply pending migrations. On PostgreSQL one connection holds a session advisory
    /// lock throughout, so instances starting together on a fresh database apply each
    /// migration once: even `CREATE TABLE IF NOT EXISTS` fails with a duplicate key when
    /// two sessions run it at once. On SQLite each migration's `BEGIN IMMEDIATE` suffices.
    async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                self.pool.execute(SCHEMA_TABLE).await?;
                for m in MIGRATIONS {
                    let mut tx = self.begin_write(Lock::Migrations).await?;
                    apply(&mut tx, m, m.sqlite).await?;
                    tx.commit().await?;
                }
            }
            Backend::Postgres => {
                let mut conn = self.pool.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock($1)").bind(Lock::Migrations as i64).execute(&mut *conn).await?;
                let applied = async {
                    conn.execute(SCHEMA_TABLE).await?;
                    for m in MIGRATIONS {
                        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                        apply(&mut tx, m, m.postgres).await?;
                        tx.commit().await?;
                    }
                    Ok::<(), StoreError>(())
                }
                .await;
                let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(Lock::Migrations as i64)
                    .execute(&mut *conn)
                    .await;
                if unlocked.is_err() {
                    // A session still holding the lock must not go back to the pool.
                    conn.detach();
                }
                applied?;
            }
        }
        Ok(())
    }
}

const SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS kk_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)";

/// Apply migration `m` (its SQL for this backend) in `conn`'s transaction unless done.
async fn apply(conn: &mut sqlx::AnyConnection, m: &Migration, sql: &'static str) -> Result<(), StoreError> {
    let done = sqlx::query("SELECT version FROM kk_schema WHERE version = $1")
        .bind(m.version)
        .fetch_optional(&mut *conn)
        .await?;
    if done.is_none() {
        conn.execute(sql).await.map_err(|source| StoreError::Migration { version: m.version, source })?;
        sqlx::query("INSERT INTO kk_schema (version, applied_at) VALUES ($1, $2)")
            .bind(m.version)
            .bind(time::OffsetDateTime::now_utc().unix_timestamp())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_opens_migrates_and_reopens() {
        let dir = std::env::temp_dir().join(format!("kk-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/t.db", dir.display());
        let s = Store::open(&url).await.unwrap();
        assert_eq!(s.backend(), Backend::Sqlite);
        assert!(s.ping().await);
        drop(s);
        let s = Store::open(&url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kk_schema").fetch_one(s.pool()).await.unwrap();
        assert_eq!(n, MIGRATIONS.len() as i64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn rejects_other_schemes() {
        assert!(matches!(Store::open("mysql://x").await, Err(StoreError::UnsupportedUrl(s)) if s == "mysql"));
    }
}
