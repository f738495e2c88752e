//! Safe XML reading shared by the XML formats: DOCTYPEs refused (so no entity
//! definitions, no expansion, no external entities), only the five XML entities and
//! character references resolved, and a bounded element tree for a whole document
//! (CDA) with limits on depth, element count and text.

use crate::mml::Node;
use crate::{Location, SourceError};
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

/// Limits for a whole-document tree.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting.
    pub depth: usize,
    /// Most elements.
    pub nodes: usize,
    /// Most text bytes.
    pub text: usize,
}

/// Line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Line numbers of increasing offsets, counted once: reading an element's line from
/// the start of the text each time is quadratic in the document's size.
#[derive(Debug, Default)]
pub struct Lines {
    offset: usize,
    line: usize,
}

impl Lines {
    /// The 1-based line of `offset`; offsets must not decrease.
    pub fn at(&mut self, text: &str, offset: usize) -> usize {
        let offset = offset.min(text.len());
        if offset < self.offset {
            return line_of(text, offset);
        }
        self.line += memchr_count(&text.as_bytes()[self.offset..offset]);
        self.offset = offset;
        self.line + 1
    }
}

fn memchr_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// An error at a byte offset, located by line.
pub fn err_at(text: &str, offset: usize, msg: impl Into<String>) -> SourceError {
    SourceError::at(Location { line: Some(line_of(text, offset)), offset: Some(offset), ..Default::default() }, msg)
}

/// The text a general reference stands for: the five XML entities and character
/// references; anything else is refused.
pub fn resolve_ref(r: &BytesRef<'_>) -> Result<String, String> {
    match r.resolve_char_ref() {
        Ok(Some(c)) => Ok(c.to_string()),
        Ok(None) => {
            let name = r.decode().map_err(|e| format!("entity: {e}"))?;
            Ok(match name.as_ref() {
                "lt" => "<",
                "gt" => ">",
                "amp" => "&",
                "apos" => "'",
                "quot" => "\"",
                other => return Err(format!("entity `&{other};` is not defined (only the five XML entities and character references are accepted)")),
            }
            .to_string())
        }
        Err(e) => Err(format!("character reference: {e}")),
    }
}

/// Attributes by local name, namespace declarations left out.
pub fn attributes(start: &BytesStart<'_>) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for a in start.attributes() {
        let a = a.map_err(|e| format!("malformed attribute: {e}"))?;
        if a.key.as_ref().starts_with(b"xmlns") {
            continue;
        }
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
        let v = a.unescape_value().map_err(|e| format!("attribute `{key}`: {e}"))?.into_owned();
        out.push((key, v));
    }
    Ok(out)
}

/// Namespace URI of a resolved name.
pub fn namespace(text: &str, pos: usize, res: &ResolveResult<'_>) -> Result<String, SourceError> {
    match res {
        ResolveResult::Bound(n) => Ok(String::from_utf8_lossy(n.as_ref()).into_owned()),
        ResolveResult::Unknown(p) => {
            Err(err_at(text, pos, format!("namespace prefix `{}` is not declared", String::from_utf8_lossy(p))))
        }
        ResolveResult::Unbound => Ok(String::new()),
    }
}

/// Read a whole document into one bounded tree.
pub fn parse_tree(text: &str, limits: Limits) -> Result<Node, SourceError> {
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    reader.config_mut().expand_empty_elements = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let (mut nodes, mut text_bytes) = (0usize, 0usize);
    let mut lines = Lines::default();
    loop {
        let pos = reader.buffer_position() as usize;
        let (res, ev) = match reader.read_resolved_event() {
            Ok(x) => x,
            Err(e) => return Err(err_at(text, reader.error_position() as usize, format!("malformed XML: {e}"))),
        };
        let ns = namespace(text, pos, &res)?;
        match ev {
            Event::DocType(_) => {
                return Err(err_at(text, pos, "DOCTYPE declarations are not accepted (no DTDs, no entity definitions)"))
            }
            Event::Start(start) => {
                if root.is_some() {
                    return Err(err_at(text, pos, "content after the document element"));
                }
                nodes += 1;
                if stack.len() >= limits.depth {
                    return Err(err_at(text, pos, format!("elements nested deeper than {}", limits.depth)));
                }
                if nodes > limits.nodes {
                    return Err(err_at(text, pos, format!("more than {} elements", limits.nodes)));
                }
                let name = String::from_utf8_lossy(start.local_name().as_ref()).into_owned();
                let attrs = attributes(&start).map_err(|m| err_at(text, pos, m))?;
                stack.push(Node { name, ns, attrs, children: vec![], text: String::new(), line: lines.at(text, pos) });
            }
            Event::End(_) => {
                let done = stack.pop().unwrap_or_default();
                match stack.last_mut() {
                    // A line break in narrative text stays a line break.
                    Some(parent) if done.name == "br" && done.children.is_empty() && done.text.is_empty() => {
                        parent.text.push('\n')
                    }
                    Some(parent) => parent.children.push(done),
                    None => root = Some(done),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| err_at(text, pos, format!("text: {e}")))?;
                push(&mut stack, &s, &mut text_bytes, limits, text, pos)?;
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| err_at(text, pos, format!("CDATA: {e}")))?;
                push(&mut stack, &s, &mut text_bytes, limits, text, pos)?;
            }
            Event::GeneralRef(r) => {
                let s = resolve_ref(&r).map_err(|m| err_at(text, pos, m))?;
                push(&mut stack, &s, &mut text_bytes, limits, text, pos)?;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    root.ok_or_else(|| err_at(text, 0, "no XML element found"))
}

fn push(
    stack: &mut [Node],
    s: &str,
    total: &mut usize,
    limits: Limits,
    text: &str,
    pos: usize,
) -> Result<(), SourceError> {
    *total += s.len();
    if *total > limits.text {
        return Err(err_at(text, pos, format!("more than {} bytes of text", limits.text)));
    }
    if let Some(n) = stack.last_mut() {
        n.text.push_str(s);
    }
    Ok(())
}

#[cfg(test)]
mod line_tests {
    #[test]
    fn lines_counted_once_match_lines_counted_from_the_start() {
        let text = "a\nbb\n\nccc\nd";
        let mut lines = super::Lines::default();
        for offset in 0..=text.len() {
            assert_eq!(lines.at(text, offset), super::line_of(text, offset), "offset {offset}");
        }
    }
}
