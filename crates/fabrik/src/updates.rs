//! The `updates` module (decision 0031): follows a release repository (TUF) and installs the
//! models, use cases, pipelines, alert rules and (decision 0044) Fabrik binary it publishes for
//! this node. Every check verifies the repository's metadata against
//! the root the node was given (signatures, thresholds, versions never going back, expiry) and
//! every file against the signed hash and length before it is stored; the model then goes
//! through the same gate as an upload (its own signature under `[models]`, its fit with the
//! pipelines that use it). A refused target is reported and leaves the installed model alone.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fabrik_api::alert_rules::AlertRuleControl;
use fabrik_api::pipelines::PipelineControl;
use fabrik_api::updates::{TargetStatus, UpdateBoard, UpdateStatus};
use fabrik_registry::{AuditEvent, Registry};
use fabrik_runtime::{Config, ServiceHandle};
use tokio_util::sync::CancellationToken;
use tough::schema::{Root, Signed};
use tough::{
    FilesystemTransport, IntoVec, Repository, RepositoryLoader, Transport, TransportError,
    TransportErrorKind, TransportStream,
};

use crate::release::{Kind, ReleaseTarget, hex};

/// Checks `[updates]` (nothing when `url` is empty) and `[releases]`.
pub(crate) fn check(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let served = config.releases.repo.trim();
    if !served.is_empty() {
        let root = Path::new(served).join("metadata").join("1.root.json");
        if !root.is_file() {
            problems.push((
                "releases.repo".into(),
                format!(
                    "`{served}`: no release repository here ({} is missing; make one with \
                     `fabrik release init --repo {served} --keys <elsewhere>`)",
                    root.display()
                ),
            ));
        }
    }
    let keys = config.releases.keys.trim();
    if !keys.is_empty() {
        if served.is_empty() {
            problems.push((
                "releases.keys".into(),
                "set with releases.repo: the repository whose metadata they re-sign".into(),
            ));
        }
        for role in ["snapshot", "timestamp"] {
            let key = Path::new(keys).join(format!("{role}.key"));
            if !key.is_file() {
                problems.push((
                    "releases.keys".into(),
                    format!("{}: no {role} key here", key.display()),
                ));
            }
        }
    }
    for (field, text) in [
        (
            "releases.snapshot_lifetime",
            &config.releases.snapshot_lifetime,
        ),
        (
            "releases.timestamp_lifetime",
            &config.releases.timestamp_lifetime,
        ),
    ] {
        match fabrik_runtime::units::parse_duration(text) {
            Ok(lifetime) if lifetime < Duration::from_secs(2) => {
                problems.push((field.into(), "at least 2s".into()))
            }
            Ok(_) => {}
            Err(why) => problems.push((field.into(), why)),
        }
    }
    let updates = &config.updates;
    if updates.url.trim().is_empty() {
        return problems;
    }
    if let Err(why) = repository_urls(&updates.url) {
        problems.push(("updates.url".into(), why));
    }
    if updates.root.trim().is_empty() {
        problems.push((
            "updates.root".into(),
            "required with updates.url: the repository's trusted root metadata \
             (metadata/1.root.json of `fabrik release init`), copied to this node"
                .into(),
        ));
    } else if let Err(why) = read_root(Path::new(updates.root.trim())) {
        problems.push(("updates.root".into(), why));
    }
    match fabrik_runtime::units::parse_duration(&updates.interval) {
        Ok(interval) if interval.is_zero() => {
            problems.push(("updates.interval".into(), "must be longer than 0s".into()))
        }
        Ok(_) => {}
        Err(why) => problems.push(("updates.interval".into(), why)),
    }
    if let Err(why) = fabrik_runtime::units::parse_duration(&updates.confirm_after) {
        problems.push(("updates.confirm_after".into(), why));
    }
    let ca = updates.tls_ca.trim();
    if !ca.is_empty()
        && let Err(e) = std::fs::read(ca)
    {
        problems.push(("updates.tls_ca".into(), format!("{ca}: {e}")));
    }
    let identity = updates.identity.trim();
    if !identity.is_empty()
        && let Err(why) = crate::node_keys::check(Path::new(identity))
    {
        problems.push(("updates.identity".into(), why));
    }
    problems
}

/// Reads and parses root metadata, without trusting it yet (its signatures are checked when
/// the repository loads).
fn read_root(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice::<Signed<Root>>(&bytes).map_err(|e| {
        format!(
            "{}: not TUF root metadata ({e}); use the repository's metadata/1.root.json",
            path.display()
        )
    })?;
    Ok(bytes)
}

/// The metadata and targets URLs of a repository URL (`…/metadata/`, `…/targets/`).
fn repository_urls(url: &str) -> Result<(url::Url, url::Url), String> {
    let base = url::Url::parse(&format!("{}/", url.trim().trim_end_matches('/')))
        .map_err(|e| format!("`{url}`: {e}"))?;
    if !matches!(base.scheme(), "http" | "https" | "file") {
        return Err(format!(
            "`{url}`: the repository is read over http, https or from a file:// directory"
        ));
    }
    let join = |directory: &str| {
        base.join(directory)
            .map_err(|e| format!("`{url}`: {directory}: {e}"))
    };
    Ok((join("metadata/")?, join("targets/")?))
}

/// This node's name in targets' `nodes`: `[updates] node`, `[uplink] node`, else the host
/// name.
pub(crate) fn node_name(config: &Config) -> String {
    [&config.updates.node, &config.uplink.node]
        .into_iter()
        .map(|name| name.trim())
        .find(|name| !name.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "fabrik".into())
}

/// Fetches repository files over HTTP(S) (with the repository's bearer token) or from a
/// directory. A 404 is "not found", which TUF needs to tell "no newer root" from a failure.
#[derive(Debug, Clone)]
struct RepositoryTransport {
    http: reqwest::Client,
    token: Option<String>,
}

#[async_trait::async_trait]
impl Transport for RepositoryTransport {
    async fn fetch(&self, url: url::Url) -> Result<TransportStream, TransportError> {
        if url.scheme() == "file" {
            return FilesystemTransport.fetch(url).await;
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            ));
        }
        let mut request = self.http.get(url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, &url, e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
        }
        if !status.is_success() {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                &url,
                format!("HTTP {status}"),
            ));
        }
        // Read as it arrives: tough stops at the length the signed metadata allows.
        let location = url.to_string();
        let chunks = futures::stream::unfold(Some(response), move |response| {
            let location = location.clone();
            async move {
                let mut response = response?;
                match response.chunk().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), Some(response))),
                    Ok(None) => None,
                    Err(e) => Some((
                        Err(TransportError::new_with_cause(
                            TransportErrorKind::Other,
                            location,
                            e,
                        )),
                        None,
                    )),
                }
            }
        });
        Ok(Box::pin(chunks))
    }
}

