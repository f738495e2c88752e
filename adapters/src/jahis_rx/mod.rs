//! JAHIS 院外処方箋2次元シンボル CSV (versions JAHIS5 to JAHIS9): one record per line
//! (CRLF or LF), the record number first, fields separated by commas, Shift_JIS or
//! UTF-8. Parsed into a typed prescription; record numbers Kakehashi does not know are
//! kept as warnings, wrong field counts and missing required records are located errors.

use crate::text::{self, Charset};
use crate::{Location, ParseOptions, SourceError, SourceFormat};

/// Most lines accepted (a 2D symbol holds a few hundred).
pub const MAX_LINES: usize = 10_000;

/// Record 1-5: the issuing institution and doctor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Institution {
    /// 点数表 (1 医科, 3 歯科).
    pub table: String,
    /// 7-digit code.
    pub code: String,
    /// Prefecture number (2 digits).
    pub prefecture: String,
    /// Name.
    pub name: String,
    /// Postal code (record 2).
    pub zip: Option<String>,
    /// Address (record 2).
    pub address: Option<String>,
    /// Phone (record 3).
    pub phone: Option<String>,
    /// Fax (record 3).
    pub fax: Option<String>,
    /// Department name (record 4).
    pub department: Option<String>,
    /// Department code kind (1: the MHLW table 診療科コード) and code (record 4).
    pub department_code: Option<(String, String)>,
}

impl Institution {
    /// The 10-digit 医療機関コード: prefecture + 点数表 + code.
    pub fn code10(&self) -> String {
        format!("{}{}{}", self.prefecture, self.table, self.code)
    }
}

/// Record 5.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Doctor {
    /// Code.
    pub code: Option<String>,
    /// Kana name.
    pub kana: Option<String>,
    /// Kanji name.
    pub kanji: String,
}

/// Records 11-14.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patient {
    /// Patient code at the institution.
    pub code: Option<String>,
    /// Kanji name.
    pub kanji: String,
    /// Kana name.
    pub kana: Option<String>,
    /// 1 male, 2 female.
    pub sex: Option<String>,
    /// YYYYMMDD.
    pub birth: Option<String>,
    /// 一部負担区分 (record 14).
    pub burden: Option<String>,
}

/// Records 21-25.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Insurance {
    /// 保険種別 (1 医保, 2 国保, 7 後期高齢者 ...).
    pub kind: Option<String>,
    /// 保険者番号.
    pub insurer: Option<String>,
    /// 記号.
    pub symbol: Option<String>,
    /// 番号.
    pub number: Option<String>,
    /// 1 被保険者, 2 被扶養者.
    pub insured_class: Option<String>,
    /// 枝番 (JAHIS7+).
    pub branch: Option<String>,
    /// 患者負担率 (record 24).
    pub patient_rate: Option<String>,
}

/// Records 27-30: public funding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicFunding {
    /// 27 第一, 28 第二, 29 第三, 30 特殊.
    pub record: u32,
    /// 公費負担者番号.
    pub payer: String,
    /// 公費受給者番号.
    pub recipient: Option<String>,
}

/// Record 111: usage of an RP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// 用法コード種別.
    pub code_type: Option<String>,
    /// 用法コード.
    pub code: Option<String>,
    /// 用法名称.
    pub name: String,
    /// 1日回数.
    pub times_per_day: Option<String>,
}

/// Record 201 and its dependants (211, 221, 231, 241, 281).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drug {
    /// RP内連番.
    pub seq: String,
    /// 情報区分 (1 医薬品, 2 医療材料).
    pub info_class: Option<String>,
    /// 薬品コード種別 (2 レセ電, 3 厚労省, 4 YJ, 6 HOT, 7 一般名 ...).
    pub code_type: Option<String>,
    /// 薬品コード.
    pub code: Option<String>,
    /// 薬品名称.
    pub name: String,
    /// 分量.
    pub amount: String,
    /// 力価フラグ.
    pub potency: Option<String>,
    /// 単位名.
    pub unit: Option<String>,
    /// 単位変換係数 (211).
    pub conversion: Option<String>,
    /// 不均等 doses (221).
    pub uneven: Vec<String>,
    /// 1回服用量, 1日服用回数 (241).
    pub single_dose: Option<(String, Option<String>)>,
    /// 薬品補足 (281): (区分, 情報).
    pub notes: Vec<(Option<String>, String)>,
    /// Line of the 201 record.
    pub line: usize,
}

