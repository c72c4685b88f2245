//! TPM 2.0 quotes: the `TPMS_ATTEST` a TPM signs with an attestation key, its `TPMT_SIGNATURE`,
//! and the checks that make one evidence of a device's boot state: the signature by the enrolled
//! key, the verifier's nonce, and the PCR values that hash to the quoted digest (TPM 2.0 Library
//! Part 2, sections 10.12 and 11.3; what `tpm2_quote -m -s -o -F values` writes).

use std::collections::BTreeMap;

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use sha2::{Digest, Sha256, Sha384};
use x509_parser::oid_registry::{OID_EC_P256, OID_NIST_EC_P384};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

pub mod endorsement;
pub mod event_log;
pub mod ima;

/// `TPM_GENERATED_VALUE`: only the TPM itself signs structures that start with it.
const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
const ST_ATTEST_QUOTE: u16 = 0x8018;
const ALG_RSASSA: u16 = 0x0014;
const ALG_RSAPSS: u16 = 0x0016;
const ALG_ECDSA: u16 = 0x0018;
const ALG_SHA256: u16 = 0x000b;
const ALG_SHA384: u16 = 0x000c;

/// What a quote says, once parsed (nothing in it checked yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The qualifying data: the verifier's nonce.
    pub nonce: Vec<u8>,
    /// The TPM's clock (ms), and how often it was reset (booted) and restarted (resumed).
    pub clock: u64,
    /// TPM resets, i.e. boots, since the TPM was made or cleared.
    pub reset_count: u32,
    /// Restarts (resumes from hibernation) since the last reset.
    pub restart_count: u32,
    /// The TPM's firmware version (vendor-defined).
    pub firmware_version: u64,
    /// The PCR bank (`sha256`, `sha384`, ...) and the PCR indices quoted, ascending.
    pub banks: Vec<(String, Vec<u32>)>,
    /// The digest of the selected PCRs' values.
    pub pcr_digest: Vec<u8>,
}

/// A big-endian reader over a TPM structure that names the field it fails on.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, at: 0, what }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!(
                "{}: ends at byte {} inside {field} ({n} bytes wanted)",
                self.what,
                self.bytes.len()
            ));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self, field: &str) -> Result<u8, String> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, String> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &str) -> Result<u32, String> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &str) -> Result<u64, String> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A `TPM2B_*`: a 16-bit size, then that many bytes.
    fn sized(&mut self, field: &str) -> Result<&'a [u8], String> {
        let n = self.u16(field)?;
        self.take(usize::from(n), field)
    }

    fn finish(&self) -> Result<(), String> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(format!(
                "{}: {} bytes left over after the structure",
                self.what,
                self.bytes.len() - self.at
            ))
        }
    }
}

fn bank_name(alg: u16) -> String {
    match alg {
        0x0004 => "sha1".into(),
        ALG_SHA256 => "sha256".into(),
        ALG_SHA384 => "sha384".into(),
        0x000d => "sha512".into(),
        0x0012 => "sm3_256".into(),
        other => format!("alg 0x{other:04x}"),
    }
}

fn digest_len(bank: &str) -> Option<usize> {
    match bank {
        "sha1" => Some(20),
        "sha256" | "sm3_256" => Some(32),
        "sha384" => Some(48),
        "sha512" => Some(64),
        _ => None,
    }
}

/// Parses a `TPMS_ATTEST` of a quote.
pub fn parse_quote(bytes: &[u8]) -> Result<Quote, String> {
    let mut r = Reader::new(bytes, "quote");
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED {
        return Err(format!(
            "quote: magic is 0x{magic:08x}, not TPM_GENERATED_VALUE 0xff544347: not made by a TPM"
        ));
    }
    let kind = r.u16("type")?;
    if kind != ST_ATTEST_QUOTE {
        return Err(format!(
            "quote: type is 0x{kind:04x}, not TPM_ST_ATTEST_QUOTE 0x8018 (another attestation structure)"
        ));
    }
    r.sized("qualifiedSigner")?;
    let nonce = r.sized("extraData")?.to_vec();
    let clock = r.u64("clockInfo.clock")?;
    let reset_count = r.u32("clockInfo.resetCount")?;
    let restart_count = r.u32("clockInfo.restartCount")?;
    r.u8("clockInfo.safe")?;
    let firmware_version = r.u64("firmwareVersion")?;
    let count = r.u32("pcrSelect.count")?;
    if count > 16 {
        return Err(format!("quote: {count} PCR banks selected (at most 16)"));
    }
    let mut banks = Vec::new();
    for _ in 0..count {
        let alg = r.u16("pcrSelect.hash")?;
        let size = r.u8("pcrSelect.sizeofSelect")?;
        let bits = r.take(usize::from(size), "pcrSelect.pcrSelect")?;
        let mut indices = Vec::new();
        for (byte, b) in bits.iter().enumerate() {
            for bit in 0..8u32 {
                if b & (1 << bit) != 0 {
                    indices.push(byte as u32 * 8 + bit);
                }
            }
        }
        banks.push((bank_name(alg), indices));
    }
    let pcr_digest = r.sized("pcrDigest")?.to_vec();
    r.finish()?;
    Ok(Quote {
        nonce,
        clock,
        reset_count,
        restart_count,
        firmware_version,
        banks,
        pcr_digest,
    })
}

