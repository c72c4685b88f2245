//! InfluxDB line protocol, parsed without copying.
//!
//! ```text
//! measurement[,tag=value...] field=value[,field=value...] [timestamp]
//! ```
//!
//! Escaping follows InfluxDB: in measurements `\,` and `\ `; in tag keys, tag values and field
//! keys also `\=`; in string field values `\"` and `\\`. A backslash before any other
//! character is kept as it is. Field values are floats (`1`, `1.5`, `-2e3`), signed integers
//! (`1i`), unsigned integers (`1u`), booleans (`t`, `true`, `F`, `FALSE`, ...) or double-quoted
//! strings. Blank lines and lines starting with `#` are skipped.
//!
//! Errors name the 1-based line and column (in characters) and the reason, so a client can
//! find the bad byte in a 5,000-line batch.

use std::borrow::Cow;

use crate::FieldType;

/// A parsed field value; strings borrow from the request body unless they had escapes.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    /// A float (no suffix).
    F64(f64),
    /// A signed integer (`i` suffix).
    I64(i64),
    /// An unsigned integer (`u` suffix).
    U64(u64),
    /// A boolean.
    Bool(bool),
    /// A double-quoted string.
    Str(Cow<'a, str>),
}

impl FieldValue<'_> {
    /// The type of this value.
    pub fn field_type(&self) -> FieldType {
        match self {
            Self::F64(_) => FieldType::Float,
            Self::I64(_) => FieldType::Integer,
            Self::U64(_) => FieldType::UInteger,
            Self::Bool(_) => FieldType::Boolean,
            Self::Str(_) => FieldType::String,
        }
    }
}

/// One parsed line. Reuse one `Line` across a body with [`parse_line`] to avoid allocating.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Line<'a> {
    /// The measurement (table).
    pub measurement: Cow<'a, str>,
    /// Tags in the order they were written.
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Fields; a key written twice in one line keeps its last value.
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// The timestamp as written (in the request's precision), if any.
    pub timestamp: Option<i64>,
    /// The 1-based line number in the body.
    pub line_number: usize,
}

/// Where and why a line failed to parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {reason}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What was wrong.
    pub reason: String,
}

/// Iterates over the non-blank, non-comment lines of a body with their 1-based numbers.
pub fn lines(body: &str) -> impl Iterator<Item = (usize, &str)> {
    // `split('\n')`, with the newline found by `memchr`'s vectorised search: the standard
    // library's scan was 4 % of the server's CPU on a load of 200-byte lines.
    let mut rest = Some(body);
    let pieces = std::iter::from_fn(move || {
        let text = rest?;
        match memchr::memchr(b'\n', text.as_bytes()) {
            Some(at) => {
                rest = Some(&text[at + 1..]);
                Some(&text[..at])
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    });
    pieces.enumerate().filter_map(|(i, raw)| {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() || trimmed.starts_with('#') {
            None
        } else {
            Some((i + 1, trimmed))
        }
    })
}

/// Parses every line of a body into owned-or-borrowed lines; stops at the first error.
pub fn parse_body(body: &str) -> Result<Vec<Line<'_>>, LineError> {
    let mut out = Vec::new();
    for (number, text) in lines(body) {
        let mut line = Line::default();
        parse_line(text, number, &mut line)?;
        out.push(line);
    }
    Ok(out)
}

/// Parses one line (without its newline) into `out`, reusing `out`'s vectors.
pub fn parse_line<'a>(
    text: &'a str,
    line_number: usize,
    out: &mut Line<'a>,
) -> Result<(), LineError> {
    out.tags.clear();
    out.fields.clear();
    out.timestamp = None;
    out.line_number = line_number;
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        line_number,
    };
    out.measurement = p.measurement()?;
    if p.peek() == Some(b',') {
        p.pos += 1;
        p.tags(&mut out.tags)?;
    }
    p.expect_spaces("expected a space and fields after the measurement and tags")?;
    p.fields(&mut out.fields)?;
    out.timestamp = p.timestamp()?;
    Ok(())
}

/// The length of a line's series key (measurement and tags, as written) when it can be taken
/// verbatim: the bytes before the first space, if no backslash comes before it. Lines of one
/// series share this text, so a caller can cache what it parsed to.
pub fn series_key_len(text: &str) -> Option<usize> {
    let at = memchr::memchr2(b' ', b'\\', text.as_bytes())?;
    (text.as_bytes()[at] == b' ').then_some(at)
}

