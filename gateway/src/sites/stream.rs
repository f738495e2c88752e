//! Offline translation in bounded memory: a whole SS-MIX2 storage, a directory of
//! messages or documents, or a file holding several HL7 v2 messages, translated one
//! unit at a time (an SS-MIX2 patient, a message, a document) and written out as it
//! goes — NDJSON (one resource a line) for large inputs, or one Bundle.

use super::{Owner, Ownership};
use kakehashi_adapters::ss_mix2::Storage;
use kakehashi_adapters::text::Charset;
use kakehashi_adapters::{ParseOptions, SourceError};
use kakehashi_fhir::{IssueSeverity, IssueType, OperationOutcome, OperationOutcomeIssue, Resource};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The format of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// An SS-MIX2 storage root or one of its files.
    SsMix2,
    /// HL7 v2.5 messages (several may share a file).
    Hl7v2,
    /// MML documents.
    Mml,
    /// JAHIS prescription CSV.
    JahisRx,
    /// CDA R2 documents.
    Cda,
}

/// What a run translated.
#[derive(Debug, Default)]
pub struct Summary {
    /// Units (SS-MIX2 patients, messages, documents) translated.
    pub units: u64,
    /// Resources written.
    pub resources: u64,
    /// Warnings (also written to the warning sink as they come).
    pub warnings: u64,
    /// Sources that could not be translated.
    pub failed: u64,
}

/// Where the resources go.
pub trait Sink {
    /// Take one unit's resources.
    fn take(&mut self, resources: Vec<Resource>) -> std::io::Result<()>;

    /// Take the outcome of a source that had warnings or could not be translated.
    fn outcome(&mut self, outcome: OperationOutcome) -> std::io::Result<()> {
        self.take(vec![Resource::OperationOutcome(outcome)])
    }
}

/// One resource per line.
pub struct Ndjson<W: Write>(pub W);

impl<W: Write> Sink for Ndjson<W> {
    fn take(&mut self, resources: Vec<Resource>) -> std::io::Result<()> {
        for r in resources {
            serde_json::to_writer(&mut self.0, &r)?;
            self.0.write_all(b"\n")?;
        }
        self.0.flush()
    }
}

/// Everything gathered for one Bundle at the end (small inputs).
#[derive(Default)]
pub struct Gather {
    /// The resources, in order.
    pub resources: Vec<Resource>,
    /// The sources' outcomes (warnings, errors), in order.
    pub outcomes: Vec<OperationOutcome>,
}

impl Sink for Gather {
    fn take(&mut self, resources: Vec<Resource>) -> std::io::Result<()> {
        self.resources.extend(resources);
        Ok(())
    }

    fn outcome(&mut self, outcome: OperationOutcome) -> std::io::Result<()> {
        self.outcomes.push(outcome);
        Ok(())
    }
}

/// Progress on stderr, when it is a terminal: a line rewritten at most five times a second.
pub struct Progress {
    on: bool,
    started: Instant,
    last: Instant,
    total: Option<u64>,
}

impl Progress {
    /// Progress of `total` units (when known), shown only on a terminal.
    pub fn new(total: Option<u64>) -> Progress {
        use std::io::IsTerminal;
        let now = Instant::now();
        Progress { on: std::io::stderr().is_terminal(), started: now, last: now, total }
    }

