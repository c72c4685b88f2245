//! The storage engine through the API: buffer and Parquet segments together, restarts, late
//! data over persisted ranges, compaction, retention, and a torn WAL tail.

use std::time::Duration;

use fabrik_store::StoreOptions;

use crate::support::{Process, Server, blocking_query_count};

fn lines(measurement: &str, from: i64, to: i64) -> String {
    (from..to)
        .map(|i| format!("{measurement},dev=d{} v={i} {}\n", i % 7, 1_000 + i))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_spans_segments_and_buffer_and_late_duplicates_keep_the_last_value() {
    let dir = tempfile::tempdir().expect("dir");
    let mut options = StoreOptions::new(dir.path());
    options.partition = Duration::from_nanos(500); // several partitions per test
    let s = Server::with_options(options, 8 << 20).await;
    assert_eq!(s.write(&lines("m", 0, 1000)).await.status(), 200);
    let r = s
        .post("/api/v1/admin/persist")
        .send()
        .await
        .expect("persist");
    assert_eq!(r.status(), 204);
    assert!(s.store.buffer_stats().0 == 0, "buffer empty after persist");
    let segments = std::fs::read_dir(dir.path().join("segments"))
        .expect("segments dir")
        .count();
    assert!(segments > 0, "segment files written");
    // More rows in the buffer, and late rows that overwrite persisted ones (same series, time).
    assert_eq!(s.write(&lines("m", 1000, 1500)).await.status(), 200);
    let late: String = (0..100)
        .map(|i| format!("m,dev=d{} v=-1 {}\n", i % 7, 1_000 + i))
        .collect();
    assert_eq!(s.write(&late).await.status(), 200);
    assert_eq!(s.count("SELECT count(*) FROM m").await, 1500);
    assert_eq!(s.count("SELECT count(*) FROM m WHERE v = -1").await, 100);
    assert_eq!(s.count("SELECT count(*) FROM m WHERE time >= arrow_cast(1100, 'Timestamp(Nanosecond, None)') AND time < arrow_cast(2200, 'Timestamp(Nanosecond, None)')").await, 1100);
    // Persist again (now overlapping segments) and compact: still exactly once.
    s.post("/api/v1/admin/persist")
        .send()
        .await
        .expect("persist");
    assert_eq!(s.count("SELECT count(*) FROM m").await, 1500);
    assert_eq!(
        s.post("/api/v1/admin/compact")
            .send()
            .await
            .expect("compact")
            .status(),
        204
    );
    assert_eq!(s.count("SELECT count(*) FROM m").await, 1500);
    assert_eq!(s.count("SELECT count(*) FROM m WHERE v = -1").await, 100);
    let sum = s.query("SELECT sum(v) AS s FROM m WHERE v >= 0").await;
    let expected: i64 = (100..1500).sum();
    assert_eq!(sum[0]["s"].as_f64().expect("sum") as i64, expected);
    s.shutdown().await;
}

/// Persists the buffer through the admin API; the response status.
async fn persist(s: &Server) -> reqwest::StatusCode {
    s.post("/api/v1/admin/persist")
        .send()
        .await
        .expect("persist")
        .status()
}

/// The physical plan of `sql`, as one string.
async fn physical_plan(s: &Server, sql: &str) -> String {
    s.query(&format!("EXPLAIN {sql}"))
        .await
        .iter()
        .map(|row| row["plan"].as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_values_per_series_come_from_last_rows_and_equal_a_full_scan() {
    let dir = tempfile::tempdir().expect("dir");
    let mut options = StoreOptions::new(dir.path());
    options.partition = Duration::from_nanos(500);
    let s = Server::with_options(options, 8 << 20).await;
    let history: String = (0..1000)
        .map(|i| {
            format!(
                "t,dev=d{},site=s{} v={i},w={} {}\n",
                i % 5,
                i % 5 % 2,
                i * 2,
                1_000 + i
            )
        })
        .collect();
    assert_eq!(s.write(&history).await.status(), 200);
    assert_eq!(persist(&s).await, 204);
    // d0's last persisted row is overwritten (same time, newer write); d1 moves on in a later
    // segment; d2 moves on in the buffer; d3 and d4 stay as persisted.
    let overwrite = "t,dev=d0,site=s0 v=-5,w=-10 1995\nt,dev=d1,site=s1 v=7777,w=1 2500\n";
    assert_eq!(s.write(overwrite).await.status(), 200);
    assert_eq!(persist(&s).await, 204);
    assert_eq!(
        s.write("t,dev=d2,site=s0 v=8888,w=2 2600\n").await.status(),
        200
    );

    let latest = "SELECT dev, last_value(v ORDER BY time) AS v, max(time) AS t FROM t \
                  GROUP BY dev ORDER BY dev";
    let full_scan = "SELECT dev, last_value(v ORDER BY time) AS v, max(time) AS t FROM t \
                     WHERE time >= arrow_cast(0, 'Timestamp(Nanosecond, None)') \
                     GROUP BY dev ORDER BY dev";
    assert!(
        !physical_plan(&s, latest).await.contains("parquet"),
        "rewritten to last rows"
    );
    assert!(
        physical_plan(&s, full_scan).await.contains("parquet"),
        "the filter keeps the scan"
    );
    let rows = s.query(latest).await;
    assert_eq!(rows, s.query(full_scan).await);
    let got: Vec<(String, f64)> = rows
        .iter()
        .map(|r| {
            (
                r["dev"].as_str().expect("dev").to_owned(),
                r["v"].as_f64().expect("v"),
            )
        })
        .collect();
    let expected = [
        ("d0", -5.0),
        ("d1", 7777.0),
        ("d2", 8888.0),
        ("d3", 998.0),
        ("d4", 999.0),
    ];
    assert_eq!(
        got,
        expected
            .iter()
            .map(|(d, v)| ((*d).to_owned(), *v))
            .collect::<Vec<_>>()
    );
    // Again, now from the cached per-segment rows; and grouped by a tag several series share.
    assert_eq!(s.query(latest).await, rows);
    let by_site = "SELECT site, last_value(w ORDER BY time) AS w, max(time) AS t FROM t \
                   GROUP BY site ORDER BY site";
    let by_site_full = "SELECT site, last_value(w ORDER BY time) AS w, max(time) AS t FROM t \
                        WHERE time >= arrow_cast(0, 'Timestamp(Nanosecond, None)') \
                        GROUP BY site ORDER BY site";
    let sites = s.query(by_site).await;
    assert_eq!(sites, s.query(by_site_full).await);
    assert_eq!(sites.len(), 2);
    // A column added after the segments' last rows were cached.
    assert_eq!(
        s.write("t,dev=d3,site=s1 v=1,load=0.5 2700\n")
            .await
            .status(),
        200
    );
    let with_load = s
        .query(
            "SELECT dev, last_value(load ORDER BY time) AS load FROM t GROUP BY dev ORDER BY dev",
        )
        .await;
    assert_eq!(with_load.len(), 5, "{with_load:?}");
    assert_eq!(with_load[3]["load"], 0.5, "{with_load:?}");
    assert!(with_load[0]["load"].is_null(), "{with_load:?}");
    // Aggregates the last rows cannot answer keep the full scan.
    for other in [
        "SELECT dev, max(v) FROM t GROUP BY dev",
        "SELECT dev, last_value(v ORDER BY w) FROM t GROUP BY dev",
        "SELECT dev, last_value(v ORDER BY time) FILTER (WHERE w > 0) FROM t GROUP BY dev",
        "SELECT dev, max(time) FILTER (WHERE v > 3) FROM t GROUP BY dev",
        "SELECT dev, last_value(v ORDER BY time) FROM t WHERE v > 3 GROUP BY dev",
        "SELECT v, max(time) FROM t GROUP BY v",
    ] {
        assert!(
            physical_plan(&s, other).await.contains("parquet"),
            "{other}"
        );
    }
    s.shutdown().await;
}

/// Each signal's newest value when rows hold only the points that changed (OPC UA data
/// changes, Sparkplug reports by exception): `IGNORE NULLS`, when each was last reported, and
/// one device's only, all from the last rows and equal to the full scan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_signals_newest_value_comes_from_last_rows_and_equals_a_full_scan() {
    let dir = tempfile::tempdir().expect("dir");
    let mut options = StoreOptions::new(dir.path());
    options.partition = Duration::from_nanos(500);
    let s = Server::with_options(options, 8 << 20).await;
    // Per device: `a` in every row, `b` every tenth, `c` once early on, across two partitions.
    let history: String = (0..600)
        .map(|i| {
            let mut fields = format!("a={i}");
            if i % 30 < 3 {
                fields.push_str(&format!(",b={}", i * 10));
            }
            if i < 3 {
                fields.push_str(&format!(",c=\"first {i}\""));
            }
            format!("t,dev=d{} {fields} {}\n", i % 3, 1_000 + i)
        })
        .collect();
    assert_eq!(s.write(&history).await.status(), 200);
    assert_eq!(persist(&s).await, 204);
    // d0's row at its newest `b` (time 1570) is written again without `b`, into a later
    // segment over the same partition: that row replaces the old one whole, so d0's newest
    // `b` is the one before (time 1540), which no single segment's picks alone show.
    let rewrite = "t,dev=d0 a=-1 1570\n";
    assert_eq!(s.write(rewrite).await.status(), 200);
    assert_eq!(persist(&s).await, 204);
    // d1 reports `c` again, still buffered.
    assert_eq!(s.write("t,dev=d1 c=\"again\" 1700\n").await.status(), 200);

    let aggregates = "last_value(a ORDER BY time) IGNORE NULLS AS a, \
                  last_value(b ORDER BY time) IGNORE NULLS AS b, \
                  last_value(c ORDER BY time) IGNORE NULLS AS c, \
                  max(time) FILTER (WHERE b IS NOT NULL) AS b_time, \
                  max(time) FILTER (WHERE c IS NOT NULL) AS c_time, \
                  last_value(a ORDER BY time) AS a_respecting_nulls, \
                  max(time) AS newest FROM t";
    let select = format!("SELECT dev, {aggregates}");
    let latest = format!("{select} GROUP BY dev ORDER BY dev");
    let full_scan = format!(
        "{select} WHERE time >= arrow_cast(0, 'Timestamp(Nanosecond, None)') \
         GROUP BY dev ORDER BY dev"
    );
    assert!(
        !physical_plan(&s, &latest).await.contains("parquet"),
        "rewritten to last rows"
    );
    let rows = s.query(&latest).await;
    assert_eq!(rows, s.query(&full_scan).await);
    assert_eq!(rows.len(), 3);
    let d0 = &rows[0];
    assert_eq!(d0["b"], 5400.0, "{d0}");
    assert_eq!(d0["c"], "first 0", "{d0}");
    assert_eq!(d0["a"], 597.0, "{d0}");
    let d1 = &rows[1];
    assert_eq!(d1["c"], "again", "{d1}");
    assert!(
        d1["a_respecting_nulls"].is_null(),
        "the newest row has no `a`: {d1}"
    );
    assert_eq!(d1["a"], 598.0, "{d1}");
    // Again from the cached picks; and one device by a filter on its tag.
    assert_eq!(s.query(&latest).await, rows);
    let one = format!("SELECT {aggregates} WHERE dev = 'd1'");
    assert!(
        !physical_plan(&s, &one).await.contains("parquet"),
        "a filter on tags keeps the rewrite"
    );
    let d1_only = s.query(&one).await;
    assert_eq!(d1_only.len(), 1);
    for key in [
        "a",
        "b",
        "c",
        "b_time",
        "c_time",
        "a_respecting_nulls",
        "newest",
    ] {
        assert_eq!(d1_only[0][key], d1[key], "{key}: {d1_only:?}");
    }
    // After compaction merges the overlapping segments, the same answers.
    let compacted = s
        .post("/api/v1/admin/compact")
        .send()
        .await
        .expect("compact");
    assert!(compacted.status().is_success(), "{}", compacted.status());
    assert_eq!(persist(&s).await, 204);
    assert_eq!(s.query(&latest).await, rows);
    // A late row over the compacted segment that replaces no picked row (d2 has no row at
    // 1550): the picks are used as they are, and the answer is still the full scan's.
    assert_eq!(s.write("t,dev=d2 c=\"late\" 1550\n").await.status(), 200);
    let rows = s.query(&latest).await;
    assert_eq!(rows, s.query(&full_scan).await);
    assert_eq!(rows[2]["c"], "late", "{rows:?}");
    // A row written again at the same series and time replaces the old one whole: its
    // values, not the old row's, and the null where the old row had one, also when it is
    // the series' newest row (grouped, where a tie would keep the first row).
    assert_eq!(s.write("m,dev=a v=1,w=2 100\n").await.status(), 200);
    assert_eq!(persist(&s).await, 204);
    assert_eq!(s.write("m,dev=a v=5 100\n").await.status(), 200);
    for sql in [
        "SELECT dev, last_value(v ORDER BY time) AS v, last_value(w ORDER BY time) AS w \
         FROM m GROUP BY dev",
        "SELECT dev, last_value(w ORDER BY time) IGNORE NULLS AS w, \
         max(time) FILTER (WHERE w IS NOT NULL) AS w_time FROM m GROUP BY dev",
    ] {
        let rows = s.query(sql).await;
        let full = s
            .query(&sql.replace(
                "FROM m",
                "FROM m WHERE time >= arrow_cast(0, 'Timestamp(Nanosecond, None)')",
            ))
            .await;
        assert_eq!(rows, full, "{sql}");
        assert!(rows[0]["w"].is_null(), "{sql}: {rows:?}");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_data_from_queries_and_disk() {
    let dir = tempfile::tempdir().expect("dir");
    let mut options = StoreOptions::new(dir.path());
    options
        .table_retention
        .insert("short".into(), Some(Duration::from_secs(2)));
    let s = Server::with_options(options, 8 << 20).await;
    let now = fabrik_core::Timestamp::now().nanos();
    let old = now - 3_600_000_000_000;
    let body = format!("short v=1 {old}\nshort v=2 {now}\nkeep v=1 {old}\n");
    assert_eq!(s.write(&body).await.status(), 200);
    assert_eq!(
        s.count("SELECT count(*) FROM short").await,
        1,
        "the hour-old row is past a 2 s retention"
    );
    assert_eq!(
        s.count("SELECT count(*) FROM keep").await,
        1,
        "tables without retention keep everything"
    );
    s.post("/api/v1/admin/persist")
        .send()
        .await
        .expect("persist");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.count("SELECT count(*) FROM short").await, 0);
    s.post("/api/v1/admin/compact")
        .send()
        .await
        .expect("compact");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).expect("manifest"))
            .expect("json");
    assert_eq!(
        manifest["tables"]["short"]["segments"]
            .as_array()
            .expect("segments")
            .len(),
        0
    );
    assert_eq!(
        manifest["tables"]["keep"]["segments"]
            .as_array()
            .expect("segments")
            .len(),
        1
    );
    assert_eq!(s.count("SELECT count(*) FROM keep").await, 1);
    s.shutdown().await;
}

/// Stores `bytes` as a blob named by a row of `table` at `time`; returns its id.
async fn post_blob(s: &Server, table: &str, time: i64, bytes: &[u8]) -> String {
    let r = s
        .post(&format!(
            "/api/v1/blobs?table={table}&device=cam-1&signal=frame&time={time}"
        ))
        .header("content-type", "image/png")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("post blob");
    assert_eq!(r.status(), 201);
    let answer: serde_json::Value = r.json().await.expect("json");
    answer["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_expire_with_the_rows_that_name_them() {
    let dir = tempfile::tempdir().expect("dir");
    let mut options = StoreOptions::new(dir.path());
    let hour = Duration::from_secs(3600);
    // The default (1 h) is shorter than the archive's (30 d): the listing must follow the
    // longest, or the archive's blobs would lose what keeps them.
    options.retention = Some(hour);
    options.table_retention.insert("frames".into(), Some(hour));
    options
        .table_retention
        .insert("archive".into(), Some(30 * 24 * hour));
    options.blob_min_age = Duration::ZERO;
    let s = Server::with_options(options, 8 << 20).await;
    let now = fabrik_core::Timestamp::now().nanos();
    let two_hours_ago = now - 7_200_000_000_000;
    let expired = post_blob(&s, "frames", two_hours_ago, b"expired frame").await;
    let recent = post_blob(&s, "frames", now, b"recent frame").await;
    // The same bytes named by an expired row and by a row of the archive.
    // (A second earlier: a row of the same series at the same time would replace the first.)
    let a_second_before = two_hours_ago - 1_000_000_000;
    let shared = post_blob(&s, "frames", a_second_before, b"kept as evidence").await;
    assert_eq!(
        post_blob(&s, "archive", a_second_before, b"kept as evidence").await,
        shared
    );
    let archived = post_blob(&s, "archive", two_hours_ago, b"archived frame").await;
    // A table with the default retention, past it and within it.
    let defaulted_old = post_blob(&s, "other", two_hours_ago, b"default, old").await;
    let defaulted_new = post_blob(&s, "other", now, b"default, new").await;
    // Bytes stored whose row never came (the process died in between).
    let unnamed = {
        let blobs = s.store.blobs().clone();
        tokio::task::spawn_blocking(move || blobs.put(b"orphan", "image/png"))
            .await
            .expect("task")
            .expect("put")
            .id()
            .to_string()
    };

    let report = s.store.sweep_blobs().await.expect("sweep");
    assert_eq!((report.deleted, report.kept), (3, 4), "{report:?}");
    let status = |id: String| {
        let client = s.client.clone();
        let url = format!("{}/api/v1/blobs/{id}", s.url);
        async move {
            client
                .get(url)
                .bearer_auth(crate::support::TOKEN)
                .send()
                .await
                .expect("get")
                .status()
                .as_u16()
        }
    };
    for id in [&expired, &defaulted_old, &unnamed] {
        assert_eq!(status(id.clone()).await, 404, "{id}");
    }
    for id in [&recent, &shared, &archived, &defaulted_new] {
        assert_eq!(status(id.clone()).await, 200, "{id}");
    }
    // The listing outlives the shortest retention: it is what keeps the archive's blobs.
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM _blobs WHERE id = '{archived}'"
        ))
        .await,
        1
    );
    assert_eq!(s.count("SELECT count(*) FROM frames").await, 1);
    // Nothing else to delete.
    assert_eq!(s.store.sweep_blobs().await.expect("sweep").deleted, 0);
    s.shutdown().await;
}

