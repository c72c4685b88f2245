//! `/api/v1/setpoints` and `/api/v1/devices/{id}/setpoints/{signal}` (decision 0090): the
//! points operators may set on devices, and setting one. Nothing is writable unless a
//! connector's configuration declares it; a write is an operator's act, recorded in the audit
//! log with its value and outcome, and stored as a row of `_device_writes` (who, what, what the
//! device read back) so that a change in the data can be traced to the write that caused it.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use fabrik_core::{Lineage, Point, Quality, SourceId, Timestamp, Value};
use fabrik_registry::AuditEvent;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::ApiError;

/// The table every write to a device is stored in.
pub const DEVICE_WRITES_TABLE: &str = "_device_writes";
/// The field of [`DEVICE_WRITES_TABLE`] that names who wrote, and the one with their words.
pub const ACTOR: &str = "actor";
/// See [`ACTOR`].
pub const NOTE: &str = "note";
/// The field of [`DEVICE_WRITES_TABLE`] naming the alert whose proposed action a write applied
/// (decision 0092).
pub const ALERT: &str = "alert";
/// The fields of [`DEVICE_WRITES_TABLE`] that hold a text write's value and the text read back
/// (decision 0095); numbers and switches are in `value` and `read_back`.
pub const TEXT: &str = "text";
/// See [`TEXT`].
pub const READ_BACK_TEXT: &str = "read_back_text";
/// The longest `note` kept with a write.
const MAX_NOTE: usize = 500;

/// A point operators may set.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Setpoint {
    /// Device id.
    pub device: String,
    /// Signal (point) name.
    pub signal: String,
    /// The connector that writes it: `modbus`, `opcua` or `sparkplug`.
    pub protocol: String,
    /// Where on the device: `holding 20..21`, `coil 0..1`, an OPC UA node id, a Sparkplug
    /// command topic with the metric's alias.
    pub address: String,
    /// Its type as configured (`u16`, `f32`, `bool`, `string`, ...); for OPC UA, the node's
    /// `DataType` as read when its server's session connected (`Double`, `Boolean`, `String`),
    /// or `node` until then or for a custom type (each write reads the type again); for
    /// Sparkplug, the type the node's birth declares (`birth` until one is seen). Points of
    /// type `string`, `String` or `Text` take text.
    pub data_type: String,
    /// Lowest value a write may set, in engineering units (numbers only).
    pub min: Option<f64>,
    /// Highest value a write may set, in engineering units (numbers only).
    pub max: Option<f64>,
    /// Where `min` and `max` come from: `configuration`; `device`, the range the device
    /// declares for the point (an OPC UA node's `EURange`, decision 0094); `configuration
    /// and device`, the configured range narrowed by the declared one; or `configuration
    /// outside the device's`, a configured range the declared one does not overlap, so that
    /// every write is refused. `null` for switches and for points whose range is not known
    /// yet.
    pub range_from: Option<String>,
    /// Engineering unit: the configuration's, else the one the device declares (an OPC UA
    /// node's `EngineeringUnits`).
    pub unit: Option<String>,
}

/// Whether a point of `data_type` (as [`Setpoint::data_type`] names it) takes text: a Modbus
/// `string`, an OPC UA `String` node, a Sparkplug `String` or `Text` metric (decision 0095).
pub fn takes_text(data_type: &str) -> bool {
    matches!(data_type, "string" | "String" | "Text")
}

/// A value to set: a number in engineering units, true/false for a switch, or a string for
/// a text point (decision 0095).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SetpointValue {
    /// For switches (coils, `bool` registers).
    Bool(bool),
    /// For numbers.
    Number(f64),
    /// For text points (a Modbus `string`, an OPC UA `String` node, a Sparkplug `String` or
    /// `Text` metric), at most 1000 characters.
    Text(String),
}

impl std::fmt::Display for SetpointValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bool(v) => write!(f, "{v}"),
            Self::Number(v) => write!(f, "{v}"),
            // Quoted: the audit entry tells the text "7" from the number 7.
            Self::Text(v) => write!(f, "{v:?}"),
        }
    }
}

