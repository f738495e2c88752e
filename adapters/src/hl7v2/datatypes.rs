//! The HL7 v2.5 data types the mappings use, parsed from a raw (still escaped) field
//! repetition into their components and sub-components, each unescaped and trimmed.
//!
//! A component read as a plain value is its first sub-component: `EVERYMAN&&&&Aniston`
//! in XPN-1 is the surname `EVERYMAN` (FN.1), the rest being its other parts (FN.2 …
//! FN.5), so no separator ever reaches a value.

use super::Message;

/// The parts of a composite value: the components of a field repetition, or the
/// sub-components of one component (a composite inside a composite, such as the HD
/// in CX-4).
#[derive(Debug, Clone)]
pub struct Parts<'a> {
    msg: &'a Message,
    items: Vec<&'a str>,
    /// Whether `items` are components (whose own sub-components may follow `&`).
    components: bool,
}

impl<'a> Parts<'a> {
    /// The components of a raw field repetition.
    pub fn of(msg: &'a Message, raw: &'a str) -> Parts<'a> {
        Parts { msg, items: raw.split(msg.delimiters.component).collect(), components: true }
    }

    /// Part `n` (1-based) as a plain value: unescaped, trimmed; for a component, its
    /// first sub-component.
    pub fn get(&self, n: usize) -> String {
        let raw = n.checked_sub(1).and_then(|i| self.items.get(i)).copied().unwrap_or("");
        let raw = if self.components { raw.split(self.msg.delimiters.subcomponent).next().unwrap_or("") } else { raw };
        self.msg.unescape(raw).trim().to_string()
    }

    /// The sub-components of component `n`, as parts of their own.
    pub fn sub(&self, n: usize) -> Parts<'a> {
        let raw = n.checked_sub(1).and_then(|i| self.items.get(i)).copied().unwrap_or("");
        let items = if self.components { raw.split(self.msg.delimiters.subcomponent).collect() } else { vec![raw] };
        Parts { msg: self.msg, items, components: false }
    }

    /// Whether every part is empty.
    pub fn is_empty(&self) -> bool {
        self.items.iter().all(|s| s.trim().is_empty())
    }

    /// The non-empty values of every sub-component of component `n`, in order.
    pub fn all_of(&self, n: usize) -> Vec<String> {
        let s = self.sub(n);
        (1..=s.items.len()).map(|i| s.get(i)).filter(|v| !v.is_empty()).collect()
    }
}

/// Non-empty value, else `None`.
fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// HD: hierarchic designator (assigning authority, facility, application).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hd {
    /// HD-1 namespace id.
    pub namespace: Option<String>,
    /// HD-2 universal id (an OID when HD-3 is `ISO`).
    pub universal_id: Option<String>,
    /// HD-3 universal id type (`ISO`, `DNS`, `URI`, `UUID` …).
    pub universal_id_type: Option<String>,
}

impl Hd {
    /// From its three parts.
    pub fn parse(p: &Parts<'_>) -> Hd {
        Hd { namespace: some(p.get(1)), universal_id: some(p.get(2)), universal_id_type: some(p.get(3)) }
    }

    /// A URI naming the authority: `urn:oid:` for an ISO OID, `urn:uuid:` for a UUID,
    /// the id itself for a URI; `None` when the authority has no universal id.
    pub fn uri(&self) -> Option<String> {
        let id = self.universal_id.as_deref()?;
        let kind = self.universal_id_type.as_deref().unwrap_or("").to_ascii_uppercase();
        let oid = !id.is_empty() && id.split('.').all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        match kind.as_str() {
            "ISO" if oid => Some(format!("urn:oid:{id}")),
            "UUID" | "GUID" => Some(format!("urn:uuid:{}", id.to_ascii_lowercase())),
            "URI" | "URL" if id.contains(':') => Some(id.to_string()),
            _ if oid => Some(format!("urn:oid:{id}")),
            _ => None,
        }
    }

    /// The best single name of the authority: its universal id, else its namespace.
    pub fn name(&self) -> Option<&str> {
        self.universal_id.as_deref().or(self.namespace.as_deref())
    }
}

/// CWE / CE / CNE: a coded element with an alternate coding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cwe {
    /// Identifier, text and coding-system id of the primary and alternate codings.
    pub codings: Vec<(Option<String>, Option<String>, Option<String>)>,
    /// CWE-9 original text.
    pub original_text: Option<String>,
}

impl Cwe {
    /// From its parts (components of a field, or sub-components of a component).
    pub fn parse(p: &Parts<'_>) -> Cwe {
        let codings = [(1, 2, 3), (4, 5, 6)]
            .into_iter()
            .map(|(c, t, s)| (some(p.get(c)), some(p.get(t)), some(p.get(s))))
            .filter(|(c, t, _)| c.is_some() || t.is_some())
            .collect();
        Cwe { codings, original_text: some(p.get(9)) }
    }

