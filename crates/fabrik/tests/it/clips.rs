//! WAV clips in a real `fabrik run`: stored durably as blobs with a row naming each, refused
//! whole when unreadable, read back byte for byte after kill -9, and scored by a pipeline whose
//! band features find a whine that the clip's loudness hides.

use crate::mqtt::{eventually, http, query};
use crate::support::{Answer, Process, TOKEN, blocking_query_count, now_ns};

const SECOND: i64 = 1_000_000_000;
const RATE: u32 = 8_000;

/// The pipeline that scores the clips, defined once they are all stored: with `lateness`
/// 0 a pass that finds the table's end moves past every time up to now, so a clip
/// acknowledged after it (an hour old) would be late, by design.
fn acoustic_pipeline() -> serde_json::Value {
    serde_json::json!({
        "name": "acoustic", "table": "acoustic", "signals": ["mic"], "window": "1s",
        "features": ["rms", "band:100-1000", "band:3000-4000"], "training_windows": 20,
        "interval": "200ms", "lateness": "0s", "start": "earliest"
    })
}

/// One second of a pump's sound: a 440 Hz hum with noise; from clip 25 on, a faint 3.5 kHz
/// bearing whine that hardly changes the loudness.
pub(crate) fn clip(index: u32) -> Vec<u8> {
    let mut state = 0x9e37_79b9_u32.wrapping_mul(index + 1);
    let samples: Vec<i16> = (0..RATE)
        .map(|n| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (f64::from(state >> 8) / f64::from(1_u32 << 24) - 0.5) * 0.04;
            let t = f64::from(n) / f64::from(RATE);
            let hum =
                (0.3 + 0.002 * f64::from(index % 7)) * (std::f64::consts::TAU * 440.0 * t).sin();
            let whine = if index >= 25 {
                0.05 * (std::f64::consts::TAU * 3_500.0 * t).sin()
            } else {
                0.0
            };
            ((hum + noise + whine) * 32_767.0) as i16
        })
        .collect();
    fabrik_core::wav::encode_pcm16(RATE, 1, &samples)
}

/// POSTs a blob; returns the status and the JSON answer.
pub(crate) fn post_blob(
    url: &str,
    query: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let r = crate::support::http_client()
            .post(format!("{url}/api/v1/blobs?{query}"))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json answer"))
    })
}

/// GETs a blob: status, media type, bytes.
pub(crate) fn get_blob(url: &str, id: &str) -> (u16, String, Vec<u8>) {
    let answer = request_blob(url, id, reqwest::Method::GET, &[]);
    let media = answer.header("content-type").to_owned();
    (answer.status, media, answer.bytes)
}

/// Sends `method` for a blob with extra request headers.
pub(crate) fn request_blob(
    url: &str,
    id: &str,
    method: reqwest::Method,
    headers: &[(&str, &str)],
) -> Answer {
    crate::support::send_blocking_answer(|client| {
        headers.iter().fold(
            client
                .request(method, format!("{url}/api/v1/blobs/{id}"))
                .bearer_auth(TOKEN),
            |request, (name, value)| request.header(*name, *value),
        )
    })
}

pub(crate) fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .map(|e| e.expect("entry").path())
            .map(|p| if p.is_dir() { files_under(&p) } else { 1 })
            .sum()
    })
}

