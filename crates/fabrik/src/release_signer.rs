//! The `releases` module: keeps a served release repository's online metadata signed. With
//! `[releases] repo` and `keys` (a directory holding only `snapshot.key` and
//! `timestamp.key`), it re-signs the snapshot and the timestamp whenever less than half of
//! their lifetime is left, and warns while the targets or root metadata — whose keys stay with
//! the publisher — are within a week of expiring. Idle otherwise.
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
            .map(|(role, expires)| format!("{role} (expires {expires})"))
            .collect();
        let quiet = self
            .last_warning
            .is_some_and(|at| at.elapsed() < WARN_EVERY);
        if !expiring.is_empty() && !quiet {
            self.last_warning = Some(tokio::time::Instant::now());
            tracing::warn!(
                roles = %expiring.join(", "),
                "Release metadata this hub cannot re-sign expires soon: the publisher must run \
                 `fabrik release refresh` (nodes install nothing once it has expired)."
            );
        }
        Ok(())
    }
}

/// Starts the module: idle without `[releases] repo` and `keys`.
pub(crate) async fn start(config: &Config) -> Result<ServiceHandle, String> {
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
    let lifetime = |text: &str| fabrik_runtime::units::parse_duration(text);
    let mut signer = Signer {
        repo: PathBuf::from(repo),
        keys: PathBuf::from(keys),
        snapshot_lifetime: lifetime(&releases.snapshot_lifetime)?,
        timestamp_lifetime: lifetime(&releases.timestamp_lifetime)?,
        last_warning: None,
    };
    // Keys that cannot sign fail the start, not a pass a day later.
    release::refresh_online(
        Path::new(repo),
        Path::new(keys),
        Some(signer.snapshot_lifetime),
        signer.timestamp_lifetime,
    )
    .await
    .map_err(|e| format!("releases.keys: {}", crate::error_text::describe(&e)))?;
    signer
        .pass()
        .await
        .map_err(|e| format!("releases: {}", crate::error_text::describe(&e)))?;
    tracing::info!(%repo, "Keeping the release repository's snapshot and timestamp signed.");
    let every =
        (signer.timestamp_lifetime.min(signer.snapshot_lifetime) / 4).min(Duration::from_secs(600));
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(every) => {}
            }
            if let Err(e) = signer.pass().await {
                tracing::error!(
                    error = %crate::error_text::describe(&e),
                    "The release metadata could not be re-signed; nodes install nothing once \
                     it expires."
                );
            }
        }
    });
    Ok(ServiceHandle { stop, task })
}

#[cfg(test)]
mod tests {
    use super::*;

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
