//! Measured-boot event logs (TCG PC Client Platform Firmware Profile, section 10): the record
//! the firmware, boot loader and kernel keep of every measurement they extended into a PCR,
//! as Linux exposes it at `/sys/kernel/security/tpm0/binary_bios_measurements` and
//! `tpm2_eventlog` reads it. Parsing (crypto-agile and SHA-1-only logs), writing, replaying
//! into PCR values, and naming each event for an operator.

use std::collections::BTreeMap;

use ring::digest;
use serde::{Deserialize, Serialize};

use super::{bank_name, hex};

/// `EV_NO_ACTION`: logged, never extended (the Spec ID and StartupLocality events).
pub const EV_NO_ACTION: u32 = 0x3;
/// `EV_SEPARATOR`: the end of a pre-OS phase in a PCR.
pub const EV_SEPARATOR: u32 = 0x4;
/// `EV_EFI_BOOT_SERVICES_APPLICATION`: a UEFI application loaded (shim, GRUB, a kernel).
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// `EV_IPL`: what a boot loader measured (GRUB's commands and kernel command line).
pub const EV_IPL: u32 = 0xd;
/// The signature of the first event of a crypto-agile log.
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// The signature of the event that sets PCR 0's starting value to the startup locality.
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";
/// The most events a log may hold: real ones hold tens to a few hundred.
const MOST_EVENTS: usize = 5_000;
/// The largest log taken: real ones are 20-100 KB.
pub const MOST_BYTES: usize = 4 << 20;
/// PCRs of a TPM 2.0 PC Client platform.
const PCR_COUNT: u32 = 24;
/// The most bytes one event's data may hold (a firmware's certificate database can be tens
/// of kilobytes).
const MOST_EVENT_DATA: usize = 1 << 20;
/// The PCRs a boot's log accounts for whole: the firmware's (0-7) and the boot loader's (8-9,
/// through the firmware's TCG2 protocol). A log without events for one of them leaves
/// measurements out, so it is held to them whether or not it names them; other PCRs (IMA's
/// 10, what the OS extends after the firmware handed over) only where it has events.
pub const BOOT_PCRS: std::ops::RangeInclusive<u32> = 0..=9;

/// A digest algorithm a log carries: its TPM id and digest size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBank {
    /// `TPM_ALG_ID` (0x0004 sha1, 0x000b sha256, ...).
    pub algorithm: u16,
    /// Bytes per digest.
    pub size: u16,
}

/// One logged measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// The PCR it was extended into.
    pub pcr: u32,
    /// `EV_*` event type.
    pub event_type: u32,
    /// Its digest in each of the log's banks, in the log's order.
    pub digests: Vec<(u16, Vec<u8>)>,
    /// The event data (what was measured is described here; the digest is usually of
    /// something else, such as an image's PE hash).
    pub data: Vec<u8>,
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// The digest algorithms of every event, as the Spec ID event declares them; only SHA-1
    /// for a log in the old format.
    pub banks: Vec<LogBank>,
    /// Whether the log is crypto-agile (starts with a Spec ID event).
    pub crypto_agile: bool,
    /// The events after the Spec ID event, in log order.
    pub events: Vec<LoggedEvent>,
}

/// An event as an operator reads it: which PCR, what kind, its digest in one bank, and what
/// was measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MeasuredEvent {
    /// Position in the log (1 = the first event after the Spec ID event).
    pub sequence: u32,
    /// The PCR it extended.
    pub pcr: u32,
    /// `EV_*` name (or the number in hex for an unknown type).
    pub event_type: String,
    /// Its digest in the bank checked (hex).
    pub digest: String,
    /// What was measured: a file path, a UEFI variable's name, a boot loader's command, or
    /// the size of data that has no text.
    pub description: String,
    /// Whether the digest is the hash of the event's data, which binds the description to
    /// what the replay vouches for. An image's path never is (its digest is the image's): the
    /// device's software could have written any name there.
    #[serde(default)]
    pub verified: bool,
}

