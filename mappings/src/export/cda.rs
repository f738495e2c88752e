//! FHIR document → CDA R2.

use super::{concept_text, entries, esc};
use crate::document::{DocumentView, SECTION_SYSTEM};
use kakehashi_fhir::{CodeableConcept, Resource};
use std::fmt::Write;

/// FHIR system URI → CDA code system OID (where one is known).
pub fn oid_of(system: &str) -> Option<String> {
    Some(match system {
        "http://loinc.org" => "2.16.840.1.113883.6.1".into(),
        "http://snomed.info/sct" => "2.16.840.1.113883.6.96".into(),
        "http://www.nlm.nih.gov/research/umls/rxnorm" => "2.16.840.1.113883.6.88".into(),
        "http://hl7.org/fhir/sid/icd-10-cm" => "2.16.840.1.113883.6.90".into(),
        s => return s.strip_prefix("urn:oid:").map(str::to_string),
    })
}

/// A CDA coded element: OID code systems as `codeSystem`, URI ones as `codeSystemName`.
fn code_element(tag: &str, c: &CodeableConcept, extra: &str) -> String {
    let coding = c.coding.first();
    let mut attrs = String::new();
    if let Some(code) = coding.and_then(|x| x.code.as_ref()) {
        let _ = write!(attrs, " code=\"{}\"", esc(code));
        if let Some(s) = coding.and_then(|x| x.system.as_deref()) {
            match oid_of(s) {
                Some(oid) => {
                    let _ = write!(attrs, " codeSystem=\"{}\"", esc(&oid));
                }
                None => {
                    let _ = write!(attrs, " codeSystemName=\"{}\"", esc(s));
                }
            }
        }
    }
    let text = concept_text(c);
    if !text.is_empty() {
        let _ = write!(attrs, " displayName=\"{}\"", esc(&text));
    }
    if coding.and_then(|x| x.code.as_ref()).is_none() {
        return format!("<{tag}{extra} nullFlavor=\"OTH\"><originalText>{}</originalText></{tag}>", esc(&text));
    }
    format!("<{tag}{extra}{attrs}/>")
}

/// CDA TS from a FHIR date/dateTime: `YYYYMMDD[hhmmss][+zzzz]`.
fn ts(fhir: &str) -> String {
    let digits: String = fhir.chars().take(19).filter(|c| c.is_ascii_digit()).collect();
    let zone = if fhir.len() > 19 { fhir[19..].replace(':', "") } else { String::new() };
    let zone = if zone.starts_with('+') || zone.starts_with('-') { zone } else { String::new() };
    format!("{digits}{zone}")
}

/// The ClinicalDocument id (root OID, extension): the Composition's identifier, else the
/// Bundle's. A `urn:oid:` system is the root as is (the inverse of the CDA import); any
/// other system, or a document with no identifier at all, gets a name-based UUID OID
/// under `2.25` derived from it, so the same document always gets the same id.
fn document_id(doc: &DocumentView<'_>) -> (String, Option<String>) {
    let ident = doc.composition.identifier.as_ref().or(doc.bundle.identifier.as_ref());
    let system = ident.and_then(|i| i.system.as_deref());
    let value = ident.and_then(|i| i.value.clone());
    if let (Some(oid), Some(_)) = (system.and_then(|s| s.strip_prefix("urn:oid:")), &value) {
        return (oid.to_string(), value);
    }
    match (system, value) {
        (Some(system), Some(value)) => (uuid_oid(system), Some(value)),
        (_, value) => {
            (uuid_oid(&format!("{}|{}", doc.composition.id.as_deref().unwrap_or(""), value.unwrap_or_default())), None)
        }
    }
}

