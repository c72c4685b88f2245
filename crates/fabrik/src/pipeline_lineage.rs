//! A pipeline's OpenLineage runs (decision 0080): its scoring, a streaming run that reads its
//! table (and its ONNX model) and writes `inferences`; and each model a device learns, a
//! training run under it whose output is that device's model, versioned by the span of rows
//! it learnt from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fabrik_ml::pipeline::Inference;
use fabrik_runtime::config::PipelineConfig;
use fabrik_store::Store;
use parking_lot::Mutex;

use crate::openlineage::{
    Dataset, Emitter, EventType, Field, JobRun, KEEP_FREE, StreamingRun, now, table_dataset,
};

/// The columns of `inferences` every pipeline writes, typed in the store's words: read off
/// the row `pipelines::inference_point` makes, so the two cannot drift apart.
fn inference_columns() -> Vec<Field> {
    let verdict = Inference {
        device: String::new(),
        window_start_ns: 0,
        window_end_ns: 1,
        samples: 0,
        last_arrival: 0,
        score: 0.0,
        threshold: 0.0,
        flag: false,
        contributions: Vec::new(),
        // Written only when there is one: present here so the column is listed.
        top_signal: Some(String::new()),
        model_version: String::new(),
        trained_from_ns: 0,
        trained_until_ns: 0,
    };
    let row = crate::pipelines::inference_point("", "", "", &verdict);
    std::iter::once(Field::new("time", Some("timestamp".into())))
        .chain(
            row.tags
                .iter()
                .map(|(tag, _)| Field::new(tag.clone(), Some("string".into()))),
        )
        .chain(row.fields.iter().map(|(field, value)| {
            Field::new(field.clone(), Some(value.field_type().name().to_owned()))
        }))
        .collect()
}

