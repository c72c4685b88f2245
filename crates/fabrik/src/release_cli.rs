//! `fabrik release` (publishing models to a fleet as a TUF repository, offline: it works on
//! the repository's files and keys) and `fabrik updates status` (a thin client of a running
//! node's `/api/v1/updates`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::client::Endpoint;
use crate::release::{self, Kind, Lifetimes, ReleaseTarget};
use crate::release_root_keys::RootKeyFiles;

/// `fabrik release`
#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    #[command(subcommand)]
    command: ReleaseCommand,
}

/// How long newly signed metadata stays valid.
#[derive(Debug, Args)]
struct LifetimeArgs {
    /// Validity of the targets metadata (the list of releases).
    #[arg(long, default_value = "90d")]
    targets_lifetime: String,
    /// Validity of the snapshot metadata.
    #[arg(long, default_value = "7d")]
    snapshot_lifetime: String,
    /// Validity of the timestamp metadata: nodes install nothing once it is past, so re-sign
    /// it before (`fabrik release refresh`, from a timer).
    #[arg(long, default_value = "1d")]
    timestamp_lifetime: String,
}

impl LifetimeArgs {
    fn lifetimes(&self, root: Option<&str>) -> anyhow::Result<Lifetimes> {
        let parse = |flag: &str, text: &str| {
            fabrik_runtime::units::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
        };
        let mut lifetimes = Lifetimes {
            targets: parse("targets-lifetime", &self.targets_lifetime)?,
            snapshot: parse("snapshot-lifetime", &self.snapshot_lifetime)?,
            timestamp: parse("timestamp-lifetime", &self.timestamp_lifetime)?,
            ..Lifetimes::default()
        };
        if let Some(root) = root {
            lifetimes.root = parse("root-lifetime", root)?;
        }
        Ok(lifetimes)
    }
}

