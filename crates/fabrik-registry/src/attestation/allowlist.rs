//! Event-level reference values (decision 0060): PCRs a device type's policy judges by the
//! measurements their replayed event log shows, against an allowlist of digests, instead of by
//! their values; and whether a quote must come with a log at all.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::AttestationPolicy;
use crate::RegistryError;
use crate::tpm::event_log::{BOOT_PCRS, MeasuredEvent};
use crate::tpm::{hex, unhex};

/// Measurements a verdict names that the policy does not allow, before "and N more".
const NAMED_MEASUREMENTS: usize = 5;

/// A digest a policy allows to be extended into one PCR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AllowedMeasurement {
    /// The PCR.
    pub pcr: u32,
    /// The digest (hex, in the policy's bank).
    pub digest: String,
    /// What it is: the event it was learned from, or the operator's note.
    pub note: String,
    /// Where it came from: a known-good device's log, or an operator.
    pub source: String,
}

/// A digest to allow, as an operator gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowInput {
    /// The PCR (one of `measure`).
    pub pcr: u32,
    /// The digest (hex, in the policy's bank), e.g. a new boot loader's, before it is rolled
    /// out.
    pub digest: String,
    /// What it is (`grub 2.12`).
    #[serde(default)]
    pub note: Option<String>,
}

/// What is known of a quote's measurements when its PCRs are held to a policy.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Measured<'a> {
    /// They were judged when the verdict was made, under the policy as it is now.
    Judged,
    /// The events, in the policy's bank, of the quote's event log, which replayed.
    Events(&'a [MeasuredEvent]),
    /// No log that replays in the policy's bank came with the quote.
    Missing,
}

/// The PCRs `measure` names, checked (those the boot's log accounts for), sorted, once each.
pub(crate) fn measured_pcrs(measure: &[u32]) -> Result<Vec<u32>, RegistryError> {
    if let Some(outside) = measure.iter().find(|pcr| !BOOT_PCRS.contains(pcr)) {
        return Err(RegistryError::Invalid(format!(
            "measure: PCR {outside} is not one the boot's event log accounts for whole (0-9); judge it by value"
        )));
    }
    let set: BTreeSet<u32> = measure.iter().copied().collect();
    Ok(set.into_iter().collect())
}

/// The operator's digests, checked against the measured PCRs and the bank's digest width.
pub(crate) fn allowed_from_input(
    allow: &[AllowInput],
    measured: &[u32],
    bank: &str,
    width: usize,
) -> Result<Vec<AllowedMeasurement>, RegistryError> {
    allow
        .iter()
        .enumerate()
        .map(|(i, input)| {
            if !measured.contains(&input.pcr) {
                return Err(RegistryError::Invalid(format!(
                    "allow[{i}]: PCR {} is not judged by its events (measure)",
                    input.pcr
                )));
            }
            let bytes = unhex(&input.digest)
                .map_err(|e| RegistryError::Invalid(format!("allow[{i}].digest: {e}")))?;
            if bytes.len() != width {
                return Err(RegistryError::Invalid(format!(
                    "allow[{i}].digest: {} bytes; a {bank} digest has {width}",
                    bytes.len()
                )));
            }
            Ok(AllowedMeasurement {
                pcr: input.pcr,
                digest: hex(&bytes),
                note: input.note.clone().unwrap_or_default(),
                source: "operator".into(),
            })
        })
        .collect()
}

/// Every distinct measurement of the measured PCRs in a known-good device's log.
pub(crate) fn allowed_from_log(
    events: &[MeasuredEvent],
    measured: &[u32],
    source: &str,
) -> Vec<AllowedMeasurement> {
    events
        .iter()
        .filter(|event| measured.contains(&event.pcr) && !event.digest.is_empty())
        .map(|event| AllowedMeasurement {
            pcr: event.pcr,
            digest: event.digest.clone(),
            note: event_name(event),
            source: source.to_owned(),
        })
        .collect()
}

