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
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Target};
use tough::{ExpirationEnforcement, FilesystemTransport, Repository, RepositoryLoader, TargetName};

/// The key of Fabrik's part of a target's `custom` metadata.
pub(crate) const CUSTOM_KEY: &str = "fabrik";
/// The TUF specification version the metadata declares.
const SPEC_VERSION: &str = "1.0.0";

/// The four top-level roles, each with its own key file `<role>.key` in the keys directory.
pub(crate) const ROLES: [(RoleType, &str); 4] = [
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
    /// Set when the file is encrypted to its nodes' keys (decision 0032).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) encrypted: Option<Encryption>,
    /// For a Fabrik binary: the platform it runs on (`linux-x86_64`); nodes on another
    /// platform leave it alone (decision 0044).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) platform: Option<String>,
    /// A phased rollout (decision 0047): the share of the nodes it is for that install it,
    /// in hundredths of a percent (1 to 10,000: canonical JSON has no fractions), those
    /// whose [`rollout_bucket`] is below it. Widening it keeps every node that had it; a node
    /// of a Fabrik that does not know the field refuses the target rather than install what
    /// may not be meant for it.
    #[serde(default, rename = "share_bp", skip_serializing_if = "Option::is_none")]
    pub(crate) share: Option<u32>,
    /// The key a phased rollout places nodes by, instead of the target's name: artifacts
    /// published with one key (a pipeline and the model it needs) reach the same nodes at
    /// the same share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) phase: Option<String>,
}

/// Where `node` falls, for target `name`, in a phased rollout, in hundredths of a percent
/// (0 to 9,999): the first eight bytes of SHA-256 of `<name>`, a zero byte and `<node>`,
/// big-endian, modulo 10,000. Stable, so a widened share keeps its nodes; by name, so the
/// first nodes of one artifact's rollout are not always the first of every other's.
pub(crate) fn rollout_bucket(name: &str, node: &str) -> u32 {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0u8]);
    hasher.update(node.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u32::try_from(u64::from_be_bytes(first) % 10_000).unwrap_or(0)
}

/// A share in hundredths of a percent, as a percentage (`1250` → `12.5`).
pub(crate) fn percent(hundredths: u32) -> String {
    let text = format!("{}.{:02}", hundredths / 100, hundredths % 100);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A phased rollout's percentage (`--share 12.5`) in hundredths of a percent: above 0, at
/// most 100, in steps of 0.01.
pub(crate) fn check_share(share: f64) -> Result<u32, String> {
    let hundredths = (share * 100.0).round();
    if share.is_finite()
        && (1.0..=10_000.0).contains(&hundredths)
        && (share * 100.0 - hundredths).abs() < 1e-6
    {
        Ok(hundredths as u32)
    } else {
        Err(format!(
            "--share {share}: the percentage of the nodes, above 0 and at most 100, in steps \
             of 0.01"
        ))
    }
}

/// The format of an encrypted target's file.
pub(crate) const ENCRYPTION_FORMAT: &str = "age-encryption.org/v1";

/// How a target's file is encrypted, and what it decrypts to: signed with the rest of the
/// targets metadata, so a node knows whether it is meant to read the file and checks what
/// it decrypted against the publisher's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Encryption {
    /// `age-encryption.org/v1` (X25519 recipients).
    pub(crate) format: String,
    /// The recipients (`age1…`, each a node's key) who can decrypt it.
    pub(crate) recipients: Vec<String>,
    /// SHA-256 of the decrypted content.
    pub(crate) sha256: String,
    /// Length of the decrypted content in bytes.
    pub(crate) length: u64,
}

/// Who a published target is for: the nodes that install it and, when it is encrypted, the
/// keys that can read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Audience {
    /// Node names or patterns; empty: every node.
    pub(crate) nodes: Vec<String>,
    /// A phased rollout's share of those nodes, in hundredths of a percent.
    pub(crate) share: Option<u32>,
    /// The key nodes are placed by in that rollout (`None`: the target's name).
    pub(crate) phase: Option<String>,
    /// Recipients the file is encrypted to; empty: not encrypted.
    pub(crate) recipients: Vec<crate::age::Recipient>,
}

/// What a target is to Fabrik, and the target name each kind is published under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// An ONNX model, stored as pipelines' `model_name`: `<name>.onnx`.
    Model,
    /// A use case's definition and the stage it is at ([`ReleasedUseCase`]):
    /// `<name>.use-case.json`. Before pipelines, which name it.
    UseCase,
    /// A pipeline definition (the `[[pipelines]]` fields as JSON): `<name>.pipeline.json`.
    Pipeline,
    /// An alert rule definition (the `[[alerting.rules]]` fields as JSON):
    /// `<name>.alert-rule.json`.
    AlertRule,
    /// The Fabrik binary for one platform: `<name>.bin`. Last: a node installs the rest with
    /// the binary it runs, then restarts into the new one (decision 0044).
    Binary,
}

impl Kind {
    pub(crate) const ALL: [Kind; 5] = [
        Kind::Model,
        Kind::UseCase,
        Kind::Pipeline,
        Kind::AlertRule,
        Kind::Binary,
    ];

    /// The kinds, as `--kind` and error messages list them.
    pub(crate) const LISTED: &str = "model, use-case, pipeline, alert-rule or binary";

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::UseCase => "use-case",
            Kind::Pipeline => "pipeline",
            Kind::AlertRule => "alert-rule",
            Kind::Binary => "binary",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    pub(crate) fn target_name(self, name: &str) -> anyhow::Result<TargetName> {
        let file = match self {
            Kind::Model => format!("{name}.onnx"),
            Kind::UseCase => format!("{name}.use-case.json"),
            Kind::Pipeline => format!("{name}.pipeline.json"),
            Kind::AlertRule => format!("{name}.alert-rule.json"),
            Kind::Binary => format!("{name}.bin"),
        };
        TargetName::new(&file).map_err(|e| anyhow!("target name `{file}`: {e}"))
    }
}

impl ReleaseTarget {
    /// Fabrik's metadata of a target; `None` for a target without it (another tool's file).
    pub(crate) fn of(target: &Target) -> Option<Result<Self, String>> {
        let value = target.custom.get(CUSTOM_KEY)?;
        Some(serde_json::from_value(value.clone()).map_err(|e| format!("custom.{CUSTOM_KEY}: {e}")))
    }