/// A little-endian reader over the log that names where it fails.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str, event: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "event log: event {event} ends at byte {} inside its {field} ({n} bytes wanted at byte {})",
                self.bytes.len(),
                self.at
            ));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u16(&mut self, field: &str, event: usize) -> Result<u16, String> {
        let b = self.take(2, field, event)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &str, event: usize) -> Result<u32, String> {
        let b = self.take(4, field, event)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Whether only zero padding is left (some firmware hands over its log buffer whole):
    /// nothing past `end`, the position after the last non-zero byte, found once.
    fn at_end(&self, end: usize) -> bool {
        self.at >= end
    }
}

/// The `TCG_PCClientPCREvent` every log starts with (SHA-1 digest, the old format).
fn legacy_event(r: &mut Reader<'_>, event: usize) -> Result<LoggedEvent, String> {
    let pcr = r.u32("pcrIndex", event)?;
    let event_type = r.u32("eventType", event)?;
    let digest = r.take(20, "digest", event)?.to_vec();
    let data = event_data(r, event)?;
    Ok(LoggedEvent {
        pcr,
        event_type,
        digests: vec![(0x0004, digest)],
        data,
    })
}

fn event_data(r: &mut Reader<'_>, event: usize) -> Result<Vec<u8>, String> {
    let size = r.u32("eventSize", event)? as usize;
    if size > MOST_EVENT_DATA {
        return Err(format!(
            "event log: event {event} claims {size} bytes of data (at most {MOST_EVENT_DATA})"
        ));
    }
    Ok(r.take(size, "event data", event)?.to_vec())
}

/// The banks a Spec ID event (`TCG_EfiSpecIDEvent`) declares.
fn spec_id_banks(data: &[u8]) -> Result<Vec<LogBank>, String> {
    let mut r = Reader {
        bytes: data,
        at: 16,
    };
    // platformClass, specVersionMinor/Major, specErrata, uintnSize.
    r.take(8, "Spec ID header", 0)?;
    let count = r.u32("numberOfAlgorithms", 0)?;
    if count == 0 || count > 8 {
        return Err(format!(
            "event log: the Spec ID event declares {count} digest algorithms (1 to 8 expected)"
        ));
    }
    let mut banks = Vec::new();
    for _ in 0..count {
        let algorithm = r.u16("algorithmId", 0)?;
        let size = r.u16("digestSize", 0)?;
        let known = hash_of(algorithm).map(|h| h.output_len());
        if size == 0 || size > 64 || known.is_some_and(|k| k != usize::from(size)) {
            return Err(format!(
                "event log: the Spec ID event gives {} a digest size of {size}",
                bank_name(algorithm)
            ));
        }
        if banks.iter().any(|b: &LogBank| b.algorithm == algorithm) {
            return Err(format!(
                "event log: the Spec ID event declares {} twice",
                bank_name(algorithm)
            ));
        }
        banks.push(LogBank { algorithm, size });
    }
    Ok(banks)
}

/// Parses a binary event log.
pub fn parse(bytes: &[u8]) -> Result<EventLog, String> {
    let mut r = Reader { bytes, at: 0 };
    if bytes.is_empty() {
        return Err("event log: empty".into());
    }
    if bytes.len() > MOST_BYTES {
        return Err(format!(
            "event log: {} bytes; a boot's log is at most {MOST_BYTES}",
            bytes.len()
        ));
    }
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    let first = legacy_event(&mut r, 0)?;
    let crypto_agile = first.event_type == EV_NO_ACTION
        && first.pcr == 0
        && first.data.starts_with(SPEC_ID_SIGNATURE);
    let mut log = EventLog {
        banks: vec![LogBank {
            algorithm: 0x0004,
            size: 20,
        }],
        crypto_agile,
        events: Vec::new(),
    };
    if crypto_agile {
        log.banks = spec_id_banks(&first.data)?;
    } else {
        log.events.push(first);
    }
    while !r.at_end(end) {
        let event = log.events.len() + 1;
        if log.events.len() >= MOST_EVENTS {
            return Err(format!(
                "event log: more than {MOST_EVENTS} events; not a boot's log"
            ));
        }
        if !crypto_agile {
            log.events.push(legacy_event(&mut r, event)?);
            continue;
        }
        let pcr = r.u32("pcrIndex", event)?;
        let event_type = r.u32("eventType", event)?;
        let count = r.u32("digest count", event)? as usize;
        if count != log.banks.len() {
            return Err(format!(
                "event log: event {event} carries {count} digests, the Spec ID event declares {} algorithms",
                log.banks.len()
            ));
        }
        let mut digests: Vec<(u16, Vec<u8>)> = Vec::with_capacity(count);
        for _ in 0..count {
            let algorithm = r.u16("digest algorithm", event)?;
            let Some(bank) = log.banks.iter().find(|b| b.algorithm == algorithm) else {
                return Err(format!(
                    "event log: event {event} has a digest of {}, which the Spec ID event does not declare",
                    bank_name(algorithm)
                ));
            };
            if digests.iter().any(|(a, _)| *a == algorithm) {
                return Err(format!(
                    "event log: event {event} carries two {} digests",
                    bank_name(algorithm)
                ));
            }
            digests.push((
                algorithm,
                r.take(usize::from(bank.size), "digest", event)?.to_vec(),
            ));
        }
        let data = event_data(&mut r, event)?;
        log.events.push(LoggedEvent {
            pcr,
            event_type,
            digests,
            data,
        });
    }
    check_events(&log)?;
    Ok(log)
}

