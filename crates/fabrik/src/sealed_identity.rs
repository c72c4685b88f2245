//! A node's identity file sealed to its TPM (decision 0070): the age keys encrypted with a
//! random 256-bit key (ChaCha20-Poly1305), and that key sealed in a TPM 2.0 data object under
//! the owner hierarchy's primary key, through tpm2-tools (`TPM2TOOLS_TCTI` chooses the TPM, as
//! for the attestation agent). A copy of the disk, or of the file, opens on no other TPM.
//!
//! Sealed with `--pcrs`, the key is bound to PCR values as well (a TPM policy): it comes out
//! only while the device booted as it had when the key was sealed, and the file records those
//! values so a refusal names the PCRs that changed.
//!
//! A sealed data object holds at most 128 bytes, fewer than an identity file with previous
//! keys, hence the key in the TPM and the keys beside it. Rotating or retiring keys
//! re-encrypts the file with the same sealed key: the TPM is needed to open it, not to change
//! it again.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// What every sealed identity file's `format` begins with: what tells it from a plain one.
const FORMAT_PREFIX: &str = "fabrik-sealed-identity-";
/// The file's `format` when its key is sealed to the TPM alone.
const FORMAT: &str = "fabrik-sealed-identity-v1";
/// The file's `format` when its key is also bound to PCR values: another format, so a build
/// that cannot satisfy the policy says so instead of failing in the TPM.
const FORMAT_PCR_BOUND: &str = "fabrik-sealed-identity-v2";
/// The PCR bank a policy reads: SHA-1 banks are being retired, and every TPM 2.0 that
/// attests (decision 0050) has SHA-256.
const PCR_BANK: &str = "sha256";
/// PCRs a TPM 2.0 has at least (the PC Client profile's 0–23).
const PCR_COUNT: u8 = 24;
/// The most one tpm2-tools command may take: a TPM that stops answering must not hang a
/// node's start.
const TPM_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound into the ciphertext: an envelope's bytes decrypt only as a Fabrik identity file.
const AAD: &[u8] = b"fabrik node identity";
/// The owner hierarchy's primary key the sealed key is under, made again from the TPM's seed
/// at every use: its template written out in full rather than left to tpm2-tools' defaults,
/// which have changed between releases (another template is another key, and the sealed key
/// would no longer load).
const PRIMARY_ALGORITHM: &str = "ecc256:aes128cfb";
const PRIMARY_ATTRIBUTES: &str =
    "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|decrypt";

/// The sealed data object's attributes when a PCR policy binds it (see [`seal`]).
const SEALED_PCR_BOUND_ATTRIBUTES: &str = "fixedtpm|fixedparent";

/// The sealed identity file, as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: String,
    /// The parent key's template: `owner sha256 <algorithm> <attributes>`.
    primary: String,
    /// The sealed data object's public and private parts (`tpm2_create -u`/`-r`), base64.
    tpm_public: String,
    tpm_private: String,
    /// The identity file's text under the sealed key, base64.
    nonce: String,
    ciphertext: String,
    /// The PCR values the sealed key is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pcr_policy: Option<PcrPolicy>,
}

/// The PCRs a sealed key is bound to and their values when it was sealed (hex, by PCR): the
/// policy the TPM checks is made of exactly these, so the file can say which ones changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PcrPolicy {
    bank: String,
    values: BTreeMap<u8, String>,
}

impl PcrPolicy {
    /// `sha256:0,7`, as tpm2-tools writes a PCR selection.
    fn selection(&self) -> String {
        let indices: Vec<String> = self.values.keys().map(u8::to_string).collect();
        format!("{}:{}", self.bank, indices.join(","))
    }
}

/// What re-encrypts an opened identity file: the sealed object's parts and the key it holds.
pub(crate) struct Seal {
    tpm_public: String,
    tpm_private: String,
    key: [u8; 32],
    pcr_policy: Option<PcrPolicy>,
}

impl Seal {
    /// The PCRs the sealed key is bound to (`sha256:0,7`), if any.
    pub(crate) fn pcrs(&self) -> Option<String> {
        self.pcr_policy.as_ref().map(PcrPolicy::selection)
    }
}

