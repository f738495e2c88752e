//! FHIR `instant` / `dateTime` text (RFC 3339, UTC) from the Unix times the store keeps.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Unix seconds as RFC 3339; None when out of range.
pub fn from_secs(secs: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs).ok()?.format(&Rfc3339).ok()
}

/// Unix microseconds as RFC 3339 (fraction kept); None when out of range.
pub fn from_micros(micros: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?.format(&Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc() {
        assert_eq!(super::from_secs(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(super::from_micros(1_700_000_000_123_456).as_deref(), Some("2023-11-14T22:13:20.123456Z"));
        assert_eq!(super::from_secs(i64::MAX), None);
    }
}
