//! Reading a FHIR document Bundle (JP-CLINS referral / discharge-summary shape): the
//! Composition, references resolved inside the Bundle (by `fullUrl`, including
//! `urn:uuid:`, or by `Type/id`), sections flattened with their plain text, and the
//! sender/recipient institutions of sections 920/910.

use kakehashi_fhir::{Bundle, Composition, CompositionSection, Organization, Patient, Reference, Resource};
use std::collections::HashMap;

/// JP-CLINS section code system.
pub const SECTION_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/document-section";
/// 紹介先情報 (recipient).
pub const RECIPIENT_SECTION: &str = "910";
/// 紹介元情報 (sender).
pub const SENDER_SECTION: &str = "920";

/// Why a Bundle is not a usable document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expression}: {message}")]
pub struct DocumentError {
    /// FHIRPath of the problem.
    pub expression: String,
    /// What is wrong.
    pub message: String,
}

fn bad(expression: impl Into<String>, message: impl Into<String>) -> DocumentError {
    DocumentError { expression: expression.into(), message: message.into() }
}

/// One section, flattened.
#[derive(Debug, Clone)]
pub struct FlatSection<'a> {
    /// Section code (JP-CLINS document-section or LOINC).
    pub code: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Narrative as plain text.
    pub text: String,
    /// Resolved entries.
    pub entries: Vec<&'a Resource>,
}

/// A document Bundle with its references resolved.
pub struct DocumentView<'a> {
    /// The Bundle.
    pub bundle: &'a Bundle,
    /// Its Composition.
    pub composition: &'a Composition,
    index: HashMap<String, &'a Resource>,
}

/// Plain text as a generated XHTML narrative: escaped, line breaks as `<br/>` (the
/// inverse of [`narrative_text`]).
pub fn narrative(text: &str) -> kakehashi_fhir::Narrative {
    let esc = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\n', "<br/>");
    kakehashi_fhir::Narrative {
        status: "generated".into(),
        div: format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{esc}</div>"),
    }
}

/// Plain text of an XHTML narrative div: tags dropped, `<br/>` and block ends as
/// newlines, the five entities resolved.
pub fn narrative_text(div: &str) -> String {
    let mut out = String::new();
    let mut rest = div;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('>') else { break };
        let tag = rest[i + 1..i + j].trim_start_matches('/').to_ascii_lowercase();
        if (tag.starts_with("br") || tag.starts_with("p") || tag.starts_with("li") || tag.starts_with("tr"))
            && !out.ends_with('\n')
            && !out.is_empty()
        {
            out.push('\n');
        }
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    let s = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
}

impl<'a> DocumentView<'a> {
    /// Check the document's shape: type `document`, Composition first, every reference
    /// inside the Bundle resolving.
    pub fn new(bundle: &'a Bundle) -> Result<DocumentView<'a>, DocumentError> {
        if bundle.type_ != "document" {
            return Err(bad("Bundle.type", format!("must be `document`, found `{}`", bundle.type_)));
        }
        let composition = match bundle.entry.first().and_then(|e| e.resource.as_deref()) {
            Some(Resource::Composition(c)) => c,
            _ => return Err(bad("Bundle.entry[0].resource", "the first entry of a document must be its Composition")),
        };
        let mut index = HashMap::new();
        for (i, e) in bundle.entry.iter().enumerate() {
            let Some(r) = e.resource.as_deref() else {
                return Err(bad(format!("Bundle.entry[{i}]"), "entry without a resource"));
            };
            if let Some(u) = &e.full_url {
                index.insert(u.clone(), r);
                if let Some(tail) = u.rsplit_once("/fhir/").map(|(_, t)| t) {
                    index.insert(tail.to_string(), r);
                }
            }
            if let Some(id) = r.id() {
                index.insert(format!("{}/{id}", r.type_name()), r);
            }
        }
        let view = DocumentView { bundle, composition, index };
        view.check_references()?;
        Ok(view)
    }

    /// Resolve a reference inside the Bundle.
    pub fn resolve(&self, r: &Reference) -> Option<&'a Resource> {
        self.index.get(r.reference.as_deref()?).copied()
    }

