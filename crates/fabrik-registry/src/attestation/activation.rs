//! Attestation keys enrolled through the TPM's endorsement key (decision 0053): the device sends
//! its EK, the EK certificate and its AK; the verifier checks the certificate against the TPM
//! vendors' CAs and answers with a credential only the TPM holding both keys can open
//! (TPM2_MakeCredential / ActivateCredential); the secret sent back enrols the AK, bound to
//! that EK.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::{CHALLENGE_LIFETIME, EnrolledKey, OPEN_CHALLENGES, decode};
use crate::tpm::endorsement::{PublicArea, PublicKind};
use crate::tpm::hex;
use crate::{Registry, RegistryError, now_ns};

/// Credentials issued and not yet activated, by device.
pub(crate) type Activations = HashMap<String, Vec<Pending>>;

/// A credential issued to a device's EK for one AK.
pub(crate) struct Pending {
    id: String,
    secret: [u8; 32],
    key_pem: String,
    endorsement: Endorsement,
    issued: Instant,
    /// Begun with the device's own credentials: a device's activations and an admin's are
    /// counted apart, so a device (or a stolen token) asking again and again cannot push out
    /// the one a provisioning station is finishing.
    by_device: bool,
}

impl std::fmt::Debug for Pending {
    /// Leaves the secret out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("endorsement", &self.endorsement)
            .field("issued", &self.issued)
            .field("by_device", &self.by_device)
            .finish_non_exhaustive()
    }
}

/// How a TPM's endorsement key vouched for an attestation key: the AK was shown to live in the
/// TPM that holds this EK.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endorsement {
    /// SHA-256 of the EK's `SubjectPublicKeyInfo`, hex: the TPM the device is bound to.
    pub ek_fingerprint: String,
    /// `rsa` or `ecc`.
    pub ek_algorithm: String,
    /// The EK certificate's issuer (the TPM vendor's CA), when it was checked against
    /// `[attestation] endorsement_authorities`; `null`: not checked (none configured).
    pub certificate_issuer: Option<String>,
    /// The EK certificate's subject, when checked.
    pub certificate_subject: Option<String>,
    /// SHA-256 of the configured CA certificate that issued the EK certificate, hex: removing
    /// that CA from `[attestation] endorsement_authorities` closes the device's gate.
    #[serde(default)]
    pub authority_fingerprint: Option<String>,
}

/// What a device sends to have its attestation key activated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationRequest {
    /// The EK's `TPM2B_PUBLIC` (`tpm2_createek -G rsa -u ek.pub`), base64.
    pub ek_public: String,
    /// The AK's `TPM2B_PUBLIC` (`tpm2_readpublic -c 0x81010002 -o ak.pub`), base64.
    pub ak_public: String,
    /// The EK certificate (DER, as the TPM keeps it at NV index 0x01c00002 for RSA or
    /// 0x01c0000a for ECC), base64; needed where `[attestation] endorsement_authorities` is set.
    #[serde(default)]
    pub ek_certificate: Option<String>,
}

/// The credential for the device's TPM to activate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivationChallenge {
    /// Names this activation in the proof.
    pub id: String,
    /// The file `tpm2_activatecredential -i` reads (`tpm2_makecredential`'s format), base64.
    pub credential: String,
    /// When it can no longer be activated (ns).
    pub expires_at: i64,
}

/// The secret the TPM released (`tpm2_activatecredential -o`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivationProof {
    /// The released secret, base64.
    pub secret: String,
}

/// Reads TPM vendors' CA certificates: a PEM file (any number of `CERTIFICATE` blocks), a DER
/// file, or a directory of such files. Names the file that is not one.
pub fn load_authorities(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut certificates = Vec::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        // DER starts with a SEQUENCE; anything else is read as PEM.
        let found: Vec<Vec<u8>> = if bytes.first() != Some(&0x30) {
            x509_parser::pem::Pem::iter_from_buffer(&bytes)
                .map(|block| {
                    let block = block.map_err(|e| format!("{}: not PEM ({e})", file.display()))?;
                    Ok((block.label == "CERTIFICATE").then_some(block.contents))
                })
                .filter_map(Result::transpose)
                .collect::<Result<_, String>>()?
        } else {
            vec![bytes]
        };
        for der in &found {
            X509Certificate::from_der(der)
                .map_err(|e| format!("{}: not an X.509 certificate ({e})", file.display()))?;
        }
        certificates.extend(found);
    }
    if certificates.is_empty() {
        return Err(format!("{}: no certificates", path.display()));
    }
    Ok(certificates)
}

