//! A storage generator for hub-scale benchmarks: an SS-MIX2 tree of N patients, each
//! with an ADT-00 (patient information, insurance) and M visits of an outpatient
//! prescription (OMP-01, RDE^O11) and a laboratory result (OML-11, OUL^R22), encoded
//! ISO-2022-JP in the real directory layout. Every 10th prescription has a second,
//! newer version; every 25th is cancelled by a newer version flagged `0`. All people
//! are fictional; patient ids are consecutive 10-digit numbers.

use crate::demo::samples::{adt00, iso2022jp, oml11_on, omp01_on, write_bytes, HubPatient};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What to generate.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The storage root.
    pub root: PathBuf,
    /// Patients.
    pub patients: u64,
    /// Visits per patient (each a prescription and a lab result).
    pub visits: u64,
    /// The first patient id (then consecutive).
    pub first_id: u64,
    /// Writer threads.
    pub threads: usize,
}

/// What was written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Files (message versions) written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

const FAMILY: [(&str, &str); 12] = [
    ("佐藤", "サトウ"),
    ("鈴木", "スズキ"),
    ("高橋", "タカハシ"),
    ("田中", "タナカ"),
    ("伊藤", "イトウ"),
    ("渡辺", "ワタナベ"),
    ("山本", "ヤマモト"),
    ("中村", "ナカムラ"),
    ("小林", "コバヤシ"),
    ("加藤", "カトウ"),
    ("吉田", "ヨシダ"),
    ("山田", "ヤマダ"),
];
const GIVEN: [(&str, &str, &str); 10] = [
    ("花子", "ハナコ", "F"),
    ("一郎", "イチロウ", "M"),
    ("美咲", "ミサキ", "F"),
    ("健太", "ケンタ", "M"),
    ("陽子", "ヨウコ", "F"),
    ("大輔", "ダイスケ", "M"),
    ("恵子", "ケイコ", "F"),
    ("誠", "マコト", "M"),
    ("久美子", "クミコ", "F"),
    ("翔", "ショウ", "M"),
];

/// The id of the `n`th generated patient of `spec`.
pub fn patient_id(spec: &Spec, n: u64) -> String {
    format!("{:010}", spec.first_id + n)
}

