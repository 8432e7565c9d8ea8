//! Passwords: the `NewPassword` newtype (NFKC, length, control characters, strength — docs/api.md
//! "Password") and `Passwords`, the argon2id hasher. Hashing and verifying run on tokio's
//! blocking pool so an argon2 run never stalls the async threads.

use crate::{config::Argon2Settings, email::Email, error::AuthError};
use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, SaltString, rand_core::OsRng},
};
use rand::RngCore;
use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};
use unicode_normalization::UnicodeNormalization;

/// Most code points a password may have.
pub const MAX_PASSWORD_CHARS: usize = 128;

/// A password offered at registration: NFKC-normalized and found acceptable.
#[derive(Clone)]
pub struct NewPassword(String);

impl NewPassword {
    /// Normalizes and checks a password for the account `email`.
    /// Length and control characters first (`invalid_password`), then strength (`weak_password`).
    pub fn parse(raw: &str, email: &Email, min_chars: usize) -> Result<Self, AuthError> {
        let normalized = normalize(raw);
        let chars = normalized.chars().count();
        if chars < min_chars {
            return Err(AuthError::InvalidPassword(format!(
                "The password must have at least {min_chars} characters."
            )));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(AuthError::InvalidPassword(format!(
                "The password must have at most {MAX_PASSWORD_CHARS} characters."
            )));
        }
        if normalized.chars().any(char::is_control) {
            return Err(AuthError::InvalidPassword(
                "The password must not contain control characters.".into(),
            ));
        }
        if is_weak(&normalized, email) {
            return Err(AuthError::WeakPassword);
        }
        Ok(Self(normalized))
    }

    /// The normalized password, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

/// NFKC, the one form that is counted, hashed and verified — at registration and login alike.
pub fn normalize(raw: &str) -> String {
    raw.nfkc().collect()
}

/// Weak: equal (ignoring case) to the email or its local part, or under 10^8 guesses by zxcvbn
/// (score below 3). zxcvbn's dictionaries include the common-password lists, so a listed
/// password scores 0.
fn is_weak(password: &str, email: &Email) -> bool {
    let lowered = password.to_lowercase();
    if lowered == email.as_str() || lowered == email.local_part() {
        return true;
    }
    let inputs = [email.as_str(), email.local_part()];
    let strong = |candidate: &str| (zxcvbn::zxcvbn(candidate, &inputs).score() as u8) >= 3;
    // zxcvbn's cost grows steeply with length (about 0.3 ms at 32 code points, 43 ms at 64,
    // 160 ms at 128). Appending characters practically only adds guesses, so a strong prefix makes the whole
    // password strong: a long one is judged by its first 32 code points first, and estimated
    // whole only when that prefix alone is weak.
    if password.chars().nth(STRENGTH_PREFIX_CHARS).is_some() {
        let prefix: String = password.chars().take(STRENGTH_PREFIX_CHARS).collect();
        if strong(&prefix) {
            return false;
        }
    }
    !strong(password)
}

/// See [`is_weak`].
const STRENGTH_PREFIX_CHARS: usize = 32;

/// The argon2id hasher with the configured cost, plus a dummy hash of the same cost so that
/// an unknown email costs a login exactly what a wrong password does.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    dummy_hash: Arc<str>,
    /// argon2's working memory (19 MiB at the default cost), allocated at the first hash and
    /// reused by every one after it. Allocated per hash, it made glibc's heap grow by the whole
    /// amount on many requests (to ~220 MiB peak RSS); reused, it stays one copy.
    memory: Arc<Mutex<Vec<Block>>>,
}

