//! A pipeline's OpenLineage runs (decision 0080): its scoring, a streaming run that reads its
//! table (and its ONNX model) and writes `inferences`; and each model a device learns, a
//! training run under it whose output is that device's model, versioned by the span of rows
//! it learnt from.

use std::collections::HashMap;
use std::sync::Arc;

use fabrik_ml::pipeline::Inference;
use fabrik_runtime::config::PipelineConfig;
use fabrik_store::Store;
use parking_lot::Mutex;

use crate::openlineage::{
    Dataset, Emitter, EventType, Field, JobRun, Processing, StreamingRun, now, run_id,
};

/// The columns of `inferences` every pipeline writes, and their types in the store's words.
const INFERENCE_COLUMNS: [(&str, &str); 17] = [
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
];

/// Where a pipeline's ONNX model comes from, for its dataset's name.
pub(crate) enum ModelFile<'a> {
    /// `model_path`, a file on this node.
    Path(&'a str),
    /// `model_name`, uploaded through the API.
    Uploaded(&'a str),
}

/// One run of one pipeline's definition, from its start (or failed load) to its stop.
pub(crate) struct PipelineLineage {
    scoring: StreamingRun,
    /// The table the windows are read from, and the columns the pipeline reads of it.
    table: String,
    columns: Vec<String>,
    /// Where the columns' types are read, at each event: a table written after the
    /// pipeline started has them by its later events.
    store: Arc<Store>,
    /// The ONNX model that scores them, once loaded.
    model: Option<Dataset>,
    /// What the run writes: `inferences`, and `shadow_inferences` with a challenger.
    outputs: Vec<Dataset>,
    pipeline: String,
    /// Per device, the span of rows its model learnt from, as last reported.
    trained: Mutex<HashMap<String, (i64, i64)>>,
}

impl PipelineLineage {
    /// The run of `config` that starts now, reading the column types of its table from
    /// `store` (those not written yet are left untyped); `model`: its ONNX model's file and,
    /// once loaded, content version.
    pub(crate) fn new(
        emitter: Emitter,
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
        inferences.schema = INFERENCE_COLUMNS
            .iter()
            .map(|(name, kind)| Field::new(*name, Some((*kind).to_owned())))
            .collect();
        if config.use_case.is_some() {
            inferences
                .schema
                .push(Field::new("use_case", Some("string".into())));
            inferences
                .schema
                .push(Field::new("stage", Some("string".into())));
        }
        let mut outputs = vec![inferences];
        if config.shadow.is_some() {
            outputs.push(Dataset::new(&emitter.datasets, crate::shadow::SHADOW_TABLE));
        }
        let scoring = StreamingRun::new(
            &emitter,
            format!("pipeline.{}", config.name),
            "INFERENCE",
            None,
        );
        Self {
            scoring,
            table: config.table.clone(),
            columns: std::iter::once(&config.device_column)
                .chain(&config.signals)
                .cloned()
                .collect(),
            store,
            model,
            outputs,
            pipeline: config.name.clone(),
            trained: Mutex::new(HashMap::new()),
        }
    }

    /// The table, with the types its columns have in the store now (none for a column not
    /// written yet), and the ONNX model.
    fn inputs(&self) -> Vec<Dataset> {
        let known = self
            .store
            .tables()
            .into_iter()
            .find(|t| t.name == self.table);
        let kind_of = |column: &str| -> Option<String> {
            let table = known.as_ref()?;
            if table.tags.iter().any(|tag| tag == column) {
                return Some("string".into());
            }
            table
                .fields
                .iter()
                .find(|(field, _)| field == column)
                .map(|(_, kind)| kind.clone())
        };
        let mut table = Dataset::new(&self.scoring.emitter().datasets, self.table.clone());
        table.schema = std::iter::once(Field::new("time", Some("timestamp".into())))
            .chain(self.columns.iter().map(|c| Field::new(c, kind_of(c))))
            .collect();
        std::iter::once(table).chain(self.model.clone()).collect()
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

    /// A RUNNING event with the inferences written so far, when `running_interval` has passed
    /// since the last.
    pub(crate) fn running(&self, inferences: u64) {
        if self.scoring.running_due() {
            self.scoring.emit(
                EventType::Running,
                &self.inputs(),
                &self.outputs(Some(inferences)),
                None,
            );
        }
    }

    /// The pipeline stopped (the process stops, or its definition was replaced or removed).
    pub(crate) fn ended(&self, inferences: u64) {
        self.scoring.emit(
            EventType::Complete,
            &self.inputs(),
            &self.outputs(Some(inferences)),
            None,
        );
    }

    /// A training run for each device whose model learnt from a span not reported yet, as
    /// the champion's stored `inferences` show it; `model_version` as the rows carry it.
    pub(crate) fn trained(&self, inferences: &[Inference], model_version: impl Fn(&str) -> String) {
        let mut trained = self.trained.lock();
        let mut inputs = None;
        for inference in inferences {
            let span = (inference.trained_from_ns, inference.trained_until_ns);
            if trained.get(&inference.device) == Some(&span) {
                continue;
            }
            trained.insert(inference.device.clone(), span);
            let scoring = &self.scoring.run;
            let run = JobRun {
                run_id: run_id(),
                job_namespace: scoring.job_namespace.clone(),
                job_name: format!("{}.training", scoring.job_name),
                processing: Processing::Batch,
                job_type: "TRAINING",
                parent: Some((
                    scoring.job_namespace.clone(),
                    scoring.job_name.clone(),
                    scoring.run_id.clone(),
                )),
                nominal: Some((
                    crate::pipelines::rfc3339(span.0),
                    crate::pipelines::rfc3339(span.1),
                )),
                sql: None,
            };
            let version = model_version(&inference.model_version);
            let emitter = self.scoring.emitter();
            let mut model = Dataset::new(
                &emitter.datasets,
                format!("models/{}/{}", self.pipeline, inference.device),
            );
            model.version = Some(format!("{version}@{}", crate::pipelines::rfc3339(span.1)));
            let inputs = inputs.get_or_insert_with(|| self.inputs());
            let at = now();
            emitter.emit(run.event(EventType::Start, &at, inputs, &[], None));
            emitter.emit(run.event(
                EventType::Complete,
                &at,
                inputs,
                std::slice::from_ref(&model),
                None,
            ));
        }
    }
}
