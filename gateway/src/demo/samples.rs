//! Synthetic sample records for the demo sites. Nothing here describes a real person.
//! The hub's records are HL7 v2.5 in an SS-MIX2 storage tree, encoded ISO-2022-JP as
//! SS-MIX2 prescribes; the clinics' records are MML 4 documents in UTF-8.

use std::path::Path;

/// A synthetic hub patient (borrowed strings, so that generated ones fit too).
pub(crate) struct HubPatient<'a> {
    pub(crate) id: &'a str,
    pub(crate) kanji: (&'a str, &'a str),
    pub(crate) kana: (&'a str, &'a str),
    pub(crate) birth: &'a str,
    pub(crate) sex: &'a str,
    pub(crate) address: &'a str,
    pub(crate) zip: &'a str,
    pub(crate) phone: &'a str,
    pub(crate) insurer: &'a str,
    pub(crate) kigo: &'a str,
    pub(crate) bango: &'a str,
}

const HUB_PATIENTS: [HubPatient<'static>; 3] = [
    HubPatient {
        id: "1000001",
        kanji: ("島田", "花子"),
        kana: ("シマダ", "ハナコ"),
        birth: "19520314",
        sex: "F",
        address: "南海県黒潮村黒島１２３",
        zip: "891-9999",
        phone: "09969-0-0001",
        insurer: "67461001",
        kigo: "黒島",
        bango: "１２３４",
    },
    HubPatient {
        id: "1000002",
        kanji: ("黒木", "一郎"),
        kana: ("クロキ", "イチロウ"),
        birth: "19451102",
        sex: "M",
        address: "南海県青波町山辺４５６",
        zip: "891-9998",
        phone: "09969-0-0002",
        insurer: "39461002",
        kigo: "山辺",
        bango: "５６７",
    },
    HubPatient {
        id: "1000003",
        kanji: ("海野", "ミツ"),
        kana: ("ウミノ", "ミツ"),
        birth: "19380721",
        sex: "F",
        address: "南海県南海市港町７８９",
        zip: "891-9997",
        phone: "09969-0-0003",
        insurer: "67461001",
        kigo: "港",
        bango: "８９",
    },
];

fn msh(kind: &str, ts: &str, ctl: &str) -> String {
    format!("MSH|^~\\&|KKHUB|4610100011|KAKEHASHI|GW|{ts}||{kind}|{ctl}|P|2.5||||||~ISO IR87||ISO 2022-1994|SS-MIX2_1.20^SS-MIX2^1.2.392.200250.2.1.100.1.2.120^ISO")
}

fn pid(p: &HubPatient<'_>) -> String {
    format!(
        "PID|0001||{}^^^^PI||{}^{}^^^^^L^I~{}^{}^^^^^L^P||{}|{}|||^^^^{}^JPN^H^{}||^PRN^PH^^^^^^^^^{}",
        p.id, p.kanji.0, p.kanji.1, p.kana.0, p.kana.1, p.birth, p.sex, p.zip, p.address, p.phone
    )
}

pub(crate) fn adt00(p: &HubPatient<'_>) -> String {
    [
        msh("ADT^A08^ADT_A01", "20260401090000", &format!("ADT{}", p.id)),
        "EVN||202604010900".into(),
        pid(p),
        "PV1|0001|O".into(),
        "OBX|1|NM|9N001000000000001^身長^JC10||152.5|cm^cm^ISO+|||||F".into(),
        "OBX|2|NM|9N006000000000001^体重^JC10||48.2|kg^kg^ISO+|||||F".into(),
        "OBX|3|CWE|5H010000009199911^血液型-ABO式^JC10||O^O^JSHR002||||||F".into(),
        "AL1|1|DA^薬剤アレルギー^HL70127|1^ペニシリン^99XYZ".into(),
        format!(
            "IN1|1|39^後期高齢者医療^JHSD0001|{}|||||||{}|{}|20250401||||SEL^本人^HL70063",
            p.insurer, p.kigo, p.bango
        ),
    ]
    .join("\r")
}

fn omp01(p: &HubPatient<'_>, order: &str) -> String {
    omp01_on(p, order, "20260410")
}

