//! Turns the registers or bits of one point into a typed [`Value`]: byte order inside a
//! register, word order across registers, then `scale` and `offset`. Pure functions, no I/O.

use super::Value;
use super::config::{DataType, Order};

/// How one point is decoded; built and checked by [`super::plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Codec {
    /// The type.
    pub data_type: DataType,
    /// Registers (or 1 bit) the point spans.
    pub len: u16,
    /// Bytes inside a register.
    pub byte_order: Order,
    /// Registers of a multi-register value.
    pub word_order: Order,
    /// Multiplier; numeric types only.
    pub scale: Option<f64>,
    /// Added after `scale`; numeric types only.
    pub offset: Option<f64>,
}

impl Codec {
    /// A codec with the standard (big/big) orders and no scaling.
    pub fn plain(data_type: DataType, len: u16) -> Self {
        Self {
            data_type,
            len,
            byte_order: Order::Big,
            word_order: Order::Big,
            scale: None,
            offset: None,
        }
    }

    /// Decodes a coil or discrete input.
    pub fn decode_bit(&self, bit: bool) -> Value {
        Value::Bool(bit)
    }

    /// Decodes the point's registers (`regs.len()` must be `self.len`); the error is the reason
    /// of a Bad reading.
    pub fn decode_registers(&self, regs: &[u16]) -> Result<Value, String> {
        if regs.len() != usize::from(self.len) {
            return Err(format!(
                "expected {} registers, got {}",
                self.len,
                regs.len()
            ));
        }
        match self.data_type {
            DataType::Bool => Ok(Value::Bool(regs.iter().any(|&r| r != 0))),
            DataType::String => self.decode_string(regs),
            DataType::U16 => Ok(self.numeric(u16::from_be_bytes(self.bytes(regs)?).into())),
            DataType::I16 => Ok(self.numeric(i16::from_be_bytes(self.bytes(regs)?).into())),
            DataType::U32 => Ok(self.numeric(u32::from_be_bytes(self.bytes(regs)?).into())),
            DataType::I32 => Ok(self.numeric(i32::from_be_bytes(self.bytes(regs)?).into())),
            DataType::F32 => Ok(self.float(f32::from_be_bytes(self.bytes(regs)?).into())),
            DataType::F64 => Ok(self.float(f64::from_be_bytes(self.bytes(regs)?))),
        }
    }

