//! Mail: what a message says ([`Notice`]), to whom ([`Envelope`]), how it is sealed for the
//! outbox and how it goes out over SMTP ([`Mailer`]). The outbox's SQL lives in the store; this
//! module never touches the database.
//!
//! A message is stored as the sealed JSON of its [`Envelope`] (recipient, notice, link token)
//! and rendered to text only at delivery, so a template change reaches queued mail too.
//!
//! The SMTP transport is lettre's pooled async client over native-tls. lettre bounds only the
//! TCP connect by its timeout, not the greeting or any later reply, so every send also runs
//! under `tokio::time::timeout`: a server that accepts and then stays silent cannot hold a
//! caller past its deadline.

pub mod outbox;

use crate::{
    config::{Config, ConfigError},
    email,
    keys::{Purpose, Sealer},
};
use lettre::{
    Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::AsyncSmtpTransportBuilder,
};
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;
use url::Url;
use uuid::Uuid;

/// What a message tells its recipient. Stored (sealed) in the outbox as JSON tagged by `kind`;
/// a variant's name and fields never change once rows with it may exist.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// "Confirm your address": a link to `{APP_URL}/verify-email#token=…`.
    VerifyEmail {
        /// The link token, as the link carries it.
        token: String,
    },
    /// "Reset your password": a link to `{APP_URL}/reset-password#token=…`.
    PasswordReset {
        /// The link token, as the link carries it.
        token: String,
    },
    /// "Your password was changed": no token, a link to start a reset if it was not them.
    PasswordChanged,
    /// "Two-step login is on": no token, a link to start a reset if it was not them.
    MfaEnabled,
    /// "Two-step login is off": no token, a link to start a reset if it was not them.
    MfaDisabled,
}

impl Notice {
    /// The stable name of the notice (the JSON tag; for logs and the audit).
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::VerifyEmail { .. } => "verify_email",
            Notice::PasswordReset { .. } => "password_reset",
            Notice::PasswordChanged => "password_changed",
            Notice::MfaEnabled => "mfa_enabled",
            Notice::MfaDisabled => "mfa_disabled",
        }
    }
}

impl fmt::Debug for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::VerifyEmail { .. } => f.write_str("VerifyEmail { token: [redacted] }"),
            Notice::PasswordReset { .. } => f.write_str("PasswordReset { token: [redacted] }"),
            Notice::PasswordChanged => f.write_str("PasswordChanged"),
            Notice::MfaEnabled => f.write_str("MfaEnabled"),
            Notice::MfaDisabled => f.write_str("MfaDisabled"),
        }
    }
}

/// One message: its recipient and what it says. This is what the outbox seals.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The recipient address (the account's normalized email).
    pub to: String,
    /// What the message says.
    pub notice: Notice,
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("to", &email::mask(&self.to))
            .field("notice", &self.notice)
            .finish()
    }
}

/// Why a message was not delivered (or not opened). The text is a short fixed reason: never
/// the SMTP URL, a credential, an address or a token, and never the server's reply text, which
/// often echoes the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MailError {
    /// The recipient is not an address the message builder takes.
    #[error("the recipient is not a valid address")]
    Recipient,
    /// The message could not be assembled.
    #[error("the message could not be built")]
    Message,
    /// The server did not finish before the deadline (connecting, or any reply after).
    #[error("the mail server did not finish in time")]
    Timeout,
    /// The server refused with a 5xx reply (see [`MailError::is_retryable`]).
    #[error("the mail server refused the message (SMTP {0})")]
    Rejected(String),
    /// The server refused with a 4xx reply: it may take the message later.
    #[error("the mail server deferred the message (SMTP {0})")]
    Deferred(String),
    /// No SMTP conversation: the server could not be reached, TLS failed, or a reply did not
    /// parse. The text says which, in a few fixed words.
    #[error("the mail server could not be used: {0}")]
    Connection(&'static str),
    /// A sealed outbox body that does not open under this key and row id, or holds no envelope.
    #[error("the sealed message does not open")]
    Sealed,
}

