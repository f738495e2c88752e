//! The link index: which Patient records of different sites are the same person.
//! A pure function of the records and the owners' manual decisions, rebuilt whenever
//! either changes. Automatic links are deterministic and conservative: a rule that
//! finds more than one candidate at a site links nobody there (never merge on a guess).

use kakehashi_mappings::codes::{EN_REPRESENTATION, INSURANCE_MEMBER_ID};
use std::collections::{HashMap, HashSet};

/// Why two Patient records are linked, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkBasis {
    /// An owner institution linked them by hand.
    Manual,
    /// The same institution-scoped patient id (e.g. a pushed document's Patient).
    Identifier,
    /// The same insurance identity 保険者番号:記号:番号(:枝番).
    Insurance,
    /// The same kana name, birth date and gender, unambiguous at every site.
    Demographics,
}

impl LinkBasis {
    /// Code in `urn:kakehashi:link-basis`.
    pub fn code(self) -> &'static str {
        match self {
            LinkBasis::Manual => "manual",
            LinkBasis::Identifier => "identifier",
            LinkBasis::Insurance => "insurance",
            LinkBasis::Demographics => "demographics",
        }
    }
}

/// An owner's latest decision about one pair of Patient records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// One Patient id.
    pub a: String,
    /// The other Patient id.
    pub b: String,
    /// `true`: the same person; `false`: never link these two.
    pub linked: bool,
}

/// What linkage looks at in one Patient record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Patient id.
    pub id: String,
    /// The site (and owner) it came from: ambiguity is judged per site.
    pub site: String,
    /// Institution-scoped patient ids (`system|value`).
    pub identifiers: Vec<String>,
    /// Insurance identities: (保険者番号:記号:番号, 枝番).
    pub insurance: Vec<(String, Option<String>)>,
    /// Kana name, normalised.
    pub kana: Option<String>,
    /// `YYYY-MM-DD`.
    pub birth_date: Option<String>,
    /// `male`, `female` or `other`.
    pub gender: Option<String>,
}

/// Groups of linked Patient records.
#[derive(Debug, Default)]
pub struct Links {
    group_of: HashMap<String, usize>,
    groups: Vec<Vec<(String, LinkBasis)>>,
}

impl Links {
    /// Every Patient id linked to `patient` (itself excluded), with how it is linked.
    pub fn linked<'a>(&'a self, patient: &str) -> impl Iterator<Item = (&'a str, LinkBasis)> + 'a {
        let group = self.group_of.get(patient).map(|&g| self.groups[g].as_slice()).unwrap_or_default();
        let me = patient.to_string();
        group.iter().filter(move |(id, _)| *id != me).map(|(id, b)| (id.as_str(), *b))
    }

    /// `patient` and every Patient id linked to it.
    pub fn person(&self, patient: &str) -> Vec<String> {
        let mut all = vec![patient.to_string()];
        all.extend(self.linked(patient).map(|(id, _)| id.to_string()));
        all
    }

    /// Build the index from extracted facts.
    pub fn build(people: &[Facts], decisions: &[Decision]) -> Links {
        let index: HashMap<&str, usize> = people.iter().enumerate().map(|(i, f)| (f.id.as_str(), i)).collect();
        let pair = |a: usize, b: usize| (a.min(b), a.max(b));
        let mut never: HashSet<(usize, usize)> = HashSet::new();
        let mut edges: Vec<(usize, usize, LinkBasis)> = Vec::new();
        for d in decisions {
            let (Some(&a), Some(&b)) = (index.get(d.a.as_str()), index.get(d.b.as_str())) else { continue };
            if a == b {
                continue;
            }
            if d.linked {
                edges.push((a, b, LinkBasis::Manual));
            } else {
                never.insert(pair(a, b));
            }
        }
        edges.extend(automatic(people));
        edges.retain(|&(a, b, basis)| basis == LinkBasis::Manual || !never.contains(&pair(a, b)));

        let mut root = components(people.len(), &edges);
        // A component that joins a pair an owner said are different people came from
        // automatic links: keep only the owners' own links there.
        let conflicted: HashSet<usize> =
            never.iter().filter(|(a, b)| root[*a] == root[*b]).map(|&(a, _)| root[a]).collect();
        if !conflicted.is_empty() {
            edges.retain(|&(a, _, basis)| basis == LinkBasis::Manual || !conflicted.contains(&root[a]));
            root = components(people.len(), &edges);
        }

        let mut strongest: HashMap<usize, LinkBasis> = HashMap::new();
        for &(a, b, basis) in &edges {
            if root[a] == root[b] {
                for x in [a, b] {
                    let e = strongest.entry(x).or_insert(basis);
                    *e = (*e).min(basis);
                }
            }
        }
        let mut by_root: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, r) in root.iter().enumerate() {
            by_root.entry(*r).or_default().push(i);
        }
        let mut links = Links::default();
        for members in by_root.into_values().filter(|m| m.len() > 1) {
            let g = links.groups.len();
            for &m in &members {
                links.group_of.insert(people[m].id.clone(), g);
            }
            links.groups.push(
                members
                    .iter()
                    .map(|&m| (people[m].id.clone(), strongest.get(&m).copied().unwrap_or(LinkBasis::Manual)))
                    .collect(),
            );
        }
        links
    }
}

