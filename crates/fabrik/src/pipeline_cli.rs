//! `fabrik pipeline list|show|apply|rm|retrain|drift|shadow|performance|lineage`: a thin client
//! of `/api/v1/pipelines` and `/api/v1/lineage`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use fabrik_runtime::config::PipelineConfig;

use fabrik_api::pipelines::{
    DriftStatus, PerformanceReport, ShadowArms, ShadowComparison, ShadowDecision, ShadowVerdict,
};

use crate::client::Endpoint;
use crate::define_cli::Kind;

/// `fabrik pipeline ...`
#[derive(Debug, Args)]
pub(crate) struct PipelineArgs {
    #[command(subcommand)]
    command: PipelineCommand,
    #[command(flatten)]
    endpoint: Endpoint,
}

#[derive(Debug, Subcommand)]
enum PipelineCommand {
    /// List the pipelines and how each is doing.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one pipeline, as JSON.
    Show {
        /// Pipeline name.
        name: String,
    },
    /// Define or replace pipelines from a file without restarting Fabrik: TOML with
    /// `[[pipelines]]` entries as in the configuration file (or one pipeline's fields at the
    /// top level), or JSON (one definition or a list). They are kept across restarts.
    ///
    /// Every definition is checked by the server first; if any is refused, none is applied
    /// and every problem is listed.
    Apply {
        /// The file.
        file: PathBuf,
        /// Only check the definitions and say what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop a pipeline defined through the API and forget it (its inferences stay stored).
    Rm {
        /// Pipeline name.
        name: String,
    },
    /// Restart a pipeline with every device learning afresh from the stored windows before
    /// now. A restart otherwise keeps each device's model (its saved training span): use this
    /// when a device learnt a fault as normal.
    Retrain {
        /// Pipeline name.
        name: String,
    },
    /// Each device's latest drift check: its last windows against those its model learnt
    /// from, the features that drifted and by how much (pipelines with a `drift` watch).
    Drift {
        /// Pipeline name.
        name: String,
        /// Every feature's test of every device, not only the drifted ones.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// How the pipeline's shadow model (`[pipelines.shadow]`) compares with its model on the
    /// same windows, and on the windows of alerts operators confirmed or called false.
    Shadow {
        /// Pipeline name.
        name: String,
        /// The last this many days.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// The level of the sequential test that decides between the two on the labelled
        /// windows: the highest acceptable chance of a verdict where both are equally right.
        #[arg(long, default_value_t = 0.05)]
        alpha: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The classifier's performance estimated from its probabilities while outcomes are not
    /// known yet (`[pipelines.performance]`, NannyML's CBPE), chunk by chunk, with the
    /// realized values where outcomes arrived.
    Performance {
        /// Pipeline name.
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Set the fixed reference aside and find a new one among the windows with outcomes
        /// as they are now (after outcomes of the reference were corrected, say); fixed
        /// again once found.
        #[arg(long)]
        new_reference: bool,
        /// With --new-reference: only among windows starting at or after this time (RFC
        /// 3339), a period known to be good.
        #[arg(long, requires = "new_reference")]
        from: Option<String>,
    },
    /// Where one decision came from: the inference of a window, the exact input rows it read
    /// and the raw messages (topic, payload as received) those rows were decoded from.
    Lineage {
        /// The window id, as inference rows and alerts carry it
        /// (`<pipeline>/<device>/<window start, ns>`).
        window_id: String,
        /// Print JSON (every row and message) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

/// Pipelines as `fabrik pipeline apply` reads and sends them.
pub(crate) const PIPELINES: Kind = Kind {
    noun: "pipeline",
    a_noun: "a pipeline",
    collection: "/api/v1/pipelines",
    status_field: "state",
};

/// Runs a `fabrik pipeline` command.
pub(crate) async fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let client = args.endpoint.client()?;
    let ep = &args.endpoint;
    match args.command {
        PipelineCommand::List { json } => {
            let pipelines: Vec<serde_json::Value> =
                ep.get_json(&client, "/api/v1/pipelines").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pipelines)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<7} {:<8} {:<9} {:>7} {:>10} {:>9}  error",
                "name", "origin", "state", "model", "devices", "inferences", "anomalies"
            );
            for p in &pipelines {
                let s = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
                let n = |k: &str| p.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                println!(
                    "{:<20} {:<7} {:<8} {:<9} {:>7} {:>10} {:>9}  {}",
                    s("name"),
                    s("origin"),
                    s("state"),
                    s("model"),
                    n("devices"),
                    n("inferences"),
                    n("anomalies"),
                    s("error")
                );
            }
            println!("{} pipeline(s)", pipelines.len());
        }
        PipelineCommand::Show { name } => {
            let path = format!("/api/v1/pipelines/{name}");
            let pipeline: serde_json::Value = ep.get_json(&client, &path).await?;
            println!("{}", serde_json::to_string_pretty(&pipeline)?);
        }
        PipelineCommand::Apply { file, dry_run } => {
            crate::define_cli::apply::<PipelineConfig>(&PIPELINES, ep, &client, &file, dry_run)
                .await?;
        }
        PipelineCommand::Rm { name } => {
            let path = format!("/api/v1/pipelines/{name}");
            ep.send(ep.request(&client, reqwest::Method::DELETE, &path))
                .await?;
            println!("removed {name}");
        }
        PipelineCommand::Retrain { name } => {
            let path = format!("/api/v1/pipelines/{name}/retrain");
            ep.send(ep.request(&client, reqwest::Method::POST, &path))
                .await?;
            println!("{name} restarted; its devices learn afresh from the stored windows");
        }
        PipelineCommand::Drift { name, all, json } => {
            let path = format!("/api/v1/pipelines/{name}/drift");
            let checks: Vec<DriftStatus> = ep.get_json(&client, &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
                return Ok(());
            }
            print!("{}", drift_table(&checks, all));
        }
        PipelineCommand::Shadow {
            name,
            days,
            alpha,
            json,
        } => {
            let path = format!("/api/v1/pipelines/{name}/shadow?days={days}&alpha={alpha}");
            let comparison: ShadowComparison = ep.get_json(&client, &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&comparison)?);
                return Ok(());
            }
            print!("{}", shadow_table(&comparison));
        }
        PipelineCommand::Lineage { window_id, json } => {
            crate::lineage_cli::show(ep, "window_id", &window_id, json).await?;
        }
        PipelineCommand::Performance {
            name,
            json,
            new_reference,
            from,
        } => {
            let path = format!("/api/v1/pipelines/{name}/performance");
            let report: PerformanceReport = if new_reference {
                ep.send(
                    ep.request(&client, reqwest::Method::POST, &format!("{path}/reference"))
                        .json(&serde_json::json!({ "from": from })),
                )
                .await?
                .json()
                .await?
            } else {
                ep.get_json(&client, &path).await?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            print!("{}", performance_table(&report));
        }
    }
    Ok(())
}