/// Checks what the format allows but no boot writes: PCRs a TPM does not have, and a
/// StartupLocality event other than one before anything is extended into PCR 0.
fn check_events(log: &EventLog) -> Result<(), String> {
    let mut extended_pcr0 = false;
    let mut locality_seen = false;
    for (position, event) in log.events.iter().enumerate() {
        let number = position + usize::from(log.crypto_agile);
        if event.pcr >= PCR_COUNT {
            return Err(format!(
                "event log: event {number} extends PCR {}; a TPM has PCRs 0 to {}",
                event.pcr,
                PCR_COUNT - 1
            ));
        }
        if is_startup_locality(event) {
            if locality_seen || extended_pcr0 {
                return Err(format!(
                    "event log: event {number} sets PCR 0's start again, or after PCR 0 was extended: only the first event of PCR 0 may"
                ));
            }
            locality_seen = true;
        } else if event.pcr == 0 && event.event_type != EV_NO_ACTION {
            extended_pcr0 = true;
        }
    }
    Ok(())
}

fn is_startup_locality(event: &LoggedEvent) -> bool {
    event.event_type == EV_NO_ACTION
        && event.pcr == 0
        && event.data.len() >= 17
        && event.data.starts_with(STARTUP_LOCALITY_SIGNATURE)
}

/// Writes a log in the crypto-agile format (or the old one when `crypto_agile` is false and
/// the only bank is SHA-1): what a firmware hands over, for simulated devices and tests.
pub fn encode(log: &EventLog) -> Vec<u8> {
    let mut out = Vec::new();
    let put32 = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
    if log.crypto_agile {
        let mut spec = SPEC_ID_SIGNATURE.to_vec();
        // platformClass 0 (client), spec version 2.0 errata 0, uintnSize 2 (64-bit UINTN).
        spec.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2]);
        spec.extend_from_slice(&(log.banks.len() as u32).to_le_bytes());
        for bank in &log.banks {
            spec.extend_from_slice(&bank.algorithm.to_le_bytes());
            spec.extend_from_slice(&bank.size.to_le_bytes());
        }
        spec.push(0);
        put32(&mut out, 0);
        put32(&mut out, EV_NO_ACTION);
        out.extend_from_slice(&[0; 20]);
        put32(&mut out, spec.len() as u32);
        out.extend_from_slice(&spec);
    }
    for event in &log.events {
        put32(&mut out, event.pcr);
        put32(&mut out, event.event_type);
        if log.crypto_agile {
            put32(&mut out, event.digests.len() as u32);
            for (algorithm, value) in &event.digests {
                out.extend_from_slice(&algorithm.to_le_bytes());
                out.extend_from_slice(value);
            }
        } else {
            let sha1 = event.digests.iter().find(|(a, _)| *a == 0x0004);
            out.extend_from_slice(sha1.map_or(&[0u8; 20][..], |(_, v)| v));
        }
        put32(&mut out, event.data.len() as u32);
        out.extend_from_slice(&event.data);
    }
    out
}

