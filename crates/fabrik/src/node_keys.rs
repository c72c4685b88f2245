//! A node's keys for encrypted release targets (decisions 0032, 0043): the identity file
//! (`[updates] identity`, else `<data_dir>/updates/identity.key`), made at first start, and
//! its rotation — a new key first, the previous ones kept after it so targets already
//! published to them still decrypt, until they are retired. The file may be sealed to the
//! node's TPM (decision 0070, [`crate::sealed_identity`]): read, rotated and retired the same
//! way, it stays sealed.

use std::path::{Path, PathBuf};

use crate::age::{Identity, Recipient};

/// The keys of one identity file: the first is the node's key (its recipient is what
/// publishers encrypt to), the others previous keys that still decrypt.
pub(crate) struct NodeKeys {
    keys: Vec<Identity>,
    /// The file's seal, when it is sealed to the TPM: a rewrite is sealed with it again.
    seal: Option<crate::sealed_identity::Seal>,
}

impl NodeKeys {
    /// One key and no previous ones.
    pub(crate) fn single(key: Identity) -> Self {
        Self {
            keys: vec![key],
            seal: None,
        }
    }

    /// Whether the file is sealed to the TPM.
    pub(crate) fn sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// The PCRs its sealed key is bound to (`sha256:7`), if any.
    pub(crate) fn sealed_pcrs(&self) -> Option<String> {
        self.seal
            .as_ref()
            .and_then(crate::sealed_identity::Seal::pcrs)
    }

    /// The node's current recipient.
    pub(crate) fn recipient(&self) -> &Recipient {
        self.keys[0].recipient()
    }

    /// The previous keys' recipients, newest first.
    pub(crate) fn previous_recipients(&self) -> Vec<String> {
        self.keys[1..]
            .iter()
            .map(|key| key.recipient().to_string())
            .collect()
    }

    /// Whether `recipient` is one of this node's keys, current or previous.
    pub(crate) fn holds(&self, recipient: &Recipient) -> bool {
        self.keys.iter().any(|key| key.recipient() == recipient)
    }

    /// Every key, the current one first.
    pub(crate) fn all(&self) -> &[Identity] {
        &self.keys
    }
}

/// Where a node keeps its keys when `[updates] identity` is not set.
pub(crate) fn default_path(data_dir: &Path) -> PathBuf {
    data_dir.join("updates").join("identity.key")
}

/// The keys in the identity file at `path` (unsealed by the TPM when it is sealed).
pub(crate) fn read(path: &Path) -> Result<NodeKeys, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (text, seal) = if crate::sealed_identity::is_sealed(&text) {
        let (text, seal) = crate::sealed_identity::open(path, &text)?;
        (text, Some(seal))
    } else {
        (text, None)
    };
    let keys = Identity::parse_all(&text)
        .map_err(|e| format!("{}: {}", path.display(), crate::error_text::describe(&e)))?;
    Ok(NodeKeys { keys, seal })
}

/// Whether this node's identity file (as [`of_node`] finds it) is sealed, and to which PCRs,
/// as its envelope says: read without the TPM, for a status whose keys did not open.
pub(crate) fn seal_on_disk(configured: &str, data_dir: &Path) -> (bool, Option<String>) {
    let path = node_path(configured, data_dir);
    std::fs::read_to_string(&path)
        .ok()
        .filter(|text| crate::sealed_identity::is_sealed(text))
        .map_or((false, None), |text| {
            (true, crate::sealed_identity::pcrs_on_disk(&path, &text))
        })
}

/// Whether the identity file at `path` can be read: its keys, or, sealed, its envelope (the
/// TPM is not asked: a configuration check may run where it is not reachable).
pub(crate) fn check(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if crate::sealed_identity::is_sealed(&text) {
        return crate::sealed_identity::check(path, &text);
    }
    Identity::parse_all(&text)
        .map(|_| ())
        .map_err(|e| format!("{}: {}", path.display(), crate::error_text::describe(&e)))
}

/// Seals the identity file at `path` to this node's TPM, in place: its keys are encrypted
/// under a key the TPM seals, so the file opens only there — and, with `pcrs`, only while
/// those PCRs hold the values they hold now. Opened again before it replaces the file, so a
/// TPM that cannot unseal what it sealed leaves the keys as they were. A sealed file is
/// sealed again (a new sealed key, to `pcrs`) only when `reseal` says so: it must open first.
pub(crate) fn seal(path: &Path, pcrs: &[u8], reseal: bool) -> Result<NodeKeys, String> {
    let pcrs = crate::sealed_identity::pcr_indices(pcrs)?;
    let (path, _lock) = locked(path)?;
    let path = path.as_path();
    let stored = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = match (crate::sealed_identity::is_sealed(&stored), reseal) {
        (true, true) => crate::sealed_identity::open(path, &stored)?.0,
        (false, false) => stored,
        (true, false) => {
            return Err(format!(
                "{}: already sealed to a TPM (--reseal seals it again, to other PCRs or none)",
                path.display()
            ));
        }
        (false, true) => {
            return Err(format!(
                "{}: not sealed, so there is nothing to seal again (leave out --reseal)",
                path.display()
            ));
        }
    };
    let keys = Identity::parse_all(&text)
        .map_err(|e| format!("{}: {}", path.display(), crate::error_text::describe(&e)))?;
    let seal = crate::sealed_identity::new_seal(&pcrs)
        .map_err(|why| format!("{}: sealing: {why}", path.display()))?;
    let sealed = crate::sealed_identity::close(&seal, &text)?;
    let (opened, _) = crate::sealed_identity::open(path, &sealed)?;
    if opened != text {
        return Err(format!(
            "{}: the sealed file did not open to the same keys; left as it was",
            path.display()
        ));
    }
    write_replacing(path, sealed.as_bytes())?;
    Ok(NodeKeys {
        keys,
        seal: Some(seal),
    })
}

