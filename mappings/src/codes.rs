//! Code-system tables, loaded from `mappings/data/code-systems.tsv`.

use std::collections::HashMap;
use std::sync::OnceLock;

static TABLE: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();

fn table() -> &'static HashMap<&'static str, &'static str> {
    TABLE.get_or_init(|| {
        include_str!("../data/code-systems.tsv")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| l.split_once('\t'))
            .collect()
    })
}

/// The FHIR system URI for an HL7 v2 coding-system id, if Kakehashi knows it.
pub fn system_for(hl7_table: &str) -> Option<&'static str> {
    table().get(hl7_table.trim()).copied()
}

/// System for codes local to a site (`99xxx` tables and unknown ids): a valid URI
/// whatever the table id holds (blanks and other characters a URN may not carry are
/// percent-encoded: `Payor ID` becomes `Payor%20ID`).
pub fn local_system(owner: &str, table: &str) -> String {
    format!("urn:kakehashi:local:{}:{}", uri_part(owner), uri_part(table))
}

/// Percent-encode what RFC 8141 does not allow in a URN's specific string.
fn uri_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.trim().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URI of an HL7 v2 coding system: the table file, `HL7nnnn` tables as FHIR's
/// v2 code systems, `I10` as the Japanese ICD-10 only in Japanese messages.
pub fn system_for_message(table: &str, japanese: bool) -> Option<String> {
    let t = table.trim();
    if matches!(t, "I10" | "ICD10") && !japanese {
        return Some("http://hl7.org/fhir/sid/icd-10".into());
    }
    if let Some(s) = system_for(t) {
        return Some(s.to_string());
    }
    let digits = t.strip_prefix("HL7").or_else(|| t.strip_prefix("hl7"))?;
    (digits.len() == 4 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| format!("http://terminology.hl7.org/CodeSystem/v2-{digits}"))
}

/// JP Core patient id system of an institution.
pub fn patient_id_system(institution: &str) -> String {
    format!("urn:oid:1.2.392.100495.20.3.51.1{institution}")
}

/// 保険者番号 (insurer number).
pub const INSURER_NUMBER: &str = "urn:oid:1.2.392.100495.20.3.61";
/// JP-CLINS insurance member id `保険者番号:記号:番号:枝番`.
pub const INSURANCE_MEMBER_ID: &str = "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";
/// 医療機関コード (10 digits).
pub const INSTITUTION_NUMBER: &str = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";

/// Whether `system` names the 10-digit 医療機関コード: JP Core's system (what Kakehashi
/// writes), the JP-CLINS common one, and the MHLW OIDs (`urn:oid:1.2.392.100495.20.3.2x`).
pub fn is_institution_system(system: &str) -> bool {
    system == INSTITUTION_NUMBER
        || system == "http://jpfhir.jp/fhir/Common/IdSystem/insurance-medical-institution-no"
        || system.starts_with("urn:oid:1.2.392.100495.20.3.2")
}
/// Order number of a prescription (処方箋番号/オーダ番号), value `institution-order`.
pub const ORDER_NUMBER: &str = "urn:oid:1.2.392.100495.20.3.11";
/// RP group number.
pub const RP_NUMBER: &str = "http://jpfhir.jp/fhir/core/mhlw/IdSystem/Medication-RPGroupNumber";
/// MEDIS disease exchange code (4 characters).
pub const MEDIS_EXCHANGE: &str = "http://medis.or.jp/CodeSystem/master-disease-exCode";
/// Kana/kanji name representation extension.
pub const EN_REPRESENTATION: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

/// The name-representation extension JP Core puts on each HumanName: `IDE` kanji,
/// `SYL` kana, `ABC` alphabetic.
pub fn name_representation(code: &str) -> kakehashi_fhir::Extension {
    kakehashi_fhir::Extension { url: EN_REPRESENTATION.into(), value_code: Some(code.into()), ..Default::default() }
}
/// Where the owning institution is carried in `meta.security`.
pub const OWNER_SYSTEM: &str = "urn:kakehashi:owner-institution";

#[cfg(test)]
mod tests {
    #[test]
    fn table_loads() {
        assert_eq!(super::system_for("JC10"), Some("urn:oid:1.2.392.200119.4.504"));
        assert_eq!(super::system_for("HOT9"), Some("urn:oid:1.2.392.200119.4.403.1"));
        assert_eq!(super::system_for("99XYZ"), None);
        assert_eq!(
            super::system_for_message("HL70162", true).as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0162")
        );
        assert_eq!(
            super::system_for_message("HL70443", false).as_deref(),
            Some("http://terminology.hl7.org/CodeSystem/v2-0443")
        );
        assert_eq!(super::system_for_message("I10", false).as_deref(), Some("http://hl7.org/fhir/sid/icd-10"));
        assert_eq!(super::system_for_message("I10", true), super::system_for("I10").map(String::from));
    }

    #[test]
    fn local_systems_are_valid_uris() {
        assert_eq!(super::local_system("4610100011", "Payor ID"), "urn:kakehashi:local:4610100011:Payor%20ID");
        assert_eq!(super::local_system("4610100011", "99XY1"), "urn:kakehashi:local:4610100011:99XY1");
        assert_eq!(super::local_system("4610100011", "a/b#c"), "urn:kakehashi:local:4610100011:a%2Fb%23c");
    }
}
