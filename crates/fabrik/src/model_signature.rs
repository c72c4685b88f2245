//! Model signatures: Ed25519 signatures over ONNX files, checked before a model loads (at
//! upload, at a pipeline definition, and at every pipeline start), against the public keys
//! `[models] trusted_keys` names. A signature sits beside its model as `<model file>.sig`.
//!
//! What is signed is `DOMAIN` followed by the SHA-256 of the model's bytes, so a signature
//! made for something else cannot pass for a model's. Keys are made and used with
//! `fabrik model keygen` and `fabrik model sign` (PKCS#8 private key, base64 public key).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// Prefix of every signed message: a Fabrik model signature, version 1.
const DOMAIN: &[u8] = b"fabrik-model-signature-v1\n";

/// The detached signature file of a model file.
pub(crate) fn signature_path(model: &std::path::Path) -> std::path::PathBuf {
    with_suffix(model, ".sig")
}

/// `path` with `suffix` added to its file name (`model.onnx` → `model.onnx.sig`).
pub(crate) fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    std::path::PathBuf::from(name)
}

fn message(model: &[u8]) -> Vec<u8> {
    let mut message = DOMAIN.to_vec();
    message.extend_from_slice(&Sha256::digest(model));
    message
}

/// A short name of a public key: the first 16 hex digits of its SHA-256.
pub(crate) fn key_id(public_key: &[u8]) -> String {
    Sha256::digest(public_key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new key pair: the PKCS#8 private key and the base64 public key.
pub(crate) fn generate() -> Result<(Vec<u8>, String), String> {
    let random = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&random)
        .map_err(|_| "no randomness for a signing key".to_owned())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    Ok((
        pkcs8.as_ref().to_vec(),
        BASE64.encode(pair.public_key().as_ref()),
    ))
}

/// The signature file's text for `model`, signed with the PKCS#8 private key `pkcs8`.
pub(crate) fn sign(pkcs8: &[u8], model: &[u8]) -> Result<String, String> {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|e| format!("not an Ed25519 private key in PKCS#8 ({e})"))?;
    Ok(format!(
        "{}\n",
        BASE64.encode(pair.sign(&message(model)).as_ref())
    ))
}

/// The keys a model may be signed with, and whether it must be.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelTrust {
    keys: Vec<[u8; 32]>,
    required: bool,
}