/// An outpatient prescription (RDE^O11, two drugs) of `p` ordered on `date` (YYYYMMDD).
pub(crate) fn omp01_on(p: &HubPatient<'_>, order: &str, date: &str) -> String {
    let orc = format!("ORC|NW|{order}||1|||||{date}103045|||110^医師^一郎^^^^^^^L^^^^^I|10^^^^^C||||01^内科^99XY1||||県立南海島嶼中央病院");
    [
        msh("RDE^O11^RDE_O11", &format!("{date}103100"), &format!("RX{order}")),
        pid(p),
        "PV1|0001|O|01^^^^^C||||110^医師^一郎^^^^^^^L^^^^^I".into(),
        orc.clone(),
        "RXE||103835401^アムロジピン錠５ｍｇ^HOT9|1||TAB^錠^MR9P|||||14|TAB^錠^MR9P||||R2604101||||1^TAB&錠&MR9P||OHP^外来処方^MR9P".into(),
        format!("TQ1|1||1013000400000000&内服・経口・１日１回朝食後&JAMISDP01|||14^d|{date}"),
        "RXR|PO^口^HL70162".into(),
        orc,
        "RXE||111915301^ランソプラゾールＯＤ錠１５ｍｇ^HOT9|1||TAB^錠^MR9P|||||14|TAB^錠^MR9P||||R2604101||||1^TAB&錠&MR9P||OHP^外来処方^MR9P".into(),
        format!("TQ1|1||1013000400000000&内服・経口・１日１回朝食後&JAMISDP01|||14^d|{date}"),
        "RXR|PO^口^HL70162".into(),
    ]
    .join("\r")
}

fn oml11(p: &HubPatient<'_>, order: &str) -> String {
    oml11_on(p, order, "20260410")
}

/// A laboratory result (OUL^R22, three tests) of `p` sampled on `date` (YYYYMMDD).
pub(crate) fn oml11_on(p: &HubPatient<'_>, order: &str, date: &str) -> String {
    [
        msh("OUL^R22^OUL_R22", &format!("{date}150000"), &format!("LB{order}")),
        pid(p),
        "PV1|0001|O|01^^^^^C".into(),
        format!("SPM|1|{order}||023^血清^JC10|||||||||||||{date}1000"),
        format!("OBR|1|{order}|{order}|E001^生化学検査^99O03|||{date}|{date}||||||||110^医師^一郎^^^^^^^^L^^^^^I||||||{date}150000"),
        format!("ORC|SC|{order}|{order}||CM||||{date}150000|||110^医師^一郎^^^^^^^^L^^^^^I|01^^^^^C||||01^内科^99XY1"),
        format!("OBX|1|NM|3D010000001926101^グルコース^JC10||128|mg/dL^mg/dL^ISO+|70-109|H|||F|||{date}1000"),
        format!("OBX|2|NM|3D046000001906202^HbA1c(NGSP)^JC10||6.9|%^%^ISO+|4.6-6.2|H|||F|||{date}1000"),
        format!("OBX|3|NM|3C025000002327201^クレアチニン^JC10||0.82|mg/dL^mg/dL^ISO+|0.46-0.79|H|||F|||{date}1000"),
    ]
    .join("\r")
}

fn ppr01(p: &HubPatient<'_>) -> String {
    [
        msh("PPR^ZD1^PPR_ZD1", "20260410110000", &format!("PB{}", p.id)),
        pid(p),
        "PRB|AD|20260410|20059554^高血圧症^MDCDX2|000000000000001|||20200115|||I10^^I10||||||20200115|高血圧症|1^主診断^JHSD0007".into(),
        "ORC|NW|000000000000001||||||||||110^医師^一郎^^^^^^^L^^^^^I|||||01^内科^99XY1".into(),
    ]
    .join("\r")
}

/// Where SS-MIX2 stores a message: `root/pid[0..3]/pid[3..6]/pid/date/kind/name`.
pub(crate) fn ss_mix2_path(
    root: &Path,
    pid: &str,
    date: &str,
    kind: &str,
    order: &str,
    ts: &str,
    dept: &str,
) -> std::path::PathBuf {
    kakehashi_adapters::ss_mix2::Storage::new(root).version_path([pid, date, kind, order, ts, dept], true)
}

pub(crate) fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn iso2022jp(text: &str) -> Result<Vec<u8>, String> {
    let (bytes, _, unmappable) = encoding_rs::ISO_2022_JP.encode(text);
    if unmappable {
        return Err("a sample message has characters outside JIS X 0208".into());
    }
    Ok(bytes.into_owned())
}

