//! FHIR document → MML 4.x.

use super::{concept_text, entries, esc, SECTIONS};
use crate::document::DocumentView;
use kakehashi_fhir::Resource;
use std::fmt::Write;

const NS: &str = r#"xmlns="http://www.medxml.net/MML/v4/base/1.0" xmlns:mmlCm="http://www.medxml.net/MML/v4/SharedComponent/Common/1.0" xmlns:mmlNm="http://www.medxml.net/MML/v4/SharedComponent/Name/1.0" xmlns:mmlFc="http://www.medxml.net/MML/v4/SharedComponent/Facility/1.0" xmlns:mmlPsi="http://www.medxml.net/MML/v4/SharedComponent/PersonalizedInfo/1.0" xmlns:mmlCi="http://www.medxml.net/MML/v4/SharedComponent/CreatorInfo/1.0" xmlns:mmlSc="http://www.medxml.net/MML/v4/SharedComponent/Security/1.0" xmlns:mmlPi="http://www.medxml.net/MML/v4/ContentModule/PatientInfo/1.0" xmlns:mmlRe="http://www.medxml.net/MML/v4/ContentModule/Referral/1.0" xmlns:mmlSm="http://www.medxml.net/MML/v4/ContentModule/Summary/1.0" xmlns:mmlRd="http://www.medxml.net/MML/v4/ContentModule/RegisteredDiagnosis/1.0" xmlns:mmlPs="http://www.medxml.net/MML/v4/ContentModule/Prescription/1.0" xmlns:mmlBc="http://www.medxml.net/MML/v4/ContentModule/BaseClinic/1.0" xmlns:mmlAd="http://www.medxml.net/MML/v4/SharedComponent/Address/1.0" xmlns:mmlPh="http://www.medxml.net/MML/v4/SharedComponent/Phone/1.0" xmlns:mmlLb="http://www.medxml.net/MML/v4/ContentModule/test/1.0" xmlns:mmlVs="http://www.medxml.net/MML/v4/ContentModule/VitalSign/1.0""#;

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
        // The facility: the organisation among the authors, else the custodian.
        let named = |r: &Resource| match r {
            Resource::Organization(o) => {
                let code = crate::document::institution_code(o)?;
                Some((o.name.clone().unwrap_or_else(|| code.clone()), code))
            }
            _ => None,
        };
        let custodian = c
            .author
            .iter()
            .filter_map(|a| doc.resolve(a))
            .find_map(named)
            .or_else(|| c.custodian.as_ref().and_then(|r| doc.resolve(r)).and_then(named));
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

/// The title of the remarks block a Summary's recipient travels in.
pub const RECIPIENT_BLOCK: &str = "紹介先情報";

/// `【紹介先情報】` and the receiving institution as `name (institution code)`, the
/// doctor on the next line.
fn recipient_block(entries: &[&Resource]) -> Option<String> {
    let org = crate::document::organization_in(entries)?;
    let code = crate::document::institution_code(org)?;
    let mut block = format!("【{RECIPIENT_BLOCK}】\n{} ({code})", org.name.clone().unwrap_or_default());
    for r in entries {
        if let Resource::Practitioner(p) = r {
            if let Some(n) = p.name.first().and_then(|n| n.text.clone()) {
                block.push_str(&format!("\n{n}"));
            }
        }
    }
    Some(block)
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
    item_for(out, kind, kind, uid, title, date, creator, content)
}

