//! FHIR search parameters: parsing (prefixes, modifiers, token and reference forms)
//! and matching against resources. Every rejection names the parameter.

use crate::app::ApiError;
use kakehashi_fhir::{CodeableConcept, HumanName, Identifier, IssueType, Resource};

/// Largest page a client can ask for; larger `_count` values are clamped.
pub const MAX_COUNT: usize = 200;
/// Page size when `_count` is absent.
pub const DEFAULT_COUNT: usize = 50;

/// A date comparison prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// Equal (the value's range contains the resource's).
    Eq,
    /// Not equal.
    Ne,
    /// Greater than.
    Gt,
    /// Less than.
    Lt,
    /// Greater or equal.
    Ge,
    /// Less or equal.
    Le,
}

/// One parsed criterion.
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    /// `_id`.
    Id(Vec<String>),
    /// A token: `system|code`, `code`, `|code`, `system|` (alternatives OR-ed).
    Token { name: String, values: Vec<(Option<String>, Option<String>)> },
    /// A string, prefix match unless `:exact`/`:contains`.
    Str { name: String, values: Vec<String>, modifier: StrMatch },
    /// A date range: instants in Unix seconds [start, end) (`patient.birthdate` included).
    Date { name: String, prefix: Prefix, start: i64, end: i64 },
    /// A reference to a patient.
    Patient(Vec<String>),
}

/// How a string parameter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrMatch {
    /// Starts with (default).
    Prefix,
    /// Equal.
    Exact,
    /// Contains.
    Contains,
}

/// A parsed search.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// All criteria (AND-ed).
    pub criteria: Vec<Criterion>,
    /// Page size.
    pub count: usize,
    /// Offset of the page.
    pub offset: usize,
    /// The parameters used, for the self link (`_count`/`_offset` excluded).
    pub used: Vec<(String, String)>,
    /// Parameters ignored (lenient handling).
    pub ignored: Vec<String>,
}

/// Which parameters a resource type supports, and their kinds.
pub fn supported(resource_type: &str) -> &'static [(&'static str, &'static str)] {
    match resource_type {
        "Patient" => &[
            ("identifier", "token"),
            ("name", "string"),
            ("family", "string"),
            ("given", "string"),
            ("birthdate", "date"),
            ("gender", "token"),
        ],
        "MedicationRequest" => &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("identifier", "token"),
            ("status", "token"),
            ("code", "token"),
            ("authoredon", "date"),
            ("patient.birthdate", "date"),
        ],
        "MedicationAdministration" => &[("patient", "reference"), ("subject", "reference"), ("status", "token")],
        "Observation" => &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("code", "token"),
            ("date", "date"),
            ("category", "token"),
            ("status", "token"),
        ],
        "Condition" => &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("code", "token"),
            ("clinical-status", "token"),
            ("onset-date", "date"),
        ],
        "AllergyIntolerance" => &[("patient", "reference"), ("code", "token"), ("clinical-status", "token")],
        "Composition" => &[("patient", "reference"), ("subject", "reference"), ("type", "token"), ("date", "date")],
        "Coverage" => &[("patient", "reference"), ("beneficiary", "reference"), ("identifier", "token")],
        "DiagnosticReport" => &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("code", "token"),
            ("date", "date"),
            ("category", "token"),
        ],
        "Encounter" => &[("patient", "reference"), ("subject", "reference"), ("date", "date"), ("status", "token")],
        "Procedure" => &[("patient", "reference"), ("subject", "reference"), ("code", "token"), ("date", "date")],
        "Immunization" => &[("patient", "reference"), ("vaccine-code", "token"), ("date", "date"), ("status", "token")],
        "ServiceRequest" => &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("code", "token"),
            ("category", "token"),
            ("status", "token"),
            ("authored", "date"),
        ],
        "MedicationDispense" => {
            &[("patient", "reference"), ("subject", "reference"), ("code", "token"), ("status", "token")]
        }
        "Specimen" => &[("patient", "reference"), ("subject", "reference"), ("type", "token")],
        "Appointment" => &[("patient", "reference"), ("date", "date"), ("status", "token")],
        "DocumentReference" => {
            &[("patient", "reference"), ("subject", "reference"), ("type", "token"), ("date", "date")]
        }
        _ => &[],
    }
}

