//! WAV clips as pipeline signals: a text field whose values are blob ids (as
//! `POST /api/v1/blobs` writes them) is read as the clips' samples, each at its own rate from
//! the row's time on, so windows, features (`band:` through the FFT) and models take audio and
//! vibration recordings like any other signal.

use datafusion::arrow::array::{Array, Float64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use fabrik_core::BlobId;
use fabrik_store::Store;

use crate::columns::cast_column;

/// The longest clip a pipeline expands (about 83 s at 48 kHz): its samples are held as rows
/// until its windows close, so a longer recording is skipped with a warning; cut it into clips.
pub(crate) const MAX_CLIP_FRAMES: u64 = 4_000_000;

/// One signal's column of a page of rows.
pub(crate) enum SignalColumn {
    /// Numbers (booleans and integers cast to floats).
    Numbers(Float64Array),
    /// Blob ids of clips.
    Clips(StringArray),
}

impl SignalColumn {
    /// The column at `index`: text is read as clip references, everything else as numbers.
    pub(crate) fn of(batch: &RecordBatch, index: usize, signal: &str) -> Result<Self, String> {
        match batch.column(index).data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                cast_column(batch, index, &DataType::Utf8, "did not cast to text")
                    .map(Self::Clips)
                    .map_err(|e| format!("signal `{signal}`: {e}"))
            }
            _ => cast_column(batch, index, &DataType::Float64, "did not cast to floats")
                .map(Self::Numbers)
                .map_err(|e| format!("signal `{signal}` is not numeric: {e}")),
        }
    }
}

/// The time of sample `k` of a clip that starts at `start_ns` and runs at `rate` Hz, exact to
/// the nanosecond (no drift over a long clip).
pub(crate) fn sample_time(start_ns: i64, k: usize, rate: u32) -> i64 {
    let offset = (k as u128 * 1_000_000_000) / u128::from(rate.max(1));
    start_ns.saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
}

/// The samples of the clip `reference` names (channels averaged) and its rate. Text that is
/// not a blob id is an error of the pipeline's definition; a clip that is missing or not a
/// WAV Fabrik reads is skipped with a warning (`None`), so one bad clip does not stop the
/// device's scoring.
pub(crate) async fn clip_samples(
    store: &Store,
    pipeline: &str,
    signal: &str,
    reference: &str,
) -> Result<Option<(u32, Vec<f64>)>, String> {
    let id = BlobId::parse(reference).map_err(|_| {
        format!(
            "signal `{signal}` holds `{}`, which is not a blob id: a text signal names WAV \
             clips stored with POST /api/v1/blobs",
            reference.chars().take(40).collect::<String>()
        )
    })?;
    // From the disk, or from the bucket after a restore (decision 0061).
    let blob = store
        .blob(&id)
        .await
        .map_err(|e| format!("reading clip {id}: {e}"))?;
    // Decoding a clip is blocking work of milliseconds: off the async threads.
    let decoded = tokio::task::spawn_blocking(move || {
        blob.map(|blob| {
            fabrik_core::wav::wav_info(&blob.bytes).and_then(|info| {
                if info.frames > MAX_CLIP_FRAMES {
                    return Err(fabrik_core::CoreError::InvalidWav(format!(
                        "{} frames, more than the {MAX_CLIP_FRAMES} a pipeline reads; cut the \
                     recording into shorter clips",
                        info.frames
                    )));
                }
                fabrik_core::wav::decode_mono(&blob.bytes)
            })
        })
    })
    .await
    .map_err(|e| format!("reading clip {id}: {e}"))?;
    match decoded {
        None => {
            tracing::warn!(pipeline, signal, clip = %id, "Clip skipped: no such blob.");
            Ok(None)
        }
        Some(Ok((info, samples))) => Ok(Some((info.sample_rate, samples))),
        Some(Err(e)) => {
            tracing::warn!(pipeline, signal, clip = %id, error = %e, "Clip skipped.");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_times_do_not_drift_at_rates_that_do_not_divide_a_second() {
        assert_eq!(sample_time(10, 0, 44_100), 10);
        assert_eq!(sample_time(0, 1, 44_100), 22_675);
        assert_eq!(sample_time(0, 44_100 * 60, 44_100), 60_000_000_000);
        assert_eq!(sample_time(5, 16_000, 16_000), 1_000_000_005);
    }
}
