//! HL7 v2.5 (SS-MIX2 profile) to FHIR R4 / JP Core. One module per message family;
//! shared helpers for codes, names, references and dates live here.

mod administration;
mod lab;
mod medication;
mod patient;
mod problem;

use crate::codes;
use crate::{Context, Translation};
use kakehashi_adapters::hl7v2::{Message, Segment};
use kakehashi_fhir::{CodeableConcept, Coding, Reference};

/// Translate one message. Unknown message types give a warning and no resources.
pub fn translate(msg: &Message, ctx: &Context) -> Translation {
    let mut t = Translation::default();
    let Some(pid) = patient_id(msg) else {
        t.warn("PID-3", "message has no patient id (PID-3); nothing translated");
        return t;
    };
    let (code, event, _) = msg.message_type();
    let h = Helper { msg, ctx, pid: &pid, patient_id: ctx.id_for("Patient", &pid) };
    match (code.as_str(), event.as_str()) {
        ("ADT", _) => patient::translate(&h, &mut t),
        ("RDE", _) | ("OMP", _) => medication::translate(&h, &mut t),
        ("RAS", _) => administration::translate(&h, &mut t),
        ("OUL", _) | ("ORU", _) | ("OML", _) => lab::translate(&h, &mut t),
        ("PPR", _) => problem::translate(&h, &mut t),
        _ => t.warn("MSH-9", format!("message type {code}^{event} is not mapped")),
    }
    t.resources = t.resources.into_iter().map(|r| ctx.own(r)).collect();
    t
}

/// PID-3's first identifier.
pub fn patient_id(msg: &Message) -> Option<String> {
    let pid = msg.segment("PID")?;
    let first = msg.repetitions(pid.field(3)).next()?;
    let id = msg.component(first, 1);
    (!id.trim().is_empty()).then(|| id.trim().to_string())
}

/// Where a warning points: `OBX-5 (segment 9)`.
pub(crate) fn at(seg: &Segment, field: usize) -> String {
    format!("{}-{field} (segment {})", seg.id, seg.position)
}

/// What every sub-mapping needs.
pub(crate) struct Helper<'a> {
    pub msg: &'a Message,
    pub ctx: &'a Context,
    pub pid: &'a str,
    /// The stable id of this message's Patient, computed once.
    patient_id: String,
}

impl Helper<'_> {
    /// Reference to this message's patient.
    pub fn patient_ref(&self) -> Reference {
        Reference { reference: Some(format!("Patient/{}", self.patient_id())), ..Default::default() }
    }

    /// The stable id of this message's patient.
    pub fn patient_id(&self) -> String {
        self.patient_id.clone()
    }

    /// Component `n` of field `f` of a segment (first repetition), unescaped and trimmed.
    pub fn comp(&self, seg: &Segment, f: usize, n: usize) -> String {
        let raw = self.msg.repetitions(seg.field(f)).next().unwrap_or("");
        self.msg.component(raw, n).trim().to_string()
    }

    /// A coded element (CE/CWE) as a CodeableConcept: primary and alternate codings,
    /// text from the primary text. `where_` locates warnings.
    pub fn concept(&self, raw: &str, where_: &str, t: &mut Translation) -> Option<CodeableConcept> {
        let m = self.msg;
        let mut cc = CodeableConcept::default();
        for (code_c, text_c, sys_c) in [(1, 2, 3), (4, 5, 6)] {
            let code = m.component(raw, code_c).trim().to_string();
            let text = m.component(raw, text_c).trim().to_string();
            let table = m.component(raw, sys_c).trim().to_string();
            if code.is_empty() {
                if cc.text.is_none() && !text.is_empty() {
                    cc.text = Some(text);
                }
                continue;
            }
            let system = self.system(&table, where_, t);
            let mut c = Coding::new(system, code);
            if !text.is_empty() {
                c.display = Some(text.clone());
                cc.text.get_or_insert(text);
            }
            cc.coding.push(c);
        }
        (!cc.coding.is_empty() || cc.text.is_some()).then_some(cc)
    }

    /// Map a coding-system id to a URI: known tables by the data file, `99xxx` tables as
    /// site-local, anything else site-local with a warning.
    pub fn system(&self, table: &str, where_: &str, t: &mut Translation) -> String {
        if let Some(s) = codes::system_for(table) {
            return s.to_string();
        }
        if !table.starts_with("99") {
            let shown = if table.is_empty() { "(none)" } else { table };
            t.warn(
                where_,
                format!("coding system {shown} is unknown; the code is kept as local to {}", self.ctx.owner),
            );
        }
        codes::local_system(&self.ctx.owner, if table.is_empty() { "unspecified" } else { table })
    }

    /// A date/time field converted, or None with a warning.
    pub fn date_time(&self, v: &str, where_: &str, t: &mut Translation) -> Option<String> {
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        match crate::datetime::date_time(v) {
            Ok(d) => Some(d),
            Err(e) => {
                t.warn(where_, e.to_string());
                None
            }
        }
    }

    /// A decimal, or None with a warning.
    pub fn number(&self, v: &str, where_: &str, t: &mut Translation) -> Option<f64> {
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        match v.parse::<f64>() {
            Ok(n) if n.is_finite() => Some(n),
            _ => {
                t.warn(where_, format!("`{v}` is not a number"));
                None
            }
        }
    }

    /// An XCN (person) as a Reference with display name.
    pub fn person(&self, raw: &str) -> Option<Reference> {
        let m = self.msg;
        let id = m.component(raw, 1).trim().to_string();
        let name = format!("{} {}", m.component(raw, 2).trim(), m.component(raw, 3).trim()).trim().to_string();
        if id.is_empty() && name.is_empty() {
            return None;
        }
        Some(Reference {
            identifier: (!id.is_empty()).then(|| kakehashi_fhir::Identifier {
                system: Some(codes::local_system(&self.ctx.owner, "staff")),
                value: Some(id),
                ..Default::default()
            }),
            display: (!name.is_empty()).then_some(name),
            type_: Some("Practitioner".into()),
            ..Default::default()
        })
    }

    /// Reference to the owning institution.
    pub fn owner_ref(&self) -> Reference {
        self.ctx.owner_ref()
    }
}

/// Full-width digits, letters and hyphens to ASCII (for identifiers that link records).
pub fn ascii_fold(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            '０'..='９' | 'Ａ'..='Ｚ' | 'ａ'..='ｚ' => char::from_u32(c as u32 - 0xFEE0).unwrap_or(c),
            '－' | '−' | 'ー' => '-',
            '\u{3000}' => ' ',
            _ => c,
        })
        .collect()
}

/// Parse HL7 bytes and translate them: the whole pipeline for one message, pure.
pub fn translate_bytes(
    bytes: &[u8],
    options: &kakehashi_adapters::ParseOptions,
    ctx: &Context,
) -> Result<Translation, kakehashi_adapters::SourceError> {
    let msg = Message::parse_bytes(bytes, options)?;
    Ok(translate(&msg, ctx))
}