    /// Whether `node` is one of the nodes this target is for (its phase aside: see
    /// [`ReleaseTarget::outside_phase`]).
    pub(crate) fn is_for(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|pattern| glob_match(pattern, node))
    }

    /// Why `node` does not install it yet in a phased rollout; `None` when it does.
    pub(crate) fn outside_phase(&self, node: &str) -> Option<String> {
        let share = self.share?;
        let bucket = rollout_bucket(self.phase.as_deref().unwrap_or(&self.name), node);
        (bucket >= share).then(|| {
            format!(
                "a phased rollout to {} % of its nodes; this node's place is {} %: it \
                 installs once the share is above that",
                percent(share),
                percent(bucket)
            )
        })
    }

    /// SHA-256 of what the node stores: the decrypted content's for an encrypted target, else
    /// the file's (`file_sha256`).
    pub(crate) fn content_sha256<'a>(&'a self, file_sha256: &'a str) -> &'a str {
        self.encrypted
            .as_ref()
            .map_or(file_sha256, |encryption| encryption.sha256.as_str())
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

pub(crate) fn metadata_dir(repo: &Path) -> PathBuf {
    repo.join("metadata")
}

fn targets_dir(repo: &Path) -> PathBuf {
    repo.join("targets")
}

pub(crate) fn key_path(keys: &Path, role: &str) -> PathBuf {
    keys.join(format!("{role}.key"))
}

/// The key sources of the roles named, each of whose key files must exist.
pub(crate) fn key_sources(keys: &Path, roles: &[&str]) -> anyhow::Result<Vec<Box<dyn KeySource>>> {
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

pub(crate) fn expires_in(lifetime: Duration) -> anyhow::Result<jiff::Timestamp> {
    let span = jiff::SignedDuration::try_from(lifetime).context("lifetime too long")?;
    jiff::Timestamp::now()
        .checked_add(span)
        .context("lifetime too long")
}

fn one() -> NonZeroU64 {
    NonZeroU64::MIN
}

pub(crate) fn next(version: NonZeroU64) -> anyhow::Result<NonZeroU64> {
    version.checked_add(1).context("metadata version overflow")
}

/// A `file://` URL of a directory, with the trailing `/` tough joins file names onto.
pub(crate) fn directory_url(path: &Path) -> anyhow::Result<url::Url> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("{}: no absolute path", path.display()))?;
    url::Url::from_directory_path(&absolute)
        .map_err(|()| anyhow!("{}: not a directory path", absolute.display()))
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
    remember(repo, &publisher_state(keys)).await?;
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

/// Reads a repository from its files, verified as a node would except for expiry (shown by
/// `list`, renewed by every signing). Nothing is remembered between calls: for reading only.
pub(crate) async fn load_local(repo: &Path) -> anyhow::Result<Repository> {
    load(repo, None).await
}

/// Where a publisher's signer state lives: beside its keys (`<keys>/state`).
pub(crate) fn publisher_state(keys: &Path) -> PathBuf {
    keys.join("state")
}

/// [`load_local`], remembering the newest metadata seen in `state` (the publisher's
/// `<keys>/state`, a hub's `<data_dir>/releases/state`): the signer then refuses to sign on
/// top of metadata older than it saw before, as a node would — an old `timestamp.json` put
/// back into the served directory is not re-signed into a fresh one.
pub(crate) async fn load_for_signing(repo: &Path, state: &Path) -> anyhow::Result<Repository> {
    create_private_dir(state)?;
    // tough also remembers the latest time it saw and refuses any load while the clock is
    // earlier; a signer checks no expiry, and must not stop signing because a clock was once
    // ahead and has been corrected.
    match std::fs::remove_file(state.join("latest_known_time.json")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("{}: {e}", state.join("latest_known_time.json").display()),
    }
    load(repo, Some(state)).await
}

async fn load(repo: &Path, state: Option<&Path>) -> anyhow::Result<Repository> {
    let metadata = metadata_dir(repo);
    let root = std::fs::read(metadata.join("1.root.json")).with_context(|| {
        format!(
            "{}: no 1.root.json (made by `fabrik release init`)",
            metadata.display()
        )
    })?;
    let mut loader = RepositoryLoader::new(
        &root,
        directory_url(&metadata)?,
        directory_url(&targets_dir(repo))?,
    )
    .transport(FilesystemTransport)
    .expiration_enforcement(ExpirationEnforcement::Unsafe);
    if let Some(state) = state {
        loader = loader.datastore(state);
    }
    loader
        .load()
        .await
        .with_context(|| format!("{}: the repository does not verify", repo.display()))
}

/// Reads back what was just written through the signer's state, so that state holds it: an
/// older file put back afterwards is then refused, not signed over. Also checks that what was
/// written verifies.
pub(crate) async fn remember(repo: &Path, state: &Path) -> anyhow::Result<()> {
    load_for_signing(repo, state)
        .await
        .map(drop)
        .context("reading back the metadata just written")
}

/// Held while metadata is signed and written: one signer at a time per repository (a
/// publisher and a hub re-signing the timestamp would otherwise each sign on top of what the
/// other is replacing). Released when dropped.
pub(crate) struct RepositoryLock {
    _file: std::fs::File,
}

/// Waits (up to a minute) for the repository's lock file `<repo>/.lock`.
pub(crate) async fn lock(repo: &Path) -> anyhow::Result<RepositoryLock> {
    let path = repo.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match file.try_lock() {
            Ok(()) => {
                finish_interrupted_publish(repo)?;
                return Ok(RepositoryLock { _file: file });
            }
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                bail!(
                    "{}: another signer has held the repository for a minute",
                    path.display()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => bail!("locking {}: {e}", path.display()),
        }
    }
}

/// The next version of the snapshot or timestamp: one more, or the Unix time in seconds when
/// that is larger. Two signers of one repository (a publisher's copy and a hub re-signing the
/// timestamp of the served one) then never go backwards from each other's versions, which
/// nodes would refuse as a rollback.
pub(crate) fn clock_version(current: NonZeroU64) -> anyhow::Result<NonZeroU64> {
    let now = jiff::Timestamp::now().as_second().max(1) as u64;
    Ok(next(current)?.max(NonZeroU64::new(now).unwrap_or(NonZeroU64::MIN)))
}

/// An editor of `loaded` under the root in `root_path` (the repository's, or a new one about
/// to be published with what it signs), with the next versions and fresh expiries set.
/// Returns it and the new targets version.
pub(crate) async fn editor_for(
    loaded: Repository,
    root_path: &Path,
    lifetimes: Lifetimes,
) -> anyhow::Result<(RepositoryEditor, u64)> {
    let targets_version = next(loaded.targets().signed.version)?;
    let snapshot_version = clock_version(loaded.snapshot().signed.version)?;
    let timestamp_version = clock_version(loaded.timestamp().signed.version)?;
    let mut editor = RepositoryEditor::from_repo(root_path, loaded)
        .await
        .context("opening the repository for editing")?;
    editor
        .targets_version(targets_version)?
        .targets_expires(expires_in(lifetimes.targets)?)?
        .snapshot_version(snapshot_version)
        .snapshot_expires(expires_in(lifetimes.snapshot)?)
        .timestamp_version(timestamp_version)
        .timestamp_expires(expires_in(lifetimes.timestamp)?);
    Ok((editor, targets_version.get()))
}

/// Marks a staging directory whose files are all written: from then on it is published
/// whole, if need be by the next signer (see [`finish_interrupted_publish`]).
const STAGED_MARKER: &str = ".complete";

/// Finishes a publish a signer stopped in the middle of moving in (its staging directory is
/// marked complete): until then the repository may hold a new root without the metadata
/// signed under it, which neither nodes nor signers can verify. Called under the lock.
fn finish_interrupted_publish(repo: &Path) -> anyhow::Result<()> {
    let staging = repo.join(".staging");
    if !staging.join(STAGED_MARKER).is_file() {
        return Ok(());
    }
    // Only what is newer than what is published: a staging directory restored or synced from
    // elsewhere could hold an older timestamp, which nodes would refuse as a rollback.
    let version = |path: &Path| -> Option<u64> {
        let text = std::fs::read(path).ok()?;
        serde_json::from_slice::<serde_json::Value>(&text).ok()?["signed"]["version"].as_u64()
    };
    let staged = version(&staging.join("timestamp.json"));
    let published = version(&metadata_dir(repo).join("timestamp.json"));
    if staged.is_none_or(|staged| published.is_some_and(|published| staged <= published)) {
        tracing::warn!(repo = %repo.display(), ?staged, ?published, "An interrupted publish holds no newer timestamp; it is discarded.");
        return std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()));
    }
    tracing::warn!(repo = %repo.display(), "Finishing a publish an earlier signer left half done.");
    move_in(repo, &staging).context("finishing an interrupted publish in .staging")
}