/// The fictional person behind patient number `n`, as the messages name them.
fn with_person<R>(id: &str, n: u64, f: impl FnOnce(&HubPatient<'_>) -> R) -> R {
    let (fam, given) = (FAMILY[(n % 12) as usize], GIVEN[((n / 12) % 10) as usize]);
    let birth = format!("{}{:02}{:02}", 1930 + n % 70, 1 + n % 12, 1 + n % 28);
    let (phone, bango) = (format!("09969-1-{:04}", n % 10_000), format!("{}", 1000 + n % 9000));
    f(&HubPatient {
        id,
        kanji: (fam.0, given.0),
        kana: (fam.1, given.1),
        birth: &birth,
        sex: given.2,
        address: "南海県黒潮村黒島１２３",
        zip: "891-9999",
        phone: &phone,
        insurer: "67461001",
        kigo: "黒島",
        bango: &bango,
    })
}

/// Write one message version; returns its bytes.
fn put(root: &Path, fields: [&str; 6], valid: bool, text: &str) -> Result<u64, String> {
    let body = iso2022jp(text)?;
    write_bytes(&kakehashi_adapters::ss_mix2::Storage::new(root).version_path(fields, valid), &body)?;
    Ok(body.len() as u64)
}

/// Write visit `v` of patient `id` (number `n`): a prescription (with a second version
/// every 10th visit and a cancellation every 25th) and a lab result. Returns (files, bytes).
fn visit(root: &Path, p: &HubPatient<'_>, n: u64, v: u64) -> Result<(u64, u64), String> {
    let id = p.id;
    // A visit every five weeks or so, across the last years.
    let day = v * 37 + n % 30;
    let date = format!("{}{:02}{:02}", 2020 + (day / 336) % 7, 1 + (day / 28) % 12, 1 + day % 28);
    let rx = format!("{:015}", (n * 1000 + v * 2) % 1_000_000_000_000_000);
    let lab = format!("{:015}", (n * 1000 + v * 2 + 1) % 1_000_000_000_000_000);
    let text = omp01_on(p, &rx, &date);
    let mut bytes = put(root, [id, &date, "OMP-01", &rx, &format!("{date}103100000"), "01"], true, &text)?;
    let mut files = 1;
    if v % 10 == 3 {
        bytes += put(root, [id, &date, "OMP-01", &rx, &format!("{date}113100000"), "01"], true, &text)?;
        files += 1;
    }
    if v % 25 == 7 {
        bytes += put(root, [id, &date, "OMP-01", &rx, &format!("{date}123100000"), "01"], false, &text)?;
        files += 1;
    }
    bytes +=
        put(root, [id, &date, "OML-11", &lab, &format!("{date}150000000"), "01"], true, &oml11_on(p, &lab, &date))?;
    Ok((files + 1, bytes))
}

/// Write one patient's messages; returns (files, bytes).
fn write_patient(root: &Path, id: &str, n: u64, visits: u64) -> Result<(u64, u64), String> {
    with_person(id, n, |p| {
        let mut bytes = put(root, [id, "-", "ADT-00", "999999999999999", "20250401090000000", "-"], true, &adt00(p))?;
        let mut files = 1;
        for v in 0..visits {
            let (f, b) = visit(root, p, n, v)?;
            files += f;
            bytes += b;
        }
        Ok((files, bytes))
    })
}

/// The number of a generated patient id (its digits), which picks its fictional person.
fn number(local: &str) -> u64 {
    local.parse().unwrap_or(0)
}

/// Add visit `v` (a new prescription and lab result, numbered after the patient's
/// generated ones when `v` is larger) to existing patient `local`.
pub fn write_visit(root: &Path, local: &str, v: u64) -> Result<(), String> {
    let n = number(local);
    with_person(local, n, |p| visit(root, p, n, v)).map(|_| ())
}

/// Write a new patient with demographics only (an ADT-00).
pub fn write_patient_only(root: &Path, local: &str) -> Result<(), String> {
    write_patient(root, local, number(local), 0).map(|_| ())
}

/// Write the storage of `spec`, reporting progress to `progress` (patients done).
pub fn generate(spec: &Spec, progress: &AtomicU64) -> Result<Written, String> {
    let threads = spec.threads.max(1) as u64;
    let (files, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (files, bytes) = (&files, &bytes);
                s.spawn(move || -> Result<(), String> {
                    let mut n = t;
                    while n < spec.patients {
                        let (f, b) = write_patient(&spec.root, &patient_id(spec, n), n, spec.visits)?;
                        files.fetch_add(f, Relaxed);
                        bytes.fetch_add(b, Relaxed);
                        progress.fetch_add(1, Relaxed);
                        n += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().map_err(|_| "a generator thread panicked".to_string())?)
    })?;
    Ok(Written { files: files.into_inner(), bytes: bytes.into_inner() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_storage_is_valid_ss_mix2_with_versions_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec { root: dir.path().to_path_buf(), patients: 3, visits: 8, first_id: 2_000_000_000, threads: 2 };
        let w = generate(&spec, &AtomicU64::new(0)).unwrap();
        // Per patient: ADT + 8 prescriptions + 1 newer version + 1 deletion + 8 lab results.
        assert_eq!(w.files, 3 * (1 + 8 + 1 + 1 + 8));
        let storage = kakehashi_adapters::ss_mix2::Storage::new(dir.path());
        let mut ids = storage.patient_ids().unwrap();
        ids.sort();
        assert_eq!(ids, ["2000000000", "2000000001", "2000000002"]);
        let scan = storage.scan_patient("2000000001").unwrap();
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        // The cancelled prescription is gone; the versioned one counts once.
        assert_eq!(scan.files.len(), 1 + 7 + 8);
        let owner = crate::sites::Owner { code: "4610100011".into(), name: "Hub".into(), site: "hub".into() };
        for f in &scan.files {
            let t =
                crate::sites::translate_hl7_file(&f.path, &owner, Some(kakehashi_adapters::text::Charset::Iso2022Jp))
                    .unwrap_or_else(|e| panic!("{}: {e}", f.path.display()));
            assert!(!t.resources.is_empty());
        }
    }
}