impl fmt::Debug for Passwords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Passwords")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Passwords {
    /// Builds the hasher. The dummy hash is a PHC string with the configured parameters, a
    /// random salt and a random output: verifying against it costs a full argon2 run and never
    /// succeeds, and making it costs no argon2 run at cold start.
    pub fn new(settings: Argon2Settings) -> Result<Self, argon2::Error> {
        let params = Params::new(
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            None,
        )?;
        let mut output = [0u8; Params::DEFAULT_OUTPUT_LEN];
        rand::rng().fill_bytes(&mut output);
        let salt = SaltString::generate(&mut OsRng);
        let hash = SaltString::encode_b64(&output).map_err(|_| argon2::Error::OutputTooLong)?;
        let dummy_hash = format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            settings.memory_kib,
            settings.iterations,
            settings.parallelism,
            salt.as_str(),
            hash.as_str()
        );
        // Fail now rather than at the first login if the string were malformed.
        PasswordHash::new(&dummy_hash).map_err(|_| argon2::Error::AlgorithmInvalid)?;
        Ok(Self {
            params,
            dummy_hash: dummy_hash.into(),
            memory: Arc::default(),
        })
    }

    /// Hashes a password into an argon2id PHC string, off the async threads.
    pub async fn hash(&self, password: &NewPassword) -> Result<String, AuthError> {
        self.hash_normalized(password.0.clone()).await
    }

    async fn hash_normalized(&self, password: String) -> Result<String, AuthError> {
        let (params, memory) = (self.params.clone(), self.memory.clone());
        let joined = tokio::task::spawn_blocking(move || {
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
            let cost = (params.m_cost(), params.t_cost(), params.p_cost());
            compute(
                &memory,
                Algorithm::Argon2id,
                Version::V0x13,
                params,
                password.as_bytes(),
                &salt,
                &mut out,
            )?;
            let b64 = |bytes: &[u8]| SaltString::encode_b64(bytes).map(|s| s.as_str().to_owned());
            let (salt, out) = (b64(&salt)?, b64(&out)?);
            Ok::<_, argon2::password_hash::Error>(format!(
                "$argon2id$v=19$m={},t={},p={}${salt}${out}",
                cost.0, cost.1, cost.2
            ))
        })
        .await;
        match joined {
            Ok(Ok(hash)) => Ok(hash),
            Ok(Err(error)) => {
                tracing::error!(%error, "argon2 hashing failed");
                Err(AuthError::Internal)
            }
            Err(error) => {
                tracing::error!(%error, "hashing task failed");
                Err(AuthError::Internal)
            }
        }
    }

    /// Checks `password` (already NFKC) against a stored PHC string; `None` checks it against
    /// the dummy hash so the caller spends the same time whether or not the account exists.
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<bool, AuthError> {
        let phc: Arc<str> = match stored {
            Some(s) => s.into(),
            None => self.dummy_hash.clone(),
        };
        let (password, memory) = (password.to_owned(), self.memory.clone());
        let joined =
            tokio::task::spawn_blocking(move || verify_phc(&memory, &phc, password.as_bytes()))
                .await;
        match joined {
            Ok(Ok(matched)) => Ok(matched && stored.is_some()),
            Ok(Err(error)) => {
                tracing::error!(%error, "stored password hash could not be checked");
                Err(AuthError::Internal)
            }
            Err(error) => {
                tracing::error!(%error, "verify task failed");
                Err(AuthError::Internal)
            }
        }
    }

    /// Whether a stored hash is weaker than the configured parameters (or not argon2id v1.3)
    /// and should be replaced at the next successful login.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return true;
        };
        if parsed.algorithm != argon2::ARGON2ID_IDENT || parsed.version != Some(0x13) {
            return true;
        }
        match Params::try_from(&parsed) {
            Ok(p) => {
                p.m_cost() < self.params.m_cost()
                    || p.t_cost() < self.params.t_cost()
                    || p.p_cost() < self.params.p_cost()
            }
            Err(_) => true,
        }
    }

    /// Hashes an already-verified, already-normalized password with the current parameters.
    pub async fn rehash(&self, password: &str) -> Result<String, AuthError> {
        self.hash_normalized(password.to_owned()).await
    }
}

/// One argon2 run into `out`, in the shared working memory (grown if a stored hash asks for
/// more than the configured cost).
fn compute(
    memory: &Mutex<Vec<Block>>,
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let mut blocks = memory.lock().unwrap_or_else(PoisonError::into_inner);
    let needed = params.block_count();
    if blocks.len() < needed {
        blocks.resize(needed, Block::default());
    }
    Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password,
        salt,
        out,
        &mut blocks[..],
    )
}

