//! Replacing the running Fabrik binary with one from the release repository (decision 0044):
//! the platform a file was built for, staging and a trial run of the new file, the swap that
//! keeps the old one beside it, the restart into it, the operator's way back, and (decision
//! 0066) the new binary's runs until it confirms itself, after which failing ones no longer
//! send the node back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Longest the new binary's trial run (`config check` or `--version`) may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before a confirmation that could not be written is tried again.
const CONFIRM_RETRY: Duration = Duration::from_secs(60);

/// This process's platform as targets name it: `linux-x86_64`, `linux-aarch64`, ….
pub(crate) fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The platform an executable was built for, read from its ELF header: `None` for a file
/// that is not an ELF executable or for a machine this list does not know.
pub(crate) fn elf_platform(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    // e_machine follows e_ident (16 bytes) and e_type (2), in the file's byte order.
    let field = [bytes[18], bytes[19]];
    let machine = match bytes[5] {
        1 => u16::from_le_bytes(field),
        2 => u16::from_be_bytes(field),
        _ => return None,
    };
    let arch = match machine {
        3 => "x86",
        40 => "arm",
        62 => "x86_64",
        183 => "aarch64",
        243 => "riscv64",
        _ => return None,
    };
    // ELFOSABI_NONE (System V) is what Linux toolchains write; FreeBSD marks its own.
    let os = match bytes[7] {
        0 | 3 => "linux",
        9 => "freebsd",
        _ => return None,
    };
    Some(format!("{os}-{arch}"))
}

/// What `fabrik run` knows about itself for a binary update: the file it was started from
/// (read at start: once replaced, `/proc/self/exe` names a deleted file), the configuration
/// file the new binary is tried with, and the request to restart into the new file.
#[derive(Clone)]
pub(crate) struct SelfUpdate {
    inner: Arc<Inner>,
}

struct Inner {
    exe: Option<PathBuf>,
    /// The file this process runs, opened at start: on Linux `/proc/self/exe`, which still
    /// reads the running image after the file at `exe` was replaced (a rollback, a `cp`).
    image: Option<std::fs::File>,
    config: Option<PathBuf>,
    restart: CancellationToken,
    /// A stop signal arrived: the process stops, even when an install asked for a restart.
    stop_signalled: std::sync::atomic::AtomicBool,
    /// Only a hash that was read is kept: a failed read is tried again at the next check.
    sha256: tokio::sync::OnceCell<String>,
    /// This run was counted as one of a new binary that has not confirmed itself yet.
    unconfirmed: std::sync::atomic::AtomicBool,
}