/// This node's keys: the configured identity file, else the one in the data directory, made
/// when there is none yet.
pub(crate) fn of_node(configured: &str, data_dir: &Path) -> Result<NodeKeys, String> {
    let path = node_path(configured, data_dir);
    if configured.trim().is_empty() {
        at(&path)
    } else {
        read(&path)
    }
}

/// This node's identity file: `[updates] identity` (`configured`), else the one in the data
/// directory.
fn node_path(configured: &str, data_dir: &Path) -> PathBuf {
    let configured = configured.trim();
    if configured.is_empty() {
        default_path(data_dir)
    } else {
        PathBuf::from(configured)
    }
}

/// The keys in `path`, a new key made there (mode 0600) when the file does not exist. The key
/// is written whole to a temporary file and linked into place, so a crash never leaves a
/// partial key, and of two processes making it at once both end up with the first.
pub(crate) fn at(path: &Path) -> Result<NodeKeys, String> {
    if path.exists() {
        return read(path);
    }
    let identity = Identity::generate().map_err(|e| e.to_string())?;
    let text = identity
        .to_file(&crate::updates::now_rfc3339())
        .map_err(|e| e.to_string())?;
    let parent = parent_of(path);
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let temporary = temporary_beside(path);
    crate::run::write_private(&temporary, text.as_bytes())
        .map_err(|e| format!("{}: {e}", temporary.display()))?;
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            sync_directory(parent);
            tracing::info!(path = %path.display(), recipient = %identity.recipient(), "Made this node's key for encrypted release targets.");
            Ok(NodeKeys::single(identity))
        }
        // Another process made it meanwhile: its key is the node's.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Puts a new key first in the identity file at `path` (which must exist), keeping every key
/// it held after it: targets published to those still decrypt until they are retired.
pub(crate) fn rotate(path: &Path) -> Result<NodeKeys, String> {
    let (path, _lock) = locked(path)?;
    let path = path.as_path();
    let old = read(path)?;
    let new = Identity::generate().map_err(|e| e.to_string())?;
    let mut keys = vec![new];
    keys.extend(old.keys);
    replace(path, &keys, old.seal.as_ref())?;
    Ok(NodeKeys {
        keys,
        seal: old.seal,
    })
}

/// Keeps only the first key of the identity file at `path`; how many previous keys went.
pub(crate) fn retire_previous(path: &Path) -> Result<(NodeKeys, usize), String> {
    let (path, _lock) = locked(path)?;
    let path = path.as_path();
    let NodeKeys { mut keys, seal } = read(path)?;
    let retired = keys.len() - 1;
    if retired > 0 {
        keys.truncate(1);
        replace(path, &keys, seal.as_ref())?;
    }
    Ok((NodeKeys { keys, seal }, retired))
}

/// Held while an identity file is rewritten: two rotations at once must not lose the key one
/// of them printed. Removed when dropped.
struct KeyLock(PathBuf);

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The identity file `path` resolved through symbolic links (the link stays, its file is
/// rewritten), and a lock beside it, or why not: another rewrite holds it.
fn locked(path: &Path) -> Result<(PathBuf, KeyLock), String> {
    let path = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lock = path.clone().into_os_string();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lock)
        .map_err(|e| {
            format!(
                "{}: {e}; another `fabrik updates rotate-key` or `retire-keys` is changing the \
                 keys (remove the lock file if none runs)",
                lock.display()
            )
        })?;
    Ok((path, KeyLock(lock)))
}

/// Writes `keys` as the identity file at `path`, sealed with `seal` when given.
fn replace(
    path: &Path,
    keys: &[Identity],
    seal: Option<&crate::sealed_identity::Seal>,
) -> Result<(), String> {
    let secret = |key: &Identity| key.secret_line().map_err(|e| e.to_string());
    let mut text = keys[0]
        .to_file(&crate::updates::now_rfc3339())
        .map_err(|e| e.to_string())?;
    if keys.len() > 1 {
        text.push_str(
            "# Previous keys: they still decrypt targets published to them. Once every \
             encrypted target\n# is published to the key above, `fabrik updates retire-keys` \
             removes them.\n",
        );
        for key in &keys[1..] {
            text.push_str(&format!(
                "# public key: {}\n{}\n",
                key.recipient(),
                secret(key)?
            ));
        }
    }
    let text = match seal {
        Some(seal) => crate::sealed_identity::close(seal, &text)?,
        None => text,
    };
    write_replacing(path, text.as_bytes())
}

