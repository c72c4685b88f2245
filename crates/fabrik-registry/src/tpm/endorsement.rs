//! TPM endorsement (decision 0053): the public areas tpm2-tools writes (`TPM2B_PUBLIC`), object
//! names, the attributes that make a key an attestation key fixed to its TPM, the credential
//! only the TPM holding both an endorsement key (EK) and a given attestation key can activate
//! (TPM2_MakeCredential as a verifier computes it, TPM 2.0 Library Part 1 §24 and Annex C/D),
//! and the EK certificate's link to the TPM vendor's CA.

use ring::agreement;
use ring::digest;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::{
    ALG_ECDSA, ALG_RSAPSS, ALG_RSASSA, ALG_SHA256, ALG_SHA384, Reader, bank_name, hex, strip_zeros,
};

const ALG_RSA: u16 = 0x0001;
const ALG_ECC: u16 = 0x0023;
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
const ALG_NULL: u16 = 0x0010;
const ALG_MGF1: u16 = 0x0007;
const ALG_RSAES: u16 = 0x0015;
const ALG_OAEP: u16 = 0x0017;
const ALG_ECDH: u16 = 0x0019;
const ALG_ECDAA: u16 = 0x001a;
const ALG_SM2: u16 = 0x001b;
const ALG_ECSCHNORR: u16 = 0x001c;
const ALG_ECMQV: u16 = 0x001d;
const ALG_KDF1_SP800_56A: u16 = 0x0020;
const ALG_KDF2: u16 = 0x0021;
const ALG_KDF1_SP800_108: u16 = 0x0022;
const ECC_NIST_P256: u16 = 0x0003;
const ECC_NIST_P384: u16 = 0x0004;

// TPMA_OBJECT bits (Part 2, 8.3).
const FIXED_TPM: u32 = 1 << 1;
const FIXED_PARENT: u32 = 1 << 4;
const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;
const SIGN: u32 = 1 << 18;

/// tpm2-tools' header of a credential file (`tpm2_makecredential -o`, read by
/// `tpm2_activatecredential -i`): magic and version, big-endian.
const CREDENTIAL_MAGIC: u32 = 0xbadc_c0de;
const CREDENTIAL_VERSION: u32 = 1;

/// A TPM object's public area (`TPMT_PUBLIC`), as read from a `TPM2B_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicArea {
    /// The marshalled `TPMT_PUBLIC`: what the object's name is a digest of.
    bytes: Vec<u8>,
    /// The hash of the object's name and of the KDFs of its secrets.
    name_alg: u16,
    attributes: u32,
    /// The symmetric algorithm of a storage key: AES key bits (CFB mode).
    aes_bits: Option<u16>,
    /// The key.
    pub key: PublicKind,
}

/// The public key of a [`PublicArea`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKind {
    /// RSA: modulus (big-endian) and exponent.
    Rsa {
        /// Modulus.
        modulus: Vec<u8>,
        /// Public exponent (the TPM's 0 read as 65537).
        exponent: u32,
    },
    /// ECC on a NIST curve: the point's coordinates, padded to the curve's size.
    Ecc {
        /// `TPM_ECC_NIST_P256` or `TPM_ECC_NIST_P384`.
        curve: u16,
        /// X coordinate.
        x: Vec<u8>,
        /// Y coordinate.
        y: Vec<u8>,
    },
}

/// An EK certificate that matched the EK and was issued by a trusted CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertifiedEndorsement {
    /// The certificate's subject (often empty for EK certificates).
    pub subject: String,
    /// Its issuer: the TPM vendor's CA.
    pub issuer: String,
    /// SHA-256 of the configured CA certificate (DER) that signed it, hex.
    pub authority_fingerprint: String,
}

fn curve_size(curve: u16) -> Option<usize> {
    match curve {
        ECC_NIST_P256 => Some(32),
        ECC_NIST_P384 => Some(48),
        _ => None,
    }
}

fn digest_algorithm(alg: u16) -> Result<&'static digest::Algorithm, String> {
    match alg {
        ALG_SHA256 => Ok(&digest::SHA256),
        ALG_SHA384 => Ok(&digest::SHA384),
        other => Err(format!(
            "name algorithm {} is not supported (sha256, sha384)",
            bank_name(other)
        )),
    }
}

fn hmac_algorithm(alg: u16) -> hmac::Algorithm {
    if alg == ALG_SHA384 {
        hmac::HMAC_SHA384
    } else {
        hmac::HMAC_SHA256
    }
}