/// Records 101-181: one RP (剤).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rp {
    /// RP番号.
    pub no: String,
    /// 剤形区分 (1 内服, 2 頓服, 3 外用, 4 内服滴剤, 5 注射, 6 医療材料, 9 不明).
    pub form: String,
    /// 剤形名称.
    pub form_name: Option<String>,
    /// 調剤数量 (days for 内服, times for 頓服 ...).
    pub quantity: String,
    /// Usage.
    pub usage: Option<Usage>,
    /// 用法補足 (181): (区分, 情報).
    pub usage_notes: Vec<(Option<String>, String)>,
    /// Drugs.
    pub drugs: Vec<Drug>,
}

/// A parsed JAHIS prescription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prescription {
    /// 5 to 9.
    pub version: u32,
    /// Issuer.
    pub institution: Institution,
    /// Doctor.
    pub doctor: Option<Doctor>,
    /// Patient.
    pub patient: Patient,
    /// Insurance.
    pub insurance: Insurance,
    /// Public funding.
    pub public: Vec<PublicFunding>,
    /// 交付年月日 (51).
    pub issued: String,
    /// 使用期限 (52).
    pub expires: Option<String>,
    /// 麻薬施用者免許番号 (60/61).
    pub narcotic_license: Option<String>,
    /// 備考 (81).
    pub remarks: Vec<String>,
    /// 処方箋番号 / 引換番号 (82).
    pub number: Option<String>,
    /// RPs.
    pub rps: Vec<Rp>,
    /// Records not modelled: (line, record number).
    pub unknown_records: Vec<(usize, String)>,
}

/// The JAHIS prescription CSV format.
pub struct JahisRx;

impl SourceFormat for JahisRx {
    type Model = Prescription;
    const NAME: &'static str = "jahis-rx";
    fn parse(bytes: &[u8], options: &ParseOptions) -> Result<Prescription, SourceError> {
        parse(bytes, options)
    }
}

fn err(line: usize, record: Option<&str>, field: Option<usize>, msg: impl Into<String>) -> SourceError {
    SourceError::at(
        Location { line: Some(line), segment_id: record.map(|r| format!("record {r}")), field, ..Default::default() },
        msg,
    )
}

fn opt(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Decode (UTF-8 when valid, else Shift_JIS, unless configured) and parse.
pub fn parse(bytes: &[u8], options: &ParseOptions) -> Result<Prescription, SourceError> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let decoded = match options.force_charset {
        Some(cs) => text::decode(bytes, cs),
        None => match text::decode(bytes, Charset::Utf8) {
            Ok(s) => Ok(s),
            Err(_) => text::decode(bytes, options.default_charset.unwrap_or(Charset::ShiftJis)),
        },
    };
    let text = decoded.map_err(|e| {
        err(
            e.prefix.matches('\n').count() + 1,
            None,
            None,
            format!("bytes at offset {} are neither UTF-8 nor {}", e.offset, e.charset),
        )
    })?;
    parse_str(&text)
}

/// Minimum fields (after the record number) per known record.
fn min_fields(record: &str) -> Option<usize> {
    Some(match record {
        "1" => 4,
        "2" | "3" | "4" | "5" => 2,
        "11" => 2,
        "12" | "13" | "14" | "21" | "22" | "25" | "31" | "51" | "52" | "62" => 1,
        "23" => 3,
        "24" => 1,
        "27" | "28" | "29" | "30" => 1,
        "60" | "61" => 1,
        "81" => 3,
        "82" => 2,
        "101" => 4,
        "111" => 4,
        "181" => 4,
        "201" => 9,
        "211" => 3,
        "221" => 4,
        "231" => 2,
        "241" => 3,
        "281" => 5,
        "301" | "302" => 2,
        _ => return None,
    })
}

