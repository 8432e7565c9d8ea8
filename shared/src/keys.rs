//! The one place for derived keys. Every key the service makes for itself comes from one root,
//! `DATA_ENCRYPTION_KEY`, through HKDF-SHA256 (RFC 5869) with its own label, so that a key for
//! one purpose says nothing about another and none of them depends on the JWT signing key:
//! rotating the signing key changes no derived key (docs/api.md "Configuration").
//!
//! Adding a purpose is one line in [`Purpose`] and its label in [`Purpose::label`]; a label
//! never changes once a key derived under it protects data.

use crate::config::Secret;
use aws_lc_rs::{hkdf, hmac};

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
}

impl Purpose {
    /// The HKDF `info` of the purpose.
    pub fn label(self) -> &'static [u8] {
        match self {
            Purpose::RefreshSuccessor => b"refresh-successor",
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
        // The labels the roadmap names (outbox-seal, totp-seal, recovery-code) get their own
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
        assert_eq!(successor, expand(b"refresh-successor"));
        for other in [&b"outbox-seal"[..], b"totp-seal", b"recovery-code"] {
            assert_ne!(successor, expand(other));
        }
    }

    #[test]
    fn debug_output_hides_the_keys() {
        assert_eq!(format!("{:?}", root(9)), "[redacted]");
        assert_eq!(
            format!("{:?}", derive(&root(9), Purpose::RefreshSuccessor)),
            "[redacted]"
        );
    }
}
