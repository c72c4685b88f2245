//! The root role held by several people (decision 0088): which key files sign a new root, the
//! check that they meet both the current root's threshold and the new one's before anything
//! is published, and changing the root's keys and threshold (`fabrik release root-keys`).
//!
//! A root of k of n keys survives the loss or theft of fewer than k of them: the others
//! replace them, and nodes follow the new root from the one they hold. With one root key
//! (what `init` makes), losing it means giving every node a new root by hand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{KeyHolder, RoleType, Root};

use crate::release::{
    expires_in, key_path, load_for_signing, lock, move_in, next, publisher_state, remember,
    staging_dir,
};
use crate::release_proposals::{change_role_keys, key_id_of, short};

/// The private root keys at hand for one change: `<keys>/root.key` when it is there, and each
/// file given with `--root-key` (another holder's key, brought for the change).
#[derive(Debug, Clone)]
pub(crate) struct RootKeyFiles {
    files: Vec<PathBuf>,
    /// `<keys>/root.key.next`, left by a `rotate --role root` that may have published it.
    unfinished: Option<PathBuf>,
}

impl RootKeyFiles {
    /// `<keys>/root.key` if present, then each of `others`, which must exist.
    pub(crate) fn gather(keys: &Path, others: &[PathBuf]) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        let own = key_path(keys, "root");
        if own.is_file() {
            files.push(own);
        }
        for file in others {
            if !file.is_file() {
                bail!("--root-key {}: no such key file", file.display());
            }
            files.push(file.clone());
        }
        let unfinished = keys.join("root.key.next");
        Ok(Self {
            files,
            unfinished: unfinished.is_file().then_some(unfinished),
        })
    }

    /// These files and `extra` (a new key about to be listed).
    pub(crate) fn with(&self, extra: &Path) -> Self {
        let mut files = self.files.clone();
        files.push(extra.to_owned());
        Self {
            files,
            unfinished: self.unfinished.clone(),
        }
    }
}

fn root_role_keys(root: &Root) -> anyhow::Result<&tough::schema::RoleKeys> {
    root.roles
        .get(&RoleType::Root)
        .context("the root names no root keys")
}

/// "3 of keys a1…, b2…": what a root asks for, for an error.
fn asks(root: &Root) -> String {
    root_role_keys(root).map_or_else(
        |_| "none".to_owned(),
        |role| {
            format!(
                "{} of {}",
                role.threshold,
                role.keyids.iter().map(short).collect::<Vec<_>>().join(", ")
            )
        },
    )
}

/// Signs `new`, the root after `current` (or `current` re-signed), with every key in `files`
/// that either lists for the root role, and checks it as a node will — a threshold of
/// `current`'s root keys and of its own — before writing it into `staging` (when given). A
/// shortfall is an error naming how many signatures each root asks for and whose keys were
/// at hand; nothing is written then.
pub(crate) async fn sign_root(
    new: Root,
    current: &Root,
    files: &RootKeyFiles,
    staging: Option<&Path>,
) -> anyhow::Result<SignedRole<Root>> {
    let mut held: Vec<(PathBuf, Decoded<Hex>)> = Vec::new();
    for file in &files.files {
        let id = key_id_of(file).await?;
        if !held.iter().any(|(_, other)| *other == id) {
            held.push((file.clone(), id));
        }
    }
    // A replacement of `root.key` published but not finished: the root lists the new key,
    // still at `root.key.next`, in place of the one at `root.key`, so the holder's signature
    // would be missing for a reason no --root-key fixes.
    if let Some(unfinished) = &files.unfinished {
        let id = key_id_of(unfinished).await?;
        let listed = root_role_keys(current).is_ok_and(|role| role.keyids.contains(&id));
        if listed && !held.iter().any(|(_, held)| *held == id) {
            bail!(
                "{}: the root key's replacement was published but not finished: run `fabrik \
                 release rotate --role root` first; nothing was published",
                unfinished.display()
            );
        }
    }
    let listed_by = |root: &Root| -> Vec<&Decoded<Hex>> {
        let keyids = root_role_keys(root).map(|role| role.keyids.clone());
        held.iter()
            .map(|(_, id)| id)
            .filter(|id| keyids.as_ref().is_ok_and(|keyids| keyids.contains(id)))
            .collect()
    };
    let at_hand = || {
        if held.is_empty() {
            "no root key was at hand (root.key in --keys, or --root-key)".to_owned()
        } else {
            held.iter()
                .map(|(file, id)| format!("{} is key {}", file.display(), short(id)))
                .collect::<Vec<_>>()
                .join("; ")
        }
    };
    for (which, root) in [("current", current), ("new", &new)] {
        let threshold = root_role_keys(root)?.threshold.get();
        let signing = listed_by(root).len() as u64;
        if signing < threshold {
            bail!(
                "the new root needs {} root keys of the {which} root, and {signing} of them \
                 were at hand: {}. Bring the other holders' keys with --root-key; nothing was \
                 published",
                asks(root),
                at_hand()
            );
        }
    }
    let sources: Vec<Box<dyn KeySource>> = held
        .iter()
        .map(|(path, _)| Box::new(LocalKeySource { path: path.clone() }) as Box<dyn KeySource>)
        .collect();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    // tough signs with the keys the holder it is given lists: once as the new root lists its
    // keys, once as the current one does, joined (a key both list signs once).
    let by_new = SignedRole::new(new.clone(), &KeyHolder::Root(new.clone()), &sources, &rng)
        .await
        .context("signing the new root with the root keys it lists")?;
    let by_current = SignedRole::new(
        new.clone(),
        &KeyHolder::Root(current.clone()),
        &sources,
        &rng,
    )
    .await
    .context("signing the new root with the current root keys")?;
    let signed = by_new
        .add_old_signatures(by_current.signed().signatures.clone())
        .context("joining the root's signatures")?;
    crate::release::check_new_root(current, signed.signed())?;
    if let Some(staging) = staging {
        signed
            .write(staging, new.consistent_snapshot)
            .await
            .context("writing the new root")?;
    }
    Ok(signed)
}

