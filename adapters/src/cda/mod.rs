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
    },
    /// An allergy (substance and optional reaction).
    Allergy {
        /// The substance.
        substance: Code,
        /// The reaction.
        reaction: Option<Code>,
        /// Onset (HL7 TS).
        time: Option<String>,
    },
    /// A medication (substanceAdministration).
    Medication {
        /// The drug.
        drug: Code,
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
    /// Telecom values.
    pub telecoms: Vec<String>,
}

/// A postal address (`addr`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CdaAddress {
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

/// An author.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Author {
    /// Time.
    pub time: Option<String>,
    /// Person name.
    pub name: Option<String>,
    /// Organisation name.
    pub organization: Option<String>,
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
    /// Custodian organisation name.
    pub custodian: Option<String>,
    /// Recipient organisation name (information recipient).
    pub recipient: Option<String>,
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

fn entries(section_code: Option<&str>, sec: &Node) -> Vec<Entry> {
    let mut out = Vec::new();
    for entry in sec.children_named("entry") {
        match section_code {
            Some("48765-2" | "510") => {
                let mut obs = Vec::new();
                collect(entry, "observation", &mut obs);
                for o in obs {
                    let Some(entity) = o.find("playingEntity") else { continue };
                    let substance = entity.child("code").map(Code::from).unwrap_or_default();
                    let substance = if substance.is_empty() {
                        Code { display: entity.text_at(&["name"]), ..Default::default() }
                    } else {
                        substance
                    };
                    if substance.is_empty() {
                        continue;
                    }
                    let reaction = o
                        .children_named("entryRelationship")
                        .find_map(|er| er.find("observation"))
                        .and_then(|r| r.child("value"))
                        .map(Code::from);
                    out.push(Entry::Allergy { substance, reaction, time: time_of(o) });
                }
            }
            Some("10160-0" | "10183-2" | "29549-3" | "42346-7" | "440") => {
                let mut sas = Vec::new();
                collect(entry, "substanceAdministration", &mut sas);
                for sa in sas.into_iter().take(1) {
                    let Some(material) = sa.find("manufacturedMaterial") else { continue };
                    let drug = material.child("code").map(Code::from).unwrap_or_default();
                    let drug = if drug.is_empty() {
                        Code { display: material.text_at(&["name"]), ..Default::default() }
                    } else {
                        drug
                    };
                    if drug.is_empty() {
                        continue;
                    }
                    let dose = sa.child("doseQuantity").and_then(|d| {
                        Some((
                            d.attr("value")?.parse::<f64>().ok().filter(|x| x.is_finite())?,
                            d.attr("unit").map(str::to_string),
                        ))
                    });
                    let start = sa.children_named("effectiveTime").find_map(|t| {
                        t.child("low")
                            .and_then(|l| l.attr("value").map(str::to_string))
                            .or_else(|| t.attr("value").map(str::to_string))
                    });
                    out.push(Entry::Medication {
                        drug,
                        dose,
                        route: sa.child("routeCode").map(Code::from).filter(|c| !c.is_empty()),
                        start,
                        text: sa.find("text").and_then(Node::value),
                    });
                }
            }
            _ => {
                let mut obs = Vec::new();
                collect(entry, "observation", &mut obs);
                for o in obs {
                    let code = o.child("code").map(Code::from).unwrap_or_default();
                    let value = value_of(o);
                    // Problem observations carry the problem in their value; others name it in code.
                    if code.is_empty() && matches!(value, Value::None) {
                        continue;
                    }
                    let interpretation = o.child("interpretationCode").and_then(|i| i.attr("code").map(str::to_string));
                    out.push(Entry::Observation { code, value, time: time_of(o), interpretation });
                }
            }
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
            ids: pr
                .children_named("id")
                .filter_map(|i| Some((i.attr("root")?.to_string(), i.attr("extension")?.to_string())))
                .collect(),
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
                    lines: a.children_named("streetAddressLine").filter_map(Node::value).collect(),
                    city: a.text_at(&["city"]),
                    state: a.text_at(&["state"]),
                    postal_code: a.text_at(&["postalCode"]),
                    country: a.text_at(&["country"]),
                })
                .collect(),
            telecoms: pr.children_named("telecom").filter_map(|t| t.attr("value").map(str::to_string)).collect(),
        }
    });
    let authors = root
        .children_named("author")
        .map(|a| Author {
            time: a.child("time").and_then(|t| t.attr("value").map(str::to_string)),
            name: a.find("assignedPerson").and_then(|p| p.child("name")).and_then(person_name),
            organization: a.find("representedOrganization").and_then(|o| o.text_at(&["name"])),
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
        custodian: root.find("representedCustodianOrganization").and_then(|o| o.text_at(&["name"])),
        recipient: root
            .find("informationRecipient")
            .and_then(|r| r.find("receivedOrganization"))
            .and_then(|o| o.text_at(&["name"])),
        sections: secs,
    })
}
