//! FHIR document → MML 4.x.

use super::{concept_text, entries, esc, SECTIONS};
use crate::document::DocumentView;
use kakehashi_fhir::Resource;
use std::fmt::Write;

const NS: &str = r#"xmlns="http://www.medxml.net/MML/v4/base/1.0" xmlns:mmlCm="http://www.medxml.net/MML/v4/SharedComponent/Common/1.0" xmlns:mmlNm="http://www.medxml.net/MML/v4/SharedComponent/Name/1.0" xmlns:mmlFc="http://www.medxml.net/MML/v4/SharedComponent/Facility/1.0" xmlns:mmlPsi="http://www.medxml.net/MML/v4/SharedComponent/PersonalizedInfo/1.0" xmlns:mmlCi="http://www.medxml.net/MML/v4/SharedComponent/CreatorInfo/1.0" xmlns:mmlPi="http://www.medxml.net/MML/v4/ContentModule/PatientInfo/1.0" xmlns:mmlRe="http://www.medxml.net/MML/v4/ContentModule/Referral/1.0" xmlns:mmlSm="http://www.medxml.net/MML/v4/ContentModule/Summary/1.0" xmlns:mmlRd="http://www.medxml.net/MML/v4/ContentModule/RegisteredDiagnosis/1.0" xmlns:mmlPs="http://www.medxml.net/MML/v4/ContentModule/Prescription/1.0" xmlns:mmlBc="http://www.medxml.net/MML/v4/ContentModule/BaseClinic/1.0""#;

fn item(out: &mut String, kind: &str, uid: &str, title: &str, date: &str, author: &str, content: &str) {
    let _ = write!(
        out,
        "<MmlModuleItem><docInfo contentModuleType=\"{kind}\"><securityLevel><accessRight permit=\"all\"/></securityLevel><title generationPurpose=\"{kind}\">{}</title><docId><uid>{}</uid></docId><confirmDate>{}</confirmDate><mmlCi:CreatorInfo><mmlPsi:PersonalizedInfo><mmlCm:Id mmlCm:type=\"facility\" mmlCm:tableId=\"MML0024\">author</mmlCm:Id><mmlPsi:personName><mmlNm:Name mmlNm:repCode=\"I\" mmlNm:tableId=\"MML0025\"><mmlNm:fullname>{}</mmlNm:fullname></mmlNm:Name></mmlPsi:personName></mmlPsi:PersonalizedInfo><mmlCi:creatorLicense mmlCi:tableId=\"MML0026\">doctor</mmlCi:creatorLicense></mmlCi:CreatorInfo></docInfo><content>{content}</content></MmlModuleItem>",
        esc(title),
        esc(uid),
        esc(date),
        esc(author)
    );
}

/// MML dates: `YYYY-MM-DDThh:mm:ss` (local) or `YYYY-MM-DD`.
fn mml_date(fhir: &str) -> String {
    if fhir.len() >= 19 {
        fhir[..19].to_string()
    } else {
        fhir[..fhir.len().min(10)].to_string()
    }
}

