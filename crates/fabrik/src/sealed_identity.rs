//! A node's identity file sealed to its TPM (decision 0070): the age keys encrypted with a
//! random 256-bit key (ChaCha20-Poly1305), and that key sealed in a TPM 2.0 data object under
//! the owner hierarchy's primary key, through tpm2-tools (`TPM2TOOLS_TCTI` chooses the TPM, as
//! for the attestation agent). A copy of the disk, or of the file, opens on no other TPM.
//!
//! A sealed data object holds at most 128 bytes, fewer than an identity file with previous
//! keys, hence the key in the TPM and the keys beside it. Rotating or retiring keys
//! re-encrypts the file with the same sealed key: the TPM is needed to open it, not to change
//! it again.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The file's `format`: what tells a sealed identity file from a plain one.
const FORMAT: &str = "fabrik-sealed-identity-v1";
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
}

/// What re-encrypts an opened identity file: the sealed object's parts and the key it holds.
pub(crate) struct Seal {
    tpm_public: String,
    tpm_private: String,
    key: [u8; 32],
}

/// Whether `text` is a sealed identity file (else it is read as a plain one).
pub(crate) fn is_sealed(text: &str) -> bool {
    text.trim_start().starts_with('{') && text.contains(FORMAT)
}

fn primary_template() -> String {
    format!("owner sha256 {PRIMARY_ALGORITHM} {PRIMARY_ATTRIBUTES}")
}

/// The sealed file `text` (from `path`, named in errors) read and checked without the TPM.
fn envelope(path: &Path, text: &str) -> Result<Envelope, String> {
    let named = |why: String| format!("{}: {why}", path.display());
    let envelope: Envelope = serde_json::from_str(text)
        .map_err(|e| named(format!("not a sealed identity file: {e}")))?;
    if envelope.format != FORMAT {
        return Err(named(format!(
            "sealed in format `{}`, this build reads `{FORMAT}`",
            envelope.format
        )));
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
    let key = unseal(&public, &private).map_err(|failure| match failure {
        Unsealing::NotLoaded(why) => named(format!(
            "the TPM did not take its sealed key ({why}): a sealed identity opens only on the \
             TPM that sealed it"
        )),
        Unsealing::Failed(why) => named(format!("its key could not be unsealed: {why}")),
    })?;
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
        },
    ))
}

/// Seals a new key in the TPM, for [`close`].
pub(crate) fn new_seal() -> Result<Seal, String> {
    let mut key = [0_u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| "no random bytes for the sealed key".to_owned())?;
    let (public, private) = seal(&key)?;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(Seal {
        tpm_public: encode(&public),
        tpm_private: encode(&private),
        key,
    })
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
        format: FORMAT.to_owned(),
        primary: primary_template(),
        tpm_public: seal.tpm_public.clone(),
        tpm_private: seal.tpm_private.clone(),
        nonce: encode(&nonce),
        ciphertext: encode(&sealed),
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

/// Seals `secret` under the owner hierarchy's primary key (made again from the TPM's seed
/// with the tools' default template each time, so nothing is left persistent in the TPM).
fn seal(secret: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let work = work_dir()?;
    let file = |name: &str| work.path().join(name);
    let primary = primary(work.path())?;
    let result = tpm2(
        "tpm2_create",
        &[
            "-C".as_ref(),
            primary.as_os_str(),
            "-g".as_ref(),
            "sha256".as_ref(),
            "-u".as_ref(),
            file("sealed.pub").as_os_str(),
            "-r".as_ref(),
            file("sealed.priv").as_os_str(),
            "-i".as_ref(),
            "-".as_ref(),
        ],
        Some(secret),
    );
    flush();
    result.map_err(|why| why.to_string())?;
    let read = |name: &str| std::fs::read(file(name)).map_err(|e| format!("{name}: {e}"));
    Ok((read("sealed.pub")?, read("sealed.priv")?))
}

/// Why a sealed key did not come out of the TPM.
enum Unsealing {
    /// The TPM refused the sealed object: made by another TPM (or under another primary key).
    NotLoaded(String),
    /// Anything else: the tools, the TPM's answer, a timeout.
    Failed(String),
}

/// The secret sealed in the object of `public` and `private`.
fn unseal(public: &[u8], private: &[u8]) -> Result<Vec<u8>, Unsealing> {
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
    let unsealed = tpm2(
        "tpm2_unseal",
        &["-c".as_ref(), file("sealed.ctx").as_os_str()],
        None,
    );
    flush();
    unsealed.map_err(|why| Unsealing::Failed(why.to_string()))
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
