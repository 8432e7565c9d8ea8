//! The one place for derived keys. Every key the service makes for itself comes from one root,
//! `DATA_ENCRYPTION_KEY`, through HKDF-SHA256 (RFC 5869) with its own label, so that a key for
//! one purpose says nothing about another and none of them depends on the JWT signing key:
//! rotating the signing key changes no derived key (docs/api.md "Configuration").
//!
//! Adding a purpose is one line in [`Purpose`] and its label in [`Purpose::label`]; a label
//! never changes once a key derived under it protects data.

use crate::config::Secret;
use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey},
    error::Unspecified,
    hkdf, hmac,
};
use std::fmt;

/// The length of `DATA_ENCRYPTION_KEY` and of every derived key, in bytes.
pub const KEY_BYTES: usize = 32;

/// Fixed salt (RFC 5869 §3.1: optional; a constant one separates this service's derivations
/// from any other use of the same root).
const SALT: &[u8] = b"auth-lambda data key v1";

/// What a derived key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The HMAC key deriving a rotated refresh token's successor (`refresh::successor`).
    RefreshSuccessor,
    /// The AES-256-GCM key sealing pending outbox bodies ([`crate::mail`]).
    OutboxSeal,
    /// The AES-256-GCM key sealing stored TOTP secrets ([`crate::totp`]).
    TotpSeal,
    /// The HMAC-SHA256 key hashing recovery codes ([`crate::totp`]).
    RecoveryCode,
}

impl Purpose {
    /// The HKDF `info` of the purpose.
    pub fn label(self) -> &'static [u8] {
        match self {
            Purpose::RefreshSuccessor => b"refresh-successor",
            Purpose::OutboxSeal => b"outbox-seal",
            Purpose::TotpSeal => b"totp-seal",
            Purpose::RecoveryCode => b"recovery-code",
        }
    }
}

/// The root secret, `DATA_ENCRYPTION_KEY` decoded: redacted in `Debug`.
pub type DataKey = Secret<[u8; KEY_BYTES]>;

/// The key for `purpose`, derived from `root`.
pub fn derive(root: &DataKey, purpose: Purpose) -> Secret<[u8; KEY_BYTES]> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(root.expose());
    let mut out = [0u8; KEY_BYTES];
    // `expand` and `fill` fail only for an output longer than 255 hash lengths; 32 bytes is one.
    let filled = prk
        .expand(&[purpose.label()], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out));
    debug_assert!(filled.is_ok());
    Secret::new(out)
}

/// The HMAC-SHA256 key that derives refresh-token successors.
pub fn refresh_successor_key(root: &DataKey) -> hmac::Key {
    hmac::Key::new(
        hmac::HMAC_SHA256,
        derive(root, Purpose::RefreshSuccessor).expose(),
    )
}

/// AES-256-GCM under a derived key: what the service stores and must read back later but no one
/// else may read or change (outbox bodies; TOTP secrets next).
///
/// A sealed value is `nonce (12 bytes) || ciphertext || tag (16 bytes)`. The nonce is random per
/// message (aws-lc draws it), so one key may seal about 2^32 messages before a repeated nonce
/// becomes a real risk (NIST SP 800-38D §8.3) — far beyond what the outbox sees between key
/// rotations. The caller's AAD binds a value to its place (the outbox row's id), so a sealed
/// body copied into another row does not open there.
pub struct Sealer {
    purpose: Purpose,
    key: RandomizedNonceKey,
}

/// Bytes a sealed value has on top of its plaintext: the nonce in front, the tag behind.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + 16;

impl Sealer {
    /// The sealer for `purpose`, keyed by HKDF from `root`. Fails only if aws-lc refuses a
    /// 32-byte AES-256 key, which it does not; the `Result` keeps a panic out of the caller.
    pub fn new(root: &DataKey, purpose: Purpose) -> Result<Self, Unspecified> {
        let key = RandomizedNonceKey::new(&AES_256_GCM, derive(root, purpose).expose())?;
        Ok(Self { purpose, key })
    }

