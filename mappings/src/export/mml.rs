//! FHIR document → MML 4.x.

use super::{concept_text, entries, esc, SECTIONS};
use crate::document::DocumentView;
use kakehashi_fhir::Resource;
use std::fmt::Write;

const NS: &str = r#"xmlns="http://www.medxml.net/MML/v4/base/1.0" xmlns:mmlCm="http://www.medxml.net/MML/v4/SharedComponent/Common/1.0" xmlns:mmlNm="http://www.medxml.net/MML/v4/SharedComponent/Name/1.0" xmlns:mmlFc="http://www.medxml.net/MML/v4/SharedComponent/Facility/1.0" xmlns:mmlPsi="http://www.medxml.net/MML/v4/SharedComponent/PersonalizedInfo/1.0" xmlns:mmlCi="http://www.medxml.net/MML/v4/SharedComponent/CreatorInfo/1.0" xmlns:mmlSc="http://www.medxml.net/MML/v4/SharedComponent/Security/1.0" xmlns:mmlPi="http://www.medxml.net/MML/v4/ContentModule/PatientInfo/1.0" xmlns:mmlRe="http://www.medxml.net/MML/v4/ContentModule/Referral/1.0" xmlns:mmlSm="http://www.medxml.net/MML/v4/ContentModule/Summary/1.0" xmlns:mmlRd="http://www.medxml.net/MML/v4/ContentModule/RegisteredDiagnosis/1.0" xmlns:mmlPs="http://www.medxml.net/MML/v4/ContentModule/Prescription/1.0" xmlns:mmlBc="http://www.medxml.net/MML/v4/ContentModule/BaseClinic/1.0""#;

/// Who wrote the document, as MML's CreatorInfo (MmlHeader and every docInfo): the
/// author's id, name and licence, and the custodian institution.
struct Creator {
    id: String,
    name: String,
    facility: Option<(String, String)>,
}

impl Creator {
    fn of(doc: &DocumentView<'_>) -> Creator {
        let c = doc.composition;
        let custodian = c.custodian.as_ref().and_then(|r| doc.resolve(r)).and_then(|r| match r {
            Resource::Organization(o) => {
                let code = crate::document::institution_code(o)?;
                Some((o.name.clone().unwrap_or_else(|| code.clone()), code))
            }
            _ => None,
        });
        let practitioner = c.author.iter().find_map(|a| match doc.resolve(a) {
            Some(Resource::Practitioner(p)) => Some(p),
            _ => None,
        });
        let name = practitioner
            .and_then(|p| p.name.first())
            .and_then(|n| {
                n.text.clone().or_else(|| {
                    let parts: Vec<&str> = n.family.iter().chain(n.given.iter()).map(String::as_str).collect();
                    (!parts.is_empty()).then(|| parts.join(" "))
                })
            })
            .or_else(|| c.author.iter().find_map(|a| a.display.clone()))
            .unwrap_or_else(|| "(unknown)".into());
        // The author's own id when the document gives one, else the institution's code
        // (never a placeholder).
        let id = practitioner
            .and_then(|p| p.identifier.iter().find_map(|i| i.value.clone()).or_else(|| p.id.clone()))
            .or_else(|| custodian.as_ref().map(|(_, code)| code.clone()))
            .unwrap_or_else(|| "unknown".into());
        Creator { id, name, facility: custodian }
    }

    fn personalized(&self) -> String {
        let mut s = format!(
            "<mmlPsi:PersonalizedInfo><mmlCm:Id mmlCm:type=\"facility\" mmlCm:tableId=\"MML0024\">{}</mmlCm:Id><mmlPsi:personName><mmlNm:Name mmlNm:repCode=\"I\" mmlNm:tableId=\"MML0025\"><mmlNm:fullname>{}</mmlNm:fullname></mmlNm:Name></mmlPsi:personName>",
            esc(&self.id),
            esc(&self.name)
        );
        if let Some((name, code)) = &self.facility {
            let _ = write!(s, "{}", facility(name, code));
        }
        s.push_str("</mmlPsi:PersonalizedInfo>");
        s
    }