impl PublicArea {
    /// Reads a `TPM2B_PUBLIC` (`tpm2_createek -u`, `tpm2_readpublic -o`); `what` names it in
    /// errors.
    pub fn parse(bytes: &[u8], what: &'static str) -> Result<Self, String> {
        let mut outer = Reader::new(bytes, what);
        let inner = outer.sized("size")?;
        outer.finish()?;
        let mut r = Reader::new(inner, what);
        let kind = r.u16("type")?;
        let name_alg = r.u16("nameAlg")?;
        digest_algorithm(name_alg).map_err(|e| format!("{what}: {e}"))?;
        let attributes = r.u32("objectAttributes")?;
        r.sized("authPolicy")?;
        let symmetric = r.u16("symmetric.algorithm")?;
        let aes_bits = match symmetric {
            ALG_NULL => None,
            ALG_AES => {
                let bits = r.u16("symmetric.keyBits")?;
                let mode = r.u16("symmetric.mode")?;
                if mode != ALG_CFB || !matches!(bits, 128 | 256) {
                    return Err(format!(
                        "{what}: symmetric AES-{bits} in mode 0x{mode:04x}; AES-128 or AES-256 in CFB mode is needed"
                    ));
                }
                Some(bits)
            }
            other => {
                return Err(format!(
                    "{what}: symmetric algorithm 0x{other:04x}; only AES is supported"
                ));
            }
        };
        // The scheme's details, by the schemes Part 2 defines (11.2.3, 11.2.5): the name is a
        // digest of these bytes, so a guess would make another name.
        match r.u16("scheme")? {
            ALG_NULL | ALG_RSAES => {}
            ALG_RSASSA | ALG_RSAPSS | ALG_OAEP | ALG_ECDSA | ALG_ECDH | ALG_SM2 | ALG_ECSCHNORR
            | ALG_ECMQV => {
                r.u16("scheme.hashAlg")?;
            }
            ALG_ECDAA => {
                r.u16("scheme.hashAlg")?;
                r.u16("scheme.count")?;
            }
            other => {
                return Err(format!(
                    "{what}: scheme 0x{other:04x} is not a TPM 2.0 key scheme"
                ));
            }
        }
        let key = match kind {
            ALG_RSA => {
                r.u16("keyBits")?;
                let exponent = match r.u32("exponent")? {
                    0 => 65_537,
                    e => e,
                };
                let modulus = strip_zeros(r.sized("unique.rsa")?);
                PublicKind::Rsa { modulus, exponent }
            }
            ALG_ECC => {
                let curve = r.u16("curveID")?;
                let Some(size) = curve_size(curve) else {
                    return Err(format!(
                        "{what}: ECC curve 0x{curve:04x}; only NIST P-256 and P-384 are supported"
                    ));
                };
                match r.u16("kdf.scheme")? {
                    ALG_NULL => {}
                    ALG_MGF1 | ALG_KDF1_SP800_56A | ALG_KDF2 | ALG_KDF1_SP800_108 => {
                        r.u16("kdf.hashAlg")?;
                    }
                    other => {
                        return Err(format!(
                            "{what}: KDF scheme 0x{other:04x} is not a TPM 2.0 KDF"
                        ));
                    }
                }
                let mut coordinate = |field| -> Result<Vec<u8>, String> {
                    let c = r.sized(field)?;
                    if c.len() > size {
                        return Err(format!("{what}: {field} is longer than the curve"));
                    }
                    let mut padded = vec![0; size - c.len()];
                    padded.extend_from_slice(c);
                    Ok(padded)
                };
                let x = coordinate("unique.x")?;
                let y = coordinate("unique.y")?;
                PublicKind::Ecc { curve, x, y }
            }
            other => {
                return Err(format!(
                    "{what}: key type 0x{other:04x}; only RSA and ECC are supported"
                ));
            }
        };
        r.finish()?;
        Ok(Self {
            bytes: inner.to_vec(),
            name_alg,
            attributes,
            aes_bits,
            key,
        })
    }

    /// The object's name: its name algorithm, then the digest of its public area.
    pub fn name(&self) -> Vec<u8> {
        let algorithm = digest_algorithm(self.name_alg).unwrap_or(&digest::SHA256);
        let mut name = self.name_alg.to_be_bytes().to_vec();
        name.extend_from_slice(digest::digest(algorithm, &self.bytes).as_ref());
        name
    }

