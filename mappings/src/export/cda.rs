//! FHIR document → CDA R2.

use super::{concept_text, entries, esc};
use crate::document::{DocumentView, SECTION_SYSTEM};
use kakehashi_fhir::{CodeableConcept, Organization, Resource};
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

/// The code and code system attributes of one coding: OID code systems as
/// `codeSystem`, URI ones as `codeSystemName`.
fn coding_attrs(x: &kakehashi_fhir::Coding) -> String {
    let mut attrs = String::new();
    if let Some(code) = &x.code {
        let _ = write!(attrs, " code=\"{}\"", esc(code));
        if let Some(s) = x.system.as_deref() {
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
    attrs
}

/// A CDA coded element: the first coding as the code, the others as `translation`s.
fn code_element(tag: &str, c: &CodeableConcept, extra: &str) -> String {
    let coding = c.coding.first();
    let mut attrs = coding.map(coding_attrs).unwrap_or_default();
    let text = concept_text(c);
    if !text.is_empty() {
        let _ = write!(attrs, " displayName=\"{}\"", esc(&text));
    }
    if coding.and_then(|x| x.code.as_ref()).is_none() {
        return format!("<{tag}{extra} nullFlavor=\"OTH\"><originalText>{}</originalText></{tag}>", esc(&text));
    }
    let translations: String = c.coding[1..]
        .iter()
        .filter(|x| x.code.is_some())
        .map(|x| format!("<translation{}/>", coding_attrs(x)))
        .collect();
    if translations.is_empty() {
        format!("<{tag}{extra}{attrs}/>")
    } else {
        format!("<{tag}{extra}{attrs}>{translations}</{tag}>")
    }
}

/// The CDA root of an identifier system that has no OID of its own: a name-based
/// `2.25` OID of its URI. The 10-digit 医療機関コード (JP Core's system) is one: the MHLW
/// OIDs split it into prefecture (.21), fee table (.22) and a 7-digit code (.23).
pub(crate) fn root_of(system: &str) -> String {
    uuid_oid(system)
}

/// The system URI a `2.25` root written by [`root_of`] stands for (the ones Kakehashi
/// writes: institution number, RP number).
pub(crate) fn system_of_root(root: &str) -> Option<&'static str> {
    [crate::codes::INSTITUTION_NUMBER, crate::codes::RP_NUMBER].into_iter().find(|s| root_of(s) == root)
}

/// CDA `id`s of FHIR identifiers: `urn:oid:` systems as the root, the institution
/// number under its OID, any other system under a name-based `2.25` root.
fn ids(identifiers: &[kakehashi_fhir::Identifier]) -> String {
    let mut out = String::new();
    for i in identifiers {
        let Some(v) = &i.value else { continue };
        let system = i.system.as_deref().unwrap_or("");
        let root = match system.strip_prefix("urn:oid:") {
            _ if crate::codes::is_institution_system(system) => root_of(crate::codes::INSTITUTION_NUMBER),
            Some(oid) => oid.to_string(),
            None => root_of(system),
        };
        let _ = write!(out, "<id root=\"{}\" extension=\"{}\"/>", esc(&root), esc(v));
    }
    out
}

/// An organisation's ids and name (the content of a CDA Organization element).
fn organization(o: &Organization) -> String {
    let mut out = ids(&o.identifier);
    if let Some(n) = &o.name {
        let _ = write!(out, "<name>{}</name>", esc(n));
    }
    out
}

/// Postal addresses: the unstructured text first, then the parts.
fn addresses(list: &[kakehashi_fhir::Address]) -> String {
    let mut out = String::new();
    for a in list {
        let use_ = match a.use_.as_deref() {
            Some("home") => " use=\"H\"",
            Some("work") => " use=\"WP\"",
            Some("temp") => " use=\"TMP\"",
            _ => "",
        };
        let _ = write!(out, "<addr{use_}>{}", esc(a.text.as_deref().unwrap_or("")));
        for l in &a.line {
            let _ = write!(out, "<streetAddressLine>{}</streetAddressLine>", esc(l));
        }
        for (tag, v) in
            [("city", &a.city), ("state", &a.state), ("postalCode", &a.postal_code), ("country", &a.country)]
        {
            if let Some(v) = v {
                let _ = write!(out, "<{tag}>{}</{tag}>", esc(v));
            }
        }
        out.push_str("</addr>");
    }
    out
}

/// Telecoms as URLs (`tel:`, `fax:`, `mailto:`).
fn telecoms(list: &[kakehashi_fhir::ContactPoint]) -> String {
    let mut out = String::new();
    for c in list {
        let Some(v) = &c.value else { continue };
        let scheme = match c.system.as_deref() {
            Some("phone") | Some("sms") | None => "tel:",
            Some("fax") => "fax:",
            Some("email") => "mailto:",
            _ => "",
        };
        let use_ = match c.use_.as_deref() {
            Some("home") => " use=\"HP\"",
            Some("work") => " use=\"WP\"",
            Some("mobile") => " use=\"MC\"",
            Some("temp") => " use=\"TMP\"",
            _ => "",
        };
        let _ = write!(out, "<telecom{use_} value=\"{scheme}{}\"/>", esc(v));
    }
    out
}

/// A FHIR Quantity as CDA PQ attributes (UCUM code preferred to the display unit).
fn pq(q: &kakehashi_fhir::Quantity) -> Option<String> {
    let v = q.value?;
    let unit = q.code.as_deref().or(q.unit.as_deref()).filter(|u| !u.is_empty());
    Some(match unit {
        Some(u) => format!(" value=\"{v}\" unit=\"{}\"", esc(u)),
        None => format!(" value=\"{v}\""),
    })
}

/// An interval that starts at a FHIR date/dateTime (an onset), or nothing.
fn since(start: Option<&str>) -> String {
    start.map(|o| format!("<effectiveTime><low value=\"{}\"/></effectiveTime>", ts(o))).unwrap_or_default()
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
        out.push_str(&addresses(&p.address));
        out.push_str(&telecoms(&p.telecom));
        out.push_str("<patient>");
        for n in &p.name {
            // The representation (IDE kanji, SYL kana, ABC) only when the name has one:
            // it also says the name is written family first.
            match n.extension.iter().find_map(|e| e.value_code.as_deref()) {
                Some(u) => write!(out, "<name use=\"{}\">", esc(u)),
                None => write!(out, "<name>"),
            }
            .ok();
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
    // One author element: the person, and the organisation they write for (an
    // Organization author, else the custodian).
    let resolved: Vec<&Resource> = c.author.iter().filter_map(|a| doc.resolve(a)).collect();
    let person = resolved.iter().find_map(|r| match r {
        Resource::Practitioner(p) => Some(p),
        _ => None,
    });
    let org_of = |r: &Option<&kakehashi_fhir::Reference>| match r.and_then(|r| doc.resolve(r)) {
        Some(Resource::Organization(o)) => Some(o),
        _ => None,
    };
    let author_org = resolved.iter().find_map(|r| match r {
        Resource::Organization(o) => Some(o),
        _ => None,
    });
    let custodian = org_of(&c.custodian.as_ref());
    let _ = write!(out, "<author><time value=\"{}\"/><assignedAuthor>", ts(&c.date));
    match person.map(|p| ids(&p.identifier)).filter(|s| !s.is_empty()) {
        Some(s) => out.push_str(&s),
        None => out.push_str("<id nullFlavor=\"UNK\"/>"),
    }
    let name = person
        .and_then(|p| p.name.first())
        .and_then(|n| n.text.clone().or_else(|| n.family.clone()))
        .or_else(|| c.author.iter().find_map(|a| a.display.clone()));
    if let Some(n) = name {
        let _ = write!(out, "<assignedPerson><name>{}</name></assignedPerson>", esc(&n));
    }
    if let Some(o) = author_org.or(custodian) {
        let _ = write!(out, "<representedOrganization>{}</representedOrganization>", organization(o));
    }
    out.push_str("</assignedAuthor></author>");
    let custodian_xml = match custodian {
        Some(o) if !o.identifier.is_empty() => organization(o),
        Some(o) => format!("<id nullFlavor=\"UNK\"/>{}", organization(o)),
        None => format!(
            "<id nullFlavor=\"UNK\"/><name>{}</name>",
            esc(c.custodian.as_ref().and_then(|r| r.display.as_deref()).unwrap_or(""))
        ),
    };
    let _ = write!(out, "<custodian><assignedCustodian><representedCustodianOrganization>{custodian_xml}</representedCustodianOrganization></assignedCustodian></custodian>");
    // JP-CLINS section 910 (紹介先): the receiving institution and doctor.
    let sections = doc.sections();
    let recipient = crate::document::entries_in(&sections, crate::document::RECIPIENT_SECTION);
    let to_org = crate::document::organization_in(&recipient);
    let to_person = recipient.iter().find_map(|r| match r {
        Resource::Practitioner(p) => p.name.first().and_then(|n| n.text.clone().or_else(|| n.family.clone())),
        _ => None,
    });
    if to_org.is_some() || to_person.is_some() {
        out.push_str("<informationRecipient><intendedRecipient>");
        if let Some(n) = to_person {
            let _ = write!(out, "<informationRecipient><name>{}</name></informationRecipient>", esc(&n));
        }
        if let Some(o) = to_org {
            let _ = write!(out, "<receivedOrganization>{}</receivedOrganization>", organization(o));
        }
        out.push_str("</intendedRecipient></informationRecipient>");
    }
    out.push_str("<component><structuredBody>");
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
                    let time = since(x.onset_date_time.as_deref());
                    // C-CDA Problem Status, its value the FHIR clinical status.
                    let status = x
                        .clinical_status
                        .as_ref()
                        .map(|s| {
                            format!(
                                "<entryRelationship typeCode=\"REFR\"><observation classCode=\"OBS\" moodCode=\"EVN\"><code code=\"33999-4\" codeSystem=\"2.16.840.1.113883.6.1\" displayName=\"Status\"/>{}</observation></entryRelationship>",
                                code_element("value", s, " xsi:type=\"CD\"")
                            )
                        })
                        .unwrap_or_default();
                    let _ = write!(out, "<entry><observation classCode=\"OBS\" moodCode=\"EVN\"><code code=\"55607006\" codeSystem=\"2.16.840.1.113883.6.96\" displayName=\"Problem\"/>{time}{value}{status}</observation></entry>");
                }
                Resource::AllergyIntolerance(x) => {
                    let substance = x.code.as_ref().map(|c| code_element("code", c, "")).unwrap_or_default();
                    let time = since(x.onset_date_time.as_deref());
                    let reactions: String = x
                        .reaction
                        .iter()
                        .flat_map(|r| r.manifestation.iter())
                        .filter(|m| !concept_text(m).is_empty())
                        .map(|m| {
                            format!(
                                "<entryRelationship typeCode=\"MFST\" inversionInd=\"true\"><observation classCode=\"OBS\" moodCode=\"EVN\"><code code=\"ASSERTION\" codeSystem=\"2.16.840.1.113883.5.4\"/>{}</observation></entryRelationship>",
                                code_element("value", m, " xsi:type=\"CD\"")
                            )
                        })
                        .collect();
                    let _ = write!(out, "<entry><act classCode=\"ACT\" moodCode=\"EVN\"><code code=\"CONC\" codeSystem=\"2.16.840.1.113883.5.6\"/><entryRelationship typeCode=\"SUBJ\"><observation classCode=\"OBS\" moodCode=\"EVN\"><code code=\"ASSERTION\" codeSystem=\"2.16.840.1.113883.5.4\"/>{time}<participant typeCode=\"CSM\"><participantRole classCode=\"MANU\"><playingEntity classCode=\"MMAT\">{substance}</playingEntity></participantRole></participant>{reactions}</observation></entryRelationship></act></entry>");
                }
                Resource::MedicationRequest(x) => out.push_str(&medication(x)),
                Resource::Observation(x) => out.push_str(&observation(x)),
                _ => {}
            }
        }
        out.push_str("</section></component>");
    }
    out.push_str("</structuredBody></component></ClinicalDocument>\n");
    out
}