impl Registry {
    /// Sets the TPM vendors' CA certificates (DER) EK certificates are checked against.
    pub fn set_endorsement_authorities(&self, certificates: Vec<Vec<u8>>) {
        *self.endorsement_authorities.write() = Arc::new(certificates);
    }

    /// Whether EK certificates are checked.
    pub fn checks_endorsement_certificates(&self) -> bool {
        !self.endorsement_authorities.read().is_empty()
    }

    /// Refuses a device replacing, with its own credentials, a key bound to another TPM: a
    /// stolen token must not move the device's identity to the thief's TPM.
    async fn check_binding(
        &self,
        id: &str,
        ek_fingerprint: &str,
        by_device: bool,
    ) -> Result<(), RegistryError> {
        if !by_device {
            return Ok(());
        }
        match self.attestation_key(id).await? {
            None => Ok(()),
            Some(EnrolledKey {
                endorsement: Some(e),
                ..
            }) if e.ek_fingerprint == ek_fingerprint => Ok(()),
            Some(EnrolledKey {
                endorsement: Some(e),
                ..
            }) => Err(RegistryError::Refused(format!(
                "device `{id}` is bound to the TPM with EK {}, not this one ({ek_fingerprint}): an admin must remove its key first (fabrik device attestation unenrol {id})",
                e.ek_fingerprint
            ))),
            Some(_) => Err(RegistryError::Refused(format!(
                "device `{id}` has a key an operator enrolled; only an admin can replace it"
            ))),
        }
    }

    /// Checks a device's EK (and its certificate, where CAs are configured) and AK, and issues
    /// the credential its TPM must activate. `by_device`: the device's own credentials called,
    /// not an admin's.
    pub async fn begin_activation(
        &self,
        id: &str,
        request: &ActivationRequest,
        by_device: bool,
    ) -> Result<ActivationChallenge, RegistryError> {
        self.get(id).await?;
        let invalid = RegistryError::Invalid;
        let ek = PublicArea::parse(&decode("ek_public", &request.ek_public)?, "ek_public")
            .map_err(invalid)?;
        ek.check_endorsement_key().map_err(invalid)?;
        let ak = PublicArea::parse(&decode("ak_public", &request.ak_public)?, "ak_public")
            .map_err(invalid)?;
        ak.check_attestation_key().map_err(invalid)?;
        let authorities = self.endorsement_authorities.read().clone();
        // Without vendor CAs nothing shows the EK is a TPM's: a token alone (with a software
        // TPM) could enrol a key of its holder's choosing. Enrolment then stays an admin's act.
        if by_device && authorities.is_empty() {
            return Err(RegistryError::Refused(format!(
                "a device enrols its own key only where EK certificates are checked ([attestation] endorsement_authorities); here an admin activates it for `{id}` (a provisioning station), or enrols it"
            )));
        }
        let certified = if authorities.is_empty() {
            None
        } else {
            let Some(certificate) = &request.ek_certificate else {
                return Err(RegistryError::Invalid(
                    "ek_certificate: this node checks EK certificates against its TPM vendors' CAs; send the one the TPM holds (tpm2_nvread 0x01c00002)".into(),
                ));
            };
            let der = decode("ek_certificate", certificate)?;
            X509Certificate::from_der(&der).map_err(|e| {
                RegistryError::Invalid(format!("ek_certificate: not an X.509 certificate ({e})"))
            })?;
            Some(
                ek.check_certificate(&der, &authorities, now_ns() / 1_000_000_000)
                    .map_err(RegistryError::Refused)?,
            )
        };
        let endorsement = Endorsement {
            ek_fingerprint: ek.fingerprint(),
            ek_algorithm: match ek.key {
                PublicKind::Rsa { .. } => "rsa".into(),
                PublicKind::Ecc { .. } => "ecc".into(),
            },
            certificate_issuer: certified.as_ref().map(|c| c.issuer.clone()),
            certificate_subject: certified.as_ref().map(|c| c.subject.clone()),
            authority_fingerprint: certified.map(|c| c.authority_fingerprint),
        };
        self.check_binding(id, &endorsement.ek_fingerprint, by_device)
            .await?;
        let mut secret = [0u8; 32];
        let mut activation = [0u8; 16];
        for buffer in [&mut secret[..], &mut activation[..]] {
            getrandom::fill(buffer).map_err(|e| {
                RegistryError::Token(format!("no randomness for a credential: {e}"))
            })?;
        }
        let credential = ek
            .make_credential(&ak.name(), &secret)
            .map_err(RegistryError::Invalid)?;
        let pending = Pending {
            id: hex(&activation),
            secret,
            key_pem: ak.pem(),
            endorsement,
            issued: Instant::now(),
            by_device,
        };
        let challenge = ActivationChallenge {
            id: pending.id.clone(),
            credential: base64::engine::general_purpose::STANDARD.encode(credential),
            expires_at: now_ns() + CHALLENGE_LIFETIME.as_nanos() as i64,
        };
        let mut activations = self.activations.lock();
        activations.retain(|_, open| {
            open.retain(|p| p.issued.elapsed() < CHALLENGE_LIFETIME);
            !open.is_empty()
        });
        let open = activations.entry(id.to_owned()).or_default();
        if open.iter().filter(|p| p.by_device == by_device).count() >= OPEN_CHALLENGES
            && let Some(oldest) = open.iter().position(|p| p.by_device == by_device)
        {
            open.remove(oldest);
        }
        open.push(pending);
        Ok(challenge)
    }

