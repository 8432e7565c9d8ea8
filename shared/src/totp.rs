//! The second factor's primitives (docs/api.md "Two-step login"): TOTP per RFC 6238 (SHA-1,
//! six digits, 30 s steps, one step of skew either way) computed by `totp-rs`, the
//! `otpauth://` URI authenticator apps read and its QR code as SVG (`qrcode`), and recovery
//! codes. No I/O and no clock of its own: the caller passes the time, so tests set it.
//!
//! What is stored is decided here too: the secret sealed under its own derived key with the
//! user's id as AAD (so a sealed secret copied to another row does not open), and each
//! recovery code as an HMAC under a derived key, so the database alone cannot test guesses.
//! [`matching_step`] returns the step a code matched; accepting each step once is the store's.

use crate::{
    config::Secret,
    keys::{self, DataKey, Purpose, Sealer},
};
use aws_lc_rs::hmac;
use base64::Engine as _;
use rand::RngCore;
use std::fmt::Write as _;
use totp_rs::{Algorithm, Builder, Totp};
use uuid::Uuid;

/// Digits of a code.
pub const DIGITS: u8 = 6;
/// Seconds per time step.
pub const STEP_SECS: u64 = 30;
/// Steps accepted on either side of the current one (RFC 6238 §5.2 recommends one).
pub const SKEW_STEPS: u16 = 1;
/// Bytes of a secret: 160 bits, RFC 4226 §4's recommendation.
pub const SECRET_BYTES: usize = 20;
/// Base32 characters of a recovery code: 80 bits.
pub const RECOVERY_CODE_CHARS: usize = 16;

/// A TOTP secret's raw bytes, redacted in `Debug`.
pub type TotpSecret = Secret<[u8; SECRET_BYTES]>;

/// A new random secret.
pub fn generate_secret() -> TotpSecret {
    let mut raw = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut raw);
    Secret::new(raw)
}

/// The secret as people and apps type it: RFC 4648 base32, upper case, no padding (160 bits
/// make exactly 32 characters).
pub fn base32(secret: &TotpSecret) -> String {
    base32_encode(secret.expose())
}

/// A secret as [`base32`] writes it, back to its bytes (for tools and tests that play the
/// authenticator app); `None` unless it is 160 bits of base32.
pub fn from_base32(text: &str) -> Option<TotpSecret> {
    let secret = totp_rs::Secret::try_from_base32(text).ok()?;
    Some(Secret::new(secret.as_bytes().try_into().ok()?))
}

fn base32_encode(bytes: &[u8]) -> String {
    totp_rs::Secret::from(bytes).to_base32()
}

fn totp(secret: &TotpSecret) -> Totp {
    // `build_noncompliant` skips `build`'s checks, which the constants above and a 160-bit
    // secret pass by construction, and so spares a `Result` that could never be an error.
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(DIGITS)
        .with_skew(SKEW_STEPS)
        .with_step_duration(STEP_SECS)
        .with_secret(secret.expose().as_slice())
        .build_noncompliant()
}

/// The time step of a Unix time (times before 1970 are step 0: no clock we run on is there).
pub fn step_of(unix_secs: i64) -> u64 {
    u64::try_from(unix_secs).unwrap_or(0) / STEP_SECS
}

/// The code of `secret` at the time step `step`.
pub fn code_at_step(secret: &TotpSecret, step: u64) -> String {
    totp(secret)
        .generate(step.saturating_mul(STEP_SECS))
        .to_string()
}

/// The time step within the skew of `unix_secs` whose code `code` is, if any (totp-rs compares
/// codes in constant time). A step it returns is to be accepted once: the caller records it.
pub fn matching_step(secret: &TotpSecret, code: &Code, unix_secs: i64) -> Option<u64> {
    totp(secret).check(&code.0, u64::try_from(unix_secs).unwrap_or(0))
}

/// A six-digit code as the client sent it, checked for shape only.
#[derive(Clone, PartialEq, Eq)]
pub struct Code(String);

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code([redacted])")
    }
}

impl Code {
    /// Exactly six ASCII digits, spaces anywhere ignored (apps show `123 456`); `None` for
    /// anything else.
    pub fn parse(raw: &str) -> Option<Self> {
        let digits: String = raw.chars().filter(|c| *c != ' ').collect();
        (digits.len() == usize::from(DIGITS) && digits.bytes().all(|b| b.is_ascii_digit()))
            .then_some(Self(digits))
    }
}

/// The `otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=…` URI of Google Authenticator's Key
/// Uri Format, with the algorithm, digits and period spelled out.
pub fn otpauth_uri(secret: &TotpSecret, issuer: &str, account: &str) -> String {
    let label = format!("{}:{}", escape(issuer), escape(account));
    format!(
        "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        base32(secret),
        escape(issuer),
    )
}