/// `POST /api/v1/devices/{id}/setpoints/{signal}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRequest {
    /// The value to set.
    pub value: SetpointValue,
    /// Why (a work order, a shift note): kept with the write (at most 500 characters).
    #[serde(default)]
    pub note: Option<String>,
}

/// A write the device answered.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SetpointWritten {
    /// Device id.
    pub device: String,
    /// Signal name.
    pub signal: String,
    /// The value asked for.
    pub value: SetpointValue,
    /// The point's value read back from the device after the write (a number, true/false, a
    /// string); null when it could not be read back (see `read_back_error`).
    #[schema(value_type = Object)]
    pub read_back: serde_json::Value,
    /// Why the point could not be read back after the device acknowledged the write (a
    /// write-only register, a read that timed out): the write was made, but is not confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_back_error: Option<String>,
    /// Whether the device holds exactly what was written. False when it answered the write
    /// but kept a value of its own (a drive that clamps its setpoint, a PLC program that
    /// overwrites the register), or when it could not be read back.
    pub confirmed: bool,
    /// When the device answered (RFC 3339).
    pub time: String,
}

/// Why a write was not carried out (or not as asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetpointError {
    /// No such device among the connectors'.
    UnknownDevice(String),
    /// The point is not declared writable (or does not exist): nothing is by default.
    NotWritable(String),
    /// The value is not one the point may take; nothing was sent.
    Invalid(String),
    /// Too many writes wait for the device; nothing was sent.
    Busy(String),
    /// The device cannot be reached; nothing was sent.
    Unavailable(String),
    /// The device refused the write (a protocol exception) or the connection broke during
    /// it: the write may not have been applied.
    DeviceFailed(String),
    /// No answer in time: whether the device applied it is unknown.
    Timeout(String),
}

impl SetpointError {
    /// Whether the write may have reached the device (so it is stored as a failed write).
    fn may_have_been_sent(&self) -> bool {
        matches!(self, Self::DeviceFailed(_) | Self::Timeout(_))
    }

    fn message(&self) -> &str {
        match self {
            Self::UnknownDevice(m)
            | Self::NotWritable(m)
            | Self::Invalid(m)
            | Self::Busy(m)
            | Self::Unavailable(m)
            | Self::DeviceFailed(m)
            | Self::Timeout(m) => m,
        }
    }
}

impl From<SetpointError> for ApiError {
    fn from(error: SetpointError) -> Self {
        let (status, code) = match &error {
            SetpointError::UnknownDevice(_) => (StatusCode::NOT_FOUND, "not_found"),
            SetpointError::NotWritable(_) => (StatusCode::FORBIDDEN, "not_writable"),
            SetpointError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"),
            SetpointError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            SetpointError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            SetpointError::DeviceFailed(_) => (StatusCode::BAD_GATEWAY, "device_failed"),
            SetpointError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "device_timeout"),
        };
        ApiError::new(status, code, error.message())
    }
}

/// What the device answered to a write it acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceAnswer {
    /// The point read back after the write, or why it could not be read.
    pub read_back: Result<serde_json::Value, String>,
    /// Whether it holds exactly what was written.
    pub confirmed: bool,
}

/// Sets writable points; the connectors implement it (Modbus, OPC UA and Sparkplug).
pub trait SetpointControl: Send + Sync {
    /// Every writable point.
    fn setpoints(&self) -> Vec<Setpoint>;
    /// Whether `device` is one this connector reads (writable points or not).
    fn serves(&self, device: &str) -> bool;
    /// Checks `value` against the point and writes it.
    fn set(
        &self,
        device: String,
        signal: String,
        value: SetpointValue,
    ) -> BoxFuture<'_, Result<DeviceAnswer, SetpointError>>;
}

fn control(state: &ApiState) -> Result<&Arc<dyn SetpointControl>, ApiError> {
    state.setpoints.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no connector that writes to devices runs in this process (see --target)",
        )
    })
}