    /// Enrols the AK of an activation whose secret the device's TPM released. An activation is
    /// used up by any answer.
    pub async fn finish_activation(
        &self,
        id: &str,
        activation: &str,
        proof: &ActivationProof,
        by_device: bool,
    ) -> Result<EnrolledKey, RegistryError> {
        self.get(id).await?;
        let released = decode("secret", &proof.secret)?;
        let pending = {
            let mut activations = self.activations.lock();
            let open = activations.get_mut(id);
            // Answered with the credentials it was begun with: a device cannot use up an
            // admin's activation, nor an admin finish a device's past its binding check.
            open.and_then(|open| {
                let at = open
                    .iter()
                    .position(|p| p.id == activation && p.by_device == by_device)?;
                Some(open.remove(at))
            })
        };
        let Some(pending) = pending.filter(|p| p.issued.elapsed() < CHALLENGE_LIFETIME) else {
            return Err(RegistryError::Invalid(format!(
                "activation `{activation}` of device `{id}` is unknown, used or older than 5 minutes: start again"
            )));
        };
        if !same_secret(&released, &pending.secret) {
            let reason = "the secret does not match: the attestation key is not in the TPM that holds this endorsement key";
            self.event(id, "attestation_activation_failed", reason)
                .await?;
            return Err(RegistryError::Refused(format!(
                "activation of `{id}`: {reason}"
            )));
        }
        // Two activations finishing at once must not both pass the binding check.
        let _one_at_a_time = self.activation_lock.lock().await;
        self.check_binding(id, &pending.endorsement.ek_fingerprint, by_device)
            .await?;
        self.store_attestation_key(id, &pending.key_pem, Some(pending.endorsement))
            .await
    }

    /// Why an endorsement no longer vouches for its key (`None`: it does): the CA that issued
    /// its EK certificate was removed from `[attestation] endorsement_authorities`.
    pub(crate) fn endorsement_withdrawn(&self, endorsement: &Endorsement) -> Option<String> {
        let fingerprint = endorsement.authority_fingerprint.as_ref()?;
        let authorities = self.endorsement_authorities.read().clone();
        if authorities.is_empty() {
            return None;
        }
        let trusted = authorities.iter().any(|der| {
            hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref()) == *fingerprint
        });
        (!trusted).then(|| {
            format!(
                "the CA that issued its EK certificate ({}) is no longer among [attestation] endorsement_authorities",
                endorsement.certificate_issuer.as_deref().unwrap_or("unknown")
            )
        })
    }
}

