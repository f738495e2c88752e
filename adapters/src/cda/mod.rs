//! HL7 CDA R2 documents (discharge summaries, referral notes, CCDs): header, patient,
//! authors, custodian and the sections with their narrative and the structured entries
//! Kakehashi maps (problems, allergies, medications, results, vital signs, social
//! history). Read through the safe XML reader into a bounded tree, then typed.

use crate::mml::Node;
use crate::text::{self, Charset};
use crate::xml::{parse_tree, Limits};
use crate::{Location, ParseOptions, SourceError, SourceFormat};

/// Bounds for a CDA document.
pub const LIMITS: Limits = Limits { depth: 128, nodes: 500_000, text: 16 << 20 };

/// A coded value (`code`, `codeSystem`, `displayName`, `originalText`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Code {
    /// Code.
    pub code: Option<String>,
    /// Code system OID.
    pub system: Option<String>,
    /// Display name.
    pub display: Option<String>,
}

impl Code {
    fn from(n: &Node) -> Code {
        // Attribute values in the wild carry stray blanks; codes must not.
        let clean = |v: &str| {
            let s = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (!s.is_empty()).then_some(s)
        };
        Code {
            code: n.attr("code").and_then(clean),
            // Kakehashi writes URI code systems (JP-CLINS) as codeSystemName.
            system: n
                .attr("codeSystem")
                .and_then(clean)
                .or_else(|| n.attr("codeSystemName").and_then(clean).filter(|s| s.contains(':'))),
            display: n.attr("displayName").and_then(clean).or_else(|| n.text_at(&["originalText"])),
        }
    }

    /// True when there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.code.is_none() && self.display.is_none()
    }
}

/// An observation value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Physical quantity.
    Quantity(f64, Option<String>),
    /// Coded.
    Coded(Code),
    /// Text.
    Text(String),
    /// Nothing usable.
    None,
}

/// A structured entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// An observation (problem, result, vital sign, social history).
    Observation {
        /// What was observed.
        code: Code,
        /// Its value.
        value: Value,
        /// When (HL7 TS).
        time: Option<String>,
        /// Interpretation code (H, L, N ...).
        interpretation: Option<String>,
        /// A problem's status (C-CDA Problem Status observation, LOINC 33999-4).
        status: Option<Code>,
    },
    /// An allergy (substance and optional reaction).
    Allergy {
        /// The substance.
        substance: Code,
        /// The reactions (manifestations).
        reaction: Vec<Code>,
        /// Onset (HL7 TS).
        time: Option<String>,
    },
    /// A medication (substanceAdministration).
    Medication {
        /// Ids (root OID, extension): the RP number among them.
        ids: Vec<(String, String)>,
        /// The drug, and the same drug in other code systems (`translation`).
        drug: Code,
        /// The drug's `translation` codes.
        translations: Vec<Code>,
        /// Administration period (PIVL_TS `period` value and unit), and whether the
        /// institution sets the times (`institutionSpecified`: "3 times a day").
        period: Option<(f64, String, bool)>,
        /// Length of the course (IVL_TS `width`) value and unit.
        width: Option<(f64, String)>,
        /// Dose value and unit.
        dose: Option<(f64, Option<String>)>,
        /// Route.
        route: Option<Code>,
        /// Start (HL7 TS).
        start: Option<String>,
        /// Free-text sig.
        text: Option<String>,
    },
}

/// A section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Section {
    /// Section code (LOINC).
    pub code: Option<Code>,
    /// Title.
    pub title: Option<String>,
    /// Narrative flattened to text.
    pub text: String,
    /// Structured entries.
    pub entries: Vec<Entry>,
}

/// The patient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patient {
    /// Ids as (root OID, extension).
    pub ids: Vec<(String, String)>,
    /// Names as (given names, family, `use`).
    pub names: Vec<(Vec<String>, Option<String>, Option<String>)>,
    /// Administrative gender code (M, F, UN).
    pub gender: Option<String>,
    /// Birth time.
    pub birth: Option<String>,
    /// Addresses.
    pub addresses: Vec<CdaAddress>,
    /// Telecom values with their `use` (H, HP, WP, MC ...).
    pub telecoms: Vec<(String, Option<String>)>,
}