/// Percent-encoding of everything but RFC 3986's unreserved characters (and '@'), so neither a
/// ':' nor an '&' in a product name can change the URI's structure. Not `form_urlencoded`, as
/// mail links use: it writes a space as '+', which apps show literally in the label.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// `uri` as an SVG QR code in a `data:image/svg+xml;base64,` URI, for an `<img src>`.
/// `None` only if the URI is too long for any QR code, which no URI we build is.
pub fn qr_code(uri: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(uri, qrcode::EcLevel::M).ok()?;
    let svg = code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .build();
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

/// Seals and opens stored secrets, and keys recovery-code hashes; built once per cold start
/// from `DATA_ENCRYPTION_KEY`.
pub struct Keys {
    sealer: Sealer,
    recovery: hmac::Key,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("totp::Keys([redacted])")
    }
}

impl Keys {
    /// The keys derived from `root`; fails only if aws-lc refuses a 32-byte AES key.
    pub fn new(root: &DataKey) -> Result<Self, aws_lc_rs::error::Unspecified> {
        Ok(Self {
            sealer: Sealer::new(root, Purpose::TotpSeal)?,
            recovery: hmac::Key::new(
                hmac::HMAC_SHA256,
                keys::derive(root, Purpose::RecoveryCode).expose(),
            ),
        })
    }

    /// `secret` sealed for the user `user_id`.
    pub fn seal(&self, user_id: Uuid, secret: &TotpSecret) -> Vec<u8> {
        self.sealer.seal(user_id.as_bytes(), secret.expose())
    }

    /// The secret sealed for `user_id`; `None` if it was sealed for another user or key, or
    /// was changed.
    pub fn open(&self, user_id: Uuid, sealed: &[u8]) -> Option<TotpSecret> {
        let plain = self.sealer.open(user_id.as_bytes(), sealed)?;
        Some(Secret::new(plain.try_into().ok()?))
    }

    /// What the database stores of a recovery code of `user_id`: the HMAC of the user and the
    /// normalized code, so equal codes of two users differ in the table.
    pub fn recovery_hash(&self, user_id: Uuid, code: &RecoveryCode) -> Vec<u8> {
        let mut context = hmac::Context::with_key(&self.recovery);
        context.update(user_id.as_bytes());
        context.update(code.0.as_bytes());
        context.sign().as_ref().to_vec()
    }
}

/// A recovery code, normalized: 16 base32 characters, upper case.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode([redacted])")
    }
}

impl RecoveryCode {
    /// A new random code (80 bits).
    pub fn generate() -> Self {
        let mut raw = [0u8; RECOVERY_CODE_CHARS * 5 / 8];
        rand::rng().fill_bytes(&mut raw);
        Self(base32_encode(&raw))
    }

