//! MML (Medical Markup Language) documents: MML 2.3 (OpenDolphin-style, namespaces
//! without `v4`) and MML 4.x (`http://www.medxml.net/MML/v4/...`). The reader streams
//! with quick-xml and builds a small bounded tree for one unit at a time — the header,
//! each `MmlModuleItem`, or a bare module document — which [`model`] turns into typed
//! modules. DOCTYPEs, entity definitions and unknown entities are refused, so entity
//! expansion and external entities cannot happen; depth, node count and text size are
//! bounded per unit.

pub mod model;

use crate::text::{self, Charset};
use crate::{Location, ParseOptions, SourceError, SourceFormat};
use quick_xml::events::Event;
use quick_xml::NsReader;

/// Largest document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 32 << 20;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most elements in one unit (header, module item or bare module).
pub const MAX_NODES: usize = 100_000;
/// Most text in one unit, in bytes.
pub const MAX_TEXT: usize = 8 << 20;

/// Which MML namespace family a document uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// MML 2.3 (no `v4` in the namespace URIs).
    V23,
    /// MML 4.x.
    V4,
}

/// One element of a unit: local name, namespace URI, attributes by local name, text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Local name.
    pub name: String,
    /// Namespace URI (empty when unbound).
    pub ns: String,
    /// Attributes by local name.
    pub attrs: Vec<(String, String)>,
    /// Child elements.
    pub children: Vec<Node>,
    /// Text directly inside (concatenated; `xhtml:br` becomes a newline).
    pub text: String,
    /// 1-based line of the start tag.
    pub line: usize,
}

impl Node {
    /// The first child with this local name.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// An attribute by local name.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Trimmed text, None when empty.
    pub fn value(&self) -> Option<String> {
        let t = self.text.trim();
        (!t.is_empty()).then(|| t.to_string())
    }

    /// Trimmed text of the element at a child path.
    pub fn text_at(&self, path: &[&str]) -> Option<String> {
        let mut n = self;
        for p in path {
            n = n.child(p)?;
        }
        n.value()
    }

    /// All text below this node, elements separated by newlines.
    pub fn all_text(&self) -> String {
        let mut out = String::new();
        fn walk(n: &Node, out: &mut String) {
            if let Some(v) = n.value() {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&v);
            }
            for c in &n.children {
                walk(c, out);
            }
        }
        walk(self, &mut out);
        out
    }

    /// Depth-first search for the first element with this local name.
    pub fn find(&self, name: &str) -> Option<&Node> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }
}

/// A parsed MML document: its family, header and module items (or one bare module).
#[derive(Debug, Clone, PartialEq)]
pub struct MmlDocument {
    /// Namespace family.
    pub family: Family,
    /// `MmlHeader`, when the document is a full MML instance.
    pub header: Option<model::Header>,
    /// Module items in document order.
    pub items: Vec<model::Item>,
    /// When the document is a bare shared component (a name, an address ...), its
    /// element name: there is no content module to map.
    pub shared_component: Option<String>,
}

impl MmlDocument {
    /// The facility that created the document, as written (the header's creator, else
    /// the first module item's): on shared EHRs this names the record's owner.
    pub fn creator_facility(&self) -> Option<&str> {
        let header = self.header.as_ref().and_then(|h| h.creator.as_ref());
        header
            .into_iter()
            .chain(self.items.iter().filter_map(|i| i.doc_info.creator.as_ref()))
            .find_map(|c| c.facility_id.as_deref().filter(|f| !f.trim().is_empty()))
    }
}

/// The MML format.
pub struct Mml;

impl SourceFormat for Mml {
    type Model = MmlDocument;
    const NAME: &'static str = "mml";
    fn parse(bytes: &[u8], options: &ParseOptions) -> Result<MmlDocument, SourceError> {
        parse(bytes, options)
    }
}

use crate::xml::{err_at as err, Lines};

/// The encoding named in the XML declaration, if any.
fn declared_encoding(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(200)];
    let head = std::str::from_utf8(head)
        .ok()
        .or_else(|| std::str::from_utf8(&head[..head.iter().position(|&b| b >= 0x80).unwrap_or(0)]).ok())?;
    if !head.starts_with("<?xml") {
        return None;
    }
    let decl = &head[..head.find("?>")?];
    let i = decl.find("encoding")?;
    let rest = decl[i + 8..].trim_start().strip_prefix('=')?.trim_start();
    let q = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let body = &rest[1..];
    Some(body[..body.find(q)?].to_string())
}