// Parsed once per command line: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Make a release repository and its four role keys (root, targets, snapshot, timestamp).
    /// Copy `metadata/1.root.json` to each node (`[updates] root`); keep the root key offline.
    Init {
        /// The repository directory (made; must be empty): serve it with `[releases] repo`.
        #[arg(long)]
        repo: PathBuf,
        /// Where the private keys go (made, mode 0700; never inside the repository).
        #[arg(long)]
        keys: PathBuf,
        /// Validity of the root metadata.
        #[arg(long, default_value = "365d")]
        root_lifetime: String,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
    },
    /// Publish an ONNX model (with `FILE.sig` when there is one), a use case at its stage, a
    /// pipeline or an alert rule for nodes to install; replaces an earlier release of that
    /// kind and name.
    Add {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// The keys directory of `init` (needs targets, snapshot and timestamp keys).
        #[arg(long)]
        keys: PathBuf,
        /// `model` (an `.onnx` file, the default for one), `pipeline` or `alert-rule` (a TOML
        /// or JSON file with one definition, as `fabrik pipeline define` and `fabrik alert
        /// rule apply` take), or `use-case` (a definition as `fabrik usecase define` takes, or
        /// the JSON `fabrik usecase show` printed where its gate was judged), or `binary` (a
        /// Fabrik executable, which nodes with `[updates] binary = true` on its platform
        /// install and restart into).
        #[arg(long)]
        kind: Option<String>,
        /// For a binary: the platform it runs on (`linux-x86_64`, `linux-aarch64`; default:
        /// read from the executable's ELF header).
        #[arg(long)]
        platform: Option<String>,
        /// For a use case: the stage every node puts it at (`pilot`, `scale-up`,
        /// `enterprise`); required for a plain definition, default: the stage in `fabrik
        /// usecase show`'s JSON.
        #[arg(long)]
        stage: Option<String>,
        /// For a use case (required): why it is at that stage (who decided, on what
        /// evidence), recorded with the stage decision on every node.
        #[arg(long, default_value = "")]
        reason: String,
        /// For a use case: the promotion overrode a gate that did not pass (recorded as
        /// forced on every node).
        #[arg(long)]
        forced: bool,
        /// The name nodes store a model under (pipelines' `model_name`; default: the file
        /// name without `.onnx`). For a definition, its own `name`, which this must match.
        #[arg(long)]
        name: Option<String>,
        /// Only for these nodes (names, `*` matches any run of characters); repeat or
        /// comma-separate. Default: every node.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// A phased rollout: only this percentage of those nodes install it (above 0, at most
        /// 100; each node's place is stable, so publishing again with a larger share keeps
        /// the nodes that have it and adds more). `fabrik release fleet` shows who runs it.
        #[arg(long)]
        share: Option<f64>,
        /// With --share: place nodes by this key instead of the target's name, so that
        /// artifacts published with one key (a pipeline and the model it needs) reach the
        /// same nodes at the same share.
        #[arg(long, requires = "share")]
        phase: Option<String>,
        /// Encrypt the file to this node key (`age1…`, what `fabrik updates recipient` prints
        /// on the node); repeat or comma-separate. Only these nodes can read it.
        #[arg(long = "recipient", value_delimiter = ',')]
        recipients: Vec<String>,
        /// Encrypt to every recipient in this file (one X25519 `age1…` key per line, `#`
        /// comments; age's recipients file, without its ssh and plugin recipients).
        #[arg(long)]
        recipients_file: Option<PathBuf>,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
        /// The `.onnx` file, or the definition file.
        file: PathBuf,
    },
    /// Stop publishing a model, use case, pipeline or alert rule (nodes keep what they
    /// installed; a use case stays at its last stage).
    Remove {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// The keys directory of `init`.
        #[arg(long)]
        keys: PathBuf,
        /// `model`, `use-case`, `pipeline`, `alert-rule` or `binary`.
        #[arg(long, default_value = "model")]
        kind: String,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
        /// Its name.
        name: String,
    },
    /// Re-sign the metadata with fresh expiry dates, changing nothing else.
    Refresh {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// The keys directory of `init`.
        #[arg(long)]
        keys: PathBuf,
        /// Re-sign only the snapshot and the timestamp, with their keys alone (what a hub
        /// with `[releases] keys` does by itself).
        #[arg(long)]
        online: bool,
        /// Re-sign only the root (with the offline root keys), valid for `--root-lifetime`.
        #[arg(long, conflicts_with = "online")]
        root: bool,
        /// Another holder's root key, when the root asks for several (`release root-keys`);
        /// repeat. `root.key` in `--keys` signs too when it is there.
        #[arg(long = "root-key", requires = "root")]
        root_keys: Vec<PathBuf>,
        /// Validity of the re-signed root metadata (with `--root`).
        #[arg(long, default_value = "365d")]
        root_lifetime: String,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
    },
    /// Replace a role's key (a key that may have leaked, or a scheduled change): the new
    /// root lists the new key, signed so nodes accept it from the root they hold, and what
    /// the key signs is signed again, all published at once. Needs the root key (as many as
    /// the root asks for). With several root keys, `--role root` replaces the one in `--keys`.
    Rotate {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// The keys directory of `init` (the root key, and the other roles' keys).
        #[arg(long)]
        keys: PathBuf,
        /// `root`, `targets`, `snapshot` or `timestamp`.
        #[arg(long)]
        role: String,
        /// Another holder's root key, when the root asks for several; repeat.
        #[arg(long = "root-key")]
        root_keys: Vec<PathBuf>,
        /// Validity of the new root metadata.
        #[arg(long, default_value = "365d")]
        root_lifetime: String,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
    },
    /// Make a private key for one person who signs releases or holds a root key (at `--out`,
    /// mode 0600) and its public key (`<out>.pub`), which the root keys' holders add with
    /// `fabrik release signers --add` or `fabrik release root-keys --add`. A signer names it
    /// `targets.key` in their keys directory; a root key stays offline.
    Keygen {
        /// Where the private key goes (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Change who signs the releases (the targets metadata): add people's public keys, remove
    /// keys, and set how many of them must sign each change (two people to publish). The new
    /// root waits, with the targets re-signed under it, until enough of the new keys have
    /// signed (`fabrik release approve`). Needs the root key (as many as the root asks for).
    Signers {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// A keys directory holding the root key (and a targets key that signs at once, if
        /// the new root lists it).
        #[arg(long)]
        keys: PathBuf,
        /// Another holder's root key, when the root asks for several; repeat.
        #[arg(long = "root-key")]
        root_keys: Vec<PathBuf>,
        /// A public key file (`KEY.pub` from `fabrik release keygen`) to add; repeat.
        #[arg(long)]
        add: Vec<PathBuf>,
        /// A key to remove, by the first 8 or more hex digits of its id; repeat.
        #[arg(long)]
        remove: Vec<String>,
        /// How many targets keys must sign each change.
        #[arg(long)]
        threshold: Option<u64>,
        /// Validity of the new root metadata.
        #[arg(long, default_value = "365d")]
        root_lifetime: String,
        #[command(flatten)]
        lifetimes: LifetimeArgs,
    },
    /// Change who holds the root keys (decision 0088): add holders' public keys, remove a key
    /// that was lost or stolen, and set how many must sign each later change of the root.
    /// The new root is signed by enough of the current root keys and of its own, given with
    /// `--root-key` (and `root.key` in `--keys`), and published at once; nodes follow it
    /// from the root they hold.
    RootKeys {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// The keys directory of `init` (its `root.key` signs when it is there).
        #[arg(long)]
        keys: PathBuf,
        /// A holder's private root key that signs this change; repeat.
        #[arg(long = "root-key")]
        root_keys: Vec<PathBuf>,
        /// A holder's public key file (`KEY.pub` from `fabrik release keygen`) to add;
        /// repeat.
        #[arg(long)]
        add: Vec<PathBuf>,
        /// A root key to remove, by the first 8 or more hex digits of its id; repeat.
        #[arg(long)]
        remove: Vec<String>,
        /// How many root keys must sign each later change of the root.
        #[arg(long)]
        threshold: Option<u64>,
        /// Validity of the new root metadata.
        #[arg(long, default_value = "365d")]
        root_lifetime: String,
    },
    /// Changes waiting for more signatures (when the root asks for more than one targets
    /// signature): what each changes, read from what is signed, who signed it, and whether it
    /// can still be published.
    Proposals {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sign a waiting change with the targets key in `--keys` after checking the signatures it
    /// has, and publish it once it has enough and `--keys` holds the snapshot and timestamp
    /// keys (otherwise a hub with `[releases] keys` publishes it).
    Approve {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// The approver's keys directory (`targets.key`; `snapshot.key` and `timestamp.key`
        /// to publish).
        #[arg(long)]
        keys: PathBuf,
        /// The proposal, as `fabrik release proposals` lists it (the id names its content:
        /// a proposal changed since it was listed is refused).
        #[arg(long)]
        id: String,
        /// Validity of the snapshot metadata, when this publishes it.
        #[arg(long, default_value = "7d")]
        snapshot_lifetime: String,
        /// Validity of the timestamp metadata, when this publishes it.
        #[arg(long, default_value = "1d")]
        timestamp_lifetime: String,
    },
    /// Drop a waiting change (nothing of it was published).
    Withdraw {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// The proposal, as `fabrik release proposals` lists it.
        #[arg(long)]
        id: String,
    },
    /// Which node runs which release, since when, and what it refused: asked of a hub (its
    /// nodes' uplinks bring their records) or of one node.
    Fleet {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// The nodes' keys for encrypted targets, as an age recipients file for `release add
    /// --recipients-file`: asked of a hub (each node that follows a release repository
    /// reports its key through its uplink at start and daily, so a rotated key shows after
    /// the node's restart) or of one node.
    Recipients {
        /// Only these nodes (names, `*` matches any run of characters); repeat or
        /// comma-separate. Default: every node that reported a key.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Print JSON (each node's key, the previous keys it still reads, and when it
        /// reported them).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// What the repository publishes, verified as a node would (except expiry, shown).
    List {
        /// The release repository's directory.
        #[arg(long)]
        repo: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `fabrik release ...`.
pub(crate) async fn run(args: ReleaseArgs) -> anyhow::Result<()> {
    match args.command {
        ReleaseCommand::Init {
            repo,
            keys,
            root_lifetime,
            lifetimes,
        } => {
            let lifetimes = lifetimes.lifetimes(Some(&root_lifetime))?;
            let root = release::init(&repo, &keys, lifetimes).await?;
            println!(
                "made the release repository {} and its keys in {}\n\
                 copy {} to each node as [updates] root; keep {} offline",
                repo.display(),
                keys.display(),
                root.display(),
                keys.join("root.key").display()
            );
        }
        ReleaseCommand::Add {
            repo,
            keys,
            kind,
            name,
            stage,
            reason,
            forced,
            nodes,
            share,
            phase,
            recipients,
            recipients_file,
            lifetimes,
            file,
            platform,
        } => {
            let share = share
                .map(release::check_share)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let phase = phase.map(|key| key.trim().to_owned());
            if phase
                .as_deref()
                .is_some_and(|key| key.is_empty() || key.chars().any(char::is_control))
            {
                bail!("--phase: a key of printable characters, not empty");
            }
            if platform.is_some() && kind.as_deref() != Some(Kind::Binary.as_str()) {
                bail!("--platform goes with --kind binary");
            }
            if kind.as_deref() != Some(Kind::UseCase.as_str())
                && (stage.is_some() || !reason.is_empty() || forced)
            {
                bail!("--stage, --reason and --forced go with --kind use-case");
            }
            let stage = stage.as_deref().map(parse_stage).transpose()?;
            let nodes: Vec<String> = nodes
                .into_iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            let mut for_nodes = if nodes.is_empty() {
                "every node".to_owned()
            } else {
                nodes.join(", ")
            };
            if let Some(share) = share {
                for_nodes.push_str(&format!(
                    ", phased to {} % of them",
                    release::percent(share)
                ));
                if let Some(key) = &phase {
                    for_nodes.push_str(&format!(" by phase key `{key}`"));
                }
            }
            let recipients = read_recipients(recipients, recipients_file.as_deref())?;
            if !recipients.is_empty() {
                for_nodes.push_str(&format!(
                    ", encrypted to {} recipient{}",
                    recipients.len(),
                    if recipients.len() == 1 { "" } else { "s" }
                ));
            }
            let audience = release::Audience {
                nodes,
                recipients,
                share,
                phase,
            };
            let is_onnx = file
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
            let kind = match kind.as_deref() {
                Some(text) => parse_kind(text)?,
                None if is_onnx => Kind::Model,
                None => bail!(
                    "{}: say what it is with --kind use-case, pipeline, alert-rule or binary",
                    file.display()
                ),
            };
            let lifetimes = lifetimes.lifetimes(None)?;
            if kind == Kind::Model {
                let name = match name {
                    Some(name) => name,
                    None => file
                        .file_stem()
                        .and_then(|stem| stem.to_str())
                        .map(str::to_owned)
                        .context("name the model with --name")?,
                };
                let signed = crate::model_signature::signature_path(&file).exists();
                let (sha256, committed) =
                    release::add_model(&repo, &keys, &file, &name, audience, lifetimes).await?;
                let what = format!(
                    "model {name} (sha256 {sha256}, {}) for {for_nodes}",
                    if signed {
                        "with its signature"
                    } else {
                        "unsigned"
                    },
                );
                println!("{}", committed.describe(&what, &repo));
            } else if kind == Kind::Binary {
                let (name, platform, sha256, committed) = release::add_binary(
                    &repo,
                    &keys,
                    &file,
                    name.as_deref(),
                    platform.as_deref(),
                    audience,
                    lifetimes,
                )
                .await?;
                let what =
                    format!("binary {name} for {platform} (sha256 {sha256}) for {for_nodes}");
                println!("{}", committed.describe(&what, &repo));
            } else if kind == Kind::UseCase {
                let decision = release::UseCaseDecision {
                    stage,
                    reason,
                    forced,
                    expected_name: name,
                };
                let (defined, sha256, committed) =
                    release::add_use_case(&repo, &keys, &file, &decision, audience, lifetimes)
                        .await?;
                let what = format!("use case {defined} (sha256 {sha256}) for {for_nodes}");
                println!("{}", committed.describe(&what, &repo));
            } else {
                let (defined, sha256, committed) = release::add_definition(
                    &repo,
                    &keys,
                    kind,
                    &file,
                    name.as_deref(),
                    audience,
                    lifetimes,
                )
                .await?;
                let what = format!(
                    "{} {defined} (sha256 {sha256}) for {for_nodes}",
                    kind.as_str()
                );
                println!("{}", committed.describe(&what, &repo));
            }
        }
        ReleaseCommand::Remove {
            repo,
            keys,
            kind,
            lifetimes,
            name,
        } => {
            let kind = parse_kind(&kind)?;
            let committed =
                release::remove(&repo, &keys, kind, &name, lifetimes.lifetimes(None)?).await?;
            let what = format!("the removal of {} {name}", kind.as_str());
            println!("{}", committed.describe(&what, &repo));
        }
        ReleaseCommand::Refresh {
            repo,
            keys,
            online,
            root,
            root_keys,
            root_lifetime,
            lifetimes,
        } => {
            let lifetimes = lifetimes.lifetimes(Some(&root_lifetime))?;
            if root {
                let root_keys = RootKeyFiles::gather(&keys, &root_keys)?;
                let (version, expires) =
                    release::refresh_root(&repo, &keys, &root_keys, lifetimes.root).await?;
                println!("re-signed the root as version {version}, valid until {expires}");
                return Ok(());
            }
            if online {
                let state = release::publisher_state(&keys);
                // A proposal that cannot be published must not keep the timestamp from being
                // re-signed: its error is reported after.
                let published =
                    crate::release_proposals::publish_ready(&repo, &keys, &state, lifetimes).await;
                if let Ok(Some(version)) = published {
                    println!("published a signed proposal as targets version {version}");
                }
                release::refresh_online(
                    &repo,
                    &keys,
                    &state,
                    Some(lifetimes.snapshot),
                    lifetimes.timestamp,
                )
                .await?;
                published.context("publishing the signed proposals")?;
            } else {
                let committed = release::refresh(&repo, &keys, lifetimes).await?;
                if committed.pending.is_some() {
                    println!("{}", committed.describe("the re-signed targets", &repo));
                    return Ok(());
                }
            }
            println!(
                "re-signed {}: the timestamp is valid for {}",
                repo.display(),
                crate::run::duration_text(lifetimes.timestamp)
            );
        }
        ReleaseCommand::Rotate {
            repo,
            keys,
            role,
            root_keys,
            root_lifetime,
            lifetimes,
        } => {
            let lifetimes = lifetimes.lifetimes(Some(&root_lifetime))?;
            let root_keys = RootKeyFiles::gather(&keys, &root_keys)?;
            let rotation =
                crate::release_keys::rotate(&repo, &keys, &role, &root_keys, lifetimes).await?;
            println!(
                "{} the {role} key: root version {} lists key {}; {}",
                if rotation.resumed {
                    "finished replacing"
                } else {
                    "replaced"
                },
                rotation.root_version,
                rotation.key_id.get(..16).unwrap_or(&rotation.key_id),
                match &rotation.retired {
                    Some(path) => format!(
                        "the replaced key is {} (destroy it, or keep it offline)",
                        path.display()
                    ),
                    None => "no replaced key file was here (moved aside by an earlier run, or \
                             held elsewhere: destroy it there)"
                        .to_owned(),
                },
            );
            if role == "snapshot" || role == "timestamp" {
                println!(
                    "copy the new {role}.key to every hub that re-signs this repository \
                     ([releases] keys): until then they cannot sign"
                );
            }
        }
        ReleaseCommand::Keygen { out } => {
            let (id, public) = crate::release_proposals::keygen(&out).await?;
            println!(
                "made key {} at {} (keep it private); its public key is {}: the root keys' \
                 holders add it with `fabrik release signers --add {}` (a release signer) or \
                 `fabrik release root-keys --add {}` (a root holder)",
                id.get(..16).unwrap_or(&id),
                out.display(),
                public.display(),
                public.display(),
                public.display()
            );
        }
        ReleaseCommand::Signers {
            repo,
            keys,
            root_keys,
            add,
            remove,
            threshold,
            root_lifetime,
            lifetimes,
        } => {
            let lifetimes = lifetimes.lifetimes(Some(&root_lifetime))?;
            let root_keys = RootKeyFiles::gather(&keys, &root_keys)?;
            let (root_version, committed) = crate::release_proposals::signers(
                &repo, &keys, &root_keys, &add, &remove, threshold, lifetimes,
            )
            .await?;
            let what = format!("root version {root_version} with the new targets signers");
            println!("{}", committed.describe(&what, &repo));
        }
        ReleaseCommand::RootKeys {
            repo,
            keys,
            root_keys,
            add,
            remove,
            threshold,
            root_lifetime,
        } => {
            let lifetime = fabrik_runtime::units::parse_duration(&root_lifetime)
                .map_err(|e| anyhow::anyhow!("--root-lifetime: {e}"))?;
            let root_keys = RootKeyFiles::gather(&keys, &root_keys)?;
            let change = crate::release_root_keys::change_root_keys(
                &repo, &keys, &root_keys, &add, &remove, threshold, lifetime,
            )
            .await?;
            println!(
                "published root version {}: each later change of the root needs {} of the root \
                 keys {}; nodes follow it from the root they hold",
                change.version,
                change.threshold,
                change.keys.join(", ")
            );
        }
        ReleaseCommand::Proposals { repo, json } => {
            let proposals = crate::release_proposals::list(&repo).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&proposals)?);
                return Ok(());
            }
            if proposals.is_empty() {
                println!("no proposals in {}", repo.display());
            }
            for proposal in proposals {
                println!(
                    "proposal {}: targets version {}, signed by {} of {} needed ({})",
                    proposal.id,
                    proposal.targets_version,
                    proposal.signatures,
                    proposal.threshold,
                    if proposal.signed_by.is_empty() {
                        "nobody yet".to_owned()
                    } else {
                        proposal.signed_by.join(", ")
                    }
                );
                if let Some((signatures, threshold)) = proposal.current_root_quorum {
                    println!(
                        "  a change of signers: also signed by {signatures} of the {threshold} \
                         keys the current root needs"
                    );
                }
                if let Some(problem) = &proposal.problem {
                    println!("  cannot be published: {problem}");
                }
                for change in &proposal.changes {
                    println!("  {change}");
                }
            }
        }
        ReleaseCommand::Approve {
            repo,
            keys,
            id,
            snapshot_lifetime,
            timestamp_lifetime,
        } => {
            let lifetimes = LifetimeArgs {
                targets_lifetime: "90d".into(),
                snapshot_lifetime,
                timestamp_lifetime,
            }
            .lifetimes(None)?;
            let (changes, committed) =
                crate::release_proposals::approve(&repo, &keys, &id, lifetimes).await?;
            for change in &changes {
                println!("  {change}");
            }
            println!("{}", committed.describe("the change", &repo));
        }
        ReleaseCommand::Withdraw { repo, id } => {
            crate::release_proposals::withdraw(&repo, &id).await?;
            println!("withdrew proposal {id}");
        }
        ReleaseCommand::Fleet { json, endpoint } => {
            let client = endpoint.client()?;
            let fleet: serde_json::Value = endpoint
                .get_json(&client, "/api/v1/fleet/releases")
                .await
                .context("asking for the fleet's releases")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&fleet)?);
                return Ok(());
            }
            let text = crate::client::json_text;
            let releases = fleet["releases"].as_array().cloned().unwrap_or_default();
            if releases.is_empty() {
                println!("No node has recorded a release here yet.");
                return Ok(());
            }
            println!("{} node(s)", text(&fleet["nodes"]));
            for release in &releases {
                let running = match release["installed_sha256"].as_str() {
                    Some(sha) => format!(
                        "runs {} since {}",
                        sha.get(..12).unwrap_or(sha),
                        text(&release["installed_at"])
                    ),
                    None => "runs none of it".to_owned(),
                };
                println!(
                    "  {}  {}  {}  {running}{}",
                    text(&release["node"]),
                    text(&release["target"]),
                    text(&release["state"]),
                    release["reason"]
                        .as_str()
                        .map(|why| format!("; refused {}: {why}", text(&release["last_seen"])))
                        .unwrap_or_default()
                );
            }
        }
        ReleaseCommand::Recipients {
            nodes,
            json,
            endpoint,
        } => {
            let client = endpoint.client()?;
            let fleet: serde_json::Value = endpoint
                .get_json(&client, "/api/v1/fleet/recipients")
                .await
                .context("asking for the fleet's keys")?;
            let patterns: Vec<&str> = nodes
                .iter()
                .map(|pattern| pattern.trim())
                .filter(|pattern| !pattern.is_empty())
                .collect();
            let chosen: Vec<&serde_json::Value> = fleet["recipients"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|key| {
                    let node = key["node"].as_str().unwrap_or_default();
                    patterns.is_empty()
                        || patterns
                            .iter()
                            .any(|pattern| release::glob_match(pattern, node))
                })
                .collect();
            // An empty file would make `release add --recipients-file` fail later, further
            // from the cause; an empty list is as much an answer to a script.
            if chosen.is_empty() {
                anyhow::bail!(
                    "{} reported a key for encrypted targets to {} (nodes report theirs when \
                     they follow a release repository, through their uplink to a hub)",
                    if patterns.is_empty() {
                        "no node".to_owned()
                    } else {
                        format!("no node matching {}", patterns.join(", "))
                    },
                    endpoint.url
                );
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "recipients": chosen }))?
                );
                return Ok(());
            }
            let text = crate::client::json_text;
            for key in chosen {
                println!(
                    "# {}, reported {}{}{}",
                    text(&key["node"]),
                    text(&key["reported_at"]),
                    sealed_words(&key["sealed"], &key["sealed_pcrs"])
                        .unwrap_or_else(|| ", not sealed".to_owned()),
                    match key["previous_recipients"].as_array().map(Vec::len) {
                        Some(held) if held > 0 => {
                            format!("; still reads {held} previous key(s) until retired")
                        }
                        _ => String::new(),
                    }
                );
                println!("{}", text(&key["recipient"]));
            }
        }
        ReleaseCommand::List { repo, json } => {
            let loaded = release::load_local(&repo).await?;
            let mut targets = Vec::new();
            for (name, target) in loaded.all_targets() {
                let fabrik = ReleaseTarget::of(target)
                    .map(|parsed| parsed.map_err(|why| anyhow::anyhow!("{}: {why}", name.raw())))
                    .transpose()?;
                targets.push(serde_json::json!({
                    "target": name.raw(),
                    "sha256": release::hex(&target.hashes.sha256),
                    "length": target.length,
                    "fabrik": fabrik,
                }));
            }
            // The keys the root lists for a role and how many must sign.
            let signers = |role| {
                loaded.root().signed.roles.get(&role).map(|keys| {
                    serde_json::json!({
                        "threshold": keys.threshold.get(),
                        "keys": keys.keyids.iter().map(crate::release_proposals::short).collect::<Vec<_>>(),
                    })
                })
            };
            let proposals = crate::release_proposals::count(&repo)?;
            let summary = serde_json::json!({
                "root_version": loaded.root().signed.version.get(),
                "targets_version": loaded.targets().signed.version.get(),
                "snapshot_version": loaded.snapshot().signed.version.get(),
                "timestamp_version": loaded.timestamp().signed.version.get(),
                "targets_expire": loaded.targets().signed.expires.to_string(),
                "snapshot_expires": loaded.snapshot().signed.expires.to_string(),
                "timestamp_expires": loaded.timestamp().signed.expires.to_string(),
                "root_expires": loaded.root().signed.expires.to_string(),
                "targets_signers": signers(tough::schema::RoleType::Targets),
                "root_signers": signers(tough::schema::RoleType::Root),
                "proposals": proposals,
                "targets": targets,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
                return Ok(());
            }
            println!(
                "targets version {} (expires {}), timestamp expires {}",
                summary["targets_version"],
                loaded.targets().signed.expires,
                loaded.timestamp().signed.expires
            );
            for (field, what, role) in [
                ("targets_signers", "each change", "targets"),
                ("root_signers", "each change of the root", "root"),
            ] {
                let signers = &summary[field];
                let keys = signers["keys"].as_array().map_or(0, Vec::len);
                if keys > 1 {
                    println!(
                        "{what} signed by {} of {keys} {role} keys",
                        signers["threshold"]
                    );
                }
            }
            if proposals > 0 {
                println!(
                    "{proposals} proposal(s) waiting: `fabrik release proposals --repo {}`",
                    repo.display()
                );
            }
            for target in summary["targets"].as_array().into_iter().flatten() {
                let fabrik = &target["fabrik"];
                let nodes = fabrik["nodes"]
                    .as_array()
                    .map(|nodes| {
                        nodes
                            .iter()
                            .filter_map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "every node".into());
                let encrypted = fabrik["encrypted"]["recipients"]
                    .as_array()
                    .map(|recipients| format!(", encrypted to {}", recipients.len()))
                    .unwrap_or_default()
                    + &fabrik["share_bp"]
                        .as_u64()
                        .and_then(|share| u32::try_from(share).ok())
                        .map(|share| format!(", phased to {} %", release::percent(share)))
                        .unwrap_or_default()
                    + &fabrik["phase"]
                        .as_str()
                        .map(|key| format!(" by phase key `{key}`"))
                        .unwrap_or_default();
                println!(
                    "  {}  {} {}  {} bytes  sha256 {}  {}  for {nodes}{encrypted}",
                    target["target"].as_str().unwrap_or("?"),
                    fabrik["kind"].as_str().unwrap_or("(not Fabrik's)"),
                    fabrik["name"].as_str().unwrap_or(""),
                    target["length"],
                    target["sha256"].as_str().unwrap_or("?"),
                    if fabrik["signature"].is_string() {
                        "signed"
                    } else {
                        "unsigned"
                    },
                );
            }
        }
    }
    Ok(())
}