    /// The key as a PEM `SubjectPublicKeyInfo`, as `tpm2_readpublic -f pem` writes it.
    pub fn pem(&self) -> String {
        use base64::Engine as _;
        let der = self.subject_public_key_info();
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// The key as a DER `SubjectPublicKeyInfo`.
    pub fn subject_public_key_info(&self) -> Vec<u8> {
        let key = self.subject_public_key();
        match &self.key {
            PublicKind::Rsa { .. } => {
                // rsaEncryption, NULL parameters.
                let algorithm = hex_bytes("300d06092a864886f70d0101010500");
                let bits = [vec![0], key].concat();
                der(0x30, &[algorithm, der(0x03, &bits)].concat())
            }
            PublicKind::Ecc { curve, .. } => {
                let prefix = if *curve == ECC_NIST_P256 {
                    "3059301306072a8648ce3d020106082a8648ce3d030107034200"
                } else {
                    "3076301006072a8648ce3d020106052b81040022036200"
                };
                [hex_bytes(prefix), key].concat()
            }
        }
    }

    /// The key's bits as a certificate carries them: the DER `RSAPublicKey`, or the
    /// uncompressed EC point.
    pub fn subject_public_key(&self) -> Vec<u8> {
        match &self.key {
            PublicKind::Rsa { modulus, exponent } => der(
                0x30,
                &[
                    der_integer(modulus),
                    der_integer(&strip_zeros(&exponent.to_be_bytes())),
                ]
                .concat(),
            ),
            PublicKind::Ecc { x, y, .. } => [vec![4], x.clone(), y.clone()].concat(),
        }
    }

    /// Refuses a key that cannot vouch for quotes: it must be a restricted signing key created
    /// in, and never leaving, its TPM. A restricted key signs only digests the TPM computed
    /// itself, so it cannot be made to sign a forged `TPMS_ATTEST`.
    pub fn check_attestation_key(&self) -> Result<(), String> {
        let needed = [
            (FIXED_TPM, "fixedTPM"),
            (FIXED_PARENT, "fixedParent"),
            (SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
            (RESTRICTED, "restricted"),
            (SIGN, "sign"),
        ];
        let missing: Vec<&str> = needed
            .iter()
            .filter(|(bit, _)| self.attributes & bit == 0)
            .map(|(_, name)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "attestation key: attributes 0x{:08x} lack {}; an attestation key is a restricted signing key fixed to its TPM (tpm2_createak)",
                self.attributes,
                missing.join(", ")
            ));
        }
        if self.attributes & DECRYPT != 0 {
            return Err(
                "attestation key: it can also decrypt; an attestation key only signs".into(),
            );
        }
        if let PublicKind::Rsa { modulus, .. } = &self.key
            && modulus.len() < 256
        {
            return Err(format!(
                "attestation key: RSA with a {}-bit modulus; at least 2048 bits are needed",
                modulus.len() * 8
            ));
        }
        Ok(())
    }

    /// Refuses an EK that is not a restricted decryption key fixed to its TPM with a symmetric
    /// algorithm: the TCG's EK templates all are.
    pub fn check_endorsement_key(&self) -> Result<(), String> {
        let needed = FIXED_TPM | FIXED_PARENT | RESTRICTED | DECRYPT;
        if self.attributes & needed != needed || self.attributes & SIGN != 0 {
            return Err(format!(
                "endorsement key: attributes 0x{:08x}; an EK is a restricted decryption key fixed to its TPM (tpm2_createek)",
                self.attributes
            ));
        }
        if self.aes_bits.is_none() {
            return Err(
                "endorsement key: no symmetric algorithm; an EK's template names AES".into(),
            );
        }
        if let PublicKind::Rsa { modulus, .. } = &self.key
            && modulus.len() < 256
        {
            return Err(format!(
                "endorsement key: RSA with a {}-bit modulus; at least 2048 bits are needed",
                modulus.len() * 8
            ));
        }
        Ok(())
    }

    /// SHA-256 of the key's DER `SubjectPublicKeyInfo`, hex: the same fingerprint
    /// [`super::AttestationKey::fingerprint`] gives its PEM.
    pub fn fingerprint(&self) -> String {
        hex(digest::digest(&digest::SHA256, &self.subject_public_key_info()).as_ref())
    }