/// What went wrong, said once: tough's errors wrap each cause with the URL again. The innermost
/// cause is the most precise ("Hash mismatch for <url>: calculated …, expected …"); when it
/// names no URL ("Connection refused"), the outermost says what was being fetched.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let first = error.to_string();
    let mut innermost = error;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    let last = innermost.to_string();
    if std::ptr::addr_eq(innermost, error) || last.contains("://") || first.contains(&last) {
        return if last.contains("://") { last } else { first };
    }
    format!("{first}: {last}")
}

pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A released definition, which must be the one its target names.
fn definition<T: serde::de::DeserializeOwned + crate::define_cli::Named>(
    bytes: &[u8],
    release: &ReleaseTarget,
) -> Result<T, Option<String>> {
    let config: T = serde_json::from_slice(bytes)
        .map_err(|e| Some(format!("not a {} definition: {e}", release.kind)))?;
    if config.name() != release.name {
        return Err(Some(format!(
            "the definition is named `{}`, the release `{}`",
            config.name(),
            release.name
        )));
    }
    Ok(config)
}

/// The table each install and refusal is recorded in, on the node (and, with an uplink, on
/// the hub: which node runs which release, since when).
pub(crate) use fabrik_api::updates::RELEASES_TABLE;

/// One node's follower of one repository.
struct Updater {
    root: Vec<u8>,
    repository: String,
    metadata_url: url::Url,
    targets_url: url::Url,
    transport: RepositoryTransport,
    /// tough keeps the newest metadata it trusted here, so a restart does not accept older
    /// metadata than the node already saw (rollback protection across restarts).
    datastore: PathBuf,
    node: String,
    /// This node's keys: the current one, and previous ones that still decrypt the targets
    /// published to them; or why they cannot be opened (a sealed file on a changed boot or
    /// an unreachable TPM), tried again at each check. Without them the node still installs
    /// unencrypted targets: the build that mends it among them.
    identity: Result<Arc<crate::node_keys::NodeKeys>, String>,
    /// `[updates] identity`, to open the keys again.
    configured_identity: String,
    control: Arc<dyn PipelineControl>,
    /// Alert rules, when the alerts module runs in this process.
    alert_rules: Option<Arc<dyn AlertRuleControl>>,
    registry: Option<Registry>,
    store: Arc<fabrik_store::Store>,
    board: UpdateBoard,
    /// Targets installed (or found installed) since start, by target name: their SHA-256 and
    /// when that was last established.
    applied: HashMap<String, (String, tokio::time::Instant)>,
    /// The definitions applied since start, by target name: the JSON, for the dry run that
    /// tells whether the node still runs it.
    applied_definitions: HashMap<String, Vec<u8>>,
    /// Targets refused, by target name. A refused target is fetched again only after a backoff
    /// (the cause may pass: a dropped link, a pipeline changed meanwhile), or at once when
    /// the repository publishes anything (a new targets version).
    refused: HashMap<String, Refusal>,
    /// How often the repository is checked.
    interval: Duration,
    /// When each target was installed since start, by target name: its SHA-256 and the time.
    installed_at: HashMap<String, (String, String)>,
    /// The running binary, replaced by a `binary` target when `binary_updates` is on.
    self_update: crate::self_update::SelfUpdate,
    /// `[updates] binary`.
    binary_updates: bool,
    /// This node's platform, which a binary target must name.
    platform: String,
    /// The data directory (the binary swap's record).
    data_dir: PathBuf,
    /// Binary builds whose rollback this process wrote to `_releases`.
    rollbacks_recorded: HashSet<String>,
    /// `[updates] rollback_after_failed_runs` and `confirm_after`, for the status.
    rollback_after_failed_runs: u32,
    confirm_after: Duration,
    /// When this node's keys were last recorded for the hub (`_node_keys`).
    keys_reported: Option<tokio::time::Instant>,
}

/// A target this node refused, and when it tries again.
struct Refusal {
    /// The target's signed metadata as it was then (hashes, length, Fabrik's part).
    fingerprint: String,
    reason: String,
    failures: u32,
    retry_at: tokio::time::Instant,
    /// Refused because it is encrypted and this node's keys did not open: tried again as
    /// soon as they do.
    needs_keys: bool,
}

/// How long an installed target is taken as still held before that is checked again (or ten
/// intervals, when longer).
const RECHECK: Duration = Duration::from_secs(30 * 60);
/// Longest wait before a refused target is tried again.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// Longest a check may take to fetch and verify the metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest one target's download may take (a large model over a slow plant link).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Why waiting for some work ended without its result.
enum Interrupted {
    Stopped,
    TimedOut,
}