/// A postal address (`addr`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CdaAddress {
    /// `use` (H, HP, WP ...).
    pub use_: Option<String>,
    /// Unstructured text written directly in `addr`.
    pub text: Option<String>,
    /// `streetAddressLine`s in order.
    pub lines: Vec<String>,
    /// `city`.
    pub city: Option<String>,
    /// `state` (都道府県).
    pub state: Option<String>,
    /// `postalCode`.
    pub postal_code: Option<String>,
    /// `country`.
    pub country: Option<String>,
}

/// An organisation (author's, custodian, recipient).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdaOrganization {
    /// Ids as (root OID, extension).
    pub ids: Vec<(String, String)>,
    /// Name.
    pub name: Option<String>,
}

impl CdaOrganization {
    fn from(n: &Node) -> Option<CdaOrganization> {
        let o = CdaOrganization { ids: ids(n), name: n.text_at(&["name"]) };
        (o.name.is_some() || !o.ids.is_empty()).then_some(o)
    }
}

/// An author.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Author {
    /// Time.
    pub time: Option<String>,
    /// The person's ids (root, extension).
    pub ids: Vec<(String, String)>,
    /// Person name.
    pub name: Option<String>,
    /// The organisation the author writes for.
    pub organization: Option<CdaOrganization>,
}

/// The `id` children of an element with both root and extension.
fn ids(n: &Node) -> Vec<(String, String)> {
    n.children_named("id")
        .filter_map(|i| Some((i.attr("root")?.to_string(), i.attr("extension")?.to_string())))
        .collect()
}

/// A parsed CDA document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CdaDocument {
    /// Document id (root, extension).
    pub id: Option<(String, Option<String>)>,
    /// Document type code.
    pub code: Code,
    /// Title.
    pub title: Option<String>,
    /// effectiveTime.
    pub effective: Option<String>,
    /// Confidentiality code.
    pub confidentiality: Option<String>,
    /// Patient.
    pub patient: Option<Patient>,
    /// Authors.
    pub authors: Vec<Author>,
    /// Custodian organisation.
    pub custodian: Option<CdaOrganization>,
    /// Recipient organisation (information recipient).
    pub recipient: Option<CdaOrganization>,
    /// Recipient person's name.
    pub recipient_person: Option<String>,
    /// Sections (nested sections flattened in document order).
    pub sections: Vec<Section>,
}

/// The CDA format.
pub struct Cda;

impl SourceFormat for Cda {
    type Model = CdaDocument;
    const NAME: &'static str = "cda";
    fn parse(bytes: &[u8], options: &ParseOptions) -> Result<CdaDocument, SourceError> {
        parse(bytes, options)
    }
}

fn person_name(n: &Node) -> Option<String> {
    let given: Vec<String> = n.children_named("given").filter_map(Node::value).collect();
    let family = n.text_at(&["family"]);
    let s = [given.join(" "), family.unwrap_or_default()].join(" ").trim().to_string();
    if s.is_empty() {
        n.value()
    } else {
        Some(s)
    }
}

fn value_of(n: &Node) -> Value {
    let Some(v) = n.child("value") else { return Value::None };
    let ty = v.attr("type").unwrap_or("");
    if ty.ends_with("PQ") || v.attr("unit").is_some() {
        if let Some(x) = v.attr("value").and_then(|x| x.parse::<f64>().ok()).filter(|x| x.is_finite()) {
            return Value::Quantity(x, v.attr("unit").map(str::to_string));
        }
    }
    if v.attr("code").is_some() || v.attr("displayName").is_some() {
        return Value::Coded(Code::from(v));
    }
    if let Some(t) = v.value().or_else(|| v.attr("value").map(str::to_string)) {
        return Value::Text(t);
    }
    Value::None
}

fn time_of(n: &Node) -> Option<String> {
    let t = n.child("effectiveTime")?;
    t.attr("value").map(str::to_string).or_else(|| t.child("low").and_then(|l| l.attr("value").map(str::to_string)))
}

fn collect<'a>(n: &'a Node, name: &str, out: &mut Vec<&'a Node>) {
    for c in &n.children {
        if c.name == name {
            out.push(c);
        }
        collect(c, name, out);
    }
}

/// C-CDA's Problem Status observation (LOINC 33999-4), nested in a problem.
const STATUS_CODE: &str = "33999-4";
/// The immunizations section (LOINC 11369-6).
const IMMUNIZATIONS: &str = "11369-6";

fn is_status(o: &Node) -> bool {
    o.child("code").and_then(|c| c.attr("code")) == Some(STATUS_CODE)
}

