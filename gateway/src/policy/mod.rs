//! Policy: who may see which record. The institution that bills for the care owns the
//! record's boundary; a reader from elsewhere crosses it only when the owner's rules
//! allow. The decision is a type: data leaves only inside [`Permitted`], and only this
//! module can make a [`Permit`].

pub mod break_glass;
pub mod grants;
pub mod rate;

use crate::identity::Principal;
use crate::records::Stored;
use grants::{Grant, GrantKind, Grants};
use kakehashi_certs::Role;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a read was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// The reader's institution owns the record.
    SameSite,
    /// A grant of the owner (consent, referral, delegation, pharmacy designation).
    Grant(GrantKind, String),
    /// A pharmacy presented the prescription number and the patient's birth date.
    PresentedPrescription,
    /// A doctor read without a grant, stating a reason.
    BreakGlass,
}

impl Basis {
    /// Code for audit records: `same-site`, `consent:<grant id>`, `break-glass` ...
    pub fn code(&self) -> String {
        match self {
            Basis::SameSite => "same-site".into(),
            Basis::Grant(kind, id) => format!("{}:{id}", kind.code()),
            Basis::PresentedPrescription => "presented-prescription".into(),
            Basis::BreakGlass => "break-glass".into(),
        }
    }
}

/// What a pharmacist presents at the counter: one prescription number and one exact
/// birth date (`YYYY-MM-DD`). Ranges, lists and partial dates are not a presentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presentation {
    /// The identifier system given with the number (`system|number`), if any.
    pub system: Option<String>,
    /// The prescription number, as printed.
    pub number: String,
    /// The patient's birth date.
    pub birth_date: String,
}

impl Presentation {
    /// From a search's parameters: exactly one `identifier` value (optionally
    /// `system|number`) and exactly one `patient.birthdate` that is a plain date.
    pub fn from_params(params: &[(String, String)]) -> Option<Presentation> {
        let only = |name: &str| {
            let mut it = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let first = it.next()?;
            it.next().is_none().then_some(first)
        };
        let identifier = only("identifier")?;
        let (system, number) = match identifier.rsplit_once('|') {
            Some((s, v)) => ((!s.is_empty()).then(|| s.to_string()), v),
            None => (None, identifier),
        };
        let birth = only("patient.birthdate")?;
        let is_date = birth.len() == 10
            && birth.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
        (is_date && !number.is_empty() && !number.contains(',')).then(|| Presentation {
            system,
            number: number.to_string(),
            birth_date: birth.to_string(),
        })
    }
}

/// Why a doctor breaks the glass: a code from a short list, and free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakGlassCode {
    /// Emergency treatment (救急・急変時の診療).
    EmergencyTreatment,
    /// The patient cannot consent (意識障害等で本人の同意が得られない).
    UnconsciousPatient,
    /// Disaster medical care (災害時の診療).
    Disaster,
    /// Another reason, stated in the free text (required).
    Other,
}

impl BreakGlassCode {
    /// Every code, as sent in the header.
    pub const ALL: [BreakGlassCode; 4] = [
        BreakGlassCode::EmergencyTreatment,
        BreakGlassCode::UnconsciousPatient,
        BreakGlassCode::Disaster,
        BreakGlassCode::Other,
    ];

    /// The code as sent and audited.
    pub fn code(self) -> &'static str {
        match self {
            BreakGlassCode::EmergencyTreatment => "emergency-treatment",
            BreakGlassCode::UnconsciousPatient => "unconscious-patient",
            BreakGlassCode::Disaster => "disaster",
            BreakGlassCode::Other => "other",
        }
    }

    /// From the code.
    pub fn from_code(c: &str) -> Option<BreakGlassCode> {
        Self::ALL.into_iter().find(|k| k.code() == c)
    }
}

/// A break-glass declaration: why, and for which patient(s) of one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakGlass {
    /// The reason code.
    pub code: BreakGlassCode,
    /// Free text (required for `other`).
    pub text: Option<String>,
    /// The patient ids it reaches: the one patient read (and the same person's
    /// records at other sites, for `$everything`). Never more than one person.
    pub patients: Vec<String>,
}

impl BreakGlass {
    /// `code` or `code; free text`, as audited.
    pub fn reason(&self) -> String {
        match &self.text {
            Some(t) => format!("{}; {t}", self.code.code()),
            None => self.code.code().to_string(),
        }
    }
}

/// What the decision depends on besides who and what.
#[derive(Debug, Clone, Default)]
pub struct ReadContext {
    /// Now, Unix seconds.
    pub now: i64,
    /// The break-glass declaration of the request, if any.
    pub break_glass: Option<BreakGlass>,
}

