//! The records index: what must be found without reading a patient's files. Per site
//! and patient: the source files with their stamps, the Patient's demographics and
//! identifiers (for `Patient?identifier/name/birthdate/gender`), linkage keys
//! (institution patient ids, insurance identities, kana + birth date + sex),
//! prescription numbers (for a pharmacy's presented prescription) and which resource
//! ids the patient's files yield (for a read by id). It is derived data: a database of
//! its own on SQLite (`<store>-records.db`, so that bulk indexing never holds the audit
//! log's write lock, and deleting it makes the gateway rebuild it), tables of the
//! shared database on PostgreSQL (so that every instance finds what any indexed).

use crate::store::{Backend, StoreError};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor, Row};
use std::sync::Arc;
use std::time::Duration;

/// Bumped when the layout changes: an index of another version is dropped and rebuilt.
const SCHEMA_VERSION: &str = "3";

/// The index's tables, in creation order (`{PART}` is the name column's ordering).
const TABLES: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rec_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    // One row per source file: its stamp, the patient it belongs to and what became of it
    // (0 translated, 1 an older version or a cancelled order, 2 unusable: retried when
    // its stamp changes).
    "CREATE TABLE IF NOT EXISTS rec_file (site TEXT NOT NULL, path TEXT NOT NULL, patient TEXT NOT NULL, \
     mtime BIGINT NOT NULL, size BIGINT NOT NULL, state BIGINT NOT NULL, PRIMARY KEY (site, path))",
    // (patient, site, path): a patient's files in order without a scan (on (site, path)
    // alone SQLite walked every file of the site to avoid a sort: 150 ms at 10^6 files).
    "CREATE INDEX IF NOT EXISTS rec_file_patient ON rec_file (patient, site, path)",
    // Resource id hash → patient hash: which patient to load for a read by id.
    "CREATE TABLE IF NOT EXISTS rec_resource (h BIGINT NOT NULL, p BIGINT NOT NULL, PRIMARY KEY (h, p)) {WITHOUT_ROWID}",
    // A patient id at each site holding records of it (an owner's MML and JAHIS
    // directories may both hold one patient).
    "CREATE TABLE IF NOT EXISTS rec_patient (id TEXT NOT NULL, site TEXT NOT NULL, ph BIGINT NOT NULL, \
     owner TEXT NOT NULL, local TEXT NOT NULL, birth TEXT, birth_start BIGINT, birth_end BIGINT, gender TEXT, \
     watch_mtime BIGINT NOT NULL, PRIMARY KEY (id, site))",
    "CREATE INDEX IF NOT EXISTS rec_patient_ph ON rec_patient (ph)",
    "CREATE INDEX IF NOT EXISTS rec_patient_site ON rec_patient (site, local)",
    "CREATE INDEX IF NOT EXISTS rec_patient_owner ON rec_patient (owner, id)",
    "CREATE INDEX IF NOT EXISTS rec_patient_birth ON rec_patient (birth_start)",
    // Name parts, folded as search parameters fold them (family, given, text).
    "CREATE TABLE IF NOT EXISTS rec_name (patient TEXT NOT NULL, site TEXT NOT NULL, kind TEXT NOT NULL, part TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rec_name_part ON rec_name (part {PART})",
    "CREATE INDEX IF NOT EXISTS rec_name_patient ON rec_name (patient)",
    "CREATE TABLE IF NOT EXISTS rec_ident (patient TEXT NOT NULL, site TEXT NOT NULL, system TEXT, value TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS rec_ident_value ON rec_ident (value)",
    "CREATE INDEX IF NOT EXISTS rec_ident_patient ON rec_ident (patient)",
    // Keys: linkage (`id`, `ins` with the 枝番 in `extra`, `demo`) and prescription
    // numbers (`rx`).
    "CREATE TABLE IF NOT EXISTS rec_key (patient TEXT NOT NULL, site TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, extra TEXT)",
    "CREATE INDEX IF NOT EXISTS rec_key_key ON rec_key (kind, key)",
    "CREATE INDEX IF NOT EXISTS rec_key_patient ON rec_key (patient)",
    "CREATE TABLE IF NOT EXISTS rec_dir (site TEXT NOT NULL, path TEXT NOT NULL, mtime BIGINT NOT NULL, \
     PRIMARY KEY (site, path))",
];

