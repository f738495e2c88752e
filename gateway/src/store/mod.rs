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

impl Store {
    /// Connect and apply pending migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let mut sqlite_file = None;
        let mut postgres_url = None;
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            sqlite_file = Some(Arc::from(std::path::Path::new(rest.split('?').next().unwrap_or(rest))));
            // Create the file on first use; WAL gives readers and one writer concurrency.
            let sep = if rest.contains('?') { '&' } else { '?' };
            let url = if rest.contains("mode=") { url.to_string() } else { format!("{url}{sep}mode=rwc") };
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
        let store = Store { pool, backend, write_gate: Arc::default(), sqlite_file, postgres_url };
        store.migrate().await?;
        Ok(store)
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

    async fn migrate(&self) -> Result<(), StoreError> {
        self.pool
            .execute("CREATE TABLE IF NOT EXISTS kk_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await?;
        for m in MIGRATIONS {
            // Two instances starting together must not both apply a migration.
            let mut tx = self.begin_write(Lock::Migrations).await?;
            let done = sqlx::query("SELECT version FROM kk_schema WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if !done {
                let sql = if self.backend == Backend::Sqlite { m.sqlite } else { m.postgres };
                tx.execute(sql).await.map_err(|source| StoreError::Migration { version: m.version, source })?;
                sqlx::query("INSERT INTO kk_schema (version, applied_at) VALUES ($1, $2)")
                    .bind(m.version)
                    .bind(time::OffsetDateTime::now_utc().unix_timestamp())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
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