/// A performance report as text: the reference, then a line per chunk, `!` on alerts.
fn performance_table(r: &PerformanceReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let time = |ns: i64| crate::client::time_text(Some(ns));
    let _ = writeln!(
        out,
        "pipeline {}: model {}, chunks of {} windows, positive from probability {}",
        r.pipeline,
        r.model_version.as_deref().unwrap_or("-"),
        r.chunk,
        r.decision_threshold
    );
    if let Some(reference) = &r.reference {
        let _ = writeln!(
            out,
            "reference: {} windows with outcomes ({} positive) of {} scored, {} to {}{}, fixed {}{}",
            reference.windows,
            reference.positives,
            reference.span_windows,
            time(reference.from),
            time(reference.until),
            if reference.calibrated {
                ", scores calibrated"
            } else {
                ""
            },
            time(reference.fixed_at),
            reference
                .searched_from
                .map(|from| format!(" (looked for from {})", time(from)))
                .unwrap_or_default()
        );
        for m in &reference.metrics {
            let bound = |b: Option<f64>| b.map_or_else(|| "-".to_owned(), |b| format!("{b:.4}"));
            let _ = writeln!(
                out,
                "  {:<10} alert below {} or above {}",
                m.metric,
                bound(m.lower_threshold),
                bound(m.upper_threshold)
            );
        }
    }
    if let Some(problem) = &r.problem {
        let _ = writeln!(out, "no estimate: {problem}");
    }
    if !r.chunks.is_empty() {
        let mut header = format!("{:<19}  {:>7}  {:>8}", "chunk from", "windows", "outcomes");
        for metric in &r.metrics {
            let _ = write!(
                header,
                "  {:>17}  {:>8}",
                format!("{metric} (±σ)"),
                "realized"
            );
        }
        let _ = writeln!(out, "{header}");
    }
    for chunk in &r.chunks {
        let mut line = format!(
            "{:<19}  {:>7}  {:>8}",
            time(chunk.from),
            chunk.windows,
            chunk.with_outcomes
        );
        for e in &chunk.estimates {
            let estimate = format!(
                "{}{:.4} ±{:.4}",
                if e.alert { "!" } else { "" },
                e.estimated,
                e.sampling_error
            );
            let realized = e
                .realized
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"));
            let _ = write!(line, "  {estimate:>17}  {realized:>8}");
        }
        let _ = writeln!(out, "{line}");
    }
    if r.pending > 0 {
        let _ = writeln!(
            out,
            "{} window(s) scored since, not yet a whole chunk",
            r.pending
        );
    }
    out
}