/// Connected components: each record's representative (union-find, path halving).
fn components(n: usize, edges: &[(usize, usize, LinkBasis)]) -> Vec<usize> {
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut parent: Vec<usize> = (0..n).collect();
    for &(a, b, _) in edges {
        let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
        if ra != rb {
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    (0..n).map(|x| find(&mut parent, x)).collect()
}

/// The automatic edges of every rule.
fn automatic(people: &[Facts]) -> Vec<(usize, usize, LinkBasis)> {
    let mut edges = Vec::new();
    // An institution-scoped patient id names one patient of that institution: no guess.
    for bucket in buckets(people, |f| f.identifiers.clone()).values() {
        for (i, &a) in bucket.iter().enumerate() {
            edges.extend(bucket[i + 1..].iter().map(|&b| (a, b, LinkBasis::Identifier)));
        }
    }
    let insurance = |f: &Facts| f.insurance.iter().map(|(k, _)| k.clone()).collect();
    edges.extend(unambiguous(people, buckets(people, insurance), same_insured, LinkBasis::Insurance));
    let demographics = |f: &Facts| demographics_key(f).into_iter().collect();
    edges.extend(unambiguous(people, buckets(people, demographics), insurance_agrees, LinkBasis::Demographics));
    edges
}

/// Records sharing a key, each bucket in record order.
fn buckets(people: &[Facts], keys: impl Fn(&Facts) -> Vec<String>) -> HashMap<String, Vec<usize>> {
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, f) in people.iter().enumerate() {
        let mut ks = keys(f);
        ks.sort();
        ks.dedup();
        for k in ks {
            out.entry(k).or_default().push(i);
        }
    }
    out
}

/// Pairs from different sites that `compatible` accepts, where each side has exactly
/// one compatible candidate at the other's site.
fn unambiguous(
    people: &[Facts],
    buckets: HashMap<String, Vec<usize>>,
    compatible: fn(&Facts, &Facts) -> bool,
    basis: LinkBasis,
) -> Vec<(usize, usize, LinkBasis)> {
    let mut edges = Vec::new();
    for bucket in buckets.values().filter(|b| b.len() > 1) {
        let candidates = |a: usize, site: &str| {
            bucket.iter().filter(|&&b| b != a && people[b].site == site && compatible(&people[a], &people[b])).count()
        };
        for (i, &a) in bucket.iter().enumerate() {
            for &b in &bucket[i + 1..] {
                let (fa, fb) = (&people[a], &people[b]);
                if fa.site != fb.site
                    && compatible(fa, fb)
                    && candidates(a, &fb.site) == 1
                    && candidates(b, &fa.site) == 1
                {
                    edges.push((a, b, basis));
                }
            }
        }
    }
    edges
}

/// Same card: 枝番 equal where both have one; where either lacks it (a family shares
/// the card), the birth dates must agree too.
fn same_insured(a: &Facts, b: &Facts) -> bool {
    a.insurance.iter().any(|(ka, ba)| {
        b.insurance.iter().any(|(kb, bb)| {
            ka == kb
                && match (ba, bb) {
                    (Some(x), Some(y)) => x == y && dates_agree(a, b),
                    _ => a.birth_date.is_some() && a.birth_date == b.birth_date,
                }
        })
    })
}

fn dates_agree(a: &Facts, b: &Facts) -> bool {
    match (&a.birth_date, &b.birth_date) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

/// Demographics do not link two records whose known insurance identities all differ.
fn insurance_agrees(a: &Facts, b: &Facts) -> bool {
    a.insurance.is_empty()
        || b.insurance.is_empty()
        || a.insurance.iter().any(|(ka, _)| b.insurance.iter().any(|(kb, _)| ka == kb))
}

/// The facts of one Patient at site `site` (`site|owner`), with the insurance
/// identities of its Coverages.
pub fn facts_of<'a>(
    p: &kakehashi_fhir::Patient,
    coverages: impl Iterator<Item = &'a kakehashi_fhir::Coverage>,
    site: String,
) -> Option<Facts> {
    let id = p.id.as_deref()?;
    let mut f = Facts {
        id: id.to_string(),
        site,
        birth_date: p.birth_date.clone().filter(|d| d.len() == 10),
        gender: p.gender.clone().filter(|g| matches!(g.as_str(), "male" | "female" | "other")),
        kana: p
            .name
            .iter()
            .find(|n| n.extension.iter().any(|e| e.url == EN_REPRESENTATION && e.value_code.as_deref() == Some("SYL")))
            .map(|n| {
                let parts = n.family.iter().chain(n.given.iter()).cloned().collect::<Vec<_>>().join("");
                kana_key(if parts.is_empty() { n.text.as_deref().unwrap_or("") } else { &parts })
            })
            .filter(|k| !k.is_empty()),
        ..Default::default()
    };
    for i in &p.identifier {
        let (Some(system), Some(value)) = (i.system.as_deref(), i.value.as_deref()) else { continue };
        if system == INSURANCE_MEMBER_ID {
            f.insurance.extend(insurance_key(value));
        } else if is_institution_patient_id(system) {
            f.identifiers.push(format!("{system}|{}", fold(value)));
        }
    }
    for c in coverages {
        f.insurance.extend(coverage_insurance(c));
    }
    Some(f)
}

fn coverage_insurance(c: &kakehashi_fhir::Coverage) -> Vec<(String, Option<String>)> {
    c.identifier
        .iter()
        .filter(|id| id.system.as_deref() == Some(INSURANCE_MEMBER_ID))
        .filter_map(|id| id.value.as_deref().and_then(insurance_key))
        .collect()
}

/// The demographics key of `f` (kana, birth date and gender), when it has all three.
pub fn demographics_key(f: &Facts) -> Option<String> {
    match (&f.kana, &f.birth_date, &f.gender) {
        (Some(k), Some(b), Some(g)) => Some(format!("{k}|{b}|{g}")),
        _ => None,
    }
}

/// JP Core patient ids are scoped by the institution code in their system.
fn is_institution_patient_id(system: &str) -> bool {
    system
        .strip_prefix("urn:oid:1.2.392.100495.20.3.51.1")
        .is_some_and(|code| code.len() == 10 && code.bytes().all(|b| b.is_ascii_digit()))
}

/// `保険者番号:記号:番号(:枝番)` as (the card's key, 枝番); full-width digits and letters
/// folded, spaces dropped. `None` unless insurer, 記号 or 番号 and 番号 are present.
pub fn insurance_key(value: &str) -> Option<(String, Option<String>)> {
    let parts: Vec<String> = value.split([':', '：']).map(fold).collect();
    let insurer = parts.first().filter(|s| !s.is_empty())?;
    let number = parts.get(2).filter(|s| !s.is_empty())?;
    let symbol = parts.get(1).cloned().unwrap_or_default();
    let branch = parts.get(3).filter(|s| !s.is_empty()).cloned();
    Some((format!("{insurer}:{symbol}:{number}"), branch))
}

/// Full-width digits and letters as ASCII (the mappings' own folding), whitespace
/// (ASCII and ideographic) removed.
fn fold(s: &str) -> String {
    kakehashi_mappings::hl7v2::ascii_fold(s).chars().filter(|c| !c.is_whitespace()).collect()
}

/// Kana name as compared: katakana (hiragana and half-width katakana converted),
/// without spaces or middle dots.
pub fn kana_key(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            c if c.is_whitespace() || matches!(c, '・' | '･') => {}
            '\u{3041}'..='\u{3096}' => out.push(char::from_u32(c as u32 + 0x60).unwrap_or(c)),
            '\u{FF9E}' | '\u{FF9F}' => {
                // Half-width (han)dakuten combine with the kana before them; a stray one is dropped.
                if let Some(v) = out.chars().last().and_then(|l| voiced(l, c == '\u{FF9F}')) {
                    out.pop();
                    out.push(v);
                }
            }
            '\u{FF66}'..='\u{FF9D}' => out.push(HALF_WIDTH_KANA[(c as u32 - 0xFF66) as usize]),
            c => out.extend(c.to_uppercase()),
        }
    }
    out
}