impl MailError {
    /// Whether the same message may go through on a later try. Not when the message itself is
    /// at fault (a recipient the builder refuses, a body that does not open) or the server
    /// refused the mailbox (501 an address it cannot take, 550 unavailable, 551 not local, 553
    /// not allowed). Every other
    /// refusal is retried, 5xx included: 530/535 (authentication) or 554 usually mean wrong
    /// settings (credentials, an unverified SES sender), which hit every message alike and are
    /// fixed by an operator, so giving up on the queue at once would lose mail.
    pub fn is_retryable(&self) -> bool {
        match self {
            MailError::Recipient | MailError::Message | MailError::Sealed => false,
            MailError::Rejected(code) => !matches!(code.as_str(), "501" | "550" | "551" | "553"),
            MailError::Timeout | MailError::Deferred(_) | MailError::Connection(_) => true,
        }
    }

    fn from_smtp(error: &lettre::transport::smtp::Error) -> Self {
        // Only the reply code is kept: lettre's Display carries the server's text.
        if let Some(code) = error.status() {
            let code = code.to_string();
            if error.is_permanent() {
                MailError::Rejected(code)
            } else {
                MailError::Deferred(code)
            }
        } else if error.is_timeout() {
            MailError::Timeout
        } else if error.is_tls() {
            MailError::Connection("TLS failed")
        } else if error.is_response() {
            MailError::Connection("a reply did not parse")
        } else if error.is_client() {
            MailError::Connection("the server lacks what the message needs")
        } else {
            MailError::Connection("connecting or talking to the server failed")
        }
    }
}

/// A message rendered for its notice: what the recipient reads.
pub struct Rendered {
    /// The `Subject` header.
    pub subject: String,
    /// The `text/plain` part.
    pub text: String,
    /// The `text/html` part.
    pub html: String,
}

/// The SMTP transport, the outbox seal and what the templates need. Cheap to clone (shared).
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    /// `SMTP_URL` parsed, with `SMTP_TIMEOUT_MS` as the connect timeout, once the thread
    /// [`Mailer::from_config`] starts has made it. Kept to build the transport on first use
    /// (lettre's pool spawns a task, so it needs the runtime) and to build a fresh one after a
    /// send was cut off by its deadline.
    builder: watch::Receiver<Option<Result<AsyncSmtpTransportBuilder, ()>>>,
    transport: Mutex<Transport>,
    from: Mailbox,
    sealer: Sealer,
    product_name: String,
    app_url: Url,
    verify_ttl: Duration,
    reset_ttl: Duration,
    timeout: Duration,
}

#[derive(Default)]
struct Transport {
    /// Bumped whenever the pool is thrown away, so a late discard of an old pool does not
    /// throw away its successor.
    generation: u64,
    pool: Option<AsyncSmtpTransport<Tokio1Executor>>,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("Mailer")
            .field("smtp_url", &"[redacted]")
            .field("from", &inner.from.to_string())
            .field("product_name", &inner.product_name)
            .field("app_url", &inner.app_url.as_str())
            .field("timeout", &inner.timeout)
            .field("sealer", &inner.sealer)
            .finish_non_exhaustive()
    }
}

fn config_error(variable: &'static str, problem: &str) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.to_owned(),
    }
}

/// A send in flight: unless it finished, dropping it discards the pool it used, so a
/// connection left mid-conversation is never handed out again.
struct Unfinished<'a> {
    mailer: &'a Mailer,
    generation: u64,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.mailer.discard(self.generation);
        }
    }
}

