//! `/api/v1/blobs`: clips, images and files stored beside the tables, each named from a row
//! of a table so SQL finds them and pipelines read them (WAV clips as signals).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::{Json, body::Body};
use fabrik_core::blob::WAV_MEDIA_TYPE;
use fabrik_core::wav::{self, WavInfo};
use fabrik_core::{BlobId, BlobRow, Lineage, SourceId, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::Query;

/// Where a blob belongs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BlobTarget {
    /// The table whose row names the blob (e.g. `acoustic`).
    pub table: String,
    /// The device it comes from: the row's `device` tag.
    pub device: String,
    /// The field of the row that holds the blob id (e.g. `mic`): a pipeline naming it as a
    /// signal reads the clip's samples.
    pub signal: String,
    /// When the recording starts, ns since the epoch (default: now).
    pub time: Option<i64>,
}

/// The header of a WAV clip.
#[derive(Debug, Serialize, ToSchema)]
pub struct AudioOut {
    /// Frames per second.
    pub sample_rate: u32,
    /// Channels (pipelines average them into one signal).
    pub channels: u16,
    /// Bits per sample.
    pub bits_per_sample: u16,
    /// Frames in the clip.
    pub frames: u64,
    /// Seconds.
    pub duration_s: f64,
}

/// A stored blob.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlobOut {
    /// `sha256:<hex>`: fetch it from `/api/v1/blobs/{id}`.
    pub id: String,
    /// Bytes stored.
    pub bytes: u64,
    /// Media type.
    pub content_type: String,
    /// The row that names it.
    pub table: String,
    /// The row's device tag.
    pub device: String,
    /// The row's field holding `id`.
    pub signal: String,
    /// The row's time, ns.
    pub time: i64,
    /// The raw-message id of the rows (lineage).
    pub raw_id: u64,
    /// The clip's header, for WAV clips.
    pub audio: Option<AudioOut>,
}

const WAV_TYPES: [&str; 4] = ["audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"];

/// Whether a media type names WAV, parameters aside.
fn is_wav_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    WAV_TYPES.iter().any(|t| essence.eq_ignore_ascii_case(t))
}

/// The clip's header if `bytes` are (or are declared to be) WAV; a WAV Fabrik cannot read is
/// refused, so a pipeline never meets it.
fn audio_header(content_type: &str, bytes: &[u8]) -> Result<Option<WavInfo>, ApiError> {
    if !is_wav_type(content_type) && !wav::looks_like_wav(bytes) {
        return Ok(None);
    }
    wav::wav_info(bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("the body: {e}")))
}

fn name_check(what: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`{what}` must be 1 to 128 characters without control characters"
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/blobs", tag = "write", security(("token" = [])),
    params(BlobTarget),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "the file as it is; `Content-Type` is kept with it (`audio/wav` clips are checked and their header recorded)"),
    responses((status = 201, description = "stored and durable; the row naming it is queryable", body = BlobOut),
              (status = 400, description = "a WAV clip Fabrik cannot read, or a bad table, device or signal; no row stored", body = crate::error::ErrorBody),
              (status = 413, description = "larger than http.max_body_size", body = crate::error::ErrorBody)))]
