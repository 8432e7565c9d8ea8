//! The `Email` newtype: an `Email` that exists is normalized and valid (docs/api.md "Email"), so
//! nothing downstream re-checks or re-normalizes it.

use crate::error::AuthError;
use std::fmt;

/// Most characters in a stored email (RFC 5321 path limit less the brackets).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Most characters in the local part (RFC 5321).
pub const MAX_LOCAL_CHARS: usize = 64;
const MAX_LABEL_CHARS: usize = 63;

/// A normalized email address: trimmed, local part lower-cased ASCII, domain in IDNA form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Normalizes and validates raw input.
    pub fn parse(raw: &str) -> Result<Self, AuthError> {
        let trimmed = raw.trim(); // `str::trim` strips Unicode White_Space.
        if trimmed.is_empty() {
            return Err(AuthError::InvalidEmail("it is empty"));
        }
        if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthError::InvalidEmail(
                "it contains whitespace or control characters",
            ));
        }
        let (local, domain) = match trimmed.split_once('@') {
            Some((l, d)) if !d.contains('@') => (l, d),
            _ => return Err(AuthError::InvalidEmail("it must contain exactly one @")),
        };
        let local = parse_local(local)?;
        let domain = parse_domain(domain)?;
        let email = format!("{local}@{domain}");
        if email.len() > MAX_EMAIL_CHARS {
            return Err(AuthError::InvalidEmail("it is longer than 254 characters"));
        }
        Ok(Self(email))
    }

    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`.
    pub fn local_part(&self) -> &str {
        self.0.split_once('@').map_or(self.0.as_str(), |(l, _)| l)
    }

    /// A form safe for logs: first character of the local part, then `***@domain`. Bounded by
    /// [`MAX_EMAIL_CHARS`], since the domain is the validated, normalized one.
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.split_once('@').unwrap_or(("", &self.0));
        let first: String = local.chars().take(1).collect();
        format!("{first}***@{domain}")
    }
}

/// Masks raw client input for a log line: the masked normalized email when the input is one,
/// `***` otherwise. Raw input is never echoed, because what follows an `@` may be anything a
/// client typed there (a password pasted into the wrong field, 16 KiB of junk).
pub fn mask(raw: &str) -> String {
    Email::parse(raw).map_or_else(|_| "***".to_owned(), |email| email.masked())
}

fn parse_local(local: &str) -> Result<String, AuthError> {
    if local.is_empty() {
        return Err(AuthError::InvalidEmail("the part before @ is empty"));
    }
    if local.len() > MAX_LOCAL_CHARS {
        return Err(AuthError::InvalidEmail(
            "the part before @ is longer than 64 characters",
        ));
    }
    if !local.chars().all(|c| c == '.' || is_atext(c)) {
        return Err(AuthError::InvalidEmail(
            "the part before @ may hold only ASCII letters, digits, dots and !#$%&'*+/=?^_`{|}~-",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AuthError::InvalidEmail(
            "dots in the part before @ may not come first, last or twice in a row",
        ));
    }
    Ok(local.to_ascii_lowercase())
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c)
}

