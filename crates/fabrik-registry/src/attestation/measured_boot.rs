//! Measured boot (decision 0058): a quote's event log checked against the PCRs the TPM
//! signed, the newest checked log of each device kept, and, when a quote misses its type's
//! reference values, the events that differ from the reference device's log named.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::tpm::event_log::{self, BOOT_PCRS, EventLog, MeasuredEvent};
use crate::tpm::hex;
use crate::{Registry, RegistryError};

/// How an event log sent with a quote compared with the quoted PCRs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventLogCheck {
    /// Events in the log (`EV_NO_ACTION` ones included).
    pub events: u32,
    /// The bank its events are shown in: the policy's when quoted, else sha256 when quoted,
    /// else the first bank quoted that the log carries.
    pub bank: String,
    /// The PCRs of that bank the log was replayed against: those of 0-9 (the firmware's and
    /// the boot loader's) the quote selected, whether or not the log has events for them.
    /// Every bank quoted is replayed; a mismatch in any fails the quote.
    pub replayed: Vec<u32>,
    /// Whether every one of them replayed to the quoted value.
    pub matches: bool,
}

/// A device's newest event log that replayed to an authentic quote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceEventLog {
    /// The device.
    pub device: String,
    /// The verdict it came with (ns).
    pub time: i64,
    /// The attestation key of that quote.
    pub key_fingerprint: String,
    /// The bank the digests are in.
    pub bank: String,
    /// Its events, in log order.
    pub events: Vec<MeasuredEvent>,
}

/// The event log of the device a policy's values were taken from, kept with the policy so a
/// quote that misses them can be told what changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReferenceLog {
    /// The known-good device.
    pub device: String,
    /// The accepted set (its index in `accept`) its values became: a quote closest to
    /// another set is not explained against this log.
    #[serde(default)]
    pub set: usize,
    /// Its verdict the values came from (ns).
    pub time: i64,
    /// The bank the digests are in.
    pub bank: String,
    /// Its events, in log order.
    pub events: Vec<MeasuredEvent>,
}

/// Replays `log` against an authentic quote's PCRs: the check and, if it does not match, why.
/// The quote's PCRs 0-9 are held to it: a boot's log accounts for them whole, while other
/// PCRs are also extended after it ends (IMA's, systemd's phases of PCR 11).
/// Events are shown in the bank `preferred` (the policy's) when it was quoted, else sha256
/// when it was, else the first bank quoted.
pub(crate) fn check(
    log: &EventLog,
    quoted: &BTreeMap<String, BTreeMap<u32, String>>,
    preferred: Option<&str>,
) -> (EventLogCheck, Vec<String>) {
    let mut reasons = Vec::new();
    let mut replayed = Vec::new();
    let mut banks: Vec<&String> = quoted.keys().collect();
    banks.sort_by_key(|bank| (Some(bank.as_str()) != preferred, *bank != "sha256"));
    let mut shown = None;
    for bank in banks {
        let values = &quoted[bank];
        let replay = match log.replay(bank) {
            Ok(replay) => replay,
            Err(e) => {
                reasons.push(e);
                continue;
            }
        };
        let first = shown.is_none();
        shown.get_or_insert_with(|| bank.clone());
        for (index, value) in values {
            if !BOOT_PCRS.contains(index) {
                continue;
            }
            // The PCRs checked in the bank the events are shown in: another bank's check
            // says nothing of these digests.
            if first {
                replayed.push(*index);
            }
            let extended = replay
                .get(index)
                .map_or_else(|| "0".repeat(value.len()), |v| hex(v));
            if &extended != value {
                reasons.push(format!(
                    "the event log does not replay to the quoted {bank} PCR {index}: its events extend to {extended}, the TPM quoted {value} (an event left out, added or altered)"
                ));
            }
        }
    }
    let check = EventLogCheck {
        events: u32::try_from(log.events.len()).unwrap_or(u32::MAX),
        bank: shown.unwrap_or_default(),
        replayed,
        matches: reasons.is_empty(),
    };
    (check, reasons)
}

