//! Typed MML modules, read out of the bounded element trees. Only what Kakehashi maps
//! is modelled; a module it does not model is kept as [`Module::Unmapped`] with its
//! name so the mapping can report it rather than drop it silently.

use super::Node;

fn t(n: &Node, path: &[&str]) -> Option<String> {
    n.text_at(path)
}

/// The document's creator (from `CreatorInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Creator {
    /// Person id within the facility.
    pub person_id: Option<String>,
    /// Full name.
    pub name: Option<String>,
    /// Facility name.
    pub facility_name: Option<String>,
    /// Facility id (often `JPN` + 医療機関コード-like id).
    pub facility_id: Option<String>,
    /// Licence (doctor, nurse ...).
    pub license: Option<String>,
}

impl Creator {
    fn from_node(ci: &Node) -> Creator {
        let psi = ci.child("PersonalizedInfo");
        let name = psi.and_then(|p| p.child("personName")).and_then(|pn| {
            pn.children_named("Name").find_map(|n| {
                n.text_at(&["fullname"]).or_else(|| {
                    let f = n.text_at(&["family"]).unwrap_or_default();
                    let g = n.text_at(&["given"]).unwrap_or_default();
                    let s = format!("{f} {g}").trim().to_string();
                    (!s.is_empty()).then_some(s)
                })
            })
        });
        let fac = psi.and_then(|p| p.child("Facility"));
        Creator {
            person_id: psi.and_then(|p| p.text_at(&["Id"])),
            name,
            facility_name: fac.and_then(|f| f.text_at(&["name"])),
            facility_id: fac.and_then(|f| f.text_at(&["Id"])),
            license: ci.text_at(&["creatorLicense"]),
        }
    }
}

/// `MmlHeader`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// The document creator.
    pub creator: Option<Creator>,
    /// The patient's master id at the facility.
    pub master_id: Option<String>,
}

impl Header {
    /// From the `MmlHeader` element.
    pub fn from_node(n: &Node) -> Header {
        Header { creator: n.child("CreatorInfo").map(Creator::from_node), master_id: n.text_at(&["masterId", "Id"]) }
    }
}

/// `docInfo`: provenance and ownership of a module item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocInfo {
    /// `contentModuleType`.
    pub content_module_type: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Document uid.
    pub uid: Option<String>,
    /// Confirmation date.
    pub confirm_date: Option<String>,
    /// Creator.
    pub creator: Option<Creator>,
    /// `accessRight/@permit` of the security level (all, read, none ...).
    pub security: Option<String>,
    /// `title/@generationPurpose` (MML0007: why the document was written).
    pub purpose: Option<String>,
}

/// One module item: provenance plus its content modules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Item {
    /// Provenance.
    pub doc_info: DocInfo,
    /// Modules inside `content` (or the bare module).
    pub modules: Vec<Module>,
}

impl Item {
    /// From an `MmlModuleItem`.
    pub fn from_item(n: &Node) -> Item {
        let di = n.child("docInfo");
        let doc_info = DocInfo {
            content_module_type: di.and_then(|d| d.attr("contentModuleType").map(str::to_string)),
            title: di.and_then(|d| t(d, &["title"])),
            uid: di.and_then(|d| t(d, &["docId", "uid"])),
            confirm_date: di.and_then(|d| t(d, &["confirmDate"])),
            creator: di.and_then(|d| d.child("CreatorInfo")).map(Creator::from_node),
            security: di.and_then(|d| d.find("accessRight")).and_then(|a| a.attr("permit").map(str::to_string)),
            purpose: di.and_then(|d| d.child("title")).and_then(|t| t.attr("generationPurpose").map(str::to_string)),
        };
        let modules =
            n.child("content").map(|c| c.children.iter().map(Module::from_node).collect()).unwrap_or_default();
        Item { doc_info, modules }
    }

    /// A document that is one bare module.
    pub fn bare(n: &Node) -> Item {
        Item { doc_info: DocInfo::default(), modules: vec![Module::from_node(n)] }
    }
}

/// A person's name (`mmlNm:Name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonName {
    /// `repCode`: I (ideographic), P (phonetic), A (alphabetic).
    pub rep_code: Option<String>,
    /// Family name.
    pub family: Option<String>,
    /// Given name.
    pub given: Option<String>,
    /// Full name when not split.
    pub full: Option<String>,
}