/// What a change of the root keys published.
#[derive(Debug)]
pub(crate) struct RootKeysChange {
    /// The new root's version.
    pub(crate) version: u64,
    /// How many root keys must sign the next change of the root.
    pub(crate) threshold: u64,
    /// The root keys it lists (short ids).
    pub(crate) keys: Vec<String>,
}

/// Changes who holds the root: adds the public keys in `add` (`KEY.pub` files `fabrik release
/// keygen` wrote, one per holder), removes the keys whose ids start with `remove` (a key lost
/// or stolen, or a holder who left) and sets the threshold. The new root (version + 1, valid
/// for `lifetime`) is signed with the root keys in `files` — a threshold of the current root
/// keys and of the new ones — and published alone: the other roles' keys, and so their
/// metadata, are unchanged.
pub(crate) async fn change_root_keys(
    repo: &Path,
    keys: &Path,
    files: &RootKeyFiles,
    add: &[PathBuf],
    remove: &[String],
    threshold: Option<u64>,
    lifetime: Duration,
) -> anyhow::Result<RootKeysChange> {
    let _lock = lock(repo).await?;
    let state = publisher_state(keys);
    let loaded = load_for_signing(repo, &state).await?;
    let current = loaded.root().signed.clone();
    let mut root = current.clone();
    root.version = next(root.version)?;
    root.expires = expires_in(lifetime)?;
    change_role_keys(&mut root, RoleType::Root, add, remove, threshold)?;
    let role = root_role_keys(&root)?;
    let change = RootKeysChange {
        version: root.version.get(),
        threshold: role.threshold.get(),
        keys: role.keyids.iter().map(short).collect(),
    };
    let staging = staging_dir(repo)?;
    sign_root(root, &current, files, Some(&staging)).await?;
    move_in(repo, &staging)?;
    remember(repo, &state).await?;
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::Lifetimes;
    use crate::release::load_local;
    use crate::release::tests::{fresh_repository, try_add_forest};

    const YEAR: Duration = Duration::from_secs(365 * 86_400);

    /// A holder's key pair made with `keygen`: (private, public) paths.
    async fn holder(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let private = dir.join(format!("{name}.key"));
        let (_, public) = crate::release_proposals::keygen(&private)
            .await
            .expect("keygen");
        (private, public)
    }

    fn root_role(root: &Root) -> (u64, Vec<String>) {
        let role = &root.roles[&RoleType::Root];
        (
            role.threshold.get(),
            role.keyids
                .iter()
                .map(|id| crate::release::hex(id))
                .collect(),
        )
    }

    #[tokio::test]
    async fn a_root_of_two_of_three_keys_survives_losing_one_and_nodes_follow_it() {
        let (dir, repo, keys) = fresh_repository().await;
        let alice = key_id_of(&key_path(&keys, "root")).await.expect("id");
        let (bob, bob_pub) = holder(dir.path(), "bob").await;
        let (carol, carol_pub) = holder(dir.path(), "carol").await;

        // Two of three: the new root needs Bob's signature besides Alice's (its threshold
        // is 2), so without his key nothing is published.
        let alone = RootKeyFiles::gather(&keys, &[]).expect("files");
        let refused = change_root_keys(
            &repo,
            &keys,
            &alone,
            &[bob_pub.clone(), carol_pub.clone()],
            &[],
            Some(2),
            YEAR,
        )
        .await
        .expect_err("one key cannot meet a threshold of two");
        let text = format!("{refused:#}");
        assert!(
            text.contains("needs 2 of") && text.contains("1 of them were at hand"),
            "{text}"
        );
        assert_eq!(
            load_local(&repo)
                .await
                .expect("verifies")
                .root()
                .signed
                .version
                .get(),
            1,
            "nothing published"
        );
        let with_bob = RootKeyFiles::gather(&keys, std::slice::from_ref(&bob)).expect("files");
        let change = change_root_keys(
            &repo,
            &keys,
            &with_bob,
            &[bob_pub.clone(), carol_pub],
            &[],
            Some(2),
            YEAR,
        )
        .await
        .expect("two of three");
        assert_eq!((change.version, change.threshold), (2, 2));
        assert_eq!(change.keys.len(), 3);
        let loaded = load_local(&repo).await.expect("a node follows root 2");
        let (threshold, listed) = root_role(&loaded.root().signed);
        assert_eq!(threshold, 2);
        assert!(listed.contains(&crate::release::hex(&alice)));
        assert_eq!(listed.len(), 3);
        // One person's key counts once.
        let twice = change_root_keys(&repo, &keys, &with_bob, &[bob_pub], &[], None, YEAR)
            .await
            .expect_err("Bob's key again");
        assert!(format!("{twice:#}").contains("lists this public key already"));

        // The root key in `--keys` alone no longer re-signs the root.
        let refused = crate::release::refresh_root(&repo, &keys, &alone, YEAR)
            .await
            .expect_err("1 of 2");
        assert!(format!("{refused:#}").contains("--root-key"), "{refused:#}");
        let with_carol = RootKeyFiles::gather(&keys, std::slice::from_ref(&carol)).expect("files");
        let (version, _) = crate::release::refresh_root(&repo, &keys, &with_carol, YEAR)
            .await
            .expect("Alice and Carol re-sign the root");
        assert_eq!(version, 3);

        // Alice's key is lost: Bob and Carol replace it with Dave's, without it.
        let lost = dir.path().join("lost-root.key");
        std::fs::rename(key_path(&keys, "root"), &lost).expect("lost");
        let (_dave, dave_pub) = holder(dir.path(), "dave").await;
        let others = RootKeyFiles::gather(&keys, &[bob.clone(), carol.clone()]).expect("files");
        let alice_prefix = crate::release::hex(&alice)[..12].to_owned();
        let change = change_root_keys(
            &repo,
            &keys,
            &others,
            &[dave_pub],
            &[alice_prefix],
            None,
            YEAR,
        )
        .await
        .expect("the two others replace the lost key");
        assert_eq!(change.version, 4);
        // A node holding only 1.root.json walks 1 → 4, each step checked against both roots.
        let loaded = load_local(&repo).await.expect("verifies from 1.root.json");
        let root = &loaded.root().signed;
        let (threshold, listed) = root_role(root);
        assert_eq!((root.version.get(), threshold, listed.len()), (4, 2, 3));
        assert!(!listed.contains(&crate::release::hex(&alice)));
        assert!(
            !root.keys.contains_key(&alice),
            "the lost key leaves the root's keys"
        );
        // The lost key, with one other, is not enough any more: the current root no longer
        // lists it.
        std::fs::rename(&lost, key_path(&keys, "root")).expect("found again");
        let stale = RootKeyFiles::gather(&keys, std::slice::from_ref(&bob)).expect("files");
        let refused = crate::release::refresh_root(&repo, &keys, &stale, YEAR)
            .await
            .expect_err("the removed key no longer counts");
        assert!(format!("{refused:#}").contains("1 of them"), "{refused:#}");

        // Releases go on as before: the targets, snapshot and timestamp keys did not change.
        try_add_forest(&repo, &keys, dir.path(), "after-root-keys")
            .await
            .expect("publishes under the new root");
        load_local(&repo).await.expect("verifies");
    }

    #[tokio::test]
    async fn replacing_an_online_key_and_the_signers_need_the_root_quorum() {
        let (dir, repo, keys) = fresh_repository().await;
        let (bob, bob_pub) = holder(dir.path(), "bob").await;
        let with_bob = RootKeyFiles::gather(&keys, std::slice::from_ref(&bob)).expect("files");
        change_root_keys(&repo, &keys, &with_bob, &[bob_pub], &[], Some(2), YEAR)
            .await
            .expect("two of two");
        let alone = RootKeyFiles::gather(&keys, &[]).expect("files");
        for role in ["timestamp", "root"] {
            let refused =
                crate::release_keys::rotate(&repo, &keys, role, &alone, Lifetimes::default())
                    .await
                    .expect_err("one of two root keys");
            assert!(
                format!("{refused:#}").contains("--root-key"),
                "{role}: {refused:#}"
            );
        }
        assert_eq!(
            load_local(&repo)
                .await
                .expect("verifies")
                .root()
                .signed
                .version
                .get(),
            2,
            "nothing published"
        );
        let (_erin, erin_pub) = holder(dir.path(), "erin").await;
        let refused = crate::release_proposals::signers(
            &repo,
            &keys,
            &alone,
            std::slice::from_ref(&erin_pub),
            &[],
            None,
            Lifetimes::default(),
        )
        .await
        .expect_err("one of two root keys");
        assert!(format!("{refused:#}").contains("--root-key"), "{refused:#}");

        let before = key_id_of(&key_path(&keys, "timestamp")).await.expect("id");
        let rotation =
            crate::release_keys::rotate(&repo, &keys, "timestamp", &with_bob, Lifetimes::default())
                .await
                .expect("both root keys");
        assert_eq!(rotation.root_version, 3);
        assert_ne!(rotation.key_id, crate::release::hex(&before));

        // Alice replaces her own root key with Bob present: the other key stays listed.
        let alice = key_id_of(&key_path(&keys, "root")).await.expect("id");
        let bob_id = key_id_of(&bob).await.expect("id");
        let rotation =
            crate::release_keys::rotate(&repo, &keys, "root", &with_bob, Lifetimes::default())
                .await
                .expect("Alice's key replaced");
        let loaded = load_local(&repo).await.expect("verifies from 1.root.json");
        let (threshold, listed) = root_role(&loaded.root().signed);
        assert_eq!(threshold, 2);
        assert_eq!(listed.len(), 2);
        assert!(listed.contains(&crate::release::hex(&bob_id)));
        assert!(listed.contains(&rotation.key_id));
        assert!(!listed.contains(&crate::release::hex(&alice)));

        let (version, committed) = crate::release_proposals::signers(
            &repo,
            &keys,
            &with_bob,
            &[erin_pub],
            &[],
            None,
            Lifetimes::default(),
        )
        .await
        .expect("a change of signers under both root keys");
        assert_eq!(version, 5);
        assert!(
            committed.pending.is_none(),
            "one targets signature suffices"
        );
        load_local(&repo).await.expect("verifies");

        // A replacement of Alice's root key published but stopped before the key files were
        // swapped: other changes of the root say to finish it, not to bring more keys.
        let rotation =
            crate::release_keys::rotate(&repo, &keys, "root", &with_bob, Lifetimes::default())
                .await
                .expect("Alice's key replaced again");
        let current = key_path(&keys, "root");
        std::fs::rename(&current, keys.join("root.key.next")).expect("back to pending");
        std::fs::rename(rotation.retired.expect("moved aside"), &current).expect("old key back");
        let stopped = RootKeyFiles::gather(&keys, std::slice::from_ref(&bob)).expect("files");
        let refused = crate::release::refresh_root(&repo, &keys, &stopped, YEAR)
            .await
            .expect_err("unfinished");
        assert!(
            format!("{refused:#}").contains("rotate --role root` first"),
            "{refused:#}"
        );
        let resumed =
            crate::release_keys::rotate(&repo, &keys, "root", &stopped, Lifetimes::default())
                .await
                .expect("finished");
        assert!(resumed.resumed);
        let finished = RootKeyFiles::gather(&keys, std::slice::from_ref(&bob)).expect("files");
        crate::release::refresh_root(&repo, &keys, &finished, YEAR)
            .await
            .expect("re-signed once finished");
        load_local(&repo).await.expect("verifies");
    }

    #[tokio::test]
    async fn new_holders_alone_cannot_take_over_the_root() {
        let (dir, repo, keys) = fresh_repository().await;
        let (bob, bob_pub) = holder(dir.path(), "bob").await;
        let with_bob = RootKeyFiles::gather(&keys, std::slice::from_ref(&bob)).expect("files");
        change_root_keys(&repo, &keys, &with_bob, &[bob_pub], &[], Some(2), YEAR)
            .await
            .expect("two of two");
        let alice = crate::release::hex(&key_id_of(&key_path(&keys, "root")).await.expect("id"));
        let bob_id = crate::release::hex(&key_id_of(&bob).await.expect("id"));
        // Mallory and Trent, holding none of the current root keys, list only themselves.
        let (mallory, mallory_pub) = holder(dir.path(), "mallory").await;
        let (trent, trent_pub) = holder(dir.path(), "trent").await;
        let outsiders = dir.path().join("outsiders");
        std::fs::create_dir_all(&outsiders).expect("dir");
        let theirs = RootKeyFiles::gather(&outsiders, &[mallory, trent]).expect("files");
        let refused = change_root_keys(
            &repo,
            &keys,
            &theirs,
            &[mallory_pub, trent_pub],
            &[alice, bob_id],
            None,
            YEAR,
        )
        .await
        .expect_err("not signed by the current root keys");
        let text = format!("{refused:#}");
        assert!(
            text.contains("of the current root, and 0 of them"),
            "{text}"
        );
        assert_eq!(
            load_local(&repo)
                .await
                .expect("verifies")
                .root()
                .signed
                .version
                .get(),
            2
        );
    }

    #[tokio::test]
    async fn a_public_key_file_spelled_in_upper_case_hex_still_counts_its_holders_signature() {
        let (dir, repo, keys) = fresh_repository().await;
        let (bob, bob_pub) = holder(dir.path(), "bob").await;
        let mut public: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&bob_pub).expect("read")).expect("json");
        let hex = public["keyval"]["public"]
            .as_str()
            .expect("hex")
            .to_uppercase();
        public["keyval"]["public"] = serde_json::Value::String(hex);
        let shouted = dir.path().join("bob-upper.pub");
        std::fs::write(&shouted, serde_json::to_vec(&public).expect("json")).expect("write");
        let with_bob = RootKeyFiles::gather(&keys, std::slice::from_ref(&bob)).expect("files");
        change_root_keys(&repo, &keys, &with_bob, &[shouted], &[], Some(2), YEAR)
            .await
            .expect("Bob's signature counts under the id his key has");
        let bob_id = crate::release::hex(&key_id_of(&bob).await.expect("id"));
        let loaded = load_local(&repo).await.expect("verifies");
        assert!(root_role(&loaded.root().signed).1.contains(&bob_id));
    }

    #[tokio::test]
    async fn bad_changes_of_the_root_keys_are_refused_naming_what_is_wrong() {
        let (dir, repo, keys) = fresh_repository().await;
        let files = RootKeyFiles::gather(&keys, &[]).expect("files");
        // (--add, --remove, --threshold, what the refusal says)
        type Case = (Vec<PathBuf>, Vec<String>, Option<u64>, &'static str);
        let cases: Vec<Case> = vec![
            (vec![], vec![], None, "nothing to change"),
            (vec![], vec![], Some(0), "at least 1"),
            (vec![], vec![], Some(2), "1 key(s) for a threshold of 2"),
            (vec![], vec!["abc".into()], None, "at least 8 hex digits"),
            (vec![], vec!["00000000".into()], None, "0 of the root keys"),
            (
                vec![dir.path().join("absent.pub")],
                vec![],
                None,
                "cannot read",
            ),
        ];
        for (add, remove, threshold, expected) in cases {
            let refused = change_root_keys(&repo, &keys, &files, &add, &remove, threshold, YEAR)
                .await
                .expect_err(expected);
            assert!(format!("{refused:#}").contains(expected), "{refused:#}");
        }
        let alice = crate::release::hex(&key_id_of(&key_path(&keys, "root")).await.expect("id"));
        let refused = change_root_keys(&repo, &keys, &files, &[], &[alice], None, YEAR)
            .await
            .expect_err("no key left");
        assert!(
            format!("{refused:#}").contains("no key left"),
            "{refused:#}"
        );
        // A targets key is not a root key: given as one, it signs nothing.
        let wrong = RootKeyFiles::gather(&keys, &[key_path(&keys, "targets")]).expect("files");
        let (_, bob_pub) = holder(dir.path(), "bob").await;
        let refused = change_root_keys(&repo, &keys, &wrong, &[bob_pub], &[], Some(2), YEAR)
            .await
            .expect_err("the targets key is no root key");
        assert!(format!("{refused:#}").contains("1 of them"), "{refused:#}");
        assert!(
            RootKeyFiles::gather(&keys, &[dir.path().join("nowhere.key")]).is_err(),
            "a --root-key that is not there"
        );
        assert_eq!(
            load_local(&repo)
                .await
                .expect("verifies")
                .root()
                .signed
                .version
                .get(),
            1
        );
    }
}