/// Writes `bytes` as the file at `path`: whole to a private temporary file, then renamed over
/// it, so a crash leaves the old file or the new one. The new file keeps the old one's owner,
/// so a key rotated by root stays readable by the service that uses it.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let temporary = temporary_beside(path);
    crate::run::write_private(&temporary, bytes)
        .map_err(|e| format!("{}: {e}", temporary.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(old) = std::fs::metadata(path)
            && let Err(e) = std::os::unix::fs::chown(&temporary, Some(old.uid()), Some(old.gid()))
        {
            let _ = std::fs::remove_file(&temporary);
            return Err(format!(
                "{}: giving the new file the old one's owner: {e}",
                path.display()
            ));
        }
    }
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        format!("{}: {e}", path.display())
    })?;
    sync_directory(parent_of(path));
    Ok(())
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn temporary_beside(path: &Path) -> PathBuf {
    parent_of(path).join(format!(
        ".identity.{}.{}.partial",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos())
            .unwrap_or_default()
    ))
}

fn sync_directory(directory: &Path) {
    if let Ok(directory) = std::fs::File::open(directory) {
        let _ = directory.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_comes_first_and_the_previous_one_still_decrypts_until_retired() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("updates/identity.key");
        assert!(
            rotate(&path).is_err(),
            "nothing to rotate before a key exists"
        );
        let first = at(&path).expect("made");
        let old_recipient = first.recipient().clone();
        let published =
            crate::age::encrypt(b"model", std::slice::from_ref(&old_recipient)).expect("encrypt");

        let rotated = rotate(&path).expect("rotate");
        assert_ne!(*rotated.recipient(), old_recipient);
        assert_eq!(rotated.previous_recipients(), [old_recipient.to_string()]);
        let read_back = read(&path).expect("read");
        assert_eq!(read_back.recipient(), rotated.recipient());
        assert!(read_back.holds(&old_recipient));
        assert_eq!(
            crate::age::decrypt_any(&published, read_back.all()).expect("old target"),
            b"model"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode();
            assert_eq!(mode & 0o077, 0, "still private: {mode:o}");
        }
        // age's own reading of the file: the current key is its first.
        let text = std::fs::read_to_string(&path).expect("text");
        assert_eq!(
            Identity::parse_file(&text).expect("first").recipient(),
            rotated.recipient()
        );

        let (retired, count) = retire_previous(&path).expect("retire");
        assert_eq!(count, 1);
        assert_eq!(retired.recipient(), rotated.recipient());
        let after = read(&path).expect("read");
        assert!(!after.holds(&old_recipient) && after.previous_recipients().is_empty());
        let why = crate::age::decrypt_any(&published, after.all())
            .expect_err("retired")
            .to_string();
        assert!(why.contains("not encrypted to"), "{why}");
        assert_eq!(retire_previous(&path).expect("again").1, 0);
        // A second rotation keeps both older keys, newest first.
        rotate(&path).expect("rotate");
        let twice = rotate(&path).expect("rotate again");
        assert_eq!(twice.previous_recipients().len(), 2);
        assert_eq!(
            twice.previous_recipients()[1],
            rotated.recipient().to_string()
        );
        // While a rewrite holds the lock, another is refused, naming it; none is left after.
        let lock = dir.path().join("updates/identity.key.lock");
        assert!(!lock.exists());
        std::fs::write(&lock, b"").expect("lock");
        let why = rotate(&path).err().unwrap_or_default();
        assert!(why.contains("identity.key.lock"), "{why}");
        std::fs::remove_file(&lock).expect("unlock");
        // Through a symbolic link, the file it points at is rewritten and the link stays.
        #[cfg(unix)]
        {
            let link = dir.path().join("link.key");
            std::os::unix::fs::symlink(&path, &link).expect("symlink");
            let via_link = rotate(&link).expect("rotate via link");
            assert!(
                std::fs::symlink_metadata(&link)
                    .expect("link")
                    .file_type()
                    .is_symlink()
            );
            assert_eq!(read(&path).expect("read").recipient(), via_link.recipient());
        }
    }

    #[test]
    fn a_line_that_is_not_a_key_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.key");
        let key = Identity::generate()
            .expect("key")
            .to_file("now")
            .expect("text");
        std::fs::write(&path, format!("{key}not-a-key\n")).expect("write");
        let why = read(&path).err().unwrap_or_default();
        assert!(
            why.contains("line 4") && why.contains("identity.key"),
            "{why}"
        );
    }
}
