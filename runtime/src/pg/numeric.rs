//! PostgreSQL's binary `numeric` spelled out as the text `numeric_out` prints, digit for digit.
//!
//! Binary numeric is base-10000 digit groups with a weight (the power of 10000 of the first
//! group), a sign, and a display scale. Writing it out as text loses nothing, and lets the one
//! exact decimal reader (`pgrealm_schema::pgtext`) decide what a realm decimal can hold.

const POSITIVE: u16 = 0x0000;
const NEGATIVE: u16 = 0x4000;
const NAN: u16 = 0xC000;
const PLUS_INFINITY: u16 = 0xD000;
const MINUS_INFINITY: u16 = 0xF000;

/// The text of a binary numeric (`-12.3400`, `NaN`, `Infinity`).
pub(crate) fn to_text(raw: &[u8]) -> Result<String, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated binary numeric".to_owned())
    };
    let groups = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    if raw.len() != 8 + 2 * groups {
        return Err("binary numeric length does not match its digit count".into());
    }
    match sign {
        NAN => return Ok("NaN".into()),
        PLUS_INFINITY => return Ok("Infinity".into()),
        MINUS_INFINITY => return Ok("-Infinity".into()),
        POSITIVE | NEGATIVE => {}
        other => return Err(format!("unknown numeric sign {other:#06x}")),
    }
    let digits = (0..groups)
        .map(|i| {
            let d = word(4 + i)?;
            if d >= 10_000 {
                return Err(format!("numeric digit group {d} is not below 10000"));
            }
            Ok(d)
        })
        .collect::<Result<Vec<u16>, String>>()?;
    // Group i is worth 10000^(weight - i). The integer part holds groups with exponent >= 0.
    let group_at = |exponent: i64| -> u16 {
        let index = weight - exponent;
        if index < 0 {
            return 0;
        }
        usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut int_part = String::new();
    let mut exponent = weight;
    while exponent >= 0 {
        int_part.push_str(&format!("{:04}", group_at(exponent)));
        exponent -= 1;
    }
    let int_part = int_part.trim_start_matches('0');
    let mut text = String::new();
    if sign == NEGATIVE {
        text.push('-');
    }
    text.push_str(if int_part.is_empty() { "0" } else { int_part });
    // Every fractional group present, then cut or padded to the display scale.
    let lowest = (weight - groups as i64 + 1).min(-1);
    let mut frac = String::new();
    for exponent in (lowest..=-1).rev() {
        frac.push_str(&format!("{:04}", group_at(exponent)));
    }
    if frac.len() > dscale {
        // The server sends zeros past the display scale; anything else would be dropped.
        if frac.as_bytes()[dscale..].iter().any(|b| *b != b'0') {
            return Err("binary numeric has digits beyond its display scale".into());
        }
        frac.truncate(dscale);
    }
    while frac.len() < dscale {
        frac.push('0');
    }
    if dscale > 0 {
        text.push('.');
        text.push_str(&frac);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::to_text;

    fn raw(groups: &[u16], weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
        let mut out = Vec::new();
        for w in [groups.len() as u16, weight as u16, sign, dscale] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        out
    }

    #[test]
    fn spells_numeric_like_numeric_out() {
        assert_eq!(
            to_text(&raw(&[3950, 1234, 5600], 0, 0, 6)).unwrap(),
            "3950.123456"
        );
        assert_eq!(to_text(&raw(&[1], 1, 0x4000, 0)).unwrap(), "-10000");
        assert_eq!(to_text(&raw(&[5], -1, 0, 4)).unwrap(), "0.0005");
        assert_eq!(to_text(&raw(&[], 0, 0, 2)).unwrap(), "0.00");
        assert_eq!(to_text(&raw(&[12], 0, 0, 3)).unwrap(), "12.000");
        assert_eq!(to_text(&raw(&[], 0, 0xC000, 0)).unwrap(), "NaN");
        assert_eq!(to_text(&raw(&[], 0, 0xD000, 0)).unwrap(), "Infinity");
    }

    #[test]
    fn refuses_malformed_input() {
        assert!(to_text(&[0, 1]).is_err());
        assert!(to_text(&raw(&[10_000], 0, 0, 0)).is_err());
        assert!(
            to_text(&raw(&[1, 5], 0, 0, 0)).is_err(),
            "digits past the scale"
        );
    }
}