/// Text as UCS-2, little-endian, as UEFI writes names and paths.
fn ucs2_bytes(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The data of an image load event (`UEFI_IMAGE_LOAD_EVENT`) for a file on a disk, as
/// firmware logs shim, GRUB or a kernel it starts: for simulated devices and tests.
pub fn efi_image_load(path: &str) -> Vec<u8> {
    let name = ucs2_bytes(&format!("{path}\0"));
    let mut device_path = vec![4, 1, 42, 0];
    // A hard-drive media node (partition number, start, size, signature: zero here).
    device_path.extend_from_slice(&[0; 38]);
    device_path.extend_from_slice(&[4, 4]);
    device_path.extend_from_slice(
        &u16::try_from(4 + name.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    device_path.extend_from_slice(&name);
    device_path.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    let mut data = Vec::new();
    for value in [0x7d00_0000_u64, 0x10_0000, 0, device_path.len() as u64] {
        data.extend_from_slice(&value.to_le_bytes());
    }
    data.extend_from_slice(&device_path);
    data
}

/// The data of a UEFI variable event (`UEFI_VARIABLE_DATA`): for simulated devices and tests.
pub fn efi_variable(name: &str, value: &[u8]) -> Vec<u8> {
    // EFI_GLOBAL_VARIABLE's GUID, as SecureBoot, PK and KEK are measured under.
    let mut data = vec![
        0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b,
        0x8c,
    ];
    data.extend_from_slice(&(name.encode_utf16().count() as u64).to_le_bytes());
    data.extend_from_slice(&(value.len() as u64).to_le_bytes());
    data.extend_from_slice(&ucs2_bytes(name));
    data.extend_from_slice(value);
    data
}

/// The `ring` algorithm of a bank, if Fabrik can replay it.
pub(crate) fn hash_of(algorithm: u16) -> Option<&'static digest::Algorithm> {
    match algorithm {
        0x0004 => Some(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        0x000b => Some(&digest::SHA256),
        0x000c => Some(&digest::SHA384),
        0x000d => Some(&digest::SHA512),
        _ => None,
    }
}

/// The TPM algorithm id of a bank name.
pub fn algorithm_of(bank: &str) -> Option<u16> {
    match bank {
        "sha1" => Some(0x0004),
        "sha256" => Some(0x000b),
        "sha384" => Some(0x000c),
        "sha512" => Some(0x000d),
        _ => None,
    }
}

impl EventLog {
    /// The PCR values the log's events extend to in `bank`, for every PCR it extends (a
    /// StartupLocality event sets PCR 0's starting value, as the TPM did at startup).
    pub fn replay(&self, bank: &str) -> Result<BTreeMap<u32, Vec<u8>>, String> {
        let algorithm = algorithm_of(bank)
            .filter(|a| self.banks.iter().any(|b| b.algorithm == *a))
            .ok_or_else(|| {
                let have: Vec<String> = self.banks.iter().map(|b| bank_name(b.algorithm)).collect();
                format!(
                    "the event log has no {bank} digests (it has {}), so it cannot be checked against a {bank} quote",
                    have.join(", ")
                )
            })?;
        let hash =
            hash_of(algorithm).ok_or_else(|| format!("PCR bank {bank} cannot be replayed here"))?;
        let mut pcrs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for event in &self.events {
            if event.event_type == EV_NO_ACTION {
                if is_startup_locality(event) {
                    let mut start = vec![0u8; hash.output_len()];
                    if let Some(last) = start.last_mut() {
                        *last = event.data[16];
                    }
                    pcrs.insert(0, start);
                }
                continue;
            }
            let Some((_, value)) = event.digests.iter().find(|(a, _)| *a == algorithm) else {
                continue;
            };
            let current = pcrs
                .entry(event.pcr)
                .or_insert_with(|| vec![0u8; hash.output_len()]);
            let mut context = digest::Context::new(hash);
            context.update(current);
            context.update(value);
            *current = context.finish().as_ref().to_vec();
        }
        Ok(pcrs)
    }

    /// The events of `bank` extended into `pcrs` (those the replay checked) as an operator
    /// reads them (`EV_NO_ACTION` ones left out).
    pub fn measured(&self, bank: &str, pcrs: &[u32]) -> Vec<MeasuredEvent> {
        let algorithm = algorithm_of(bank);
        let hash = algorithm.and_then(hash_of);
        self.events
            .iter()
            .enumerate()
            .filter(|(_, e)| e.event_type != EV_NO_ACTION && pcrs.contains(&e.pcr))
            .map(|(position, event)| {
                let value = event
                    .digests
                    .iter()
                    .find(|(a, _)| Some(*a) == algorithm)
                    .map(|(_, v)| v.as_slice());
                // The data's hash, with and without a trailing NUL (GRUB logs its strings
                // with one and measures them without).
                // An image's or a firmware blob's digest is of the image: data that hashes to it
                // was made to, and names nothing that was measured.
                let measures_elsewhere = matches!(
                    event.event_type,
                    0x8000_0003..=0x8000_0005 | 0x8000_0008 | 0x8000_000a
                );
                let verified = !measures_elsewhere
                    && matches!((value, hash), (Some(value), Some(hash))
                    if [&event.data[..], event.data.strip_suffix(&[0]).unwrap_or(&event.data)]
                        .iter()
                        .any(|data| digest::digest(hash, data).as_ref() == value));
                MeasuredEvent {
                    sequence: u32::try_from(position + 1).unwrap_or(u32::MAX),
                    pcr: event.pcr,
                    event_type: event_type_name(event.event_type),
                    digest: value.map(hex).unwrap_or_default(),
                    description: describe(event.event_type, &event.data),
                    verified,
                }
            })
            .collect()
    }
}

/// The `EV_*` name of an event type (TCG PC Client PFP, table 9).
pub fn event_type_name(event_type: u32) -> String {
    let name = match event_type {
        0x0 => "EV_PREBOOT_CERT",
        0x1 => "EV_POST_CODE",
        0x3 => "EV_NO_ACTION",
        0x4 => "EV_SEPARATOR",
        0x5 => "EV_ACTION",
        0x6 => "EV_EVENT_TAG",
        0x7 => "EV_S_CRTM_CONTENTS",
        0x8 => "EV_S_CRTM_VERSION",
        0x9 => "EV_CPU_MICROCODE",
        0xa => "EV_PLATFORM_CONFIG_FLAGS",
        0xb => "EV_TABLE_OF_DEVICES",
        0xc => "EV_COMPACT_HASH",
        0xd => "EV_IPL",
        0xe => "EV_IPL_PARTITION_DATA",
        0xf => "EV_NONHOST_CODE",
        0x10 => "EV_NONHOST_CONFIG",
        0x11 => "EV_NONHOST_INFO",
        0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
        0x8000_000c => "EV_EFI_VARIABLE_BOOT2",
        0x8000_0010 => "EV_EFI_HCRTM_EVENT",
        0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
        0x8000_00e1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
        0x8000_00e2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
        other => return format!("0x{other:08x}"),
    };
    name.to_owned()
}

/// Longest description kept: enough for a path or a kernel command line.
const MOST_DESCRIPTION: usize = 200;

/// What an event's data says was measured.
fn describe(event_type: u32, data: &[u8]) -> String {
    let text = match event_type {
        // UEFI_VARIABLE_DATA: GUID, name length (chars), data length, UCS-2 name, data.
        0x8000_0001 | 0x8000_0002 | 0x8000_000c | 0x8000_00e0 => {
            variable_name(data).map(|name| format!("variable {name}"))
        }
        // UEFI_IMAGE_LOAD_EVENT: location, length, link-time address, device path length,
        // device path.
        0x8000_0003..=0x8000_0005 => image_path(data),
        // UEFI_PLATFORM_FIRMWARE_BLOB2: a sized ASCII description first.
        0x8000_000a | 0x8000_000b => data
            .first()
            .and_then(|&n| data.get(1..1 + usize::from(n)))
            .and_then(printable),
        0x8000_0006 => Some("GPT partition table".to_owned()),
        // 0 ends a phase; 1 or all ones is the firmware's error separator.
        EV_SEPARATOR => Some(if data == [1, 0, 0, 0] || data == [0xff; 4] {
            "separator (error)".to_owned()
        } else {
            "separator".to_owned()
        }),
        _ => None,
    };
    let text = text
        .or_else(|| printable(data))
        .or_else(|| ucs2(data))
        .unwrap_or_else(|| format!("{} bytes", data.len()));
    // The text comes from the device: nothing that could pass for another verdict reason
    // (reasons are joined with `; `) or reorder what is shown (bidirectional controls).
    let text: String = text
        .chars()
        .filter(|c| !c.is_control() && !is_format_character(*c))
        .map(|c| if c == ';' { ',' } else { c })
        .collect();
    if text.chars().count() > MOST_DESCRIPTION {
        text.chars().take(MOST_DESCRIPTION).collect::<String>() + "…"
    } else {
        text
    }
}

/// Unicode's invisible format characters (category Cf) that reorder or hide text: the
/// bidirectional controls, zero-width characters, the BOM and the tag characters.
fn is_format_character(c: char) -> bool {
    matches!(c, '\u{00ad}' | '\u{061c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}'
        | '\u{feff}' | '\u{fff9}'..='\u{fffb}' | '\u{e0000}'..='\u{e007f}')
}

/// Data that is printable ASCII (trailing NULs allowed), as text.
fn printable(data: &[u8]) -> Option<String> {
    let trimmed = data.strip_suffix(&[0]).unwrap_or(data);
    let trimmed = {
        let mut end = trimmed.len();
        while end > 0 && trimmed[end - 1] == 0 {
            end -= 1;
        }
        &trimmed[..end]
    };
    (!trimmed.is_empty()
        && trimmed
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) || b == b'\t'))
    .then(|| String::from_utf8_lossy(trimmed).into_owned())
}

/// Data that is a printable UCS-2 string (trailing NULs allowed), as text.
fn ucs2(data: &[u8]) -> Option<String> {
    if data.len() < 2 || !data.len().is_multiple_of(2) {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    let end = units.iter().rposition(|&u| u != 0)? + 1;
    let text = String::from_utf16(&units[..end]).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

fn le_u64(data: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = data.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

fn variable_name(data: &[u8]) -> Option<String> {
    let chars = usize::try_from(le_u64(data, 16)?).ok()?;
    let name = data.get(32..32usize.checked_add(chars.checked_mul(2)?)?)?;
    ucs2(name)
}

/// The file path nodes (type 4, subtype 4) of an image load event's device path, joined.
fn image_path(data: &[u8]) -> Option<String> {
    let length = usize::try_from(le_u64(data, 24)?).ok()?;
    let mut path = data.get(32..32usize.checked_add(length)?)?;
    let mut parts = Vec::new();
    while path.len() >= 4 {
        let (kind, subtype) = (path[0], path[1]);
        let node = usize::from(u16::from_le_bytes([path[2], path[3]]));
        if kind == 0x7f || node < 4 || node > path.len() {
            break;
        }
        if kind == 4
            && subtype == 4
            && let Some(part) = ucs2(&path[4..node])
        {
            parts.push(part);
        }
        path = &path[node..];
    }
    (!parts.is_empty()).then(|| parts.join(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(algorithm: &'static digest::Algorithm, data: &[u8]) -> Vec<u8> {
        digest::digest(algorithm, data).as_ref().to_vec()
    }

    /// An event measured into both banks, its digest that of its own data.
    fn event(pcr: u32, event_type: u32, data: &[u8]) -> LoggedEvent {
        LoggedEvent {
            pcr,
            event_type,
            digests: vec![
                (0x0004, sha(&digest::SHA1_FOR_LEGACY_USE_ONLY, data)),
                (0x000b, sha(&digest::SHA256, data)),
            ],
            data: data.to_vec(),
        }
    }

    fn boot_log() -> EventLog {
        let mut locality = STARTUP_LOCALITY_SIGNATURE.to_vec();
        locality.push(3);
        EventLog {
            banks: vec![
                LogBank {
                    algorithm: 0x0004,
                    size: 20,
                },
                LogBank {
                    algorithm: 0x000b,
                    size: 32,
                },
            ],
            crypto_agile: true,
            events: vec![
                LoggedEvent {
                    pcr: 0,
                    event_type: EV_NO_ACTION,
                    digests: vec![(0x0004, vec![0; 20]), (0x000b, vec![0; 32])],
                    data: locality,
                },
                event(0, 0x8, &ucs2_bytes("1.4.2\0")),
                event(7, 0x8000_0001, &efi_variable("SecureBoot", &[1])),
                event(
                    4,
                    EV_EFI_BOOT_SERVICES_APPLICATION,
                    &efi_image_load("\\EFI\\BOOT\\BOOTX64.EFI"),
                ),
                event(4, EV_SEPARATOR, &[0; 4]),
                event(8, EV_IPL, b"grub_cmd: linux /vmlinuz root=/dev/sda2\0"),
            ],
        }
    }

    #[test]
    fn a_written_log_parses_back_and_replays_as_a_tpm_extends() {
        let log = boot_log();
        let bytes = encode(&log);
        let parsed = parse(&bytes).expect("parse");
        assert_eq!(parsed, log);
        let pcrs = parsed.replay("sha256").expect("replay");
        // PCR 4: two extends from zero.
        let mut expected = vec![0u8; 32];
        for event in &log.events[3..5] {
            expected = sha(
                &digest::SHA256,
                &[expected, event.digests[1].1.clone()].concat(),
            );
        }
        assert_eq!(pcrs[&4], expected);
        // PCR 0 starts at the locality (3) the StartupLocality event gives.
        let mut start = vec![0u8; 32];
        start[31] = 3;
        let pcr0 = sha(
            &digest::SHA256,
            &[start, log.events[1].digests[1].1.clone()].concat(),
        );
        assert_eq!(pcrs[&0], pcr0);
        assert_eq!(pcrs.keys().copied().collect::<Vec<_>>(), vec![0, 4, 7, 8]);
        assert_eq!(parsed.replay("sha1").expect("sha1").len(), 4);
        let e = parsed.replay("sha384").unwrap_err();
        assert!(
            e.contains("has no sha384 digests (it has sha1, sha256)"),
            "{e}"
        );
    }

    #[test]
    fn events_are_named_as_an_operator_reads_them() {
        let measured = boot_log().measured("sha256", &[0, 4, 7, 8]);
        let described: Vec<(&str, &str)> = measured
            .iter()
            .map(|e| (e.event_type.as_str(), e.description.as_str()))
            .collect();
        assert_eq!(
            described,
            vec![
                ("EV_S_CRTM_VERSION", "1.4.2"),
                ("EV_EFI_VARIABLE_DRIVER_CONFIG", "variable SecureBoot"),
                (
                    "EV_EFI_BOOT_SERVICES_APPLICATION",
                    "\\EFI\\BOOT\\BOOTX64.EFI"
                ),
                ("EV_SEPARATOR", "separator"),
                ("EV_IPL", "grub_cmd: linux /vmlinuz root=/dev/sda2"),
            ]
        );
        // Sequence numbers count the StartupLocality event, as the log does.
        assert_eq!(measured[0].sequence, 2);
        assert_eq!(measured[2].digest.len(), 64);
        // The test's digests are of the events' data: bound to it, but for the image, whose
        // digest must be the image's (data made to hash to it names nothing). GRUB's strings
        // count without their trailing NUL.
        let verified: Vec<bool> = measured.iter().map(|e| e.verified).collect();
        assert_eq!(verified, vec![true, true, false, true, true]);
        let mut log = boot_log();
        log.events[5].digests[1].1 =
            sha(&digest::SHA256, b"grub_cmd: linux /vmlinuz root=/dev/sda2");
        log.events[2].digests[1].1 = vec![7; 32];
        let verified: Vec<bool> = log
            .measured("sha256", &[0, 4, 7, 8])
            .iter()
            .map(|e| e.verified)
            .collect();
        assert_eq!(verified, vec![true, false, false, true, true]);
        assert_eq!(describe(EV_SEPARATOR, &[0xff; 4]), "separator (error)");
        // Only the PCRs asked for.
        let only: Vec<u32> = log.measured("sha256", &[4]).iter().map(|e| e.pcr).collect();
        assert_eq!(only, vec![4, 4]);
        assert_eq!(event_type_name(0x1234), "0x00001234");
        assert_eq!(describe(0x1, &[0xde, 0xad, 0xbe]), "3 bytes");
        // A device's text cannot pass for another reason, or reorder what is shown.
        assert_eq!(
            describe(0x8, &ucs2_bytes("boot; PCR 4 is fine\u{202e}gpj.exe\0")),
            "boot, PCR 4 is finegpj.exe"
        );
        assert_eq!(variable_name(&[0xff; 40]), None);
    }

    #[test]
    fn logs_no_boot_writes_are_refused() {
        // A PCR a TPM does not have.
        let mut log = boot_log();
        log.events[2].pcr = 24;
        let e = parse(&encode(&log)).unwrap_err();
        assert!(
            e.contains("event 3 extends PCR 24; a TPM has PCRs 0 to 23"),
            "{e}"
        );
        // StartupLocality after PCR 0 was extended, or twice.
        let mut log = boot_log();
        let locality = log.events.remove(0);
        log.events.insert(2, locality.clone());
        let e = parse(&encode(&log)).unwrap_err();
        assert!(e.contains("event 3 sets PCR 0's start again"), "{e}");
        let mut log = boot_log();
        log.events.insert(1, locality);
        assert!(
            parse(&encode(&log))
                .unwrap_err()
                .contains("event 2 sets PCR 0's start again")
        );
        // One bank's digest twice in one event.
        let mut log = boot_log();
        log.events[2].digests[1] = log.events[2].digests[0].clone();
        let e = parse(&encode(&log)).unwrap_err();
        assert!(e.contains("event 3 carries two sha1 digests"), "{e}");
        // A wrong digest size for a known algorithm.
        let mut log = boot_log();
        log.banks[1].size = 20;
        log.events
            .iter_mut()
            .for_each(|e| e.digests[1].1.truncate(20));
        let e = parse(&encode(&log)).unwrap_err();
        assert!(e.contains("gives sha256 a digest size of 20"), "{e}");
        // Too large to be a boot's log.
        let e = parse(&vec![1; MOST_BYTES + 1]).unwrap_err();
        assert!(e.contains("a boot's log is at most"), "{e}");
    }

    #[test]
    fn zeros_before_a_last_non_zero_byte_are_events_not_padding() {
        // 100,000 empty legacy events of zeros and a last non-zero byte: not padding, so
        // events, which the cap refuses (the padding's end is found once, not per event).
        let mut bytes = vec![0u8; 32 * 100_000];
        bytes.push(1);
        let e = parse(&bytes).unwrap_err();
        assert!(e.contains("more than 5000 events"), "{e}");
    }

    #[test]
    fn an_old_sha1_log_parses_and_replays_its_one_bank() {
        let mut log = boot_log();
        log.crypto_agile = false;
        log.banks.truncate(1);
        log.events.remove(0);
        for event in &mut log.events {
            event.digests.truncate(1);
        }
        let parsed = parse(&encode(&log)).expect("parse");
        assert!(!parsed.crypto_agile);
        assert_eq!(parsed.events, log.events);
        assert_eq!(parsed.replay("sha1").expect("replay").len(), 4);
        assert!(
            parsed
                .replay("sha256")
                .unwrap_err()
                .contains("has no sha256")
        );
    }

    #[test]
    fn malformed_logs_name_the_event_and_field() {
        let bytes = encode(&boot_log());
        let e = parse(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(
            e.contains("event 6") && e.contains("inside its event data"),
            "{e}"
        );
        assert!(parse(&[]).unwrap_err().contains("empty"));
        // Zero padding after the last event is what some firmware hands over: ignored.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 64]);
        assert_eq!(parse(&padded).expect("padded").events.len(), 6);
        // An event whose digest count differs from the Spec ID event's.
        let mut log = boot_log();
        log.events[2].digests.truncate(1);
        let e = parse(&encode(&log)).unwrap_err();
        assert!(e.contains("event 3 carries 1 digests"), "{e}");
        // An undeclared algorithm.
        let mut log = boot_log();
        log.events[2].digests[0].0 = 0x000c;
        let e = parse(&encode(&log)).unwrap_err();
        assert!(
            e.contains("digest of sha384, which the Spec ID event does not declare"),
            "{e}"
        );
        // A data size no event has.
        let log = boot_log();
        let mut huge = encode(&log);
        let size_at = huge.len() - log.events[5].data.len() - 4;
        huge[size_at..size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            parse(&huge)
                .unwrap_err()
                .contains("claims 4294967295 bytes")
        );
    }
}
