//! Replacing a role's key in a release repository (decision 0034): a new root lists the new
//! key in place of the old one, signed so that nodes walking from the root they hold accept
//! it, and the metadata that key signs is signed again with it, all published at once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{RoleType, Root};

use crate::release::{
    Lifetimes, OnlineKeys, ROLES, editor_for, expires_in, key_path, load_for_signing, lock,
    move_in, next, publisher_state, remember, sign_online_roles, staging_dir,
};
use crate::release_root_keys::{RootKeyFiles, sign_root};

/// What a key replacement did.
#[derive(Debug)]
pub(crate) struct Rotation {
    /// The root version that lists the new key.
    pub(crate) root_version: u64,
    /// The new key's id (hex), as the root lists it.
    pub(crate) key_id: String,
    /// Where the replaced key was moved (to be destroyed, or kept offline for forensics);
    /// `None` when no key file was there (an interrupted run had moved it already, or, for
    /// the snapshot or timestamp, it was never here).
    pub(crate) retired: Option<PathBuf>,
    /// Whether this finished a replacement an earlier run had published but not completed.
    pub(crate) resumed: bool,
}

fn role_type(role: &str) -> anyhow::Result<RoleType> {
    ROLES
        .iter()
        .find(|(_, name)| *name == role)
        .map(|(role_type, _)| *role_type)
        .ok_or_else(|| anyhow!("--role {role}: expected root, targets, snapshot or timestamp"))
}

async fn key_id(path: &Path) -> anyhow::Result<String> {
    Ok(crate::release::hex(
        &crate::release_proposals::key_id_of(path).await?,
    ))
}