/// The field keys and types of a line, in order, as a template for the next lines of the same
/// table: consecutive lines of a table usually repeat their fields, so
/// [`parse_known_fields`] checks each key with one comparison instead of parsing it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldLayout {
    /// Each key as written, with its `=`; keys written with escapes never make a layout.
    keys: Vec<(Box<[u8]>, FieldType)>,
}

impl FieldLayout {
    /// The layout of a parsed line, if it can be one: no string fields (their quoting and
    /// escapes stay with the general parser) and no key that was unescaped.
    pub fn of_line(line: &Line<'_>) -> Option<Self> {
        let keys = line
            .fields
            .iter()
            .map(|(key, value)| {
                let Cow::Borrowed(key) = key else {
                    return None;
                };
                let mut written = Vec::with_capacity(key.len() + 1);
                written.extend_from_slice(key.as_bytes());
                written.push(b'=');
                Some((written.into_boxed_slice(), numeric_type(value)?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { keys })
    }

    /// True when `line` has exactly these fields, in this order, with these types.
    pub fn matches(&self, line: &Line<'_>) -> bool {
        self.keys.len() == line.fields.len()
            && self
                .keys
                .iter()
                .zip(&line.fields)
                .all(|((written, ty), (key, value))| {
                    written.strip_suffix(b"=") == Some(key.as_bytes())
                        && numeric_type(value) == Some(*ty)
                })
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True for a layout without fields (never made by [`FieldLayout::of_line`] for a valid line).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The type of a value a layout can hold: any but a string.
fn numeric_type(value: &FieldValue<'_>) -> Option<FieldType> {
    Some(value.field_type()).filter(|ty| *ty != FieldType::String)
}

/// Parses the fields and timestamp of `text` after its series key (`text[..key_len]`, see
/// [`series_key_len`]) when they are exactly `layout`'s fields, in its order, each a valid
/// value of its type; `values` receives them in that order. Returns the timestamp as written
/// (`Some(None)` when there is none), or `None` when the line differs from the layout in any
/// way, valid or not: the caller then parses it with [`parse_line_fields`], which accepts
/// every valid line and names the error of an invalid one. Whatever this accepts,
/// [`parse_line_fields`] parses to the same values.
pub fn parse_known_fields(
    text: &str,
    key_len: usize,
    layout: &FieldLayout,
    values: &mut Vec<FieldValue<'static>>,
) -> Option<Option<i64>> {
    let bytes = text.as_bytes();
    let mut pos = key_len;
    if bytes.get(pos) != Some(&b' ') {
        return None;
    }
    while bytes.get(pos) == Some(&b' ') {
        pos += 1;
    }
    values.clear();
    for (i, (key, ty)) in layout.keys.iter().enumerate() {
        if i > 0 {
            if bytes.get(pos) != Some(&b',') {
                return None;
            }
            pos += 1;
        }
        if !has_prefix(bytes.get(pos..)?, key) {
            return None;
        }
        pos += key.len();
        let start = pos;
        // Values are a few bytes: a plain scan beats setting up a vectorised search.
        while let Some(&b) = bytes.get(pos) {
            if b == b',' || b == b' ' {
                break;
            }
            pos += 1;
        }
        values.push(known_value(&text[start..pos], *ty)?);
    }
    match bytes.get(pos) {
        None => Some(None),
        Some(b' ') => known_timestamp(bytes, pos),
        Some(_) => None,
    }
}

/// The timestamp after the fields as [`Parser::timestamp`] reads it, for plain decimal
/// digits with an optional minus sign; `None` for anything else.
fn known_timestamp(bytes: &[u8], mut pos: usize) -> Option<Option<i64>> {
    while matches!(bytes.get(pos), Some(b' ' | b'\t')) {
        pos += 1;
    }
    if pos == bytes.len() {
        return Some(None);
    }
    let negative = bytes[pos] == b'-';
    pos += usize::from(negative);
    let start = pos;
    let mut value: i64 = 0;
    while let Some(&b) = bytes.get(pos) {
        if !b.is_ascii_digit() {
            break;
        }
        let digit = i64::from(b - b'0');
        // Accumulated with the sign, so that i64::MIN parses as it does with `str::parse`.
        value = value.checked_mul(10)?;
        value = if negative {
            value.checked_sub(digit)?
        } else {
            value.checked_add(digit)?
        };
        pos += 1;
    }
    if pos == start {
        return None;
    }
    while matches!(bytes.get(pos), Some(b' ' | b'\t')) {
        pos += 1;
    }
    (pos == bytes.len()).then_some(Some(value))
}

/// `hay.starts_with(prefix)` for the short keys of a layout, eight bytes at a time, without a
/// call to `memcmp`.
#[inline(always)]
fn has_prefix(hay: &[u8], prefix: &[u8]) -> bool {
    if hay.len() < prefix.len() {
        return false;
    }
    let hay = &hay[..prefix.len()];
    let mut words = hay.chunks_exact(8).zip(prefix.chunks_exact(8));
    let words_equal = words.all(|(a, b)| {
        let word = |c: &[u8]| c.try_into().map_or(0, u64::from_ne_bytes);
        word(a) == word(b)
    });
    let tail = prefix.len() / 8 * 8;
    words_equal && hay[tail..].iter().zip(&prefix[tail..]).all(|(a, b)| a == b)
}

/// `[+-]digits[.digits]` with at most 15 digits in all, the shape of nearly every float a
/// sensor sends, parsed as `str::parse::<f64>` parses it; `None` for anything else.
///
/// Below 10^15 the digits are an exact integer `m`, and 10^k is exact for k ≤ 22, so the one
/// correctly rounded division `m / 10^k` is the correctly rounded value of the decimal (the
/// classic exact fast path). It skips the general parser's set-up, which cost more than the
/// arithmetic on these short values.
pub(crate) fn short_decimal(raw: &[u8]) -> Option<f64> {
    const POWERS_OF_TEN: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (negative, digits) = match raw.first()? {
        b'-' => (true, &raw[1..]),
        b'+' => (false, &raw[1..]),
        _ => (false, raw),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut mantissa: u64 = 0;
    let mut count = 0;
    let mut fraction_digits = None;
    for (i, &b) in digits.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                count += 1;
            }
            b'.' if fraction_digits.is_none() => fraction_digits = Some(digits.len() - i - 1),
            _ => return None,
        }
    }
    if count == 0 || count > 15 {
        return None;
    }
    let magnitude = mantissa as f64 / POWERS_OF_TEN[fraction_digits.unwrap_or(0)];
    Some(if negative { -magnitude } else { magnitude })
}

/// A value as [`Parser::field_value`] parses it, when it has type `ty`; `None` otherwise.
fn known_value(raw: &str, ty: FieldType) -> Option<FieldValue<'static>> {
    match ty {
        FieldType::Float => {
            let first = *raw.as_bytes().first()?;
            if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
                return None;
            }
            if let Some(value) = short_decimal(raw.as_bytes()) {
                return Some(FieldValue::F64(value));
            }
            // `1i` and `1u` fail here as the general parser reads them as other types.
            raw.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(FieldValue::F64)
        }
        FieldType::Integer => raw.strip_suffix('i')?.parse().ok().map(FieldValue::I64),
        FieldType::UInteger => raw.strip_suffix('u')?.parse().ok().map(FieldValue::U64),
        FieldType::Boolean => match raw {
            "t" | "T" | "true" | "True" | "TRUE" => Some(FieldValue::Bool(true)),
            "f" | "F" | "false" | "False" | "FALSE" => Some(FieldValue::Bool(false)),
            _ => None,
        },
        FieldType::String => None,
    }
}

/// Parses the fields and timestamp of a line whose series key, `text[..key_len]` (see
/// [`series_key_len`]), the caller has already parsed; `out.measurement` and `out.tags` are
/// left as they are. Errors name the same line and column as [`parse_line`] would.
pub fn parse_line_fields<'a>(
    text: &'a str,
    key_len: usize,
    line_number: usize,
    out: &mut Line<'a>,
) -> Result<(), LineError> {
    out.fields.clear();
    out.timestamp = None;
    out.line_number = line_number;
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: key_len,
        line_number,
    };
    p.expect_spaces("expected a space and fields after the measurement and tags")?;
    p.fields(&mut out.fields)?;
    out.timestamp = p.timestamp()?;
    Ok(())
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line_number: usize,
}