/// A shadow comparison as text: the totals, the labelled windows, then a line per device.
fn shadow_table(c: &ShadowComparison) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let version = |v: &Option<String>| v.as_deref().map_or(String::new(), |v| format!(" {v}"));
    let _ = writeln!(
        out,
        "pipeline {}: champion {}{} against challenger {}{}, last {} day(s)",
        c.pipeline,
        c.champion,
        version(&c.champion_version),
        c.challenger,
        version(&c.challenger_version),
        c.days
    );
    let agreement = c
        .agreement
        .map_or("-".to_owned(), |share| format!("{:.1} %", share * 100.0));
    let _ = writeln!(
        out,
        "{} windows scored by both ({} by the challenger alone); flagged: champion {}, challenger {}, both {}; same verdict on {agreement}",
        c.windows, c.unpaired, c.champion_flags, c.challenger_flags, c.both_flagged
    );
    if c.live_windows == 0 {
        let _ = writeln!(
            out,
            "confirmed faults (true positives): {}, flagged by the challenger too: {}",
            c.confirmed, c.confirmed_flagged_by_challenger
        );
        let _ = writeln!(
            out,
            "false alarms (false positives): {}, flagged by the challenger too: {}",
            c.false_alarms, c.false_alarms_flagged_by_challenger
        );
    } else {
        // An A/B split: the challenger's alerts were labelled too, so the champion did not
        // flag every labelled window.
        let _ = writeln!(
            out,
            "A/B split: the challenger's verdicts were the pipeline's on {} of these windows",
            c.live_windows
        );
        let _ = writeln!(
            out,
            "confirmed faults (true positives): {}, flagged by the champion: {}, by the challenger: {}",
            c.confirmed, c.confirmed_flagged_by_champion, c.confirmed_flagged_by_challenger
        );
        let _ = writeln!(
            out,
            "false alarms (false positives): {}, flagged by the champion: {}, by the challenger: {}",
            c.false_alarms,
            c.false_alarms_flagged_by_champion,
            c.false_alarms_flagged_by_challenger
        );
        if let Some(arms) = &c.arms {
            out += &arms_lines(&c.pipeline, arms);
        }
    }
    let _ = writeln!(out, "{}", decision_line(&c.decision));
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>9} {:>10} {:>5} {:>5}",
        "device", "windows", "champion", "challenger", "both", "live"
    );
    for d in &c.devices {
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>9} {:>10} {:>5} {:>5}",
            d.device,
            d.windows,
            d.champion_flags,
            d.challenger_flags,
            d.both_flagged,
            d.live_windows
        );
    }
    out
}