/// U+FF66..=U+FF9D as full-width katakana.
const HALF_WIDTH_KANA: [char; 56] = [
    'ヲ', 'ァ', 'ィ', 'ゥ', 'ェ', 'ォ', 'ャ', 'ュ', 'ョ', 'ッ', 'ー', 'ア', 'イ', 'ウ', 'エ', 'オ', 'カ', 'キ', 'ク',
    'ケ', 'コ', 'サ', 'シ', 'ス', 'セ', 'ソ', 'タ', 'チ', 'ツ', 'テ', 'ト', 'ナ', 'ニ', 'ヌ', 'ネ', 'ノ', 'ハ', 'ヒ',
    'フ', 'ヘ', 'ホ', 'マ', 'ミ', 'ム', 'メ', 'モ', 'ヤ', 'ユ', 'ヨ', 'ラ', 'リ', 'ル', 'レ', 'ロ', 'ワ', 'ン',
];

/// ガ from カ (dakuten) or パ from ハ (handakuten).
fn voiced(c: char, handakuten: bool) -> Option<char> {
    match (c, handakuten) {
        ('ウ', false) => Some('ヴ'),
        (c, false) if "カキクケコサシスセソタチツテトハヒフヘホ".contains(c) => {
            char::from_u32(c as u32 + 1)
        }
        (c, true) if "ハヒフヘホ".contains(c) => char::from_u32(c as u32 + 2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str, site: &str) -> Facts {
        Facts {
            id: id.into(),
            site: site.into(),
            birth_date: Some("1948-03-02".into()),
            gender: Some("female".into()),
            ..Default::default()
        }
    }

    fn with_insurance(mut f: Facts, v: &str) -> Facts {
        f.insurance.extend(insurance_key(v));
        f
    }

    fn with_kana(mut f: Facts, k: &str) -> Facts {
        f.kana = Some(kana_key(k));
        f
    }

    fn linked(l: &Links, id: &str) -> Vec<String> {
        let mut v: Vec<String> = l.linked(id).map(|(x, _)| x.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn kana_and_insurance_normalise_width_script_and_spaces() {
        assert_eq!(kana_key("ﾔﾏﾀﾞ ﾊﾅｺ"), "ヤマダハナコ");
        assert_eq!(kana_key("やまだ　はなこ"), "ヤマダハナコ");
        assert_eq!(kana_key("ﾎﾟﾝﾀﾞ ｳﾞｨ"), "ポンダヴィ");
        assert_eq!(kana_key("ｶﾞｷﾞｸﾞｹﾞｺﾞ ﾊﾟﾋﾟ"), "ガギグゲゴパピ");
        assert_eq!(
            insurance_key("０６１３００１２：きた１：１２３４５：０１"),
            insurance_key("06130012:きた1:12345:01")
        );
        assert_eq!(
            insurance_key("06130012:きた1:12345:01"),
            Some(("06130012:きた1:12345".to_string(), Some("01".to_string())))
        );
        assert_eq!(insurance_key("06130012::"), None);
        assert_eq!(insurance_key("06130012::777").map(|k| k.0), Some("06130012::777".to_string()));
    }

    #[test]
    fn the_same_insurance_identity_links_across_sites() {
        let hub = with_insurance(person("h1", "hub"), "06130012:きた1:12345:01");
        let clinic = with_insurance(person("c1", "clinic"), "０６１３００１２:きた１:１２３４５:０１");
        let l = Links::build(&[hub, clinic], &[]);
        assert_eq!(linked(&l, "h1"), ["c1"]);
        assert_eq!(l.linked("c1").next().map(|x| x.1), Some(LinkBasis::Insurance));
    }

    #[test]
    fn a_shared_card_without_branch_numbers_needs_the_birth_date_too() {
        let hub = with_insurance(person("h1", "hub"), "06130012:きた1:12345");
        let mut child = with_insurance(person("c1", "clinic"), "06130012:きた1:12345");
        child.birth_date = Some("1980-01-01".into());
        assert!(Links::build(&[hub.clone(), child], &[]).linked("h1").next().is_none());
        // Different branch numbers are different people whatever else agrees.
        let a = with_insurance(person("h1", "hub"), "06130012:きた1:12345:01");
        let b = with_insurance(person("c1", "clinic"), "06130012:きた1:12345:02");
        assert!(Links::build(&[a, b], &[]).linked("h1").next().is_none());
        // Branch on one side only: birth date decides.
        let c = with_insurance(person("c1", "clinic"), "06130012:きた1:12345:01");
        assert_eq!(linked(&Links::build(&[hub, c], &[]), "h1"), ["c1"]);
    }

    #[test]
    fn demographics_link_only_when_unambiguous_and_insurance_does_not_disagree() {
        let hub = with_kana(person("h1", "hub"), "ヤマダ ハナコ");
        let clinic = with_kana(person("c1", "clinic"), "ﾔﾏﾀﾞ ﾊﾅｺ");
        assert_eq!(linked(&Links::build(&[hub.clone(), clinic.clone()], &[]), "h1"), ["c1"]);
        // Two candidates at the clinic: nobody is linked.
        let twin = with_kana(person("c2", "clinic"), "やまだ はなこ");
        let l = Links::build(&[hub.clone(), clinic.clone(), twin], &[]);
        assert!(l.linked("h1").next().is_none() && l.linked("c1").next().is_none());
        // Gender is part of the key.
        let mut other = clinic.clone();
        other.gender = Some("male".into());
        assert!(Links::build(&[hub.clone(), other], &[]).linked("h1").next().is_none());
        // Known, different insurance identities: not linked on demographics.
        let a = with_insurance(hub, "06130012:1:1:00");
        let b = with_insurance(clinic, "39130012:2:2:00");
        assert!(Links::build(&[a, b], &[]).linked("h1").next().is_none());
    }

    #[test]
    fn owners_decide_over_automatic_links() {
        let hub = with_kana(person("h1", "hub"), "ヤマダ ハナコ");
        let clinic = with_kana(person("c1", "clinic"), "ヤマダ ハナコ");
        let rx = person("p1", "pharmacy");
        let unlink = Decision { a: "c1".into(), b: "h1".into(), linked: false };
        let l = Links::build(&[hub.clone(), clinic.clone(), rx.clone()], std::slice::from_ref(&unlink));
        assert!(l.linked("h1").next().is_none());
        let link = Decision { a: "p1".into(), b: "h1".into(), linked: true };
        let l = Links::build(&[hub.clone(), clinic.clone(), rx.clone()], std::slice::from_ref(&link));
        assert_eq!(linked(&l, "h1"), ["c1", "p1"]);
        assert_eq!(l.linked("c1").find(|x| x.0 == "p1").map(|x| x.1), Some(LinkBasis::Manual));
        // An automatic chain joining a pair the owner separated falls apart; the
        // owner's own links stay.
        let l = Links::build(&[hub, clinic, rx], &[link, unlink]);
        assert_eq!(linked(&l, "h1"), ["p1"]);
        assert!(l.linked("c1").next().is_none());
    }

    #[test]
    fn institution_scoped_ids_link_and_other_systems_do_not() {
        assert!(is_institution_patient_id("urn:oid:1.2.392.100495.20.3.51.11234567890"));
        assert!(!is_institution_patient_id("urn:oid:1.2.392.100495.20.3.51.1"));
        assert!(!is_institution_patient_id("urn:kakehashi:local:x"));
        let mut a = person("h1", "hub");
        a.identifiers.push("urn:oid:1.2.392.100495.20.3.51.11234567890|0001".into());
        let mut b = person("d1", "push");
        b.identifiers = a.identifiers.clone();
        let mut c = person("d2", "push");
        c.identifiers = a.identifiers.clone();
        // Several pushed copies of one hub patient all belong to it.
        assert_eq!(linked(&Links::build(&[a, b, c], &[]), "h1"), ["d1", "d2"]);
    }
}
