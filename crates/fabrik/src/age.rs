//! The age file format (age-encryption.org/v1) for X25519 recipients, on aws-lc-rs: how a
//! release target is encrypted to the nodes that may read it (decision 0032). Files are
//! interchangeable with the `age` and `rage` tools: a node's identity file is what
//! `age-keygen` writes, and an operator can decrypt a target by hand with `age -d -i`.

use std::fmt;

use anyhow::{Context, anyhow, bail};
use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{agreement, hkdf, hmac};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bech32::primitives::decode::CheckedHrpstring;
use bech32::{Bech32, Hrp};

const VERSION_LINE: &str = "age-encryption.org/v1";
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
const RECIPIENT_HRP: &str = "age";
const IDENTITY_HRP: &str = "AGE-SECRET-KEY-";
/// Plaintext bytes per payload chunk (the format's fixed size).
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
const FILE_KEY: usize = 16;
/// Header lines are short; a longer one means this is not an age header.
const MAX_HEADER: usize = 64 * 1024;

/// A recipient: the X25519 public key `age1…` a file is encrypted to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Recipient([u8; 32]);

/// An identity: the X25519 secret key `AGE-SECRET-KEY-1…` that decrypts files for its
/// recipient.
pub(crate) struct Identity {
    secret: [u8; 32],
    recipient: Recipient,
}

impl Recipient {
    pub(crate) fn parse(text: &str) -> anyhow::Result<Recipient> {
        let text = text.trim();
        // A secret key pasted where its public key belongs is never repeated in the error,
        // which may end up in a terminal's scrollback or a CI log.
        if text
            .get(..IDENTITY_HRP.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(IDENTITY_HRP))
        {
            bail!(
                "this is a secret key (an identity), not a recipient: give its public key \
                 (`fabrik updates recipient`, or `age-keygen -y FILE`)"
            );
        }
        let shown: String = text.chars().take(80).collect();
        let bytes = bech32_bytes(text, RECIPIENT_HRP)
            .with_context(|| format!("`{shown}` is not an age recipient (age1…)"))?;
        Ok(Recipient(bytes))
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hrp = Hrp::parse_unchecked(RECIPIENT_HRP);
        match bech32::encode_lower::<Bech32>(hrp, &self.0) {
            Ok(text) => f.write_str(&text),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The 32 bytes of a Bech32 (not Bech32m) string with human-readable part `hrp`, in either
/// case.
fn bech32_bytes(text: &str, hrp: &str) -> anyhow::Result<[u8; 32]> {
    let checked = CheckedHrpstring::new::<Bech32>(text).map_err(|e| anyhow!("{e}"))?;
    if !checked.hrp().as_str().eq_ignore_ascii_case(hrp) {
        bail!("its prefix is `{}`, not `{hrp}`", checked.hrp());
    }
    let bytes: Vec<u8> = checked.byte_iter().collect();
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| anyhow!("{} bytes where a key has 32", bytes.len()))
}

/// Shows the recipient only: a secret key never reaches a log.
impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.recipient)
    }
}

