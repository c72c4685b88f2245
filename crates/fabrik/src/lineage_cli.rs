//! `fabrik pipeline lineage WINDOW_ID` and `fabrik alert lineage ID`: a decision, the input
//! rows it was made from and their raw messages, read from `/api/v1/lineage`.

use serde_json::Value;

use crate::client::{Endpoint, percent_encode};

/// Input rows and messages printed at most (`--json` gives them all).
const SHOWN: usize = 20;
/// Characters of a payload printed at most.
const PAYLOAD_CHARS: usize = 100;

/// Prints the lineage of the decision `key=value` names (`window_id` or `alert`).
pub(crate) async fn show(ep: &Endpoint, key: &str, value: &str, json: bool) -> anyhow::Result<()> {
    let client = ep.client()?;
    let path = format!("/api/v1/lineage?{key}={}", percent_encode(value));
    let lineage: Value = ep.get_json(&client, &path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&lineage)?);
    } else {
        print!("{}", lineage_text(&lineage));
    }
    Ok(())
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn shortened(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(PAYLOAD_CHARS).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// The lineage as text: the decision, its inputs, their messages.
fn lineage_text(lineage: &Value) -> String {
    let mut out = String::new();
    let inference = &lineage["inference"];
    out.push_str(&format!("window    {}\n", cell(&lineage["window_id"])));
    if let Some(alert) = lineage["alert"].as_str() {
        out.push_str(&format!("alert     {alert}\n"));
    }
    let verdict = if inference["flag"] == Value::Bool(true) {
        "anomalous"
    } else {
        "normal"
    };
    out.push_str(&format!(
        "decision  {} by pipeline {}, model {} (version {}): score {} against threshold {}, \
         {verdict}; top signal {}\n",
        cell(&inference["time"]),
        cell(&inference["pipeline"]),
        cell(&inference["model"]),
        cell(&inference["model_version"]),
        cell(&inference["score"]),
        cell(&inference["threshold"]),
        cell(&inference["top_signal"]),
    ));
    let inputs = &lineage["inputs"];
    let rows = inputs["rows"].as_array().cloned().unwrap_or_default();
    let sources: Vec<String> = inputs["sources"]
        .as_object()
        .map(|s| s.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "inputs    {}{} rows of table {} (the inference counted {} samples; by source: {})\n",
        rows.len(),
        if inputs["truncated"] == Value::Bool(true) {
            "+"
        } else {
            ""
        },
        cell(&inputs["table"]),
        cell(&inference["samples"]),
        if sources.is_empty() {
            "-".to_owned()
        } else {
            sources.join(", ")
        },
    ));
    if let Some(first) = rows.first().and_then(Value::as_object) {
        // Time first, the arrival id last (JSON objects come with their keys sorted).
        let mut columns = vec!["time"];
        columns.extend(first.keys().map(String::as_str).filter(|k| {
            !matches!(
                *k,
                "time" | "_raw_id" | "_source" | "_mapping_version" | "_quality"
            )
        }));
        columns.push("_raw_id");
        out.push_str(&format!("  {}\n", columns.join("  ")));
        for row in rows.iter().take(SHOWN) {
            let cells: Vec<String> = columns.iter().map(|c| cell(&row[*c])).collect();
            out.push_str(&format!("  {}\n", cells.join("  ")));
        }
        if rows.len() > SHOWN {
            out.push_str(&format!(
                "  … {} more (--json lists them)\n",
                rows.len() - SHOWN
            ));
        }
    }
    let messages = &lineage["messages"];
    let kept = messages["rows"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "messages  {}{} raw messages kept; {} input rows have none (HTTP writes, Modbus and \
         OPC UA polls, or not kept)\n",
        kept.len(),
        if messages["truncated"] == Value::Bool(true) {
            "+"
        } else {
            ""
        },
        cell(&messages["rows_without_message"]),
    ));
    for message in kept.iter().take(SHOWN) {
        out.push_str(&format!(
            "  {}  {}  {}  {}  {}\n",
            cell(&message["time"]),
            cell(&message["_raw_id"]),
            cell(&message["source"]),
            cell(&message["topic"]),
            shortened(&cell(&message["payload"])),
        ));
    }
    if kept.len() > SHOWN {
        out.push_str(&format!(
            "  … {} more (--json lists them)\n",
            kept.len() - SHOWN
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_the_decision_its_rows_and_their_messages() {
        let lineage = serde_json::json!({
            "window_id": "pump-health/pump-01/1000",
            "alert": "pump-anomaly~pump-01~5",
            "inference": {"time": "2026-12-06T12:00:09", "pipeline": "pump-health", "model": "hst",
                "model_version": "1+ab", "score": 3.5, "threshold": 1.0, "flag": true,
                "top_signal": "vibration_rms", "samples": 2},
            "inputs": {"table": "pump", "truncated": false, "sources": {"mqtt": 2},
                "rows": [
                    {"time": "2026-12-06T12:00:00", "device": "pump-01", "vibration_rms": 2.5,
                     "_raw_id": 11, "_source": "mqtt", "_mapping_version": 1, "_quality": "good"},
                    {"time": "2026-12-06T12:00:05", "device": "pump-01", "vibration_rms": 9.5,
                     "_raw_id": 12, "_source": "mqtt", "_mapping_version": 1, "_quality": "good"}]},
            "messages": {"truncated": false, "rows_without_message": 1, "rows": [
                {"_raw_id": 12, "source": "mqtt", "topic": "devices/pump-01/telemetry",
                 "payload": "x".repeat(150)}]},
        });
        let text = lineage_text(&lineage);
        assert!(text.contains("alert     pump-anomaly~pump-01~5"), "{text}");
        assert!(
            text.contains("score 3.5 against threshold 1.0, anomalous"),
            "{text}"
        );
        assert!(text.contains("2 rows of table pump"), "{text}");
        assert!(text.contains("by source: mqtt 2"), "{text}");
        assert!(
            text.contains("  time  device  vibration_rms  _raw_id\n"),
            "{text}"
        );
        assert!(
            text.contains("  2026-12-06T12:00:05  pump-01  9.5  12\n"),
            "{text}"
        );
        assert!(
            text.contains("1 raw messages kept; 1 input rows have none"),
            "{text}"
        );
        assert!(
            text.contains(&format!("devices/pump-01/telemetry  {}…", "x".repeat(100))),
            "{text}"
        );
    }
}
