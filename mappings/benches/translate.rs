//! Messages translated per second on one core: ISO-2022-JP bytes → decode → parse →
//! map to FHIR → serialise JSON, for ADT^A08 and RDE^O11 as SS-MIX2 stores them.
//! Run: `cargo bench -p kakehashi-mappings --bench translate`.

use kakehashi_adapters::text::Charset;
use kakehashi_adapters::ParseOptions;
use kakehashi_mappings::Context;
use std::time::{Duration, Instant};

const ADT: &str = "MSH|^~\\&|HIS123|SEND|GW|RCV|20111220224447.3399||ADT^A08^ADT_A01|20111220000001|P|2.5||||||~ISO IR87||ISO 2022-1994|SS-MIX2_1.20^SS-MIX2^1.2.392.200250.2.1.100.1.2.120^ISO\rEVN||201112202100|||||SEND001\rPID|0001||9999013||患者^太郎^^^^^L^I~カンジャ^タロウ^^^^^L^P||19480405|M|||^^^^422-8033^JPN^H^静岡県静岡市登呂１−３−５||^PRN^PH^^^^^^^^^054-000-0000~^EMR^PH^^^^^^^^^03-5999-9999|^WPN^PH^^^^^^^^^03-3599-9993|||||||||||||||||||20111219121551\rPV1|0001|I|32^302^1^^^N||||220^医師^一郎^^^^^^^L^^^^^I\rOBX|1|NM|9N001000000000001^身長^JC10||167.8|cm^cm^ISO+|||||F\rOBX|2|NM|9N006000000000001^体重^JC10||63.5|kg^kg^ISO+|||||F\rOBX|3|CWE|5H010000009199911^血液型-ABO式^JC10||A^A^JSHR002||||||F\rAL1|1|DA^薬剤アレルギー^HL70127|1^ペニシリン^99XYZ\rIN1|1|67^国民健康保険退職者^JHSD0001|67999991|||||||黒島|１２３４|20091201|||||SEL^本人^HL70063\r";

const RDE: &str = "MSH|^~\\&|HIS123|SEND|GW|RCV|20110701224603.984||RDE^O11^RDE_O11|20110701000001|P|2.5||||||~ISO IR87||ISO2022-1994|SS-MIX2_1.20^SS-MIX2^1.2.392.200250.2.1.100.1.2.120^ISO\rPID|0001||9999013^^^^PI||患者^太郎^^^^^L^I~カンジャ^タロウ^^^^^L^P||19480405|M|||^^^^422-8033^JPN^H^静岡県静岡市登呂１−３−５||^PRN^PH^^^^^^^^^054-000-0000|^WPN^PH^^^^^^^^^054-999-2455\rPV1|0001|O|01^^^^^C||||110^医師^一郎^^^^^^^L^^^^^I|||01\rORC|NW|000000011000185||1|||||20110701103045|058^入力者^花子^^^^^^^L^^^^^I||110^医師^一郎^^^^^^^L^^^^^I|10^^^^^C||||01^内科^99XY1|VMDOCX01^^99XY2|||登呂病院\rRXE||108665201^ダーゼン錠（５mg)^HOT9|1||TAB^錠^MR9P|||||15|TAB^錠^MR9P||||2011070112345||||3^TAB&錠&MR9P||OHP^外来処方^MR9P~OHI^院内処方^MR9P\rTQ1|1||1013044400000000&内服・経口・１日３回朝昼夕食後&JAMISDP01|||5^d|2011070100\rRXR|PO^口^HL70162\rORC|NW|000000011000185||2|||||20110701103045|058^入力者^花子^^^^^^^L^^^^^I||110^医師^一郎^^^^^^^L^^^^^I|10^^^^^C||||01^内科^99XY1|VMDOCX01^^99XY2|||登呂病院\rRXE||100607002^アレピアチン１０倍散^HOT9|50||MG^ミリグラム^MR9P|PWD^散剤^MR9P||||1400|MG^ミリグラム^MR9P||||2011070112345||||100^MG&ミリグラム&MR9P||OHP^外来処方^MR9P~OHI^院内処方^MR9P\rTQ1|1||1012040400000000&内服・経口・１日２回朝夕食後&JAMISDP01|||14^d|2011070100\rRXR|PO^口^HL70162\r";

fn bench(name: &str, text: &str) {
    let (bytes, _, _) = encoding_rs::ISO_2022_JP.encode(text);
    let ctx = Context {
        owner: "4610100011".into(),
        owner_name: "bench".into(),
        site: "bench".into(),
        source_key: "k".into(),
    };
    let opts = ParseOptions { default_charset: Some(Charset::Iso2022Jp), force_charset: None };
    let run = |n: usize| {
        let mut out = 0usize;
        for _ in 0..n {
            let t = kakehashi_mappings::hl7v2::translate_bytes(&bytes, &opts, &ctx).expect("bench message translates");
            out += serde_json::to_vec(&t.resources).map(|v| v.len()).unwrap_or(0);
        }
        out
    };
    run(2_000); // warm up
    let mut best = 0f64;
    for _ in 0..5 {
        let started = Instant::now();
        let mut n = 0usize;
        while started.elapsed() < Duration::from_millis(600) {
            std::hint::black_box(run(500));
            n += 500;
        }
        best = best.max(n as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "{name}: {best:.0} messages/s on one core (decode ISO-2022-JP + parse + map + JSON), {} bytes/message",
        bytes.len()
    );
}

fn main() {
    bench("ADT^A08 (ADT-00)", ADT);
    bench("RDE^O11 (OMP-01)", RDE);
}
