//! Human-friendly durations (`500ms`, `10s`, `5m`, `2h`, `7d`, `1h30m`) and byte sizes (`64MiB`, `1GB`).

use std::time::Duration;

/// Parses a duration: a whole number followed by `ms`, `s`, `m`, `h`, `d` or `w`, or several
/// of them from the largest unit down, as Prometheus writes them (`1h30m`, `2m30s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let mut rest = text;
    let mut total: u64 = 0;
    let mut previous_unit = u64::MAX;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit; use ms, s, m, h, d or w (e.g. `30s`)"))?;
        let (number, after) = rest.split_at(split);
        let value: u64 = number.parse().map_err(|_| {
            if total == 0 && previous_unit == u64::MAX {
                format!("`{text}` does not start with a whole number")
            } else {
                format!("`{rest}` in `{text}` does not start with a whole number")
            }
        })?;
        let unit_length = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, remainder) = after.split_at(unit_length);
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{text}`; use ms, s, m, h, d or w"
                ));
            }
        };
        if millis_per_unit >= previous_unit {
            return Err(format!(
                "`{text}` repeats a unit or puts a smaller one first; write units from the \
                 largest down, each once (e.g. `1h30m`)"
            ));
        }
        previous_unit = millis_per_unit;
        total = value
            .checked_mul(millis_per_unit)
            .and_then(|millis| total.checked_add(millis))
            .ok_or_else(|| format!("`{text}` is too long"))?;
        rest = remainder;
    }
    if previous_unit == u64::MAX {
        return Err(format!(
            "`{text}` has no unit; use ms, s, m, h, d or w (e.g. `30s`)"
        ));
    }
    Ok(Duration::from_millis(total))
}

/// Parses a byte size: an integer with an optional unit `B`, `KB`, `MB`, `GB` (powers of 1000)
/// or `KiB`, `MiB`, `GiB` (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; use B, KB, MB, GB, KiB, MiB or GiB"
            ));
        }
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("2m30s"), Ok(Duration::from_secs(150)));
        assert_eq!(
            parse_duration("1h30m15s500ms"),
            Ok(Duration::from_millis(5_415_500))
        );
        assert_eq!(parse_duration(" 1d12h "), Ok(Duration::from_secs(129_600)));
        let disorder = parse_duration("30s2m").unwrap_err();
        assert!(disorder.contains("largest down"), "{disorder}");
        assert!(parse_duration("1m1m").is_err());
        assert!(
            parse_duration("1h30").is_err(),
            "a trailing number has no unit"
        );
        assert!(parse_duration("1h 30m").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("123"), Ok(123));
        assert!(parse_bytes("12 furlongs").is_err());
    }
}
