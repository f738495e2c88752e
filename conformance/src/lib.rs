//! Conformance cases: `conformance/<format>/<case>/` holds an input (`input.*`, or a
//! `case.json` naming a file elsewhere in the repository or corpus) and
//! `expected.json`, the exact translation (resources and warnings) or the exact located
//! error. The runner translates every case, compares, and writes what it emitted under
//! `target/conformance-out/` for the independent FHIR validator.
//!
//! Set `KAKEHASHI_BLESS=1` to (re)write `expected.json` from the current output after a
//! deliberate mapping change; review the diff before committing it.

use kakehashi_adapters::ss_mix2::Storage;
use kakehashi_adapters::text::Charset;
use kakehashi_adapters::ParseOptions;
use kakehashi_mappings::{Context, Translation};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Owner used by conformance cases unless `case.json` says otherwise.
pub const CASE_OWNER: &str = "4610100011";

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// One case's outcome.
#[derive(Debug)]
pub struct CaseResult {
    /// `<format>/<case>`.
    pub name: String,
    /// What the translation produced, as compared.
    pub actual: Value,
    /// The expected value (None when missing).
    pub expected: Option<Value>,
}

fn label(path: &Path) -> String {
    let root = repo_root();
    let rel = path.strip_prefix(&root).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf());
    rel.display().to_string()
}

fn translation_json(t: &Translation) -> Value {
    json!({
        "resources": t.resources,
        "warnings": t.warnings.iter().map(|w| format!("{}: {}", w.location, w.message)).collect::<Vec<_>>(),
    })
}

fn context(case: &Value, key: &str) -> Context {
    Context {
        owner: case.get("owner").and_then(Value::as_str).unwrap_or(CASE_OWNER).to_string(),
        owner_name: case.get("owner_name").and_then(Value::as_str).unwrap_or("県立南海島嶼中央病院").to_string(),
        site: "conformance".into(),
        source_key: key.to_string(),
    }
}

/// Resolve a path written in a case: relative to the repository root.
fn resolve(p: &str) -> PathBuf {
    repo_root().join(p)
}

fn run_hl7(dir: &Path, case: &Value, default_charset: Option<Charset>) -> Result<Value, String> {
    let input = match case.get("input").and_then(Value::as_str) {
        Some(p) => resolve(p),
        None => std::fs::read_dir(dir)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.file_stem().is_some_and(|s| s == "input"))
            .ok_or_else(|| format!("{}: no input.* file and no `input` in case.json", dir.display()))?,
    };
    let bytes = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
    let charset = case.get("charset").and_then(Value::as_str).and_then(Charset::from_name).or(default_charset);
    let key = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let opts = ParseOptions { default_charset: charset, force_charset: None };
    Ok(match kakehashi_mappings::hl7v2::translate_bytes(&bytes, &opts, &context(case, &key)) {
        Ok(t) => translation_json(&t),
        Err(e) => json!({ "error": e.in_file(label(&input)).to_string() }),
    })
}

type Translate = fn(&[u8], &ParseOptions, &Context) -> Result<Translation, kakehashi_adapters::SourceError>;

/// Cases whose input is one XML file (`input.xml`, or `input` in case.json).
fn run_xml(dir: &Path, case: &Value, translate: Translate) -> Result<Value, String> {
    let input = match case.get("input").and_then(Value::as_str) {
        Some(p) => resolve(p),
        None => dir.join("input.xml"),
    };
    let bytes = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
    let key = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(match translate(&bytes, &ParseOptions::default(), &context(case, &key)) {
        Ok(t) => translation_json(&t),
        Err(e) => json!({ "error": e.in_file(label(&input)).to_string() }),
    })
}

fn run_jahis(dir: &Path, case: &Value) -> Result<Value, String> {
    let input = dir.join("input.csv");
    let bytes = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
    let mut case = case.clone();
    if case.get("owner").is_none() {
        case["owner"] = json!("4610200021");
        case["owner_name"] = json!("黒潮村立黒島診療所");
    }
    Ok(
        match kakehashi_mappings::jahis_rx::translate_bytes(
            &bytes,
            &ParseOptions::default(),
            &context(&case, "input.csv"),
        ) {
            Ok(t) => translation_json(&t),
            Err(e) => json!({ "error": e.in_file(label(&input)).to_string() }),
        },
    )
}

fn run_storage(case: &Value) -> Result<Value, String> {
    let root = resolve(case.get("storage").and_then(Value::as_str).ok_or("storage case without `storage`")?);
    let scan = Storage::new(&root).scan_all().map_err(|e| e.to_string())?;
    let files: Vec<String> = scan.files.iter().map(|f| label(&f.path)).collect();
    let problems: Vec<String> = scan
        .problems
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.location.file = p.location.file.as_deref().map(|f| label(Path::new(f)));
            p.to_string()
        })
        .collect();
    Ok(json!({ "current_files": files, "problems": problems }))
}

/// Run one case directory.
pub fn run_case(format: &str, dir: &Path) -> Result<CaseResult, String> {
    let case_file = dir.join("case.json");
    let case: Value = if case_file.exists() {
        serde_json::from_str(&std::fs::read_to_string(&case_file).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{}: {e}", case_file.display()))?
    } else {
        json!({})
    };
    let actual = match (format, case.get("kind").and_then(Value::as_str)) {
        (_, Some("storage")) => run_storage(&case)?,
        ("ss-mix2", _) => run_hl7(dir, &case, Some(Charset::Iso2022Jp))?,
        ("hl7v2", _) => run_hl7(dir, &case, None)?,
        ("mml", _) => run_xml(dir, &case, kakehashi_mappings::mml::translate_bytes)?,
        ("cda", _) => run_xml(dir, &case, kakehashi_mappings::cda::translate_bytes)?,
        ("jahis-rx", _) => run_jahis(dir, &case)?,
        (other, _) => return Err(format!("no runner for format `{other}`")),
    };
    let expected_file = dir.join("expected.json");
    let expected = match std::fs::read_to_string(&expected_file) {
        Ok(s) => Some(serde_json::from_str(&s).map_err(|e| format!("{}: {e}", expected_file.display()))?),
        Err(_) => None,
    };
    let name = format!("{format}/{}", dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    Ok(CaseResult { name, actual, expected })
}

/// Every case directory of a format, sorted.
pub fn cases(format: &str) -> Vec<PathBuf> {
    let dir = repo_root().join("conformance").join(format);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Write a case's emitted resources (one Bundle of type collection) for the validator.
pub fn write_emitted(out_dir: &Path, r: &CaseResult) -> std::io::Result<()> {
    let Some(resources) = r.actual.get("resources").and_then(Value::as_array) else { return Ok(()) };
    if resources.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(out_dir)?;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": resources.iter().map(|r| json!({ "resource": r })).collect::<Vec<_>>(),
    });
    let file = out_dir.join(format!("{}.json", r.name.replace('/', "__")));
    std::fs::write(file, serde_json::to_vec_pretty(&bundle).unwrap_or_default())
}
