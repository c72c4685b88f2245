//! `/api/v1/updates`: what this node's `updates` module last found in its release repository
//! (TUF), and `/tuf/...`: the release repository a hub serves to its nodes (`[releases]`).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use serde::Serialize;
use utoipa::ToSchema;

use crate::ApiState;
use crate::error::ApiError;

/// Written by the updates module, read by the handler; `None` when the module does not run.
pub type UpdateBoard = Arc<RwLock<Option<UpdateStatus>>>;

/// This node's release repository as last checked.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct UpdateStatus {
    /// Where the repository is read from (`[updates] url`).
    pub repository: String,
    /// This node's name, matched against each target's `nodes`.
    pub node: String,
    /// This node's public key (`age1…`): publishers encrypt targets to it (`fabrik release
    /// add --recipient`). Empty while its keys cannot be opened (`key_error`).
    pub recipient: String,
    /// Its previous keys' recipients, newest first (`fabrik updates rotate-key`): targets
    /// published to them still decrypt here until `fabrik updates retire-keys`.
    pub previous_recipients: Vec<String>,
    /// Whether its keys are sealed to its TPM (`fabrik updates seal-key`).
    #[serde(default)]
    pub key_sealed: bool,
    /// The PCRs its sealed key is bound to (`sha256:7`; `fabrik updates seal-key --pcrs`):
    /// it opens only while they hold the values they held when it was sealed.
    #[serde(default)]
    pub key_sealed_pcrs: Option<String>,
    /// Why this node's keys cannot be opened, while they cannot (a sealed file on a boot
    /// other than the one its PCRs were sealed to, a TPM not answering): encrypted targets
    /// wait, the others install; tried again at each check.
    #[serde(default)]
    pub key_error: Option<String>,
    /// Seconds between checks.
    pub interval_seconds: f64,
    /// The platform this node runs on (`linux-x86_64`): a `binary` target must name it.
    pub platform: String,
    /// Whether this node installs the Fabrik binary published for it (`[updates] binary`).
    pub binary_updates: bool,
    /// SHA-256 of the running binary, once a `binary` target was compared with it.
    pub binary_sha256: Option<String>,
    /// While the binary installed from the repository has not confirmed itself (decision
    /// 0066): its runs so far, and when the node goes back to the previous one.
    pub binary_unconfirmed: Option<UnconfirmedBinary>,
    /// Checks since start.
    pub checks: u64,
    /// When the repository was last checked (RFC 3339).
    pub last_check_at: Option<String>,
    /// When its metadata last verified (RFC 3339).
    pub last_verified_at: Option<String>,
    /// Versions of the metadata trusted now (0 until a check verified).
    pub root_version: u64,
    /// The targets metadata's version.
    pub targets_version: u64,
    /// How many of the root's targets keys must sign each release (0 until a check
    /// verified): 2 or more when no one publisher can release alone (decision 0075).
    pub targets_threshold: u64,
    /// How many targets keys the root lists.
    pub targets_keys: u64,
    /// How many of the root's own keys must sign the next root (0 until a check verified):
    /// with 2 or more, no one stolen root key changes whom nodes trust; with more root keys
    /// than this, a lost one can be replaced by the others (decision 0088).
    pub root_threshold: u64,
    /// How many root keys the root lists.
    pub root_keys: u64,
    /// The snapshot metadata's version.
    pub snapshot_version: u64,
    /// The timestamp metadata's version.
    pub timestamp_version: u64,
    /// When the earliest of them expires (RFC 3339): past it, nothing is installed until the
    /// publisher re-signs.
    pub expires_at: Option<String>,
    /// The repository's targets, as this node sees them.
    pub targets: Vec<TargetStatus>,
    /// Models installed from the repository since start.
    pub installed: u64,
    /// Why the last check failed, when it did (the metadata did not verify, or the repository
    /// could not be reached); cleared by a check that verifies.
    pub last_error: Option<String>,
}

/// The runs of a new binary that has not confirmed itself yet.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UnconfirmedBinary {
    /// Runs of it started on this node, this one included.
    pub runs: u32,
    /// Earlier runs that ended in a crash, a kill or an error rather than a clean stop.
    pub failed_runs: u32,
    /// At this many failed runs the node puts the previous binary back and restarts into it
    /// (`[updates] rollback_after_failed_runs`; 0: never).
    pub rollback_after_failed_runs: u32,
    /// How long a run must last with every module up for the binary to confirm itself
    /// (`[updates] confirm_after`).
    pub confirm_after_seconds: f64,
}