/// The recipients of `--recipient` and `--recipients-file`, each once.
fn read_recipients(
    given: Vec<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Vec<crate::age::Recipient>> {
    // An empty value (a shell variable that was not set) would otherwise publish in clear.
    if given.iter().any(|text| text.trim().is_empty()) {
        bail!("--recipient: an empty value; give a node's key (age1…)");
    }
    let mut texts: Vec<(String, String)> = given
        .into_iter()
        .map(|text| ("--recipient".to_owned(), text))
        .collect();
    if let Some(file) = file {
        let listed =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let before = texts.len();
        for (number, line) in listed.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                texts.push((
                    format!("{}:{}", file.display(), number + 1),
                    line.to_owned(),
                ));
            }
        }
        if texts.len() == before {
            bail!("{}: no recipients in it", file.display());
        }
    }
    let mut recipients = Vec::new();
    for (source, text) in texts {
        let recipient = crate::age::Recipient::parse(&text)
            .map_err(|e| anyhow::anyhow!("{source}: {}", crate::error_text::describe(&e)))?;
        if !recipients.contains(&recipient) {
            recipients.push(recipient);
        }
    }
    Ok(recipients)
}

fn parse_kind(text: &str) -> anyhow::Result<Kind> {
    Kind::parse(text).with_context(|| format!("--kind {text}: expected {}", Kind::LISTED))
}