/// Compares a secret without leaking where it differs through timing.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewDevice;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tpm");

    fn b64_fixture(name: &str) -> String {
        let bytes = std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    async fn gateway() -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::open(&dir.path().join("registry.db"))
            .await
            .expect("open");
        registry
            .add(NewDevice {
                id: "gw-1".into(),
                ..NewDevice::default()
            })
            .await
            .expect("add");
        (dir, registry)
    }

    fn request(ek: &str, ak: &str) -> ActivationRequest {
        ActivationRequest {
            ek_public: b64_fixture(ek),
            ak_public: b64_fixture(ak),
            ek_certificate: None,
        }
    }

    #[tokio::test]
    async fn keys_that_are_not_what_they_claim_are_refused() {
        let (_dir, registry) = gateway().await;
        // An EK offered as the attestation key: it decrypts, and does not sign.
        let swapped = registry
            .begin_activation("gw-1", &request("ek-rsa.pub", "ek-ecc.pub"), true)
            .await
            .expect_err("an EK is no AK");
        assert!(swapped.to_string().contains("lack sign"), "{swapped}");
        let backwards = registry
            .begin_activation("gw-1", &request("ak-ecc.pub", "ak-rsa.pub"), true)
            .await
            .expect_err("an AK is no EK");
        assert!(
            backwards.to_string().contains("endorsement key"),
            "{backwards}"
        );
        let mut junk = request("ek-rsa.pub", "ak-ecc.pub");
        junk.ak_public = "%%%".into();
        let junk = registry.begin_activation("gw-1", &junk, true).await;
        assert!(
            junk.expect_err("not base64")
                .to_string()
                .contains("ak_public: not base64")
        );
        // Without vendor CAs the EK is trusted on first use; with them, a certificate is needed.
        // Without vendor CAs the device itself may not enrol (a software TPM would do); an
        // admin may.
        let self_service = registry
            .begin_activation("gw-1", &request("ek-rsa.pub", "ak-ecc.pub"), true)
            .await
            .expect_err("no vendor CAs");
        assert!(
            matches!(&self_service, RegistryError::Refused(m) if m.contains("endorsement_authorities")),
            "{self_service}"
        );
        let issued = registry
            .begin_activation("gw-1", &request("ek-rsa.pub", "ak-ecc.pub"), false)
            .await
            .expect("issued");
        assert_eq!(issued.id.len(), 32);
        registry.set_endorsement_authorities(vec![b"a CA".to_vec()]);
        let uncertified = registry
            .begin_activation("gw-1", &request("ek-rsa.pub", "ak-ecc.pub"), true)
            .await
            .expect_err("no certificate");
        assert!(
            uncertified.to_string().contains("ek_certificate"),
            "{uncertified}"
        );
        let mut junk_certificate = request("ek-rsa.pub", "ak-ecc.pub");
        junk_certificate.ek_certificate = Some("AAAA".into());
        let junk = registry
            .begin_activation("gw-1", &junk_certificate, true)
            .await
            .expect_err("junk certificate");
        assert!(
            matches!(&junk, RegistryError::Invalid(m) if m.contains("not an X.509 certificate")),
            "{junk}"
        );
    }

    #[tokio::test]
    async fn a_wrong_secret_enrols_nothing_and_uses_the_activation_up() {
        let (_dir, registry) = gateway().await;
        let issued = registry
            .begin_activation("gw-1", &request("ek-ecc.pub", "ak-rsa.pub"), false)
            .await
            .expect("issued");
        let guess = ActivationProof {
            secret: base64::engine::general_purpose::STANDARD.encode([1u8; 32]),
        };
        let wrong = registry
            .finish_activation("gw-1", &issued.id, &guess, false)
            .await
            .expect_err("wrong secret");
        assert!(matches!(wrong, RegistryError::Refused(_)), "{wrong}");
        let again = registry
            .finish_activation("gw-1", &issued.id, &guess, false)
            .await
            .expect_err("used up");
        assert!(again.to_string().contains("unknown, used"), "{again}");
        assert_eq!(registry.attestation_key("gw-1").await.expect("read"), None);
        let events = registry.events("gw-1", 10).await.expect("events");
        assert!(
            events
                .iter()
                .any(|e| e.kind == "attestation_activation_failed"),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn a_device_asking_again_and_again_does_not_push_out_an_admins_activation() {
        use crate::tpm::endorsement::testing::{ek_certificate, vendor_ca};
        let (_dir, registry) = gateway().await;
        let (ca, issuer) = vendor_ca("Plant TPM Vendor EK CA", true);
        registry.set_endorsement_authorities(vec![ca]);
        let certified = ActivationRequest {
            ek_certificate: Some(
                base64::engine::general_purpose::STANDARD
                    .encode(ek_certificate(&area("ek-rsa.pub"), &issuer)),
            ),
            ..request("ek-rsa.pub", "ak-ecc.pub")
        };
        let by_admin = registry
            .begin_activation("gw-1", &certified, false)
            .await
            .expect("admin's");
        let mut by_device = Vec::new();
        for _ in 0..=OPEN_CHALLENGES {
            by_device.push(
                registry
                    .begin_activation("gw-1", &certified, true)
                    .await
                    .expect("device's"),
            );
        }
        // A wrong secret tells a pending activation (refused: the secret does not match) from
        // one that was dropped (unknown).
        let guess = ActivationProof {
            secret: base64::engine::general_purpose::STANDARD.encode([1u8; 32]),
        };
        let admins = registry
            .finish_activation("gw-1", &by_admin.id, &guess, false)
            .await
            .expect_err("wrong secret");
        assert!(
            matches!(&admins, RegistryError::Refused(m) if m.contains("does not match")),
            "the admin's activation is still open: {admins}"
        );
        let oldest = registry
            .finish_activation("gw-1", &by_device[0].id, &guess, true)
            .await
            .expect_err("dropped");
        assert!(oldest.to_string().contains("unknown, used"), "{oldest}");
        let newest = registry
            .finish_activation("gw-1", &by_device[OPEN_CHALLENGES].id, &guess, true)
            .await
            .expect_err("wrong secret");
        assert!(matches!(newest, RegistryError::Refused(_)), "{newest}");
        // Answered with other credentials than it was begun with, an activation is unknown
        // (and stays open for its own side).
        let by_admin = registry
            .begin_activation("gw-1", &certified, false)
            .await
            .expect("admin's");
        let crossed = registry
            .finish_activation("gw-1", &by_admin.id, &guess, true)
            .await
            .expect_err("a device answering an admin's");
        assert!(crossed.to_string().contains("unknown, used"), "{crossed}");
        let own = registry
            .finish_activation("gw-1", &by_admin.id, &guess, false)
            .await
            .expect_err("wrong secret");
        assert!(matches!(own, RegistryError::Refused(_)), "{own}");
    }

    fn area(name: &'static str) -> PublicArea {
        let bytes = std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture");
        PublicArea::parse(&bytes, name).expect("public area")
    }

    #[tokio::test]
    async fn a_device_cannot_move_itself_to_another_tpm_but_an_admin_can() {
        use crate::tpm::endorsement::testing::{ek_certificate, vendor_ca};
        let (_dir, registry) = gateway().await;
        let (ca, issuer) = vendor_ca("Plant TPM Vendor EK CA", true);
        registry.set_endorsement_authorities(vec![ca.clone()]);
        let certified = |ek: &'static str, ak: &str| ActivationRequest {
            ek_certificate: Some(
                base64::engine::general_purpose::STANDARD
                    .encode(ek_certificate(&area(ek), &issuer)),
            ),
            ..request(ek, ak)
        };
        let pem = std::fs::read_to_string(format!("{FIXTURES}/ak-ecc.pem")).expect("pem");
        let bound = Endorsement {
            ek_fingerprint: area("ek-rsa.pub").fingerprint(),
            ek_algorithm: "rsa".into(),
            certificate_issuer: Some("CN=Plant TPM Vendor EK CA".into()),
            certificate_subject: Some(String::new()),
            authority_fingerprint: Some(hex(
                ring::digest::digest(&ring::digest::SHA256, &ca).as_ref()
            )),
        };
        registry
            .store_attestation_key("gw-1", &pem, Some(bound))
            .await
            .expect("stored");
        let same = registry
            .begin_activation("gw-1", &certified("ek-rsa.pub", "ak-rsa.pub"), true)
            .await;
        assert!(
            same.is_ok(),
            "the same TPM may activate a new key: {same:?}"
        );
        let other = registry
            .begin_activation("gw-1", &certified("ek-ecc.pub", "ak-rsa.pub"), true)
            .await
            .expect_err("another TPM");
        assert!(
            other.to_string().contains("is bound to the TPM with EK"),
            "{other}"
        );
        registry
            .begin_activation("gw-1", &certified("ek-ecc.pub", "ak-rsa.pub"), false)
            .await
            .expect("an admin may");

        // The CA that certified the EK leaves the trusted set: the key opens nothing.
        let settings = fabrik_runtime::config::AttestationSettings::default();
        let gate = registry
            .attestation_gate("gw-1", &settings)
            .await
            .expect("gate");
        assert!(
            gate.as_deref()
                .is_some_and(|r| r.contains("has not attested")),
            "trusted CA, no quote yet: {gate:?}"
        );
        let (other_ca, _) = vendor_ca("Another Vendor EK CA", true);
        registry.set_endorsement_authorities(vec![other_ca]);
        let gate = registry
            .attestation_gate("gw-1", &settings)
            .await
            .expect("gate");
        assert!(
            gate.as_deref()
                .is_some_and(|r| r.contains("is no longer among")),
            "CA withdrawn: {gate:?}"
        );
        registry.set_endorsement_authorities(vec![ca]);

        // A key an operator enrolled is the operator's to replace.
        registry
            .enrol_attestation_key("gw-1", &pem)
            .await
            .expect("enrolled");
        let operator = registry
            .begin_activation("gw-1", &certified("ek-rsa.pub", "ak-rsa.pub"), true)
            .await
            .expect_err("operator's key");
        assert!(operator.to_string().contains("only an admin"), "{operator}");
        // Where every key must come through a certified EK, an operator's key opens nothing.
        let strict = fabrik_runtime::config::AttestationSettings {
            require_endorsement: true,
            ..Default::default()
        };
        let closed = registry
            .attestation_gate("gw-1", &strict)
            .await
            .expect("gate");
        assert!(
            closed.is_some_and(|reason| reason.contains("require_endorsement")),
            "an operator's key under require_endorsement"
        );
    }

    #[test]
    fn vendor_cas_load_from_pem_der_and_directories() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.self_signed(&key).expect("certificate")
        };
        let (first, second, third) = (ca("one"), ca("two"), ca("three"));
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, first.pem() + &second.pem()).expect("write");
        let der = dir.path().join("three.der");
        std::fs::write(&der, third.der()).expect("write");
        assert_eq!(load_authorities(&bundle).expect("bundle").len(), 2);
        assert_eq!(
            load_authorities(&der).expect("der"),
            vec![third.der().to_vec()]
        );
        assert_eq!(load_authorities(dir.path()).expect("directory").len(), 3);
        let junk = dir.path().join("notes.txt");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let e = load_authorities(&junk).expect_err("no certificate");
        assert!(
            e.contains("notes.txt") && e.contains("no certificates"),
            "{e}"
        );
        std::fs::write(&junk, [0x30, 0x03, 1, 2, 3]).expect("write");
        let e = load_authorities(&junk).expect_err("bad DER");
        assert!(e.contains("notes.txt: not an X.509 certificate"), "{e}");
        let missing = load_authorities(&dir.path().join("absent.pem")).expect_err("missing");
        assert!(missing.contains("absent.pem"), "{missing}");
    }
}
