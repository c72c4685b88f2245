//! Releases signed by more than one person (decision 0075): when the root asks for more
//! targets signatures than one publisher holds, a change to the targets metadata waits as a
//! proposal in `<repo>/proposals/` until enough targets keys have signed it, and is then
//! published with a new snapshot and timestamp — by whoever completes it and holds those two
//! keys, or by a hub that re-signs them (`[releases] keys`). A new root that changes who signs
//! the targets (`fabrik release signers`) waits with the targets signed under it, and needs
//! the signatures the current root asks for as well as its own, so nodes never see a root
//! whose targets do not verify and the signers cannot be changed around the current quorum.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use tough::Repository;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{KeyHolder, RoleKeys, RoleType, Root, Signature, Signed, Targets};

use crate::release::{self, Lifetimes, hex};

/// The field of the targets metadata that names the new root a change of signers publishes
/// with it (the SHA-256 of its canonical JSON): the targets signatures, the current quorum's
/// included, then cover that root and no other.
const ROOT_BINDING: &str = "fabrik_new_root_sha256";

/// What [`ROOT_BINDING`] holds for `root`.
fn root_binding(root: &Root) -> anyhow::Result<serde_json::Value> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical(root)?);
    Ok(serde_json::Value::String(hex(digest.as_ref())))
}

/// Where proposals wait, beside `metadata/` and `targets/` (not served: `/tuf` serves only
/// those two).
fn proposals_dir(repo: &Path) -> PathBuf {
    repo.join("proposals")
}

/// A change to the targets metadata waiting for signatures, as stored in
/// `<repo>/proposals/<id>.json`, where the id names its content (see [`Proposal::id`]).
/// Nothing in it is trusted: every signature is checked against the roots before it counts,
/// and what an approver is shown is read from the content the id names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Proposal {
    /// The targets version published when it was made: it replaces that one or none.
    base_targets_version: u64,
    /// The root version published when it was made.
    base_root_version: u64,
    /// A new root published with it (a change of who signs the targets), root-signed.
    root: Option<Signed<Root>>,
    /// The new targets metadata and the signatures it has so far.
    targets: Signed<Targets>,
}

/// What signing a change of the targets metadata led to.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The targets version it is (or will be, once published).
    pub(crate) version: u64,
    /// Set when it was not published: it waits as this proposal.
    pub(crate) pending: Option<Pending>,
}

/// A proposal's standing.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) id: String,
    /// Valid signatures from distinct targets keys of the root it is published under.
    pub(crate) signatures: u64,
    /// How many that root asks for.
    pub(crate) threshold: u64,
    /// With a new root: valid signatures by the current root's targets keys, and how many it
    /// asks for (a change of signers needs the current quorum too).
    pub(crate) current: Option<(u64, u64)>,
}

impl Pending {
    /// Signed enough, waiting only for the snapshot and timestamp keys.
    pub(crate) fn ready(&self) -> bool {
        self.signatures >= self.threshold
            && self
                .current
                .is_none_or(|(signatures, threshold)| signatures >= threshold)
    }

    fn standing(&self) -> String {
        let mut text = format!(
            "signed by {} of the {} targets keys needed",
            self.signatures, self.threshold
        );
        if let Some((signatures, threshold)) = self.current {
            text.push_str(&format!(
                ", and by {signatures} of the {threshold} the current root needs"
            ));
        }
        text
    }
}

impl Committed {
    /// One line for the CLI: what happened to `what` and what comes next.
    pub(crate) fn describe(&self, what: &str, repo: &Path) -> String {
        let Some(pending) = &self.pending else {
            return format!("published {what} as targets version {}", self.version);
        };
        if pending.ready() {
            format!(
                "{what} (targets version {}, proposal {}) is {}, but not published: no \
                 snapshot and timestamp keys here. A hub with [releases] keys publishes it \
                 within a minute, or run `fabrik release approve --repo {} --keys KEYS --id \
                 {}` with those keys",
                self.version,
                pending.id,
                pending.standing(),
                repo.display(),
                pending.id
            )
        } else {
            format!(
                "{what} waits as proposal {} for targets version {}: {}. Another signer \
                 reviews it with `fabrik release proposals --repo {}` and signs it with \
                 `fabrik release approve --repo {} --keys THEIR_KEYS --id {}`",
                pending.id,
                self.version,
                pending.standing(),
                repo.display(),
                repo.display(),
                pending.id
            )
        }
    }
}

/// The key id (as the root lists it) of the private key in `path`.
pub(crate) async fn key_id_of(path: &Path) -> anyhow::Result<Decoded<Hex>> {
    LocalKeySource {
        path: path.to_owned(),
    }
    .as_sign()
    .await
    .map_err(|e| anyhow!("{}: {e}", path.display()))?
    .tuf_key()
    .key_id()
    .context("key id")
}

/// The raw public key of an Ed25519 key without extra fields — the only kind a targets signer
/// may have: a key id hashes the whole key's JSON, so one public key dressed with an extra
/// field would get a second id and one person's signature would count twice.
fn public_key(key: &Key) -> Option<&[u8]> {
    match key {
        Key::Ed25519 { keyval, _extra, .. } if _extra.is_empty() && keyval._extra.is_empty() => {
            Some(&keyval.public)
        }
        _ => None,
    }
}

/// `root` with only `keyid` listed for the targets role, at threshold 1: the means to make
/// and check one signature with tough's own code, whatever the real threshold is.
fn only_key(root: &Root, keyid: &Decoded<Hex>) -> Root {
    let mut only = root.clone();
    only.roles.insert(
        RoleType::Targets,
        RoleKeys {
            keyids: vec![keyid.clone()],
            threshold: NonZeroU64::MIN,
            _extra: HashMap::new(),
        },
    );
    only
}

fn targets_keys(root: &Root) -> anyhow::Result<&RoleKeys> {
    root.roles
        .get(&RoleType::Targets)
        .context("the root names no targets keys")
}

fn lists(root: &Root, id: &Decoded<Hex>) -> bool {
    targets_keys(root).is_ok_and(|keys| keys.keyids.contains(id))
}

/// The error for a key in `path` that `root` does not list for the targets role.
fn not_a_signer(path: &Path, id: &Decoded<Hex>, root: &Root) -> anyhow::Error {
    let listed = targets_keys(root).map_or_else(
        |_| "none".to_owned(),
        |keys| keys.keyids.iter().map(short).collect::<Vec<_>>().join(", "),
    );
    anyhow!(
        "{}: key {} is not one of the targets keys the root lists ({listed})",
        path.display(),
        short(id)
    )
}

/// Signs `targets` with the private key in `path`, which `root` must list for the targets
/// role.
async fn signature_by(targets: &Targets, root: &Root, path: &Path) -> anyhow::Result<Signature> {
    let id = key_id_of(path).await?;
    if !lists(root, &id) {
        return Err(not_a_signer(path, &id, root));
    }
    let signed = SignedRole::new(
        targets.clone(),
        &KeyHolder::Root(only_key(root, &id)),
        &[Box::new(LocalKeySource {
            path: path.to_owned(),
        }) as Box<dyn KeySource>],
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .await
    .with_context(|| format!("signing the targets metadata with {}", path.display()))?;
    signed
        .signed()
        .signatures
        .first()
        .cloned()
        .context("the key made no signature")
}

/// Whether `signature` is a valid signature of `targets` by a targets key `root` lists.
fn verifies(targets: &Targets, signature: &Signature, root: &Root) -> bool {
    lists(root, &signature.keyid)
        && only_key(root, &signature.keyid)
            .verify_role(&Signed {
                signed: targets.clone(),
                signatures: vec![signature.clone()],
            })
            .is_ok()
}

/// How many distinct public keys among `ids` (all listed by `root`): Ed25519 keys by their
/// raw public key whatever extra fields they carry, others by their key id.
fn distinct_keys(root: &Root, ids: &[Decoded<Hex>]) -> u64 {
    let mut keys: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| match root.keys.get(id) {
            Some(Key::Ed25519 { keyval, .. }) => [b"ed25519:".as_slice(), &keyval.public].concat(),
            _ => [b"id:".as_slice(), id.as_ref()].concat(),
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys.len() as u64
}

/// The first 16 hex digits of a key id: what the CLI shows and `--remove` takes.
pub(crate) fn short(id: &Decoded<Hex>) -> String {
    let text = hex(id);
    text.get(..16).unwrap_or(&text).to_owned()
}

/// TUF's canonical JSON of `value`: the bytes signatures are made over.
fn canonical<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut data, olpc_cjson::CanonicalFormatter::new());
    value
        .serialize(&mut serializer)
        .context("encoding canonical JSON")?;
    Ok(data)
}