impl Mailer {
    /// The mailer of `config`: `None` when `SMTP_URL` is unset (mail off). Needs
    /// `DATA_ENCRYPTION_KEY`, which seals the outbox. No network I/O happens here.
    pub fn from_config(config: &Config) -> Result<Option<Self>, ConfigError> {
        let Some(url) = config.mail.smtp_url.as_ref() else {
            return Ok(None);
        };
        let root = config.data_encryption_key.as_ref().ok_or_else(|| {
            config_error(
                "DATA_ENCRYPTION_KEY",
                "is required when SMTP_URL is set (it seals the outbox)",
            )
        })?;
        validate_smtp_url(url.expose()).map_err(|problem| config_error("SMTP_URL", problem))?;
        // With TLS (smtps://, STARTTLS), lettre makes its native-tls connector with the builder,
        // and native-tls parses the whole system bundle, twice: tens of milliseconds that init
        // need not wait for. The first send waits for it, within its own deadline.
        let (ready, builder) = watch::channel(None);
        let raw = url.expose().to_owned();
        let timeout = config.mail.smtp_timeout;
        std::thread::spawn(move || {
            let built = AsyncSmtpTransport::<Tokio1Executor>::from_url(&raw)
                .map(|builder| builder.timeout(Some(timeout)))
                .map_err(|_| tracing::error!("the SMTP client could not be set up from SMTP_URL"));
            drop(raw);
            let _ = ready.send(Some(built));
        });
        let from: Mailbox = config
            .mail
            .from
            .parse()
            .map_err(|_| config_error("MAIL_FROM", FROM_PROBLEM))?;
        let sealer = Sealer::new(root, Purpose::OutboxSeal)
            .map_err(|_| config_error("DATA_ENCRYPTION_KEY", "does not make an AES-256 key"))?;
        Ok(Some(Self {
            inner: Arc::new(Inner {
                builder,
                transport: Mutex::new(Transport::default()),
                from,
                sealer,
                product_name: config.mail.product_name.clone(),
                app_url: config.mail.app_url.clone(),
                verify_ttl: config.mail.verify_ttl,
                reset_ttl: config.mail.reset_ttl,
                timeout: config.mail.smtp_timeout,
            }),
        }))
    }

    /// `SMTP_TIMEOUT_MS`: the longest one delivery attempt may take.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// `envelope` sealed for the outbox row `id` (the id is the AAD: the body opens in no
    /// other row).
    pub fn seal(&self, id: Uuid, envelope: &Envelope) -> Vec<u8> {
        // Serializing a struct of strings into a Vec cannot fail; an empty body would only
        // fail to open later, never leak.
        let json = serde_json::to_vec(envelope).unwrap_or_default();
        self.inner.sealer.seal(id.as_bytes(), &json)
    }

    /// The envelope sealed for row `id`, or [`MailError::Sealed`].
    pub fn open(&self, id: Uuid, sealed: &[u8]) -> Result<Envelope, MailError> {
        let json = self
            .inner
            .sealer
            .open(id.as_bytes(), sealed)
            .ok_or(MailError::Sealed)?;
        serde_json::from_slice(&json).map_err(|_| MailError::Sealed)
    }

    /// The subject and both parts of `notice`, as the recipient will read them.
    pub fn render(&self, notice: &Notice) -> Rendered {
        let inner = &self.inner;
        let product = inner.product_name.as_str();
        let base = inner.app_url.as_str().trim_end_matches('/');
        let p = escape_html(product);
        match notice {
            Notice::VerifyEmail { token } => {
                let link = format!("{base}/verify-email#token={}", fragment(token));
                let lifetime = lifetime(inner.verify_ttl);
                let l = escape_html(&link);
                Rendered {
                    subject: format!("{product}: confirm your email address"),
                    text: format!(
                        "Hello from {product},\r\n\r\n\
                         please confirm that this is your email address by opening this link:\r\n\r\n\
                         {link}\r\n\r\n\
                         The link works for {lifetime}. If you did not sign up for {product}, \
                         ignore this message.\r\n"
                    ),
                    html: html_page(
                        &format!("{p}: confirm your email address"),
                        &format!(
                            "<p>Hello from {p},</p>\
                             <p>please confirm that this is your email address:</p>\
                             <p><a href=\"{l}\">Confirm my email address</a></p>\
                             <p>Or open this link: {l}</p>\
                             <p>The link works for {lifetime}. If you did not sign up for {p}, \
                             ignore this message.</p>"
                        ),
                    ),
                }
            }
            Notice::PasswordReset { token } => {
                let link = format!("{base}/reset-password#token={}", fragment(token));
                let lifetime = lifetime(inner.reset_ttl);
                let l = escape_html(&link);
                Rendered {
                    subject: format!("{product}: reset your password"),
                    text: format!(
                        "Hello from {product},\r\n\r\n\
                         someone asked to reset the password of your account. To choose a new \
                         password, open this link:\r\n\r\n\
                         {link}\r\n\r\n\
                         The link works for {lifetime}. If you did not ask for this, ignore this \
                         message: your password stays as it is.\r\n"
                    ),
                    html: html_page(
                        &format!("{p}: reset your password"),
                        &format!(
                            "<p>Hello from {p},</p>\
                             <p>someone asked to reset the password of your account.</p>\
                             <p><a href=\"{l}\">Choose a new password</a></p>\
                             <p>Or open this link: {l}</p>\
                             <p>The link works for {lifetime}. If you did not ask for this, \
                             ignore this message: your password stays as it is.</p>"
                        ),
                    ),
                }
            }
            Notice::PasswordChanged => security_notice(
                product,
                &p,
                base,
                "your password was changed",
                "the password of your account was just changed.",
            ),
            Notice::MfaEnabled => security_notice(
                product,
                &p,
                base,
                "two-step login is on",
                "two-step login was just turned on for your account: signing in now needs a \
                 code from your authenticator app (or a recovery code) after the password, and \
                 every other session of the account was ended.",
            ),
            Notice::MfaDisabled => security_notice(
                product,
                &p,
                base,
                "two-step login is off",
                "two-step login was just turned off for your account: signing in needs only \
                 the password now, and every other session of the account was ended.",
            ),
        }
    }

