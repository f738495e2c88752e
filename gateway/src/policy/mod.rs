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
            g.owner == record.owner
                && g.active_at(ctx.now)
                && g.names(&who.institution)
                && g.covers(ty)
                && (g.patient.is_empty() || g.patient == patient)
                && match g.kind {
                    GrantKind::Consent | GrantKind::Referral => {
                        matches!(who.role, Role::ClinicTerminal | Role::HospitalSystem | Role::Doctor)
                    }
                    GrantKind::Delegation => who.role == Role::Doctor,
                    GrantKind::Pharmacy => who.role == Role::Pharmacy && matches!(ty, "MedicationRequest" | "Patient"),
                }
        };
        if let Some(g) = self.grants.first(applies) {
            return permit(Basis::Grant(g.kind, g.id));
        }
        if who.role == Role::Doctor && ctx.break_glass.as_deref().is_some_and(|r| !r.trim().is_empty()) {
            return permit(Basis::BreakGlass);
        }
        Err(Refusal::NoGrant)
    }

    /// The pharmacy rule for a presented prescription: a pharmacy that states the
    /// prescription number and the patient's birth date may read that prescription and
    /// the Patient needed to dispense it. The caller has matched both already.
    pub fn presented_prescription(&self, who: &Principal, record: &Stored) -> Result<Permit, Refusal> {
        match (who.role, record.resource.type_name()) {
            (Role::Pharmacy, "MedicationRequest" | "Patient") => {
                Ok(Permit { basis: Basis::PresentedPrescription, _sealed: () })
            }
            (role, ty) => Err(Refusal::TypeNotForRole { role, resource_type: ty.to_string() }),
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