/// A string for the terminal: JSON-quoted, and every control or direction-changing character
/// escaped, so nothing in a name or a field can disguise a line an approver reads.
fn quoted(text: &str) -> String {
    printable(&serde_json::to_string(text).unwrap_or_else(|_| format!("{text:?}")))
}

/// `text` with control characters (C0, DEL, C1) and Unicode's bidirectional controls written
/// as `\u{…}`.
pub(crate) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || bidi {
                format!("\\u{{{:04x}}}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The signatures of a proposal that count.
struct Counted {
    /// By targets keys of the root it is published under.
    governing: Vec<Decoded<Hex>>,
    /// By the current root's targets keys, when it carries a new root.
    current: Option<Vec<Decoded<Hex>>>,
}

impl Proposal {
    /// Its id: the targets version and the SHA-256 of what it asks to have signed
    /// and published (its base versions, targets metadata and new root, as canonical JSON).
    /// An id an approver reviewed names that content and no other; signatures added later do
    /// not change it.
    fn id(&self) -> anyhow::Result<String> {
        let mut content = format!(
            "fabrik release proposal v1\n{}\n{}\n",
            self.base_targets_version, self.base_root_version
        )
        .into_bytes();
        content.extend(canonical(&self.targets.signed)?);
        content.push(b'\n');
        match &self.root {
            Some(root) => content.extend(canonical(&root.signed)?),
            None => content.extend(b"null"),
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &content);
        Ok(format!(
            "{}-{}",
            self.targets.signed.version,
            hex(digest.as_ref())
        ))
    }

    /// The root the targets are signed under: the new one it carries, else the published one.
    fn governing_root<'a>(&'a self, loaded: &'a Repository) -> &'a Root {
        match &self.root {
            Some(root) => &root.signed,
            None => &loaded.root().signed,
        }
    }

    /// The root under which the targets key `id` signs this proposal: the governing root if it
    /// lists the key, else, for a change of signers, the current root if that lists it (its
    /// quorum counts too); `None` when neither does.
    fn signing_root(&self, loaded: &Repository, id: &Decoded<Hex>) -> Option<Root> {
        let governing = self.governing_root(loaded);
        let current = &loaded.root().signed;
        if lists(governing, id) {
            Some(governing.clone())
        } else {
            (self.root.is_some() && lists(current, id)).then(|| current.clone())
        }
    }

    /// The signatures that count. Each must verify under the governing root or (with a new
    /// root) the current one: the first that does not is an error naming its key — the
    /// proposal was changed after that key signed it.
    fn counted(&self, loaded: &Repository) -> anyhow::Result<Counted> {
        let governing = self.governing_root(loaded);
        let current = self.root.as_ref().map(|_| &loaded.root().signed);
        let mut counted = Counted {
            governing: Vec::new(),
            current: current.map(|_| Vec::new()),
        };
        let mut seen = Vec::new();
        for signature in &self.targets.signatures {
            if seen.contains(&signature.keyid) {
                bail!(
                    "key {} signed the proposal twice: it was not written by Fabrik",
                    short(&signature.keyid)
                );
            }
            seen.push(signature.keyid.clone());
            let mut valid = false;
            if verifies(&self.targets.signed, signature, governing) {
                counted.governing.push(signature.keyid.clone());
                valid = true;
            }
            if let (Some(current), Some(ids)) = (current, counted.current.as_mut())
                && verifies(&self.targets.signed, signature, current)
            {
                ids.push(signature.keyid.clone());
                valid = true;
            }
            if !valid {
                bail!(
                    "the signature by key {} does not verify: the proposal was changed after \
                     that key signed it, or the key is not one of the targets keys; withdraw \
                     it and propose the change again",
                    short(&signature.keyid)
                );
            }
        }
        Ok(counted)
    }

    /// Its standing: the signatures that count against what the roots ask for.
    fn pending(&self, id: &str, loaded: &Repository) -> anyhow::Result<Pending> {
        let counted = self.counted(loaded)?;
        let governing = self.governing_root(loaded);
        let current = match counted.current {
            Some(ids) => Some((
                distinct_keys(&loaded.root().signed, &ids),
                targets_keys(&loaded.root().signed)?.threshold.get(),
            )),
            None => None,
        };
        Ok(Pending {
            id: id.to_owned(),
            signatures: distinct_keys(governing, &counted.governing),
            threshold: targets_keys(governing)?.threshold.get(),
            current,
        })
    }

    /// Why this proposal can no longer be published, if it cannot: the repository moved on
    /// (another change was published first), its new root no longer follows the published
    /// one or changes more than who signs the targets, its targets change more than the
    /// targets, or have expired.
    fn stale(&self, loaded: &Repository) -> Option<String> {
        let published = loaded.targets().signed.version.get();
        let root_version = loaded.root().signed.version.get();
        // The root version matters only to a new root (checked below): a root re-signed
        // meanwhile leaves the targets keys, under which every signature is checked, as they
        // were.
        if self.base_targets_version != published {
            return Some(format!(
                "made on targets version {}; the repository has published targets version \
                 {published} since: propose the change again",
                self.base_targets_version
            ));
        }
        let targets = &self.targets.signed;
        if targets.version.get() != published + 1 {
            return Some(format!(
                "its targets version {} does not follow the published {published}",
                targets.version
            ));
        }
        let before = &loaded.targets().signed;
        let without_binding = |extra: &HashMap<String, serde_json::Value>| {
            let mut extra = extra.clone();
            extra.remove(ROOT_BINDING);
            extra
        };
        if targets.delegations != before.delegations
            || without_binding(&targets._extra) != without_binding(&before._extra)
            || targets.spec_version != before.spec_version
        {
            return Some(
                "it changes the targets metadata beyond its targets (delegations or other \
                 fields): not written by Fabrik"
                    .to_owned(),
            );
        }
        if let Some(root) = &self.root {
            if root.signed.version.get() != root_version + 1 {
                return Some(format!(
                    "its root version {} does not follow the published {root_version}",
                    root.signed.version
                ));
            }
            if let Err(e) = release::check_new_root(&loaded.root().signed, root) {
                return Some(format!("{e:#}"));
            }
            if let Some(problem) = signers_change_problem(&loaded.root().signed, &root.signed) {
                return Some(problem);
            }
            if root.signed.expires <= jiff::Timestamp::now() {
                return Some(format!("its new root expired at {}", root.signed.expires));
            }
            if root_binding(&root.signed).ok().as_ref() != targets._extra.get(ROOT_BINDING) {
                return Some(
                    "its targets metadata does not name its new root, so their signatures do \
                     not cover it"
                        .to_owned(),
                );
            }
        } else if targets._extra.contains_key(ROOT_BINDING) {
            return Some("its targets metadata names a new root it does not carry".to_owned());
        }
        if targets.expires <= jiff::Timestamp::now() {
            return Some(format!(
                "its targets metadata expired at {}",
                targets.expires
            ));
        }
        None
    }

    /// What it changes against the published metadata, one line each, read from the content
    /// its id names: every field of each target added or changed, in full.
    pub(crate) fn changes(&self, loaded: &Repository) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(root) = &self.root {
            let describe = |root: &Root| match targets_keys(root) {
                Ok(keys) => format!(
                    "{} of [{}]",
                    keys.threshold,
                    keys.keyids
                        .iter()
                        .map(|id| hex(id))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Err(_) => "no keys".to_owned(),
            };
            lines.push(format!(
                "root version {} (valid until {}): targets signed by {} (was {})",
                root.signed.version,
                root.signed.expires,
                describe(&root.signed),
                describe(&loaded.root().signed)
            ));
        }
        let before = &loaded.targets().signed.targets;
        let after = &self.targets.signed.targets;
        let mut names: Vec<&tough::TargetName> = before.keys().chain(after.keys()).collect();
        names.sort_by(|a, b| a.raw().cmp(b.raw()));
        names.dedup();
        let full = |target: &tough::schema::Target| {
            printable(&String::from_utf8_lossy(
                &canonical(target).unwrap_or_default(),
            ))
        };
        for name in names {
            let shown = quoted(name.raw());
            match (before.get(name), after.get(name)) {
                (None, Some(new)) => lines.push(format!("+ {shown} {}", full(new))),
                (Some(_), None) => lines.push(format!("- {shown}")),
                (Some(old), Some(new)) if old != new => {
                    lines.push(format!("~ {shown} {} (was {})", full(new), full(old)))
                }
                _ => {}
            }
        }
        if lines.is_empty() {
            lines.push("no target changes: re-signed".to_owned());
        }
        lines.push(format!(
            "targets version {}, valid until {}",
            self.targets.signed.version, self.targets.signed.expires
        ));
        lines
    }
}

/// Why a new root is not one `fabrik release signers` would make from `current`: it may
/// change only its version, its expiry, the targets role and the keys that role uses — each
/// an Ed25519 key of its own (see [`public_key`]) — and keep every other key as it was.
fn signers_change_problem(current: &Root, new: &Root) -> Option<String> {
    let mut same = new.clone();
    same.version = current.version;
    same.expires = current.expires;
    same.keys = current.keys.clone();
    if let Some(keys) = current.roles.get(&RoleType::Targets) {
        same.roles.insert(RoleType::Targets, keys.clone());
    }
    if same != *current {
        return Some("its new root changes more than who signs the targets".to_owned());
    }
    for (id, key) in &new.keys {
        if current.keys.get(id).is_some_and(|old| old != key) {
            return Some(format!("its new root changes key {}", short(id)));
        }
    }
    let Ok(role) = targets_keys(new) else {
        return Some("its new root names no targets keys".to_owned());
    };
    let mut publics = Vec::new();
    for id in &role.keyids {
        match new.keys.get(id).and_then(public_key) {
            Some(public) if !publics.contains(&public) => publics.push(public),
            Some(_) => {
                return Some(format!(
                    "its new root lists one public key twice for the targets (key {})",
                    short(id)
                ));
            }
            None => {
                return Some(format!(
                    "its new root lists key {} for the targets, which is not a plain Ed25519 \
                     key",
                    short(id)
                ));
            }
        }
    }
    None
}

/// The next targets metadata: the published one with the version after it and a fresh
/// expiry, to be changed and then committed.
pub(crate) fn next_targets(loaded: &Repository, lifetimes: Lifetimes) -> anyhow::Result<Targets> {
    let mut targets = loaded.targets().signed.clone();
    targets.version = release::next(targets.version)?;
    targets.expires = release::expires_in(lifetimes.targets)?;
    targets._extra.remove(ROOT_BINDING);
    Ok(targets)
}

/// Signs `targets` (the version after the published one, under `new_root` when given) with
/// the targets key in `keys` — required when `own_signature`, else used when a root lists
/// it — and publishes it, with a new snapshot and timestamp, when that meets the threshold
/// and `keys` holds the snapshot and timestamp keys; otherwise it waits as a proposal. The
/// caller holds the repository's lock and loaded `loaded` through the publisher's state.
pub(crate) async fn commit_targets(
    repo: &Path,
    keys: &Path,
    loaded: &Repository,
    new_root: Option<Signed<Root>>,
    targets: Targets,
    lifetimes: Lifetimes,
    own_signature: bool,
) -> anyhow::Result<Committed> {
    let mut proposal = Proposal {
        base_targets_version: loaded.targets().signed.version.get(),
        base_root_version: loaded.root().signed.version.get(),
        root: new_root,
        targets: Signed {
            signed: targets,
            signatures: Vec::new(),
        },
    };
    let own = release::key_path(keys, "targets");
    if own.is_file() || own_signature {
        if !own.is_file() {
            bail!(
                "{}: no targets key here (made by `fabrik release init` or `fabrik release \
                 keygen`)",
                own.display()
            );
        }
        let id = key_id_of(&own).await?;
        match proposal.signing_root(loaded, &id) {
            Some(root) => {
                let signature = signature_by(&proposal.targets.signed, &root, &own).await?;
                proposal.targets.signatures.push(signature);
            }
            None if own_signature => {
                return Err(not_a_signer(&own, &id, proposal.governing_root(loaded)));
            }
            None => {}
        }
    }
    let id = proposal.id()?;
    finish(
        repo,
        keys,
        &release::publisher_state(keys),
        loaded,
        &id,
        proposal,
        lifetimes,
    )
    .await
}

/// Publishes `proposal` if it has enough signatures and `keys` holds the snapshot and
/// timestamp keys, and removes its file; stores it otherwise (also when publishing failed
/// before anything was moved in, so no signature is lost).
async fn finish(
    repo: &Path,
    keys: &Path,
    state: &Path,
    loaded: &Repository,
    id: &str,
    proposal: Proposal,
    lifetimes: Lifetimes,
) -> anyhow::Result<Committed> {
    let version = proposal.targets.signed.version.get();
    let pending = proposal.pending(id, loaded)?;
    let online_keys = ["snapshot", "timestamp"]
        .iter()
        .all(|role| release::key_path(keys, role).is_file());
    if pending.ready() && online_keys {
        if let Err(e) = publish(repo, keys, state, loaded, &proposal, lifetimes).await {
            if published_since(repo, version).await {
                remove_proposal(repo, id)?;
                return Err(e.context(format!(
                    "targets version {version} was published, but reading it back failed"
                )));
            }
            if release::publish_interrupted(repo) {
                remove_proposal(repo, id)?;
                return Err(e.context(format!(
                    "publishing targets version {version} stopped half way; the next signer \
                     finishes it"
                )));
            }
            write_proposal(repo, id, &proposal)?;
            return Err(e.context(format!("not published; kept as proposal {id}")));
        }
        remove_proposal(repo, id)?;
        return Ok(Committed {
            version,
            pending: None,
        });
    }
    write_proposal(repo, id, &proposal)?;
    Ok(Committed {
        version,
        pending: Some(pending),
    })
}

/// Whether the repository now publishes targets `version` or a later one.
async fn published_since(repo: &Path, version: u64) -> bool {
    release::load_local(repo)
        .await
        .is_ok_and(|now| now.targets().signed.version.get() >= version)
}

/// Publishes a proposal that meets the thresholds: its root (if any), its targets, and a new
/// snapshot and timestamp signed with the keys in `keys`, moved in as one set.
async fn publish(
    repo: &Path,
    keys: &Path,
    state: &Path,
    loaded: &Repository,
    proposal: &Proposal,
    lifetimes: Lifetimes,
) -> anyhow::Result<()> {
    let root = proposal.governing_root(loaded);
    // What nodes will check, checked first with tough's own code: a published set nobody can
    // verify would stop every node. A change of signers must also satisfy the current root.
    root.verify_role(&proposal.targets).map_err(|e| {
        anyhow!("the targets metadata does not verify ({e}); nothing was published")
    })?;
    if proposal.root.is_some() {
        loaded
            .root()
            .signed
            .verify_role(&proposal.targets)
            .map_err(|e| {
                anyhow!(
                    "the targets metadata lacks the current root's quorum ({e}); nothing was \
                     published"
                )
            })?;
    }
    let staging = release::staging_dir(repo)?;
    if let Some(new_root) = &proposal.root {
        write_new(
            &staging.join(format!("{}.root.json", new_root.signed.version)),
            &pretty(new_root)?,
        )?;
    }
    let targets = pretty(&proposal.targets)?;
    let name = if root.consistent_snapshot {
        format!("{}.targets.json", proposal.targets.signed.version)
    } else {
        "targets.json".to_owned()
    };
    write_new(&staging.join(name), &targets)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &targets);
    let targets_meta = tough::schema::Metafile {
        length: Some(targets.len() as u64),
        hashes: Some(tough::schema::Hashes {
            sha256: digest.as_ref().to_vec().into(),
            _extra: HashMap::new(),
        }),
        version: proposal.targets.signed.version,
        _extra: HashMap::new(),
    };
    release::sign_online_roles(
        loaded,
        root,
        &release::OnlineKeys::in_dir(keys),
        &staging,
        Some((lifetimes.snapshot, Some(targets_meta))),
        lifetimes.timestamp,
    )
    .await?;
    release::move_in(repo, &staging)?;
    release::remember(repo, state).await
}

/// Metadata as tough writes it: pretty JSON and a newline (what is signed is the canonical
/// form of `signed`, so the layout only has to match the snapshot's length and hash).
fn pretty<T: Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value).context("encoding metadata")?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes a file that must not exist yet (a symbolic link planted under its name is not
/// followed: whoever can write the repository directory cannot make a signer overwrite
/// another file), synced.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .with_context(|| format!("writing {}", path.display()))
}

