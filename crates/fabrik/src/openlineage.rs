//! OpenLineage run events (decision 0080): their shapes (spec 2-0-2 and each facet's own
//! schema version, as OpenLineage's Python client writes them), run ids, and the sender that
//! takes them to a lineage catalog over HTTP and appends them to a JSON-lines file.
//!
//! Knows datasets, jobs and runs, not what they are: the jobs' modules (`pipeline_lineage`,
//! `hub_lineage`, `ingest_lineage`, the alert rules in `alerts`, the use cases' KPIs in
//! `kpi_series`) say what a run reads and writes; `open_runs` which runs a killed process left
//! open.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fabrik_runtime::config::OpenLineageSettings;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::open_runs::OpenRuns;

/// Events waiting for each transport; beyond this they are dropped (and counted), so a
/// catalog that is down never holds up a pipeline or grows memory.
const QUEUE: usize = 1024;
/// Tries per event over HTTP before it is dropped.
const ATTEMPTS: u32 = 5;
/// The wait before the second try; doubled before each one after.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long events still queued at shutdown may take to go out.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);
/// How long the list of open runs may take to be written after the drain.
pub(crate) const FINAL_WRITE: Duration = Duration::from_secs(2);
/// Queue slots that reports which can wait or be skipped (training runs, edges' starts, KPI
/// measurements) leave free, for the ends of runs already begun.
pub(crate) const KEEP_FREE: usize = 64;

/// The event schema every event names.
const RUN_EVENT_SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
/// What made the events: this build of Fabrik.
const PRODUCER: &str = concat!(
    "https://github.com/fabrik-iot/fabrik/tree/v",
    env!("CARGO_PKG_VERSION")
);
/// The `integration` of every job's `jobType` facet.
const INTEGRATION: &str = "FABRIK";

const SCHEMA_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet";
const JOB_TYPE_FACET: &str =
    "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet";
const NOMINAL_TIME_FACET: &str =
    "https://openlineage.io/spec/facets/1-0-1/NominalTimeRunFacet.json#/$defs/NominalTimeRunFacet";
const PROCESSING_ENGINE_FACET: &str = "https://openlineage.io/spec/facets/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet";
const DATASET_VERSION_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet";
const PARENT_RUN_FACET: &str =
    "https://openlineage.io/spec/facets/1-2-0/ParentRunFacet.json#/$defs/ParentRunFacet";
const ERROR_MESSAGE_FACET: &str = "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet";
const SQL_FACET: &str =
    "https://openlineage.io/spec/facets/1-1-0/SQLJobFacet.json#/$defs/SQLJobFacet";
const OUTPUT_STATISTICS_FACET: &str = "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet";

/// A run's transition, as the spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Start,
    Running,
    Complete,
    Fail,
    /// Ended abnormally: sent at the next start for a run a killed process left open.
    Abort,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Start => "START",
            EventType::Running => "RUNNING",
            EventType::Complete => "COMPLETE",
            EventType::Fail => "FAIL",
            EventType::Abort => "ABORT",
        }
    }
}

/// A facet: its fields with the `_producer` and `_schemaURL` every facet carries.
fn facet(schema_url: &str, fields: Value) -> Value {
    let mut facet = fields;
    if let Value::Object(map) = &mut facet {
        map.insert("_producer".into(), PRODUCER.into());
        map.insert("_schemaURL".into(), schema_url.into());
    }
    facet
}

/// One column of a dataset's `schema` facet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: String,
    /// The column's type in the store's words (`timestamp`, `string`, `float`, …), if known.
    pub(crate) kind: Option<String>,
}

impl Field {
    pub(crate) fn new(name: impl Into<String>, kind: Option<String>) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }
}

/// A dataset a run reads or writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Dataset {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// Its columns, if known (the `schema` facet).
    pub(crate) schema: Vec<Field>,
    /// Its version (the `version` facet), for one that changes as a whole, such as a model.
    pub(crate) version: Option<String>,
    /// Rows the run wrote into it so far (an output's `outputStatistics` facet).
    pub(crate) rows_written: Option<u64>,
}