const DROP: &[&str] = &[
    "DROP TABLE IF EXISTS rec_file",
    "DROP TABLE IF EXISTS rec_resource",
    "DROP TABLE IF EXISTS rec_patient",
    "DROP TABLE IF EXISTS rec_name",
    "DROP TABLE IF EXISTS rec_ident",
    "DROP TABLE IF EXISTS rec_key",
    "DROP TABLE IF EXISTS rec_dir",
    "DROP TABLE IF EXISTS rec_meta",
];

/// Rows per multi-row INSERT: few statements, well under every backend's bind limit.
const ROWS_PER_INSERT: usize = 100;

/// The index database.
#[derive(Clone, Debug)]
pub struct IndexDb {
    pool: AnyPool,
    backend: Backend,
    /// Counts this process's writes, so that what was worked out from the index (a
    /// person's links) can be kept until it changes.
    writes: Arc<std::sync::atomic::AtomicU64>,
}

/// A 64-bit key of a string (the first 8 bytes of its SHA-256), for compact lookups.
pub fn key64(s: &str) -> i64 {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(b)
}

/// One source file as indexed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileRow {
    /// Path relative to the site root.
    pub path: String,
    /// Modification time (Unix ns) and size.
    pub mtime_ns: i64,
    /// Size in bytes.
    pub size: i64,
    /// [`super::unit::TRANSLATED`], [`super::unit::SUPERSEDED`] or [`super::unit::UNUSABLE`].
    pub state: i64,
}

/// A Patient as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientRow {
    /// FHIR Patient id.
    pub id: String,
    /// Site id.
    pub site: String,
    /// Owning institution.
    pub owner: String,
    /// The site's own patient id (SS-MIX2 directory), or the Patient id for other sites.
    pub local: String,
}

/// Everything the index holds about one patient at one site, replaced as a whole.
#[derive(Debug, Clone, Default)]
pub struct UnitRows {
    /// Site id.
    pub site: String,
    /// FHIR Patient id.
    pub patient: String,
    /// Owning institution.
    pub owner: String,
    /// The site's own patient id.
    pub local: String,
    /// Files.
    pub files: Vec<FileRow>,
    /// Hashes ([`key64`]) of the resource ids the files yield.
    pub resources: Vec<i64>,
    /// Birth date `YYYY-MM-DD` and its range (Unix seconds, JST) for date searches.
    pub birth: Option<(String, i64, i64)>,
    /// `male`, `female`, `other`, `unknown`.
    pub gender: Option<String>,
    /// (kind, folded part).
    pub names: Vec<(&'static str, String)>,
    /// (system, value).
    pub identifiers: Vec<(Option<String>, String)>,
    /// (kind, key, extra).
    pub keys: Vec<(&'static str, String, Option<String>)>,
    /// Modification time (ns) of what the background walker watches for this patient
    /// (the SS-MIX2 `-/ADT-00` directory).
    pub watch_mtime: i64,
    /// Whether the Patient resource itself was found (a unit may hold records only).
    pub has_patient: bool,
}

/// A search over indexed Patients. Every clause is exact: what it finds is what the
/// search parameters match on the translated Patient.
#[derive(Debug, Default)]
pub struct PatientFilter {
    clauses: Vec<String>,
    binds: Vec<Bind>,
}

#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
}

impl PatientFilter {
    /// Add `clause` (with `?` placeholders) bound to `values`.
    fn add(&mut self, clause: String, values: Vec<Bind>) {
        let mut c = String::new();
        let mut values = values.into_iter();
        for ch in clause.chars() {
            if ch == '?' {
                if let Some(v) = values.next() {
                    self.binds.push(v);
                    c.push_str(&format!("${}", self.binds.len()));
                    continue;
                }
            }
            c.push(ch);
        }
        self.clauses.push(c);
    }