/// Recomputes a PHC string's hash for `password` with the string's own algorithm, version and
/// cost, and compares in constant time.
fn verify_phc(
    memory: &Mutex<Vec<Block>>,
    phc: &str,
    password: &[u8],
) -> Result<bool, argon2::password_hash::Error> {
    use argon2::password_hash::Error as E;
    let parsed = PasswordHash::new(phc)?;
    let algorithm = Algorithm::try_from(parsed.algorithm)?;
    let version = parsed
        .version
        .map_or(Ok(Version::V0x13), Version::try_from)
        .map_err(|_| E::Version)?;
    let params = Params::try_from(&parsed)?;
    let expected = parsed.hash.ok_or(E::PhcStringField)?;
    let mut salt = [0u8; 64];
    let salt = parsed
        .salt
        .ok_or(E::PhcStringField)?
        .decode_b64(&mut salt)?;
    let mut out = vec![0u8; expected.len()];
    compute(memory, algorithm, version, params, password, salt, &mut out)?;
    Ok(Output::new(&out)? == expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email() -> Email {
        Email::parse("Someone.Special@example.com").expect("valid")
    }

    const STRONG: &str = "correct horse battery staple 93!";

    #[test]
    fn length_is_counted_in_code_points_after_nfkc() {
        // 12 code points, 24 bytes: long enough.
        let twelve = "ñçüéåøßþðæœ€";
        assert!(twelve.chars().count() == 12 && twelve.len() > 12);
        let e = NewPassword::parse(&twelve[..twelve.len() - '€'.len_utf8()], &email(), 12);
        assert!(matches!(e, Err(AuthError::InvalidPassword(_))));
        // "ﬁ" (one code point) becomes "fi" (two) under NFKC, so 11 ligatures count as 22.
        let p = NewPassword::parse(&"ﬁ".repeat(6), &email(), 12);
        assert!(!matches!(p, Err(AuthError::InvalidPassword(_))));
    }

    #[test]
    fn fullwidth_letters_are_normalized() {
        assert_eq!(normalize("ＡＢＣ１２３"), "ABC123");
        let p = NewPassword::parse("Ｔｒｏｍｂｏｎｅ－Ｌａｎｔｅｒｎ－９２７", &email(), 12)
            .expect("strong");
        assert_eq!(p.expose(), "Trombone-Lantern-927");
    }

    #[test]
    fn length_and_control_characters_fail_before_strength() {
        assert!(matches!(
            NewPassword::parse("password", &email(), 12),
            Err(AuthError::InvalidPassword(_))
        ));
        let long = "x".repeat(MAX_PASSWORD_CHARS + 1);
        assert!(matches!(
            NewPassword::parse(&long, &email(), 12),
            Err(AuthError::InvalidPassword(_))
        ));
        for bad in [
            "password1234\0",
            "abc\u{7}defghijklmnop",
            "tab\tinside-the-password",
        ] {
            assert!(
                matches!(
                    NewPassword::parse(bad, &email(), 12),
                    Err(AuthError::InvalidPassword(_))
                ),
                "{bad:?}"
            );
        }
        assert!(NewPassword::parse(&format!("{STRONG} with spaces"), &email(), 12).is_ok());
    }

    #[test]
    fn common_and_guessable_passwords_are_weak() {
        for weak in [
            "password1234",
            "qwertyuiopasdf",
            "123456789012",
            "aaaaaaaaaaaaaaaa",
            "iloveyou2024!",
        ] {
            assert_eq!(
                NewPassword::parse(weak, &email(), 12).err(),
                Some(AuthError::WeakPassword),
                "{weak}"
            );
        }
        assert!(NewPassword::parse(STRONG, &email(), 12).is_ok());
    }

    #[test]
    fn a_password_equal_to_the_email_or_its_local_part_is_weak() {
        let e = Email::parse("xq7.vorpal.zeta@example.com").expect("valid");
        assert_eq!(
            NewPassword::parse("XQ7.Vorpal.Zeta@Example.com", &e, 12).err(),
            Some(AuthError::WeakPassword)
        );
        assert_eq!(
            NewPassword::parse("Xq7.Vorpal.ZETA", &e, 12).err(),
            Some(AuthError::WeakPassword)
        );
    }

    fn fast() -> Argon2Settings {
        Argon2Settings {
            memory_kib: 8_192,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_only_its_own_password() {
        let hasher = Passwords::new(fast()).expect("params");
        let p = NewPassword::parse(STRONG, &email(), 12).expect("strong");
        let phc = hasher.hash(&p).await.expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"), "{phc}");
        assert!(hasher.verify(STRONG, Some(&phc)).await.expect("verify"));
        assert!(
            !hasher
                .verify("correct horse battery staple 94!", Some(&phc))
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn the_dummy_hash_never_matches_and_has_the_configured_cost() {
        let hasher = Passwords::new(Argon2Settings::default()).expect("params");
        assert!(
            hasher
                .dummy_hash
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        assert!(!hasher.needs_rehash(&hasher.dummy_hash));
        assert!(
            !hasher
                .verify("anything at all", None)
                .await
                .expect("verify")
        );
        assert!(!hasher.verify("", None).await.expect("verify"));
    }

    #[tokio::test]
    async fn weaker_stored_hashes_need_a_rehash() {
        let weak = Passwords::new(fast()).expect("params");
        let p = NewPassword::parse(STRONG, &email(), 12).expect("strong");
        let old = weak.hash(&p).await.expect("hash");
        let strong = Passwords::new(Argon2Settings::default()).expect("params");
        assert!(strong.needs_rehash(&old));
        assert!(!weak.needs_rehash(&old));
        assert!(
            strong.needs_rehash("$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA")
        );
        assert!(strong.needs_rehash("not a phc string"));
        let new = strong.rehash(STRONG).await.expect("rehash");
        assert!(!strong.needs_rehash(&new));
        assert!(strong.verify(STRONG, Some(&new)).await.expect("verify"));
    }

    #[tokio::test]
    async fn hashes_interoperate_with_the_reference_argon2_api() {
        use argon2::{PasswordHasher, PasswordVerifier};
        let ours = Passwords::new(fast()).expect("params");
        let reference = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8_192, 1, 1, None).expect("params"),
        );
        let theirs = reference
            .hash_password(STRONG.as_bytes(), &SaltString::generate(&mut OsRng))
            .expect("hash")
            .to_string();
        assert!(ours.verify(STRONG, Some(&theirs)).await.expect("verify"));
        assert!(
            !ours
                .verify("not it at all, no", Some(&theirs))
                .await
                .expect("verify")
        );
        let mine = ours
            .hash(&NewPassword::parse(STRONG, &email(), 12).expect("pw"))
            .await
            .expect("hash");
        let parsed = PasswordHash::new(&mine).expect("phc");
        assert!(
            Argon2::default()
                .verify_password(STRONG.as_bytes(), &parsed)
                .is_ok()
        );
    }

    #[test]
    fn long_passwords_are_judged_as_if_estimated_whole() {
        let e = email();
        // A strong prefix: strong, without estimating 128 characters.
        let long_strong: String = "Trombone lantern 927, quietly orbiting! "
            .repeat(4)
            .chars()
            .take(128)
            .collect();
        assert!(!is_weak(&long_strong, &e));
        assert!(
            (zxcvbn::zxcvbn(&long_strong, &[]).score() as u8) >= 3,
            "the whole agrees"
        );
        // A weak prefix: the whole password decides, in both directions.
        let weak_then_strong = format!("{}{}", "a".repeat(40), "k3#Vq9!zR7@pL2$wX8&mN4^bT6*hJ1");
        assert_eq!(
            is_weak(&weak_then_strong, &e),
            (zxcvbn::zxcvbn(&weak_then_strong, &[]).score() as u8) < 3
        );
        assert!(is_weak(&"password".repeat(16), &e));
    }
}