impl Dataset {
    pub(crate) fn new(namespace: &str, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.into(),
            schema: Vec::new(),
            version: None,
            rows_written: None,
        }
    }

    fn facets(&self) -> Value {
        let mut facets = serde_json::Map::new();
        if !self.schema.is_empty() {
            let fields: Vec<Value> = self
                .schema
                .iter()
                .map(|f| match &f.kind {
                    Some(kind) => json!({ "name": f.name, "type": kind, "fields": [] }),
                    None => json!({ "name": f.name, "fields": [] }),
                })
                .collect();
            facets.insert(
                "schema".into(),
                facet(SCHEMA_FACET, json!({ "fields": fields })),
            );
        }
        if let Some(version) = &self.version {
            facets.insert(
                "version".into(),
                facet(DATASET_VERSION_FACET, json!({ "datasetVersion": version })),
            );
        }
        Value::Object(facets)
    }

    fn as_input(&self) -> Value {
        json!({
            "namespace": self.namespace,
            "name": self.name,
            "facets": self.facets(),
            "inputFacets": {},
        })
    }

    fn as_output(&self) -> Value {
        let output_facets = match self.rows_written {
            Some(rows) => json!({
                "outputStatistics": facet(OUTPUT_STATISTICS_FACET, json!({ "rowCount": rows })),
            }),
            None => json!({}),
        };
        json!({
            "namespace": self.namespace,
            "name": self.name,
            "facets": self.facets(),
            "outputFacets": output_facets,
        })
    }
}

/// How a job processes its data (the `jobType` facet's `processingType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Processing {
    /// Finite: a model learnt from a span of rows.
    Batch,
    /// Continuous: a pipeline scoring windows as they close.
    Streaming,
}

/// A job and one run of it: what every event of that run repeats.
#[derive(Debug, Clone)]
pub(crate) struct JobRun {
    pub(crate) run_id: String,
    pub(crate) job_namespace: String,
    pub(crate) job_name: String,
    pub(crate) processing: Processing,
    /// The `jobType` facet's `jobType` (`INFERENCE`, `TRAINING`).
    pub(crate) job_type: Cow<'static, str>,
    /// The run this one is part of (the `parent` facet): job namespace, job name, run id.
    pub(crate) parent: Option<(String, String, String)>,
    /// The span of data the run is about (the `nominalTime` facet), RFC 3339.
    pub(crate) nominal: Option<(String, String)>,
    /// The query the job reads its input with (the `sql` facet, DataFusion's dialect).
    pub(crate) sql: Option<String>,
}

impl JobRun {
    /// A new run of the finite job `name` (in `emitter`'s job namespace) about the data of
    /// `span`, in ns (its `nominalTime`).
    pub(crate) fn batch(
        emitter: &Emitter,
        name: String,
        job_type: &'static str,
        span: (i64, i64),
    ) -> Self {
        Self {
            run_id: run_id(),
            job_namespace: emitter.jobs.clone(),
            job_name: name,
            processing: Processing::Batch,
            job_type: job_type.into(),
            parent: None,
            nominal: Some((
                crate::pipelines::rfc3339(span.0),
                crate::pipelines::rfc3339(span.1),
            )),
            sql: None,
        }
    }