/// Whether a publish stopped while moving in (its staging directory is marked complete): the
/// next signer to take the lock finishes it.
pub(crate) fn publish_interrupted(repo: &Path) -> bool {
    repo.join(".staging").join(STAGED_MARKER).is_file()
}

/// A fresh staging directory beside `metadata/` (the caller holds the lock, so a leftover is
/// an interrupted signer's that never began publishing, and is removed).
pub(crate) fn staging_dir(repo: &Path) -> anyhow::Result<PathBuf> {
    finish_interrupted_publish(repo)?;
    let staging = repo.join(".staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    Ok(staging)
}

/// Moves what was written to `staging` into `metadata/` so that a node reading meanwhile never
/// sees a half-written file: versioned files first, then a new root, `timestamp.json` (which
/// points at the rest) last — a node finds a new root only just before the metadata signed
/// under it. The staging directory is marked complete first, so a stop in between is
/// finished by the next signer.
pub(crate) fn move_in(repo: &Path, staging: &Path) -> anyhow::Result<()> {
    let metadata = metadata_dir(repo);
    let marker = staging.join(STAGED_MARKER);
    if !marker.is_file() {
        // Every staged file on disk before the marker says the set is whole: after a power
        // cut, a marked directory never holds a cut-short root.
        for entry in std::fs::read_dir(staging)
            .with_context(|| format!("reading {}", staging.display()))?
            .flatten()
        {
            std::fs::File::open(entry.path())
                .and_then(|file| file.sync_all())
                .with_context(|| format!("syncing {}", entry.path().display()))?;
        }
        std::fs::File::open(staging)
            .and_then(|directory| directory.sync_all())
            .with_context(|| format!("syncing {}", staging.display()))?;
        std::fs::File::create(&marker)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(staging)
        .with_context(|| format!("reading {}", staging.display()))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| *path != marker)
        .collect();
    files.sort_by_key(|path| {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if name == "timestamp.json" {
            2
        } else if name.ends_with(".root.json") {
            1
        } else {
            0
        }
    });
    for file in files {
        let Some(name) = file.file_name() else {
            continue;
        };
        let to = metadata.join(name);
        std::fs::rename(&file, &to)
            .with_context(|| format!("moving {} to {}", file.display(), to.display()))?;
    }
    std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
    std::fs::remove_dir(staging).with_context(|| format!("removing {}", staging.display()))?;
    prune_snapshots(&metadata);
    // What was just published is; files that nothing names any more are cleared after it.
    match crate::release_retention::remove_unneeded(repo) {
        Ok(removed) if removed.files > 0 => {
            tracing::info!(
                files = removed.files,
                bytes = removed.bytes,
                "Removed target files no node or proposal needs any more."
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(repo = %repo.display(), error = %format!("{e:#}"), "Target files no longer needed were not removed; they are tried again at the next publish.");
        }
    }
    Ok(())
}

/// Snapshots a node may still be reading (it fetched the timestamp naming one just before
/// it was replaced) are kept; older ones go, or a hub re-signing every few hours would fill
/// the directory.
const SNAPSHOTS_KEPT: usize = 3;

fn prune_snapshots(metadata: &Path) {
    let Ok(entries) = std::fs::read_dir(metadata) else {
        return;
    };
    let mut snapshots: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .strip_suffix(".snapshot.json")?
                .parse()
                .ok()?;
            Some((version, entry.path()))
        })
        .collect();
    snapshots.sort_unstable_by_key(|(version, _)| std::cmp::Reverse(*version));
    for (_, old) in snapshots.into_iter().skip(SNAPSHOTS_KEPT) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(file = %old.display(), error = %e, "An old snapshot could not be removed.");
        }
    }
}

/// Writes a whole signed repository's metadata (see [`move_in`]).
async fn publish(
    signed: &tough::editor::signed::SignedRepository,
    repo: &Path,
) -> anyhow::Result<()> {
    let staging = staging_dir(repo)?;
    signed
        .write(&staging)
        .await
        .context("writing the signed metadata")?;
    move_in(repo, &staging)
}

/// Writes `bytes` as the target file nodes fetch (`targets/<sha256>.<name>`, the consistent
/// snapshot name): through a temporary file and a rename, so a node never reads a partial
/// file, and a damaged file left by an earlier attempt is replaced.
fn store_target_file(
    repo: &Path,
    sha256: &str,
    name: &TargetName,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let targets = targets_dir(repo);
    let path = targets.join(format!("{sha256}.{}", name.resolved()));
    if std::fs::read(&path).is_ok_and(|stored| stored == bytes) {
        return Ok(());
    }
    let temporary = targets.join(format!(".{sha256}.{}.partial", name.resolved()));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::File::open(&temporary)
        .and_then(|file| file.sync_all())
        .with_context(|| format!("syncing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("creating {}", path.display()))
}

/// Adds (or replaces) a model as the target `<name>.onnx`, for `nodes` (empty: every node),
/// carrying the signature file beside it (`FILE.sig`) when there is one. Returns the target's
/// SHA-256 and the new targets version.
pub(crate) async fn add_model(
    repo: &Path,
    keys: &Path,
    file: &Path,
    name: &str,
    audience: Audience,
    lifetimes: Lifetimes,
) -> anyhow::Result<(String, crate::release_proposals::Committed)> {
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
        kind: Kind::Model.as_str().into(),
        name: name.into(),
        signature,
        nodes: audience.nodes,
        share: audience.share,
        phase: audience.phase.clone(),
        encrypted: None,
        platform: None,
    };
    publish_target(
        repo,
        keys,
        Kind::Model,
        release,
        bytes,
        &audience.recipients,
        lifetimes,
    )
    .await
}

/// Adds (or replaces) a Fabrik binary as the target `<name>.bin`, for the nodes on `platform`
/// (default: the platform in the file's ELF header), named `name` (default
/// `fabrik-<platform>`). Returns the name, the platform, the target's SHA-256 and the new
/// targets version.
pub(crate) async fn add_binary(
    repo: &Path,
    keys: &Path,
    file: &Path,
    name: Option<&str>,
    platform: Option<&str>,
    audience: Audience,
    lifetimes: Lifetimes,
) -> anyhow::Result<(String, String, String, crate::release_proposals::Committed)> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let read = crate::self_update::elf_platform(&bytes);
    let platform = match (platform.map(str::trim), read) {
        (Some(""), _) => bail!("--platform is empty"),
        (Some(given), Some(read)) if given != read => bail!(
            "{}: --platform {given}, but the file is an executable for {read}",
            file.display()
        ),
        (Some(given), _) => given.to_owned(),
        (None, Some(read)) => read,
        (None, None) => bail!(
            "{}: not an ELF executable this Fabrik can name the platform of; name it with \
             --platform (`{}` on this machine)",
            file.display(),
            crate::self_update::platform()
        ),
    };
    let name = name.map_or_else(|| format!("fabrik-{platform}"), str::to_owned);
    // The rule of model names: a file name on every node, never hidden.
    if !crate::pipelines::model_name_ok(&name) {
        bail!(
            "`{name}`: a binary's name is 1–64 letters, digits, `.`, `_` or `-`, not starting \
             with `.`"
        );
    }
    let release = ReleaseTarget {
        kind: Kind::Binary.as_str().into(),
        name: name.clone(),
        signature: None,
        nodes: audience.nodes,
        share: audience.share,
        phase: audience.phase.clone(),
        encrypted: None,
        platform: Some(platform.clone()),
    };
    let (sha256, version) = publish_target(
        repo,
        keys,
        Kind::Binary,
        release,
        bytes,
        &audience.recipients,
        lifetimes,
    )
    .await?;
    Ok((name, platform, sha256, version))
}