/// The arms of an A/B split: each model where it acted, then the two differences with their
/// permutation p-values over devices.
fn arms_lines(pipeline: &str, arms: &ShadowArms) -> String {
    use std::fmt::Write as _;
    let share = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{:.2} %", x * 100.0));
    let mut out = String::new();
    for (who, arm) in [
        ("challenger", &arms.challenger),
        ("champion", &arms.champion),
    ] {
        let _ = writeln!(
            out,
            "  {who:<10} acted on {} device(s), {} windows: {} alerts ({}); {} of {} labelled \
             confirmed (precision {})",
            arm.devices,
            arm.windows,
            arm.alerts,
            share(arm.alert_rate),
            arm.confirmed,
            arm.labelled,
            share(arm.precision)
        );
    }
    for (what, d) in [
        ("alert rate", &arms.alert_rate),
        ("precision", &arms.precision),
    ] {
        let difference = d
            .difference
            .map_or("-".to_owned(), |x| format!("{:+.2} points", x * 100.0));
        let p = d.p_value.map_or("-".to_owned(), |p| format!("{p:.4}"));
        let how = if d.exact { "all" } else { "a sample of" };
        let _ = writeln!(
            out,
            "  {what}, challenger minus champion: {difference}; p {p} over devices ({how} {} \
             assignments)",
            d.permutations
        );
    }
    for kpi in &arms.kpis {
        let value = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.4}"));
        let d = &kpi.comparison;
        let unit = if kpi.unit.is_empty() {
            String::new()
        } else {
            format!("{}, ", kpi.unit)
        };
        let better = match kpi.better {
            fabrik_registry::usecases::Better::Lower => "lower",
            fabrik_registry::usecases::Better::Higher => "higher",
        };
        // A direction, read with the p-value beside it: not a verdict.
        let verdict = match kpi.challenger_better {
            Some(true) => " (the challenger's way)",
            Some(false) => " (the champion's way)",
            None => "",
        };
        let how = if d.exact { "all" } else { "a sample of" };
        let _ = writeln!(
            out,
            "  KPI {} ({unit}{better} is better): challenger {} on {} device(s), champion {} on {}; \
             difference {}{verdict}, p {} over devices ({how} {} assignments)",
            kpi.name,
            value(kpi.challenger),
            kpi.challenger_devices,
            value(kpi.champion),
            kpi.champion_devices,
            d.difference.map_or("-".to_owned(), |x| format!("{x:+.4}")),
            d.p_value.map_or("-".to_owned(), |p| format!("{p:.4}")),
            d.permutations
        );
        if let Some(error) = &kpi.error {
            let _ = writeln!(out, "    not measured: {error}");
        }
    }
    if !arms.kpis.is_empty() {
        // The same comparison interval by interval (decision 0072), for the trend.
        let _ = writeln!(
            out,
            "  per interval of the KPI series: fabrik query \"SELECT time, kpi, challenger, \
             champion, p_value FROM ab_kpis WHERE pipeline = {} ORDER BY time DESC\"",
            crate::sql_text::literal(pipeline)
        );
    }
    if let Some(error) = &arms.kpi_error {
        let _ = writeln!(out, "  the use case's KPIs were not compared: {error}");
    }
    out
}

