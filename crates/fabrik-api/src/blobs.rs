//! `/api/v1/blobs`: clips, images and files stored beside the tables, each named from a row
//! of a table so SQL finds them and pipelines read them (WAV clips as signals).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, body::Body};
use fabrik_core::blob::WAV_MEDIA_TYPE;
use fabrik_core::wav::{self, WavInfo};
use fabrik_core::{BlobId, BlobRow, Lineage, SourceId, Timestamp};
use fabrik_store::{BlobMeta, ByteRange, RangeRead};
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
              (status = 403, description = "the signed-in user's role is too low, or this is a read-only query node (store.objects.read_only, decision 0079): writes go to the node that owns the bucket prefix", body = crate::error::ErrorBody),
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
    // Before the blob reaches the disk: a read-only node would keep it with no row naming it.
    state.store.check_writable()?;
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
    state.written("/api/v1/blobs", &report);
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
    params(("id" = String, Path, description = "`sha256:<64 hex digits>`, as a row names it"),
           ("Range" = Option<String>, Header, description = "One range of bytes (`bytes=0-1023`, `bytes=1024-`, `bytes=-512`), as players of audio and video ask for them. Several ranges, or one that cannot be parsed, are ignored and the whole blob is sent (RFC 9110 §14.2)."),
           ("If-Range" = Option<String>, Header, description = "The ETag the client holds: the range is sent only if it still names this blob, else the whole blob"),
           ("If-None-Match" = Option<String>, Header, description = "ETags the client holds: 304 if one is this blob's")),
    responses((status = 200, description = "the bytes as stored, with their media type; `ETag` is the blob id, quoted", body = Vec<u8>, content_type = "application/octet-stream"),
              (status = 206, description = "the range asked for, with `Content-Range`", body = Vec<u8>, content_type = "application/octet-stream"),
              (status = 304, description = "the client's copy (`If-None-Match`) is this blob"),
              (status = 400, description = "not a blob id", body = crate::error::ErrorBody),
              (status = 404, description = "no such blob", body = crate::error::ErrorBody),
              (status = 416, description = "the range names no byte of the blob; `Content-Range: bytes */<length>`", body = crate::error::ErrorBody),
              (status = 503, description = "not on the disk, and the object storage bucket that holds the store's blobs did not answer, or holds other bytes under the blob's name (decisions 0061, 0065)", body = crate::error::ErrorBody),
              (status = 507, description = "not on the disk, and the disk has no room to copy it back from the bucket (decision 0065)", body = crate::error::ErrorBody)))]
pub(crate) async fn get_blob(
    State(state): State<ApiState>,
    Query(_options): Query<crate::control::NoOptions>,
    Path(id): Path<String>,
    method: Method,
    request: HeaderMap,
) -> Result<Response, ApiError> {
    let id = BlobId::parse(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no blob {id}"));
    // The id is the hash of the bytes: a strong validator that never changes.
    let etag = format!("\"{id}\"");
    let header_text = |name| {
        request
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, header_value(&etag)?);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Cached, but asked about each time: an erased blob must stop being served (GDPR), and
    // a revalidation costs a 304 without the bytes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    if header_text(header::IF_NONE_MATCH).is_some_and(|tags| any_tag_matches(tags, &etag)) {
        state.store.blob_meta(&id).await?.ok_or_else(not_found)?;
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    if method == Method::HEAD {
        // The length without reading the bytes, from the bucket too.
        let meta = state.store.blob_meta(&id).await?.ok_or_else(not_found)?;
        describe(&mut headers, &meta.content_type)?;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.length));
        return Ok((StatusCode::OK, headers).into_response());
    }
    let range = header_text(header::RANGE)
        .and_then(parse_range)
        .filter(|_| header_text(header::IF_RANGE).is_none_or(|tag| tag.trim() == etag));
    let range_text = header_text(header::RANGE).unwrap_or_default().to_owned();
    let unsatisfiable = |mut headers: HeaderMap, meta: &BlobMeta| {
        headers.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes */{}", meta.length))?,
        );
        let mut answer = ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!(
                "the range `{range_text}` names no byte of blob {id}, which is {} bytes long",
                meta.length
            ),
        )
        .into_response();
        answer.headers_mut().extend(headers);
        Ok(answer)
    };
    // Streamed, so a long recording is never held in memory: a whole read from the disk's
    // file (a blob only the bucket holds is copied back to the disk first, checked against its
    // id as it is written); a range from the disk's file, else from the bucket alone.
    let Some(range) = range else {
        let (file, meta) = state
            .store
            .fetch_blob_file(&id)
            .await?
            .ok_or_else(not_found)?;
        describe(&mut headers, &meta.content_type)?;
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.length));
        let body = crate::body::file_body(tokio::fs::File::from_std(file));
        return Ok((StatusCode::OK, headers, body).into_response());
    };
    match state
        .store
        .blob_range(&id, range)
        .await?
        .ok_or_else(not_found)?
    {
        RangeRead::Part(part) => {
            describe(&mut headers, &part.meta.content_type)?;
            let content_range = format!(
                "bytes {}-{}/{}",
                part.range.start,
                part.range.end - 1,
                part.meta.length
            );
            headers.insert(header::CONTENT_RANGE, header_value(&content_range)?);
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(part.range.end - part.range.start),
            );
            // A body cut short (the bucket's, or a file's) ends the connection early, so the
            // client sees fewer bytes than Content-Length and never a wrong part.
            let body = Body::from_stream(part.body);
            Ok((StatusCode::PARTIAL_CONTENT, headers, body).into_response())
        }
        RangeRead::Unsatisfiable(meta) => unsatisfiable(headers, &meta),
    }
}