impl ModelTrust {
    /// From `[models]`: each trusted key is a base64 Ed25519 public key, or the path of a file
    /// holding one (as `fabrik model keygen` writes it). Signatures are required when keys are
    /// given, unless `require_signature = false`.
    pub(crate) fn from_config(
        config: &fabrik_runtime::config::ModelsConfig,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut keys = Vec::new();
        for (i, entry) in config.trusted_keys.iter().enumerate() {
            let field = format!("models.trusted_keys[{i}]");
            let entry = entry.trim();
            let text = match BASE64.decode(entry) {
                Ok(bytes) if bytes.len() == 32 => entry.to_owned(),
                _ => match std::fs::read_to_string(entry) {
                    Ok(text) => text.trim().to_owned(),
                    Err(e) => {
                        problems.push((
                            field,
                            format!(
                                "`{entry}` is neither a base64 Ed25519 public key (32 bytes) \
                                 nor a file that can be read ({e})"
                            ),
                        ));
                        continue;
                    }
                },
            };
            match BASE64
                .decode(&text)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                Some(key) => keys.push(key),
                None => problems.push((
                    field,
                    format!(
                        "`{entry}` does not hold a base64 Ed25519 public key of 32 bytes (as \
                         `fabrik model keygen` writes to its `.pub` file)"
                    ),
                )),
            }
        }
        let required = config.require_signature.unwrap_or(!keys.is_empty());
        if required && keys.is_empty() && problems.is_empty() {
            problems.push((
                "models.require_signature".to_owned(),
                "signatures are required but `models.trusted_keys` names no key to check \
                 them with"
                    .to_owned(),
            ));
        }
        if problems.is_empty() {
            Ok(Self { keys, required })
        } else {
            Err(problems)
        }
    }

    /// Whether every model must be signed.
    pub(crate) fn required(&self) -> bool {
        self.required
    }

    /// Checks `model` against its signature file's text, if it has one: the id of the key
    /// that signed it, `None` for an unsigned model that is allowed, or why it may not load.
    /// A signature that does not verify is refused even when signatures are not required: a
    /// signed model that was changed must not run.
    pub(crate) fn check(
        &self,
        model: &[u8],
        signature: Option<&str>,
    ) -> Result<Option<String>, String> {
        let Some(signature) = signature else {
            return if self.required {
                Err(format!(
                    "the model is not signed, and [models] requires a signature by one of {} \
                     trusted key(s) ({}): sign it with `fabrik model sign`",
                    self.keys.len(),
                    self.key_ids().join(", ")
                ))
            } else {
                Ok(None)
            };
        };
        let bytes = BASE64
            .decode(signature.trim())
            .ok()
            .filter(|b| b.len() == 64)
            .ok_or_else(|| {
                "its signature is not a base64 Ed25519 signature of 64 bytes".to_owned()
            })?;
        let message = message(model);
        for key in &self.keys {
            if UnparsedPublicKey::new(&ED25519, key)
                .verify(&message, &bytes)
                .is_ok()
            {
                return Ok(Some(key_id(key)));
            }
        }
        Err(if self.keys.is_empty() {
            "it is signed, but [models] trusts no key to check the signature with \
             (`models.trusted_keys`)"
                .to_owned()
        } else {
            format!(
                "its signature does not verify with any trusted key ({}): the model was \
                 changed after it was signed, or signed with another key",
                self.key_ids().join(", ")
            )
        })
    }

    fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| key_id(k)).collect()
    }

    /// Reads `model`'s signature file beside it, if there is one, and checks the model.
    pub(crate) fn check_file(
        &self,
        model_path: &std::path::Path,
        model: &[u8],
    ) -> Result<Option<String>, String> {
        let path = signature_path(model_path);
        let signature = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(format!(
                    "its signature {} cannot be read ({e})",
                    path.display()
                ));
            }
        };
        self.check(model, signature.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrik_runtime::config::ModelsConfig;

    fn trust(keys: &[&str], required: Option<bool>) -> Result<ModelTrust, Vec<(String, String)>> {
        ModelTrust::from_config(&ModelsConfig {
            trusted_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            require_signature: required,
        })
    }

    #[test]
    fn a_signed_model_verifies_and_any_change_is_refused() {
        let (private, public) = generate().unwrap();
        let (other_private, other_public) = generate().unwrap();
        let model = b"an onnx file, as bytes".to_vec();
        let signature = sign(&private, &model).unwrap();
        let trust = trust(&[&public], None).unwrap();
        assert!(trust.required());
        let id = trust.check(&model, Some(&signature)).unwrap();
        assert_eq!(
            id.as_deref(),
            Some(key_id(&BASE64.decode(&public).unwrap()).as_str())
        );

        let mut changed = model.clone();
        changed[3] ^= 1;
        let why = trust.check(&changed, Some(&signature)).unwrap_err();
        assert!(why.contains("does not verify"), "{why}");
        let foreign = sign(&other_private, &model).unwrap();
        assert!(trust.check(&model, Some(&foreign)).is_err());
        let why = trust.check(&model, None).unwrap_err();
        assert!(why.contains("not signed"), "{why}");
        let why = trust.check(&model, Some("not base64!")).unwrap_err();
        assert!(why.contains("64 bytes"), "{why}");

        // Either key of two verifies.
        let both = super::tests::trust(&[&public, &other_public], None).unwrap();
        assert!(both.check(&model, Some(&foreign)).unwrap().is_some());
    }

    #[test]
    fn without_keys_unsigned_models_load_but_a_bad_signature_never_does() {
        let open = trust(&[], None).unwrap();
        assert!(!open.required());
        assert_eq!(open.check(b"model", None).unwrap(), None);
        let (private, public) = generate().unwrap();
        let signature = sign(&private, b"model").unwrap();
        assert!(open.check(b"model", Some(&signature)).is_err());
        // Keys given but not required: unsigned loads, signed must verify.
        let optional = trust(&[&public], Some(false)).unwrap();
        assert_eq!(optional.check(b"model", None).unwrap(), None);
        assert!(
            optional
                .check(b"model", Some(&signature))
                .unwrap()
                .is_some()
        );
        assert!(optional.check(b"modem", Some(&signature)).is_err());
    }

    #[test]
    fn keys_come_from_files_or_text_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (_, public) = generate().unwrap();
        let file = dir.path().join("signing.pub");
        std::fs::write(&file, format!("{public}\n")).unwrap();
        assert!(trust(&[file.to_str().unwrap()], None).is_ok());
        let problems = trust(&["AAAA", "/nonexistent/key.pub"], None).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, "models.trusted_keys[0]");
        assert_eq!(problems[1].0, "models.trusted_keys[1]");
        let problems = trust(&[], Some(true)).unwrap_err();
        assert_eq!(problems[0].0, "models.require_signature");
    }
}