/// An address (`mmlAd:Address`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// home, business ...
    pub class: Option<String>,
    /// Unstructured address.
    pub full: Option<String>,
    /// Prefecture.
    pub prefecture: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Town.
    pub town: Option<String>,
    /// House number.
    pub home_number: Option<String>,
    /// Postal code.
    pub zip: Option<String>,
    /// Country.
    pub country: Option<String>,
}

/// A phone (`mmlPh:Phone`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phone {
    /// PH, FX ...
    pub equip: Option<String>,
    /// The number as one string.
    pub number: String,
    /// Memo.
    pub memo: Option<String>,
}

/// `PatientModule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatientInfo {
    /// Master id.
    pub master_id: Option<String>,
    /// Other ids (type, id).
    pub other_ids: Vec<(String, String)>,
    /// Names.
    pub names: Vec<PersonName>,
    /// Birthday (YYYY-MM-DD).
    pub birthday: Option<String>,
    /// male, female, other, unknown.
    pub sex: Option<String>,
    /// Addresses.
    pub addresses: Vec<Address>,
    /// Phones.
    pub phones: Vec<Phone>,
    /// Email addresses.
    pub emails: Vec<String>,
    /// Date of death, or "true" when only the fact is known.
    pub death: Option<String>,
}

/// Public funding (公費).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicInsurance {
    /// Provider name.
    pub provider_name: Option<String>,
    /// 公費負担者番号.
    pub provider: Option<String>,
    /// 受給者番号.
    pub recipient: Option<String>,
    /// Start.
    pub start: Option<String>,
    /// End.
    pub expired: Option<String>,
}

/// `HealthInsuranceModule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthInsurance {
    /// Class code.
    pub class_code: Option<String>,
    /// Class name.
    pub class_name: Option<String>,
    /// 保険者番号.
    pub insurer: Option<String>,
    /// 記号.
    pub group: Option<String>,
    /// 番号.
    pub number: Option<String>,
    /// true when the patient is a family member (not the insured).
    pub family: Option<bool>,
    /// Start.
    pub start: Option<String>,
    /// End.
    pub expired: Option<String>,
    /// Public funding.
    pub public: Vec<PublicInsurance>,
}

/// `RegisteredDiagnosisModule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// Name as written.
    pub name: Option<String>,
    /// Code.
    pub code: Option<String>,
    /// Code system (ICD-10, MEDIS ...).
    pub system: Option<String>,
    /// Category (mainDiagnosis ...).
    pub category: Option<String>,
    /// Start date.
    pub start: Option<String>,
    /// End date.
    pub end: Option<String>,
    /// Outcome (recovered, died ...).
    pub outcome: Option<String>,
    /// First encounter date.
    pub first_encounter: Option<String>,
}

/// One drug of a prescription or injection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Medication {
    /// Drug name.
    pub name: Option<String>,
    /// Drug code.
    pub code: Option<String>,
    /// Code system (YJ, HOT ...).
    pub code_system: Option<String>,
    /// Every `code` of the medicine (system, code), the first one included: a drug is
    /// often written in HOT9 and YJ both.
    pub codes: Vec<(Option<String>, String)>,
    /// Dose.
    pub dose: Option<String>,
    /// Dose unit.
    pub dose_unit: Option<String>,
    /// Times per day.
    pub frequency_per_day: Option<String>,
    /// Start date or dateTime.
    pub start: Option<String>,
    /// End dateTime (injections).
    pub end: Option<String>,
    /// ISO 8601 duration (P14D).
    pub duration: Option<String>,
    /// Usage instruction.
    pub instruction: Option<String>,
    /// Route.
    pub route: Option<String>,
    /// Site.
    pub site: Option<String>,
    /// Delivery method.
    pub method: Option<String>,
    /// RP (batch) number.
    pub batch_no: Option<String>,
    /// Generic substitution allowed.
    pub substitution: Option<bool>,
}