/// Replaces `role`'s key: a new key (`<keys>/<role>.key`), the old one kept as
/// `<role>.key.retired-<unix seconds>`. The new root (version + 1, valid for
/// `lifetimes.root`) is signed with the root keys at hand (`root_keys`: as many as the current
/// root asks for and the new one) — for the root role, the key in `<keys>/root.key` is the
/// one replaced, and the new key signs too, as a node verifies against both roots. For the
/// targets role, targets, snapshot and timestamp are signed again, the targets with the new
/// key (refused while several keys sign the targets); for the snapshot, the snapshot and the
/// timestamp; for the timestamp, the timestamp alone — the rotated role with its new key, and only the keys of
/// the roles signed again are needed besides the root keys. A run interrupted after
/// publishing is finished by running it again; a key file is never deleted or overwritten.
pub(crate) async fn rotate(
    repo: &Path,
    keys: &Path,
    role: &str,
    root_keys: &RootKeyFiles,
    lifetimes: Lifetimes,
) -> anyhow::Result<Rotation> {
    let role_type = role_type(role)?;
    let _lock = lock(repo).await?;
    let state = publisher_state(keys);
    let loaded = load_for_signing(repo, &state).await?;
    let old_root = loaded.root().signed.clone();
    if role_type == RoleType::Targets
        && let Some(targets) = old_root.roles.get(&RoleType::Targets)
        && (targets.keyids.len() > 1 || targets.threshold.get() > 1)
    {
        bail!(
            "the targets are signed by {} of {} keys (decision 0075): `fabrik release rotate` \
             replaces one targets key and re-signs with it; change the targets signers with \
             `fabrik release signers` (add the new key, then remove the old one)",
            targets.threshold,
            targets.keyids.len()
        );
    }
    let current = key_path(keys, role);
    let pending = keys.join(format!("{role}.key.next"));
    let listed = |root: &Root, role_type: RoleType| -> Vec<String> {
        root.roles
            .get(&role_type)
            .map(|keys| {
                keys.keyids
                    .iter()
                    .map(|id| crate::release::hex(id))
                    .collect()
            })
            .unwrap_or_default()
    };
    // Another role's replacement that was published but not finished: its new key is the
    // one the root lists, so signing with the old file would fail (or, for the root, sign
    // nothing the nodes accept). It is finished first, by name.
    for (other_type, other) in ROLES {
        let other_pending = keys.join(format!("{other}.key.next"));
        if other != role
            && other_pending.is_file()
            && listed(&old_root, other_type).contains(&key_id(&other_pending).await?)
        {
            bail!(
                "the {other} key's replacement was published but not finished: run `fabrik \
                 release rotate --role {other}` first"
            );
        }
    }
    if pending.is_file() {
        // A key from an earlier run: published already (finish the swap of files), or not.
        // An unpublished one is used now rather than deleted: a root that listed it might
        // have been published and then taken back by hand, and nodes may trust it.
        if listed(&old_root, role_type).contains(&key_id(&pending).await?) {
            let retired = retire(&current, &pending)?;
            return Ok(Rotation {
                root_version: old_root.version.get(),
                key_id: key_id(&current).await?,
                retired,
                resumed: true,
            });
        }
    } else {
        let (pkcs8, _) = crate::model_signature::generate().map_err(anyhow::Error::msg)?;
        crate::run::write_private(&pending, &pkcs8)
            .with_context(|| format!("creating {}", pending.display()))?;
        // The key is on disk before any root lists it.
        if let Ok(directory) = std::fs::File::open(keys) {
            let _ = directory.sync_all();
        }
    }
    // The replaced snapshot or timestamp key signs nothing here: its holder (a hub that may
    // have been compromised) need not hand it over. The root keys sign the new root, and a
    // targets key is re-signed with through tough's editor.
    let signs_again = matches!(role_type, RoleType::Root | RoleType::Targets);
    if signs_again && !current.is_file() {
        bail!("{}: no {role} key here to replace", current.display());
    }
    let new_key = LocalKeySource {
        path: pending.clone(),
    }
    .as_sign()
    .await
    .map_err(|e| anyhow!("the new {role} key: {e}"))?
    .tuf_key();
    let new_id = new_key.key_id().context("key id")?;

    let mut new_root = old_root.clone();
    new_root.version = next(old_root.version)?;
    new_root.expires = expires_in(lifetimes.root)?;
    let entry = new_root
        .roles
        .get_mut(&role_type)
        .ok_or_else(|| anyhow!("the root names no {role} role"))?;
    let replaced = if role_type == RoleType::Root {
        // Of several root keys (decision 0088), the one in `<keys>/root.key`, its holder's:
        // the others' holders replace theirs from their own keys directories.
        let own = crate::release_proposals::key_id_of(&current).await?;
        let Some(at) = entry.keyids.iter().position(|id| *id == own) else {
            bail!(
                "{}: key {} is not one of the root keys the root lists: is root.key the \
                 repository's root key? Nothing was published",
                current.display(),
                crate::release_proposals::short(&own)
            );
        };
        entry.keyids[at] = new_id.clone();
        vec![own]
    } else {
        std::mem::replace(&mut entry.keyids, vec![new_id.clone()])
    };
    new_root.keys.insert(new_id.clone(), new_key);
    // A replaced key leaves the root unless another role still uses it.
    let in_use: HashSet<_> = new_root
        .roles
        .values()
        .flat_map(|keys| keys.keyids.iter().cloned())
        .collect();
    for id in replaced {
        if !in_use.contains(&id) {
            new_root.keys.remove(&id);
        }
    }

    let staging = staging_dir(repo)?;
    // Signed by a threshold of the current root keys and of the new root's (for the root
    // role, the new key among them), as a node checks it; refused before anything is moved
    // in, and a refused root's staging is never published.
    let signers = if role_type == RoleType::Root {
        root_keys.with(&pending)
    } else {
        root_keys.clone()
    };
    sign_root(new_root.clone(), &old_root, &signers, Some(&staging)).await?;
    if role_type == RoleType::Snapshot || role_type == RoleType::Timestamp {
        // What the replaced key signed is signed again under the new root, and published with
        // it (the root moved in just before the timestamp), so the two arrive together. The
        // targets metadata stays as published: the keys that signed it are the ones the new
        // root lists, so it verifies under it, and it may carry signatures of several people
        // (decision 0075) that this signer could not make again.
        let mut online = OnlineKeys::in_dir(keys);
        if role_type == RoleType::Snapshot {
            online.snapshot = pending.clone();
        } else {
            online.timestamp = pending.clone();
        }
        let snapshot = (role_type == RoleType::Snapshot).then_some((lifetimes.snapshot, None));
        sign_online_roles(
            &loaded,
            &new_root,
            &online,
            &staging,
            snapshot,
            lifetimes.timestamp,
        )
        .await
        .with_context(|| format!("signing under the new root with the new {role} key"))?;
    } else if role_type == RoleType::Targets {
        // What the replaced key signed is signed again under the new root, and published with
        // it (the root moved in just before the timestamp), so the two arrive together.
        let root_path = staging.join(format!("{}.root.json", new_root.version));
        let (editor, _) = editor_for(loaded, &root_path, lifetimes).await?;
        let sources: Vec<Box<dyn KeySource>> = ["targets", "snapshot", "timestamp"]
            .into_iter()
            .map(|name| {
                let path = if name == role {
                    pending.clone()
                } else {
                    key_path(keys, name)
                };
                Box::new(LocalKeySource { path }) as Box<dyn KeySource>
            })
            .collect();
        let signed = editor
            .sign(&sources)
            .await
            .context("signing targets, snapshot and timestamp under the new root")?;
        signed
            .write(&staging)
            .await
            .context("writing the signed metadata")?;
    }
    move_in(repo, &staging)?;
    let retired = retire(&current, &pending)?;
    remember(repo, &state).await?;
    Ok(Rotation {
        root_version: new_root.version.get(),
        key_id: crate::release::hex(&new_id),
        retired,
        resumed: false,
    })
}