impl Identity {
    pub(crate) fn generate() -> anyhow::Result<Identity> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| anyhow!("no random bytes"))?;
        Identity::from_secret(secret)
    }

    fn from_secret(secret: [u8; 32]) -> anyhow::Result<Identity> {
        let key = agreement::PrivateKey::from_private_key(&agreement::X25519, &secret)
            .map_err(|e| anyhow!("not an X25519 secret key: {e}"))?;
        let public = key
            .compute_public_key()
            .map_err(|_| anyhow!("no public key for this secret key"))?;
        let recipient = Recipient(
            public
                .as_ref()
                .try_into()
                .map_err(|_| anyhow!("an X25519 public key that is not 32 bytes"))?,
        );
        Ok(Identity { secret, recipient })
    }

    /// The first identity in an identity file (`age-keygen`'s output: `#` comments and one
    /// `AGE-SECRET-KEY-1…` line).
    #[cfg(test)]
    pub(crate) fn parse_file(text: &str) -> anyhow::Result<Identity> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|line| !line.is_empty() && !line.starts_with('#'))
            .ok_or_else(|| anyhow!("no AGE-SECRET-KEY-1… line"))?;
        let secret = bech32_bytes(line, IDENTITY_HRP)
            .map_err(|e| anyhow!("not an age identity (AGE-SECRET-KEY-1…): {e}"))?;
        Identity::from_secret(secret)
    }

    /// Every identity in an identity file, in order (age's identity files may hold several;
    /// `age -d` tries each): `#` comments, blank lines and `AGE-SECRET-KEY-1…` lines only.
    pub(crate) fn parse_all(text: &str) -> anyhow::Result<Vec<Identity>> {
        let identities = text
            .lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
            .map(|(number, line)| {
                let secret = bech32_bytes(line, IDENTITY_HRP).map_err(|e| {
                    anyhow!(
                        "line {}: not an age identity (AGE-SECRET-KEY-1…): {e}",
                        number + 1
                    )
                })?;
                Identity::from_secret(secret)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if identities.is_empty() {
            bail!("no AGE-SECRET-KEY-1… line");
        }
        Ok(identities)
    }

    /// The identity file's text, as `age-keygen` writes it.
    pub(crate) fn to_file(&self, created: &str) -> anyhow::Result<String> {
        Ok(format!(
            "# created: {created}\n# public key: {}\n{}\n",
            self.recipient,
            self.secret_line()?
        ))
    }

    /// The secret key as an identity file's line, `AGE-SECRET-KEY-1…`.
    pub(crate) fn secret_line(&self) -> anyhow::Result<String> {
        let hrp = Hrp::parse_unchecked(IDENTITY_HRP);
        bech32::encode_upper::<Bech32>(hrp, &self.secret).map_err(|e| anyhow!("{e}"))
    }

    pub(crate) fn recipient(&self) -> &Recipient {
        &self.recipient
    }

    /// The file key of an X25519 stanza, if it was wrapped for this identity. A low-order
    /// share (an all-zero shared secret, which aws-lc refuses to compute) fails the whole
    /// file, as the format requires.
    fn unwrap(&self, share: &[u8], body: &[u8]) -> anyhow::Result<Option<[u8; FILE_KEY]>> {
        let key = agreement::PrivateKey::from_private_key(&agreement::X25519, &self.secret)
            .map_err(|e| anyhow!("this node's key: {e}"))?;
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, share);
        let shared = agreement::agree(&key, peer, (), |secret| Ok(secret.to_vec()))
            .map_err(|()| anyhow!("an X25519 stanza whose share is a low-order point"))?;
        let wrap_key = wrap_key(&shared, share, &self.recipient.0)?;
        let mut in_out = body.to_vec();
        let opened = wrap_key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut in_out,
            )
            .ok();
        Ok(opened.and_then(|key| key.try_into().ok()))
    }
}

/// HKDF-SHA-256 of `ikm` with `salt` and `info`, 32 bytes.
fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> anyhow::Result<[u8; 32]> {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| anyhow!("HKDF failed"))?;
    Ok(out)
}

fn chacha(key: &[u8; 32]) -> anyhow::Result<LessSafeKey> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| anyhow!("ChaCha20-Poly1305 refused the key"))
}

/// The key that wraps the file key for one recipient: salt is the ephemeral share, then the
/// recipient.
fn wrap_key(shared: &[u8], share: &[u8], recipient: &[u8; 32]) -> anyhow::Result<LessSafeKey> {
    let salt = [share, recipient.as_slice()].concat();
    chacha(&hkdf32(shared, &salt, X25519_LABEL)?)
}

fn header_mac(file_key: &[u8; FILE_KEY], header: &[u8]) -> anyhow::Result<hmac::Tag> {
    let key = hkdf32(file_key, &[], b"header")?;
    Ok(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), header))
}

