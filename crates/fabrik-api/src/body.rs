//! Request bodies (the size limits, gzip, UTF-8 checks, and the reused buffers that the
//! line-protocol write endpoints read their bodies into) and answers streamed from files.

use std::borrow::Cow;
use std::io::Read;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use fabrik_store::pool::BufferPool;
use futures::StreamExt;

use crate::error::ApiError;

/// The most a request may carry on the wire for a body limit of `limit` after decompression:
/// compressed bodies are limited after decompression, in [`body_text`]; this bounds what
/// arrives (a little headroom over the limit so gzip overhead still fits).
pub(crate) fn wire_limit(limit: usize) -> usize {
    limit.saturating_add(limit / 8).saturating_add(1024)
}

/// An answer's body streamed from `file` (or a part of one), [`fabrik_store::FILE_CHUNK`] at a
/// time.
pub(crate) fn file_body(file: impl tokio::io::AsyncRead + Send + 'static) -> Body {
    Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        fabrik_store::FILE_CHUNK,
    ))
}

/// Body buffers: 4 kept, up to 4 MiB each (a 5,000-line write is about 1 MB).
static BODIES: BufferPool = BufferPool::new(4, 4 << 20);

/// A request body in a buffer that goes back to the pool when dropped.
pub(crate) struct PooledBody(Vec<u8>);

impl std::ops::Deref for PooledBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        BODIES.give(std::mem::take(&mut self.0));
    }
}

/// Reads a whole body into a reused buffer, answering 413 past [`wire_limit`]`(limit)`.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<PooledBody, ApiError> {
    let wire = wire_limit(limit);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > wire) {
        return Err(ApiError::too_large(limit));
    }
    let mut buffer = PooledBody(BODIES.take());
    buffer.0.reserve(declared.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if buffer.0.len() + chunk.len() > wire {
            return Err(ApiError::too_large(limit));
        }
        buffer.0.extend_from_slice(&chunk);
    }
    Ok(buffer)
}

/// Decompresses (gzip) and decodes a body as UTF-8, enforcing the size limit on the result.
/// An uncompressed body is borrowed, not copied.
pub(crate) fn body_text<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
    limit: usize,
) -> Result<Cow<'a, str>, ApiError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let raw: Cow<'a, [u8]> = match encoding.as_deref() {
        None | Some("") | Some("identity") => {
            if body.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            Cow::Borrowed(body)
        }
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            let decoder = flate2::read::MultiGzDecoder::new(body);
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::bad_request(format!("body is not valid gzip: {e}")))?;
            if out.len() > limit {
                return Err(ApiError::too_large(limit));
            }
            Cow::Owned(out)
        }
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding `{other}` is not supported; use gzip or none"),
            ));
        }
    };
    let not_utf8 = |bytes: &[u8], e: std::str::Utf8Error| {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        ApiError::bad_request(format!(
            "body is not valid UTF-8 at byte {at} (line {line})"
        ))
    };
    match raw {
        Cow::Borrowed(bytes) => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|e| not_utf8(bytes, e)),
        Cow::Owned(bytes) => String::from_utf8(bytes)
            .map(Cow::Owned)
            .map_err(|e| not_utf8(e.as_bytes(), e.utf8_error())),
    }
}