    /// The event `event_type` of this run at `event_time` (RFC 3339), reading `inputs` and
    /// writing `outputs`; `error`: why it failed.
    pub(crate) fn event(
        &self,
        event_type: EventType,
        event_time: &str,
        inputs: &[Dataset],
        outputs: &[Dataset],
        error: Option<&str>,
    ) -> Value {
        let mut run_facets = serde_json::Map::new();
        run_facets.insert(
            "processing_engine".into(),
            facet(
                PROCESSING_ENGINE_FACET,
                json!({
                    "name": "fabrik",
                    "version": env!("CARGO_PKG_VERSION"),
                    "openlineageAdapterVersion": env!("CARGO_PKG_VERSION"),
                }),
            ),
        );
        if let Some((start, end)) = &self.nominal {
            run_facets.insert(
                "nominalTime".into(),
                facet(
                    NOMINAL_TIME_FACET,
                    json!({ "nominalStartTime": start, "nominalEndTime": end }),
                ),
            );
        }
        if let Some((namespace, name, run_id)) = &self.parent {
            run_facets.insert(
                "parent".into(),
                facet(
                    PARENT_RUN_FACET,
                    json!({
                        "run": { "runId": run_id, "facets": {} },
                        "job": { "namespace": namespace, "name": name, "facets": {} },
                    }),
                ),
            );
        }
        if let Some(message) = error {
            run_facets.insert(
                "errorMessage".into(),
                facet(
                    ERROR_MESSAGE_FACET,
                    json!({ "message": message, "programmingLanguage": "RUST" }),
                ),
            );
        }
        let processing = match self.processing {
            Processing::Batch => "BATCH",
            Processing::Streaming => "STREAMING",
        };
        let mut job_facets = serde_json::Map::new();
        job_facets.insert(
            "jobType".into(),
            facet(
                JOB_TYPE_FACET,
                json!({
                    "processingType": processing,
                    "integration": INTEGRATION,
                    "jobType": self.job_type,
                }),
            ),
        );
        if let Some(query) = &self.sql {
            job_facets.insert(
                "sql".into(),
                facet(
                    SQL_FACET,
                    json!({ "query": query, "dialect": "datafusion" }),
                ),
            );
        }
        json!({
            "eventTime": event_time,
            "eventType": event_type.as_str(),
            "producer": PRODUCER,
            "schemaURL": RUN_EVENT_SCHEMA,
            "run": { "runId": self.run_id, "facets": run_facets },
            "job": {
                "namespace": self.job_namespace,
                "name": self.job_name,
                "facets": job_facets,
            },
            "inputs": inputs.iter().map(Dataset::as_input).collect::<Vec<_>>(),
            "outputs": outputs.iter().map(Dataset::as_output).collect::<Vec<_>>(),
        })
    }
}

/// One run of a continuous job (a pipeline scoring windows, an alert rule watching rows, a
/// connector's ingest, an edge's uplink):
/// a START, a RUNNING every `running_interval` while it runs, and its end — or, when it could
/// not begin, a START and a FAIL, as every run must begin and end.
#[derive(Debug)]
pub(crate) struct StreamingRun {
    emitter: Emitter,
    pub(crate) run: JobRun,
    last_running: parking_lot::Mutex<std::time::Instant>,
    /// Whether it began (a START was sent) and whether it ended: one dropped in between (its
    /// task panicked) sends a FAIL, so no run stays open in the catalog.
    began: AtomicBool,
    ended: AtomicBool,
}

impl Drop for StreamingRun {
    fn drop(&mut self) {
        if self.began.load(Ordering::Relaxed) && !self.ended.load(Ordering::Relaxed) {
            self.emit(
                EventType::Fail,
                &[],
                &[],
                Some("the job ended without stopping (its task failed)"),
            );
        }
    }
}

impl StreamingRun {
    /// A new run of job `name` in the emitter's job namespace.
    pub(crate) fn new(
        emitter: &Emitter,
        name: String,
        job_type: &'static str,
        sql: Option<String>,
    ) -> Self {
        Self {
            emitter: emitter.clone(),
            run: JobRun {
                run_id: run_id(),
                job_namespace: emitter.jobs.clone(),
                job_name: name,
                processing: Processing::Streaming,
                job_type: job_type.into(),
                parent: None,
                nominal: None,
                sql,
            },
            last_running: parking_lot::Mutex::new(std::time::Instant::now()),
            began: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        }
    }

    /// The emitter the run's events go to.
    pub(crate) fn emitter(&self) -> &Emitter {
        &self.emitter
    }

    /// Queues the run's `event_type` event now; after its end, nothing.
    pub(crate) fn emit(
        &self,
        event_type: EventType,
        inputs: &[Dataset],
        outputs: &[Dataset],
        error: Option<&str>,
    ) {
        match event_type {
            EventType::Start => self.began.store(true, Ordering::Relaxed),
            EventType::Complete | EventType::Fail | EventType::Abort => {
                if self.ended.swap(true, Ordering::Relaxed) {
                    return;
                }
            }
            EventType::Running => {}
        }
        let event = self.run.event(event_type, &now(), inputs, outputs, error);
        let took = self.emitter.queue(std::slice::from_ref(&event), None);
        // Open on each transport that took its START until that transport delivers its end.
        if event_type == EventType::Start {
            self.emitter.open_runs.began(&self.run, &took);
        }
    }