#[test]
fn wav_clips_are_stored_scored_by_band_energy_and_survive_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Process::start(&data, &[]);
    let start = (now_ns() - 3600 * SECOND) / SECOND * SECOND;
    let mut ids = Vec::new();
    for index in 0..30 {
        let time = start + i64::from(index) * SECOND;
        let (status, answer) = post_blob(
            &p.url,
            &format!("table=acoustic&device=pump-01&signal=mic&time={time}"),
            "audio/wav",
            clip(index),
        );
        assert_eq!(status, 201, "{answer}");
        assert_eq!(answer["audio"]["sample_rate"], RATE, "{answer}");
        assert_eq!(answer["audio"]["frames"], RATE, "{answer}");
        assert_eq!(answer["time"], time, "{answer}");
        ids.push(answer["id"].as_str().expect("id").to_owned());
    }
    // Every clip is named by a row of its table and listed with its header.
    let listed = query(
        &p.url,
        "SELECT a.mic, b.bytes, b.sample_rate, b.duration_s FROM acoustic a \
         JOIN _blobs b ON a.mic = b.id AND a.time = b.time ORDER BY a.time",
    );
    assert_eq!(listed.len(), 30, "{listed:?}");
    assert_eq!(listed[7]["mic"], ids[7]);
    assert_eq!(listed[7]["bytes"], 44 + 2 * RATE);
    assert_eq!(listed[7]["duration_s"], 1.0);

    // Bad input is refused whole: nothing of it is stored.
    let blob_files = files_under(&data.join("blobs"));
    let mut truncated = clip(99);
    truncated.truncate(4_000);
    let (status, answer) = post_blob(
        &p.url,
        "table=acoustic&device=pump-01&signal=mic",
        "audio/wav",
        truncated,
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("truncated")),
        "{answer}"
    );
    let (status, answer) = post_blob(
        &p.url,
        "table=_blobs&device=x&signal=mic",
        "audio/wav",
        clip(0),
    );
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = post_blob(
        &p.url,
        "table=acoustic&device=pump-01",
        "audio/wav",
        clip(0),
    );
    assert_eq!(status, 400, "a missing signal: {answer}");
    assert_eq!(files_under(&data.join("blobs")), blob_files);
    assert_eq!(
        blocking_query_count(&p.url, "SELECT count(*) FROM acoustic"),
        30
    );
    // Any other file is kept as it is, with its media type.
    let photo = b"\x89PNG\r\n\x1a\n not really".to_vec();
    let (status, answer) = post_blob(
        &p.url,
        "table=inspection&device=pump-01&signal=photo",
        "image/png",
        photo.clone(),
    );
    assert_eq!(status, 201, "{answer}");
    assert!(answer["audio"].is_null(), "{answer}");
    let photo_id = answer["id"].as_str().expect("id").to_owned();
    assert_eq!(
        get_blob(&p.url, &photo_id),
        (200, "image/png".to_owned(), photo.clone())
    );
    assert_eq!(
        get_blob(&p.url, &format!("sha256:{}", "0".repeat(64))).0,
        404
    );
    assert_eq!(get_blob(&p.url, "..%2F..%2Fetc%2Fpasswd").0, 400);

    // The pipeline learns from 20 clips and flags exactly the 5 with the whine, by the band
    // that holds it; each flagged window traces back to its clip.
    // 30 clips of 8,000 samples through FFT band features: in a debug build beside the rest
    // of the suite on two cores this has taken over 20 s.
    let (code, answer) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/acoustic",
        Some(acoustic_pipeline()),
    );
    assert_eq!(code, 201, "{answer}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let last = loop {
        let (code, status) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/pipelines/acoustic",
            None,
        );
        if code == 200 && status["inferences"] == 10 {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pipeline scores the ten clips after training; its status: {code} {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(last["inferences"], 10, "{last}");
    let flagged = query(
        &p.url,
        "SELECT window_start, samples, contributions, top_signal FROM inferences \
         WHERE pipeline = 'acoustic' AND flag = true ORDER BY window_start",
    );
    let starts: Vec<i64> = flagged
        .iter()
        .map(|row| row["window_start"].as_i64().expect("start"))
        .collect();
    let want: Vec<i64> = (25..30).map(|i| start + i * SECOND).collect();
    assert_eq!(starts, want, "{flagged:?}");
    for row in &flagged {
        assert_eq!(row["samples"], RATE, "{row}");
        assert_eq!(row["top_signal"], "mic", "{row}");
        let contributions: serde_json::Value =
            serde_json::from_str(row["contributions"].as_str().expect("json")).expect("json");
        let top = contributions
            .as_object()
            .expect("object")
            .iter()
            .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).expect("numbers"))
            .expect("a contribution");
        assert_eq!(top.0, "mic.band:3000-4000", "{contributions}");
        let window_start = row["window_start"].as_i64().expect("start");
        let source = query(
            &p.url,
            &format!("SELECT mic FROM acoustic WHERE time = to_timestamp_nanos({window_start})"),
        );
        let index = usize::try_from((window_start - start) / SECOND).expect("index");
        assert_eq!(source[0]["mic"], ids[index], "{source:?}");
    }

    // Acknowledged clips survive kill -9 byte for byte, rows and all.
    p.kill9();
    let p = Process::start(&data, &[]);
    for (index, id) in ids.iter().enumerate() {
        let (status, media, bytes) = get_blob(&p.url, id);
        assert_eq!((status, media.as_str()), (200, "audio/wav"), "{id}");
        assert!(bytes == clip(index as u32), "clip {index} changed");
    }
    assert_eq!(
        blocking_query_count(&p.url, "SELECT count(*) FROM acoustic"),
        30
    );
    assert_eq!(
        blocking_query_count(&p.url, "SELECT count(*) FROM _blobs"),
        31
    );
}

