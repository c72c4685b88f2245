//! The connectors' ingest as OpenLineage runs (decision 0082): a streaming job per connector —
//! `ingest.mqtt` (the node's MQTT endpoint, Sparkplug B included), `ingest.bridge.<name>`,
//! `ingest.opcua`, `ingest.modbus`, `ingest.http` (the write endpoints of the API) — from what
//! it reads (topic filters of a broker, devices of an OPC UA server or a Modbus gateway, the
//! endpoints writers post to) to the tables its rows went to, so a catalog's graph starts at
//! the plant's sources rather than at Fabrik's tables.

use std::collections::{BTreeMap, HashMap, HashSet};

use fabrik_core::{Lineage, Point};
use fabrik_runtime::Config;

use crate::openlineage::{Dataset, Emitter, Field};
use crate::table_runs::TableRuns;

/// The topic filter Sparkplug B messages arrive under.
const SPARKPLUG_TOPICS: &str = "spBv1.0/#";

/// What one connector source reads, known from the configuration.
#[derive(Debug, Clone)]
struct Source {
    job: String,
    /// Its inputs as configured (the topic filters of its mappings; a device's points).
    inputs: Vec<Dataset>,
    /// Where its Sparkplug B topics live, for a broker.
    sparkplug: Option<Dataset>,
}

/// The ingest runs of one module (ingest, opcua, modbus, or the API's writes).
pub(crate) struct IngestLineage {
    runs: TableRuns,
    /// By the source rows carry in their lineage (`mqtt`, `bridge:<name>`, `opcua:<device>`,
    /// `modbus:<device>`); the sources a module reports with no input of their own (`opcua`,
    /// `modbus`: their point errors) by that name too.
    sources: BTreeMap<String, Source>,
    /// The API's write endpoints, by path (for `ingest.http`).
    http_endpoints: BTreeMap<&'static str, Dataset>,
}

/// The API paths rows are written through, which [`fabrik_api::WriteObserver`] names.
const HTTP_WRITE_PATHS: [&str; 5] = [
    "/api/v1/write",
    "/write",
    "/api/v2/write",
    "/api/v1/samples",
    "/api/v1/blobs",
];

impl IngestLineage {
    /// The MQTT endpoint's and the bridges' jobs, named from `config` on node `node`.
    pub(crate) fn mqtt(emitter: Emitter, config: &Config, node: &str) -> Self {
        let mappings = if config.mappings.is_empty() {
            fabrik_connect::mapping::default_mappings()
        } else {
            config.mappings.clone()
        };
        let broker = |source: &str, namespace: String, job: String| {
            let inputs = mappings
                .iter()
                .filter(|m| m.source == source)
                .map(|m| {
                    let mut dataset = Dataset::new(&namespace, topic_filter(&m.topic));
                    dataset.version = Some(format!("{}@{}", m.name, m.version));
                    dataset
                })
                .collect();
            Source {
                job,
                inputs,
                sparkplug: Some(Dataset::new(&namespace, SPARKPLUG_TOPICS)),
            }
        };
        let mut sources = BTreeMap::new();
        sources.insert(
            "mqtt".to_owned(),
            broker("mqtt", format!("mqtt://{node}"), "ingest.mqtt".to_owned()),
        );
        for bridge in &config.bridges {
            let source = format!("bridge:{}", bridge.name);
            let namespace = format!("mqtt://{}", authority(&bridge.address));
            let job = format!("ingest.bridge.{}", bridge.name);
            let entry = broker(&source, namespace, job);
            sources.insert(source, entry);
        }
        Self {
            runs: TableRuns::new(emitter, "INGEST"),
            sources,
            http_endpoints: BTreeMap::new(),
        }
    }

    /// The API's job, `ingest.http`: each write endpoint an input (`http://<node>` or
    /// `https://<node>`, named by its path).
    pub(crate) fn http(emitter: Emitter, scheme: &str) -> Self {
        let namespace = format!("{scheme}://{}", emitter.node());
        let http_endpoints = HTTP_WRITE_PATHS
            .into_iter()
            .map(|path| (path, Dataset::new(&namespace, path)))
            .collect();
        Self {
            runs: TableRuns::new(emitter, "INGEST"),
            sources: BTreeMap::new(),
            http_endpoints,
        }
    }

