//! Device attestation (decision 0050): devices' enrolled TPM attestation keys, the reference PCR
//! values of each device type, the verifier's one-time challenges, and the verdicts on the
//! quotes devices answer with, which open or close a device's way in (the MQTT CONNECT gate).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use fabrik_runtime::config::AttestationSettings;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::tpm::{self, AttestationKey};
use crate::{Registry, RegistryError, now_ns};

pub mod activation;
pub mod allowlist;
pub mod ima_signature;
pub mod measured_boot;
pub mod runtime;

pub use activation::{ActivationChallenge, ActivationProof, ActivationRequest, Endorsement};
use allowlist::Measured;
pub use allowlist::{AllowInput, AllowedMeasurement};
pub use measured_boot::{DeviceEventLog, EventLogCheck, ReferenceLog};
pub use runtime::{DeviceImaLog, ImaCheck, ImaLogEntry, RuntimePolicy, RuntimePolicyAddition};

/// How long a challenge can be answered.
pub const CHALLENGE_LIFETIME: Duration = Duration::from_secs(300);
/// Challenges and EK activations a device may have open at once, of each origin (asked for by
/// the device, by an admin); a new one drops the oldest of its kind.
const OPEN_CHALLENGES: usize = 4;
/// Verdicts kept per device, authentic and not apart: a token holder sending junk cannot grow
/// the table, or push the verdict that decides the gate out.
const KEPT_VERDICTS: i64 = 100;

/// Open challenges by device: nonce, when it was issued, and whether the device's own
/// credentials asked for it (else an admin's).
pub(crate) type Challenges = HashMap<String, Vec<([u8; 32], Instant, bool)>>;

/// How often a policy change overtaken by concurrent ones is made again before it is refused.
const POLICY_WRITE_ATTEMPTS: usize = 5;

/// A passing verdict's measurements judged again under a later version of its device's type's
/// policy.
#[derive(Debug)]
pub(crate) struct RejudgedVerdict {
    verdict_time: i64,
    device_type: String,
    policy_updated_at: i64,
    reasons: Vec<String>,
}

/// A device's enrolled attestation key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrolledKey {
    /// SHA-256 of the key's DER `SubjectPublicKeyInfo`, hex.
    pub fingerprint: String,
    /// `ecc` or `rsa`.
    pub algorithm: String,
    /// When it was enrolled (ns).
    pub enrolled_at: i64,
    /// The key (PEM).
    pub public_key: String,
    /// How the TPM's endorsement key vouched for it (activated through `tpm2_activatecredential`);
    /// `null` when an operator enrolled it.
    #[serde(default)]
    pub endorsement: Option<Endorsement>,
}

/// A challenge: the nonce a device's next quote must carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Challenge {
    /// 32 random bytes, hex: `tpm2_quote -q <nonce>`.
    pub nonce: String,
    /// When it can no longer be answered (ns).
    pub expires_at: i64,
    /// How many entries of the device's IMA list the verifier holds from an earlier quote
    /// under its key: the quote may send the list from that entry on (`ima_log_offset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ima_entries_known: Option<usize>,
}

/// The start of the error that refuses an IMA list's continuation (decision 0067): the device
/// sends it whole instead.
pub const IMA_CONTINUATION_REFUSED: &str = "the IMA list cannot be continued";

/// A quote, as `tpm2_quote -m quote.msg -s quote.sig -o pcrs.bin -F values` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The challenge's nonce (hex).
    pub nonce: String,
    /// The `TPMS_ATTEST` the TPM signed (`-m`), base64.
    pub quote: String,
    /// Its `TPMT_SIGNATURE` (`-s`), base64.
    pub signature: String,
    /// The selected PCRs' values (`-o … -F values`), base64.
    pub pcrs: String,
    /// The boot's measured-boot event log (`/sys/kernel/security/tpm0/binary_bios_measurements`,
    /// TCG PC Client format), base64: checked against the quoted PCRs and, when the quote
    /// misses its type's reference values, used to name the events that changed.
    #[serde(default)]
    pub event_log: Option<String>,
    /// The kernel's IMA runtime measurement list
    /// (`/sys/kernel/security/ima/binary_runtime_measurements`), base64: replayed to the quoted
    /// PCR 10 and judged against the type's runtime policy (decision 0067).
    #[serde(default)]
    pub ima_log: Option<String>,
    /// `ima_log` holds the list from this entry on: the challenge's `ima_entries_known`, the
    /// entries before being the verifier's from an earlier quote of the same boot.
    #[serde(default)]
    pub ima_log_offset: Option<usize>,
}

/// The verdict on one quote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttestationRecord {
    /// When it was judged (ns).
    pub time: i64,
    /// Whether the device passed.
    pub passed: bool,
    /// Whether the quote was signed by the enrolled key, answered an open challenge and its
    /// PCR values hash to what the TPM signed: only then does it say anything about the
    /// device, and only then does it open or close the device's way in.
    pub authentic: bool,
    /// Why it failed (empty when it passed).
    pub reasons: Vec<String>,
    /// The fingerprint of the key it was checked with.
    pub key_fingerprint: String,
    /// The reference values it was held against: the device's type.
    pub policy: String,
    /// The version (`updated_at`) of that type's policy it was judged under (`null`: the type
    /// had none, or the verdict is older than versions): its measurements are judged again
    /// from the kept event log once the policy changes.
    #[serde(default)]
    pub policy_updated_at: Option<i64>,
    /// PCR values by bank and index (hex), when authentic.
    pub pcrs: BTreeMap<String, BTreeMap<u32, String>>,
    /// The TPM's boot count (`resetCount`).
    pub reset_count: u32,
    /// Resumes since the last boot (`restartCount`).
    pub restart_count: u32,
    /// The TPM's firmware version.
    pub firmware_version: u64,
    /// The TPM's clock (ms).
    pub clock: u64,
    /// How the event log sent with the quote replayed against it (`null`: none was sent).
    #[serde(default)]
    pub event_log: Option<EventLogCheck>,
    /// What the quote's IMA log showed, when it came with one.
    #[serde(default)]
    pub ima: Option<ImaCheck>,
    /// The version (`updated_at`) of the type's runtime policy it was judged under (`null`:
    /// none): its IMA entries are judged again once that policy changes.
    #[serde(default)]
    pub runtime_policy_updated_at: Option<i64>,
}

