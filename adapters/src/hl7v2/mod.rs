//! HL7 v2.5 messages in ER7 (pipe) encoding: delimiters from MSH-1/MSH-2, segments
//! ended by CR, LF or CRLF, fields, repetitions, components and sub-components, escape
//! sequences, and the character set named in MSH-18. Z-segments are kept; mappings
//! ignore them. MLLP framing bytes (0x0B, 0x1C) around a stored message are dropped.

pub mod datatypes;

use crate::text::{self, Charset};
use crate::{Location, ParseOptions, SourceError, SourceFormat};
use std::borrow::Cow;

/// The largest segment accepted; a multi-megabyte segment is refused, not buffered twice.
pub const MAX_SEGMENT_BYTES: usize = 1 << 20;
/// The largest message accepted.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The five ER7 delimiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Field separator (MSH-1), usually `|`.
    pub field: char,
    /// Component separator, usually `^`.
    pub component: char,
    /// Repetition separator, usually `~`.
    pub repetition: char,
    /// Escape character, usually `\`.
    pub escape: char,
    /// Sub-component separator, usually `&`.
    pub subcomponent: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&' }
    }
}

/// One segment: its id and its raw (still escaped) fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Segment id (`MSH`, `PID`, `ZPR` ...).
    pub id: String,
    /// The segment's text after the id and first separator.
    line: String,
    /// Byte ranges of the raw fields in `line`; index 0 is field 1. For MSH, field 1
    /// is the field separator and field 2 the encoding characters, as the standard
    /// numbers them (both kept in `line` ahead of the rest).
    fields: Vec<(u32, u32)>,
    /// 1-based position in the message.
    pub position: usize,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The delimiters in force.
    pub delimiters: Delimiters,
    /// Segments in order.
    pub segments: Vec<Segment>,
    /// The character set the bytes were decoded from.
    pub charset: Charset,
}

/// The HL7 v2 ER7 format.
pub struct Hl7v2;

impl SourceFormat for Hl7v2 {
    type Model = Message;
    const NAME: &'static str = "hl7v2";
    fn parse(bytes: &[u8], options: &ParseOptions) -> Result<Message, SourceError> {
        Message::parse_bytes(bytes, options)
    }
}

fn err(
    segment: Option<(usize, &str)>,
    field: Option<usize>,
    offset: Option<usize>,
    msg: impl Into<String>,
) -> SourceError {
    SourceError::at(
        Location {
            segment: segment.map(|s| s.0),
            segment_id: segment.map(|s| s.1.to_string()),
            field,
            offset,
            ..Default::default()
        },
        msg,
    )
}

