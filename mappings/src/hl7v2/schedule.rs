//! Scheduling (SIU^S12…S26): the booking (SCH, TQ1) as an Appointment with its
//! resources (AIS service, AIG group, AIL location, AIP personnel) as participants.

use super::{at, At, Helper};
use crate::Translation;
use kakehashi_adapters::hl7v2::datatypes::Pl;
use kakehashi_fhir::*;

pub(super) fn translate(h: &Helper<'_>, t: &mut Translation) {
    let m = h.msg;
    let Some(sch) = m.segment("SCH") else {
        t.warn("SCH", "scheduling message has no SCH segment: no appointment to map");
        return;
    };
    let (_, event, _) = m.message_type();
    let placer = h.entity(sch, 1, "appointment-placer");
    let filler = h.entity(sch, 2, "appointment-filler");
    let key = format!(
        "{}:SCH:{}",
        h.pid,
        filler.as_ref().or(placer.as_ref()).and_then(|i| i.value.clone()).unwrap_or_default()
    );
    // SCH-25 filler status (table 0278), else what the trigger event says.
    let status = match h.value(sch, 25).to_ascii_lowercase().as_str() {
        "booked" => "booked",
        "pending" => "pending",
        "cancelled" | "deleted" => "cancelled",
        "complete" => "fulfilled",
        "noshow" => "noshow",
        "waitlist" => "waitlist",
        "started" => "arrived",
        "blocked" | "overbook" => "booked",
        "" => match event.as_str() {
            "S15" | "S16" | "S17" => "cancelled",
            "S26" => "noshow",
            "S25" => "booked",
            "S12" | "S13" | "S14" | "S18" | "S19" | "S20" => "booked",
            _ => "proposed",
        },
        other => {
            t.warn(at(sch, 25), format!("filler status `{other}` is unknown; kept as booked"));
            "booked"
        }
    };
    // Start and end: TQ1-7/8, else SCH-11 (TQ: component 4 start, 5 end).
    let tq1 = m.segment("TQ1");
    let start = tq1.and_then(|q| h.when(q, 7, t)).or_else(|| {
        let v = h.comp(sch, 11, 4);
        h.date_time(&v, &At(sch, 11), t)
    });
    let end = tq1.and_then(|q| h.when(q, 8, t)).or_else(|| {
        let v = h.comp(sch, 11, 5);
        h.date_time(&v, &At(sch, 11), t)
    });
    let duration = h.value(sch, 9);
    let minutes = duration.parse::<f64>().ok().filter(|d| d.is_finite() && *d >= 0.0).map(|d| {
        let factor = match h.comp(sch, 10, 1).to_ascii_lowercase().as_str() {
            "h" | "hr" | "hour" | "hours" => 60.0,
            "s" | "sec" => 1.0 / 60.0,
            _ => 1.0,
        };
        (d * factor).round() as u32
    });
    let mut participant =
        vec![AppointmentParticipant { type_: Vec::new(), actor: Some(h.patient_ref()), status: "accepted".into() }];
    let participation = |code: &str| {
        // AIx-12 filler status: the resource's own status.
        match code.to_ascii_lowercase().as_str() {
            "cancelled" | "deleted" => "declined",
            "pending" | "waitlist" => "tentative",
            _ => "accepted",
        }
        .to_string()
    };
    for aip in m.segments("AIP") {
        for p in h.reps(aip, 3).collect::<Vec<_>>() {
            if let Some(actor) = h.person_of(&p) {
                participant.push(AppointmentParticipant {
                    type_: h.coded(aip, 4, t).into_iter().collect(),
                    actor: Some(actor),
                    status: participation(&h.value(aip, 12)),
                });
            }
        }
    }
    for ail in m.segments("AIL") {
        if let Some(d) = Pl::parse(&h.first(ail, 3)).display() {
            participant.push(AppointmentParticipant {
                type_: h.coded(ail, 4, t).into_iter().collect(),
                actor: Some(Reference { display: Some(d), type_: Some("Location".into()), ..Default::default() }),
                status: participation(&h.value(ail, 12)),
            });
        }
    }
    for aig in m.segments("AIG") {
        if let Some(what) = h.coded(aig, 3, t) {
            participant.push(AppointmentParticipant {
                type_: h.coded(aig, 4, t).into_iter().collect(),
                actor: Some(Reference {
                    display: what.text.clone().or_else(|| what.coding.first().and_then(|c| c.code.clone())),
                    type_: Some("HealthcareService".into()),
                    ..Default::default()
                }),
                status: participation(&h.value(aig, 12)),
            });
        }
    }
    let mut service_type = Vec::new();
    for ais in m.segments("AIS") {
        if let Some(s) = h.coded(ais, 3, t) {
            service_type.push(s);
        }
    }
    let comment: Vec<String> = m
        .segments("NTE")
        .flat_map(|n| m.repetitions(h.field(n, 3)).map(|r| m.unescape(r).trim().to_string()).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();
    let appointment = Appointment {
        id: Some(h.ctx.id_for("Appointment", &key)),
        identifier: placer.into_iter().chain(filler).collect(),
        status: status.into(),
        cancelation_reason: if status == "cancelled" { h.coded(sch, 6, t) } else { None },
        service_type,
        appointment_type: h.coded_in(sch, 8, "HL70277", t),
        reason_code: h.coded_in(sch, 7, "HL70276", t).into_iter().collect(),
        description: if status == "cancelled" { None } else { h.coded(sch, 6, t).and_then(|c| c.text) },
        start,
        end,
        minutes_duration: minutes,
        comment: (!comment.is_empty()).then(|| comment.join("\n")),
        participant,
        ..Default::default()
    };
    t.resources.push(Resource::Appointment(appointment));
}