    /// TPM2_MakeCredential with this key as the EK: `secret` (at most a digest of the EK's name
    /// algorithm) sealed so that only the TPM holding this EK and an object named `name`
    /// releases it (`tpm2_activatecredential`). Returns the file `tpm2_makecredential -o`
    /// writes.
    pub fn make_credential(&self, name: &[u8], secret: &[u8]) -> Result<Vec<u8>, String> {
        let hash = digest_algorithm(self.name_alg)?;
        let digest_len = hash.output_len();
        if secret.is_empty() || secret.len() > digest_len {
            return Err(format!(
                "a credential of {} bytes; 1 to {digest_len} fit",
                secret.len()
            ));
        }
        let Some(aes_bits) = self.aes_bits else {
            return Err("endorsement key: no symmetric algorithm".into());
        };
        let rng = SystemRandom::new();
        let (seed, encrypted_seed) = match &self.key {
            PublicKind::Rsa { modulus, exponent } => {
                let mut seed = vec![0u8; digest_len];
                rng.fill(&mut seed)
                    .map_err(|_| "the system's random source failed".to_string())?;
                let encrypted = rsa_oaep_encrypt(modulus, *exponent, self.name_alg, &seed)?;
                (seed, encrypted)
            }
            PublicKind::Ecc { curve, x, y } => ecdh_seed(*curve, x, y, self.name_alg, &rng)?,
        };
        let sym_key = kdfa(
            self.name_alg,
            &seed,
            b"STORAGE",
            name,
            &[],
            usize::from(aes_bits),
        );
        let mut plain = (secret.len() as u16).to_be_bytes().to_vec();
        plain.extend_from_slice(secret);
        let encrypted_identity = aes_cfb_encrypt(&sym_key, &plain);
        let hmac_key = kdfa(self.name_alg, &seed, b"INTEGRITY", &[], &[], digest_len * 8);
        let key = hmac::Key::new(hmac_algorithm(self.name_alg), &hmac_key);
        let mut context = hmac::Context::with_key(&key);
        context.update(&encrypted_identity);
        context.update(name);
        let outer_hmac = context.sign();
        let mut id_object = (outer_hmac.as_ref().len() as u16).to_be_bytes().to_vec();
        id_object.extend_from_slice(outer_hmac.as_ref());
        id_object.extend_from_slice(&encrypted_identity);
        let mut file = CREDENTIAL_MAGIC.to_be_bytes().to_vec();
        file.extend_from_slice(&CREDENTIAL_VERSION.to_be_bytes());
        for part in [&id_object, &encrypted_seed] {
            file.extend_from_slice(&(part.len() as u16).to_be_bytes());
            file.extend_from_slice(part);
        }
        Ok(file)
    }

    /// Checks that `der` (an EK certificate, as read from the TPM's NV index; padding after
    /// the certificate is ignored) certifies this key and was signed by one of `authorities`
    /// (DER certificates: the TPM vendors' root and intermediate CAs) and that both are valid
    /// at `now` (Unix seconds).
    pub fn check_certificate(
        &self,
        der: &[u8],
        authorities: &[Vec<u8>],
        now: i64,
    ) -> Result<CertifiedEndorsement, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| format!("EK certificate: not an X.509 certificate ({e})"))?;
        let matches = match (cert.public_key().parsed(), &self.key) {
            (Ok(PublicKey::RSA(rsa)), PublicKind::Rsa { modulus, exponent }) => {
                strip_zeros(rsa.modulus) == *modulus
                    && strip_zeros(rsa.exponent) == strip_zeros(&exponent.to_be_bytes())
            }
            (Ok(PublicKey::EC(point)), PublicKind::Ecc { x, y, .. }) => {
                point.data() == [vec![4], x.clone(), y.clone()].concat()
            }
            _ => false,
        };
        if !matches {
            return Err("EK certificate: it certifies another key than the TPM's EK".into());
        }
        let valid = |c: &X509Certificate, what: &str| -> Result<(), String> {
            let v = c.validity();
            if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
                return Err(format!(
                    "{what}: valid from {} to {}, not now",
                    v.not_before, v.not_after
                ));
            }
            Ok(())
        };
        valid(&cert, "EK certificate")?;
        check_purpose(&cert)?;
        // Every configured certificate with the issuer's name is tried (a vendor's renewed CA
        // keeps its name); the first that signed it, is a CA and is valid now vouches for it.
        let mut refusals = Vec::new();
        for authority in authorities {
            let Ok((_, ca)) = X509Certificate::from_der(authority) else {
                continue;
            };
            if ca.subject().as_raw() != cert.issuer().as_raw() {
                continue;
            }
            match cert.verify_signature(Some(ca.public_key())) {
                Ok(()) => {}
                Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => {
                    refusals.push(format!(
                        "it is signed with {}, which the verifier does not support",
                        cert.signature_algorithm.algorithm
                    ));
                    continue;
                }
                Err(_) => {
                    refusals.push(format!(
                        "its signature does not verify with the trusted CA `{}`",
                        ca.subject()
                    ));
                    continue;
                }
            }
            let is_ca = ca
                .basic_constraints()
                .ok()
                .flatten()
                .is_some_and(|b| b.value.ca);
            if !is_ca {
                refusals.push(format!(
                    "its issuer `{}` is not a CA (basicConstraints)",
                    ca.subject()
                ));
                continue;
            }
            if let Err(e) = valid(&ca, &format!("its issuer `{}`", ca.subject())) {
                refusals.push(e);
                continue;
            }
            return Ok(CertifiedEndorsement {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                authority_fingerprint: hex(digest::digest(&digest::SHA256, authority).as_ref()),
            });
        }
        Err(if refusals.is_empty() {
            format!(
                "EK certificate: its issuer `{}` is not among the trusted TPM vendor CAs ([attestation] endorsement_authorities; it must hold the CA that issued EK certificates, intermediates included)",
                cert.issuer()
            )
        } else {
            format!("EK certificate: {}", refusals.join("; "))
        })
    }
}