/// Strip MLLP framing and trailing padding that stored feeds leave around a message.
fn strip_framing(mut b: &[u8]) -> &[u8] {
    while let [0x0b, rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., last] = b {
        if matches!(last, 0x1c | 0x00) || last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// The charset MSH-18 declares, read from the raw bytes of the MSH segment (which
/// must be ASCII up to MSH-18 in every charset HL7 allows).
pub fn declared_charset(bytes: &[u8]) -> Result<Option<Charset>, SourceError> {
    let b = strip_framing(bytes);
    let end = b.iter().position(|&c| c == b'\r' || c == b'\n').unwrap_or(b.len());
    let msh = &b[..end];
    if msh.len() < 4 || &msh[..3] != b"MSH" {
        return Ok(None);
    }
    let sep = msh[3];
    let Some(raw) = msh.split(|&c| c == sep).nth(17) else { return Ok(None) };
    let rep = msh.get(5).copied().unwrap_or(b'~');
    for value in raw.split(|&c| c == rep) {
        let v = String::from_utf8_lossy(value).trim().to_ascii_uppercase();
        // Real feeds write "ISO IR87" and "ISOIR87" alike: compare without blanks.
        let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
        let cs = match compact.as_str() {
            "" => continue,
            "ISOIR87" | "ISOIR6" | "ASCII" | "ISO-2022-JP" | "ISO2022-1994" => Charset::Iso2022Jp,
            "UNICODEUTF-8" | "UTF-8" | "UNICODE" => Charset::Utf8,
            "SHIFT_JIS" | "SJIS" | "CP932" | "MS932" | "SHIFT-JIS" => Charset::ShiftJis,
            other => {
                return Err(err(
                    Some((1, "MSH")),
                    Some(18),
                    None,
                    format!("character set `{other}` is not supported (ISO IR87, UNICODE UTF-8 or Shift_JIS)"),
                ))
            }
        };
        return Ok(Some(cs));
    }
    Ok(None)
}

impl Message {
    /// Decode (MSH-18, else the configured default, else UTF-8) and parse.
    pub fn parse_bytes(bytes: &[u8], options: &ParseOptions) -> Result<Message, SourceError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(err(
                None,
                None,
                None,
                format!("message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit", bytes.len()),
            ));
        }
        let body = strip_framing(bytes);
        let charset = match options.force_charset {
            Some(cs) => cs,
            None => declared_charset(body)?.or(options.default_charset).unwrap_or(Charset::Utf8),
        };
        let text = text::decode(body, charset).map_err(|e| locate_decode_error(&e, body))?;
        let mut m = Message::parse(&text)?;
        m.charset = charset;
        Ok(m)
    }

    /// Parse already-decoded ER7 text.
    pub fn parse(text: &str) -> Result<Message, SourceError> {
        let text =
            text.trim_start_matches(['\u{b}', '\u{feff}']).trim_end_matches(['\u{1c}', '\0', '\r', '\n', ' ', '\t']);
        if text.is_empty() {
            return Err(err(None, None, Some(0), "empty message: no MSH segment"));
        }
        if !text.starts_with("MSH") {
            return Err(err(
                Some((1, text.get(..3).unwrap_or(text))),
                None,
                Some(0),
                "a message must begin with an MSH segment",
            ));
        }
        let mut chars = text[3..].chars();
        let field = chars
            .next()
            .ok_or_else(|| err(Some((1, "MSH")), Some(1), Some(3), "MSH ends before the field separator"))?;
        let enc: Vec<char> = chars.take_while(|&c| c != field).collect();
        if enc.len() < 4 {
            return Err(err(
                Some((1, "MSH")),
                Some(2),
                Some(4),
                format!("MSH-2 must hold four encoding characters, found `{}`", enc.iter().collect::<String>()),
            ));
        }
        let d = Delimiters { field, component: enc[0], repetition: enc[1], escape: enc[2], subcomponent: enc[3] };
        let all = [d.field, d.component, d.repetition, d.escape, d.subcomponent];
        for (i, c) in all.iter().enumerate() {
            if c.is_alphanumeric() || c.is_whitespace() || all[i + 1..].contains(c) {
                return Err(err(
                    Some((1, "MSH")),
                    Some(if i == 0 { 1 } else { 2 }),
                    Some(3 + i),
                    format!("delimiter `{c}` is not usable (alphanumeric, blank or repeated)"),
                ));
            }
        }
        let mut segments = Vec::new();
        let mut offset = 0usize;
        for line in text.split(['\r', '\n']) {
            let start = offset;
            offset += line.len() + 1;
            if line.is_empty() {
                continue;
            }
            let position = segments.len() + 1;
            if line.len() > MAX_SEGMENT_BYTES {
                return Err(err(
                    Some((position, line.get(..3).unwrap_or(""))),
                    None,
                    Some(start),
                    format!("segment of {} bytes exceeds the {MAX_SEGMENT_BYTES}-byte limit", line.len()),
                ));
            }
            let id_end = line.find(d.field).unwrap_or(line.len());
            let id = &line[..id_end];
            if id.len() != 3 || !id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
                return Err(err(
                    Some((position, id)),
                    None,
                    Some(start),
                    format!(
                        "`{}` is not a segment id (three upper-case letters or digits)",
                        id.chars().take(10).collect::<String>()
                    ),
                ));
            }
            let mut seg_line = String::new();
            let mut fields: Vec<(u32, u32)> = Vec::new();
            let push_fields = |rest: &str, seg_line: &mut String, fields: &mut Vec<(u32, u32)>| {
                for f in rest.split(d.field) {
                    let start = seg_line.len() as u32;
                    seg_line.push_str(f);
                    fields.push((start, seg_line.len() as u32));
                }
            };
            if id == "MSH" {
                if position != 1 {
                    return Err(err(
                        Some((position, "MSH")),
                        None,
                        Some(start),
                        "a second MSH segment: one message per input",
                    ));
                }
                seg_line.push(d.field);
                fields.push((0, seg_line.len() as u32));
                push_fields(&line[id_end + d.field.len_utf8()..], &mut seg_line, &mut fields);
            } else if id_end < line.len() {
                push_fields(&line[id_end + d.field.len_utf8()..], &mut seg_line, &mut fields);
            }
            segments.push(Segment { id: id.to_string(), line: seg_line, fields, position });
        }
        let m = Message { delimiters: d, segments, charset: Charset::Utf8 };
        // Every HL7 v2 message names its type; a file cut short (still being written)
        // often ends inside MSH, and must not pass for an empty message.
        if m.message_type().0.trim().is_empty() {
            return Err(err(
                Some((1, "MSH")),
                Some(9),
                None,
                "MSH-9 (message type) is empty: the message is incomplete or not HL7 v2",
            ));
        }
        Ok(m)
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id == id)
    }

    /// All segments with this id.
    pub fn segments<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.id == id)
    }

    /// MSH-9 as `(message code, trigger event, structure)`.
    pub fn message_type(&self) -> (String, String, String) {
        let Some(msh) = self.segment("MSH") else { return Default::default() };
        let f = msh.field(9);
        let c = |n| self.component(f, n).into_owned();
        (c(1), c(2), c(3))
    }

    /// Component `n` (1-based) of a raw field or repetition as a plain value: its
    /// first sub-component, unescaped (the others are parts of a composite component,
    /// read with [`Message::subcomponent`] or the types of [`datatypes`]).
    pub fn component<'a>(&self, raw: &'a str, n: usize) -> Cow<'a, str> {
        let comp = raw.split(self.delimiters.component).nth(n.saturating_sub(1)).unwrap_or("");
        self.unescape(comp.split(self.delimiters.subcomponent).next().unwrap_or(""))
    }

    /// Sub-component `s` of component `c` of a raw field or repetition, unescaped.
    pub fn subcomponent<'a>(&self, raw: &'a str, c: usize, s: usize) -> Cow<'a, str> {
        let comp = raw.split(self.delimiters.component).nth(c.saturating_sub(1)).unwrap_or("");
        self.unescape(comp.split(self.delimiters.subcomponent).nth(s.saturating_sub(1)).unwrap_or(""))
    }

    /// The repetitions of a raw field.
    pub fn repetitions<'a>(&self, raw: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let rep = self.delimiters.repetition;
        raw.split(rep).filter(|r| !r.is_empty())
    }

    /// Resolve escape sequences (\F\ \S\ \T\ \R\ \E\ \Xhh\ \.br\); formatting
    /// escapes (\H\ \N\) are dropped. An unknown or unterminated escape stays literal.
    pub fn unescape<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let e = self.delimiters.escape;
        if !s.contains(e) {
            return Cow::Borrowed(s);
        }
        let d = self.delimiters;
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find(e) {
            out.push_str(&rest[..i]);
            let after = &rest[i + e.len_utf8()..];
            let Some(j) = after.find(e) else {
                out.push_str(&rest[i..]);
                return Cow::Owned(out);
            };
            let code = &after[..j];
            match code {
                "F" => out.push(d.field),
                "S" => out.push(d.component),
                "T" => out.push(d.subcomponent),
                "R" => out.push(d.repetition),
                "E" => out.push(d.escape),
                "H" | "N" => {}
                ".br" => out.push('\n'),
                c if c.len() > 1
                    && c.len() % 2 == 1
                    && c.starts_with('X')
                    && c.bytes().skip(1).all(|b| b.is_ascii_hexdigit()) =>
                {
                    let bytes: Option<Vec<u8>> =
                        (1..c.len()).step_by(2).map(|k| u8::from_str_radix(&c[k..k + 2], 16).ok()).collect();
                    match bytes.and_then(|b| String::from_utf8(b).ok()) {
                        Some(t) => out.push_str(&t),
                        None => {
                            out.push(e);
                            out.push_str(code);
                            out.push(e);
                        }
                    }
                }
                _ => {
                    out.push(e);
                    out.push_str(code);
                    out.push(e);
                }
            }
            rest = &after[j + e.len_utf8()..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    }
}

