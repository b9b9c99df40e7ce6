//! Our Via branches (RFC 3261 §8.1.1.7): minted and checked in one place, under one key.
//!
//! A branch we mint is `z9hG4bK`, a fresh random 64-bit value (unique across space and
//! time), and a tag: HMAC-SHA256 under a 32-byte key from the OS RNG over that value and the
//! hop responses go back to, truncated to 96 bits. A response that claims to answer one of
//! our requests can so be checked without any state ([`BranchKey::is_ours`]); nobody who has
//! seen any number of our branches can make one that passes (the MAC reveals nothing of its
//! key), and a real branch seen on one call cannot send a forged response anywhere else.
//!
//! The key is kept in `data_dir/branch.key` ([`BranchKey::load_or_create`]) so that a 2xx to
//! an INVITE sent before a restart is still recognised after it.

use crate::sip::header::BRANCH_MAGIC;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::Path;

/// Bytes of key.
pub const KEY_LEN: usize = 32;
/// Bytes of MAC kept in a branch (96 bits: forging one takes ~2^95 tries on the wire).
const TAG_LEN: usize = 12;
/// Hex digits of a minted tail: the 64-bit value, then the tag.
const TAIL_LEN: usize = 16 + 2 * TAG_LEN;
/// Hex digits of a derived value (128 bits).
const DERIVED_LEN: usize = 32;

/// Domain separation: a derived value can never be replayed as a minted tag.
const MINT_LABEL: &[u8] = b"busylamp branch v2\0";
const DERIVE_LABEL: &[u8] = b"busylamp derived branch v2\0";

type HmacSha256 = hmac::Hmac<Sha256>;

/// The key our branches are minted under.
#[derive(Clone)]
pub struct BranchKey {
    /// HMAC-SHA256 keyed once; each use clones the keyed state.
    mac: HmacSha256,
}

impl BranchKey {
    pub fn new(key: [u8; KEY_LEN]) -> BranchKey {
        BranchKey {
            mac: HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any length"),
        }
    }