/// `allowed` with `more` added (a digest already allowed in its PCR keeps its first note), in
/// PCR order.
pub(crate) fn merged(
    allowed: Vec<AllowedMeasurement>,
    more: Vec<AllowedMeasurement>,
) -> Vec<AllowedMeasurement> {
    let mut seen = BTreeSet::new();
    let mut all: Vec<AllowedMeasurement> = allowed
        .into_iter()
        .chain(more)
        .filter(|m| seen.insert((m.pcr, m.digest.clone())))
        .collect();
    all.sort_by_key(|m| m.pcr);
    all
}

/// `allowed` without the digests `revoke` names (hex, any PCR); each must be allowed now, so a
/// mistyped digest is not taken for a revocation.
pub(crate) fn revoked(
    allowed: Vec<AllowedMeasurement>,
    revoke: &[String],
) -> Result<Vec<AllowedMeasurement>, RegistryError> {
    let mut gone = BTreeSet::new();
    for (i, text) in revoke.iter().enumerate() {
        let digest = unhex(text)
            .map(|bytes| hex(&bytes))
            .map_err(|e| RegistryError::Invalid(format!("revoke[{i}]: {e}")))?;
        if !allowed.iter().any(|m| m.digest == digest) {
            return Err(RegistryError::Invalid(format!(
                "revoke[{i}]: {digest} is not among the policy's allowed measurements"
            )));
        }
        gone.insert(digest);
    }
    Ok(allowed
        .into_iter()
        .filter(|m| !gone.contains(&m.digest))
        .collect())
}

/// PCRs the firmware extends a separator into at every boot (TCG PC Client PFP), so a log
/// always has events there: a measured one of them with no allowed digest fails every quote.
const SEPARATED_PCRS: std::ops::RangeInclusive<u32> = 0..=7;

/// Refuses an allowlist no quote could meet by mistake: a PCR of 0-7 the change starts judging
/// by its events (not in `was_measured`) with no allowed digest. A PCR measured before may be
/// left with none: a revocation that empties it is deliberate (a withdrawn boot loader with
/// no fixed build yet shuts its devices out).
pub(crate) fn check_coverage(
    measured_pcrs: &[u32],
    allowed: &[AllowedMeasurement],
    was_measured: &[u32],
) -> Result<(), RegistryError> {
    let empty: Vec<u32> = measured_pcrs
        .iter()
        .copied()
        .filter(|pcr| {
            SEPARATED_PCRS.contains(pcr)
                && !allowed.iter().any(|m| m.pcr == *pcr)
                && !was_measured.contains(pcr)
        })
        .collect();
    if empty.is_empty() {
        return Ok(());
    }
    let (pcrs, are, their, them) = if empty.len() == 1 {
        ("PCR", "is", "its", "it")
    } else {
        ("PCRs", "are", "their", "them")
    };
    Err(RegistryError::Invalid(format!(
        "allow: {pcrs} {} {are} judged by {their} events, and no digest is allowed in {them}, though every boot measures into {them}, so every quote would fail: give allow or allow_from_device",
        list(&empty)
    )))
}

