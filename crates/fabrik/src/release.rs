//! Fleet releases as a TUF repository (decision 0031), the publishing side: makes the
//! repository and its four role keys, adds models as targets with Fabrik's metadata, re-signs
//! what expires, and reads a repository back for `fabrik release list`.
//!
//! The repository is plain files (`metadata/`, `targets/`) that any static server can serve;
//! a hub serves it under `/tuf` with `[releases] repo`. Edge nodes read it with the `updates`
//! module. The root key is needed only by `init`: it can stay offline afterwards.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use tough::editor::RepositoryEditor;
use tough::editor::signed::{PathExists, SignedRole};
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::{ExpirationEnforcement, FilesystemTransport, Repository, RepositoryLoader, TargetName};

/// The key of Fabrik's part of a target's `custom` metadata.
pub(crate) const CUSTOM_KEY: &str = "fabrik";
/// The TUF specification version the metadata declares.
const SPEC_VERSION: &str = "1.0.0";

/// The four top-level roles, each with its own key file `<role>.key` in the keys directory.
const ROLES: [(RoleType, &str); 4] = [
    (RoleType::Root, "root"),
    (RoleType::Targets, "targets"),
    (RoleType::Snapshot, "snapshot"),
    (RoleType::Timestamp, "timestamp"),
];

/// How long each role's metadata stays valid after it is signed. The timestamp is short
/// because it bounds how long an attacker can keep a node on stale metadata (a freeze);
/// `fabrik release refresh` (or a timer) re-signs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lifetimes {
    pub(crate) root: Duration,
    pub(crate) targets: Duration,
    pub(crate) snapshot: Duration,
    pub(crate) timestamp: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(7 * DAY),
            timestamp: Duration::from_secs(DAY),
        }
    }
}

/// What a target is to Fabrik: `custom.fabrik` in the targets metadata, signed with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseTarget {
    /// What the file is: `model` (an ONNX model for pipelines' `model_name`).
    pub(crate) kind: String,
    /// The name nodes store it under.
    pub(crate) name: String,
    /// The model's detached signature (`fabrik model sign`), checked against `[models]
    /// trusted_keys` like an uploaded model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) signature: Option<String>,
    /// Node names (or patterns with `*`) it is for; empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) nodes: Vec<String>,
}

/// The only kind of target so far.
pub(crate) const KIND_MODEL: &str = "model";

impl ReleaseTarget {
    /// Fabrik's metadata of a target; `None` for a target without it (another tool's file).
    pub(crate) fn of(target: &Target) -> Option<Result<Self, String>> {
        let value = target.custom.get(CUSTOM_KEY)?;
        Some(serde_json::from_value(value.clone()).map_err(|e| format!("custom.{CUSTOM_KEY}: {e}")))
    }

    /// Whether `node` is one of the nodes this target is for.
    pub(crate) fn is_for(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|pattern| glob_match(pattern, node))
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn metadata_dir(repo: &Path) -> PathBuf {
    repo.join("metadata")
}

fn targets_dir(repo: &Path) -> PathBuf {
    repo.join("targets")
}

fn key_path(keys: &Path, role: &str) -> PathBuf {
    keys.join(format!("{role}.key"))
}

/// The key sources of the roles named, each of whose key files must exist.
fn key_sources(keys: &Path, roles: &[&str]) -> anyhow::Result<Vec<Box<dyn KeySource>>> {
    roles
        .iter()
        .map(|role| {
            let path = key_path(keys, role);
            if !path.is_file() {
                bail!(
                    "{}: no {role} key here (made by `fabrik release init`)",
                    path.display()
                );
            }
            Ok(Box::new(LocalKeySource { path }) as Box<dyn KeySource>)
        })
        .collect()
}

fn expires_in(lifetime: Duration) -> anyhow::Result<jiff::Timestamp> {
    let span = jiff::SignedDuration::try_from(lifetime).context("lifetime too long")?;
    jiff::Timestamp::now()
        .checked_add(span)
        .context("lifetime too long")
}

fn one() -> NonZeroU64 {
    NonZeroU64::MIN
}

fn next(version: NonZeroU64) -> anyhow::Result<NonZeroU64> {
    version.checked_add(1).context("metadata version overflow")
}

/// A `file://` URL of a directory, with the trailing `/` tough joins file names onto.
pub(crate) fn directory_url(path: &Path) -> anyhow::Result<url::Url> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("{}: no absolute path", path.display()))?;
    url::Url::from_directory_path(&absolute)
        .map_err(|()| anyhow!("{}: not a directory path", absolute.display()))
}