/// Proof that the policy allowed this principal to see one resource. Not
/// constructible outside this module.
#[derive(Debug, Clone)]
pub struct Permit {
    basis: Basis,
    _sealed: (),
}

impl Permit {
    /// Why the read was allowed.
    pub fn basis(&self) -> &Basis {
        &self.basis
    }
}

/// A resource together with the permit to disclose it.
#[derive(Debug, Clone)]
pub struct Permitted {
    /// The permit.
    pub permit: Permit,
    /// The resource.
    pub record: Arc<Stored>,
}

/// Why a read was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The role never reads clinical data (auditors).
    #[error("the {0} role does not read clinical records")]
    RoleNeverReads(Role),
    /// The role may not read this resource type at all.
    #[error("the {role} role may not read {resource_type} resources")]
    TypeNotForRole {
        /// The role.
        role: Role,
        /// The resource type.
        resource_type: String,
    },
    /// No rule of the owner lets this principal see the record.
    #[error("no grant of the owning institution allows this read")]
    NoGrant,
}

/// Whether a grant of its kind lets this role read this type.
fn kind_fits(g: &Grant, who: &Principal, ty: &str) -> bool {
    match g.kind {
        GrantKind::Consent | GrantKind::Referral => {
            matches!(who.role, Role::ClinicTerminal | Role::HospitalSystem | Role::Doctor)
        }
        GrantKind::Delegation => who.role == Role::Doctor,
        GrantKind::Pharmacy => who.role == Role::Pharmacy && matches!(ty, "MedicationRequest" | "Patient"),
    }
}

/// The policy decision point.
#[derive(Debug, Default)]
pub struct Policy {
    /// The owners' grants.
    pub grants: Grants,
    /// Per site, the identifier system of the prescription number printed on its
    /// prescriptions (`site.prescription_number_system`); by default the owner's
    /// `urn:kakehashi:local:<owner>:prescription-number`.
    prescription_systems: HashMap<String, String>,
}

impl Policy {
    /// A policy with no grants loaded yet and the default prescription-number systems.
    pub fn new() -> Arc<Policy> {
        Arc::new(Policy::default())
    }

    /// A policy for `config`'s sites, no grants loaded yet.
    pub fn for_config(config: &crate::config::Config) -> Arc<Policy> {
        let prescription_systems =
            config.sites.iter().filter_map(|s| Some((s.id.clone(), s.prescription_number_system.clone()?))).collect();
        Arc::new(Policy { grants: Grants::default(), prescription_systems })
    }

    /// The identifier system whose value is the prescription number of `record`.
    pub fn prescription_system(&self, record: &Stored) -> String {
        self.prescription_systems
            .get(&record.site)
            .cloned()
            .unwrap_or_else(|| kakehashi_mappings::codes::local_system(&record.owner, "prescription-number"))
    }

    /// Role-level check before anything is looked up, so a refusal here reveals
    /// nothing about whether records exist.
    pub fn may_read_type(&self, who: &Principal, resource_type: &str) -> Result<(), Refusal> {
        match who.role {
            Role::Auditor => Err(Refusal::RoleNeverReads(Role::Auditor)),
            Role::Pharmacy if !matches!(resource_type, "MedicationRequest" | "Patient") => {
                Err(Refusal::TypeNotForRole { role: Role::Pharmacy, resource_type: resource_type.to_string() })
            }
            _ => Ok(()),
        }
    }

    /// Decide one resource: same site, then the owner's grants, then break-glass.
    pub fn decide(&self, who: &Principal, record: &Stored, ctx: &ReadContext) -> Result<Permit, Refusal> {
        let basis = self.basis(who, record.resource.type_name(), &record.owner, record.patient.as_deref(), ctx)?;
        Ok(Permit { basis, _sealed: () })
    }

    /// The decision for a record known only by its type, owner and patient (an index
    /// entry), without a permit: what a search counts before it reads the page it
    /// returns (whose records are then decided again, each, by [`Policy::decide`]).
    pub fn basis(
        &self,
        who: &Principal,
        ty: &str,
        owner: &str,
        patient: Option<&str>,
        ctx: &ReadContext,
    ) -> Result<Basis, Refusal> {
        self.may_read_type(who, ty)?;
        if owner == who.institution {
            return Ok(Basis::SameSite);
        }
        let patient = patient.unwrap_or("");
        let applies =
            |g: &Grant| g.active_at(ctx.now) && g.names(&who.institution) && g.covers(ty) && kind_fits(g, who, ty);
        if let Some((kind, id)) = self.grants.first_of(owner, patient, applies) {
            return Ok(Basis::Grant(kind, id));
        }
        // Break-glass reaches only the patient (person) it was declared for.
        if who.role == Role::Doctor
            && ctx.break_glass.as_ref().is_some_and(|g| !patient.is_empty() && g.patients.iter().any(|p| p == patient))
        {
            return Ok(Basis::BreakGlass);
        }
        Err(Refusal::NoGrant)
    }