#[test]
fn a_device_publishes_clips_over_mqtt_and_a_bad_clip_is_a_dead_letter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(dir.path(), &[]);
    let mqtt = p.mqtt.clone().expect("mqtt address in the banner");
    let token = crate::mqtt::register(&p.url, "pump-1");
    let (host, port) = crate::mqtt::host_port(&mqtt);
    let file = dir.path().join("clip.wav");
    let publish = |bytes: &[u8]| {
        std::fs::write(&file, bytes).expect("clip file");
        crate::mqtt::mosquitto(
            "mosquitto_pub",
            &[
                "-h",
                &host,
                "-p",
                &port,
                "-q",
                "1",
                "-u",
                "pump-1",
                "-P",
                &token,
                "-t",
                "devices/pump-1/clips/acoustic",
                "-f",
                file.to_str().expect("utf-8"),
            ],
        )
    };
    let sent = clip(3);
    let before = now_ns();
    let out = publish(&sent);
    assert!(out.status.success(), "{out:?}");
    // QoS 1 is acknowledged once the clip and its row are durable.
    let rows = query(&p.url, "SELECT device, acoustic, time FROM clips");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["device"], "pump-1");
    let id = rows[0]["acoustic"].as_str().expect("id").to_owned();
    assert_eq!(get_blob(&p.url, &id), (200, "audio/wav".to_owned(), sent));
    // The row is at the clip's receipt.
    let listed = query(
        &p.url,
        &format!("SELECT CAST(time AS BIGINT) AS t, sample_rate FROM _blobs WHERE id = '{id}'"),
    );
    assert_eq!(listed[0]["sample_rate"], RATE, "{listed:?}");
    let started = listed[0]["t"].as_i64().expect("time");
    assert!(started >= before && started <= now_ns(), "{started}");

    let mut broken = clip(4);
    broken.truncate(100);
    let out = publish(&broken);
    assert!(out.status.success(), "dead letters are accepted: {out:?}");
    let dead = query(&p.url, "SELECT topic, reason FROM _dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("truncated")),
        "{dead:?}"
    );
    assert_eq!(
        blocking_query_count(&p.url, "SELECT count(*) FROM clips"),
        1
    );
}

#[test]
fn the_cli_stores_a_clip_and_saves_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("pump.wav");
    std::fs::write(&file, clip(1)).expect("clip");
    let (ok, out) = crate::support::client_command(
        &p.url,
        &[
            "blob",
            "put",
            file.to_str().expect("utf-8"),
            "--table",
            "acoustic",
            "--device",
            "pump-01",
            "--signal",
            "mic",
        ],
    );
    assert!(ok, "{out}");
    assert!(out.contains("1.0 s at 8000 Hz"), "{out}");
    let id = fabrik_core::BlobId::of(&clip(1)).to_string();
    assert!(out.contains(&id), "{out}");
    let saved = dir.path().join("back.wav");
    let (ok, out) = crate::support::client_command(
        &p.url,
        &["blob", "get", &id, saved.to_str().expect("utf-8")],
    );
    assert!(ok, "{out}");
    assert!(std::fs::read(&saved).expect("saved") == clip(1));
    let (ok, out) = crate::support::client_command(
        &p.url,
        &["blob", "get", &format!("sha256:{}", "1".repeat(64)), "-"],
    );
    assert!(!ok && out.contains("no blob"), "{out}");
}

#[test]
fn clips_of_a_synchronised_capture_are_all_read_past_a_full_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(&dir.path().join("data"), &[]);
    // Six microphones recording at the same instant: more rows of one timestamp than a page
    // of clips holds (4).
    let time = (now_ns() - 3600 * SECOND) / SECOND * SECOND;
    for device in 1..=6 {
        let (status, answer) = post_blob(
            &p.url,
            &format!("table=acoustic&device=mic-{device}&signal=mic&time={time}"),
            "audio/wav",
            clip(device),
        );
        assert_eq!(status, 201, "{answer}");
    }
    let (code, answer) = http(
        &p.url,
        reqwest::Method::PUT,
        "/api/v1/pipelines/capture",
        Some(serde_json::json!({
            "name": "capture", "table": "acoustic", "signals": ["mic"], "window": "1s",
            "features": ["rms"], "training_windows": 5, "interval": "200ms",
            "lateness": "0s", "start": "earliest"
        })),
    );
    assert_eq!(code, 201, "{answer}");
    eventually("every device's clip is read", || {
        let (_, status) = http(
            &p.url,
            reqwest::Method::GET,
            "/api/v1/pipelines/capture",
            None,
        );
        status["samples"] == 6 * RATE && status["devices"] == 6
    });
}

