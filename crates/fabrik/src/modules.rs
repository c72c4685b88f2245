//! The modules of `fabrik run`, their dependencies, and `--target` resolution (Loki's module
//! manager, as a closed enum: a new module does not compile until its dependencies are
//! declared in the `match`).

/// One module of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Module {
    /// The storage engine (WAL, buffer, segments, SQL).
    Store,
    /// The device registry (metadata database).
    Registry,
    /// The ingest path of connectors: mappings, lineage, dead letters.
    Ingest,
    /// The MQTT device endpoint.
    Mqtt,
    /// MQTT bridges to external brokers.
    Bridge,
    /// The Modbus TCP poller.
    Modbus,
    /// The OPC UA client.
    Opcua,
    /// Inference pipelines: windows, features, models, inferences.
    Pipelines,
    /// Alert rules, lifecycle, notifications.
    Alerts,
    /// Use cases' KPIs recorded as a series.
    Kpis,
    /// Forwarding stored rows to a hub over NATS JetStream.
    Uplink,
    /// Storing the rows edge nodes forward.
    Hub,
    /// Installing the models a release repository (TUF) publishes for this node.
    Updates,
    /// Keeping a served release repository's timestamp signed.
    Releases,
    /// The HTTP API and dashboard.
    Http,
}

impl Module {
    /// Every module.
    pub(crate) const ALL: [Module; 15] = [
        Module::Store,
        Module::Registry,
        Module::Ingest,
        Module::Mqtt,
        Module::Bridge,
        Module::Modbus,
        Module::Opcua,
        Module::Pipelines,
        Module::Alerts,
        Module::Kpis,
        Module::Uplink,
        Module::Hub,
        Module::Updates,
        Module::Releases,
        Module::Http,
    ];