/// Where a pipeline's ONNX model comes from, for its dataset's name.
pub(crate) enum ModelFile<'a> {
    /// `model_path`, a file on this node.
    Path(&'a str),
    /// `model_name`, uploaded through the API.
    Uploaded(&'a str),
}

/// A device's model, learnt and not reported yet.
struct Learnt {
    span: (i64, i64),
    /// The version its verdicts carry (the champion's or, on a device an A/B split gave the
    /// challenger, the challenger's).
    version: String,
}

/// One run of one pipeline's definition, from its start (or failed load) to its stop.
pub(crate) struct PipelineLineage {
    scoring: StreamingRun,
    /// The tables read, with the columns read of each: the one the windows are read from,
    /// and the outcomes a classifier's performance is estimated against. Their types are read
    /// at each event, so a table written after the start has them later.
    tables: Vec<(String, Vec<String>)>,
    store: Arc<Store>,
    /// The ONNX model that scores them.
    model: Option<Dataset>,
    /// What the run writes: `inferences`, and with their settings `model_drift`,
    /// `model_performance` and `shadow_inferences`.
    outputs: Vec<Dataset>,
    pipeline: String,
    /// Per device, the span of rows its model learnt from and its version, as last reported.
    reported: Mutex<HashMap<String, Learnt>>,
    /// Models learnt and waiting for room in the queue, by device.
    pending: Mutex<BTreeMap<String, Learnt>>,
}

impl PipelineLineage {
    /// The run of `config` that starts now; `model`: its ONNX model's file and, once loaded,
    /// content version.
    pub(crate) fn new(
        emitter: &Emitter,
        config: &PipelineConfig,
        store: Arc<Store>,
        model: Option<(ModelFile<'_>, Option<String>)>,
    ) -> Self {
        let model = model.map(|(file, version)| {
            let mut model = match file {
                // OpenLineage's naming of a local file: namespace `file`, the absolute path.
                ModelFile::Path(path) => {
                    let absolute = std::path::absolute(path)
                        .map_or_else(|_| path.to_owned(), |p| p.display().to_string());
                    Dataset::new("file", absolute)
                }
                ModelFile::Uploaded(name) => {
                    Dataset::new(&emitter.datasets, format!("models/{name}"))
                }
            };
            model.version = version;
            model
        });
        let mut inferences = Dataset::new(&emitter.datasets, crate::pipelines::INFERENCES_TABLE);
        inferences.schema = inference_columns();
        if config.use_case.is_some() {
            for column in ["use_case", "stage"] {
                inferences
                    .schema
                    .push(Field::new(column, Some("string".into())));
            }
        }
        let mut outputs = vec![inferences];
        if config.drift.is_some() {
            outputs.push(Dataset::new(&emitter.datasets, crate::drift::DRIFT_TABLE));
        }
        let mut tables = vec![(
            config.table.clone(),
            std::iter::once(&config.device_column)
                .chain(&config.signals)
                .cloned()
                .collect(),
        )];
        if let Some(performance) = &config.performance {
            tables.push((
                performance.targets.clone(),
                vec![
                    performance.device_column.clone(),
                    performance.target.clone(),
                ],
            ));
            outputs.push(Dataset::new(
                &emitter.datasets,
                crate::performance::PERFORMANCE_TABLE,
            ));
        }
        if let Some(shadow) = &config.shadow {
            if shadow.live_share.is_some() || !shadow.live_devices.is_empty() {
                outputs[0].schema.push(Field::new(
                    crate::pipelines::CHALLENGER_COLUMN,
                    Some("boolean".into()),
                ));
            }
            outputs.push(Dataset::new(&emitter.datasets, crate::shadow::SHADOW_TABLE));
        }
        Self {
            scoring: StreamingRun::new(
                emitter,
                format!("pipeline.{}", config.name),
                "INFERENCE",
                None,
            ),
            tables,
            store,
            model,
            outputs,
            pipeline: config.name.clone(),
            reported: Mutex::new(HashMap::new()),
            pending: Mutex::new(BTreeMap::new()),
        }
    }

    /// The challenger did not load: the run writes no `shadow_inferences`.
    pub(crate) fn without_challenger(&mut self) {
        self.outputs
            .retain(|d| d.name != crate::shadow::SHADOW_TABLE);
    }

    fn inputs(&self) -> Vec<Dataset> {
        self.inputs_of(&self.tables)
    }

    /// What a device's model learns from: the windows' table (not the outcomes), and the ONNX
    /// model it calibrates.
    fn training_inputs(&self) -> Vec<Dataset> {
        self.inputs_of(&self.tables[..1])
    }

    fn inputs_of(&self, tables: &[(String, Vec<String>)]) -> Vec<Dataset> {
        let namespace = &self.scoring.emitter().datasets;
        tables
            .iter()
            .map(|(table, columns)| table_dataset(&self.store, namespace, table, columns))
            .chain(self.model.clone())
            .collect()
    }

    fn outputs(&self, rows_written: Option<u64>) -> Vec<Dataset> {
        let mut outputs = self.outputs.clone();
        if let Some(first) = outputs.first_mut() {
            first.rows_written = rows_written;
        }
        outputs
    }

    /// The pipeline loaded and starts scoring.
    pub(crate) fn started(&self) {
        self.scoring.started(&self.inputs(), &self.outputs(None));
    }

    /// The pipeline could not load: why.
    pub(crate) fn failed(&self, error: &str) {
        self.scoring
            .failed(&self.inputs(), &self.outputs(None), error);
    }

    /// Once a pass: the models learnt that the queue has room for, and a RUNNING event with
    /// the rows written to `inferences` so far when `running_interval` has passed since the
    /// last.
    pub(crate) fn pass(&self, rows_written: u64) {
        self.report_learnt();
        if self.scoring.running_due() {
            self.scoring.emit(
                EventType::Running,
                &self.inputs(),
                &self.outputs(Some(rows_written)),
                None,
            );
        }
    }

    /// The pipeline stopped (the process stops, or its definition was replaced or removed):
    /// the models learnt that still fit, then the end.
    pub(crate) fn ended(&self, rows_written: u64) {
        self.report_learnt();
        self.scoring.emit(
            EventType::Complete,
            &self.inputs(),
            &self.outputs(Some(rows_written)),
            None,
        );
    }

    /// Notes the models learnt behind `inferences` — a device's span of rows that differs from
    /// the one reported last — and reports what the queue has room for; `model_version`
    /// turns a verdict's model version into the one its row carries.
    pub(crate) fn learnt(&self, inferences: &[Inference], model_version: impl Fn(&str) -> String) {
        {
            let reported = self.reported.lock();
            let mut pending = self.pending.lock();
            for inference in inferences {
                let span = (inference.trained_from_ns, inference.trained_until_ns);
                let version = model_version(&inference.model_version);
                let known = pending
                    .get(&inference.device)
                    .or_else(|| reported.get(&inference.device));
                if known.is_some_and(|learnt| learnt.span == span && learnt.version == version) {
                    continue;
                }
                pending.insert(inference.device.clone(), Learnt { span, version });
            }
        }
        self.report_learnt();
    }

    /// A training run (START and COMPLETE) for each model learnt, as far as the queue has
    /// room beyond [`KEEP_FREE`] (a fleet whose devices all learn at once is reported over
    /// several passes); the rest wait for the next pass.
    fn report_learnt(&self) {
        let emitter = self.scoring.emitter();
        let mut inputs = None;
        loop {
            if emitter.room() < KEEP_FREE + 2 {
                return;
            }
            let Some((device, learnt)) = self.pending.lock().pop_first() else {
                return;
            };
            let inputs = inputs.get_or_insert_with(|| self.training_inputs());
            let scoring = &self.scoring.run;
            let until = learnt.span.1;
            let mut run = JobRun::batch(
                emitter,
                format!("{}.training", scoring.job_name),
                "TRAINING",
                learnt.span,
            );
            run.parent = Some((
                scoring.job_namespace.clone(),
                scoring.job_name.clone(),
                scoring.run_id.clone(),
            ));
            let mut model = Dataset::new(
                &emitter.datasets,
                format!("models/{}/{device}", self.pipeline),
            );
            model.version = Some(format!(
                "{}@{}",
                learnt.version,
                crate::pipelines::rfc3339(until)
            ));
            let at = now();
            emitter.emit_all(&[
                run.event(EventType::Start, &at, inputs, &[], None),
                run.event(
                    EventType::Complete,
                    &at,
                    inputs,
                    std::slice::from_ref(&model),
                    None,
                ),
            ]);
            self.reported.lock().insert(device, learnt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(device: &str, span: (i64, i64)) -> Inference {
        Inference {
            device: device.into(),
            window_start_ns: span.1,
            window_end_ns: span.1 + 1,
            samples: 1,
            last_arrival: 0,
            score: 0.0,
            threshold: 1.0,
            flag: false,
            contributions: Vec::new(),
            top_signal: None,
            model_version: "1".into(),
            trained_from_ns: span.0,
            trained_until_ns: span.1,
        }
    }

    fn pumps() -> PipelineConfig {
        let mut config = crate::pipelines::demo_pipeline();
        config.name = "pumps".into();
        config.table = "pump".into();
        config.signals = vec!["vibration".into()];
        config
    }

    fn drained(sender: &mut crate::openlineage::Sender) -> Vec<serde_json::Value> {
        sender.take_queued_file_events()
    }

    /// A fleet whose devices all learn in one pass is reported as the queue has room, over
    /// the passes that follow, each model once; a span learnt again is reported again.
    #[tokio::test]
    async fn learnt_models_wait_for_room_in_the_queue_and_are_reported_once() {
        let (_dir, store) = crate::test_store::store_with("pump,device=p-0 vibration=1 1\n").await;
        let (emitter, mut sender) = crate::openlineage::test_channel("edge-1");
        let config = pumps();
        let lineage = PipelineLineage::new(&emitter, &config, store, None);
        lineage.started();
        let fleet: Vec<Inference> = (0..2000)
            .map(|i| verdict(&format!("p-{i}"), (10, 20)))
            .collect();
        lineage.learnt(&fleet, |v| format!("{v}+x"));
        let first = drained(&mut sender);
        let trained = |events: &[serde_json::Value]| {
            events
                .iter()
                .filter(|e| {
                    e["job"]["name"] == "pipeline.pumps.training" && e["eventType"] == "COMPLETE"
                })
                .count()
        };
        assert!(
            trained(&first) > 0 && trained(&first) < 2000,
            "{} reported at once",
            trained(&first)
        );
        let mut total = trained(&first);
        // The same verdicts again report nothing new; each pass reports what now fits.
        for _ in 0..20 {
            lineage.learnt(&fleet, |v| format!("{v}+x"));
            lineage.pass(0);
            total += trained(&drained(&mut sender));
        }
        assert_eq!(total, 2000, "every model once");
        lineage.learnt(&[verdict("p-7", (10, 30))], |v| format!("{v}+x"));
        let again = drained(&mut sender);
        assert_eq!(trained(&again), 1, "p-7 learnt from a new span");
        assert_eq!(
            again[1]["outputs"][0]["facets"]["version"]["datasetVersion"],
            "1+x@1970-01-01T00:00:00.000Z"
        );
    }

    /// The `inferences` schema the events carry is the row a verdict becomes, typed as stored.
    #[test]
    fn the_inferences_columns_are_those_a_verdict_is_written_with() {
        let columns: Vec<(String, String)> = inference_columns()
            .into_iter()
            .map(|f| (f.name, f.kind.unwrap_or_default()))
            .collect();
        let expected = [
            ("time", "timestamp"),
            ("pipeline", "string"),
            ("device", "string"),
            ("model", "string"),
            ("score", "float"),
            ("threshold", "float"),
            ("flag", "boolean"),
            ("window_start", "integer"),
            ("window_end", "integer"),
            ("samples", "integer"),
            ("last_arrival", "integer"),
            ("window_id", "string"),
            ("contributions", "string"),
            ("model_version", "string"),
            ("trained_from", "integer"),
            ("trained_until", "integer"),
            ("top_signal", "string"),
        ]
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()));
        assert_eq!(columns, expected);
    }

    /// Drift checks and performance estimation write tables of their own, and the estimate
    /// reads the outcomes table: the run names them.
    #[tokio::test]
    async fn drift_and_performance_add_their_tables() {
        let (_dir, store) = crate::test_store::store_with("pump,device=p-0 vibration=1 1\n").await;
        let (emitter, mut sender) = crate::openlineage::test_channel("edge-1");
        let mut config = pumps();
        config.shadow = None;
        config.drift = Some(serde_json::from_value(serde_json::json!({})).expect("drift"));
        config.performance = Some(
            serde_json::from_value(serde_json::json!({
                "targets": "inspections", "target": "defect", "device_column": "line"
            }))
            .expect("performance"),
        );
        PipelineLineage::new(&emitter, &config, store, None).started();
        let start = &drained(&mut sender)[0];
        let names = |key: &str| -> Vec<String> {
            start[key]
                .as_array()
                .expect("datasets")
                .iter()
                .map(|d| d["name"].as_str().unwrap_or("?").to_owned())
                .collect()
        };
        assert_eq!(names("inputs"), ["pump", "inspections"]);
        assert_eq!(
            names("outputs"),
            ["inferences", "model_drift", "model_performance"]
        );
        let outcomes = &start["inputs"][1]["facets"]["schema"]["fields"];
        assert_eq!(outcomes[1]["name"], "line", "{outcomes}");
        assert_eq!(outcomes[2]["name"], "defect", "{outcomes}");
    }

    /// A run ends once; one dropped after its start without an end (its task failed) fails.
    #[tokio::test]
    async fn a_run_ends_once_and_one_dropped_unended_fails() {
        let (_dir, store) = crate::test_store::store_with("pump,device=p-0 vibration=1 1\n").await;
        let (emitter, mut sender) = crate::openlineage::test_channel("edge-1");
        let config = pumps();
        let ended = PipelineLineage::new(&emitter, &config, store.clone(), None);
        ended.started();
        ended.ended(3);
        ended.ended(3);
        drop(ended);
        let types = |events: Vec<serde_json::Value>| -> Vec<String> {
            events
                .iter()
                .map(|e| e["eventType"].as_str().unwrap_or("?").to_owned())
                .collect()
        };
        assert_eq!(types(drained(&mut sender)), ["START", "COMPLETE"]);
        let failed = PipelineLineage::new(&emitter, &config, store.clone(), None);
        failed.started();
        drop(failed);
        let events = drained(&mut sender);
        assert_eq!(types(events.clone()), ["START", "FAIL"]);
        assert!(
            events[1]["run"]["facets"]["errorMessage"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("ended without stopping")),
            "{}",
            events[1]
        );
        // Never started (stopped while it loaded): nothing.
        drop(PipelineLineage::new(&emitter, &config, store, None));
        assert!(drained(&mut sender).is_empty());
    }
}
