//! HL7 v2 TS/DT values to FHIR date and dateTime. Times without a zone are taken as
//! Japan Standard Time (+09:00): every source Kakehashi reads keeps local time.

/// A value that is not a valid HL7 date or timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")]
pub struct BadDateTime(pub String);

fn digits(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

fn in_range(v: &str, lo: u32, hi: u32) -> bool {
    v.parse::<u32>().map(|n| (lo..=hi).contains(&n)).unwrap_or(false)
}

/// `YYYY[MM[DD]]` → FHIR `date` (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`).
pub fn date(v: &str) -> Result<String, BadDateTime> {
    let v = v.trim();
    let bad = || BadDateTime(v.to_string());
    let d = v.get(..8.min(v.len())).ok_or_else(bad)?;
    if !digits(d) || !matches!(d.len(), 4 | 6 | 8) {
        return Err(bad());
    }
    let mut out = d[..4].to_string();
    if d.len() >= 6 {
        if !in_range(&d[4..6], 1, 12) {
            return Err(bad());
        }
        out.push('-');
        out.push_str(&d[4..6]);
    }
    if d.len() == 8 {
        if !in_range(&d[6..8], 1, 31) {
            return Err(bad());
        }
        out.push('-');
        out.push_str(&d[6..8]);
    }
    Ok(out)
}

/// HL7 TS → FHIR `dateTime`. Dates alone stay dates; times get seconds and a zone.
pub fn date_time(v: &str) -> Result<String, BadDateTime> {
    let v = v.trim();
    let bad = || BadDateTime(v.to_string());
    let (body, zone) = match v.find(['+', '-']) {
        Some(i) if i >= 4 => (&v[..i], Some(&v[i..])),
        _ => (v, None),
    };
    let (main, fraction) = body.split_once('.').unwrap_or((body, ""));
    if !digits(main) || !digits(fraction) || main.len() < 4 || main.len() > 14 || main.len() % 2 != 0 {
        return Err(bad());
    }
    let zone = match zone {
        None => None,
        Some(z) if z.len() == 5 && digits(&z[1..]) => Some(format!("{}:{}", &z[..3], &z[3..])),
        Some(_) => return Err(bad()),
    };
    if main.len() <= 8 {
        return date(main);
    }
    let day = date(&main[..8])?;
    let hh = &main[8..10];
    let mm = main.get(10..12).unwrap_or("00");
    let ss = main.get(12..14).unwrap_or("00");
    if !in_range(hh, 0, 23) || !in_range(mm, 0, 59) || !in_range(ss, 0, 60) {
        return Err(bad());
    }
    let zone = zone.unwrap_or_else(|| "+09:00".to_string());
    Ok(format!("{day}T{hh}:{mm}:{ss}{zone}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_dates_and_times() {
        assert_eq!(date("19480405").unwrap(), "1948-04-05");
        assert_eq!(date("194804").unwrap(), "1948-04");
        assert_eq!(date_time("20111220224447.3399").unwrap(), "2011-12-20T22:44:47+09:00");
        assert_eq!(date_time("201112191500").unwrap(), "2011-12-19T15:00:00+09:00");
        assert_eq!(date_time("20111219").unwrap(), "2011-12-19");
        assert_eq!(date_time("20111219150000+0000").unwrap(), "2011-12-19T15:00:00+00:00");
        for bad in ["", "abc", "19481305", "2011122", "20111219250000", "2011-12-19"] {
            assert!(date_time(bad).is_err(), "{bad}");
        }
    }
}