/// An allergy observation: a substance the patient reacts to, as the participant
/// (C-CDA) with its reactions nested as manifestation observations.
fn allergy(o: &Node) -> Option<Entry> {
    let entity = o.children_named("participant").find_map(|p| p.find("playingEntity"))?;
    let substance = entity.child("code").map(Code::from).unwrap_or_default();
    let substance = if substance.is_empty() {
        Code { display: entity.text_at(&["name"]), ..Default::default() }
    } else {
        substance
    };
    if substance.is_empty() {
        return None;
    }
    // Reactions are the manifestations (MFST); severity and status are not.
    let reaction = o
        .children_named("entryRelationship")
        .filter(|er| er.attr("typeCode") == Some("MFST"))
        .filter_map(|er| er.child("observation"))
        .filter(|r| !is_status(r))
        .filter_map(|r| r.child("value"))
        .map(Code::from)
        .filter(|c| !c.is_empty())
        .collect();
    Some(Entry::Allergy { substance, reaction, time: time_of(o) })
}

fn medication(sa: &Node) -> Option<Entry> {
    let material = sa.find("manufacturedMaterial")?;
    let code = material.child("code");
    let drug = code.map(Code::from).unwrap_or_default();
    let drug = if drug.is_empty() { Code { display: material.text_at(&["name"]), ..Default::default() } } else { drug };
    if drug.is_empty() {
        return None;
    }
    let translations = code
        .map(|c| c.children_named("translation").map(Code::from).filter(|c| !c.is_empty()).collect())
        .unwrap_or_default();
    let dose = sa.child("doseQuantity").and_then(|d| {
        Some((d.attr("value")?.parse::<f64>().ok().filter(|x| x.is_finite())?, d.attr("unit").map(str::to_string)))
    });
    let quantity = |n: &Node| -> Option<(f64, String)> {
        Some((n.attr("value")?.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0)?, n.attr("unit")?.to_string()))
    };
    let mut start = None;
    let mut period = None;
    let mut width = None;
    for t in sa.children_named("effectiveTime") {
        if let Some(p) = t.child("period").and_then(quantity) {
            period = Some((p.0, p.1, t.attr("institutionSpecified") == Some("true")));
        } else {
            start = start.or_else(|| {
                t.child("low")
                    .and_then(|l| l.attr("value").map(str::to_string))
                    .or_else(|| t.attr("value").map(str::to_string))
            });
            width = width.or_else(|| t.child("width").and_then(quantity));
        }
    }
    Some(Entry::Medication {
        ids: ids(sa),
        drug,
        translations,
        period,
        width,
        dose,
        route: sa.child("routeCode").map(Code::from).filter(|c| !c.is_empty()),
        start,
        text: sa.child("text").and_then(Node::value),
    })
}

/// The structured entries of a section. What an entry is comes from its shape (a
/// substance administration, an observation of a substance the patient reacts to, a
/// problem or result observation), so an entry is read the same in any section; the
/// allergy and medication section codes only say where the shape is expected. The
/// immunization section's administrations are not prescriptions and are not read.
fn entries(section_code: Option<&str>, sec: &Node) -> Vec<Entry> {
    let mut out = Vec::new();
    for entry in sec.children_named("entry") {
        let mut sas = Vec::new();
        if section_code != Some(IMMUNIZATIONS) {
            collect(entry, "substanceAdministration", &mut sas);
        }
        // A medication's own nested administrations (tapering steps) are one order.
        if let Some(m) = sas.first().and_then(|sa| medication(sa)) {
            out.push(m);
            continue;
        }
        let mut obs = Vec::new();
        collect(entry, "observation", &mut obs);
        let allergies: Vec<Entry> = obs.iter().filter_map(|o| allergy(o)).collect();
        if !allergies.is_empty() {
            out.extend(allergies);
            continue;
        }
        for o in obs {
            // Status observations describe the problem they are nested in.
            if is_status(o) {
                continue;
            }
            let code = o.child("code").map(Code::from).unwrap_or_default();
            let value = value_of(o);
            // Problem observations carry the problem in their value; others name it in code.
            if code.is_empty() && matches!(value, Value::None) {
                continue;
            }
            let interpretation = o.child("interpretationCode").and_then(|i| i.attr("code").map(str::to_string));
            let status = o
                .children_named("entryRelationship")
                .filter_map(|er| er.child("observation"))
                .find(|x| is_status(x))
                .and_then(|x| x.child("value"))
                .map(Code::from);
            out.push(Entry::Observation { code, value, time: time_of(o), interpretation, status });
        }
    }
    out
}