/// The sequential decision in a sentence: what it concluded, on what, at what p-value.
fn decision_line(d: &ShadowDecision) -> String {
    let verdict = match d.verdict {
        ShadowVerdict::ChallengerBetter => "CHALLENGER RIGHT MORE OFTEN",
        ShadowVerdict::ChampionBetter => "CHAMPION RIGHT MORE OFTEN",
        ShadowVerdict::Undecided => "undecided",
    };
    let difference = d
        .difference
        .map_or("-".to_owned(), |x| format!("{:+.1} points", x * 100.0));
    let when = d
        .decided_at
        .as_deref()
        .map_or(String::new(), |t| format!(", at the window of {t}"));
    let mut missed = String::new();
    for (who, count) in [
        ("challenger", d.challenger_missed),
        ("champion", d.champion_missed),
    ] {
        if count > 0 {
            missed += &format!("; the {who} missed {count} confirmed fault(s) of these");
        }
    }
    format!(
        "decision ({} at alpha {}): {verdict}; right on {} (champion) vs {} (challenger) of {} labelled windows, {difference}, always-valid p {:.4}{when}{missed}",
        d.test, d.alpha, d.champion_right, d.challenger_right, d.windows, d.p_value
    )
}

/// Devices' latest drift checks as text: a line per device, then (drifted features, or all
/// with `all`) a line per feature test.
fn drift_table(checks: &[DriftStatus], all: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:>7} {:>8} {:>9}  {:<24}  checked windows",
        "device", "drift", "share", "in a row", "anomalies", "checked at"
    );
    for check in checks {
        let verdict = match (check.dataset_drift, check.retrained) {
            (true, true) => "RETRAIN",
            (true, false) => "DRIFTED",
            _ => "stable",
        };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:>7.2} {:>8} {:>9}  {:<24}  {} against {} learnt from {} to {}",
            check.device,
            verdict,
            check.drifted_share,
            check.consecutive,
            check.anomalies,
            check.current_until,
            check.windows,
            check.reference_windows,
            check.reference_from,
            check.reference_until
        );
        for feature in check.features.iter().filter(|f| all || f.drifted) {
            let kind = if matches!(feature.method.as_str(), "ks" | "chisquare" | "z") {
                "p"
            } else {
                "distance"
            };
            let _ = writeln!(
                out,
                "    {:<28} {:<13} {kind} {:.4e} (threshold {}){}",
                feature.feature,
                feature.method,
                feature.score,
                feature.threshold,
                if feature.drifted { "  drifted" } else { "" }
            );
        }
    }
    let drifted = checks.iter().filter(|c| c.dataset_drift).count();
    let _ = writeln!(out, "{} device(s), {drifted} drifted", checks.len());
    out
}

#[cfg(test)]
mod tests {
    use fabrik_runtime::config::PipelineConfig;
    use std::path::Path;

    fn definitions(path: &Path, text: &str) -> anyhow::Result<Vec<PipelineConfig>> {
        crate::define_cli::definitions(path, text)
    }

    #[test]
    fn a_file_defines_pipelines_as_the_config_file_does_or_one_at_the_top() {
        let entries = "[[pipelines]]\nname = \"a\"\ntable = \"pump\"\nsignals = [\"v\"]\n\n\
                       [[pipelines]]\nname = \"b\"\ntable = \"pump\"\nsignals = [\"v\"]\n";
        let names: Vec<String> = definitions(Path::new("p.toml"), entries)
            .expect("entries")
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let single = "name = \"c\"\ntable = \"pump\"\nsignals = [\"v\"]\nmodel = \"hst\"\n";
        let one = definitions(Path::new("p.toml"), single).expect("single");
        assert_eq!((one[0].name.as_str(), one[0].model.as_str()), ("c", "hst"));
        let json = r#"[{"name": "d", "table": "pump", "signals": ["v"]}]"#;
        assert_eq!(
            definitions(Path::new("p.json"), json).expect("json")[0].name,
            "d"
        );
    }

    #[test]
    fn an_unknown_field_is_named() {
        let typo = "name = \"c\"\ntable = \"pump\"\nsignals = [\"v\"]\nwindw = \"10s\"\n";
        let error = definitions(Path::new("p.toml"), typo).expect_err("unknown field");
        assert!(format!("{error:#}").contains("windw"), "{error:#}");
    }
}