/// The TCG's EK certificate purpose, `tcg-kp-EKCertificate`.
const EK_CERTIFICATE_PURPOSE: &str = "2.23.133.8.1";

/// The TCG EK Credential Profile has an EK certificate name `tcg-kp-EKCertificate` as its
/// extended key usage. A certificate with no such extension (older TPMs') is accepted; one
/// whose extension does not name it — a TLS or code-signing certificate the same vendor CA
/// issued for that key, even one that adds `anyExtendedKeyUsage` (RFC 5280 lets a verifier
/// that needs a specific purpose refuse it) — is not an EK certificate.
fn check_purpose(cert: &X509Certificate) -> Result<(), String> {
    let usage = cert
        .extended_key_usage()
        .map_err(|e| format!("EK certificate: its extendedKeyUsage does not parse ({e})"))?;
    let Some(usage) = usage else {
        return Ok(());
    };
    if usage
        .value
        .other
        .iter()
        .any(|oid| oid.to_id_string() == EK_CERTIFICATE_PURPOSE)
    {
        return Ok(());
    }
    Err(format!(
        "EK certificate: its extendedKeyUsage does not include tcg-kp-EKCertificate ({EK_CERTIFICATE_PURPOSE}); it was issued for another purpose"
    ))
}

/// KDFa (Part 1, 11.4.10.2): SP 800-108 counter mode with HMAC; the label gets its terminating
/// zero byte.
fn kdfa(
    hash: u16,
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
    bits: usize,
) -> Vec<u8> {
    let key = hmac::Key::new(hmac_algorithm(hash), key);
    let mut out = Vec::with_capacity(bits / 8);
    let mut counter: u32 = 1;
    while out.len() < bits / 8 {
        let mut context = hmac::Context::with_key(&key);
        context.update(&counter.to_be_bytes());
        context.update(label);
        context.update(&[0]);
        context.update(context_u);
        context.update(context_v);
        context.update(&(bits as u32).to_be_bytes());
        out.extend_from_slice(context.sign().as_ref());
        counter += 1;
    }
    out.truncate(bits / 8);
    out
}

/// KDFe (Part 1, 11.4.10.3): SP 800-56A's concatenation KDF over the ECDH secret `z`.
fn kdfe(hash: u16, z: &[u8], label: &[u8], party_u: &[u8], party_v: &[u8], bits: usize) -> Vec<u8> {
    let algorithm = if hash == ALG_SHA384 {
        &digest::SHA384
    } else {
        &digest::SHA256
    };
    let mut out = Vec::with_capacity(bits / 8);
    let mut counter: u32 = 1;
    while out.len() < bits / 8 {
        let mut context = digest::Context::new(algorithm);
        context.update(&counter.to_be_bytes());
        context.update(z);
        context.update(label);
        context.update(&[0]);
        context.update(party_u);
        context.update(party_v);
        out.extend_from_slice(context.finish().as_ref());
        counter += 1;
    }
    out.truncate(bits / 8);
    out
}

/// The seed of an ECC EK's credential (Part 1, Annex C.6.4): an ephemeral key agreed with the
/// EK; the "encrypted" seed is the ephemeral public point (`TPMS_ECC_POINT`).
fn ecdh_seed(
    curve: u16,
    x: &[u8],
    y: &[u8],
    name_alg: u16,
    rng: &SystemRandom,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (algorithm, size) = match curve {
        ECC_NIST_P256 => (&agreement::ECDH_P256, 32),
        _ => (&agreement::ECDH_P384, 48),
    };
    let ephemeral = agreement::EphemeralPrivateKey::generate(algorithm, rng)
        .map_err(|_| "the system's random source failed".to_string())?;
    let public = ephemeral
        .compute_public_key()
        .map_err(|_| "could not compute an ephemeral ECC key".to_string())?;
    let (ephemeral_x, ephemeral_y) = public.as_ref()[1..].split_at(size);
    let peer = agreement::UnparsedPublicKey::new(algorithm, [&[4], x, y].concat());
    let digest_bits = digest_algorithm(name_alg)?.output_len() * 8;
    let seed = agreement::agree_ephemeral(ephemeral, &peer, |z| {
        kdfe(name_alg, z, b"IDENTITY", ephemeral_x, x, digest_bits)
    })
    .map_err(|_| "endorsement key: its ECC point is not on the curve".to_string())?;
    let mut point = Vec::with_capacity(4 + 2 * size);
    for coordinate in [ephemeral_x, ephemeral_y] {
        point.extend_from_slice(&(size as u16).to_be_bytes());
        point.extend_from_slice(coordinate);
    }
    Ok((seed, point))
}