fn check_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("--id {id}: not a proposal id (as `fabrik release proposals` lists them)");
    }
    Ok(())
}

fn proposal_path(repo: &Path, id: &str) -> PathBuf {
    proposals_dir(repo).join(format!("{id}.json"))
}

/// Writes through a new temporary file, synced and renamed: a proposal is never half written.
fn write_proposal(repo: &Path, id: &str, proposal: &Proposal) -> anyhow::Result<()> {
    let dir = proposals_dir(repo);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if std::fs::symlink_metadata(&dir).is_ok_and(|meta| !meta.is_dir()) {
        bail!(
            "{}: not a directory (a link is not followed)",
            dir.display()
        );
    }
    let path = proposal_path(repo, id);
    let temporary = dir.join(format!(".{id}.json.tmp"));
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", temporary.display())),
    }
    write_new(&temporary, &pretty(proposal)?)?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("moving {} to {}", temporary.display(), path.display()))?;
    std::fs::File::open(&dir)
        .and_then(|directory| directory.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Reads proposal `id`, which must be the content its id names.
fn read_proposal(repo: &Path, id: &str) -> anyhow::Result<Proposal> {
    check_id(id)?;
    let path = proposal_path(repo, id);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "{}: no proposal {id} (`fabrik release proposals --repo {}` lists them)",
            path.display(),
            repo.display()
        )
    })?;
    let proposal: Proposal = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a proposal", path.display()))?;
    if proposal.id()? != id {
        bail!(
            "{}: its content is not what the id {id} names: it was changed after it was \
             proposed; withdraw it",
            path.display()
        );
    }
    Ok(proposal)
}

