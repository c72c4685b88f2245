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

    // Made with `evmctl ima_sign --hashalgo … --sigfile` (ima-evm-utils 1.4) over a file
    // holding `vendor tool 2.1`, with openssl keys made for these tests.
    const EC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEDPS0Q8JYbbaNy+pfGNrO6iEGFZ7u
clTuZVjHUnRUHba0jn6Lqu8Pv93iLNP2XdyoCuryW1c9WQVM7i4q0a8tCA==
-----END PUBLIC KEY-----";
    const EC_SHA256: &str = "0302041c10543d00463044022055bf449c86e341cd6e79e90161a98d8d9ce88de7411a56c183ae539c4042bae70220036d94acdcb571256411d3bead596fd61513476884ae45c816d2b1c2a4aebf6e";
    const RSA_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA94C5vv5C6Vip3pRe5qFh
ZSoVdjsiwG1ITRDLDEaRp1w0tIuGNPxUkXazTcgXYhziCyyZBpnJa/BcL/PW83wP
RMXjlJDIQovUUfS+PtUnxTnS/YBLRyUzfYjFXaHsu3Y+PV+p3NatXagsBoGJStDC
iI0+l2X+NbgOB5dLI9l0HApD3tMTf+SyJFAO8p+HGbNe38K/+uuNMGSjhXeWZjr9
U0rXABWifu0s8ciTwBwwHm24E6uLqMK5VKL6ZEhk60sFeu+LYbqNYD4KbSHtKHn5
5XhuI/zGI1BSLj4NZe4aocoO2Y/Z1gKAnt8y1V/m+F1Pg/N9gxHmJGJQass8dYTD
iQIDAQAB
-----END PUBLIC KEY-----";
    const RSA_SHA384: &str = "030205a30214d401000f585afdf671f9c3a279293dbdaa38c7eb665ab6736bf0379d0fd12b3d650ab8e00f6c9736cdfddb8e413328446c609b8e604c3c1f696c9c5afb29edb63fd64668bf3222624725fac85e80a4cbe95813fe9a6196f62909798fc248ac7570bebe8e187e9998e0950892e832b236b88ecc755f124ab705859f0ec6c439fcb018768b266630a5521281b0675b9f324939452ed9eddfe56ddbb698019b0341c313f5bfe973c7142d4dcacb4689fb703e2d670bd902555aa56640ee90fd933ef79cc831187e3b6d6eeb36b588cb85588ae742dbd25f3f6dbdd6d707578b4d659b37c93e308d41df49a0add7c39e310dcd1c6699dd332ac83ffa07020d3a934ef1f1d5";
    const SHA256: &str = "sha256:f04a257c4927cac699091fd2ff0f875ad202dacf3154a9b680f0d60856c360b5";
    const SHA384: &str = "sha384:6a61fbeebc17cb205e5ce4a601f97baaa865d1e44b06a35961d132c3a615084b94bcdadc11592af3262455f0d452fd7e";

    fn bytes(hex: &str) -> Vec<u8> {
        crate::tpm::unhex(hex).expect("hex")
    }

    #[test]
    fn evmctl_signatures_verify_under_their_key_and_no_other() {
        let ec = SigningKey::from_pem(EC_KEY).expect("ec");
        let rsa = SigningKey::from_pem(RSA_KEY).expect("rsa");
        let both = [rsa.clone(), ec.clone()];
        assert_eq!(check(SHA256, &bytes(EC_SHA256), &both), Ok(()));
        assert_eq!(check(SHA384, &bytes(RSA_SHA384), &both), Ok(()));
        // Another key, another file's digest, or a changed signature: not verified.
        let not_one = check(SHA256, &bytes(EC_SHA256), std::slice::from_ref(&rsa));
        assert!(
            not_one
                .expect_err("rsa")
                .contains("not one of the policy's signing keys")
        );
        let other_file = SHA256.replace("f04a", "f04b");
        assert!(check(&other_file, &bytes(EC_SHA256), &both).is_err());
        let mut changed = bytes(RSA_SHA384);
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert!(check(SHA384, &changed, &both).is_err());
        // A signature of a SHA-384 digest does not vouch for a SHA-256 entry.
        let why = check(SHA256, &bytes(RSA_SHA384), &both).expect_err("algorithm");
        assert!(why.contains("of a sha384 digest"), "{why}");
    }

    #[test]
    fn what_is_not_a_v2_signature_is_named() {
        let ec = [SigningKey::from_pem(EC_KEY).expect("ec")];
        let mut v3 = bytes(EC_SHA256);
        v3[1] = 3;
        assert!(
            check(SHA256, &v3, &ec)
                .expect_err("v3")
                .contains("format v3")
        );
        let mut md5 = bytes(EC_SHA256);
        md5[2] = 1;
        assert!(
            check(SHA256, &md5, &ec)
                .expect_err("md5")
                .contains("hash algorithm 1")
        );
        assert!(
            check(SHA256, &[4, 2], &ec)
                .expect_err("digest")
                .contains("type 3")
        );
        let short = bytes(EC_SHA256)[..40].to_vec();
        assert!(
            check(SHA256, &short, &ec)
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