    /// Only these Patient ids.
    pub fn ids(&mut self, ids: &[String]) {
        let marks = vec!["?"; ids.len().max(1)].join(",");
        let mut v: Vec<Bind> = ids.iter().map(|i| Bind::Text(i.clone())).collect();
        if v.is_empty() {
            v.push(Bind::Text(String::new()));
        }
        self.add(format!("p.id IN ({marks})"), v);
    }

    /// A name part of `kind` (`family`, `given`, or any for `name`) matching `value`
    /// (folded) as prefix, exactly, or containing it; alternatives OR-ed.
    pub fn name(&mut self, kind: &str, values: &[String], how: NameMatch, pg: bool) {
        let collate = if pg { " COLLATE \"C\"" } else { "" };
        let kinds = match kind {
            "family" => "n.kind = 'family'",
            "given" => "n.kind = 'given'",
            _ => "1 = 1",
        };
        let mut alts = Vec::new();
        let mut binds = Vec::new();
        for v in values {
            match how {
                NameMatch::Prefix => {
                    alts.push(format!("(n.part{collate} >= ?{collate} AND n.part{collate} < ?{collate})"));
                    binds.push(Bind::Text(v.clone()));
                    binds.push(Bind::Text(format!("{v}\u{10FFFF}")));
                }
                NameMatch::Exact => {
                    alts.push("n.part = ?".to_string());
                    binds.push(Bind::Text(v.clone()));
                }
                NameMatch::Contains => {
                    let f = if pg { "strpos(n.part, ?) > 0" } else { "instr(n.part, ?) > 0" };
                    alts.push(f.to_string());
                    binds.push(Bind::Text(v.clone()));
                }
            }
        }
        self.add(
            // `id IN (subquery)`, not a correlated EXISTS: the planner then starts from
            // the name index instead of testing every patient in scope (85 ms at 20,000).
            format!("p.id IN (SELECT n.patient FROM rec_name n WHERE {kinds} AND ({}))", alts.join(" OR ")),
            binds,
        );
    }

    /// An identifier matching any of `values` (system|value token forms).
    pub fn identifier(&mut self, values: &[(Option<String>, Option<String>)]) {
        let mut alts = Vec::new();
        let mut binds = Vec::new();
        for (sys, code) in values {
            let mut parts = Vec::new();
            match sys.as_deref() {
                Some("") => parts.push("i.system IS NULL".to_string()),
                Some(s) => {
                    parts.push("i.system = ?".into());
                    binds.push(Bind::Text(s.to_string()));
                }
                None => {}
            }
            if let Some(c) = code {
                parts.push("i.value = ?".into());
                binds.push(Bind::Text(c.clone()));
            }
            alts.push(if parts.is_empty() { "1 = 1".to_string() } else { parts.join(" AND ") });
        }
        self.add(
            // As for names: from the identifier index (25 ms at 20,000 patients, 0.06 ms).
            format!("p.id IN (SELECT i.patient FROM rec_ident i WHERE {})", alts.join(" OR ")),
            binds,
        );
    }

    /// Gender equal to any of `codes`.
    pub fn gender(&mut self, codes: &[String]) {
        let marks = vec!["?"; codes.len().max(1)].join(",");
        let mut v: Vec<Bind> = codes.iter().map(|c| Bind::Text(c.clone())).collect();
        if v.is_empty() {
            v.push(Bind::Text(String::new()));
        }
        self.add(format!("p.gender IN ({marks})"), v);
    }

    /// The birth date compared as the search parameters compare dates: the record's
    /// range [vs, ve) against the parameter's [start, end) under `prefix`.
    pub fn birth(&mut self, prefix: crate::fhir_api::params::Prefix, start: i64, end: i64) {
        use crate::fhir_api::params::Prefix::*;
        let (clause, v) = match prefix {
            Eq => ("p.birth_start >= ? AND p.birth_end <= ?", vec![start, end]),
            Ne => ("p.birth_start IS NOT NULL AND NOT (p.birth_start >= ? AND p.birth_end <= ?)", vec![start, end]),
            Gt => ("p.birth_end > ?", vec![end]),
            Lt => ("p.birth_start < ?", vec![start]),
            Ge => ("p.birth_end > ?", vec![start]),
            Le => ("p.birth_start < ?", vec![end]),
        };
        self.add(clause.to_string(), v.into_iter().map(Bind::Int).collect());
    }