    /// `plaintext` sealed, bound to `aad`. The only failure aws-lc has here is a plaintext over
    /// 64 GiB; it yields an empty value, which never opens, instead of a panic.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        body.extend_from_slice(plaintext);
        match self.key.seal_in_place_append_tag(Aad::from(aad), &mut body) {
            Ok(nonce) => {
                let mut sealed = Vec::with_capacity(body.len() + NONCE_LEN);
                sealed.extend_from_slice(nonce.as_ref());
                sealed.extend_from_slice(&body);
                sealed
            }
            Err(Unspecified) => Vec::new(),
        }
    }

    /// The plaintext of `sealed`, or `None` when it was sealed under another key or AAD, was
    /// changed, or is too short to be a sealed value.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < SEAL_OVERHEAD {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plaintext_len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?
            .len();
        body.truncate(plaintext_len);
        Some(body)
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("purpose", &self.purpose)
            .field("key", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(byte: u8) -> DataKey {
        Secret::new([byte; KEY_BYTES])
    }

    #[test]
    fn the_derivation_is_stable_and_follows_the_root() {
        let a = derive(&root(1), Purpose::RefreshSuccessor);
        assert_eq!(a, derive(&root(1), Purpose::RefreshSuccessor));
        assert_ne!(a, derive(&root(2), Purpose::RefreshSuccessor));
        assert_ne!(a.expose(), root(1).expose(), "never the root itself");
    }

    /// RFC 5869 test case 3 shape, recomputed with HMAC by hand: HKDF-Expand's first block is
    /// HMAC(PRK, info || 0x01), PRK = HMAC(salt, root). Pins the construction, not just
    /// "some function of the root".
    #[test]
    fn the_derivation_is_hkdf_sha256_with_the_label_as_info() {
        let root = root(7);
        let salt = hmac::Key::new(hmac::HMAC_SHA256, SALT);
        let prk = hmac::sign(&salt, root.expose());
        let prk = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
        let mut block = Purpose::RefreshSuccessor.label().to_vec();
        block.push(1);
        let expected = hmac::sign(&prk, &block);
        assert_eq!(
            derive(&root, Purpose::RefreshSuccessor).expose().as_slice(),
            expected.as_ref()
        );
    }

    #[test]
    fn each_label_gives_its_own_key() {
        // The labels the roadmap names still to come (totp-seal, recovery-code) get their own
        // variants when they land; here the property itself is pinned with raw labels.
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(root(3).expose());
        let expand = |label: &[u8]| {
            let mut out = [0u8; KEY_BYTES];
            prk.expand(&[label], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut out))
                .expect("32 bytes");
            out
        };
        let successor = *derive(&root(3), Purpose::RefreshSuccessor).expose();
        let outbox = *derive(&root(3), Purpose::OutboxSeal).expose();
        assert_eq!(successor, expand(b"refresh-successor"));
        assert_eq!(outbox, expand(b"outbox-seal"));
        assert_ne!(successor, outbox);
        for other in [&b"totp-seal"[..], b"recovery-code"] {
            assert_ne!(successor, expand(other));
            assert_ne!(outbox, expand(other));
        }
    }

    fn sealer(byte: u8, purpose: Purpose) -> Sealer {
        Sealer::new(&root(byte), purpose).expect("AES-256 takes 32 bytes")
    }

    #[test]
    fn a_sealed_value_opens_to_its_plaintext() {
        let s = sealer(4, Purpose::OutboxSeal);
        for plaintext in [&b""[..], b"x", &[0xAB; 1000]] {
            let sealed = s.seal(b"row", plaintext);
            assert_eq!(sealed.len(), plaintext.len() + SEAL_OVERHEAD);
            assert_eq!(s.open(b"row", &sealed).as_deref(), Some(plaintext));
        }
    }

    #[test]
    fn the_ciphertext_hides_the_plaintext_and_each_seal_has_its_own_nonce() {
        let s = sealer(4, Purpose::OutboxSeal);
        let plaintext = b"token=abcdefghijklmnop";
        let sealed: Vec<Vec<u8>> = (0..64).map(|_| s.seal(b"row", plaintext)).collect();
        let mut nonces: Vec<&[u8]> = sealed.iter().map(|v| &v[..NONCE_LEN]).collect();
        nonces.sort();
        nonces.dedup();
        assert_eq!(nonces.len(), sealed.len(), "a nonce repeated");
        assert_ne!(
            sealed[0], sealed[1],
            "the same plaintext seals differently each time"
        );
        for v in &sealed {
            assert!(!v.windows(plaintext.len()).any(|w| w == plaintext));
        }
    }

    #[test]
    fn a_changed_byte_anywhere_fails_to_open() {
        let s = sealer(4, Purpose::OutboxSeal);
        let sealed = s.seal(b"row", b"secret body");
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            assert_eq!(s.open(b"row", &tampered), None, "byte {i} flipped");
        }
        assert_eq!(
            s.open(b"row", &sealed[..sealed.len() - 1]),
            None,
            "truncated"
        );
        assert_eq!(
            s.open(b"row", &sealed[..SEAL_OVERHEAD - 1]),
            None,
            "too short"
        );
        assert_eq!(s.open(b"row", &[]), None, "empty");
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(s.open(b"row", &longer), None, "extended");
    }

    #[test]
    fn another_aad_fails_to_open() {
        let s = sealer(4, Purpose::OutboxSeal);
        let sealed = s.seal(b"row 1", b"secret body");
        assert_eq!(s.open(b"row 2", &sealed), None);
        assert_eq!(s.open(b"", &sealed), None);
        assert!(s.open(b"row 1", &sealed).is_some());
    }

    #[test]
    fn another_root_or_purpose_fails_to_open() {
        let sealed = sealer(4, Purpose::OutboxSeal).seal(b"row", b"secret body");
        assert_eq!(sealer(5, Purpose::OutboxSeal).open(b"row", &sealed), None);
        assert_eq!(
            sealer(4, Purpose::RefreshSuccessor).open(b"row", &sealed),
            None
        );
        assert!(
            sealer(4, Purpose::OutboxSeal)
                .open(b"row", &sealed)
                .is_some()
        );
    }

    #[test]
    fn the_seal_is_aes_256_gcm_under_the_derived_key() {
        // Opening with a plain aws-lc key built from `derive` pins the construction: the
        // algorithm, the derived (not root) key and the nonce-in-front layout.
        use aws_lc_rs::aead::{LessSafeKey, UnboundKey};
        let sealed = sealer(6, Purpose::OutboxSeal).seal(b"aad", b"plain");
        let key = derive(&root(6), Purpose::OutboxSeal);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key.expose()).expect("32 bytes"));
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).expect("12 bytes");
        let mut body = body.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(b"aad"), &mut body)
            .expect("opens");
        assert_eq!(plain, b"plain");
    }

    #[test]
    fn debug_output_hides_the_keys() {
        assert_eq!(format!("{:?}", root(9)), "[redacted]");
        assert_eq!(
            format!("{:?}", derive(&root(9), Purpose::RefreshSuccessor)),
            "[redacted]"
        );
        assert_eq!(
            format!("{:?}", sealer(9, Purpose::OutboxSeal)),
            r#"Sealer { purpose: OutboxSeal, key: "[redacted]" }"#
        );
    }
}