/// A module item whose title names why it was written (MML0007 generationPurpose).
#[allow(clippy::too_many_arguments)]
fn item_for(
    out: &mut String,
    kind: &str,
    purpose: &str,
    uid: &str,
    title: &str,
    date: &str,
    creator: &str,
    content: &str,
) {
    let _ = write!(
        out,
        "<MmlModuleItem><docInfo contentModuleType=\"{kind}\"><mmlSc:securityLevel><mmlSc:accessRight permit=\"all\"/></mmlSc:securityLevel><title generationPurpose=\"{purpose}\">{}</title><docId><uid>{}</uid></docId><confirmDate>{}</confirmDate>{creator}<extRefs/></docInfo><content>{content}</content></MmlModuleItem>",
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
    // A name without a representation (not known to be Japanese) keeps its written
    // form whole, in its own order.
    let whole = rep.is_none() && n.text.is_some();
    match (&n.family, n.given.first()) {
        (Some(f), Some(g)) if !whole => {
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
    if !p.address.is_empty() {
        pi.push_str("<mmlPi:addresses>");
        for a in &p.address {
            let class = match a.use_.as_deref() {
                Some("work") => "business",
                _ => "home",
            };
            let _ = write!(
                pi,
                "<mmlAd:Address mmlAd:repCode=\"I\" mmlAd:addressClass=\"{class}\" mmlAd:tableId=\"MML0025\">"
            );
            // MML has either the whole address or its parts. The parts are written when
            // they make up the text (prefecture and city at its start, the rest the town),
            // so both come back; otherwise the text alone.
            let head = format!("{}{}", a.state.clone().unwrap_or_default(), a.city.clone().unwrap_or_default());
            let rest = match &a.text {
                Some(t) if !head.is_empty() && t.starts_with(&head) => Some(t[head.len()..].trim().to_string()),
                Some(_) => None,
                None => Some(a.line.join(" ")),
            };
            let parts: Vec<(&str, Option<String>)> = match rest {
                Some(town) => vec![
                    ("prefecture", a.state.clone()),
                    ("city", a.city.clone()),
                    ("town", (!town.is_empty()).then_some(town)),
                ],
                None => vec![("full", a.text.clone())],
            };
            for (tag, v) in
                parts.into_iter().chain([("zip", a.postal_code.clone()), ("countryCode", a.country.clone())])
            {
                if let Some(v) = v {
                    let _ = write!(pi, "<mmlAd:{tag}>{}</mmlAd:{tag}>", esc(&v));
                }
            }
            pi.push_str("</mmlAd:Address>");
        }
        pi.push_str("</mmlPi:addresses>");
    }
    let emails: Vec<&str> =
        p.telecom.iter().filter(|t| t.system.as_deref() == Some("email")).filter_map(|t| t.value.as_deref()).collect();
    if !emails.is_empty() {
        pi.push_str("<mmlPi:emailAddresses>");
        for e in emails {
            let _ = write!(pi, "<mmlCm:email>{}</mmlCm:email>", esc(e));
        }
        pi.push_str("</mmlPi:emailAddresses>");
    }
    let phones: Vec<_> =
        p.telecom.iter().filter(|t| matches!(t.system.as_deref(), Some("phone" | "fax" | "sms"))).collect();
    if !phones.is_empty() {
        pi.push_str("<mmlPi:phones>");
        for t in phones {
            let equip = match (t.system.as_deref(), t.use_.as_deref()) {
                (Some("fax"), _) => "FX",
                (_, Some("mobile")) => "CP",
                _ => "PH",
            };
            let _ = write!(
                pi,
                "<mmlPh:Phone mmlPh:telEquipType=\"{equip}\"><mmlPh:full>{}</mmlPh:full></mmlPh:Phone>",
                esc(t.value.as_deref().unwrap_or(""))
            );
        }
        pi.push_str("</mmlPi:phones>");
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
    // A referral (57133-1) is a ReferralModule; any other document a SummaryModule.
    let summary = !c.type_.coding.iter().any(|x| x.code.as_deref() == Some("57133-1"));
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
        if code == crate::document::RECIPIENT_SECTION && summary {
            // A SummaryModule has no element for the institution it goes to: it travels
            // as a 【紹介先情報】 remarks block naming the institution and its code.
            if let Some(block) = recipient_block(&s.entries) {
                remarks.push(block);
            }
            continue;
        }
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
        if by_element.contains_key("medication") {
            let _ = write!(b, "<mmlSm:medication>{}</mmlSm:medication>", text("medication"));
        }
        if by_element.contains_key("testResults") {
            let _ = write!(
                b,
                "<mmlSm:testResults><mmlSm:testResult>{}</mmlSm:testResult></mmlSm:testResults>",
                text("testResults")
            );
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
        let to = crate::document::organization_in(&crate::document::entries_in(
            &sections,
            crate::document::RECIPIENT_SECTION,
        ));
        let code = to.and_then(crate::document::institution_code).unwrap_or_default();
        let name = to.and_then(|o| o.name.clone()).unwrap_or_else(|| code.clone());
        let _ = write!(b, "<mmlRe:referToFacility>{}</mmlRe:referToFacility>", facility(&name, &code));
        b.push_str("</mmlRe:ReferralModule>");
        b
    };
    // A summary's patient comes as its own module; a referral carries it inside.
    if let (true, Some(pi)) = (summary, &patient_xml) {
        item(&mut out, "patientInfo", &format!("{uid}P"), "患者情報", &date, &creator_xml, pi);
    }
    let kind = if summary { "summary" } else { "referral" };
    // A discharge summary says so (MML0007 `discharge`), so it reads back as one.
    let discharge = c.type_.coding.iter().any(|x| x.code.as_deref() == Some("18842-5"));
    item_for(&mut out, kind, if discharge { "discharge" } else { kind }, &uid, &c.title, &date, &creator_xml, &body);

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
                // MML0016 outcome for a problem that is no longer active.
                let outcome =
                    match x.clinical_status.as_ref().and_then(|s| s.coding.first()).and_then(|c| c.code.as_deref()) {
                        Some("resolved") => Some("fullyRecovered"),
                        Some("remission") => Some("recovering"),
                        Some("inactive") => Some("end"),
                        _ => None,
                    };
                if let Some(o) = outcome {
                    let _ = write!(m, "<mmlRd:outcome>{o}</mmlRd:outcome>");
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
                let mut a = format!("<mmlBc:factor>{}</mmlBc:factor>", esc(&name));
                if let Some(o) = &x.onset_date_time {
                    let _ = write!(a, "<mmlBc:identifiedDate>{}</mmlBc:identifiedDate>", esc(&o[..o.len().min(10)]));
                }
                // Reactions travel as `症状:` lines of the memo (MML has no element for them).
                let reactions: Vec<String> = x
                    .reaction
                    .iter()
                    .flat_map(|r| r.manifestation.iter().map(concept_text))
                    .filter(|t| !t.is_empty())
                    .map(|t| format!("{}{t}", crate::mml::REACTION_PREFIX))
                    .collect();
                if !reactions.is_empty() {
                    let _ = write!(a, "<mmlBc:memo>{}</mmlBc:memo>", esc(&reactions.join("\n")));
                }
                let m = format!("<mmlBc:BaseClinicModule><mmlBc:allergy><mmlBc:allergyItem>{a}</mmlBc:allergyItem></mmlBc:allergy></mmlBc:BaseClinicModule>");
                item(&mut out, "baseClinic", &uid, "アレルギー", &date, &creator_xml, &m);
            }
            Resource::Observation(x) => {
                // The VitalSignModule names an item without a code: a vital sign goes there
                // only when its name gives back its code, else it is a coded test item.
                let vital =
                    x.category.iter().flat_map(|c| c.coding.iter()).any(|c| c.code.as_deref() == Some("vital-signs"));
                let named = crate::mml::vital_loinc(&concept_text(&x.code)).map(|(code, _)| ("http://loinc.org", code));
                let coded: Vec<_> =
                    x.code.coding.iter().filter_map(|c| Some((c.system.as_deref()?, c.code.as_deref()?))).collect();
                let name_is_code = match (named, coded.as_slice()) {
                    (Some(n), [one]) => n == *one,
                    (None, []) => true,
                    _ => false,
                };
                if let Some(m) = vital_sign(x).filter(|_| vital && name_is_code) {
                    item(&mut out, "vitalsign", &uid, "バイタルサイン", &date, &creator_xml, &m);
                } else {
                    let m = test_result(x, &uid, &date, creator.facility.as_ref());
                    item(&mut out, "test", &uid, "検査結果", &date, &creator_xml, &m);
                }
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
    let start = super::course_start(x).or_else(|| x.authored_on.clone()).unwrap_or_else(|| doc_date.to_string());
    let mut m = format!(
        "<mmlPs:PrescriptionModule><mmlPs:medication><mmlPs:medicine>{medicine}</mmlPs:medicine><mmlPs:dose>{value}</mmlPs:dose><mmlPs:doseUnit>{}</mmlPs:doseUnit>",
        esc(&unit)
    );
    // MML counts doses a day; other schedules stay in the instruction text.
    let repeat = dosage.and_then(|d| d.timing.as_ref()).and_then(|t| t.repeat.as_ref());
    if let (Some(f), Some(1.0), Some("d")) =
        (repeat.and_then(|r| r.frequency), repeat.and_then(|r| r.period), repeat.and_then(|r| r.period_unit.as_deref()))
    {
        let _ = write!(m, "<mmlPs:frequencyPerDay>{f}</mmlPs:frequencyPerDay>");
    }
    let _ = write!(m, "<mmlPs:startDate>{}</mmlPs:startDate>", esc(&start[..start.len().min(10)]));
    let days = super::supply_days(x);
    if let Some(d) = days {
        let _ = write!(m, "<mmlPs:duration>P{}D</mmlPs:duration>", d.round() as i64);
    }
    if let Some(text) = dosage.and_then(|d| d.text.as_ref()) {
        let _ = write!(m, "<mmlPs:instruction>{}</mmlPs:instruction>", esc(text));
    }
    let rp = x
        .identifier
        .iter()
        .find(|i| i.system.as_deref() == Some(crate::codes::RP_NUMBER))
        .and_then(|i| i.value.as_ref());
    if let Some(rp) = rp {
        let _ = write!(m, "<mmlPs:batchNo>{}</mmlPs:batchNo>", esc(rp));
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

/// An MML date-time from a FHIR one (local time as written, seconds added).
fn mml_time(fhir: Option<&str>, fallback: &str) -> String {
    mml_datetime(fhir.unwrap_or(fallback))
}

/// An MML code-table name for a FHIR code system (the MML import's inverse): JLAC10
/// and LOINC by name, any other system as its URI.
fn lab_code_id(system: Option<&str>) -> String {
    match system {
        Some("urn:oid:1.2.392.200119.4.504") => "JLAC10".into(),
        Some("http://loinc.org") => "LOINC".into(),
        Some(s) => s.to_string(),
        None => String::new(),
    }
}

/// The value of an Observation as MML writes it: the text, and the number when there
/// is one, with its unit and interpretation.
fn observation_value(x: &kakehashi_fhir::Observation) -> (String, Option<f64>, Option<String>, Option<String>) {
    let unit = x.value_quantity.as_ref().and_then(|q| q.unit.clone().or_else(|| q.code.clone()));
    let number = x.value_quantity.as_ref().and_then(|q| q.value);
    let text = match (number, &x.value_codeable_concept, &x.value_string) {
        (Some(n), _, _) => format!("{n}"),
        (_, Some(c), _) => concept_text(c),
        (_, _, Some(s)) => s.clone(),
        _ => String::new(),
    };
    let out = x.interpretation.iter().find_map(|i| i.coding.first().and_then(|c| c.code.clone()));
    (text, number, unit, out)
}

/// A laboratory (or any non-vital) Observation as one MML TestModule: who reported it
/// is the document's facility; the specimen is not known to FHIR here and is written
/// without a code.
fn test_result(
    x: &kakehashi_fhir::Observation,
    uid: &str,
    doc_date: &str,
    facility: Option<&(String, String)>,
) -> String {
    // MML times are date-times: a time known only to the day, month or year is not
    // written (the report and registration times then fall back to the document's).
    let timed = |t: &Option<String>| t.clone().filter(|t| t.len() >= 16);
    let sampled = timed(&x.effective_date_time).map(|t| mml_datetime(&t));
    let reported = mml_time(timed(&x.issued).or_else(|| timed(&x.effective_date_time)).as_deref(), doc_date);
    let (name, code) = facility.cloned().unwrap_or_default();
    let mut m = format!(
        "<mmlLb:TestModule><mmlLb:information mmlLb:registId=\"{}\"{} mmlLb:registTime=\"{}\" mmlLb:reportTime=\"{}\">",
        esc(uid),
        sampled.map(|s| format!(" mmlLb:sampleTime=\"{}\"", esc(&s))).unwrap_or_default(),
        esc(&reported),
        esc(&reported)
    );
    let status = if x.status == "preliminary" { ("mid", "中間報告") } else { ("final", "最終報告") };
    let _ = write!(
        m,
        "<mmlLb:reportStatus mmlLb:statusCode=\"{}\" mmlLb:statusCodeId=\"mmlLB0001\">{}</mmlLb:reportStatus><mmlLb:facility mmlLb:facilityCode=\"{}\" mmlLb:facilityCodeId=\"insurance\">{}</mmlLb:facility><mmlLb:laboratoryCenter mmlLb:centerCode=\"{}\" mmlLb:centerCodeId=\"insurance\">{}</mmlLb:laboratoryCenter></mmlLb:information>",
        status.0, status.1, esc(&code), esc(&name), esc(&code), esc(&name)
    );
    let coding = x.code.coding.first();
    let (text, number, unit, out) = observation_value(x);
    let _ = write!(
        m,
        "<mmlLb:laboTest><mmlLb:specimen><mmlLb:specimenName mmlLb:spCode=\"\" mmlLb:spCodeId=\"\"></mmlLb:specimenName></mmlLb:specimen><mmlLb:item><mmlLb:itemName mmlLb:itCode=\"{}\" mmlLb:itCodeId=\"{}\">{}</mmlLb:itemName><mmlLb:value>{}</mmlLb:value>",
        esc(coding.and_then(|c| c.code.as_deref()).unwrap_or("")),
        esc(&lab_code_id(coding.and_then(|c| c.system.as_deref()))),
        esc(&concept_text(&x.code)),
        esc(&text)
    );
    if let Some(n) = number {
        let out = out.map(|o| format!(" mmlLb:out=\"{}\"", esc(&o))).unwrap_or_default();
        let _ = write!(m, "<mmlLb:numValue{out}>{n}</mmlLb:numValue>");
    }
    if let Some(u) = unit {
        let _ = write!(m, "<mmlLb:unit>{}</mmlLb:unit>", esc(&u));
    }
    m.push_str("</mmlLb:item></mmlLb:laboTest></mmlLb:TestModule>");
    m
}

/// A vital-sign Observation as an MML VitalSignModule (name, value, unit, time). MML
/// requires the time; an Observation without one is left to the narrative.
fn vital_sign(x: &kakehashi_fhir::Observation) -> Option<String> {
    let time = x.effective_date_time.as_deref().filter(|t| t.len() >= 16)?;
    let (text, number, unit, _) = observation_value(x);
    let mut m =
        format!("<mmlVs:VitalSignModule><mmlVs:item><mmlVs:itemName>{}</mmlVs:itemName>", esc(&concept_text(&x.code)));
    match number {
        Some(n) => {
            let _ = write!(m, "<mmlVs:numValue>{n}</mmlVs:numValue>");
        }
        None => {
            let _ = write!(m, "<mmlVs:value>{}</mmlVs:value>", esc(&text));
        }
    }
    if let Some(u) = unit {
        let _ = write!(m, "<mmlVs:unit>{}</mmlVs:unit>", esc(&u));
    }
    let _ = write!(
        m,
        "</mmlVs:item><mmlVs:observedTime>{}</mmlVs:observedTime></mmlVs:VitalSignModule>",
        esc(&mml_datetime(time))
    );
    Some(m)
}