/// The PCR indices of `--pcrs`, checked, ascending and without repeats.
pub(crate) fn pcr_indices(asked: &[u8]) -> Result<Vec<u8>, String> {
    if let Some(index) = asked.iter().find(|index| **index >= PCR_COUNT) {
        return Err(format!(
            "--pcrs: {index} is not a PCR (a TPM 2.0 has PCRs 0 to {})",
            PCR_COUNT - 1
        ));
    }
    let mut indices = asked.to_vec();
    indices.sort_unstable();
    indices.dedup();
    Ok(indices)
}

/// Whether `text` is a sealed identity file (else it is read as a plain one).
pub(crate) fn is_sealed(text: &str) -> bool {
    text.trim_start().starts_with('{') && text.contains(FORMAT_PREFIX)
}

fn primary_template() -> String {
    format!("owner sha256 {PRIMARY_ALGORITHM} {PRIMARY_ATTRIBUTES}")
}

/// The sealed file `text` (from `path`, named in errors) read and checked without the TPM.
fn envelope(path: &Path, text: &str) -> Result<Envelope, String> {
    let named = |why: String| format!("{}: {why}", path.display());
    let envelope: Envelope = serde_json::from_str(text)
        .map_err(|e| named(format!("not a sealed identity file: {e}")))?;
    let expected = if envelope.pcr_policy.is_some() {
        FORMAT_PCR_BOUND
    } else {
        FORMAT
    };
    if envelope.format != expected {
        return Err(named(format!(
            "sealed in format `{}`, this build reads `{FORMAT}` and `{FORMAT_PCR_BOUND}` (with \
             its PCR policy)",
            envelope.format
        )));
    }
    if let Some(policy) = &envelope.pcr_policy {
        if policy.bank != PCR_BANK || policy.values.is_empty() {
            return Err(named(format!(
                "bound to PCRs `{}`, this build binds to PCRs of the `{PCR_BANK}` bank",
                policy.selection()
            )));
        }
        if let Some(index) = policy.values.keys().find(|index| **index >= PCR_COUNT) {
            return Err(named(format!(
                "bound to PCR {index}, which a TPM 2.0 has not"
            )));
        }
    }
    if envelope.primary != primary_template() {
        return Err(named(format!(
            "sealed under the primary key `{}`, this build makes `{}`",
            envelope.primary,
            primary_template()
        )));
    }
    Ok(envelope)
}

/// The PCRs the sealed file `text` (from `path`) says its key is bound to, if any: read
/// without the TPM.
pub(crate) fn pcrs_on_disk(path: &Path, text: &str) -> Option<String> {
    envelope(path, text)
        .ok()
        .and_then(|envelope| envelope.pcr_policy)
        .map(|policy| policy.selection())
}

/// Whether the sealed file `text` is one this build can open, without asking the TPM (a
/// configuration check may run where the TPM is not reachable).
pub(crate) fn check(path: &Path, text: &str) -> Result<(), String> {
    envelope(path, text).map(|_| ())
}