    fn xml(&self) -> String {
        format!(
            "<mmlCi:CreatorInfo>{}<mmlCi:creatorLicense mmlCi:tableId=\"MML0026\">doctor</mmlCi:creatorLicense></mmlCi:CreatorInfo>",
            self.personalized()
        )
    }
}

/// An MML Facility named by its 10-digit institution code (MML0027 insurance code).
fn facility(name: &str, code: &str) -> String {
    format!(
        "<mmlFc:Facility><mmlFc:name mmlFc:repCode=\"I\" mmlFc:tableId=\"MML0025\">{}</mmlFc:name><mmlCm:Id mmlCm:type=\"insurance\" mmlCm:tableId=\"MML0027\">{}</mmlCm:Id></mmlFc:Facility>",
        esc(name),
        esc(code)
    )
}

fn item(out: &mut String, kind: &str, uid: &str, title: &str, date: &str, creator: &str, content: &str) {
    let _ = write!(
        out,
        "<MmlModuleItem><docInfo contentModuleType=\"{kind}\"><mmlSc:securityLevel><mmlSc:accessRight permit=\"all\"/></mmlSc:securityLevel><title generationPurpose=\"{kind}\">{}</title><docId><uid>{}</uid></docId><confirmDate>{}</confirmDate>{creator}<extRefs/></docInfo><content>{content}</content></MmlModuleItem>",
        esc(title),
        esc(uid),
        esc(date),
    );
}

/// MML date-times (`YYYY-MM-DDThh:mm:ss`, local time): a FHIR date gains midnight.
fn mml_datetime(fhir: &str) -> String {
    if fhir.len() >= 19 {
        fhir[..19].to_string()
    } else {
        format!("{}T00:00:00", &fhir[..fhir.len().min(10)])
    }
}

/// The document's unique id: its business identifier (Composition, else Bundle) as 32
/// hexadecimal digits of its SHA-256, else its Composition id; the same on every export.
fn document_uid(doc: &DocumentView<'_>) -> String {
    let c = doc.composition;
    let key = match c.identifier.as_ref().or(doc.bundle.identifier.as_ref()) {
        Some(i) => format!("{}|{}", i.system.as_deref().unwrap_or(""), i.value.as_deref().unwrap_or("")),
        None => format!("Composition/{}|{}|{}", c.id.as_deref().unwrap_or(""), c.date, c.title),
    };
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    d.as_ref()[..16].iter().map(|b| format!("{b:02X}")).collect()
}

/// A name as MML writes it: family and given when both are known, else the full name.
fn mml_name(n: &kakehashi_fhir::HumanName) -> String {
    let rep = n.extension.iter().find_map(|e| e.value_code.as_deref()).map(|c| match c {
        "SYL" => "P",
        "ABC" => "A",
        _ => "I",
    });
    let mut s = format!("<mmlNm:Name mmlNm:repCode=\"{}\" mmlNm:tableId=\"MML0025\">", rep.unwrap_or("I"));
    match (&n.family, n.given.first()) {
        (Some(f), Some(g)) => {
            let _ = write!(s, "<mmlNm:family>{}</mmlNm:family><mmlNm:given>{}</mmlNm:given>", esc(f), esc(g));
        }
        _ => {
            let full = n.text.clone().unwrap_or_else(|| {
                n.family.iter().chain(n.given.iter()).map(String::as_str).collect::<Vec<_>>().join(" ")
            });
            let _ = write!(s, "<mmlNm:fullname>{}</mmlNm:fullname>", esc(&full));
        }
    }
    s.push_str("</mmlNm:Name>");
    s
}

fn patient_module(p: &kakehashi_fhir::Patient, master: &str) -> String {
    let mut pi = format!("<mmlPi:PatientModule><mmlPi:uniqueInfo><mmlPi:masterId><mmlCm:Id mmlCm:type=\"facility\" mmlCm:tableId=\"MML0024\">{}</mmlCm:Id></mmlPi:masterId></mmlPi:uniqueInfo><mmlPi:personName>", esc(master));
    for n in &p.name {
        pi.push_str(&mml_name(n));
    }
    if p.name.is_empty() {
        pi.push_str(
            "<mmlNm:Name mmlNm:repCode=\"I\" mmlNm:tableId=\"MML0025\"><mmlNm:fullname></mmlNm:fullname></mmlNm:Name>",
        );
    }
    pi.push_str("</mmlPi:personName>");
    // The schema requires both; documents without them are refused before export
    // (the push API, `translate --to mml`), so nothing is made up here.
    if let Some(b) = &p.birth_date {
        let _ = write!(pi, "<mmlPi:birthday>{}</mmlPi:birthday>", esc(&b[..b.len().min(10)]));
    }
    if let Some(g) = &p.gender {
        let _ = write!(pi, "<mmlPi:sex>{}</mmlPi:sex>", esc(g));
    }
    pi.push_str("</mmlPi:PatientModule>");
    pi
}

