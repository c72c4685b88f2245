//! The Linux kernel's IMA runtime measurement list (decision 0067): what it measured after the
//! boot (every program, library and file its policy names, as it was opened), parsed from its
//! binary form (`/sys/kernel/security/ima/binary_runtime_measurements`) and replayed to the
//! PCR the kernel extended (10), so a quote vouches for every entry.

use std::collections::BTreeMap;

use ring::digest;

use super::event_log::{algorithm_of, hash_of};

/// The PCR IMA extends.
pub const IMA_PCR: u32 = 10;
/// Largest measurement list read: some 100,000 entries of long paths.
pub const MOST_BYTES: usize = 16 << 20;
/// Most entries a verifier keeps of a list sent in parts: about what a whole list of
/// [`MOST_BYTES`] can hold (an entry takes 87 bytes or more).
pub const MOST_ENTRIES: usize = 200_000;
/// Length of the SHA-1 template digest every entry carries.
const TEMPLATE_DIGEST: usize = 20;
/// Templates whose first two fields are `d-ng` (the file's digest, with its algorithm) and
/// `n-ng` (its path): the ones a kernel since 3.13 writes unless told otherwise.
const TEMPLATES: [&str; 4] = ["ima-ng", "ima-sig", "ima-buf", "ima-modsig"];

/// One measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImaEntry {
    /// The PCR it was extended into (10 unless the kernel was told another).
    pub pcr: u32,
    /// The SHA-1 digest of its template data, as the list gives it (all zeros: a violation).
    pub template_digest: [u8; TEMPLATE_DIGEST],
    /// Its template (`ima-ng`, …).
    pub template: String,
    /// The template data, whose digest in each bank was extended.
    pub template_data: Vec<u8>,
    /// The file's digest algorithm (`sha256`, …) and the digest, hex.
    pub file_digest: (String, String),
    /// The file's path (`boot_aggregate` for the first entry).
    pub path: String,
    /// Its `ima-sig` signature (`security.ima`, as `evmctl ima_sign` writes it); empty when
    /// the template has none or the file was not signed.
    pub signature: Vec<u8>,
}

impl ImaEntry {
    /// A violation: the file was measured while another process had it open for writing, or
    /// opened for writing while measured (time of measure, time of use); the kernel records
    /// zeros and extends ones, so the PCR no longer says what the file held.
    pub fn violation(&self) -> bool {
        self.template_digest == [0; TEMPLATE_DIGEST]
    }

    /// The file's digest as policies write it: `sha256:<hex>`.
    pub fn digest_text(&self) -> String {
        format!("{}:{}", self.file_digest.0, self.file_digest.1)
    }
}

/// How the kernel extended a bank other than SHA-1: since Linux 5.11 with the template data's
/// digest in that bank; before, with the SHA-1 template digest padded with zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Extension {
    /// The template data hashed with the bank's algorithm (and SHA-1 in the SHA-1 bank).
    TemplateData,
    /// The SHA-1 template digest, zero-padded to the bank's length.
    PaddedSha1,
}

/// The list after its first `count` entries (`None`: it has fewer), read only as far as the
/// entries' lengths: what a device sends when the verifier holds the first `count` already.
pub fn after_entries(bytes: &[u8], count: usize) -> Option<&[u8]> {
    let mut at = 0;
    for _ in 0..count {
        take(bytes, &mut at, 4 + TEMPLATE_DIGEST)?;
        let name_length = read_u32(bytes, &mut at)?;
        take(bytes, &mut at, name_length as usize)?;
        let data_length = read_u32(bytes, &mut at)?;
        take(bytes, &mut at, data_length as usize)?;
    }
    bytes.get(at..)
}