/// Decode (UTF-8 unless the declaration or configuration says Shift_JIS) and parse.
pub fn parse(bytes: &[u8], options: &ParseOptions) -> Result<MmlDocument, SourceError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(SourceError::at(
            Location::default(),
            format!("document of {} bytes exceeds the {MAX_DOCUMENT_BYTES}-byte limit", bytes.len()),
        ));
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let charset = match options.force_charset {
        Some(c) => c,
        None => match declared_encoding(bytes) {
            Some(e) => Charset::from_name(&e).ok_or_else(|| {
                SourceError::at(
                    Location::default(),
                    format!("XML encoding `{e}` is not supported (UTF-8 or Shift_JIS)"),
                )
            })?,
            None => options.default_charset.unwrap_or(Charset::Utf8),
        },
    };
    let text = text::decode(bytes, charset).map_err(|e| {
        let line = e.prefix.matches('\n').count() + 1;
        SourceError::at(
            Location { line: Some(line), offset: Some(e.offset), ..Default::default() },
            format!("bytes are not valid {}", e.charset),
        )
    })?;
    parse_str(&text)
}

struct Builder {
    stack: Vec<Node>,
    nodes: usize,
    text_bytes: usize,
}

/// Parse decoded XML text.
pub fn parse_str(text: &str) -> Result<MmlDocument, SourceError> {
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().expand_empty_elements = true;
    let mut family: Option<Family> = None;
    let mut lines = Lines::default();
    let mut header = None;
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut unit: Option<Builder> = None;
    let mut saw_root = false;
    let mut root: Option<(String, String)> = None;
    loop {
        let pos = reader.buffer_position() as usize;
        let (res, ev) = match reader.read_resolved_event() {
            Ok(x) => x,
            Err(e) => return Err(err(text, reader.error_position() as usize, format!("malformed XML: {e}"))),
        };
        let ns = crate::xml::namespace(text, pos, &res)?;
        match ev {
            Event::DocType(_) => {
                return Err(err(text, pos, "DOCTYPE declarations are not accepted (no DTDs, no entity definitions)"))
            }
            Event::Start(start) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(err(text, pos, format!("elements nested deeper than {MAX_DEPTH}")));
                }
                saw_root = true;
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                if root.is_none() {
                    root = Some((name.clone(), ns.clone()));
                }
                if ns.contains("medxml.net/MML") && family.is_none() {
                    family = Some(if ns.contains("/MML/v4/") { Family::V4 } else { Family::V23 });
                }
                let mut attrs = Vec::new();
                for a in start.attributes() {
                    let a = a.map_err(|e| err(text, pos, format!("malformed attribute: {e}")))?;
                    let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
                    if a.key.as_ref().starts_with(b"xmlns") {
                        if key == "xmlns" || a.key.as_ref().starts_with(b"xmlns:") {
                            let v = String::from_utf8_lossy(&a.value).into_owned();
                            if v.contains("medxml.net/MML") && family.is_none() && v.contains("/MML/v4/") {
                                family = Some(Family::V4);
                            }
                        }
                        continue;
                    }
                    let v =
                        a.unescape_value().map_err(|e| err(text, pos, format!("attribute `{key}`: {e}")))?.into_owned();
                    attrs.push((key, v));
                }
                if name == "Mml" && attrs.iter().any(|(k, v)| k == "version" && v.starts_with('2')) {
                    family = Some(Family::V23);
                }
                let node = Node {
                    name: name.clone(),
                    ns,
                    attrs,
                    children: vec![],
                    text: String::new(),
                    line: lines.at(text, pos),
                };
                match unit.as_mut() {
                    Some(b) => {
                        b.nodes += 1;
                        if b.nodes > MAX_NODES {
                            return Err(err(text, pos, format!("more than {MAX_NODES} elements in one module")));
                        }
                        b.stack.push(node);
                    }
                    None if name == "MmlModuleItem"
                        || name == "MmlHeader"
                        || (name.ends_with("Module") && depth == 1) =>
                    {
                        unit = Some(Builder { stack: vec![node], nodes: 1, text_bytes: 0 });
                    }
                    None => {}
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if let Some(b) = unit.as_mut() {
                    let done = b.stack.pop().unwrap_or_default();
                    match b.stack.last_mut() {
                        Some(parent) => {
                            // xhtml:br inside text is a line break.
                            if done.name == "br" && done.children.is_empty() && done.text.is_empty() {
                                parent.text.push('\n');
                            } else {
                                parent.children.push(done);
                            }
                        }
                        None => {
                            unit = None;
                            match done.name.as_str() {
                                "MmlHeader" => header = Some(model::Header::from_node(&done)),
                                "MmlModuleItem" => items.push(model::Item::from_item(&done)),
                                _ => items.push(model::Item::bare(&done)),
                            }
                        }
                    }
                }
            }
            Event::Text(t) => {
                if let Some(b) = unit.as_mut() {
                    let s = t.decode().map_err(|e| err(text, pos, format!("text: {e}")))?;
                    push_text(b, &s, text, pos)?;
                }
            }
            Event::CData(t) => {
                if let Some(b) = unit.as_mut() {
                    let s = t.decode().map_err(|e| err(text, pos, format!("CDATA: {e}")))?;
                    push_text(b, &s, text, pos)?;
                }
            }
            Event::GeneralRef(r) => {
                let c = crate::xml::resolve_ref(&r).map_err(|m| err(text, pos, m))?;
                if let Some(b) = unit.as_mut() {
                    push_text(b, &c, text, pos)?;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(err(text, 0, "no XML element found"));
    }
    let mut shared_component = None;
    if header.is_none() && items.is_empty() {
        match root {
            Some((name, ns)) if ns.contains("medxml.net/MML") && ns.contains("SharedComponent") => {
                shared_component = Some(name)
            }
            _ => return Err(err(text, 0, "no MML header, module item or content module found")),
        }
    }
    Ok(MmlDocument { family: family.unwrap_or(Family::V4), header, items, shared_component })
}

fn push_text(b: &mut Builder, s: &str, text: &str, pos: usize) -> Result<(), SourceError> {
    b.text_bytes += s.len();
    if b.text_bytes > MAX_TEXT {
        return Err(err(text, pos, format!("more than {MAX_TEXT} bytes of text in one module")));
    }
    if let Some(n) = b.stack.last_mut() {
        n.text.push_str(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Mml xmlns="http://www.medxml.net/MML/v4/base/1.0" xmlns:mmlRd="http://www.medxml.net/MML/v4/ContentModule/RegisteredDiagnosis/1.0" xmlns:x="http://www.w3.org/1999/xhtml">
<MmlBody><MmlModuleItem><docInfo contentModuleType="registeredDiagnosis"><docId><uid>u1</uid></docId></docInfo>
<content><mmlRd:RegisteredDiagnosisModule><mmlRd:diagnosis mmlRd:code="E11" mmlRd:system="ICD10">糖尿病&amp;合併症<x:br/>二行目</mmlRd:diagnosis></mmlRd:RegisteredDiagnosisModule></content></MmlModuleItem></MmlBody></Mml>"#;

    #[test]
    fn parses_items_with_namespaces_entities_and_br() {
        let d = parse_str(DOC).unwrap();
        assert_eq!(d.family, Family::V4);
        assert_eq!(d.items.len(), 1);
        let m = &d.items[0].modules[0];
        let model::Module::Diagnosis(dx) = m else { panic!("{m:?}") };
        assert_eq!(dx.name.as_deref(), Some("糖尿病&合併症\n二行目"));
        assert_eq!(dx.code.as_deref(), Some("E11"));
        assert_eq!(d.items[0].doc_info.uid.as_deref(), Some("u1"));
    }

    #[test]
    fn refuses_dangerous_or_malformed_xml() {
        let cases = [
            (r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>"#, "DOCTYPE"),
            (
                r#"<mmlRd:RegisteredDiagnosisModule xmlns:mmlRd="http://www.medxml.net/MML/v4/ContentModule/RegisteredDiagnosis/1.0">&xxe;</mmlRd:RegisteredDiagnosisModule>"#,
                "not defined",
            ),
            ("<a><b></a>", "malformed"),
            ("", "no XML element"),
            ("<p:x/>", "not declared"),
        ];
        for (input, want) in cases {
            let e = parse_str(input).unwrap_err().to_string();
            assert!(e.contains(want), "{input}: {e}");
        }
        let deep = format!(
            "<TestModule xmlns=\"http://www.medxml.net/MML/v4/ContentModule/test/1.0\">{}{}</TestModule>",
            "<a>".repeat(100),
            "</a>".repeat(100)
        );
        assert!(parse_str(&deep).unwrap_err().to_string().contains("deeper"));
        let e = parse(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><x>\xff</x>", &ParseOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn odd_declarations_do_not_panic() {
        // Found by the fuzzer: a multi-byte character where the quote should be.
        assert!(declared_encoding("<?xml version=\"1.0\" encoding=学附属病院\n\"UTF-8\"?>".as_bytes()).is_none());
        assert_eq!(declared_encoding(b"<?xml version='1.0' encoding='Shift_JIS'?>").as_deref(), Some("Shift_JIS"));
    }

    #[test]
    fn shift_jis_declared_documents_decode() {
        let xml = "<?xml version=\"1.0\" encoding=\"Shift_JIS\"?><mmlRd:RegisteredDiagnosisModule xmlns:mmlRd=\"http://www.medxml.net/MML/v4/ContentModule/RegisteredDiagnosis/1.0\"><mmlRd:diagnosis>高血圧症</mmlRd:diagnosis></mmlRd:RegisteredDiagnosisModule>";
        let (bytes, _, _) = encoding_rs::SHIFT_JIS.encode(xml);
        let d = parse(&bytes, &ParseOptions::default()).unwrap();
        let model::Module::Diagnosis(dx) = &d.items[0].modules[0] else { panic!() };
        assert_eq!(dx.name.as_deref(), Some("高血圧症"));
    }
}
