//! Device attestation over HTTP (decisions 0050, 0053): operators enrol devices' TPM attestation
//! keys and set each device type's reference PCR values; a device (with its own id and token,
//! HTTP Basic) or an operator activates its key through the TPM's endorsement key, asks for a
//! challenge and sends the TPM's quote back.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use fabrik_registry::attestation::{
    ActivationChallenge, ActivationProof, ActivationRequest, AttestationPolicy, AttestationRecord,
    AttestationStatus, Challenge, DeviceEventLog, DeviceImaLog, EnrolledKey, Evidence, PolicyBody,
    RuntimePolicy, RuntimePolicyAddition,
};
use fabrik_registry::{AuditEvent, Registry, RegistryError, Role};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::Auth;
use crate::devices::registry;
use crate::error::ApiError;

/// A key to enrol.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    /// The attestation key's public part, PEM (`tpm2_createak … -f pem -u ak.pem`).
    pub public_key: String,
}

/// Who calls a device's own attestation routes.
enum Caller {
    /// The device, by its id and token.
    Device,
    /// An admin (or the admin token) acting for it, e.g. a provisioning station.
    Admin(String),
}

impl Caller {
    fn name(&self, device: &str) -> String {
        match self {
            Self::Device => device.to_owned(),
            Self::Admin(name) => name.clone(),
        }
    }
}

/// The device itself (HTTP Basic: its id and token) or an admin. Another device's credentials
/// are refused like wrong ones, so ids cannot be probed.
async fn caller(
    state: &ApiState,
    registry: &Registry,
    headers: &HeaderMap,
    id: &str,
) -> Result<Caller, ApiError> {
    if let Some(identity) = state.auth.identify(headers, None) {
        if identity.role == Role::Admin {
            return Ok(Caller::Admin(identity.name));
        }
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a device's attestation is answered by the device itself or an admin; `{}` is {}",
                identity.name,
                identity.role.as_str()
            ),
        ));
    }
    match Auth::basic_credentials(headers) {
        Some((user, token)) if user == id => match registry.authenticate(&user, &token).await {
            Ok(_) => Ok(Caller::Device),
            Err(RegistryError::BadCredentials) => Err(ApiError::unauthorized_because(
                "unknown device or wrong token",
            )),
            Err(e) => Err(e.into()),
        },
        _ => Err(ApiError::unauthorized_because(
            "send the device's id and token as HTTP Basic credentials, or an admin token",
        )),
    }
}

/// Records a device-called request in the audit log (these routes bypass the API's
/// middleware, which records the rest): done, failed or refused.
async fn audit(state: &ApiState, actor: String, action: &str, id: &str, status: StatusCode) {
    let event = AuditEvent {
        actor,
        action: action.to_owned(),
        target: format!("/api/v1/devices/{id}/attestation"),
        status: status.as_u16(),
    };
    if status.is_success() {
        crate::audit::record(state, event).await;
    } else {
        crate::audit::record_refusal(state, event).await;
    }
}