    /// The run began.
    pub(crate) fn started(&self, inputs: &[Dataset], outputs: &[Dataset]) {
        *self.last_running.lock() = std::time::Instant::now();
        self.emit(EventType::Start, inputs, outputs, None);
    }

    /// The run could not begin: why. Its START and FAIL are queued together or not at all.
    pub(crate) fn failed(&self, inputs: &[Dataset], outputs: &[Dataset], error: &str) {
        self.began.store(true, Ordering::Relaxed);
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        let at = now();
        self.emitter.emit_all(&[
            self.run.event(EventType::Start, &at, inputs, outputs, None),
            self.run
                .event(EventType::Fail, &at, inputs, outputs, Some(error)),
        ]);
    }

    /// Whether a RUNNING event is due (and, if so, the next one is an interval from now).
    pub(crate) fn running_due(&self) -> bool {
        let Some(every) = self.emitter.running_interval else {
            return false;
        };
        let mut last = self.last_running.lock();
        if last.elapsed() < every {
            return false;
        }
        *last = std::time::Instant::now();
        true
    }
}

/// Table `table` of `store` as a dataset in `namespace`, with `columns` after `time`, typed
/// as the store holds them now (a tag as `string`; a column not written yet untyped).
pub(crate) fn table_dataset(
    store: &fabrik_store::Store,
    namespace: &str,
    table: &str,
    columns: &[String],
) -> Dataset {
    let known = store.tables().into_iter().find(|t| t.name == table);
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
    let mut dataset = Dataset::new(namespace, table.to_owned());
    dataset.schema = std::iter::once(Field::new("time", Some("timestamp".into())))
        .chain(columns.iter().map(|c| Field::new(c.clone(), kind_of(c))))
        .collect();
    dataset
}

/// A new run id: a UUID version 7 (RFC 9562), time-ordered as OpenLineage's clients make them,
/// so a catalog lists runs in the order they began.
pub(crate) fn run_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut bytes = [0u8; 16];
    // Without randomness the id is still unique enough within this process's clock; a run id
    // is a name, not a secret.
    if getrandom::fill(&mut bytes[6..]).is_err() {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes[6..10].copy_from_slice(&nanos.to_be_bytes());
    }
    bytes[..6].copy_from_slice(&(millis as u64).to_be_bytes()[2..]);
    bytes[6] = (bytes[6] & 0x0f) | 0x70;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Now, in RFC 3339 with milliseconds, as events carry their time.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The transports, as metrics and the list of open runs name them.
const HTTP: &str = "http";
const FILE: &str = "file";

/// An event as queued: its JSON text (shared by the transports), and the streaming run it ends,
/// if it ends one, whose delivery the list of open runs waits for.
#[derive(Debug, Clone)]
struct Outgoing {
    line: Arc<str>,
    ends: Option<Arc<str>>,
}

/// Where events go: a handle every job emitting them holds (cheap to clone). Sending never
/// waits: a full queue drops the event and counts it.
#[derive(Debug, Clone)]
pub(crate) struct Emitter {
    /// The catalog's queue and the file's: each transport drains its own, so a catalog that
    /// is slow or down never keeps an event from the file.
    http: Option<mpsc::Sender<Outgoing>>,
    file: Option<mpsc::Sender<Outgoing>>,
    /// The namespace of Fabrik's datasets on this node, `fabrik://<node>`.
    pub(crate) datasets: String,
    /// The namespace of its jobs.
    pub(crate) jobs: String,
    /// Between a streaming run's RUNNING events; `None`: none.
    pub(crate) running_interval: Option<Duration>,
    /// The streaming runs that may be open on a transport.
    open_runs: Arc<OpenRuns>,
}

impl Emitter {
    /// Queues `events` (a run's START and its end) for each transport all or none: a START
    /// whose end found the queue full would stay open in the catalog.
    pub(crate) fn emit_all(&self, events: &[Value]) {
        self.queue(events, None);
    }

    /// Whether `transport` is one this emitter sends to, still open.
    pub(crate) fn accepts(&self, transport: &str) -> bool {
        let queue = match transport {
            HTTP => &self.http,
            FILE => &self.file,
            _ => return false,
        };
        queue.as_ref().is_some_and(|q| !q.is_closed())
    }

