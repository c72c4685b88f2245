//! WAV (RIFF/WAVE) clips: what a clip holds, and its samples as one mono signal.
//!
//! Acoustic and vibration sensors hand over short recordings as WAV far more often than as
//! anything else, and its PCM layout is a few dozen lines to read, so Fabrik reads it itself
//! rather than linking a general audio decoder (see decision 0020). Integer PCM of 8, 16, 24
//! and 32 bits and IEEE float of 32 and 64 bits are read, plain or as WAVE_FORMAT_EXTENSIBLE;
//! compressed formats (ADPCM, µ-law, MP3 in WAV) are refused by name.

use crate::CoreError;

const FORMAT_PCM: u16 = 0x0001;
const FORMAT_IEEE_FLOAT: u16 = 0x0003;
const FORMAT_ALAW: u16 = 0x0006;
const FORMAT_MULAW: u16 = 0x0007;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;
/// The tail shared by every KSDATAFORMAT_SUBTYPE GUID; the first two bytes are the format tag.
const SUBTYPE_TAIL: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

/// How the samples of a clip are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// Signed integers (unsigned for 8 bits), little-endian.
    Integer,
    /// IEEE floats, little-endian.
    Float,
}

/// What a WAV clip holds, read from its header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WavInfo {
    /// Frames per second.
    pub sample_rate: u32,
    /// Samples per frame.
    pub channels: u16,
    /// Bits of one sample.
    pub bits_per_sample: u16,
    /// Integer or float samples.
    pub format: SampleFormat,
    /// Whole frames in the data chunk.
    pub frames: u64,
}

impl WavInfo {
    /// Length of the clip in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frames as f64 / f64::from(self.sample_rate)
    }
}