/// One target of the repository on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TargetStatus {
    /// The target's name in the repository (`<name>.onnx`).
    pub target: String,
    /// What it is (`model`, `pipeline`, `alert-rule`), from its Fabrik metadata.
    pub kind: String,
    /// The name it is stored under on the node.
    pub name: String,
    /// SHA-256 of the file, as the signed metadata gives it.
    pub sha256: String,
    /// Its size in bytes.
    pub length: u64,
    /// Whether the file is encrypted to its nodes' keys (then `sha256` and `length` are the
    /// encrypted file's).
    pub encrypted: bool,
    /// `installed` (this node holds exactly this file), `not_for_this_node`, `refused`,
    /// `available` (a binary for this node that `[updates] binary` leaves to the operator), or
    /// `waiting_for_keys` (encrypted for every node, while this node's keys cannot be opened:
    /// whether it is for this node is known once they open).
    pub state: String,
    /// Why it was refused (a download that does not match the signed hash, a model signature
    /// that does not verify, a model that does not fit a pipeline using it, a definition the
    /// node refuses).
    pub reason: Option<String>,
    /// When this node installed it (RFC 3339), if it did since start.
    pub installed_at: Option<String>,
}

/// `GET /api/v1/updates`: whether this process follows a release repository, and how.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UpdatesAnswer {
    /// Whether the updates module runs here with `[updates] url` set.
    pub configured: bool,
    /// Its last check; absent when not configured.
    pub status: Option<UpdateStatus>,
}

/// This node's release repository, as the updates module last checked it.
#[utoipa::path(get, path = "/api/v1/updates", tag = "updates",
    responses(
        (status = 200, description = "whether a release repository is followed here, and its last check", body = UpdatesAnswer),
    ))]
pub async fn status(State(state): State<ApiState>) -> Json<UpdatesAnswer> {
    let status = state.updates.read().clone();
    Json(UpdatesAnswer {
        configured: status.is_some(),
        status,
    })
}

/// The table every node's updates module records its installs and refusals in; an uplink
/// forwards it, so a hub holds every node's.
pub const RELEASES_TABLE: &str = "_releases";

/// One node's latest word on one release target.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetRelease {
    /// The node, as its updates module names itself (`[updates] node`, by default its
    /// `[uplink] node`).
    pub node: String,
    /// The target's name in the repository.
    pub target: String,
    /// `model`, `use-case`, `pipeline` or `alert-rule`.
    pub kind: String,
    /// The name it is installed under.
    pub name: String,
    /// The latest record: `installed` or `refused`.
    pub state: String,
    /// Why the latest record is a refusal.
    pub reason: Option<String>,
    /// When the node recorded it (RFC 3339).
    pub last_seen: String,
    /// SHA-256 of the content the node last installed (a model's `model_version`), if any:
    /// after a refusal, what it still runs.
    pub installed_sha256: Option<String>,
    /// Since when it runs that (RFC 3339).
    pub installed_at: Option<String>,
}

/// `GET /api/v1/fleet/releases`: which node runs which release, since when, and what it
/// refused.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FleetAnswer {
    /// How many nodes have recorded anything.
    pub nodes: usize,
    /// Per node and target, by node then target.
    pub releases: Vec<FleetRelease>,
}

/// Which node runs which release: the latest `_releases` record of each node and target this
/// process holds (a hub, with its nodes' uplinks, holds every node's).
#[utoipa::path(get, path = "/api/v1/fleet/releases", tag = "updates", security(("token" = [])),
    responses(
        (status = 200, description = "per node and release target: the latest install or refusal, and what the node runs since when", body = FleetAnswer),
    ))]
pub async fn fleet(State(state): State<ApiState>) -> Result<Json<FleetAnswer>, ApiError> {
    if !state.store.has_table(RELEASES_TABLE) {
        return Ok(Json(FleetAnswer {
            nodes: 0,
            releases: Vec::new(),
        }));
    }
    let latest = query_rows(
        &state,
        &format!(
            "SELECT node, target, last_value(kind ORDER BY time) AS kind, \
             last_value(name ORDER BY time) AS name, last_value(state ORDER BY time) AS state, \
             last_value(reason ORDER BY time) AS reason, max(time) AS last_seen \
             FROM {RELEASES_TABLE} GROUP BY node, target ORDER BY node, target"
        ),
    )
    .await?;
    let installed = query_rows(
        &state,
        &format!(
            "SELECT node, target, last_value(sha256 ORDER BY time) AS sha256, \
             max(time) AS installed_at FROM {RELEASES_TABLE} WHERE state = 'installed' \
             GROUP BY node, target"
        ),
    )
    .await?;
    let text = |row: &serde_json::Value, key: &str| -> String {
        match &row[key] {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }
    };
    // The store's times are UTC without a zone: said, as in the rest of the API.
    let utc = |row: &serde_json::Value, key: &str| -> String {
        let mut time = text(row, key);
        if !time.is_empty() && !time.ends_with('Z') && !time.contains('+') {
            time.push('Z');
        }
        time
    };
    let running: std::collections::HashMap<(String, String), (String, String)> = installed
        .iter()
        .map(|row| {
            (
                (text(row, "node"), text(row, "target")),
                (text(row, "sha256"), utc(row, "installed_at")),
            )
        })
        .collect();
    let releases: Vec<FleetRelease> = latest
        .iter()
        .map(|row| {
            let (node, target) = (text(row, "node"), text(row, "target"));
            let running = running.get(&(node.clone(), target.clone())).cloned();
            FleetRelease {
                kind: text(row, "kind"),
                name: text(row, "name"),
                state: text(row, "state"),
                reason: Some(text(row, "reason")).filter(|reason| !reason.is_empty()),
                last_seen: utc(row, "last_seen"),
                installed_sha256: running.as_ref().map(|(sha, _)| sha.clone()),
                installed_at: running.map(|(_, at)| at),
                node,
                target,
            }
        })
        .collect();
    let nodes = releases
        .iter()
        .map(|release| release.node.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    Ok(Json(FleetAnswer { nodes, releases }))
}

async fn query_rows(state: &ApiState, sql: &str) -> Result<Vec<serde_json::Value>, ApiError> {
    let output = state.store.query(sql).await?;
    crate::routes::batches_to_json(&output.batches)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))
}