/// What changed in `pcrs` between the reference device's log and this boot's: the first
/// event that differs in each, named.
pub(crate) fn changes(
    reference: &ReferenceLog,
    events: &[MeasuredEvent],
    pcrs: &[u32],
) -> Vec<String> {
    let name = super::allowlist::event_name;
    pcrs.iter()
        .filter_map(|&pcr| {
            let now: Vec<&MeasuredEvent> = events.iter().filter(|e| e.pcr == pcr).collect();
            let then: Vec<&MeasuredEvent> = reference
                .events
                .iter()
                .filter(|e| e.pcr == pcr)
                .collect();
            let differ = |(a, b): (&&MeasuredEvent, &&MeasuredEvent)| {
                a.digest != b.digest || a.event_type != b.event_type
            };
            let first = now.iter().zip(&then).position(differ);
            // Every difference, less the one named.
            let more = (now.iter().zip(&then).filter(|&p| differ(p)).count()
                + now.len().abs_diff(then.len()))
            .saturating_sub(1);
            let more = if more > 0 {
                format!(" (and {more} more differences in PCR {pcr})")
            } else {
                String::new()
            };
            let text = match first {
                Some(at) => format!(
                    "PCR {pcr} changed at event {} ({}): digest {}, where the reference log of `{}` has {} ({}){more}",
                    now[at].sequence,
                    name(now[at]),
                    now[at].digest,
                    reference.device,
                    then[at].digest,
                    name(then[at]),
                ),
                None if now.len() > then.len() => format!(
                    "PCR {pcr} has an event the reference log of `{}` does not: event {} ({}), digest {}{more}",
                    reference.device,
                    now[then.len()].sequence,
                    name(now[then.len()]),
                    now[then.len()].digest,
                ),
                None if then.len() > now.len() => format!(
                    "PCR {pcr} lacks an event the reference log of `{}` has: {}, digest {}{more}",
                    reference.device,
                    name(then[now.len()]),
                    then[now.len()].digest,
                ),
                None => return None,
            };
            Some(text)
        })
        .collect()
}

/// Parses the event log sent with a quote (malformed evidence is an error).
pub(crate) fn parse(bytes: &[u8]) -> Result<EventLog, RegistryError> {
    event_log::parse(bytes).map_err(|e| RegistryError::Invalid(format!("event_log: {e}")))
}