/// Reference values of a device type: a quote passes when its PCRs judged by value match one
/// of the accepted sets (on those PCRs) and every event of the PCRs judged by their events is
/// an allowed measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttestationPolicy {
    /// The device type it applies to.
    pub device_type: String,
    /// The PCR bank (`sha256`).
    pub bank: String,
    /// Accepted sets of PCR index → value (hex); several during a firmware rollout. PCRs in
    /// `measured_pcrs` are not held to them. Empty when only the measured PCRs are judged: a
    /// PCR in neither is not judged at all.
    pub accept: Vec<BTreeMap<u32, String>>,
    /// Whether a quote must come with an event log that replays to it.
    #[serde(default)]
    pub require_event_log: bool,
    /// PCRs (of 0-9) judged by the events of the quote's replayed log against `allowed`
    /// instead of by value, so a new boot loader or firmware is allowed by its digest, and a
    /// vulnerable one withdrawn, without listing every combination of values.
    #[serde(default)]
    pub measured_pcrs: Vec<u32>,
    /// The digests allowed in the measured PCRs.
    #[serde(default)]
    pub allowed: Vec<AllowedMeasurement>,
    /// Last change (ns).
    pub updated_at: i64,
    /// The event log of the device the values were taken from (`from_device`), when its quote
    /// came with one: a quote that misses the values is told which events differ from it.
    #[serde(default)]
    pub reference_log: Option<ReferenceLog>,
}

/// A policy to set: explicit sets, or the PCR values a known-good device last quoted; PCRs to
/// judge by their measured-boot events and the digests allowed in them. Without `merge` the
/// body is the whole policy: what it leaves out (measured PCRs, allowed digests,
/// `require_event_log`) is not kept from the policy it replaces.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// PCR bank (default `sha256`).
    #[serde(default)]
    pub bank: Option<String>,
    /// Accepted sets of PCR index → value (hex).
    #[serde(default)]
    pub accept: Vec<BTreeMap<String, String>>,
    /// Take the values from this device's last authentic quote (its own set, added to
    /// `accept`).
    #[serde(default)]
    pub from_device: Option<String>,
    /// With `from_device`: only these PCRs (default: every one it quoted).
    #[serde(default)]
    pub pcrs: Option<Vec<u32>>,
    /// PCRs (of 0-9) to judge by the events of the quote's log against the allowed
    /// measurements, not by value (default: as the policy has them when merging, else none).
    #[serde(default)]
    pub measure: Option<Vec<u32>>,
    /// Digests to allow in measured PCRs.
    #[serde(default)]
    pub allow: Vec<AllowInput>,
    /// Allow every measurement of the measured PCRs in this device's newest event log, which
    /// replayed to its last authentic quote.
    #[serde(default)]
    pub allow_from_device: Option<String>,
    /// Whether a quote must come with an event log that replays to it (default: as the
    /// policy has it when merging, else false).
    #[serde(default)]
    pub require_event_log: Option<bool>,
    /// Add to the type's policy (its accepted sets, allowed measurements and settings)
    /// instead of replacing it; the type must have one. A merge's `measure` may add PCRs but
    /// not drop one that still has allowed digests.
    #[serde(default)]
    pub merge: bool,
    /// With `merge`: digests (hex) no longer allowed, in any PCR.
    #[serde(default)]
    pub revoke: Vec<String>,
}

/// Whether a device may connect, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttestationStatus {
    /// The device.
    pub device: String,
    /// Whether it must attest to connect (an enrolled key, or `[attestation] required`).
    pub required: bool,
    /// Whether it may connect now.
    pub may_connect: bool,
    /// Why not, or until when it may.
    pub reason: String,
    /// Until when its last passing attestation lets it connect (ns).
    pub valid_until: Option<i64>,
    /// Its enrolled key.
    pub key: Option<EnrolledKey>,
    /// Its newest verdicts, newest first.
    pub history: Vec<AttestationRecord>,
}

fn decode(field: &str, text: &str) -> Result<Vec<u8>, RegistryError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| RegistryError::Invalid(format!("{field}: not base64 ({e})")))
}

