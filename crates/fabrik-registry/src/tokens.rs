//! Device tokens: 256 random bits shown once, stored only as argon2id hashes.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sha2::{Digest, Sha256};

use crate::RegistryError;

/// Prefix of device tokens, so a leaked one is recognisable in logs and secret scanners.
pub(crate) const PREFIX: &str = "fdt_";

/// A hash of a token nobody has, verified against when a device is unknown so that the answer
/// takes as long as for a known one.
pub(crate) fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| generate().and_then(|t| hash(&t)).unwrap_or_default())
}

/// A new random token.
pub(crate) fn generate() -> Result<String, RegistryError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| RegistryError::Token(e.to_string()))?;
    let mut token = String::with_capacity(PREFIX.len() + 64);
    token.push_str(PREFIX);
    for b in bytes {
        token.push_str(&format!("{b:02x}"));
    }
    Ok(token)
}

/// The argon2id hash (PHC string) of a token.
pub(crate) fn hash(token: &str) -> Result<String, RegistryError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| RegistryError::Token(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| RegistryError::Token(e.to_string()))?;
    Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RegistryError::Token(e.to_string()))
}

/// True if `token` matches `hash`.
pub(crate) fn verify(token: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// SHA-256 of a token, for the short-lived cache of verified tokens.
pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_against_its_hash_only() {
        let token = generate().expect("token");
        assert!(token.starts_with(PREFIX));
        assert_eq!(token.len(), PREFIX.len() + 64);
        let hash = hash(&token).expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains(&token));
        assert!(verify(&token, &hash));
        assert!(!verify(&generate().expect("other"), &hash));
        assert!(!verify(&token, "not a hash"));
        assert!(!verify(&token, dummy_hash()));
        assert!(dummy_hash().starts_with("$argon2id$"));
    }
}