    /// Where records of type `ty` this principal may see can be at all: every record of
    /// its own institution and of owners that delegated all their patients to it, and
    /// the patients its grants (and a break-glass declaration) name. A superset of what
    /// [`Policy::basis`] permits, so that a search need not look elsewhere.
    pub fn scope(&self, who: &Principal, ty: &str, ctx: &ReadContext) -> crate::records::Scope {
        let mut scope = crate::records::Scope { owners: vec![who.institution.clone()], patients: Vec::new() };
        if self.may_read_type(who, ty).is_err() {
            return crate::records::Scope::default();
        }
        self.grants.for_each(|g| {
            if g.active_at(ctx.now) && g.names(&who.institution) && g.covers(ty) && kind_fits(g, who, ty) {
                if g.patient.is_empty() {
                    scope.owners.push(g.owner.clone());
                } else {
                    scope.patients.push(g.patient.clone());
                }
            }
        });
        if who.role == Role::Doctor {
            if let Some(g) = &ctx.break_glass {
                scope.patients.extend(g.patients.iter().cloned());
            }
        }
        scope.owners.sort();
        scope.owners.dedup();
        scope.patients.sort();
        scope.patients.dedup();
        scope
    }

    /// The pharmacy rule for a presented prescription: a pharmacy that states the
    /// prescription number and the patient's exact birth date may read that
    /// prescription and the Patient needed to dispense it. Both facts are checked here
    /// against the record (`patient_birth` is the birth date of the record's patient),
    /// not trusted from the search that found it.
    pub fn presented_prescription(
        &self,
        who: &Principal,
        record: &Stored,
        presented: &Presentation,
        patient_birth: Option<&str>,
    ) -> Result<Permit, Refusal> {
        let ty = record.resource.type_name();
        if who.role != Role::Pharmacy {
            return Err(Refusal::TypeNotForRole { role: who.role, resource_type: ty.to_string() });
        }
        let number_matches = match &record.resource {
            // The number printed on the prescription, in its own identifier system, and
            // nothing else: order, RP-group and dispensing numbers are small sequential
            // integers that a sweep would find in every prescription.
            kakehashi_fhir::Resource::MedicationRequest(m) => {
                let system = self.prescription_system(record);
                presented.system.as_deref().is_none_or(|s| s == system)
                    && m.identifier.iter().any(|i| {
                        i.system.as_deref() == Some(system.as_str())
                            && i.value.as_deref() == Some(presented.number.as_str())
                    })
            }
            kakehashi_fhir::Resource::Patient(_) => true,
            _ => return Err(Refusal::TypeNotForRole { role: who.role, resource_type: ty.to_string() }),
        };
        if number_matches && patient_birth == Some(presented.birth_date.as_str()) {
            Ok(Permit { basis: Basis::PresentedPrescription, _sealed: () })
        } else {
            Err(Refusal::NoGrant)
        }
    }

    /// Keep only what the principal may see; refused resources are withheld, not counted.
    pub fn filter<'a>(
        &self,
        who: &Principal,
        records: impl IntoIterator<Item = &'a Arc<Stored>>,
        ctx: &ReadContext,
    ) -> Vec<Permitted> {
        records
            .into_iter()
            .filter_map(|r| self.decide(who, r, ctx).ok().map(|permit| Permitted { permit, record: r.clone() }))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Presentation;

    fn params(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_presentation_is_one_number_and_one_exact_birth_date() {
        let ok =
            Presentation::from_params(&params(&[("identifier", "urn:x|RX-1"), ("patient.birthdate", "1945-11-02")]));
        assert_eq!(
            ok,
            Some(Presentation { system: Some("urn:x".into()), number: "RX-1".into(), birth_date: "1945-11-02".into() })
        );
        let bare = Presentation::from_params(&params(&[("identifier", "RX-1"), ("patient.birthdate", "1945-11-02")]));
        assert_eq!(bare.and_then(|p| p.system), None);
        for bad in [
            vec![("identifier", "RX-1"), ("patient.birthdate", "ge1945-11-02")],
            vec![("identifier", "RX-1"), ("patient.birthdate", "1945")],
            vec![("identifier", "RX-1,RX-2"), ("patient.birthdate", "1945-11-02")],
            vec![("identifier", "RX-1"), ("identifier", "RX-2"), ("patient.birthdate", "1945-11-02")],
            vec![("identifier", "RX-1")],
            vec![("patient.birthdate", "1945-11-02")],
        ] {
            assert_eq!(Presentation::from_params(&params(&bad)), None, "{bad:?}");
        }
    }
}