    /// The modules this one needs started first.
    pub(crate) const fn deps(self) -> &'static [Module] {
        match self {
            Module::Store => &[],
            Module::Registry => &[],
            Module::Ingest => &[Module::Store, Module::Registry],
            Module::Mqtt => &[Module::Ingest, Module::Registry],
            Module::Bridge => &[Module::Ingest],
            Module::Modbus => &[Module::Store],
            Module::Opcua => &[Module::Store],
            Module::Pipelines => &[Module::Store, Module::Registry],
            Module::Alerts => &[Module::Store],
            Module::Kpis => &[Module::Store, Module::Registry],
            Module::Uplink => &[Module::Store],
            Module::Hub => &[Module::Store],
            Module::Updates => &[Module::Store, Module::Pipelines, Module::Alerts],
            Module::Releases => &[],
            Module::Http => &[Module::Store, Module::Registry],
        }
    }

    /// The name used by `--target`, `/services` and logs.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Module::Store => "store",
            Module::Registry => "registry",
            Module::Ingest => "ingest",
            Module::Mqtt => "mqtt",
            Module::Bridge => "bridge",
            Module::Modbus => "modbus",
            Module::Opcua => "opcua",
            Module::Pipelines => "pipelines",
            Module::Alerts => "alerts",
            Module::Kpis => "kpis",
            Module::Uplink => "uplink",
            Module::Hub => "hub",
            Module::Updates => "updates",
            Module::Releases => "releases",
            Module::Http => "http",
        }
    }

    /// What it does, for `--list-targets`.
    pub(crate) const fn about(self) -> &'static str {
        match self {
            Module::Store => "WAL, in-memory buffer, Parquet segments, compaction, retention, SQL",
            Module::Registry => "device registry: credentials, connection state, history (SQLite)",
            Module::Ingest => "connector messages → mappings → rows with lineage, dead letters",
            Module::Mqtt => "MQTT 3.1.1/5.0 device endpoint: auth, topic ACLs, TLS, sessions",
            Module::Bridge => "MQTT bridges: subscribe to external brokers into the ingest path",
            Module::Modbus => {
                "Modbus TCP poller: register maps, one task per device, bad-quality points"
            }
            Module::Opcua => {
                "OPC UA client: subscriptions, quality from status, reconnect + restore"
            }
            Module::Alerts => "alert rules, pending → firing → resolved, silences, webhook outbox",
            Module::Kpis => "use cases' KPIs recorded as use_case_kpis rows ([usecases])",
            Module::Pipelines => {
                "inference pipelines: per-device windows → features → model → inferences table"
            }
            Module::Uplink => {
                "edge → hub: the WAL's writes to NATS JetStream, store-and-forward ([uplink])"
            }
            Module::Hub => "hub: rows edge nodes forward over JetStream into this store ([hub])",
            Module::Updates => {
                "release repository (TUF): verified models, pipelines, alert rules installed ([updates])"
            }
            Module::Releases => {
                "a served release repository's snapshot and timestamp kept signed ([releases])"
            }
            Module::Http => {
                "REST API under /api/v1, InfluxDB write endpoints, /ready, /metrics, dashboard"
            }
        }
    }

    fn parse(name: &str) -> Option<Module> {
        Module::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The modules a node whose store only reads a prefix another store writes can run
/// (`[store.objects] read_only`, decision 0079): every other one writes rows.
const READ_ONLY_MODULES: [Module; 4] = [
    Module::Store,
    Module::Registry,
    Module::Releases,
    Module::Http,
];

/// [`resolve`], for a node whose store may be read-only: there, no `--target` means the
/// HTTP API (with what it needs), and a target that writes rows is refused by name.
pub(crate) fn resolve_for(targets: &[String], read_only: bool) -> Result<Vec<Module>, String> {
    if !read_only {
        return resolve(targets);
    }
    let named = targets.iter().any(|t| !t.trim().is_empty());
    if !named {
        return resolve(&[Module::Http.name().to_owned()]);
    }
    let modules = resolve(targets)?;
    let writers: Vec<&str> = modules
        .iter()
        .filter(|m| !READ_ONLY_MODULES.contains(m))
        .map(|m| m.name())
        .collect();
    if !writers.is_empty() {
        return Err(format!(
            "store.objects.read_only is set, so this node only answers queries, but --target \
             asks for modules that write rows: {}; run them on the node whose store owns the \
             prefix (here: --target http)",
            writers.join(", ")
        ));
    }
    Ok(modules)
}

/// Resolves a `--target` list (`all` or module names) into modules in start order
/// (dependencies first).
pub(crate) fn resolve(targets: &[String]) -> Result<Vec<Module>, String> {
    let mut wanted = Vec::new();
    for t in targets {
        let t = t.trim();
        if t.is_empty() {
            continue;
        }
        if t == "all" {
            wanted.extend(Module::ALL);
            continue;
        }
        match Module::parse(t) {
            Some(m) => wanted.push(m),
            None => {
                let names: Vec<&str> = Module::ALL.iter().map(|m| m.name()).collect();
                return Err(format!(
                    "unknown target `{t}`; known: all, {}",
                    names.join(", ")
                ));
            }
        }
    }
    if wanted.is_empty() {
        wanted.extend(Module::ALL);
    }
    let mut order = Vec::new();
    fn visit(m: Module, order: &mut Vec<Module>) {
        if order.contains(&m) {
            return;
        }
        for d in m.deps() {
            visit(*d, order);
        }
        order.push(m);
    }
    for m in wanted {
        visit(m, &mut order);
    }
    // In `ALL`'s order, which lists every module after those it needs: a module that hands
    // the HTTP API a control (the uplink's backfill, the pipelines', the alert rules')
    // starts before `http` whatever order `--target` named them in.
    Ok(Module::ALL
        .into_iter()
        .filter(|m| order.contains(m))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_node_runs_the_api_and_refuses_modules_that_write() {
        let names =
            |modules: Vec<Module>| -> Vec<&str> { modules.into_iter().map(Module::name).collect() };
        let default = resolve_for(&[], true).expect("resolves");
        assert_eq!(names(default), ["store", "registry", "http"]);
        let asked = resolve_for(&["http".into(), "releases".into()], true).expect("resolves");
        assert_eq!(names(asked), ["store", "registry", "releases", "http"]);
        let e = resolve_for(&["all".into()], true).unwrap_err();
        assert!(
            e.contains("ingest, mqtt") && e.contains("--target http"),
            "{e}"
        );
        let e = resolve_for(&["pipelines".into()], true).unwrap_err();
        assert!(e.contains(": pipelines;"), "{e}");
        // A node that owns its store runs everything by default.
        assert_eq!(
            resolve_for(&[], false).expect("resolves").len(),
            Module::ALL.len()
        );
    }

    #[test]
    fn every_module_is_listed_after_the_modules_it_needs() {
        for (i, m) in Module::ALL.iter().enumerate() {
            for d in m.deps() {
                let at = Module::ALL.iter().position(|x| x == d).expect("listed");
                assert!(
                    at < i,
                    "{} is listed before {}, which it needs",
                    m.name(),
                    d.name()
                );
            }
        }
    }

    #[test]
    fn targets_pull_in_their_dependencies_first() {
        assert_eq!(
            resolve(&["http".into()]),
            Ok(vec![Module::Store, Module::Registry, Module::Http])
        );
        assert_eq!(
            resolve(&["mqtt".into()]),
            Ok(vec![
                Module::Store,
                Module::Registry,
                Module::Ingest,
                Module::Mqtt
            ])
        );
        assert_eq!(resolve(&[]), Ok(Module::ALL.to_vec()));
        assert_eq!(resolve(&["store".into()]), Ok(vec![Module::Store]));
        assert_eq!(
            resolve(&["http".into(), "uplink".into(), "pipelines".into()]),
            Ok(vec![
                Module::Store,
                Module::Registry,
                Module::Pipelines,
                Module::Uplink,
                Module::Http
            ])
        );
        assert!(resolve(&["nope".into()]).is_err());
    }
}
