//! Refresh tokens: 256 random bits, base64url without padding on the wire, SHA-256 in the
//! database (the tokens are random, so a plain hash is enough), and the successor of a token
//! derived from it with a keyed hash, so that a client racing inside the grace window is
//! given the same successor without the successor ever being stored.

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use rand::RngCore;

/// A refresh token's raw bytes.
pub type Raw = [u8; 32];

/// A new random token.
pub fn generate() -> Raw {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    raw
}

/// The token as the client sees it.
pub fn encode(raw: &Raw) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The raw bytes of a token in its wire form; `None` for anything else.
pub fn decode(token: &str) -> Option<Raw> {
    if token.len() != 43 {
        return None;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?
        .try_into()
        .ok()
}

/// What the database stores of a token.
pub fn hash(raw: &Raw) -> Vec<u8> {
    digest::digest(&digest::SHA256, raw).as_ref().to_vec()
}

/// The token that replaces `raw` when it is rotated.
pub fn successor(key: &hmac::Key, raw: &Raw) -> Raw {
    let tag = hmac::sign(key, raw);
    let mut out = [0u8; 32];
    out.copy_from_slice(&tag.as_ref()[..32]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_nothing_else_decodes() {
        let raw = generate();
        let token = encode(&raw);
        assert_eq!(token.len(), 43);
        assert_eq!(decode(&token), Some(raw));
        for bad in [
            "",
            "short",
            &format!("{token}A"),
            &token.replace(
                token
                    .chars()
                    .next()
                    .map(String::from)
                    .as_deref()
                    .unwrap_or("A"),
                "*",
            ),
        ] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_successor_depends_on_the_key_and_the_token() {
        let a = hmac::Key::new(hmac::HMAC_SHA256, b"key a");
        let b = hmac::Key::new(hmac::HMAC_SHA256, b"key b");
        let raw = generate();
        assert_eq!(successor(&a, &raw), successor(&a, &raw));
        assert_ne!(successor(&a, &raw), successor(&b, &raw));
        assert_ne!(successor(&a, &raw), successor(&a, &generate()));
        assert_ne!(successor(&a, &raw), raw);
    }
}