/// Why a quote's measurements do not meet the policy (empty: they do). `quoted`: the quote's
/// PCRs in the policy's bank.
pub(crate) fn reasons(
    policy: &AttestationPolicy,
    quoted: Option<&BTreeMap<u32, String>>,
    measured: Measured<'_>,
) -> Vec<String> {
    let device_type = &policy.device_type;
    let measured_pcrs = &policy.measured_pcrs;
    let bank = &policy.bank;
    let events = match measured {
        Measured::Judged => return Vec::new(),
        Measured::Events(events) => events,
        // Said first: a log replayed in another bank than the quote's missing one.
        Measured::Missing
            if quoted.is_none() && (policy.require_event_log || !measured_pcrs.is_empty()) =>
        {
            return vec![format!(
                "the policy of type `{device_type}` judges the boot's measured events in {bank}, and the quote has no {bank} PCRs to replay its event log against"
            )];
        }
        Measured::Missing if !measured_pcrs.is_empty() => {
            return vec![format!(
                "PCRs {} of type `{device_type}` are judged by their measured-boot events, and no event log that replays to the quote came with it",
                list(measured_pcrs)
            )];
        }
        Measured::Missing if policy.require_event_log => {
            return vec![format!(
                "the policy of type `{device_type}` requires the boot's event log (require_event_log), and none that replays to the quote came with it"
            )];
        }
        Measured::Missing => return Vec::new(),
    };
    let allowed = &policy.allowed;
    let mut said: Vec<String> = measured_pcrs
        .iter()
        .filter(|pcr| quoted.is_none_or(|q| !q.contains_key(pcr)))
        .map(|pcr| format!("PCR {pcr} is not in the quote (judged by its events)"))
        .collect();
    let unknown: Vec<&MeasuredEvent> = events
        .iter()
        .filter(|event| {
            measured_pcrs.contains(&event.pcr)
                && !allowed
                    .iter()
                    .any(|m| m.pcr == event.pcr && m.digest == event.digest)
        })
        .collect();
    said.extend(unknown.iter().take(NAMED_MEASUREMENTS).map(|event| {
        format!(
            "PCR {} event {} ({}) measured {}, which the policy of type `{device_type}` does not allow",
            event.pcr,
            event.sequence,
            event_name(event),
            event.digest
        )
    }));
    if unknown.len() > NAMED_MEASUREMENTS {
        said.push(format!(
            "and {} more measurements the policy does not allow",
            unknown.len() - NAMED_MEASUREMENTS
        ));
    }
    said
}

/// An event as a verdict names it; a description its digest does not vouch for is the
/// device's claim, and said so.
pub(crate) fn event_name(event: &MeasuredEvent) -> String {
    if event.verified {
        format!("{} {}", event.event_type, event.description)
    } else {
        format!("{} named {}", event.event_type, event.description)
    }
}

