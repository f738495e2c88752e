//! Problems (PPR-01, PPR^ZD1): a Condition per PRB with the MEDIS disease code
//! (病名管理番号 / 病名交換用コード) and ICD-10, onset, abatement and clinical status.

use super::{at, At, Helper};
use crate::codes;
use crate::Translation;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    let zpr = m.segment("ZPR");
    let mut any = false;
    for prb in m.segments("PRB") {
        any = true;
        let action = h.field(prb, 1).trim();
        let Some(mut code) = h.concept(h.field(prb, 3), &At(prb, 3), t) else {
            t.warn(at(prb, 3), "problem without a code; not mapped");
            continue;
        };
        // MDCDX2 carries both the 8-digit 病名管理番号 and the 4-character 病名交換用コード.
        for c in &mut code.coding {
            if c.system.as_deref() == codes::system_for("MDCDX2") && c.code.as_deref().is_some_and(|v| v.len() == 4) {
                c.system = Some(codes::MEDIS_EXCHANGE.into());
            }
        }
        if let Some(z) = zpr {
            let ex = m.component(h.field(z, 5), 1).trim().to_string();
            if ex.len() == 4 && !code.coding.iter().any(|c| c.code.as_deref() == Some(ex.as_str())) {
                let mut c = Coding::new(codes::MEDIS_EXCHANGE, ex);
                let d = m.component(h.field(z, 5), 2).trim().to_string();
                if !d.is_empty() {
                    c.display = Some(d);
                }
                code.coding.push(c);
            }
        }
        if let Some(icd) = h.concept(h.field(prb, 10), &At(prb, 10), t) {
            code.coding.extend(icd.coding.into_iter().filter(|c| c.system.as_deref() == codes::system_for("I10")));
        }
        let instance = h.comp(prb, 4, 1);
        let key = format!(
            "{}:PRB:{}",
            h.pid,
            if instance.is_empty() {
                code.coding.first().and_then(|c| c.code.clone()).unwrap_or_default()
            } else {
                instance
            }
        );
        let abatement = h.when(prb, 9, t);
        let outcome = h.comp(prb, 14, 1);
        let clinical = match (action, abatement.is_some(), outcome.as_str()) {
            ("DE", _, _) => None,
            (_, true, "N" | "D" | "P") => Some("inactive"),
            (_, true, _) => Some("resolved"),
            _ => Some("active"),
        };
        let verification = match (action, h.comp(prb, 13, 1).as_str()) {
            ("DE", _) => "entered-in-error",
            (_, "P") => "provisional",
            (_, "R") => "refuted",
            (_, "D") => "differential",
            _ => "confirmed",
        };
        let condition = Resource::Condition(Condition {
            id: Some(h.ctx.id_for("Condition", &key)),
            clinical_status: clinical.map(|c| {
                CodeableConcept::coding(Coding::new("http://terminology.hl7.org/CodeSystem/condition-clinical", c))
            }),
            verification_status: Some(CodeableConcept::coding(Coding::new(
                "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                verification,
            ))),
            category: vec![CodeableConcept::coding(Coding::new(
                "http://terminology.hl7.org/CodeSystem/condition-category",
                "problem-list-item",
            ))],
            code: Some(code),
            subject: h.patient_ref(),
            onset_date_time: h.when(prb, 16, t),
            abatement_date_time: abatement,
            recorded_date: h.when(prb, 2, t),
            note: {
                let text = m.unescape(h.field(prb, 17)).trim().to_string();
                (!text.is_empty()).then(|| Annotation { text, ..Default::default() }).into_iter().collect()
            },
            ..Default::default()
        });
        t.resources.push(condition);
    }
    if !any {
        t.warn("PRB", "problem message has no PRB segment");
    }
}