    /// Queues `event` for those of `transports` this emitter sends to; the ones that took it.
    pub(crate) fn emit_to(&self, event: &Value, transports: &[String]) -> Vec<&'static str> {
        self.queue(std::slice::from_ref(event), Some(transports))
    }

    /// Queues `events` all or none per transport (of `only`, if given); the transports that
    /// took them.
    fn queue(&self, events: &[Value], only: Option<&[String]>) -> Vec<&'static str> {
        let lines: Vec<Outgoing> = events
            .iter()
            .map(|e| Outgoing {
                line: e.to_string().into(),
                ends: crate::open_runs::run_ended_by(e).map(Into::into),
            })
            .collect();
        let mut took = Vec::new();
        for (queue, transport) in [(&self.http, HTTP), (&self.file, FILE)] {
            let Some(queue) = queue else { continue };
            if only.is_some_and(|only| !only.iter().any(|t| t == transport)) {
                continue;
            }
            match queue.try_reserve_many(lines.len()) {
                Ok(permits) => {
                    for (permit, line) in permits.zip(&lines) {
                        permit.send(line.clone());
                    }
                    took.push(transport);
                }
                Err(_) => {
                    metrics::counter!("fabrik_openlineage_events_total", "transport" => transport, "outcome" => "dropped")
                        .increment(lines.len() as u64);
                    tracing::debug!(
                        transport,
                        "OpenLineage events dropped: their queue is full."
                    );
                }
            }
        }
        took
    }

    /// The runs that may be open on a transport, and those an earlier process left open.
    pub(crate) fn open_runs(&self) -> &Arc<OpenRuns> {
        &self.open_runs
    }

    /// This process holds the data directory `dir` (its store opened): the runs whose end has
    /// not reached every transport are kept in a list there from now on, and those an earlier
    /// process left there are aborted — at once, before any other run begins, when the list's
    /// lock is free and the queues have room.
    pub(crate) fn keep_open_runs_in(&self, dir: &Path) {
        self.open_runs.keep_in(dir);
        self.open_runs.hold();
        self.open_runs.abort_stale(self);
    }

    /// The node whose datasets this emitter names (`fabrik://<node>`).
    pub(crate) fn node(&self) -> &str {
        self.datasets
            .strip_prefix("fabrik://")
            .unwrap_or(&self.datasets)
    }

    /// How many events can be queued now without one being dropped.
    pub(crate) fn room(&self) -> usize {
        [&self.http, &self.file]
            .into_iter()
            .flatten()
            .map(mpsc::Sender::capacity)
            .min()
            .unwrap_or(0)
    }
}

/// The transports' halves: where each sends, and the queue it drains; and the emitter whose
/// open runs the sender keeps on disk (and whose stale ones it aborts).
pub(crate) struct Sender {
    http: Option<(String, Option<String>, mpsc::Receiver<Outgoing>)>,
    file: Option<(PathBuf, mpsc::Receiver<Outgoing>)>,
    emitter: Emitter,
}

/// An emitter with a file transport whose queue a test reads ([`Sender::take_queued_file_events`]).
#[cfg(test)]
pub(crate) fn test_channel(node: &str) -> (Emitter, Sender) {
    let settings = OpenLineageSettings {
        url: None,
        api_key: None,
        file: Some("unused.jsonl".into()),
        namespace: None,
        running_interval: None,
    };
    channel(settings, node)
}

impl Sender {
    /// The events queued for the file so far, taken without writing them (for tests).
    #[cfg(test)]
    pub(crate) fn take_queued_file_events(&mut self) -> Vec<Value> {
        let mut events = Vec::new();
        if let Some((_, queue)) = &mut self.file {
            while let Ok(event) = queue.try_recv() {
                events.push(serde_json::from_str(&event.line).expect("an event"));
            }
        }
        events
    }
}

