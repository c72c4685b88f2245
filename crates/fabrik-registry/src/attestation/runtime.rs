//! Runtime policies (decision 0067): the files a device type's kernel (IMA) may have measured
//! since the boot, by path and digest, stored per type; the judging of a quote's IMA log,
//! once it replayed to the quoted PCR 10, against them; and the entries kept per device, from
//! which a changed policy judges the passes already given.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::ima_signature::{self, SigningKey};
use super::{AttestationRecord, RejudgedVerdict};
use crate::tpm::ima::{self, Extension, ImaEntry};
use crate::{Dialect, Registry, RegistryError, now_ns};

/// Entries named in a verdict before the rest are counted.
const NAMED: usize = 5;
/// A kept list in more parts than this is written again whole (one part) at the next quote,
/// so reading it back stays a few queries' work.
const MOST_PARTS: i64 = 64;
/// How often a kept list is read again when a quote was kept while it was being read.
const READ_ATTEMPTS: usize = 3;

/// The files a device type may run and read, as its IMA measures them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimePolicy {
    /// Allowed digests by absolute path (or by name, for the kernel's `ima-buf` entries such
    /// as `kexec-cmdline`), each `sha256:<hex>` (a bare hex digest is taken as SHA-256):
    /// several while a file is being updated across the fleet.
    pub allowed: BTreeMap<String, Vec<String>>,
    /// Paths whose measurements are not judged, each a file or a directory with everything
    /// under it (`/var/log`): files that change in normal operation. Programs run from there
    /// are not judged either, so keep them to data.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Whether a measurement violation (a file measured while open for writing, or opened for
    /// writing while measured, which leaves the PCR saying nothing of what it held) fails a
    /// quote. Default true.
    #[serde(default = "violations_fail")]
    pub violations_fail: bool,
    /// Public keys (PEM: RSA, ECDSA P-256 or P-384) whose IMA signatures admit a file
    /// whatever its path and digest: an `ima-sig` entry whose signature (format v2, as
    /// `evmctl ima_sign` writes it) one of them made. A vendor's signed packages need no
    /// digest each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
    /// Last change (ns); set by the server.
    #[serde(default)]
    pub updated_at: i64,
}

fn violations_fail() -> bool {
    true
}

/// What is added to a device type's runtime policy (created when it has none): the digests
/// and excludes given, and every file a known-good device's kept IMA log shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimePolicyAddition {
    /// Digests to allow, by path, as in a policy.
    #[serde(default)]
    pub allowed: BTreeMap<String, Vec<String>>,
    /// Paths to exclude, as in a policy.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Keys whose IMA signatures admit a file, as in a policy.
    #[serde(default)]
    pub signing_keys: Vec<String>,
    /// Allow every file (but the boot_aggregate and measurement violations) in this device's
    /// newest IMA log that replayed to an authentic quote.
    #[serde(default)]
    pub from_device: Option<String>,
}

/// What a quote's IMA log showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImaCheck {
    /// Entries in the log.
    pub entries: usize,
    /// Of those, the ones PCR 10 held when quoted (the rest were added after the quote, the
    /// quoting tool among them, and are judged at the next quote).
    pub covered: usize,
    /// The bank it was replayed in.
    pub bank: String,
    /// Whether it replayed to the quoted PCR 10: only then do its entries say anything.
    pub matches: bool,
    /// How the kernel extended the bank: `template_data` (Linux 5.11 and later) or
    /// `padded_sha1` (before); `null` when it did not replay.
    pub extension: Option<String>,
    /// Violations among the covered entries.
    pub violations: usize,
    /// The entries the runtime policy did not allow (all of them are named in the reasons,
    /// up to five); 0 without a runtime policy.
    pub not_allowed: usize,
    /// The device sent the list from this entry on, the verifier holding the ones before
    /// from an earlier quote of the same boot (absent: sent whole). `entries` and `covered`
    /// count the whole list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_from: Option<usize>,
}

/// How a quote's IMA list came: whole, or its entries from `from` on.
#[derive(Debug)]
pub(crate) struct ImaEvidence {
    pub(crate) from: usize,
    pub(crate) entries: Vec<ImaEntry>,
}

/// Where the replay of a kept list ended: a continuation of the same boot replays on from
/// there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReplayState {
    bank: String,
    extension: Extension,
    /// PCR 10 after the kept entries (hex): the quoted value they replayed to.
    pcr: String,
    /// The TPM's boot count at that quote.
    reset_count: u32,
}

/// An IMA entry as kept from an authentic quote: judged again under a changed policy, and
/// the source of a policy made from a known-good device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImaLogEntry {
    /// The file's path (or the name of an `ima-buf` entry such as `kexec-cmdline`).
    pub path: String,
    /// Its digest, `<algorithm>:<hex>`.
    pub digest: String,
    /// A measurement violation: the file was open for writing while measured, so the digest
    /// says nothing of what it held.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub violation: bool,
    /// Its IMA signature (`ima-sig`), hex; absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The IMA entries of a device's newest authentic quote whose list replayed to PCR 10.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceImaLog {
    /// The device.
    pub device: String,
    /// The quote's time (ns).
    pub time: i64,
    /// The attestation key that signed the quote.
    pub key_fingerprint: String,
    /// What was wrong with the list's boot_aggregate (it is not the digest of the quoted PCRs
    /// 0-9); `null`: nothing.
    #[serde(default)]
    pub boot_aggregate_problem: Option<String>,
    /// Whether its quote met everything but the runtime policy (key, nonce, the boot's
    /// PCRs): only such a list can be taken into a policy (`from_device`).
    #[serde(default)]
    pub boot_passed: bool,
    /// The entries the quote covered, in order; the first is the boot_aggregate.
    pub entries: Vec<ImaLogEntry>,
}

/// What a quote's IMA log covered, as it is kept: its entries, and what was wrong with its
/// boot_aggregate (the quote's PCRs are not kept with it, so that is judged at the quote even
/// when the type had no runtime policy yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeptLog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_aggregate_problem: Option<String>,
    entries: Vec<ImaLogEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replay: Option<ReplayState>,
    /// Whether the quote met everything but the runtime policy (its key, nonce, boot
    /// policy): only then may its files be taken into a policy.
    #[serde(default)]
    boot_passed: bool,
}

impl KeptLog {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn set_boot_passed(&mut self, passed: bool) {
        self.boot_passed = passed;
    }
}

/// A quote's IMA list as judged: what it showed, why it fails, and what is kept of it.
#[derive(Debug, Default)]
pub(crate) struct ImaJudgement {
    pub(crate) check: Option<ImaCheck>,
    pub(crate) reasons: Vec<String>,
    pub(crate) kept: Option<KeptLog>,
}

/// The quote's facts a list is judged with.
pub(crate) struct QuoteFacts<'a> {
    pub(crate) pcrs: &'a BTreeMap<String, BTreeMap<u32, String>>,
    pub(crate) bank: &'a str,
    pub(crate) reset_count: u32,
}

