//! Sites: reading a site's records through its connector and translating them, with
//! the site's owner stamped on every resource. Used by the server and the CLI.

pub mod stream;

use kakehashi_adapters::text::Charset;
use kakehashi_adapters::{ParseOptions, SourceError};
use kakehashi_fhir::{Bundle, BundleEntry, Resource};
use kakehashi_mappings::{Context, Translation};
use std::path::Path;

/// The boundary owner and site a read is for.
#[derive(Debug, Clone)]
pub struct Owner {
    /// Institution code.
    pub code: String,
    /// Institution name.
    pub name: String,
    /// Site id.
    pub site: String,
}

impl Owner {
    pub(crate) fn context(&self, key: String) -> Context {
        Context { owner: self.code.clone(), owner_name: self.name.clone(), site: self.site.clone(), source_key: key }
    }
}

/// Who owns a site's records.
#[derive(Debug, Clone)]
pub enum Ownership {
    /// Every record belongs to the site's institution.
    Site(Owner),
    /// Each record belongs to the member institution it names (shared cloud EHRs that
    /// host several clinics); a record naming no member is not served.
    PerRecord {
        /// Site id.
        site: String,
        /// The federation's institutions.
        members: Vec<crate::config::Institution>,
    },
}

impl Ownership {
    /// The site id.
    pub fn site(&self) -> &str {
        match self {
            Ownership::Site(o) => &o.site,
            Ownership::PerRecord { site, .. } => site,
        }
    }

    /// The owner of a record that names institution `named` (a code or facility id).
    fn resolve(&self, named: Option<&str>) -> Result<Owner, String> {
        match self {
            Ownership::Site(o) => Ok(o.clone()),
            Ownership::PerRecord { site, members } => {
                let named = named.map(str::trim).ok_or("the record names no institution, so it has no owner")?;
                members
                    .iter()
                    .find(|i| i.is_named(named))
                    .map(|i| Owner { code: i.code.clone(), name: i.name.clone(), site: site.clone() })
                    .ok_or_else(|| {
                        format!("the record names institution `{named}`, which is not a member (code or facility_ids)")
                    })
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    std::fs::read(path)
        .map_err(|e| SourceError::at(Default::default(), e.to_string()).in_file(path.display().to_string()))
}

/// Translate one HL7 v2 file.
pub fn translate_hl7_file(
    path: &Path,
    owner: &Owner,
    default_charset: Option<Charset>,
) -> Result<Translation, SourceError> {
    let bytes = read(path)?;
    let options = ParseOptions { default_charset, force_charset: None };
    let key = file_key(path);
    let in_file = |e: SourceError| e.in_file(path.display().to_string());
    let messages = stream::split_messages(&bytes);
    if messages.len() == 1 {
        return kakehashi_mappings::hl7v2::translate_bytes(&bytes, &options, &owner.context(key)).map_err(in_file);
    }
    // SS-MIX2 keeps one message per file; a file holding several is read message by
    // message (each keyed apart so their records do not collide), not refused.
    let mut all = Translation::default();
    let mut seen = std::collections::HashSet::new();
    for (n, m) in messages.iter().enumerate() {
        let t = kakehashi_mappings::hl7v2::translate_bytes(m, &options, &owner.context(format!("{key}#{n}"))).map_err(
            |e| in_file(SourceError { message: format!("message {} of the file: {}", n + 1, e.message), ..e }),
        )?;
        all.resources
            .extend(t.resources.into_iter().filter(|r| seen.insert((r.type_name(), r.id().map(str::to_string)))));
        all.warnings.extend(t.warnings);
    }
    all.warn("file", format!("holds {} messages (SS-MIX2 keeps one a file); each was translated", messages.len()));
    Ok(all)
}

/// Translate one MML document.
pub fn translate_mml_file(path: &Path, owner: &Owner) -> Result<Translation, SourceError> {
    translate_mml_file_owned(path, &Ownership::Site(owner.clone())).map(|(t, _)| t)
}

/// Translate one MML document; its owner by the site's rule (the creator's facility).
pub fn translate_mml_file_owned(path: &Path, ownership: &Ownership) -> Result<(Translation, Owner), SourceError> {
    let bytes = read(path)?;
    let in_file = |e: SourceError| e.in_file(path.display().to_string());
    let doc = kakehashi_adapters::mml::parse(&bytes, &ParseOptions::default()).map_err(in_file)?;
    let owner =
        ownership.resolve(doc.creator_facility()).map_err(|m| in_file(SourceError::at(Default::default(), m)))?;
    Ok((kakehashi_mappings::mml::translate(&doc, &owner.context(file_key(path))), owner))
}

/// Translate one JAHIS prescription CSV.
pub fn translate_jahis_file(path: &Path, owner: &Owner) -> Result<Translation, SourceError> {
    translate_jahis_file_owned(path, &Ownership::Site(owner.clone())).map(|(t, _)| t)
}

/// Translate one JAHIS prescription CSV; its owner by the site's rule (the issuing
/// institution of record 1).
pub fn translate_jahis_file_owned(path: &Path, ownership: &Ownership) -> Result<(Translation, Owner), SourceError> {
    let bytes = read(path)?;
    let in_file = |e: SourceError| e.in_file(path.display().to_string());
    let rx = kakehashi_adapters::jahis_rx::parse(&bytes, &ParseOptions::default()).map_err(in_file)?;
    let owner = ownership
        .resolve(Some(&rx.institution.code10()))
        .map_err(|m| in_file(SourceError::at(Default::default(), m)))?;
    Ok((kakehashi_mappings::jahis_rx::translate(&rx, &owner.context(file_key(path))), owner))
}

fn file_key(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Translate one CDA R2 document.
pub fn translate_cda_file(path: &Path, owner: &Owner) -> Result<Translation, SourceError> {
    let bytes = read(path)?;
    let key = file_key(path);
    kakehashi_mappings::cda::translate_bytes(&bytes, &ParseOptions::default(), &owner.context(key))
        .map_err(|e| e.in_file(path.display().to_string()))
}

/// The files with extension `ext` of a site directory, sorted.
pub fn files_with(dir: &Path, ext: &str) -> Result<Vec<std::path::PathBuf>, SourceError> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| SourceError::at(Default::default(), e.to_string()).in_file(dir.display().to_string()))?;
    let mut files: Vec<_> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x.eq_ignore_ascii_case(ext)))
        .collect();
    files.sort();
    Ok(files)
}