/// Parses a binary measurement list; every problem names the entry and byte offset.
pub fn parse(bytes: &[u8]) -> Result<Vec<ImaEntry>, String> {
    if bytes.len() > MOST_BYTES {
        return Err(format!(
            "{} bytes; a measurement list is read up to {MOST_BYTES}",
            bytes.len()
        ));
    }
    let mut entries = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let number = entries.len();
        let start = at;
        let short = |what: &str| {
            format!("entry {number} (at byte {start}): the list ends inside its {what}")
        };
        let pcr = read_u32(bytes, &mut at).ok_or_else(|| short("PCR index"))?;
        let template_digest: [u8; TEMPLATE_DIGEST] = take(bytes, &mut at, TEMPLATE_DIGEST)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| short("template digest"))?;
        let name_length = read_u32(bytes, &mut at).ok_or_else(|| short("template name"))?;
        if name_length == 0 || name_length > 255 {
            return Err(format!(
                "entry {number} (at byte {start}): a template name of {name_length} bytes; \
                 this is not a binary IMA measurement list (the ASCII one is not read)"
            ));
        }
        let template =
            take(bytes, &mut at, name_length as usize).ok_or_else(|| short("template name"))?;
        let template = String::from_utf8_lossy(template).into_owned();
        if !TEMPLATES.contains(&template.as_str()) {
            return Err(format!(
                "entry {number} (at byte {start}): template `{template}` is not read (boot \
                 with ima_template=ima-ng, or ima-sig)"
            ));
        }
        let data_length = read_u32(bytes, &mut at).ok_or_else(|| short("template data"))?;
        let template_data = take(bytes, &mut at, data_length as usize)
            .ok_or_else(|| short("template data"))?
            .to_vec();
        let (file_digest, path, signature) = fields(&template_data, &template)
            .map_err(|why| format!("entry {number} (at byte {start}, {template}): {why}"))?;
        let entry = ImaEntry {
            pcr,
            template_digest,
            template,
            template_data,
            file_digest,
            path,
            signature,
        };
        if entry.pcr != IMA_PCR {
            // Such entries would be extended into a PCR the list is not checked against, so
            // they could be left out of it unseen.
            return Err(format!(
                "entry {number} (at byte {start}): it extends PCR {}; only lists of PCR \
                 {IMA_PCR} are read",
                entry.pcr
            ));
        }
        if !entry.violation() {
            let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &entry.template_data);
            if sha1.as_ref() != entry.template_digest {
                return Err(format!(
                    "entry {number} (at byte {start}): its template digest is not the SHA-1 of \
                     its data"
                ));
            }
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// The file's digest, path and signature.
type Fields = ((String, String), String, Vec<u8>);