fn medications(n: &Node) -> Vec<Medication> {
    n.children_named("medication")
        .map(|m| Medication {
            name: t(m, &["medicine", "name"]),
            code: t(m, &["medicine", "code"]),
            code_system: m
                .child("medicine")
                .and_then(|x| x.child("code"))
                .and_then(|c| c.attr("system").map(str::to_string)),
            codes: m
                .child("medicine")
                .map(|x| {
                    x.children_named("code")
                        .filter_map(|c| Some((c.attr("system").map(str::to_string), c.value()?)))
                        .collect()
                })
                .unwrap_or_default(),
            dose: t(m, &["dose"]),
            dose_unit: t(m, &["doseUnit"]),
            frequency_per_day: t(m, &["frequencyPerDay"]),
            start: t(m, &["startDate"]).or_else(|| t(m, &["startDateTime"])),
            end: t(m, &["endDateTime"]),
            duration: t(m, &["duration"]),
            instruction: t(m, &["instruction"]),
            route: t(m, &["route"]),
            site: t(m, &["site"]),
            method: t(m, &["deliveryMethod"]),
            batch_no: t(m, &["batchNo"]),
            substitution: t(m, &["brandSubstitutionPermitted"]).map(|v| v == "true"),
        })
        .collect()
}

/// One lab result item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabItem {
    /// Item name.
    pub name: Option<String>,
    /// Item code.
    pub code: Option<String>,
    /// Code table (JLAC10, local ...).
    pub code_id: Option<String>,
    /// Value as reported.
    pub value: Option<String>,
    /// Numeric value.
    pub num_value: Option<String>,
    /// Unit.
    pub unit: Option<String>,
    /// Reference low.
    pub low: Option<String>,
    /// Reference high.
    pub up: Option<String>,
    /// Reference text.
    pub normal: Option<String>,
    /// Flag H/L/N...
    pub out: Option<String>,
}

/// One specimen's results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabTest {
    /// Specimen name.
    pub specimen: Option<String>,
    /// Items.
    pub items: Vec<LabItem>,
}

/// `TestModule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestResult {
    /// Registration id.
    pub regist_id: Option<String>,
    /// Sample time.
    pub sample_time: Option<String>,
    /// Report time.
    pub report_time: Option<String>,
    /// Report status (final, mid ...).
    pub status: Option<String>,
    /// Performing facility.
    pub facility: Option<String>,
    /// The facility's code and its code table (`insurance` for a 医療機関コード).
    pub facility_code: Option<(String, Option<String>)>,
    /// The ordering department.
    pub department: Option<String>,
    /// The laboratory that ran the tests, and its code and table.
    pub laboratory: Option<String>,
    /// The laboratory's code and its code table.
    pub laboratory_code: Option<(String, Option<String>)>,
    /// Tests per specimen.
    pub tests: Vec<LabTest>,
}

/// Where and by whom observations were made (`context` of VitalSign and FlowSheet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservationContext {
    /// Facility name.
    pub facility: Option<String>,
    /// The facility's code and its code table.
    pub facility_code: Option<(String, Option<String>)>,
    /// Department.
    pub department: Option<String>,
    /// Ward.
    pub ward: Option<String>,
    /// Observer (a nurse, a doctor).
    pub observer: Option<String>,
}

impl ObservationContext {
    fn from_node(n: Option<&Node>) -> ObservationContext {
        let Some(n) = n else { return ObservationContext::default() };
        ObservationContext {
            facility: t(n, &["facility"]),
            facility_code: coded(n.child("facility"), "facilityCode", "facilityCodeId"),
            department: t(n, &["department"]),
            ward: t(n, &["ward"]),
            observer: t(n, &["observer"]),
        }
    }
}

/// A code attribute and its table attribute of an element.
fn coded(n: Option<&Node>, code: &str, table: &str) -> Option<(String, Option<String>)> {
    let n = n?;
    let c = n.attr(code)?.trim();
    (!c.is_empty()).then(|| (c.to_string(), n.attr(table).map(str::to_string)))
}

/// Something taken in (`intake`: a meal, a tube feed, a drip).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intake {
    /// What (朝食, 経管栄養剤 ...).
    pub kind: Option<String>,
    /// How much.
    pub volume: Option<String>,
    /// Unit (ml, /10 ...).
    pub unit: Option<String>,
    /// Route (経口, 胃瘻 ...).
    pub pathway: Option<String>,
    /// Start and end times.
    pub start: Option<String>,
    /// End time.
    pub end: Option<String>,
    /// Memo.
    pub memo: Option<String>,
}

