//! Policy: who may see which record. The institution that bills for the care owns the
//! record's boundary; a reader from elsewhere crosses it only when the owner's rules
//! allow. The decision is a type: data leaves only inside [`Permitted`], and only this
//! module can make a [`Permit`].

pub mod grants;

use crate::identity::Principal;
use crate::records::Stored;
use grants::{Grant, GrantKind, Grants};
use kakehashi_certs::Role;
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
    /// The prescription number, as printed.
    pub number: String,
    /// The patient's birth date.
    pub birth_date: String,
}

impl Presentation {
    /// From a search's parameters: exactly one `identifier` value (an optional
    /// `system|` is ignored) and exactly one `patient.birthdate` that is a plain date.
    pub fn from_params(params: &[(String, String)]) -> Option<Presentation> {
        let only = |name: &str| {
            let mut it = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let first = it.next()?;
            it.next().is_none().then_some(first)
        };
        let identifier = only("identifier")?;
        let number = identifier.rsplit_once('|').map_or(identifier, |(_, v)| v);
        let birth = only("patient.birthdate")?;
        let is_date = birth.len() == 10
            && birth.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() });
        (is_date && !number.is_empty() && !number.contains(','))
            .then(|| Presentation { number: number.to_string(), birth_date: birth.to_string() })
    }
}

/// What the decision depends on besides who and what.
#[derive(Debug, Clone, Default)]
pub struct ReadContext {
    /// Now, Unix seconds.
    pub now: i64,
    /// The break-glass reason stated with the request, if any.
    pub break_glass: Option<String>,
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

/// The policy decision point.
#[derive(Debug, Default)]
pub struct Policy {
    /// The owners' grants.
    pub grants: Grants,
}

impl Policy {
    /// A policy with no grants loaded yet.
    pub fn new() -> Arc<Policy> {
        Arc::new(Policy::default())
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
        let ty = record.resource.type_name();
        self.may_read_type(who, ty)?;
        let permit = |basis| Ok(Permit { basis, _sealed: () });
        if record.owner == who.institution {
            return permit(Basis::SameSite);
        }
        let patient = record.patient.as_deref().unwrap_or("");
        let applies = |g: &Grant| {
            g.active_at(ctx.now)
                && g.names(&who.institution)
                && g.covers(ty)
                && match g.kind {
                    GrantKind::Consent | GrantKind::Referral => {
                        matches!(who.role, Role::ClinicTerminal | Role::HospitalSystem | Role::Doctor)
                    }
                    GrantKind::Delegation => who.role == Role::Doctor,
                    GrantKind::Pharmacy => who.role == Role::Pharmacy && matches!(ty, "MedicationRequest" | "Patient"),
                }
        };
        if let Some((kind, id)) = self.grants.first_of(&record.owner, patient, applies) {
            return permit(Basis::Grant(kind, id));
        }
        if who.role == Role::Doctor && ctx.break_glass.as_deref().is_some_and(|r| !r.trim().is_empty()) {
            return permit(Basis::BreakGlass);
        }
        Err(Refusal::NoGrant)
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
            kakehashi_fhir::Resource::MedicationRequest(m) => {
                m.identifier.iter().any(|i| i.value.as_deref() == Some(presented.number.as_str()))
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
        assert_eq!(ok, Some(Presentation { number: "RX-1".into(), birth_date: "1945-11-02".into() }));
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