/// The nonce of payload chunk `counter`: an 11-byte big-endian counter, then 1 for the last
/// chunk.
fn chunk_nonce(counter: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

/// A stanza's body as the header carries it: base64 without padding, in lines of 64
/// characters, the last one shorter (empty when the length is a multiple of 64).
fn push_body(header: &mut String, body: &[u8]) {
    let text = STANDARD_NO_PAD.encode(body);
    let mut rest = text.as_str();
    loop {
        let (line, tail) = rest.split_at(rest.len().min(64));
        header.push_str(line);
        header.push('\n');
        if line.len() < 64 {
            break;
        }
        rest = tail;
    }
}

/// Encrypts `plaintext` so that each of `recipients` (and only they) can decrypt it.
pub(crate) fn encrypt(plaintext: &[u8], recipients: &[Recipient]) -> anyhow::Result<Vec<u8>> {
    // The last chunk is never empty, unless the whole plaintext is.
    let chunks: Vec<&[u8]> = if plaintext.is_empty() {
        vec![plaintext]
    } else {
        plaintext.chunks(CHUNK).collect()
    };
    encrypt_with(&chunks, recipients, &[])
}

/// [`encrypt`] of the payload cut into `chunks` (each at most [`CHUNK`] bytes), with `extra`
/// stanzas (type and arguments, body) after the recipients' (the tests' grease, which other
/// implementations must skip, and malformed files).
fn encrypt_with(
    chunks: &[&[u8]],
    recipients: &[Recipient],
    extra: &[(&str, &[u8])],
) -> anyhow::Result<Vec<u8>> {
    if recipients.is_empty() {
        bail!("no recipients to encrypt to");
    }
    let mut file_key = [0u8; FILE_KEY];
    aws_lc_rs::rand::fill(&mut file_key).map_err(|_| anyhow!("no random bytes"))?;
    let mut header = format!("{VERSION_LINE}\n");
    for recipient in recipients {
        let ephemeral = Identity::generate()?;
        let key = agreement::PrivateKey::from_private_key(&agreement::X25519, &ephemeral.secret)
            .map_err(|e| anyhow!("{e}"))?;
        let peer = agreement::UnparsedPublicKey::new(&agreement::X25519, recipient.0);
        let shared = agreement::agree(&key, peer, (), |secret| Ok(secret.to_vec()))
            .map_err(|()| anyhow!("{recipient}: not a usable X25519 public key"))?;
        let share = ephemeral.recipient.0;
        let mut body = file_key.to_vec();
        wrap_key(&shared, &share, &recipient.0)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut body,
            )
            .map_err(|_| anyhow!("wrapping the file key failed"))?;
        header.push_str(&format!("-> X25519 {}\n", STANDARD_NO_PAD.encode(share)));
        push_body(&mut header, &body);
    }
    for (args, body) in extra {
        header.push_str(&format!("-> {args}\n"));
        push_body(&mut header, body);
    }
    header.push_str("---");
    let mac = header_mac(&file_key, header.as_bytes())?;
    header.push_str(&format!(" {}\n", STANDARD_NO_PAD.encode(mac.as_ref())));

    let mut out = header.into_bytes();
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| anyhow!("no random bytes"))?;
    out.extend_from_slice(&nonce);
    let payload_key = chacha(&hkdf32(&file_key, &nonce, b"payload")?)?;
    out.reserve(chunks.iter().map(|chunk| chunk.len() + TAG).sum());
    for (index, chunk) in chunks.iter().enumerate() {
        let mut sealed = chunk.to_vec();
        payload_key
            .seal_in_place_append_tag(
                chunk_nonce(index as u64, index + 1 == chunks.len()),
                Aad::empty(),
                &mut sealed,
            )
            .map_err(|_| anyhow!("encrypting chunk {index} failed"))?;
        out.extend_from_slice(&sealed);
    }
    Ok(out)
}

/// One header line, and the rest of the file after it.
fn next_line(rest: &[u8]) -> anyhow::Result<(&str, &[u8])> {
    let end = rest
        .iter()
        .take(MAX_HEADER)
        .position(|&b| b == b'\n')
        .ok_or_else(|| anyhow!("the header ends without its `---` line"))?;
    let line =
        std::str::from_utf8(&rest[..end]).map_err(|_| anyhow!("a header line is not text"))?;
    Ok((line, &rest[end + 1..]))
}

/// A stanza of the header: its type and arguments, and its body.
struct Stanza<'a> {
    args: Vec<&'a str>,
    body: Vec<u8>,
}

fn decode_base64(text: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    STANDARD_NO_PAD
        .decode(text)
        .map_err(|e| anyhow!("{what}: not canonical unpadded base64 ({e})"))
}

/// Decrypts an age file with `identity`, verifying the header's MAC and every payload chunk.
#[cfg(test)]
pub(crate) fn decrypt(file: &[u8], identity: &Identity) -> anyhow::Result<Vec<u8>> {
    decrypt_any(file, std::slice::from_ref(identity))
}