/// Write the document as one MML 4 instance.
pub fn to_mml(doc: &DocumentView<'_>) -> String {
    let c = doc.composition;
    let patient = doc.patient();
    let master = patient.and_then(|p| p.identifier.first()).and_then(|i| i.value.clone()).unwrap_or_default();
    let date = mml_date(&c.date);
    let author = c.author.iter().find_map(|a| match doc.resolve(a) {
        Some(Resource::Practitioner(p)) => p.name.first().and_then(|n| n.text.clone().or_else(|| n.family.clone())),
        _ => a.display.clone(),
    });
    let author = author.unwrap_or_else(|| "(unknown)".into());
    let uid = c.id.clone().unwrap_or_default();
    let summary = c.type_.coding.iter().any(|x| x.code.as_deref() == Some("18842-5"));
    let mut out = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Mml version=\"4.0\" createDate=\"{}\" {NS}><MmlHeader><masterId><mmlCm:Id mmlCm:type=\"facility\" mmlCm:tableId=\"MML0024\">{}</mmlCm:Id></masterId></MmlHeader><MmlBody>", esc(&date), esc(&master));

    if let Some(p) = patient {
        let mut pi = format!("<mmlPi:PatientModule><mmlPi:uniqueInfo><mmlPi:masterId><mmlCm:Id mmlCm:type=\"facility\" mmlCm:tableId=\"MML0024\">{}</mmlCm:Id></mmlPi:masterId></mmlPi:uniqueInfo><mmlPi:personName>", esc(&master));
        for n in &p.name {
            let rep = n.extension.iter().find_map(|e| e.value_code.as_deref()).map(|c| match c {
                "SYL" => "P",
                "ABC" => "A",
                _ => "I",
            });
            let _ = write!(pi, "<mmlNm:Name mmlNm:repCode=\"{}\" mmlNm:tableId=\"MML0025\">", rep.unwrap_or("I"));
            match (&n.family, n.given.first()) {
                (Some(f), g) => {
                    let _ = write!(pi, "<mmlNm:family>{}</mmlNm:family>", esc(f));
                    if let Some(g) = g {
                        let _ = write!(pi, "<mmlNm:given>{}</mmlNm:given>", esc(g));
                    }
                }
                (None, _) => {
                    let _ = write!(pi, "<mmlNm:fullname>{}</mmlNm:fullname>", esc(n.text.as_deref().unwrap_or("")));
                }
            }
            pi.push_str("</mmlNm:Name>");
        }
        pi.push_str("</mmlPi:personName>");
        if let Some(b) = &p.birth_date {
            let _ = write!(pi, "<mmlPi:birthday>{}</mmlPi:birthday>", esc(b));
        }
        if let Some(g) = &p.gender {
            let _ = write!(pi, "<mmlPi:sex>{}</mmlPi:sex>", esc(g));
        }
        pi.push_str("</mmlPi:PatientModule>");
        item(&mut out, "patientInfo", &format!("{uid}-pi"), "患者情報", &date, &author, &pi);
    }

    // The narrative document, sections by JP-CLINS code.
    let sections = doc.sections();
    let (prefix, module, kind) =
        if summary { ("mmlSm", "SummaryModule", "summary") } else { ("mmlRe", "ReferralModule", "referral") };
    let mut body = format!("<{prefix}:{module}>");
    if !summary {
        let _ = write!(body, "<{prefix}:title>{}</{prefix}:title>", esc(&c.title));
    }
    let mut remarks = Vec::new();
    for s in &sections {
        if s.text.is_empty() {
            continue;
        }
        let code = s.code.as_deref().unwrap_or("");
        if code == crate::document::RECIPIENT_SECTION || code == crate::document::SENDER_SECTION || code == "300" {
            continue;
        }
        match SECTIONS.iter().find(|(c, _, _)| *c == code) {
            Some((_, element, _))
                if *element != "allergy" && (summary || !matches!(*element, "clinicalCourse" | "physicalExam")) =>
            {
                let _ = write!(body, "<{prefix}:{element}>{}</{prefix}:{element}>", esc(&s.text));
            }
            _ => remarks.push(format!("【{}】\n{}", s.title.clone().unwrap_or_else(|| code.to_string()), s.text)),
        }
    }
    if !remarks.is_empty() {
        let _ = write!(body, "<{prefix}:remarks>{}</{prefix}:remarks>", esc(&remarks.join("\n")));
    }
    if !summary {
        if let Some(to) = doc.institution_in_section(crate::document::RECIPIENT_SECTION) {
            let _ = write!(body, "<{prefix}:referToFacility><mmlFc:Facility><mmlFc:name mmlFc:repCode=\"I\" mmlFc:tableId=\"MML0025\">{to}</mmlFc:name><mmlCm:Id mmlCm:type=\"insurance\" mmlCm:tableId=\"MML0027\">{to}</mmlCm:Id></mmlFc:Facility></{prefix}:referToFacility>");
        }
    }
    let _ = write!(body, "</{prefix}:{module}>");
    item(&mut out, kind, &uid, &c.title, &date, &author, &body);

    // Structured entries as their own modules.
    for (i, r) in entries(&sections).into_iter().enumerate() {
        let uid = format!("{uid}-e{i}");
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
                if let Some(o) = &x.onset_date_time {
                    let _ = write!(m, "<mmlRd:startDate>{}</mmlRd:startDate>", esc(&o[..o.len().min(10)]));
                }
                m.push_str("</mmlRd:RegisteredDiagnosisModule>");
                item(&mut out, "registeredDiagnosis", &uid, "傷病名", &date, &author, &m);
            }
            Resource::MedicationRequest(x) => {
                let name = x.medication_codeable_concept.as_ref().map(concept_text).unwrap_or_default();
                let text = x.dosage_instruction.first().and_then(|d| d.text.clone()).unwrap_or_default();
                let m = format!("<mmlPs:PrescriptionModule><mmlPs:medication><mmlPs:medicine><mmlPs:name>{}</mmlPs:name></mmlPs:medicine><mmlPs:instruction>{}</mmlPs:instruction></mmlPs:medication></mmlPs:PrescriptionModule>", esc(&name), esc(&text));
                item(&mut out, "prescription", &uid, "処方", &date, &author, &m);
            }
            Resource::AllergyIntolerance(x) => {
                let name = x.code.as_ref().map(concept_text).unwrap_or_default();
                let m = format!("<mmlBc:BaseClinicModule><mmlBc:allergy><mmlBc:allergyItem><mmlBc:factor>{}</mmlBc:factor></mmlBc:allergyItem></mmlBc:allergy></mmlBc:BaseClinicModule>", esc(&name));
                item(&mut out, "baseClinic", &uid, "アレルギー", &date, &author, &m);
            }
            _ => {}
        }
    }
    out.push_str("</MmlBody></Mml>\n");
    out
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