fn mml_patient(
    id: &str,
    facility: (&str, &str),
    kanji: (&str, &str),
    kana: (&str, &str),
    birth: &str,
    sex: &str,
    uid: &str,
) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Mml version="4.0" createDate="2026-04-01T09:00:00"
  xmlns="http://www.medxml.net/MML/v4/base/1.0"
  xmlns:mmlCm="http://www.medxml.net/MML/v4/SharedComponent/Common/1.0"
  xmlns:mmlNm="http://www.medxml.net/MML/v4/SharedComponent/Name/1.0"
  xmlns:mmlFc="http://www.medxml.net/MML/v4/SharedComponent/Facility/1.0"
  xmlns:mmlPi="http://www.medxml.net/MML/v4/ContentModule/PatientInfo/1.0">
  <MmlHeader>
    <mmlCi:CreatorInfo xmlns:mmlCi="http://www.medxml.net/MML/v4/SharedComponent/CreatorInfo/1.0">
      <mmlPsi:PersonalizedInfo xmlns:mmlPsi="http://www.medxml.net/MML/v4/SharedComponent/PersonalizedInfo/1.0">
        <mmlCm:Id mmlCm:type="facility" mmlCm:tableId="MML0024">doc-01</mmlCm:Id>
        <mmlPsi:personName><mmlNm:Name mmlNm:repCode="I" mmlNm:tableId="MML0025"><mmlNm:fullname>診療所 医師</mmlNm:fullname></mmlNm:Name></mmlPsi:personName>
        <mmlFc:Facility><mmlFc:name mmlFc:repCode="I" mmlFc:tableId="MML0025">{fname}</mmlFc:name><mmlCm:Id mmlCm:type="insurance" mmlCm:tableId="MML0027">{fcode}</mmlCm:Id></mmlFc:Facility>
      </mmlPsi:PersonalizedInfo>
    </mmlCi:CreatorInfo>
    <masterId><mmlCm:Id mmlCm:type="facility" mmlCm:tableId="MML0024">{id}</mmlCm:Id></masterId>
    <toc><tocItem>http://www.medxml.net/MML/v4/ContentModule/PatientInfo/1.0</tocItem></toc>
  </MmlHeader>
  <MmlBody>
    <MmlModuleItem>
      <docInfo contentModuleType="patientInfo">
        <securityLevel><accessRight permit="all"><mmlSc:facility xmlns:mmlSc="http://www.medxml.net/MML/v4/SharedComponent/Security/1.0"><mmlSc:facilityName mmlSc:facilityCode="individual" mmlSc:tableId="MML0035">{fname}</mmlSc:facilityName></mmlSc:facility></accessRight></securityLevel>
        <title generationPurpose="patientInfo">患者情報</title>
        <docId><uid>{uid}</uid></docId>
        <confirmDate>2026-04-01T09:00:00</confirmDate>
        <mmlCi:CreatorInfo xmlns:mmlCi="http://www.medxml.net/MML/v4/SharedComponent/CreatorInfo/1.0">
          <mmlPsi:PersonalizedInfo xmlns:mmlPsi="http://www.medxml.net/MML/v4/SharedComponent/PersonalizedInfo/1.0">
            <mmlCm:Id mmlCm:type="facility" mmlCm:tableId="MML0024">doc-01</mmlCm:Id>
            <mmlFc:Facility><mmlFc:name mmlFc:repCode="I" mmlFc:tableId="MML0025">{fname}</mmlFc:name><mmlCm:Id mmlCm:type="insurance" mmlCm:tableId="MML0027">{fcode}</mmlCm:Id></mmlFc:Facility>
          </mmlPsi:PersonalizedInfo>
        </mmlCi:CreatorInfo>
      </docInfo>
      <content>
        <mmlPi:PatientModule>
          <mmlPi:uniqueInfo><mmlPi:masterId><mmlCm:Id mmlCm:type="facility" mmlCm:tableId="MML0024">{id}</mmlCm:Id></mmlPi:masterId></mmlPi:uniqueInfo>
          <mmlPi:personName>
            <mmlNm:Name mmlNm:repCode="I" mmlNm:tableId="MML0025"><mmlNm:family>{kf}</mmlNm:family><mmlNm:given>{kg}</mmlNm:given></mmlNm:Name>
            <mmlNm:Name mmlNm:repCode="P" mmlNm:tableId="MML0025"><mmlNm:family>{pf}</mmlNm:family><mmlNm:given>{pg}</mmlNm:given></mmlNm:Name>
          </mmlPi:personName>
          <mmlPi:birthday>{birth}</mmlPi:birthday>
          <mmlPi:sex>{sex}</mmlPi:sex>
        </mmlPi:PatientModule>
      </content>
    </MmlModuleItem>
  </MmlBody>