/// The background sweep of a running `fabrik run`: a clip whose row is past its table's
/// retention is deleted from disk; a recent one stays.
#[test]
fn a_clip_past_its_tables_retention_is_swept_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let p = Process::start(
        &data,
        &[
            ("FABRIK__STORE__TABLES__ACOUSTIC__RETENTION", "1h"),
            ("FABRIK__STORE__BLOB_SWEEP_INTERVAL", "1s"),
            ("FABRIK__STORE__BLOB_MIN_AGE", "1s"),
        ],
    );
    let old = now_ns() - 2 * 3600 * SECOND;
    let mut ids = Vec::new();
    for (index, time) in [(1, old), (2, now_ns())] {
        let (status, answer) = post_blob(
            &p.url,
            &format!("table=acoustic&device=pump-01&signal=mic&time={time}"),
            "audio/wav",
            clip(index),
        );
        assert_eq!(status, 201, "{answer}");
        ids.push(answer["id"].as_str().expect("id").to_owned());
    }
    // (Its media type goes just after it.)
    eventually("the expired clip is deleted", || {
        get_blob(&p.url, &ids[0]).0 == 404 && files_under(&data.join("blobs")) == 2
    });
    let (status, _, bytes) = get_blob(&p.url, &ids[1]);
    assert_eq!(status, 200);
    assert!(bytes == clip(2));
    assert_eq!(
        files_under(&data.join("blobs")),
        2,
        "the recent clip and its media type"
    );
    // Counted once the sweep's pass over the shard ends, which can be just after the files go.
    eventually("the deletion is counted", || {
        crate::support::metric(&p.url, "fabrik_blobs_deleted_total").is_some_and(|n| n >= 1.0)
    });
}

/// A clip is served in the byte ranges audio players ask for (RFC 9110 ranges), with its id
/// as a strong ETag that a client revalidates against, and HEAD gives its length unread.
#[test]
fn a_clip_is_served_in_the_ranges_a_player_asks_for() {
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Process::start(&dir.path().join("data"), &[]);
    let whole = clip(3);
    let length = whole.len();
    let (status, answer) = post_blob(
        &p.url,
        &format!("table=acoustic&device=pump-01&signal=mic&time={}", now_ns()),
        "audio/wav",
        whole.clone(),
    );
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_str().expect("id").to_owned();
    let etag = format!("\"{id}\"");
    let get = |headers: &[(&str, &str)]| request_blob(&p.url, &id, Method::GET, headers);

    // The WAV header, the last 100 bytes, and from an offset to the end.
    for (range, expected) in [
        ("bytes=0-43", 0..44),
        ("bytes=-100", length - 100..length),
        ("bytes=10001-", 10_001..length),
        ("bytes=5-99999999", 5..length),
    ] {
        let answer = get(&[("range", range)]);
        assert_eq!(answer.status, 206, "{range}");
        assert_eq!(
            answer.header("content-range"),
            format!("bytes {}-{}/{length}", expected.start, expected.end - 1),
            "{range}"
        );
        // Sent with its length (streamed from the file, not chunked), as players expect.
        assert_eq!(
            answer.header("content-length"),
            (expected.end - expected.start).to_string(),
            "{range}"
        );
        assert!(answer.bytes == whole[expected], "{range}: other bytes");
        assert_eq!(answer.header("content-type"), "audio/wav");
        assert_eq!(answer.header("etag"), etag);
    }
    // Past the end: 416 saying how long the clip is.
    let past = format!("bytes={length}-");
    let answer = get(&[("range", &past)]);
    assert_eq!(answer.status, 416);
    assert_eq!(answer.header("content-range"), format!("bytes */{length}"));
    let error: serde_json::Value = serde_json::from_slice(&answer.bytes).expect("json error");
    assert!(
        error["error"].as_str().is_some_and(|e| e.contains(&past)),
        "{error}"
    );
    // Several ranges, or a range for another version (If-Range), get the whole clip.
    for headers in [
        &[("range", "bytes=0-1,4-5")][..],
        &[("range", "bytes=0-1"), ("if-range", "\"sha256:0000\"")][..],
    ] {
        let answer = get(headers);
        assert_eq!(answer.status, 200, "{headers:?}");
        assert!(answer.bytes == whole, "{headers:?}");
        assert_eq!(answer.header("accept-ranges"), "bytes");
    }
    let answer = get(&[("range", "bytes=0-1"), ("if-range", &etag)]);
    assert_eq!((answer.status, answer.bytes.as_slice()), (206, &whole[..2]));
    // A client holding the clip revalidates without the bytes.
    let answer = get(&[("if-none-match", &format!("\"other\", W/{etag}"))]);
    assert_eq!(answer.status, 304);
    assert!(answer.bytes.is_empty());
    assert_eq!(answer.header("etag"), etag);
    let head = request_blob(&p.url, &id, Method::HEAD, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), length.to_string());
    assert_eq!(head.header("content-type"), "audio/wav");
    // An unknown blob is 404, whatever is asked.
    let unknown = format!("sha256:{}", "0".repeat(64));
    for headers in [&[("range", "bytes=0-1")][..], &[("if-none-match", "*")][..]] {
        let answer = request_blob(&p.url, &unknown, Method::GET, headers);
        assert_eq!(answer.status, 404, "{headers:?}");
    }
    assert_eq!(
        request_blob(&p.url, &unknown, Method::HEAD, &[]).status,
        404
    );
}
