//! The `releases` module: keeps a served release repository's online metadata signed. With
//! `[releases] repo` and `keys` (a directory holding only `snapshot.key` and
//! `timestamp.key`), it re-signs the snapshot and the timestamp whenever less than half of
//! their lifetime is left, and warns while the targets or root metadata — whose keys stay with
//! the publisher — are within a week of expiring; and publishes a release proposal once enough
//! targets keys have signed it (decision 0075). Idle otherwise.
//!
//! Every role's expiry is exported as `fabrik_releases_expiry_seconds{role}` (Unix time), for
//! an alert rule.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fabrik_runtime::{Config, ServiceHandle};
use tokio_util::sync::CancellationToken;

use crate::release;

/// Warn about the publisher's roles this long before they expire.
const WARN_AHEAD: Duration = Duration::from_secs(7 * 24 * 3600);
/// And not more often than this.
const WARN_EVERY: Duration = Duration::from_secs(6 * 3600);

struct Signer {
    repo: PathBuf,
    keys: PathBuf,
    /// The signer's memory of the newest metadata it saw (`<data_dir>/releases/state`).
    state: PathBuf,
    snapshot_lifetime: Duration,
    timestamp_lifetime: Duration,
    last_warning: Option<tokio::time::Instant>,
}

/// Whether less than half of `lifetime` is left before `expires`.
fn half_gone(expires: jiff::Timestamp, lifetime: Duration) -> bool {
    let left = expires.duration_since(jiff::Timestamp::now());
    let half = jiff::SignedDuration::try_from(lifetime / 2).unwrap_or(jiff::SignedDuration::MAX);
    left < half
}

impl Signer {
    /// Re-signs what is due; an error leaves the repository as it was.
    async fn pass(&mut self) -> anyhow::Result<()> {
        let lifetimes = release::Lifetimes {
            snapshot: self.snapshot_lifetime,
            timestamp: self.timestamp_lifetime,
            ..release::Lifetimes::default()
        };
        // Never in the way of re-signing the timestamp: nodes stop installing once it expires.
        match crate::release_proposals::publish_ready(
            &self.repo,
            &self.keys,
            &self.state,
            lifetimes,
        )
        .await
        {
            Ok(Some(version)) => tracing::info!(
                targets_version = version,
                "Published a release proposal its signers completed."
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                error = %crate::error_text::describe(&e),
                "The release proposals could not be read; the metadata is re-signed all the same."
            ),
        }
        let loaded = release::load_local(&self.repo).await?;
        let expiries = [
            ("root", loaded.root().signed.expires),
            ("targets", loaded.targets().signed.expires),
            ("snapshot", loaded.snapshot().signed.expires),
            ("timestamp", loaded.timestamp().signed.expires),
        ];
        let snapshot_due = half_gone(expiries[2].1, self.snapshot_lifetime);
        let timestamp_due = half_gone(expiries[3].1, self.timestamp_lifetime);
        drop(loaded);
        let (mut snapshot_expires, mut timestamp_expires) = (expiries[2].1, expiries[3].1);
        if snapshot_due || timestamp_due {
            (snapshot_expires, timestamp_expires) = release::refresh_online(
                &self.repo,
                &self.keys,
                &self.state,
                snapshot_due.then_some(self.snapshot_lifetime),
                self.timestamp_lifetime,
            )
            .await?;
            tracing::info!(
                snapshot = snapshot_due,
                %timestamp_expires,
                "Release metadata re-signed."
            );
        }
        for (role, expires) in [
            ("root", expiries[0].1),
            ("targets", expiries[1].1),
            ("snapshot", snapshot_expires),
            ("timestamp", timestamp_expires),
        ] {
            metrics::gauge!("fabrik_releases_expiry_seconds", "role" => role)
                .set(expires.as_second() as f64);
        }
        let soon = jiff::SignedDuration::try_from(WARN_AHEAD).unwrap_or(jiff::SignedDuration::MAX);
        let expiring: Vec<String> = expiries[..2]
            .iter()
            .filter(|(_, expires)| expires.duration_since(jiff::Timestamp::now()) < soon)
            .map(|(role, expires)| {
                let command = if *role == "root" {
                    "fabrik release refresh --root, with as many root keys as the root asks \
                     (--root-key)"
                } else {
                    "fabrik release refresh, with a targets key, and `fabrik release \
                     approve` by as many more as the root asks"
                };
                format!("{role} (expires {expires}; {command})")
            })
            .collect();
        let quiet = self
            .last_warning
            .is_some_and(|at| at.elapsed() < WARN_EVERY);
        if !expiring.is_empty() && !quiet {
            self.last_warning = Some(tokio::time::Instant::now());
            tracing::warn!(
                roles = %expiring.join(", "),
                "Release metadata this hub cannot re-sign expires soon: the publisher must \
                 re-sign it (nodes install nothing once it has expired)."
            );
        }
        Ok(())
    }
}