/// The identity file's text inside the sealed file `text` (from `path`, named in errors), and
/// the seal that closes it again.
pub(crate) fn open(path: &Path, text: &str) -> Result<(String, Seal), String> {
    let named = |why: String| format!("{}: {why}", path.display());
    let envelope = envelope(path, text)?;
    let bytes = |what: &str, value: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|e| named(format!("its {what} is not base64: {e}")))
    };
    let public = bytes("tpm_public", &envelope.tpm_public)?;
    let private = bytes("tpm_private", &envelope.tpm_private)?;
    let key =
        unseal(&public, &private, envelope.pcr_policy.as_ref()).map_err(
            |failure| match failure {
                Unsealing::NotLoaded(why) => named(format!(
                    "the TPM did not take its sealed key ({why}): a sealed identity opens only on \
                 the TPM that sealed it"
                )),
                Unsealing::BootChanged(changed) => named(format!(
                    "its key is bound to PCRs that changed since it was sealed ({changed}): this \
                 device did not boot as it had then (firmware, boot loader or Secure Boot \
                 settings). After an intended change, boot as before, run `fabrik updates \
                 seal-key --reseal` to unbind the key, and bind it again after the new boot; \
                 else give the node a new key"
                )),
                Unsealing::Failed(why) => named(format!("its key could not be unsealed: {why}")),
            },
        )?;
    let key: [u8; 32] = key
        .as_slice()
        .try_into()
        .map_err(|_| named(format!("the TPM unsealed {} bytes, not 32", key.len())))?;
    let nonce = bytes("nonce", &envelope.nonce)?;
    let mut sealed = bytes("ciphertext", &envelope.ciphertext)?;
    let nonce = Nonce::try_assume_unique_for_key(&nonce)
        .map_err(|_| named(format!("its nonce is not {NONCE_LEN} bytes")))?;
    let plain = aead(&key)?
        .open_in_place(nonce, Aad::from(AAD), &mut sealed)
        .map_err(|_| {
            named("its keys do not decrypt under the sealed key: the file was changed".into())
        })?;
    let text = String::from_utf8(plain.to_vec())
        .map_err(|_| named("its keys are not UTF-8 text".into()))?;
    Ok((
        text,
        Seal {
            tpm_public: envelope.tpm_public,
            tpm_private: envelope.tpm_private,
            key,
            pcr_policy: envelope.pcr_policy,
        },
    ))
}

/// Seals a new key in the TPM, for [`close`]; bound to the current values of the PCRs
/// `pcrs` ([`pcr_indices`]) unless that is empty.
pub(crate) fn new_seal(pcrs: &[u8]) -> Result<Seal, String> {
    let mut key = [0_u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| "no random bytes for the sealed key".to_owned())?;
    seal(key, pcrs)
}

/// The sealed identity file holding `text` under `seal`.
pub(crate) fn close(seal: &Seal, text: &str) -> Result<String, String> {
    let mut nonce = [0_u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no random bytes for a nonce".to_owned())?;
    let mut sealed = text.as_bytes().to_vec();
    aead(&seal.key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(AAD),
            &mut sealed,
        )
        .map_err(|_| "encrypting the identity file failed".to_owned())?;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let envelope = Envelope {
        format: if seal.pcr_policy.is_some() {
            FORMAT_PCR_BOUND
        } else {
            FORMAT
        }
        .to_owned(),
        primary: primary_template(),
        tpm_public: seal.tpm_public.clone(),
        tpm_private: seal.tpm_private.clone(),
        nonce: encode(&nonce),
        ciphertext: encode(&sealed),
        pcr_policy: seal.pcr_policy.clone(),
    };
    let mut json = serde_json::to_string_pretty(&envelope).map_err(|e| e.to_string())?;
    json.push('\n');
    Ok(json)
}

fn aead(key: &[u8; 32]) -> Result<LessSafeKey, String> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| "the sealed key is not a ChaCha20-Poly1305 key".to_owned())
}

/// Seals `key` under the owner hierarchy's primary key (made again from the TPM's seed each
/// time, so nothing is left persistent in the TPM); bound to the current values of the PCRs
/// `pcrs` when there are any.
fn seal(key: [u8; 32], pcrs: &[u8]) -> Result<Seal, String> {
    let work = work_dir()?;
    let file = |name: &str| work.path().join(name);
    let policy = if pcrs.is_empty() {
        None
    } else {
        Some(pcr_policy(work.path(), pcrs)?)
    };
    let primary = primary(work.path())?;
    let (public_file, private_file, policy_file) =
        (file("sealed.pub"), file("sealed.priv"), file("pcr.policy"));
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "-C".as_ref(),
        primary.as_os_str(),
        "-g".as_ref(),
        "sha256".as_ref(),
        "-u".as_ref(),
        public_file.as_os_str(),
        "-r".as_ref(),
        private_file.as_os_str(),
        "-i".as_ref(),
        "-".as_ref(),
    ];
    if policy.is_some() {
        // Without `userwithauth` the empty password opens nothing: only the PCR policy does.
        args.extend::<[&std::ffi::OsStr; 4]>([
            "-L".as_ref(),
            policy_file.as_os_str(),
            "-a".as_ref(),
            SEALED_PCR_BOUND_ATTRIBUTES.as_ref(),
        ]);
    }
    let result = tpm2("tpm2_create", &args, Some(&key));
    flush();
    result.map_err(|why| why.to_string())?;
    let read = |name: &str| {
        std::fs::read(file(name))
            .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes))
            .map_err(|e| format!("{name}: {e}"))
    };
    Ok(Seal {
        tpm_public: read("sealed.pub")?,
        tpm_private: read("sealed.priv")?,
        key,
        pcr_policy: policy,
    })
}