fn time_text(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Why authentic PCR values do not meet a device type's reference values (empty: they do):
/// the differences from the closest accepted set on the PCRs judged by value, and the
/// measurements the policy does not allow in those judged by their events.
fn policy_reasons(
    policy: Option<&AttestationPolicy>,
    device_type: &str,
    pcrs: &BTreeMap<String, BTreeMap<u32, String>>,
    measured: Measured<'_>,
) -> Vec<String> {
    let Some(policy) = policy else {
        return vec![format!(
            "no reference values for device type `{device_type}`: set them (PUT /api/v1/attestation/policies/{device_type})"
        )];
    };
    let mut reasons = match closest_differences(policy, pcrs, None) {
        Some((_, closest)) => closest.into_iter().map(|(_, reason)| reason).collect(),
        None if policy.measured_pcrs.is_empty() => {
            vec!["the policy accepts no PCR values".into()]
        }
        None => Vec::new(),
    };
    reasons.extend(allowlist::reasons(policy, pcrs.get(&policy.bank), measured));
    reasons
}

/// The policy's accepted set closest to the quoted PCRs (its index) and the differences from
/// it on the PCRs judged by value, by PCR (`None` when it accepts no set); of sets equally
/// close, `preferred` if it is one.
fn closest_differences(
    policy: &AttestationPolicy,
    pcrs: &BTreeMap<String, BTreeMap<u32, String>>,
    preferred: Option<usize>,
) -> Option<(usize, Vec<(u32, String)>)> {
    let quoted = pcrs.get(&policy.bank);
    policy
        .accept
        .iter()
        .map(|set| differences(quoted, set, &policy.measured_pcrs))
        .enumerate()
        .min_by_key(|(index, differences)| (differences.len(), Some(*index) != preferred))
}

/// The differences between a quote's PCRs and one accepted set, by PCR, as text; PCRs in
/// `measured` are judged by their events instead.
fn differences(
    quoted: Option<&BTreeMap<u32, String>>,
    accepted: &BTreeMap<u32, String>,
    measured: &[u32],
) -> Vec<(u32, String)> {
    accepted
        .iter()
        .filter(|(index, _)| !measured.contains(index))
        .filter_map(|(index, want)| match quoted.and_then(|q| q.get(index)) {
            Some(got) if got == want => None,
            Some(got) => Some((
                *index,
                format!("PCR {index} is {got}, the policy expects {want}"),
            )),
            None => Some((*index, format!("PCR {index} is not in the quote"))),
        })
        .collect()
}

impl Registry {
    /// Enrols (or replaces) a device's attestation key. Verdicts under an earlier key no
    /// longer count.
    pub async fn enrol_attestation_key(
        &self,
        id: &str,
        pem: &str,
    ) -> Result<EnrolledKey, RegistryError> {
        self.store_attestation_key(id, pem, None).await
    }

    /// Stores a device's attestation key, with how its EK vouched for it.
    async fn store_attestation_key(
        &self,
        id: &str,
        pem: &str,
        endorsement: Option<Endorsement>,
    ) -> Result<EnrolledKey, RegistryError> {
        self.get(id).await?;
        let key = AttestationKey::from_pem(pem).map_err(RegistryError::Invalid)?;
        let fingerprint = AttestationKey::fingerprint(pem).map_err(RegistryError::Invalid)?;
        let enrolled = EnrolledKey {
            fingerprint,
            algorithm: match key {
                AttestationKey::Ec(_) => "ecc".into(),
                AttestationKey::Rsa { .. } => "rsa".into(),
            },
            enrolled_at: now_ns(),
            public_key: pem.trim().to_owned() + "\n",
            endorsement,
        };
        let endorsement = enrolled
            .endorsement
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO attestation_keys (device_id, public_key, fingerprint, algorithm, enrolled_at, endorsement) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (device_id) DO UPDATE SET public_key = excluded.public_key, fingerprint = excluded.fingerprint,
             algorithm = excluded.algorithm, enrolled_at = excluded.enrolled_at, endorsement = excluded.endorsement",
        )
        .bind(id)
        .bind(&enrolled.public_key)
        .bind(&enrolled.fingerprint)
        .bind(&enrolled.algorithm)
        .bind(enrolled.enrolled_at)
        .bind(endorsement)
        .execute(&self.pool)
        .await?;
        self.enrolled.lock().insert(id.to_owned());
        let detail = match &enrolled.endorsement {
            Some(e) => format!(
                "{} (activated by EK {})",
                enrolled.fingerprint, e.ek_fingerprint
            ),
            None => enrolled.fingerprint.clone(),
        };
        self.event(id, "attestation_key", &detail).await?;
        self.attestation_changed.notify_one();
        Ok(enrolled)
    }

    /// Removes a device's attestation key: it need not attest (unless every device must).
    pub async fn remove_attestation_key(&self, id: &str) -> Result<(), RegistryError> {
        self.get(id).await?;
        let done = sqlx::query("DELETE FROM attestation_keys WHERE device_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.enrolled.lock().remove(id);
        if done.rows_affected() == 0 {
            return Err(RegistryError::Invalid(format!(
                "device `{id}` has no attestation key"
            )));
        }
        self.attestation_changed.notify_one();
        self.event(id, "attestation_key", "removed").await
    }

    async fn attestation_key(&self, id: &str) -> Result<Option<EnrolledKey>, RegistryError> {
        let row = sqlx::query(
            "SELECT public_key, fingerprint, algorithm, enrolled_at, endorsement FROM attestation_keys WHERE device_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let endorsement: Option<String> = r.try_get("endorsement")?;
            Ok(EnrolledKey {
                public_key: r.try_get("public_key")?,
                fingerprint: r.try_get("fingerprint")?,
                algorithm: r.try_get("algorithm")?,
                enrolled_at: r.try_get("enrolled_at")?,
                endorsement: endorsement
                    .map(|text| serde_json::from_str(&text))
                    .transpose()
                    .map_err(|e| RegistryError::Corrupt(format!("endorsement: {e}")))?,
            })
        })
        .transpose()
    }

    /// Issues a one-time nonce for a device's next quote. `by_device`: the device's own
    /// credentials asked, not an admin's; each side's open challenges are counted apart, so
    /// a device asking again and again cannot push out the one an admin is relaying.
    pub async fn attestation_challenge(
        &self,
        id: &str,
        by_device: bool,
    ) -> Result<Challenge, RegistryError> {
        self.get(id).await?;
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce)
            .map_err(|e| RegistryError::Token(format!("no randomness for a nonce: {e}")))?;
        let ima_entries_known = match self.attestation_key(id).await? {
            Some(key) => self.kept_ima_entry_count(id, &key.fingerprint).await?,
            None => None,
        };
        let mut challenges = self.challenges.lock();
        challenges.retain(|_, open| {
            open.retain(|(_, at, _)| at.elapsed() < CHALLENGE_LIFETIME);
            !open.is_empty()
        });
        let open = challenges.entry(id.to_owned()).or_default();
        if open.iter().filter(|c| c.2 == by_device).count() >= OPEN_CHALLENGES
            && let Some(oldest) = open.iter().position(|c| c.2 == by_device)
        {
            open.remove(oldest);
        }
        open.push((nonce, Instant::now(), by_device));
        Ok(Challenge {
            nonce: tpm::hex(&nonce),
            expires_at: now_ns() + CHALLENGE_LIFETIME.as_nanos() as i64,
            ima_entries_known,
        })
    }

    /// Opens a challenge with a known nonce, as the fixtures' quotes answer one.
    #[cfg(test)]
    pub(crate) fn open_challenge(&self, id: &str, nonce: [u8; 32]) {
        self.challenges
            .lock()
            .entry(id.to_owned())
            .or_default()
            .push((nonce, Instant::now(), true));
    }

    /// Takes an open challenge of the device that the same side (`by_device`) asked for (it
    /// can be answered once).
    pub(crate) fn take_challenge(&self, id: &str, nonce: &[u8], by_device: bool) -> bool {
        let mut challenges = self.challenges.lock();
        let Some(open) = challenges.get_mut(id) else {
            return false;
        };
        let found = open.iter().position(|(n, at, side)| {
            n.as_slice() == nonce && at.elapsed() < CHALLENGE_LIFETIME && *side == by_device
        });
        if let Some(i) = found {
            open.remove(i);
        }
        found.is_some()
    }

    /// Judges a device's quote, records the verdict and returns it. Malformed evidence is an
    /// error and is not recorded; evidence that parses is recorded whatever its verdict.
    /// `by_device`: sent with the device's own credentials; it answers a challenge the same
    /// side asked for.
    pub async fn attest(
        &self,
        id: &str,
        evidence: &Evidence,
        by_device: bool,
    ) -> Result<AttestationRecord, RegistryError> {
        let device = self.get(id).await?;
        let Some(enrolled) = self.attestation_key(id).await? else {
            return Err(RegistryError::Invalid(format!(
                "device `{id}` has no enrolled attestation key: enrol one first (PUT /api/v1/devices/{id}/attestation/key)"
            )));
        };
        let key = AttestationKey::from_pem(&enrolled.public_key).map_err(RegistryError::Corrupt)?;
        let message = decode("quote", &evidence.quote)?;
        let signature = decode("signature", &evidence.signature)?;
        let values = decode("pcrs", &evidence.pcrs)?;
        let nonce = tpm::unhex(&evidence.nonce)
            .map_err(|e| RegistryError::Invalid(format!("nonce: {e}")))?;
        let quote = tpm::parse_quote(&message).map_err(RegistryError::Invalid)?;
        let event_log = evidence
            .event_log
            .as_deref()
            .map(|text| {
                // Base64 of the largest log taken, and some whitespace: not decoded beyond.
                if text.len() > tpm::event_log::MOST_BYTES / 3 * 4 + 1024 {
                    return Err(RegistryError::Invalid(format!(
                        "event_log: {} characters; a boot's log is at most {} bytes",
                        text.len(),
                        tpm::event_log::MOST_BYTES
                    )));
                }
                decode("event_log", text).and_then(|bytes| measured_boot::parse(&bytes))
            })
            .transpose()?;
        let ima_entries = evidence
            .ima_log
            .as_deref()
            .map(|text| {
                if text.len() > tpm::ima::MOST_BYTES / 3 * 4 + 1024 {
                    return Err(RegistryError::Invalid(format!(
                        "ima_log: {} characters; a measurement list is read up to {} bytes",
                        text.len(),
                        tpm::ima::MOST_BYTES
                    )));
                }
                decode("ima_log", text).and_then(|bytes| {
                    tpm::ima::parse(&bytes).map_err(|why| {
                        RegistryError::Invalid(match evidence.ima_log_offset {
                            // Its entries are numbered from the list's start where they came.
                            Some(from) if from > 0 => format!(
                                "ima_log (sent from entry {from}; the entry numbers and byte \
                                 offsets here count from there): {why}"
                            ),
                            _ => format!("ima_log: {why}"),
                        })
                    })
                })
            })
            .transpose()?;
        let mut record = AttestationRecord {
            time: now_ns(),
            passed: false,
            authentic: false,
            reasons: Vec::new(),
            key_fingerprint: enrolled.fingerprint.clone(),
            policy: device.device_type.clone(),
            policy_updated_at: None,
            pcrs: BTreeMap::new(),
            reset_count: quote.reset_count,
            restart_count: quote.restart_count,
            firmware_version: quote.firmware_version,
            clock: quote.clock,
            event_log: None,
            ima: None,
            runtime_policy_updated_at: None,
        };
        // Every check runs, so one verdict names every problem.
        let signed = key.verify(&message, &signature);
        if let Err(e) = &signed {
            record.reasons.push(e.clone());
        }
        let fresh = quote.nonce == nonce && self.take_challenge(id, &nonce, by_device);
        if quote.nonce != nonce {
            record
                .reasons
                .push("the quote carries another nonce than the one given".into());
        } else if !fresh {
            record.reasons.push(
                "the nonce is not an open challenge of this device (unknown, used, or older than 5 minutes): a replayed quote?"
                    .into(),
            );
        }
        match tpm::authentic_pcrs(&quote, &values) {
            Ok(pcrs) if signed.is_ok() && fresh => {
                record.authentic = true;
                record.pcrs = pcrs;
            }
            Ok(_) => {}
            Err(e) => record.reasons.push(e),
        }
        // Read once for both: the log's events are shown in its bank, and the quote is held
        // to it.
        let policy = if record.authentic {
            self.attestation_policy_with_log(&device.device_type)
                .await?
        } else {
            None
        };
        record.policy_updated_at = policy.as_ref().map(|policy| policy.updated_at);
        // The events of a log that replays to the authentic quote are evidence too.
        let mut measured = None;
        if record.authentic
            && let Some(log) = &event_log
        {
            let bank = policy.as_ref().map(|policy| policy.bank.as_str());
            let (check, reasons) = measured_boot::check(log, &record.pcrs, bank);
            if check.matches {
                measured = Some((
                    check.bank.clone(),
                    log.measured(&check.bank, &check.replayed),
                ));
            }
            record.event_log = Some(check);
            record.reasons.extend(reasons);
        }
        // The runtime measurements, in the policy's bank (SHA-256 without a policy).
        let mut kept_ima = None;
        let mut runtime_reasons = 0;
        if record.authentic {
            let runtime_policy = self.runtime_policy(&device.device_type).await?;
            let bank = policy
                .as_ref()
                .map_or("sha256", |policy| policy.bank.as_str());
            let from = evidence.ima_log_offset.unwrap_or(0);
            let before = if from > 0 && ima_entries.is_some() {
                self.kept_ima_log_at(id, &enrolled.fingerprint).await?
            } else {
                None
            };
            // The kept quote a continuation follows: stored as a part only onto that list.
            let before_time = before.as_ref().map(|(time, _)| *time);
            let judged = runtime::judge_evidence(
                ima_entries.map(|entries| runtime::ImaEvidence { from, entries }),
                before.map(|(_, log)| log),
                &runtime::QuoteFacts {
                    pcrs: &record.pcrs,
                    bank,
                    reset_count: record.reset_count,
                },
                runtime_policy.as_ref(),
                &device.device_type,
            )
            // Not a verdict: the list was not shown, so the device sends it whole (the
            // challenge is spent either way).
            .map_err(|why| {
                RegistryError::Conflict(format!(
                    "{IMA_CONTINUATION_REFUSED} from entry {from}: {why}; send it whole"
                ))
            })?;
            let continued = judged
                .check
                .as_ref()
                .and_then(|check| check.continued_from)
                .zip(before_time);
            kept_ima = judged.kept.map(|log| (log, continued));
            record.ima = judged.check;
            record.runtime_policy_updated_at = runtime_policy.map(|policy| policy.updated_at);
            runtime_reasons = judged.reasons.len();
            record.reasons.extend(judged.reasons);
        }
        if record.authentic {
            self.judge(
                id,
                &device.device_type,
                policy.as_ref(),
                &enrolled,
                &mut record,
                measured.as_ref(),
            )
            .await?;
        }
        record.passed = record.authentic && record.reasons.is_empty();
        // The entries first: a connect check that reads the new verdict finds them.
        if let Some((mut log, continued)) = kept_ima {
            // Failing for the runtime policy alone, its files may still be taken into one.
            log.set_boot_passed(record.authentic && record.reasons.len() == runtime_reasons);
            self.store_ima_entries(id, &enrolled.fingerprint, record.time, &log, continued)
                .await?;
        }
        sqlx::query(
            "INSERT INTO attestations (device_id, key_fingerprint, time, passed, authentic, record) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(&enrolled.fingerprint)
        .bind(record.time)
        .bind(i64::from(record.passed))
        .bind(i64::from(record.authentic))
        .bind(serde_json::to_string(&record).map_err(|e| RegistryError::Corrupt(e.to_string()))?)
        .execute(&self.pool)
        .await?;
        if let Some((bank, events)) = measured {
            self.store_event_log(&DeviceEventLog {
                device: id.to_owned(),
                time: record.time,
                key_fingerprint: enrolled.fingerprint.clone(),
                bank,
                events,
            })
            .await?;
        }
        sqlx::query(
            "DELETE FROM attestations WHERE device_id = $1 AND authentic = $2 AND id NOT IN
             (SELECT id FROM attestations WHERE device_id = $3 AND authentic = $4 ORDER BY id DESC LIMIT $5)",
        )
        .bind(id)
        .bind(i64::from(record.authentic))
        .bind(id)
        .bind(i64::from(record.authentic))
        .bind(KEPT_VERDICTS)
        .execute(&self.pool)
        .await?;
        let (kind, detail) = if record.passed {
            ("attested", format!("boot {}", record.reset_count))
        } else {
            ("attestation_failed", record.reasons.join("; "))
        };
        self.event(id, kind, &detail).await?;
        if record.authentic {
            self.attestation_changed.notify_one();
        }
        Ok(record)
    }

    /// Holds an authentic quote's PCRs against the device type's reference values (`policy`,
    /// with its reference log) and the TPM's boot count against the last passing verdict's.
    /// `measured`: the events of the quote's event log, when it replayed; PCRs that miss the
    /// values are then explained against the reference device's log.
    async fn judge(
        &self,
        id: &str,
        device_type: &str,
        policy: Option<&AttestationPolicy>,
        enrolled: &EnrolledKey,
        record: &mut AttestationRecord,
        measured: Option<&(String, Vec<tpm::event_log::MeasuredEvent>)>,
    ) -> Result<(), RegistryError> {
        // The events are those of the policy's bank, or there are none to judge.
        let events = measured
            .zip(policy)
            .filter(|((bank, _), policy)| *bank == policy.bank)
            .map_or(Measured::Missing, |((_, events), _)| {
                Measured::Events(events)
            });
        record
            .reasons
            .extend(policy_reasons(policy, device_type, &record.pcrs, events));
        // Explained only against the set the reference device's log belongs to, in its bank.
        if let Some(policy) = policy
            && let Some(reference) = &policy.reference_log
            && let Some((bank, events)) = measured
            && reference.bank == policy.bank
            && *bank == policy.bank
            && let Some((closest, differences)) =
                closest_differences(policy, &record.pcrs, Some(reference.set))
            && closest == reference.set
        {
            let pcrs: Vec<u32> = differences.iter().map(|(index, _)| *index).collect();
            record
                .reasons
                .extend(measured_boot::changes(reference, events, &pcrs));
        }
        let last = self
            .attestation_history(id, 1, Some(enrolled), true)
            .await?;
        if let Some(previous) = last.first()
            && record.reset_count < previous.reset_count
        {
            record.reasons.push(format!(
                "the TPM's boot count went back from {} to {}: a cleared or another TPM, or a replayed state",
                previous.reset_count, record.reset_count
            ));
        }
        Ok(())
    }

    /// A device's newest verdicts, newest first: under `key` only (since it was enrolled),
    /// and only passing ones when `passed_only`.
    async fn attestation_history(
        &self,
        id: &str,
        limit: u32,
        key: Option<&EnrolledKey>,
        passed_only: bool,
    ) -> Result<Vec<AttestationRecord>, RegistryError> {
        let rows = sqlx::query(
            "SELECT record FROM attestations WHERE device_id = $1 AND ($2 IS NULL OR key_fingerprint = $3)
             AND passed >= $4 ORDER BY id DESC LIMIT $5",
        )
        .bind(id)
        .bind(key.map(|k| k.fingerprint.as_str()))
        .bind(key.map(|k| k.fingerprint.as_str()))
        .bind(i64::from(passed_only))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get("record")?;
                serde_json::from_str(&text)
                    .map_err(|e| RegistryError::Corrupt(format!("attestation record: {e}")))
            })
            .collect()
    }

    /// Whether a device may connect now, and why not.
    pub async fn attestation_status(
        &self,
        id: &str,
        settings: &AttestationSettings,
        history: u32,
    ) -> Result<AttestationStatus, RegistryError> {
        let device = self.get(id).await?;
        let key = self.attestation_key(id).await?;
        let required = key.is_some() || settings.required;
        let recent = self
            .attestation_history(id, history.max(1), None, false)
            .await?;
        let mut status = AttestationStatus {
            device: id.to_owned(),
            required,
            may_connect: !required,
            reason: String::new(),
            valid_until: None,
            key: key.clone(),
            history: recent.into_iter().take(history as usize).collect(),
        };
        let Some(key) = key else {
            status.reason = if required {
                "no attestation key is enrolled and [attestation] required = true".into()
            } else {
                "attestation is not required of this device".into()
            };
            return Ok(status);
        };
        if settings.require_endorsement
            && key
                .endorsement
                .as_ref()
                .is_none_or(|e| e.certificate_issuer.is_none())
        {
            status.reason = "its attestation key was not activated through an endorsement key certified by a trusted TPM vendor ([attestation] require_endorsement): run `fabrik device attestation activate` on the device".into();
            return Ok(status);
        }
        if let Some(withdrawn) = key
            .endorsement
            .as_ref()
            .and_then(|e| self.endorsement_withdrawn(e))
        {
            status.reason = withdrawn;
            return Ok(status);
        }
        // The newest authentic verdict under this key decides.
        let rows = sqlx::query(
            "SELECT record FROM attestations WHERE device_id = $1 AND key_fingerprint = $2 AND authentic = 1
             ORDER BY id DESC LIMIT 1",
        )
        .bind(id)
        .bind(&key.fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        let latest: Option<AttestationRecord> = rows
            .map(|r| {
                let text: String = r.try_get("record")?;
                serde_json::from_str(&text)
                    .map_err(|e| RegistryError::Corrupt(format!("attestation record: {e}")))
            })
            .transpose()?;
        let max_age = i64::try_from(settings.max_age.as_nanos()).unwrap_or(i64::MAX);
        match latest {
            None => status.reason = "it has not attested with its enrolled key".into(),
            Some(r) if !r.passed => {
                status.reason = format!(
                    "its attestation of {} failed: {}",
                    time_text(r.time),
                    r.reasons.join("; ")
                );
            }
            Some(r) => {
                let until = r.time.saturating_add(max_age);
                status.valid_until = Some(until);
                // A pass holds only while its PCRs still meet the reference values of the
                // device's type as they are now: a withdrawn firmware set, or a device moved
                // to another type, closes the gate without waiting for the next quote.
                let policy = self.attestation_policy(&device.device_type).await?;
                let mut now_failing = self
                    .reasons_now(id, &device.device_type, &r, policy.as_ref())
                    .await?;
                now_failing.extend(
                    self.runtime_reasons_now(id, &device.device_type, &r)
                        .await?,
                );
                if !now_failing.is_empty() {
                    status.reason = format!(
                        "its quote of {} no longer meets the reference values of type `{}`: {}",
                        time_text(r.time),
                        device.device_type,
                        now_failing.join("; ")
                    );
                } else if until <= now_ns() {
                    status.reason = format!(
                        "its attestation of {} expired at {} ([attestation] max_age)",
                        time_text(r.time),
                        time_text(until)
                    );
                } else {
                    status.may_connect = true;
                    status.reason = format!("attested until {}", time_text(until));
                }
            }
        }
        Ok(status)
    }

    /// Why a passing verdict no longer meets its device's type's policy as it is now (empty:
    /// it still does). Values are held to it again from the verdict's PCRs; measurements
    /// stand as judged only when the verdict was judged under this very version of this
    /// type's policy, else they are judged again from the event log kept with that quote,
    /// once per verdict and policy version (the gate asks at every connection check).
    async fn reasons_now(
        &self,
        id: &str,
        device_type: &str,
        verdict: &AttestationRecord,
        policy: Option<&AttestationPolicy>,
    ) -> Result<Vec<String>, RegistryError> {
        let Some(policy) = policy else {
            return Ok(policy_reasons(
                None,
                device_type,
                &verdict.pcrs,
                Measured::Judged,
            ));
        };
        let judged_under_it =
            verdict.policy == device_type && verdict.policy_updated_at == Some(policy.updated_at);
        let needs_events = policy.require_event_log || !policy.measured_pcrs.is_empty();
        if judged_under_it || !needs_events {
            return Ok(policy_reasons(
                Some(policy),
                device_type,
                &verdict.pcrs,
                Measured::Judged,
            ));
        }
        let judged = RejudgedVerdict {
            verdict_time: verdict.time,
            device_type: device_type.to_owned(),
            policy_updated_at: policy.updated_at,
            reasons: Vec::new(),
        };
        if let Some(known) = self.rejudged.lock().get(id)
            && known.verdict_time == judged.verdict_time
            && known.device_type == judged.device_type
            && known.policy_updated_at == judged.policy_updated_at
        {
            return Ok(known.reasons.clone());
        }
        let kept_log = self.device_event_log(id).await?.filter(|log| {
            log.time == verdict.time
                && log.key_fingerprint == verdict.key_fingerprint
                && log.bank == policy.bank
        });
        let measured = kept_log
            .as_ref()
            .map_or(Measured::Missing, |log| Measured::Events(&log.events));
        let reasons = policy_reasons(Some(policy), device_type, &verdict.pcrs, measured);
        self.rejudged.lock().insert(
            id.to_owned(),
            RejudgedVerdict {
                reasons: reasons.clone(),
                ..judged
            },
        );
        Ok(reasons)
    }

    /// The reference values of a device type (without the reference device's log: read at
    /// every connection check).
    pub async fn attestation_policy(
        &self,
        device_type: &str,
    ) -> Result<Option<AttestationPolicy>, RegistryError> {
        self.policy_of_type(device_type, false).await
    }

    /// The reference values of a device type with the reference device's event log.
    pub async fn attestation_policy_with_log(
        &self,
        device_type: &str,
    ) -> Result<Option<AttestationPolicy>, RegistryError> {
        self.policy_of_type(device_type, true).await
    }

    async fn policy_of_type(
        &self,
        device_type: &str,
        with_log: bool,
    ) -> Result<Option<AttestationPolicy>, RegistryError> {
        let sql = if with_log {
            "SELECT bank, accept, updated_at, reference_log, measurements FROM attestation_policies WHERE device_type = $1"
        } else {
            "SELECT bank, accept, updated_at, CAST(NULL AS TEXT) AS reference_log, measurements FROM attestation_policies WHERE device_type = $1"
        };
        let row = sqlx::query(sql)
            .bind(device_type)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| policy_from_row(device_type.to_owned(), &r))
            .transpose()
    }

    /// Every device type's reference values (without the reference logs).
    pub async fn attestation_policies(&self) -> Result<Vec<AttestationPolicy>, RegistryError> {
        let rows = sqlx::query(
            "SELECT device_type, bank, accept, updated_at, CAST(NULL AS TEXT) AS reference_log, measurements FROM attestation_policies ORDER BY device_type",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| policy_from_row(r.try_get("device_type")?, r))
            .collect()
    }

    /// Sets a device type's reference values, or with `merge` adds to them. The write is
    /// conditional on the version read, so concurrent changes are not lost: a change
    /// overtaken by another is made again on the newer policy.
    pub async fn set_attestation_policy(
        &self,
        device_type: &str,
        body: PolicyBody,
    ) -> Result<AttestationPolicy, RegistryError> {
        if !body.merge && !body.revoke.is_empty() {
            return Err(RegistryError::Invalid(
                "revoke: only with merge (a new policy has nothing to revoke)".into(),
            ));
        }
        for _ in 0..POLICY_WRITE_ATTEMPTS {
            let existing = self.attestation_policy_with_log(device_type).await?;
            if body.merge && existing.is_none() {
                return Err(RegistryError::Absent(format!(
                    "merge: device type `{device_type}` has no attestation policy to merge into: set one without merge"
                )));
            }
            let read_version = existing.as_ref().map(|existing| existing.updated_at);
            let policy = self.composed_policy(device_type, &body, existing).await?;
            if self.store_policy(&policy, read_version).await? {
                self.attestation_changed.notify_one();
                return Ok(policy);
            }
        }
        Err(RegistryError::Conflict(format!(
            "the attestation policy of `{device_type}` kept changing while this change was made: try again"
        )))
    }

    /// The policy `body` makes of `existing` (the type's policy as read; only a merge keeps
    /// its content).
    async fn composed_policy(
        &self,
        device_type: &str,
        body: &PolicyBody,
        existing: Option<AttestationPolicy>,
    ) -> Result<AttestationPolicy, RegistryError> {
        // Versions only grow, so a verdict judged under one version is never taken as judged
        // under a later one made in the same nanosecond or with a clock set back.
        let updated_at = existing
            .as_ref()
            .map_or_else(now_ns, |existing| now_ns().max(existing.updated_at + 1));
        let existing = existing.filter(|_| body.merge);
        let bank = match (&existing, &body.bank) {
            (Some(existing), Some(bank)) if *bank != existing.bank => {
                return Err(RegistryError::Invalid(format!(
                    "bank: the policy of `{device_type}` is in {}; merging into it cannot change its bank",
                    existing.bank
                )));
            }
            (Some(existing), _) => existing.bank.clone(),
            (None, bank) => bank.clone().unwrap_or_else(|| "sha256".into()),
        };
        let width = match bank.as_str() {
            "sha1" => 20,
            "sha256" => 32,
            "sha384" => 48,
            "sha512" => 64,
            other => {
                return Err(RegistryError::Invalid(format!(
                    "bank: `{other}` is not one of sha1, sha256, sha384, sha512"
                )));
            }
        };
        let mut accept = existing
            .as_ref()
            .map(|existing| existing.accept.clone())
            .unwrap_or_default();
        let mut reference_log = existing
            .as_ref()
            .and_then(|existing| existing.reference_log.clone());
        for (i, set) in body.accept.iter().enumerate() {
            let mut parsed = BTreeMap::new();
            for (index, value) in set {
                let at = format!("accept[{i}].{index}");
                let n: u32 =
                    index.parse().ok().filter(|n| *n < 24).ok_or_else(|| {
                        RegistryError::Invalid(format!("{at}: not a PCR index 0-23"))
                    })?;
                let bytes =
                    tpm::unhex(value).map_err(|e| RegistryError::Invalid(format!("{at}: {e}")))?;
                if bytes.len() != width {
                    return Err(RegistryError::Invalid(format!(
                        "{at}: {} bytes; a {bank} PCR holds {width}",
                        bytes.len()
                    )));
                }
                parsed.insert(n, tpm::hex(&bytes));
            }
            if parsed.is_empty() {
                return Err(RegistryError::Invalid(format!("accept[{i}]: names no PCR")));
            }
            accept.push(parsed);
        }
        if let Some(golden) = &body.from_device {
            let record = self.last_authentic_quote(golden, "from_device").await?;
            let Some(values) = record.pcrs.get(&bank) else {
                return Err(RegistryError::Invalid(format!(
                    "from_device: `{golden}`'s last quote has no {bank} PCRs"
                )));
            };
            // A log that came with these very values explains later misses of them.
            if let Some(log) = self
                .reference_log(
                    golden,
                    record.time,
                    &record.key_fingerprint,
                    &bank,
                    accept.len(),
                )
                .await?
            {
                reference_log = Some(log);
            }
            let mut set = values.clone();
            if let Some(only) = &body.pcrs {
                if let Some(missing) = only.iter().find(|i| !values.contains_key(i)) {
                    return Err(RegistryError::Invalid(format!(
                        "pcrs: `{golden}`'s last quote has no PCR {missing}"
                    )));
                }
                set.retain(|i, _| only.contains(i));
            }
            accept.push(set);
        } else if body.pcrs.is_some() {
            return Err(RegistryError::Invalid(
                "pcrs: only taken with from_device".into(),
            ));
        }
        let measured_pcrs = match &body.measure {
            Some(measure) => allowlist::measured_pcrs(measure)?,
            None => existing
                .as_ref()
                .map(|existing| existing.measured_pcrs.clone())
                .unwrap_or_default(),
        };
        let require_event_log = body.require_event_log.unwrap_or_else(|| {
            existing
                .as_ref()
                .is_some_and(|existing| existing.require_event_log)
        });
        let (was_measured, had) = existing
            .map(|existing| (existing.measured_pcrs, existing.allowed))
            .unwrap_or_default();
        let kept = allowlist::revoked(had, &body.revoke)?;
        // A merge that stops judging a PCR by its events would drop the digests allowed in it
        // unseen; that takes a replacing policy, or revoking them first.
        if let Some(dropped) = kept.iter().find(|m| !measured_pcrs.contains(&m.pcr)) {
            let digests = match kept.iter().filter(|m| m.pcr == dropped.pcr).count() {
                1 => "1 allowed digest".to_owned(),
                n => format!("{n} allowed digests"),
            };
            return Err(RegistryError::Invalid(format!(
                "measure: PCR {} of the policy of `{device_type}` has {digests}; a merge does not stop judging it by its events: keep it in measure, revoke its digests, or replace the policy (without merge)",
                dropped.pcr
            )));
        }
        let mut more = allowlist::allowed_from_input(&body.allow, &measured_pcrs, &bank, width)?;
        if let Some(golden) = &body.allow_from_device {
            more.extend(self.measurements_of(golden, &measured_pcrs, &bank).await?);
        }
        let allowed = allowlist::merged(kept, more);
        if accept.is_empty() && measured_pcrs.is_empty() {
            return Err(RegistryError::Invalid(
                "accept: give at least one set of PCR values, or from_device, or PCRs to judge by their events (measure)".into(),
            ));
        }
        allowlist::check_coverage(&measured_pcrs, &allowed, &was_measured)?;
        Ok(AttestationPolicy {
            device_type: device_type.to_owned(),
            bank,
            accept,
            require_event_log,
            measured_pcrs,
            allowed,
            updated_at,
            reference_log,
        })
    }

    /// Writes `policy` if the type's policy is still at `read_version` (`None`: it had none);
    /// false when another change came first.
    async fn store_policy(
        &self,
        policy: &AttestationPolicy,
        read_version: Option<i64>,
    ) -> Result<bool, RegistryError> {
        let reference_log = policy
            .reference_log
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let measurements = serde_json::to_string(&StoredMeasurements {
            require_event_log: policy.require_event_log,
            measured_pcrs: policy.measured_pcrs.clone(),
            allowed: policy.allowed.clone(),
        })
        .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let accept = serde_json::to_string(&policy.accept)
            .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let done = match read_version {
            None => {
                sqlx::query(
                    "INSERT INTO attestation_policies (device_type, bank, accept, updated_at, reference_log, measurements) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (device_type) DO NOTHING",
                )
                .bind(&policy.device_type)
                .bind(&policy.bank)
                .bind(accept)
                .bind(policy.updated_at)
                .bind(reference_log)
                .bind(measurements)
                .execute(&self.pool)
                .await?
            }
            Some(version) => {
                sqlx::query(
                    "UPDATE attestation_policies SET bank = $1, accept = $2, updated_at = $3, reference_log = $4, measurements = $5
                     WHERE device_type = $6 AND updated_at = $7",
                )
                .bind(&policy.bank)
                .bind(accept)
                .bind(policy.updated_at)
                .bind(reference_log)
                .bind(measurements)
                .bind(&policy.device_type)
                .bind(version)
                .execute(&self.pool)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    /// A device's newest authentic verdict under the key it has now (values a removed key
    /// vouched for are not taken); `field` names the request field in the error.
    async fn last_authentic_quote(
        &self,
        device: &str,
        field: &str,
    ) -> Result<AttestationRecord, RegistryError> {
        let key = self.attestation_key(device).await?;
        let latest = sqlx::query(
            "SELECT record FROM attestations WHERE device_id = $1 AND key_fingerprint = $2 AND authentic = 1
             ORDER BY id DESC LIMIT 1",
        )
        .bind(device)
        .bind(key.map(|k| k.fingerprint).unwrap_or_default())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = latest else {
            return Err(RegistryError::Invalid(format!(
                "{field}: `{device}` has sent no authentic quote to take values from"
            )));
        };
        let text: String = row.try_get("record")?;
        serde_json::from_str(&text)
            .map_err(|e| RegistryError::Corrupt(format!("attestation record: {e}")))
    }

    /// Every measurement of `measured` PCRs in the event log of `device`'s last authentic
    /// quote, which must have replayed in `bank` over all of them.
    async fn measurements_of(
        &self,
        device: &str,
        measured: &[u32],
        bank: &str,
    ) -> Result<Vec<AllowedMeasurement>, RegistryError> {
        let field = "allow_from_device";
        if measured.is_empty() {
            return Err(RegistryError::Invalid(format!(
                "{field}: no PCR is judged by its events: name them (measure)"
            )));
        }
        let record = self.last_authentic_quote(device, field).await?;
        let Some(check) = record.event_log.as_ref().filter(|check| check.matches) else {
            return Err(RegistryError::Invalid(format!(
                "{field}: `{device}`'s last authentic quote came without an event log that replayed"
            )));
        };
        if check.bank != bank {
            return Err(RegistryError::Invalid(format!(
                "{field}: `{device}`'s event log was checked in {}, the policy is in {bank}",
                check.bank
            )));
        }
        if let Some(missing) = measured.iter().find(|pcr| !check.replayed.contains(pcr)) {
            return Err(RegistryError::Invalid(format!(
                "{field}: `{device}`'s last quote did not cover PCR {missing}, so its log was not checked there: quote it"
            )));
        }
        let Some(log) = self
            .device_event_log(device)
            .await?
            .filter(|log| log.time == record.time && log.key_fingerprint == record.key_fingerprint)
        else {
            return Err(RegistryError::Invalid(format!(
                "{field}: the event log of `{device}`'s last authentic quote is no longer kept"
            )));
        };
        let source = format!("device {device}, quote of {}", time_text(record.time));
        Ok(allowlist::allowed_from_log(&log.events, measured, &source))
    }

    /// Removes a device type's reference values: its devices with keys can no longer pass.
    pub async fn remove_attestation_policy(&self, device_type: &str) -> Result<(), RegistryError> {
        let done = sqlx::query("DELETE FROM attestation_policies WHERE device_type = $1")
            .bind(device_type)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(RegistryError::Absent(format!(
                "device type `{device_type}` has no attestation policy"
            )));
        }
        self.attestation_changed.notify_one();
        Ok(())
    }

    /// Drops a removed device's key and verdicts.
    pub(crate) async fn forget_attestation(&self, id: &str) -> Result<(), RegistryError> {
        sqlx::query("DELETE FROM attestation_keys WHERE device_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM attestations WHERE device_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM attestation_event_logs WHERE device_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM attestation_ima_parts WHERE device_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM attestation_ima_logs WHERE device_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.challenges.lock().remove(id);
        self.enrolled.lock().remove(id);
        self.rejudged.lock().remove(id);
        self.runtime_rejudged.lock().remove(id);
        Ok(())
    }
}

/// A policy's event-level part as its row keeps it (JSON; NULL for a policy of values only).
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoredMeasurements {
    require_event_log: bool,
    measured_pcrs: Vec<u32>,
    allowed: Vec<AllowedMeasurement>,
}

fn policy_from_row(
    device_type: String,
    row: &sqlx::any::AnyRow,
) -> Result<AttestationPolicy, RegistryError> {
    let accept: String = row.try_get("accept")?;
    let reference_log: Option<String> = row.try_get("reference_log")?;
    let measurements: Option<String> = row.try_get("measurements")?;
    let measurements: StoredMeasurements = measurements
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| RegistryError::Corrupt(format!("attestation policy's measurements: {e}")))?
        .unwrap_or_default();
    Ok(AttestationPolicy {
        device_type,
        bank: row.try_get("bank")?,
        accept: serde_json::from_str(&accept)
            .map_err(|e| RegistryError::Corrupt(format!("attestation policy: {e}")))?,
        require_event_log: measurements.require_event_log,
        measured_pcrs: measurements.measured_pcrs,
        allowed: measurements.allowed,
        updated_at: row.try_get("updated_at")?,
        reference_log: reference_log
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| {
                RegistryError::Corrupt(format!("attestation policy's reference log: {e}"))
            })?,
    })
}

impl Registry {
    /// Notified by every attestation verdict, key and policy change.
    pub fn attestation_changed(&self) -> Arc<tokio::sync::Notify> {
        self.attestation_changed.clone()
    }

    /// Devices with an enrolled attestation key, and devices in all.
    pub async fn attestation_coverage(&self) -> Result<(usize, usize), RegistryError> {
        let (enrolled, total): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM attestation_keys), (SELECT count(*) FROM devices)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((
            usize::try_from(enrolled).unwrap_or(0),
            usize::try_from(total).unwrap_or(0),
        ))
    }

    /// Why a device may not connect now (`None`: it may). Free for devices that need not
    /// attest: the set of enrolled devices is kept in memory.
    pub async fn attestation_gate(
        &self,
        id: &str,
        settings: &AttestationSettings,
    ) -> Result<Option<String>, RegistryError> {
        if !settings.required && !self.enrolled.lock().contains(id) {
            return Ok(None);
        }
        let status = self.attestation_status(id, settings, 0).await?;
        Ok((!status.may_connect).then_some(status.reason))
    }
}