#[utoipa::path(get, path = "/api/v1/setpoints", tag = "devices", security(("token" = [])),
    responses((status = 200, description = "every point operators may set, by device", body = [Setpoint])))]
pub(crate) async fn list(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
) -> Json<Vec<Setpoint>> {
    Json(
        state
            .setpoints
            .as_ref()
            .map(|c| c.setpoints())
            .unwrap_or_default(),
    )
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/setpoints/{signal}", tag = "devices", security(("token" = [])),
    params(("id" = String, Path, description = "device id"),
           ("signal" = String, Path, description = "the point")),
    request_body = SetRequest,
    responses((status = 200, description = "written and read back; `confirmed` says whether \
        the device holds what was written (an unreadable read-back is `read_back_error`)", body = SetpointWritten),
              (status = 400, description = "the body is not a value", body = crate::error::ErrorBody),
              (status = 403, description = "not an operator, or the point is not writable", body = crate::error::ErrorBody),
              (status = 404, description = "no such device", body = crate::error::ErrorBody),
              (status = 422, description = "the value is of the wrong kind, outside the \
        point's range or not exactly representable; nothing was sent", body = crate::error::ErrorBody),
              (status = 429, description = "too many writes wait for the device", body = crate::error::ErrorBody),
              (status = 502, description = "the device refused the write or the connection \
        broke during it", body = crate::error::ErrorBody),
              (status = 503, description = "the device cannot be reached, or no connector \
        that writes runs here", body = crate::error::ErrorBody),
              (status = 504, description = "no answer in time: whether the device applied it \
        is unknown", body = crate::error::ErrorBody)))]
pub(crate) async fn set(
    crate::extract::Query(_options): crate::extract::Query<crate::control::NoOptions>,
    State(state): State<ApiState>,
    Extension(identity): Extension<crate::Identity>,
    Path((device, signal)): Path<(String, String)>,
    crate::extract::Json(request): crate::extract::Json<SetRequest>,
) -> Result<(Extension<crate::audit::SelfRecorded>, Json<SetpointWritten>), ApiError> {
    check_note(request.note.as_deref())?;
    write_recorded(
        &state,
        PointWrite {
            actor: identity.name,
            device,
            signal,
            value: request.value,
            note: request.note,
            alert: None,
        },
        "POST /api/v1/devices/{id}/setpoints/{signal}",
    )
    .await
}

/// A note longer than is kept is refused, not cut.
pub(crate) fn check_note(note: Option<&str>) -> Result<(), ApiError> {
    match note {
        Some(note) if note.chars().count() > MAX_NOTE => Err(ApiError::bad_request(format!(
            "`note` has {} characters; at most {MAX_NOTE} are kept",
            note.chars().count()
        ))),
        _ => Ok(()),
    }
}

/// A write a person asked for.
pub(crate) struct PointWrite {
    /// Who.
    pub(crate) actor: String,
    /// The device.
    pub(crate) device: String,
    /// The point.
    pub(crate) signal: String,
    /// The value.
    pub(crate) value: SetpointValue,
    /// Their words.
    pub(crate) note: Option<String>,
    /// The alert whose proposed action this applies (decision 0092).
    pub(crate) alert: Option<String>,
}

/// Writes through the connectors, stores the write as a row of [`DEVICE_WRITES_TABLE`] and
/// records it in the audit log under `action`, the request's own entry; runs to completion, so
/// a client that hangs up does not leave a write made but unrecorded.
pub(crate) async fn write_recorded(
    state: &ApiState,
    write: PointWrite,
    action: &'static str,
) -> Result<(Extension<crate::audit::SelfRecorded>, Json<SetpointWritten>), ApiError> {
    let control = Arc::clone(control(state)?);
    let state = state.clone();
    crate::audit::to_completion(async move {
        let outcome = control
            .set(
                write.device.clone(),
                write.signal.clone(),
                write.value.clone(),
            )
            .await;
        // When the device answered: the row lines up with the change it made in the data.
        let time = Timestamp::now();
        let written = Written {
            actor: &write.actor,
            device: &write.device,
            signal: &write.signal,
            value: &write.value,
            note: write.note.as_deref(),
            alert: write.alert.as_deref(),
            time,
        };
        written.store(&state, &outcome).await;
        written.audit(&state, &outcome, action).await;
        let recorded = Extension(crate::audit::SelfRecorded);
        let answer = outcome.map_err(|e| ApiError::from(e).self_recorded())?;
        let (read_back, read_back_error) = match answer.read_back {
            Ok(value) => (value, None),
            Err(why) => (serde_json::Value::Null, Some(why)),
        };
        Ok((
            recorded,
            Json(SetpointWritten {
                device: write.device,
                signal: write.signal,
                value: write.value,
                read_back,
                read_back_error,
                confirmed: answer.confirmed,
                time: fabrik_alert::model::rfc3339(time.nanos()),
            }),
        ))
    })
    .await?
}