fn remove_proposal(repo: &Path, id: &str) -> anyhow::Result<()> {
    let path = proposal_path(repo, id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// How many proposals are stored (whether or not they can still be published).
pub(crate) fn count(repo: &Path) -> anyhow::Result<usize> {
    Ok(stored_ids(repo)?.len())
}

/// The stored proposals, by id (oldest targets version first).
fn stored(repo: &Path) -> anyhow::Result<Vec<(String, anyhow::Result<Proposal>)>> {
    Ok(stored_ids(repo)?
        .into_iter()
        .map(|id| {
            let proposal = read_proposal(repo, &id);
            (id, proposal)
        })
        .collect())
}

/// The targets metadata of every stored proposal, read without checking it against its id or
/// its signatures: what it would publish if it could, whose files must stay (decision 0084).
/// A file that is not a proposal at all is an error.
pub(crate) fn proposed_targets(repo: &Path) -> anyhow::Result<Vec<Targets>> {
    stored_ids(repo)?
        .into_iter()
        .map(|id| {
            let path = proposal_path(repo, &id);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let proposal: Proposal = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a proposal", path.display()))?;
            Ok(proposal.targets.signed)
        })
        .collect()
}

/// The ids of the stored proposals, sorted, without reading them.
fn stored_ids(repo: &Path) -> anyhow::Result<Vec<String>> {
    let dir = proposals_dir(repo);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = name.strip_suffix(".json")?.to_owned();
            check_id(&id).ok().map(|()| id)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// A proposal as `fabrik release proposals` shows it.
#[derive(Debug, Serialize)]
pub(crate) struct ProposalView {
    pub(crate) id: String,
    pub(crate) targets_version: u64,
    /// Key ids (16 hex digits) whose signatures verify.
    pub(crate) signed_by: Vec<String>,
    /// Valid signatures from distinct keys of the root it is published under.
    pub(crate) signatures: u64,
    pub(crate) threshold: u64,
    /// With a new root: the current root's quorum, `[signatures, threshold]`.
    pub(crate) current_root_quorum: Option<(u64, u64)>,
    /// Why it cannot be published (stale, expired, changed after it was signed).
    pub(crate) problem: Option<String>,
    pub(crate) changes: Vec<String>,
}

/// Every stored proposal, checked against the published metadata.
pub(crate) async fn list(repo: &Path) -> anyhow::Result<Vec<ProposalView>> {
    let loaded = release::load_local(repo).await?;
    let mut views = Vec::new();
    for (id, proposal) in stored(repo)? {
        let mut view = ProposalView {
            id: id.clone(),
            targets_version: 0,
            signed_by: Vec::new(),
            signatures: 0,
            threshold: 0,
            current_root_quorum: None,
            problem: None,
            changes: Vec::new(),
        };
        let proposal = match proposal {
            Ok(proposal) => proposal,
            Err(e) => {
                view.problem = Some(printable(&format!("{e:#}")));
                views.push(view);
                continue;
            }
        };
        view.targets_version = proposal.targets.signed.version.get();
        view.changes = proposal.changes(&loaded);
        view.problem = proposal.stale(&loaded);
        match proposal.counted(&loaded) {
            Ok(counted) => {
                let mut signers: Vec<String> = counted
                    .governing
                    .iter()
                    .chain(counted.current.iter().flatten())
                    .map(short)
                    .collect();
                signers.sort();
                signers.dedup();
                view.signed_by = signers;
            }
            Err(e) => view.problem = view.problem.or(Some(printable(&format!("{e:#}")))),
        }
        if let Ok(pending) = proposal.pending(&id, &loaded) {
            view.signatures = pending.signatures;
            view.threshold = pending.threshold;
            view.current_root_quorum = pending.current;
        }
        views.push(view);
    }
    Ok(views)
}

/// Adds the signature of the targets key in `keys` to proposal `id` (after checking that the
/// file is the content the id names and every signature it has), and publishes it once it
/// has enough signatures and `keys` holds the snapshot and timestamp keys. Also publishes a
/// proposal that already has enough signatures, for a holder of those keys. Returns the
/// proposal's changes with the outcome.
pub(crate) async fn approve(
    repo: &Path,
    keys: &Path,
    id: &str,
    lifetimes: Lifetimes,
) -> anyhow::Result<(Vec<String>, Committed)> {
    check_id(id)?;
    let _lock = release::lock(repo).await?;
    let state = release::publisher_state(keys);
    let loaded = release::load_for_signing(repo, &state).await?;
    let mut proposal = read_proposal(repo, id)?;
    if let Some(problem) = proposal.stale(&loaded) {
        bail!("proposal {id} cannot be published: {problem}");
    }
    let before = proposal.pending(id, &loaded)?;
    let own = release::key_path(keys, "targets");
    if own.is_file() {
        let id_here = key_id_of(&own).await?;
        let signed_already = proposal
            .targets
            .signatures
            .iter()
            .any(|s| s.keyid == id_here);
        if signed_already && !before.ready() {
            bail!(
                "key {} has signed proposal {id} already; it is {}: other targets keys must \
                 sign",
                short(&id_here),
                before.standing()
            );
        }
        match proposal.signing_root(&loaded, &id_here) {
            Some(root) if !signed_already => {
                let signature = signature_by(&proposal.targets.signed, &root, &own).await?;
                proposal.targets.signatures.push(signature);
            }
            Some(_) => {}
            // Not a signer: it may still publish what others signed, with the online keys.
            None if before.ready() => {}
            None => bail!(
                "{}: key {} is not one of the targets keys that can sign proposal {id} (it is \
                 {})",
                own.display(),
                short(&id_here),
                before.standing()
            ),
        }
    } else if !before.ready() {
        bail!(
            "{}: no targets key here to sign proposal {id} with (it is {})",
            own.display(),
            before.standing()
        );
    }
    let changes = proposal.changes(&loaded);
    let committed = finish(repo, keys, &state, &loaded, id, proposal, lifetimes).await?;
    Ok((changes, committed))
}

/// Removes a proposal (nothing was published from it; its target files, named by no
/// metadata, are removed at the next publish: decision 0084).
pub(crate) async fn withdraw(repo: &Path, id: &str) -> anyhow::Result<()> {
    check_id(id)?;
    let _lock = release::lock(repo).await?;
    if !proposal_path(repo, id).is_file() {
        bail!("no proposal {id} in {}", repo.display());
    }
    remove_proposal(repo, id)
}

/// Publishes the first stored proposal that has enough signatures and still follows the
/// published metadata, with the snapshot and timestamp keys in `keys`: what a hub with
/// `[releases] keys` does at each pass, and `fabrik release refresh --online`. `state` is the
/// signer's memory. A proposal that does not verify or fails to publish is logged and passed
/// over. Returns the targets version published, if any.
pub(crate) async fn publish_ready(
    repo: &Path,
    keys: &Path,
    state: &Path,
    lifetimes: Lifetimes,
) -> anyhow::Result<Option<u64>> {
    if stored_ids(repo)?.is_empty() {
        return Ok(None);
    }
    let _lock = release::lock(repo).await?;
    let loaded = release::load_for_signing(repo, state).await?;
    for (id, proposal) in stored(repo)? {
        let Ok(proposal) = proposal else { continue };
        if proposal.stale(&loaded).is_some() {
            continue;
        }
        match proposal.pending(&id, &loaded) {
            Ok(pending) if pending.ready() => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(proposal = %id, error = %format!("{e:#}"), "A release proposal does not verify; it is not published.");
                continue;
            }
        }
        let version = proposal.targets.signed.version.get();
        if let Err(e) = publish(repo, keys, state, &loaded, &proposal, lifetimes).await {
            tracing::warn!(proposal = %id, error = %format!("{e:#}"), "A signed release proposal could not be published.");
            // What was loaded may be out of date now (a publish that got as far as moving
            // in): the next pass reloads rather than publish another on the same base.
            if published_since(repo, version).await {
                remove_proposal(repo, &id)?;
            }
            return Ok(None);
        }
        remove_proposal(repo, &id)?;
        return Ok(Some(version));
    }
    Ok(None)
}

/// Makes a new private key (PKCS#8 Ed25519, mode 0600, never overwriting) at `path` and its
/// public key, as TUF metadata lists it, at `<path>.pub` — what a root holder adds with
/// `fabrik release signers --add`. Returns the key id.
pub(crate) async fn keygen(path: &Path) -> anyhow::Result<(String, PathBuf)> {
    let public_path = PathBuf::from(format!("{}.pub", path.display()));
    if public_path.exists() {
        bail!(
            "{}: exists; keys are never overwritten",
            public_path.display()
        );
    }
    let (pkcs8, _) = crate::model_signature::generate().map_err(anyhow::Error::msg)?;
    crate::run::write_private(path, &pkcs8)
        .with_context(|| format!("creating {} (keys are never overwritten)", path.display()))?;
    let key = LocalKeySource {
        path: path.to_owned(),
    }
    .as_sign()
    .await
    .map_err(|e| anyhow!("{}: {e}", path.display()))?
    .tuf_key();
    let id = key.key_id().context("key id")?;
    let mut bytes = serde_json::to_vec_pretty(&key).context("encoding the public key")?;
    bytes.push(b'\n');
    write_new(&public_path, &bytes)?;
    Ok((hex(&id), public_path))
}

/// The public key in `file` (`KEY.pub`, as `fabrik release keygen` writes it) and its id, to
/// be added to `root`: a plain Ed25519 key (see [`public_key`]) that `root` does not list
/// already, so one person's key counts once.
fn new_public_key(file: &Path, root: &Root) -> anyhow::Result<(Decoded<Hex>, Key)> {
    let bytes =
        std::fs::read(file).with_context(|| format!("--add {}: cannot read", file.display()))?;
    let key: Key = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "--add {}: not a public key file (`fabrik release keygen` writes one as KEY.pub)",
            file.display()
        )
    })?;
    let Some(public) = public_key(&key) else {
        bail!(
            "--add {}: not a plain Ed25519 public key (as `fabrik release keygen` writes them, \
             without extra fields)",
            file.display()
        );
    };
    if let Some((listed, _)) = root
        .keys
        .iter()
        .find(|(_, listed)| public_key(listed) == Some(public))
    {
        let mut roles: Vec<String> = root
            .roles
            .iter()
            .filter(|(_, keys)| keys.keyids.contains(listed))
            .map(|(role, _)| role.to_string())
            .collect();
        roles.sort_unstable();
        bail!(
            "--add {}: the root lists this public key already (key {}, for {}); one person's \
             key counts once",
            file.display(),
            short(listed),
            if roles.is_empty() {
                "no role".to_owned()
            } else {
                roles.join(", ")
            }
        );
    }
    // Listed as the private key's holder computes it (lower-case hex, no other fields): a
    // key id hashes the key's JSON text, so the file's own spelling of the same bytes (upper-
    // case hex, say) would get an id the holder's signatures are never counted under.
    let key = Key::Ed25519 {
        keyval: tough::schema::key::Ed25519Key {
            public: public.to_vec().into(),
            _extra: HashMap::new(),
        },
        scheme: tough::schema::key::Ed25519Scheme::Ed25519,
        _extra: HashMap::new(),
    };
    let id = key
        .key_id()
        .with_context(|| format!("--add {}: key id", file.display()))?;
    Ok((id, key))
}