impl SelfUpdate {
    /// The running process's view of itself; `config` is `fabrik run --config`.
    pub(crate) fn capture(config: Option<PathBuf>) -> Self {
        let exe = std::env::current_exe().ok();
        let image = std::fs::File::open("/proc/self/exe")
            .or_else(|_| std::fs::File::open(exe.as_deref().unwrap_or(Path::new(""))))
            .ok();
        Self {
            inner: Arc::new(Inner {
                exe,
                image,
                config,
                restart: CancellationToken::new(),
                stop_signalled: std::sync::atomic::AtomicBool::new(false),
                sha256: tokio::sync::OnceCell::new(),
                unconfirmed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Says a stop signal arrived: the process will stop rather than restart.
    pub(crate) fn note_stop_signal(&self) {
        self.inner
            .stop_signalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the process should exec the new binary now: an install asked for it and no
    /// stop signal came (a `systemctl stop` during an install stops the node).
    pub(crate) fn should_restart(&self) -> bool {
        self.restart_requested() && !self.stop_signalled()
    }

    /// The file this process was started from.
    pub(crate) fn exe(&self) -> Result<&Path, String> {
        self.inner
            .exe
            .as_deref()
            .ok_or_else(|| "the running binary's path is not known on this system".to_owned())
    }

    /// The image this process runs (opened at start), else the file at its path.
    fn image(&self) -> Result<std::fs::File, String> {
        match &self.inner.image {
            Some(image) => image
                .try_clone()
                .map_err(|e| format!("the running binary: {e}")),
            None => {
                let exe = self.exe()?;
                std::fs::File::open(exe).map_err(|e| format!("{}: {e}", exe.display()))
            }
        }
    }

    /// SHA-256 of the binary this process runs, read off the async workers from the image
    /// opened at start (not from the path, whose file an install or a rollback replaces).
    pub(crate) async fn running_sha256(&self) -> Result<String, String> {
        self.inner
            .sha256
            .get_or_try_init(|| async {
                let image = self.image()?;
                tokio::task::spawn_blocking(move || reader_sha256(image))
                    .await
                    .map_err(|e| format!("hashing the running binary stopped: {e}"))?
                    .map_err(|e| format!("reading the running binary: {e}"))
            })
            .await
            .cloned()
    }

    /// SHA-256 of the binary this process runs, read now on this thread (at start, before
    /// the async runtime) and kept for [`Self::running_sha256`].
    fn running_sha256_now(&self) -> Result<String, String> {
        if let Some(known) = self.inner.sha256.get() {
            return Ok(known.clone());
        }
        let sha256 =
            reader_sha256(self.image()?).map_err(|e| format!("reading the running binary: {e}"))?;
        // Another reader may have set it meanwhile: the same file, the same hash.
        let _ = self.inner.sha256.set(sha256.clone());
        Ok(sha256)
    }

    /// At the start of `fabrik run`, for the process that installs binaries: when it runs a
    /// new binary that has not confirmed itself, counts this run, and the previous one as
    /// failed unless it ended with a clean stop. After `limit` failed runs (0: never) the
    /// previous binary is put back at the running one's path, and the caller restarts into
    /// it. Everything said is logged here.
    /// `try_previous` runs the previous binary's trial before it is put back.
    pub(crate) fn count_start(
        &self,
        data_dir: &Path,
        limit: u32,
        try_previous: impl FnOnce(&Path) -> Result<(), String>,
    ) -> StartCount {
        let exe = match self.exe() {
            Ok(exe) => exe.to_owned(),
            Err(_) => return StartCount::Run,
        };
        match count_start(
            &exe,
            data_dir,
            || self.running_sha256_now(),
            limit,
            try_previous,
        ) {
            Ok(StartCount::Counting {
                unconfirmed,
                rollback_refused,
            }) => {
                self.inner
                    .unconfirmed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                if let Some(why) = &rollback_refused {
                    tracing::error!(error = %why, failed_runs = unconfirmed.failed_runs, "The new binary failed too often, but the previous one cannot be put back; this one runs on (`fabrik updates rollback` needs the same).");
                }
                tracing::info!(
                    run = unconfirmed.runs,
                    failed_runs = unconfirmed.failed_runs,
                    rollback_after_failed_runs = limit,
                    "This binary was installed from a release and has not confirmed itself yet."
                );
                StartCount::Counting {
                    unconfirmed,
                    rollback_refused,
                }
            }
            Ok(StartCount::RolledBack {
                rolled_back,
                restored,
                reason,
            }) => {
                tracing::error!(build = %rolled_back, restored = %restored, binary = %exe.display(), %reason, "The new binary was rolled back: the previous one is back in place, and the node restarts into it.");
                StartCount::RolledBack {
                    rolled_back,
                    restored,
                    reason,
                }
            }
            Ok(StartCount::Run) => StartCount::Run,
            Err(why) => {
                tracing::error!(error = %why, "The runs of the new binary could not be counted; it runs on.");
                StartCount::Run
            }
        }
    }

    /// Whether this run is one of a new binary that has not confirmed itself yet.
    pub(crate) fn awaiting_confirmation(&self) -> bool {
        self.inner
            .unconfirmed
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The new binary ran long enough with every module up: a later failure of it is the
    /// service manager's to restart, not a reason to go back. Tried again every minute while
    /// the record cannot be written (a full disk), so a build that runs for weeks does not stay
    /// unconfirmed for one failed write.
    pub(crate) async fn confirm(&self, data_dir: &Path, after: Duration) {
        let Some(running) = self.known_sha256() else {
            return;
        };
        loop {
            let (data_dir, running) = (data_dir.to_owned(), running.clone());
            let confirmed = tokio::task::spawn_blocking(move || confirm(&data_dir, &running))
                .await
                .map_err(|e| format!("confirming stopped: {e}"))
                .and_then(|confirmed| confirmed);
            match confirmed {
                Ok(confirmed) => {
                    self.inner
                        .unconfirmed
                        .store(false, std::sync::atomic::Ordering::SeqCst);
                    if confirmed {
                        tracing::info!(
                            after = ?after,
                            "The new binary ran with every module up and confirmed itself: it is no longer rolled back by itself."
                        );
                    }
                    return;
                }
                Err(why) => {
                    tracing::warn!(error = %why, "The new binary could not confirm itself; trying again in a minute.");
                    tokio::time::sleep(CONFIRM_RETRY).await;
                }
            }
        }
    }

    /// Whether a stop signal arrived.
    pub(crate) fn stop_signalled(&self) -> bool {
        self.inner
            .stop_signalled
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// At a stop a signal asked for (also one a module made late): this run of an
    /// unconfirmed binary did not fail.
    pub(crate) fn note_clean_stop(&self, data_dir: &Path) {
        if !self.awaiting_confirmation() {
            return;
        }
        let Some(running) = self.known_sha256() else {
            return;
        };
        if let Err(why) = end_run(data_dir, &running) {
            tracing::warn!(error = %why, "The clean stop of the new binary could not be recorded; the next start counts this run as failed.");
        }
    }

    /// The running binary's SHA-256 when it was read already.
    pub(crate) fn known_sha256(&self) -> Option<String> {
        self.inner.sha256.get().cloned()
    }

    /// Whether an install asked the process to restart into the new binary.
    pub(crate) fn restart_requested(&self) -> bool {
        self.inner.restart.is_cancelled()
    }

    /// Resolves once an install asked for the restart.
    pub(crate) async fn restart_wanted(&self) {
        self.inner.restart.cancelled().await;
    }

    /// Puts `bytes` (verified against the signed hash already) in place of the running
    /// binary: written beside it, tried, then renamed over it with the old file kept as
    /// `<exe>.previous`; records the swap in `<data_dir>/updates/binary.json` and asks the
    /// process to restart. A file that fails its trial is removed and nothing changes.
    pub(crate) async fn install(
        &self,
        bytes: Vec<u8>,
        sha256: &str,
        target: &str,
        data_dir: &Path,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let exe = self.exe()?.to_owned();
        let staged = staged_path(&exe, sha256)?;
        let write_to = staged.clone();
        let written = tokio::task::spawn_blocking(move || write_executable(&write_to, &bytes))
            .await
            .map_err(|e| format!("staging stopped: {e}"))
            .and_then(|written| written);
        let tried = match written {
            Ok(()) => self.trial(&staged, "new").await,
            Err(why) => Err(why),
        };
        // A stop during the trial stops the node on the old binary: nothing is swapped.
        let tried = tried.and_then(|()| {
            if stop.is_cancelled() {
                Err("the node is stopping; the new binary is installed at the next start".into())
            } else {
                Ok(())
            }
        });
        if let Err(why) = tried {
            // A half-written or refused file does not stay beside the binary.
            let _ = std::fs::remove_file(&staged);
            return Err(why);
        }
        let previous_sha256 = match self.running_sha256().await {
            Ok(sha) => sha,
            Err(why) => {
                let _ = std::fs::remove_file(&staged);
                return Err(why);
            }
        };
        let (exe_for_swap, staged_for_swap) = (exe.clone(), staged.clone());
        let swapped = tokio::task::spawn_blocking(move || swap(&exe_for_swap, &staged_for_swap))
            .await
            .map_err(|e| format!("the swap stopped: {e}"))?;
        if let Err(why) = swapped {
            let _ = std::fs::remove_file(&staged);
            return Err(why);
        }
        let recorded = BinaryState::locked(data_dir).and_then(|(_lock, mut state)| {
            state.installed = Some(Installed {
                sha256: sha256.to_owned(),
                target: target.to_owned(),
                path: exe.display().to_string(),
                previous_sha256,
                at: crate::updates::now_rfc3339(),
                unconfirmed: Some(Unconfirmed::default()),
            });
            state.write(data_dir)
        });
        if let Err(why) = recorded {
            tracing::warn!(error = %why, "The binary swap could not be recorded; `fabrik updates rollback` still finds the previous binary beside it.");
        }
        tracing::info!(binary = %exe.display(), %sha256, "New Fabrik binary in place; restarting into it.");
        self.inner.restart.cancel();
        Ok(())
    }

    /// Runs the staged file the way the restart will, short of starting: `config check` of
    /// this process's configuration file (with the same `FABRIK__*` overrides, inherited), or
    /// `--version` without one. A file that cannot run on this machine, or that rejects the
    /// configuration, fails here rather than after the swap.
    /// `which` names the file in what is said: `new`, or `previous` before a rollback.
    pub(crate) async fn trial(&self, staged: &Path, which: &str) -> Result<(), String> {
        let mut command = tokio::process::Command::new(staged);
        let shown = match &self.inner.config {
            Some(config) => {
                command.arg("config").arg("check").arg(config);
                "config check"
            }
            None => {
                command.arg("--version");
                "--version"
            }
        };
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(TRIAL_TIMEOUT, command.output())
            .await
            .map_err(|_| {
                format!(
                    "the {which} binary's trial (`{shown}`) did not end within {} s",
                    TRIAL_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("the {which} binary does not run here (`{shown}`): {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&output.stderr);
        let said = said
            .lines()
            .chain(String::from_utf8_lossy(&output.stdout).lines())
            .map(str::trim)
            .find(|line| !line.is_empty())
            .map(|line| format!(": {line}"))
            .unwrap_or_default();
        Err(format!(
            "the {which} binary failed its trial (`{shown}`, {}){said}",
            output.status
        ))
    }
}

/// Where the new binary is written: beside the running one (the rename over it must stay on
/// one file system), hidden, named by its hash.
fn staged_path(exe: &Path, sha256: &str) -> Result<PathBuf, String> {
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{}: no directory", exe.display()))?;
    let name = exe
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| format!("{}: no file name", exe.display()))?;
    let short = sha256.get(..12).unwrap_or(sha256);
    Ok(dir.join(format!(".{name}.update-{short}")))
}

/// Removes files an interrupted install left beside `exe` (`.<name>.update-*`); returns how
/// many.
pub(crate) fn sweep_staged(exe: &Path) -> usize {
    let (Some(dir), Some(name)) = (exe.parent(), exe.file_name().and_then(|n| n.to_str())) else {
        return 0;
    };
    let prefix = format!(".{name}.update-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter(|entry| std::fs::remove_file(entry.path()).is_ok())
        .count()
}

/// Whether a file can be made (and removed) beside `exe`, where an install stages the new
/// binary: checked before a download, so a read-only directory is not found only after it.
pub(crate) fn check_writable_beside(exe: &Path) -> Result<(), String> {
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{}: no directory", exe.display()))?;
    let probe = dir.join(format!(".fabrik-write-probe-{}", std::process::id()));
    std::fs::File::create(&probe)
        .and_then(|_| std::fs::remove_file(&probe))
        .map_err(|e| {
            format!(
                "cannot write beside the running binary in {} ({e}): a binary update needs \
                 that directory writable by the node's user",
                dir.display()
            )
        })
}

/// The file beside the binary that holds the one it replaced.
pub(crate) fn previous_path(exe: &Path) -> PathBuf {
    let mut name = exe.as_os_str().to_owned();
    name.push(".previous");
    PathBuf::from(name)
}

fn write_executable(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o755);
    let mut file = options.open(path).map_err(|e| {
        format!(
            "cannot write the new binary beside the running one ({}): {e}",
            path.display()
        )
    })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `<exe>.previous` becomes the running file (a hard link, else a copy), then the staged file
/// is renamed over `exe`: at every moment `exe` is a whole binary, old or new.
fn swap(exe: &Path, staged: &Path) -> Result<(), String> {
    let previous = previous_path(exe);
    match std::fs::remove_file(&previous) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", previous.display())),
    }
    if std::fs::hard_link(exe, &previous).is_err() {
        std::fs::copy(exe, &previous)
            .and_then(|_| std::fs::File::open(&previous)?.sync_all())
            .map_err(|e| {
                format!(
                    "cannot keep the running binary as {}: {e}",
                    previous.display()
                )
            })?;
    }
    std::fs::rename(staged, exe)
        .map_err(|e| format!("cannot put the new binary at {}: {e}", exe.display()))?;
    sync_parent(exe);
    Ok(())
}

/// Makes a rename durable (best effort: not every file system lets a directory be synced).
fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|dir| dir.sync_all());
    }
}

pub(crate) fn file_sha256(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    reader_sha256(file).map_err(|e| format!("{}: {e}", path.display()))
}

/// SHA-256 of a file from its start (a clone of an open file shares its offset: it is read
/// from 0 whatever was read before).
fn reader_sha256(mut file: std::fs::File) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(crate::release::hex(&hasher.finalize()))
}

/// `<data_dir>/updates/binary.json`: the last swap, and the builds an operator rolled back
/// (never installed again on this node).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct BinaryState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) installed: Option<Installed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) refused: Vec<RolledBack>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Installed {
    pub(crate) sha256: String,
    pub(crate) target: String,
    pub(crate) path: String,
    pub(crate) previous_sha256: String,
    pub(crate) at: String,
    /// Until the new binary confirms itself: its runs so far. Absent in a record written
    /// before decision 0066, whose build is taken as confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unconfirmed: Option<Unconfirmed>,
}

/// The runs of a new binary that has not confirmed itself (decision 0066).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Unconfirmed {
    /// Runs started.
    pub(crate) runs: u32,
    /// Runs that ended without a clean stop: a crash, a kill, an error.
    pub(crate) failed_runs: u32,
    /// A run started and has not said it stopped cleanly: the next start counts it as failed.
    pub(crate) running: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RolledBack {
    pub(crate) sha256: String,
    pub(crate) at: String,
    /// Why, when the node rolled back by itself; absent for `fabrik updates rollback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// Not yet in the audit log: a rollback happens before the registry is open (at a start,
    /// or from the command line), so the updates module audits it when it next starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) audit_pending: bool,
}

/// What a start found about a new binary that has not confirmed itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartCount {
    /// Nothing to count: no install recorded, or its build confirmed, or another build runs.
    Run,
    /// This run was counted; with why the previous binary was not put back when that was
    /// due (the build runs on, and may still confirm itself).
    Counting {
        unconfirmed: Unconfirmed,
        rollback_refused: Option<String>,
    },
    /// The previous binary is back in place (hashes of the build rolled back and of the one
    /// restored); the process restarts into it.
    RolledBack {
        rolled_back: String,
        restored: String,
        reason: String,
    },
}

impl BinaryState {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("updates").join("binary.json")
    }

    /// The state; empty when there is none (or it cannot be read, which is logged).
    pub(crate) fn read(data_dir: &Path) -> Self {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %path.display(), error = %e, "The binary update state is unreadable; starting afresh.");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// The state read under [`StateLock`], for a change: held until the guard drops.
    pub(crate) fn locked(data_dir: &Path) -> Result<(StateLock, Self), String> {
        let lock = StateLock::take(data_dir)?;
        Ok((lock, Self::read(data_dir)))
    }

    /// Written whole (a temporary file renamed over it); only under [`StateLock`].
    fn write(&self, data_dir: &Path) -> Result<(), String> {
        let path = Self::path(data_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let temporary = path.with_extension("json.partial");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        sync_parent(&path);
        Ok(())
    }

    /// When the build with this hash was rolled back here, if it was.
    pub(crate) fn rolled_back(&self, sha256: &str) -> Option<&RolledBack> {
        self.refused.iter().find(|r| r.sha256 == sha256)
    }

    /// The runs of `running` while it is the unconfirmed installed build.
    fn unconfirmed_run_of(&mut self, running: &str) -> Option<&mut Unconfirmed> {
        self.installed
            .as_mut()
            .filter(|installed| installed.sha256 == running)
            .and_then(|installed| installed.unconfirmed.as_mut())
    }
}

/// Serialises the changes to `binary.json`: an install, a start's count, a confirmation and
/// a clean stop of this process, and `fabrik updates rollback` from another, each read the
/// file, change it and write it whole, and one must not write over another's change.
pub(crate) struct StateLock {
    _file: std::fs::File,
    _threads: std::sync::MutexGuard<'static, ()>,
}

/// Threads of this process; the file lock is per open file, so it does not exclude them.
static STATE_THREADS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl StateLock {
    /// Waits for the lock (`<data_dir>/updates/binary.lock`, made if missing).
    fn take(data_dir: &Path) -> Result<Self, String> {
        let threads = STATE_THREADS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = data_dir.join("updates");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("binary.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .and_then(|file| file.lock().map(|()| file))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            _file: file,
            _threads: threads,
        })
    }
}

/// Counts a start of `fabrik run` (see [`SelfUpdate::count_start`]); `running` hashes the
/// running binary, which is read only when an unconfirmed install is recorded, and
/// `try_previous` runs the trial of the previous binary before it is put back.
pub(crate) fn count_start(
    exe: &Path,
    data_dir: &Path,
    running: impl FnOnce() -> Result<String, String>,
    limit: u32,
    try_previous: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<StartCount, String> {
    // Only read until there is something to count: most starts have nothing.
    let installed = BinaryState::read(data_dir).installed;
    if installed.is_none_or(|installed| installed.unconfirmed.is_none()) {
        return Ok(StartCount::Run);
    }
    let running = running()?;
    let (_lock, mut state) = BinaryState::locked(data_dir)?;
    // Another build runs: the installed one was put back by hand (the updates module
    // settles that), or this process is not the node's binary.
    let Some(unconfirmed) = state.unconfirmed_run_of(&running) else {
        return Ok(StartCount::Run);
    };
    if unconfirmed.running {
        unconfirmed.failed_runs = unconfirmed.failed_runs.saturating_add(1);
    }
    let (runs, failed_runs) = (unconfirmed.runs, unconfirmed.failed_runs);
    let mut rollback_refused = None;
    if limit > 0 && failed_runs >= limit {
        let reason = format!(
            "{failed_runs} of its {runs} runs ended in a crash, a kill or an error before it \
             confirmed itself"
        );
        // The previous binary must take the node's configuration as it is now (a key only the
        // new build knows would stop it at every start, with nothing left to go back to).
        let put_back = try_previous(&previous_path(exe))
            .map_err(|why| format!("the previous binary was not put back: {why}"))
            .and_then(|()| rollback_locked(exe, data_dir, Some(reason.clone()), &state));
        match put_back {
            Ok((rolled_back, restored)) => {
                return Ok(StartCount::RolledBack {
                    rolled_back,
                    restored,
                    reason,
                });
            }
            // Counted and run on: the build may still confirm itself.
            Err(why) => rollback_refused = Some(why),
        }
    }
    let Some(unconfirmed) = state.unconfirmed_run_of(&running) else {
        return Ok(StartCount::Run);
    };
    unconfirmed.running = true;
    unconfirmed.runs = unconfirmed.runs.saturating_add(1);
    let counted = unconfirmed.clone();
    state.write(data_dir)?;
    Ok(StartCount::Counting {
        unconfirmed: counted,
        rollback_refused,
    })
}

/// A run of the unconfirmed binary `running` ended with a clean stop.
pub(crate) fn end_run(data_dir: &Path, running: &str) -> Result<(), String> {
    let (_lock, mut state) = BinaryState::locked(data_dir)?;
    let Some(unconfirmed) = state.unconfirmed_run_of(running) else {
        return Ok(());
    };
    unconfirmed.running = false;
    state.write(data_dir)
}

/// The binary `running` confirmed itself; returns whether it had not before.
pub(crate) fn confirm(data_dir: &Path, running: &str) -> Result<bool, String> {
    let (_lock, mut state) = BinaryState::locked(data_dir)?;
    let Some(installed) = state
        .installed
        .as_mut()
        .filter(|installed| installed.sha256 == running && installed.unconfirmed.is_some())
    else {
        return Ok(false);
    };
    installed.unconfirmed = None;
    state.write(data_dir)?;
    Ok(true)
}

/// Rollbacks not yet in the audit log (see [`RolledBack::audit_pending`]).
pub(crate) fn unaudited_rollbacks(data_dir: &Path) -> Vec<RolledBack> {
    BinaryState::read(data_dir)
        .refused
        .into_iter()
        .filter(|rolled_back| rolled_back.audit_pending)
        .collect()
}

/// Marks the rollback of `sha256` as audited.
pub(crate) fn rollback_audited(data_dir: &Path, sha256: &str) -> Result<(), String> {
    let (_lock, mut state) = BinaryState::locked(data_dir)?;
    let mut changed = false;
    for rolled_back in state.refused.iter_mut().filter(|r| r.sha256 == sha256) {
        changed |= std::mem::take(&mut rolled_back.audit_pending);
    }
    if changed {
        state.write(data_dir)
    } else {
        Ok(())
    }
}

/// The binary kept as `<exe>.previous` goes back in place of `exe`, and the build it
/// replaces is remembered as rolled back (with `reason` when the node decided it), so the
/// node does not install it again from the repository: `fabrik updates rollback`, and a new
/// binary's failed runs. Returns the hashes (rolled back, restored).
pub(crate) fn rollback(
    exe: &Path,
    data_dir: &Path,
    reason: Option<String>,
) -> Result<(String, String), String> {
    let previous = previous_path(exe);
    if !previous.exists() {
        return Err(format!(
            "{} does not exist: this binary was not installed from a release here, or was \
             rolled back already",
            previous.display()
        ));
    }
    // The refusal must reach the node's own state, or it installs the build again.
    if !data_dir.join("updates").is_dir() {
        return Err(format!(
            "{} holds no node's update state (no `updates` directory): give the node's data \
             directory with --data-dir or FABRIK__STORE__DATA_DIR",
            data_dir.display()
        ));
    }
    let (_lock, before) = BinaryState::locked(data_dir)?;
    rollback_locked(exe, data_dir, reason, &before)
}

/// [`rollback`] under the state's lock, from the state `before` as the caller holds it: on a
/// failed rename that is what is written back.
fn rollback_locked(
    exe: &Path,
    data_dir: &Path,
    reason: Option<String>,
    before: &BinaryState,
) -> Result<(String, String), String> {
    let previous = previous_path(exe);
    let current = file_sha256(exe)?;
    let restored = file_sha256(&previous)?;
    if let Some(installed) = before
        .installed
        .as_ref()
        .filter(|installed| installed.previous_sha256 != restored)
    {
        return Err(format!(
            "{} (sha256 {restored}) is not the build the last install replaced ({}): not put \
             back",
            previous.display(),
            installed.previous_sha256
        ));
    }
    let mut state = before.clone();
    if state.rolled_back(&current).is_none() {
        state.refused.push(RolledBack {
            sha256: current.clone(),
            at: crate::updates::now_rfc3339(),
            reason,
            audit_pending: true,
        });
    }
    state.installed = None;
    // Refused before the swap: a crash between the two leaves the node on the new build
    // with it refused, never on the old one without the refusal.
    state.write(data_dir)?;
    if let Err(e) = std::fs::rename(&previous, exe) {
        let restored_state = before.write(data_dir);
        return Err(format!(
            "cannot put {} back at {}: {e}{}",
            previous.display(),
            exe.display(),
            restored_state
                .err()
                .map(|why| format!(" (and the update state was not restored: {why})"))
                .unwrap_or_default()
        ));
    }
    sync_parent(exe);
    Ok((current, restored))
}

/// A node that runs the build its last install replaced was rolled back without
/// `fabrik updates rollback` (the file put back by hand): the installed build is refused from
/// then on. Returns the refused build's hash when this found one.
pub(crate) fn settle_rollback(data_dir: &Path, running: &str) -> Result<Option<String>, String> {
    let (_lock, mut state) = BinaryState::locked(data_dir)?;
    let Some(installed) = state.installed.take() else {
        return Ok(None);
    };
    if installed.sha256 == running || installed.previous_sha256 != running {
        return Ok(None);
    }
    if state.rolled_back(&installed.sha256).is_none() {
        state.refused.push(RolledBack {
            sha256: installed.sha256.clone(),
            at: crate::updates::now_rfc3339(),
            reason: Some("the previous build was put back by hand".into()),
            audit_pending: true,
        });
    }
    state.write(data_dir)?;
    Ok(Some(installed.sha256))
}

/// Replaces this process with `exe`, given this process's arguments (the environment is
/// inherited). Returns only when that failed.
#[cfg(unix)]
pub(crate) fn exec(exe: &Path) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    command.args(args).exec()
}

#[cfg(not(unix))]
pub(crate) fn exec(exe: &Path) -> std::io::Error {
    std::io::Error::other(format!(
        "restarting into {} is not supported on this platform; restart the service",
        exe.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_is_read_from_the_elf_header() {
        let running = std::env::current_exe().expect("exe");
        let bytes = std::fs::read(running).expect("read");
        assert_eq!(elf_platform(&bytes).as_deref(), Some(platform().as_str()));
        let mut arm = bytes[..64].to_vec();
        arm[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(elf_platform(&arm).as_deref(), Some("linux-aarch64"));
        assert_eq!(elf_platform(b"#!/bin/sh\nexit 0\n"), None);
        assert_eq!(elf_platform(b"\x7fELF"), None, "too short");
    }

    #[test]
    fn a_swap_keeps_the_old_binary_and_a_rollback_puts_it_back_and_refuses_the_new() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join("fabrik");
        std::fs::write(&exe, b"old build").expect("old");
        let staged = staged_path(&exe, "abcdef0123456789").expect("staged");
        assert_eq!(
            staged.file_name().and_then(|n| n.to_str()),
            Some(".fabrik.update-abcdef012345")
        );
        write_executable(&staged, b"new build").expect("stage");
        swap(&exe, &staged).expect("swap");
        assert_eq!(std::fs::read(&exe).expect("exe"), b"new build");
        assert_eq!(
            std::fs::read(previous_path(&exe)).expect("previous"),
            b"old build"
        );
        assert!(!staged.exists());

        let data = dir.path().join("data");
        // A data directory that is not the node's would take the refusal where the node never
        // reads it.
        let elsewhere = rollback(&exe, &data, None).expect_err("no node's state there");
        assert!(elsewhere.contains("--data-dir"), "{elsewhere}");
        assert_eq!(
            std::fs::read(&exe).expect("exe"),
            b"new build",
            "nothing moved"
        );
        std::fs::create_dir_all(data.join("updates")).expect("node's state");
        // A kept file that is not the build the install replaced is not put back.
        let sha = |bytes: &[u8]| {
            use sha2::Digest;
            crate::release::hex(&sha2::Sha256::digest(bytes))
        };
        let recorded = |previous: &[u8]| BinaryState {
            installed: Some(Installed {
                sha256: sha(b"new build"),
                target: "fabrik-linux-x86_64.bin".into(),
                path: exe.display().to_string(),
                previous_sha256: sha(previous),
                at: "2026-12-03T00:00:00Z".into(),
                unconfirmed: None,
            }),
            refused: Vec::new(),
        };
        recorded(b"another build").write(&data).expect("state");
        let other = rollback(&exe, &data, None).expect_err("not the replaced build");
        assert!(
            other.contains("not the build the last install replaced"),
            "{other}"
        );
        assert_eq!(
            std::fs::read(&exe).expect("exe"),
            b"new build",
            "nothing moved"
        );
        recorded(b"old build").write(&data).expect("state");
        let (rolled_back, restored) = rollback(&exe, &data, None).expect("rollback");
        assert_eq!(std::fs::read(&exe).expect("exe"), b"old build");
        assert!(!previous_path(&exe).exists());
        let state = BinaryState::read(&data);
        assert!(state.rolled_back(&rolled_back).is_some(), "{state:?}");
        assert!(state.rolled_back(&restored).is_none());
        let again = rollback(&exe, &data, None).expect_err("nothing to go back to");
        assert!(again.contains("fabrik.previous"), "{again}");
    }

    #[test]
    fn a_new_build_that_keeps_failing_before_it_confirms_is_rolled_back() {
        let dir = tempfile::tempdir().expect("dir");
        let (exe, data) = (dir.path().join("fabrik"), dir.path().join("data"));
        let sha = |bytes: &[u8]| {
            use sha2::Digest;
            crate::release::hex(&sha2::Sha256::digest(bytes))
        };
        let (old, new) = (sha(b"old build"), sha(b"new build"));
        let install = || {
            std::fs::write(&exe, b"old build").expect("old");
            let staged = staged_path(&exe, &new).expect("staged");
            write_executable(&staged, b"new build").expect("stage");
            swap(&exe, &staged).expect("swap");
            BinaryState {
                installed: Some(Installed {
                    sha256: new.clone(),
                    target: "fabrik-linux-x86_64.bin".into(),
                    path: exe.display().to_string(),
                    previous_sha256: old.clone(),
                    at: "2026-12-05T00:00:00Z".into(),
                    unconfirmed: Some(Unconfirmed::default()),
                }),
                refused: Vec::new(),
            }
            .write(&data)
            .expect("state");
        };
        let start_trying = |running: &str, limit, previous_runs: Result<(), String>| {
            count_start(
                &exe,
                &data,
                || Ok(running.to_owned()),
                limit,
                |previous| {
                    assert_eq!(previous, previous_path(&exe));
                    previous_runs
                },
            )
            .expect("count")
        };
        let start = |running: &str, limit| start_trying(running, limit, Ok(()));
        let counting = |runs, failed_runs| StartCount::Counting {
            unconfirmed: Unconfirmed {
                runs,
                failed_runs,
                running: true,
            },
            rollback_refused: None,
        };
        install();
        assert_eq!(start(&new, 3), counting(1, 0), "the restart into it");
        // A clean stop is not a failure; a run that ends otherwise is, at the next start.
        end_run(&data, &new).expect("clean stop");
        assert_eq!(start(&new, 3), counting(2, 0));
        assert_eq!(start(&new, 3), counting(3, 1), "killed");
        assert_eq!(start(&new, 3), counting(4, 2), "crashed");
        assert_eq!(std::fs::read(&exe).expect("exe"), b"new build");
        // A previous binary that fails its trial (it refuses today's configuration) is not
        // put back: the run is counted, and the build may still confirm itself.
        let StartCount::Counting {
            unconfirmed,
            rollback_refused: Some(why),
        } = start_trying(&new, 3, Err("unknown field `new_key`".into()))
        else {
            panic!("counted, not rolled back");
        };
        assert_eq!((unconfirmed.runs, unconfirmed.failed_runs), (5, 3));
        assert!(
            why.contains("not put back") && why.contains("new_key"),
            "{why}"
        );
        assert_eq!(std::fs::read(&exe).expect("exe"), b"new build");
        let StartCount::RolledBack {
            rolled_back,
            restored,
            reason,
        } = start(&new, 3)
        else {
            panic!("the third failed run sends the node back");
        };
        assert_eq!(
            (rolled_back.as_str(), restored.as_str()),
            (new.as_str(), old.as_str())
        );
        assert!(reason.contains("4 of its 5 runs"), "{reason}");
        assert_eq!(std::fs::read(&exe).expect("exe"), b"old build");
        assert!(!previous_path(&exe).exists());
        let state = BinaryState::read(&data);
        assert!(state.installed.is_none(), "{state:?}");
        let refused = state.rolled_back(&new).expect("refused");
        assert_eq!(refused.reason.as_deref(), Some(reason.as_str()));
        // The restored build starts with nothing to count, and the rollback waits for the audit.
        assert_eq!(start(&old, 3), StartCount::Run);
        assert_eq!(unaudited_rollbacks(&data).len(), 1);
        rollback_audited(&data, &new).expect("audited");
        assert!(unaudited_rollbacks(&data).is_empty());

        // A build that confirmed itself is not rolled back, however its runs end.
        install();
        assert_eq!(start(&new, 1), counting(1, 0));
        assert!(confirm(&data, &new).expect("confirm"));
        assert!(!confirm(&data, &new).expect("once"), "confirmed already");
        for _ in 0..3 {
            assert_eq!(start(&new, 1), StartCount::Run);
        }
        assert_eq!(std::fs::read(&exe).expect("exe"), b"new build");

        // 0: the node never goes back by itself; another build running counts nothing.
        install();
        for runs in 1..=5 {
            assert_eq!(start(&new, 0), counting(runs, runs - 1));
        }
        assert_eq!(start(&old, 1), StartCount::Run, "put back by hand");
        assert_eq!(std::fs::read(&exe).expect("exe"), b"new build");

        // A record from before confirmations (no `unconfirmed`) is a confirmed build.
        let legacy = format!(
            r#"{{"installed":{{"sha256":"{new}","target":"t","path":"p","previous_sha256":"{old}","at":"a"}}}}"#
        );
        std::fs::write(data.join("updates/binary.json"), legacy).expect("legacy");
        assert_eq!(start(&new, 1), StartCount::Run);
    }

    #[test]
    fn a_build_put_back_by_hand_is_taken_as_rolled_back() {
        let dir = tempfile::tempdir().expect("dir");
        let installed = |previous: &str| BinaryState {
            installed: Some(Installed {
                sha256: "new".into(),
                target: "fabrik-linux-x86_64.bin".into(),
                path: "/usr/local/bin/fabrik".into(),
                previous_sha256: previous.into(),
                at: "2026-12-03T00:00:00Z".into(),
                unconfirmed: None,
            }),
            refused: Vec::new(),
        };
        installed("old").write(dir.path()).expect("state");
        assert_eq!(settle_rollback(dir.path(), "new").expect("settle"), None);
        assert_eq!(
            settle_rollback(dir.path(), "third").expect("settle"),
            None,
            "neither build: not a rollback"
        );
        assert!(BinaryState::read(dir.path()).installed.is_some());
        assert_eq!(
            settle_rollback(dir.path(), "old")
                .expect("settle")
                .as_deref(),
            Some("new")
        );
        let state = BinaryState::read(dir.path());
        assert!(state.rolled_back("new").is_some() && state.installed.is_none());
    }

    #[test]
    fn leftovers_of_an_interrupted_install_are_swept_and_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let exe = dir.path().join("fabrik");
        for name in [
            "fabrik",
            ".fabrik.update-abc",
            ".fabrik.update-def",
            "fabrik.previous",
            ".other.update-abc",
        ] {
            std::fs::write(dir.path().join(name), b"x").expect("file");
        }
        assert_eq!(sweep_staged(&exe), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        left.sort();
        assert_eq!(left, [".other.update-abc", "fabrik", "fabrik.previous"]);
        check_writable_beside(&exe).expect("a temporary directory is writable");
        assert!(
            check_writable_beside(Path::new("/proc/fabrik"))
                .expect_err("/proc is not")
                .contains("/proc")
        );
    }

    #[tokio::test]
    async fn the_running_binary_is_hashed_from_its_image_not_its_path() {
        let running = SelfUpdate::capture(None);
        let exe = running.exe().expect("exe").to_owned();
        let first = running.running_sha256().await.expect("hash");
        assert_eq!(first, file_sha256(&exe).expect("file"));
        assert_eq!(running.known_sha256().as_deref(), Some(first.as_str()));
        assert!(running.restart_requested() == running.should_restart());
        running.note_stop_signal();
        running.inner.restart.cancel();
        assert!(running.restart_requested() && !running.should_restart());
    }
}