    fn tick(&mut self, s: &Summary, done: bool) {
        if !self.on || (!done && self.last.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        eprint!(
            "\r{}{of} units, {} resources, {:.0} units/s, {} failed{}",
            s.units,
            s.resources,
            s.units as f64 / secs,
            s.failed,
            if done { "\n" } else { "" }
        );
    }
}

/// The messages of an HL7 v2 file: each starts with an `MSH` segment (batch headers
/// and trailers, FHS/BHS/BTS/FTS, are dropped).
pub fn split_messages(bytes: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut line_start = true;
    for (i, &b) in bytes.iter().enumerate() {
        if line_start && bytes[i..].starts_with(b"MSH") {
            starts.push(i);
        }
        line_start = b == b'\r' || b == b'\n';
    }
    if starts.is_empty() {
        return vec![bytes];
    }
    starts
        .iter()
        .enumerate()
        .map(|(n, &s)| {
            let end = starts.get(n + 1).copied().unwrap_or(bytes.len());
            let mut m = &bytes[s..end];
            // A batch trailer after the last message is not part of it.
            for trailer in [&b"\rBTS"[..], b"\nBTS", b"\rFTS", b"\nFTS"] {
                if let Some(at) = m.windows(trailer.len()).position(|w| w == trailer) {
                    m = &m[..at + 1];
                }
            }
            m
        })
        .collect()
}

/// The files of a directory (recursively), sorted; or the file itself.
fn files_under(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let rd = std::fs::read_dir(&d)
            .map_err(|e| SourceError::at(Default::default(), e.to_string()).in_file(d.display().to_string()))?;
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One issue of a source's outcome, its diagnostics naming the source.
fn issue(severity: IssueSeverity, code: IssueType, source: &str, text: String) -> OperationOutcomeIssue {
    OperationOutcomeIssue {
        severity,
        code,
        details: None,
        diagnostics: Some(format!("{source}: {text}")),
        expression: vec![],
    }
}

/// Count one unit's outcome, report its warnings or error, and hand its resources on,
/// followed by its outcome (an OperationOutcome naming `source`) when it has warnings
/// or could not be translated.
fn done(
    s: &mut Summary,
    source: &str,
    t: Result<kakehashi_mappings::Translation, SourceError>,
    sink: &mut dyn Sink,
    report: &mut dyn FnMut(&str),
) -> std::io::Result<()> {
    match t {
        Ok(t) => {
            for w in &t.warnings {
                report(&format!("warning: {source}: {}: {}", w.location, w.message));
            }
            s.warnings += t.warnings.len() as u64;
            s.units += 1;
            s.resources += t.resources.len() as u64;
            let issues: Vec<OperationOutcomeIssue> = t
                .warnings
                .iter()
                .map(|w| {
                    issue(
                        IssueSeverity::Warning,
                        IssueType::Processing,
                        source,
                        format!("{}: {}", w.location, w.message),
                    )
                })
                .collect();
            sink.take(t.resources)?;
            if issues.is_empty() {
                return Ok(());
            }
            sink.outcome(OperationOutcome { id: None, meta: None, issue: issues })
        }
        Err(e) => refused(s, source, &e.to_string(), sink, report),
    }
}

/// A source that could not be translated: reported, counted, and in the output as an
/// OperationOutcome naming it.
fn refused(
    s: &mut Summary,
    source: &str,
    text: &str,
    sink: &mut dyn Sink,
    report: &mut dyn FnMut(&str),
) -> std::io::Result<()> {
    report(&format!("error: {text}"));
    s.failed += 1;
    // The error names its file already; say which source it was when it does not.
    let text = text.strip_prefix(source).map(|t| t.trim_start_matches([':', ' ']).to_string()).unwrap_or(text.into());
    sink.outcome(OperationOutcome {
        id: None,
        meta: None,
        issue: vec![issue(IssueSeverity::Error, IssueType::Processing, source, format!("not translated: {text}"))],
    })
}

/// Translate `path` (of format `input`, owned by `owner`) into `sink`, unit by unit;
/// warnings and errors go to `report` as they come.
pub fn translate(
    input: Input,
    path: &Path,
    owner: &Owner,
    sink: &mut dyn Sink,
    report: &mut dyn FnMut(&str),
) -> Result<Summary, String> {
    let mut s = Summary::default();
    let io = |e: std::io::Error| format!("output: {e}");
    if input == Input::SsMix2 && path.is_dir() {
        let storage = Storage::new(path);
        let mut progress = Progress::new(storage.patient_ids().ok().map(|ids| ids.len() as u64));
        // Patient by patient: each patient's newest versions, translated and written,
        // then dropped. Directories are walked as they come; nothing is held for all.
        for (_, a) in kakehashi_adapters::ss_mix2::subdirs(path).map_err(|e| e.to_string())? {
            for (_, b) in kakehashi_adapters::ss_mix2::subdirs(&a).map_err(|e| e.to_string())? {
                for (pid, _) in kakehashi_adapters::ss_mix2::subdirs(&b).map_err(|e| e.to_string())? {
                    // What could not be used (the patient's directory, a misfiled or
                    // unreadable file) is in the output as well as on stderr.
                    let scan = match storage.scan_patient(&pid) {
                        Ok(scan) => scan,
                        Err(e) => {
                            refused(&mut s, &format!("patient {pid}"), &e.to_string(), sink, report).map_err(io)?;
                            continue;
                        }
                    };
                    for p in &scan.problems {
                        refused(&mut s, &format!("patient {pid}"), &p.to_string(), sink, report).map_err(io)?;
                    }
                    let mut unit = kakehashi_mappings::Translation::default();
                    for f in scan.files {
                        match super::translate_hl7_file(&f.path, owner, Some(Charset::Iso2022Jp)) {
                            Ok(t) => unit.extend(t),
                            Err(e) => {
                                let source = f.path.display().to_string();
                                refused(&mut s, &source, &e.to_string(), sink, report).map_err(io)?;
                            }
                        }
                    }
                    super::dedupe(&mut unit.resources);
                    done(&mut s, &format!("patient {pid}"), Ok(unit), sink, report).map_err(io)?;
                    progress.tick(&s, false);
                }
            }
        }
        progress.tick(&s, true);
        return Ok(s);
    }
    let files = files_under(path).map_err(|e| e.to_string())?;
    let mut progress = Progress::new(Some(files.len() as u64));
    for file in files {
        match input {
            Input::SsMix2 | Input::Hl7v2 => {
                let bytes = match std::fs::read(&file) {
                    Ok(b) => b,
                    Err(e) => {
                        report(&format!("error: {}: {e}", file.display()));
                        s.failed += 1;
                        continue;
                    }
                };
                let charset = (input == Input::SsMix2).then_some(Charset::Iso2022Jp);
                let options = ParseOptions { default_charset: charset, force_charset: None };
                let key = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                // An SS-MIX2 file's name says whether its record was deleted (取消, flag 0).
                let deleted = input == Input::SsMix2
                    && kakehashi_adapters::ss_mix2::FileName::parse(&key).is_ok_and(|n| !n.valid);
                let messages = split_messages(&bytes);
                let several = messages.len() > 1;
                for (n, m) in messages.into_iter().enumerate() {
                    let ctx = owner.context(if n == 0 { key.clone() } else { format!("{key}#{}", n + 1) });
                    let source = if several {
                        format!("{} (message {})", file.display(), n + 1)
                    } else {
                        file.display().to_string()
                    };
                    let t = kakehashi_mappings::hl7v2::translate_bytes(m, &options, &ctx)
                        .map(|mut t| {
                            if deleted {
                                kakehashi_mappings::mark_deleted(&mut t);
                            }
                            t
                        })
                        .map_err(|e| e.in_file(source.clone()));
                    done(&mut s, &source, t, sink, report).map_err(io)?;
                }
            }
            Input::Mml => {
                let t = super::translate_mml_file_owned(&file, &Ownership::Site(owner.clone())).map(|(t, _)| t);
                done(&mut s, &file.display().to_string(), t, sink, report).map_err(io)?;
            }
            Input::JahisRx => {
                let t = super::translate_jahis_file_owned(&file, &Ownership::Site(owner.clone())).map(|(t, _)| t);
                done(&mut s, &file.display().to_string(), t, sink, report).map_err(io)?;
            }
            Input::Cda => {
                let t = super::translate_cda_file(&file, owner);
                done(&mut s, &file.display().to_string(), t, sink, report).map_err(io)?
            }
        }
        progress.tick(&s, false);
    }
    progress.tick(&s, true);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_file_splits_into_its_messages() {
        let batch = b"FHS|^~\\&|A\rBHS|^~\\&|A\rMSH|^~\\&|A|B|||2026||ADT^A08|1|P|2.5\rPID|1||1\rMSH|^~\\&|A|B|||2026||ADT^A08|2|P|2.5\rPID|1||2\rBTS|2\rFTS|1\r";
        let ms = split_messages(batch);
        assert_eq!(ms.len(), 2);
        assert!(ms[0].starts_with(b"MSH") && ms[0].ends_with(b"PID|1||1\r"));
        assert!(ms[1].ends_with(b"PID|1||2\r"), "{}", String::from_utf8_lossy(ms[1]));
        assert_eq!(split_messages(b"MSH|^~\\&|x\nPID|1\n").len(), 1);
        assert_eq!(split_messages(b"not hl7").len(), 1, "handed on whole, to fail with its own error");
    }
}