/// The newest root metadata in `metadata/` (`N.root.json` with the largest N).
fn latest_root(metadata: &Path) -> anyhow::Result<(u64, PathBuf)> {
    let entries = std::fs::read_dir(metadata)
        .with_context(|| format!("{}: not a release repository", metadata.display()))?;
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name.to_str()?.strip_suffix(".root.json")?.parse().ok()?;
            Some((version, entry.path()))
        })
        .max_by_key(|(version, _)| *version)
        .with_context(|| {
            format!(
                "{}: no N.root.json (made by `fabrik release init`)",
                metadata.display()
            )
        })
}

/// Makes a repository in `repo` (which must be empty or absent) and its keys in `keys` (which
/// must not hold keys yet): root metadata signed by a new root key, and empty targets,
/// snapshot and timestamp metadata. Returns the root metadata's path, the file nodes trust.
pub(crate) async fn init(
    repo: &Path,
    keys: &Path,
    lifetimes: Lifetimes,
) -> anyhow::Result<PathBuf> {
    if repo
        .read_dir()
        .is_ok_and(|mut entries| entries.next().is_some())
    {
        bail!(
            "{}: not empty; a repository is made only once",
            repo.display()
        );
    }
    if resolved(keys).starts_with(resolved(repo)) {
        bail!("the keys must not live inside the repository, which is served");
    }
    create_private_dir(keys)?;
    let mut root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: one(),
        expires: expires_in(lifetimes.root)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for (role, name) in ROLES {
        let path = key_path(keys, name);
        let (pkcs8, _) = crate::model_signature::generate().map_err(anyhow::Error::msg)?;
        crate::run::write_private(&path, &pkcs8)
            .with_context(|| format!("creating {} (keys are never overwritten)", path.display()))?;
        let key = LocalKeySource { path }
            .as_sign()
            .await
            .map_err(|e| anyhow!("{name} key: {e}"))?
            .tuf_key();
        let id = key.key_id().context("key id")?;
        root.keys.insert(id.clone(), key);
        root.roles.insert(
            role,
            RoleKeys {
                keyids: vec![id],
                threshold: one(),
                _extra: HashMap::new(),
            },
        );
    }
    let root_keys = key_sources(keys, &["root"])?;
    let signed_root = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root),
        &root_keys,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .await
    .context("signing the root metadata")?;
    let metadata = metadata_dir(repo);
    std::fs::create_dir_all(&metadata)
        .with_context(|| format!("creating {}", metadata.display()))?;
    std::fs::create_dir_all(targets_dir(repo))
        .with_context(|| format!("creating {}", targets_dir(repo).display()))?;
    let root_path = metadata.join("1.root.json");
    std::fs::write(&root_path, signed_root.buffer())
        .with_context(|| format!("writing {}", root_path.display()))?;
    let mut editor = RepositoryEditor::new(&root_path)
        .await
        .context("reading the new root metadata")?;
    editor
        .targets_version(one())?
        .targets_expires(expires_in(lifetimes.targets)?)?
        .snapshot_version(one())
        .snapshot_expires(expires_in(lifetimes.snapshot)?)
        .timestamp_version(one())
        .timestamp_expires(expires_in(lifetimes.timestamp)?);
    let signed = editor
        .sign(&key_sources(keys, &["targets", "snapshot", "timestamp"])?)
        .await
        .context("signing the first targets, snapshot and timestamp")?;
    publish(&signed, repo).await?;
    Ok(root_path)
}

/// `path` made absolute with `.` and `..` resolved by their names (the paths may not exist
/// yet), so `repo/x/../keys` is seen to lie in `repo`.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(unix)]
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

#[cfg(not(unix))]
fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