/// The `d-ng` and `n-ng` fields of a template's data: (algorithm, digest hex) and the path;
/// and the `sig` field that follows them in `ima-sig` and `ima-modsig`.
fn fields(data: &[u8], template: &str) -> Result<Fields, String> {
    let mut at = 0;
    let digest_field = read_u32(data, &mut at)
        .and_then(|length| take(data, &mut at, length as usize))
        .ok_or("its data ends inside the file digest")?;
    let name_field = read_u32(data, &mut at)
        .and_then(|length| take(data, &mut at, length as usize))
        .ok_or("its data ends inside the file name")?;
    // `d-ng`: "<algorithm>:\0" then the digest.
    let colon = digest_field
        .iter()
        .position(|&b| b == b':')
        .filter(|&colon| digest_field.get(colon + 1) == Some(&0))
        .ok_or("its file digest does not start with `<algorithm>:`")?;
    let algorithm = String::from_utf8_lossy(&digest_field[..colon]).into_owned();
    let digest: String = digest_field[colon + 2..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = name_field.strip_suffix(&[0]).unwrap_or(name_field);
    let signature = if matches!(template, "ima-sig" | "ima-modsig") {
        read_u32(data, &mut at)
            .and_then(|length| take(data, &mut at, length as usize))
            .ok_or("its data ends inside the signature")?
            .to_vec()
    } else {
        Vec::new()
    };
    Ok((
        (algorithm, digest),
        String::from_utf8_lossy(path).into_owned(),
        signature,
    ))
}

fn read_u32(bytes: &[u8], at: &mut usize) -> Option<u32> {
    take(bytes, at, 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, length: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(length)?;
    let taken = bytes.get(*at..end)?;
    *at = end;
    Some(taken)
}

/// What one entry extends PCR 10 with in a bank of `length` bytes, the way `extension` says.
fn extended_with(
    entry: &ImaEntry,
    hash: &'static digest::Algorithm,
    extension: Extension,
) -> Vec<u8> {
    let length = hash.output_len();
    if length == TEMPLATE_DIGEST || extension == Extension::PaddedSha1 {
        // Before 5.11 the kernel passed one 20-byte digest (ones for a violation) to every
        // bank, zero-padded.
        let mut padded = if entry.violation() {
            vec![0xff; TEMPLATE_DIGEST]
        } else {
            entry.template_digest.to_vec()
        };
        padded.resize(length, 0);
        padded
    } else if entry.violation() {
        vec![0xff; length]
    } else {
        digest::digest(hash, &entry.template_data).as_ref().to_vec()
    }
}

/// The value the entries extend PCR 10 to in `bank`, from zeros, the way `extension` says,
/// after each entry: `[0]` is the value before the first.
pub fn replay(
    entries: &[ImaEntry],
    bank: &str,
    extension: Extension,
) -> Result<Vec<Vec<u8>>, String> {
    replay_from(None, entries, bank, extension)
}

/// The same from `start` (`None`: zeros, the PCR at the boot).
fn replay_from(
    start: Option<Vec<u8>>,
    entries: &[ImaEntry],
    bank: &str,
    extension: Extension,
) -> Result<Vec<Vec<u8>>, String> {
    let hash = algorithm_of(bank)
        .and_then(hash_of)
        .ok_or_else(|| format!("PCR bank {bank} cannot be replayed here"))?;
    let mut values = vec![start.unwrap_or_else(|| vec![0u8; hash.output_len()])];
    for entry in entries {
        let mut context = digest::Context::new(hash);
        context.update(values.last().map_or(&[][..], Vec::as_slice));
        context.update(&extended_with(entry, hash, extension));
        values.push(context.finish().as_ref().to_vec());
    }
    Ok(values)
}

/// How much of a list the quote covers: the list is read after the quote, so entries the
/// kernel added meanwhile (the quoting tool itself, at its first run) follow those PCR 10
/// held. Returns how the kernel extended and the number of entries whose replay gives the
/// quoted PCR 10 of `bank` (the shortest such prefix); `Err` says why none does.
pub fn check(
    entries: &[ImaEntry],
    pcrs: &BTreeMap<String, BTreeMap<u32, String>>,
    bank: &str,
) -> Result<(Extension, usize), String> {
    let quoted = pcrs
        .get(bank)
        .and_then(|values| values.get(&IMA_PCR))
        .ok_or_else(|| {
            format!(
                "PCR {IMA_PCR} was not quoted in {bank}, so the IMA log cannot be checked: quote \
                 it too (--pcrs {bank}:…,{IMA_PCR})"
            )
        })?
        .to_ascii_lowercase();
    let mut ends = Vec::new();
    for extension in [Extension::TemplateData, Extension::PaddedSha1] {
        let values = replay(entries, bank, extension)?;
        if let Some(covered) = values.iter().position(|value| hex(value) == quoted) {
            return Ok((extension, covered));
        }
        ends.extend(values.last().map(|value| hex(value)));
        if bank == "sha1" {
            break;
        }
    }
    Err(format!(
        "the IMA log's {} entries do not replay to the quoted PCR {IMA_PCR} ({bank} {}, the log \
         gives {}): entries left out or changed, or the log of another boot",
        entries.len(),
        short(&quoted),
        ends.iter()
            .map(|v| short(v))
            .collect::<Vec<_>>()
            .join(" or ")
    ))
}

/// How much of a list's continuation the quote covers: `entries` follow those whose replay
/// gave `start` (hex, in `bank`, extended the way `extension` says), the PCR 10 of an earlier
/// quote of the same boot. `Err` says why no prefix replays to the quoted PCR 10.
pub fn check_continued(
    start: &str,
    entries: &[ImaEntry],
    pcrs: &BTreeMap<String, BTreeMap<u32, String>>,
    bank: &str,
    extension: Extension,
) -> Result<usize, String> {
    let quoted = pcrs
        .get(bank)
        .and_then(|values| values.get(&IMA_PCR))
        .ok_or_else(|| format!("PCR {IMA_PCR} was not quoted in {bank}"))?
        .to_ascii_lowercase();
    let start = super::unhex(start).map_err(|e| format!("the kept PCR {IMA_PCR}: {e}"))?;
    let values = replay_from(Some(start), entries, bank, extension)?;
    values
        .iter()
        .position(|value| hex(value) == quoted)
        .ok_or_else(|| {
            format!(
                "its {} entries do not replay from the PCR {IMA_PCR} of the quote before to the \
                 quoted one ({bank} {})",
                entries.len(),
                short(&quoted)
            )
        })
}

/// Whether the first entry is the kernel's `boot_aggregate` and its digest is that of the
/// quoted boot PCRs in its algorithm's bank: 0-9 (Linux 5.8 and later) or 0-7. This binds the
/// list to the boot the quote vouches for; `Err` says what is missing or differs.
pub fn check_boot_aggregate(
    entries: &[ImaEntry],
    pcrs: &BTreeMap<String, BTreeMap<u32, String>>,
) -> Result<(), String> {
    let first = entries.first().map(|entry| {
        (
            entry.path.as_str(),
            entry.file_digest.0.as_str(),
            entry.file_digest.1.as_str(),
        )
    });
    check_boot_aggregate_entry(first, pcrs)
}

/// The same for a list's first entry as (path, digest algorithm, digest hex).
pub fn check_boot_aggregate_entry(
    first: Option<(&str, &str, &str)>,
    pcrs: &BTreeMap<String, BTreeMap<u32, String>>,
) -> Result<(), String> {
    let Some((_, algorithm, claimed)) = first.filter(|(path, _, _)| *path == "boot_aggregate")
    else {
        return Err(
            "the IMA log does not start with the kernel's boot_aggregate entry (IMA was not \
             measuring from the boot)"
                .into(),
        );
    };
    let hash = algorithm_of(algorithm)
        .and_then(hash_of)
        .ok_or_else(|| format!("boot_aggregate is a {algorithm} digest, which is not read"))?;
    let bank = pcrs.get(algorithm);
    let value = |pcr: u32| bank.and_then(|values| values.get(&pcr));
    let mut missing = Vec::new();
    // Linux 5.8 and later include PCRs 8 and 9; earlier kernels 0-7.
    for last in [9, 7] {
        let Some(values) = (0..=last).map(value).collect::<Option<Vec<_>>>() else {
            missing.push(last);
            continue;
        };
        let mut context = digest::Context::new(hash);
        for value in values {
            let bytes: Vec<u8> = (0..value.len() / 2)
                .filter_map(|i| u8::from_str_radix(value.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            context.update(&bytes);
        }
        if hex(context.finish().as_ref()) == claimed {
            return Ok(());
        }
    }
    if missing.len() == 2 {
        return Err(format!(
            "boot_aggregate cannot be checked: quote PCRs 0-9 in {algorithm} too (--pcrs \
             {algorithm}:0,1,2,3,4,5,6,7,8,9,10)"
        ));
    }
    Err(format!(
        "the IMA log's boot_aggregate ({algorithm} {}) is not the digest of the quoted PCRs 0-9 \
         or 0-7: the list of another boot",
        short(claimed)
    ))
}

fn short(hex: &str) -> String {
    hex.get(..16)
        .map_or_else(|| hex.to_owned(), |head| format!("{head}…"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry as the kernel writes it, for tests and for tools that make lists: `ima-ng` of a
/// file with this SHA-256 digest (all-zero template digest when `violation`).
pub fn encode_entry(path: &str, file_sha256: &[u8; 32], violation: bool) -> Vec<u8> {
    encode(path, file_sha256, violation, None)
}

/// The same in the `ima-sig` template, with the file's signature (empty: unsigned).
pub fn encode_signed_entry(path: &str, file_sha256: &[u8; 32], signature: &[u8]) -> Vec<u8> {
    encode(path, file_sha256, false, Some(signature))
}

fn encode(
    path: &str,
    file_sha256: &[u8; 32],
    violation: bool,
    signature: Option<&[u8]>,
) -> Vec<u8> {
    let mut digest_field = b"sha256:\0".to_vec();
    digest_field.extend_from_slice(file_sha256);
    let mut name_field = path.as_bytes().to_vec();
    name_field.push(0);
    let mut data = Vec::new();
    let fields: &[&[u8]] = match signature {
        Some(signature) => &[&digest_field, &name_field, signature],
        None => &[&digest_field, &name_field],
    };
    for field in fields {
        data.extend_from_slice(&(field.len() as u32).to_le_bytes());
        data.extend_from_slice(field);
    }
    let template_digest: Vec<u8> = if violation {
        vec![0; TEMPLATE_DIGEST]
    } else {
        digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &data)
            .as_ref()
            .to_vec()
    };
    let mut entry = IMA_PCR.to_le_bytes().to_vec();
    entry.extend_from_slice(&template_digest);
    let template: &[u8] = if signature.is_some() {
        b"ima-sig"
    } else {
        b"ima-ng"
    };
    entry.extend_from_slice(&(template.len() as u32).to_le_bytes());
    entry.extend_from_slice(template);
    entry.extend_from_slice(&(data.len() as u32).to_le_bytes());
    entry.extend_from_slice(&data);
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(text: &str) -> [u8; 32] {
        digest::digest(&digest::SHA256, text.as_bytes())
            .as_ref()
            .try_into()
            .expect("32 bytes")
    }

    fn list(entries: &[(&str, &str, bool)]) -> Vec<u8> {
        entries
            .iter()
            .flat_map(|(path, content, violation)| encode_entry(path, &sha256(content), *violation))
            .collect()
    }

    fn quoted(bank: &str, pcrs: &[(u32, Vec<u8>)]) -> BTreeMap<String, BTreeMap<u32, String>> {
        BTreeMap::from([(
            bank.to_owned(),
            pcrs.iter().map(|(pcr, value)| (*pcr, hex(value))).collect(),
        )])
    }

    #[test]
    fn a_continuation_replays_from_the_kept_pcr_and_only_from_it() {
        let bytes = list(&[
            ("boot_aggregate", "pcrs 0-9", false),
            ("/usr/bin/a", "a", false),
            ("/usr/bin/b", "b", false),
            ("/usr/bin/c", "c", true),
        ]);
        let entries = parse(&bytes).expect("parse");
        // The bytes after two entries are the last two entries, parsed alone.
        let rest = after_entries(&bytes, 2).expect("rest");
        assert_eq!(parse(rest).expect("rest parses"), entries[2..]);
        assert_eq!(after_entries(&bytes, 4), Some(&[][..]));
        assert_eq!(after_entries(&bytes, 5), None);
        assert_eq!(after_entries(&bytes[..bytes.len() - 1], 4), None);

        for extension in [Extension::TemplateData, Extension::PaddedSha1] {
            let values = replay(&entries, "sha256", extension).expect("replay");
            let kept = hex(&values[2]);
            let at = |value: &Vec<u8>| quoted("sha256", &[(IMA_PCR, value.clone())]);
            // Quoted after all four: the two new ones replay from the kept value.
            assert_eq!(
                check_continued(&kept, &entries[2..], &at(&values[4]), "sha256", extension),
                Ok(2)
            );
            // Quoted before the last: one is covered.
            assert_eq!(
                check_continued(&kept, &entries[2..], &at(&values[3]), "sha256", extension),
                Ok(1)
            );
            // Nothing new since: nothing to replay, the kept value is the quoted one.
            assert_eq!(
                check_continued(&kept, &[], &at(&values[2]), "sha256", extension),
                Ok(0)
            );
            // An entry left out, or another start (another boot), does not replay.
            assert!(
                check_continued(&kept, &entries[3..], &at(&values[4]), "sha256", extension)
                    .is_err()
            );
            let other = hex(&values[1]);
            let why = check_continued(&other, &entries[2..], &at(&values[4]), "sha256", extension)
                .expect_err("another start");
            assert!(why.contains("do not replay from the PCR 10"), "{why}");
        }
    }

    #[test]
    fn a_list_parses_and_replays_in_both_banks_and_both_ways() {
        let bytes = list(&[
            ("boot_aggregate", "pcrs 0-7", false),
            ("/usr/bin/fabrik", "fabrik 1.0", false),
            ("/etc/fabrik.toml", "config", true),
        ]);
        let entries = parse(&bytes).expect("parse");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[1].path, "/usr/bin/fabrik");
        assert_eq!(
            entries[1].digest_text(),
            format!("sha256:{}", hex(&sha256("fabrik 1.0")))
        );
        assert!(entries[2].violation() && !entries[1].violation());

        // By hand: since Linux 5.11 the SHA-256 bank takes each entry's template data's
        // SHA-256, a violation 32 bytes of ones; before, the SHA-1 template digest (20 ones for
        // a violation) padded with zeros.
        let by_hand = |modern: bool| {
            let mut value = [0u8; 32].to_vec();
            for entry in &entries {
                let measured = match (modern, entry.violation()) {
                    (true, true) => vec![0xff; 32],
                    (true, false) => digest::digest(&digest::SHA256, &entry.template_data)
                        .as_ref()
                        .to_vec(),
                    (false, true) => [vec![0xff; 20], vec![0; 12]].concat(),
                    (false, false) => [entry.template_digest.to_vec(), vec![0; 12]].concat(),
                };
                value = digest::digest(&digest::SHA256, &[value, measured].concat())
                    .as_ref()
                    .to_vec();
            }
            value
        };
        let last = |extension| {
            replay(&entries, "sha256", extension)
                .expect("replay")
                .pop()
                .expect("values")
        };
        let (modern, legacy) = (last(Extension::TemplateData), last(Extension::PaddedSha1));
        assert_eq!(modern, by_hand(true));
        assert_eq!(legacy, by_hand(false));
        assert_eq!(
            check(
                &entries,
                &quoted("sha256", &[(IMA_PCR, modern.clone())]),
                "sha256"
            ),
            Ok((Extension::TemplateData, 3))
        );
        assert_eq!(
            check(&entries, &quoted("sha256", &[(IMA_PCR, legacy)]), "sha256"),
            Ok((Extension::PaddedSha1, 3))
        );
        let sha1 = replay(&entries, "sha1", Extension::TemplateData)
            .expect("sha1")
            .pop()
            .expect("values");
        assert_eq!(sha1.len(), 20);
        assert!(check(&entries, &quoted("sha1", &[(IMA_PCR, sha1)]), "sha1").is_ok());

        // Entries the kernel added after the quote (the list is read after it) are not
        // covered; an entry left out, or a list of another boot, replays to nothing quoted.
        let at_quote =
            replay(&entries, "sha256", Extension::TemplateData).expect("replay")[2].clone();
        assert_eq!(
            check(
                &entries,
                &quoted("sha256", &[(IMA_PCR, at_quote)]),
                "sha256"
            ),
            Ok((Extension::TemplateData, 2))
        );
        let without_second = [entries[0].clone(), entries[2].clone()];
        let missed = check(
            &without_second,
            &quoted("sha256", &[(IMA_PCR, modern)]),
            "sha256",
        )
        .expect_err("one entry short");
        assert!(missed.contains("do not replay"), "{missed}");
        let unquoted = check(&entries, &BTreeMap::new(), "sha256").expect_err("no PCR 10");
        assert!(unquoted.contains("PCR 10 was not quoted"), "{unquoted}");
    }

    #[test]
    fn the_boot_aggregate_binds_the_list_to_the_quoted_boot() {
        let boot: Vec<(u32, Vec<u8>)> = (0..10)
            .map(|pcr| (pcr, sha256(&format!("pcr {pcr}")).to_vec()))
            .collect();
        let aggregate = |pcrs: &[(u32, Vec<u8>)]| -> [u8; 32] {
            digest::digest(
                &digest::SHA256,
                &pcrs
                    .iter()
                    .flat_map(|(_, v)| v.clone())
                    .collect::<Vec<u8>>(),
            )
            .as_ref()
            .try_into()
            .expect("32")
        };
        let list_with = |aggregate: [u8; 32]| {
            let mut bytes = encode_entry("boot_aggregate", &aggregate, false);
            bytes.extend(encode_entry("/usr/bin/x", &sha256("x"), false));
            parse(&bytes).expect("parse")
        };
        let pcrs = quoted("sha256", &boot);
        // Linux 5.8 and later: PCRs 0-9; before: 0-7.
        assert!(check_boot_aggregate(&list_with(aggregate(&boot)), &pcrs).is_ok());
        assert!(check_boot_aggregate(&list_with(aggregate(&boot[..8])), &pcrs).is_ok());
        let other = check_boot_aggregate(&list_with(sha256("another boot")), &pcrs)
            .expect_err("another boot");
        assert!(other.contains("the list of another boot"), "{other}");
        let unquoted =
            check_boot_aggregate(&list_with(aggregate(&boot)), &quoted("sha256", &boot[..5]))
                .expect_err("PCRs 0-9 not quoted");
        assert!(unquoted.contains("quote PCRs 0-9"), "{unquoted}");
        let headless = check_boot_aggregate(&list_with(aggregate(&boot))[1..], &pcrs)
            .expect_err("no boot_aggregate");
        assert!(headless.contains("does not start with"), "{headless}");
    }

    #[test]
    fn bad_lists_are_refused_naming_the_entry() {
        let mut bytes = list(&[
            ("boot_aggregate", "pcrs", false),
            ("/usr/bin/x", "x", false),
        ]);
        let whole = bytes.len();
        let truncated = parse(&bytes[..whole - 3]).expect_err("truncated");
        assert!(
            truncated.contains("entry 1") && truncated.contains("ends inside"),
            "{truncated}"
        );
        // A path changed after measuring: the template digest no longer covers the data.
        let at = whole - 2;
        bytes[at] ^= 1;
        let changed = parse(&bytes).expect_err("changed");
        assert!(changed.contains("not the SHA-1 of its data"), "{changed}");
        let mut other_pcr = list(&[("/usr/bin/y", "y", false)]);
        other_pcr[0] = 11;
        let other = parse(&other_pcr).expect_err("PCR 11");
        assert!(other.contains("it extends PCR 11"), "{other}");
        let ascii = parse(b"10 0123456789abcdef ima-ng sha256:00 /usr/bin/x\n").expect_err("ascii");
        assert!(
            ascii.contains("not a binary IMA measurement list"),
            "{ascii}"
        );
        let mut legacy = 10u32.to_le_bytes().to_vec();
        legacy.extend_from_slice(&[1; 20]);
        legacy.extend_from_slice(&3u32.to_le_bytes());
        legacy.extend_from_slice(b"ima");
        let old = parse(&legacy).expect_err("ima template");
        assert!(old.contains("template `ima`"), "{old}");
        assert!(parse(&vec![0; MOST_BYTES + 1]).is_err());
    }
}