/// Adds (or replaces) a pipeline or alert rule definition (the file's one definition, TOML or
/// JSON as `fabrik pipeline define` and `fabrik alert rule apply` read them) as the target
/// `<name>.<kind>.json`, for `nodes` (`expected_name`, when given, must be its name). It is
/// checked as a node would before it is published;
/// a pipeline must name its model with `model_name` (a released model), not a file path on
/// this machine. Returns the definition's name, the target's SHA-256 and the targets version.
pub(crate) async fn add_definition(
    repo: &Path,
    keys: &Path,
    kind: Kind,
    file: &Path,
    expected_name: Option<&str>,
    audience: Audience,
    lifetimes: Lifetimes,
) -> anyhow::Result<(String, String, crate::release_proposals::Committed)> {
    use fabrik_runtime::config::{AlertRuleConfig, PipelineConfig};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let one = |count: usize| {
        if count == 1 {
            Ok(())
        } else {
            Err(anyhow!(
                "{}: {count} definitions; a release target holds exactly one",
                file.display()
            ))
        }
    };
    let (name, json) = match kind {
        Kind::Model => bail!("a model is added with add_model"),
        Kind::UseCase => bail!("a use case is added with add_use_case"),
        Kind::Binary => bail!("a binary is added with add_binary"),
        Kind::Pipeline => {
            let mut definitions: Vec<PipelineConfig> = crate::define_cli::definitions(file, &text)
                .with_context(|| format!("{}: not a pipeline definition", file.display()))?;
            one(definitions.len())?;
            let config = definitions.remove(0);
            crate::pipelines::compile(&config).map_err(|problems| {
                anyhow!(
                    "{}: {}",
                    file.display(),
                    fabrik_api::control::describe_problems(&problems)
                )
            })?;
            if let Some(why) = released_pipeline_problem(&config) {
                bail!("{}: {why}", file.display());
            }
            (config.name.clone(), carried_as_json(&config, file)?)
        }
        Kind::AlertRule => {
            let mut definitions: Vec<AlertRuleConfig> = crate::define_cli::definitions(file, &text)
                .with_context(|| format!("{}: not an alert rule definition", file.display()))?;
            one(definitions.len())?;
            let config = definitions.remove(0);
            crate::alerts::compile_rule(&config).map_err(|problems| {
                anyhow!(
                    "{}: {}",
                    file.display(),
                    fabrik_api::control::describe_problems(&problems)
                )
            })?;
            (config.name.clone(), carried_as_json(&config, file)?)
        }
    };
    if let Some(expected) = expected_name.filter(|expected| *expected != name) {
        bail!("--name {expected}, but {} defines `{name}`", file.display());
    }
    let release = ReleaseTarget {
        kind: kind.as_str().into(),
        name: name.clone(),
        signature: None,
        nodes: audience.nodes,
        share: audience.share,
        phase: audience.phase.clone(),
        encrypted: None,
        platform: None,
    };
    let (sha256, version) = publish_target(
        repo,
        keys,
        kind,
        release,
        json,
        &audience.recipients,
        lifetimes,
    )
    .await?;
    Ok((name, sha256, version))
}

/// A use case as released: its definition, and the stage every node puts it at — a gate
/// decision made once (on the pilot's evidence) and carried to the fleet, where it decides
/// which devices the use case's pipelines score on each node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleasedUseCase {
    /// As `fabrik usecase define` takes it.
    pub(crate) definition: fabrik_registry::usecases::UseCaseDefinition,
    /// The stage nodes put it at.
    pub(crate) stage: fabrik_registry::usecases::Stage,
    /// Why, in the decider's words (who decided, on what evidence): recorded with the stage
    /// decision on every node.
    pub(crate) reason: String,
    /// The promotion overrode a gate that did not pass: recorded as forced on every node.
    #[serde(default)]
    pub(crate) forced: bool,
}

/// What the publisher says about a released use case besides its file.
#[derive(Debug, Clone, Default)]
pub(crate) struct UseCaseDecision {
    /// The stage nodes put it at; default: the stage in `fabrik usecase show`'s JSON.
    pub(crate) stage: Option<fabrik_registry::usecases::Stage>,
    /// Why it is at that stage.
    pub(crate) reason: String,
    /// The promotion overrode its gate.
    pub(crate) forced: bool,
    /// The name the file must define (`--name`).
    pub(crate) expected_name: Option<String>,
}

impl crate::define_cli::Named for ReleasedUseCase {
    fn name(&self) -> &str {
        &self.definition.name
    }

    fn toml_list(_: &toml::Table, _: &str) -> Option<Result<Vec<Self>, toml::de::Error>> {
        None
    }
}

/// The use case a file holds — a definition (TOML or JSON, as `fabrik usecase define` takes
/// it), or what `fabrik usecase show` printed on the node where its gate was judged (its
/// definition and stage) — as `decision` says; checked as a node would. Returns its name and
/// the JSON nodes read.
pub(crate) fn released_use_case(
    file: &Path,
    decision: &UseCaseDecision,
) -> anyhow::Result<(String, Vec<u8>)> {
    use fabrik_registry::usecases::{Stage, UseCaseDefinition};
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    // JSON by its name or its first character (`fabrik usecase show > shown.txt` is JSON too).
    let is_json = file
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('{');
    let (definition, shown_stage): (UseCaseDefinition, Option<Stage>) = if is_json {
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?;
        match (value.get("definition"), value.get("stage")) {
            (Some(definition), Some(stage)) => (
                serde_json::from_value(definition.clone())
                    .with_context(|| format!("{}: `definition`", file.display()))?,
                Some(
                    serde_json::from_value(stage.clone())
                        .with_context(|| format!("{}: `stage`", file.display()))?,
                ),
            ),
            (None, None) => (
                serde_json::from_value(value)
                    .with_context(|| format!("{}: not a use case definition", file.display()))?,
                None,
            ),
            _ => bail!(
                "{}: `fabrik usecase show` prints both `definition` and `stage`; this has one",
                file.display()
            ),
        }
    } else {
        let definition = toml::from_str(&text)
            .with_context(|| format!("{}: not a use case definition", file.display()))?;
        (definition, None)
    };
    if let Some(expected) = decision
        .expected_name
        .as_deref()
        .filter(|expected| *expected != definition.name)
    {
        bail!(
            "--name {expected}, but {} defines `{}`",
            file.display(),
            definition.name
        );
    }
    let stage = decision.stage.or(shown_stage).ok_or_else(|| {
        anyhow!(
            "{}: say which stage the nodes put it at with --stage pilot|scale-up|enterprise",
            file.display()
        )
    })?;
    let reason = decision.reason.trim();
    if let Some(why) = use_case_reason_problem(reason) {
        bail!("--reason: {why}");
    }
    let mut problems = definition.problems();
    problems.extend(crate::usecases::sql_problems(&definition));
    if !problems.is_empty() {
        bail!(
            "{}: {}",
            file.display(),
            fabrik_api::control::describe_problems(&problems)
        );
    }
    let released = ReleasedUseCase {
        definition,
        stage,
        reason: reason.to_owned(),
        forced: decision.forced,
    };
    let json = carried_as_json(&released, file)?;
    Ok((released.definition.name, json))
}

