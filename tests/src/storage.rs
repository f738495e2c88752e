//! Messages written into a test hub's SS-MIX2 storage as the hospital's system would:
//! ISO-2022-JP, the standard directory layout and versioned file names.

use std::path::{Path, PathBuf};

/// The path of an SS-MIX2 message under storage `root` (dept 01; flag 1 valid, 0 deleted).
pub fn path(root: &Path, pid: &str, date: &str, kind: &str, order: &str, ts: &str, valid: bool) -> PathBuf {
    let dept = if date == "-" { "-" } else { "01" };
    kakehashi_adapters::ss_mix2::Storage::new(root).version_path([pid, date, kind, order, ts, dept], valid)
}

/// Write `msg` (segments joined by CR) as ISO-2022-JP, as SS-MIX2 stores it.
pub fn write(path: &Path, msg: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let (bytes, _, unmappable) = encoding_rs::ISO_2022_JP.encode(msg);
    assert!(!unmappable);
    std::fs::write(path, &bytes).unwrap();
}

/// An outpatient prescription (RDE^O11) of one drug for hub patient `pid`.
pub fn prescription(pid: &str, order: &str, drug: (&str, &str)) -> String {
    [
        format!("MSH|^~\\&|KKHUB|4610100011|KAKEHASHI|GW|20260420103100||RDE^O11^RDE_O11|RX{order}|P|2.5||||||~ISO IR87||ISO 2022-1994"),
        format!("PID|0001||{pid}^^^^PI||島田^花子^^^^^L^I||19520314|F"),
        "PV1|0001|O|01^^^^^C".into(),
        format!("ORC|NW|{order}||1|||||20260420103045"),
        format!("RXE||{}^{}^HOT9|1||TAB^錠^MR9P|||||14|TAB^錠^MR9P", drug.0, drug.1),
        "TQ1|1||1013000400000000&内服・経口・１日１回朝食後&JAMISDP01|||14^d|20260420".into(),
        "RXR|PO^口^HL70162".into(),
    ]
    .join("\r")
}

/// Patient demographics (ADT^A08) of a new hub patient.
pub fn admission(pid: &str, kanji: (&str, &str), kana: (&str, &str), birth: &str, sex: &str) -> String {
    [
        format!("MSH|^~\\&|KKHUB|4610100011|KAKEHASHI|GW|20260501090000||ADT^A08^ADT_A01|ADT{pid}|P|2.5||||||~ISO IR87||ISO 2022-1994"),
        "EVN||202605010900".into(),
        format!("PID|0001||{pid}^^^^PI||{}^{}^^^^^L^I~{}^{}^^^^^L^P||{birth}|{sex}", kanji.0, kanji.1, kana.0, kana.1),
        "PV1|0001|O".into(),
    ]
    .join("\r")
}