/// RSAES-OAEP with the EK's name algorithm and the label `IDENTITY` (with its zero byte).
fn rsa_oaep_encrypt(
    modulus: &[u8],
    exponent: u32,
    name_alg: u16,
    seed: &[u8],
) -> Result<Vec<u8>, String> {
    let key = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(modulus),
        rsa::BigUint::from(exponent),
    )
    .map_err(|e| format!("endorsement key: not a usable RSA key ({e})"))?;
    let mut rng = rand_core::OsRng;
    let padding = if name_alg == ALG_SHA384 {
        rsa::Oaep::new_with_label::<sha2::Sha384, _>("IDENTITY\0")
    } else {
        rsa::Oaep::new_with_label::<sha2::Sha256, _>("IDENTITY\0")
    };
    key.encrypt(&mut rng, padding, seed)
        .map_err(|e| format!("endorsement key: RSA encryption failed ({e})"))
}

/// AES-CFB with a zero IV, as the TPM protects a credential (Part 1, 24.4).
fn aes_cfb_encrypt(key: &[u8], plain: &[u8]) -> Vec<u8> {
    use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
    let encrypt_block = |block: &mut [u8; 16]| {
        let b = GenericArray::from_mut_slice(block);
        if key.len() == 32 {
            aes::Aes256::new(GenericArray::from_slice(key)).encrypt_block(b);
        } else {
            aes::Aes128::new(GenericArray::from_slice(key)).encrypt_block(b);
        }
    };
    let mut out = plain.to_vec();
    let mut feedback = [0u8; 16];
    for chunk in out.chunks_mut(16) {
        encrypt_block(&mut feedback);
        for (byte, mask) in chunk.iter_mut().zip(feedback) {
            *byte ^= mask;
        }
        feedback[..chunk.len()].copy_from_slice(chunk);
    }
    out
}

fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        vec![len as u8]
    } else {
        let bytes = strip_zeros(&(len as u32).to_be_bytes());
        [vec![0x80 | bytes.len() as u8], bytes].concat()
    }
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    [vec![tag], der_length(content.len()), content.to_vec()].concat()
}

