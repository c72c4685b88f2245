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

/// A value to set, as the caller gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SetValue {
    /// For number points, in engineering units.
    Number(f64),
    /// For coils and `bool` registers.
    Bool(bool),
}

impl std::fmt::Display for SetValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(v) => write!(f, "{v}"),
            Self::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// What a write put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// Holding registers, function 0x06 for one, 0x10 for several.
    Registers(Vec<u16>),
    /// A coil, function 0x05.
    Bit(bool),
}

/// A write carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The point's value read back after the write.
    pub read_back: Value,
    /// Whether the registers (or bit) read back are the ones written. A device that clamps
    /// or refuses a value silently answers the write but keeps its own value.
    pub confirmed: bool,
}

/// One write handed to a device task.
#[derive(Debug)]
pub(crate) struct WriteCommand {
    pub(crate) point: WritablePoint,
    pub(crate) data: Encoded,
    /// Not started after this: the caller has been told it expired.
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Result<Written, ModbusError>>,
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
        let (reply, answer) = oneshot::channel();
        let command = WriteCommand {
            point: point.clone(),
            data,
            deadline: Instant::now() + writes.deadline,
            reply,
        };
        writes.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ModbusError::Busy {
                device: device.into(),
                waiting: QUEUE,
            },
            mpsc::error::TrySendError::Closed(_) => ModbusError::Stopped(device.into()),
        })?;
        answer
            .await
            .map_err(|_| ModbusError::Stopped(device.into()))?
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
        (DataType::Bool, SetValue::Number(_)) => {
            return Err("the point is a `bool`: give true or false".into());
        }
        (t, SetValue::Bool(_)) => return Err(format!("the point is a `{t}`: give a number")),
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
            narrowed.to_be_bytes().to_vec()
        }
        DataType::F64 => raw.to_be_bytes().to_vec(),
        t => {
            let whole = raw.round();
            // Relative, so that 0.1-scaled points take the decimals a person types.
            if (raw - whole).abs() > 1e-9 * raw.abs().max(1.0) {
                let nearest = engineering(codec, whole);
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

fn integer_range(t: DataType) -> (f64, f64) {
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
}