/// The policy digest of the PCRs `pcrs`' current values, written to `pcr.policy` in `work`
/// (a trial session), and those values: read once into a file the policy is made from, so
/// what the file records is exactly what the TPM will demand.
fn pcr_policy(work: &Path, pcrs: &[u8]) -> Result<PcrPolicy, String> {
    let file = |name: &str| work.join(name);
    let indices: Vec<String> = pcrs.iter().map(u8::to_string).collect();
    let selection = format!("{PCR_BANK}:{}", indices.join(","));
    let values = pcr_values(work, &selection, pcrs)?;
    tpm2(
        "tpm2_startauthsession",
        &["-S".as_ref(), file("trial.session").as_os_str()],
        None,
    )
    .map_err(|why| why.to_string())?;
    let made = tpm2(
        "tpm2_policypcr",
        &[
            "-S".as_ref(),
            file("trial.session").as_os_str(),
            "-l".as_ref(),
            selection.as_ref(),
            "-f".as_ref(),
            file("pcrs.bin").as_os_str(),
            "-L".as_ref(),
            file("pcr.policy").as_os_str(),
        ],
        None,
    );
    let _ = tpm2(
        "tpm2_flushcontext",
        &[file("trial.session").as_os_str()],
        None,
    );
    made.map_err(|why| why.to_string())?;
    Ok(PcrPolicy {
        bank: PCR_BANK.to_owned(),
        values,
    })
}

/// The current values of the PCRs `pcrs` (`selection` in tpm2-tools' words), by PCR, hex;
/// also left in `pcrs.bin` in `work`.
fn pcr_values(work: &Path, selection: &str, pcrs: &[u8]) -> Result<BTreeMap<u8, String>, String> {
    let out = work.join("pcrs.bin");
    tpm2(
        "tpm2_pcrread",
        &[selection.as_ref(), "-o".as_ref(), out.as_os_str()],
        None,
    )
    .map_err(|why| why.to_string())?;
    let bytes = std::fs::read(&out).map_err(|e| format!("pcrs.bin: {e}"))?;
    // tpm2_pcrread writes the digests in ascending PCR order, `pcrs`' order.
    const DIGEST: usize = 32;
    if bytes.len() != pcrs.len() * DIGEST {
        return Err(format!(
            "tpm2_pcrread gave {} bytes for {} SHA-256 PCRs: does this TPM have a {PCR_BANK} \
             bank with PCRs {selection}?",
            bytes.len(),
            pcrs.len()
        ));
    }
    Ok(pcrs
        .iter()
        .zip(bytes.chunks(DIGEST))
        .map(|(index, digest)| (*index, crate::release::hex(digest)))
        .collect())
}

/// Why a sealed key did not come out of the TPM.
enum Unsealing {
    /// The TPM refused the sealed object: made by another TPM (or under another primary key).
    NotLoaded(String),
    /// The key is bound to PCRs whose values changed: which, was and is.
    BootChanged(String),
    /// Anything else: the tools, the TPM's answer, a timeout.
    Failed(String),
}

