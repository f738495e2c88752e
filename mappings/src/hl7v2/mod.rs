//! HL7 v2.5 (SS-MIX2 profile, and generic v2 feeds) to FHIR R4 / JP Core. One module
//! per message family; the segments any message may carry about its patient (PID,
//! NK1, MRG, PV1, AL1, IN1, DG1, PR1) are mapped in [`common`]; shared helpers for
//! codes, names, references and dates live here.
//!
//! A message that cannot be translated (no patient, a type that is not mapped or is
//! out of scope) is an error, never an empty success; whatever a translated message
//! carries that is not mapped is named in a warning (segment and field).

mod administration;
mod common;
mod dispense;
mod document;
mod immunization;
mod lab;
mod medication;
mod order;
mod patient;
mod problem;
mod schedule;

use crate::codes;
use crate::{Context, Translation};
use kakehashi_adapters::hl7v2::{datatypes::*, Message, Segment};
use kakehashi_adapters::{Location, SourceError};
use kakehashi_fhir::{CodeableConcept, Coding, Identifier, Reference};
use std::cell::RefCell;
use std::collections::BTreeSet;

/// The message families Kakehashi maps, and the segments each one reads besides the
/// patient-level ones of [`common`].
fn family(code: &str) -> Option<(Family, &'static [&'static str])> {
    Some(match code {
        "ADT" => (Family::Admin, &["OBX"]),
        "RDE" | "OMP" => (Family::Prescription, &["ORC", "RXE", "RXO", "TQ1", "RXR", "TQ2", "RXC", "NTE"]),
        "RAS" => (Family::Administration, &["ORC", "RXA", "RXR", "TQ1", "RXE", "RXO"]),
        "OUL" | "ORU" | "OML" => (Family::Lab, &["ORC", "OBR", "OBX", "SPM", "TQ1", "NTE"]),
        "PPR" => (Family::Problem, &["PRB", "ZPR"]),
        "VXU" => (Family::Immunization, &["ORC", "RXA", "RXR", "TQ1", "OBX", "NTE"]),
        "MDM" => (Family::Document, &["TXA", "OBX", "NTE"]),
        "ORM" | "OMG" | "OMI" | "OMD" => {
            (Family::Order, &["ORC", "OBR", "OBX", "SPM", "TQ1", "NTE", "RXO", "RXE", "RXR", "ODS", "ODT"])
        }
        "SIU" => (Family::Schedule, &["SCH", "TQ1", "RGS", "AIS", "AIG", "AIL", "AIP", "NTE"]),
        "RDS" => (Family::Dispense, &["ORC", "RXO", "RXE", "RXD", "RXR", "TQ1", "RXC", "NTE"]),
        "REF" | "RRI" => (Family::Referral, &["RF1", "PRD", "OBR", "OBX", "NTE"]),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Admin,
    Prescription,
    Administration,
    Lab,
    Problem,
    Immunization,
    Document,
    Order,
    Schedule,
    Dispense,
    Referral,
}

/// Message types that are not clinical records: refused with the reason.
fn out_of_scope(code: &str) -> Option<&'static str> {
    match code {
        "BAR" | "DFT" => Some("billing and accounts are out of scope: Kakehashi shares clinical records"),
        "ACK" | "MCF" => Some("an acknowledgement carries no record"),
        "QRY" | "QBP" | "RSP" | "RTB" | "RDY" | "QCN" => Some("a query or its response is not a stored record"),
        "MFN" | "MFK" | "MFD" => Some("master files are not patient records"),
        _ => None,
    }
}

/// Header and structural segments: about the message, not the patient, so not
/// warned about.
const HEADER: &[&str] = &["MSH", "SFT", "EVN", "UAC", "RGS"];

/// Fields that structure a message rather than carry data (set ids, sub-id
/// counters, segment action codes, value types, order control), never warned about.
fn structural(seg: &str, field: usize) -> bool {
    matches!(
        (seg, field),
        ("AIS" | "AIG" | "AIL" | "AIP" | "RXA", 1 | 2)
            | ("OBX", 1 | 2 | 4)
            | (
                "PID"
                    | "PV1"
                    | "NK1"
                    | "AL1"
                    | "DG1"
                    | "PR1"
                    | "NTE"
                    | "TQ1"
                    | "IN1"
                    | "OBR"
                    | "SPM"
                    | "TXA"
                    | "GT1"
                    | "ORC"
                    | "RXD",
                1
            )
    )
}

fn untranslated(field: usize, message: String) -> SourceError {
    SourceError::at(
        Location { segment: Some(1), segment_id: Some("MSH".into()), field: Some(field), ..Default::default() },
        message,
    )
}

/// Translate one message, or say why it cannot be translated.
pub fn translate(msg: &Message, ctx: &Context) -> Result<Translation, SourceError> {
    let (code, event, _) = msg.message_type();
    if let Some(why) = out_of_scope(&code) {
        return Err(untranslated(9, format!("message type {code}^{event} is not translated: {why}")));
    }
    let Some((family, reads)) = family(&code) else {
        return Err(untranslated(
            9,
            format!(
                "message type {code}^{event} is not mapped (mapped: ADT, RDE, OMP, RAS, OUL, ORU, OML, PPR, VXU, MDM, ORM, OMG, OMI, OMD, SIU, RDS, REF, RRI)"
            ),
        ));
    };
    let Some(pid) = patient_id(msg) else {
        let at = msg.segment("PID").map(|s| s.position);
        return Err(SourceError::at(
            Location { segment: at, segment_id: Some("PID".into()), field: Some(3), ..Default::default() },
            "the message names no patient (PID-3 is empty or PID is missing): nothing can be translated",
        ));
    };
    let mut t = Translation::default();
    let h = Helper::new(msg, ctx, &pid);
    match family {
        Family::Admin => patient::translate(&h, &mut t),
        Family::Prescription => medication::translate(&h, &mut t),
        Family::Administration => administration::translate(&h, &mut t),
        Family::Lab => lab::translate(&h, &mut t),
        Family::Problem => problem::translate(&h, &mut t),
        Family::Immunization => immunization::translate(&h, &mut t),
        Family::Document => document::translate(&h, &mut t),
        Family::Order => order::translate(&h, &mut t),
        Family::Schedule => schedule::translate(&h, &mut t),
        Family::Dispense => dispense::translate(&h, &mut t),
        Family::Referral => order::referral(&h, &mut t),
    }
    common::translate(&h, &mut t);
    h.report_unmapped(reads, &mut t);
    t.resources = t.resources.into_iter().map(|r| ctx.own(r)).collect();
    Ok(t)
}

/// PID-3's first identifier.
pub fn patient_id(msg: &Message) -> Option<String> {
    let pid = msg.segment("PID")?;
    let first = msg.repetitions(pid.field(3)).next()?;
    let id = msg.parts(first).get(1);
    (!id.is_empty()).then_some(id)
}

/// Where a warning points: `OBX-5 (segment 9)`.
pub(crate) fn at(seg: &Segment, field: usize) -> String {
    At(seg, field).to_string()
}

/// A field's location, written out only when a warning needs it (most values map
/// without one, and formatting every location cost a third of the translation).
pub(crate) struct At<'s>(pub &'s Segment, pub usize);

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{} (segment {})", self.0.id, self.1, self.0.position)
    }
}