fn sections(n: &Node, out: &mut Vec<Section>) {
    for comp in n.children_named("component") {
        let Some(sec) = comp.child("section") else { continue };
        let code = sec.child("code").map(Code::from).filter(|c| !c.is_empty());
        let text = sec.child("text").map(Node::all_text).unwrap_or_default();
        let entries = entries(code.as_ref().and_then(|c| c.code.as_deref()), sec);
        out.push(Section { code, title: sec.text_at(&["title"]), text, entries });
        sections(sec, out);
    }
}

/// Decode (UTF-8, or the declared Shift_JIS) and parse.
pub fn parse(bytes: &[u8], options: &ParseOptions) -> Result<CdaDocument, SourceError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).to_ascii_lowercase();
    let charset = options.force_charset.unwrap_or(if head.contains("shift_jis") || head.contains("shift-jis") {
        Charset::ShiftJis
    } else {
        Charset::Utf8
    });
    let text = text::decode(bytes, charset).map_err(|e| {
        SourceError::at(
            Location { line: Some(e.prefix.matches('\n').count() + 1), offset: Some(e.offset), ..Default::default() },
            format!("bytes are not valid {}", e.charset),
        )
    })?;
    let root = parse_tree(&text, LIMITS)?;
    if root.name != "ClinicalDocument" || root.ns != "urn:hl7-org:v3" {
        return Err(SourceError::at(
            Location { line: Some(root.line), ..Default::default() },
            format!("the document element is `{}`, not a CDA ClinicalDocument (urn:hl7-org:v3)", root.name),
        ));
    }
    let patient = root.find("patientRole").map(|pr| {
        let p = pr.child("patient");
        Patient {
            ids: ids(pr),
            names: p
                .map(|p| {
                    p.children_named("name")
                        .map(|n| {
                            (
                                n.children_named("given").filter_map(Node::value).collect(),
                                n.text_at(&["family"]),
                                n.attr("use").map(str::to_string),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            gender: p
                .and_then(|p| p.child("administrativeGenderCode"))
                .and_then(|g| g.attr("code").map(str::to_string)),
            birth: p.and_then(|p| p.child("birthTime")).and_then(|b| b.attr("value").map(str::to_string)),
            addresses: pr
                .children_named("addr")
                .map(|a| CdaAddress {
                    use_: a.attr("use").map(str::to_string),
                    text: a.value(),
                    lines: a.children_named("streetAddressLine").filter_map(Node::value).collect(),
                    city: a.text_at(&["city"]),
                    state: a.text_at(&["state"]),
                    postal_code: a.text_at(&["postalCode"]),
                    country: a.text_at(&["country"]),
                })
                .collect(),
            telecoms: pr
                .children_named("telecom")
                .filter_map(|t| Some((t.attr("value")?.to_string(), t.attr("use").map(str::to_string))))
                .collect(),
        }
    });
    let authors = root
        .children_named("author")
        .map(|a| Author {
            time: a.child("time").and_then(|t| t.attr("value").map(str::to_string)),
            ids: a.child("assignedAuthor").map(ids).unwrap_or_default(),
            name: a.find("assignedPerson").and_then(|p| p.child("name")).and_then(person_name),
            organization: a.find("representedOrganization").and_then(CdaOrganization::from),
        })
        .collect();
    let mut secs = Vec::new();
    if let Some(body) = root.child("component").and_then(|c| c.child("structuredBody")) {
        sections(body, &mut secs);
    }
    Ok(CdaDocument {
        id: root.child("id").and_then(|i| Some((i.attr("root")?.to_string(), i.attr("extension").map(str::to_string)))),
        code: root.child("code").map(Code::from).unwrap_or_default(),
        title: root.text_at(&["title"]),
        effective: root.child("effectiveTime").and_then(|e| e.attr("value").map(str::to_string)),
        confidentiality: root.child("confidentialityCode").and_then(|c| c.attr("code").map(str::to_string)),
        patient,
        authors,
        custodian: root.find("representedCustodianOrganization").and_then(CdaOrganization::from),
        recipient: root
            .child("informationRecipient")
            .and_then(|r| r.find("receivedOrganization"))
            .and_then(CdaOrganization::from),
        recipient_person: root
            .child("informationRecipient")
            .and_then(|r| r.find("informationRecipient"))
            .and_then(|p| p.child("name"))
            .and_then(person_name),
        sections: secs,
    })
}