fn parse_domain(domain: &str) -> Result<String, AuthError> {
    // UTS #46, non-transitional (idna 1.x), with the STD3 ASCII rules.
    let ascii = idna::domain_to_ascii_cow(domain.as_bytes(), idna::AsciiDenyList::STD3)
        .map_err(|_| AuthError::InvalidEmail("the domain is not a valid domain name"))?;
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.len() < 2 {
        return Err(AuthError::InvalidEmail(
            "the domain needs at least two labels, like example.com",
        ));
    }
    for label in &labels {
        if label.is_empty() || label.len() > MAX_LABEL_CHARS {
            return Err(AuthError::InvalidEmail(
                "each domain label must have 1 to 63 characters",
            ));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(AuthError::InvalidEmail(
                "domain labels may hold only letters, digits and hyphens",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AuthError::InvalidEmail(
                "domain labels may not start or end with a hyphen",
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(AuthError::InvalidEmail(
            "the last domain label may not be all digits",
        ));
    }
    Ok(ascii.to_ascii_lowercase())
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.masked())
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> String {
        match Email::parse(raw) {
            Ok(e) => e.as_str().to_owned(),
            Err(e) => panic!("{raw:?} should be valid: {e:?}"),
        }
    }

    fn bad(raw: &str) {
        assert!(
            matches!(Email::parse(raw), Err(AuthError::InvalidEmail(_))),
            "{raw:?} should be invalid"
        );
    }

    #[test]
    fn surrounding_unicode_whitespace_is_trimmed_and_case_folded() {
        assert_eq!(ok("  Ann@Example.COM\t"), "ann@example.com");
        assert_eq!(
            ok("\u{a0}\u{2003}bob@example.org\u{3000}"),
            "bob@example.org"
        );
    }

    #[test]
    fn all_atext_characters_are_accepted_in_the_local_part() {
        assert_eq!(
            ok("a.b!#$%&'*+/=?^_`{|}~-c@example.com"),
            "a.b!#$%&'*+/=?^_`{|}~-c@example.com"
        );
    }

    #[test]
    fn dots_quotes_and_unicode_local_parts_are_refused() {
        for raw in [
            ".a@example.com",
            "a.@example.com",
            "a..b@example.com",
            "\"a\"@example.com",
            "jos\u{e9}@example.com",
            "a b@example.com",
            "a@b@example.com",
            "@example.com",
            "a@",
            "noat",
            "a\u{0}@example.com",
            "a@exa mple.com",
            "a(b)@example.com",
        ] {
            bad(raw);
        }
    }

    #[test]
    fn domains_follow_the_label_rules() {
        for raw in [
            "a@localhost",
            "a@example..com",
            "a@-example.com",
            "a@example-.com",
            "a@example.123",
            "a@exa_mple.com",
            "a@.example.com",
            "a@example.com.",
            "a@[127.0.0.1]",
        ] {
            bad(raw);
        }
        assert_eq!(ok("a@1example.c0m"), "a@1example.c0m");
        assert_eq!(ok("a@sub.ex-ample.co.uk"), "a@sub.ex-ample.co.uk");
        let long_label = "x".repeat(64);
        bad(&format!("a@{long_label}.com"));
        assert_eq!(ok(&format!("a@{}.com", "x".repeat(63))).len(), 2 + 63 + 4);
    }

    #[test]
    fn internationalized_domains_are_stored_as_punycode() {
        assert_eq!(ok("a@münchen.de"), "a@xn--mnchen-3ya.de");
        assert_eq!(ok("A@MÜNCHEN.DE"), "a@xn--mnchen-3ya.de");
        assert_eq!(ok("a@xn--mnchen-3ya.de"), "a@xn--mnchen-3ya.de");
        // Non-transitional: ß stays ß (xn--fa-hia), it is not mapped to "ss".
        assert_eq!(ok("a@faß.de"), "a@xn--fa-hia.de");
    }

    #[test]
    fn length_limits_apply_to_the_stored_form() {
        let local64 = "l".repeat(64);
        assert_eq!(ok(&format!("{local64}@example.com")).len(), 64 + 12);
        bad(&format!("{}@example.com", "l".repeat(65)));
        // 64 + 1 + 189 = 254 characters is the most.
        let domain = format!(
            "{}.{}.{}.com",
            "a".repeat(61),
            "b".repeat(61),
            "c".repeat(61)
        );
        assert_eq!(domain.len(), 189);
        assert_eq!(ok(&format!("{local64}@{domain}")).len(), 254);
        let domain = format!(
            "{}.{}.{}.com",
            "a".repeat(62),
            "b".repeat(61),
            "c".repeat(61)
        );
        bad(&format!("{local64}@{domain}"));
    }

    #[test]
    fn masking_hides_the_local_part() {
        let e = Email::parse("secretname@example.com").expect("valid");
        assert_eq!(e.masked(), "s***@example.com");
        assert!(!format!("{e:?}").contains("secretname"));
        assert_eq!(mask("no-at-sign"), "***");
    }

    #[test]
    fn masking_raw_input_shows_only_a_normalized_email() {
        assert_eq!(mask("  Bob@Example.COM "), "b***@example.com");
        assert_eq!(mask("bob@münchen.de"), "b***@xn--mnchen-3ya.de");
        assert_eq!(mask("bob@example.com Hunter2!"), "***");
        assert_eq!(mask(&format!("bob@{}.com", "x".repeat(16 * 1024))), "***");
        assert_eq!(mask("a@b@example.com"), "***");
        assert_eq!(mask(""), "***");
    }
}