/// One write's record.
struct Written<'a> {
    actor: &'a str,
    device: &'a str,
    signal: &'a str,
    value: &'a SetpointValue,
    note: Option<&'a str>,
    alert: Option<&'a str>,
    time: Timestamp,
}

impl Written<'_> {
    /// A `_device_writes` row, for every write that may have reached the device. A failure to
    /// store it is logged: the device has been written either way, and the audit log has it.
    async fn store(&self, state: &ApiState, outcome: &Result<DeviceAnswer, SetpointError>) {
        let (status, read_back, reason) = match outcome {
            Ok(DeviceAnswer {
                read_back: Err(why),
                ..
            }) => ("unverified", None, Some(why.as_str())),
            Ok(answer) if answer.confirmed => ("confirmed", answer.read_back.as_ref().ok(), None),
            Ok(answer) => ("unconfirmed", answer.read_back.as_ref().ok(), None),
            Err(e) if e.may_have_been_sent() => ("failed", None, Some(e.message())),
            Err(_) => return,
        };
        // `actor` and `note` are fields, not tags: erasing a person (decision 0040) rewrites
        // them in place, which a tag (part of the series' identity) would not allow.
        // Text goes in fields of its own (`text`, `read_back_text`): a column holds one type,
        // and `value` is a number in every row before it.
        let mut fields = vec![
            match self.value {
                SetpointValue::Text(text) => (TEXT.to_owned(), Value::Str(text.clone())),
                // Switches as 1 and 0.
                SetpointValue::Bool(b) => ("value".to_owned(), Value::F64(f64::from(u8::from(*b)))),
                SetpointValue::Number(v) => ("value".to_owned(), Value::F64(*v)),
            },
            (ACTOR.to_owned(), Value::Str(self.actor.to_owned())),
        ];
        match read_back {
            Some(serde_json::Value::String(text)) => {
                fields.push((READ_BACK_TEXT.to_owned(), Value::Str(text.clone())));
            }
            Some(other) => {
                if let Some(number) = json_number(other) {
                    fields.push(("read_back".to_owned(), Value::F64(number)));
                }
            }
            None => {}
        }
        if let Some(note) = self.note {
            fields.push((NOTE.to_owned(), Value::Str(note.to_owned())));
        }
        if let Some(alert) = self.alert {
            fields.push((ALERT.to_owned(), Value::Str(alert.to_owned())));
        }
        if let Some(reason) = reason {
            fields.push(("reason".to_owned(), Value::Str(reason.to_owned())));
        }
        let point = Point {
            measurement: DEVICE_WRITES_TABLE.to_owned(),
            tags: vec![
                ("device".to_owned(), self.device.to_owned()),
                ("signal".to_owned(), self.signal.to_owned()),
                ("status".to_owned(), status.to_owned()),
            ],
            fields,
            time: self.time,
            quality: Quality::Good,
        };
        let lineage = Lineage {
            source: SourceId("api:setpoints".into()),
            raw_id: state.store.next_raw_id(),
            mapping_version: 0,
        };
        if let Err(e) = state
            .store
            .write_points(&[point], lineage, DEVICE_WRITES_TABLE)
            .await
        {
            metrics::counter!("fabrik_device_write_records_failed_total").increment(1);
            tracing::error!(device = self.device, signal = self.signal, error = %e, "Could not store a write to a device.");
        }
    }

    /// The audit entry, naming the value and what became of it.
    async fn audit(
        &self,
        state: &ApiState,
        outcome: &Result<DeviceAnswer, SetpointError>,
        action: &str,
    ) {
        // Messages escaped (one line each); values as `audited` shows them, already escaped.
        let (status, result) = match outcome {
            Ok(DeviceAnswer {
                read_back: Err(why),
                ..
            }) => (
                StatusCode::OK,
                format!("written, but not read back: {}", why.escape_debug()),
            ),
            Ok(DeviceAnswer {
                read_back: Ok(read_back),
                confirmed,
            }) => (
                StatusCode::OK,
                format!(
                    "read back {}{}",
                    match read_back {
                        serde_json::Value::String(text) => audited(text),
                        other => other.to_string(),
                    },
                    if *confirmed {
                        ""
                    } else {
                        ", not what was written"
                    }
                ),
            ),
            Err(e) => (
                ApiError::from(e.clone()).status(),
                e.message().escape_debug().to_string(),
            ),
        };
        crate::audit::record(
            state,
            AuditEvent {
                actor: self.actor.to_owned(),
                action: action.to_owned(),
                target: format!(
                    "{}/{} = {}: {}{}",
                    plain(self.device),
                    plain(self.signal),
                    match self.value {
                        SetpointValue::Text(text) => audited(text),
                        other => other.to_string(),
                    },
                    result,
                    self.alert
                        .map(|a| format!(" (proposed by alert {})", a.escape_debug()))
                        .unwrap_or_default()
                ),
                status: status.as_u16(),
            },
        )
        .await;
    }
}