    /// The primary code.
    pub fn code(&self) -> Option<&str> {
        self.codings.first().and_then(|c| c.0.as_deref())
    }

    /// The primary text, else the original text.
    pub fn text(&self) -> Option<&str> {
        self.codings.iter().find_map(|c| c.1.as_deref()).or(self.original_text.as_deref())
    }

    /// Whether nothing is coded or written.
    pub fn is_empty(&self) -> bool {
        self.codings.is_empty() && self.original_text.is_none()
    }
}

/// XPN: a person's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xpn {
    /// XPN-1 (FN.1) surname.
    pub family: Option<String>,
    /// XPN-2 given name, then XPN-3 second and further given names (middle names).
    pub given: Vec<String>,
    /// XPN-4 suffix (`III`) and XPN-6 degree (`MD`).
    pub suffix: Vec<String>,
    /// XPN-5 prefix (`Dr.`).
    pub prefix: Option<String>,
    /// XPN-7 name type code (table 0200: L legal, D display, M maiden …).
    pub name_type: Option<String>,
    /// XPN-8 representation (table 4000: I ideographic, P phonetic, A alphabetic).
    pub representation: Option<String>,
    /// XPN-12 effective and XPN-13 expiration date (v2.5), or XPN-10 range (DR).
    pub valid: (Option<String>, Option<String>),
}

impl Xpn {
    /// From the components of a repetition.
    pub fn parse(p: &Parts<'_>) -> Xpn {
        let mut given: Vec<String> = some(p.get(2)).into_iter().collect();
        // XPN-3 holds the second and further given names, blank-separated.
        given.extend(p.get(3).split_whitespace().map(String::from));
        let range = p.sub(10);
        let valid = (some(p.get(12)).or_else(|| some(range.get(1))), some(p.get(13)).or_else(|| some(range.get(2))));
        Xpn {
            family: some(p.get(1)),
            given,
            suffix: [p.get(4), p.get(6)].into_iter().filter(|s| !s.is_empty()).collect(),
            prefix: some(p.get(5)),
            name_type: some(p.get(7)),
            representation: some(p.get(8)),
            valid,
        }
    }

    /// Whether the name has a surname or a given name.
    pub fn is_empty(&self) -> bool {
        self.family.is_none() && self.given.is_empty()
    }
}

/// XAD: an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xad {
    /// Street lines: XAD-1 (SAD: street or mailing address, street name, dwelling
    /// number, joined) and XAD-2 other designation.
    pub lines: Vec<String>,
    /// XAD-3 city.
    pub city: Option<String>,
    /// XAD-4 state or province (都道府県).
    pub state: Option<String>,
    /// XAD-5 postal code.
    pub postal_code: Option<String>,
    /// XAD-6 country (ISO 3166).
    pub country: Option<String>,
    /// XAD-7 address type (table 0190: H home, B business, M mailing …).
    pub kind: Option<String>,
    /// XAD-8 other geographic designation; in SS-MIX2 the whole address as written.
    pub text: Option<String>,
    /// XAD-9 county or parish.
    pub district: Option<String>,
    /// XAD-12 date range (v2.5) or XAD-13/14 effective and expiration dates.
    pub valid: (Option<String>, Option<String>),
}

impl Xad {
    /// From the components of a repetition.
    pub fn parse(p: &Parts<'_>) -> Xad {
        let street = p.all_of(1).join(" ");
        let lines = [street, p.get(2)].into_iter().filter(|s| !s.is_empty()).collect();
        let range = p.sub(12);
        Xad {
            lines,
            city: some(p.get(3)),
            state: some(p.get(4)),
            postal_code: some(p.get(5)),
            country: some(p.get(6)),
            kind: some(p.get(7)),
            text: some(p.get(8)),
            district: some(p.get(9)),
            valid: (some(range.get(1)).or_else(|| some(p.get(13))), some(range.get(2)).or_else(|| some(p.get(14)))),
        }
    }

    /// Whether the address says nothing.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
            && self.city.is_none()
            && self.state.is_none()
            && self.postal_code.is_none()
            && self.country.is_none()
            && self.text.is_none()
    }
}

/// CX: an identifier with its assigning authority.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cx {
    /// CX-1 id.
    pub id: Option<String>,
    /// CX-4 assigning authority.
    pub authority: Hd,
    /// CX-5 identifier type (table 0203: MR, PI, SS, NI …).
    pub id_type: Option<String>,
    /// CX-6 assigning facility.
    pub facility: Hd,
    /// CX-7 effective and CX-8 expiration date.
    pub valid: (Option<String>, Option<String>),
}

