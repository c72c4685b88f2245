//! Rollups (decisions 0085 and 0087) in a running `fabrik run`: rows written over HTTP are
//! summarised per interval into their own table, a value stands until its next sample in the
//! time-weighted means, a row that arrives late is counted again while within the lateness,
//! and after a `kill -9` the next start carries on without summarising twice.

use std::time::Duration;

use crate::mqtt::{eventually_for, query};
use crate::support::{Process, count_if_any, now_ns, post_status};

const SECOND: i64 = 1_000_000_000;

const CONFIG: &str = "[[store.rollups]]\ntable = \"press\"\nevery = \"1s\"\nlateness = \"15m\"\n";

fn summary(url: &str, start: i64) -> Option<serde_json::Value> {
    let rows = query(
        url,
        &format!(
            "SELECT force_mean, force_min, force_max, force_count, force_twa, line FROM press_1s \
             WHERE time = to_timestamp_nanos({start}) AND device = 'p1'"
        ),
    );
    assert!(
        rows.len() <= 1,
        "one summary per interval and series: {rows:?}"
    );
    rows.into_iter().next()
}

fn write(url: &str, lines: &str) {
    assert_eq!(post_status(url, "/api/v1/write", lines), 200, "{lines}");
}

#[test]
fn rows_are_summarised_per_interval_counted_again_when_late_and_not_twice_after_a_kill() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("fabrik.toml");
    std::fs::write(&file, CONFIG).expect("config");
    let data = dir.path().join("data");
    let args = ["--config", file.to_str().expect("utf-8")];
    let fabrik = Process::start_with_args(&data, &args, &[]);

    // Ten minutes ago, within the lateness: two readings of one second, and another device.
    let start = (now_ns() - 600 * SECOND) / SECOND * SECOND;
    write(
        &fabrik.url,
        &format!(
            "press,device=p1,line=l1 force=1.0 {}\npress,device=p1,line=l1 force=3.0 {}\n\
             press,device=p2,line=l1 force=50.0 {}\n",
            start + 100_000_000,
            start + 200_000_000,
            start + 300_000_000,
        ),
    );
    eventually_for("the summary", Duration::from_secs(30), || {
        // The summary table exists once its first summary is written.
        count_if_any(&fabrik.url, "SELECT count(*) AS n FROM press_1s").is_some_and(|n| n > 0)
    });
    let first = summary(&fabrik.url, start).expect("summary");
    assert_eq!(first["force_mean"], 2.0, "{first}");
    assert_eq!(first["force_min"], 1.0, "{first}");
    assert_eq!(first["force_max"], 3.0, "{first}");
    assert_eq!(first["force_count"], 2, "{first}");
    assert_eq!(first["line"], "l1", "the series' tags are kept");

    // A late reading of the same second is counted at the next pass.
    write(
        &fabrik.url,
        &format!(
            "press,device=p1,line=l1 force=8.0 {}\n",
            start + 400_000_000
        ),
    );
    eventually_for("the late reading counted", Duration::from_secs(30), || {
        summary(&fabrik.url, start).is_some_and(|s| s["force_count"] == 3)
    });
    let again = summary(&fabrik.url, start).expect("summary");
    assert_eq!(again["force_mean"], 4.0, "{again}");
    assert_eq!(again["force_max"], 8.0, "{again}");
    // 1.0 for 0.1 s, 3.0 for 0.2 s, then 8.0 until the second ends: the value stands.
    let twa = again["force_twa"].as_f64().expect("time-weighted");
    assert!((twa - (0.1 + 0.6 + 4.8) / 0.9).abs() < 1e-9, "{again}");
    // With no sample since, 8.0 stands over the next seconds (within `hold`, an hour).
    eventually_for("the value standing", Duration::from_secs(30), || {
        summary(&fabrik.url, start + 3 * SECOND).is_some_and(|s| s["force_twa"] == 8.0)
    });
    assert!(
        summary(&fabrik.url, start + 3 * SECOND).is_some_and(|s| s["force_count"].is_null()),
        "no sample in that second"
    );

    // Killed, started again: still one summary per interval and series, and new rows are
    // summarised.
    fabrik.kill9();
    let fabrik = Process::start_with_args(&data, &args, &[]);
    write(
        &fabrik.url,
        &format!("press,device=p1,line=l1 force=5.0 {}\n", start + 5 * SECOND),
    );
    eventually_for(
        "a summary after the restart",
        Duration::from_secs(30),
        || summary(&fabrik.url, start + 5 * SECOND).is_some_and(|s| s["force_count"] == 1),
    );
    assert_eq!(summary(&fabrik.url, start).expect("kept")["force_count"], 3);
    let duplicates = query(
        &fabrik.url,
        "SELECT count(*) AS n FROM press_1s GROUP BY time, device HAVING count(*) > 1",
    );
    assert!(duplicates.is_empty(), "{duplicates:?}");
    let p2 = query(
        &fabrik.url,
        "SELECT force_mean, _source FROM press_1s WHERE device = 'p2' AND force_count > 0",
    );
    assert_eq!(p2.len(), 1, "{p2:?}");
    assert_eq!(p2[0]["force_mean"], 50.0);
    assert_eq!(p2[0]["_source"], "rollups");
}