/// The emitter for `settings` on node `node`, and the sender to run (with [`send`]).
pub(crate) fn channel(settings: OpenLineageSettings, node: &str) -> (Emitter, Sender) {
    let (http, http_events) = settings
        .url
        .clone()
        .map(|url| {
            let (queue, events) = mpsc::channel(QUEUE);
            (queue, (url, settings.api_key.clone(), events))
        })
        .unzip();
    let (file, file_events) = settings
        .file
        .clone()
        .map(|path| {
            let (queue, events) = mpsc::channel(QUEUE);
            (queue, (path, events))
        })
        .unzip();
    let datasets = format!("fabrik://{node}");
    let emitter = Emitter {
        http,
        file,
        jobs: settings
            .namespace
            .clone()
            .unwrap_or_else(|| datasets.clone()),
        datasets,
        running_interval: settings.running_interval,
        open_runs: Arc::default(),
    };
    (
        emitter.clone(),
        Sender {
            http: http_events,
            file: file_events,
            emitter,
        },
    )
}

/// Runs each transport until `stop`, then lets it send what is still queued within [`DRAIN`]
/// (the pipelines' and rules' ends are among the last); beside them, keeps the list of open
/// runs, written a last time once the transports are done, so it holds the runs whose end was
/// not delivered (`fabrik run` gives that write [`FINAL_WRITE`] after the drain).
pub(crate) async fn send(sender: Sender, stop: CancellationToken) {
    let open_runs = sender.emitter.open_runs().clone();
    let keep = crate::open_runs::keep(sender.emitter, &stop);
    let http = async {
        if let Some((url, api_key, events)) = sender.http {
            post_each(url, api_key, events, &stop, &open_runs).await;
        }
    };
    let file = async {
        if let Some((path, events)) = sender.file {
            append_each(path, events, &stop, &open_runs).await;
        }
    };
    // Each transport keeps its own deadline, but a request under way at the stop and the events
    // after it could add up to two; the whole drain ends [`DRAIN`] after the stop, whatever
    // is still queued, so the last write of the list has its time.
    let transports = async {
        tokio::join!(http, file);
    };
    let drained = async {
        stop.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    let transports = async {
        tokio::select! {
            () = transports => {}
            () = drained => {}
        }
    };
    tokio::join!(keep, transports);
    open_runs.persist().await;
}

/// The next queued event: until `stop`, whenever one comes; after it (the queue closed), what
/// is left, until `deadline` — set here when the stop is first seen.
async fn next(
    events: &mut mpsc::Receiver<Outgoing>,
    stop: &CancellationToken,
    deadline: &mut Option<tokio::time::Instant>,
) -> Option<Outgoing> {
    loop {
        match *deadline {
            None => tokio::select! {
                biased;
                () = stop.cancelled() => {
                    *deadline = Some(tokio::time::Instant::now() + DRAIN);
                    events.close();
                }
                event = events.recv() => return event,
            },
            Some(deadline) => {
                return tokio::time::timeout_at(deadline, events.recv())
                    .await
                    .ok()
                    .flatten();
            }
        }
    }
}

/// POSTs each event to the catalog. One it refuses (a 4xx other than 429) is logged and
/// dropped; one it cannot take (a 5xx, 429 or no connection) is tried again with backoff, up
/// to [`ATTEMPTS`] times while Fabrik runs and once while it stops.
async fn post_each(
    url: String,
    api_key: Option<String>,
    mut events: mpsc::Receiver<Outgoing>,
    stop: &CancellationToken,
    open_runs: &OpenRuns,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "OpenLineage events cannot be sent to the catalog: no HTTP client.");
            return;
        }
    };
    let mut deadline = None;
    while let Some(event) = next(&mut events, stop, &mut deadline).await {
        let posted = post(
            &client,
            &url,
            api_key.as_deref(),
            &event.line,
            stop,
            deadline,
        )
        .await;
        // A catalog that refuses an end for good will refuse it again: the run is not kept
        // waiting for it (nor its ABORT, which it would refuse too).
        if let (Posted::Delivered | Posted::Refused, Some(run)) = (posted, &event.ends) {
            open_runs.delivered(run, HTTP);
        }
    }
}

