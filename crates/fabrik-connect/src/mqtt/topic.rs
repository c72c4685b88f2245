//! MQTT topic names and filters: validation, matching (with the `$`-topic rule), and
//! coverage (does filter A match every topic filter B matches?), which the ACLs use to decide
//! whether a subscription stays inside what a client may read.

use std::fmt;

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicError(pub &'static str);

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

const MAX_TOPIC_BYTES: usize = 65_535;

/// Checks a topic name a client publishes to: not empty, no wildcards, no NUL.
pub fn validate_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError("topic name is empty"));
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError("topic name is longer than 65535 bytes"));
    }
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError("topic name contains a wildcard (`+` or `#`)"));
    }
    if topic.contains('\0') {
        return Err(TopicError("topic name contains NUL"));
    }
    Ok(())
}

/// Checks a topic filter: `+` only as a whole level, `#` only as the whole last level.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError("topic filter is empty"));
    }
    if filter.len() > MAX_TOPIC_BYTES {
        return Err(TopicError("topic filter is longer than 65535 bytes"));
    }
    if filter.contains('\0') {
        return Err(TopicError("topic filter contains NUL"));
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError(
                "`#` must be the whole last level of a topic filter",
            ));
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError("`+` must be a whole level of a topic filter"));
        }
    }
    Ok(())
}

/// Splits a shared-subscription filter `$share/{group}/{filter}` (MQTT 5 §4.8.2) into its
/// group name and the filter proper; `Ok(None)` for an ordinary filter. The group name must be
/// a non-empty level without wildcards, and the filter proper must be valid.
pub fn split_shared(filter: &str) -> Result<Option<(&str, &str)>, TopicError> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError(
            "a shared subscription needs `$share/{group}/{filter}`",
        ));
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError(
            "the group name of a shared subscription must be a non-empty level without `+` or `#`",
        ));
    }
    validate_filter(inner)?;
    Ok(Some((group, inner)))
}

/// True if `filter` matches the topic name `topic`. Filters starting with a wildcard do not
/// match topics starting with `$` (MQTT 3.1.1 §4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if every topic that `filter` matches is also matched by `pattern` (both valid
/// filters). Used to check that a requested subscription stays within an ACL pattern.
pub fn covers(pattern: &str, filter: &str) -> bool {
    // A pattern starting with a wildcard matches no `$` topic; a filter starting with a
    // literal `$` level only matches `$` topics.
    if filter.starts_with('$') && (pattern.starts_with('+') || pattern.starts_with('#')) {
        return false;
    }
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            // `a/#` also matches `a`, so a trailing `#` covers anything from here on.
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(pl), Some(fl)) if pl != "+" && pl == fl && fl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True if some topic name matches both filters (valid filters).
pub fn overlaps(a: &str, b: &str) -> bool {
    // Wildcards at the first level match no `$` topic.
    let a_dollar = a.starts_with('$');
    let b_dollar = b.starts_with('$');
    if (a_dollar && (b.starts_with('+') || b.starts_with('#')))
        || (b_dollar && (a.starts_with('+') || a.starts_with('#')))
    {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(p), Some(q)) if p == q => {}
            (None, None) => return true,
            // `a/#` matches `a`: one side ending while the other has only `#` left.
            (None, Some(_)) | (Some(_), None) => return false,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_filters_split_into_group_and_filter() {
        assert_eq!(split_shared("a/b"), Ok(None));
        assert_eq!(split_shared("$share/g/a/+"), Ok(Some(("g", "a/+"))));
        assert_eq!(split_shared("$share/g/#"), Ok(Some(("g", "#"))));
        assert!(split_shared("$share/g").is_err());
        assert!(split_shared("$share//a").is_err());
        assert!(split_shared("$share/g+/a").is_err());
        assert!(split_shared("$share/g/a#").is_err());
    }

    #[test]
    fn names_and_filters_are_validated() {
        assert!(validate_name("a/b").is_ok());
        assert!(validate_name("/").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/+").is_err());
        assert!(validate_name("a/#").is_err());
        assert!(validate_name("a\0b").is_err());
        for ok in ["#", "+", "a/+/b", "a/#", "+/+", "/#", "a//b"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a", "a/++"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_follows_the_specification() {
        let yes = [
            ("a/b", "a/b"),
            ("a/+", "a/b"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("#", "a/b"),
            ("+/+", "/a"),
            ("/+", "/a"),
            ("+", "a"),
            ("$SYS/#", "$SYS/x"),
            ("a//b", "a//b"),
            ("a/+/b", "a//b"),
        ];
        for (f, t) in yes {
            assert!(matches(f, t), "{f} should match {t}");
        }
        let no = [
            ("a/b", "a"),
            ("a/+", "a"),
            ("a/+", "a/b/c"),
            ("+", "/a"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("a/b", "a/b/c"),
        ];
        for (f, t) in no {
            assert!(!matches(f, t), "{f} should not match {t}");
        }
    }

    #[test]
    fn coverage_never_widens() {
        let yes = [
            ("devices/d1/#", "devices/d1/#"),
            ("devices/d1/#", "devices/d1"),
            ("devices/d1/#", "devices/d1/+/x"),
            ("devices/+/cmd", "devices/d1/cmd"),
            ("devices/+/cmd", "devices/+/cmd"),
            ("#", "a/#"),
            ("#", "+/+"),
        ];
        for (p, f) in yes {
            assert!(covers(p, f), "{p} should cover {f}");
        }
        let no = [
            ("devices/d1/#", "devices/+/#"),
            ("devices/d1/#", "devices/#"),
            ("devices/d1/#", "#"),
            ("devices/+/cmd", "devices/#"),
            ("devices/+/cmd", "devices/d1/#"),
            ("devices/d1/cmd", "devices/d1/+"),
            ("devices/d1/cmd", "devices/+/cmd"),
            ("#", "$SYS/#"),
            ("+/x", "$SYS/x"),
        ];
        for (p, f) in no {
            assert!(!covers(p, f), "{p} should not cover {f}");
        }
    }

    #[test]
    fn overlap_agrees_with_matching_on_samples() {
        let filters = [
            "#", "+", "a/#", "a/+", "a/b", "+/b", "a/+/c", "+/+/+", "a/b/#", "$s/#", "$s/+", "/#",
        ];
        let topics = [
            "a", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "x/y/z", "$s/a", "$s", "/a", "/", "a/b/c/d",
        ];
        for p in filters {
            for f in filters {
                let witness = topics.iter().any(|t| matches(p, t) && matches(f, t));
                if witness {
                    assert!(overlaps(p, f), "{p} and {f} share a topic");
                }
            }
        }
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("#", "$SYS/x"));
        assert!(overlaps("a/#", "a"));
    }

    #[test]
    fn coverage_agrees_with_matching_on_samples() {
        // Whenever covers(p, f), every sample topic f matches is also matched by p.
        let filters = [
            "#", "+", "a/#", "a/+", "a/b", "+/b", "a/+/c", "+/+/+", "a/b/#", "$s/#", "$s/+", "/#",
        ];
        let topics = [
            "a", "a/b", "a/c", "b/b", "a/b/c", "a/x/c", "x/y/z", "$s/a", "$s", "/a", "/", "a/b/c/d",
        ];
        for p in filters {
            for f in filters {
                if covers(p, f) {
                    for t in topics {
                        assert!(
                            !matches(f, t) || matches(p, t),
                            "covers({p}, {f}) but {f} matches {t} and {p} does not"
                        );
                    }
                }
            }
        }
    }
}