    fn message(&self, envelope: &Envelope) -> Result<Message, MailError> {
        let to: Address = envelope.to.parse().map_err(|_| MailError::Recipient)?;
        let rendered = self.render(&envelope.notice);
        // lettre without its `hostname` feature would name `localhost`; the sender's domain
        // makes a Message-ID that is unique and ours.
        let message_id = format!(
            "<{}@{}>",
            Uuid::new_v4().simple(),
            self.inner.from.email.domain()
        );
        Message::builder()
            .from(self.inner.from.clone())
            .to(Mailbox::new(None, to))
            .subject(rendered.subject)
            .message_id(Some(message_id))
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|_| MailError::Message)
    }

    /// Renders `envelope` and delivers it over SMTP, within `deadline` whatever the server
    /// does (connecting, TLS, every reply).
    ///
    /// A send that does not finish — cut off by `deadline`, or dropped by its caller's own
    /// deadline — discards the pool it used (see [`Mailer::discard`]).
    pub async fn send(&self, envelope: &Envelope, deadline: Duration) -> Result<(), MailError> {
        let message = self.message(envelope)?;
        let sending = async {
            let (generation, transport) = self.transport().await?;
            let mut unfinished = Unfinished {
                mailer: self,
                generation,
                armed: true,
            };
            let sent = transport.send(message).await;
            unfinished.armed = false;
            sent.map(drop).map_err(|error| MailError::from_smtp(&error))
        };
        tokio::time::timeout(deadline, sending)
            .await
            .unwrap_or(Err(MailError::Timeout))
    }

    /// The current pool, built on first use.
    async fn transport(&self) -> Result<(u64, AsyncSmtpTransport<Tokio1Executor>), MailError> {
        let builder = {
            let mut ready = self.inner.builder.clone();
            let built = ready.wait_for(Option::is_some).await;
            match built.as_deref() {
                Ok(Some(Ok(builder))) => builder.clone(),
                _ => return Err(MailError::Connection("the SMTP client could not be set up")),
            }
        };
        let mut current = self
            .inner
            .transport
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = current.generation;
        let pool = current.pool.get_or_insert_with(|| builder.build()).clone();
        Ok((generation, pool))
    }

    /// Throws away the pool of `generation` after a send it served was cut off. The cut-off
    /// connection is mid-conversation but not marked broken, so lettre would park it and hand
    /// it out again with a reply still owed (its NOOP check would read that stale reply as
    /// fine): the whole pool goes, and the next send builds a fresh one. Its connections are
    /// closed in the background, bounded, since a silent server never answers the QUIT.
    fn discard(&self, generation: u64) {
        let old = {
            let mut current = self
                .inner
                .transport
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.generation != generation {
                return;
            }
            current.generation += 1;
            current.pool.take()
        };
        if let Some(old) = old {
            let bound = self.inner.timeout;
            tokio::spawn(async move {
                let _ = tokio::time::timeout(bound, old.shutdown()).await;
            });
        }
    }
}