/// The one key of `keyids` (the `role` role's) whose id starts with `prefix`: at least 8 hex
/// digits, as `proposals` and `list` show them.
fn listed_key(prefix: &str, keyids: &[Decoded<Hex>], role: &str) -> anyhow::Result<Decoded<Hex>> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.len() < 8 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("--remove {prefix}: at least 8 hex digits of a key id");
    }
    let matching: Vec<&Decoded<Hex>> = keyids
        .iter()
        .filter(|id| hex(id).starts_with(&prefix))
        .collect();
    let [id] = matching.as_slice() else {
        bail!(
            "--remove {prefix}: {} of the {role} keys ({}) start so",
            matching.len(),
            keyids.iter().map(short).collect::<Vec<_>>().join(", ")
        );
    };
    Ok((*id).clone())
}

/// Changes the keys `root` lists for `role`: adds the public keys in `add` (see
/// [`new_public_key`]), removes the keys whose ids start with `remove` (see [`listed_key`]) and
/// sets the threshold, refusing a change that changes nothing, leaves the role no key or asks
/// for more signatures than it has keys. Keys no role uses any more leave the root.
pub(crate) fn change_role_keys(
    root: &mut Root,
    role_type: RoleType,
    add: &[PathBuf],
    remove: &[String],
    threshold: Option<u64>,
) -> anyhow::Result<()> {
    let mut role = root
        .roles
        .get(&role_type)
        .with_context(|| format!("the root names no {role_type} keys"))?
        .clone();
    let mut changed = false;
    for file in add {
        let (id, key) = new_public_key(file, root)?;
        root.keys.insert(id.clone(), key);
        role.keyids.push(id);
        changed = true;
    }
    for prefix in remove {
        let id = listed_key(prefix, &role.keyids, &role_type.to_string())?;
        role.keyids.retain(|listed| *listed != id);
        changed = true;
    }
    if let Some(threshold) = threshold {
        let threshold = NonZeroU64::new(threshold).context("--threshold: at least 1")?;
        changed |= threshold != role.threshold;
        role.threshold = threshold;
    }
    if !changed {
        bail!("nothing to change: give --add, --remove or --threshold");
    }
    if role.keyids.is_empty() {
        bail!("the {role_type} role would have no key left");
    }
    if role.threshold.get() > role.keyids.len() as u64 {
        bail!(
            "the {role_type} role would have {} key(s) for a threshold of {}: give a lower \
             --threshold (or --add more keys)",
            role.keyids.len(),
            role.threshold
        );
    }
    root.roles.insert(role_type, role);
    let used: Vec<Decoded<Hex>> = root
        .roles
        .values()
        .flat_map(|keys| keys.keyids.iter().cloned())
        .collect();
    root.keys.retain(|id, _| used.contains(id));
    Ok(())
}