/// Something given off (`bodilyOutput`: urine, feces, drainage).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodilyOutput {
    /// What (urine, feces, bile ...).
    pub kind: Option<String>,
    /// How much.
    pub volume: Option<String>,
    /// Unit.
    pub unit: Option<String>,
    /// Character (性状).
    pub status: Option<String>,
    /// Colour.
    pub color: Option<String>,
    /// Route (ドレーン ...).
    pub pathway: Option<String>,
    /// Start time.
    pub start: Option<String>,
    /// End time.
    pub end: Option<String>,
    /// How often: times within a period (start, end).
    pub frequency: Vec<(Option<String>, Option<String>, Option<String>)>,
    /// Memo.
    pub memo: Option<String>,
}

/// `FlowSheetModule`: a nursing chart of vital signs, intake and output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowSheet {
    /// Where and by whom.
    pub context: ObservationContext,
    /// Vital sign sets.
    pub vitals: Vec<VitalSigns>,
    /// Intake.
    pub intake: Vec<Intake>,
    /// Output.
    pub output: Vec<BodilyOutput>,
    /// Memo.
    pub memo: Option<String>,
}

fn flow_sheet(n: &Node) -> FlowSheet {
    FlowSheet {
        context: ObservationContext::from_node(n.child("context")),
        vitals: n.children_named("VitalSignModule").map(VitalSigns::from_node).collect(),
        intake: n
            .children_named("intake")
            .map(|i| Intake {
                kind: t(i, &["intakeType"]),
                volume: t(i, &["intakeVolume"]),
                unit: t(i, &["intakeUnit"]),
                pathway: t(i, &["intakePathway"]),
                start: t(i, &["intakeStartTime"]),
                end: t(i, &["intakeEndTime"]),
                memo: t(i, &["intakeMemo"]),
            })
            .collect(),
        output: n
            .children_named("bodilyOutput")
            .map(|o| BodilyOutput {
                kind: t(o, &["boType"]),
                volume: t(o, &["boVolume"]),
                unit: t(o, &["boUnit"]),
                status: t(o, &["boStatus"]),
                color: t(o, &["boColor"]),
                pathway: t(o, &["boPathway"]),
                start: t(o, &["boStartTime"]),
                end: t(o, &["boEndTime"]),
                frequency: o
                    .children_named("boFrequency")
                    .map(|f| (t(f, &["bofTimes"]), t(f, &["bofPeriodStartTime"]), t(f, &["bofPeriodEndTime"])))
                    .collect(),
                memo: t(o, &["boMemo"]),
            })
            .collect(),
        memo: t(n, &["fsMemo"]),
    }
}

/// A vital sign item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VitalItem {
    /// Item name.
    pub name: Option<String>,
    /// Value.
    pub value: Option<String>,
    /// Unit.
    pub unit: Option<String>,
}

/// `VitalSignModule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VitalSigns {
    /// Items.
    pub items: Vec<VitalItem>,
    /// Observed time.
    pub observed: Option<String>,
    /// Where and by whom.
    pub context: ObservationContext,
}

impl VitalSigns {
    fn from_node(n: &Node) -> VitalSigns {
        VitalSigns {
            items: n
                .children_named("item")
                .map(|i| VitalItem {
                    name: t(i, &["itemName"]),
                    value: t(i, &["numValue"]).or_else(|| t(i, &["value"])),
                    unit: t(i, &["unit"]),
                })
                .collect(),
            observed: t(n, &["observedTime"]),
            context: ObservationContext::from_node(n.child("context")),
        }
    }
}

/// An allergy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allergy {
    /// Allergen.
    pub factor: Option<String>,
    /// Severity as written.
    pub severity: Option<String>,
    /// When identified (free text allowed).
    pub identified: Option<String>,
    /// Memo.
    pub memo: Option<String>,
}

/// Allergies and blood type (`BaseClinicModule`, `FirstClinicModule`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClinicalBase {
    /// Allergies.
    pub allergies: Vec<Allergy>,
    /// ABO group.
    pub abo: Option<String>,
    /// Rh.
    pub rh: Option<String>,
}

