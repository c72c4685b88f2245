//! IMA file signatures (decision 0067): the `security.ima` signature an `ima-sig` entry
//! carries (format v2, as `evmctl ima_sign` writes it: a signature of the file's digest), and
//! its check against the keys of a runtime policy, so files a vendor signed are admitted
//! without listing each digest.

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::signature::{self, ParsedPublicKey, VerificationAlgorithm};

use crate::tpm::AttestationKey;

/// `EVM_IMA_XATTR_DIGSIG`: a signature, not a bare digest.
const DIGSIG: u8 = 3;
/// The signature header: type, version, hash algorithm, key id (4), signature length (2).
const HEADER: usize = 9;

/// A key a runtime policy trusts to sign files, parsed once for each digest a signature may
/// be of (SHA-256, -384, -512), with the one algorithm its kind verifies it by.
#[derive(Debug, Clone)]
pub struct SigningKey {
    parsed: [ParsedPublicKey; 3],
}

impl SigningKey {
    /// A PEM public key (RSA of 2048 bits or more, ECDSA P-256 or P-384); `Err` names what is
    /// wrong with it.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let kind = AttestationKey::from_pem(pem).map_err(|why| {
            why.strip_prefix("attestation key: ")
                .unwrap_or(&why)
                .to_owned()
        })?;
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| format!("not PEM ({e})"))?;
        let algorithms: [&'static dyn VerificationAlgorithm; 3] = match kind {
            AttestationKey::Rsa { .. } => [
                &signature::RSA_PKCS1_2048_8192_SHA256,
                &signature::RSA_PKCS1_2048_8192_SHA384,
                &signature::RSA_PKCS1_2048_8192_SHA512,
            ],
            // An uncompressed point: 65 bytes on P-256, 97 on P-384 (from_pem checked).
            AttestationKey::Ec(point) if point.len() == 65 => [
                &signature::ECDSA_P256_SHA256_ASN1,
                &signature::ECDSA_P256_SHA384_ASN1,
                &signature::ECDSA_P256_SHA512_ASN1,
            ],
            AttestationKey::Ec(_) => [
                &signature::ECDSA_P384_SHA256_ASN1,
                &signature::ECDSA_P384_SHA384_ASN1,
                &signature::ECDSA_P384_SHA512_ASN1,
            ],
        };
        let parse = |algorithm: &'static dyn VerificationAlgorithm| {
            ParsedPublicKey::new(algorithm, &block.contents)
                .map_err(|e| format!("a key that cannot be used ({e})"))
        };
        Ok(Self {
            parsed: [
                parse(algorithms[0])?,
                parse(algorithms[1])?,
                parse(algorithms[2])?,
            ],
        })
    }
}

/// The digest algorithm of the kernel's `enum hash_algo`, as a signature header names it,
/// with its place in [`SigningKey`]'s parsed keys.
fn hash_algorithm(id: u8) -> Option<(&'static str, &'static digest::Algorithm, usize)> {
    match id {
        4 => Some(("sha256", &digest::SHA256, 0)),
        5 => Some(("sha384", &digest::SHA384, 1)),
        6 => Some(("sha512", &digest::SHA512, 2)),
        _ => None,
    }
}