impl Cx {
    /// From the components of a repetition.
    pub fn parse(p: &Parts<'_>) -> Cx {
        Cx {
            id: some(p.get(1)),
            authority: Hd::parse(&p.sub(4)),
            id_type: some(p.get(5)),
            facility: Hd::parse(&p.sub(6)),
            valid: (some(p.get(7)), some(p.get(8))),
        }
    }
}

/// XCN: a person with an identifier (ordering provider, attending doctor …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xcn {
    /// XCN-1 id.
    pub id: Option<String>,
    /// XCN-2..7 as a name (XCN-2 surname, 3 given, 4 further given, 5 suffix, 6 prefix,
    /// 7 degree).
    pub name: Xpn,
    /// XCN-9 assigning authority.
    pub authority: Hd,
    /// XCN-13 identifier type.
    pub id_type: Option<String>,
}

impl Xcn {
    /// From the components of a repetition.
    pub fn parse(p: &Parts<'_>) -> Xcn {
        let mut given: Vec<String> = some(p.get(3)).into_iter().collect();
        given.extend(p.get(4).split_whitespace().map(String::from));
        Xcn {
            id: some(p.get(1)),
            name: Xpn {
                family: some(p.get(2)),
                given,
                suffix: [p.get(5), p.get(7)].into_iter().filter(|s| !s.is_empty()).collect(),
                prefix: some(p.get(6)),
                name_type: some(p.get(10)),
                representation: some(p.get(15)),
                valid: (None, None),
            },
            authority: Hd::parse(&p.sub(9)),
            id_type: some(p.get(13)),
        }
    }

    /// The name as one display string: prefix, given names, surname, suffixes.
    pub fn display(&self) -> Option<String> {
        let n = &self.name;
        let parts: Vec<&str> = n
            .prefix
            .iter()
            .chain(n.given.iter())
            .chain(n.family.iter())
            .chain(n.suffix.iter())
            .map(String::as_str)
            .collect();
        some(parts.join(" "))
    }

    /// The name as Japanese writes it: surname, then given names.
    pub fn display_family_first(&self) -> Option<String> {
        let n = &self.name;
        some(n.family.iter().chain(n.given.iter()).map(String::as_str).collect::<Vec<_>>().join(" "))
    }
}

/// XON: an organisation with an identifier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xon {
    /// XON-1 name.
    pub name: Option<String>,
    /// XON-10 organisation identifier, else XON-3 (its older place).
    pub id: Option<String>,
    /// XON-6 assigning authority.
    pub authority: Hd,
}

impl Xon {
    /// From the components of a repetition.
    pub fn parse(p: &Parts<'_>) -> Xon {
        Xon { name: some(p.get(1)), id: some(p.get(10)).or_else(|| some(p.get(3))), authority: Hd::parse(&p.sub(6)) }
    }
}

/// EI: an entity identifier (order numbers, document ids).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ei {
    /// EI-1 entity identifier.
    pub id: Option<String>,
    /// EI-2..4 the authority that assigned it.
    pub authority: Hd,
}

impl Ei {
    /// From its parts (components, or sub-components inside EIP).
    pub fn parse(p: &Parts<'_>) -> Ei {
        Ei {
            id: some(p.get(1)),
            authority: Hd {
                namespace: some(p.get(2)),
                universal_id: some(p.get(3)),
                universal_id_type: some(p.get(4)),
            },
        }
    }
}

/// CQ: a quantity with units (`17^Hr&ucum`: 17 hours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cq {
    /// CQ-1 quantity.
    pub quantity: Option<String>,
    /// CQ-2 units, a coded element in sub-components.
    pub units: Cwe,
}

impl Cq {
    /// From the components of a repetition.
    pub fn parse(p: &Parts<'_>) -> Cq {
        Cq { quantity: some(p.get(1)), units: Cwe::parse(&p.sub(2)) }
    }
}

/// XTN: a telecommunication address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xtn {
    /// XTN-2 use code (table 0201: PRN, WPN, ORN, VHN, EMR, NET …).
    pub use_code: Option<String>,
    /// XTN-3 equipment type (table 0202: PH, FX, MD, CP, BP, Internet, X.400 …).
    pub equipment: Option<String>,
    /// The address itself: XTN-4 for e-mail, else XTN-12 unformatted, else XTN-1,
    /// else the number assembled from XTN-5..8 (country, area, local, extension).
    pub value: Option<String>,
}