    /// A code as a person types it back: case, spaces and hyphens ignored (we show it in
    /// groups of four); `None` unless 16 base32 characters remain.
    pub fn parse(raw: &str) -> Option<Self> {
        let code: String = raw
            .chars()
            .filter(|c| !matches!(c, ' ' | '-'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        (code.len() == RECOVERY_CODE_CHARS
            && code.bytes().all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7')))
        .then_some(Self(code))
    }

    /// The code as shown once, in four groups of four: `ABCD-EFGH-IJKL-MNOP`.
    pub fn display(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        chars
            .chunks(4)
            .map(|group| group.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("-")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B's SHA-1 seed, "12345678901234567890".
    fn rfc_secret() -> TotpSecret {
        Secret::new(*b"12345678901234567890")
    }

    #[test]
    fn codes_match_rfc_6238_appendix_b() {
        // The appendix lists eight digits; six are its last six (RFC 4226 truncation).
        for (time, eight) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(
                code_at_step(&rfc_secret(), step_of(time)),
                eight[2..],
                "{time}"
            );
        }
    }

    #[test]
    fn one_step_either_side_is_accepted_and_two_are_not() {
        let secret = generate_secret();
        let now = 1_700_000_015; // the middle of a step
        let step = step_of(now);
        let code = |step: u64| Code::parse(&code_at_step(&secret, step)).expect("six digits");
        for near in [step - 1, step, step + 1] {
            assert_eq!(matching_step(&secret, &code(near), now), Some(near));
        }
        let near: Vec<String> = (step - 1..=step + 1)
            .map(|s| code_at_step(&secret, s))
            .collect();
        for far in [step - 2, step + 2] {
            // A far step's code can equal a near one's (one chance in 10^6 per step).
            if !near.contains(&code_at_step(&secret, far)) {
                assert_eq!(matching_step(&secret, &code(far), now), None, "step {far}");
            }
        }
        // At the first and the last second of a step, the window is still the step ±1.
        let start = i64::try_from(step * STEP_SECS).expect("fits");
        let last = start + 29;
        assert_eq!(
            matching_step(&secret, &code(step + 1), start),
            Some(step + 1)
        );
        assert_eq!(
            matching_step(&secret, &code(step + 1), last),
            Some(step + 1)
        );
        assert_eq!(
            matching_step(&secret, &code(step - 1), last),
            Some(step - 1)
        );
        if !near.contains(&code_at_step(&secret, step + 2)) {
            assert_eq!(matching_step(&secret, &code(step + 2), last), None);
        }
    }

    #[test]
    fn codes_are_six_digits_and_nothing_else() {
        assert!(Code::parse("123456").is_some());
        assert!(Code::parse(" 123 456 ").is_some());
        assert_eq!(Code::parse("123 456"), Code::parse("123456"));
        for bad in [
            "12345",
            "1234567",
            "12345a",
            "１２３４５６",
            "",
            "123-456",
            "+12345",
        ] {
            assert!(Code::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_160_bits_of_base32() {
        let secret = generate_secret();
        let text = base32(&secret);
        assert_eq!(text.len(), 32);
        assert!(text.bytes().all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7')));
        assert_ne!(text, base32(&generate_secret()));
        assert_eq!(base32(&rfc_secret()), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let back = from_base32(&text).expect("its own base32");
        assert_eq!(back.expose(), secret.expose());
        assert!(from_base32("GEZDGNBV").is_none(), "40 bits are no secret");
        assert!(from_base32("not base32!").is_none());
    }

    #[test]
    fn the_uri_is_what_authenticator_apps_read_and_names_cannot_break_it() {
        let uri = otpauth_uri(&rfc_secret(), "Acme Auth", "ann@example.com");
        assert_eq!(
            uri,
            "otpauth://totp/Acme%20Auth:ann@example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Acme%20Auth&algorithm=SHA1&digits=6&period=30"
        );
        let uri = otpauth_uri(&rfc_secret(), "A:B&secret=X", "ann@example.com");
        assert!(uri.starts_with("otpauth://totp/A%3AB%26secret%3DX:ann@example.com?"));
        assert_eq!(uri.matches("secret=").count(), 1);
    }

    #[test]
    fn the_qr_code_is_an_svg_data_uri() {
        let uri = otpauth_uri(&rfc_secret(), "Acme", "ann@example.com");
        let qr = qr_code(&uri).expect("fits a QR code");
        let svg = qr
            .strip_prefix("data:image/svg+xml;base64,")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .expect("base64 SVG");
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(
            !svg.contains("GEZDGNBV"),
            "the secret is in the modules, not the text"
        );
    }

    fn keys(byte: u8) -> Keys {
        Keys::new(&Secret::new([byte; keys::KEY_BYTES])).expect("AES-256 takes 32 bytes")
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_user_and_key() {
        let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let secret = generate_secret();
        let sealed = keys(1).seal(ann, &secret);
        assert_eq!(keys(1).open(ann, &sealed), Some(secret.clone()));
        assert_eq!(keys(1).open(bob, &sealed), None);
        assert_eq!(keys(2).open(ann, &sealed), None);
        assert!(
            !sealed
                .windows(8)
                .any(|w| secret.expose().windows(8).any(|s| s == w))
        );
    }

    #[test]
    fn recovery_codes_are_80_bits_typed_back_loosely_and_hashed_per_user() {
        let code = RecoveryCode::generate();
        assert_eq!(code.0.len(), RECOVERY_CODE_CHARS);
        assert_ne!(code, RecoveryCode::generate());
        let shown = code.display();
        assert_eq!(shown.len(), 19);
        assert_eq!(RecoveryCode::parse(&shown), Some(code.clone()));
        assert_eq!(
            RecoveryCode::parse(&shown.to_lowercase().replace('-', " ")),
            Some(code.clone())
        );
        for bad in [
            "",
            "ABCD-EFGH-IJKL-MNO",
            "ABCD-EFGH-IJKL-MNOP1",
            "ABCD-EFGH-IJKL-MNO1",
        ] {
            assert!(RecoveryCode::parse(bad).is_none(), "{bad:?}");
        }
        let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let hash = keys(1).recovery_hash(ann, &code);
        assert_eq!(hash.len(), 32);
        assert_eq!(hash, keys(1).recovery_hash(ann, &code));
        assert_ne!(hash, keys(1).recovery_hash(bob, &code));
        assert_ne!(hash, keys(2).recovery_hash(ann, &code));
    }
}
