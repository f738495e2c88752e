//! Policy: who may see which record. The institution that bills for the care owns the
//! record's boundary; a reader from elsewhere crosses it only when the owner's rules
//! allow. The decision is a type: data leaves only inside [`Permitted`], and only this
//! module can make a [`Permit`].

use crate::identity::Principal;
use crate::records::Stored;
use kakehashi_certs::Role;
use std::sync::Arc;

/// Why a read was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// The reader's institution owns the record.
    SameSite,
}

impl Basis {
    /// Short code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            Basis::SameSite => "same-site",
        }
    }
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
pub struct Policy {}

impl Policy {
    /// A policy with the built-in defaults.
    pub fn new() -> Arc<Policy> {
        Arc::new(Policy {})
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

    /// Decide one resource.
    pub fn decide(&self, who: &Principal, record: &Stored) -> Result<Permit, Refusal> {
        self.may_read_type(who, record.resource.type_name())?;
        if record.owner == who.institution {
            return Ok(Permit { basis: Basis::SameSite, _sealed: () });
        }
        Err(Refusal::NoGrant)
    }

    /// Keep only what the principal may see; refused resources are withheld, not counted.
    pub fn filter<'a>(&self, who: &Principal, records: impl IntoIterator<Item = &'a Arc<Stored>>) -> Vec<Permitted> {
        records
            .into_iter()
            .filter_map(|r| self.decide(who, r).ok().map(|permit| Permitted { permit, record: r.clone() }))
            .collect()
    }
}