/// Why a released use case's reason is refused, if it is: checked when publishing and again
/// on the node (a target another tool wrote).
pub(crate) fn use_case_reason_problem(reason: &str) -> Option<String> {
    if reason.trim().is_empty() {
        return Some(
            "say why the use case is at its stage (who decided, on what evidence); every node \
             records it"
                .into(),
        );
    }
    let length = reason.chars().count();
    let most = fabrik_api::usecases::MOST_REASON_CHARS;
    (length > most).then(|| format!("{length} characters; at most {most}"))
}

/// Adds (or replaces) a use case at a stage as the target `<name>.use-case.json`
/// ([`released_use_case`] reads the file). Returns its name, the target's SHA-256 and the
/// targets version.
pub(crate) async fn add_use_case(
    repo: &Path,
    keys: &Path,
    file: &Path,
    decision: &UseCaseDecision,
    audience: Audience,
    lifetimes: Lifetimes,
) -> anyhow::Result<(String, String, crate::release_proposals::Committed)> {
    let (name, json) = released_use_case(file, decision)?;
    let release = ReleaseTarget {
        kind: Kind::UseCase.as_str().into(),
        name: name.clone(),
        signature: None,
        nodes: audience.nodes,
        share: audience.share,
        phase: audience.phase.clone(),
        encrypted: None,
        platform: None,
    };
    let (sha256, version) = publish_target(
        repo,
        keys,
        Kind::UseCase,
        release,
        json,
        &audience.recipients,
        lifetimes,
    )
    .await?;
    Ok((name, sha256, version))
}

/// Why a pipeline definition cannot be released, if it cannot: a model (or shadow model)
/// given by `model_path` is a file on the publisher's disk, or, read on a node, any file on
/// the node's; a released pipeline names a released model with `model_name`. Checked when
/// publishing and again on the node.
pub(crate) fn released_pipeline_problem(
    config: &fabrik_runtime::config::PipelineConfig,
) -> Option<String> {
    let set = |path: &Option<String>| path.as_deref().is_some_and(|p| !p.trim().is_empty());
    let shadow_path = config
        .shadow
        .as_ref()
        .is_some_and(|shadow| set(&shadow.model_path));
    (set(&config.model_path) || shadow_path).then(|| {
        "a released pipeline names its models with `model_name` (models released alongside), \
         not `model_path`, a file path"
            .to_owned()
    })
}

/// The definition as the JSON nodes read, refused when reading it back gives another
/// definition (JSON has no infinite numbers: `clear = inf` would arrive as no `clear`).
fn carried_as_json<T>(config: &T, file: &Path) -> anyhow::Result<Vec<u8>>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq,
{
    let json = serde_json::to_vec_pretty(config)?;
    let back: Option<T> = serde_json::from_slice(&json).ok();
    if back.as_ref() != Some(config) {
        bail!(
            "{}: the definition does not survive as JSON, which nodes read (an infinite \
             number?)",
            file.display()
        );
    }
    Ok(json)
}

/// Signs `bytes` into the repository as the target `release` names, and stores the file:
/// encrypted to `recipients` when there are any (the signed hash is then the encrypted
/// file's, so a node verifies what it fetched before it decrypts).
async fn publish_target(
    repo: &Path,
    keys: &Path,
    kind: Kind,
    mut release: ReleaseTarget,
    bytes: Vec<u8>,
    recipients: &[crate::age::Recipient],
    lifetimes: Lifetimes,
) -> anyhow::Result<(String, crate::release_proposals::Committed)> {
    let bytes = if recipients.is_empty() {
        bytes
    } else {
        let content = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        let encrypted = crate::age::encrypt(&bytes, recipients)?;
        release.encrypted = Some(Encryption {
            format: ENCRYPTION_FORMAT.into(),
            recipients: recipients.iter().map(ToString::to_string).collect(),
            sha256: hex(content.as_ref()),
            length: bytes.len() as u64,
        });
        encrypted
    };
    // Hashed from the bytes that are stored, read once.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    let target = Target {
        length: bytes.len() as u64,
        hashes: tough::schema::Hashes {
            sha256: digest.as_ref().to_vec().into(),
            _extra: HashMap::new(),
        },
        custom: HashMap::from([(CUSTOM_KEY.to_owned(), serde_json::to_value(&release)?)]),
        _extra: HashMap::new(),
    };
    let sha256 = hex(digest.as_ref());
    let target_name = kind.target_name(&release.name)?;
    let _lock = lock(repo).await?;
    let loaded = load_for_signing(repo, &publisher_state(keys)).await?;
    let mut targets = crate::release_proposals::next_targets(&loaded, lifetimes)?;
    targets.targets.insert(target_name.clone(), target);
    // The file before the metadata that names it: a node never finds a target missing.
    store_target_file(repo, &sha256, &target_name, &bytes)?;
    let committed = crate::release_proposals::commit_targets(
        repo, keys, &loaded, None, targets, lifetimes, true,
    )
    .await?;
    Ok((sha256, committed))
}

/// Removes a target from the metadata (its file goes once no kept snapshot names it:
/// decision 0084). Nodes keep what they installed.
pub(crate) async fn remove(
    repo: &Path,
    keys: &Path,
    kind: Kind,
    name: &str,
    lifetimes: Lifetimes,
) -> anyhow::Result<crate::release_proposals::Committed> {
    let target_name = kind.target_name(name)?;
    let _lock = lock(repo).await?;
    let known = load_local(repo)
        .await?
        .all_targets()
        .any(|(existing, _)| *existing == target_name);
    if !known {
        bail!("no target `{}` in {}", target_name.raw(), repo.display());
    }
    let loaded = load_for_signing(repo, &publisher_state(keys)).await?;
    let mut targets = crate::release_proposals::next_targets(&loaded, lifetimes)?;
    targets.targets.remove(&target_name);
    crate::release_proposals::commit_targets(repo, keys, &loaded, None, targets, lifetimes, true)
        .await
}