const FROM_PROBLEM: &str =
    "must be a mailbox such as `no-reply@example.com` or `Auth <no-reply@example.com>`";
const URL_FORMS: &str = "must be smtp://host:port, smtp://user:password@host:587?tls=required \
     (STARTTLS) or smtps://user:password@host:465";

/// Whether `raw` is an `SMTP_URL` this service uses: `smtp://host[:port]` (no TLS),
/// `smtp://…?tls=required` (STARTTLS, refusing a server without it) or `smtps://…` (TLS from
/// the start), each with optional `user:password@` (percent-encoded). Credentials go only over
/// TLS, except to a loopback host. The error never holds the value.
pub fn validate_smtp_url(raw: &str) -> Result<(), &'static str> {
    let url = Url::parse(raw).map_err(|_| URL_FORMS)?;
    let wrapped = match url.scheme() {
        "smtp" => false,
        "smtps" => true,
        _ => return Err(URL_FORMS),
    };
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or(URL_FORMS)?;
    let mut starttls = false;
    for (key, value) in url.query_pairs() {
        match (key.as_ref(), value.as_ref()) {
            ("tls", "required") if !wrapped && !starttls => starttls = true,
            // lettre would also take `tls=opportunistic`, which a man in the middle turns into
            // plain text, credentials included.
            ("tls", _) => {
                return Err(
                    "takes only `?tls=required` (STARTTLS), and only on smtp://; smtps:// is TLS from the start",
                );
            }
            _ => return Err("takes no query parameter but `tls=required`"),
        }
    }
    if url.fragment().is_some() {
        return Err(URL_FORMS);
    }
    if url.username().is_empty() != url.password().is_none() {
        return Err("needs both a user name and a password, or neither");
    }
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.password().is_some() && !wrapped && !starttls && !loopback {
        return Err("sends credentials only over TLS: use smtps:// or `?tls=required`");
    }
    // lettre checks the rest (port, the percent-encoded credentials) on the URL without its
    // TLS, so that no TLS connector is made (and the system bundle parsed) to check a syntax.
    let mut plain = url.clone();
    plain.set_query(None);
    plain.set_scheme("smtp").map_err(|()| URL_FORMS)?;
    AsyncSmtpTransport::<Tokio1Executor>::from_url(plain.as_str())
        .map(drop)
        .map_err(|_| "is not a URL the SMTP client accepts (is the password percent-encoded?)")
}

/// Whether `raw` is a mailbox for `MAIL_FROM`: `addr` or `Name <addr>`.
pub fn validate_from(raw: &str) -> Result<(), &'static str> {
    raw.parse::<Mailbox>().map(drop).map_err(|_| FROM_PROBLEM)
}

/// `token` as a URL fragment value (link tokens are base64url, which this leaves as it is).
fn fragment(token: &str) -> String {
    url::form_urlencoded::byte_serialize(token.as_bytes()).collect()
}