/// [`caller`], with a refusal audited under the name the request claimed; tells the device
/// from an admin.
async fn authorised_caller(
    state: &ApiState,
    registry: &Registry,
    headers: &HeaderMap,
    id: &str,
    action: &str,
) -> Result<Caller, ApiError> {
    match caller(state, registry, headers, id).await {
        Ok(who) => Ok(who),
        Err(e) => {
            let claimed = state
                .auth
                .identify(headers, None)
                .map(|i| i.name)
                .or_else(|| Auth::basic_credentials(headers).map(|(user, _)| user))
                .unwrap_or_else(|| "unknown".into());
            audit(state, claimed, action, id, e.status()).await;
            Err(e)
        }
    }
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/attestation/challenge", tag = "attestation",
    security(("token" = []), ("device" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, description = "a nonce for the device's next quote, good for 5 minutes", body = Challenge),
              (status = 401, description = "neither the device's credentials nor an admin token", body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn challenge(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Challenge>, ApiError> {
    const ACTION: &str = "POST /api/v1/devices/{id}/attestation/challenge";
    let registry = registry(&state)?;
    let who = authorised_caller(&state, registry, &headers, &id, ACTION).await?;
    let by_device = matches!(who, Caller::Device);
    let challenge = registry.attestation_challenge(&id, by_device).await;
    audited(&state, who.name(&id), ACTION, &id, challenge).await
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/attestation/evidence", tag = "attestation",
    security(("token" = []), ("device" = [])),
    params(("id" = String, Path, description = "device id")), request_body = Evidence,
    responses((status = 200, description = "the quote passed: the device may connect for `[attestation] max_age`", body = AttestationRecord),
              (status = 400, description = "malformed evidence, or no key enrolled (not recorded)", body = crate::error::ErrorBody),
              (status = 403, description = "the quote failed (recorded); the message names every reason", body = crate::error::ErrorBody)))]
pub(crate) async fn evidence(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    crate::extract::Json(evidence): crate::extract::Json<Evidence>,
) -> Result<Json<AttestationRecord>, ApiError> {
    const ACTION: &str = "POST /api/v1/devices/{id}/attestation/evidence";
    let registry = registry(&state)?;
    let caller = authorised_caller(&state, registry, &headers, &id, ACTION).await?;
    let by_device = matches!(caller, Caller::Device);
    let who = caller.name(&id);
    let record = match registry.attest(&id, &evidence, by_device).await {
        Ok(record) => record,
        Err(e) => {
            let e = ApiError::from(e);
            audit(&state, who, ACTION, &id, e.status()).await;
            return Err(e);
        }
    };
    if record.passed {
        metrics::counter!("fabrik_attestations_total", "verdict" => "passed").increment(1);
        tracing::info!(device = %id, boot = record.reset_count, "Device attested.");
        audit(&state, who, ACTION, &id, StatusCode::OK).await;
        return Ok(Json(record));
    }
    metrics::counter!("fabrik_attestations_total", "verdict" => "failed").increment(1);
    let reasons = record.reasons.join("; ");
    tracing::warn!(device = %id, authentic = record.authentic, reasons = %reasons, "Device attestation failed.");
    audit(&state, who, ACTION, &id, StatusCode::FORBIDDEN).await;
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "attestation_failed",
        format!("attestation of `{id}` failed: {reasons}"),
    ))
}

/// Runs a device-called step and audits its outcome under the caller's name.
async fn audited<T>(
    state: &ApiState,
    who: String,
    action: &str,
    id: &str,
    outcome: Result<T, RegistryError>,
) -> Result<Json<T>, ApiError> {
    let outcome = outcome.map_err(ApiError::from);
    let status = outcome
        .as_ref()
        .map_or_else(ApiError::status, |_| StatusCode::OK);
    audit(state, who, action, id, status).await;
    outcome.map(Json)
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/attestation/activation", tag = "attestation",
    security(("token" = []), ("device" = [])),
    params(("id" = String, Path, description = "device id")), request_body = ActivationRequest,
    responses((status = 200, description = "a credential for the device's TPM to activate within 5 minutes", body = ActivationChallenge),
              (status = 400, description = "an EK or AK that is not one, or no EK certificate where one is needed", body = crate::error::ErrorBody),
              (status = 403, description = "an EK certificate no trusted TPM vendor CA issued, or a device bound to another TPM", body = crate::error::ErrorBody)))]
pub(crate) async fn begin_activation(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    crate::extract::Json(request): crate::extract::Json<ActivationRequest>,
) -> Result<Json<ActivationChallenge>, ApiError> {
    const ACTION: &str = "POST /api/v1/devices/{id}/attestation/activation";
    let registry = registry(&state)?;
    let who = authorised_caller(&state, registry, &headers, &id, ACTION).await?;
    let by_device = matches!(who, Caller::Device);
    let outcome = registry.begin_activation(&id, &request, by_device).await;
    if let Err(e) = &outcome {
        tracing::warn!(device = %id, error = %e, "Attestation key activation refused.");
    }
    audited(&state, who.name(&id), ACTION, &id, outcome).await
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/attestation/activation/{activation}", tag = "attestation",
    security(("token" = []), ("device" = [])),
    params(("id" = String, Path, description = "device id"), ("activation" = String, Path, description = "the activation's id")),
    request_body = ActivationProof,
    responses((status = 200, description = "the key is enrolled, bound to the TPM's endorsement key", body = EnrolledKey),
              (status = 400, description = "an unknown, used or expired activation", body = crate::error::ErrorBody),
              (status = 403, description = "the secret does not match: the key is not in that TPM", body = crate::error::ErrorBody)))]