impl Registry {
    /// Keeps a device's newest log that replayed to an authentic quote (one per device).
    pub(crate) async fn store_event_log(&self, log: &DeviceEventLog) -> Result<(), RegistryError> {
        let events = serde_json::to_string(&log.events)
            .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO attestation_event_logs (device_id, key_fingerprint, time, bank, events) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (device_id) DO UPDATE SET key_fingerprint = excluded.key_fingerprint, time = excluded.time,
             bank = excluded.bank, events = excluded.events WHERE attestation_event_logs.time < excluded.time",
        )
        .bind(&log.device)
        .bind(&log.key_fingerprint)
        .bind(log.time)
        .bind(&log.bank)
        .bind(events)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A device's newest event log that replayed to an authentic quote, if it sent one.
    pub async fn device_event_log(
        &self,
        id: &str,
    ) -> Result<Option<DeviceEventLog>, RegistryError> {
        self.get(id).await?;
        let row = sqlx::query(
            "SELECT key_fingerprint, time, bank, events FROM attestation_event_logs WHERE device_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let events: String = r.try_get("events")?;
            Ok(DeviceEventLog {
                device: id.to_owned(),
                time: r.try_get("time")?,
                key_fingerprint: r.try_get("key_fingerprint")?,
                bank: r.try_get("bank")?,
                events: serde_json::from_str(&events)
                    .map_err(|e| RegistryError::Corrupt(format!("event log of `{id}`: {e}")))?,
            })
        })
        .transpose()
    }

    /// The reference log for accepted set `set` of a policy, taken from `device`'s verdict at
    /// `time` under `key`: its log, if the one kept came with that very verdict.
    pub(crate) async fn reference_log(
        &self,
        device: &str,
        time: i64,
        key: &str,
        bank: &str,
        set: usize,
    ) -> Result<Option<ReferenceLog>, RegistryError> {
        Ok(self.device_event_log(device).await?.and_then(|log| {
            (log.time == time && log.key_fingerprint == key && log.bank == bank).then_some(
                ReferenceLog {
                    device: log.device,
                    set,
                    time: log.time,
                    bank: log.bank,
                    events: log.events,
                },
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        sequence: u32,
        pcr: u32,
        kind: &str,
        digest: &str,
        description: &str,
    ) -> MeasuredEvent {
        MeasuredEvent {
            sequence,
            pcr,
            event_type: kind.into(),
            digest: digest.into(),
            description: description.into(),
            verified: true,
        }
    }

    fn reference() -> ReferenceLog {
        ReferenceLog {
            device: "gw-golden".into(),
            set: 0,
            time: 1,
            bank: "sha256".into(),
            events: vec![
                event(
                    1,
                    4,
                    "EV_EFI_BOOT_SERVICES_APPLICATION",
                    "aa",
                    "\\EFI\\BOOT\\BOOTX64.EFI",
                ),
                event(
                    2,
                    4,
                    "EV_EFI_BOOT_SERVICES_APPLICATION",
                    "bb",
                    "\\EFI\\debian\\grubx64.efi",
                ),
                event(3, 4, "EV_SEPARATOR", "cc", "separator"),
                event(
                    4,
                    7,
                    "EV_EFI_VARIABLE_DRIVER_CONFIG",
                    "dd",
                    "variable SecureBoot",
                ),
            ],
        }
    }

    #[test]
    fn the_first_changed_added_or_missing_event_of_each_pcr_is_named() {
        let reference = reference();
        let mut now = reference.events.clone();
        now[1].digest = "ee".into();
        let said = changes(&reference, &now, &[4, 7]);
        assert_eq!(
            said,
            vec![
                "PCR 4 changed at event 2 (EV_EFI_BOOT_SERVICES_APPLICATION \\EFI\\debian\\grubx64.efi): digest ee, where the reference log of `gw-golden` has bb (EV_EFI_BOOT_SERVICES_APPLICATION \\EFI\\debian\\grubx64.efi)"
            ]
        );
        // An extra image loaded before the separator: the separator no longer lines up.
        let mut now = reference.events.clone();
        now.insert(
            2,
            event(
                3,
                4,
                "EV_EFI_BOOT_SERVICES_APPLICATION",
                "ff",
                "\\EFI\\x.efi",
            ),
        );
        let said = changes(&reference, &now, &[4]);
        assert!(
            said[0].starts_with(
                "PCR 4 changed at event 3 (EV_EFI_BOOT_SERVICES_APPLICATION \\EFI\\x.efi)"
            ),
            "{said:?}"
        );
        assert!(
            said[0].ends_with("(and 1 more differences in PCR 4)"),
            "{said:?}"
        );
        // Secure Boot's variable no longer measured.
        let now: Vec<MeasuredEvent> = reference.events[..3].to_vec();
        let said = changes(&reference, &now, &[4, 7]);
        assert_eq!(
            said,
            vec![
                "PCR 7 lacks an event the reference log of `gw-golden` has: EV_EFI_VARIABLE_DRIVER_CONFIG variable SecureBoot, digest dd"
            ]
        );
        // One appended at the end.
        let mut now = reference.events.clone();
        now.push(event(
            5,
            7,
            "EV_EFI_VARIABLE_AUTHORITY",
            "11",
            "variable db",
        ));
        let said = changes(&reference, &now, &[7]);
        assert!(said[0].starts_with("PCR 7 has an event the reference log of `gw-golden` does not: event 5 (EV_EFI_VARIABLE_AUTHORITY variable db), digest 11"), "{said:?}");
        assert!(changes(&reference, &reference.events, &[4, 7]).is_empty());
    }
}
