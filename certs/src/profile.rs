//! The Kakehashi client-certificate profile.
//!
//! A client certificate names who is calling in three subjectAltName URIs, so that the
//! values are machine-readable and cannot be confused with display names:
//!
//! | SAN URI                                   | meaning                         |
//! |-------------------------------------------|---------------------------------|
//! | `urn:kakehashi:institution:<10 digits>`   | 医療機関コード of the institution |
//! | `urn:kakehashi:role:<role>`               | one of [`Role`]                 |
//! | `urn:kakehashi:terminal:<id>`             | terminal / system id            |
//!
//! The subject's `O` carries the institution's name (UTF-8) and `CN` the terminal id,
//! for humans reading the certificate.

use std::fmt;
use std::str::FromStr;

/// URI prefix carrying the 10-digit institution code.
pub const INSTITUTION_URI: &str = "urn:kakehashi:institution:";
/// URI prefix carrying the role.
pub const ROLE_URI: &str = "urn:kakehashi:role:";
/// URI prefix carrying the terminal id.
pub const TERMINAL_URI: &str = "urn:kakehashi:terminal:";

/// What a certificate holder does in the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A terminal at a rural clinic.
    ClinicTerminal,
    /// A hospital's own system (pushes documents, manages grants).
    HospitalSystem,
    /// A pharmacy giving remote medication guidance.
    Pharmacy,
    /// An auditor reviewing access logs.
    Auditor,
    /// A doctor (may use break-glass).
    Doctor,
}

impl Role {
    /// All roles, in documentation order.
    pub const ALL: [Role; 5] =
        [Role::ClinicTerminal, Role::HospitalSystem, Role::Pharmacy, Role::Auditor, Role::Doctor];

    /// The role's name as written in certificates and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ClinicTerminal => "clinic-terminal",
            Role::HospitalSystem => "hospital-system",
            Role::Pharmacy => "pharmacy",
            Role::Auditor => "auditor",
            Role::Doctor => "doctor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}` (expected one of clinic-terminal, hospital-system, pharmacy, auditor, doctor)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// True when `code` is a 10-digit 医療機関コード (ASCII digits only).
pub fn is_institution_code(code: &str) -> bool {
    code.len() == 10 && code.bytes().all(|b| b.is_ascii_digit())
}

/// True when `id` is a usable terminal id: 1-64 chars of `[A-Za-z0-9._-]`.
pub fn is_terminal_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_reject_unknown() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert_eq!("admin".parse::<Role>(), Err(UnknownRole("admin".into())));
    }

    #[test]
    fn institution_codes_are_ten_ascii_digits() {
        assert!(is_institution_code("0110000001"));
        assert!(!is_institution_code("011000000"));
        assert!(!is_institution_code("０１１０００００01"));
        assert!(!is_institution_code("01100000a1"));
    }

    #[test]
    fn terminal_ids_are_restricted() {
        assert!(is_terminal_id("clinic-a.01"));
        assert!(!is_terminal_id(""));
        assert!(!is_terminal_id("a b"));
        assert!(!is_terminal_id(&"x".repeat(65)));
    }
}