    /// The OPC UA clients' job: each device an input, in its server's namespace, with its
    /// signals as columns.
    pub(crate) fn opcua(emitter: Emitter, config: &Config) -> Self {
        // Rows name their device, not their server: a device name two servers report under
        // reads from both.
        let mut devices: BTreeMap<String, BTreeMap<String, Dataset>> = BTreeMap::new();
        for server in &config.opcua.servers {
            let namespace = authority_url(&server.endpoint);
            for item in &server.items {
                let device = item
                    .device
                    .clone()
                    .or_else(|| server.device.clone())
                    .unwrap_or_else(|| server.id.clone());
                let dataset = devices
                    .entry(device.clone())
                    .or_default()
                    .entry(namespace.clone())
                    .or_insert_with(|| Dataset::new(&namespace, device));
                if !dataset.schema.iter().any(|f| f.name == item.signal) {
                    dataset.schema.push(Field::new(item.signal.clone(), None));
                }
            }
        }
        let devices = devices
            .into_iter()
            .map(|(device, servers)| (device, servers.into_values().collect()))
            .collect();
        Self::of_devices(emitter, "opcua", devices)
    }

    /// The Modbus poller's job: each device (a unit at a `host:port`) an input, its points as
    /// columns.
    pub(crate) fn modbus(emitter: Emitter, config: &Config) -> Self {
        let devices = config
            .modbus
            .devices
            .iter()
            .map(|device| {
                let namespace = format!("modbus://{}", authority(&device.address));
                let mut dataset =
                    Dataset::new(&namespace, format!("{}/{}", device.unit_id, device.id));
                dataset.schema = device
                    .maps
                    .iter()
                    .flat_map(|map| &map.points)
                    .map(|point| Field::new(point.name.clone(), None))
                    .collect();
                (device.id.clone(), vec![dataset])
            })
            .collect();
        Self::of_devices(emitter, "modbus", devices)
    }

    /// A job `ingest.<kind>` whose sources are `<kind>:<device>`, each reading its device.
    fn of_devices(emitter: Emitter, kind: &str, devices: BTreeMap<String, Vec<Dataset>>) -> Self {
        let job = format!("ingest.{kind}");
        let mut sources: BTreeMap<String, Source> = devices
            .into_iter()
            .map(|(device, inputs)| {
                let source = Source {
                    job: job.clone(),
                    inputs,
                    sparkplug: None,
                };
                (format!("{kind}:{device}"), source)
            })
            .collect();
        sources.insert(
            kind.to_owned(),
            Source {
                job,
                inputs: Vec::new(),
                sparkplug: None,
            },
        );
        Self {
            runs: TableRuns::new(emitter, "INGEST"),
            sources,
            http_endpoints: BTreeMap::new(),
        }
    }

    /// Groups of rows the module stored, each with its lineage: counted per source and table.
    /// Rows of a source the configuration does not name are not reported.
    pub(crate) fn stored(&self, groups: &[(Lineage, Vec<Point>)]) {
        // A group is one message (or poll) of one source, its points nearly always of one
        // table: counted as runs of one table, hashed once per run rather than per row.
        let mut counted: HashMap<(&str, &str), u64> = HashMap::new();
        for (lineage, points) in groups {
            let source = lineage.source.0.as_str();
            let mut run: Option<(&str, u64)> = None;
            for point in points {
                let table = point.measurement.as_str();
                match &mut run {
                    Some((current, rows)) if *current == table => *rows += 1,
                    _ => {
                        if let Some((done, rows)) = run.replace((table, 1)) {
                            *counted.entry((source, done)).or_default() += rows;
                        }
                    }
                }
            }
            if let Some((table, rows)) = run {
                *counted.entry((source, table)).or_default() += rows;
            }
        }
        // One report per job, with what all its sources in these groups read and wrote.
        let mut per_job: BTreeMap<&str, (Vec<&Dataset>, BTreeMap<&str, u64>)> = BTreeMap::new();
        let mut sources_seen: HashSet<&str> = HashSet::new();
        for ((source, table), rows) in counted {
            let Some(known) = self.sources.get(source) else {
                continue;
            };
            let (inputs, tables) = per_job.entry(&known.job).or_default();
            if sources_seen.insert(source) {
                inputs.extend(known.inputs.iter());
            }
            if table == fabrik_connect::ingest::SPARKPLUG_TABLE {
                inputs.extend(known.sparkplug.iter());
            }
            *tables.entry(table).or_default() += rows;
        }
        for (job, (inputs, tables)) in per_job {
            let tables: Vec<(&str, u64)> = tables.into_iter().collect();
            self.runs.stored(job, &inputs, &tables);
        }
    }

    /// The module stops: its runs end.
    pub(crate) fn ended(&self) {
        self.runs.ended();
    }
}