/// Judges a quote's IMA list; a continuation against `before`, the device's kept list. `Err`:
/// the continuation does not follow `before` (another boot, a changed bank, entries the
/// verifier does not hold), so the list must be sent whole; nothing about the device follows.
pub(crate) fn judge_evidence(
    evidence: Option<ImaEvidence>,
    before: Option<KeptLog>,
    quote: &QuoteFacts<'_>,
    policy: Option<&RuntimePolicy>,
    device_type: &str,
) -> Result<ImaJudgement, String> {
    let evidence = match evidence {
        Some(continued) if continued.from > 0 => continued,
        whole => {
            return Ok(judge_whole(
                whole.map(|whole| whole.entries),
                quote,
                policy,
                device_type,
            ));
        }
    };
    let from = evidence.from;
    let Some(before) = before else {
        return Err(format!(
            "no list of this device is kept to continue from entry {from}"
        ));
    };
    let Some(state) = before.replay.as_ref() else {
        return Err("the kept list has no replay state".into());
    };
    if from.saturating_add(evidence.entries.len()) > ima::MOST_ENTRIES {
        return Err(format!(
            "the list would grow past {} entries, the most kept of a list sent in parts",
            ima::MOST_ENTRIES
        ));
    }
    if before.len() != from {
        return Err(format!(
            "it continues from entry {from}, but {} entries are kept",
            before.len()
        ));
    }
    if state.bank != quote.bank {
        return Err(format!(
            "the kept list was replayed in {}, the policy's bank is now {}",
            state.bank, quote.bank
        ));
    }
    if state.reset_count != quote.reset_count {
        return Err(format!(
            "the device booted since the kept list's quote (TPM boot {} then, {} now)",
            state.reset_count, quote.reset_count
        ));
    }
    let covered = ima::check_continued(
        &state.pcr,
        &evidence.entries,
        quote.pcrs,
        quote.bank,
        state.extension,
    )?;
    let mut entries = before.entries;
    entries.extend(kept_entries(&evidence.entries[..covered]));
    let check = ImaCheck {
        entries: from + evidence.entries.len(),
        covered: entries.len(),
        bank: quote.bank.to_owned(),
        matches: true,
        extension: Some(extension_name(state.extension).to_owned()),
        violations: entries.iter().filter(|entry| entry.violation).count(),
        not_allowed: 0,
        continued_from: Some(from),
    };
    // Judged again with this quote's PCRs 0-9 (the same boot's): a quote before that left
    // them out does not stay a problem.
    let first = entries.first().and_then(|entry| {
        let (algorithm, digest) = entry.digest.split_once(':')?;
        Some((entry.path.as_str(), algorithm, digest))
    });
    let kept = KeptLog {
        boot_passed: false,
        boot_aggregate_problem: ima::check_boot_aggregate_entry(first, quote.pcrs).err(),
        entries,
        replay: Some(ReplayState {
            pcr: quoted_pcr(quote).unwrap_or_default(),
            ..state.clone()
        }),
    };
    Ok(judged_against_policy(check, kept, policy, device_type))
}

/// A list sent whole.
fn judge_whole(
    entries: Option<Vec<ImaEntry>>,
    quote: &QuoteFacts<'_>,
    policy: Option<&RuntimePolicy>,
    device_type: &str,
) -> ImaJudgement {
    let (check, reasons) = judge(
        entries.as_deref(),
        quote.pcrs,
        quote.bank,
        policy,
        device_type,
    );
    let Some(check) = check else {
        return ImaJudgement {
            check,
            reasons,
            kept: None,
        };
    };
    let (Some(entries), Some(extension)) = (entries, check.extension.as_deref()) else {
        return ImaJudgement {
            check: Some(check),
            reasons,
            kept: None,
        };
    };
    // What PCR 10 covered is kept: to be judged again under a changed policy, and continued
    // from at the next quote.
    let covered = &entries[..check.covered];
    let kept = KeptLog {
        boot_passed: false,
        boot_aggregate_problem: ima::check_boot_aggregate(covered, quote.pcrs).err(),
        entries: kept_entries(covered),
        replay: Some(ReplayState {
            bank: quote.bank.to_owned(),
            extension: if extension == extension_name(Extension::PaddedSha1) {
                Extension::PaddedSha1
            } else {
                Extension::TemplateData
            },
            pcr: quoted_pcr(quote).unwrap_or_default(),
            reset_count: quote.reset_count,
        }),
    };
    ImaJudgement {
        check: Some(check),
        reasons,
        kept: Some(kept),
    }
}

/// A continued list's verdict under the type's runtime policy.
fn judged_against_policy(
    mut check: ImaCheck,
    kept: KeptLog,
    policy: Option<&RuntimePolicy>,
    device_type: &str,
) -> ImaJudgement {
    let mut reasons = Vec::new();
    if let Some(policy) = policy {
        reasons.extend(kept.boot_aggregate_problem.clone());
        let (not_allowed, named) = not_allowed(policy, device_type, &kept.entries);
        check.not_allowed = not_allowed;
        reasons.extend(named);
    }
    ImaJudgement {
        check: Some(check),
        reasons,
        kept: Some(kept),
    }
}

fn quoted_pcr(quote: &QuoteFacts<'_>) -> Option<String> {
    quote
        .pcrs
        .get(quote.bank)
        .and_then(|values| values.get(&ima::IMA_PCR))
        .map(|value| value.to_ascii_lowercase())
}

fn extension_name(extension: Extension) -> &'static str {
    match extension {
        Extension::TemplateData => "template_data",
        Extension::PaddedSha1 => "padded_sha1",
    }
}

fn kept_entries(entries: &[ImaEntry]) -> Vec<ImaLogEntry> {
    entries
        .iter()
        .map(|entry| ImaLogEntry {
            path: entry.path.clone(),
            digest: entry.digest_text(),
            violation: entry.violation(),
            signature: (!entry.signature.is_empty()).then(|| crate::tpm::hex(&entry.signature)),
        })
        .collect()
}