/// A MedicationRequest as a substanceAdministration: its RP number and other ids, the
/// drug in every code system it is coded in, the sig, the course (start and days), how
/// often, and the dose.
fn medication(x: &kakehashi_fhir::MedicationRequest) -> String {
    let dosage = x.dosage_instruction.first();
    let mut out = String::from("<entry><substanceAdministration classCode=\"SBADM\" moodCode=\"INT\">");
    out.push_str(&ids(&x.identifier));
    if let Some(t) = dosage.and_then(|d| d.text.as_ref()) {
        let _ = write!(out, "<text>{}</text>", esc(t));
    }
    let start = super::course_start(x);
    let days = super::supply_days(x);
    if start.is_some() || days.is_some() {
        out.push_str("<effectiveTime xsi:type=\"IVL_TS\">");
        if let Some(s) = &start {
            let _ = write!(out, "<low value=\"{}\"/>", ts(s));
        }
        if let Some(d) = days {
            let _ = write!(out, "<width value=\"{d}\" unit=\"d\"/>");
        }
        out.push_str("</effectiveTime>");
    }
    let repeat = dosage.and_then(|d| d.timing.as_ref()).and_then(|t| t.repeat.as_ref());
    if let (Some(f), Some(p), Some(u)) =
        (repeat.and_then(|r| r.frequency), repeat.and_then(|r| r.period), repeat.and_then(|r| r.period_unit.as_deref()))
    {
        // n times per period: every period/n, in hours for a daily schedule the
        // institution sets ("3 times a day" is every 8 h, institutionSpecified).
        let (value, unit, institution) = match u {
            "d" if f > 1 || p != 1.0 => (p * 24.0 / f64::from(f), "h", true),
            _ => (p / f64::from(f.max(1)), u, false),
        };
        let _ = write!(
            out,
            "<effectiveTime xsi:type=\"PIVL_TS\" institutionSpecified=\"{institution}\" operator=\"A\"><period value=\"{value}\" unit=\"{}\"/></effectiveTime>",
            esc(unit)
        );
    }
    if let Some(r) = dosage.and_then(|d| d.route.as_ref()) {
        out.push_str(&code_element("routeCode", r, ""));
    }
    if let Some(q) = dosage.and_then(|d| d.dose_and_rate.first()).and_then(|d| d.dose_quantity.as_ref()) {
        // CDA doses are UCUM; a non-UCUM unit (錠) travels as the unit text.
        let unit = q.unit.as_deref().or(q.code.as_deref());
        if let Some(v) = q.value {
            match unit {
                Some(u) => {
                    let _ = write!(out, "<doseQuantity value=\"{v}\" unit=\"{}\"/>", esc(u));
                }
                None => {
                    let _ = write!(out, "<doseQuantity value=\"{v}\"/>");
                }
            }
        }
    }
    let drug = x.medication_codeable_concept.as_ref().map(|c| code_element("code", c, "")).unwrap_or_default();
    let _ = write!(out, "<consumable><manufacturedProduct><manufacturedMaterial>{drug}</manufacturedMaterial></manufacturedProduct></consumable></substanceAdministration></entry>");
    out
}