impl fabrik_api::WriteObserver for IngestLineage {
    fn written(&self, path: &'static str, tables: &[(std::sync::Arc<str>, usize)]) {
        let Some(endpoint) = self.http_endpoints.get(path) else {
            return;
        };
        let tables: Vec<(&str, u64)> = tables
            .iter()
            .map(|(table, rows)| (&**table, *rows as u64))
            .collect();
        self.runs.stored("ingest.http", &[endpoint], &tables);
    }
}

/// A mapping's topic template as an MQTT topic filter: `devices/{device}/telemetry` is
/// `devices/+/telemetry`.
fn topic_filter(template: &str) -> String {
    template
        .split('/')
        .map(|level| {
            if level.starts_with('{') && level.ends_with('}') {
                "+"
            } else {
                level
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// `host:port` of an address that may carry a scheme (`mqtts://broker:8883` →
/// `broker:8883`) or a path.
fn authority(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// `scheme://host:port` of an endpoint URL (`opc.tcp://plc:4840/UA/Server` →
/// `opc.tcp://plc:4840`), as OpenLineage names a dataset's namespace.
fn authority_url(endpoint: &str) -> String {
    match endpoint.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest)),
        None => endpoint.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabrik_core::{Quality, RawMessageId, SourceId, Timestamp, Value};

    fn group(source: &str, tables: &[&str]) -> (Lineage, Vec<Point>) {
        let lineage = Lineage {
            source: SourceId(source.to_owned()),
            raw_id: RawMessageId(1),
            mapping_version: 1,
        };
        let points = tables
            .iter()
            .map(|table| Point {
                measurement: (*table).to_owned(),
                tags: vec![("device".into(), "d".into())],
                fields: vec![("v".into(), Value::F64(1.0))],
                time: Timestamp(0),
                quality: Quality::Good,
            })
            .collect();
        (lineage, points)
    }

    fn config(toml: &str) -> Config {
        toml::from_str(toml).expect("a configuration")
    }

    #[test]
    fn topic_templates_read_as_filters_and_addresses_as_namespaces() {
        assert_eq!(
            topic_filter("devices/{device}/telemetry"),
            "devices/+/telemetry"
        );
        assert_eq!(topic_filter("plant/+/x/#"), "plant/+/x/#");
        assert_eq!(authority("mqtts://broker:8883"), "broker:8883");
        assert_eq!(authority("10.0.0.5:502"), "10.0.0.5:502");
        assert_eq!(
            authority_url("opc.tcp://plc:4840/UA/Server"),
            "opc.tcp://plc:4840"
        );
    }

    #[test]
    fn the_endpoint_and_each_bridge_are_jobs_from_their_topics() {
        let config = config(
            r#"
[[bridges]]
name = "plant"
address = "broker.plant:1883"
topics = ["line1/#"]

[[mappings]]
name = "line1"
version = 3
source = "bridge:plant"
topic = "line1/{device}/state"
measurement = "line1"

[[mappings]]
name = "own"
topic = "devices/{device}/telemetry"
"#,
        );
        let (emitter, mut sender) = crate::openlineage::test_channel("edge-1");
        let ingest = IngestLineage::mqtt(emitter, &config, "edge-1");
        ingest.stored(&[
            group("mqtt", &["pump", "pump"]),
            group("bridge:plant", &["line1", "_dead_letters"]),
            group("unknown", &["x"]),
        ]);
        ingest.stored(&[group("mqtt", &["sparkplug"])]);
        ingest.ended();
        let events = sender.take_queued_file_events();
        let of = |job: &str, kind: &str| {
            events
                .iter()
                .find(|e| e["job"]["name"] == job && e["eventType"] == kind)
                .cloned()
                .unwrap_or_else(|| panic!("{job} {kind} in {events:?}"))
        };
        let bridge = of("ingest.bridge.plant", "COMPLETE");
        assert_eq!(bridge["inputs"][0]["namespace"], "mqtt://broker.plant:1883");
        assert_eq!(bridge["inputs"][0]["name"], "line1/+/state");
        assert_eq!(
            bridge["inputs"][0]["facets"]["version"]["datasetVersion"],
            "line1@3"
        );
        let outputs: Vec<&str> = bridge["outputs"]
            .as_array()
            .map(|o| o.iter().filter_map(|d| d["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(outputs, ["_dead_letters", "line1"]);
        let start = of("ingest.mqtt", "START");
        assert_eq!(start["inputs"].as_array().map(Vec::len), Some(1));
        assert_eq!(start["inputs"][0]["namespace"], "mqtt://edge-1");
        assert_eq!(start["inputs"][0]["name"], "devices/+/telemetry");
        assert_eq!(start["outputs"][0]["namespace"], "fabrik://edge-1");
        // Sparkplug's topics are an input once its messages arrive.
        let end = of("ingest.mqtt", "COMPLETE");
        assert_eq!(end["inputs"][1]["name"], "spBv1.0/#");
        assert_eq!(
            end["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"],
            2
        );
        assert!(
            events.iter().all(|e| e["job"]["name"] != "ingest.unknown"),
            "a source no configuration names is not reported"
        );
    }

    #[test]
    fn opc_ua_and_modbus_devices_are_inputs_with_their_signals() {
        let config = config(
            r#"
[[opcua.servers]]
id = "plc"
endpoint = "opc.tcp://plc.line1:4840/UA/Server"
device = "press-1"
pki_dir = "pki"
items = [{ node_id = "ns=2;s=Temp", signal = "temperature" }]

[[opcua.servers]]
id = "plc-2"
endpoint = "opc.tcp://plc2.line1:4840"
device = "press-1"
pki_dir = "pki"
items = [{ node_id = "ns=2;s=Force", signal = "force" }]

[[modbus.devices]]
id = "meter-1"
address = "gw.line1:502"
unit_id = 7
[[modbus.devices.maps]]
poll_interval_ms = 1000
points = [{ name = "power", table = "holding", address = 0, type = "u16" }]
"#,
        );
        let (emitter, mut sender) = crate::openlineage::test_channel("edge-1");
        let opcua = IngestLineage::opcua(emitter.clone(), &config);
        opcua.stored(&[
            group("opcua:press-1", &["opcua"]),
            group("opcua", &["_point_errors"]),
        ]);
        let modbus = IngestLineage::modbus(emitter, &config);
        modbus.stored(&[group("modbus:meter-1", &["modbus"])]);
        let events = sender.take_queued_file_events();
        assert_eq!(events.len(), 2, "{events:?}");
        let press = &events[0];
        assert_eq!(press["job"]["name"], "ingest.opcua");
        assert_eq!(press["inputs"][0]["namespace"], "opc.tcp://plc.line1:4840");
        assert_eq!(press["inputs"][0]["name"], "press-1");
        assert_eq!(
            press["inputs"][0]["facets"]["schema"]["fields"][0]["name"],
            "temperature"
        );
        // The same device name on a second server: its rows may come from either.
        assert_eq!(press["inputs"][1]["namespace"], "opc.tcp://plc2.line1:4840");
        assert_eq!(
            press["inputs"][1]["facets"]["schema"]["fields"][0]["name"],
            "force"
        );
        assert_eq!(press["outputs"][1]["name"], "opcua");
        let meter = &events[1];
        assert_eq!(meter["job"]["name"], "ingest.modbus");
        assert_eq!(meter["inputs"][0]["namespace"], "modbus://gw.line1:502");
        assert_eq!(meter["inputs"][0]["name"], "7/meter-1");
        assert_eq!(
            meter["inputs"][0]["facets"]["schema"]["fields"][0]["name"],
            "power"
        );
    }

    #[test]
    fn writes_over_http_are_a_job_from_the_endpoints_they_came_through() {
        use fabrik_api::WriteObserver as _;
        let (emitter, mut sender) = crate::openlineage::test_channel("edge-1");
        let http = IngestLineage::http(emitter, "https");
        http.written(
            "/api/v1/write",
            &[("pump".into(), 3), ("chiller".into(), 1)],
        );
        http.written("/api/v1/write", &[("pump".into(), 2)]);
        http.written("/api/v2/write", &[("pump".into(), 1)]);
        http.written("/api/v1/query", &[("pump".into(), 1)]);
        http.ended();
        let events = sender.take_queued_file_events();
        let kinds: Vec<&str> = events
            .iter()
            .filter_map(|e| e["eventType"].as_str())
            .collect();
        assert_eq!(kinds, ["START", "RUNNING", "COMPLETE"], "{events:?}");
        let end = &events[2];
        assert_eq!(end["job"]["name"], "ingest.http");
        let inputs: Vec<(&str, &str)> = end["inputs"]
            .as_array()
            .map(|i| {
                i.iter()
                    .map(|d| {
                        (
                            d["namespace"].as_str().unwrap_or("?"),
                            d["name"].as_str().unwrap_or("?"),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            inputs,
            [
                ("https://edge-1", "/api/v1/write"),
                ("https://edge-1", "/api/v2/write")
            ]
        );
        assert_eq!(end["outputs"][1]["name"], "pump");
        assert_eq!(
            end["outputs"][1]["outputFacets"]["outputStatistics"]["rowCount"],
            6
        );
    }
}