/// Which characters a backslash escapes in an identifier, and where it stops.
#[derive(Clone, Copy)]
enum Escapes {
    /// A measurement: `,` and space are escaped; stops at `,` or space.
    Measurement,
    /// A tag or field key: `,`, `=` and space escaped; stops at `,`, `=` or space.
    Key,
    /// A tag value: `,`, `=` and space escaped; stops at `,` or space.
    TagValue,
}

/// Byte classes for scanning identifiers with one table lookup per byte.
const STOP_MEASUREMENT: u8 = 1;
const STOP_KEY: u8 = 2;
const STOP_TAG_VALUE: u8 = 4;
const BACKSLASH: u8 = 8;
const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b',' as usize] = STOP_MEASUREMENT | STOP_KEY | STOP_TAG_VALUE;
    t[b' ' as usize] = STOP_MEASUREMENT | STOP_KEY | STOP_TAG_VALUE;
    t[b'=' as usize] = STOP_KEY;
    t[b'\\' as usize] = BACKSLASH;
    t
};

impl Escapes {
    fn escapes(self, b: u8) -> bool {
        match self {
            Self::Measurement => matches!(b, b',' | b' '),
            Self::Key | Self::TagValue => matches!(b, b',' | b' ' | b'='),
        }
    }

    fn stop_class(self) -> u8 {
        match self {
            Self::Measurement => STOP_MEASUREMENT,
            Self::Key => STOP_KEY,
            Self::TagValue => STOP_TAG_VALUE,
        }
    }
}