pub(crate) async fn finish_activation(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, activation)): Path<(String, String)>,
    crate::extract::Json(proof): crate::extract::Json<ActivationProof>,
) -> Result<Json<EnrolledKey>, ApiError> {
    const ACTION: &str = "POST /api/v1/devices/{id}/attestation/activation/{activation}";
    let registry = registry(&state)?;
    let who = authorised_caller(&state, registry, &headers, &id, ACTION).await?;
    let by_device = matches!(who, Caller::Device);
    let outcome = registry
        .finish_activation(&id, &activation, &proof, by_device)
        .await;
    match &outcome {
        Ok(key) => {
            tracing::info!(device = %id, key = %key.fingerprint, "Attestation key activated through the TPM's endorsement key.")
        }
        Err(e) => tracing::warn!(device = %id, error = %e, "Attestation key activation failed."),
    }
    audited(&state, who.name(&id), ACTION, &id, outcome).await
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/attestation", tag = "attestation", security(("token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, description = "whether it may connect, why, its key and newest verdicts", body = AttestationStatus),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn status(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AttestationStatus>, ApiError> {
    Ok(Json(
        registry(&state)?
            .attestation_status(&id, &state.attestation, 20)
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/attestation/event-log", tag = "attestation", security(("token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, description = "the measured-boot events of its newest quote whose event log replayed to the PCRs the TPM signed", body = DeviceEventLog),
              (status = 404, description = "no such device, or it has sent no event log that replayed", body = crate::error::ErrorBody)))]
pub(crate) async fn event_log(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceEventLog>, ApiError> {
    registry(&state)?
        .device_event_log(&id)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "device `{id}` has sent no event log that replayed to an authentic quote (`fabrik device attestation quote` sends the boot's log when it can read it)"
                ),
            )
        })
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/attestation/ima-log", tag = "attestation", security(("token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 200, description = "the files its kernel's IMA measured, as covered by its newest authentic quote whose IMA log replayed to PCR 10 (decision 0067)", body = DeviceImaLog),
              (status = 404, description = "no such device, or it has sent no IMA log that replayed", body = crate::error::ErrorBody)))]
pub(crate) async fn ima_log(
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceImaLog>, ApiError> {
    registry(&state)?
        .device_ima_log(&id)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "device `{id}` has sent no IMA log that replayed to an authentic quote (`fabrik device attestation quote --ima-log`)"
                ),
            )
        })
}

#[utoipa::path(put, path = "/api/v1/devices/{id}/attestation/key", tag = "attestation", security(("token" = [])),
    params(("id" = String, Path, description = "device id")), request_body = KeyBody,
    responses((status = 200, description = "enrolled: from now on the device must attest to connect", body = EnrolledKey),
              (status = 400, description = "not a P-256, P-384 or RSA (2048+) public key in PEM", body = crate::error::ErrorBody),
              (status = 403, description = "`[attestation] require_endorsement`: keys are enrolled only through their TPM's endorsement key", body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn enrol_key(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
    crate::extract::Json(body): crate::extract::Json<KeyBody>,
) -> Result<Json<EnrolledKey>, ApiError> {
    if state.attestation.require_endorsement {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this node takes only attestation keys activated through their TPM's certified endorsement key ([attestation] require_endorsement): run `fabrik device attestation activate {id}` on the device"
            ),
        ));
    }
    Ok(Json(
        registry(&state)?
            .enrol_attestation_key(&id, &body.public_key)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}/attestation/key", tag = "attestation", security(("token" = [])),
    params(("id" = String, Path, description = "device id")),
    responses((status = 204, description = "removed: the device need not attest (unless `[attestation] required`)"),
              (status = 400, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn remove_key(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    registry(&state)?.remove_attestation_key(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/attestation/policies", tag = "attestation", security(("token" = [])),
    responses((status = 200, description = "reference PCR values by device type (without the reference devices' event logs: `GET` one type for its log)", body = Vec<AttestationPolicy>)))]
pub(crate) async fn policies(
    State(state): State<ApiState>,
) -> Result<Json<Vec<AttestationPolicy>>, ApiError> {
    Ok(Json(registry(&state)?.attestation_policies().await?))
}

#[utoipa::path(get, path = "/api/v1/attestation/policies/{device_type}", tag = "attestation", security(("token" = [])),
    params(("device_type" = String, Path, description = "device type")),
    responses((status = 200, body = AttestationPolicy), (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn policy(
    State(state): State<ApiState>,
    Path(device_type): Path<String>,
) -> Result<Json<AttestationPolicy>, ApiError> {
    registry(&state)?
        .attestation_policy_with_log(&device_type)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("device type `{device_type}` has no attestation policy"),
            )
        })
}

#[utoipa::path(put, path = "/api/v1/attestation/policies/{device_type}", tag = "attestation", security(("token" = [])),
    params(("device_type" = String, Path, description = "device type")), request_body = PolicyBody,
    responses((status = 200, description = "set, or with `merge` added to; quotes are held against it from now on, and a pass it no longer admits (a withdrawn digest) closes the device's way in", body = AttestationPolicy),
              (status = 400, description = "a PCR index or value that cannot be, a measured PCR outside 0-9 or one of 0-7 newly measured with no allowed digest, a merge that would stop measuring a PCR with allowed digests, a digest to revoke that is not allowed, or a device with no quote or log to copy", body = crate::error::ErrorBody),
              (status = 404, description = "`merge` into a type that has no policy", body = crate::error::ErrorBody),
              (status = 409, description = "the policy kept changing under concurrent changes (each is retried on the newer policy first)", body = crate::error::ErrorBody)))]
