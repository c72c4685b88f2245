//! Setting writable points (decision 0090): a value is checked against the point's type and
//! range and encoded into its registers or bit (the inverse of [`super::decode`]); the device's
//! own task, which owns its one connection, writes it and reads it back. [`ModbusWriter`] is
//! the handle callers write through.
//!
//! Nothing reaches a device unless its point says `writable = true`, the value is of the
//! point's kind, inside `min..=max` and exactly representable (no silent rounding of a
//! setpoint), and the command is taken by the task before its deadline: a write the caller
//! was told failed is never carried out later.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::config::{DataType, Order, Table};
use super::decode::Codec;
use super::plan::{DevicePlan, WritablePoint};
use super::{ModbusError, Value};

/// Writes waiting for one device at most; more are refused as busy rather than queued.
const QUEUE: usize = 8;
/// The least time a write may wait for its device task (which finishes the poll it is in).
const LEAST_DEADLINE: Duration = Duration::from_secs(5);

pub use crate::setpoint::SetValue;

/// What a write put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// Holding registers, function 0x06 for one, 0x10 for several.
    Registers(Vec<u16>),
    /// A coil, function 0x05.
    Bit(bool),
}

/// A Modbus write the device acknowledged; `confirmed` compares the registers (or bit) read
/// back with those written.
pub type Written = crate::setpoint::Written<Value>;

/// One write handed to a device task.
#[derive(Debug)]
pub(crate) struct WriteCommand {
    pub(crate) point: WritablePoint,
    pub(crate) data: Encoded,
    /// When it was queued.
    pub(crate) enqueued: Instant,
    /// Not started after this: the caller has been told it expired.
    pub(crate) deadline: Instant,
    /// Set by whichever comes first: the task starting the write, or the caller giving up on
    /// it (its deadline, or its future dropped). Exactly one of the two wins, so a write the
    /// caller was told expired is never carried out.
    pub(crate) claim: Arc<AtomicBool>,
    pub(crate) reply: oneshot::Sender<Result<Written, ModbusError>>,
}

impl WriteCommand {
    /// Whether the task may start it (and the caller can no longer give up on it).
    pub(crate) fn claim(&self) -> bool {
        !self.claim.swap(true, Ordering::SeqCst)
    }
}

/// Gives up on a write when the caller's future is dropped before the task started it.
struct GiveUp(Arc<AtomicBool>);

impl Drop for GiveUp {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The writable points of the polled devices, and the way to their tasks.
#[derive(Debug, Clone, Default)]
pub struct ModbusWriter {
    devices: Arc<HashMap<Arc<str>, DeviceWrites>>,
}

#[derive(Debug)]
struct DeviceWrites {
    points: Vec<WritablePoint>,
    commands: mpsc::Sender<WriteCommand>,
    /// How long a write may wait for the task.
    deadline: Duration,
}

impl ModbusWriter {
    /// The writer of `devices`, and per device the receiver its task takes writes from.
    pub(crate) fn new(devices: &[DevicePlan]) -> (Self, Vec<mpsc::Receiver<WriteCommand>>) {
        let mut map = HashMap::new();
        let mut receivers = Vec::with_capacity(devices.len());
        for device in devices {
            let (tx, rx) = mpsc::channel(QUEUE);
            receivers.push(rx);
            map.insert(
                Arc::clone(&device.id),
                DeviceWrites {
                    points: device.writable.clone(),
                    commands: tx,
                    deadline: LEAST_DEADLINE.max(device.timeout * 2),
                },
            );
        }
        (
            Self {
                devices: Arc::new(map),
            },
            receivers,
        )
    }