fn invalid(name: &str, msg: impl Into<String>) -> ApiError {
    ApiError::BadRequest { code: IssueType::Invalid, diagnostics: msg.into(), expression: Some(name.to_string()) }
}

/// Parse a query string for `resource_type`. `strict` follows `Prefer: handling=strict`.
pub fn parse(resource_type: &str, query: &str, strict: bool) -> Result<Search, ApiError> {
    let table = supported(resource_type);
    let mut s = Search { count: DEFAULT_COUNT, ..Default::default() };
    for (raw_name, value) in form_urlencoded::parse(query.as_bytes()) {
        let (name, modifier) = match raw_name.split_once(':') {
            Some((n, m)) => (n.to_string(), Some(m.to_string())),
            None => (raw_name.to_string(), None),
        };
        match name.as_str() {
            "_count" => {
                let n: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("_count", format!("_count `{value}` is not a non-negative integer")))?;
                s.count = n.min(MAX_COUNT);
                continue;
            }
            "_offset" => {
                s.offset = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("_offset", format!("_offset `{value}` is not a non-negative integer")))?;
                continue;
            }
            "_format" => continue,
            "_id" => {
                s.criteria.push(Criterion::Id(value.split(',').map(|v| v.trim().to_string()).collect()));
                s.used.push((raw_name.to_string(), value.to_string()));
                continue;
            }
            _ => {}
        }
        let Some(&(_, kind)) = table.iter().find(|(n, _)| *n == name) else {
            if strict {
                return Err(invalid(
                    &name,
                    format!("search parameter `{name}` is not supported for {resource_type} (Prefer: handling=strict)"),
                ));
            }
            s.ignored.push(raw_name.to_string());
            continue;
        };
        if value.trim().is_empty() {
            return Err(invalid(&name, format!("search parameter `{name}` has no value")));
        }
        let c = match kind {
            "token" => Criterion::Token { name: name.clone(), values: value.split(',').map(token).collect() },
            "string" => Criterion::Str {
                name: name.clone(),
                values: value.split(',').map(|v| fold(v.trim())).collect(),
                modifier: match modifier.as_deref() {
                    None => StrMatch::Prefix,
                    Some("exact") => StrMatch::Exact,
                    Some("contains") => StrMatch::Contains,
                    Some(m) => return Err(invalid(&name, format!("modifier `:{m}` is not supported on `{name}`"))),
                },
            },
            "date" => {
                let (prefix, start, end) = date_param(&name, &value)?;
                Criterion::Date { name: name.clone(), prefix, start, end }
            }
            _ => Criterion::Patient(
                value
                    .split(',')
                    .map(|v| {
                        let v = v.trim();
                        v.strip_prefix("Patient/").unwrap_or(v).to_string()
                    })
                    .collect(),
            ),
        };
        if modifier.is_some() && kind != "string" {
            return Err(invalid(&name, format!("modifiers are not supported on `{name}`")));
        }
        s.criteria.push(c);
        s.used.push((raw_name.to_string(), value.to_string()));
    }
    Ok(s)
}

fn token(v: &str) -> (Option<String>, Option<String>) {
    let v = v.trim();
    match v.split_once('|') {
        Some((sys, code)) => (Some(sys.to_string()), (!code.is_empty()).then(|| code.to_string())),
        None => (None, Some(v.to_string())),
    }
}

/// Case- and width-insensitive form for string matching (full-width ASCII folded).
pub fn fold(s: &str) -> String {
    kakehashi_mappings::hl7v2::ascii_fold(s).to_lowercase()
}