/// Decrypts an age file with whichever of `identities` (at least one) it was encrypted to,
/// as `age -d` does with an identity file of several keys.
pub(crate) fn decrypt_any(file: &[u8], identities: &[Identity]) -> anyhow::Result<Vec<u8>> {
    let identity = identities
        .first()
        .ok_or_else(|| anyhow!("no key to decrypt with"))?;
    let (first, mut rest) = next_line(file).map_err(|_| anyhow!("not an age file"))?;
    if first != VERSION_LINE {
        bail!("not an age file (it does not start with `{VERSION_LINE}`)");
    }
    let mut stanzas = Vec::new();
    // Header lines are named by number, never quoted: a refusal reason stays short.
    let mut number = 1;
    let mac_line = loop {
        let (line, after) = next_line(rest)?;
        rest = after;
        number += 1;
        if let Some(mac) = line.strip_prefix("--- ") {
            break mac;
        }
        let args: Vec<&str> = line
            .strip_prefix("-> ")
            .ok_or_else(|| anyhow!("header line {number}: neither a stanza (`-> `) nor `--- `"))?
            .split(' ')
            .collect();
        if args.iter().any(|arg| arg.is_empty()) {
            bail!("header line {number}: an empty argument");
        }
        let mut text = String::new();
        loop {
            let (body_line, after) = next_line(rest)?;
            rest = after;
            number += 1;
            if body_line.len() > 64 {
                bail!("header line {number}: a stanza body line longer than 64 characters");
            }
            text.push_str(body_line);
            if body_line.len() < 64 {
                break;
            }
        }
        let body = decode_base64(&text, "a stanza body")?;
        stanzas.push(Stanza { args, body });
    };
    // The MAC covers the header up to and including `---`.
    let header_len = file.len() - rest.len() - mac_line.len() - 2;
    let header = &file[..header_len];
    let mac = decode_base64(mac_line, "the header's MAC")?;

    let mut file_key = None;
    let mut x25519_stanzas = 0;
    for stanza in &stanzas {
        if stanza.args.first() != Some(&"X25519") {
            continue; // another recipient type (or a `grease` stanza): not ours
        }
        x25519_stanzas += 1;
        let [_, share] = stanza.args.as_slice() else {
            bail!("an X25519 stanza with {} arguments", stanza.args.len());
        };
        let share = decode_base64(share, "an X25519 share")?;
        if share.len() != 32 || stanza.body.len() != FILE_KEY + TAG {
            bail!("an X25519 stanza of the wrong size");
        }
        for candidate in identities {
            if let Some(key) = candidate.unwrap(&share, &stanza.body)? {
                file_key = Some(key);
                break;
            }
        }
        if file_key.is_some() {
            break;
        }
    }
    let file_key = file_key.ok_or_else(|| {
        let previous = match identities.len() - 1 {
            0 => String::new(),
            n => format!(
                " nor to its {n} previous key{}",
                if n == 1 { "" } else { "s" }
            ),
        };
        anyhow!(
            "not encrypted to {}{previous} (the file names {x25519_stanzas} other X25519 \
             recipient{})",
            identity.recipient,
            if x25519_stanzas == 1 { "" } else { "s" }
        )
    })?;
    let expected_key = hkdf32(&file_key, &[], b"header")?;
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, &expected_key),
        header,
        &mac,
    )
    .map_err(|_| anyhow!("the header's MAC does not verify: the header was changed"))?;

    if rest.len() < 16 {
        bail!("the payload is cut short (no nonce)");
    }
    let (nonce, mut payload) = rest.split_at(16);
    let payload_key = chacha(&hkdf32(&file_key, nonce, b"payload")?)?;
    let mut plaintext = Vec::with_capacity(payload.len());
    let mut index: u64 = 0;
    loop {
        let take = payload.len().min(CHUNK + TAG);
        let (chunk, after) = payload.split_at(take);
        payload = after;
        let last = payload.is_empty();
        if chunk.len() < TAG {
            bail!("payload chunk {index} is cut short");
        }
        let mut in_out = chunk.to_vec();
        let opened = payload_key
            .open_in_place(chunk_nonce(index, last), Aad::empty(), &mut in_out)
            .map_err(|_| {
                anyhow!("payload chunk {index} does not authenticate: damaged or cut short")
            })?;
        if last && opened.is_empty() && index > 0 {
            bail!("an empty last chunk after chunk {}", index - 1);
        }
        plaintext.extend_from_slice(opened);
        if last {
            return Ok(plaintext);
        }
        index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn files_round_trip_at_every_chunk_boundary_for_each_recipient() {
        let node_a = Identity::generate().expect("identity");
        let node_b = Identity::generate().expect("identity");
        let recipients = [node_a.recipient().clone(), node_b.recipient().clone()];
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 7] {
            let plaintext = sample(len);
            let file = encrypt(&plaintext, &recipients).expect("encrypt");
            assert!(file.starts_with(b"age-encryption.org/v1\n-> X25519 "));
            for node in [&node_a, &node_b] {
                assert_eq!(
                    decrypt(&file, node).expect("decrypt"),
                    plaintext,
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn another_identity_a_changed_header_or_payload_and_a_cut_are_refused() {
        let node = Identity::generate().expect("identity");
        let stranger = Identity::generate().expect("identity");
        let plaintext = sample(CHUNK + 100);
        let file = encrypt(&plaintext, std::slice::from_ref(node.recipient())).expect("encrypt");

        let why = decrypt(&file, &stranger)
            .expect_err("not for it")
            .to_string();
        assert!(why.contains("not encrypted to age1"), "{why}");

        // A recipient stanza added to the header: the MAC no longer verifies.
        let mac_line = 1 + file.windows(4).position(|w| w == b"\n---").expect("---");
        let mut changed = file[..mac_line].to_vec();
        changed.extend_from_slice(b"-> grease x\n\n");
        changed.extend_from_slice(&file[mac_line..]);
        let why = decrypt(&changed, &node)
            .expect_err("changed header")
            .to_string();
        assert!(why.contains("MAC does not verify"), "{why}");

        let mut flipped = file.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let why = decrypt(&flipped, &node)
            .expect_err("changed payload")
            .to_string();
        assert!(why.contains("chunk 1 does not authenticate"), "{why}");

        // Cut at the chunk boundary: the first chunk is then taken as the last one, and its
        // nonce says otherwise.
        let cut = &file[..file.len() - (100 + TAG)];
        let why = decrypt(cut, &node).expect_err("cut").to_string();
        assert!(why.contains("chunk 0 does not authenticate"), "{why}");

        let why = decrypt(b"PK\x03\x04 not age", &node)
            .expect_err("zip")
            .to_string();
        assert!(why.contains("not an age file"), "{why}");
    }

    /// Runs one of the `age` tools (Debian's package `age`, the reference implementation).
    fn age_tool(tool: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new(tool)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{tool} must be installed (apt install age; .ci/run does): {e}")
            });
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().expect("wait");
        writer.join().expect("join").expect("write");
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    #[test]
    fn files_and_keys_are_interchangeable_with_the_age_tools() {
        let dir = tempfile::tempdir().expect("dir");
        let key_file = dir.path().join("node.key");
        let key_path = key_file.to_str().expect("utf-8");
        age_tool("age-keygen", &["-o", key_path], b"");
        let identity = Identity::parse_file(&std::fs::read_to_string(&key_file).expect("read"))
            .expect("parse");
        let public = age_tool("age-keygen", &["-y", key_path], b"");
        assert_eq!(
            String::from_utf8(public).expect("utf-8").trim(),
            identity.recipient().to_string()
        );
        let plaintext = sample(3 * CHUNK + 5);

        // Ours, opened by age; also with an unknown stanza whose body fills a whole line.
        let file =
            encrypt(&plaintext, std::slice::from_ref(identity.recipient())).expect("encrypt");
        assert_eq!(age_tool("age", &["-d", "-i", key_path], &file), plaintext);
        let chunks: Vec<&[u8]> = plaintext.chunks(CHUNK).collect();
        let greased = encrypt_with(
            &chunks,
            std::slice::from_ref(identity.recipient()),
            &[("grease-x y", &[7u8; 48])],
        )
        .expect("encrypt");
        assert_eq!(
            age_tool("age", &["-d", "-i", key_path], &greased),
            plaintext
        );

        // age's (with a second recipient first, so ours is not the only stanza), opened by us.
        let other = Identity::generate().expect("identity");
        let theirs = age_tool(
            "age",
            &[
                "-r",
                &other.recipient().to_string(),
                "-r",
                &identity.recipient().to_string(),
            ],
            &plaintext,
        );
        assert_eq!(decrypt(&theirs, &identity).expect("decrypt"), plaintext);
        assert_eq!(decrypt(&theirs, &other).expect("decrypt"), plaintext);

        // An identity of ours, used by age.
        let ours = dir.path().join("ours.key");
        std::fs::write(&ours, other.to_file("2026-12-02T00:00:00Z").expect("text")).expect("write");
        assert_eq!(
            age_tool("age", &["-d", "-i", ours.to_str().expect("utf-8")], &theirs),
            plaintext
        );
    }

    #[test]
    fn malformed_files_are_refused_and_a_full_body_line_is_read() {
        let node = Identity::generate().expect("identity");
        let me = std::slice::from_ref(node.recipient());
        let plaintext = sample(CHUNK);

        // A 48-byte stanza body fills a line of 64 characters, then an empty line ends it.
        let greased = encrypt_with(&[&plaintext], me, &[("grease-x y", &[7u8; 48])]).expect("enc");
        let text = String::from_utf8_lossy(&greased);
        assert!(text.contains(&format!("-> grease-x y\n{}\n\n---", "BwcH".repeat(16))));
        assert_eq!(decrypt(&greased, &node).expect("decrypt"), plaintext);

        // An empty last chunk after a full one.
        let tail = encrypt_with(&[&plaintext, &[]], me, &[]).expect("enc");
        let why = decrypt(&tail, &node).expect_err("empty tail").to_string();
        assert!(why.contains("empty last chunk"), "{why}");

        // Nothing after the nonce.
        let file = encrypt(&plaintext, me).expect("enc");
        let mac_end = file.windows(4).position(|w| w == b"\n---").expect("---");
        let header_end = mac_end
            + file[mac_end + 1..]
                .iter()
                .position(|&b| b == b'\n')
                .expect("nl")
            + 2;
        let why = decrypt(&file[..header_end + 16], &node)
            .expect_err("no chunk")
            .to_string();
        assert!(why.contains("chunk 0 is cut short"), "{why}");

        // A padded share: base64 must be canonical, without padding.
        let text = String::from_utf8(file[..header_end].to_vec()).expect("header");
        let share_line = text.lines().nth(1).expect("stanza");
        let padded = text.replacen(share_line, &format!("{share_line}="), 1);
        let mut padded = padded.into_bytes();
        padded.extend_from_slice(&file[header_end..]);
        let why = decrypt(&padded, &node).expect_err("padded").to_string();
        assert!(why.contains("not canonical"), "{why}");

        // A low-order share (the point 0) aborts the file rather than being skipped.
        let zero = STANDARD_NO_PAD.encode([0u8; 32]);
        let low = text.replacen(share_line, &format!("-> X25519 {zero}"), 1);
        let mut low = low.into_bytes();
        low.extend_from_slice(&file[header_end..]);
        let why = decrypt(&low, &node).expect_err("low order").to_string();
        assert!(why.contains("low-order"), "{why}");
    }

    #[test]
    fn keys_read_back_as_written_and_wrong_keys_are_named() {
        let identity = Identity::generate().expect("identity");
        let text = identity.to_file("2026-12-02T00:00:00Z").expect("text");
        let back = Identity::parse_file(&text).expect("parse");
        assert_eq!(back.recipient(), identity.recipient());
        let recipient = identity.recipient().to_string();
        assert!(
            recipient.starts_with("age1") && recipient.len() == 62,
            "{recipient}"
        );
        assert_eq!(
            Recipient::parse(&recipient).expect("parse"),
            *identity.recipient()
        );
        assert!(text.contains(&format!("# public key: {recipient}")));

        let why = Recipient::parse("age1qqqq").expect_err("short").to_string();
        assert!(why.contains("`age1qqqq` is not an age recipient"), "{why}");
        // A secret key where a recipient belongs is refused, and never repeated.
        let secret_line = text.lines().last().expect("line");
        let why = format!("{:#}", Recipient::parse(secret_line).expect_err("secret"));
        assert!(
            why.contains("secret key") && !why.contains(secret_line),
            "{why}"
        );
        let why = format!(
            "{:#}",
            Identity::parse_file(&recipient).expect_err("public")
        );
        assert!(why.contains("not an age identity"), "{why}");
    }
}