    /// Every writable point, by device (devices in id order).
    pub fn points(&self) -> Vec<(Arc<str>, WritablePoint)> {
        let mut all: Vec<(Arc<str>, WritablePoint)> = self
            .devices
            .iter()
            .flat_map(|(id, d)| d.points.iter().map(|p| (Arc::clone(id), p.clone())))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether `device` is one of the polled devices.
    pub fn polls(&self, device: &str) -> bool {
        self.devices.contains_key(device)
    }

    /// Checks and encodes `value` for `device`'s `signal`, writes it and reads it back.
    pub async fn write(
        &self,
        device: &str,
        signal: &str,
        value: SetValue,
    ) -> Result<Written, ModbusError> {
        let writes = self
            .devices
            .get(device)
            .ok_or_else(|| ModbusError::UnknownDevice(device.to_owned()))?;
        let point = writes
            .points
            .iter()
            .find(|p| &*p.signal == signal)
            .ok_or_else(|| ModbusError::NotWritable {
                device: device.into(),
                signal: signal.to_owned(),
            })?;
        let data = encode(point, value).map_err(|reason| ModbusError::InvalidValue {
            device: device.into(),
            signal: signal.to_owned(),
            reason,
        })?;
        let (reply, mut answer) = oneshot::channel();
        let enqueued = Instant::now();
        let deadline = enqueued + writes.deadline;
        let claim = Arc::new(AtomicBool::new(false));
        let _give_up = GiveUp(Arc::clone(&claim));
        let command = WriteCommand {
            point: point.clone(),
            data,
            enqueued,
            deadline,
            claim: Arc::clone(&claim),
            reply,
        };
        writes.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ModbusError::Busy {
                device: device.into(),
                waiting: QUEUE,
            },
            mpsc::error::TrySendError::Closed(_) => ModbusError::Stopped(device.into()),
        })?;
        let stopped = || ModbusError::Stopped(device.into());
        match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(answered) => answered.map_err(|_| stopped())?,
            // The task has not answered by the deadline: if it has not started the write
            // either, the write is given up and never carried out; if it has, its outcome is
            // awaited (one request and one read-back, each within the device timeout).
            Err(_) if claim.swap(true, Ordering::SeqCst) => answer.await.map_err(|_| stopped())?,
            Err(_) => Err(ModbusError::Expired {
                device: device.into(),
                waited_ms: u64::try_from(enqueued.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }
}

/// `value` as the point's registers or bit, or why it cannot be written.
pub fn encode(point: &WritablePoint, value: SetValue) -> Result<Encoded, String> {
    let codec = &point.codec;
    let number = match (codec.data_type, value) {
        (DataType::Bool, SetValue::Bool(b)) => {
            return Ok(if point.table == Table::Coil {
                Encoded::Bit(b)
            } else {
                Encoded::Registers(vec![u16::from(b)])
            });
        }
        (DataType::Bool, _) => {
            return Err("the point is a `bool`: give true or false".into());
        }
        (DataType::String, SetValue::Text(text)) => return encode_text(codec, text),
        (DataType::String, _) => {
            return Err(format!(
                "the point is a `string` of {} registers: give text",
                codec.len
            ));
        }
        (t, SetValue::Bool(_) | SetValue::Text(_)) => {
            return Err(format!("the point is a `{t}`: give a number"));
        }
        (_, SetValue::Number(v)) => v,
    };
    if !number.is_finite() {
        return Err(format!("{number} is not a finite number"));
    }
    let unit = point
        .unit
        .as_deref()
        .map_or(String::new(), |u| format!(" {u}"));
    if let (Some(min), Some(max)) = (point.min, point.max)
        && !(min..=max).contains(&number)
    {
        return Err(format!(
            "{number}{unit} is outside the point's range {min}..={max}{unit}"
        ));
    }
    let raw = raw_of(codec, number);
    let bytes: Vec<u8> = match codec.data_type {
        DataType::F32 => {
            let narrowed = raw as f32;
            if !narrowed.is_finite() {
                return Err(format!("{number}{unit} does not fit a `f32` register pair"));
            }
            // A float register holds the nearest f32 of what it is sent: fine for the value
            // itself, not when a scale or offset magnifies the rounding (offset -1e6 turns 0.1
            // into 0.125).
            let nearest = engineering(codec, f64::from(narrowed));
            if (nearest - number).abs() > number.abs() * f64::from(f32::EPSILON) {
                return Err(format!(
                    "{number}{unit} cannot be stored in a `f32`{}: the nearest it holds is \
                     {nearest}{unit}",
                    scaling(codec)
                ));
            }
            narrowed.to_be_bytes().to_vec()
        }
        DataType::F64 => {
            if !raw.is_finite() {
                return Err(format!(
                    "{number}{unit} does not fit a `f64`{}",
                    scaling(codec)
                ));
            }
            raw.to_be_bytes().to_vec()
        }
        t => {
            let whole = raw.round();
            // Judged on the value the device will hold, against the point's resolution (its
            // scale): a tolerance relative to the raw number would let large 32-bit values
            // lose their fractions unnoticed.
            let nearest = engineering(codec, whole);
            let resolution = codec.scale.map_or(1.0, f64::abs);
            let tolerance = (resolution * 1e-6).max(number.abs() * 4.0 * f64::EPSILON);
            if (nearest - number).abs() > tolerance {
                return Err(format!(
                    "{number}{unit} cannot be stored exactly: the point holds whole numbers{}; \
                     the nearest is {nearest}{unit}",
                    scaling(codec)
                ));
            }
            let (lo, hi) = integer_range(t);
            if !(lo..=hi).contains(&whole) {
                return Err(format!(
                    "{number}{unit} does not fit a `{t}` register{}: it holds {}..={}{unit}",
                    scaling(codec),
                    engineering(codec, lo).min(engineering(codec, hi)),
                    engineering(codec, lo).max(engineering(codec, hi)),
                ));
            }
            // In range by the check above, so the casts are exact.
            let whole = whole as i64;
            match t {
                DataType::U16 => (whole as u16).to_be_bytes().to_vec(),
                DataType::I16 => (whole as i16).to_be_bytes().to_vec(),
                DataType::U32 => (whole as u32).to_be_bytes().to_vec(),
                _ => (whole as i32).to_be_bytes().to_vec(),
            }
        }
    };
    Ok(Encoded::Registers(registers(codec, &bytes)))
}

/// `text` as a `string` point's registers: its UTF-8 bytes, two to a register in the point's
/// byte order, the rest of the point's registers NUL (the inverse of the poller's decoding,
/// which drops trailing NULs). Text with a NUL of its own would read back cut, so it is refused.
fn encode_text(codec: &Codec, text: String) -> Result<Encoded, String> {
    let text = crate::setpoint::checked_text(text)?;
    let room = usize::from(codec.len) * 2;
    if text.contains('\0') {
        return Err("the text holds a NUL character, which ends a string in registers".into());
    }
    if text.len() > room {
        return Err(format!(
            "the text is {} bytes in UTF-8; the point's {} registers hold {room}",
            text.len(),
            codec.len
        ));
    }
    let mut bytes = text.into_bytes();
    bytes.resize(room, 0);
    // A string's word order is always big (the configuration refuses another), as decoding
    // takes its registers in address order.
    Ok(Encoded::Registers(registers(codec, &bytes)))
}

/// The raw number whose decoding is `value` (the inverse of `Codec`'s scaling).
fn raw_of(codec: &Codec, value: f64) -> f64 {
    let unshifted = value - codec.offset.unwrap_or(0.0);
    match codec.scale {
        None => unshifted,
        // As decoding divides by a whole divisor for decimal scales, encoding multiplies by
        // it: 42.3 × 10 is 423 exactly, 42.3 / 0.1 is 422.99999999999994.
        Some(scale) if scale.abs() < 1.0 && scale != 0.0 => {
            let divisor = 1.0 / scale;
            if (divisor - divisor.round()).abs() < 1e-9 {
                unshifted * divisor.round()
            } else {
                unshifted / scale
            }
        }
        Some(scale) => unshifted / scale,
    }
}

/// The engineering value of raw `value`, as decoding gives it.
fn engineering(codec: &Codec, value: f64) -> f64 {
    match codec.float(value) {
        Value::F64(v) => v,
        _ => value,
    }
}

/// ", scaled by 0.1 and offset by -20", or nothing.
fn scaling(codec: &Codec) -> String {
    match (codec.scale, codec.offset) {
        (None, None) => String::new(),
        (Some(s), None) => format!(" scaled by {s}"),
        (None, Some(o)) => format!(" offset by {o}"),
        (Some(s), Some(o)) => format!(" scaled by {s} and offset by {o}"),
    }
}

/// The raw range of an integer type.
pub(crate) fn integer_range(t: DataType) -> (f64, f64) {
    match t {
        DataType::U16 => (0.0, f64::from(u16::MAX)),
        DataType::I16 => (f64::from(i16::MIN), f64::from(i16::MAX)),
        DataType::U32 => (0.0, f64::from(u32::MAX)),
        _ => (f64::from(i32::MIN), f64::from(i32::MAX)),
    }
}

/// Big-endian `bytes` as registers in the point's byte and word orders (the inverse of
/// decoding's `bytes`).
fn registers(codec: &Codec, bytes: &[u8]) -> Vec<u16> {
    let mut words: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| {
            let pair = [pair[0], pair[1]];
            match codec.byte_order {
                Order::Big => u16::from_be_bytes(pair),
                Order::Little => u16::from_le_bytes(pair),
            }
        })
        .collect();
    if codec.word_order == Order::Little {
        words.reverse();
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: DataType, len: u16) -> WritablePoint {
        WritablePoint {
            signal: Arc::from("setpoint"),
            table: Table::Holding,
            address: 0,
            codec: Codec::plain(t, len),
            min: Some(-1e300),
            max: Some(1e300),
            unit: Some(Arc::from("bar")),
        }
    }

    fn ordered(mut p: WritablePoint, byte: Order, word: Order) -> WritablePoint {
        p.codec.byte_order = byte;
        p.codec.word_order = word;
        p
    }

    fn round_trip(p: &WritablePoint, value: f64) -> Value {
        let Encoded::Registers(regs) = encode(p, SetValue::Number(value)).expect("encodes") else {
            panic!("registers");
        };
        p.codec.decode_registers(&regs).expect("decodes")
    }

    #[test]
    fn every_type_and_order_decodes_to_the_value_written() {
        for byte in [Order::Big, Order::Little] {
            for word in [Order::Big, Order::Little] {
                let cases: [(DataType, u16, f64, Value); 6] = [
                    (DataType::U16, 1, 51234.0, Value::I64(51234)),
                    (DataType::I16, 1, -1234.0, Value::I64(-1234)),
                    (DataType::U32, 2, 3e9, Value::I64(3_000_000_000)),
                    (DataType::I32, 2, -123_456_789.0, Value::I64(-123_456_789)),
                    (DataType::F32, 2, -1.25, Value::F64(-1.25)),
                    (DataType::F64, 4, 6.02214076e23, Value::F64(6.02214076e23)),
                ];
                for (t, len, value, want) in cases {
                    let p = ordered(point(t, len), byte, word);
                    assert_eq!(round_trip(&p, value), want, "{t} {byte:?} {word:?}");
                }
            }
        }
    }

    #[test]
    fn orders_put_bytes_and_words_where_the_device_expects_them() {
        // 0x12345678 as the four layouts a 32-bit register pair comes in.
        let bytes = 0x1234_5678_u32 as f64;
        let layouts = [
            (Order::Big, Order::Big, [0x1234, 0x5678]),
            (Order::Big, Order::Little, [0x5678, 0x1234]),
            (Order::Little, Order::Big, [0x3412, 0x7856]),
            (Order::Little, Order::Little, [0x7856, 0x3412]),
        ];
        for (byte, word, want) in layouts {
            let p = ordered(point(DataType::U32, 2), byte, word);
            assert_eq!(
                encode(&p, SetValue::Number(bytes)).expect("encodes"),
                Encoded::Registers(want.to_vec()),
                "{byte:?} {word:?}"
            );
        }
    }

    #[test]
    fn scaled_points_take_the_decimals_they_can_hold_and_refuse_the_others() {
        let mut p = point(DataType::U16, 1);
        p.codec.scale = Some(0.1);
        p.codec.offset = Some(-20.0);
        // 42.3 = 623 × 0.1 − 20.
        assert_eq!(
            encode(&p, SetValue::Number(42.3)).expect("encodes"),
            Encoded::Registers(vec![623])
        );
        assert_eq!(round_trip(&p, 42.3), Value::F64(42.3));
        let e = encode(&p, SetValue::Number(42.37)).unwrap_err();
        assert!(e.contains("cannot be stored exactly"), "{e}");
        assert!(e.contains("scaled by 0.1 and offset by -20"), "{e}");
        assert!(e.contains("nearest is 42.4"), "{e}");
        let e = encode(&p, SetValue::Number(-21.0)).unwrap_err();
        assert!(e.contains("does not fit a `u16` register"), "{e}");
        assert!(e.contains("-20..=6533.5 bar"), "{e}");
    }

    #[test]
    fn large_and_magnified_values_are_refused_rather_than_rounded() {
        // A 32-bit register scaled by 0.001: 600000.0004 would be written as 600000.
        let mut p = point(DataType::I32, 2);
        p.codec.scale = Some(0.001);
        let e = encode(&p, SetValue::Number(600_000.000_4)).unwrap_err();
        assert!(e.contains("nearest is 600000"), "{e}");
        assert_eq!(round_trip(&p, 600_000.123), Value::F64(600_000.123));
        // Unscaled: 3000000000.4 is not a whole number.
        let p = point(DataType::U32, 2);
        let e = encode(&p, SetValue::Number(3_000_000_000.4)).unwrap_err();
        assert!(e.contains("cannot be stored exactly"), "{e}");
        // A float whose offset magnifies its rounding.
        let mut p = point(DataType::F32, 2);
        p.codec.offset = Some(-1e6);
        let e = encode(&p, SetValue::Number(0.1)).unwrap_err();
        assert!(e.contains("nearest it holds is 0.125"), "{e}");
        // A float holds the nearest f32 of the value itself.
        let p = point(DataType::F32, 2);
        assert!(encode(&p, SetValue::Number(16_777_217.0)).is_ok());
        // Negative and large scales invert as decoding applies them.
        let mut p = point(DataType::I16, 1);
        p.codec.scale = Some(-2.0);
        p.codec.offset = Some(10.0);
        assert_eq!(round_trip(&p, -30.0), Value::F64(-30.0));
        let e = encode(&p, SetValue::Number(-31.0)).unwrap_err();
        assert!(e.contains("cannot be stored exactly"), "{e}");
        // A scale so small that the raw value overflows a double.
        let mut p = point(DataType::F64, 4);
        p.codec.scale = Some(1e-300);
        let e = encode(&p, SetValue::Number(1e100)).unwrap_err();
        assert!(e.contains("does not fit a `f64`"), "{e}");
    }

    #[test]
    fn values_outside_the_range_or_of_the_wrong_kind_are_refused() {
        let mut p = point(DataType::F32, 2);
        (p.min, p.max) = (Some(0.0), Some(80.0));
        let e = encode(&p, SetValue::Number(80.5)).unwrap_err();
        assert_eq!(e, "80.5 bar is outside the point's range 0..=80 bar");
        assert!(encode(&p, SetValue::Number(80.0)).is_ok());
        let e = encode(&p, SetValue::Bool(true)).unwrap_err();
        assert!(e.contains("give a number"), "{e}");
        let e = encode(&p, SetValue::Number(f64::NAN)).unwrap_err();
        assert!(e.contains("not a finite number"), "{e}");
        (p.min, p.max) = (Some(-1e300), Some(1e300));
        let e = encode(&p, SetValue::Number(1e300)).unwrap_err();
        assert!(e.contains("does not fit a `f32`"), "{e}");

        let mut coil = point(DataType::Bool, 1);
        coil.table = Table::Coil;
        (coil.min, coil.max) = (None, None);
        assert_eq!(encode(&coil, SetValue::Bool(true)), Ok(Encoded::Bit(true)));
        let e = encode(&coil, SetValue::Number(1.0)).unwrap_err();
        assert!(e.contains("give true or false"), "{e}");
        coil.table = Table::Holding;
        assert_eq!(
            encode(&coil, SetValue::Bool(true)),
            Ok(Encoded::Registers(vec![1]))
        );
    }

    #[test]
    fn text_fills_a_string_point_and_reads_back_as_written() {
        for byte_order in [Order::Big, Order::Little] {
            let p = ordered(point(DataType::String, 4), byte_order, Order::Big);
            for text in ["Cola", "Lemon 1", "Mango 12", "ü", ""] {
                let Ok(Encoded::Registers(regs)) = encode(&p, SetValue::Text(text.into())) else {
                    panic!("{text:?} encodes");
                };
                assert_eq!(regs.len(), 4, "the point's registers, NUL-padded");
                assert_eq!(
                    p.codec.decode_registers(&regs),
                    Ok(Value::Str(text.to_owned())),
                    "{byte_order:?}"
                );
            }
        }
        let p = point(DataType::String, 2);
        assert_eq!(
            encode(&p, SetValue::Text("AB".into())),
            Ok(Encoded::Registers(vec![0x4142, 0]))
        );
        let e = encode(&p, SetValue::Text("Lemon".into())).unwrap_err();
        assert_eq!(
            e,
            "the text is 5 bytes in UTF-8; the point's 2 registers hold 4"
        );
        let e = encode(&p, SetValue::Text("A\0B".into())).unwrap_err();
        assert!(e.contains("NUL"), "{e}");
        let e = encode(&p, SetValue::Number(1.0)).unwrap_err();
        assert_eq!(e, "the point is a `string` of 2 registers: give text");
        let e = encode(&point(DataType::U16, 1), SetValue::Text("1".into())).unwrap_err();
        assert!(e.contains("give a number"), "{e}");
        let long = point(DataType::String, 123);
        let e = encode(&long, SetValue::Text("x".repeat(1001))).unwrap_err();
        assert!(e.contains("at most 1000"), "{e}");
    }
}