fn der_integer(unsigned: &[u8]) -> Vec<u8> {
    let mut content = strip_zeros(unsigned);
    if content.first().is_none_or(|b| b & 0x80 != 0) {
        content.insert(0, 0);
    }
    der(0x02, &content)
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// rcgen-made TPM vendor CAs and EK certificates, for the tests here and in
/// `attestation::activation`.
#[cfg(test)]
pub(crate) mod testing {
    use super::{PublicArea, PublicKind};

    /// The public key of a `PublicArea`, for rcgen to certify.
    pub(crate) struct EkKey(Vec<u8>, &'static rcgen::SignatureAlgorithm);

    impl rcgen::PublicKeyData for EkKey {
        fn der_bytes(&self) -> &[u8] {
            &self.0
        }
        fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
            self.1
        }
    }

    pub(crate) fn ek_key(ek: &PublicArea) -> EkKey {
        let algorithm = match ek.key {
            PublicKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
            PublicKind::Ecc { .. } => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        EkKey(ek.subject_public_key(), algorithm)
    }

    /// A vendor CA (its DER certificate and issuer) named `name`.
    pub(crate) fn vendor_ca(
        name: &str,
        ca: bool,
    ) -> (Vec<u8>, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.der().to_vec(), rcgen::Issuer::new(params, key))
    }

    pub(crate) fn ek_certificate(
        ek: &PublicArea,
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    ) -> Vec<u8> {
        ek_certificate_for(ek, issuer, vec![ek_certificate_purpose()])
    }

    /// `tcg-kp-EKCertificate`, as vendors' EK certificates name it.
    pub(crate) fn ek_certificate_purpose() -> rcgen::ExtendedKeyUsagePurpose {
        rcgen::ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1])
    }

    /// An EK certificate naming `purposes` as its extended key usage (none: no extension).
    pub(crate) fn ek_certificate_for(
        ek: &PublicArea,
        issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
        purposes: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.extended_key_usages = purposes;
        params
            .signed_by(&ek_key(ek), issuer)
            .expect("EK certificate")
            .der()
            .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ek_certificate, ek_certificate_for, ek_certificate_purpose, vendor_ca};
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tpm");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture")
    }

    fn area(name: &'static str) -> PublicArea {
        PublicArea::parse(&fixture(name), name).expect(name)
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn names_and_keys_equal_what_tpm2_tools_wrote() {
        for alg in ["ecc", "rsa"] {
            let ak = PublicArea::parse(&fixture(&format!("ak-{alg}.pub")), "ak").expect(alg);
            assert_eq!(ak.name(), fixture(&format!("ak-{alg}.name")), "{alg} name");
            let pem = String::from_utf8(fixture(&format!("ak-{alg}.pem"))).expect("utf-8");
            assert_eq!(ak.pem(), pem, "{alg} PEM");
            assert_eq!(
                ak.fingerprint(),
                super::super::AttestationKey::fingerprint(&pem).expect("fingerprint"),
            );
            ak.check_attestation_key()
                .expect("tpm2_createak makes attestation keys");
            let refused = ak.check_endorsement_key().expect_err("an AK is no EK");
            assert!(refused.contains("restricted decryption key"), "{refused}");
        }
        for alg in ["ecc", "rsa"] {
            let ek = area(if alg == "ecc" {
                "ek-ecc.pub"
            } else {
                "ek-rsa.pub"
            });
            ek.check_endorsement_key().expect("tpm2_createek makes EKs");
            let refused = ek.check_attestation_key().expect_err("an EK is no AK");
            assert!(refused.contains("lack sign"), "{refused}");
        }
    }

    #[test]
    fn malformed_public_areas_are_named() {
        let ak = fixture("ak-ecc.pub");
        let short = PublicArea::parse(&ak[..40], "attestation key").expect_err("truncated");
        assert!(
            short.starts_with("attestation key: ends at byte"),
            "{short}"
        );
        let mut long = ak.clone();
        long.push(0);
        let extra = PublicArea::parse(&long, "attestation key").expect_err("trailing");
        assert!(extra.contains("left over"), "{extra}");
        let mut sha1 = ak;
        sha1[4..6].copy_from_slice(&0x0004u16.to_be_bytes());
        let hash = PublicArea::parse(&sha1, "attestation key").expect_err("sha1 name");
        assert!(hash.contains("name algorithm sha1"), "{hash}");
    }

    /// An RSA-2048 public area with `scheme` (and `details` after it), as a `TPM2B_PUBLIC`.
    fn rsa_area(scheme: u16, details: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&0x0001u16.to_be_bytes()); // TPM_ALG_RSA
        t.extend_from_slice(&ALG_SHA256.to_be_bytes());
        t.extend_from_slice(&(FIXED_TPM | FIXED_PARENT | DECRYPT).to_be_bytes());
        t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy
        t.extend_from_slice(&ALG_NULL.to_be_bytes()); // symmetric
        t.extend_from_slice(&scheme.to_be_bytes());
        t.extend_from_slice(details);
        t.extend_from_slice(&2048u16.to_be_bytes());
        t.extend_from_slice(&0u32.to_be_bytes());
        t.extend_from_slice(&256u16.to_be_bytes());
        t.extend_from_slice(&[0xc5; 256]);
        [(t.len() as u16).to_be_bytes().to_vec(), t].concat()
    }

    #[test]
    fn key_schemes_are_read_as_part_2_defines_them() {
        // RSAES has no details, OAEP a hash: both parse to the end, and names differ.
        let rsaes = PublicArea::parse(&rsa_area(ALG_RSAES, &[]), "key").expect("RSAES");
        let oaep =
            PublicArea::parse(&rsa_area(ALG_OAEP, &ALG_SHA256.to_be_bytes()), "key").expect("OAEP");
        assert_ne!(rsaes.name(), oaep.name());
        let unknown = PublicArea::parse(&rsa_area(0x00ff, &[0, 0x0b]), "key").expect_err("0x00ff");
        assert!(
            unknown.contains("scheme 0x00ff is not a TPM 2.0 key scheme"),
            "{unknown}"
        );
        // RSAES read as if it named a hash would leave bytes over or run short.
        let guessed = PublicArea::parse(&rsa_area(ALG_RSAES, &ALG_SHA256.to_be_bytes()), "key");
        assert!(guessed.is_err());
    }

    #[test]
    fn credentials_have_tpm2_tools_layout() {
        let name = fixture("ak-ecc.name");
        for (ek, seed_len) in [("ek-rsa.pub", 256), ("ek-ecc.pub", 2 + 32 + 2 + 32)] {
            let file = area(ek).make_credential(&name, &[7; 32]).expect(ek);
            assert_eq!(file[..8], [0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1], "{ek}");
            // TPM2B_ID_OBJECT: a 32-byte HMAC and the 34-byte encrypted TPM2B_DIGEST.
            assert_eq!(file[8..10], [0, 2 + 32 + 34], "{ek}");
            assert_eq!(
                usize::from(u16::from_be_bytes([file[78], file[79]])),
                seed_len,
                "{ek}"
            );
            assert_eq!(file.len(), 80 + seed_len, "{ek}");
            let again = area(ek).make_credential(&name, &[7; 32]).expect(ek);
            assert_ne!(file, again, "{ek}: every credential has its own seed");
        }
        let too_long = area("ek-rsa.pub").make_credential(&name, &[7; 33]);
        assert!(too_long.expect_err("33 bytes").contains("1 to 32 fit"));
    }

    #[test]
    fn cfb_feeds_each_ciphertext_block_back() {
        let key = hex_bytes("2b7e151628aed2a6abf7158809cf4f3c");
        let plain: Vec<u8> = (0u8..20).collect();
        let cipher = aes_cfb_encrypt(&key, &plain);
        let first = aes_block(&key, [0; 16]);
        let second = aes_block(&key, cipher[..16].try_into().expect("a block"));
        let expected: Vec<u8> = plain
            .iter()
            .zip(first.iter().chain(&second[..4]))
            .map(|(p, k)| p ^ k)
            .collect();
        assert_eq!(cipher, expected);
    }

    fn aes_block(key: &[u8], mut block: [u8; 16]) -> [u8; 16] {
        use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
        aes::Aes128::new(GenericArray::from_slice(key))
            .encrypt_block(GenericArray::from_mut_slice(&mut block));
        block
    }

    #[test]
    fn ek_certificates_are_checked_against_the_vendor_cas() {
        let ek = area("ek-rsa.pub");
        let (ca, issuer) = vendor_ca("Plant TPM Vendor EK CA", true);
        let cert = ek_certificate(&ek, &issuer);
        let certified = ek
            .check_certificate(&cert, std::slice::from_ref(&ca), now())
            .expect("certified");
        assert!(
            certified.issuer.contains("Plant TPM Vendor EK CA"),
            "{certified:?}"
        );
        // NV indices hold the certificate padded to their size.
        let mut padded = cert.clone();
        padded.extend_from_slice(&[0; 64]);
        ek.check_certificate(&padded, std::slice::from_ref(&ca), now())
            .expect("padded");

        let other_key =
            area("ek-ecc.pub").check_certificate(&cert, std::slice::from_ref(&ca), now());
        assert!(other_key.expect_err("another EK").contains("another key"));

        let (stranger, _) = vendor_ca("Someone Else's CA", true);
        let untrusted = ek
            .check_certificate(&cert, &[stranger], now())
            .expect_err("untrusted");
        assert!(
            untrusted.contains("not among the trusted TPM vendor CAs"),
            "{untrusted}"
        );

        let (impostor, _) = vendor_ca("Plant TPM Vendor EK CA", true);
        let forged = ek
            .check_certificate(&cert, &[impostor], now())
            .expect_err("same name, other key");
        assert!(forged.contains("does not verify"), "{forged}");

        let (leaf_ca, leaf_issuer) = vendor_ca("Not A CA", false);
        let by_leaf = ek_certificate(&ek, &leaf_issuer);
        let not_ca = ek
            .check_certificate(&by_leaf, &[leaf_ca], now())
            .expect_err("no CA flag");
        assert!(not_ca.contains("is not a CA"), "{not_ca}");

        // An older TPM's certificate names no purpose; a TLS certificate for the EK's key
        // from the same CA is no EK certificate.
        let (ca_for_purposes, issuer_for_purposes) = vendor_ca("Plant TPM Vendor EK CA", true);
        let trusted = std::slice::from_ref(&ca_for_purposes);
        let unnamed = ek_certificate_for(&ek, &issuer_for_purposes, vec![]);
        ek.check_certificate(&unnamed, trusted, now())
            .expect("no extendedKeyUsage: accepted");
        let tls = ek_certificate_for(
            &ek,
            &issuer_for_purposes,
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        );
        let refused = ek
            .check_certificate(&tls, trusted, now())
            .expect_err("a TLS certificate");
        assert!(refused.contains("tcg-kp-EKCertificate"), "{refused}");
        let both = ek_certificate_for(
            &ek,
            &issuer_for_purposes,
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                ek_certificate_purpose(),
            ],
        );
        ek.check_certificate(&both, trusted, now())
            .expect("names the EK purpose among others");
        let any_purpose = ek_certificate_for(
            &ek,
            &issuer_for_purposes,
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::Any,
            ],
        );
        let refused = ek
            .check_certificate(&any_purpose, trusted, now())
            .expect_err("any purpose is not the EK purpose");
        assert!(refused.contains("tcg-kp-EKCertificate"), "{refused}");

        let later = now() + 3_000 * 365 * 86_400;
        let expired = ek
            .check_certificate(&cert, &[ca], later)
            .expect_err("expired");
        assert!(expired.contains("not now"), "{expired}");

        let junk = ek
            .check_certificate(b"not a certificate", &[], now())
            .expect_err("junk");
        assert!(junk.contains("not an X.509 certificate"), "{junk}");
    }
}