#[test]
fn data_survives_a_graceful_restart_and_a_persisted_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let p = Process::start(dir.path(), &[]);
    let status = crate::support::post_status(&p.url, "/api/v1/write", &lines("r", 0, 300));
    assert_eq!(status, 200);
    let (status, log) = p.terminate();
    assert!(status.success(), "graceful stop exits 0: {log:?}");
    let p = Process::start(dir.path(), &[]);
    assert_eq!(blocking_query_count(&p.url, "SELECT count(*) FROM r"), 300);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/admin/persist", ""),
        204
    );
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &lines("r", 300, 400)),
        200
    );
    p.kill9();
    let p = Process::start(dir.path(), &[]);
    assert_eq!(blocking_query_count(&p.url, "SELECT count(*) FROM r"), 400);
    p.kill9();
}

#[test]
fn a_torn_wal_tail_is_cut_off_and_counted_at_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let p = Process::start(dir.path(), &[]);
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", &lines("t", 0, 50)),
        200
    );
    p.kill9();
    let wal_dir = dir.path().join("wal");
    let mut segments: Vec<_> = std::fs::read_dir(&wal_dir)
        .expect("wal")
        .map(|e| e.expect("e").path())
        .collect();
    segments.sort();
    let last = segments
        .iter()
        .rev()
        .find(|p| std::fs::metadata(p).map(|m| m.len() > 8).unwrap_or(false))
        .expect("a segment with records")
        .clone();
    // Simulate a crash mid-append: half a record header and some payload bytes.
    let mut bytes = std::fs::read(&last).expect("read");
    let good_len = bytes.len();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]);
    std::fs::write(&last, &bytes).expect("write");
    let p = Process::start(dir.path(), &[]);
    assert_eq!(blocking_query_count(&p.url, "SELECT count(*) FROM t"), 50);
    std::thread::sleep(Duration::from_millis(200));
    let log = p.drain_log().join("\n");
    assert!(
        log.contains("Torn WAL tail truncated") && log.contains("bytes_dropped=11"),
        "log:\n{log}"
    );
    assert_eq!(
        std::fs::metadata(&last).expect("meta").len() as usize,
        good_len
    );
    p.kill9();
}

