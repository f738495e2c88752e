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

/// System for codes local to a site (`99xxx` tables and unknown ids).
pub fn local_system(owner: &str, table: &str) -> String {
    format!("urn:kakehashi:local:{owner}:{table}")
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
    }
}