fn parse_stage(text: &str) -> anyhow::Result<fabrik_registry::usecases::Stage> {
    use fabrik_registry::usecases::Stage;
    [Stage::Pilot, Stage::ScaleUp, Stage::Enterprise]
        .into_iter()
        .find(|stage| stage.display() == text || stage.as_str() == text)
        .with_context(|| format!("--stage {text}: expected pilot, scale-up or enterprise"))
}

/// `fabrik updates`
#[derive(Debug, Args)]
pub(crate) struct UpdatesArgs {
    #[command(subcommand)]
    command: UpdatesCommand,
}

#[derive(Debug, Subcommand)]
enum UpdatesCommand {
    /// What this node last found in its release repository, and what it installed.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Print a node's key for encrypted targets (`age1…`), which the publisher encrypts to
    /// with `fabrik release add --recipient`: the running node's (it answers with its
    /// status), or, with `--identity`, the one in that file.
    Recipient {
        /// Read the key from this identity file instead of asking the node: to provision a
        /// node before its first start, its `[updates] identity`, or
        /// `<data_dir>/updates/identity.key` when that is not set.
        #[arg(long)]
        identity: Option<PathBuf>,
        /// With `--identity`: make the file (mode 0600) when it does not exist yet.
        #[arg(long, requires = "identity")]
        create: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Give a node a new key for encrypted targets (a key that may have leaked, or one due
    /// for renewal): the new key goes first in its identity file and the previous ones stay
    /// after it, so targets already published to them still decrypt. Prints the new
    /// recipient; the node uses it from its next start.
    RotateKey {
        /// The node's identity file: its `[updates] identity`, or
        /// `<data_dir>/updates/identity.key`.
        #[arg(long)]
        identity: PathBuf,
    },
    /// Remove a node's previous keys from its identity file, once every encrypted target it
    /// needs is published to its current key: targets encrypted only to them are no longer
    /// for this node.
    RetireKeys {
        /// The node's identity file.
        #[arg(long)]
        identity: PathBuf,
    },
    /// Seal a node's identity file to its TPM (chosen by `TPM2TOOLS_TCTI`, as for the
    /// attestation agent; tpm2-tools installed): its keys are encrypted under a key the TPM
    /// seals, so a copy of the disk or of the file opens on no other TPM. Same path, read,
    /// rotated and retired as before; the node needs its TPM to start. Prints the recipient.
    SealKey {
        /// The node's identity file: its `[updates] identity`, or
        /// `<data_dir>/updates/identity.key`.
        #[arg(long)]
        identity: PathBuf,
        /// Bind the sealed key to these PCRs' current SHA-256 values as well (`7` for the
        /// Secure Boot state, `0,2,4,7` for firmware, option ROMs and boot loader too): it
        /// then opens only while the device boots as it does now. Firmware, boot loader or
        /// Secure Boot changes need `--reseal` without PCRs before, and with them after.
        #[arg(long, value_delimiter = ',', value_name = "PCR,...")]
        pcrs: Vec<u8>,
        /// Seal an already sealed file again, with a new sealed key bound to `--pcrs` (or to
        /// none): it must open on this TPM and boot first.
        #[arg(long)]
        reseal: bool,
    },
    /// Put back the Fabrik binary a release replaced (kept beside it as `<binary>.previous`)
    /// and keep the node from installing the rolled-back build again; restart the node
    /// afterwards.
    Rollback {
        /// The node's configuration file (for its data directory); without it the defaults
        /// and `FABRIK__*` overrides.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The installed binary (default: this one).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

/// How a node's key is sealed, from its `sealed` flag and `sealed_pcrs` as the API gives them
/// (`, sealed to its TPM and PCRs sha256:7`); none when it is not.
fn sealed_words(sealed: &serde_json::Value, pcrs: &serde_json::Value) -> Option<String> {
    (sealed == true).then(|| match pcrs.as_str() {
        Some(pcrs) => format!(", sealed to its TPM and PCRs {pcrs}"),
        None => ", sealed to its TPM".to_owned(),
    })
}

/// Runs `fabrik updates ...`.
pub(crate) async fn run_updates(args: UpdatesArgs) -> anyhow::Result<()> {
    let (json, endpoint) = match args.command {
        UpdatesCommand::Status { json, endpoint } => (json, endpoint),
        UpdatesCommand::Recipient {
            identity: Some(path),
            create,
            ..
        } => {
            let identity = if create {
                crate::node_keys::at(&path)
            } else {
                crate::node_keys::read(&path)
            }
            .map_err(|why| anyhow::anyhow!(why))?;
            println!("{}", identity.recipient());
            return Ok(());
        }
        UpdatesCommand::RotateKey { identity } => {
            let keys = crate::node_keys::rotate(&identity).map_err(|why| anyhow::anyhow!(why))?;
            println!("{}", keys.recipient());
            eprintln!(
                "{}: a new key, with {} previous one(s) kept after it. Restart the node to use \
                 it; publish encrypted targets to the new recipient (above), then run `fabrik \
                 updates retire-keys --identity {}`.",
                identity.display(),
                keys.previous_recipients().len(),
                identity.display()
            );
            return Ok(());
        }
        UpdatesCommand::Rollback { config, binary } => {
            let origin = config
                .as_ref()
                .map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
            let (node_config, settings) =
                match crate::config_check::load(config.as_deref(), &origin) {
                    Ok(loaded) => loaded,
                    Err(failure) => {
                        crate::config_check::report("", &origin, failure);
                        anyhow::bail!("{origin}: the configuration cannot be used");
                    }
                };
            let binary = match binary {
                Some(binary) => binary,
                None => std::env::current_exe().context("this binary's path")?,
            };
            let (rolled_back, restored) =
                crate::self_update::rollback(&binary, &settings.data_dir, None)
                    .map_err(|why| anyhow::anyhow!(why))?;
            println!("{restored}");
            eprintln!(
                "{}: the previous build (sha256 {restored}) is back in place of sha256 \
                 {rolled_back}, which this node will not install again. Restart the node to run \
                 it.",
                binary.display()
            );
            // Builds before decision 0071 read a PCR-bound identity file as a plain one,
            // fail to, and stop at start.
            if let (true, Some(pcrs)) =
                crate::node_keys::seal_on_disk(&node_config.updates.identity, &settings.data_dir)
            {
                eprintln!(
                    "This node's identity file is sealed to PCRs {pcrs} (`fabrik updates \
                     seal-key --pcrs`), which builds older than that option cannot read: such a \
                     build stops at its start. If the restored build is one, seal the file \
                     again without PCRs (`fabrik updates seal-key --reseal`) before restarting."
                );
            }
            return Ok(());
        }
        UpdatesCommand::SealKey {
            identity,
            pcrs,
            reseal,
        } => {
            let keys = crate::node_keys::seal(&identity, &pcrs, reseal)
                .map_err(|why| anyhow::anyhow!(why))?;
            println!("{}", keys.recipient());
            let bound = keys.sealed_pcrs().map_or_else(String::new, |pcrs| {
                format!(" while PCRs {pcrs} hold the values they hold now")
            });
            let plain_blocks = if reseal {
                // The file it replaced was sealed under another key, which the TPM still
                // opens on that file's own terms (unbound, or to other PCRs).
                " The file it replaced still opens on this TPM as it was sealed, and its \
                 blocks, a backup or a copy may hold it: where a copy may exist and the new \
                 seal is stricter, rotate the key (`fabrik updates rotate-key`), publish to \
                 the new one and retire the old (`fabrik updates retire-keys`)."
            } else {
                " The plain file's blocks may remain on the disk until overwritten: on a disk \
                 that was copied before, rotate the key (`fabrik updates rotate-key`)."
            };
            eprintln!(
                "{}: sealed to this TPM ({} key(s)); it opens only there{bound}. The node \
                 unseals it at its next start.{plain_blocks}",
                identity.display(),
                keys.all().len()
            );
            return Ok(());
        }
        UpdatesCommand::RetireKeys { identity } => {
            let (keys, retired) =
                crate::node_keys::retire_previous(&identity).map_err(|why| anyhow::anyhow!(why))?;
            println!("{}", keys.recipient());
            eprintln!(
                "{}: {retired} previous key(s) removed{}",
                identity.display(),
                if retired > 0 {
                    "; restart the node for it to stop reading targets published to them"
                } else {
                    ""
                }
            );
            return Ok(());
        }
        UpdatesCommand::Recipient {
            identity: None,
            endpoint,
            ..
        } => {
            let client = endpoint.client()?;
            let status: serde_json::Value = endpoint
                .get_json(&client, "/api/v1/updates")
                .await
                .context("asking the node for its key")?;
            if let Some(why) = status["status"]["key_error"].as_str() {
                bail!("{}: its keys cannot be opened: {why}", endpoint.url);
            }
            let Some(recipient) = status["status"]["recipient"].as_str() else {
                bail!(
                    "{} follows no release repository ([updates] url), so it has no key yet; \
                     to provision one before its first start, use --identity FILE --create",
                    endpoint.url
                );
            };
            println!("{recipient}");
            return Ok(());
        }
    };
    let client = endpoint.client()?;
    let status: serde_json::Value = endpoint
        .get_json(&client, "/api/v1/updates")
        .await
        .context("asking for the updates status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    if status["configured"] != true {
        println!("This process follows no release repository ([updates] url and root).");
        return Ok(());
    }
    let status = &status["status"];
    let text = crate::client::json_text;
    println!(
        "node {} (key {}{}) follows {} (every {} s); last check {}, last verified {}",
        text(&status["node"]),
        if status["key_error"].is_string() {
            "not opened".to_owned()
        } else {
            text(&status["recipient"])
        },
        sealed_words(&status["key_sealed"], &status["key_sealed_pcrs"]).unwrap_or_default(),
        text(&status["repository"]),
        text(&status["interval_seconds"]),
        text(&status["last_check_at"]),
        text(&status["last_verified_at"]),
    );
    let previous: Vec<&str> = status["previous_recipients"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|key| key.as_str())
        .collect();
    if !previous.is_empty() {
        println!(
            "  previous keys, still read until retired: {}",
            previous.join(", ")
        );
    }
    if let Some(why) = status["key_error"].as_str() {
        println!(
            "  keys for encrypted targets cannot be opened (encrypted targets wait, tried again \
             at each check): {why}"
        );
    }
    println!(
        "  binary: {} on {}{}",
        if status["binary_updates"] == true {
            "installed from the repository"
        } else {
            "not installed from the repository ([updates] binary = false)"
        },
        text(&status["platform"]),
        status["binary_sha256"]
            .as_str()
            .map(|sha| format!(", running sha256 {sha}"))
            .unwrap_or_default()
    );
    let trial = &status["binary_unconfirmed"];
    if trial.is_object() {
        println!(
            "  not confirmed yet (decision 0066): run {}, {} earlier run(s) failed; back to the \
             previous build at {} failed runs (0: never); confirms itself after {} s with every \
             module up",
            text(&trial["runs"]),
            text(&trial["failed_runs"]),
            text(&trial["rollback_after_failed_runs"]),
            text(&trial["confirm_after_seconds"]),
        );
    }
    println!(
        "  trusted: root v{}, targets v{}, snapshot v{}, timestamp v{}; expires {}",
        text(&status["root_version"]),
        text(&status["targets_version"]),
        text(&status["snapshot_version"]),
        text(&status["timestamp_version"]),
        text(&status["expires_at"]),
    );
    for (what, role) in [
        ("each release", "targets"),
        ("each change of the root", "root"),
    ] {
        let keys = &status[format!("{role}_keys")];
        if keys.as_u64() > Some(1) {
            println!(
                "  {what} signed by {} of {} {role} keys",
                text(&status[format!("{role}_threshold")]),
                text(keys),
            );
        }
    }
    for target in status["targets"].as_array().into_iter().flatten() {
        println!(
            "  {}  {} {}{}  {}{}",
            text(&target["target"]),
            text(&target["kind"]),
            text(&target["name"]),
            if target["encrypted"] == true {
                " (encrypted)"
            } else {
                ""
            },
            text(&target["state"]),
            target["reason"]
                .as_str()
                .map(|why| format!(": {why}"))
                .unwrap_or_default()
        );
    }
    if !status["last_error"].is_null() {
        println!("  last error: {}", text(&status["last_error"]));
    }
    Ok(())
}