impl Xtn {
    /// From the components of a repetition.
    pub fn parse(p: &Parts<'_>) -> Xtn {
        let equipment = some(p.get(3));
        let email = matches!(equipment.as_deref(), Some("Internet" | "X.400")) || p.get(2) == "NET";
        let assembled = {
            let (country, area, local, ext) = (p.get(5), p.get(6), p.get(7), p.get(8));
            let mut s = String::new();
            if !country.is_empty() {
                s.push_str(&format!("+{country} "));
            }
            if !area.is_empty() {
                s.push_str(&format!("({area}) "));
            }
            s.push_str(&local);
            if !ext.is_empty() && !local.is_empty() {
                s.push_str(&format!(" ext. {ext}"));
            }
            if local.is_empty() {
                String::new()
            } else {
                s.trim().to_string()
            }
        };
        let value = if email {
            some(p.get(4)).or_else(|| some(p.get(1)))
        } else {
            some(p.get(12)).or_else(|| some(p.get(1))).or_else(|| some(assembled))
        };
        Xtn { use_code: some(p.get(2)), equipment, value }
    }
}

/// PL: a person's location (point of care, room, bed, facility …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pl {
    /// PL-1 point of care, PL-2 room, PL-3 bed, PL-4 facility (its namespace or id),
    /// PL-7 building, PL-8 floor: the non-empty ones in that order.
    pub parts: Vec<String>,
    /// PL-9 location description.
    pub description: Option<String>,
}

impl Pl {
    /// From the components of a repetition.
    pub fn parse(p: &Parts<'_>) -> Pl {
        let facility = Hd::parse(&p.sub(4));
        let parts = [
            p.get(1),
            p.get(2),
            p.get(3),
            facility.namespace.or(facility.universal_id).unwrap_or_default(),
            p.get(7),
            p.get(8),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
        Pl { parts, description: some(p.get(9)) }
    }

    /// The location as one display string.
    pub fn display(&self) -> Option<String> {
        self.description.clone().or_else(|| some(self.parts.join(", ")))
    }
}

impl Message {
    /// The components of a raw field repetition.
    pub fn parts<'a>(&'a self, raw: &'a str) -> Parts<'a> {
        Parts::of(self, raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Message {
        Message::parse("MSH|^~\\&|A|B|C|D|2026||ADT^A08|1|P|2.5").unwrap()
    }

    #[test]
    fn no_separator_reaches_a_value() {
        let m = msg();
        let x = Xpn::parse(&m.parts("EVERYMAN&&&&Aniston^ADAM^A B^III^Dr.^MD^L^I"));
        assert_eq!(x.family.as_deref(), Some("EVERYMAN"));
        assert_eq!(x.given, ["ADAM", "A", "B"], "middle names are further given names");
        assert_eq!(x.suffix, ["III", "MD"]);
        assert_eq!(x.prefix.as_deref(), Some("Dr."));
        assert_eq!(x.name_type.as_deref(), Some("L"));
        assert_eq!(x.representation.as_deref(), Some("I"));

        let a = Xad::parse(&m.parts("1000&Hospital Lane^Ste. 123^Ann Arbor ^MI^99999^USA^M^^&W^^^20000110&20000120"));
        assert_eq!(a.lines, ["1000 Hospital Lane", "Ste. 123"]);
        assert_eq!(a.city.as_deref(), Some("Ann Arbor"));
        assert_eq!(a.valid, (Some("20000110".into()), Some("20000120".into())));

        let cx = Cx::parse(&m.parts("IC-1.31^24^BCV^&2.16.840.1.113883.1.1&ISO^NIIP^^19291011^19291012"));
        assert_eq!(cx.id.as_deref(), Some("IC-1.31"));
        assert_eq!(cx.authority.uri().as_deref(), Some("urn:oid:2.16.840.1.113883.1.1"));
        assert_eq!(cx.id_type.as_deref(), Some("NIIP"));

        let q = Cq::parse(&m.parts("17^Hr&ucum"));
        assert_eq!((q.quantity.as_deref(), q.units.code()), (Some("17"), Some("Hr")));

        let xcn = Xcn::parse(&m.parts("10535^van Beethoven&van^Ludwig^A^III^Dr^PHD^^&MPI&L^L"));
        assert_eq!(xcn.display().as_deref(), Some("Dr Ludwig A van Beethoven III PHD"));
        assert_eq!(xcn.authority.universal_id.as_deref(), Some("MPI"));
    }

    #[test]
    fn escapes_are_resolved_inside_parts() {
        let m = msg();
        let c = Cwe::parse(&m.parts("A1^Smith \\T\\ Sons^L"));
        assert_eq!(c.text(), Some("Smith & Sons"));
        let t = Xtn::parse(&m.parts("^NET^Internet^fred@example.org"));
        assert_eq!(t.value.as_deref(), Some("fred@example.org"));
        let t = Xtn::parse(&m.parts("^WPN^PH^^1^555^5551234^89"));
        assert_eq!(t.value.as_deref(), Some("+1 (555) 5551234 ext. 89"));
    }
}