    /// A fresh key from the operating system's RNG.
    pub fn random() -> Result<BranchKey, getrandom::Error> {
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key)?;
        Ok(BranchKey::new(key))
    }

    /// The key kept in `path`, or a fresh one stored there (mode 0600, written to a temporary
    /// file and renamed, so a crash never leaves half a key). A file in another form (the
    /// 8-byte secret of older versions, or damage) is replaced. When the file cannot be read
    /// or written the fresh key is used for this run only, with a warning: 2xx
    /// retransmissions from before a restart will then not be relayed. Fails only when the
    /// OS RNG does.
    pub fn load_or_create(path: &Path) -> Result<BranchKey, getrandom::Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some(key) = parse_key(&text) {
                    return Ok(BranchKey::new(key));
                }
                tracing::info!(path = %path.display(), "branch key in an old or damaged form: replaced");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "branch key unreadable; using a key for this run only: 2xx retransmissions from before a restart will not be relayed");
                return BranchKey::random();
            }
        }
        let mut key = [0u8; KEY_LEN];
        getrandom::fill(&mut key)?;
        let dir_exists = path.parent().is_some_and(Path::is_dir);
        match store_key(path, &key) {
            Ok(()) => {}
            // No data directory at all (the in-memory store of tests): nothing to keep.
            Err(e) if !dir_exists => {
                tracing::debug!(path = %path.display(), error = %e, "branch key kept in memory only")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "branch key not stored; 2xx retransmissions from before a restart will not be relayed")
            }
        }
        Ok(BranchKey::new(key))
    }

    /// A branch (with the magic cookie) for the fresh random value `unique`, for a request of
    /// our own (bound to no hop).
    pub fn mint(&self, unique: u64) -> String {
        format!("{BRANCH_MAGIC}{}", self.mint_tail(unique, b""))
    }

    /// The part after the magic cookie, for callers that put their own prefix between the
    /// cookie and the tail (the proxy's `L` and loop hash). `back` names where responses go
    /// back to (the proxy: the hop below its Via); [`is_ours`](Self::is_ours) must be given
    /// the same.
    pub fn mint_tail(&self, unique: u64, back: &[u8]) -> String {
        let tag = self.tag(unique, back);
        format!("{unique:016x}{}", hex::encode(&tag[..TAG_LEN]))
    }

    /// Whether `tail` (a branch after its magic cookie and any prefix of the caller's) is one
    /// [`mint_tail`](Self::mint_tail) made under this key for `back`. Only the exact lowercase
    /// form we mint passes; the tag is compared in constant time.
    pub fn is_ours(&self, tail: &str, back: &[u8]) -> bool {
        let bytes = tail.as_bytes();
        if bytes.len() != TAIL_LEN || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return false;
        }
        let mut raw = [0u8; TAIL_LEN / 2];
        if hex::decode_to_slice(bytes, &mut raw).is_err() {
            return false;
        }
        let (unique, tag) = raw.split_at(8);
        let mut first = [0u8; 8];
        first.copy_from_slice(unique);
        self.tag_state(u64::from_be_bytes(first), back)
            .verify_truncated_left(tag)
            .is_ok()
    }

    /// A stable, unguessable value for `input` (32 hex digits): the same input always gives
    /// the same value (the branch of a relayed ACK, RFC 3261 §16.11: its retransmissions
    /// must carry the same branch), and nothing about the key or any minted branch can be
    /// learnt from it.
    pub fn derive(&self, input: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(DERIVE_LABEL);
        mac.update(input);
        let out = mac.finalize().into_bytes();
        hex::encode(&out[..DERIVED_LEN / 2])
    }

    fn tag_state(&self, unique: u64, back: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(MINT_LABEL);
        // Fixed length first, so (unique, back) reads back one way only.
        mac.update(&unique.to_be_bytes());
        mac.update(back);
        mac
    }

    fn tag(&self, unique: u64, back: &[u8]) -> [u8; 32] {
        self.tag_state(unique, back).finalize().into_bytes().into()
    }
}

impl fmt::Debug for BranchKey {
    // Never print the key: with it anyone could mint branches that pass `is_ours`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BranchKey(<redacted>)")
    }
}

/// The key file's form: the key in lowercase hex, one line.
fn parse_key(text: &str) -> Option<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    hex::decode_to_slice(text.trim(), &mut key).ok()?;
    Some(key)
}