/// The release repository this process serves (`[releases]`).
#[derive(Debug, Clone)]
pub struct ReleaseRepo {
    /// The repository's directory (`metadata/`, `targets/`).
    pub dir: PathBuf,
    /// The bearer token nodes present; `None`: served to anyone who can connect.
    pub token: Option<String>,
}

/// The prefix the release repository is served under.
pub const TUF_PREFIX: &str = "/tuf";

/// A file of the release repository `[releases] repo`: `/tuf/metadata/<file>` or
/// `/tuf/targets/<file>`. Anything else, and any path that would leave those two directories,
/// is 404. The files are signed metadata and the targets it hashes, so a node verifies
/// whatever it gets; the token (`[releases] token`, the API's admin token never being needed)
/// keeps the models from whoever can merely connect.
pub async fn file(State(state): State<ApiState>, uri: Uri, headers: HeaderMap) -> Response {
    let Some(release) = state.release_repo.as_deref() else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no release repository is served here: set [releases] repo",
        )
        .into_response();
    };
    if let Some(token) = &release.token {
        let given = crate::auth::Auth::token_of(&headers, None).unwrap_or_default();
        if !crate::auth::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            metrics::counter!("fabrik_http_unauthorized_total").increment(1);
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the release repository needs its token ([releases] token) as a bearer token",
            )
            .into_response();
        }
    }
    let Some(path) = repository_path(&release.dir, uri.path()) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{}: not a file of the release repository", uri.path()),
        )
        .into_response();
    };
    // Streamed: a model of hundreds of megabytes is not held in memory per node fetching it.
    let opened = match tokio::fs::File::open(&path).await {
        Ok(file) => match file.metadata().await {
            Ok(meta) if meta.is_file() => Ok((file, meta.len())),
            Ok(_) => Err(std::io::ErrorKind::NotFound.into()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match opened {
        Ok((file, length)) => {
            let kind = if path.extension().is_some_and(|e| e == "json") {
                "application/json"
            } else {
                "application/octet-stream"
            };
            (
                [
                    (header::CONTENT_TYPE, kind.to_owned()),
                    (header::CONTENT_LENGTH, length.to_string()),
                ],
                crate::body::file_body(file),
            )
                .into_response()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{}: no such file in the release repository", uri.path()),
        )
        .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage",
            format!("{}: {e}", path.display()),
        )
        .into_response(),
    }
}

/// The file under `repo` that a request path names, if it is one of the repository's.
fn repository_path(repo: &Path, request: &str) -> Option<PathBuf> {
    let rest = request.strip_prefix(TUF_PREFIX)?.strip_prefix('/')?;
    let (directory, name) = rest.split_once('/')?;
    if !matches!(directory, "metadata" | "targets") {
        return None;
    }
    let name = Path::new(name);
    let plain = name
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    (plain && name.components().count() == 1).then(|| repo.join(directory).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_of_the_two_directories_are_served() {
        let repo = Path::new("/srv/repo");
        assert_eq!(
            repository_path(repo, "/tuf/metadata/timestamp.json"),
            Some(PathBuf::from("/srv/repo/metadata/timestamp.json"))
        );
        assert_eq!(
            repository_path(repo, "/tuf/targets/abc.pump.onnx"),
            Some(PathBuf::from("/srv/repo/targets/abc.pump.onnx"))
        );
        for refused in [
            "/tuf/metadata/../../etc/passwd",
            "/tuf/metadata/..",
            "/tuf/keys/root.key",
            "/tuf/.staging/x",
            "/tuf/targets/a/b",
            "/tuf/metadata/",
            "/tuf/metadata",
            "/tufx/metadata/timestamp.json",
        ] {
            assert_eq!(repository_path(repo, refused), None, "{refused}");
        }
    }
}