/// A digest as policies keep it: `<algorithm>:<lowercase hex>`, its length that of the
/// algorithm's.
fn normalised_digest(text: &str) -> Result<String, String> {
    let text = text.trim();
    let (algorithm, hex) = text.split_once(':').unwrap_or(("sha256", text));
    let length = match algorithm {
        "sha1" => 40,
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "`{text}`: the algorithm `{algorithm}` is not one IMA uses (sha1, sha256, sha384, sha512)"
            ));
        }
    };
    if hex.len() != length || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{text}`: a {algorithm} digest is {length} hex digits"
        ));
    }
    Ok(format!("{algorithm}:{}", hex.to_ascii_lowercase()))
}

impl RuntimePolicy {
    /// Checks and normalises a policy as given; every problem names its place.
    pub fn validated(mut self) -> Result<Self, RegistryError> {
        let mut problems = Vec::new();
        let mut allowed = BTreeMap::new();
        for (path, digests) in std::mem::take(&mut self.allowed) {
            if !is_path_or_name(&path) {
                problems.push(format!(
                    "allowed[\"{path}\"]: a path is absolute (a name without `/` is an \
                     ima-buf entry's)"
                ));
            }
            if digests.is_empty() {
                problems.push(format!("allowed[\"{path}\"]: no digest"));
            }
            let mut normalised = Vec::new();
            for (index, digest) in digests.iter().enumerate() {
                match normalised_digest(digest) {
                    Ok(digest) if !normalised.contains(&digest) => normalised.push(digest),
                    Ok(_) => {}
                    Err(why) => problems.push(format!("allowed[\"{path}\"][{index}]: {why}")),
                }
            }
            allowed.insert(path, normalised);
        }
        for (index, excluded) in self.excludes.iter().enumerate() {
            if !is_path_or_name(excluded) || excluded == "/" {
                problems.push(format!(
                    "excludes[{index}]: `{excluded}` is not an absolute path below `/` (or an \
                     ima-buf entry's name)"
                ));
            }
        }
        for (index, pem) in self.signing_keys.iter().enumerate() {
            if let Err(why) = SigningKey::from_pem(pem) {
                problems.push(format!("signing_keys[{index}]: {why}"));
            }
        }
        if !problems.is_empty() {
            return Err(RegistryError::Invalid(problems.join("; ")));
        }
        self.allowed = allowed;
        Ok(self)
    }

    /// The keys whose signatures admit a file (the ones that read: a stored policy was
    /// checked when set).
    fn keys(&self) -> Vec<SigningKey> {
        self.signing_keys
            .iter()
            .filter_map(|pem| SigningKey::from_pem(pem).ok())
            .collect()
    }

    /// Whether `path` is an excluded file, or lies under an excluded directory (whole
    /// components: `/var/cache` does not exclude `/var/cache2`).
    fn excluded(&self, path: &str) -> bool {
        self.excludes.iter().any(|excluded| {
            let directory = excluded.trim_end_matches('/');
            path == excluded
                || path == directory
                || path
                    .strip_prefix(directory)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// An absolute path, or a name without `/` (the kernel's `ima-buf` entries).
fn is_path_or_name(text: &str) -> bool {
    !text.is_empty() && (text.starts_with('/') || !text.contains('/'))
}

/// Checks a quote's IMA log against its authentic PCRs in `bank` and, when it replays and the
/// type has a runtime policy, its entries against the policy; returns what it showed and the
/// reasons the quote fails. `entries`: `None` when the quote came without a log.
fn judge(
    entries: Option<&[ImaEntry]>,
    pcrs: &BTreeMap<String, BTreeMap<u32, String>>,
    bank: &str,
    policy: Option<&RuntimePolicy>,
    device_type: &str,
) -> (Option<ImaCheck>, Vec<String>) {
    let Some(entries) = entries else {
        let reasons = policy
            .map(|_| {
                format!(
                    "the quote came without an IMA log, which the runtime policy of type \
                     `{device_type}` needs (`fabrik device attestation quote --ima-log`)"
                )
            })
            .into_iter()
            .collect();
        return (None, reasons);
    };
    let mut check = ImaCheck {
        entries: entries.len(),
        covered: 0,
        bank: bank.to_owned(),
        matches: false,
        extension: None,
        violations: 0,
        not_allowed: 0,
        continued_from: None,
    };
    let (extension, covered) = match ima::check(entries, pcrs, bank) {
        Ok(found) => found,
        Err(why) => return (Some(check), vec![why]),
    };
    // Only what PCR 10 held at the quote is evidence.
    let entries = &entries[..covered];
    check.covered = covered;
    check.violations = entries.iter().filter(|e| e.violation()).count();
    check.matches = true;
    check.extension = Some(extension_name(extension).to_owned());
    let Some(policy) = policy else {
        return (Some(check), Vec::new());
    };
    let mut reasons = Vec::new();
    if let Err(why) = ima::check_boot_aggregate(entries, pcrs) {
        reasons.push(why);
    }
    let (not_allowed, named) = not_allowed(policy, device_type, &kept_entries(entries));
    check.not_allowed = not_allowed;
    reasons.extend(named);
    (Some(check), reasons)
}

/// How many covered entries (after the first, the boot_aggregate) `policy` does not allow,
/// and the reasons naming up to five of them.
fn not_allowed(
    policy: &RuntimePolicy,
    device_type: &str,
    entries: &[ImaLogEntry],
) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut keys: Option<Vec<SigningKey>> = None;
    for (number, entry) in entries.iter().enumerate().skip(1) {
        // Judged before the excludes: a violation's path is not covered by the PCR (the
        // kernel extends ones, not its data), so it may name any file.
        if entry.violation {
            if policy.violations_fail {
                problems.push(format!(
                    "IMA entry {number} is a measurement violation: a file was open for writing \
                     while it was measured, so the PCR does not say what it held (the device \
                     names it {}, which nothing vouches for)",
                    entry.path
                ));
            }
            continue;
        }
        if policy.excluded(&entry.path) {
            continue;
        }
        let why = match policy.allowed.get(&entry.path) {
            None => "an unknown file",
            Some(digests) if !digests.contains(&entry.digest) => "another digest than allowed",
            Some(_) => continue,
        };
        // A file one of the policy's keys signed is admitted whatever its path and digest.
        let signed = match (&entry.signature, policy.signing_keys.is_empty()) {
            (Some(signature), false) => {
                let keys = keys.get_or_insert_with(|| policy.keys());
                match crate::tpm::unhex(signature) {
                    Ok(bytes) => ima_signature::check(&entry.digest, &bytes, keys),
                    Err(e) => Err(format!("its signature: {e}")),
                }
            }
            _ => Err(String::new()),
        };
        let why = match signed {
            Ok(()) => continue,
            Err(unsigned) if unsigned.is_empty() => why.to_owned(),
            Err(bad_signature) => format!("{why}, and {bad_signature}"),
        };
        problems.push(format!(
            "IMA entry {number}: {} measured {}, which the runtime policy of type \
             `{device_type}` does not allow ({why})",
            entry.path, entry.digest
        ));
    }
    let mut named: Vec<String> = problems.iter().take(NAMED).cloned().collect();
    if problems.len() > NAMED {
        named.push(format!(
            "and {} more IMA entries the runtime policy of type `{device_type}` does not allow",
            problems.len() - NAMED
        ));
    }
    (problems.len(), named)
}

impl Registry {
    /// Keeps the IMA entries an authentic quote covered, replacing older ones of the device.
    /// A list that continued the kept one (`continued`: from which entry, and the time of the
    /// kept quote it continued) adds only its new entries, as one more part (decision 0067): a
    /// long list is not written again at every quote. It is written whole when it did not continue, when what is kept is no longer
    /// what it continued (another quote was kept meanwhile), or when it is in
    /// [`MOST_PARTS`] parts already. A quote older than the one kept changes nothing.
    pub(crate) async fn store_ima_entries(
        &self,
        id: &str,
        key_fingerprint: &str,
        time: i64,
        log: &KeptLog,
        continued: Option<(usize, i64)>,
    ) -> Result<(), RegistryError> {
        let header = KeptLog {
            entries: Vec::new(),
            ..log.clone()
        };
        let header =
            serde_json::to_string(&header).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        // SQLite's write lock at once (a deferred transaction that read and then wrote would
        // fail if another write came in between); PostgreSQL locks the device's row.
        let mut tx = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        };
        // A device's first list: a row to lock first (PostgreSQL locks no row that is not
        // there, and two first quotes at once would both write part 0). It never outlives
        // the transaction: the header below replaces it.
        sqlx::query(
            "INSERT INTO attestation_ima_logs (device_id, key_fingerprint, time, entry_count, entries, parts) \
             VALUES ($1, '', $2, 0, '{\"entries\":[]}', 0) ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(id)
        .bind(i64::MIN)
        .execute(&mut *tx)
        .await?;
        let kept = sqlx::query(self.dialect.pick(
            "SELECT key_fingerprint, time, entry_count, parts FROM attestation_ima_logs WHERE device_id = $1",
            "SELECT key_fingerprint, time, entry_count, parts FROM attestation_ima_logs WHERE device_id = $1 FOR UPDATE",
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let mut parts = 0;
        let mut appends = false;
        if let Some(row) = &kept {
            let kept_time: i64 = row.try_get("time")?;
            if kept_time >= time {
                return Ok(());
            }
            let kept_key: String = row.try_get("key_fingerprint")?;
            let kept_count: i64 = row.try_get("entry_count")?;
            parts = row.try_get::<i64, _>("parts")?;
            // What is kept must be the very list continued: same quote, same key, as long.
            appends = continued.is_some_and(|(from, continued_time)| {
                count(from) == kept_count
                    && continued_time == kept_time
                    && from <= log.entries.len()
            }) && kept_key == key_fingerprint
                && parts > 0
                && parts < MOST_PARTS;
        }
        if !appends {
            sqlx::query("DELETE FROM attestation_ima_parts WHERE device_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            parts = 0;
        }
        let first = match continued {
            Some((from, _)) if appends => from,
            _ => 0,
        };
        if first < log.entries.len() || parts == 0 {
            let part = serde_json::to_string(&log.entries[first..])
                .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO attestation_ima_parts (device_id, first_entry, entries) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(count(first))
            .bind(part)
            .execute(&mut *tx)
            .await?;
            parts += 1;
        }
        sqlx::query(
            "INSERT INTO attestation_ima_logs (device_id, key_fingerprint, time, entry_count, entries, parts) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (device_id) DO UPDATE SET key_fingerprint = excluded.key_fingerprint,
             time = excluded.time, entry_count = excluded.entry_count, entries = excluded.entries,
             parts = excluded.parts",
        )
        .bind(id)
        .bind(key_fingerprint)
        .bind(time)
        .bind(count(log.len()))
        .bind(header)
        .bind(parts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The device's kept row: the quote's time and key, and its list; only under `key` (and
    /// of the quote of `time`), when given, so a list that is not wanted is not read.
    async fn kept_row(
        &self,
        id: &str,
        key: Option<&str>,
        time: Option<i64>,
    ) -> Result<Option<(i64, String, KeptLog)>, RegistryError> {
        // The header, the parts, and the header again: a quote kept in between (parts added,
        // or the list rewritten) is read again rather than mixed with the one before.
        for _ in 0..READ_ATTEMPTS {
            let Some((kept_time, kept_key, count, parts, mut log)) =
                self.kept_header(id, key, time).await?
            else {
                return Ok(None);
            };
            if parts > 0 {
                log.entries = self.kept_parts(id, count).await?;
            }
            let again = self
                .kept_header(id, Some(&kept_key), Some(kept_time))
                .await?;
            if again.is_some_and(|(_, _, again_count, again_parts, _)| {
                (again_count, again_parts) == (count, parts)
            }) {
                if log.entries.len() != count {
                    return Err(RegistryError::Corrupt(format!(
                        "IMA entries of `{id}`: {} kept of {count}",
                        log.entries.len()
                    )));
                }
                return Ok(Some((kept_time, kept_key, log)));
            }
            if time.is_some() {
                // That quote's list is gone: replaced by a newer one.
                return Ok(None);
            }
        }
        Err(RegistryError::Conflict(format!(
            "the IMA entries of `{id}` changed at every reading"
        )))
    }

    /// The kept row's header: time, key, entry count, parts, and the list's facts (with its
    /// entries, for a row kept before lists were kept in parts).
    async fn kept_header(
        &self,
        id: &str,
        key: Option<&str>,
        time: Option<i64>,
    ) -> Result<Option<(i64, String, usize, i64, KeptLog)>, RegistryError> {
        let sql = match (key, time) {
            (None, _) => {
                "SELECT key_fingerprint, time, entry_count, parts, entries FROM attestation_ima_logs WHERE device_id = $1"
            }
            (Some(_), None) => {
                "SELECT key_fingerprint, time, entry_count, parts, entries FROM attestation_ima_logs WHERE device_id = $1 AND key_fingerprint = $2"
            }
            (Some(_), Some(_)) => {
                "SELECT key_fingerprint, time, entry_count, parts, entries FROM attestation_ima_logs WHERE device_id = $1 AND key_fingerprint = $2 AND time = $3"
            }
        };
        let mut query = sqlx::query(sql).bind(id);
        if let Some(key) = key {
            query = query.bind(key);
            if let Some(time) = time {
                query = query.bind(time);
            }
        }
        let row = query.fetch_optional(&self.pool).await?;
        row.map(|row| {
            let text: String = row.try_get("entries")?;
            let log = serde_json::from_str(&text)
                .map_err(|e| RegistryError::Corrupt(format!("IMA entries of `{id}`: {e}")))?;
            let count: i64 = row.try_get("entry_count")?;
            Ok((
                row.try_get("time")?,
                row.try_get("key_fingerprint")?,
                usize::try_from(count).unwrap_or(0),
                row.try_get("parts")?,
                log,
            ))
        })
        .transpose()
    }

    /// The first `count` entries of the device's kept parts, which must follow each other.
    async fn kept_parts(&self, id: &str, count: usize) -> Result<Vec<ImaLogEntry>, RegistryError> {
        let rows = sqlx::query(
            "SELECT first_entry, entries FROM attestation_ima_parts WHERE device_id = $1 ORDER BY first_entry",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut entries: Vec<ImaLogEntry> = Vec::with_capacity(count);
        for row in rows {
            // A part added after the header was read belongs to the next quote.
            if entries.len() >= count && count > 0 {
                break;
            }
            let first: i64 = row.try_get("first_entry")?;
            if usize::try_from(first).ok() != Some(entries.len()) {
                return Err(RegistryError::Corrupt(format!(
                    "IMA entries of `{id}`: a part from entry {first} after {} entries",
                    entries.len()
                )));
            }
            let text: String = row.try_get("entries")?;
            let part: Vec<ImaLogEntry> = serde_json::from_str(&text)
                .map_err(|e| RegistryError::Corrupt(format!("IMA entries of `{id}`: {e}")))?;
            entries.extend(part);
        }
        Ok(entries)
    }

    /// The IMA entries of the device's newest authentic quote that came with a list that
    /// replayed.
    pub async fn device_ima_log(&self, id: &str) -> Result<Option<DeviceImaLog>, RegistryError> {
        self.get(id).await?;
        Ok(self
            .kept_row(id, None, None)
            .await?
            .map(|(time, key_fingerprint, log)| DeviceImaLog {
                device: id.to_owned(),
                time,
                key_fingerprint,
                boot_aggregate_problem: log.boot_aggregate_problem,
                boot_passed: log.boot_passed,
                entries: log.entries,
            }))
    }

    /// How many IMA entries of the device are kept under `key_fingerprint`: its next quote
    /// may send its list from there on (`None`: none are, send it whole). Read from its own
    /// column, so a challenge does not read the list.
    pub(crate) async fn kept_ima_entry_count(
        &self,
        id: &str,
        key_fingerprint: &str,
    ) -> Result<Option<usize>, RegistryError> {
        let count: Option<i64> = sqlx::query_scalar(
            "SELECT entry_count FROM attestation_ima_logs WHERE device_id = $1 AND key_fingerprint = $2",
        )
        .bind(id)
        .bind(key_fingerprint)
        .fetch_optional(&self.pool)
        .await?;
        Ok(count.and_then(|count| usize::try_from(count).ok()))
    }

    /// The device's kept IMA list under `key_fingerprint`, with the time of its quote.
    pub(crate) async fn kept_ima_log_at(
        &self,
        id: &str,
        key_fingerprint: &str,
    ) -> Result<Option<(i64, KeptLog)>, RegistryError> {
        Ok(self
            .kept_row(id, Some(key_fingerprint), None)
            .await?
            .map(|(time, _, log)| (time, log)))
    }

    /// The device's kept IMA list under `key_fingerprint` (and, given `time`, of that quote).
    pub(crate) async fn kept_ima_log(
        &self,
        id: &str,
        key_fingerprint: &str,
        time: Option<i64>,
    ) -> Result<Option<KeptLog>, RegistryError> {
        Ok(self
            .kept_row(id, Some(key_fingerprint), time)
            .await?
            .map(|(_, _, log)| log))
    }

    /// Why a passing verdict no longer meets its device's type's runtime policy as it is now
    /// (empty: it still does, or the type has none). A verdict judged under this very version
    /// stands; else its kept IMA entries are judged again, once per verdict and version, so
    /// a digest withdrawn from the policy ends the passes that relied on it at once.
    pub(crate) async fn runtime_reasons_now(
        &self,
        id: &str,
        device_type: &str,
        verdict: &AttestationRecord,
    ) -> Result<Vec<String>, RegistryError> {
        let Some(policy) = self.runtime_policy(device_type).await? else {
            return Ok(Vec::new());
        };
        if verdict.policy == device_type
            && verdict.runtime_policy_updated_at == Some(policy.updated_at)
        {
            return Ok(Vec::new());
        }
        // A pass from before verdicts recorded the version: the policy as it is now was in
        // force when it was judged (it has not changed since), so it was judged under it.
        if verdict.policy == device_type
            && verdict.runtime_policy_updated_at.is_none()
            && verdict.ima.as_ref().is_some_and(|check| check.matches)
            && policy.updated_at < verdict.time
        {
            return Ok(Vec::new());
        }
        if let Some(known) = self.runtime_rejudged.lock().get(id)
            && known.verdict_time == verdict.time
            && known.device_type == device_type
            && known.policy_updated_at == policy.updated_at
        {
            return Ok(known.reasons.clone());
        }
        let Some(log) = self
            .kept_ima_log(id, &verdict.key_fingerprint, Some(verdict.time))
            .await?
        else {
            // Not cached: a newer quote's entries may have replaced this one's a moment ago.
            return Ok(vec![format!(
                "its quote came without an IMA log that replayed, which the runtime policy of \
                 type `{device_type}` now needs"
            )]);
        };
        let reasons: Vec<String> = log
            .boot_aggregate_problem
            .into_iter()
            .chain(not_allowed(&policy, device_type, &log.entries).1)
            .collect();
        self.runtime_rejudged.lock().insert(
            id.to_owned(),
            RejudgedVerdict {
                verdict_time: verdict.time,
                device_type: device_type.to_owned(),
                policy_updated_at: policy.updated_at,
                reasons: reasons.clone(),
            },
        );
        Ok(reasons)
    }

    /// A device type's runtime policy, if it has one.
    pub async fn runtime_policy(
        &self,
        device_type: &str,
    ) -> Result<Option<RuntimePolicy>, RegistryError> {
        let row = sqlx::query(
            "SELECT policy, updated_at FROM attestation_runtime_policies WHERE device_type = $1",
        )
        .bind(device_type)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            let text: String = row.try_get("policy")?;
            let mut policy: RuntimePolicy = serde_json::from_str(&text)
                .map_err(|e| RegistryError::Corrupt(format!("runtime policy: {e}")))?;
            policy.updated_at = row.try_get("updated_at")?;
            Ok(policy)
        })
        .transpose()
    }

    /// Sets (replaces) a device type's runtime policy; returns it as stored. It judges the
    /// quotes that follow, and the passes already given from the IMA entries kept with them.
    pub async fn set_runtime_policy(
        &self,
        device_type: &str,
        policy: RuntimePolicy,
    ) -> Result<RuntimePolicy, RegistryError> {
        if device_type.trim().is_empty() {
            return Err(RegistryError::Invalid("a device type is needed".into()));
        }
        let mut policy = policy.validated()?;
        policy.updated_at = now_ns();
        let text =
            serde_json::to_string(&policy).map_err(|e| RegistryError::Corrupt(e.to_string()))?;
        // One statement, so two operators setting it at once cannot collide on the key.
        sqlx::query(
            "INSERT INTO attestation_runtime_policies (device_type, policy, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (device_type) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
        )
        .bind(device_type)
        .bind(&text)
        .bind(policy.updated_at)
        .execute(&self.pool)
        .await?;
        // Connected devices of the type are judged again at once.
        self.attestation_changed.notify_one();
        Ok(policy)
    }

    /// Adds to a device type's runtime policy (creating it, violations failing, when it has
    /// none). The write is conditional on the version read, so concurrent changes are not
    /// lost: one overtaken by another is made again on the newer policy.
    pub async fn add_to_runtime_policy(
        &self,
        device_type: &str,
        addition: RuntimePolicyAddition,
    ) -> Result<RuntimePolicy, RegistryError> {
        if device_type.trim().is_empty() {
            return Err(RegistryError::Invalid("a device type is needed".into()));
        }
        let mut allowed = addition.allowed;
        if let Some(device) = &addition.from_device {
            let log = match self.device_ima_log(device).await {
                Ok(Some(log)) => log,
                Ok(None) => {
                    return Err(RegistryError::Invalid(format!(
                        "from_device: `{device}` has sent no IMA log that replayed to an \
                         authentic quote (`fabrik device attestation quote --ima-log`)"
                    )));
                }
                Err(RegistryError::NotFound(_)) => {
                    return Err(RegistryError::Invalid(format!(
                        "from_device: no device `{device}`"
                    )));
                }
                Err(e) => return Err(e),
            };
            // Only a list the device's current key vouched for, bound to the boot its PCRs
            // 0-9 show, with a quote that passed: else root on the device could have made
            // PCR 10 and the list say anything, and the policy would allow it.
            if let Some(problem) = &log.boot_aggregate_problem {
                return Err(RegistryError::Invalid(format!(
                    "from_device: `{device}`'s IMA list is not bound to its boot ({problem})"
                )));
            }
            let current = self.attestation_key(device).await?;
            if current.as_ref().map(|key| key.fingerprint.as_str())
                != Some(log.key_fingerprint.as_str())
            {
                return Err(RegistryError::Invalid(format!(
                    "from_device: `{device}`'s IMA list came under an attestation key that is no \
                     longer enrolled"
                )));
            }
            if !log.boot_passed {
                return Err(RegistryError::Invalid(format!(
                    "from_device: the quote that sent `{device}`'s IMA list failed more than \
                     the runtime policy (`fabrik device attestation status {device}`): take \
                     the files of a device whose boot attests"
                )));
            }
            // The first entry is the boot_aggregate, which PCRs 0-9 vouch for, not a file.
            for entry in log.entries.into_iter().skip(1) {
                if !entry.violation {
                    allowed.entry(entry.path).or_default().push(entry.digest);
                }
            }
        }
        let addition = RuntimePolicy {
            allowed,
            excludes: addition.excludes,
            violations_fail: true,
            signing_keys: addition.signing_keys,
            updated_at: 0,
        }
        .validated()?;
        for _ in 0..super::POLICY_WRITE_ATTEMPTS {
            let existing = self.runtime_policy(device_type).await?;
            let read_version = existing.as_ref().map(|policy| policy.updated_at);
            let mut policy = existing.unwrap_or_else(|| RuntimePolicy {
                allowed: BTreeMap::new(),
                excludes: Vec::new(),
                violations_fail: true,
                signing_keys: Vec::new(),
                updated_at: 0,
            });
            for (path, digests) in &addition.allowed {
                let kept = policy.allowed.entry(path.clone()).or_default();
                for digest in digests {
                    if !kept.contains(digest) {
                        kept.push(digest.clone());
                    }
                }
            }
            for excluded in &addition.excludes {
                if !policy.excludes.contains(excluded) {
                    policy.excludes.push(excluded.clone());
                }
            }
            for key in &addition.signing_keys {
                if !policy.signing_keys.contains(key) {
                    policy.signing_keys.push(key.clone());
                }
            }
            policy.updated_at = now_ns().max(read_version.map_or(0, |version| version + 1));
            let text = serde_json::to_string(&policy)
                .map_err(|e| RegistryError::Corrupt(e.to_string()))?;
            let written = match read_version {
                None => sqlx::query(
                    "INSERT INTO attestation_runtime_policies (device_type, policy, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (device_type) DO NOTHING",
                )
                .bind(device_type)
                .bind(&text)
                .bind(policy.updated_at)
                .execute(&self.pool)
                .await?,
                Some(version) => sqlx::query(
                    "UPDATE attestation_runtime_policies SET policy = $2, updated_at = $3
                     WHERE device_type = $1 AND updated_at = $4",
                )
                .bind(device_type)
                .bind(&text)
                .bind(policy.updated_at)
                .bind(version)
                .execute(&self.pool)
                .await?,
            };
            if written.rows_affected() == 1 {
                self.attestation_changed.notify_one();
                return Ok(policy);
            }
        }
        Err(RegistryError::Conflict(format!(
            "the runtime policy of `{device_type}` kept changing while this change was made: try again"
        )))
    }

    /// How many device types have a runtime policy.
    pub async fn runtime_policy_count(&self) -> Result<usize, RegistryError> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM attestation_runtime_policies")
            .fetch_one(&self.pool)
            .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Removes a device type's runtime policy: its quotes' IMA logs are then only checked to
    /// replay.
    pub async fn remove_runtime_policy(&self, device_type: &str) -> Result<(), RegistryError> {
        let removed =
            sqlx::query("DELETE FROM attestation_runtime_policies WHERE device_type = $1")
                .bind(device_type)
                .execute(&self.pool)
                .await?;
        if removed.rows_affected() == 0 {
            return Err(RegistryError::NotFound(format!(
                "device type `{device_type}` has no runtime policy"
            )));
        }
        self.attestation_changed.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(text: &str) -> [u8; 32] {
        ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
            .as_ref()
            .try_into()
            .expect("32")
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_continuation_is_judged_with_the_entries_kept_and_must_follow_them() {
        let boot: BTreeMap<u32, String> = (0..10)
            .map(|pcr| (pcr, hex(&digest(&format!("pcr {pcr}")))))
            .collect();
        let aggregate: [u8; 32] = ring::digest::digest(
            &ring::digest::SHA256,
            &(0..10)
                .flat_map(|pcr| digest(&format!("pcr {pcr}")))
                .collect::<Vec<u8>>(),
        )
        .as_ref()
        .try_into()
        .expect("32");
        let mut bytes = ima::encode_entry("boot_aggregate", &aggregate, false);
        for (path, content) in [
            ("/usr/bin/a", "a"),
            ("/usr/bin/b", "b"),
            ("/usr/bin/c", "c"),
        ] {
            bytes.extend(ima::encode_entry(path, &digest(content), false));
        }
        let entries = ima::parse(&bytes).expect("parse");
        let values = ima::replay(&entries, "sha256", Extension::TemplateData).expect("replay");
        // A quote with PCR 10 after two entries, and only PCR 10: the boot_aggregate cannot
        // be checked yet.
        let quoted = |at: usize, with_boot: bool| {
            let mut pcrs = if with_boot {
                boot.clone()
            } else {
                BTreeMap::new()
            };
            pcrs.insert(10, hex(&values[at]));
            BTreeMap::from([("sha256".to_owned(), pcrs)])
        };
        let first_pcrs = quoted(2, false);
        let facts = |pcrs, reset_count| QuoteFacts {
            pcrs,
            bank: "sha256",
            reset_count,
        };
        let first = judge_evidence(
            Some(ImaEvidence {
                from: 0,
                entries: entries[..3].to_vec(),
            }),
            None,
            &facts(&first_pcrs, 7),
            None,
            "gateway",
        )
        .expect("whole");
        assert_eq!(first.check.as_ref().map(|c| c.covered), Some(2));
        let kept = first.kept.expect("kept");
        assert_eq!(kept.len(), 2);
        assert!(kept.boot_aggregate_problem.is_some());

        let policy = RuntimePolicy {
            allowed: BTreeMap::from([
                ("/usr/bin/a".to_owned(), vec![hex(&digest("a"))]),
                ("/usr/bin/b".to_owned(), vec![hex(&digest("b"))]),
            ]),
            excludes: Vec::new(),
            violations_fail: true,
            signing_keys: Vec::new(),
            updated_at: 0,
        }
        .validated()
        .expect("valid");
        // The rest, quoted with PCRs 0-9 now: the kept boot_aggregate is judged again with
        // them, and `c`, which the policy does not allow, is named by its number in the list.
        let later_pcrs = quoted(4, true);
        let later = judge_evidence(
            Some(ImaEvidence {
                from: 2,
                entries: entries[2..].to_vec(),
            }),
            Some(kept.clone()),
            &facts(&later_pcrs, 7),
            Some(&policy),
            "gateway",
        )
        .expect("continued");
        let check = later.check.expect("check");
        assert_eq!(
            (check.entries, check.covered, check.continued_from),
            (4, 4, Some(2))
        );
        assert_eq!(later.reasons.len(), 1, "{:?}", later.reasons);
        assert!(
            later.reasons[0].contains("IMA entry 3: /usr/bin/c"),
            "{:?}",
            later.reasons
        );
        assert_eq!(later.kept.expect("kept").boot_aggregate_problem, None);

        // Not continued: another boot, a count the verifier does not hold, no list kept, or
        // entries that do not replay from the kept PCR 10.
        let refuse = |from: usize, new: &[ImaEntry], before: Option<KeptLog>, reset_count| {
            judge_evidence(
                Some(ImaEvidence {
                    from,
                    entries: new.to_vec(),
                }),
                before,
                &facts(&later_pcrs, reset_count),
                Some(&policy),
                "gateway",
            )
            .expect_err("refused")
        };
        assert!(refuse(2, &entries[2..], Some(kept.clone()), 8).contains("booted since"));
        assert!(refuse(3, &entries[3..], Some(kept.clone()), 7).contains("2 entries are kept"));
        assert!(refuse(2, &entries[2..], None, 7).contains("no list"));
        assert!(refuse(2, &entries[3..], Some(kept), 7).contains("do not replay"));
    }

    #[test]
    fn entries_are_judged_by_path_and_digest_after_the_log_replays() {
        // The boot's PCRs 0-9, and the kernel's boot_aggregate of them first in the list.
        let mut quoted: BTreeMap<u32, String> = (0..10)
            .map(|pcr| (pcr, hex(&digest(&format!("pcr {pcr}")))))
            .collect();
        let boot: Vec<u8> = (0..10)
            .flat_map(|pcr| digest(&format!("pcr {pcr}")))
            .collect();
        let aggregate: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &boot)
            .as_ref()
            .try_into()
            .expect("32");
        let mut bytes = ima::encode_entry("boot_aggregate", &aggregate, false);
        for (path, content, violation) in [
            ("/usr/bin/fabrik", "fabrik 1", false),
            ("/var/log/syslog", "lines", false),
            ("/usr/bin/nc", "netcat", false),
            ("/usr/lib/libc.so.6", "libc 2", false),
            // A violation's path is not vouched for: naming an excluded one does not hide it.
            ("/var/log/passwd", "users", true),
            ("/var/logbook/run.sh", "script", false),
        ] {
            bytes.extend(ima::encode_entry(path, &digest(content), violation));
        }
        let entries = ima::parse(&bytes).expect("parse");
        let values = ima::replay(&entries, "sha256", Extension::TemplateData).expect("replay");
        quoted.insert(10, hex(values.last().expect("values")));
        let pcrs = BTreeMap::from([("sha256".to_owned(), quoted)]);
        let policy = RuntimePolicy {
            allowed: BTreeMap::from([
                (
                    "/usr/bin/fabrik".to_owned(),
                    vec![hex(&digest("fabrik 1")).to_uppercase()],
                ),
                (
                    "/usr/lib/libc.so.6".to_owned(),
                    vec![format!("sha256:{}", hex(&digest("libc 1")))],
                ),
            ]),
            excludes: vec!["/var/log".into()],
            violations_fail: true,
            signing_keys: Vec::new(),
            updated_at: 0,
        }
        .validated()
        .expect("valid");
        assert!(policy.allowed["/usr/bin/fabrik"][0].starts_with("sha256:"));

        let (check, reasons) = judge(Some(&entries), &pcrs, "sha256", Some(&policy), "gateway");
        let check = check.expect("checked");
        assert!(check.matches, "{check:?}");
        assert_eq!(
            (
                check.entries,
                check.covered,
                check.violations,
                check.not_allowed
            ),
            (7, 7, 1, 4)
        );
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(
            reasons[0].contains("IMA entry 3: /usr/bin/nc")
                && reasons[0].contains("an unknown file"),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("/usr/lib/libc.so.6") && reasons[1].contains("another digest"));
        assert!(
            reasons[2].contains("IMA entry 5 is a measurement violation")
                && reasons[2].contains("names it /var/log/passwd"),
            "{reasons:?}"
        );
        assert!(
            reasons[3].contains("/var/logbook/run.sh"),
            "an excluded directory is whole components: {reasons:?}"
        );

        // The list read after the quote holds entries PCR 10 did not yet: they wait.
        let mut at_quote = pcrs.clone();
        if let Some(bank) = at_quote.get_mut("sha256") {
            bank.insert(10, hex(&values[3]));
        }
        let (check, reasons) = judge(
            Some(&entries),
            &at_quote,
            "sha256",
            Some(&policy),
            "gateway",
        );
        let check = check.expect("checked");
        assert_eq!((check.covered, check.not_allowed), (3, 0), "{reasons:?}");
        assert!(reasons.is_empty(), "{reasons:?}");

        // Another boot's list: its boot_aggregate is not of the quoted PCRs.
        let mut rebooted = pcrs.clone();
        if let Some(bank) = rebooted.get_mut("sha256") {
            bank.insert(0, hex(&digest("another firmware")));
        }
        let (_, reasons) = judge(
            Some(&entries),
            &rebooted,
            "sha256",
            Some(&policy),
            "gateway",
        );
        assert!(
            reasons[0].contains("the list of another boot"),
            "{reasons:?}"
        );

        // Without a policy a log that replays passes; one that does not is a reason either way.
        let (_, none) = judge(Some(&entries), &pcrs, "sha256", None, "gateway");
        assert!(none.is_empty(), "{none:?}");
        let edited: Vec<ImaEntry> = entries
            .iter()
            .enumerate()
            .filter(|(number, _)| *number != 3)
            .map(|(_, entry)| entry.clone())
            .collect();
        let (check, short) = judge(Some(&edited), &pcrs, "sha256", None, "gateway");
        assert!(!check.expect("checked").matches);
        assert!(short[0].contains("do not replay"), "{short:?}");
        // A policy needs a log.
        let (check, missing) = judge(None, &pcrs, "sha256", Some(&policy), "gateway");
        assert!(check.is_none() && missing[0].contains("without an IMA log"));
        assert!(judge(None, &pcrs, "sha256", None, "gateway").1.is_empty());
    }

    #[test]
    fn a_policy_with_bad_paths_or_digests_is_refused_naming_each_place() {
        let names = RuntimePolicy {
            allowed: BTreeMap::from([("kexec-cmdline".to_owned(), vec![hex(&digest("x"))])]),
            excludes: vec![".ima".into()],
            violations_fail: true,
            signing_keys: Vec::new(),
            updated_at: 0,
        };
        assert!(names.validated().is_ok(), "ima-buf entries go by name");
        let policy = RuntimePolicy {
            allowed: BTreeMap::from([
                ("usr/bin/x".to_owned(), vec!["sha256:00".to_owned()]),
                ("/usr/bin/y".to_owned(), vec!["md5:0123".to_owned()]),
                ("/usr/bin/z".to_owned(), Vec::new()),
            ]),
            excludes: vec!["tmp/x".into()],
            violations_fail: true,
            signing_keys: Vec::new(),
            updated_at: 0,
        };
        let RegistryError::Invalid(why) = policy.validated().expect_err("bad") else {
            panic!("invalid");
        };
        for place in [
            "allowed[\"usr/bin/x\"]: a path is absolute",
            "allowed[\"usr/bin/x\"][0]: `sha256:00`: a sha256 digest is 64 hex digits",
            "allowed[\"/usr/bin/y\"][0]",
            "allowed[\"/usr/bin/z\"]: no digest",
            "excludes[0]",
        ] {
            assert!(why.contains(place), "{place} in {why}");
        }
    }

    fn listed(count: usize) -> KeptLog {
        KeptLog {
            boot_aggregate_problem: None,
            entries: (0..count)
                .map(|n| ImaLogEntry {
                    path: format!("/usr/bin/tool-{n}"),
                    digest: format!("sha256:{}", hex(&digest(&n.to_string()))),
                    violation: false,
                    signature: None,
                })
                .collect(),
            replay: Some(ReplayState {
                bank: "sha256".into(),
                extension: Extension::TemplateData,
                pcr: format!("{count:064x}"),
                reset_count: 1,
            }),
            boot_passed: true,
        }
    }

    async fn parts(registry: &Registry) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM attestation_ima_parts WHERE device_id = 'gw'")
            .fetch_one(&registry.pool)
            .await
            .expect("parts")
    }

    #[tokio::test]
    async fn a_continued_list_is_kept_by_its_new_entries_and_read_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .expect("open");
        let kept = |time: Option<i64>| registry.kept_ima_log("gw", "key-a", time);

        registry
            .store_ima_entries("gw", "key-a", 10, &listed(5), None)
            .await
            .expect("whole");
        assert_eq!(kept(None).await.expect("read"), Some(listed(5)));
        // Continued from entry 5: one more part, the list read back whole, under its quote's
        // time only.
        registry
            .store_ima_entries("gw", "key-a", 20, &listed(8), Some((5, 10)))
            .await
            .expect("continued");
        assert_eq!(parts(&registry).await, 2);
        assert_eq!(kept(Some(20)).await.expect("read"), Some(listed(8)));
        assert_eq!(kept(Some(10)).await.expect("read"), None, "replaced");
        assert_eq!(
            registry
                .kept_ima_entry_count("gw", "key-a")
                .await
                .expect("count"),
            Some(8)
        );
        // A quote older than the kept one, arriving late, changes nothing.
        registry
            .store_ima_entries("gw", "key-a", 15, &listed(3), None)
            .await
            .expect("older");
        assert_eq!(kept(None).await.expect("read"), Some(listed(8)));
        // A continuation of another quote's list than the one kept (of as many entries, or
        // not), and one under another key, are written whole.
        registry
            .store_ima_entries("gw", "key-a", 30, &listed(9), Some((8, 19)))
            .await
            .expect("another quote's");
        assert_eq!(parts(&registry).await, 1);
        assert_eq!(kept(None).await.expect("read"), Some(listed(9)));
        registry
            .store_ima_entries("gw", "key-a", 35, &listed(10), Some((6, 30)))
            .await
            .expect("not following");
        assert_eq!(parts(&registry).await, 1);
        assert_eq!(kept(None).await.expect("read"), Some(listed(10)));
        registry
            .store_ima_entries("gw", "key-b", 40, &listed(10), Some((10, 35)))
            .await
            .expect("other key");
        assert_eq!(parts(&registry).await, 1);
        assert_eq!(kept(None).await.expect("read"), None, "not under key-a");
        assert_eq!(
            registry
                .kept_ima_log("gw", "key-b", None)
                .await
                .expect("read"),
            Some(listed(10))
        );
        // A quote that added nothing adds no part; continued quote after quote, the list is
        // written whole again once it is in MOST_PARTS parts.
        registry
            .store_ima_entries("gw", "key-b", 45, &listed(10), Some((10, 40)))
            .await
            .expect("nothing new");
        assert_eq!(parts(&registry).await, 1);
        let (mut count, mut previous) = (10, 45);
        for time in 50..50 + MOST_PARTS - 1 {
            registry
                .store_ima_entries(
                    "gw",
                    "key-b",
                    time,
                    &listed(count + 1),
                    Some((count, previous)),
                )
                .await
                .expect("continued");
            (count, previous) = (count + 1, time);
        }
        assert_eq!(parts(&registry).await, MOST_PARTS);
        registry
            .store_ima_entries(
                "gw",
                "key-b",
                201,
                &listed(count + 1),
                Some((count, previous)),
            )
            .await
            .expect("compacted");
        assert_eq!(parts(&registry).await, 1);
        assert_eq!(
            registry
                .kept_ima_log("gw", "key-b", Some(201))
                .await
                .expect("read"),
            Some(listed(count + 1))
        );

        // A list kept whole in its row (before lists were kept in parts) reads as it was, and
        // its next continuation is written whole, in parts from then on.
        let legacy = serde_json::to_string(&listed(4)).expect("json");
        sqlx::query(
            "INSERT INTO attestation_ima_logs (device_id, key_fingerprint, time, entry_count, entries) \
             VALUES ('old', 'key-a', 5, 4, $1)",
        )
        .bind(legacy)
        .execute(&registry.pool)
        .await
        .expect("legacy row");
        assert_eq!(
            registry
                .kept_ima_log("old", "key-a", None)
                .await
                .expect("read"),
            Some(listed(4))
        );
        registry
            .store_ima_entries("old", "key-a", 6, &listed(6), Some((4, 5)))
            .await
            .expect("continued");
        assert_eq!(
            registry
                .kept_ima_log("old", "key-a", None)
                .await
                .expect("read"),
            Some(listed(6))
        );

        // Parts that do not follow each other are damage, said, never a shorter list.
        sqlx::query("DELETE FROM attestation_ima_parts WHERE device_id = 'gw' AND first_entry = 0")
            .execute(&registry.pool)
            .await
            .expect("damage");
        let damaged = registry.kept_ima_log("gw", "key-b", None).await;
        assert!(
            matches!(&damaged, Err(RegistryError::Corrupt(why)) if why.contains("gw")),
            "{damaged:?}"
        );
    }
}