/// Re-signs targets, snapshot and timestamp with fresh expiries and new versions, changing no
/// target: what the publisher runs before the targets metadata expires.
pub(crate) async fn refresh(
    repo: &Path,
    keys: &Path,
    lifetimes: Lifetimes,
) -> anyhow::Result<crate::release_proposals::Committed> {
    let _lock = lock(repo).await?;
    let loaded = load_for_signing(repo, &publisher_state(keys)).await?;
    let targets = crate::release_proposals::next_targets(&loaded, lifetimes)?;
    crate::release_proposals::commit_targets(repo, keys, &loaded, None, targets, lifetimes, true)
        .await
}

/// Re-signs the snapshot (when `snapshot` is given: new version, valid for that long) and the
/// timestamp, with the keys of those two roles alone — TUF's online roles, whose keys a hub
/// can hold (`[releases] keys`) while root and targets stay with the publisher; `state` is the
/// signer's memory (see [`load_for_signing`]). Returns the new expiries of the snapshot and
/// the timestamp.
pub(crate) async fn refresh_online(
    repo: &Path,
    keys: &Path,
    state: &Path,
    snapshot: Option<Duration>,
    timestamp: Duration,
) -> anyhow::Result<(jiff::Timestamp, jiff::Timestamp)> {
    let _lock = lock(repo).await?;
    let loaded = load_for_signing(repo, state).await?;
    let root = loaded.root().signed.clone();
    let staging = staging_dir(repo)?;
    let expiries = sign_online_roles(
        &loaded,
        &root,
        &OnlineKeys::in_dir(keys),
        &staging,
        snapshot.map(|lifetime| (lifetime, None)),
        timestamp,
    )
    .await?;
    move_in(repo, &staging)?;
    remember(repo, state).await?;
    Ok(expiries)
}

/// Signs a new timestamp into `staging` with the timestamp key of `keys`, under `root`, and
/// with `snapshot` (a lifetime, and the targets metadata it is to name if that changes) a new
/// snapshot first with the snapshot key; the rest is `loaded`'s. Returns the expiries of
/// the snapshot and the timestamp.
pub(crate) async fn sign_online_roles(
    loaded: &Repository,
    root: &Root,
    keys: &OnlineKeys,
    staging: &Path,
    snapshot: Option<(Duration, Option<tough::schema::Metafile>)>,
    timestamp: Duration,
) -> anyhow::Result<(jiff::Timestamp, jiff::Timestamp)> {
    let mut new_timestamp = loaded.timestamp().signed.clone();
    let mut snapshot_expires = loaded.snapshot().signed.expires;
    if let Some((lifetime, targets)) = snapshot {
        let mut new_snapshot = loaded.snapshot().signed.clone();
        new_snapshot.version = clock_version(new_snapshot.version)?;
        new_snapshot.expires = expires_in(lifetime)?;
        if let Some(targets) = targets {
            new_snapshot.meta.insert("targets.json".to_owned(), targets);
        }
        snapshot_expires = new_snapshot.expires;
        let version = new_snapshot.version;
        let signed = sign_with(new_snapshot, root, &keys.snapshot, "snapshot", staging).await?;
        let meta = new_timestamp
            .meta
            .get_mut("snapshot.json")
            .context("the timestamp names no snapshot.json")?;
        meta.version = version;
        meta.length = Some(*signed.length());
        meta.hashes = Some(tough::schema::Hashes {
            sha256: signed.sha256().to_vec().into(),
            _extra: HashMap::new(),
        });
    }
    new_timestamp.version = clock_version(new_timestamp.version)?;
    new_timestamp.expires = expires_in(timestamp)?;
    let timestamp_expires = new_timestamp.expires;
    sign_with(new_timestamp, root, &keys.timestamp, "timestamp", staging).await?;
    Ok((snapshot_expires, timestamp_expires))
}

/// The key files of TUF's online roles: `<keys>/snapshot.key` and `<keys>/timestamp.key`,
/// or, while a rotation brings in a new key for one of them, that new key in its place.
pub(crate) struct OnlineKeys {
    pub(crate) snapshot: PathBuf,
    pub(crate) timestamp: PathBuf,
}

impl OnlineKeys {
    pub(crate) fn in_dir(keys: &Path) -> Self {
        Self {
            snapshot: key_path(keys, "snapshot"),
            timestamp: key_path(keys, "timestamp"),
        }
    }
}

/// Re-signs the root metadata as the next version with the same keys and a new expiry, with
/// the (offline) root key: what keeps nodes trusting the repository past the root's
/// lifetime. Nodes follow `N.root.json` from the root they were given, so they need nothing
/// new. Returns the new version and expiry.
pub(crate) async fn refresh_root(
    repo: &Path,
    keys: &Path,
    root_keys: &crate::release_root_keys::RootKeyFiles,
    lifetime: Duration,
) -> anyhow::Result<(u64, jiff::Timestamp)> {
    let _lock = lock(repo).await?;
    let state = publisher_state(keys);
    let loaded = load_for_signing(repo, &state).await?;
    let current = loaded.root().signed.clone();
    let mut root = current.clone();
    root.version = next(root.version)?;
    root.expires = expires_in(lifetime)?;
    let (version, expires) = (root.version.get(), root.expires);
    // The same keys sign for the old root and the new one: their signatures meet both
    // thresholds, as the TUF client checks when it walks from version N to N + 1.
    let staging = staging_dir(repo)?;
    crate::release_root_keys::sign_root(root, &current, root_keys, Some(&staging)).await?;
    move_in(repo, &staging)?;
    remember(repo, &state).await?;
    Ok((version, expires))
}

/// Checks a new root before it is published, as a node will: signed by a threshold of the
/// current root's root keys and of its own. tough does not check this when it signs a root,
/// and a published root nobody can verify stops every node and every signer.
pub(crate) fn check_new_root(
    current: &Root,
    new: &tough::schema::Signed<Root>,
) -> anyhow::Result<()> {
    current.verify_role(new).map_err(|e| {
        anyhow!(
            "the new root does not verify under the current one ({e}): is root.key the \
             repository's root key? Nothing was published"
        )
    })?;
    new.signed.verify_role(new).map_err(|e| {
        anyhow!("the new root does not verify under its own keys ({e}); nothing was published")
    })
}