    fn check_references(&self) -> Result<(), DocumentError> {
        for (i, e) in self.bundle.entry.iter().enumerate() {
            let Some(r) = e.resource.as_deref() else { continue };
            let json = serde_json::to_value(r).unwrap_or_default();
            let mut refs = Vec::new();
            collect_refs(&json, &mut refs);
            for reference in refs {
                // Contained resources are resolved inside their container.
                if reference.starts_with('#') {
                    continue;
                }
                if !self.index.contains_key(&reference) {
                    return Err(bad(
                        format!("Bundle.entry[{i}].resource"),
                        format!("reference `{reference}` does not resolve inside the Bundle"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The document's patient.
    pub fn patient(&self) -> Option<&'a Patient> {
        match self.composition.subject.as_ref().and_then(|s| self.resolve(s)) {
            Some(Resource::Patient(p)) => Some(p),
            _ => None,
        }
    }

    /// Sections in document order, nested ones flattened after their parent.
    pub fn sections(&self) -> Vec<FlatSection<'a>> {
        let mut out = Vec::new();
        fn walk<'a>(v: &DocumentView<'a>, secs: &'a [CompositionSection], out: &mut Vec<FlatSection<'a>>) {
            for s in secs {
                out.push(FlatSection {
                    code: s.code.as_ref().and_then(|c| c.coding.first()).and_then(|c| c.code.clone()),
                    title: s.title.clone(),
                    text: s.text.as_ref().map(|t| narrative_text(&t.div)).unwrap_or_default(),
                    entries: s.entry.iter().filter_map(|r| v.resolve(r)).collect(),
                });
                walk(v, &s.section, out);
            }
        }
        walk(self, &self.composition.section, &mut out);
        out
    }

    /// The 10-digit institution code of the Organization in the section with `code`
    /// (910 recipient, 920 sender).
    pub fn institution_in_section(&self, code: &str) -> Option<String> {
        organization_in(&entries_in(&self.sections(), code)).and_then(institution_code)
    }
}

/// The entries of the (flattened) sections with `code`, in order.
pub fn entries_in<'a>(sections: &[FlatSection<'a>], code: &str) -> Vec<&'a Resource> {
    sections.iter().filter(|s| s.code.as_deref() == Some(code)).flat_map(|s| s.entries.iter().copied()).collect()
}

/// The first Organization among `entries`.
pub fn organization_in<'a>(entries: &[&'a Resource]) -> Option<&'a Organization> {
    entries.iter().find_map(|r| match r {
        Resource::Organization(o) => Some(o),
        _ => None,
    })
}

/// The 10-digit 医療機関コード of an Organization.
pub fn institution_code(o: &Organization) -> Option<String> {
    o.identifier.iter().find_map(|i| {
        let v = i.value.as_deref()?;
        let sys = i.system.as_deref().unwrap_or("");
        crate::codes::is_institution_system(sys)
            .then(|| v.to_string())
            .filter(|v| v.len() == 10 && v.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn collect_refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "reference" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                } else {
                    collect_refs(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_institution_is_named_by_every_published_system() {
        for system in [
            "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no",
            "http://jpfhir.jp/fhir/Common/IdSystem/insurance-medical-institution-no",
            "urn:oid:1.2.392.100495.20.3.23",
        ] {
            let o = kakehashi_fhir::Organization {
                identifier: vec![kakehashi_fhir::Identifier {
                    system: Some(system.into()),
                    value: Some("4610100011".into()),
                    ..Default::default()
                }],
                ..Default::default()
            };
            assert_eq!(super::institution_code(&o).as_deref(), Some("4610100011"), "{system}");
        }
        let other = kakehashi_fhir::Organization {
            identifier: vec![kakehashi_fhir::Identifier {
                system: Some("urn:example:clinic".into()),
                value: Some("4610100011".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(super::institution_code(&other), None);
    }

    #[test]
    fn narrative_to_text() {
        assert_eq!(
            super::narrative_text(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>胸痛 &amp; 息切れ</p><p>2 日前から</p></div>"
            ),
            "胸痛 & 息切れ\n2 日前から"
        );
    }
}