/// The secret sealed in the object of `public` and `private`, bound to `policy` if any.
fn unseal(public: &[u8], private: &[u8], policy: Option<&PcrPolicy>) -> Result<Vec<u8>, Unsealing> {
    let work = work_dir().map_err(Unsealing::Failed)?;
    let file = |name: &str| work.path().join(name);
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(file(name), bytes).map_err(|e| Unsealing::Failed(format!("{name}: {e}")))
    };
    write("sealed.pub", public)?;
    write("sealed.priv", private)?;
    let primary = primary(work.path()).map_err(Unsealing::Failed)?;
    let loaded = tpm2(
        "tpm2_load",
        &[
            "-C".as_ref(),
            primary.as_os_str(),
            "-u".as_ref(),
            file("sealed.pub").as_os_str(),
            "-r".as_ref(),
            file("sealed.priv").as_os_str(),
            "-c".as_ref(),
            file("sealed.ctx").as_os_str(),
        ],
        None,
    );
    flush();
    loaded.map_err(|why| match why {
        Tpm2Failure::Refused(why) => Unsealing::NotLoaded(why),
        Tpm2Failure::NotRun(why) => Unsealing::Failed(why),
    })?;
    // tpm2-tools starts the policy session, satisfies PolicyPCR and flushes it (`pcr:`).
    let auth = policy.map(|policy| format!("pcr:{}", policy.selection()));
    let context = file("sealed.ctx");
    let mut args: Vec<&std::ffi::OsStr> = vec!["-c".as_ref(), context.as_os_str()];
    if let Some(auth) = &auth {
        args.extend::<[&std::ffi::OsStr; 2]>(["-p".as_ref(), auth.as_ref()]);
    }
    let unsealed = tpm2("tpm2_unseal", &args, None);
    flush();
    match (unsealed, policy) {
        (Ok(secret), _) => Ok(secret),
        (Err(Tpm2Failure::Refused(why)), Some(policy)) => {
            // The TPM says only that the policy failed; the recorded values say why.
            match changed_pcrs(work.path(), policy) {
                Some(changed) if !changed.is_empty() => Err(Unsealing::BootChanged(changed)),
                _ => Err(Unsealing::Failed(why)),
            }
        }
        (Err(why), _) => Err(Unsealing::Failed(why.to_string())),
    }
}

/// The PCRs of `policy` whose values now differ from those it was sealed to, each `PCR n:
/// <was> → <is>` (short digests), or None when they cannot be read.
fn changed_pcrs(work: &Path, policy: &PcrPolicy) -> Option<String> {
    let indices: Vec<u8> = policy.values.keys().copied().collect();
    let now = pcr_values(work, &policy.selection(), &indices).ok()?;
    let short = |digest: &str| digest.chars().take(16).collect::<String>();
    let changed: Vec<String> = policy
        .values
        .iter()
        .filter(|(index, was)| now.get(index) != Some(was))
        .map(|(index, was)| {
            let is = now.get(index).map_or("?", String::as_str);
            format!("PCR {index} was {}…, is {}…", short(was), short(is))
        })
        .collect();
    Some(changed.join("; "))
}

/// The owner hierarchy's primary key, loaded; its context file in `work`.
fn primary(work: &Path) -> Result<std::path::PathBuf, String> {
    let context = work.join("primary.ctx");
    tpm2(
        "tpm2_createprimary",
        &[
            "-C".as_ref(),
            "o".as_ref(),
            "-g".as_ref(),
            "sha256".as_ref(),
            "-G".as_ref(),
            PRIMARY_ALGORITHM.as_ref(),
            "-a".as_ref(),
            PRIMARY_ATTRIBUTES.as_ref(),
            "-c".as_ref(),
            context.as_os_str(),
        ],
        None,
    )
    .map_err(|why| why.to_string())?;
    Ok(context)
}

/// A private directory for the tools' context files.
fn work_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("fabrik-seal-")
        .tempdir()
        .map_err(|e| format!("a directory for the TPM's files: {e}"))
}

/// Without a resource manager (a TPM used directly) loaded objects stay until flushed.
fn flush() {
    let _ = tpm2("tpm2_flushcontext", &["-t".as_ref()], None);
}

/// Why a tpm2-tools command gave no output.
enum Tpm2Failure {
    /// It ran and the TPM (or the tool) refused: its exit status and what it said.
    Refused(String),
    /// It could not be run, or did not finish in time.
    NotRun(String),
}

impl std::fmt::Display for Tpm2Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(why) | Self::NotRun(why) => f.write_str(why),
        }
    }
}

