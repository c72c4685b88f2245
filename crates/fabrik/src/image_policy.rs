//! `fabrik device attestation make-runtime-policy`: a runtime policy (decision 0067) made from
//! a device image's root file system, every regular file by its digest, as Keylime's
//! `create_runtime_policy` makes one — the image builder's reference, before any device runs
//! the image.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Directories never walked: pseudo and memory file systems of a running system (a root of
/// `/`), which IMA's policies do not measure (`dont_measure fsmagic=…`) and whose files are
/// not the image's.
const PSEUDO: &[&str] = &["/proc", "/sys", "/dev", "/run"];

/// A policy made from an image, and what was left out of it.
#[derive(Debug)]
pub(crate) struct MadePolicy {
    /// The policy, as `PUT /api/v1/attestation/policies/{type}/runtime` takes it.
    pub policy: serde_json::Value,
    /// Regular files in it.
    pub files: usize,
    /// Files whose names are not UTF-8 (the policy names paths as text): not in it, so a
    /// device that runs them fails.
    pub not_utf8: Vec<PathBuf>,
}

/// Every regular file under `root` by its `algorithm` digest, named by its path in the image
/// (`root` is `/`); `excludes` (image paths) are neither walked nor judged at runtime.
/// Symbolic links are not followed: IMA names a file by the path it resolves to.
pub(crate) fn make(
    root: &Path,
    excludes: &[String],
    algorithm: &str,
) -> anyhow::Result<MadePolicy> {
    let digest_algorithm = match algorithm {
        "sha1" => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        "sha256" => &ring::digest::SHA256,
        "sha384" => &ring::digest::SHA384,
        "sha512" => &ring::digest::SHA512,
        other => bail!("--hash `{other}`: IMA digests files with sha1, sha256, sha384 or sha512"),
    };
    if !root.is_dir() {
        bail!(
            "{}: not a directory (the image's root file system)",
            root.display()
        );
    }
    for (index, excluded) in excludes.iter().enumerate() {
        if !excluded.starts_with('/') || excluded.trim_end_matches('/').is_empty() {
            bail!(
                "--exclude `{excluded}` (number {}): an absolute path in the image, below `/`",
                index + 1
            );
        }
    }
    let excludes: Vec<String> = excludes
        .iter()
        .map(|excluded| excluded.trim_end_matches('/').to_owned())
        .collect();
    let skipped = |image_path: &str| {
        excludes.iter().any(|excluded| excluded == image_path) || (PSEUDO.contains(&image_path))
    };
    let mut allowed = BTreeMap::new();
    let mut not_utf8 = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    // Directories still to read: (on disk, in the image).
    let mut pending = vec![(root.to_path_buf(), String::new())];
    while let Some((directory, image_directory)) = pending.pop() {
        let entries = std::fs::read_dir(&directory)
            .with_context(|| format!("reading the directory {}", directory.display()))?;
        for entry in entries {
            let entry =
                entry.with_context(|| format!("reading the directory {}", directory.display()))?;
            let on_disk = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                not_utf8.push(on_disk);
                continue;
            };
            let image_path = format!("{image_directory}/{name}");
            if skipped(&image_path) {
                continue;
            }
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", on_disk.display()))?;
            if kind.is_dir() {
                pending.push((on_disk, image_path));
            } else if kind.is_file() {
                let digest = file_digest(&on_disk, digest_algorithm, &mut buffer)?;
                allowed.insert(image_path, vec![format!("{algorithm}:{digest}")]);
            }
            // Links, devices, sockets and pipes hold no content IMA measures.
        }
    }
    not_utf8.sort();
    Ok(MadePolicy {
        files: allowed.len(),
        policy: serde_json::json!({
            "allowed": allowed,
            "excludes": excludes,
            "violations_fail": true,
        }),
        not_utf8,
    })
}

fn file_digest(
    path: &Path,
    algorithm: &'static ring::digest::Algorithm,
    buffer: &mut [u8],
) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| {
        format!(
            "reading {} (run as a user who can read the whole image, or --exclude it)",
            path.display()
        )
    })?;
    let mut context = ring::digest::Context::new(algorithm);
    loop {
        let read = file
            .read(buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        context.update(&buffer[..read]);
    }
    Ok(context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_regular_file_is_named_by_its_image_path_and_links_and_excludes_are_not() {
        let root = tempfile::tempdir().expect("tempdir");
        let write = |path: &str, content: &str| {
            let on_disk = root.path().join(path);
            std::fs::create_dir_all(on_disk.parent().expect("parent")).expect("dirs");
            std::fs::write(on_disk, content).expect("write");
        };
        write("usr/bin/app", "app 1.0");
        write("usr/lib/deep/libx.so", "x");
        write("var/log/syslog", "changes");
        write("proc/cpuinfo", "not the image's");
        write("etc/empty", "");
        std::os::unix::fs::symlink("app", root.path().join("usr/bin/app-link")).expect("link");
        let made = make(root.path(), &["/var/log/".into()], "sha256").expect("made");
        let allowed = made.policy["allowed"].as_object().expect("allowed");
        let paths: Vec<&str> = allowed.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            ["/etc/empty", "/usr/bin/app", "/usr/lib/deep/libx.so"]
        );
        assert_eq!(made.files, 3);
        assert_eq!(
            allowed["/etc/empty"][0],
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(made.policy["excludes"], serde_json::json!(["/var/log"]));
        let sha1 = make(root.path(), &[], "sha1").expect("sha1");
        assert_eq!(
            sha1.policy["allowed"]["/etc/empty"][0],
            "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        assert!(sha1.policy["allowed"]["/var/log/syslog"].is_array());
    }

    #[test]
    fn bad_roots_excludes_and_algorithms_are_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let missing = root.path().join("nothing");
        let err = make(&missing, &[], "sha256").expect_err("missing");
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = make(root.path(), &["var".into()], "sha256").expect_err("relative");
        assert!(err.to_string().contains("--exclude `var`"), "{err}");
        let err = make(root.path(), &["//".into()], "sha256").expect_err("root");
        assert!(err.to_string().contains("--exclude `//`"), "{err}");
        let err = make(root.path(), &[], "md5").expect_err("md5");
        assert!(err.to_string().contains("--hash `md5`"), "{err}");
    }
}