/// `work`, unless the module is stopped or `limit` passes first.
async fn within<T>(
    stop: &CancellationToken,
    limit: Duration,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Interrupted> {
    tokio::select! {
        () = stop.cancelled() => Err(Interrupted::Stopped),
        result = tokio::time::timeout(limit, work) => result.map_err(|_| Interrupted::TimedOut),
    }
}

/// A fixed offset in `[0, interval / 10)` from the node's name, so a fleet started together
/// does not fetch a new release all in the same second.
fn spread(node: &str, interval: Duration) -> Duration {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(node.as_bytes());
    let fraction = f64::from(u16::from_be_bytes([digest[0], digest[1]])) / 65_536.0;
    interval.mul_f64(fraction / 10.0)
}

impl Updater {
    async fn run(mut self, stop: CancellationToken) {
        if self.binary_updates {
            self.settle_binary().await;
        }
        self.audit_rollbacks().await;
        let unconfirmed = self.unconfirmed_binary();
        if let Some(status) = self.board.write().as_mut() {
            status.binary_sha256 = self.self_update.known_sha256();
            status.binary_unconfirmed = unconfirmed;
        }
        self.report_keys().await;
        let offset = spread(&self.node, self.interval);
        // The offset also before the first check: a fleet powered up together.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(offset) => {}
        }
        let pause = self.interval + offset;
        loop {
            // A TPM that does not answer holds each of its tools up to 30 s: not the stop.
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.open_keys_again() => {}
            }
            self.check(&stop).await;
            self.report_keys().await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Tries again to open this node's keys when they did not open: a TPM that answers again,
    /// or the boot they are sealed to. Refused encrypted targets are then tried at once.
    async fn open_keys_again(&mut self) {
        let Err(before) = &self.identity else {
            return;
        };
        let opened = open_node_keys(&self.configured_identity, &self.data_dir)
            .await
            .and_then(|opened| opened);
        match opened {
            Ok(keys) => {
                tracing::info!(recipient = %keys.recipient(), "This node's keys for encrypted targets opened.");
                if let Some(status) = self.board.write().as_mut() {
                    show_keys(
                        status,
                        Ok(&keys),
                        (&self.configured_identity, &self.data_dir),
                    );
                }
                self.identity = Ok(Arc::new(keys));
                self.refused.retain(|_, refusal| !refusal.needs_keys);
            }
            Err(why) if why != *before => {
                tracing::error!(error = %why, "This node's keys for encrypted targets still cannot be opened.");
                if let Some(status) = self.board.write().as_mut() {
                    show_keys(
                        status,
                        Err(&why),
                        (&self.configured_identity, &self.data_dir),
                    );
                }
                self.identity = Err(why);
            }
            Err(_) => {}
        }
    }

    /// Records this node's keys for the hub (decision 0068) at start and then daily; a write
    /// that failed is tried again after the next check.
    async fn report_keys(&mut self) {
        if self
            .keys_reported
            .is_some_and(|at| at.elapsed() < crate::key_report::REPORT_EVERY)
        {
            return;
        }
        // Keys that did not open are reported once they do.
        let Ok(identity) = &self.identity else {
            return;
        };
        match crate::key_report::record(&self.store, &self.node, identity).await {
            Ok(()) => self.keys_reported = Some(tokio::time::Instant::now()),
            Err(e) => tracing::warn!(
                error = %e,
                "This node's key for encrypted targets could not be recorded for the hub; \
                 trying again after the next check."
            ),
        }
    }

    /// At start: removes what an interrupted install left beside the binary, and takes a
    /// binary found replaced by the one its last install replaced (put back by hand, without
    /// `fabrik updates rollback`) as rolled back, so the node does not install it again.
    async fn settle_binary(&self) {
        if let Ok(exe) = self.self_update.exe() {
            let swept = crate::self_update::sweep_staged(exe);
            if swept > 0 {
                tracing::info!(
                    files = swept,
                    "Removed what an interrupted binary install left."
                );
            }
        }
        let running = match self.self_update.running_sha256().await {
            Ok(running) => running,
            Err(why) => {
                tracing::warn!(error = %why, "The running binary could not be read.");
                return;
            }
        };
        match crate::self_update::settle_rollback(&self.data_dir, &running) {
            Ok(Some(rolled_back)) => tracing::warn!(
                build = %rolled_back,
                "This node runs the build its last binary install replaced: that install was \
                 rolled back, and the build is not installed again here."
            ),
            Ok(None) => {}
            Err(why) => {
                tracing::warn!(error = %why, "The binary update state could not be written.")
            }
        }
    }

    /// Puts the rollbacks made while the registry was closed (at a start, or by `fabrik
    /// updates rollback`) in the audit log, each once.
    async fn audit_rollbacks(&self) {
        let Some(registry) = &self.registry else {
            return;
        };
        for rolled_back in crate::self_update::unaudited_rollbacks(&self.data_dir) {
            let why = rolled_back
                .reason
                .as_deref()
                .unwrap_or("`fabrik updates rollback`");
            let event = AuditEvent {
                actor: format!("node:{}", self.node),
                action: "roll back binary".into(),
                target: format!("sha256 {} at {}: {why}", rolled_back.sha256, rolled_back.at),
                status: 200,
            };
            if let Err(e) = registry.audit(event).await {
                tracing::error!(error = %e, "The audit log could not record a binary rollback.");
                return;
            }
            if let Err(why) =
                crate::self_update::rollback_audited(&self.data_dir, &rolled_back.sha256)
            {
                tracing::warn!(error = %why, "A binary rollback was audited but not marked so; it may be audited twice.");
            }
        }
    }

    /// The installed binary's runs while it has not confirmed itself, if this process runs it.
    fn unconfirmed_binary(&self) -> Option<fabrik_api::updates::UnconfirmedBinary> {
        let running = self.self_update.known_sha256()?;
        let installed = crate::self_update::BinaryState::read(&self.data_dir).installed?;
        if installed.sha256 != running {
            return None;
        }
        installed
            .unconfirmed
            .map(|unconfirmed| fabrik_api::updates::UnconfirmedBinary {
                runs: unconfirmed.runs,
                failed_runs: unconfirmed.failed_runs,
                rollback_after_failed_runs: self.rollback_after_failed_runs,
                confirm_after_seconds: self.confirm_after.as_secs_f64(),
            })
    }

    /// One check: verify the repository, then bring every target for this node in.
    async fn check(&mut self, stop: &CancellationToken) {
        let started = now_rfc3339();
        let loader = RepositoryLoader::new(
            &self.root,
            self.metadata_url.clone(),
            self.targets_url.clone(),
        )
        .transport(self.transport.clone())
        .datastore(&self.datastore);
        let loaded = match within(stop, METADATA_TIMEOUT, loader.load()).await {
            Ok(loaded) => loaded.map_err(|e| describe(&e)),
            Err(Interrupted::Stopped) => return,
            Err(Interrupted::TimedOut) => Err(format!(
                "the repository's metadata did not arrive within {} s",
                METADATA_TIMEOUT.as_secs()
            )),
        };
        let repository = match loaded {
            Ok(repository) => repository,
            Err(why) => {
                metrics::counter!("fabrik_updates_check_failures_total").increment(1);
                tracing::warn!(repository = %self.repository, error = %why, "The release repository did not verify; nothing installed.");
                let unconfirmed = self.unconfirmed_binary();
                let mut board = self.board.write();
                if let Some(status) = board.as_mut() {
                    status.checks += 1;
                    status.last_check_at = Some(started);
                    status.last_error = Some(why);
                    // Shown while the repository fails too: a node that restarts its new
                    // binary again and again may well not reach it.
                    status.binary_sha256 = self.self_update.known_sha256();
                    status.binary_unconfirmed = unconfirmed;
                }
                return;
            }
        };
        let Some(targets) = self.bring_in(&repository, stop).await else {
            return;
        };
        let mut board = self.board.write();
        if let Some(status) = board.as_mut() {
            status.checks += 1;
            status.last_check_at = Some(started.clone());
            status.last_verified_at = Some(started);
            status.root_version = repository.root().signed.version.get();
            status.targets_version = repository.targets().signed.version.get();
            // How many keys of a role must sign, of how many the root lists.
            let quorum = |role| {
                repository
                    .root()
                    .signed
                    .roles
                    .get(&role)
                    .map(|keys| (keys.threshold.get(), keys.keyids.len() as u64))
            };
            if let Some(quorum) = quorum(tough::schema::RoleType::Targets) {
                (status.targets_threshold, status.targets_keys) = quorum;
            }
            if let Some(quorum) = quorum(tough::schema::RoleType::Root) {
                (status.root_threshold, status.root_keys) = quorum;
            }
            status.snapshot_version = repository.snapshot().signed.version.get();
            status.timestamp_version = repository.timestamp().signed.version.get();
            status.expires_at = [
                repository.root().signed.expires,
                repository.targets().signed.expires,
                repository.snapshot().signed.expires,
                repository.timestamp().signed.expires,
            ]
            .into_iter()
            .min()
            .map(|at| at.to_string());
            status.installed = self.installed_at.len() as u64;
            status.binary_sha256 = self.self_update.known_sha256();
            status.binary_unconfirmed = self.unconfirmed_binary();
            status.targets = targets;
            status.last_error = None;
        }
    }

    /// Each Fabrik target of the repository as this node sees it, installing those for it
    /// that it does not hold yet; `None` when the module was stopped meanwhile.
    async fn bring_in(
        &mut self,
        repository: &Repository,
        stop: &CancellationToken,
    ) -> Option<Vec<TargetStatus>> {
        // What this node holds, listed only when a model target is not known to be installed
        // since start (listing reads and parses every stored model): a model whose bytes
        // equal the target's is installed, whoever put it there.
        let mut held: Option<HashMap<String, String>> = None;
        let mut statuses = Vec::new();
        // Fabrik's targets (another tool's files in a shared repository are left out).
        let mut listed: Vec<_> = repository
            .all_targets()
            .filter_map(|(name, target)| {
                ReleaseTarget::of(target).map(|release| (name.clone(), target.clone(), release))
            })
            .collect();
        // Models before the pipelines that name them, pipelines before the alert rules on
        // their inferences.
        listed.sort_by_key(|(name, _, release)| {
            let kind = release
                .as_ref()
                .ok()
                .and_then(|release| Kind::parse(&release.kind));
            (kind, name.raw().to_owned())
        });
        // The binaries published for this node and its platform: more than one is a
        // publisher's mistake, and none of them is installed.
        let binaries: Vec<String> = listed
            .iter()
            .filter_map(|(name, _, release)| {
                let release = release.as_ref().ok()?;
                (Kind::parse(&release.kind) == Some(Kind::Binary)
                    && release.is_for(&self.node)
                    && release.outside_phase(&self.node).is_none()
                    && release.platform.as_deref() == Some(self.platform.as_str()))
                .then(|| name.raw().to_owned())
            })
            .collect();
        for (target_name, target, release) in listed {
            let sha256 = hex(&target.hashes.sha256);
            let mut status = TargetStatus {
                target: target_name.raw().to_owned(),
                kind: String::new(),
                name: String::new(),
                sha256: sha256.clone(),
                length: target.length,
                encrypted: false,
                state: String::new(),
                reason: None,
                installed_at: None,
            };
            let release = match release {
                Ok(release) => release,
                Err(why) => {
                    status.state = "refused".into();
                    status.reason = Some(why);
                    statuses.push(status);
                    continue;
                }
            };
            status.kind = release.kind.clone();
            status.name = release.name.clone();
            status.encrypted = release.encrypted.is_some();
            let key = target_name.raw().to_owned();
            // With the targets version: any publish (a repaired file is republished with the
            // same hash) ends every backoff.
            let fingerprint = format!(
                "{}:{}",
                repository.targets().signed.version,
                serde_json::to_string(&target).unwrap_or_default()
            );
            let waiting: Option<String> = self
                .refused
                .get(&key)
                .filter(|refusal| {
                    refusal.fingerprint == fingerprint
                        && tokio::time::Instant::now() < refusal.retry_at
                })
                .map(|refusal| refusal.reason.clone());
            let kind = Kind::parse(&release.kind);
            let named_right = kind
                .and_then(|kind| kind.target_name(&release.name).ok())
                .is_some_and(|expected| expected == target_name);
            if kind.is_none() {
                status.state = "refused".into();
                status.reason = Some(format!(
                    "kind `{}` is not one this Fabrik installs ({})",
                    release.kind,
                    Kind::LISTED
                ));
            } else if !named_right {
                status.state = "refused".into();
                status.reason = Some(format!(
                    "a {} named `{}` is published as `<name>{}`, not as this target",
                    release.kind,
                    release.name,
                    kind.and_then(|kind| kind.target_name("").ok())
                        .map(|empty| empty.raw().to_owned())
                        .unwrap_or_default()
                ));
            } else if !release.is_for(&self.node) {
                status.state = "not_for_this_node".into();
            } else if let Some(reason) = match release.outside_phase(&self.node) {
                // A share narrowed after this node installed the build leaves it installed
                // here (it is not taken back), and so it is reported.
                Some(reason) if !self.holds(&key, &sha256, &release, &mut held).await => {
                    Some(reason)
                }
                _ => None,
            } {
                status.state = "not_for_this_node".into();
                status.reason = Some(reason);
            } else if kind == Some(Kind::Binary)
                && release.platform.as_deref() != Some(self.platform.as_str())
            {
                status.state = "not_for_this_node".into();
                status.reason = Some(format!(
                    "built for {}; this node runs on {}",
                    release.platform.as_deref().unwrap_or("an unnamed platform"),
                    self.platform
                ));
            } else if let (true, Some(_), Err(why)) =
                (release.nodes.is_empty(), &release.encrypted, &self.identity)
            {
                // Encrypted for every node, its recipients the nodes it is for: which those
                // are is known once this node's keys open. Nothing is recorded for the hub
                // meanwhile: a refusal would stand in its fleet view for good if the target
                // turned out to be another node's.
                status.state = "waiting_for_keys".into();
                status.reason = Some(format!(
                    "encrypted, and this node's keys cannot be opened yet ({why}); tried \
                     again at each check"
                ));
            } else if release.nodes.is_empty()
                && release.encrypted.as_ref().is_some_and(|encryption| {
                    self.identity
                        .as_ref()
                        .is_ok_and(|keys| !Self::is_recipient(encryption, keys))
                })
            {
                // Encrypted for every node: its recipients are the nodes it is for. (Named
                // with --nodes and not a recipient, a node refuses it: a publisher's slip.)
                status.state = "not_for_this_node".into();
                status.reason = Some("encrypted to other nodes' keys".into());
            } else if self.holds(&key, &sha256, &release, &mut held).await {
                status.state = "installed".into();
            } else if kind == Some(Kind::Binary) && binaries.len() > 1 {
                status.state = "refused".into();
                status.reason = Some(format!(
                    "{} binaries are published for this node on {} ({}): none is installed \
                     until all but one are removed",
                    binaries.len(),
                    self.platform,
                    binaries.join(", ")
                ));
            } else if let Some((state, reason)) = self.binary_held_back(&release, &sha256) {
                // A rollback shows in the fleet view once per build and start.
                if state == "refused" && self.rollbacks_recorded.insert(sha256.clone()) {
                    self.record(repository, &key, &release, &sha256, Some(&reason))
                        .await;
                }
                status.state = state.into();
                status.reason = Some(reason);
            } else if let Some(reason) = waiting {
                status.state = "refused".into();
                status.reason = Some(reason);
            } else {
                match self
                    .install(repository, &target_name, &release, &sha256, stop)
                    .await
                {
                    Ok(changed) => {
                        self.refused.remove(&key);
                        self.applied
                            .insert(key.clone(), (sha256.clone(), tokio::time::Instant::now()));
                        if changed {
                            self.installed_at
                                .insert(key.clone(), (sha256.clone(), now_rfc3339()));
                            self.record(repository, &key, &release, &sha256, None).await;
                        }
                        status.state = "installed".into();
                    }
                    Err(None) => return None,
                    Err(Some(why)) => {
                        metrics::counter!("fabrik_updates_refused_total").increment(1);
                        tracing::warn!(target = %key, error = %why, "A release target was refused; what this node holds stays.");
                        self.audit(&release, &key, &sha256, 422).await;
                        self.record(repository, &key, &release, &sha256, Some(&why))
                            .await;
                        let failures = self
                            .refused
                            .get(&key)
                            .filter(|refusal| refusal.fingerprint == fingerprint)
                            .map_or(1, |refusal| refusal.failures.saturating_add(1));
                        // The interval, doubling per failure, at most an hour (or the
                        // interval, when that is longer).
                        let backoff = self
                            .interval
                            .saturating_mul(1 << failures.min(16).saturating_sub(1))
                            .min(MAX_RETRY.max(self.interval));
                        self.refused.insert(
                            key.clone(),
                            Refusal {
                                fingerprint,
                                reason: why.clone(),
                                failures,
                                retry_at: tokio::time::Instant::now() + backoff,
                                needs_keys: release.encrypted.is_some() && self.identity.is_err(),
                            },
                        );
                        status.state = "refused".into();
                        status.reason = Some(why);
                    }
                }
            }
            status.installed_at = self
                .installed_at
                .get(&key)
                .filter(|(installed_sha, _)| *installed_sha == sha256)
                .map(|(_, at)| at.clone());
            statuses.push(status);
        }
        Some(statuses)
    }

    /// Fetches a target (tough checks its length and hash as it streams in) and stores it as
    /// the model it names, through the same checks as an upload.
    /// Whether this node holds the target already: installed or found installed within the
    /// last [`RECHECK`] (a model, pipeline or rule changed or removed on the node by hand is
    /// put back within that), else a model with the same bytes among those stored (listed
    /// at most once per check), or a definition the node's own dry run calls unchanged.
    async fn holds(
        &mut self,
        key: &str,
        sha256: &str,
        release: &ReleaseTarget,
        held: &mut Option<HashMap<String, String>>,
    ) -> bool {
        let recheck = RECHECK.max(self.interval.saturating_mul(10));
        let recent = self
            .applied
            .get(key)
            .is_some_and(|(applied, at)| applied == sha256 && at.elapsed() < recheck);
        if recent {
            return true;
        }
        let holds = match Kind::parse(&release.kind) {
            Some(Kind::Model) => {
                if held.is_none() {
                    *held = Some(self.held_models().await);
                }
                let content = release.content_sha256(sha256);
                held.as_ref().is_some_and(|held| {
                    held.get(&release.name).map(String::as_str) == Some(content)
                })
            }
            // Only a definition this node applied before (with these bytes) can be unchanged.
            Some(Kind::UseCase) | Some(Kind::Pipeline) | Some(Kind::AlertRule) => {
                self.applied
                    .get(key)
                    .is_some_and(|(applied, _)| applied == sha256)
                    && self.unchanged_on_node(release, key).await
            }
            // The binary this process runs: what it was started from, not what lies on disk
            // now (an install swaps the file before the restart).
            Some(Kind::Binary) => match self.self_update.running_sha256().await {
                Ok(running) => running == release.content_sha256(sha256),
                Err(why) => {
                    tracing::warn!(error = %why, "The running binary could not be read.");
                    false
                }
            },
            None => false,
        };
        if holds {
            self.applied.insert(
                key.to_owned(),
                (sha256.to_owned(), tokio::time::Instant::now()),
            );
        }
        holds
    }

    /// Why a binary target this node does not run yet is not installed now, with the state to
    /// show: binary updates are off, or an operator rolled this build back here.
    fn binary_held_back(
        &self,
        release: &ReleaseTarget,
        sha256: &str,
    ) -> Option<(&'static str, String)> {
        if Kind::parse(&release.kind) != Some(Kind::Binary) {
            return None;
        }
        if !self.binary_updates {
            return Some((
                "available",
                "this node runs another build; `[updates] binary = true` installs it".into(),
            ));
        }
        let content = release.content_sha256(sha256);
        let state = crate::self_update::BinaryState::read(&self.data_dir);
        if state.rolled_back(content).is_none() && self.self_update.awaiting_confirmation() {
            // One unconfirmed build at a time: installed over it, a build that failed would
            // go back to one that never proved itself either.
            return Some((
                "available",
                "the running build has not confirmed itself yet (`[updates] confirm_after`); \
                 installed once it has"
                    .into(),
            ));
        }
        state.rolled_back(content).map(|rolled_back| {
            let why = rolled_back
                .reason
                .as_deref()
                .unwrap_or("`fabrik updates rollback`");
            (
                "refused",
                format!(
                    "rolled back on this node at {} ({why}); publish another build",
                    rolled_back.at
                ),
            )
        })
    }

    /// Whether this node's key is among an encrypted target's recipients (compared as keys:
    /// another tool may write them in capitals).
    fn is_recipient(
        encryption: &crate::release::Encryption,
        keys: &crate::node_keys::NodeKeys,
    ) -> bool {
        encryption
            .recipients
            .iter()
            .any(|text| crate::age::Recipient::parse(text).is_ok_and(|key| keys.holds(&key)))
    }

    /// Whether the definition this node applied for `key` is still what it runs: a dry run of
    /// it answers `unchanged`.
    async fn unchanged_on_node(&self, release: &ReleaseTarget, key: &str) -> bool {
        let Some(applied) = self.applied_definitions.get(key) else {
            return false;
        };
        let answer = match Kind::parse(&release.kind) {
            Some(Kind::Pipeline) => match serde_json::from_slice(applied) {
                Ok(config) => self.control.check(config).await.ok(),
                Err(_) => None,
            },
            Some(Kind::AlertRule) => match (&self.alert_rules, serde_json::from_slice(applied)) {
                (Some(rules), Ok(config)) => rules.check(config).await.ok(),
                _ => None,
            },
            Some(Kind::UseCase) => {
                return match serde_json::from_slice(applied) {
                    Ok(released) => self.use_case_as_released(&released).await == Ok(true),
                    Err(_) => false,
                };
            }
            _ => None,
        };
        answer.is_some_and(|dry_run| dry_run.action == "unchanged")
    }

    /// Whether the node's use case has the released definition and stage (`Ok(false)` when it
    /// differs or is not defined).
    async fn use_case_as_released(
        &self,
        released: &crate::release::ReleasedUseCase,
    ) -> Result<bool, String> {
        let (_, held) = self.held_use_case(&released.definition.name).await?;
        Ok(held.is_some_and(|held| {
            held.definition == released.definition && held.stage == released.stage
        }))
    }

    /// The registry, and the use case `name` as this node holds it, if it does.
    async fn held_use_case(
        &self,
        name: &str,
    ) -> Result<(&Registry, Option<fabrik_registry::usecases::UseCase>), String> {
        let registry = self
            .registry
            .as_ref()
            .ok_or("the registry module does not run in this process")?;
        match registry.use_case(name).await {
            Ok(held) => Ok((registry, Some(held))),
            Err(fabrik_registry::RegistryError::UseCaseNotFound(_)) => Ok((registry, None)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Defines a released use case (a new one starts in pilot, a redefined one keeps its
    /// stage) and moves it to the released stage, recorded as a stage decision with the
    /// release's reason (its gate was judged where the decision was made). `Ok(false)` when
    /// the node had it so already.
    async fn apply_use_case(
        &self,
        released: crate::release::ReleasedUseCase,
        targets_version: u64,
    ) -> Result<bool, String> {
        use fabrik_registry::usecases::StageChange;
        let mut problems = released.definition.problems();
        problems.extend(crate::usecases::sql_problems(&released.definition));
        if let Some(why) = crate::release::use_case_reason_problem(&released.reason) {
            problems.push(("reason".into(), why));
        }
        if !problems.is_empty() {
            return Err(fabrik_api::control::describe_problems(&problems));
        }
        let name = released.definition.name.clone();
        let (registry, held) = self.held_use_case(&name).await?;
        if held.as_ref().is_some_and(|held| {
            held.definition == released.definition && held.stage == released.stage
        }) {
            return Ok(false);
        }
        let use_case = match held {
            Some(held) if held.definition == released.definition => held,
            _ => {
                registry
                    .put_use_case(released.definition.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .0
            }
        };
        if use_case.stage != released.stage {
            let change = StageChange {
                from: use_case.stage,
                since: use_case.stage_since.clone(),
                updated_at: use_case.updated_at.clone(),
                to: released.stage,
                actor: format!("updates:{}", self.repository),
                // The gate was judged (or overridden) where the decision was made; this node
                // has no evidence of its own, so there is no report to keep.
                forced: released.forced,
                reason: format!(
                    "released at {} (targets version {targets_version}): {}",
                    released.stage.display(),
                    released.reason.trim()
                ),
                gate: None,
            };
            registry
                .change_stage(&name, change)
                .await
                .map_err(|e| e.to_string())?;
        }
        tracing::info!(use_case = %name, stage = released.stage.display(), "Use case applied from the release repository.");
        Ok(true)
    }

    /// The models this node holds: name → SHA-256.
    async fn held_models(&self) -> HashMap<String, String> {
        match self.control.models().await {
            Ok(models) => models.into_iter().map(|m| (m.name, m.sha256)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "The installed models could not be listed.");
                HashMap::new()
            }
        }
    }

    /// `Ok(changed)`: installed, `changed` false when a definition was already what the node
    /// runs (then nothing is counted or audited); `Err(None)` when the module was stopped
    /// during the download (nothing was stored), `Err(Some(why))` when the target was
    /// refused. Storing is never interrupted.
    async fn install(
        &mut self,
        repository: &Repository,
        target_name: &tough::TargetName,
        release: &ReleaseTarget,
        sha256: &str,
        stop: &CancellationToken,
    ) -> Result<bool, Option<String>> {
        // Refused before the download when the file cannot be for this node's key.
        if let Some(encryption) = &release.encrypted {
            if encryption.format != crate::release::ENCRYPTION_FORMAT {
                return Err(Some(format!(
                    "encrypted as `{}`, which this Fabrik cannot read",
                    encryption.format
                )));
            }
            let keys = self.identity.as_ref().map_err(|why| {
                Some(format!(
                    "encrypted, and this node's keys cannot be opened ({why}); tried again at \
                     the next check"
                ))
            })?;
            if !Self::is_recipient(encryption, keys) {
                let mine = keys.recipient();
                return Err(Some(format!(
                    "encrypted to {} other key{}, not to this node's ({mine}; `fabrik \
                     updates recipient` prints it for the publisher)",
                    encryption.recipients.len(),
                    if encryption.recipients.len() == 1 {
                        ""
                    } else {
                        "s"
                    }
                )));
            }
        }
        if Kind::parse(&release.kind) == Some(Kind::Binary) {
            let exe = self.self_update.exe().map_err(|e| Some(e.to_owned()))?;
            crate::self_update::check_writable_beside(exe).map_err(Some)?;
        }
        let download = async {
            let stream = repository
                .read_target(target_name)
                .await
                .map_err(|e| describe(&e))?
                .ok_or_else(|| "listed in the targets metadata, but not found".to_owned())?;
            stream.into_vec().await.map_err(|e| describe(&e))
        };
        let bytes = match within(stop, DOWNLOAD_TIMEOUT, download).await {
            Ok(bytes) => bytes.map_err(Some)?,
            Err(Interrupted::Stopped) => return Err(None),
            Err(Interrupted::TimedOut) => {
                return Err(Some(format!(
                    "the download took longer than {} minutes",
                    DOWNLOAD_TIMEOUT.as_secs() / 60
                )));
            }
        };
        // `bytes` are the target's, whose SHA-256 (`sha256`) tough checked as they streamed in.
        let bytes = match &release.encrypted {
            None => bytes,
            Some(encryption) => {
                // Off the async workers: a large model takes a while to decrypt and hash.
                let identity = self.identity.clone().map_err(Some)?;
                let encryption = encryption.clone();
                tokio::task::spawn_blocking(move || decrypted(&bytes, &encryption, &identity))
                    .await
                    .map_err(|e| Some(format!("decrypting stopped: {e}")))??
            }
        };
        match Kind::parse(&release.kind) {
            Some(Kind::Model) => {
                let (info, _) = self
                    .control
                    .put_model(release.name.clone(), bytes, release.signature.clone())
                    .await
                    .map_err(|e| Some(e.to_string()))?;
                tracing::info!(
                    target = %target_name.raw(),
                    model = %info.name,
                    sha256 = %info.sha256,
                    signed_by = info.signed_by.as_deref().unwrap_or("-"),
                    restarted = info.used_by.len(),
                    "Model installed from the release repository."
                );
            }
            Some(Kind::Pipeline) => {
                let config: fabrik_runtime::config::PipelineConfig = definition(&bytes, release)?;
                if let Some(why) = crate::release::released_pipeline_problem(&config) {
                    return Err(Some(why));
                }
                let dry_run = self
                    .control
                    .check(config.clone())
                    .await
                    .map_err(|e| Some(e.to_string()))?;
                self.applied_definitions
                    .insert(target_name.raw().to_owned(), bytes.clone());
                if dry_run.action == "unchanged" {
                    return Ok(false);
                }
                let created = self
                    .control
                    .apply(config)
                    .await
                    .map_err(|e| Some(e.to_string()))?;
                tracing::info!(target = %target_name.raw(), pipeline = %release.name, created, warnings = ?dry_run.warnings, "Pipeline applied from the release repository.");
            }
            Some(Kind::AlertRule) => {
                let rules = self.alert_rules.clone().ok_or_else(|| {
                    Some("the alerts module does not run in this process".to_owned())
                })?;
                let config: fabrik_runtime::config::AlertRuleConfig = definition(&bytes, release)?;
                let dry_run = rules
                    .check(config.clone())
                    .await
                    .map_err(|e| Some(e.to_string()))?;
                self.applied_definitions
                    .insert(target_name.raw().to_owned(), bytes.clone());
                if dry_run.action == "unchanged" {
                    return Ok(false);
                }
                let created = rules.apply(config).await.map_err(|e| Some(e.to_string()))?;
                tracing::info!(target = %target_name.raw(), rule = %release.name, created, warnings = ?dry_run.warnings, "Alert rule applied from the release repository.");
            }
            Some(Kind::UseCase) => {
                let released: crate::release::ReleasedUseCase = definition(&bytes, release)?;
                let changed = self
                    .apply_use_case(released, repository.targets().signed.version.get())
                    .await
                    .map_err(Some)?;
                self.applied_definitions
                    .insert(target_name.raw().to_owned(), bytes.clone());
                if !changed {
                    return Ok(false);
                }
            }
            Some(Kind::Binary) => {
                let content = release.content_sha256(sha256).to_owned();
                self.self_update
                    .install(bytes, &content, target_name.raw(), &self.data_dir, stop)
                    .await
                    .map_err(Some)?;
            }
            None => return Err(Some(format!("kind `{}` is not known", release.kind))),
        }
        metrics::counter!("fabrik_updates_installed_total").increment(1);
        self.audit(release, target_name.raw(), sha256, 200).await;
        Ok(true)
    }

    /// Writes an install (`reason` none) or a refusal as a row of [`RELEASES_TABLE`]: `sha256`
    /// is the content's (an ONNX model's `model_version` in its inferences), `file_sha256` the
    /// signed file's, which differs for an encrypted target.
    async fn record(
        &self,
        repository: &Repository,
        target: &str,
        release: &ReleaseTarget,
        sha256: &str,
        reason: Option<&str>,
    ) {
        use fabrik_core::{Point, Quality, Timestamp, Value};
        let point = Point {
            measurement: RELEASES_TABLE.into(),
            tags: vec![
                ("node".into(), self.node.clone()),
                ("target".into(), target.to_owned()),
                ("kind".into(), release.kind.clone()),
                ("name".into(), release.name.clone()),
            ],
            fields: vec![
                (
                    "sha256".into(),
                    Value::Str(release.content_sha256(sha256).to_owned()),
                ),
                ("file_sha256".into(), Value::Str(sha256.to_owned())),
                (
                    "state".into(),
                    Value::Str(
                        if reason.is_some() {
                            "refused"
                        } else {
                            "installed"
                        }
                        .into(),
                    ),
                ),
                (
                    "targets_version".into(),
                    Value::U64(repository.targets().signed.version.get()),
                ),
                (
                    "reason".into(),
                    Value::Str(reason.unwrap_or_default().to_owned()),
                ),
            ],
            time: Timestamp::now(),
            quality: Quality::Good,
        };
        let source = format!("updates:{}", self.repository);
        if let Err(e) = self
            .store
            .write_computed(&[point], &source, RELEASES_TABLE)
            .await
        {
            tracing::warn!(error = %e, "A release install could not be recorded in {RELEASES_TABLE}.");
        }
    }

    async fn audit(&self, release: &ReleaseTarget, target: &str, sha256: &str, status: u16) {
        let Some(registry) = &self.registry else {
            return;
        };
        let event = AuditEvent {
            actor: format!("updates:{}", self.repository),
            action: format!("install {} from release", release.kind),
            target: format!(
                "{} ({target}, sha256 {})",
                release.name,
                release.content_sha256(sha256)
            ),
            status,
        };
        if let Err(e) = registry.audit(event).await {
            tracing::error!(error = %e, "The audit log could not record a release install.");
        }
    }
}

/// The content of an encrypted target (verified by its signed hash already): decrypted with
/// this node's key and checked against the content hash and length the publisher signed.
fn decrypted(
    file: &[u8],
    encryption: &crate::release::Encryption,
    identity: &crate::node_keys::NodeKeys,
) -> Result<Vec<u8>, Option<String>> {
    let content = crate::age::decrypt_any(file, identity.all())
        .map_err(|e| Some(format!("could not decrypt: {e}")))?;
    let sha256 = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &content).as_ref());
    if sha256 != encryption.sha256 || content.len() as u64 != encryption.length {
        return Err(Some(format!(
            "decrypted to {} bytes with SHA-256 {sha256}, not the {} bytes with SHA-256 {} the \
             publisher signed",
            content.len(),
            encryption.length,
            encryption.sha256
        )));
    }
    Ok(content)
}

/// This node's keys (`[updates] identity`, `configured`), opened off the async threads (a
/// sealed file is opened by tpm2-tools processes); the outer error is the task's own.
async fn open_node_keys(
    configured: &str,
    data_dir: &Path,
) -> Result<Result<crate::node_keys::NodeKeys, String>, String> {
    let (configured, data_dir) = (configured.to_owned(), data_dir.to_owned());
    tokio::task::spawn_blocking(move || crate::node_keys::of_node(&configured, &data_dir))
        .await
        .map(|opened| opened.map_err(|why| format!("updates.identity: {why}")))
        .map_err(|e| format!("updates.identity: {e}"))
}

/// The node's keys in its status: their recipients and seal, or why they did not open (and
/// how the file in `identity` — `[updates] identity` and the data directory — is sealed, as
/// its envelope says without the TPM).
fn show_keys(
    status: &mut UpdateStatus,
    keys: Result<&crate::node_keys::NodeKeys, &str>,
    identity: (&str, &Path),
) {
    match keys {
        Ok(keys) => {
            status.recipient = keys.recipient().to_string();
            status.previous_recipients = keys.previous_recipients();
            status.key_sealed = keys.sealed();
            status.key_sealed_pcrs = keys.sealed_pcrs();
            status.key_error = None;
        }
        Err(why) => {
            let (sealed, pcrs) = crate::node_keys::seal_on_disk(identity.0, identity.1);
            status.recipient = String::new();
            status.previous_recipients = Vec::new();
            status.key_sealed = sealed;
            status.key_sealed_pcrs = pcrs;
            status.key_error = Some(why.to_owned());
        }
    }
}

/// Starts the module: idle without `[updates] url`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    config: &Config,
    data_dir: &Path,
    self_update: crate::self_update::SelfUpdate,
    control: Arc<dyn PipelineControl>,
    alert_rules: Option<Arc<dyn AlertRuleControl>>,
    registry: Option<Registry>,
    store: Arc<fabrik_store::Store>,
    board: UpdateBoard,
) -> Result<ServiceHandle, String> {
    let updates = &config.updates;
    if updates.url.trim().is_empty() {
        return Ok(crate::nats_link::idle_module());
    }
    if let Some((path, message)) = check(config).first() {
        return Err(format!("{path}: {message}"));
    }
    let (metadata_url, targets_url) = repository_urls(&updates.url)?;
    let root = read_root(Path::new(updates.root.trim()))?;
    let interval = fabrik_runtime::units::parse_duration(&updates.interval)?;
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60));
    let ca = updates.tls_ca.trim();
    if !ca.is_empty() {
        http = crate::client::trust_ca_file(http, Path::new(ca))
            .map_err(|e| format!("updates.tls_ca: {}", crate::error_text::describe(&e)))?;
    }
    let http = http
        .build()
        .map_err(|e| format!("updates: the HTTP client: {e}"))?;
    let datastore = data_dir.join("updates").join("tuf");
    std::fs::create_dir_all(&datastore).map_err(|e| format!("{}: {e}", datastore.display()))?;
    let node = node_name(config);
    // A sealed identity is opened by tpm2-tools processes: off the async threads. Keys that
    // do not open (a sealed file on a changed boot, a TPM not answering) do not stop the
    // module: it follows the repository without them and tries them again at each check.
    let identity = open_node_keys(&updates.identity, data_dir)
        .await?
        .map(Arc::new);
    let repository = updates.url.trim().to_owned();
    match &identity {
        Ok(keys) => {
            tracing::info!(%repository, %node, recipient = %keys.recipient(), every = ?interval, "Following the release repository.");
        }
        Err(why) => {
            tracing::error!(%repository, %node, error = %why, every = ?interval, "Following the release repository without this node's keys for encrypted targets: they cannot be opened. Encrypted targets wait until they do (tried again at each check).");
        }
    }
    let uplink_node = config.uplink.node.trim();
    if !config.uplink.url.trim().is_empty() && !uplink_node.is_empty() && uplink_node != node {
        // The hub takes a node's key only from rows its own uplink brought (decision 0068).
        tracing::warn!(
            updates_node = %node,
            uplink_node,
            "[updates] node and [uplink] node differ: the hub will not list this node's key \
             for encrypted targets, as it cannot tie it to the uplink that brought it."
        );
    }
    let mut status = UpdateStatus {
        repository: repository.clone(),
        node: node.clone(),
        interval_seconds: interval.as_secs_f64(),
        platform: crate::self_update::platform(),
        binary_updates: updates.binary,
        ..UpdateStatus::default()
    };
    show_keys(
        &mut status,
        identity.as_deref().map_err(String::as_str),
        (&updates.identity, data_dir),
    );
    *board.write() = Some(status);
    let updater = Updater {
        root,
        repository,
        metadata_url,
        targets_url,
        transport: RepositoryTransport {
            http,
            token: Some(updates.token.trim().to_owned()).filter(|t| !t.is_empty()),
        },
        datastore,
        node,
        identity,
        configured_identity: updates.identity.clone(),
        control,
        alert_rules,
        registry,
        store,
        board,
        applied: HashMap::new(),
        applied_definitions: HashMap::new(),
        refused: HashMap::new(),
        interval,
        installed_at: HashMap::new(),
        self_update,
        binary_updates: updates.binary,
        platform: crate::self_update::platform(),
        data_dir: data_dir.to_owned(),
        rollbacks_recorded: HashSet::new(),
        rollback_after_failed_runs: updates.rollback_after_failed_runs,
        confirm_after: fabrik_runtime::units::parse_duration(&updates.confirm_after)?,
        keys_reported: None,
    };
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        updater.run(token).await;
        Ok(())
    });
    Ok(ServiceHandle { stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapped(String, Option<Box<Wrapped>>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn chain(messages: &[&str]) -> Wrapped {
        messages
            .iter()
            .rev()
            .fold(None, |inner, message| {
                Some(Wrapped((*message).into(), inner.map(Box::new)))
            })
            .expect("a message")
    }

    #[test]
    fn failures_are_said_once_with_what_was_fetched() {
        let url = "http://hub/tuf/targets/x.onnx";
        assert_eq!(
            describe(&chain(&[
                &format!("Failed to fetch {url}"),
                &format!("Transport error fetching '{url}': Hash mismatch for {url}: calculated a"),
                &format!("Hash mismatch for {url}: calculated a"),
            ])),
            format!("Hash mismatch for {url}: calculated a")
        );
        assert_eq!(
            describe(&chain(&[
                &format!("Failed to fetch {url}"),
                "error sending request",
                "Connection refused (os error 111)",
            ])),
            format!("Failed to fetch {url}: Connection refused (os error 111)")
        );
        assert_eq!(
            describe(&chain(&["timestamp metadata is expired"])),
            "timestamp metadata is expired"
        );
    }

    #[test]
    fn a_decrypted_target_must_be_what_the_publisher_signed() {
        use crate::node_keys::NodeKeys;
        let node = crate::age::Identity::generate().expect("identity");
        let file = crate::age::encrypt(b"model bytes", std::slice::from_ref(node.recipient()))
            .expect("encrypt");
        let sha = |bytes: &[u8]| {
            hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref())
        };
        let mut encryption = crate::release::Encryption {
            format: crate::release::ENCRYPTION_FORMAT.into(),
            recipients: vec![node.recipient().to_string()],
            sha256: sha(b"model bytes"),
            length: 11,
        };
        let keys = NodeKeys::single(node);
        assert_eq!(
            decrypted(&file, &encryption, &keys).expect("decrypts"),
            b"model bytes"
        );
        encryption.sha256 = sha(b"other bytes");
        let why = decrypted(&file, &encryption, &keys)
            .expect_err("another hash")
            .unwrap_or_default();
        assert!(why.contains("not the 11 bytes"), "{why}");
        let stranger = NodeKeys::single(crate::age::Identity::generate().expect("identity"));
        let why = decrypted(&file, &encryption, &stranger)
            .expect_err("another key")
            .unwrap_or_default();
        assert!(
            why.starts_with("could not decrypt: not encrypted to age1"),
            "{why}"
        );
    }

    #[test]
    fn repository_urls_name_the_two_directories() {
        let (metadata, targets) = repository_urls("https://hub:7800/tuf").unwrap();
        assert_eq!(metadata.as_str(), "https://hub:7800/tuf/metadata/");
        assert_eq!(targets.as_str(), "https://hub:7800/tuf/targets/");
        let (metadata, _) = repository_urls("file:///media/usb/releases/").unwrap();
        assert_eq!(metadata.as_str(), "file:///media/usb/releases/metadata/");
        assert!(repository_urls("ftp://hub/tuf").is_err());
        assert!(repository_urls("not a url").is_err());
    }
}