fn date_param(name: &str, v: &str) -> Result<(Prefix, i64, i64), ApiError> {
    let (prefix, rest) = match v.get(..2) {
        Some("eq") => (Prefix::Eq, &v[2..]),
        Some("ne") => (Prefix::Ne, &v[2..]),
        Some("gt") => (Prefix::Gt, &v[2..]),
        Some("lt") => (Prefix::Lt, &v[2..]),
        Some("ge") => (Prefix::Ge, &v[2..]),
        Some("le") => (Prefix::Le, &v[2..]),
        _ => (Prefix::Eq, v),
    };
    let (start, end) = date_range(rest).ok_or_else(|| {
        invalid(name, format!("`{v}` is not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or a dateTime, optionally prefixed eq/ne/gt/lt/ge/le)"))
    })?;
    Ok((prefix, start, end))
}

/// The instant range [start, end) a FHIR date or dateTime covers. Values without a
/// zone are Japan Standard Time, as the sources write them.
pub fn date_range(v: &str) -> Option<(i64, i64)> {
    use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};
    let v = v.trim();
    let jst = UtcOffset::from_hms(9, 0, 0).ok()?;
    let num = |s: &str| -> Option<i32> { s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok()).flatten() };
    let start_of = |y: i32, m: u8, d: u8| -> Option<i64> {
        let date = Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok()?;
        Some(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(jst).unix_timestamp())
    };
    match v.len() {
        4 => {
            let y = num(v)?;
            Some((start_of(y, 1, 1)?, start_of(y + 1, 1, 1)?))
        }
        7 if v.as_bytes()[4] == b'-' => {
            let (y, m) = (num(&v[..4])?, num(&v[5..])? as u8);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some((start_of(y, m, 1)?, start_of(ny, nm, 1)?))
        }
        10 if v.as_bytes()[4] == b'-' && v.as_bytes()[7] == b'-' => {
            let s = start_of(num(&v[..4])?, num(&v[5..7])? as u8, num(&v[8..])? as u8)?;
            Some((s, s + 86_400))
        }
        _ => {
            let t = OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).ok()?;
            let s = t.unix_timestamp();
            Some((s, s + 1))
        }
    }
}

fn date_matches(prefix: Prefix, start: i64, end: i64, value: Option<&str>) -> bool {
    let Some((vs, ve)) = value.and_then(date_range) else { return false };
    match prefix {
        Prefix::Eq => vs >= start && ve <= end,
        Prefix::Ne => !(vs >= start && ve <= end),
        Prefix::Gt => ve > end,
        Prefix::Lt => vs < start,
        Prefix::Ge => ve > start,
        Prefix::Le => vs < end,
    }
}

fn token_matches_codings(values: &[(Option<String>, Option<String>)], concepts: &[&CodeableConcept]) -> bool {
    values.iter().any(|(sys, code)| {
        concepts.iter().flat_map(|c| c.coding.iter()).any(|c| {
            sys.as_deref().is_none_or(|s| (s.is_empty() && c.system.is_none()) || c.system.as_deref() == Some(s))
                && code.as_deref().is_none_or(|k| c.code.as_deref() == Some(k))
        })
    })
}

fn token_matches_identifiers(values: &[(Option<String>, Option<String>)], ids: &[Identifier]) -> bool {
    values.iter().any(|(sys, code)| {
        ids.iter().any(|i| {
            sys.as_deref().is_none_or(|s| (s.is_empty() && i.system.is_none()) || i.system.as_deref() == Some(s))
                && code.as_deref().is_none_or(|k| i.value.as_deref() == Some(k))
        })
    })
}

fn token_matches_plain(values: &[(Option<String>, Option<String>)], v: Option<&str>) -> bool {
    values.iter().any(|(_, code)| code.as_deref().is_some_and(|c| Some(c) == v))
}

fn name_parts(names: &[HumanName], which: &str) -> Vec<String> {
    let mut out = Vec::new();
    for n in names {
        if which != "given" {
            out.extend(n.family.iter().cloned());
        }
        if which != "family" {
            out.extend(n.given.iter().cloned());
        }
        if which == "name" {
            out.extend(n.text.iter().cloned());
        }
    }
    out.iter().map(|s| fold(s)).collect()
}