fn invalid(reason: impl Into<String>) -> CoreError {
    CoreError::InvalidWav(reason.into())
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Whether `bytes` start like a WAV file (`RIFF....WAVE`), whatever follows.
pub fn looks_like_wav(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE"
}

/// The header of a WAV clip and where its samples are (`data` chunk offset and length).
fn parse(bytes: &[u8]) -> Result<(WavInfo, usize, usize), CoreError> {
    if bytes.len() >= 4 && (&bytes[..4] == b"RF64" || &bytes[..4] == b"BW64") {
        return Err(invalid(
            "RF64/BW64 (WAV over 4 GiB) is not supported; split the recording",
        ));
    }
    if !looks_like_wav(bytes) {
        return Err(invalid("does not start with `RIFF....WAVE`"));
    }
    let mut format: Option<(SampleFormat, u16, u32, u16, u16)> = None;
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let declared = u32_at(bytes, at + 4) as usize;
        let body = at + 8;
        match id {
            b"fmt " => {
                if declared < 16 || body + 16 > bytes.len() {
                    return Err(invalid(format!(
                        "`fmt ` chunk at byte {at} is {declared} bytes; at least 16 are needed"
                    )));
                }
                let tag = u16_at(bytes, body);
                let channels = u16_at(bytes, body + 2);
                let sample_rate = u32_at(bytes, body + 4);
                let block_align = u16_at(bytes, body + 12);
                let bits = u16_at(bytes, body + 14);
                let tag = if tag == FORMAT_EXTENSIBLE {
                    if declared < 40 || body + 40 > bytes.len() {
                        return Err(invalid(
                            "WAVE_FORMAT_EXTENSIBLE `fmt ` chunk is shorter than 40 bytes",
                        ));
                    }
                    let guid = &bytes[body + 24..body + 40];
                    if guid[2..] != SUBTYPE_TAIL {
                        return Err(invalid(
                            "WAVE_FORMAT_EXTENSIBLE with a sub-format that is not PCM or float",
                        ));
                    }
                    u16_at(guid, 0)
                } else {
                    tag
                };
                let kind = match tag {
                    FORMAT_PCM => SampleFormat::Integer,
                    FORMAT_IEEE_FLOAT => SampleFormat::Float,
                    FORMAT_ALAW | FORMAT_MULAW => {
                        return Err(invalid(format!(
                            "{} WAV is not supported; convert it to PCM",
                            if tag == FORMAT_ALAW {
                                "A-law"
                            } else {
                                "µ-law"
                            }
                        )));
                    }
                    other => {
                        return Err(invalid(format!(
                            "format tag {other:#06x} is compressed audio, not supported; \
                             convert it to PCM or float"
                        )));
                    }
                };
                format = Some((kind, channels, sample_rate, block_align, bits));
            }
            b"data" => {
                let (kind, channels, sample_rate, block_align, bits) =
                    format.ok_or_else(|| invalid("`data` chunk before any `fmt ` chunk"))?;
                let valid_bits = match kind {
                    SampleFormat::Integer => matches!(bits, 8 | 16 | 24 | 32),
                    SampleFormat::Float => matches!(bits, 32 | 64),
                };
                if !valid_bits {
                    return Err(invalid(format!(
                        "{bits}-bit {} samples are not supported (integer: 8, 16, 24, 32; \
                         float: 32, 64)",
                        match kind {
                            SampleFormat::Integer => "integer",
                            SampleFormat::Float => "float",
                        }
                    )));
                }
                if channels == 0 {
                    return Err(invalid("0 channels"));
                }
                if sample_rate == 0 {
                    return Err(invalid("sample rate 0"));
                }
                let frame_bytes = usize::from(channels) * usize::from(bits / 8);
                if usize::from(block_align) != frame_bytes {
                    return Err(invalid(format!(
                        "block align {block_align} does not match {channels} channels of \
                         {bits} bits ({frame_bytes})"
                    )));
                }
                // Writers that stream leave the lengths at 0 or 0xFFFFFFFF: the data then runs
                // to the end of the file (only if the RIFF length is unset too; otherwise 0 is
                // an empty chunk). A length past the end is a truncated file.
                let riff = u32_at(bytes, 4);
                let streamed = declared == u32::MAX as usize
                    || (declared == 0 && (riff == 0 || riff == u32::MAX));
                let length = if streamed {
                    bytes.len() - body
                } else if body + declared > bytes.len() {
                    return Err(invalid(format!(
                        "truncated: the `data` chunk declares {declared} bytes, {} are there",
                        bytes.len() - body
                    )));
                } else {
                    declared
                };
                let info = WavInfo {
                    sample_rate,
                    channels,
                    bits_per_sample: bits,
                    format: kind,
                    frames: (length / frame_bytes) as u64,
                };
                return Ok((info, body, length - length % frame_bytes));
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        at = body.saturating_add(declared).saturating_add(declared & 1);
    }
    Err(invalid(if format.is_none() {
        "no `fmt ` chunk"
    } else {
        "no `data` chunk"
    }))
}

/// Reads the header of a WAV clip.
pub fn wav_info(bytes: &[u8]) -> Result<WavInfo, CoreError> {
    parse(bytes).map(|(info, _, _)| info)
}

/// The clip's samples as one signal in [−1, 1] (integers scaled by 2^(bits−1), as soundfile
/// and librosa read them), its channels averaged into one (librosa's `mono=True`).
pub fn decode_mono(bytes: &[u8]) -> Result<(WavInfo, Vec<f64>), CoreError> {
    let (info, offset, length) = parse(bytes)?;
    let data = &bytes[offset..offset + length];
    let width = usize::from(info.bits_per_sample / 8);
    let channels = usize::from(info.channels);
    let sample = |chunk: &[u8]| -> f64 {
        match (info.format, width) {
            (SampleFormat::Integer, 1) => (f64::from(chunk[0]) - 128.0) / 128.0,
            (SampleFormat::Integer, 2) => {
                f64::from(i16::from_le_bytes([chunk[0], chunk[1]])) / 32_768.0
            }
            (SampleFormat::Integer, 3) => {
                // Sign-extend the 24-bit value by placing it in the top of an i32.
                let value = i32::from_le_bytes([0, chunk[0], chunk[1], chunk[2]]) >> 8;
                f64::from(value) / 8_388_608.0
            }
            (SampleFormat::Integer, _) => {
                f64::from(i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
                    / 2_147_483_648.0
            }
            (SampleFormat::Float, 4) => {
                f64::from(f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            }
            (SampleFormat::Float, _) => f64::from_le_bytes([
                chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
            ]),
        }
    };
    let samples = data
        .chunks_exact(width * channels)
        .map(|frame| {
            let total: f64 = frame.chunks_exact(width).map(sample).sum();
            total / channels as f64
        })
        .collect();
    Ok((info, samples))
}

/// A WAV file of 16-bit integer PCM: what simulators and tests write.
pub fn encode_pcm16(sample_rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16_u32.to_le_bytes());
    out.extend_from_slice(&FORMAT_PCM.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels * 2).to_le_bytes());
    out.extend_from_slice(&16_u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV file with a `fmt ` chunk of the given fields and raw sample bytes.
    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8], extra: &[u8]) -> Vec<u8> {
        let align = channels * bits / 8;
        let mut fmt = Vec::new();
        fmt.extend_from_slice(&tag.to_le_bytes());
        fmt.extend_from_slice(&channels.to_le_bytes());
        fmt.extend_from_slice(&rate.to_le_bytes());
        fmt.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        fmt.extend_from_slice(&align.to_le_bytes());
        fmt.extend_from_slice(&bits.to_le_bytes());
        fmt.extend_from_slice(extra);
        let mut body = b"WAVE".to_vec();
        body.extend_from_slice(b"fmt ");
        body.extend_from_slice(&(fmt.len() as u32).to_le_bytes());
        body.extend_from_slice(&fmt);
        // An odd-length chunk before the data exercises the padding rule.
        body.extend_from_slice(b"LIST");
        body.extend_from_slice(&3_u32.to_le_bytes());
        body.extend_from_slice(b"abc\0");
        body.extend_from_slice(b"data");
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(data);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn pcm16_stereo_is_averaged_into_one_scaled_signal() {
        let frames: [[i16; 2]; 3] = [[16_384, 0], [-32_768, -32_768], [100, -100]];
        let data: Vec<u8> = frames
            .iter()
            .flatten()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let (info, samples) = decode_mono(&wav(FORMAT_PCM, 2, 8_000, 16, &data, &[])).unwrap();
        assert_eq!(
            (info.sample_rate, info.channels, info.frames),
            (8_000, 2, 3)
        );
        assert_eq!(samples, vec![0.25, -1.0, 0.0]);
        assert!((info.duration_s() - 3.0 / 8_000.0).abs() < 1e-15);
    }

    #[test]
    fn every_supported_width_reads_full_scale_and_sign() {
        let cases: [(u16, u16, Vec<u8>, [f64; 2]); 5] = [
            (FORMAT_PCM, 8, vec![255, 0], [127.0 / 128.0, -1.0]),
            (
                FORMAT_PCM,
                24,
                vec![0, 0, 0x40, 0xff, 0xff, 0xff],
                [0.5, -1.0 / 8_388_608.0],
            ),
            (
                FORMAT_PCM,
                32,
                [i32::MIN, 1 << 30]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                [-1.0, 0.5],
            ),
            (
                FORMAT_IEEE_FLOAT,
                32,
                [0.75_f32, -0.125]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                [0.75, -0.125],
            ),
            (
                FORMAT_IEEE_FLOAT,
                64,
                [0.1_f64, -0.9]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                [0.1, -0.9],
            ),
        ];
        for (tag, bits, data, want) in cases {
            let (info, samples) = decode_mono(&wav(tag, 1, 48_000, bits, &data, &[])).unwrap();
            assert_eq!(info.bits_per_sample, bits);
            assert_eq!(samples, want, "{bits}-bit tag {tag}");
        }
    }

    #[test]
    fn extensible_format_reads_its_sub_format() {
        let mut extra = vec![22, 0, 16, 0, 4, 0, 0, 0];
        extra.extend_from_slice(&FORMAT_IEEE_FLOAT.to_le_bytes());
        extra.extend_from_slice(&SUBTYPE_TAIL);
        let data: Vec<u8> = 0.5_f32.to_le_bytes().to_vec();
        let bytes = wav(FORMAT_EXTENSIBLE, 1, 16_000, 32, &data, &extra);
        let (info, samples) = decode_mono(&bytes).unwrap();
        assert_eq!(info.format, SampleFormat::Float);
        assert_eq!(samples, vec![0.5]);
    }

    #[test]
    fn the_encoder_writes_what_the_decoder_reads() {
        let bytes = encode_pcm16(16_000, 1, &[0, 8_192, -16_384]);
        assert!(looks_like_wav(&bytes));
        let (info, samples) = decode_mono(&bytes).unwrap();
        assert_eq!((info.sample_rate, info.frames), (16_000, 3));
        assert_eq!(samples, vec![0.0, 0.25, -0.5]);
    }

    #[test]
    fn bad_clips_are_refused_naming_the_problem() {
        let good = encode_pcm16(16_000, 1, &[1, 2, 3, 4]);
        let message = |bytes: &[u8]| decode_mono(bytes).unwrap_err().to_string();
        assert!(message(b"OggS....").contains("RIFF....WAVE"));
        assert!(message(&good[..good.len() - 2]).contains("truncated"));
        let adpcm = wav(0x0002, 1, 8_000, 16, &[0, 0], &[]);
        assert!(message(&adpcm).contains("0x0002"), "{}", message(&adpcm));
        let mulaw = wav(FORMAT_MULAW, 1, 8_000, 8, &[0], &[]);
        assert!(message(&mulaw).contains("µ-law"));
        let twelve = wav(FORMAT_PCM, 1, 8_000, 12, &[0, 0], &[]);
        assert!(message(&twelve).contains("12-bit"), "{}", message(&twelve));
        let mut no_data = good.clone();
        no_data.truncate(36);
        assert!(message(&no_data).contains("no `data` chunk"));
        let mut rf64 = good.clone();
        rf64[..4].copy_from_slice(b"RF64");
        assert!(message(&rf64).contains("RF64"));
        let mut zero_rate = good;
        zero_rate[24..28].copy_from_slice(&0_u32.to_le_bytes());
        assert!(message(&zero_rate).contains("sample rate 0"));
    }

    #[test]
    fn a_streamed_length_runs_to_the_end_and_half_frames_are_dropped() {
        let mut bytes = encode_pcm16(8_000, 1, &[10, 20, 30]);
        bytes[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes.push(7);
        let (info, samples) = decode_mono(&bytes).unwrap();
        assert_eq!(info.frames, 3);
        assert_eq!(samples.len(), 3);
        // A data length of 0 in a file whose RIFF length is set is an empty chunk.
        let mut empty = encode_pcm16(8_000, 1, &[10, 20, 30]);
        empty[40..44].copy_from_slice(&0_u32.to_le_bytes());
        assert_eq!(wav_info(&empty).unwrap().frames, 0);
        empty[4..8].copy_from_slice(&0_u32.to_le_bytes());
        assert_eq!(
            wav_info(&empty).unwrap().frames,
            3,
            "both lengths unset: streamed"
        );
    }
}