/// What MML requires of a document that FHIR does not: the patient's birth date and
/// sex. `None` when the document has them.
pub fn missing(doc: &DocumentView<'_>) -> Option<&'static str> {
    match doc.patient() {
        None => Some("Composition.subject (the patient)"),
        Some(p) if p.birth_date.is_none() => Some("Patient.birthDate"),
        Some(p) if p.gender.is_none() => Some("Patient.gender"),
        Some(_) => None,
    }
}

/// Write the document as one MML 4 instance, valid against the MML 4 schemas when
/// [`missing`] finds nothing missing.
pub fn to_mml(doc: &DocumentView<'_>) -> String {
    let c = doc.composition;
    let patient = doc.patient();
    let master = patient.and_then(|p| p.identifier.first()).and_then(|i| i.value.clone()).unwrap_or_default();
    let date = mml_datetime(&c.date);
    let creator = Creator::of(doc);
    let creator_xml = creator.xml();
    let uid = document_uid(doc);
    let summary = c.type_.coding.iter().any(|x| x.code.as_deref() == Some("18842-5"));
    let institution = creator.facility.as_ref().map(|(_, code)| code.as_str()).unwrap_or("MML0024");
    let mut out = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Mml version=\"4.0\" createDate=\"{}\" {NS}><MmlHeader>{creator_xml}<masterId><mmlCm:Id mmlCm:type=\"facility\" mmlCm:tableId=\"{}\">{}</mmlCm:Id></masterId></MmlHeader><MmlBody>", esc(&date), esc(institution), esc(&master));
    let patient_xml = patient.map(|p| patient_module(p, &master));

    // The narrative document: each section in the element the module has for it, in
    // the schema's order; sections without one travel in remarks as 【title】 blocks.
    let sections = doc.sections();
    let mut by_element: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let mut remarks = Vec::new();
    for s in &sections {
        if s.text.is_empty() {
            continue;
        }
        let code = s.code.as_deref().unwrap_or("");
        if code == crate::document::RECIPIENT_SECTION || code == crate::document::SENDER_SECTION || code == "300" {
            continue;
        }
        let element = SECTIONS.iter().find(|x| x.code == code).map(|x| if summary { x.summary } else { x.referral });
        match element {
            Some(e) if !e.is_empty() && !by_element.contains_key(e) => {
                by_element.insert(e, s.text.clone());
            }
            _ => remarks.push(format!("【{}】\n{}", s.title.clone().unwrap_or_else(|| code.to_string()), s.text)),
        }
    }
    let text = |e: &str| by_element.get(e).map(|t| esc(t)).unwrap_or_default();
    let course = |prefix: &str| {
        by_element.get("clinicalCourse").map(|t| {
            format!(
                "<{prefix}:clinicalCourse><mmlSm:clinicalRecord>{}</mmlSm:clinicalRecord></{prefix}:clinicalCourse>",
                esc(t)
            )
        })
    };
    let remarks = (!remarks.is_empty()).then(|| esc(&remarks.join("\n")));
    let body = if summary {
        let mut b = String::from("<mmlSm:SummaryModule><mmlSm:serviceHistory/>");
        for e in ["chiefComplaints", "history", "physicalExam"] {
            if by_element.contains_key(e) {
                let _ = write!(b, "<mmlSm:{e}>{}</mmlSm:{e}>", text(e));
            }
        }
        b.push_str(&course("mmlSm").unwrap_or_default());
        for e in ["medication", "testResults"] {
            if by_element.contains_key(e) {
                let _ = write!(b, "<mmlSm:{e}>{}</mmlSm:{e}>", text(e));
            }
        }
        if let Some(r) = &remarks {
            let _ = write!(b, "<mmlSm:remarks>{r}</mmlSm:remarks>");
        }
        b.push_str("</mmlSm:SummaryModule>");
        b
    } else {
        // The Referral module carries its own PatientModule, the referring doctor, and
        // the elements the schema requires even when the document has nothing for them
        // (chief complaints, present illness, purpose, the facility referred to).
        let mut b = String::from("<mmlRe:ReferralModule>");
        b.push_str(&patient_xml.clone().unwrap_or_else(|| patient_module(&Default::default(), &master)));
        let _ = write!(b, "<mmlRe:referFrom>{}</mmlRe:referFrom>", creator.personalized());
        let _ = write!(b, "<mmlRe:title>{}</mmlRe:title>", esc(&c.title));
        let _ = write!(b, "<mmlRe:chiefComplaints>{}</mmlRe:chiefComplaints>", text("chiefComplaints"));
        for e in ["clinicalDiagnosis", "pastHistory", "familyHistory"] {
            if by_element.contains_key(e) {
                let _ = write!(b, "<mmlRe:{e}>{}</mmlRe:{e}>", text(e));
            }
        }
        let _ = write!(b, "<mmlRe:presentIllness>{}</mmlRe:presentIllness>", text("presentIllness"));
        if by_element.contains_key("testResults") {
            let _ = write!(b, "<mmlRe:testResults>{}</mmlRe:testResults>", text("testResults"));
        }
        b.push_str(&course("mmlSm").unwrap_or_default());
        if by_element.contains_key("medication") {
            let _ = write!(b, "<mmlRe:medication>{}</mmlRe:medication>", text("medication"));
        }
        let _ = write!(b, "<mmlRe:referPurpose>{}</mmlRe:referPurpose>", text("referPurpose"));
        if let Some(r) = &remarks {
            let _ = write!(b, "<mmlRe:remarks>{r}</mmlRe:remarks>");
        }
        let to = doc.institution_in_section(crate::document::RECIPIENT_SECTION).unwrap_or_default();
        let _ = write!(b, "<mmlRe:referToFacility>{}</mmlRe:referToFacility>", facility(&to, &to));
        b.push_str("</mmlRe:ReferralModule>");
        b
    };
    // A summary's patient comes as its own module; a referral carries it inside.
    if let (true, Some(pi)) = (summary, &patient_xml) {
        item(&mut out, "patientInfo", &format!("{uid}P"), "患者情報", &date, &creator_xml, pi);
    }
    let kind = if summary { "summary" } else { "referral" };
    item(&mut out, kind, &uid, &c.title, &date, &creator_xml, &body);

    // Structured entries as their own modules.
    for (i, r) in entries(&sections).into_iter().enumerate() {
        let uid = format!("{uid}E{i}");
        match r {
            Resource::Condition(x) => {
                let name = x.code.as_ref().map(concept_text).unwrap_or_default();
                let coding = x.code.as_ref().and_then(|c| c.coding.first());
                let code_attr = coding
                    .and_then(|c| c.code.as_ref())
                    .map(|c| {
                        format!(
                            " mmlRd:code=\"{}\" mmlRd:system=\"{}\"",
                            esc(c),
                            esc(&system_name(coding.and_then(|c| c.system.as_deref())))
                        )
                    })
                    .unwrap_or_default();
                let mut m = format!(
                    "<mmlRd:RegisteredDiagnosisModule><mmlRd:diagnosis{code_attr}>{}</mmlRd:diagnosis>",
                    esc(&name)
                );
                // MML dates are whole days: an onset known only to the month or year
                // (FHIR allows it) is not written rather than made precise.
                if let Some(o) = x.onset_date_time.as_deref().filter(|o| o.len() >= 10) {
                    let _ = write!(m, "<mmlRd:startDate>{}</mmlRd:startDate>", esc(&o[..10]));
                }
                m.push_str("</mmlRd:RegisteredDiagnosisModule>");
                item(&mut out, "registeredDiagnosis", &uid, "傷病名", &date, &creator_xml, &m);
            }
            Resource::MedicationRequest(x) => {
                let Some(m) = prescription(x, &c.date) else { continue };
                item(&mut out, "prescription", &uid, "処方", &date, &creator_xml, &m);
            }
            Resource::AllergyIntolerance(x) => {
                let name = x.code.as_ref().map(concept_text).unwrap_or_default();
                let m = format!("<mmlBc:BaseClinicModule><mmlBc:allergy><mmlBc:allergyItem><mmlBc:factor>{}</mmlBc:factor></mmlBc:allergyItem></mmlBc:allergy></mmlBc:BaseClinicModule>", esc(&name));
                item(&mut out, "baseClinic", &uid, "アレルギー", &date, &creator_xml, &m);
            }
            _ => {}
        }
    }
    out.push_str("</MmlBody></Mml>\n");
    out
}