/// Whether the key files in `keys` are the ones the repository's root names for the snapshot
/// and timestamp roles: a wrong directory fails the start, not every pass.
async fn check_keys(repo: &Path, keys: &Path) -> Result<(), String> {
    use tough::key_source::{KeySource, LocalKeySource};
    use tough::schema::RoleType;
    let loaded = match release::load_local(repo).await {
        Ok(loaded) => loaded,
        Err(e) => {
            // Checked again on every pass, and logged there.
            tracing::warn!(error = %crate::error_text::describe(&e), "The release repository does not load yet.");
            return Ok(());
        }
    };
    for (role, name) in [
        (RoleType::Snapshot, "snapshot"),
        (RoleType::Timestamp, "timestamp"),
    ] {
        let path = keys.join(format!("{name}.key"));
        let key = LocalKeySource { path: path.clone() }
            .as_sign()
            .await
            .map_err(|e| format!("releases.keys: {}: {e}", path.display()))?
            .tuf_key();
        let id = key
            .key_id()
            .map_err(|e| format!("releases.keys: {}: {e}", path.display()))?;
        let named = loaded
            .root()
            .signed
            .roles
            .get(&role)
            .is_some_and(|keys| keys.keyids.contains(&id));
        if !named {
            return Err(format!(
                "releases.keys: {} is not the repository's {name} key",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Starts the module: idle without `[releases] repo` and `keys`. Only keys that are not the
/// repository's fail the start; anything else is logged and tried again, so the hub's API and
/// `/tuf` stay up.
pub(crate) async fn start(config: &Config, data_dir: &Path) -> Result<ServiceHandle, String> {
    let releases = &config.releases;
    let (repo, keys) = (releases.repo.trim(), releases.keys.trim());
    if repo.is_empty() || keys.is_empty() {
        return Ok(crate::nats_link::idle_module());
    }
    if let Some((path, message)) = crate::updates::check(config)
        .into_iter()
        .find(|(path, _)| path.starts_with("releases."))
    {
        return Err(format!("{path}: {message}"));
    }
    check_keys(Path::new(repo), Path::new(keys)).await?;
    let lifetime = |text: &str| fabrik_runtime::units::parse_duration(text);
    let mut signer = Signer {
        repo: PathBuf::from(repo),
        keys: PathBuf::from(keys),
        state: data_dir.join("releases").join("state"),
        snapshot_lifetime: lifetime(&releases.snapshot_lifetime)?,
        timestamp_lifetime: lifetime(&releases.timestamp_lifetime)?,
        last_warning: None,
    };
    tracing::info!(%repo, "Keeping the release repository's snapshot and timestamp signed.");
    // A proposal its signers completed (decision 0075) waits for this pass, so it runs each
    // minute; what it re-signs is still due only at half a lifetime.
    let every =
        (signer.timestamp_lifetime.min(signer.snapshot_lifetime) / 4).min(Duration::from_secs(60));
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Err(e) = signer.pass().await {
                tracing::error!(
                    error = %crate::error_text::describe(&e),
                    "The release metadata could not be re-signed; nodes install nothing once \
                     it expires."
                );
            }
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(every) => {}
            }
        }
    });
    Ok(ServiceHandle { stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_repositorys_online_keys_are_taken() {
        let dir = tempfile::tempdir().expect("dir");
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        release::init(&repo, &keys, release::Lifetimes::default())
            .await
            .expect("init");
        assert_eq!(check_keys(&repo, &keys).await, Ok(()));
        let wrong = dir.path().join("wrong");
        std::fs::create_dir_all(&wrong).expect("dir");
        std::fs::copy(keys.join("snapshot.key"), wrong.join("snapshot.key")).expect("copy");
        std::fs::copy(keys.join("targets.key"), wrong.join("timestamp.key")).expect("copy");
        let refused = check_keys(&repo, &wrong).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|why| why.contains("not the repository's timestamp key")),
            "{refused:?}"
        );
    }

    #[test]
    fn due_when_less_than_half_the_lifetime_is_left() {
        let day = Duration::from_secs(86_400);
        let in_hours = |hours: i64| {
            jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_hours(hours))
                .expect("time")
        };
        assert!(!half_gone(in_hours(13), day));
        assert!(half_gone(in_hours(11), day));
        assert!(half_gone(in_hours(-1), day), "already expired");
    }
}