fn list(pcrs: &[u32]) -> String {
    pcrs.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(sequence: u32, pcr: u32, digest: &str, verified: bool) -> MeasuredEvent {
        MeasuredEvent {
            sequence,
            pcr,
            event_type: "EV_EFI_BOOT_SERVICES_APPLICATION".into(),
            digest: digest.into(),
            description: "\\EFI\\debian\\grubx64.efi".into(),
            verified,
        }
    }

    fn policy_of(
        require_event_log: bool,
        measured_pcrs: &[u32],
        allowed: &[AllowedMeasurement],
    ) -> AttestationPolicy {
        AttestationPolicy {
            device_type: "gateway".into(),
            bank: "sha256".into(),
            accept: Vec::new(),
            require_event_log,
            measured_pcrs: measured_pcrs.to_vec(),
            allowed: allowed.to_vec(),
            updated_at: 1,
            reference_log: None,
        }
    }

    fn allowed(pcr: u32, digest: &str) -> AllowedMeasurement {
        AllowedMeasurement {
            pcr,
            digest: digest.into(),
            note: String::new(),
            source: "operator".into(),
        }
    }

    #[test]
    fn every_event_of_a_measured_pcr_must_be_allowed_there() {
        let quoted: BTreeMap<u32, String> = [(4, "x".to_owned()), (9, "y".to_owned())].into();
        let events = [
            event(1, 4, "aa", false),
            event(2, 4, "bb", false),
            event(3, 9, "cc", true),
        ];
        let policy = [allowed(4, "aa"), allowed(4, "bb"), allowed(9, "cc")];
        let judge = |allowed: &[AllowedMeasurement], measured: &[u32]| {
            reasons(
                &policy_of(false, measured, allowed),
                Some(&quoted),
                Measured::Events(&events),
            )
        };
        assert!(judge(&policy, &[4, 9]).is_empty());
        // Allowed in another PCR is not allowed here.
        let moved = [allowed(4, "aa"), allowed(9, "bb"), allowed(9, "cc")];
        assert_eq!(
            judge(&moved, &[4, 9]),
            vec![
                "PCR 4 event 2 (EV_EFI_BOOT_SERVICES_APPLICATION named \\EFI\\debian\\grubx64.efi) measured bb, which the policy of type `gateway` does not allow"
            ]
        );
        // A PCR not judged by events is not looked at.
        assert!(judge(&moved[..1], &[4]).len() == 1);
        assert!(judge(&policy[..2], &[4]).is_empty());
        // A measured PCR the quote left out.
        assert_eq!(
            judge(&policy, &[4, 7, 9]),
            vec!["PCR 7 is not in the quote (judged by its events)"]
        );
    }

    #[test]
    fn a_missing_log_fails_only_a_policy_that_needs_one() {
        let quoted: BTreeMap<u32, String> = [(4, "x".to_owned())].into();
        let missing = |require: bool, measured: &[u32]| {
            reasons(
                &policy_of(require, measured, &[]),
                Some(&quoted),
                Measured::Missing,
            )
        };
        assert!(missing(false, &[]).is_empty());
        assert!(missing(true, &[])[0].contains("requires the boot's event log"));
        assert!(missing(false, &[0, 4])[0].starts_with("PCRs 0, 4 of type `gateway`"));
        assert!(reasons(&policy_of(true, &[4], &[]), None, Measured::Judged).is_empty());
        // A quote of another bank only: its log could not replay in the policy's.
        let other_bank = reasons(&policy_of(false, &[4], &[]), None, Measured::Missing);
        assert_eq!(
            other_bank,
            vec![
                "the policy of type `gateway` judges the boot's measured events in sha256, and the quote has no sha256 PCRs to replay its event log against"
            ]
        );
    }

    #[test]
    fn many_unknown_measurements_are_counted_not_listed() {
        let events: Vec<MeasuredEvent> = (1..=8).map(|i| event(i, 4, "ff", true)).collect();
        let quoted: BTreeMap<u32, String> = [(4, "x".to_owned())].into();
        let said = reasons(
            &policy_of(false, &[4], &[]),
            Some(&quoted),
            Measured::Events(&events),
        );
        assert_eq!(said.len(), NAMED_MEASUREMENTS + 1);
        assert_eq!(
            said.last().map(String::as_str),
            Some("and 3 more measurements the policy does not allow")
        );
    }

    #[test]
    fn policy_edits_are_checked() {
        assert!(measured_pcrs(&[10]).is_err());
        assert_eq!(measured_pcrs(&[4, 0, 4]).ok(), Some(vec![0, 4]));
        let input = |pcr, digest: &str| AllowInput {
            pcr,
            digest: digest.into(),
            note: None,
        };
        let error = allowed_from_input(&[input(5, &"ab".repeat(32))], &[4], "sha256", 32)
            .expect_err("PCR 5 is not measured");
        assert!(error.to_string().contains("allow[0]: PCR 5"), "{error}");
        let error =
            allowed_from_input(&[input(4, "abcd")], &[4], "sha256", 32).expect_err("short digest");
        assert!(error.to_string().contains("2 bytes"), "{error}");
        let upper = "AB".repeat(32);
        let taken = allowed_from_input(&[input(4, &upper)], &[4], "sha256", 32).expect("valid");
        assert_eq!(taken[0].digest, "ab".repeat(32), "normalised to lower case");

        let all = merged(
            vec![allowed(4, "aa")],
            vec![allowed(4, "aa"), allowed(0, "bb")],
        );
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].pcr, 0, "sorted by PCR");
        let error = revoked(all.clone(), &["cc".into()]).expect_err("not allowed");
        assert!(error.to_string().contains("revoke[0]: cc"), "{error}");
        assert_eq!(
            revoked(all, &["AA".into()]).expect("revoked"),
            vec![allowed(0, "bb")]
        );
    }

    #[test]
    fn every_measured_boot_pcr_needs_an_allowed_digest() {
        let some = [allowed(4, "aa")];
        assert!(check_coverage(&[4], &some, &[]).is_ok());
        // PCR 8 (the boot loader's commands) may be held to having no events at all.
        assert!(check_coverage(&[4, 8], &some, &[]).is_ok());
        let error = check_coverage(&[0, 4, 7], &some, &[]).expect_err("PCRs 0 and 7 empty");
        assert!(
            error.to_string().starts_with("allow: PCRs 0, 7 are judged"),
            "{error}"
        );
        // Revoking the last digest of a PCR is deliberate: its devices are shut out.
        assert!(check_coverage(&[4], &[], &[4]).is_ok());
    }
}