pub(crate) async fn set_policy(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(device_type): Path<String>,
    crate::extract::Json(body): crate::extract::Json<PolicyBody>,
) -> Result<Json<AttestationPolicy>, ApiError> {
    Ok(Json(
        registry(&state)?
            .set_attestation_policy(&device_type, body)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/attestation/policies/{device_type}", tag = "attestation", security(("token" = [])),
    params(("device_type" = String, Path, description = "device type")),
    responses((status = 204, description = "removed: no device of the type can pass until one is set"),
              (status = 404, description = "the type has no policy", body = crate::error::ErrorBody)))]
pub(crate) async fn remove_policy(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(device_type): Path<String>,
) -> Result<StatusCode, ApiError> {
    registry(&state)?
        .remove_attestation_policy(&device_type)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/attestation/policies/{device_type}/runtime", tag = "attestation", security(("token" = [])),
    params(("device_type" = String, Path, description = "device type")),
    responses((status = 200, description = "the files the type's IMA may measure, by path and digest (decision 0067)", body = RuntimePolicy),
              (status = 404, body = crate::error::ErrorBody)))]
pub(crate) async fn runtime_policy(
    State(state): State<ApiState>,
    Path(device_type): Path<String>,
) -> Result<Json<RuntimePolicy>, ApiError> {
    registry(&state)?
        .runtime_policy(&device_type)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("device type `{device_type}` has no runtime policy"),
            )
        })
}

#[utoipa::path(put, path = "/api/v1/attestation/policies/{device_type}/runtime", tag = "attestation", security(("token" = [])),
    params(("device_type" = String, Path, description = "device type")), request_body = RuntimePolicy,
    responses((status = 200, description = "set (replacing the type's runtime policy): the type's quotes must come with an IMA log that replays to PCR 10 and whose files it allows, from the next quote on", body = RuntimePolicy),
              (status = 400, description = "a path that is not absolute, a path with no digest, or a digest that is not one (each named)", body = crate::error::ErrorBody)))]
pub(crate) async fn set_runtime_policy(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(device_type): Path<String>,
    crate::extract::Json(body): crate::extract::Json<RuntimePolicy>,
) -> Result<Json<RuntimePolicy>, ApiError> {
    Ok(Json(
        registry(&state)?
            .set_runtime_policy(&device_type, body)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/attestation/policies/{device_type}/runtime/merge", tag = "attestation", security(("token" = [])),
    params(("device_type" = String, Path, description = "device type")), request_body = RuntimePolicyAddition,
    responses((status = 200, description = "added to the type's runtime policy (made, violations failing, when it had none); returns it as stored", body = RuntimePolicy),
              (status = 400, description = "a path, digest or exclude that is not one (each named), or a `from_device` that is unknown or has sent no IMA log that replayed", body = crate::error::ErrorBody),
              (status = 409, description = "the policy kept changing while this change was made", body = crate::error::ErrorBody)))]
pub(crate) async fn merge_runtime_policy(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(device_type): Path<String>,
    crate::extract::Json(body): crate::extract::Json<RuntimePolicyAddition>,
) -> Result<Json<RuntimePolicy>, ApiError> {
    Ok(Json(
        registry(&state)?
            .add_to_runtime_policy(&device_type, body)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/attestation/policies/{device_type}/runtime", tag = "attestation", security(("token" = [])),
    params(("device_type" = String, Path, description = "device type")),
    responses((status = 204, description = "removed: the type's IMA logs are only checked to replay"),
              (status = 404, description = "the type has no runtime policy", body = crate::error::ErrorBody)))]
pub(crate) async fn remove_runtime_policy(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Path(device_type): Path<String>,
) -> Result<StatusCode, ApiError> {
    registry(&state)?
        .remove_runtime_policy(&device_type)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