</Mml>
"#,
        fname = facility.1,
        fcode = facility.0,
        kf = kanji.0,
        kg = kanji.1,
        pf = kana.0,
        pg = kana.1,
    )
}

/// Add `orders` more prescriptions (two drugs each) for a hub patient, for benchmarks
/// that need a patient with many records.
pub fn write_bulk_prescriptions(dir: &Path, patient_index: usize, orders: usize) -> Result<(), String> {
    let root = dir.join("sites/hub/ss-mix2");
    let p = HUB_PATIENTS.get(patient_index).ok_or("no such sample patient")?;
    for n in 0..orders {
        let order = format!("{:015}", 500_000 + n);
        let date = format!("2026{:02}{:02}", 1 + (n / 28) % 12, 1 + n % 28);
        let path = ss_mix2_path(&root, p.id, &date, "OMP-01", &order, &format!("{date}103100000"), "01");
        write_bytes(&path, &iso2022jp(&omp01(p, &order))?)?;
    }
    Ok(())
}

/// A year of records of one person at two sites, for the `$everything` benchmark: at
/// the hub, hub patient 1000001 (島田 花子) gets a weekly prescription and a monthly lab
/// result; at clinic A, the same person (its patient A-0101) gets a monthly JAHIS
/// prescription in `sites/clinic-a/rx`, naming the insurance card the hub's record names.
pub fn write_year_of_records(dir: &Path) -> Result<(), String> {
    let root = dir.join("sites/hub/ss-mix2");
    let p = &HUB_PATIENTS[0];
    for week in 0..52 {
        let (month, day) = (1 + week / 5 % 12, 1 + week % 5 * 5);
        let date = format!("2025{month:02}{day:02}");
        let order = format!("{:015}", 600_000 + week);
        let path = ss_mix2_path(&root, p.id, &date, "OMP-01", &order, &format!("{date}103100000"), "01");
        write_bytes(&path, &iso2022jp(&omp01(p, &order))?)?;
        if week % 52 < 12 {
            let order = format!("{:015}", 700_000 + week);
            let date = format!("2025{:02}15", week + 1);
            let path = ss_mix2_path(&root, p.id, &date, "OML-11", &order, &format!("{date}150000000"), "01");
            write_bytes(&path, &iso2022jp(&oml11(p, &order))?)?;
        }
    }
    for month in 1..=12 {
        let rx = format!(
            "JAHIS7\r\n1,1,0200021,46,{}\r\n5,D01,ｸﾛｼﾏ ﾀﾛｳ,黒島　太郎\r\n11,A-0101,島田　花子,ｼﾏﾀﾞ ﾊﾅｺ\r\n12,2\r\n13,19520314\r\n21,7\r\n22,67461001\r\n23,黒島,１２３４,1\r\n51,2025{month:02}20\r\n82,1,RX-KUROSHIMA-2025{month:02}\r\n101,1,1,,28\r\n111,1,1,1013044400000000,1日3回 朝昼夕食後,3\r\n201,1,1,1,7,2171014F1ZZZ,【般】アムロジピン錠５ｍｇ,1,1,錠\r\n",
            super::CLINIC_A.name
        );
        let (bytes, _, unmappable) = encoding_rs::SHIFT_JIS.encode(&rx);
        if unmappable {
            return Err("a sample prescription has characters outside Shift_JIS".into());
        }
        write_bytes(&dir.join(format!("sites/clinic-a/rx/RX-KUROSHIMA-2025{month:02}.csv")), &bytes)?;
    }
    Ok(())
}

/// The demo's discharge summary grown to about `bytes` by a longer clinical course
/// narrative (section 330), for the push benchmark.
pub fn large_discharge_summary(bytes: usize) -> Result<String, String> {
    let mut doc: serde_json::Value = serde_json::from_str(DISCHARGE_SUMMARY).map_err(|e| e.to_string())?;
    let sections = doc["entry"][0]["resource"]["section"].as_array_mut().ok_or("the sample has no sections")?;
    let course = sections
        .iter_mut()
        .find(|s| s["code"]["coding"][0]["code"] == "330")
        .ok_or("the sample has no clinical course section")?;
    let line = "<p>第N病日: 血圧 128/76 mmHg、脈拍 72/分、体温 36.6℃。食事摂取良好、歩行器で病棟内自立。内服継続、副作用なし。</p>";
    let mut div = String::from("<div xmlns=\"http://www.w3.org/1999/xhtml\">");
    let mut day = 1;
    while DISCHARGE_SUMMARY.len() + div.len() < bytes {
        div.push_str(&line.replace('N', &day.to_string()));
        day += 1;
    }
    div.push_str("</div>");
    course["text"] = serde_json::json!({ "status": "generated", "div": div });
    serde_json::to_string(&doc).map_err(|e| e.to_string())
}