/// Reads a repository from its files as its publisher: expired metadata is accepted (it is
/// about to be re-signed), everything else is verified as a node would.
pub(crate) async fn load_local(repo: &Path) -> anyhow::Result<Repository> {
    let metadata = metadata_dir(repo);
    let root = std::fs::read(metadata.join("1.root.json")).with_context(|| {
        format!(
            "{}: no 1.root.json (made by `fabrik release init`)",
            metadata.display()
        )
    })?;
    RepositoryLoader::new(
        &root,
        directory_url(&metadata)?,
        directory_url(&targets_dir(repo))?,
    )
    .transport(FilesystemTransport)
    .expiration_enforcement(ExpirationEnforcement::Unsafe)
    .load()
    .await
    .with_context(|| format!("{}: the repository does not verify", repo.display()))
}

/// An editor on the repository's current metadata, every version bumped and every expiry
/// renewed (targets, snapshot, timestamp): what every change signs anew.
async fn edit(repo: &Path, lifetimes: Lifetimes) -> anyhow::Result<RepositoryEditor> {
    let loaded = load_local(repo).await?;
    let targets_version = next(loaded.targets().signed.version)?;
    let snapshot_version = next(loaded.snapshot().signed.version)?;
    let timestamp_version = next(loaded.timestamp().signed.version)?;
    let (_, root_path) = latest_root(&metadata_dir(repo))?;
    let mut editor = RepositoryEditor::from_repo(&root_path, loaded)
        .await
        .context("opening the repository for editing")?;
    editor
        .targets_version(targets_version)?
        .targets_expires(expires_in(lifetimes.targets)?)?
        .snapshot_version(snapshot_version)
        .snapshot_expires(expires_in(lifetimes.snapshot)?)
        .timestamp_version(timestamp_version)
        .timestamp_expires(expires_in(lifetimes.timestamp)?);
    Ok(editor)
}

/// Writes signed metadata into `metadata/` so that a node reading meanwhile never sees a
/// half-written file: everything is written beside it first, then renamed in, the timestamp
/// (which points at the rest) last.
async fn publish(
    signed: &tough::editor::signed::SignedRepository,
    repo: &Path,
) -> anyhow::Result<()> {
    let metadata = metadata_dir(repo);
    let staging = repo.join(".staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    signed
        .write(&staging)
        .await
        .context("writing the signed metadata")?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&staging)
        .with_context(|| format!("reading {}", staging.display()))?
        .flatten()
        .map(|entry| entry.path())
        .collect();
    // Versioned files first, `timestamp.json` last.
    files.sort_by_key(|path| {
        path.file_name()
            .is_some_and(|name| name == "timestamp.json")
    });
    for file in files {
        let Some(name) = file.file_name() else {
            continue;
        };
        let to = metadata.join(name);
        std::fs::rename(&file, &to)
            .with_context(|| format!("moving {} to {}", file.display(), to.display()))?;
    }
    std::fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))?;
    Ok(())
}