/// A MedicationRequest as an MML PrescriptionModule: drug name and code, dose and unit,
/// start date (its period of use, else when it was written, else the document's date),
/// duration, instruction. MML requires a dose: a request without one is left to the
/// document's medication text.
fn prescription(x: &kakehashi_fhir::MedicationRequest, doc_date: &str) -> Option<String> {
    let dosage = x.dosage_instruction.first();
    let dose = dosage.and_then(|d| d.dose_and_rate.first()).and_then(|d| d.dose_quantity.as_ref())?;
    let value = dose.value?;
    let unit = dose.unit.clone().or_else(|| dose.code.clone()).unwrap_or_default();
    let concept = x.medication_codeable_concept.as_ref();
    let name = concept.map(concept_text).unwrap_or_default();
    let mut medicine = format!("<mmlPs:name>{}</mmlPs:name>", esc(&name));
    for coding in concept.map(|c| c.coding.as_slice()).unwrap_or_default() {
        if let Some(code) = &coding.code {
            let system = match coding.system.as_deref() {
                Some("urn:oid:1.2.392.200119.4.403.1") => "HOT9",
                Some(s) if s.contains("YJ") => "YJ",
                Some(s) => s,
                None => "local",
            };
            let _ = write!(medicine, "<mmlPs:code mmlPs:system=\"{}\">{}</mmlPs:code>", esc(system), esc(code));
        }
    }
    let start = dosage
        .and_then(|d| d.extension.iter().find_map(|e| e.value_period.as_ref().and_then(|p| p.start.clone())))
        .or_else(|| x.authored_on.clone())
        .unwrap_or_else(|| doc_date.to_string());
    let mut m = format!(
        "<mmlPs:PrescriptionModule><mmlPs:medication><mmlPs:medicine>{medicine}</mmlPs:medicine><mmlPs:dose>{value}</mmlPs:dose><mmlPs:doseUnit>{}</mmlPs:doseUnit><mmlPs:startDate>{}</mmlPs:startDate>",
        esc(&unit),
        esc(&start[..start.len().min(10)])
    );
    let days = x
        .dispense_request
        .as_ref()
        .and_then(|d| d.expected_supply_duration.as_ref())
        .or_else(|| {
            dosage
                .and_then(|d| d.timing.as_ref())
                .and_then(|t| t.repeat.as_ref())
                .and_then(|r| r.bounds_duration.as_ref())
        })
        .filter(|q| q.code.as_deref().unwrap_or("d") == "d")
        .and_then(|q| q.value);
    if let Some(d) = days {
        let _ = write!(m, "<mmlPs:duration>P{}D</mmlPs:duration>", d.round() as i64);
    }
    if let Some(text) = dosage.and_then(|d| d.text.as_ref()) {
        let _ = write!(m, "<mmlPs:instruction>{}</mmlPs:instruction>", esc(text));
    }
    m.push_str("</mmlPs:medication></mmlPs:PrescriptionModule>");
    Some(m)
}

/// An MML diagnosis `system` name for a FHIR code system.
fn system_name(system: Option<&str>) -> String {
    match system {
        Some(s) if s.contains("ICD10") || s.contains("icd-10") => "ICD10".into(),
        Some(s) if s.contains("medis") => "MEDIS".into(),
        Some(s) => s.to_string(),
        None => "local".into(),
    }
}