/// A JAHIS prescription of clinic B for its patient 黒木 一郎 (prescription RX-YAMABE-0001).
const CLINIC_B_RX: &str = "JAHIS7\r\n1,1,0200032,46,青波町立山辺診療所\r\n5,D01,ﾔﾏﾍﾞ ｼﾞﾛｳ,山辺　次郎\r\n11,B-0201,黒木　一郎,ｸﾛｷ ｲﾁﾛｳ\r\n12,1\r\n13,19451102\r\n21,7\r\n22,39461002\r\n23,山辺,５６７,1\r\n51,20260415\r\n82,1,RX-YAMABE-0001\r\n101,1,1,,14\r\n111,1,1,1013044400000000,1日3回 朝昼夕食後,3\r\n201,1,1,1,7,1149019F1ZZZ,【般】ロキソプロフェンＮａ錠６０ｍｇ,3,1,錠\r\n281,1,1,1,3,後発品変更不可\r\n";

/// A JP-CLINS discharge summary from the hub to clinic A for hub patient 1000001, for
/// the push step of the tour (the same document the mapping tests round-trip).
const DISCHARGE_SUMMARY: &str = include_str!("../../../mappings/tests/fixtures/discharge-summary.json");

/// Write the demo's sample sites below `dir/sites` and documents to push below `dir/samples`.
pub fn write_sites(dir: &Path) -> Result<(), String> {
    write_bytes(&dir.join("samples/discharge-summary.json"), DISCHARGE_SUMMARY.as_bytes())?;
    let root = dir.join("sites/hub/ss-mix2");
    for (n, p) in HUB_PATIENTS.iter().enumerate() {
        let order = format!("{:015}", 1000 + n);
        let files = [
            (ss_mix2_path(&root, p.id, "-", "ADT-00", "999999999999999", "20260401090000000", "-"), adt00(p)),
            (ss_mix2_path(&root, p.id, "20260410", "OMP-01", &order, "20260410103100000", "01"), omp01(p, &order)),
            (ss_mix2_path(&root, p.id, "20260410", "OML-11", &order, "20260410150000000", "01"), oml11(p, &order)),
            (ss_mix2_path(&root, p.id, "-", "PPR-01", "999999999999999", "20260410110000000", "01"), ppr01(p)),
        ];
        for (path, msg) in files {
            write_bytes(&path, &iso2022jp(&msg)?)?;
        }
    }
    let (rx, _, unmappable) = encoding_rs::SHIFT_JIS.encode(CLINIC_B_RX);
    if unmappable {
        return Err("the sample prescription has characters outside Shift_JIS".into());
    }
    write_bytes(&dir.join("sites/clinic-b/rx/RX-YAMABE-0001.csv"), &rx)?;
    let a = (super::CLINIC_A.code, super::CLINIC_A.name);
    let b = (super::CLINIC_B.code, super::CLINIC_B.name);
    for (site, id, fac, kanji, kana, birth, sex) in [
        ("clinic-a", "A-0101", a, ("島田", "花子"), ("シマダ", "ハナコ"), "1952-03-14", "female"),
        ("clinic-a", "A-0102", a, ("港", "健太"), ("ミナト", "ケンタ"), "1980-05-30", "male"),
        ("clinic-b", "B-0201", b, ("黒木", "一郎"), ("クロキ", "イチロウ"), "1945-11-02", "male"),
    ] {
        let uid = format!("{site}-{id}-pi");
        let path = dir.join("sites").join(site).join("mml").join(format!("{id}-patient.xml"));
        write_bytes(&path, mml_patient(id, fac, kanji, kana, birth, sex, &uid).as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_messages_encode_to_iso_2022_jp_and_back() {
        for p in &HUB_PATIENTS {
            for msg in [adt00(p), omp01(p, "000000000001000"), oml11(p, "000000000001000"), ppr01(p)] {
                let bytes = iso2022jp(&msg).unwrap();
                assert!(bytes.is_ascii(), "ISO-2022-JP is 7-bit");
                let (back, had_errors) = encoding_rs::ISO_2022_JP.decode_without_bom_handling(&bytes);
                assert!(!had_errors);
                assert_eq!(back, msg);
            }
        }
    }
}