pub(crate) async fn put_blob(
    State(state): State<ApiState>,
    Query(target): Query<BlobTarget>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BlobOut>), ApiError> {
    name_check("table", &target.table)?;
    name_check("device", &target.device)?;
    name_check("signal", &target.signal)?;
    if target.table.starts_with('_') {
        return Err(ApiError::bad_request(format!(
            "table `{}`: names starting with `_` are Fabrik's own",
            target.table
        )));
    }
    if target.signal == "device" {
        return Err(ApiError::bad_request(
            "`signal` cannot be `device`: that is the row's tag",
        ));
    }
    let limit = state.max_body_size;
    let bytes = crate::body::read_body(&headers, body, limit).await?;
    if bytes.len() > limit {
        return Err(ApiError::too_large(limit));
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the body is empty"));
    }
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let audio = audio_header(declared, &bytes)?;
    // A WAV sent as octet-stream is still a clip; it is served back as one.
    let content_type = match audio {
        Some(_) if !is_wav_type(declared) => WAV_MEDIA_TYPE,
        _ => declared,
    }
    .to_owned();
    let time = target.time.unwrap_or_else(|| Timestamp::now().nanos());
    let row = BlobRow {
        table: target.table.clone(),
        tags: vec![("device".to_owned(), target.device.clone())],
        signal: target.signal.clone(),
        bytes: &bytes,
        content_type: content_type.clone(),
        audio,
        time: Timestamp(time),
    };
    let points = row.points();
    let blobs = state.store.blobs().clone();
    let stored = bytes.to_vec();
    let media = content_type.clone();
    // The blob is durable before the rows naming it are written and acknowledged.
    let pin = tokio::task::spawn_blocking(move || blobs.put(&stored, &media))
        .await
        .map_err(|e| ApiError::from(fabrik_store::StoreError::Internal(e.to_string())))??;
    let id = pin.id().clone();
    let size = bytes.len() as u64;
    let lineage = Lineage {
        source: SourceId::http(),
        raw_id: state.store.next_raw_id(),
        mapping_version: 0,
    };
    let report = state.store.write_points(&points, lineage, "blob").await?;
    // The rows name the blob now: the sweep may judge it by them.
    drop(pin);
    Ok((
        StatusCode::CREATED,
        Json(BlobOut {
            id: id.to_string(),
            bytes: size,
            content_type,
            table: target.table,
            device: target.device,
            signal: target.signal,
            time,
            raw_id: report.raw_id.0,
            audio: audio.map(|a| AudioOut {
                sample_rate: a.sample_rate,
                channels: a.channels,
                bits_per_sample: a.bits_per_sample,
                frames: a.frames,
                duration_s: a.duration_s(),
            }),
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/blobs/{id}", tag = "query", security(("token" = [])),
    params(("id" = String, Path, description = "`sha256:<64 hex digits>`, as a row names it")),
    responses((status = 200, description = "the bytes as stored, with their media type", body = Vec<u8>, content_type = "application/octet-stream"),
              (status = 400, description = "not a blob id", body = crate::error::ErrorBody),
              (status = 404, description = "no such blob", body = crate::error::ErrorBody),
              (status = 503, description = "not on the disk, and the object storage bucket that holds the store's blobs did not answer (decision 0061)", body = crate::error::ErrorBody)))]
pub(crate) async fn get_blob(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = BlobId::parse(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let blob = state.store.blob(&id).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no blob {id}"))
    })?;
    // Blobs are served on the dashboard's origin: a stored HTML or SVG file must never run
    // as a page there, so it is not sniffed, is sandboxed, and is a download unless audio or
    // a raster image.
    let inline = [
        "audio/",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
    ]
    .iter()
    .any(|prefix| blob.content_type.starts_with(prefix));
    let disposition = if inline { "inline" } else { "attachment" };
    Ok((
        [
            (header::CONTENT_TYPE, blob.content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
            (header::CONTENT_DISPOSITION, disposition.to_owned()),
        ],
        blob.bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wav_media_types_are_recognised_with_parameters_and_any_case() {
        for wav in [
            "audio/wav",
            "Audio/X-WAV",
            "audio/wave; codecs=1",
            "audio/vnd.wave",
        ] {
            assert!(is_wav_type(wav), "{wav}");
        }
        for other in ["audio/mpeg", "application/octet-stream", "audio/wavx"] {
            assert!(!is_wav_type(other), "{other}");
        }
    }

    #[test]
    fn a_declared_wav_that_is_not_one_is_refused_and_other_files_pass() {
        assert!(audio_header("audio/wav", b"not a clip").is_err());
        assert!(audio_header("image/png", b"\x89PNG").unwrap().is_none());
        let clip = wav::encode_pcm16(8_000, 1, &[0; 80]);
        let info = audio_header("application/octet-stream", &clip)
            .unwrap()
            .unwrap();
        assert_eq!((info.sample_rate, info.frames), (8_000, 80));
    }
}