/// Parse decoded CSV text.
pub fn parse_str(text: &str) -> Result<Prescription, SourceError> {
    let mut lines = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty());
    let (first_line, header) =
        lines.next().ok_or_else(|| err(1, None, None, "empty input: the first record must be JAHIS5 to JAHIS9"))?;
    let version = header
        .trim()
        .strip_prefix("JAHIS")
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|v| (5..=9).contains(v))
        .ok_or_else(|| {
            err(
                first_line,
                None,
                None,
                format!("`{}` is not a version record (JAHIS5 to JAHIS9)", header.chars().take(20).collect::<String>()),
            )
        })?;
    let mut p = Prescription { version, ..Default::default() };
    let mut seen = std::collections::HashSet::new();
    for (n, line) in lines {
        if n > MAX_LINES {
            return Err(err(n, None, None, format!("more than {MAX_LINES} records")));
        }
        let f: Vec<&str> = line.split(',').collect();
        let rec = f[0].trim();
        if rec.is_empty() || !rec.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(
                n,
                None,
                Some(1),
                format!("`{}` is not a record number", rec.chars().take(10).collect::<String>()),
            ));
        }
        let Some(min) = min_fields(rec) else {
            p.unknown_records.push((n, rec.to_string()));
            continue;
        };
        if f.len() - 1 < min {
            return Err(err(
                n,
                Some(rec),
                None,
                format!("record {rec} needs at least {min} fields, found {}", f.len() - 1),
            ));
        }
        seen.insert(rec.to_string());
        let g = |i: usize| f.get(i).copied().unwrap_or("").trim();
        let rp_of = |p: &mut Prescription, no: &str, field: usize| -> Result<usize, SourceError> {
            p.rps
                .iter()
                .position(|r| r.no == no)
                .ok_or_else(|| err(n, Some(rec), Some(field), format!("RP {no} has no preceding 101 record")))
        };
        let drug_of = |p: &mut Prescription, rp: usize, seq: &str| -> Result<usize, SourceError> {
            p.rps[rp].drugs.iter().position(|d| d.seq == seq).ok_or_else(|| {
                err(n, Some(rec), Some(3), format!("RP {} drug {seq} has no preceding 201 record", p.rps[rp].no))
            })
        };
        match rec {
            "1" => {
                p.institution.table = g(1).into();
                p.institution.code = g(2).into();
                p.institution.prefecture = g(3).into();
                p.institution.name = g(4).into();
                let code = p.institution.code10();
                if code.len() != 10 || !code.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(n, Some(rec), Some(2), format!("institution code `{}` with prefecture `{}` and table `{}` is not a 10-digit 医療機関コード", g(2), g(3), g(1))));
                }
            }
            "2" => {
                p.institution.zip = opt(g(1));
                p.institution.address = opt(g(2));
            }
            "3" => {
                p.institution.phone = opt(g(1));
                p.institution.fax = opt(g(2));
            }
            "4" => {
                // 4,診療科コード種別,診療科コード,診療科名称
                p.institution.department = opt(g(3)).or_else(|| opt(g(2)));
                p.institution.department_code = opt(g(2)).map(|code| (g(1).to_string(), code));
            }
            "5" => p.doctor = Some(Doctor { code: opt(g(1)), kana: opt(g(2)), kanji: g(3).into() }),
            "11" => {
                p.patient.code = opt(g(1));
                p.patient.kanji = g(2).into();
                p.patient.kana = opt(g(3));
            }
            "12" => p.patient.sex = opt(g(1)),
            "13" => {
                let b = g(1);
                if b.len() != 8 || !b.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(err(n, Some(rec), Some(2), format!("birth date `{b}` is not YYYYMMDD")));
                }
                p.patient.birth = Some(b.into());
            }
            "14" => p.patient.burden = opt(g(1)),
            "21" => p.insurance.kind = opt(g(1)),
            "22" => p.insurance.insurer = opt(g(1)),
            "23" => {
                p.insurance.symbol = opt(g(1));
                p.insurance.number = opt(g(2));
                p.insurance.insured_class = opt(g(3));
                p.insurance.branch = opt(g(4));
            }
            "24" => p.insurance.patient_rate = opt(g(1)),
            "27" | "28" | "29" | "30" => p.public.push(PublicFunding {
                record: rec.parse().unwrap_or(27),
                payer: g(1).into(),
                recipient: opt(g(2)),
            }),
            "51" => p.issued = g(1).into(),
            "52" => p.expires = opt(g(1)),
            "60" | "61" => p.narcotic_license = opt(g(1)),
            "81" => p.remarks.push(g(3).into()),
            "82" => p.number = opt(g(2)),
            "101" => p.rps.push(Rp {
                no: g(1).into(),
                form: g(2).into(),
                form_name: opt(g(3)),
                quantity: g(4).into(),
                ..Default::default()
            }),
            "111" => {
                let i = rp_of(&mut p, g(1), 2)?;
                p.rps[i].usage =
                    Some(Usage { code_type: opt(g(2)), code: opt(g(3)), name: g(4).into(), times_per_day: opt(g(5)) });
            }
            "181" => {
                let i = rp_of(&mut p, g(1), 2)?;
                p.rps[i].usage_notes.push((opt(g(3)), g(4).into()));
            }
            "201" => {
                let i = rp_of(&mut p, g(1), 2)?;
                if g(7).is_empty() {
                    return Err(err(n, Some(rec), Some(8), "drug amount (分量) is empty"));
                }
                p.rps[i].drugs.push(Drug {
                    seq: g(2).into(),
                    info_class: opt(g(3)),
                    code_type: opt(g(4)),
                    code: opt(g(5)),
                    name: g(6).into(),
                    amount: g(7).into(),
                    potency: opt(g(8)),
                    unit: opt(g(9)),
                    line: n,
                    ..Default::default()
                });
            }
            "211" | "221" | "231" | "241" | "281" => {
                let i = rp_of(&mut p, g(1), 2)?;
                let d = drug_of(&mut p, i, g(2))?;
                let drug = &mut p.rps[i].drugs[d];
                match rec {
                    "211" => drug.conversion = opt(g(3)),
                    "221" => {
                        drug.uneven = f[3..].iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
                    }
                    "241" => drug.single_dose = Some((g(3).into(), opt(g(4)))),
                    "281" => drug.notes.push((opt(g(4)), g(5).into())),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for (rec, what) in
        [("1", "the institution (record 1)"), ("11", "the patient (record 11)"), ("51", "the issue date (record 51)")]
    {
        if !seen.contains(rec) {
            return Err(err(first_line, None, None, format!("required record missing: {what}")));
        }
    }
    if p.rps.is_empty() || p.rps.iter().all(|r| r.drugs.is_empty()) {
        return Err(err(first_line, None, None, "required records missing: no RP (101) with a drug (201)"));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RX: &str = "JAHIS7\r\n1,1,0200021,46,黒潮村立黒島診療所\r\n5,,,診療所 医師\r\n11,A-0101,島田　花子,ｼﾏﾀﾞ ﾊﾅｺ\r\n12,2\r\n13,19520314\r\n51,20260410\r\n101,1,1,,14\r\n111,1,1,,1日1回 朝食後,1\r\n201,1,1,1,4,2171022F1020,アムロジピン錠５ｍｇ,1,1,錠\r\n281,1,1,1,3,後発品変更不可\r\n";

    #[test]
    fn parses_records_and_links_dependants() {
        let p = parse_str(RX).unwrap();
        assert_eq!(p.version, 7);
        assert_eq!(p.institution.code10(), "4610200021");
        assert_eq!(p.patient.kanji, "島田　花子");
        assert_eq!(p.rps[0].drugs[0].notes, vec![(Some("3".into()), "後発品変更不可".into())]);
        let sjis = encoding_rs::SHIFT_JIS.encode(RX).0;
        assert_eq!(parse(&sjis, &ParseOptions::default()).unwrap(), p);
    }

    #[test]
    fn located_errors() {
        let cases = [
            ("", "empty input"),
            ("JAHIS4\n", "version record"),
            ("JAHIS7\n1,1,02\n", "at least 4 fields"),
            ("JAHIS7\n1,1,0200021,46,x\n11,,x\n51,20260410\n111,1,1,,x,1\n", "no preceding 101"),
            ("JAHIS7\n1,1,0200021,46,x\n51,20260410\n101,1,1,,1\n201,1,1,1,4,c,n,1,1,錠\n", "patient (record 11)"),
            ("JAHIS7\n1,1,0200021,46,x\n11,,x\n13,1952-03-14\n", "YYYYMMDD"),
            ("JAHIS7\n1,1,0200021,46,x\n11,,x\n51,20260410\n", "no RP"),
            ("JAHIS7\nx1,2\n", "record number"),
        ];
        for (input, want) in cases {
            let e = parse_str(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input:?}: {e}");
        }
        let e = parse_str("JAHIS7\n1,1,02\n").unwrap_err();
        assert_eq!(e.location.line, Some(2));
    }
}
