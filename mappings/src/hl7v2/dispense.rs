//! Dispensing (RDS^O13): the prescription (RXE, RXO) as a MedicationRequest, and
//! each dispense (RXD) as a MedicationDispense authorised by it.

use super::{at, medication, At, Helper};
use crate::Translation;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    let before = t.resources.len();
    medication::translate(h, t);
    let prescriptions: Vec<Reference> = t.resources[before..]
        .iter()
        .filter_map(|r| match r {
            Resource::MedicationRequest(mr) => Some(Reference {
                reference: Some(format!("MedicationRequest/{}", mr.id.clone().unwrap_or_default())),
                ..Default::default()
            }),
            _ => None,
        })
        .collect();
    let order = m.segment("ORC").map(|o| h.comp(o, 2, 1)).unwrap_or_default();
    let mut any = false;
    for (i, rxd) in m.segments("RXD").enumerate() {
        any = true;
        let Some(drug) = h.coded(rxd, 2, t) else {
            t.warn(at(rxd, 2), "dispense without a drug code; not mapped");
            continue;
        };
        let quantity = h.amount(rxd, 4, 5, t);
        let days = h.value(rxd, 12);
        let days_supply = h.number(&days, &At(rxd, 12), t).map(|v| Quantity {
            value: Some(v),
            unit: Some("日".into()),
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("d".into()),
            ..Default::default()
        });
        let performer = h
            .reps(rxd, 10)
            .collect::<Vec<_>>()
            .iter()
            .filter_map(|p| h.person_of(p))
            .map(|actor| Performer { function: None, actor })
            .collect();
        let prescription_no = h.value(rxd, 7);
        let key = format!("{}:RXD:{order}:{prescription_no}:{}", h.pid, i + 1);
        let notes: Vec<Annotation> = h
            .reps(rxd, 9)
            .map(|p| p.get(2))
            .filter(|s| !s.is_empty())
            .map(|text| Annotation { text, ..Default::default() })
            .collect();
        let handed_over = h.when(rxd, 3, t);
        t.resources.push(Resource::MedicationDispense(MedicationDispense {
            id: Some(h.ctx.id_for("MedicationDispense", &key)),
            identifier: (!prescription_no.is_empty())
                .then(|| Identifier {
                    system: Some(crate::codes::local_system(&h.ctx.owner, "prescription-number")),
                    value: Some(prescription_no),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            status: "completed".into(),
            medication_codeable_concept: Some(drug),
            subject: h.patient_ref(),
            performer,
            authorizing_prescription: prescriptions.clone(),
            quantity,
            days_supply,
            when_handed_over: handed_over,
            note: notes,
            ..Default::default()
        }));
    }
    if !any {
        t.warn("RXD", "dispense message has no RXD segment: nothing dispensed");
    }
}