impl Segment {
    /// Raw field `n` (1-based, as the standard numbers it); empty when absent.
    pub fn field(&self, n: usize) -> &str {
        n.checked_sub(1)
            .and_then(|i| self.fields.get(i))
            .and_then(|&(a, b)| self.line.get(a as usize..b as usize))
            .unwrap_or("")
    }

    /// Number of fields present.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when the segment has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Turn a decoding failure into a located error: which segment and field the bad
/// bytes fall in, counted on the text decoded before them.
fn locate_decode_error(e: &text::DecodeError, _bytes: &[u8]) -> SourceError {
    let prefix = &e.prefix;
    let seg_start = prefix.rfind(['\r', '\n']).map(|i| i + 1).unwrap_or(0);
    let segment_no = prefix[..seg_start].split(['\r', '\n']).filter(|l| !l.is_empty()).count() + 1;
    let current = &prefix[seg_start..];
    let sep = prefix.get(3..).and_then(|s| s.chars().next()).unwrap_or('|');
    let id: String = current.chars().take(3).collect();
    let mut field = current.matches(sep).count();
    if id == "MSH" {
        field += 1;
    }
    let mut located = err(
        Some((segment_no, &id)),
        (field > 0).then_some(field),
        Some(e.offset),
        format!("bytes are not valid {}", e.charset),
    );
    if id.is_empty() {
        located.location.segment_id = None;
    }
    located
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|HIS|SEND|GW|RCV|20111220224447||ADT^A08^ADT_A01|1|P|2.5\rPID|0001||9999013||患者^太郎^^^^^L^I~カンジャ^タロウ^^^^^L^P||19480405|M\rZPR||x\r";

    #[test]
    fn fields_components_repetitions() {
        let m = Message::parse(ADT).unwrap();
        assert_eq!(m.segments.len(), 3);
        let msh = m.segment("MSH").unwrap();
        assert_eq!(msh.field(1), "|");
        assert_eq!(msh.field(2), "^~\\&");
        assert_eq!(msh.field(12), "2.5");
        assert_eq!(m.message_type(), ("ADT".into(), "A08".into(), "ADT_A01".into()));
        let pid = m.segment("PID").unwrap();
        assert_eq!(pid.field(3), "9999013");
        let names: Vec<_> = m.repetitions(pid.field(5)).collect();
        assert_eq!(names.len(), 2);
        assert_eq!(m.component(names[1], 2), "タロウ");
        assert_eq!(m.component(names[1], 8), "P");
        assert_eq!(pid.field(99), "");
        assert!(m.segment("ZPR").is_some(), "Z-segments are kept");
    }

    #[test]
    fn segment_terminators_and_framing() {
        for sep in ["\r", "\n", "\r\n"] {
            let text = ADT.replace('\r', sep);
            let m = Message::parse(&text).unwrap();
            assert_eq!(m.segments.len(), 3, "{sep:?}");
        }
        let mut framed = vec![0x0b];
        framed.extend_from_slice(ADT.as_bytes());
        framed.extend_from_slice(&[0x1c, 0x0d]);
        let m = Message::parse_bytes(&framed, &ParseOptions::default()).unwrap();
        assert_eq!(m.segments.len(), 3);
    }

    #[test]
    fn custom_delimiters_and_escapes() {
        let m = Message::parse(
            "MSH#!@%*#A#B#C#D#2026##ADT!A08#1#P#2.5\rOBX#1#a!b*c!x%F%y%S%z%T%%R%%E%%X41%%.br%end@second",
        )
        .unwrap();
        assert_eq!(m.delimiters.field, '#');
        let obx = m.segment("OBX").unwrap();
        let reps: Vec<_> = m.repetitions(obx.field(2)).collect();
        assert_eq!(reps.len(), 2);
        assert_eq!(m.component(reps[0], 1), "a");
        assert_eq!(m.subcomponent(reps[0], 2, 2), "c");
        assert_eq!(m.component(reps[0], 3), "x#y!z*@%A\nend");
        assert_eq!(m.unescape("%H%bold%N%"), "bold");
        assert_eq!(m.unescape("50%"), "50%", "unterminated escape stays literal");
        assert_eq!(m.unescape("%Q%"), "%Q%", "unknown escape stays literal");
        // Found by the fuzzer: a non-ASCII character inside a hex escape.
        assert_eq!(m.unescape("%XﾚZ%"), "%XﾚZ%");
        assert_eq!(m.unescape("%XE3818%"), "%XE3818%", "odd hex length stays literal");
        assert_eq!(m.unescape("%XE38182%"), "あ");
    }

    #[test]
    fn located_errors() {
        let cases: &[(&str, &str)] = &[
            ("", "empty message"),
            ("PID|1", "must begin with an MSH"),
            ("MSH", "before the field separator"),
            ("MSH|^~", "four encoding characters"),
            ("MSH|^^\\&|", "not usable"),
            ("MSH|^~\\&|\rPI D|1", "not a segment id"),
            ("MSH|^~\\&|\rPID|1\rMSH|^~\\&|", "second MSH"),
            // A file still being written, cut inside its MSH.
            ("MSH|^~\\&|KKHUB|461010001", "MSH-9 (message type) is empty"),
            ("MSH|^~\\&|A|B|C|D|2026||\rPID|1||1", "MSH-9 (message type) is empty"),
        ];
        for (input, want) in cases {
            let e = Message::parse(input).unwrap_err();
            assert!(e.to_string().contains(want), "{input:?}: {e}");
        }
        let e = Message::parse("MSH|^~\\&|\rPI D|1").unwrap_err();
        assert_eq!(e.location.segment, Some(2));
        let huge = format!("MSH|^~\\&|\rOBX|{}", "x".repeat(MAX_SEGMENT_BYTES + 1));
        assert!(Message::parse(&huge).unwrap_err().to_string().contains("exceeds"));
    }

    #[test]
    fn charset_from_msh18() {
        let msg = "MSH|^~\\&|A|B|C|D|20110701||RDE^O11|1|P|2.5||||||~ISO IR87\rPID|1||123||患者^太郎";
        let (bytes, _, _) = encoding_rs::ISO_2022_JP.encode(msg);
        let m = Message::parse_bytes(&bytes, &ParseOptions::default()).unwrap();
        assert_eq!(m.charset, Charset::Iso2022Jp);
        assert_eq!(m.component(m.segment("PID").unwrap().field(5), 1), "患者");

        let sjis = msg.replace("~ISO IR87", "SHIFT_JIS");
        let (bytes, _, _) = encoding_rs::SHIFT_JIS.encode(&sjis);
        assert_eq!(Message::parse_bytes(&bytes, &ParseOptions::default()).unwrap().charset, Charset::ShiftJis);

        let bad = msg.replace("~ISO IR87", "8859/1");
        assert!(Message::parse_bytes(bad.as_bytes(), &ParseOptions::default())
            .unwrap_err()
            .to_string()
            .contains("field 18"));
    }

    #[test]
    fn undecodable_bytes_name_segment_field_and_offset() {
        let mut bytes = b"MSH|^~\\&|A|B|C|D|2011||ADT^A08|1|P|2.5||||||UNICODE UTF-8\rPID|1||12|".to_vec();
        let at = bytes.len();
        bytes.extend_from_slice(b"\xff\xfe|x");
        let e = Message::parse_bytes(&bytes, &ParseOptions::default()).unwrap_err();
        assert_eq!(e.location.segment, Some(2));
        assert_eq!(e.location.segment_id.as_deref(), Some("PID"));
        assert_eq!(e.location.field, Some(4));
        assert_eq!(e.location.offset, Some(at));
    }
}