/// Adds (or replaces) a model as the target `<name>.onnx`, for `nodes` (empty: every node),
/// carrying the signature file beside it (`FILE.sig`) when there is one. Returns the target's
/// SHA-256 and the new targets version.
pub(crate) async fn add_model(
    repo: &Path,
    keys: &Path,
    file: &Path,
    name: &str,
    nodes: Vec<String>,
    lifetimes: Lifetimes,
) -> anyhow::Result<(String, u64)> {
    if !crate::pipelines::model_name_ok(name) {
        bail!("`{name}`: {}", crate::pipelines::MODEL_NAME_RULE);
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // Refused here rather than by every node: a file that is no ONNX model a node can run.
    fabrik_onnx::Model::from_bytes(&bytes)
        .map_err(|e| anyhow!("{}: not a model Fabrik can run: {e}", file.display()))?;
    let signature_path = crate::model_signature::signature_path(file);
    let signature = match std::fs::read_to_string(&signature_path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => bail!("reading {}: {e}", signature_path.display()),
    };
    let release = ReleaseTarget {
        kind: KIND_MODEL.into(),
        name: name.into(),
        signature,
        nodes,
    };
    let mut target = Target::from_path(file)
        .await
        .with_context(|| format!("hashing {}", file.display()))?;
    target
        .custom
        .insert(CUSTOM_KEY.into(), serde_json::to_value(&release)?);
    let sha256 = hex(&target.hashes.sha256);
    let target_name = TargetName::new(format!("{name}.onnx"))
        .map_err(|e| anyhow!("target name `{name}.onnx`: {e}"))?;
    let mut editor = edit(repo, lifetimes).await?;
    editor
        .add_target(target_name.clone(), target)
        .context("adding the target")?;
    let signed = editor
        .sign(&key_sources(keys, &["targets", "snapshot", "timestamp"])?)
        .await
        .context("signing")?;
    // The file before the metadata that names it: a node never finds a target missing.
    signed
        .copy_target(
            file,
            &targets_dir(repo),
            PathExists::Skip,
            Some(&target_name),
        )
        .await
        .context("copying the model into targets/")?;
    publish(&signed, repo).await?;
    let version = load_local(repo).await?.targets().signed.version.get();
    Ok((sha256, version))
}

/// Removes the target `<name>.onnx` from the metadata (its file stays in `targets/`, where
/// nodes that already fetched it no longer look). Nodes keep a model they installed.
pub(crate) async fn remove_model(
    repo: &Path,
    keys: &Path,
    name: &str,
    lifetimes: Lifetimes,
) -> anyhow::Result<u64> {
    let target_name = TargetName::new(format!("{name}.onnx"))
        .map_err(|e| anyhow!("target name `{name}.onnx`: {e}"))?;
    let mut editor = edit(repo, lifetimes).await?;
    let known = load_local(repo)
        .await?
        .all_targets()
        .any(|(existing, _)| *existing == target_name);
    if !known {
        bail!("no target `{name}.onnx` in {}", repo.display());
    }
    editor
        .remove_target(&target_name)
        .context("removing the target")?;
    let signed = editor
        .sign(&key_sources(keys, &["targets", "snapshot", "timestamp"])?)
        .await
        .context("signing")?;
    publish(&signed, repo).await?;
    Ok(load_local(repo).await?.targets().signed.version.get())
}

/// Re-signs targets, snapshot and timestamp with fresh expiries and new versions, changing no
/// target: what a timer runs before the timestamp expires.
pub(crate) async fn refresh(repo: &Path, keys: &Path, lifetimes: Lifetimes) -> anyhow::Result<()> {
    let editor = edit(repo, lifetimes).await?;
    let signed = editor
        .sign(&key_sources(keys, &["targets", "snapshot", "timestamp"])?)
        .await
        .context("signing")?;
    publish(&signed, repo).await
}

/// Re-signs only the timestamp (a new version, valid for `lifetime`), with the timestamp key
/// alone: the online key a hub can hold (`[releases] timestamp_key`) while the targets and
/// snapshot keys stay with the publisher. Returns the new expiry.
pub(crate) async fn refresh_timestamp(
    repo: &Path,
    timestamp_key: &Path,
    lifetime: Duration,
) -> anyhow::Result<jiff::Timestamp> {
    let loaded = load_local(repo).await?;
    let mut timestamp = loaded.timestamp().signed.clone();
    timestamp.version = next(timestamp.version)?;
    timestamp.expires = expires_in(lifetime)?;
    let expires = timestamp.expires;
    let keys: Vec<Box<dyn KeySource>> = vec![Box::new(LocalKeySource {
        path: timestamp_key.to_owned(),
    })];
    let signed = SignedRole::new(
        timestamp,
        &KeyHolder::Root(loaded.root().signed.clone()),
        &keys,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .await
    .with_context(|| {
        format!(
            "signing the timestamp with {} (is it the repository's timestamp key?)",
            timestamp_key.display()
        )
    })?;
    let metadata = metadata_dir(repo);
    let staging = metadata.join(".timestamp.json.new");
    std::fs::write(&staging, signed.buffer())
        .with_context(|| format!("writing {}", staging.display()))?;
    let file = metadata.join("timestamp.json");
    std::fs::rename(&staging, &file).with_context(|| format!("replacing {}", file.display()))?;
    Ok(expires)
}

/// When the repository's timestamp expires.
pub(crate) async fn timestamp_expiry(repo: &Path) -> anyhow::Result<jiff::Timestamp> {
    Ok(load_local(repo).await?.timestamp().signed.expires)
}

/// The `releases` module: with `[releases] repo` and `timestamp_key`, re-signs the
/// repository's timestamp whenever less than half of `timestamp_lifetime` is left (checked
/// every quarter of it, at most every 10 minutes); idle otherwise. The expiry is exported as
/// `fabrik_releases_timestamp_expiry_seconds` (Unix time) for an alert rule.
pub(crate) async fn start_refresher(
    config: &fabrik_runtime::Config,
) -> Result<fabrik_runtime::ServiceHandle, String> {
    let releases = &config.releases;
    let (repo, key) = (releases.repo.trim(), releases.timestamp_key.trim());
    if repo.is_empty() || key.is_empty() {
        return Ok(crate::nats_link::idle_module());
    }
    let lifetime = fabrik_runtime::units::parse_duration(&releases.timestamp_lifetime)
        .map_err(|e| format!("releases.timestamp_lifetime: {e}"))?;
    if lifetime < Duration::from_secs(2) {
        return Err("releases.timestamp_lifetime: at least 2s".into());
    }
    if !Path::new(key).is_file() {
        return Err(format!("releases.timestamp_key: {key}: no such file"));
    }
    let (repo, key) = (PathBuf::from(repo), PathBuf::from(key));
    // A key that cannot sign fails the start, not the first refresh a day later.
    let expires = refresh_timestamp(&repo, &key, lifetime)
        .await
        .map_err(|e| {
            format!(
                "releases.timestamp_key: {}",
                crate::error_text::describe(&e)
            )
        })?;
    metrics::gauge!("fabrik_releases_timestamp_expiry_seconds").set(expires.as_second() as f64);
    tracing::info!(repo = %repo.display(), %expires, "Re-signing the release repository's timestamp before it expires.");
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    let every = (lifetime / 4).min(Duration::from_secs(600));
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(every) => {}
            }
            let due = match timestamp_expiry(&repo).await {
                Ok(expires) => {
                    let left = expires.duration_since(jiff::Timestamp::now());
                    left < jiff::SignedDuration::try_from(lifetime / 2).unwrap_or_default()
                }
                // Unreadable or not verifying: re-signing is the way back.
                Err(_) => true,
            };
            if !due {
                continue;
            }
            match refresh_timestamp(&repo, &key, lifetime).await {
                Ok(expires) => {
                    metrics::gauge!("fabrik_releases_timestamp_expiry_seconds")
                        .set(expires.as_second() as f64);
                    tracing::info!(%expires, "Release timestamp re-signed.");
                }
                Err(e) => {
                    tracing::error!(error = %crate::error_text::describe(&e), "The release timestamp could not be re-signed; nodes stop installing once it expires.");
                }
            }
        }
    });
    Ok(fabrik_runtime::ServiceHandle { stop, task })
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tough::IntoVec;

    fn forest() -> Vec<u8> {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fabrik-onnx/tests/fixtures");
        std::fs::read(format!("{fixtures}/iforest_100.onnx")).expect("fixture")
    }

    #[tokio::test]
    async fn a_model_is_published_read_back_verified_and_removed_without_the_root_key() {
        let dir = tempfile::tempdir().expect("dir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        let inside = init(&repo.join("x"), &repo.join("x/keys"), Lifetimes::default()).await;
        assert!(
            inside.is_err_and(|e| e.to_string().contains("inside the repository")),
            "keys inside the served directory are refused"
        );
        let root = init(&repo, &keys, Lifetimes::default())
            .await
            .expect("init");
        assert_eq!(root, repo.join("metadata/1.root.json"));
        let model = dir.path().join("forest.onnx");
        std::fs::write(&model, forest()).expect("model");
        // The root key is needed only to make the repository.
        std::fs::rename(keys.join("root.key"), dir.path().join("offline-root.key"))
            .expect("move the root key away");
        let (sha256, version) = add_model(
            &repo,
            &keys,
            &model,
            "pump",
            vec!["line-*".into()],
            Lifetimes::default(),
        )
        .await
        .expect("add");
        assert_eq!(version, 2);
        assert!(
            repo.join("targets")
                .join(format!("{sha256}.pump.onnx"))
                .is_file(),
            "the file is stored under its hash"
        );
        let loaded = load_local(&repo).await.expect("load");
        let (name, target) = loaded.all_targets().next().expect("a target");
        assert_eq!(name.raw(), "pump.onnx");
        let release = ReleaseTarget::of(target)
            .expect("Fabrik's")
            .expect("parses");
        assert_eq!(release.kind, KIND_MODEL);
        assert_eq!(release.name, "pump");
        assert_eq!(release.signature, None);
        assert!(release.is_for("line-3") && !release.is_for("hub"));
        let name = name.clone();
        let bytes = loaded
            .read_target(&name)
            .await
            .expect("read")
            .expect("listed")
            .into_vec()
            .await
            .expect("verified");
        assert_eq!(bytes, forest());

        let version = remove_model(&repo, &keys, "pump", Lifetimes::default())
            .await
            .expect("remove");
        assert_eq!(version, 3);
        assert_eq!(
            load_local(&repo).await.expect("load").all_targets().count(),
            0
        );
        assert!(
            remove_model(&repo, &keys, "pump", Lifetimes::default())
                .await
                .is_err_and(|e| e.to_string().contains("no target")),
        );
    }

    #[tokio::test]
    async fn the_timestamp_alone_is_re_signed_with_the_timestamp_key_only() {
        let dir = tempfile::tempdir().expect("dir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        init(&repo, &keys, Lifetimes::default())
            .await
            .expect("init");
        let before = load_local(&repo).await.expect("load");
        let expires = refresh_timestamp(
            &repo,
            &keys.join("timestamp.key"),
            Duration::from_secs(7200),
        )
        .await
        .expect("refresh");
        let after = load_local(&repo).await.expect("load");
        assert_eq!(
            after.timestamp().signed.version.get(),
            before.timestamp().signed.version.get() + 1
        );
        assert_eq!(after.timestamp().signed.expires, expires);
        assert_eq!(
            after.targets().signed.version,
            before.targets().signed.version,
            "nothing else changes"
        );
        let wrong =
            refresh_timestamp(&repo, &keys.join("targets.key"), Duration::from_secs(60)).await;
        assert!(
            wrong.is_err(),
            "another role's key does not sign the timestamp"
        );
    }

    #[tokio::test]
    async fn metadata_changed_after_signing_does_not_verify() {
        let dir = tempfile::tempdir().expect("dir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        init(&repo, &keys, Lifetimes::default())
            .await
            .expect("init");
        let model = dir.path().join("forest.onnx");
        std::fs::write(&model, forest()).expect("model");
        add_model(&repo, &keys, &model, "pump", vec![], Lifetimes::default())
            .await
            .expect("add");
        // Widen the release to another node set behind the publisher's back.
        let targets = repo.join("metadata/2.targets.json");
        let text = std::fs::read_to_string(&targets).expect("targets");
        assert!(text.contains("\"kind\": \"model\""), "{text}");
        std::fs::write(
            &targets,
            text.replace("\"kind\": \"model\"", "\"kind\": \"modem\""),
        )
        .expect("tamper");
        let refused = load_local(&repo).await;
        assert!(refused.is_err(), "tampered targets metadata verified");
    }

    #[test]
    fn node_patterns_match_whole_names() {
        assert!(glob_match("line-1", "line-1"));
        assert!(!glob_match("line-1", "line-10"));
        assert!(glob_match("line-*", "line-10"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*-b", "site-a-b"));
        assert!(!glob_match("*-b", "site-a-c"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c*e", "abde"));
        assert!(!glob_match("ab*ba", "aba"), "parts may not overlap");
        let release = ReleaseTarget {
            kind: KIND_MODEL.into(),
            name: "m".into(),
            signature: None,
            nodes: vec![],
        };
        assert!(release.is_for("whatever"), "no nodes: every node");
    }
}