/// Signs `role` with the key file at `path`, the one `root` names for the `key` role, and
/// writes it into `staging` under the name nodes fetch it by (versioned with consistent
/// snapshots).
async fn sign_with<T: tough::schema::Role + Serialize>(
    role: T,
    root: &Root,
    path: &Path,
    key: &str,
    staging: &Path,
) -> anyhow::Result<SignedRole<T>> {
    if !path.is_file() {
        bail!(
            "{}: no {key} key here (made by `fabrik release init`)",
            path.display()
        );
    }
    let source = LocalKeySource {
        path: path.to_owned(),
    };
    let signed = SignedRole::new(
        role,
        &KeyHolder::Root(root.clone()),
        &[Box::new(source) as Box<dyn KeySource>],
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .await
    .with_context(|| {
        format!("signing the {key} metadata (is {key}.key the repository's {key} key?)")
    })?;
    signed
        .write(staging, root.consistent_snapshot)
        .await
        .with_context(|| format!("writing the {key} metadata"))?;
    Ok(signed)
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tough::IntoVec;

    /// A new repository with its keys in a temporary directory (dropped with the first).
    pub(crate) async fn fresh_repository() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        init(&repo, &keys, Lifetimes::default())
            .await
            .expect("init");
        (dir, repo, keys)
    }

    /// The root keys a keys directory holds (its `root.key`), as `--keys` alone gives them.
    pub(crate) fn root_keys_in(keys: &Path) -> crate::release_root_keys::RootKeyFiles {
        crate::release_root_keys::RootKeyFiles::gather(keys, &[]).expect("root keys")
    }

    pub(crate) fn forest() -> Vec<u8> {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fabrik-onnx/tests/fixtures");
        std::fs::read(format!("{fixtures}/iforest_100.onnx")).expect("fixture")
    }

    /// Adds [`forest`] as model `name` (for every node), from a file under `dir`: its SHA-256
    /// and what signing it led to.
    pub(crate) async fn add_forest(
        repo: &Path,
        keys: &Path,
        dir: &Path,
        name: &str,
    ) -> (String, crate::release_proposals::Committed) {
        try_add_forest(repo, keys, dir, name).await.expect("add")
    }

    /// [`add_forest`], its refusal returned (keys that no longer sign, say).
    pub(crate) async fn try_add_forest(
        repo: &Path,
        keys: &Path,
        dir: &Path,
        name: &str,
    ) -> anyhow::Result<(String, crate::release_proposals::Committed)> {
        let model = dir.join(format!("{name}.onnx"));
        std::fs::write(&model, forest()).expect("model");
        add_model(
            repo,
            keys,
            &model,
            name,
            Audience::default(),
            Lifetimes::default(),
        )
        .await
    }

    /// The bytes of target `name` as a node reads them: fetched and checked against the
    /// signed metadata.
    pub(crate) async fn verified_target(loaded: &Repository, name: &TargetName) -> Vec<u8> {
        loaded
            .read_target(name)
            .await
            .expect("read")
            .expect("listed")
            .into_vec()
            .await
            .expect("verified")
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
            Audience {
                nodes: vec!["line-*".into()],
                ..Audience::default()
            },
            Lifetimes::default(),
        )
        .await
        .expect("add");
        assert_eq!(version.version, 2);
        assert!(
            version.pending.is_none(),
            "one key of one: published at once"
        );
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
        assert_eq!(release.kind, Kind::Model.as_str());
        assert_eq!(release.name, "pump");
        assert_eq!(release.signature, None);
        assert!(release.is_for("line-3") && !release.is_for("hub"));
        let name = name.clone();
        assert_eq!(verified_target(&loaded, &name).await, forest());

        let version = remove(&repo, &keys, Kind::Model, "pump", Lifetimes::default())
            .await
            .expect("remove");
        assert_eq!(version.version, 3);
        assert_eq!(
            load_local(&repo).await.expect("load").all_targets().count(),
            0
        );
        assert!(
            remove(&repo, &keys, Kind::Model, "pump", Lifetimes::default())
                .await
                .is_err_and(|e| e.to_string().contains("no target")),
        );
    }

    #[tokio::test]
    async fn an_encrypted_target_is_signed_as_stored_and_opens_only_for_its_recipients() {
        let (dir, repo, keys) = fresh_repository().await;
        let model = dir.path().join("forest.onnx");
        std::fs::write(&model, forest()).expect("model");
        let line_1 = crate::age::Identity::generate().expect("identity");
        let stranger = crate::age::Identity::generate().expect("identity");
        let (sha256, _) = add_model(
            &repo,
            &keys,
            &model,
            "pump",
            Audience {
                nodes: vec!["line-1".into()],
                recipients: vec![line_1.recipient().clone()],
                ..Audience::default()
            },
            Lifetimes::default(),
        )
        .await
        .expect("add");
        let loaded = load_local(&repo).await.expect("load");
        let (name, target) = loaded.all_targets().next().expect("a target");
        let release = ReleaseTarget::of(target)
            .expect("Fabrik's")
            .expect("parses");
        let encryption = release.encrypted.clone().expect("encrypted");
        assert_eq!(encryption.format, ENCRYPTION_FORMAT);
        assert_eq!(encryption.recipients, [line_1.recipient().to_string()]);
        let plain_sha =
            hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &forest()).as_ref());
        assert_eq!(encryption.sha256, plain_sha);
        assert_eq!(encryption.length, forest().len() as u64);
        assert_eq!(release.content_sha256(&sha256), plain_sha);
        // The signed hash is the stored file's: a node verifies before it decrypts.
        assert_ne!(sha256, plain_sha);
        let name = name.clone();
        let stored = loaded
            .read_target(&name)
            .await
            .expect("read")
            .expect("listed")
            .into_vec()
            .await
            .expect("verified");
        let model_bytes = forest();
        let probe = &model_bytes[model_bytes.len() / 2..][..64];
        assert!(
            !stored.windows(64).any(|w| w == probe),
            "the model is not served in clear"
        );
        assert_eq!(
            crate::age::decrypt(&stored, &line_1).expect("decrypt"),
            forest()
        );
        assert!(crate::age::decrypt(&stored, &stranger).is_err());
    }

    #[tokio::test]
    async fn the_online_roles_are_re_signed_with_their_keys_alone() {
        let (dir, repo, keys) = fresh_repository().await;
        let online = dir.path().join("online");
        std::fs::create_dir_all(&online).expect("online keys");
        for role in ["snapshot", "timestamp"] {
            std::fs::copy(key_path(&keys, role), key_path(&online, role)).expect("copy key");
        }
        let before = load_local(&repo).await.expect("load");
        let (_, expires) = refresh_online(
            &repo,
            &online,
            &online.join("state"),
            None,
            Duration::from_secs(7200),
        )
        .await
        .expect("timestamp alone");
        let after = load_local(&repo).await.expect("load");
        assert!(after.timestamp().signed.version > before.timestamp().signed.version);
        assert_eq!(after.timestamp().signed.expires, expires);
        assert_eq!(
            after.snapshot().signed.version,
            before.snapshot().signed.version
        );
        let (snapshot_expires, _) = refresh_online(
            &repo,
            &online,
            &online.join("state"),
            Some(Duration::from_secs(3600)),
            Duration::from_secs(600),
        )
        .await
        .expect("snapshot and timestamp");
        let again = load_local(&repo).await.expect("the new snapshot verifies");
        assert!(again.snapshot().signed.version > after.snapshot().signed.version);
        assert_eq!(again.snapshot().signed.expires, snapshot_expires);
        assert_eq!(
            again.targets().signed.version,
            before.targets().signed.version,
            "the targets are untouched"
        );
        // Another role's key does not sign the timestamp.
        std::fs::copy(key_path(&keys, "targets"), key_path(&online, "timestamp")).expect("swap");
        let wrong = refresh_online(
            &repo,
            &online,
            &online.join("state"),
            None,
            Duration::from_secs(60),
        )
        .await;
        assert!(wrong.is_err(), "signed with the targets key");
    }

    #[tokio::test]
    async fn a_re_signed_root_is_followed_from_the_first_one() {
        let (dir, repo, keys) = fresh_repository().await;
        let (version, expires) = refresh_root(
            &repo,
            &keys,
            &crate::release::tests::root_keys_in(&keys),
            Duration::from_secs(3 * 365 * 86_400),
        )
        .await
        .expect("root");
        assert_eq!(version, 2);
        assert!(repo.join("metadata/2.root.json").is_file());
        // Loaded from 1.root.json, as a node given the first root does.
        let loaded = load_local(&repo).await.expect("load");
        assert_eq!(loaded.root().signed.version.get(), 2);
        assert_eq!(loaded.root().signed.expires, expires);
        // Later changes are signed on top of it.
        let model = dir.path().join("forest.onnx");
        std::fs::write(&model, forest()).expect("model");
        add_model(
            &repo,
            &keys,
            &model,
            "pump",
            Audience::default(),
            Lifetimes::default(),
        )
        .await
        .expect("add after the new root");
    }

    #[tokio::test]
    async fn an_older_timestamp_put_back_is_not_signed_over() {
        let (_dir, repo, keys) = fresh_repository().await;
        let old = std::fs::read(repo.join("metadata/timestamp.json")).expect("timestamp");
        refresh_online(
            &repo,
            &keys,
            &publisher_state(&keys),
            None,
            Duration::from_secs(600),
        )
        .await
        .expect("refresh");
        std::fs::write(repo.join("metadata/timestamp.json"), old).expect("put back");
        let refused = refresh_online(
            &repo,
            &keys,
            &publisher_state(&keys),
            None,
            Duration::from_secs(600),
        )
        .await;
        assert!(
            refused.is_err_and(|e| format!("{e:#}").contains("previously")),
            "the signer remembers the newer timestamp"
        );
    }

    #[tokio::test]
    async fn definitions_that_would_arrive_changed_or_read_local_files_are_refused() {
        let (dir, repo, keys) = fresh_repository().await;
        let rule = dir.path().join("rule.toml");
        std::fs::write(
            &rule,
            "name = \"r\"\ntable = \"t\"\nvalue = \"v\"\ncondition = \"above\"\n\
             threshold = 1.0\nclear = -inf\n",
        )
        .expect("rule");
        let refused = add_definition(
            &repo,
            &keys,
            Kind::AlertRule,
            &rule,
            None,
            Audience::default(),
            Lifetimes::default(),
        )
        .await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("does not survive as JSON")),
            "an infinite clear level would arrive as none"
        );
        let pipeline = dir.path().join("p.json");
        std::fs::write(
            &pipeline,
            serde_json::json!({
                "name": "p", "table": "t", "signals": ["v"], "features": ["mean"],
                "model": "robust_z",
                "shadow": {"model": "onnx", "model_path": "/etc/passwd"},
            })
            .to_string(),
        )
        .expect("pipeline");
        let refused = add_definition(
            &repo,
            &keys,
            Kind::Pipeline,
            &pipeline,
            None,
            Audience::default(),
            Lifetimes::default(),
        )
        .await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("model_path")),
            "a shadow model's file path is refused too"
        );
        let wrong_name = add_definition(
            &repo,
            &keys,
            Kind::Pipeline,
            &pipeline,
            Some("q"),
            Audience::default(),
            Lifetimes::default(),
        )
        .await;
        assert!(wrong_name.is_err());
        assert_eq!(
            load_local(&repo).await.expect("load").all_targets().count(),
            0,
            "nothing published"
        );
    }

    #[tokio::test]
    async fn metadata_changed_after_signing_does_not_verify() {
        let (dir, repo, keys) = fresh_repository().await;
        let model = dir.path().join("forest.onnx");
        std::fs::write(&model, forest()).expect("model");
        add_model(
            &repo,
            &keys,
            &model,
            "pump",
            Audience::default(),
            Lifetimes::default(),
        )
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
            kind: Kind::Model.as_str().into(),
            name: "m".into(),
            signature: None,
            nodes: vec![],
            encrypted: None,
            platform: None,
            share: None,
            phase: None,
        };
        assert!(release.is_for("whatever"), "no nodes: every node");
    }

    #[test]
    fn a_phased_rollout_keeps_its_nodes_as_it_widens_and_spreads_them_evenly() {
        let nodes: Vec<String> = (0..2000).map(|i| format!("line-{i}")).collect();
        let phase = |share: u32| -> Vec<&String> {
            let release = ReleaseTarget {
                kind: Kind::Model.as_str().into(),
                name: "pump-model".into(),
                signature: None,
                nodes: vec![],
                encrypted: None,
                platform: None,
                share: Some(share),
                phase: None,
            };
            nodes
                .iter()
                .filter(|node| release.outside_phase(node).is_none())
                .collect()
        };
        let (ten, fifty, all) = (phase(1_000), phase(5_000), phase(10_000));
        assert!(
            ten.iter().all(|node| fifty.contains(node)),
            "widening keeps the first"
        );
        assert_eq!(all.len(), nodes.len());
        // 2,000 nodes: 10 % is 200 give or take a few standard deviations (√180 ≈ 13).
        assert!((150..=250).contains(&ten.len()), "{}", ten.len());
        assert!((900..=1100).contains(&fifty.len()), "{}", fifty.len());
        // Another artifact's first tenth is other nodes.
        let other = ReleaseTarget {
            kind: Kind::Model.as_str().into(),
            name: "valve-model".into(),
            signature: None,
            nodes: vec![],
            encrypted: None,
            platform: None,
            share: Some(1_000),
            phase: None,
        };
        let shared = ten
            .iter()
            .filter(|node| other.outside_phase(node).is_none())
            .count();
        assert!(
            shared < 60,
            "{shared} of {} in both first tenths",
            ten.len()
        );
        // The boundary: in when the share is above the node's place, not at it.
        let place = rollout_bucket("pump-model", "line-1");
        let at = |share: u32| ReleaseTarget {
            share: Some(share),
            ..other.clone()
        };
        let named = |share: u32| ReleaseTarget {
            name: "pump-model".into(),
            ..at(share)
        };
        assert!(named(place).outside_phase("line-1").is_some());
        assert!(named(place + 1).outside_phase("line-1").is_none());
        // Artifacts of one phase key go to the same nodes, whatever their names.
        let keyed = |name: &str| ReleaseTarget {
            name: name.into(),
            phase: Some("pump-2026-12".into()),
            ..at(1_000)
        };
        let (model, pipeline) = (keyed("pump-model"), keyed("pump-line"));
        let together = nodes
            .iter()
            .filter(|node| model.outside_phase(node).is_none())
            .collect::<Vec<_>>();
        assert!(!together.is_empty());
        assert!(
            nodes.iter().all(|node| model.outside_phase(node).is_none()
                == pipeline.outside_phase(node).is_none()),
            "one phase key, one set of nodes"
        );
        assert!(check_share(0.0).is_err() && check_share(100.5).is_err());
        assert!(check_share(12.345).is_err(), "steps of 0.01");
        assert_eq!(check_share(12.5), Ok(1_250));
        assert_eq!(check_share(100.0), Ok(10_000));
        assert_eq!(
            (percent(1_250), percent(9_175), percent(500)),
            ("12.5".into(), "91.75".into(), "5".into())
        );
    }
}