/// Runs a tpm2-tools command with `input` on its standard input, bounded in time; its
/// standard output, or why not, naming the tool and what it said. Its output is read while
/// it runs (a tool that writes more than a pipe holds, with TSS2 logging on, would otherwise
/// wait for ever), and it is killed when it takes too long.
fn tpm2(
    tool: &str,
    args: &[&std::ffi::OsStr],
    input: Option<&[u8]>,
) -> Result<Vec<u8>, Tpm2Failure> {
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Tpm2Failure::NotRun(format!("running {tool} (apt install tpm2-tools): {e}"))
        })?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let fed = match (input, child.stdin.take()) {
        (Some(input), Some(mut stdin)) => stdin.write_all(input),
        _ => Ok(()),
    };
    let started = Instant::now();
    let finished = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() < TPM_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(None) => {
                break Err(format!(
                    "{tool} did not finish within {} s: is the TPM (TPM2TOOLS_TCTI) answering?",
                    TPM_TIMEOUT.as_secs()
                ));
            }
            Err(e) => break Err(format!("{tool}: {e}")),
        }
    };
    if finished.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let status = finished.map_err(Tpm2Failure::NotRun)?;
    if let Err(e) = fed {
        return Err(Tpm2Failure::NotRun(format!(
            "{tool}: writing its input: {e}"
        )));
    }
    if !status.success() {
        return Err(Tpm2Failure::Refused(format!(
            "{tool} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        )));
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_file(format: &str, pcr_policy: Option<PcrPolicy>) -> String {
        serde_json::to_string(&Envelope {
            format: format.to_owned(),
            primary: primary_template(),
            tpm_public: String::new(),
            tpm_private: String::new(),
            nonce: String::new(),
            ciphertext: String::new(),
            pcr_policy,
        })
        .expect("json")
    }

    fn bound_to(bank: &str, pcrs: &[u8]) -> Option<PcrPolicy> {
        Some(PcrPolicy {
            bank: bank.to_owned(),
            values: pcrs.iter().map(|pcr| (*pcr, "00".repeat(32))).collect(),
        })
    }

    #[test]
    fn pcrs_are_checked_sorted_and_named_as_tpm2_tools_does() {
        assert_eq!(pcr_indices(&[7, 0, 7, 4]), Ok(vec![0, 4, 7]));
        let refused = pcr_indices(&[7, 24]).expect_err("24");
        assert!(refused.contains("24 is not a PCR"), "{refused}");
        let policy = bound_to(PCR_BANK, &[7, 0]).expect("policy");
        assert_eq!(policy.selection(), "sha256:0,7");
    }

    /// The format says whether a PCR policy binds the key, so a build that cannot satisfy it
    /// refuses the file by its format; and what does not match is refused before the TPM.
    #[test]
    fn a_file_is_read_only_when_its_format_matches_its_policy() {
        let path = Path::new("identity.key");
        for good in [
            sealed_file(FORMAT, None),
            sealed_file(FORMAT_PCR_BOUND, bound_to(PCR_BANK, &[7])),
        ] {
            assert!(is_sealed(&good), "{good}");
            assert_eq!(check(path, &good), Ok(()), "{good}");
        }
        for (bad, why) in [
            (
                sealed_file(FORMAT, bound_to(PCR_BANK, &[7])),
                "sealed in format",
            ),
            (sealed_file(FORMAT_PCR_BOUND, None), "sealed in format"),
            (
                sealed_file(FORMAT_PCR_BOUND, bound_to("sha1", &[7])),
                "bound to PCRs `sha1:7`",
            ),
            (
                sealed_file(FORMAT_PCR_BOUND, bound_to(PCR_BANK, &[])),
                "bound to PCRs",
            ),
            (
                sealed_file(FORMAT_PCR_BOUND, bound_to(PCR_BANK, &[30])),
                "PCR 30",
            ),
            (
                sealed_file("fabrik-sealed-identity-v9", None),
                "this build reads",
            ),
        ] {
            let refused = check(path, &bad).expect_err(&bad);
            assert!(
                refused.starts_with("identity.key: ") && refused.contains(why),
                "{refused}"
            );
        }
    }
}