    /// The value's bytes, most significant first, after undoing both orders.
    fn bytes<const N: usize>(&self, regs: &[u16]) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        if regs.len() * 2 != N {
            return Err(format!("{} needs {} registers", self.data_type, N / 2));
        }
        let word = |i: usize| match self.word_order {
            Order::Big => regs[i],
            Order::Little => regs[regs.len() - 1 - i],
        };
        for (i, pair) in out.chunks_exact_mut(2).enumerate() {
            let bytes = match self.byte_order {
                Order::Big => word(i).to_be_bytes(),
                Order::Little => word(i).to_le_bytes(),
            };
            pair.copy_from_slice(&bytes);
        }
        Ok(out)
    }

    fn decode_string(&self, regs: &[u16]) -> Result<Value, String> {
        let mut bytes = Vec::with_capacity(regs.len() * 2);
        for &reg in regs {
            match self.byte_order {
                Order::Big => bytes.extend_from_slice(&reg.to_be_bytes()),
                Order::Little => bytes.extend_from_slice(&reg.to_le_bytes()),
            }
        }
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        String::from_utf8(bytes)
            .map(Value::Str)
            .map_err(|e| format!("string is not UTF-8: {e}"))
    }

    /// An integer, as `I64` unless scaled.
    fn numeric(&self, raw: i64) -> Value {
        if self.scale.is_none() && self.offset.is_none() {
            Value::I64(raw)
        } else {
            // i64 → f64 is exact for every 32-bit source value.
            self.float(raw as f64)
        }
    }

    /// `raw` scaled and offset, as a float.
    pub(crate) fn float(&self, raw: f64) -> Value {
        let scaled = match self.scale {
            None => raw,
            // Decimal scales (0.1, 0.01, ...) are not exact in binary: 3 × 0.1 is
            // 0.30000000000000004, 3 / 10 is the 0.3 the device means.
            Some(scale) if scale.abs() < 1.0 && scale != 0.0 => {
                let divisor = 1.0 / scale;
                if (divisor - divisor.round()).abs() < 1e-9 {
                    raw / divisor.round()
                } else {
                    raw * scale
                }
            }
            Some(scale) => raw * scale,
        };
        Value::F64(scaled + self.offset.unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(t: DataType, len: u16, byte: Order, word: Order) -> Codec {
        Codec {
            byte_order: byte,
            word_order: word,
            ..Codec::plain(t, len)
        }
    }

    /// Encodes big-endian bytes the way a device with the given orders stores them; the
    /// inverse of the decoder, written independently.
    fn encode(be: &[u8], byte: Order, word: Order) -> Vec<u16> {
        let mut regs: Vec<[u8; 2]> = be.chunks(2).map(|c| [c[0], c[1]]).collect();
        if word == Order::Little {
            regs.reverse();
        }
        regs.into_iter()
            .map(|[hi, lo]| match byte {
                Order::Big => u16::from_be_bytes([hi, lo]),
                Order::Little => u16::from_be_bytes([lo, hi]),
            })
            .collect()
    }

    const ORDERS: [(Order, Order); 4] = [
        (Order::Big, Order::Big),
        (Order::Big, Order::Little),
        (Order::Little, Order::Big),
        (Order::Little, Order::Little),
    ];

    #[test]
    fn u32_in_all_four_orders() {
        let expected = [
            [0x1234, 0x5678],
            [0x5678, 0x1234],
            [0x3412, 0x7856],
            [0x7856, 0x3412],
        ];
        for ((byte, word), regs) in ORDERS.into_iter().zip(expected) {
            let c = codec(DataType::U32, 2, byte, word);
            assert_eq!(
                c.decode_registers(&regs),
                Ok(Value::I64(0x1234_5678)),
                "{byte:?}/{word:?}"
            );
        }
    }

    #[test]
    fn every_type_round_trips_in_every_order() {
        for (byte, word) in ORDERS {
            let cases: Vec<(DataType, Vec<u8>, Value)> = vec![
                (
                    DataType::I32,
                    (-123_456_789i32).to_be_bytes().to_vec(),
                    Value::I64(-123_456_789),
                ),
                (
                    DataType::U32,
                    3_000_000_000u32.to_be_bytes().to_vec(),
                    Value::I64(3_000_000_000),
                ),
                (
                    DataType::F32,
                    (-1.25f32).to_be_bytes().to_vec(),
                    Value::F64(-1.25),
                ),
                (
                    DataType::F64,
                    std::f64::consts::PI.to_be_bytes().to_vec(),
                    Value::F64(std::f64::consts::PI),
                ),
            ];
            for (t, be, value) in cases {
                let regs = encode(&be, byte, word);
                let c = codec(t, regs.len() as u16, byte, word);
                assert_eq!(
                    c.decode_registers(&regs),
                    Ok(value),
                    "{t} {byte:?}/{word:?}"
                );
            }
        }
    }

    #[test]
    fn sixteen_bit_types_and_byte_order() {
        let c = Codec::plain(DataType::I16, 1);
        assert_eq!(c.decode_registers(&[0xFFFE]), Ok(Value::I64(-2)));
        let c = Codec::plain(DataType::U16, 1);
        assert_eq!(c.decode_registers(&[0xFFFE]), Ok(Value::I64(65534)));
        let c = codec(DataType::U16, 1, Order::Little, Order::Big);
        assert_eq!(c.decode_registers(&[0x3412]), Ok(Value::I64(0x1234)));
        let c = codec(DataType::I16, 1, Order::Little, Order::Big);
        assert_eq!(c.decode_registers(&[0xFEFF]), Ok(Value::I64(-2)));
    }

    #[test]
    fn scale_and_offset_make_floats() {
        let c = Codec {
            scale: Some(0.1),
            offset: Some(-20.0),
            ..Codec::plain(DataType::U16, 1)
        };
        match c.decode_registers(&[1000]) {
            Ok(Value::F64(v)) => assert!((v - 80.0).abs() < 1e-9, "{v}"),
            other => panic!("{other:?}"),
        }
        let c = Codec {
            scale: Some(2.0),
            ..Codec::plain(DataType::I32, 2)
        };
        assert_eq!(c.decode_registers(&[0xFFFF, 0xFFFF]), Ok(Value::F64(-2.0)));
        let tenths = Codec {
            scale: Some(0.1),
            ..Codec::plain(DataType::U16, 1)
        };
        assert_eq!(tenths.decode_registers(&[3]), Ok(Value::F64(0.3)));
        let hundredths = Codec {
            scale: Some(0.01),
            ..Codec::plain(DataType::I16, 1)
        };
        assert_eq!(
            hundredths.decode_registers(&[0xFFF9]),
            Ok(Value::F64(-0.07))
        );
        let c = Codec {
            offset: Some(1.5),
            ..Codec::plain(DataType::F32, 2)
        };
        assert_eq!(
            c.decode_registers(&encode(&2.0f32.to_be_bytes(), Order::Big, Order::Big)),
            Ok(Value::F64(3.5))
        );
    }

    #[test]
    fn strings_trim_trailing_nuls_and_honour_byte_order() {
        let c = Codec::plain(DataType::String, 3);
        assert_eq!(
            c.decode_registers(&[0x4142, 0x4344, 0x4500]),
            Ok(Value::Str("ABCDE".into()))
        );
        let c = codec(DataType::String, 2, Order::Little, Order::Big);
        assert_eq!(
            c.decode_registers(&[0x4241, 0x0043]),
            Ok(Value::Str("ABC".into()))
        );
        let c = Codec::plain(DataType::String, 1);
        assert!(c.decode_registers(&[0xFFFE]).is_err());
    }

    #[test]
    fn bools_and_wrong_lengths() {
        let c = Codec::plain(DataType::Bool, 1);
        assert_eq!(c.decode_registers(&[0]), Ok(Value::Bool(false)));
        assert_eq!(c.decode_registers(&[4]), Ok(Value::Bool(true)));
        assert_eq!(c.decode_bit(true), Value::Bool(true));
        let c = Codec::plain(DataType::F64, 4);
        assert!(c.decode_registers(&[1, 2]).is_err());
    }
}