/// A lifetime in the largest whole unit: "24 hours", "30 minutes", "7 days", "5 seconds".
fn lifetime(ttl: Duration) -> String {
    let secs = ttl.as_secs();
    let (n, unit) = if secs >= 2 * 86_400 && secs.is_multiple_of(86_400) {
        (secs / 86_400, "day")
    } else if secs >= 3_600 && secs.is_multiple_of(3_600) {
        (secs / 3_600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

fn escape_html(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A notice that something about the account changed (`what`, a sentence), with a link to
/// reset the password if it was not the account's owner. `p` is `product` escaped for HTML.
fn security_notice(product: &str, p: &str, base: &str, subject: &str, what: &str) -> Rendered {
    let link = format!("{base}/reset-password");
    let l = escape_html(&link);
    let w = escape_html(what);
    Rendered {
        subject: format!("{product}: {subject}"),
        text: format!(
            "Hello from {product},\r\n\r\n\
             {what}\r\n\r\n\
             If it was not you, reset your password now:\r\n\r\n\
             {link}\r\n"
        ),
        html: html_page(
            &format!("{p}: {subject}"),
            &format!(
                "<p>Hello from {p},</p>\
                 <p>{w}</p>\
                 <p>If it was not you, <a href=\"{l}\">reset your password now</a>: \
                 {l}</p>"
            ),
        ),
    }
}

/// `body` (already escaped) in a minimal HTML document titled `title` (already escaped).
fn html_page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\r\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body>{body}</body></html>\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Secret, keys::KEY_BYTES};

    const PASSWORD: &str = "s3cr3t-PASSWORD";
    const TOKEN: &str = "tok_AbC-123_xyz";

    fn config(url: Option<&str>, key: bool) -> Config {
        let mut pairs = vec![
            ("DATABASE_URL", "postgres://u:p@localhost/db".to_owned()),
            ("JWT_SECRET", "x".repeat(48)),
            (
                "DATA_ENCRYPTION_KEY",
                "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=".to_owned(),
            ),
            ("APP_URL", "https://app.example.com/base/".to_owned()),
            ("MAIL_PRODUCT_NAME", "Acme <Tom & Jerry's>".to_owned()),
            ("MAIL_FROM", "Acme <no-reply@acme.example>".to_owned()),
            ("EMAIL_VERIFY_TTL_SECONDS", "86400".to_owned()),
            ("PASSWORD_RESET_TTL_SECONDS", "1800".to_owned()),
        ];
        if let Some(url) = url {
            pairs.push(("SMTP_URL", url.to_owned()));
        }
        let mut c = Config::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("valid settings");
        if !key {
            c.data_encryption_key = None;
        }
        c
    }

    fn mailer() -> Mailer {
        let url = format!("smtps://user:{PASSWORD}@smtp.example.com:465");
        Mailer::from_config(&config(Some(&url), true))
            .expect("valid")
            .expect("mail on")
    }

    #[test]
    fn the_url_forms_of_the_design_are_accepted() {
        for url in [
            "smtp://127.0.0.1:1025",
            "smtp://localhost",
            "smtp://mail.example.com:25",
            "smtp://user:pass@email-smtp.eu-west-1.amazonaws.com:587?tls=required",
            "smtps://user:pass@email-smtp.eu-west-1.amazonaws.com:465",
            "smtps://smtp.example.com",
            "smtp://user:pass@127.0.0.1:1025",
            "smtp://user:pass@[::1]:1025",
            "smtps://AKIAEXAMPLE:BJ%2Fs%2Bx%3D@smtp.example.com",
        ] {
            assert_eq!(validate_smtp_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn other_urls_are_refused_without_echoing_them() {
        for url in [
            "",
            "127.0.0.1:1025",
            "http://mail.example.com",
            "smtp://",
            "smtp:///path",
            "smtp://mail.example.com?tls=opportunistic",
            "smtp://mail.example.com?tls=require",
            "smtps://mail.example.com?tls=required",
            "smtp://mail.example.com?tls=required&tls=required",
            "smtp://mail.example.com?foo=bar",
            "smtp://mail.example.com#frag",
            "smtp://user@mail.example.com?tls=required",
            "smtp://:pass@mail.example.com?tls=required",
            "smtp://user:hunter2secret@mail.example.com:587",
            "smtps://user:%FF%FE@mail.example.com",
        ] {
            let problem = validate_smtp_url(url).expect_err(url);
            assert!(!problem.contains("example.com") && !problem.contains("hunter2"));
        }
    }

    #[test]
    fn from_takes_an_address_or_a_named_mailbox() {
        assert_eq!(validate_from("no-reply@localhost"), Ok(()));
        assert_eq!(validate_from("Acme <no-reply@acme.example>"), Ok(()));
        assert_eq!(
            validate_from("\"Acme, Inc.\" <no-reply@acme.example>"),
            Ok(())
        );
        for bad in [
            "",
            "no-reply",
            "Acme <>",
            "a@b@c",
            "Acme no-reply@acme.example>",
        ] {
            assert!(validate_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mail_off_without_a_url_and_a_url_needs_the_data_key() {
        assert!(
            Mailer::from_config(&config(None, true))
                .expect("valid")
                .is_none()
        );
        let error =
            Mailer::from_config(&config(Some("smtp://127.0.0.1:1025"), false)).expect_err("no key");
        assert_eq!(error.variable, "DATA_ENCRYPTION_KEY");
    }

    #[test]
    fn debug_output_shows_no_url_password_address_or_token() {
        let shown = format!("{:?}", mailer());
        assert!(shown.contains("[redacted]"), "{shown}");
        for secret in [PASSWORD, "smtp.example.com", "smtps", "user"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        for notice in [
            Notice::VerifyEmail {
                token: TOKEN.into(),
            },
            Notice::PasswordReset {
                token: TOKEN.into(),
            },
        ] {
            let envelope = Envelope {
                to: "secretname@example.com".into(),
                notice,
            };
            let shown = format!("{envelope:?}");
            assert!(shown.contains("s***@example.com"), "{shown}");
            assert!(
                !shown.contains("secretname") && !shown.contains(TOKEN),
                "{shown}"
            );
        }
    }

    #[test]
    fn errors_never_carry_the_server_text() {
        // The only dynamic part is the reply code, digits by construction.
        for e in [
            MailError::Rejected("550".into()),
            MailError::Deferred("451".into()),
            MailError::Timeout,
            MailError::Connection("TLS failed"),
        ] {
            assert!(!e.to_string().contains('@'));
        }
        assert!(!MailError::Rejected("550".into()).is_retryable());
        assert!(!MailError::Rejected("553".into()).is_retryable());
        assert!(!MailError::Rejected("501".into()).is_retryable());
        assert!(!MailError::Sealed.is_retryable() && !MailError::Recipient.is_retryable());
        assert!(
            MailError::Rejected("535".into()).is_retryable(),
            "bad credentials get fixed"
        );
        assert!(MailError::Rejected("554".into()).is_retryable());
        assert!(MailError::Deferred("451".into()).is_retryable());
        assert!(MailError::Timeout.is_retryable());
        assert!(MailError::Connection("TLS failed").is_retryable());
    }

    #[test]
    fn the_notice_is_tagged_json_and_names_its_kind() {
        let n = Notice::PasswordReset {
            token: TOKEN.into(),
        };
        assert_eq!(
            serde_json::to_value(&n).expect("json"),
            serde_json::json!({"kind": "password_reset", "token": TOKEN})
        );
        assert_eq!(
            serde_json::to_value(Notice::PasswordChanged).expect("json"),
            serde_json::json!({"kind": "password_changed"})
        );
        assert_eq!(n.kind(), "password_reset");
        assert_eq!(
            Notice::VerifyEmail { token: "t".into() }.kind(),
            "verify_email"
        );
        assert_eq!(Notice::PasswordChanged.kind(), "password_changed");
    }

    #[test]
    fn links_carry_the_token_in_the_fragment_and_say_how_long_they_work() {
        let m = mailer();
        let verify = m.render(&Notice::VerifyEmail {
            token: TOKEN.into(),
        });
        let link = format!("https://app.example.com/base/verify-email#token={TOKEN}");
        assert!(verify.text.contains(&link), "{}", verify.text);
        assert!(
            verify.html.contains(&format!("href=\"{link}\"")),
            "{}",
            verify.html
        );
        assert!(verify.text.contains("24 hours") && verify.html.contains("24 hours"));

        let reset = m.render(&Notice::PasswordReset {
            token: TOKEN.into(),
        });
        let link = format!("https://app.example.com/base/reset-password#token={TOKEN}");
        assert!(reset.text.contains(&link), "{}", reset.text);
        assert!(reset.html.contains(&format!("href=\"{link}\"")));
        assert!(reset.text.contains("30 minutes") && reset.html.contains("30 minutes"));
        assert!(!reset.text.contains('?'), "no query string: {}", reset.text);

        let changed = m.render(&Notice::PasswordChanged);
        assert!(
            changed
                .text
                .contains("https://app.example.com/base/reset-password\r\n")
        );
        assert!(changed.text.contains("If it was not you"));
        assert!(!changed.text.contains("token"));

        for (notice, said) in [
            (Notice::MfaEnabled, "two-step login was just turned on"),
            (Notice::MfaDisabled, "two-step login was just turned off"),
        ] {
            let r = m.render(&notice);
            assert!(r.text.contains(said) && r.html.contains(said), "{}", r.text);
            assert!(
                r.text
                    .contains("https://app.example.com/base/reset-password\r\n")
            );
            assert!(!r.text.contains("token"));
        }
    }

    #[test]
    fn the_product_name_is_in_subject_and_greeting_and_escaped_in_html() {
        let m = mailer();
        for notice in [
            Notice::VerifyEmail {
                token: TOKEN.into(),
            },
            Notice::PasswordReset {
                token: TOKEN.into(),
            },
            Notice::PasswordChanged,
            Notice::MfaEnabled,
            Notice::MfaDisabled,
        ] {
            let r = m.render(&notice);
            let raw = "Acme <Tom & Jerry's>";
            assert!(r.subject.starts_with(raw), "{}", r.subject);
            assert!(r.text.starts_with(&format!("Hello from {raw},")));
            assert!(
                r.html
                    .contains("Hello from Acme &lt;Tom &amp; Jerry&#39;s&gt;,")
            );
            assert!(
                !r.html.contains(raw) && !r.html.contains("<Tom"),
                "{}",
                r.html
            );
        }
        // A hostile token cannot break out of the attribute or add markup.
        let r = m.render(&Notice::VerifyEmail {
            token: "\"><script>x</script>".into(),
        });
        assert!(
            !r.html.contains("<script>") && !r.html.contains("\"><script"),
            "{}",
            r.html
        );
    }

    #[test]
    fn a_message_has_a_plain_and_an_html_part() {
        let m = mailer();
        let message = m
            .message(&Envelope {
                to: "ann@example.com".into(),
                notice: Notice::VerifyEmail {
                    token: TOKEN.into(),
                },
            })
            .expect("builds");
        let raw = String::from_utf8(message.formatted()).expect("ascii");
        assert!(raw.contains("Content-Type: multipart/alternative"), "{raw}");
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
        assert!(
            raw.contains("Content-Type: text/html; charset=utf-8"),
            "{raw}"
        );
        assert!(
            raw.contains("Message-ID: <") && raw.contains("@acme.example>"),
            "{raw}"
        );
        assert!(raw.contains("To: ann@example.com"), "{raw}");
        assert_eq!(
            m.message(&Envelope {
                to: "not an address".into(),
                notice: Notice::PasswordChanged,
            })
            .err(),
            Some(MailError::Recipient)
        );
    }

    #[test]
    fn a_sealed_envelope_opens_only_in_its_row() {
        let m = mailer();
        let envelope = Envelope {
            to: "ann@example.com".into(),
            notice: Notice::PasswordReset {
                token: TOKEN.into(),
            },
        };
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = m.seal(id, &envelope);
        assert!(!sealed.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()));
        assert_eq!(m.open(id, &sealed), Ok(envelope));
        assert_eq!(m.open(other, &sealed), Err(MailError::Sealed));
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert_eq!(m.open(id, &tampered), Err(MailError::Sealed));
        // Under another root key the same row does not open either.
        let other_key = Sealer::new(&Secret::new([9; KEY_BYTES]), Purpose::OutboxSeal)
            .expect("key")
            .seal(id.as_bytes(), b"{}");
        assert_eq!(m.open(id, &other_key), Err(MailError::Sealed));
    }

    #[test]
    fn lifetimes_read_naturally() {
        let s = Duration::from_secs;
        assert_eq!(lifetime(s(86_400)), "24 hours");
        assert_eq!(lifetime(s(604_800)), "7 days");
        assert_eq!(lifetime(s(1_800)), "30 minutes");
        assert_eq!(lifetime(s(3_600)), "1 hour");
        assert_eq!(lifetime(s(60)), "1 minute");
        assert_eq!(lifetime(s(5)), "5 seconds");
        assert_eq!(lifetime(s(90)), "90 seconds");
    }
}