    /// Only Patients of these owners or with these ids (what the reader may see at all).
    pub fn scope(&mut self, owners: &[String], ids: &[String]) {
        let mut alts = Vec::new();
        let mut binds = Vec::new();
        if !owners.is_empty() {
            alts.push(format!("p.owner IN ({})", vec!["?"; owners.len()].join(",")));
            binds.extend(owners.iter().map(|o| Bind::Text(o.clone())));
        }
        if !ids.is_empty() {
            alts.push(format!("p.id IN ({})", vec!["?"; ids.len()].join(",")));
            binds.extend(ids.iter().map(|o| Bind::Text(o.clone())));
        }
        if alts.is_empty() {
            alts.push("1 = 0".into());
        }
        self.add(format!("({})", alts.join(" OR ")), binds);
    }
}

/// How a string search parameter matches a name part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameMatch {
    /// Starts with.
    Prefix,
    /// Equal.
    Exact,
    /// Contains.
    Contains,
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    binds: &'q [Bind],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s.as_str()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    q
}

/// Placeholders for `rows` rows of `cols` columns: `$1..` on PostgreSQL, `?` on SQLite
/// (sqlx looks every `$N` up by name among all the statement's parameters, which
/// made a 100-row insert spend most of its time finding its own parameters).
fn values(backend: Backend, rows: usize, cols: usize) -> String {
    let mut s = String::new();
    for r in 0..rows {
        s.push_str(if r == 0 { "(" } else { ",(" });
        for c in 0..cols {
            if c > 0 {
                s.push(',');
            }
            match backend {
                Backend::Sqlite => s.push('?'),
                Backend::Postgres => s.push_str(&format!("${}", r * cols + c + 1)),
            }
        }
        s.push(')');
    }
    s
}