/// Moves the replaced key aside (returning where, unless it was moved already) and the new
/// one into its place.
fn retire(current: &Path, pending: &Path) -> anyhow::Result<Option<PathBuf>> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or_default();
    let mut retired = current.with_extension(format!("key.retired-{seconds}"));
    let mut n = 1;
    while retired.exists() {
        retired = current.with_extension(format!("key.retired-{seconds}-{n}"));
        n += 1;
    }
    let moved = if current.is_file() {
        std::fs::rename(current, &retired)
            .with_context(|| format!("moving {} aside", current.display()))?;
        Some(retired)
    } else {
        None
    };
    std::fs::rename(pending, current)
        .with_context(|| format!("moving {} into place", pending.display()))?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::load_local;
    use crate::release::tests::fresh_repository;
    use std::time::Duration;
    use tough::editor::signed::SignedRole;
    use tough::schema::KeyHolder;

    async fn publish(repo: &Path, keys: &Path, dir: &Path, name: &str) -> anyhow::Result<()> {
        crate::release::tests::try_add_forest(repo, keys, dir, name)
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn every_role_key_is_replaced_and_the_chain_verifies_from_the_first_root() {
        let (dir, repo, keys) = fresh_repository().await;
        // The root's in the middle: the roots after it are signed with its new key.
        for (round, role) in ["targets", "root", "snapshot", "timestamp"]
            .into_iter()
            .enumerate()
        {
            let before = key_id(&key_path(&keys, role)).await.expect("id");
            let rotation = rotate(
                &repo,
                &keys,
                role,
                &crate::release::tests::root_keys_in(&keys),
                Lifetimes::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("rotating {role}: {e:#}"));
            assert!(!rotation.resumed);
            assert_eq!(rotation.root_version, round as u64 + 2);
            assert_ne!(rotation.key_id, before, "{role}: a new key");
            assert_eq!(
                key_id(&key_path(&keys, role)).await.expect("id"),
                rotation.key_id
            );
            let retired = rotation.retired.clone().expect("moved aside");
            assert_eq!(key_id(&retired).await.expect("id"), before);
            // Verified from 1.root.json through every root since, as a node does.
            let loaded = load_local(&repo).await.expect("verifies");
            let root = &loaded.root().signed;
            assert_eq!(root.version.get(), rotation.root_version);
            let listed: Vec<String> = root.roles[&role_type(role).expect("role")]
                .keyids
                .iter()
                .map(|id| crate::release::hex(id))
                .collect();
            assert_eq!(listed, std::slice::from_ref(&rotation.key_id));
            assert!(
                !root.keys.keys().any(|id| crate::release::hex(id) == before),
                "{role}: the replaced key leaves the root"
            );
            publish(&repo, &keys, dir.path(), &format!("after-{role}"))
                .await
                .unwrap_or_else(|e| panic!("publishing after rotating {role}: {e:#}"));
        }

        // The replaced targets key signs nothing any more.
        let stale = dir.path().join("stale-keys");
        std::fs::create_dir_all(&stale).expect("dir");
        for role in ["snapshot", "timestamp"] {
            std::fs::copy(key_path(&keys, role), key_path(&stale, role)).expect("copy");
        }
        let retired = std::fs::read_dir(&keys)
            .expect("keys")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains("targets.key.retired-"))
            .expect("retired targets key");
        std::fs::copy(&retired, key_path(&stale, "targets")).expect("copy");
        let refused = publish(&repo, &stale, dir.path(), "with-the-old-key").await;
        assert!(refused.is_err(), "the replaced key no longer signs targets");
        assert!(role_type("owner").is_err());
    }

    #[tokio::test]
    async fn a_replacement_published_but_not_finished_is_finished_by_running_it_again() {
        let (_dir, repo, keys) = fresh_repository().await;
        let rotation = rotate(
            &repo,
            &keys,
            "targets",
            &crate::release::tests::root_keys_in(&keys),
            Lifetimes::default(),
        )
        .await
        .expect("rotate");
        // As if the run had stopped after publishing, before swapping the key files.
        let current = key_path(&keys, "targets");
        std::fs::rename(&current, keys.join("targets.key.next")).expect("back to pending");
        let retired = rotation.retired.clone().expect("moved aside");
        let old_id = key_id(&retired).await.expect("id");
        std::fs::rename(&retired, &current).expect("old key back");
        let again = rotate(
            &repo,
            &keys,
            "targets",
            &crate::release::tests::root_keys_in(&keys),
            Lifetimes::default(),
        )
        .await
        .expect("finish");
        assert!(again.resumed);
        // Kept under the name of the second run's second, which may not be the first's.
        let kept = again.retired.clone().expect("moved aside again");
        assert!(kept.is_file(), "the replaced key is kept");
        assert_eq!(key_id(&kept).await.expect("id"), old_id);
        assert_eq!(again.root_version, rotation.root_version, "no new root");
        assert_eq!(key_id(&current).await.expect("id"), rotation.key_id);
        assert!(!keys.join("targets.key.next").exists());
    }

    #[tokio::test]
    async fn a_root_signed_with_another_root_key_is_refused_before_it_is_published() {
        let (dir, repo, keys) = fresh_repository().await;
        let impostor = dir.path().join("impostor.key");
        let (pkcs8, _) = crate::model_signature::generate().expect("key");
        crate::run::write_private(&impostor, &pkcs8).expect("write");
        std::fs::rename(key_path(&keys, "root"), dir.path().join("real-root.key")).expect("away");
        std::fs::copy(&impostor, key_path(&keys, "root")).expect("wrong root key");
        for refused in [
            rotate(
                &repo,
                &keys,
                "targets",
                &crate::release::tests::root_keys_in(&keys),
                Lifetimes::default(),
            )
            .await
            .map(drop),
            crate::release::refresh_root(
                &repo,
                &keys,
                &crate::release::tests::root_keys_in(&keys),
                Duration::from_secs(3600),
            )
            .await
            .map(drop),
        ] {
            let refused = refused.expect_err("a root no node could verify");
            assert!(format!("{refused:#}").contains("root key"), "{refused:#}");
        }
        let loaded = load_local(&repo)
            .await
            .expect("the repository still verifies");
        assert_eq!(loaded.root().signed.version.get(), 1);
        // The unused replacement key stays for the next run, never deleted.
        assert!(keys.join("targets.key.next").is_file());

        // A root that lists (and is signed by) only a key the current root does not know
        // signs without complaint; the check before publishing refuses it.
        let current = loaded.root().signed.clone();
        let key = LocalKeySource {
            path: impostor.clone(),
        }
        .as_sign()
        .await
        .expect("key")
        .tuf_key();
        let id = key.key_id().expect("id");
        let mut new_root = current.clone();
        new_root.version = next(current.version).expect("version");
        new_root.keys.insert(id.clone(), key);
        new_root
            .roles
            .get_mut(&RoleType::Root)
            .expect("root role")
            .keyids = vec![id];
        let signed = SignedRole::new(
            new_root.clone(),
            &KeyHolder::Root(new_root),
            &[Box::new(LocalKeySource { path: impostor }) as Box<dyn KeySource>],
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .await
        .expect("tough signs it");
        let refused = crate::release::check_new_root(&current, signed.signed())
            .expect_err("not signed by the current root key");
        assert!(
            format!("{refused:#}").contains("Nothing was published"),
            "{refused:#}"
        );
    }

    #[tokio::test]
    async fn a_publish_stopped_while_moving_in_is_finished_by_the_next_signer() {
        let (dir, repo, keys) = fresh_repository().await;
        rotate(
            &repo,
            &keys,
            "targets",
            &crate::release::tests::root_keys_in(&keys),
            Lifetimes::default(),
        )
        .await
        .expect("rotate");
        // A second rotation made on a copy, its files staged in the repository by hand: the
        // new root moved in, the rest left in a staging directory marked complete, as a signer
        // stopped mid-way leaves them.
        let copy = dir.path().join("copy");
        copy_dir(&repo, &copy);
        let copy_keys = dir.path().join("copy-keys");
        copy_dir(&keys, &copy_keys);
        rotate(
            &copy,
            &copy_keys,
            "timestamp",
            &crate::release::tests::root_keys_in(&copy_keys),
            Lifetimes::default(),
        )
        .await
        .expect("rotate the copy");
        let staging = repo.join(".staging");
        std::fs::create_dir_all(&staging).expect("staging");
        for entry in std::fs::read_dir(copy.join("metadata"))
            .expect("read")
            .flatten()
        {
            let name = entry.file_name();
            if !repo.join("metadata").join(&name).exists() || name == "timestamp.json" {
                std::fs::copy(entry.path(), staging.join(&name)).expect("stage");
            }
        }
        std::fs::write(staging.join(".complete"), b"").expect("marker");
        std::fs::rename(
            staging.join("3.root.json"),
            repo.join("metadata/3.root.json"),
        )
        .expect("root moved in");
        assert!(
            load_local(&repo).await.is_err(),
            "half published: nothing verifies"
        );
        drop(lock(&repo).await.expect("the next signer"));
        let loaded = load_local(&repo).await.expect("verifies once finished");
        assert_eq!(loaded.root().signed.version.get(), 3);
        assert!(!staging.exists());
    }

    #[tokio::test]
    async fn a_marked_staging_directory_holding_an_older_timestamp_is_discarded() {
        let (_dir, repo, keys) = fresh_repository().await;
        let older = std::fs::read(repo.join("metadata/timestamp.json")).expect("timestamp");
        crate::release::refresh(&repo, &keys, Lifetimes::default())
            .await
            .expect("refresh");
        let newer = std::fs::read(repo.join("metadata/timestamp.json")).expect("timestamp");
        // As a restore or a sync from another copy could leave it: marked complete, but older.
        let staging = repo.join(".staging");
        std::fs::create_dir_all(&staging).expect("staging");
        std::fs::write(staging.join("timestamp.json"), &older).expect("stage");
        std::fs::write(staging.join(".complete"), b"").expect("marker");
        drop(lock(&repo).await.expect("the next signer"));
        assert!(!staging.exists(), "discarded");
        assert_eq!(
            std::fs::read(repo.join("metadata/timestamp.json")).expect("timestamp"),
            newer,
            "the published timestamp stays"
        );
        load_local(&repo).await.expect("verifies");
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
