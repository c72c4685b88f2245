//! What an operator asks a connector to write to a device's point (decision 0090), and what
//! the write came to, whatever the protocol.

/// A value to set, as the caller gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum SetValue {
    /// For number points, in engineering units.
    Number(f64),
    /// For switches (coils, `bool` registers, Boolean nodes).
    Bool(bool),
    /// For text points (OPC UA `String` nodes, Sparkplug `String` and `Text` metrics): a
    /// recipe or batch name, an operator message (decision 0095).
    Text(String),
}

impl std::fmt::Display for SetValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
            // Quoted and escaped: `"7"` is text, `7` a number, and a message naming the value
            // stays one line.
            Self::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// The longest text written to a point, in characters. Controllers hold short strings (an S7
/// `STRING` at most 254 bytes); the bound keeps a mistaken paste out of the device and of the
/// audit log.
pub const MAX_TEXT: usize = 1000;

/// `text` if a text point may take it: at most [`MAX_TEXT`] characters. (A device that holds
/// shorter strings refuses or cuts a longer one itself: its answer or the read-back says so.)
pub fn checked_text(text: String) -> Result<String, String> {
    let length = text.chars().count();
    if length > MAX_TEXT {
        return Err(format!(
            "the text has {length} characters; at most {MAX_TEXT} are written"
        ));
    }
    Ok(text)
}

/// A write the device acknowledged, with its point's value type.
#[derive(Debug, Clone, PartialEq)]
pub struct Written<V> {
    /// The point's value read back after the write, or why it could not be read (the write
    /// was acknowledged all the same: a write-only register, a read that timed out).
    pub read_back: Result<V, String>,
    /// Whether the device holds exactly what was written. False when it answered the write
    /// but kept a value of its own (a drive that clamps, a program that overwrites it), or
    /// when it could not be read back.
    pub confirmed: bool,
}

/// The scalar number types devices declare for a point (OPC UA's built-in types, Sparkplug's
/// data types), as far as a write to it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberType {
    /// Signed 8-bit (OPC UA `SByte`, Sparkplug `Int8`).
    Int8,
    /// Unsigned 8-bit (OPC UA `Byte`, Sparkplug `UInt8`).
    UInt8,
    /// Signed 16-bit.
    Int16,
    /// Unsigned 16-bit.
    UInt16,
    /// Signed 32-bit.
    Int32,
    /// Unsigned 32-bit.
    UInt32,
    /// Signed 64-bit.
    Int64,
    /// Unsigned 64-bit.
    UInt64,
    /// 32-bit float.
    Float,
    /// 64-bit float.
    Double,
}

/// Beyond 2^53 an `f64` no longer holds every whole number, so the value asked for might not
/// be the one written: 64-bit integers are written up to it.
const LARGEST_EXACT_WHOLE: f64 = 9_007_199_254_740_992.0;

/// `number` as a point of type `ty` holds it, checked: finite, inside `range` (the
/// configuration's, in the point's units), and for integers a whole number inside the type;
/// for `Float`, the nearest `f32` of the value itself (its own rounding, nothing magnified).
/// Each integer returned converts to its type with `as` exactly. `kind` names the type in
/// messages (`Int16`, `SByte`), `holder` what holds it (`the node`, `the metric`).
pub fn checked_number(
    number: f64,
    ty: NumberType,
    range: (f64, f64),
    holder: &str,
    kind: &str,
) -> Result<f64, String> {
    if !number.is_finite() {
        return Err(format!("{number} is not a finite number"));
    }
    let (min, max) = range;
    if !(min..=max).contains(&number) {
        return Err(format!(
            "{number} is outside the point's range {min}..={max}"
        ));
    }
    let bounded = |lo: f64, hi: f64| {
        if number.fract() != 0.0 {
            Err(format!(
                "{holder} holds a {kind}: {number} is not a whole number"
            ))
        } else if (lo..=hi).contains(&number) {
            Ok(number)
        } else {
            Err(format!("{number} does not fit a {kind} ({lo}..={hi})"))
        }
    };
    match ty {
        NumberType::Int8 => bounded(f64::from(i8::MIN), f64::from(i8::MAX)),
        NumberType::UInt8 => bounded(0.0, f64::from(u8::MAX)),
        NumberType::Int16 => bounded(f64::from(i16::MIN), f64::from(i16::MAX)),
        NumberType::UInt16 => bounded(0.0, f64::from(u16::MAX)),
        NumberType::Int32 => bounded(f64::from(i32::MIN), f64::from(i32::MAX)),
        NumberType::UInt32 => bounded(0.0, f64::from(u32::MAX)),
        NumberType::Int64 => bounded(-LARGEST_EXACT_WHOLE, LARGEST_EXACT_WHOLE),
        NumberType::UInt64 => bounded(0.0, LARGEST_EXACT_WHOLE),
        NumberType::Float => {
            let narrowed = number as f32;
            if !narrowed.is_finite()
                || (f64::from(narrowed) - number).abs() > number.abs() * f64::from(f32::EPSILON)
            {
                return Err(format!("{number} does not fit a {kind}"));
            }
            Ok(f64::from(narrowed))
        }
        NumberType::Double => Ok(number),
    }
}