/// `2.25.<n>` where n is a version-8 (name-based, SHA-256) UUID read as an integer (X.667).
fn uuid_oid(name: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// Write the document as a CDA R2 ClinicalDocument.
pub fn to_cda(doc: &DocumentView<'_>) -> String {
    let c = doc.composition;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ClinicalDocument xmlns=\"urn:hl7-org:v3\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">");
    out.push_str("<typeId root=\"2.16.840.1.113883.1.3\" extension=\"POCD_HD000040\"/>");
    let (root, extension) = document_id(doc);
    match extension {
        Some(e) => write!(out, "<id root=\"{}\" extension=\"{}\"/>", esc(&root), esc(&e)),
        None => write!(out, "<id root=\"{}\"/>", esc(&root)),
    }
    .ok();
    out.push_str(&code_element("code", &c.type_, ""));
    let _ = write!(out, "<title>{}</title><effectiveTime value=\"{}\"/>", esc(&c.title), ts(&c.date));
    let _ = write!(
        out,
        "<confidentialityCode code=\"{}\" codeSystem=\"2.16.840.1.113883.5.25\"/>",
        esc(c.confidentiality.as_deref().unwrap_or("N"))
    );
    out.push_str("<recordTarget><patientRole>");
    if let Some(p) = doc.patient() {
        for i in &p.identifier {
            let root = i.system.as_deref().and_then(|s| s.strip_prefix("urn:oid:")).unwrap_or("2.25");
            let _ = write!(out, "<id root=\"{}\" extension=\"{}\"/>", esc(root), esc(i.value.as_deref().unwrap_or("")));
        }
        out.push_str("<patient>");
        for n in &p.name {
            let use_ = n.extension.iter().find_map(|e| e.value_code.as_deref()).unwrap_or("IDE");
            let _ = write!(out, "<name use=\"{}\">", esc(use_));
            match &n.family {
                Some(f) => {
                    for g in &n.given {
                        let _ = write!(out, "<given>{}</given>", esc(g));
                    }
                    let _ = write!(out, "<family>{}</family>", esc(f));
                }
                None => out.push_str(&esc(n.text.as_deref().unwrap_or(""))),
            }
            out.push_str("</name>");
        }
        let g = match p.gender.as_deref() {
            Some("male") => "M",
            Some("female") => "F",
            Some("other") => "UN",
            _ => "UNK",
        };
        let _ = write!(out, "<administrativeGenderCode code=\"{g}\" codeSystem=\"2.16.840.1.113883.5.1\"/>");
        if let Some(b) = &p.birth_date {
            let _ = write!(out, "<birthTime value=\"{}\"/>", ts(b));
        }
        out.push_str("</patient>");
    }
    out.push_str("</patientRole></recordTarget>");
    for a in &c.author {
        let name = match doc.resolve(a) {
            Some(Resource::Practitioner(p)) => p.name.first().and_then(|n| n.text.clone().or_else(|| n.family.clone())),
            _ => a.display.clone(),
        };
        let _ = write!(out, "<author><time value=\"{}\"/><assignedAuthor><id nullFlavor=\"UNK\"/><assignedPerson><name>{}</name></assignedPerson></assignedAuthor></author>", ts(&c.date), esc(&name.unwrap_or_default()));
    }
    let custodian = c.custodian.as_ref().and_then(|r| match doc.resolve(r) {
        Some(Resource::Organization(o)) => o.name.clone(),
        _ => r.display.clone(),
    });
    let _ = write!(out, "<custodian><assignedCustodian><representedCustodianOrganization><id nullFlavor=\"UNK\"/><name>{}</name></representedCustodianOrganization></assignedCustodian></custodian>", esc(&custodian.unwrap_or_default()));
    out.push_str("<component><structuredBody>");
    let sections = doc.sections();
    let structured = entries(&sections);
    for s in &sections {
        let code = s.code.as_deref().unwrap_or("");
        if s.text.is_empty() && code != "510" && code != "340" {
            continue;
        }
        out.push_str("<component><section>");
        if !code.is_empty() {
            let _ = write!(out, "<code code=\"{}\" codeSystemName=\"{SECTION_SYSTEM}\"/>", esc(code));
        }
        let _ = write!(
            out,
            "<title>{}</title><text>{}</text>",
            esc(s.title.as_deref().unwrap_or("")),
            esc(&s.text).replace('\n', "<br/>")
        );
        for r in s.entries.iter().filter(|r| structured.iter().any(|x| std::ptr::eq(*x, **r))) {
            match r {
                Resource::Condition(x) => {
                    let value =
                        x.code.as_ref().map(|c| code_element("value", c, " xsi:type=\"CD\"")).unwrap_or_default();
                    let time = x
                        .onset_date_time
                        .as_deref()
                        .map(|o| format!("<effectiveTime><low value=\"{}\"/></effectiveTime>", ts(o)))
                        .unwrap_or_default();
                    let _ = write!(out, "<entry><observation classCode=\"OBS\" moodCode=\"EVN\"><code code=\"55607006\" codeSystem=\"2.16.840.1.113883.6.96\" displayName=\"Problem\"/>{time}{value}</observation></entry>");
                }
                Resource::AllergyIntolerance(x) => {
                    let substance = x.code.as_ref().map(|c| code_element("code", c, "")).unwrap_or_default();
                    let _ = write!(out, "<entry><act classCode=\"ACT\" moodCode=\"EVN\"><code code=\"CONC\" codeSystem=\"2.16.840.1.113883.5.6\"/><entryRelationship typeCode=\"SUBJ\"><observation classCode=\"OBS\" moodCode=\"EVN\"><code code=\"ASSERTION\" codeSystem=\"2.16.840.1.113883.5.4\"/><participant typeCode=\"CSM\"><participantRole classCode=\"MANU\"><playingEntity classCode=\"MMAT\">{substance}</playingEntity></participantRole></participant></observation></entryRelationship></act></entry>");
                }
                Resource::MedicationRequest(x) => {
                    let drug =
                        x.medication_codeable_concept.as_ref().map(|c| code_element("code", c, "")).unwrap_or_default();
                    let text = x
                        .dosage_instruction
                        .first()
                        .and_then(|d| d.text.clone())
                        .map(|t| format!("<text>{}</text>", esc(&t)))
                        .unwrap_or_default();
                    let _ = write!(out, "<entry><substanceAdministration classCode=\"SBADM\" moodCode=\"INT\">{text}<consumable><manufacturedProduct><manufacturedMaterial>{drug}</manufacturedMaterial></manufacturedProduct></consumable></substanceAdministration></entry>");
                }
                _ => {}
            }
        }
        out.push_str("</section></component>");
    }
    out.push_str("</structuredBody></component></ClinicalDocument>\n");
    out
}