fn clinical_base(n: &Node) -> ClinicalBase {
    ClinicalBase {
        allergies: n
            .child("allergy")
            .map(|a| {
                a.children_named("allergyItem")
                    .map(|i| Allergy {
                        factor: t(i, &["factor"]),
                        severity: t(i, &["severity"]),
                        identified: t(i, &["identifiedDate"]),
                        memo: t(i, &["memo"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        abo: t(n, &["bloodtype", "abo"]),
        rh: t(n, &["bloodtype", "rh"]),
    }
}

/// `LifestyleModule`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lifestyle {
    /// Occupation.
    pub occupation: Option<String>,
    /// Tobacco use.
    pub tobacco: Option<String>,
    /// Alcohol use.
    pub alcohol: Option<String>,
    /// Other.
    pub other: Option<String>,
}

/// Narrative documents mapped to a Composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentKind {
    /// `SummaryModule` (clinical summary, discharge summary).
    Summary,
    /// `ReferralModule`.
    Referral,
    /// `ReportModule`.
    Report,
    /// `ProgressCourseModule`.
    ProgressCourse,
    /// `FirstClinicModule` (first-visit record).
    FirstClinic,
    /// `SurgeryModule`.
    Surgery,
    /// `ProcedureModule`? mapped as a note.
    Procedure,
    /// `HemoDialysisModule`.
    HemoDialysis,
}

/// A narrative document: sections of text and the modules nested in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Kind.
    pub kind: DocumentKind,
    /// Sections (element name, text).
    pub sections: Vec<(String, String)>,
    /// Content modules nested inside (prescriptions in a summary ...).
    pub nested: Vec<Module>,
    /// Allergies and blood type found inside (first-visit records).
    pub base: ClinicalBase,
    /// Referral: the receiving facility's name, as written.
    pub to_facility: Option<String>,
    /// Referral: the receiving facility's id (its 医療機関コード under MML0027).
    pub to_facility_id: Option<String>,
    /// Referral: the doctor referred to.
    pub to_person: Option<String>,
    /// The first date (YYYY-MM-DD) written in the document, for documents without `docInfo`.
    pub first_date: Option<String>,
}

/// A content module.
#[derive(Debug, Clone, PartialEq)]
pub enum Module {
    /// `PatientModule`.
    Patient(PatientInfo),
    /// `HealthInsuranceModule`.
    Insurance(HealthInsurance),
    /// `RegisteredDiagnosisModule`.
    Diagnosis(Diagnosis),
    /// `PrescriptionModule`.
    Prescription(Vec<Medication>),
    /// `InjectionModule`.
    Injection(Vec<Medication>),
    /// `TestModule`.
    Test(TestResult),
    /// `VitalSignModule`.
    Vitals(VitalSigns),
    /// `FlowSheetModule`: vital signs, intake and output over time.
    FlowSheet(FlowSheet),
    /// `BaseClinicModule`.
    Base(ClinicalBase),
    /// `LifestyleModule`.
    Lifestyle(Lifestyle),
    /// Narrative documents.
    Document(Document),
    /// A module Kakehashi does not map (reported as a warning).
    Unmapped {
        /// Element name.
        name: String,
        /// Line in the source.
        line: usize,
    },
}

fn is_module(n: &Node) -> bool {
    n.name.ends_with("Module") && n.ns.contains("ContentModule")
}

fn nested_modules(n: &Node) -> Vec<Module> {
    let mut out = Vec::new();
    fn walk(n: &Node, out: &mut Vec<Module>) {
        for c in &n.children {
            if is_module(c) {
                out.push(Module::from_node(c));
            } else {
                walk(c, out);
            }
        }
    }
    walk(n, &mut out);
    out
}

fn sections(n: &Node) -> Vec<(String, String)> {
    // Every direct child that is not a nested module becomes a section of its text.
    n.children
        .iter()
        .filter(|c| {
            !is_module(c)
                && !matches!(c.name.as_str(), "referFrom" | "referToFacility" | "referToPerson" | "referToUnknownName")
        })
        .filter_map(|c| {
            let mut text = String::new();
            fn walk(n: &Node, out: &mut String) {
                if n.name.ends_with("Module") && n.ns.contains("ContentModule") {
                    return;
                }
                if let Some(v) = n.value() {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(&v);
                }
                for c in &n.children {
                    walk(c, out);
                }
            }
            walk(c, &mut text);
            (!text.trim().is_empty()).then(|| (c.name.clone(), text))
        })
        .collect()
}

fn document(n: &Node, kind: DocumentKind) -> Module {
    Module::Document(Document {
        kind,
        sections: sections(n),
        nested: nested_modules(n),
        base: clinical_base(n),
        to_facility: n.find("referToFacility").and_then(|f| f.find("name")).and_then(Node::value),
        to_facility_id: n.find("referToFacility").and_then(|f| f.find("Id")).and_then(Node::value),
        to_person: n.find("referToPerson").and_then(|p| p.find("Name")).and_then(|n| {
            n.text_at(&["fullname"]).or_else(|| {
                let s = format!(
                    "{} {}",
                    n.text_at(&["family"]).unwrap_or_default(),
                    n.text_at(&["given"]).unwrap_or_default()
                );
                (!s.trim().is_empty()).then(|| s.trim().to_string())
            })
        }),
        first_date: first_date(n),
    })
}

fn first_date(n: &Node) -> Option<String> {
    let looks_like_date = |v: &str| {
        v.len() >= 10
            && v.as_bytes()[4] == b'-'
            && v.as_bytes()[7] == b'-'
            && v[..4].bytes().all(|b| b.is_ascii_digit())
    };
    for (k, v) in &n.attrs {
        let k = k.to_ascii_lowercase();
        if (k.contains("date") || k.contains("time")) && looks_like_date(v) {
            return Some(v[..10].to_string());
        }
    }
    if n.name.to_ascii_lowercase().contains("date") && n.name != "birthday" {
        if let Some(v) = n.value().filter(|v| looks_like_date(v)) {
            return Some(v[..10].to_string());
        }
    }
    n.children.iter().find_map(first_date)
}

impl Module {
    /// Read a module element.
    pub fn from_node(n: &Node) -> Module {
        match n.name.as_str() {
            "PatientModule" => Module::Patient(patient(n)),
            "HealthInsuranceModule" => Module::Insurance(insurance(n)),
            "RegisteredDiagnosisModule" => {
                let dx = n.child("diagnosis");
                Module::Diagnosis(Diagnosis {
                    name: dx.and_then(Node::value).or_else(|| t(n, &["diagnosisContents", "dxItem", "name"])),
                    code: dx.and_then(|d| d.attr("code").map(str::to_string)),
                    system: dx.and_then(|d| d.attr("system").map(str::to_string)),
                    category: t(n, &["categories", "category"]),
                    start: t(n, &["startDate"]),
                    end: t(n, &["endDate"]),
                    outcome: t(n, &["outcome"]),
                    first_encounter: t(n, &["firstEncounterDate"]),
                })
            }
            "PrescriptionModule" => Module::Prescription(medications(n)),
            "InjectionModule" => Module::Injection(medications(n)),
            "TestModule" => Module::Test(test_result(n)),
            "VitalSignModule" => Module::Vitals(VitalSigns::from_node(n)),
            "FlowSheetModule" => Module::FlowSheet(flow_sheet(n)),
            "BaseClinicModule" => Module::Base(clinical_base(n)),
            "LifestyleModule" => Module::Lifestyle(Lifestyle {
                occupation: t(n, &["occupation"]),
                tobacco: t(n, &["tobacco"]),
                alcohol: t(n, &["alcohol"]),
                other: t(n, &["other"]),
            }),
            "SummaryModule" => document(n, DocumentKind::Summary),
            "ReferralModule" => document(n, DocumentKind::Referral),
            "ReportModule" => document(n, DocumentKind::Report),
            "ProgressCourseModule" => document(n, DocumentKind::ProgressCourse),
            "FirstClinicModule" => document(n, DocumentKind::FirstClinic),
            "SurgeryModule" => document(n, DocumentKind::Surgery),
            "ProcedureModule" => document(n, DocumentKind::Procedure),
            "HemoDialysisModule" => document(n, DocumentKind::HemoDialysis),
            other => Module::Unmapped { name: other.to_string(), line: n.line },
        }
    }
}

fn patient(n: &Node) -> PatientInfo {
    let ui = n.child("uniqueInfo");
    PatientInfo {
        master_id: ui.and_then(|u| t(u, &["masterId", "Id"])),
        other_ids: ui
            .map(|u| {
                u.children_named("otherId")
                    .filter_map(|o| Some((o.attr("type").unwrap_or("other").to_string(), t(o, &["Id"])?)))
                    .collect()
            })
            .unwrap_or_default(),
        names: n
            .child("personName")
            .map(|p| {
                p.children_named("Name")
                    .map(|x| PersonName {
                        rep_code: x.attr("repCode").map(str::to_string),
                        family: t(x, &["family"]),
                        given: t(x, &["given"]),
                        full: t(x, &["fullname"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        birthday: t(n, &["birthday"]),
        sex: t(n, &["sex"]),
        addresses: n
            .child("addresses")
            .map(|a| {
                a.children_named("Address")
                    .map(|x| Address {
                        class: x.attr("addressClass").map(str::to_string),
                        full: t(x, &["full"]),
                        prefecture: t(x, &["prefecture"]),
                        city: t(x, &["city"]),
                        town: t(x, &["town"]),
                        home_number: t(x, &["homeNumber"]),
                        zip: t(x, &["zip"]),
                        country: t(x, &["countryCode"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        phones: n
            .child("phones")
            .map(|p| {
                p.children_named("Phone")
                    .filter_map(|x| {
                        let number = t(x, &["full"]).or_else(|| {
                            let parts: Vec<String> =
                                ["area", "city", "number"].iter().filter_map(|k| t(x, &[k])).collect();
                            (!parts.is_empty()).then(|| parts.join("-"))
                        })?;
                        Some(Phone { equip: x.attr("telEquipType").map(str::to_string), number, memo: t(x, &["memo"]) })
                    })
                    .collect()
            })
            .unwrap_or_default(),
        emails: n
            .child("emailAddresses")
            .map(|e| e.children.iter().filter_map(Node::value).collect())
            .unwrap_or_default(),
        death: n
            .child("death")
            .and_then(|d| d.attr("date").map(str::to_string).or_else(|| d.value().filter(|v| v == "true"))),
    }
}

fn insurance(n: &Node) -> HealthInsurance {
    let class = n.child("insuranceClass");
    HealthInsurance {
        class_code: class.and_then(|c| c.attr("ClassCode").map(str::to_string)),
        class_name: class.and_then(Node::value),
        insurer: t(n, &["insuranceNumber"]),
        group: t(n, &["clientId", "group"]),
        number: t(n, &["clientId", "number"]),
        family: t(n, &["familyClass"]).map(|v| v == "true"),
        start: t(n, &["startDate"]),
        expired: t(n, &["expiredDate"]),
        public: n
            .child("publicInsurance")
            .map(|p| {
                p.children_named("publicInsuranceItem")
                    .map(|i| PublicInsurance {
                        provider_name: t(i, &["providerName"]),
                        provider: t(i, &["provider"]),
                        recipient: t(i, &["recipient"]),
                        start: t(i, &["startDate"]),
                        expired: t(i, &["expiredDate"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn test_result(n: &Node) -> TestResult {
    let info = n.child("information");
    let a = |k: &str| info.and_then(|i| i.attr(k).map(str::to_string));
    TestResult {
        regist_id: a("registId"),
        sample_time: a("sampleTime"),
        report_time: a("reportTime"),
        status: info.and_then(|i| i.child("reportStatus")).and_then(|s| s.attr("statusCode").map(str::to_string)),
        facility: info.and_then(|i| t(i, &["facility"])),
        facility_code: coded(info.and_then(|i| i.child("facility")), "facilityCode", "facilityCodeId"),
        department: info.and_then(|i| t(i, &["department"])),
        laboratory: info.and_then(|i| t(i, &["laboratoryCenter"])),
        laboratory_code: coded(info.and_then(|i| i.child("laboratoryCenter")), "centerCode", "centerCodeId"),
        tests: n
            .children_named("laboTest")
            .map(|lt| LabTest {
                specimen: t(lt, &["specimen", "specimenName"]),
                items: lt
                    .children_named("item")
                    .map(|i| {
                        let name = i.child("itemName");
                        let num = i.child("numValue");
                        LabItem {
                            name: name.and_then(Node::value),
                            code: name.and_then(|x| x.attr("itCode").map(str::to_string)),
                            code_id: name.and_then(|x| x.attr("itCodeId").map(str::to_string)),
                            value: t(i, &["value"]),
                            num_value: num.and_then(Node::value),
                            unit: t(i, &["unit"]),
                            low: num.and_then(|x| x.attr("low").map(str::to_string)),
                            up: num.and_then(|x| x.attr("up").map(str::to_string)),
                            normal: num.and_then(|x| x.attr("normal").map(str::to_string)),
                            out: num.and_then(|x| x.attr("out").map(str::to_string)),
                        }
                    })
                    .collect(),
            })
            .collect(),
    }
}