impl IndexDb {
    /// Open (creating) the index at `url`; an index of another layout is dropped.
    pub async fn open(url: &str) -> Result<IndexDb, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if let Some(rest) = url.strip_prefix("sqlite://") {
            crate::store::create_private(std::path::Path::new(rest.split('?').next().unwrap_or(rest)))?;
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.split(':').next().unwrap_or("").to_string()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
            }
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Derived data: a crash loses at most the last writes, which the
                        // next pass or read indexes again, so no flush per commit.
                        conn.execute("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000; PRAGMA cache_size=-16000; PRAGMA wal_autocheckpoint=8000;").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let db = IndexDb { pool, backend, writes: Arc::default() };
        db.create().await?;
        Ok(db)
    }

    async fn create(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        if self.backend == Backend::Postgres {
            // Instances starting together create the tables once.
            sqlx::query("SELECT pg_advisory_lock($1)").bind(7263010i64).execute(&mut *conn).await?;
        }
        let made = async {
            conn.execute("CREATE TABLE IF NOT EXISTS rec_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)").await?;
            let v: Option<String> = sqlx::query_scalar("SELECT value FROM rec_meta WHERE key = 'schema'")
                .fetch_optional(&mut *conn)
                .await?;
            if v.as_deref() != Some(SCHEMA_VERSION) {
                if v.is_some() {
                    tracing::warn!(
                        from = v.as_deref().unwrap_or(""),
                        "the records index has another layout; rebuilding it"
                    );
                }
                for d in DROP {
                    conn.execute(*d).await?;
                }
            }
            for t in TABLES {
                let (rowid, part) = match self.backend {
                    Backend::Sqlite => ("WITHOUT ROWID", ""),
                    Backend::Postgres => ("", "COLLATE \"C\""),
                };
                conn.execute(sqlx::AssertSqlSafe(t.replace("{WITHOUT_ROWID}", rowid).replace("{PART}", part))).await?;
            }
            sqlx::query(
                "INSERT INTO rec_meta (key, value) VALUES ('schema', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
            )
            .bind(SCHEMA_VERSION)
            .execute(&mut *conn)
            .await?;
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if self.backend == Backend::Postgres {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(7263010i64).execute(&mut *conn).await;
        }
        made?;
        Ok(())
    }

    /// The engine in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The files indexed for (`site`, `patient`).
    pub async fn files_of(&self, site: &str, patient: &str) -> Result<Vec<FileRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT path, mtime, size, state FROM rec_file WHERE patient = $1 AND site = $2 ORDER BY patient, site, path",
        )
            .bind(patient)
            .bind(site)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(FileRow { path: r.try_get(0)?, mtime_ns: r.try_get(1)?, size: r.try_get(2)?, state: r.try_get(3)? })
            })
            .collect()
    }

    /// Replace everything indexed for the patients of `units` (one transaction).
    /// `fresh` skips the deletes when the caller knows nothing is indexed for them yet
    /// (the first index of a storage).
    pub async fn write_units(&self, units: &[UnitRows], fresh: bool) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if !fresh {
            for u in units {
                for sql in [
                    "DELETE FROM rec_file WHERE patient = $1 AND site = $2",
                    "DELETE FROM rec_patient WHERE id = $1 AND site = $2",
                    "DELETE FROM rec_name WHERE patient = $1 AND site = $2",
                    "DELETE FROM rec_ident WHERE patient = $1 AND site = $2",
                    "DELETE FROM rec_key WHERE patient = $1 AND site = $2",
                ] {
                    sqlx::query(sql).bind(&u.patient).bind(&u.site).execute(&mut *tx).await?;
                }
            }
        }
        // Files.
        let files: Vec<(&UnitRows, &FileRow)> =
            units.iter().flat_map(|u| u.files.iter().map(move |f| (u, f))).collect();
        for chunk in files.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO rec_file (site, path, patient, mtime, size, state) VALUES {} \
                 ON CONFLICT (site, path) DO UPDATE SET patient = excluded.patient, mtime = excluded.mtime, \
                 size = excluded.size, state = excluded.state",
                values(self.backend, chunk.len(), 6)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (u, f) in chunk {
                q = q.bind(&u.site).bind(&f.path).bind(&u.patient).bind(f.mtime_ns).bind(f.size).bind(f.state);
            }
            q.execute(&mut *tx).await?;
        }
        // Resource ids → patient.
        let mut resources: Vec<(i64, i64)> = units
            .iter()
            .flat_map(|u| {
                let p = key64(&u.patient);
                u.resources.iter().map(move |h| (*h, p))
            })
            .collect();
        // In key order, each insert lands beside the one before: far fewer B-tree pages
        // touched than random keys one after another.
        resources.sort_unstable();
        resources.dedup();
        for chunk in resources.chunks(ROWS_PER_INSERT * 2) {
            let sql = format!(
                "INSERT INTO rec_resource (h, p) VALUES {} ON CONFLICT (h, p) DO NOTHING",
                values(self.backend, chunk.len(), 2)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (h, p) in chunk {
                q = q.bind(*h).bind(*p);
            }
            q.execute(&mut *tx).await?;
        }
        // Patients.
        let patients: Vec<&UnitRows> = units.iter().filter(|u| u.has_patient).collect();
        for chunk in patients.chunks(ROWS_PER_INSERT / 2) {
            let sql = format!(
                "INSERT INTO rec_patient (id, ph, site, owner, local, birth, birth_start, birth_end, gender, watch_mtime) \
                 VALUES {} ON CONFLICT (id, site) DO UPDATE SET ph = excluded.ph, owner = excluded.owner, \
                 local = excluded.local, birth = excluded.birth, birth_start = excluded.birth_start, \
                 birth_end = excluded.birth_end, gender = excluded.gender, watch_mtime = excluded.watch_mtime",
                values(self.backend, chunk.len(), 10)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for u in chunk {
                let (birth, bs, be) = match &u.birth {
                    Some((b, s, e)) => (Some(b.clone()), Some(*s), Some(*e)),
                    None => (None, None, None),
                };
                q = q
                    .bind(&u.patient)
                    .bind(key64(&u.patient))
                    .bind(&u.site)
                    .bind(&u.owner)
                    .bind(&u.local)
                    .bind(birth)
                    .bind(bs)
                    .bind(be)
                    .bind(u.gender.clone())
                    .bind(u.watch_mtime);
            }
            q.execute(&mut *tx).await?;
        }
        let names: Vec<(&UnitRows, &str, &str)> =
            patients.iter().flat_map(|u| u.names.iter().map(move |(k, v)| (*u, *k, v.as_str()))).collect();
        for chunk in names.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO rec_name (patient, site, kind, part) VALUES {}",
                values(self.backend, chunk.len(), 4)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (u, k, v) in chunk {
                q = q.bind(&u.patient).bind(&u.site).bind(*k).bind(*v);
            }
            q.execute(&mut *tx).await?;
        }
        let idents: Vec<(&UnitRows, Option<&str>, &str)> = patients
            .iter()
            .flat_map(|u| u.identifiers.iter().map(move |(s, v)| (*u, s.as_deref(), v.as_str())))
            .collect();
        for chunk in idents.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO rec_ident (patient, site, system, value) VALUES {}",
                values(self.backend, chunk.len(), 4)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (u, s, v) in chunk {
                q = q.bind(&u.patient).bind(&u.site).bind(s.map(str::to_string)).bind(*v);
            }
            q.execute(&mut *tx).await?;
        }
        let keys: Vec<(&UnitRows, &str, &str, Option<&str>)> =
            units.iter().flat_map(|u| u.keys.iter().map(move |(k, v, e)| (u, *k, v.as_str(), e.as_deref()))).collect();
        for chunk in keys.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO rec_key (patient, site, kind, key, extra) VALUES {}",
                values(self.backend, chunk.len(), 5)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (u, k, v, e) in chunk {
                q = q.bind(&u.patient).bind(&u.site).bind(*k).bind(*v).bind(e.map(str::to_string));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(())
    }

    /// A number that changes with every change of the index, when this process is its
    /// only writer (the embedded SQLite file); `None` on PostgreSQL, where other
    /// instances write it too.
    pub fn generation(&self) -> Option<u64> {
        (self.backend == Backend::Sqlite).then(|| self.writes.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Forget a patient at a site (its directory is gone).
    pub async fn remove_patient(&self, site: &str, patient: &str) -> Result<(), sqlx::Error> {
        let u = UnitRows { site: site.into(), patient: patient.into(), ..Default::default() };
        self.write_units(std::slice::from_ref(&u), false).await
    }

    /// The patients whose files yield a resource with id hash `h`.
    pub async fn locate(&self, h: i64) -> Result<Vec<PatientRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT p.id, p.site, p.owner, p.local FROM rec_resource r JOIN rec_patient p ON p.ph = r.p WHERE r.h = $1",
        )
        .bind(h)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(patient_row).collect()
    }

    /// The indexed Patients among `ids`.
    pub async fn patients(&self, ids: &[&str]) -> Result<Vec<PatientRow>, sqlx::Error> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id, site, owner, local FROM rec_patient WHERE id IN ({})",
                (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(",")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(patient_row(&r)?);
            }
        }
        Ok(out)
    }

    /// The Patients `filter` selects, at most `limit` (ordered by id).
    pub async fn find_patients(&self, filter: &PatientFilter, limit: i64) -> Result<Vec<PatientRow>, sqlx::Error> {
        let mut sql = String::from("SELECT p.id, p.site, p.owner, p.local FROM rec_patient p");
        if !filter.clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&filter.clauses.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY p.id LIMIT {limit}"));
        let rows = bind_all(sqlx::query(sqlx::AssertSqlSafe(sql)), &filter.binds).fetch_all(&self.pool).await?;
        rows.iter().map(patient_row).collect()
    }

    /// Patients with key (`kind`, `key`): (patient, site).
    pub async fn with_key(&self, kind: &str, key: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
        let rows = sqlx::query("SELECT patient, site FROM rec_key WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Every key of `patients` at every site: (patient, kind, key, extra).
    pub async fn keys_of(
        &self,
        patients: &[&str],
    ) -> Result<Vec<(String, String, String, Option<String>)>, sqlx::Error> {
        let mut out = Vec::new();
        for chunk in patients.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT patient, kind, key, extra FROM rec_key WHERE patient IN ({})",
                (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(",")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q.bind(*p);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
            }
        }
        Ok(out)
    }

    /// Linkage facts of `patients` at each of their sites: (patient, site, owner, birth
    /// date, gender).
    #[allow(clippy::type_complexity)]
    pub async fn demographics(
        &self,
        patients: &[&str],
    ) -> Result<Vec<(String, String, String, Option<String>, Option<String>)>, sqlx::Error> {
        let mut out = Vec::new();
        for chunk in patients.chunks(500) {
            let sql = format!(
                "SELECT id, site, owner, birth, gender FROM rec_patient WHERE id IN ({})",
                (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(",")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q.bind(*p);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?));
            }
        }
        Ok(out)
    }

    /// Patients of `site` after local id `after`, `limit` of them: (local, patient,
    /// watched mtime), for the walker's passes.
    pub async fn patients_page(
        &self,
        site: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT local, id, watch_mtime FROM rec_patient WHERE site = $1 AND local > $2 ORDER BY local LIMIT $3",
        )
        .bind(site)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// Whether `site` has the patient with local id `local` indexed.
    pub async fn has_local(&self, site: &str, local: &str) -> Result<bool, sqlx::Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rec_patient WHERE site = $1 AND local = $2")
            .bind(site)
            .bind(local)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// Every indexed file of `site` with its stamp and patient (flat sites, a few
    /// thousand files), by path.
    pub async fn site_files(&self, site: &str) -> Result<Vec<(String, String, i64, i64)>, sqlx::Error> {
        let rows = sqlx::query("SELECT path, patient, mtime, size FROM rec_file WHERE site = $1 ORDER BY path")
            .bind(site)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
    }

    /// Directory modification times of `site` recorded by the walker.
    pub async fn dirs(&self, site: &str) -> Result<std::collections::HashMap<String, i64>, sqlx::Error> {
        let rows =
            sqlx::query("SELECT path, mtime FROM rec_dir WHERE site = $1").bind(site).fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Record directory modification times for `site`.
    pub async fn set_dirs(&self, site: &str, dirs: &[(String, i64)]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for chunk in dirs.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO rec_dir (site, path, mtime) VALUES {} ON CONFLICT (site, path) DO UPDATE SET mtime = excluded.mtime",
                values(self.backend, chunk.len(), 3)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (p, m) in chunk {
                q = q.bind(site).bind(p).bind(*m);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Counts for status: (patients, files) of `site`.
    pub async fn counts(&self, site: &str) -> Result<(i64, i64), sqlx::Error> {
        let p: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rec_patient WHERE site = $1")
            .bind(site)
            .fetch_one(&self.pool)
            .await?;
        let f: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rec_file WHERE site = $1")
            .bind(site)
            .fetch_one(&self.pool)
            .await?;
        Ok((p, f))
    }

    /// A value of `rec_meta`.
    pub async fn meta(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT value FROM rec_meta WHERE key = $1").bind(key).fetch_optional(&self.pool).await
    }

    /// Set a value of `rec_meta`.
    pub async fn set_meta(&self, key: &str, value: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO rec_meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    /// True when the index answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

fn patient_row(r: &sqlx::any::AnyRow) -> Result<PatientRow, sqlx::Error> {
    Ok(PatientRow { id: r.try_get(0)?, site: r.try_get(1)?, owner: r.try_get(2)?, local: r.try_get(3)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_in_order() {
        assert_eq!(values(Backend::Postgres, 2, 3), "($1,$2,$3),($4,$5,$6)");
        assert_eq!(values(Backend::Sqlite, 2, 2), "(?,?),(?,?)");
        let mut f = PatientFilter::default();
        f.gender(&["female".into()]);
        f.ids(&["a".into(), "b".into()]);
        assert_eq!(f.clauses, ["p.gender IN ($1)", "p.id IN ($2,$3)"]);
    }

    #[test]
    fn key64_is_stable() {
        assert_eq!(key64("patient-c18f07549e960059f1f6d75c"), key64("patient-c18f07549e960059f1f6d75c"));
        assert_ne!(key64("a"), key64("b"));
    }
}