/// Changes who signs the targets metadata: adds the public keys in `add` (files `keygen`
/// wrote), removes the keys whose ids start with `remove` (at least 8 hex digits, as
/// `proposals` and `list` show them), and sets the threshold. The new root (version + 1,
/// valid for `lifetimes.root`) is signed with the root keys at hand (`root_keys`) and waits,
/// as a proposal, with the current targets re-signed under it until enough of the new targets
/// keys, and of the current ones, have signed (the targets key in `keys` signs at once if
/// either root lists it). Returns the new root's version and the outcome.
pub(crate) async fn signers(
    repo: &Path,
    keys: &Path,
    root_keys: &crate::release_root_keys::RootKeyFiles,
    add: &[PathBuf],
    remove: &[String],
    threshold: Option<u64>,
    lifetimes: Lifetimes,
) -> anyhow::Result<(u64, Committed)> {
    let _lock = release::lock(repo).await?;
    let state = release::publisher_state(keys);
    let loaded = release::load_for_signing(repo, &state).await?;
    let current = loaded.root().signed.clone();
    let mut root = current.clone();
    root.version = release::next(root.version)?;
    root.expires = release::expires_in(lifetimes.root)?;
    change_role_keys(&mut root, RoleType::Targets, add, remove, threshold)?;
    if let Some(problem) = signers_change_problem(&current, &root) {
        bail!("{problem}");
    }
    let signed_root = crate::release_root_keys::sign_root(root, &current, root_keys, None)
        .await?
        .signed()
        .clone();
    let version = signed_root.signed.version.get();
    let mut targets = next_targets(&loaded, lifetimes)?;
    targets
        ._extra
        .insert(ROOT_BINDING.to_owned(), root_binding(&signed_root.signed)?);
    let committed = commit_targets(
        repo,
        keys,
        &loaded,
        Some(signed_root),
        targets,
        lifetimes,
        false,
    )
    .await?;
    Ok((version, committed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::load_local;
    use crate::release::tests::{forest, fresh_repository};

    /// The root version the repository publishes, as a node reads it.
    async fn published_root_version(repo: &Path) -> u64 {
        load_local(repo)
            .await
            .expect("load")
            .root()
            .signed
            .version
            .get()
    }

    /// A person's keys directory holding only their own targets key, and its public key.
    async fn signer(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let keys = dir.join(name);
        std::fs::create_dir_all(&keys).expect("dir");
        let (_, public) = keygen(&keys.join("targets.key")).await.expect("keygen");
        (keys, public)
    }

    /// A hub's keys directory: copies of the two online keys.
    fn hub(dir: &Path, keys: &Path) -> PathBuf {
        let hub = dir.join("hub");
        std::fs::create_dir_all(&hub).expect("dir");
        for role in ["snapshot", "timestamp"] {
            std::fs::copy(release::key_path(keys, role), release::key_path(&hub, role))
                .expect("copy");
        }
        hub
    }

    async fn propose_model(repo: &Path, keys: &Path, dir: &Path, name: &str) -> Committed {
        crate::release::tests::add_forest(repo, keys, dir, name)
            .await
            .1
    }

    fn target_names(loaded: &Repository) -> Vec<String> {
        let mut names: Vec<String> = loaded
            .all_targets()
            .map(|(name, _)| name.raw().to_owned())
            .collect();
        names.sort();
        names
    }

    /// Two of two: the root holder adds a second signer; nothing is published until that
    /// signer has signed too, and then the hub publishes; a release by one of them waits
    /// for the other, is refused when changed after signing, and nodes refuse the targets
    /// metadata with one signature.
    #[tokio::test]
    async fn a_release_needs_both_signers_and_nodes_refuse_one_signature() {
        let (dir, repo, alice) = fresh_repository().await;
        let (bob, bob_public) = signer(dir.path(), "bob").await;
        let hub = hub(dir.path(), &alice);
        let hub_state = dir.path().join("hub-state");

        let (root_version, committed) = signers(
            &repo,
            &alice,
            &crate::release::tests::root_keys_in(&alice),
            std::slice::from_ref(&bob_public),
            &[],
            Some(2),
            Lifetimes::default(),
        )
        .await
        .expect("signers");
        assert_eq!(root_version, 2);
        let pending = committed.pending.expect("waits for bob");
        assert_eq!((pending.signatures, pending.threshold), (1, 2));
        let loaded = load_local(&repo).await.expect("load");
        assert_eq!(
            loaded.root().signed.version.get(),
            1,
            "the new root waits with the proposal"
        );
        let listed = list(&repo).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert!(
            listed[0].changes[0].contains("targets signed by 2 of"),
            "{:?}",
            listed[0].changes
        );
        assert_eq!(listed[0].problem, None);

        // Bob signs, without the online keys: signed enough, published by the hub.
        let (_, committed) = approve(&repo, &bob, &pending.id, Lifetimes::default())
            .await
            .expect("bob approves");
        assert!(committed.pending.as_ref().is_some_and(Pending::ready));
        assert_eq!(published_root_version(&repo).await, 1);
        let published = publish_ready(&repo, &hub, &hub_state, Lifetimes::default())
            .await
            .expect("hub publishes");
        assert_eq!(published, Some(2));
        let loaded = load_local(&repo).await.expect("load");
        assert_eq!(loaded.root().signed.version.get(), 2);
        assert_eq!(
            loaded.root().signed.roles[&RoleType::Targets]
                .threshold
                .get(),
            2
        );
        assert_eq!(loaded.targets().signatures.len(), 2);
        assert!(list(&repo).await.expect("list").is_empty());

        // Alice releases a model: it waits for Bob.
        let committed = propose_model(&repo, &alice, dir.path(), "pump").await;
        let pending = committed.pending.expect("waits for bob");
        assert_eq!((pending.signatures, pending.threshold), (1, 2));
        assert!(target_names(&load_local(&repo).await.expect("load")).is_empty());
        let again = approve(&repo, &alice, &pending.id, Lifetimes::default())
            .await
            .expect_err("alice cannot sign twice");
        assert!(
            format!("{again:#}").contains("has signed proposal"),
            "{again:#}"
        );

        // What nodes do with a targets metadata only Alice signed: refuse it.
        let forged = dir.path().join("forged");
        copy_dir(&repo, &forged);
        let proposal = read_proposal(&forged, &pending.id).expect("read");
        let loaded = load_local(&forged).await.expect("load");
        let staging = release::staging_dir(&forged).expect("staging");
        let bytes = pretty(&proposal.targets).expect("json");
        std::fs::write(
            staging.join(format!("{}.targets.json", proposal.targets.signed.version)),
            &bytes,
        )
        .expect("write");
        let meta = tough::schema::Metafile {
            length: Some(bytes.len() as u64),
            hashes: Some(tough::schema::Hashes {
                sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
                    .as_ref()
                    .to_vec()
                    .into(),
                _extra: HashMap::new(),
            }),
            version: proposal.targets.signed.version,
            _extra: HashMap::new(),
        };
        release::sign_online_roles(
            &loaded,
            &loaded.root().signed,
            &release::OnlineKeys::in_dir(&alice),
            &staging,
            Some((Lifetimes::default().snapshot, Some(meta))),
            Lifetimes::default().timestamp,
        )
        .await
        .expect("sign");
        release::move_in(&forged, &staging).expect("move in");
        let refused = load_local(&forged).await.expect_err("one signature of two");
        assert!(
            format!("{refused:#}").to_lowercase().contains("threshold"),
            "{refused:#}"
        );

        // Changed after it was proposed (another node pattern): the id Bob reviewed no longer
        // names it.
        let path = proposal_path(&repo, &pending.id);
        let original = std::fs::read(&path).expect("read");
        let mut tampered: serde_json::Value = serde_json::from_slice(&original).expect("json");
        tampered["targets"]["signed"]["targets"]["pump.onnx"]["custom"]["fabrik"]["nodes"] =
            serde_json::json!(["attacker-*"]);
        std::fs::write(&path, serde_json::to_vec(&tampered).expect("json")).expect("write");
        let refused = approve(&repo, &bob, &pending.id, Lifetimes::default())
            .await
            .expect_err("changed after it was proposed");
        assert!(
            format!("{refused:#}").contains("is not what the id"),
            "{refused:#}"
        );
        assert!(list(&repo).await.expect("list")[0].problem.is_some());
        // Alice's signature damaged: named as the one that does not verify.
        let mut damaged: serde_json::Value = serde_json::from_slice(&original).expect("json");
        let signature = damaged["targets"]["signatures"][0]["sig"]
            .as_str()
            .expect("sig")
            .to_owned();
        let flipped = if signature.starts_with('0') { "1" } else { "0" };
        damaged["targets"]["signatures"][0]["sig"] =
            serde_json::json!(format!("{flipped}{}", &signature[1..]));
        std::fs::write(&path, serde_json::to_vec(&damaged).expect("json")).expect("write");
        let refused = approve(&repo, &bob, &pending.id, Lifetimes::default())
            .await
            .expect_err("a signature that does not verify");
        let alice_id = short(&key_id_of(&alice.join("targets.key")).await.expect("id"));
        assert!(
            format!("{refused:#}").contains(&format!("signature by key {alice_id}")),
            "{refused:#}"
        );
        std::fs::write(&path, &original).expect("restore");

        // Bob signs with the online keys at hand: published at once.
        for role in ["snapshot", "timestamp"] {
            std::fs::copy(release::key_path(&hub, role), release::key_path(&bob, role))
                .expect("copy");
        }
        let (changes, committed) = approve(&repo, &bob, &pending.id, Lifetimes::default())
            .await
            .expect("bob approves");
        assert!(changes[0].starts_with("+ \"pump.onnx\" {"), "{changes:?}");
        assert!(committed.pending.is_none());
        let loaded = load_local(&repo).await.expect("load");
        assert_eq!(target_names(&loaded), ["pump.onnx"]);
        assert_eq!(loaded.targets().signatures.len(), 2);

        // Two proposals on the same version: the second is stale once the first lands.
        let first = propose_model(&repo, &alice, dir.path(), "fan").await;
        let second = propose_model(&repo, &alice, dir.path(), "valve").await;
        let (first, second) = (
            first.pending.expect("first"),
            second.pending.expect("second"),
        );
        approve(&repo, &bob, &first.id, Lifetimes::default())
            .await
            .expect("first");
        let stale = approve(&repo, &bob, &second.id, Lifetimes::default())
            .await
            .expect_err("stale");
        assert!(
            format!("{stale:#}").contains("propose the change again"),
            "{stale:#}"
        );
        assert_eq!(
            target_names(&load_local(&repo).await.expect("load")),
            ["fan.onnx", "pump.onnx"]
        );
        withdraw(&repo, &second.id).await.expect("withdraw");
        assert!(list(&repo).await.expect("list").is_empty());

        // The root key's holder (here also a signer) cannot drop the other signer alone: the
        // change waits for the current quorum, which Bob completes.
        let bob_id = short(&key_id_of(&bob.join("targets.key")).await.expect("id"));
        let (_, committed) = signers(
            &repo,
            &alice,
            &crate::release::tests::root_keys_in(&alice),
            &[],
            std::slice::from_ref(&bob_id),
            Some(1),
            Lifetimes::default(),
        )
        .await
        .expect("signers");
        let pending = committed.pending.expect("waits for the current quorum");
        assert_eq!((pending.signatures, pending.threshold), (1, 1));
        assert_eq!(pending.current, Some((1, 2)));
        assert!(!pending.ready());
        assert_eq!(published_root_version(&repo).await, 2);
        let (_, committed) = approve(&repo, &bob, &pending.id, Lifetimes::default())
            .await
            .expect("bob agrees to leave");
        assert!(committed.pending.is_none(), "{committed:?}");
        let loaded = load_local(&repo).await.expect("load");
        assert_eq!(loaded.root().signed.version.get(), 3);
        // The withdrawn proposal's file went at that publish (decision 0084); the released
        // ones stay.
        let sha256 = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &forest()).as_ref());
        for (name, kept) in [("valve", false), ("fan", true), ("pump", true)] {
            assert_eq!(
                repo.join(format!("targets/{sha256}.{name}.onnx")).is_file(),
                kept,
                "{name}"
            );
        }
        assert_eq!(
            loaded.root().signed.roles[&RoleType::Targets].keyids.len(),
            1
        );
        let back = signers(
            &repo,
            &alice,
            &crate::release::tests::root_keys_in(&alice),
            std::slice::from_ref(&bob.join("targets.key.pub")),
            &[],
            Some(2),
            Lifetimes::default(),
        )
        .await
        .expect("bob back")
        .1
        .pending
        .expect("waits for bob");
        approve(&repo, &bob, &back.id, Lifetimes::default())
            .await
            .expect("bob signs");
        assert_eq!(
            load_local(&repo).await.expect("load").root().signed.roles[&RoleType::Targets]
                .keyids
                .len(),
            2
        );

        // One targets key of two is not replaced by rotation alone (decision 0083).
        let refused = crate::release_keys::rotate(
            &repo,
            &alice,
            "targets",
            &crate::release::tests::root_keys_in(&alice),
            Lifetimes::default(),
        )
        .await
        .expect_err("rotation re-signs the targets with one key");
        assert!(
            format!("{refused:#}").contains("release signers"),
            "{refused:#}"
        );
    }

    /// Under two signers, the root, snapshot and timestamp keys are replaced by the root
    /// key's holder, who holds no targets key: the targets metadata both signed stays as
    /// published and verifies under each new root, and a release proposed before the
    /// replacements is published after them. The targets key itself is changed through the
    /// signers, not replaced alone.
    #[tokio::test]
    async fn the_other_roles_keys_are_replaced_while_two_people_sign_the_targets() {
        let (dir, repo, alice) = fresh_repository().await;
        let (bob, bob_public) = signer(dir.path(), "bob").await;
        let (_, committed) = signers(
            &repo,
            &alice,
            &crate::release::tests::root_keys_in(&alice),
            std::slice::from_ref(&bob_public),
            &[],
            Some(2),
            Lifetimes::default(),
        )
        .await
        .expect("signers");
        let pending = committed.pending.expect("waits for bob");
        approve(&repo, &bob, &pending.id, Lifetimes::default())
            .await
            .expect("bob approves");
        let hub = hub(dir.path(), &alice);
        let hub_state = dir.path().join("hub-state");
        publish_ready(&repo, &hub, &hub_state, Lifetimes::default())
            .await
            .expect("hub publishes");
        let waiting = propose_model(&repo, &alice, dir.path(), "pump")
            .await
            .pending
            .expect("waits for bob");
        let waiting_version = read_proposal(&repo, &waiting.id)
            .expect("read")
            .targets
            .signed
            .version
            .get();

        // The root key's holder: root and the online keys, no targets key.
        let custodian = dir.path().join("custodian");
        std::fs::create_dir_all(&custodian).expect("dir");
        for role in ["root", "snapshot", "timestamp"] {
            std::fs::copy(
                release::key_path(&alice, role),
                release::key_path(&custodian, role),
            )
            .expect("copy");
        }
        let refused = crate::release_keys::rotate(
            &repo,
            &custodian,
            "targets",
            &crate::release::tests::root_keys_in(&custodian),
            Lifetimes::default(),
        )
        .await
        .expect_err("two keys sign the targets");
        assert!(
            format!("{refused:#}").contains("fabrik release signers"),
            "{refused:#}"
        );
        let before = load_local(&repo).await.expect("load");
        let signed_targets = serde_json::to_value(before.targets()).expect("json");
        assert_eq!(before.targets().signatures.len(), 2);
        let mut root_version = before.root().signed.version.get();
        for role in ["root", "snapshot", "timestamp"] {
            let replaced = release::key_path(&custodian, role);
            let old_id = key_id_of(&replaced).await.expect("id");
            if role == "timestamp" {
                // The compromised hub's key is not handed over: it signs nothing here.
                std::fs::remove_file(&replaced).expect("not held");
            }
            let rotation = crate::release_keys::rotate(
                &repo,
                &custodian,
                role,
                &crate::release::tests::root_keys_in(&custodian),
                Lifetimes::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("rotating {role}: {e:#}"));
            assert_eq!(rotation.retired.is_some(), role != "timestamp", "{role}");
            root_version += 1;
            assert_eq!(rotation.root_version, root_version, "{role}");
            // Verified from 1.root.json through every root since, as a node does.
            let loaded = load_local(&repo)
                .await
                .unwrap_or_else(|e| panic!("after rotating {role}: {e:#}"));
            let root = &loaded.root().signed;
            assert_eq!(root.version.get(), root_version);
            let role_type = release::ROLES
                .iter()
                .find(|(_, name)| *name == role)
                .map(|(role_type, _)| *role_type)
                .expect("a role");
            assert!(!root.roles[&role_type].keyids.contains(&old_id), "{role}");
            assert_eq!(
                serde_json::to_value(loaded.targets()).expect("json"),
                signed_targets,
                "{role}: the targets metadata both signed is the one published"
            );
            if role != "root" {
                std::fs::copy(&replaced, release::key_path(&hub, role)).expect("to the hub");
            }
        }

        // Bob signs the release proposed before the replacements; the hub, given the new
        // online keys, publishes it.
        approve(&repo, &bob, &waiting.id, Lifetimes::default())
            .await
            .expect("bob approves");
        let published = publish_ready(&repo, &hub, &hub_state, Lifetimes::default())
            .await
            .expect("hub publishes");
        assert_eq!(published, Some(waiting_version));
        let loaded = load_local(&repo).await.expect("load");
        assert_eq!(target_names(&loaded), ["pump.onnx"]);
        assert_eq!(loaded.targets().signatures.len(), 2);
        assert_eq!(loaded.root().signed.version.get(), root_version);
        // Its file, stored when it was proposed and named by no published metadata until now,
        // was kept through every publish in between (decision 0084).
        let (name, _) = loaded.all_targets().next().expect("pump");
        assert_eq!(
            crate::release::tests::verified_target(&loaded, name).await,
            forest()
        );
    }

    #[tokio::test]
    async fn a_change_of_signers_that_cannot_work_is_refused() {
        let (dir, repo, keys) = fresh_repository().await;
        let (_, bob_public) = signer(dir.path(), "bob").await;
        let attempt = |add: Vec<PathBuf>, remove: Vec<String>, threshold: Option<u64>| {
            let (repo, keys) = (repo.clone(), keys.clone());
            async move {
                signers(
                    &repo,
                    &keys,
                    &crate::release::tests::root_keys_in(&keys),
                    &add,
                    &remove,
                    threshold,
                    Lifetimes::default(),
                )
                .await
                .map(drop)
                .map_err(|e| format!("{e:#}"))
            }
        };
        let error = attempt(vec![bob_public.clone()], vec![], Some(3))
            .await
            .expect_err("3 of 2");
        assert!(error.contains("2 key(s) for a threshold of 3"), "{error}");
        let error = attempt(vec![], vec!["00000000".into()], None)
            .await
            .expect_err("no such key");
        assert!(error.contains("0 of the targets keys"), "{error}");
        let error = attempt(vec![], vec![], None).await.expect_err("nothing");
        assert!(error.contains("nothing to change"), "{error}");
        let error = attempt(vec![keys.join("targets.key")], vec![], None)
            .await
            .expect_err("a private key file");
        assert!(error.contains("not a public key file"), "{error}");
        // Bob's public key with an extra field has another key id: refused, or one person's
        // signature would count twice.
        let mut dressed: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&bob_public).expect("read")).expect("json");
        dressed["keyval"]["note"] = serde_json::json!("bob again");
        let dressed_path = dir.path().join("dressed.pub");
        std::fs::write(&dressed_path, dressed.to_string()).expect("write");
        let error = attempt(vec![dressed_path], vec![], None)
            .await
            .expect_err("extra fields");
        assert!(error.contains("not a plain Ed25519"), "{error}");
        let error = attempt(vec![bob_public.clone(), bob_public.clone()], vec![], None)
            .await
            .expect_err("the same key twice");
        assert!(error.contains("lists this public key already"), "{error}");
        let alice = short(&key_id_of(&keys.join("targets.key")).await.expect("id"));
        let error = attempt(vec![], vec![alice], None)
            .await
            .expect_err("the only key");
        assert!(error.contains("no key left"), "{error}");
        assert!(
            list(&repo).await.expect("list").is_empty(),
            "nothing stored"
        );
        assert_eq!(published_root_version(&repo).await, 1);
        // Adding a key at threshold 1: the publisher's own signature suffices, published at once.
        let (_, committed) = signers(
            &repo,
            &keys,
            &crate::release::tests::root_keys_in(&keys),
            &[bob_public],
            &[],
            None,
            Lifetimes::default(),
        )
        .await
        .expect("add bob at 1 of 2");
        assert!(committed.pending.is_none());
        let loaded = load_local(&repo).await.expect("load");
        assert_eq!(loaded.root().signed.version.get(), 2);
        assert_eq!(
            loaded.root().signed.roles[&RoleType::Targets].keyids.len(),
            2
        );
    }

    /// The targets signatures cover the new root a change of signers carries: the quorum's
    /// signatures on one change of signers do not publish another root.
    #[tokio::test]
    async fn signatures_on_one_change_of_signers_do_not_carry_another_root() {
        let (dir, repo, alice) = fresh_repository().await;
        let (bob, bob_public) = signer(dir.path(), "bob").await;
        let (_, carol_public) = signer(dir.path(), "carol").await;
        let hub = hub(dir.path(), &alice);
        let (_, added) = signers(
            &repo,
            &alice,
            &crate::release::tests::root_keys_in(&alice),
            &[bob_public, carol_public],
            &[],
            Some(1),
            Lifetimes::default(),
        )
        .await
        .expect("bob and carol at 1 of 3");
        assert!(added.pending.is_none(), "alice's signature suffices");
        let real = signers(
            &repo,
            &alice,
            &crate::release::tests::root_keys_in(&alice),
            &[],
            &[],
            Some(2),
            Lifetimes::default(),
        )
        .await
        .expect("2 of 3")
        .1
        .pending
        .expect("waits for a second signer");
        let approved = approve(&repo, &bob, &real.id, Lifetimes::default())
            .await
            .expect("bob signs")
            .1;
        assert!(approved.pending.as_ref().is_some_and(Pending::ready));
        // Bob swaps in another root the root key once signed (the same keys at 1 of 3, say),
        // which nobody approved, keeping the signatures.
        let genuine = read_proposal(&repo, &real.id).expect("read");
        let loaded = load_local(&repo).await.expect("load");
        let mut other = genuine.root.clone().expect("root");
        other
            .signed
            .roles
            .get_mut(&RoleType::Targets)
            .expect("targets")
            .threshold = NonZeroU64::MIN;
        other.signatures.clear();
        let other = SignedRole::new(
            other.signed.clone(),
            &KeyHolder::Root(other.signed.clone()),
            &release::key_sources(&alice, &["root"]).expect("root key"),
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .await
        .expect("sign")
        .signed()
        .clone();
        let forged = Proposal {
            root: Some(other),
            ..genuine
        };
        let forged_id = forged.id().expect("id");
        write_proposal(&repo, &forged_id, &forged).expect("write");
        assert_eq!(
            forged.stale(&loaded).as_deref(),
            Some(
                "its targets metadata does not name its new root, so their signatures do not \
                 cover it"
            )
        );
        remove_proposal(&repo, &real.id).expect("remove the genuine one");
        let published = publish_ready(&repo, &hub, &dir.path().join("state"), Lifetimes::default())
            .await
            .expect("pass");
        assert_eq!(published, None, "the hub publishes no root nobody approved");
    }

    #[test]
    fn names_and_fields_cannot_hide_lines_on_a_terminal() {
        let shown = quoted("pump\u{1b}[2K\rfan\u{202e}.onnx\u{7f}\u{85}");
        for escaped in ["\\u001b", "\\r", "\\u{202e}", "\\u{007f}", "\\u{0085}"] {
            assert!(shown.contains(escaped), "{shown} lacks {escaped}");
        }
        assert!(!shown.chars().any(char::is_control), "{shown}");
        let field = printable("{\"nodes\":[\"line-\u{1b}[1A\"]}");
        assert!(!field.chars().any(char::is_control), "{field}");
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("dir");
        for entry in std::fs::read_dir(from).expect("read").flatten() {
            let target = to.join(entry.file_name());
            if entry.path().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }
}