/// POSTs one event, trying again while the catalog answers it may succeed later. Once Fabrik
/// stops, a request has until the drain's `deadline` (or [`DRAIN`] from the stop, for one
/// already under way), and no second try.
/// What became of an event sent to the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Posted {
    /// It answered 2xx.
    Delivered,
    /// It refused it for good (a 4xx other than 429): it will never take it, so no run waits
    /// for it there.
    Refused,
    /// It could not take it now (no connection, a 5xx or 429 through every try, Fabrik
    /// stopping).
    NotDelivered,
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    api_key: Option<&str>,
    body: &str,
    stop: &CancellationToken,
    deadline: Option<tokio::time::Instant>,
) -> Posted {
    let failed = |why: &str, attempts: u32| {
        metrics::counter!("fabrik_openlineage_events_total", "transport" => "http", "outcome" => "failed")
            .increment(1);
        tracing::warn!(url, error = %why, attempts, "OpenLineage event not delivered to the catalog; dropped.");
    };
    let drained = || async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => {
                stop.cancelled().await;
                tokio::time::sleep(DRAIN).await;
            }
        }
    };
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let mut request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        let answer = tokio::select! {
            biased;
            answer = request.send() => answer,
            () = drained() => {
                failed("Fabrik stopped before the catalog answered", attempt);
                return Posted::NotDelivered;
            }
        };
        let (why, retry) = match answer {
            Ok(response) if response.status().is_success() => {
                metrics::counter!("fabrik_openlineage_events_total", "transport" => "http", "outcome" => "sent")
                    .increment(1);
                return Posted::Delivered;
            }
            Ok(response) => {
                let status = response.status();
                let retry = status.is_server_error() || status.as_u16() == 429;
                let text = response.text().await.unwrap_or_default();
                let text: String = text.chars().take(300).collect();
                (format!("HTTP {status}: {}", text.trim()), retry)
            }
            Err(e) => (crate::error_text::describe(&anyhow::Error::new(e)), true),
        };
        if !retry {
            failed(&why, attempt);
            return Posted::Refused;
        }
        if attempt == ATTEMPTS || stop.is_cancelled() {
            failed(&why, attempt);
            return Posted::NotDelivered;
        }
        tracing::debug!(url, error = %why, "OpenLineage event not delivered; trying again.");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => {
                failed(&why, attempt);
                return Posted::NotDelivered;
            }
        }
        backoff *= 2;
    }
    Posted::NotDelivered
}

/// Appends each event to the file as one line, opening it at first use (and again after an
/// error).
async fn append_each(
    path: PathBuf,
    mut events: mpsc::Receiver<Outgoing>,
    stop: &CancellationToken,
    open_runs: &OpenRuns,
) {
    let mut file = None;
    let mut deadline = None;
    while let Some(event) = next(&mut events, stop, &mut deadline).await {
        let outcome = match append(&mut file, &path, &event.line).await {
            Ok(()) => {
                if let Some(run) = &event.ends {
                    open_runs.delivered(run, FILE);
                }
                "written"
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "OpenLineage event not written to its file.");
                file = None;
                "file_failed"
            }
        };
        metrics::counter!("fabrik_openlineage_events_total", "transport" => "file", "outcome" => outcome)
            .increment(1);
    }
}