/// A one-bit fingerprint of a key, so duplicate-key checks compare strings only when two keys
/// of a line share a bit (rare for the handful of keys a line has).
fn key_bit(key: &str) -> u64 {
    let b = key.as_bytes();
    let first = u64::from(b.first().copied().unwrap_or(0));
    let last = u64::from(b.last().copied().unwrap_or(0));
    1 << ((first.wrapping_mul(31) ^ last.wrapping_mul(7) ^ b.len() as u64) & 63)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn error_at(&self, pos: usize, reason: impl Into<String>) -> LineError {
        let column = self.text.get(..pos).map_or(pos, |s| s.chars().count()) + 1;
        LineError {
            line: self.line_number,
            column,
            reason: reason.into(),
        }
    }

    /// Scans an escaped identifier up to its stop character; returns it unescaped.
    fn ident(&mut self, escapes: Escapes) -> Cow<'a, str> {
        let start = self.pos;
        let stop = escapes.stop_class();
        let mut has_escape = false;
        while let Some(&b) = self.bytes.get(self.pos) {
            let class = CLASSES[b as usize];
            if class == 0 {
                self.pos += 1;
                continue;
            }
            if class & stop != 0 {
                break;
            }
            if class & BACKSLASH != 0
                && let Some(&next) = self.bytes.get(self.pos + 1)
                && escapes.escapes(next)
            {
                has_escape = true;
                self.pos += 2;
                continue;
            }
            self.pos += 1;
        }
        let raw = &self.text[start..self.pos];
        if !has_escape {
            return Cow::Borrowed(raw);
        }
        let mut unescaped = String::with_capacity(raw.len());
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\'
                && let Some(&next) = chars.peek()
                && next.is_ascii()
                && escapes.escapes(next as u8)
            {
                unescaped.push(next);
                chars.next();
                continue;
            }
            unescaped.push(c);
        }
        Cow::Owned(unescaped)
    }

    fn measurement(&mut self) -> Result<Cow<'a, str>, LineError> {
        let start = self.pos;
        let name = self.ident(Escapes::Measurement);
        if name.is_empty() {
            return Err(self.error_at(start, "missing measurement"));
        }
        Ok(name)
    }

    fn key(&mut self, what: &str) -> Result<Cow<'a, str>, LineError> {
        let start = self.pos;
        let key = self.ident(Escapes::Key);
        if key.is_empty() {
            return Err(self.error_at(start, format!("missing {what} key")));
        }
        if self.peek() != Some(b'=') {
            return Err(self.error_at(self.pos, format!("{what} key `{key}` has no '=' and value")));
        }
        if key == "time" {
            return Err(self.error_at(
                start,
                format!("`time` is reserved and cannot be a {what} key"),
            ));
        }
        self.pos += 1;
        Ok(key)
    }

    fn tags(&mut self, tags: &mut Vec<(Cow<'a, str>, Cow<'a, str>)>) -> Result<(), LineError> {
        let mut seen = 0u64;
        loop {
            let key_start = self.pos;
            let key = self.key("tag")?;
            let value_start = self.pos;
            let value = self.ident(Escapes::TagValue);
            if value.is_empty() {
                return Err(self.error_at(value_start, format!("tag `{key}` has an empty value")));
            }
            let bit = key_bit(&key);
            if seen & bit != 0 && tags.iter().any(|(k, _)| *k == key) {
                return Err(self.error_at(key_start, format!("duplicate tag key `{key}`")));
            }
            seen |= bit;
            tags.push((key, value));
            match self.peek() {
                Some(b',') => self.pos += 1,
                _ => return Ok(()),
            }
        }
    }

    fn expect_spaces(&mut self, reason: &str) -> Result<(), LineError> {
        if self.peek() != Some(b' ') {
            return Err(self.error_at(self.pos, reason));
        }
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
        if self.pos >= self.bytes.len() {
            return Err(self.error_at(self.pos, "missing fields"));
        }
        Ok(())
    }

    fn fields(
        &mut self,
        fields: &mut Vec<(Cow<'a, str>, FieldValue<'a>)>,
    ) -> Result<(), LineError> {
        let mut seen = 0u64;
        loop {
            let key = self.key("field")?;
            let value = self.field_value(&key)?;
            let bit = key_bit(&key);
            let earlier = if seen & bit != 0 {
                fields.iter_mut().find(|(k, _)| *k == key)
            } else {
                None
            };
            match earlier {
                Some(slot) => slot.1 = value,
                None => fields.push((key, value)),
            }
            seen |= bit;
            match self.peek() {
                Some(b',') => self.pos += 1,
                _ => return Ok(()),
            }
        }
    }

    fn field_value(&mut self, key: &str) -> Result<FieldValue<'a>, LineError> {
        let start = self.pos;
        if self.peek() == Some(b'"') {
            return self.string_value(key);
        }
        while let Some(&b) = self.bytes.get(self.pos) {
            if b == b',' || b == b' ' {
                break;
            }
            self.pos += 1;
        }
        let raw = &self.text[start..self.pos];
        if raw.is_empty() {
            return Err(self.error_at(start, format!("field `{key}` has no value")));
        }
        let invalid = |p: &Self, what: &str| {
            p.error_at(
                start,
                format!("field `{key}`: invalid {what} value `{raw}`"),
            )
        };
        if let Some(digits) = raw.strip_suffix('i') {
            return digits
                .parse::<i64>()
                .map(FieldValue::I64)
                .map_err(|_| invalid(self, "integer"));
        }
        if let Some(digits) = raw.strip_suffix('u') {
            return digits
                .parse::<u64>()
                .map(FieldValue::U64)
                .map_err(|_| invalid(self, "unsigned integer"));
        }
        match raw {
            "t" | "T" | "true" | "True" | "TRUE" => return Ok(FieldValue::Bool(true)),
            "f" | "F" | "false" | "False" | "FALSE" => return Ok(FieldValue::Bool(false)),
            _ => {}
        }
        // Rust's float parser also takes `inf` and `NaN`, which line protocol does not.
        let first = raw.as_bytes()[0];
        if !(first.is_ascii_digit() || matches!(first, b'-' | b'+' | b'.')) {
            return Err(self.error_at(
                start,
                format!("field `{key}`: invalid value `{raw}` (strings must be double-quoted)"),
            ));
        }
        match raw.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(FieldValue::F64(v)),
            _ => Err(invalid(self, "float")),
        }
    }

    fn string_value(&mut self, key: &str) -> Result<FieldValue<'a>, LineError> {
        let open = self.pos;
        self.pos += 1;
        let start = self.pos;
        let mut has_escape = false;
        loop {
            match self.bytes.get(self.pos) {
                None => {
                    return Err(self.error_at(open, format!("field `{key}`: unterminated string")));
                }
                Some(b'\\') if matches!(self.bytes.get(self.pos + 1), Some(b'"' | b'\\')) => {
                    has_escape = true;
                    self.pos += 2;
                }
                Some(b'"') => break,
                Some(_) => self.pos += 1,
            }
        }
        let raw = &self.text[start..self.pos];
        self.pos += 1; // closing quote
        match self.peek() {
            None | Some(b',') | Some(b' ') => {}
            Some(_) => {
                return Err(self.error_at(
                    self.pos,
                    format!("field `{key}`: unexpected character after closing quote"),
                ));
            }
        }
        if !has_escape {
            return Ok(FieldValue::Str(Cow::Borrowed(raw)));
        }
        let mut unescaped = String::with_capacity(raw.len());
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\'
                && let Some(&next @ ('"' | '\\')) = chars.peek()
            {
                unescaped.push(next);
                chars.next();
                continue;
            }
            unescaped.push(c);
        }
        Ok(FieldValue::Str(Cow::Owned(unescaped)))
    }

    fn timestamp(&mut self) -> Result<Option<i64>, LineError> {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        let start = self.pos;
        if start >= self.bytes.len() {
            return Ok(None);
        }
        while let Some(&b) = self.bytes.get(self.pos) {
            if b == b' ' || b == b'\t' {
                break;
            }
            self.pos += 1;
        }
        let raw = &self.text[start..self.pos];
        let value = raw
            .parse::<i64>()
            .map_err(|_| self.error_at(start, format!("invalid timestamp `{raw}`")))?;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        if self.pos < self.bytes.len() {
            return Err(self.error_at(self.pos, "unexpected text after the timestamp"));
        }
        Ok(Some(value))
    }
}

#[cfg(test)]
#[path = "line_protocol_tests.rs"]
mod tests;
