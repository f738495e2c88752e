//! Text decoding: ISO-2022-JP, Shift_JIS (CP932) and UTF-8, strictly. An undecodable
//! byte sequence is an error with its byte offset; nothing is replaced by U+FFFD.

use encoding_rs::{DecoderResult, Encoding, ISO_2022_JP, SHIFT_JIS, UTF_8};

/// A character set Kakehashi decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// UTF-8.
    Utf8,
    /// ISO-2022-JP (JIS X 0208 in 7 bits), as SS-MIX2 prescribes (`~ISO IR87`).
    Iso2022Jp,
    /// Shift_JIS as Windows writes it (CP932 / Windows-31J).
    ShiftJis,
}

impl Charset {
    fn encoding(self) -> &'static Encoding {
        match self {
            Charset::Utf8 => UTF_8,
            Charset::Iso2022Jp => ISO_2022_JP,
            Charset::ShiftJis => SHIFT_JIS,
        }
    }

    /// The charset's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Charset::Utf8 => "UTF-8",
            Charset::Iso2022Jp => "ISO-2022-JP",
            Charset::ShiftJis => "Shift_JIS",
        }
    }

    /// Parse a configuration name (`utf-8`, `iso-2022-jp`, `shift_jis`, `cp932` ...).
    pub fn from_name(name: &str) -> Option<Charset> {
        match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "utf8" | "utf_8" => Some(Charset::Utf8),
            "iso_2022_jp" | "jis" => Some(Charset::Iso2022Jp),
            "shift_jis" | "sjis" | "cp932" | "ms932" | "windows_31j" => Some(Charset::ShiftJis),
            _ => None,
        }
    }
}

/// Bytes that are not valid in the charset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bytes at offset {offset} are not valid {charset}")]
pub struct DecodeError {
    /// Byte offset of the first invalid byte.
    pub offset: usize,
    /// Charset tried.
    pub charset: &'static str,
    /// The text decoded before the error, for locating it (segment, field).
    pub prefix: String,
}

/// Decode strictly.
pub fn decode(bytes: &[u8], charset: Charset) -> Result<String, DecodeError> {
    if charset == Charset::Utf8 {
        return match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(DecodeError {
                offset: e.valid_up_to(),
                charset: charset.name(),
                prefix: String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
            }),
        };
    }
    let mut decoder = charset.encoding().new_decoder_without_bom_handling();
    let cap = decoder.max_utf8_buffer_length_without_replacement(bytes.len()).unwrap_or(bytes.len() * 3 + 16);
    let mut out = String::with_capacity(cap);
    let mut read_total = 0;
    loop {
        let (result, read) = decoder.decode_to_string_without_replacement(&bytes[read_total..], &mut out, true);
        read_total += read;
        match result {
            DecoderResult::InputEmpty => return Ok(out),
            DecoderResult::OutputFull => out.reserve(bytes.len().max(64)),
            DecoderResult::Malformed(bad, extra) => {
                let offset = read_total.saturating_sub(bad as usize + extra as usize);
                return Err(DecodeError { offset, charset: charset.name(), prefix: out });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_japanese_in_each_charset() {
        let text = "患者^太郎|カンジャ";
        for cs in [Charset::Utf8, Charset::Iso2022Jp, Charset::ShiftJis] {
            let (bytes, _, bad) = cs.encoding().encode(text);
            assert!(!bad);
            assert_eq!(decode(&bytes, cs).unwrap(), text, "{cs:?}");
        }
    }

    #[test]
    fn invalid_bytes_are_located_not_replaced() {
        let e = decode(b"PID|abc\xff\xfe", Charset::Utf8).unwrap_err();
        assert_eq!(e.offset, 7);
        assert_eq!(e.prefix, "PID|abc");
        // An ISO-2022-JP escape into JIS X 0208 followed by an invalid byte pair.
        let e = decode(b"PID|\x1b$B\x7f\x7f\x1b(B", Charset::Iso2022Jp).unwrap_err();
        assert_eq!(e.prefix, "PID|");
        assert!(e.offset >= 4 && e.offset <= 9, "{}", e.offset);
        let e = decode(b"ok\x81", Charset::ShiftJis).unwrap_err();
        assert_eq!(e.offset, 2);
    }

    #[test]
    fn charset_names() {
        assert_eq!(Charset::from_name("Shift-JIS"), Some(Charset::ShiftJis));
        assert_eq!(Charset::from_name("CP932"), Some(Charset::ShiftJis));
        assert_eq!(Charset::from_name("utf-8"), Some(Charset::Utf8));
        assert_eq!(Charset::from_name("ebcdic"), None);
    }
}