/// The headers that say what a blob is and how a browser may show it. Blobs are served on
/// the dashboard's origin: a stored HTML or SVG file must never run as a page there, so it is
/// not sniffed, is sandboxed, and is a download unless audio or a raster image.
fn describe(headers: &mut HeaderMap, content_type: &str) -> Result<(), ApiError> {
    let inline = [
        "audio/",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
    ]
    .iter()
    .any(|prefix| content_type.starts_with(prefix));
    headers.insert(header::CONTENT_TYPE, header_value(content_type)?);
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static(if inline { "inline" } else { "attachment" }),
    );
    Ok(())
}

fn header_value(text: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(text).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("header `{text}`: {e}"),
        )
    })
}

/// The one byte range a `Range` header names, or `None` when it is to be ignored and the
/// whole blob sent: another unit, several ranges (allowed by RFC 9110 §14.2, and simpler for
/// clients than a multipart answer), or a value that does not parse.
fn parse_range(value: &str) -> Option<ByteRange> {
    let (unit, set) = value.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = set
        .split(',')
        .map(str::trim)
        .filter(|spec| !spec.is_empty());
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let position = |digits: &str| {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // More digits than a u64 holds still name a position past any blob's end.
        Some(digits.parse::<u64>().unwrap_or(u64::MAX))
    };
    if first.is_empty() {
        return Some(ByteRange::Suffix(position(last)?));
    }
    let first = position(first)?;
    if last.is_empty() {
        return Some(ByteRange::From { first, last: None });
    }
    let last = position(last)?;
    (last >= first).then_some(ByteRange::From {
        first,
        last: Some(last),
    })
}

/// Whether an `If-None-Match` list names `etag` (weak comparison, RFC 9110 §13.1.2), or is `*`.
fn any_tag_matches(tags: &str, etag: &str) -> bool {
    tags.split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_range_is_read_from_a_range_header_and_the_rest_is_ignored() {
        let from = |first, last| Some(ByteRange::From { first, last });
        assert_eq!(parse_range("bytes=0-499"), from(0, Some(499)));
        assert_eq!(parse_range("Bytes = 500- "), from(500, None));
        assert_eq!(parse_range("bytes=-512"), Some(ByteRange::Suffix(512)));
        assert_eq!(parse_range("bytes=, 7-7 ,"), from(7, Some(7)));
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999"),
            from(0, Some(u64::MAX))
        );
        for ignored in [
            "bytes=0-1,4-5",
            "bytes=5-4",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1",
            "items=0-1",
            "0-1",
            "bytes=",
        ] {
            assert_eq!(parse_range(ignored), None, "{ignored}");
        }
    }

    #[test]
    fn ranges_resolve_against_the_blob_length() {
        let from = |first, last| ByteRange::From { first, last };
        assert_eq!(from(0, Some(499)).resolve(100), Some(0..100));
        assert_eq!(from(10, None).resolve(100), Some(10..100));
        assert_eq!(from(99, Some(99)).resolve(100), Some(99..100));
        assert_eq!(from(100, None).resolve(100), None);
        assert_eq!(from(0, Some(u64::MAX)).resolve(100), Some(0..100));
        assert_eq!(ByteRange::Suffix(30).resolve(100), Some(70..100));
        assert_eq!(ByteRange::Suffix(300).resolve(100), Some(0..100));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(ByteRange::Suffix(5).resolve(0), None);
        assert_eq!(from(0, None).resolve(0), None);
    }

    #[test]
    fn if_none_match_compares_weakly_and_takes_a_star() {
        let etag = "\"sha256:ab\"";
        assert!(any_tag_matches("\"x\", W/\"sha256:ab\"", etag));
        assert!(any_tag_matches("*", etag));
        assert!(!any_tag_matches("\"sha256:abc\"", etag));
        assert!(!any_tag_matches("sha256:ab", etag));
    }

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
