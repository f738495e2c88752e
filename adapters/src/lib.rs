//! Source-format adapters: one parser per format, each turning bytes into a typed
//! source model (parse, don't validate) behind the [`SourceFormat`] trait. Mapping to
//! FHIR happens in `kakehashi-mappings`, never here.

pub mod cda;
pub mod hl7v2;
pub mod jahis_rx;
pub mod mml;
pub mod ss_mix2;
pub mod text;
pub mod xml;

use std::fmt;

/// Where in a source a problem is. Every field is optional because formats differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// File path, when the source is a file.
    pub file: Option<String>,
    /// 1-based segment (HL7) or record (CSV) or line (XML) number.
    pub segment: Option<usize>,
    /// Segment id or element name.
    pub segment_id: Option<String>,
    /// 1-based field number within the segment or record.
    pub field: Option<usize>,
    /// Byte offset from the start of the source.
    pub offset: Option<usize>,
    /// 1-based line (XML).
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(file) = &self.file {
            parts.push(file.clone());
        }
        match (self.segment, &self.segment_id) {
            (Some(n), Some(id)) => parts.push(format!("segment {n} ({id})")),
            (Some(n), None) => parts.push(format!("segment {n}")),
            (None, Some(id)) => parts.push(id.clone()),
            (None, None) => {}
        }
        if let Some(line) = self.line {
            parts.push(format!("line {line}"));
        }
        if let Some(field) = self.field {
            parts.push(format!("field {field}"));
        }
        if let Some(o) = self.offset {
            parts.push(format!("byte offset {o}"));
        }
        if parts.is_empty() {
            f.write_str("input")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// A source that could not be parsed, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct SourceError {
    /// Where (boxed: errors travel through every parser's `Result`, which stays small).
    pub location: Box<Location>,
    /// What.
    pub message: String,
}

impl SourceError {
    /// An error at a location.
    pub fn at(location: Location, message: impl Into<String>) -> Self {
        SourceError { location: Box::new(location), message: message.into() }
    }

    /// The same error, naming the file it came from.
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        self.location.file = Some(file.into());
        self
    }
}

/// One parser per source format, all the same shape.
pub trait SourceFormat {
    /// The typed model a source parses into.
    type Model;
    /// The format's name as used by the CLI (`--from`).
    const NAME: &'static str;
    /// Parse one source document.
    fn parse(bytes: &[u8], options: &ParseOptions) -> Result<Self::Model, SourceError>;
}

/// Options common to every parser.
#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    /// Character set to assume when the source does not declare one.
    pub default_charset: Option<text::Charset>,
    /// Character set to use whatever the source declares (site configuration).
    pub force_charset: Option<text::Charset>,
}