fn store_key(path: &Path, key: &[u8; KEY_LEN]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        // Readable by its owner only, like the user file.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{}", hex::encode(key))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(b: u8) -> BranchKey {
        BranchKey::new([b; KEY_LEN])
    }

    #[test]
    fn rfc3261_8_1_1_7_minted_branches_have_the_cookie_and_are_tokens() {
        let k = key(1);
        let mut seen = HashSet::new();
        for unique in 0..10_000u64 {
            let b = k.mint(unique.wrapping_mul(0x0123_4567_89ab_cdef));
            assert!(b.starts_with(BRANCH_MAGIC));
            assert!(crate::sip::text::is_token(&b));
            assert!(k.is_ours(&b[BRANCH_MAGIC.len()..], b""), "{b}");
            assert!(seen.insert(b));
        }
        assert_eq!(k.mint(7), k.mint(7));
        assert_eq!(k.mint_tail(7, b""), k.mint(7)[BRANCH_MAGIC.len()..]);
    }

    #[test]
    fn a_branch_minted_under_one_key_fails_under_another() {
        let b = key(1).mint_tail(42, b"");
        assert!(key(1).is_ours(&b, b""));
        assert!(!key(2).is_ours(&b, b""));
        assert_ne!(key(1).mint_tail(42, b""), key(2).mint_tail(42, b""));
        let random = BranchKey::random().expect("OS RNG");
        assert!(!random.is_ours(&b, b""));
    }

    #[test]
    fn a_branch_minted_for_one_hop_fails_for_another() {
        let k = key(1);
        let b = k.mint_tail(42, b"UDP/192.0.2.1:5060");
        assert!(k.is_ours(&b, b"UDP/192.0.2.1:5060"));
        assert!(!k.is_ours(&b, b"UDP/192.0.2.66:5060"));
        assert!(!k.is_ours(&b, b"TCP/192.0.2.1:5060"));
        assert!(!k.is_ours(&b, b""));
    }

    #[test]
    fn flipping_any_hex_digit_fails() {
        let k = key(3);
        let tail = k.mint_tail(0xdead_beef_cafe_f00d, b"");
        for i in 0..tail.len() {
            for d in b"0123456789abcdefABCDEF" {
                let mut bytes = tail.clone().into_bytes();
                if bytes[i] == *d {
                    continue;
                }
                bytes[i] = *d;
                let changed = String::from_utf8(bytes).expect("ASCII");
                assert!(!k.is_ours(&changed, b""), "digit {i} -> {}", *d as char);
            }
        }
        // Truncated, extended, empty, non-hex.
        assert!(k.is_ours(&tail, b""));
        assert!(!k.is_ours(&tail[..tail.len() - 1], b""));
        assert!(!k.is_ours(&format!("{tail}0"), b""));
        assert!(!k.is_ours("", b""));
        assert!(!k.is_ours(&"z".repeat(TAIL_LEN), b""));
        assert!(!k.is_ours(&"é".repeat(TAIL_LEN / 2), b""));
    }

    #[test]
    fn derived_values_are_stable_keyed_and_never_pass_as_minted() {
        let k = key(4);
        let d = k.derive(b"z9hG4bKabc");
        assert_eq!(d.len(), DERIVED_LEN);
        assert_eq!(d, k.derive(b"z9hG4bKabc"));
        assert_ne!(d, k.derive(b"z9hG4bKabd"));
        assert_ne!(d, key(5).derive(b"z9hG4bKabc"));
        // Even a derived value of the right length is not a minted tail.
        let long = format!("{d}{}", k.derive(b"x"));
        assert!(!k.is_ours(&long[..TAIL_LEN], b""));
    }

    #[test]
    fn debug_output_hides_the_key() {
        assert_eq!(format!("{:?}", key(0xab)), "BranchKey(<redacted>)");
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "busylamp-branchkey-{name}-{}-{}",
            std::process::id(),
            crate::ids::Ids::new().expect("OS RNG").next()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("reuse");
        let path = dir.join("branch.key");
        let first = BranchKey::load_or_create(&path).expect("OS RNG");
        let text = std::fs::read_to_string(&path).expect("key stored");
        assert_eq!(text.trim().len(), 2 * KEY_LEN);
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = BranchKey::load_or_create(&path).expect("OS RNG");
        let b = first.mint_tail(9, b"");
        assert!(
            again.is_ours(&b, b""),
            "a restart keeps recognising our branches"
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir).expect("dir").collect();
        assert_eq!(names.len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_old_8_byte_key_file_is_replaced_by_a_32_byte_one() {
        let dir = temp_dir("old");
        let path = dir.join("branch.key");
        std::fs::write(&path, "0123456789abcdef\n").expect("write");
        let k = BranchKey::load_or_create(&path).expect("OS RNG");
        let text = std::fs::read_to_string(&path).expect("key stored");
        assert_eq!(text.trim().len(), 2 * KEY_LEN);
        assert!(BranchKey::load_or_create(&path)
            .expect("OS RNG")
            .is_ours(&k.mint_tail(1, b""), b""));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn an_unusable_directory_still_gives_a_key() {
        let path = std::path::Path::new("/nonexistent-busylamp-dir/branch.key");
        let k = BranchKey::load_or_create(path).expect("OS RNG");
        assert!(k.is_ours(&k.mint_tail(5, b""), b""));
    }
}
