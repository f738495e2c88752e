//! SS-MIX2 standardized storage (標準化ストレージ): a directory tree
//! `root/<pid 0-3>/<pid 3-6>/<pid>/<date or ->/<data type>/<file>` of HL7 v2.5 files
//! whose names carry `pid_date_type_order_timestamp_department_flag`. For each order
//! the newest version wins; an order whose newest version is flagged 0 is deleted.
//! The tree is read on every call, so files added later are seen without a restart.

use crate::{Location, SourceError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The fields of an SS-MIX2 file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    /// Patient id.
    pub patient_id: String,
    /// Date of care `YYYYMMDD`, or None for `-` (data not tied to a date).
    pub date: Option<String>,
    /// Data type (`ADT-00`, `OMP-01`, `OML-11`, `PPR-01` ...).
    pub data_type: String,
    /// Order number (15 characters; dummies of all 9s or 0s for non-order data).
    pub order_no: String,
    /// Timestamp `YYYYMMDDHHMMSSfff` of the version.
    pub timestamp: String,
    /// Department code, or None for `-`.
    pub department: Option<String>,
    /// True for a valid version, false for a deleted (取消) one.
    pub valid: bool,
}

impl FileName {
    /// Parse a file name.
    pub fn parse(name: &str) -> Result<FileName, String> {
        let parts: Vec<&str> = name.split('_').collect();
        let [pid, date, ty, order, ts, dept, flag] = parts[..] else {
            return Err(format!(
                "`{name}` is not an SS-MIX2 file name (7 fields separated by `_`, found {})",
                parts.len()
            ));
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("`{name}`: patient id `{pid}` is not alphanumeric"));
        }
        let date = match date {
            "-" => None,
            d if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) => Some(d.to_string()),
            d => return Err(format!("`{name}`: date `{d}` is neither YYYYMMDD nor `-`")),
        };
        if ty.is_empty() || !ty.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-') {
            return Err(format!("`{name}`: data type `{ty}` is malformed"));
        }
        if ts.len() != 17 || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{name}`: timestamp `{ts}` is not 17 digits (YYYYMMDDHHMMSSfff)"));
        }
        let valid = match flag {
            "1" => true,
            "0" => false,
            f => return Err(format!("`{name}`: condition flag `{f}` is neither 1 nor 0")),
        };
        Ok(FileName {
            patient_id: pid.into(),
            date,
            data_type: ty.into(),
            order_no: order.into(),
            timestamp: ts.into(),
            department: (dept != "-").then(|| dept.to_string()),
            valid,
        })
    }

    /// True for the dummy order numbers used by non-order data (ADT-00, PPR-01 ...).
    pub fn is_dummy_order(&self) -> bool {
        self.order_no.is_empty() || self.order_no.bytes().all(|b| b == b'9') || self.order_no.bytes().all(|b| b == b'0')
    }

    /// Versions with the same key are versions of one record.
    fn key(&self) -> (String, String, String, String) {
        let date = if self.is_dummy_order() { self.date.clone().unwrap_or_default() } else { String::new() };
        (self.patient_id.clone(), self.data_type.clone(), self.order_no.clone(), date)
    }
}

/// A file in the storage with its parsed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Full path.
    pub path: PathBuf,
    /// Parsed name.
    pub name: FileName,
}

/// The current view of a patient's (or the whole storage's) records.
#[derive(Debug, Default)]
pub struct Scan {
    /// Newest valid version of every record, ordered by date, type and order.
    pub files: Vec<StoredFile>,
    /// Files that could not be used (misfiled, bad names), each a located error.
    pub problems: Vec<SourceError>,
}

/// When a file last changed, as far as a reader can tell without opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// Modification time, Unix nanoseconds.
    pub mtime_ns: i64,
    /// Size in bytes.
    pub size: i64,
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Stamp { mtime_ns, size: i64::try_from(meta.len()).unwrap_or(i64::MAX) }
    }
}

/// A message file of a patient as listed, not yet chosen among its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedFile {
    /// Full path.
    pub path: PathBuf,
    /// Parsed name.
    pub name: FileName,
    /// Size and modification time.
    pub stamp: Stamp,
}

/// Everything in one patient's directory.
#[derive(Debug, Default)]
pub struct PatientFiles {
    /// Correctly named and filed messages, in path order.
    pub files: Vec<ListedFile>,
    /// Files that could not be used, each a located error.
    pub problems: Vec<SourceError>,
    /// The patient's directories (its own, dates, types), each with its modification
    /// time taken before it was listed: a file added, renamed or removed changes its
    /// directory's time, so comparing these tells whether a listing is still current.
    pub dirs: Vec<(PathBuf, i64)>,
}

/// Modification time (Unix ns) of a file or directory, `None` when it is gone.
pub fn mtime_ns(path: &Path) -> Option<i64> {
    std::fs::metadata(path).ok().map(|m| Stamp::of(&m).mtime_ns)
}

/// Of one patient's listed messages, the newest valid version of every record, ordered
/// by date, type and order: the newest timestamp wins, at equal timestamps a deletion
/// wins, and a record whose newest version is flagged `0` is deleted.
pub fn live(files: &[ListedFile]) -> Vec<&ListedFile> {
    let mut versions: BTreeMap<(String, String, String, String), &ListedFile> = BTreeMap::new();
    for file in files {
        match versions.entry(file.name.key()) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(file);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let cur = &o.get().name;
                if (file.name.timestamp.as_str(), !file.name.valid) > (cur.timestamp.as_str(), !cur.valid) {
                    o.insert(file);
                }
            }
        }
    }
    let mut out: Vec<&ListedFile> = versions.into_values().filter(|f| f.name.valid).collect();
    out.sort_by(|a, b| {
        (a.name.date.as_deref(), &a.name.data_type, &a.name.order_no).cmp(&(
            b.name.date.as_deref(),
            &b.name.data_type,
            &b.name.order_no,
        ))
    });
    out
}

/// An SS-MIX2 storage root.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

fn io_problem(path: &Path, e: std::io::Error) -> SourceError {
    SourceError::at(Location { file: Some(path.display().to_string()), ..Default::default() }, e.to_string())
}

/// The subdirectories of `dir` by name, sorted.
pub fn subdirs(dir: &Path) -> Result<Vec<(String, PathBuf)>, SourceError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_problem(dir, e))? {
        let entry = entry.map_err(|e| io_problem(dir, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

impl Storage {
    /// A storage at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Storage {
        Storage { root: root.into() }
    }

    /// The storage root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a patient (`root/pid[0..3]/pid[3..6]/pid`).
    pub fn patient_dir(&self, pid: &str) -> Option<PathBuf> {
        if pid.len() < 6 || !pid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        Some(self.root.join(&pid[0..3]).join(&pid[3..6]).join(pid))
    }

    /// Where one version of a message is stored: `fields` are patient id, date (`-`
    /// for none), data type, order number, timestamp and department (`-` for none);
    /// `valid` is the deletion flag (false: `_0`, withdrawn). The inverse of
    /// [`FileName::parse`] over the standard layout.
    pub fn version_path(&self, fields: [&str; 6], valid: bool) -> PathBuf {
        let [pid, date, kind, order, ts, dept] = fields;
        let flag = if valid { 1 } else { 0 };
        let dir = self.patient_dir(pid).unwrap_or_else(|| self.root.join(pid));
        dir.join(date).join(kind).join(format!("{pid}_{date}_{kind}_{order}_{ts}_{dept}_{flag}"))
    }

    /// Every patient id in the storage.
    pub fn patient_ids(&self) -> Result<Vec<String>, SourceError> {
        let mut ids = Vec::new();
        for (_, a) in subdirs(&self.root)? {
            for (_, b) in subdirs(&a)? {
                ids.extend(subdirs(&b)?.into_iter().map(|(name, _)| name));
            }
        }
        Ok(ids)
    }

    /// The current records of one patient.
    pub fn scan_patient(&self, pid: &str) -> Result<Scan, SourceError> {
        let listed = self.patient_files(pid)?;
        let files = live(&listed.files).into_iter().map(|f| StoredFile { path: f.path.clone(), name: f.name.clone() });
        Ok(Scan { files: files.collect(), problems: listed.problems })
    }

    /// Every correctly named and filed message of one patient, each with its size and
    /// modification time (what tells a reader that something changed), and the located
    /// problems (misfiled files, bad names). A patient without a directory has none.
    pub fn patient_files(&self, pid: &str) -> Result<PatientFiles, SourceError> {
        let mut out = PatientFiles::default();
        let Some(dir) = self.patient_dir(pid) else { return Ok(out) };
        if !dir.is_dir() {
            return Ok(out);
        }
        // Each directory's time is taken before it is read: a change while listing
        // shows as a different time at the next comparison.
        let watch = |p: &Path, out: &mut PatientFiles| out.dirs.push((p.to_path_buf(), mtime_ns(p).unwrap_or(0)));
        watch(&dir, &mut out);
        for (date_dir, date_path) in subdirs(&dir)? {
            watch(&date_path, &mut out);
            for (type_dir, type_path) in subdirs(&date_path)? {
                watch(&type_path, &mut out);
                for entry in std::fs::read_dir(&type_path).map_err(|e| io_problem(&type_path, e))? {
                    let entry = entry.map_err(|e| io_problem(&type_path, e))?;
                    let path = entry.path();
                    let file_name = entry.file_name().to_string_lossy().into_owned();
                    let located = |msg: String| {
                        SourceError::at(Location { file: Some(path.display().to_string()), ..Default::default() }, msg)
                    };
                    let name = match FileName::parse(&file_name) {
                        Ok(n) => n,
                        Err(m) => {
                            out.problems.push(located(m));
                            continue;
                        }
                    };
                    let expected_date = name.date.as_deref().unwrap_or("-");
                    if name.patient_id != pid || name.data_type != type_dir || expected_date != date_dir {
                        out.problems.push(located(format!(
                            "misfiled: the name says patient {}, date {}, type {} but the file is stored under {pid}/{date_dir}/{type_dir}",
                            name.patient_id, expected_date, name.data_type
                        )));
                        continue;
                    }
                    // A file removed between listing and stat is simply not there.
                    let Ok(meta) = entry.metadata() else { continue };
                    out.files.push(ListedFile { path, name, stamp: Stamp::of(&meta) });
                }
            }
        }
        out.files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
    /// The current records of every patient.
    pub fn scan_all(&self) -> Result<Scan, SourceError> {
        let mut all = Scan::default();
        for pid in self.patient_ids()? {
            let s = self.scan_patient(&pid)?;
            all.files.extend(s.files);
            all.problems.extend(s.problems);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_names() {
        let n = FileName::parse("9999013_20110701_OMP-01_000000011000185_20110701224603984_01_1").unwrap();
        assert_eq!(n.patient_id, "9999013");
        assert_eq!(n.date.as_deref(), Some("20110701"));
        assert_eq!(n.data_type, "OMP-01");
        assert_eq!(n.department.as_deref(), Some("01"));
        assert!(n.valid && !n.is_dummy_order());
        let n = FileName::parse("9999013_-_ADT-00_999999999999999_20111220224447339_-_1").unwrap();
        assert_eq!((n.date.clone(), n.department.clone(), n.is_dummy_order()), (None, None, true));
        for bad in [
            "x",
            "9999013_2011_OMP-01_1_20110701224603984_01_1",
            "9999013_-_ADT-00_9_2011_-_1",
            "9999013_-_ADT-00_9_20111220224447339_-_2",
        ] {
            assert!(FileName::parse(bad).is_err(), "{bad}");
        }
    }

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"MSH|^~\\&|").unwrap();
    }

    #[test]
    fn newest_version_wins_and_deletions_remove() {
        let root = std::env::temp_dir().join(format!("kk-ssmix2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let d = "000/000/0000001";
        touch(&root, &format!("{d}/20200101/OMP-01/0000001_20200101_OMP-01_000000000000001_20200101100000000_01_1"));
        touch(&root, &format!("{d}/20200101/OMP-01/0000001_20200101_OMP-01_000000000000001_20200101110000000_01_1"));
        touch(&root, &format!("{d}/20200101/OMP-01/0000001_20200101_OMP-01_000000000000002_20200101100000000_01_1"));
        touch(&root, &format!("{d}/20200101/OMP-01/0000001_20200101_OMP-01_000000000000002_20200101120000000_01_0"));
        touch(&root, &format!("{d}/-/ADT-00/0000001_-_ADT-00_999999999999999_20200101100000000_-_1"));
        touch(&root, &format!("{d}/-/ADT-00/0000001_-_ADT-00_999999999999999_20200301100000000_-_1"));
        touch(&root, &format!("{d}/20200101/ADT-31/9999013_20110630_OMP-11_123456789012345_20110701113813225_01_1"));
        let s = Storage::new(&root);
        assert_eq!(s.patient_ids().unwrap(), vec!["0000001"]);
        let scan = s.scan_patient("0000001").unwrap();
        let names: Vec<_> = scan.files.iter().map(|f| (f.name.data_type.as_str(), f.name.timestamp.as_str())).collect();
        assert_eq!(names, vec![("ADT-00", "20200301100000000"), ("OMP-01", "20200101110000000")]);
        assert_eq!(scan.problems.len(), 1);
        assert!(scan.problems[0].message.contains("misfiled"));
        // Picked up without re-opening.
        touch(&root, &format!("{d}/20200102/OML-11/0000001_20200102_OML-11_000000000000003_20200102100000000_01_1"));
        assert_eq!(s.scan_patient("0000001").unwrap().files.len(), 3);
        assert!(s.scan_patient("../etc").unwrap().files.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