/// Where a warning points, however the caller names it.
type Where<'w> = &'w dyn std::fmt::Display;

/// Whether the message follows Japanese conventions (SS-MIX2, JAHIS): Japanese
/// character sets, country JPN, or an SS-MIX2 profile. Japanese-only semantics (IN1
/// as 保険者番号/記号/番号, JLAC10 codes in ADT OBX) apply only then.
fn japanese(msg: &Message) -> bool {
    use kakehashi_adapters::text::Charset;
    let Some(msh) = msg.segment("MSH") else { return false };
    let country = msg.parts(msh.field(17)).get(1);
    let profile = msh.field(21).to_ascii_uppercase();
    matches!(msg.charset, Charset::Iso2022Jp | Charset::ShiftJis)
        || country.eq_ignore_ascii_case("JPN")
        || country.eq_ignore_ascii_case("JP")
        || msh.field(18).to_ascii_uppercase().contains("ISO IR87")
        || profile.contains("SS-MIX")
}

/// What every sub-mapping needs.
pub(crate) struct Helper<'a> {
    pub msg: &'a Message,
    pub ctx: &'a Context,
    pub pid: &'a str,
    /// Whether Japanese conventions apply (see [`japanese`]).
    pub japanese: bool,
    /// The stable id of this message's Patient, computed once.
    patient_id: String,
    /// (segment position, field) pairs the mappings read, for the unmapped report.
    used: RefCell<BTreeSet<(usize, usize)>>,
}