/// The most characters of a text an audit entry shows. The registry keeps 512 characters of
/// an entry's target, and what became of the write comes after the value (and the text read
/// back): a long text would push it out. The whole text is in `_device_writes`.
const AUDITED_TEXT: usize = 100;

/// A text as an audit entry shows it: quoted and escaped (the text "7" is not the number 7),
/// cut to [`AUDITED_TEXT`] characters once escaped, with the length said.
fn audited(text: &str) -> String {
    let mut shown = String::new();
    let mut shown_chars = 0;
    let mut taken = 0;
    for c in text.chars() {
        let escaped: String = c.to_string().escape_debug().collect();
        let width = escaped.chars().count();
        if shown_chars + width > AUDITED_TEXT {
            break;
        }
        shown.push_str(&escaped);
        shown_chars += width;
        taken += 1;
    }
    let length = text.chars().count();
    if taken == length {
        format!("\"{shown}\"")
    } else {
        format!("\"{shown}\"… ({length} characters)")
    }
}

/// A name from the request's path as the audit entry shows it: control characters escaped and
/// `%`, `/`, spaces, `:` and `=` encoded, so `device/signal = value: outcome` reads one way
/// only.
fn plain(name: &str) -> String {
    name.escape_debug()
        .to_string()
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace(' ', "%20")
        .replace(':', "%3A")
        .replace('=', "%3D")
}

fn json_number(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
        other => other.as_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_entries_quote_text_and_keep_it_short() {
        assert_eq!(audited("Lemon 0.33 l"), r#""Lemon 0.33 l""#);
        assert_eq!(audited("7"), r#""7""#);
        assert_eq!(audited("say \"hi\"\n"), r#""say \"hi\"\n""#);
        let long = "é".repeat(300);
        let shown = audited(&long);
        assert!(
            shown.ends_with("\"… (300 characters)"),
            "the length is said: {shown}"
        );
        assert_eq!(shown.chars().filter(|&c| c == 'é').count(), AUDITED_TEXT);
        // Escapes count: 60 quotes are 120 characters escaped, so 50 are shown.
        let quoted = audited(&"\"".repeat(60));
        assert_eq!(
            quoted,
            format!("\"{}\"… (60 characters)", "\\\"".repeat(50))
        );
    }
}