#[test]
fn a_full_disk_answers_507_and_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("dir");
    // `prlimit --fsize` makes every file stop growing at 256 KiB: the WAL fills up for real.
    let mut command = std::process::Command::new("prlimit");
    command
        .arg("--fsize=262144")
        .arg(crate::support::fabrik_bin());
    let p = Process::start_with(command, dir.path(), &[]);
    let mut acknowledged = 0i64;
    let mut refused = 0;
    for batch in 0..200i64 {
        let status = crate::support::post_status(
            &p.url,
            "/api/v1/write",
            &lines("full", batch * 100, batch * 100 + 100),
        );
        match status {
            200 => acknowledged += 100,
            507 => {
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused >= 3, "the WAL never filled up");
    assert!(acknowledged > 0);
    assert_eq!(
        blocking_query_count(&p.url, "SELECT count(*) FROM full"),
        acknowledged
    );
    p.kill9();
    // Without the limit: the WAL replays cleanly (no partial record), with exactly the
    // acknowledged points, and takes writes again.
    let p = Process::start(dir.path(), &[]);
    assert_eq!(
        blocking_query_count(&p.url, "SELECT count(*) FROM full"),
        acknowledged
    );
    let log = p.drain_log().join("\n");
    assert!(
        log.contains("torn_bytes_dropped=0"),
        "no partial record may be left: {log}"
    );
    assert_eq!(
        crate::support::post_status(&p.url, "/api/v1/write", "full,dev=x v=1 1"),
        200
    );
    p.kill9();
}