async fn append(
    file: &mut Option<tokio::fs::File>,
    path: &Path,
    line: &str,
) -> std::io::Result<()> {
    if file.is_none() {
        let opened = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        *file = Some(opened);
    }
    let Some(open) = file.as_mut() else {
        return Ok(());
    };
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    // One write of the whole line, so a reader never sees half an event followed by another;
    // flushed, because tokio's file reports a failed write only at the next operation.
    open.write_all(&bytes).await?;
    open.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenLineage's own example of a training run (`tests/fixtures/openlineage/`, made with
    /// openlineage-python 1.54.0): the same run built here is the same JSON, but for the
    /// producer, which names Fabrik and not the Python client.
    #[test]
    fn a_training_run_is_the_event_openlineages_client_writes() {
        let fixture: Value = serde_json::from_str(include_str!(
            "../tests/fixtures/openlineage/runevent_example.json"
        ))
        .expect("the fixture parses");
        let run = JobRun {
            run_id: "0192f0a4-5b7e-7d3a-9c1e-3f2b6a8d9e01".into(),
            job_namespace: "aiot-platform".into(),
            job_name: "retrain.pump_anomaly_iforest".into(),
            processing: Processing::Batch,
            job_type: "TRAINING".into(),
            parent: None,
            nominal: Some(("2026-01-15T09:00:00Z".into(), "2026-01-15T10:00:00Z".into())),
            sql: None,
        };
        let mut input = Dataset::new("tsdb://edge-fleet", "site1.pump7.vibration");
        input.schema = vec![
            Field::new("ts", Some("timestamp".into())),
            Field::new("accel_rms", Some("float".into())),
        ];
        input.version = Some("2026-01-15".into());
        let output = Dataset::new("registry://models", "pump_anomaly_iforest/v7");
        let mut ours = run.event(
            EventType::Complete,
            "2026-01-15T10:00:00.000Z",
            &[input],
            &[output],
            None,
        );
        // The fixture's engine facet describes its maker, the Python client's trainer.
        ours["run"]["facets"]["processing_engine"] = facet(
            PROCESSING_ENGINE_FACET,
            json!({ "name": "aiot-trainer", "version": "0.1.0", "openlineageAdapterVersion": "1.54.0" }),
        );
        ours["job"]["facets"]["jobType"]["integration"] = "AIOT".into();
        let mut expected = fixture;
        rename_producers(&mut expected, PRODUCER);
        expected["producer"] = PRODUCER.into();
        assert_eq!(ours, expected);
    }

    fn rename_producers(value: &mut Value, producer: &str) {
        match value {
            Value::Object(map) => {
                if map.contains_key("_producer") {
                    map.insert("_producer".into(), producer.into());
                }
                for v in map.values_mut() {
                    rename_producers(v, producer);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| rename_producers(v, producer)),
            _ => {}
        }
    }

    /// A run's START and end go together or not at all: with one slot left, neither.
    #[test]
    fn a_start_and_its_end_are_queued_together_or_not_at_all() {
        let (emitter, mut sender) = test_channel("edge-1");
        for i in 0..QUEUE - 1 {
            emitter.emit_all(&[json!({ "filler": i })]);
        }
        assert_eq!(emitter.room(), 1);
        emitter.emit_all(&[
            json!({ "eventType": "START" }),
            json!({ "eventType": "COMPLETE" }),
        ]);
        let queued = sender.take_queued_file_events();
        assert_eq!(queued.len(), QUEUE - 1, "neither the START nor its end");
        emitter.emit_all(&[
            json!({ "eventType": "START" }),
            json!({ "eventType": "COMPLETE" }),
        ]);
        assert_eq!(
            sender.take_queued_file_events().len(),
            2,
            "both, once there is room"
        );
    }

    #[test]
    fn run_ids_are_uuid_version_7_in_time_order() {
        let first = run_id();
        std::thread::sleep(Duration::from_millis(2));
        let second = run_id();
        for id in [&first, &second] {
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(groups[2].starts_with('7'), "version 7: {id}");
            assert!(
                matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "RFC 9562 variant: {id}"
            );
        }
        assert_ne!(first, second);
        assert!(first < second, "{first} then {second}");
    }

    #[test]
    fn a_failed_run_says_why_and_a_child_names_its_parent() {
        let run = JobRun {
            run_id: run_id(),
            job_namespace: "fabrik://edge-1".into(),
            job_name: "pipeline.pump-health.training".into(),
            processing: Processing::Batch,
            job_type: "TRAINING".into(),
            parent: Some((
                "fabrik://edge-1".into(),
                "pipeline.pump-health".into(),
                "0192f0a4-5b7e-7d3a-9c1e-3f2b6a8d9e01".into(),
            )),
            nominal: None,
            sql: None,
        };
        let event = run.event(EventType::Fail, &now(), &[], &[], Some("no such op: Foo"));
        assert_eq!(event["eventType"], "FAIL");
        let facets = &event["run"]["facets"];
        assert_eq!(facets["errorMessage"]["message"], "no such op: Foo");
        assert_eq!(facets["errorMessage"]["_schemaURL"], ERROR_MESSAGE_FACET);
        assert_eq!(
            facets["parent"]["run"]["runId"],
            "0192f0a4-5b7e-7d3a-9c1e-3f2b6a8d9e01"
        );
        assert_eq!(facets["parent"]["job"]["name"], "pipeline.pump-health");
        assert!(facets.get("nominalTime").is_none());
        let mut written = Dataset::new("fabrik://edge-1", "inferences");
        written.rows_written = Some(42);
        let event = run.event(EventType::Running, &now(), &[], &[written], None);
        assert_eq!(
            event["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
            42
        );
    }
}