/// Whether `signature` (the entry's `sig` field) is one of `keys` over the file digest
/// `digest` (`<algorithm>:<hex>`, as kept); `Err` says why it is not.
pub fn check(digest: &str, signature: &[u8], keys: &[SigningKey]) -> Result<(), String> {
    if signature.len() < HEADER || signature[0] != DIGSIG {
        return Err("its signature is not a digital signature (security.ima type 3)".into());
    }
    if signature[1] != 2 {
        return Err(format!(
            "its signature is of format v{}; v2 is read",
            signature[1]
        ));
    }
    let Some((name, algorithm, place)) = hash_algorithm(signature[2]) else {
        return Err(format!(
            "its signature names hash algorithm {}; sha256, sha384 and sha512 are read",
            signature[2]
        ));
    };
    let length = usize::from(u16::from_be_bytes([signature[7], signature[8]]));
    let Some(body) = signature.get(HEADER..HEADER + length) else {
        return Err("its signature is shorter than its header says".into());
    };
    let Some(hex) = digest
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(':'))
    else {
        return Err(format!(
            "its signature is of a {name} digest, the entry's is {digest}"
        ));
    };
    let bytes = crate::tpm::unhex(hex).map_err(|e| format!("its digest: {e}"))?;
    let digest = Digest::import_less_safe(&bytes, algorithm)
        .map_err(|_| format!("its digest is not a {name} digest"))?;
    let verified = keys
        .iter()
        .any(|key| key.parsed[place].verify_digest_sig(&digest, body).is_ok());
    if verified {
        Ok(())
    } else {
        Err("its signature is not one of the policy's signing keys".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signatures `evmctl ima_sign` made (tests/fixtures/ima-signatures, with its README).
    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/ima-signatures/",
                $name
            ))
        };
    }

    fn key(name: &str, pem: &[u8]) -> SigningKey {
        SigningKey::from_pem(std::str::from_utf8(pem).expect("utf-8")).expect(name)
    }

    /// The digest of the signed file, as an entry keeps it.
    fn tool(algorithm: &'static digest::Algorithm, name: &str) -> String {
        let value = digest::digest(algorithm, fixture!("tool"));
        format!("{name}:{}", crate::tpm::hex(value.as_ref()))
    }

    #[test]
    fn evmctl_signatures_verify_under_their_key_and_no_other() {
        let ec = key("ec", fixture!("ec.pub"));
        let rsa = key("rsa", fixture!("rsa.pub"));
        let both = [rsa.clone(), ec.clone()];
        let (sha256, sha384) = (
            tool(&digest::SHA256, "sha256"),
            tool(&digest::SHA384, "sha384"),
        );
        let (ec_sha256, rsa_sha384) = (
            fixture!("tool.ec-sha256.sig"),
            fixture!("tool.rsa-sha384.sig"),
        );
        assert_eq!(check(&sha256, ec_sha256, &both), Ok(()));
        assert_eq!(check(&sha384, rsa_sha384, &both), Ok(()));
        // Another key, another file's digest, or a changed signature: not verified.
        let not_one = check(&sha256, ec_sha256, std::slice::from_ref(&rsa));
        assert!(
            not_one
                .expect_err("rsa")
                .contains("not one of the policy's signing keys")
        );
        let other_file = sha256.replace("f04a", "f04b");
        assert!(check(&other_file, ec_sha256, &both).is_err());
        let mut changed = rsa_sha384.to_vec();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert!(check(&sha384, &changed, &both).is_err());
        // A signature of a SHA-384 digest does not vouch for a SHA-256 entry.
        let why = check(&sha256, rsa_sha384, &both).expect_err("algorithm");
        assert!(why.contains("of a sha384 digest"), "{why}");
    }

    #[test]
    fn what_is_not_a_v2_signature_is_named() {
        let ec = [key("ec", fixture!("ec.pub"))];
        let sha256 = tool(&digest::SHA256, "sha256");
        let mut v3 = fixture!("tool.ec-sha256.sig").to_vec();
        v3[1] = 3;
        assert!(
            check(&sha256, &v3, &ec)
                .expect_err("v3")
                .contains("format v3")
        );
        let mut md5 = fixture!("tool.ec-sha256.sig").to_vec();
        md5[2] = 1;
        assert!(
            check(&sha256, &md5, &ec)
                .expect_err("md5")
                .contains("hash algorithm 1")
        );
        assert!(
            check(&sha256, &[4, 2], &ec)
                .expect_err("digest")
                .contains("type 3")
        );
        let short = fixture!("tool.ec-sha256.sig")[..40].to_vec();
        assert!(
            check(&sha256, &short, &ec)
                .expect_err("short")
                .contains("shorter")
        );
        assert!(
            SigningKey::from_pem("not a key")
                .expect_err("pem")
                .starts_with("not PEM")
        );
    }
}