/// An attestation key's public part, from the PEM (`SubjectPublicKeyInfo`) that
/// `tpm2_createak -f pem` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationKey {
    /// An ECDSA key on P-256 or P-384: the uncompressed point.
    Ec(Vec<u8>),
    /// An RSA key: modulus and exponent, big-endian without leading zeros.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

fn strip_zeros(bytes: &[u8]) -> Vec<u8> {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[first..].to_vec()
}

impl AttestationKey {
    /// Reads a PEM public key; names what is wrong with one it cannot use.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| format!("attestation key: not PEM ({e})"))?;
        if block.label != "PUBLIC KEY" {
            return Err(format!(
                "attestation key: a `{}` PEM block, not `PUBLIC KEY` (write it with `tpm2_createak -f pem -u ak.pem`)",
                block.label
            ));
        }
        let (_, spki) = SubjectPublicKeyInfo::from_der(&block.contents)
            .map_err(|e| format!("attestation key: not a SubjectPublicKeyInfo ({e})"))?;
        match spki.parsed() {
            Ok(PublicKey::EC(point)) => {
                let data = point.data();
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok());
                let width = match curve {
                    Some(oid) if oid == OID_EC_P256 => 65,
                    Some(oid) if oid == OID_NIST_EC_P384 => 97,
                    Some(oid) => {
                        return Err(format!(
                            "attestation key: an EC key on curve {oid}; only P-256 and P-384 are taken"
                        ));
                    }
                    None => return Err("attestation key: an EC key that names no curve".into()),
                };
                if data.len() != width || data[0] != 4 {
                    return Err(format!(
                        "attestation key: an EC point of {} bytes; an uncompressed point of {width} is needed",
                        data.len()
                    ));
                }
                Ok(Self::Ec(data.to_vec()))
            }
            Ok(PublicKey::RSA(rsa)) => {
                let n = strip_zeros(rsa.modulus);
                let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
                if bits < 2048 {
                    return Err(format!(
                        "attestation key: RSA with a {bits}-bit modulus; at least 2048 bits are needed"
                    ));
                }
                Ok(Self::Rsa {
                    n,
                    e: strip_zeros(rsa.exponent),
                })
            }
            Ok(_) => Err("attestation key: neither RSA nor EC".into()),
            Err(e) => Err(format!("attestation key: {e}")),
        }
    }

    /// The key's SHA-256 fingerprint (of its DER `SubjectPublicKeyInfo`), hex.
    pub fn fingerprint(pem: &str) -> Result<String, String> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| format!("attestation key: not PEM ({e})"))?;
        Ok(hex(&Sha256::digest(&block.contents)))
    }

    /// Checks `signature` (a `TPMT_SIGNATURE`) over `message` with this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let mut r = Reader::new(signature, "signature");
        let scheme = r.u16("sigAlg")?;
        let hash = r.u16("hash")?;
        match (self, scheme) {
            (Self::Ec(point), ALG_ECDSA) => {
                let sig_r = r.sized("signatureR")?;
                let sig_s = r.sized("signatureS")?;
                r.finish()?;
                let (algorithm, width): (&dyn signature::VerificationAlgorithm, usize) = match (
                    point.len(),
                    hash,
                ) {
                    (65, ALG_SHA256) => (&signature::ECDSA_P256_SHA256_FIXED, 32),
                    (97, ALG_SHA384) => (&signature::ECDSA_P384_SHA384_FIXED, 48),
                    (len, hash) => {
                        return Err(format!(
                            "signature: ECDSA with {} on {} is not supported (P-256 with sha256, P-384 with sha384)",
                            bank_name(hash),
                            if len == 65 { "P-256" } else { "P-384" }
                        ));
                    }
                };
                let mut fixed = vec![0u8; 2 * width];
                for (part, at) in [(sig_r, 0), (sig_s, width)] {
                    let part = &part[part.len() - strip_zeros(part).len()..];
                    if part.len() > width {
                        return Err("signature: an ECDSA component longer than the curve".into());
                    }
                    fixed[at + width - part.len()..at + width].copy_from_slice(part);
                }
                UnparsedPublicKey::new(algorithm, point)
                    .verify(message, &fixed)
                    .map_err(|_| {
                        "the signature does not verify with the enrolled attestation key".into()
                    })
            }
            (Self::Rsa { n, e }, ALG_RSASSA | ALG_RSAPSS) => {
                let sig = r.sized("signature")?;
                r.finish()?;
                let params = match (scheme, hash) {
                    (ALG_RSASSA, ALG_SHA256) => &signature::RSA_PKCS1_2048_8192_SHA256,
                    (ALG_RSASSA, ALG_SHA384) => &signature::RSA_PKCS1_2048_8192_SHA384,
                    (ALG_RSAPSS, ALG_SHA256) => &signature::RSA_PSS_2048_8192_SHA256,
                    (ALG_RSAPSS, ALG_SHA384) => &signature::RSA_PSS_2048_8192_SHA384,
                    (_, hash) => {
                        return Err(format!(
                            "signature: RSA with {} is not supported (sha256, sha384)",
                            bank_name(hash)
                        ));
                    }
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .map_err(|_| {
                        "the signature does not verify with the enrolled attestation key".into()
                    })
            }
            (Self::Ec(_), other) | (Self::Rsa { .. }, other) => Err(format!(
                "signature: scheme 0x{other:04x} does not fit the enrolled {} key",
                if matches!(self, Self::Ec(_)) {
                    "EC"
                } else {
                    "RSA"
                }
            )),
        }
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex (either case, an optional `0x`) to bytes.
pub fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let text = text.trim();
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let shown: String = text.chars().take(24).collect();
    // Not `from_str_radix` alone: it takes a sign, so `+f` would read as 0x0f.
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{shown}` is not hex"));
    }
    if !text.len().is_multiple_of(2) {
        return Err(format!("`{shown}` is not hex: odd length"));
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("`{shown}` is not hex"))
        })
        .collect()
}

/// Splits the PCR values the device sent (`tpm2_quote -F values`: each selected PCR's value,
/// bank by bank, ascending) and checks that they hash to the quoted digest, so they are the
/// values the TPM signed. Returns `bank → index → value (hex)`.
pub fn authentic_pcrs(
    quote: &Quote,
    values: &[u8],
) -> Result<BTreeMap<String, BTreeMap<u32, String>>, String> {
    let mut out: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    let mut at = 0;
    for (bank, indices) in &quote.banks {
        let Some(len) = digest_len(bank) else {
            return Err(format!("quote: PCR bank {bank} is not supported"));
        };
        for index in indices {
            let Some(value) = values.get(at..at + len) else {
                return Err(format!(
                    "pcrs: {} bytes, but the quote selects more PCRs than that holds ({bank} PCR {index} is missing)",
                    values.len()
                ));
            };
            out.entry(bank.clone())
                .or_default()
                .insert(*index, hex(value));
            at += len;
        }
    }
    if at != values.len() {
        return Err(format!(
            "pcrs: {} bytes, but the quote's selection holds {at}",
            values.len()
        ));
    }
    let digest = match quote.pcr_digest.len() {
        32 => Sha256::digest(values).to_vec(),
        48 => Sha384::digest(values).to_vec(),
        n => return Err(format!("quote: a PCR digest of {n} bytes is not supported")),
    };
    if digest != quote.pcr_digest {
        return Err(
            "pcrs: the values sent do not hash to the digest the TPM quoted: they are not the PCRs it signed"
                .into(),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tpm");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
    }

    fn key(alg: &str) -> AttestationKey {
        let pem = String::from_utf8(fixture(&format!("ak-{alg}.pem"))).expect("utf-8");
        AttestationKey::from_pem(&pem).expect("key")
    }

    #[test]
    fn quotes_of_a_software_tpm_verify_with_their_keys() {
        for alg in ["ecc", "rsa"] {
            let message = fixture(&format!("quote-{alg}.msg"));
            let signature = fixture(&format!("quote-{alg}.sig"));
            key(alg).verify(&message, &signature).expect(alg);
            let quote = parse_quote(&message).expect("quote");
            assert_eq!(
                hex(&quote.nonce),
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
            );
            assert_eq!(
                quote.banks,
                vec![("sha256".to_owned(), vec![0, 1, 2, 3, 4, 7])]
            );
            let pcrs = authentic_pcrs(&quote, &fixture(&format!("pcrs-{alg}.bin"))).expect("pcrs");
            // The values tpm2_pcrread printed when the fixtures were made.
            assert_eq!(
                pcrs["sha256"][&4],
                "828c248c8e775b0a93d22bdf786422ab25419ed73197b74a9a782fdd5c50924b"
            );
            assert_eq!(pcrs["sha256"].len(), 6);
        }
    }

    #[test]
    fn a_changed_byte_or_another_key_fails_the_signature() {
        let mut message = fixture("quote-ecc.msg");
        let signature = fixture("quote-ecc.sig");
        let last = message.len() - 1;
        message[last] ^= 1;
        let e = key("ecc").verify(&message, &signature).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let e = key("rsa")
            .verify(&fixture("quote-ecc.msg"), &signature)
            .unwrap_err();
        assert!(e.contains("does not fit the enrolled RSA key"), "{e}");
        let e = key("ecc")
            .verify(&fixture("quote-rsa.msg"), &fixture("quote-rsa.sig"))
            .unwrap_err();
        assert!(e.contains("does not fit the enrolled EC key"), "{e}");
    }

    #[test]
    fn pcr_values_that_do_not_hash_to_the_quote_are_refused() {
        let quote = parse_quote(&fixture("quote-ecc.msg")).expect("quote");
        let mut values = fixture("pcrs-ecc.bin");
        values[4 * 32] ^= 0xff;
        let e = authentic_pcrs(&quote, &values).unwrap_err();
        assert!(e.contains("do not hash to the digest"), "{e}");
        let e = authentic_pcrs(&quote, &values[..64]).unwrap_err();
        assert!(e.contains("PCR 2 is missing"), "{e}");
    }

    #[test]
    fn malformed_structures_name_the_field() {
        let message = fixture("quote-ecc.msg");
        let e = parse_quote(&message[..45]).unwrap_err();
        assert!(e.contains("inside extraData"), "{e}");
        let mut wrong = message.clone();
        wrong[0] = 0;
        assert!(
            parse_quote(&wrong)
                .unwrap_err()
                .contains("not made by a TPM")
        );
        let mut longer = message;
        longer.push(0);
        assert!(parse_quote(&longer).unwrap_err().contains("left over"));
        let e = AttestationKey::from_pem(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(e.contains("not `PUBLIC KEY`"), "{e}");
        // A curve ring cannot check (secp256k1), and RSA below 2048 bits, refused at enrolment.
        let k1 = "-----BEGIN PUBLIC KEY-----
MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAE4wiLEdAQ7705H+8pODE1fT/qfS8LGiUh
9wtbXgFRMbLRyAfJkJ6DF8UC6LqpbgD+kxDgyluloTClMoAGeqF7zg==
-----END PUBLIC KEY-----
";
        let e = AttestationKey::from_pem(k1).unwrap_err();
        assert!(e.contains("curve 1.3.132.0.10"), "{e}");
        let rsa1536 = "-----BEGIN PUBLIC KEY-----
MIHfMA0GCSqGSIb3DQEBAQUAA4HNADCByQKBwQD0oEuOVEGXIdnYKP5D6AZJZYju
ARtEncJgt1iAnEEm9aiQixkWotOdbBRJGflBOqptge+9lhy3OkFG0nACEp8RFDML
miTy5bTRcKH/R3Vc500BBSBUQlmQCskOHIAn1+VUnG8TkfW1Q8GHGL/uFRjvHe9j
DIIeFTW7R8JgiXjRprrlSvMvgfjehRfiSociWeE1Fn1yVyK1HAnPTVlc5tRbSKow
UqKAhDo2befR0OSAxaD3dtKzurAwbnCOsNy0wPUCAwEAAQ==
-----END PUBLIC KEY-----
";
        let e = AttestationKey::from_pem(rsa1536).unwrap_err();
        assert!(e.contains("a 1536-bit modulus"), "{e}");
        assert!(unhex("abc").is_err());
        assert!(unhex("aéb").unwrap_err().contains("is not hex"));
        assert!(unhex("+1").is_err());
        assert_eq!(unhex("0xA0ff").expect("hex"), vec![0xa0, 0xff]);
    }
}
