//! Federation PKI for Kakehashi: the federation CA, the gateway's server certificate,
//! institution/terminal client certificates and the CRL, all generated with rcgen.
//!
//! The certificate profile (which fields carry institution, role and terminal) lives in
//! [`profile`] so the issuing side and the gateway's identity step share one definition.

pub mod pki;
pub mod profile;

pub use pki::{CertsError, ClientCertRequest, InitOptions, IssuedCert, Pki};
pub use profile::{Role, UnknownRole};