/// True when the resource satisfies every criterion. `patient_birth` is the birth date
/// of the resource's patient, for the chained `patient.birthdate`.
pub fn matches(r: &Resource, patient: Option<&str>, patient_birth: Option<&str>, criteria: &[Criterion]) -> bool {
    criteria.iter().all(|c| match c {
        Criterion::Id(ids) => r.id().is_some_and(|id| ids.iter().any(|i| i == id)),
        Criterion::Patient(ids) => patient.is_some_and(|p| ids.iter().any(|i| i == p)),
        Criterion::Str { name, values, modifier } => {
            let Resource::Patient(p) = r else { return false };
            let parts = name_parts(&p.name, name);
            values.iter().any(|v| {
                parts.iter().any(|part| match modifier {
                    StrMatch::Prefix => part.starts_with(v.as_str()),
                    StrMatch::Exact => part == v,
                    StrMatch::Contains => part.contains(v.as_str()),
                })
            })
        }
        Criterion::Date { name, prefix, start, end } if name == "patient.birthdate" => {
            date_matches(*prefix, *start, *end, patient_birth)
        }
        Criterion::Date { name, prefix, start, end } => {
            let value = match (r, name.as_str()) {
                (Resource::Patient(p), "birthdate") => p.birth_date.as_deref(),
                (Resource::Observation(o), "date") => {
                    o.effective_date_time.as_deref().or(o.effective_period.as_ref().and_then(|p| p.start.as_deref()))
                }
                (Resource::DiagnosticReport(d), "date") => d.effective_date_time.as_deref(),
                (Resource::MedicationRequest(m), "authoredon") => m.authored_on.as_deref(),
                (Resource::Condition(c), "onset-date") => c.onset_date_time.as_deref(),
                (Resource::Composition(c), "date") => Some(c.date.as_str()),
                (Resource::Encounter(e), "date") => e.period.as_ref().and_then(|p| p.start.as_deref()),
                (Resource::Procedure(p), "date") => p.performed_date_time.as_deref(),
                (Resource::Immunization(i), "date") => Some(i.occurrence_date_time.as_str()),
                (Resource::ServiceRequest(r), "authored") => r.authored_on.as_deref(),
                (Resource::Appointment(a), "date") => a.start.as_deref(),
                (Resource::DocumentReference(d), "date") => d.date.as_deref(),
                _ => None,
            };
            date_matches(*prefix, *start, *end, value)
        }
        Criterion::Token { name, values } => match (r, name.as_str()) {
            (Resource::Patient(p), "identifier") => token_matches_identifiers(values, &p.identifier),
            (Resource::Patient(p), "gender") => token_matches_plain(values, p.gender.as_deref()),
            (Resource::MedicationRequest(m), "identifier") => token_matches_identifiers(values, &m.identifier),
            (Resource::MedicationRequest(m), "status") => token_matches_plain(values, Some(&m.status)),
            (Resource::MedicationRequest(m), "code") => {
                token_matches_codings(values, &m.medication_codeable_concept.iter().collect::<Vec<_>>())
            }
            (Resource::MedicationAdministration(a), "status") => token_matches_plain(values, Some(&a.status)),
            (Resource::Observation(o), "code") => token_matches_codings(values, &[&o.code]),
            (Resource::Observation(o), "category") => {
                token_matches_codings(values, &o.category.iter().collect::<Vec<_>>())
            }
            (Resource::Observation(o), "status") => token_matches_plain(values, Some(&o.status)),
            (Resource::Condition(c), "code") => token_matches_codings(values, &c.code.iter().collect::<Vec<_>>()),
            (Resource::Condition(c), "clinical-status") => {
                token_matches_codings(values, &c.clinical_status.iter().collect::<Vec<_>>())
            }
            (Resource::AllergyIntolerance(a), "code") => {
                token_matches_codings(values, &a.code.iter().collect::<Vec<_>>())
            }
            (Resource::AllergyIntolerance(a), "clinical-status") => {
                token_matches_codings(values, &a.clinical_status.iter().collect::<Vec<_>>())
            }
            (Resource::Coverage(c), "identifier") => token_matches_identifiers(values, &c.identifier),
            (Resource::Composition(c), "type") => token_matches_codings(values, &[&c.type_]),
            (Resource::DiagnosticReport(d), "code") => token_matches_codings(values, &[&d.code]),
            (Resource::DiagnosticReport(d), "category") => {
                token_matches_codings(values, &d.category.iter().collect::<Vec<_>>())
            }
            (Resource::Encounter(e), "status") => token_matches_plain(values, Some(&e.status)),
            (Resource::Procedure(p), "code") => token_matches_codings(values, &p.code.iter().collect::<Vec<_>>()),
            (Resource::Immunization(i), "vaccine-code") => token_matches_codings(values, &[&i.vaccine_code]),
            (Resource::Immunization(i), "status") => token_matches_plain(values, Some(&i.status)),
            (Resource::ServiceRequest(r), "code") => token_matches_codings(values, &r.code.iter().collect::<Vec<_>>()),
            (Resource::ServiceRequest(r), "category") => {
                token_matches_codings(values, &r.category.iter().collect::<Vec<_>>())
            }
            (Resource::ServiceRequest(r), "status") => token_matches_plain(values, Some(&r.status)),
            (Resource::MedicationDispense(d), "code") => {
                token_matches_codings(values, &d.medication_codeable_concept.iter().collect::<Vec<_>>())
            }
            (Resource::MedicationDispense(d), "status") => token_matches_plain(values, Some(&d.status)),
            (Resource::Specimen(x), "type") => token_matches_codings(values, &x.type_.iter().collect::<Vec<_>>()),
            (Resource::Appointment(a), "status") => token_matches_plain(values, Some(&a.status)),
            (Resource::DocumentReference(d), "type") => {
                token_matches_codings(values, &d.type_.iter().collect::<Vec<_>>())
            }
            _ => false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_with_locations() {
        let s = parse("Observation", "patient=Patient/p1&code=urn:x|A1,B2&date=ge2026-04&_count=5000&foo=1", false)
            .unwrap();
        assert_eq!(s.count, MAX_COUNT);
        assert_eq!(s.ignored, vec!["foo"]);
        assert_eq!(s.criteria.len(), 3);
        assert!(matches!(&s.criteria[0], Criterion::Patient(p) if p == &["p1"]));
        let strict = parse("Observation", "foo=1", true).unwrap_err();
        assert!(strict.to_string().contains("not supported") || format!("{strict:?}").contains("foo"));
        for bad in ["date=2026-13-01", "_count=-1", "_count=abc", "date=yesterday", "patient=", "code:text=x"] {
            assert!(parse("Observation", bad, false).is_err(), "{bad}");
        }
        let e = parse("Observation", "date=2026-02-30", false).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest { expression: Some(x), .. } if x == "date"));
    }

    #[test]
    fn date_ranges_and_prefixes() {
        let (s, e) = date_range("2026-04-10").unwrap();
        assert_eq!(e - s, 86_400);
        assert!(date_matches(Prefix::Eq, s, e, Some("2026-04-10T10:00:00+09:00")));
        assert!(!date_matches(Prefix::Eq, s, e, Some("2026-04-11T00:00:00+09:00")));
        assert!(date_matches(Prefix::Ge, s, e, Some("2026-04-10")));
        assert!(date_matches(Prefix::Lt, s, e, Some("2026-04-09")));
        assert!(!date_matches(Prefix::Gt, s, e, Some("2026-04-10T23:00:00+09:00")));
        assert!(date_range("2026-02").is_some() && date_range("2026").is_some());
        assert!(date_range("2026-02-29").is_none());
    }

    #[test]
    fn string_matching_folds_width_and_case() {
        assert_eq!(fold("ＡＢＣ１２"), "abc12");
    }
}