impl<'a> Helper<'a> {
    fn new(msg: &'a Message, ctx: &'a Context, pid: &'a str) -> Helper<'a> {
        Helper {
            msg,
            ctx,
            pid,
            japanese: japanese(msg),
            patient_id: ctx.id_for("Patient", pid),
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// Reference to this message's patient.
    pub fn patient_ref(&self) -> Reference {
        Reference { reference: Some(format!("Patient/{}", self.patient_id())), ..Default::default() }
    }

    /// The stable id of this message's patient.
    pub fn patient_id(&self) -> String {
        self.patient_id.clone()
    }

    /// Raw field `f` of a segment, marked as mapped.
    pub fn field<'s>(&self, seg: &'s Segment, f: usize) -> &'s str {
        self.used.borrow_mut().insert((seg.position, f));
        seg.field(f)
    }

    /// The repetitions of field `f`, each as parts (marked as mapped).
    pub fn reps<'s>(&'s self, seg: &'s Segment, f: usize) -> impl Iterator<Item = Parts<'s>> + 's {
        let raw = self.field(seg, f);
        self.msg.repetitions(raw).map(move |r| self.msg.parts(r))
    }

    /// The first repetition of field `f` as parts (marked as mapped).
    pub fn first(&self, seg: &'a Segment, f: usize) -> Parts<'a> {
        let raw = self.field(seg, f);
        self.msg.parts(self.msg.repetitions(raw).next().unwrap_or(""))
    }

    /// Component `n` of field `f` (first repetition), a plain value.
    pub fn comp(&self, seg: &'a Segment, f: usize, n: usize) -> String {
        self.first(seg, f).get(n)
    }

    /// Field `f` as one plain value (first repetition, first component).
    pub fn value(&self, seg: &'a Segment, f: usize) -> String {
        self.comp(seg, f, 1)
    }

    /// A coded element (CE/CWE) in field `f` (first repetition) as a CodeableConcept.
    pub fn coded(&self, seg: &'a Segment, f: usize, t: &mut Translation) -> Option<CodeableConcept> {
        self.concept_of(&Cwe::parse(&self.first(seg, f)), &At(seg, f), t)
    }

    /// A coded field whose values come from HL7 table `table` (`HL70052` …) when the
    /// sender names no coding system (v2.5 IS fields, and CWE written without one).
    pub fn coded_in(&self, seg: &'a Segment, f: usize, table: &str, t: &mut Translation) -> Option<CodeableConcept> {
        let mut cwe = Cwe::parse(&self.first(seg, f));
        for c in &mut cwe.codings {
            if c.0.is_some() && c.2.is_none() {
                c.2 = Some(table.to_string());
            }
        }
        self.concept_of(&cwe, &At(seg, f), t)
    }

    /// Every repetition of a coded field.
    pub fn coded_all(&self, seg: &'a Segment, f: usize, t: &mut Translation) -> Vec<CodeableConcept> {
        let reps: Vec<Cwe> = self.reps(seg, f).map(|p| Cwe::parse(&p)).collect();
        reps.iter().filter_map(|c| self.concept_of(c, &At(seg, f), t)).collect()
    }

    /// A coded element as a CodeableConcept: primary and alternate codings, text from
    /// the primary text or the original text. `where_` locates warnings.
    pub fn concept_of(&self, cwe: &Cwe, where_: Where<'_>, t: &mut Translation) -> Option<CodeableConcept> {
        let mut cc = CodeableConcept::default();
        for (code, text, table) in &cwe.codings {
            let Some(code) = code else { continue };
            let system = self.system(table.as_deref().unwrap_or(""), where_, t);
            let mut c = Coding::new(system, code.clone());
            if let Some(text) = text {
                c.display = Some(text.clone());
            }
            cc.coding.push(c);
        }
        cc.text = cwe.text().map(str::to_string);
        (!cc.coding.is_empty() || cc.text.is_some()).then_some(cc)
    }

    /// A raw coded value (CE/CWE repetition) as a CodeableConcept.
    pub fn concept(&self, raw: &str, where_: Where<'_>, t: &mut Translation) -> Option<CodeableConcept> {
        self.concept_of(&Cwe::parse(&self.msg.parts(raw)), where_, t)
    }

    /// Map a coding-system id to a URI: known tables by the data file, `99xxx` tables as
    /// site-local, anything else site-local with a warning.
    pub fn system(&self, table: &str, where_: Where<'_>, t: &mut Translation) -> String {
        if let Some(s) = codes::system_for_message(table, self.japanese) {
            return s;
        }
        // `L` (table 0396: local general code) and `99zzz` are local by definition.
        if table != "L" && !table.starts_with("99") {
            let shown = if table.is_empty() { "(none)" } else { table };
            t.warn(
                where_.to_string(),
                format!("coding system {shown} is unknown; the code is kept as local to {}", self.ctx.owner),
            );
        }
        codes::local_system(&self.ctx.owner, if table.is_empty() { "unspecified" } else { table })
    }

    /// A date/time converted, or None with a warning.
    pub fn date_time(&self, v: &str, where_: Where<'_>, t: &mut Translation) -> Option<String> {
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        match crate::datetime::date_time(v) {
            Ok(d) => Some(d),
            Err(e) => {
                t.warn(where_.to_string(), e.to_string());
                None
            }
        }
    }

    /// Field `f`'s date/time (its first component: TS and DTM alike), converted.
    pub fn when(&self, seg: &'a Segment, f: usize, t: &mut Translation) -> Option<String> {
        let v = self.comp(seg, f, 1);
        self.date_time(&v, &At(seg, f), t)
    }

    /// A decimal, or None with a warning.
    pub fn number(&self, v: &str, where_: Where<'_>, t: &mut Translation) -> Option<f64> {
        let v = v.trim();
        if v.is_empty() {
            return None;
        }
        match v.parse::<f64>() {
            Ok(n) if n.is_finite() => Some(n),
            _ => {
                t.warn(where_.to_string(), format!("`{v}` is not a number"));
                None
            }
        }
    }

    /// An amount (first component of field `value_f`) with its unit (a coded element in
    /// field `unit_f`) as a Quantity: the unit's coding system only when the sender names
    /// one, else the unit as text. `None` without a number (a warning when not one).
    pub fn amount(
        &self,
        seg: &'a Segment,
        value_f: usize,
        unit_f: usize,
        t: &mut Translation,
    ) -> Option<kakehashi_fhir::Quantity> {
        let v = self.number(&self.comp(seg, value_f, 1), &At(seg, value_f), t)?;
        let unit = self.first(seg, unit_f);
        let (code, text, table) = (unit.get(1), unit.get(2), unit.get(3));
        let coded = !code.is_empty() && !table.is_empty();
        Some(kakehashi_fhir::Quantity {
            value: Some(v),
            unit: Some(if text.is_empty() { code.clone() } else { text }).filter(|u| !u.is_empty()),
            system: coded.then(|| self.system(&table, &At(seg, unit_f), t)),
            code: coded.then_some(code),
            ..Default::default()
        })
    }

    /// An XCN (person) as a Reference by identifier, with the name as display; the
    /// identifier's system is its assigning authority when it names one.
    pub fn person_of(&self, p: &Parts<'_>) -> Option<Reference> {
        let x = Xcn::parse(p);
        // Japanese names are written family name first.
        let name = if self.japanese { x.display_family_first() } else { x.display() };
        if x.id.is_none() && name.is_none() {
            return None;
        }
        let system = x.authority.uri().unwrap_or_else(|| {
            codes::local_system(&self.ctx.owner, x.authority.namespace.as_deref().unwrap_or("staff"))
        });
        Some(Reference {
            identifier: x.id.map(|id| Identifier { system: Some(system), value: Some(id), ..Default::default() }),
            display: name,
            type_: Some("Practitioner".into()),
            ..Default::default()
        })
    }

    /// The person in field `f` (first repetition).
    pub fn person(&self, seg: &'a Segment, f: usize) -> Option<Reference> {
        self.person_of(&self.first(seg, f))
    }

    /// An XON (organisation) in field `f` as a Reference by identifier or name.
    pub fn organization(&self, seg: &'a Segment, f: usize) -> Option<Reference> {
        let x = Xon::parse(&self.first(seg, f));
        if x.id.is_none() && x.name.is_none() {
            return None;
        }
        let system = x.authority.uri().unwrap_or_else(|| {
            codes::local_system(&self.ctx.owner, x.authority.namespace.as_deref().unwrap_or("organization"))
        });
        Some(Reference {
            identifier: x.id.map(|id| Identifier { system: Some(system), value: Some(id), ..Default::default() }),
            display: x.name,
            type_: Some("Organization".into()),
            ..Default::default()
        })
    }

    /// An EI (order number, document id) in field `f` as an Identifier: the assigning
    /// authority as system when it has one, else local to the owner under `kind`.
    pub fn entity(&self, seg: &'a Segment, f: usize, kind: &str) -> Option<Identifier> {
        let e = Ei::parse(&self.first(seg, f));
        let id = e.id?;
        let system = e.authority.uri().unwrap_or_else(|| codes::local_system(&self.ctx.owner, kind));
        Some(Identifier { system: Some(system), value: Some(id), ..Default::default() })
    }

    /// Reference to the owning institution.
    pub fn owner_ref(&self) -> Reference {
        self.ctx.owner_ref()
    }

    /// Notes (NTE-3) following segment `after` up to the next non-NTE segment.
    pub fn notes_after(&self, after: &Segment) -> Vec<kakehashi_fhir::Annotation> {
        let mut out = Vec::new();
        for s in self.msg.segments.iter().skip(after.position) {
            if s.id != "NTE" {
                break;
            }
            let text: Vec<String> = self
                .msg
                .repetitions(self.field(s, 3))
                .map(|r| self.msg.unescape(r).trim().to_string())
                .filter(|x| !x.is_empty())
                .collect();
            if !text.is_empty() {
                out.push(kakehashi_fhir::Annotation { text: text.join("\n"), ..Default::default() });
            }
        }
        out
    }

    /// Warn about what the message carries and no mapping read: segments not mapped at
    /// all, and fields of mapped segments that hold a value no mapping used.
    fn report_unmapped(&self, reads: &[&str], t: &mut Translation) {
        let used = self.used.borrow();
        for seg in &self.msg.segments {
            if HEADER.contains(&seg.id.as_str()) {
                continue;
            }
            let read = reads.contains(&seg.id.as_str()) || common::READS.contains(&seg.id.as_str());
            if !read || !used.iter().any(|(p, _)| *p == seg.position) {
                let what = if seg.id.starts_with('Z') { "local segment" } else { "segment" };
                t.warn(format!("{} (segment {})", seg.id, seg.position), format!("{what} {} is not mapped", seg.id));
                continue;
            }
            let unmapped: Vec<String> = (1..=seg.len())
                .filter(|f| {
                    !seg.field(*f).trim().is_empty() && !used.contains(&(seg.position, *f)) && !structural(&seg.id, *f)
                })
                .map(|f| format!("{}-{f}", seg.id))
                .collect();
            if !unmapped.is_empty() {
                t.warn(
                    format!("{} (segment {})", seg.id, seg.position),
                    format!("not mapped: {}", unmapped.join(", ")),
                );
            }
        }
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
) -> Result<Translation, SourceError> {
    let msg = Message::parse_bytes(bytes, options)?;
    translate(&msg, ctx)
}