/// The same resource (same id) translated from two sources keeps its first copy: ids
/// are derived from what the record is, so a later duplicate is the same record.
pub(crate) fn dedupe(resources: &mut Vec<Resource>) {
    let mut seen = std::collections::HashSet::new();
    resources.retain(|r| seen.insert((r.type_name(), r.id().map(str::to_string))));
}

/// A Bundle of translated resources: a `document` when a Composition leads (MML
/// summaries and referrals), otherwise a `collection`. Warnings are reported by callers.
pub fn collection(resources: Vec<Resource>) -> Bundle {
    let composition = match resources.first() {
        Some(Resource::Composition(c)) => Some((c.id.clone().unwrap_or_default(), c.date.clone())),
        _ => None,
    };
    let document = composition.is_some();
    Bundle {
        // A document is identified by its Composition (same source, same identifier).
        identifier: composition.as_ref().map(|(id, _)| kakehashi_fhir::Identifier {
            system: Some("urn:kakehashi:document".into()),
            value: Some(id.clone()),
            ..Default::default()
        }),
        timestamp: composition.map(|(_, date)| if date.len() == 10 { format!("{date}T00:00:00+09:00") } else { date }),
        type_: if document { "document" } else { "collection" }.into(),
        entry: resources
            .into_iter()
            .map(|r| BundleEntry { resource: Some(Box::new(r)), ..Default::default() })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file holding two messages (SS-MIX2 keeps one a file) gives the records of both,
    /// with a warning; a broken second message refuses the file, naming it.
    #[test]
    fn a_file_of_two_messages_is_read_message_by_message() {
        let dir = tempfile::tempdir().unwrap();
        let adt = include_bytes!("../../../conformance/hl7v2/adt-a08-patient-allergy-coverage-body/input.hl7");
        let rde = include_bytes!("../../../conformance/hl7v2/rde-o11-hours-foreign-insurance/input.hl7");
        let owner = Owner { code: "4610100011".into(), name: "hub".into(), site: "t".into() };
        let both = dir.path().join("both");
        std::fs::write(&both, [&adt[..], b"\r", &rde[..]].concat()).unwrap();
        let t = translate_hl7_file(&both, &owner, None).unwrap();
        let alone = |bytes: &[u8]| {
            let p = dir.path().join("one");
            std::fs::write(&p, bytes).unwrap();
            translate_hl7_file(&p, &owner, None).unwrap()
        };
        let count = |t: &Translation, ty: &str| t.resources.iter().filter(|r| r.type_name() == ty).count();
        assert_eq!(count(&t, "MedicationRequest"), count(&alone(rde), "MedicationRequest"));
        assert_eq!(count(&t, "AllergyIntolerance"), count(&alone(adt), "AllergyIntolerance"));
        assert!(count(&t, "MedicationRequest") > 0 && count(&t, "AllergyIntolerance") > 0);
        assert!(t.warnings.iter().any(|w| w.message.contains("holds 2 messages")));

        let broken = dir.path().join("broken");
        std::fs::write(&broken, [&adt[..], b"\rMSH\rNK1|1\r"].concat()).unwrap();
        let e = translate_hl7_file(&broken, &owner, None).unwrap_err();
        assert!(e.to_string().contains("message 2 of the file"), "{e}");
    }
}