/// An Observation as a CDA observation: code, time, value (PQ, CD or ST) and
/// interpretation.
fn observation(x: &kakehashi_fhir::Observation) -> String {
    let mut out = String::from("<entry><observation classCode=\"OBS\" moodCode=\"EVN\">");
    out.push_str(&code_element("code", &x.code, ""));
    out.push_str("<statusCode code=\"completed\"/>");
    if let Some(t) = &x.effective_date_time {
        let _ = write!(out, "<effectiveTime value=\"{}\"/>", ts(t));
    }
    if let Some(attrs) = x.value_quantity.as_ref().and_then(pq) {
        let _ = write!(out, "<value xsi:type=\"PQ\"{attrs}/>");
    } else if let Some(c) = &x.value_codeable_concept {
        out.push_str(&code_element("value", c, " xsi:type=\"CD\""));
    } else if let Some(v) = &x.value_string {
        let _ = write!(out, "<value xsi:type=\"ST\">{}</value>", esc(v));
    }
    for i in &x.interpretation {
        if let Some(c) = i.coding.first().and_then(|c| c.code.as_ref()) {
            let _ = write!(out, "<interpretationCode code=\"{}\" codeSystem=\"2.16.840.1.113883.5.83\"/>", esc(c));
        }
    }
    out.push_str("</observation></entry>");
    out
}
