//! Replacing the running Fabrik binary with one from the release repository (decision 0044):
//! the platform a file was built for, staging and a trial run of the new file, the swap that
//! keeps the old one beside it, the restart into it, and the operator's way back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Longest the new binary's trial run (`config check` or `--version`) may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(60);

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
    config: Option<PathBuf>,
    restart: CancellationToken,
    sha256: tokio::sync::OnceCell<Result<String, String>>,
}

impl SelfUpdate {
    /// The running process's view of itself; `config` is `fabrik run --config`.
    pub(crate) fn capture(config: Option<PathBuf>) -> Self {
        let exe = std::env::current_exe().ok();
        Self {
            inner: Arc::new(Inner {
                exe,
                config,
                restart: CancellationToken::new(),
                sha256: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// The file this process was started from.
    pub(crate) fn exe(&self) -> Result<&Path, String> {
        self.inner
            .exe
            .as_deref()
            .ok_or_else(|| "the running binary's path is not known on this system".to_owned())
    }

    /// SHA-256 of the binary this process runs (read once, off the async workers).
    pub(crate) async fn running_sha256(&self) -> Result<String, String> {
        self.inner
            .sha256
            .get_or_init(|| async {
                let exe = self.exe()?.to_owned();
                tokio::task::spawn_blocking(move || file_sha256(&exe))
                    .await
                    .map_err(|e| format!("hashing the running binary stopped: {e}"))?
            })
            .await
            .clone()
    }

    /// The running binary's SHA-256 when it was read already.
    pub(crate) fn known_sha256(&self) -> Option<String> {
        self.inner
            .sha256
            .get()
            .and_then(|read| read.as_ref().ok().cloned())
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
    ) -> Result<(), String> {
        let exe = self.exe()?.to_owned();
        let staged = staged_path(&exe, sha256)?;
        let write_to = staged.clone();
        tokio::task::spawn_blocking(move || write_executable(&write_to, &bytes))
            .await
            .map_err(|e| format!("staging stopped: {e}"))??;
        if let Err(why) = self.trial(&staged).await {
            let _ = std::fs::remove_file(&staged);
            return Err(why);
        }
        let previous_sha256 = self.running_sha256().await?;
        let (exe_for_swap, staged_for_swap) = (exe.clone(), staged.clone());
        let swapped = tokio::task::spawn_blocking(move || swap(&exe_for_swap, &staged_for_swap))
            .await
            .map_err(|e| format!("the swap stopped: {e}"))?;
        if let Err(why) = swapped {
            let _ = std::fs::remove_file(&staged);
            return Err(why);
        }
        let mut state = BinaryState::read(data_dir);
        state.installed = Some(Installed {
            sha256: sha256.to_owned(),
            target: target.to_owned(),
            path: exe.display().to_string(),
            previous_sha256,
            at: crate::updates::now_rfc3339(),
        });
        if let Err(why) = state.write(data_dir) {
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
    async fn trial(&self, staged: &Path) -> Result<(), String> {
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
                    "the new binary's trial (`{shown}`) did not end within {} s",
                    TRIAL_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("the new binary does not run here (`{shown}`): {e}"))?;
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
            "the new binary failed its trial (`{shown}`, {}){said}",
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
        std::fs::copy(exe, &previous).map_err(|e| {
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
    use sha2::Digest;
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(crate::release::hex(&hasher.finalize()))
}

/// `<data_dir>/updates/binary.json`: the last swap, and the builds an operator rolled back
/// (never installed again on this node).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct BinaryState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) installed: Option<Installed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) refused: Vec<RolledBack>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Installed {
    pub(crate) sha256: String,
    pub(crate) target: String,
    pub(crate) path: String,
    pub(crate) previous_sha256: String,
    pub(crate) at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RolledBack {
    pub(crate) sha256: String,
    pub(crate) at: String,
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
}

/// `fabrik updates rollback`: the binary kept as `<exe>.previous` goes back in place of
/// `exe`, and the build it replaces is remembered as rolled back, so the node does not
/// install it again from the repository. Returns the hashes (rolled back, restored).
pub(crate) fn rollback(exe: &Path, data_dir: &Path) -> Result<(String, String), String> {
    let previous = previous_path(exe);
    if !previous.exists() {
        return Err(format!(
            "{} does not exist: this binary was not installed from a release here, or was \
             rolled back already",
            previous.display()
        ));
    }
    let current = file_sha256(exe)?;
    let restored = file_sha256(&previous)?;
    std::fs::rename(&previous, exe).map_err(|e| {
        format!(
            "cannot put {} back at {}: {e}",
            previous.display(),
            exe.display()
        )
    })?;
    sync_parent(exe);
    let mut state = BinaryState::read(data_dir);
    if state.rolled_back(&current).is_none() {
        state.refused.push(RolledBack {
            sha256: current.clone(),
            at: crate::updates::now_rfc3339(),
        });
    }
    state.installed = None;
    state.write(data_dir)?;
    Ok((current, restored))
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
        let (rolled_back, restored) = rollback(&exe, &data).expect("rollback");
        assert_eq!(std::fs::read(&exe).expect("exe"), b"old build");
        assert!(!previous_path(&exe).exists());
        let state = BinaryState::read(&data);
        assert!(state.rolled_back(&rolled_back).is_some(), "{state:?}");
        assert!(state.rolled_back(&restored).is_none());
        let again = rollback(&exe, &data).expect_err("nothing to go back to");
        assert!(again.contains("fabrik.previous"), "{again}");
    }
}
