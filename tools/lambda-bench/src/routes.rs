//! One scenario per route of every function: how to set it up (accounts, sessions, link tokens
//! from MailDev, pending mail) and the event to send. The functions come from one place, the
//! root workspace's `functions/*` members ([`functions`]); [`check_coverage`] fails for a
//! function without a scenario, so adding a function means adding its scenario here.

use crate::{
    Result,
    driver::{Answer, FunctionEnv, Instance, spawn_in},
    maildev::MailDev,
    runtime_api::{apigw_event, scheduled_event},
};
use base64::Engine as _;
use serde_json::{Value, json};
use std::{
    collections::HashMap,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

/// The password of every benchmark account (strong enough for zxcvbn).
pub const PASSWORD: &str = "correct horse battery staple 93!";
/// The other one, for reset and change.
pub const OTHER_PASSWORD: &str = "purple walrus juggling lanterns 58#";

/// What a route costs beyond the function's own work, for the report's floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// Its database round trips.
    RoundTrips,
    /// One argon2id hash and its round trips.
    Hash,
    /// One argon2id verify and its round trips.
    Verify,
    /// A verify, then a hash of the new password, and its round trips.
    VerifyAndHash,
    /// Answers at `MAIL_ANSWER_MS` after it began, whatever the work (forgot, resend).
    AnswerTime,
}

/// A route and what it needs.
#[derive(Debug)]
pub struct Route {
    /// `METHOD /path` as the template names it (or the schedule, for `prune` and `mailer`).
    pub name: &'static str,
    /// The function serving it.
    pub function: &'static str,
    /// What its floor is made of.
    pub floor: Floor,
    /// Whether it delivers a mail before it answers (its time includes one SMTP delivery).
    pub mails_inline: bool,
    /// Each request needs its own accounts, sessions or mail set up first (fewer runs).
    pub costly_setup: bool,
    /// A scheduled function (no concurrency-4 run: its schedule runs one at a time).
    pub scheduled: bool,
}

const fn route(name: &'static str, function: &'static str, floor: Floor) -> Route {
    Route {
        name,
        function,
        floor,
        mails_inline: false,
        costly_setup: false,
        scheduled: false,
    }
}

/// Every route of every function.
pub const ROUTES: &[Route] = &[
    Route {
        mails_inline: true,
        ..route("POST /auth/register", "register", Floor::Hash)
    },
    route("POST /auth/login", "login", Floor::Verify),
    route("GET /auth/me", "protected", Floor::RoundTrips),
    Route {
        costly_setup: true,
        ..route("DELETE /auth/me", "protected", Floor::Verify)
    },
    route("POST /auth/refresh", "refresh", Floor::RoundTrips),
    Route {
        costly_setup: true,
        ..route("POST /auth/logout", "logout", Floor::RoundTrips)
    },
    route("GET /.well-known/jwks.json", "keys", Floor::RoundTrips),
    route(
        "GET /.well-known/openid-configuration",
        "keys",
        Floor::RoundTrips,
    ),
    route("GET /openapi.json", "keys", Floor::RoundTrips),
    route("GET /", "pages", Floor::RoundTrips),
    route("GET /assets/{file}", "pages", Floor::RoundTrips),
    Route {
        costly_setup: true,
        ..route("POST /auth/email/verify", "email", Floor::RoundTrips)
    },
    Route {
        costly_setup: true,
        ..route("POST /auth/email/verify/resend", "email", Floor::AnswerTime)
    },
    Route {
        costly_setup: true,
        ..route("POST /auth/password/forgot", "password", Floor::AnswerTime)
    },
    Route {
        costly_setup: true,
        mails_inline: true,
        ..route("POST /auth/password/reset", "password", Floor::Hash)
    },
    Route {
        mails_inline: true,
        ..route(
            "POST /auth/password/change",
            "password",
            Floor::VerifyAndHash,
        )
    },
    route("GET /auth/sessions", "sessions", Floor::RoundTrips),
    Route {
        costly_setup: true,
        ..route("DELETE /auth/sessions/{id}", "sessions", Floor::RoundTrips)
    },
    route("POST /auth/mfa/totp", "mfa", Floor::Verify),
    Route {
        costly_setup: true,
        mails_inline: true,
        ..route("POST /auth/mfa/totp/confirm", "mfa", Floor::RoundTrips)
    },
    Route {
        costly_setup: true,
        mails_inline: true,
        ..route("DELETE /auth/mfa/totp", "mfa", Floor::Verify)
    },
    Route {
        costly_setup: true,
        ..route("POST /auth/mfa/verify", "login", Floor::RoundTrips)
    },
    Route {
        scheduled: true,
        ..route("schedule prune", "prune", Floor::RoundTrips)
    },
    Route {
        scheduled: true,
        costly_setup: true,
        mails_inline: true,
        ..route(
            "schedule mailer (one message pending)",
            "mailer",
            Floor::RoundTrips,
        )
    },
];

/// The Lambda functions: `BENCH_FUNCTIONS` (scripts/env.sh's `FUNCTIONS`, space-separated)
/// when set, else the `functions/*` members of the root workspace's Cargo.toml.
pub fn functions(root: &std::path::Path) -> Result<Vec<String>> {
    if let Ok(list) = std::env::var("BENCH_FUNCTIONS")
        && !list.trim().is_empty()
    {
        return Ok(list.split_whitespace().map(str::to_owned).collect());
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let mut functions = Vec::new();
    let mut in_members = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.starts_with("members") && line.contains('=') {
            in_members = true;
        }
        if in_members {
            for piece in line.split('"').skip(1).step_by(2) {
                if let Some(name) = piece.strip_prefix("functions/") {
                    functions.push(name.to_owned());
                }
            }
            if line.contains(']') {
                break;
            }
        }
    }
    if functions.is_empty() {
        return Err("no functions/* members in the root Cargo.toml".into());
    }
    Ok(functions)
}

/// Fails unless every function has a scenario and every scenario's function exists.
pub fn check_coverage(functions: &[String]) -> Result<()> {
    let missing: Vec<&str> = functions
        .iter()
        .map(String::as_str)
        .filter(|f| !ROUTES.iter().any(|r| r.function == *f))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no scenario for the function(s) {} in tools/lambda-bench/src/routes.rs: add one per route",
            missing.join(", ")
        )
        .into());
    }
    let unknown: Vec<&str> = ROUTES
        .iter()
        .map(|r| r.function)
        .filter(|f| !functions.iter().any(|g| g == f))
        .collect();
    if !unknown.is_empty() {
        return Err(format!("scenarios for unknown function(s): {}", unknown.join(", ")).into());
    }
    Ok(())
}

/// The routes of `functions`, in [`ROUTES`] order.
pub fn routes_of(functions: &[String]) -> Vec<&'static Route> {
    ROUTES
        .iter()
        .filter(|r| functions.iter().any(|f| f == r.function))
        .collect()
}

/// One request to send.
#[derive(Clone, Debug)]
pub struct Request {
    /// The route's name (for messages).
    pub route: &'static str,
    /// The event, as JSON text.
    pub event: String,
    /// The status it must answer.
    pub expected: u16,
    /// The address it concerns, when its answer must name it.
    pub email: Option<String>,
}

/// A stream of requests for one route on one instance; set-up is done before
/// [`next`](Lane::next) returns, outside the timed part.
pub trait Lane: Send {
    /// The next request.
    fn next(&mut self) -> Result<Request>;
    /// Checks an answer (and keeps what the next request needs, such as a rotated token).
    fn check(&mut self, request: &Request, answer: &Answer) -> Result<()>;
}

/// A session as login returns it.
#[derive(Clone, Debug)]
pub struct Session {
    /// The access token.
    pub access: String,
    /// The refresh token.
    pub refresh: String,
}

impl Session {
    /// The session id: the access token's `sid` claim.
    pub fn id(&self) -> Result<String> {
        let payload = self
            .access
            .split('.')
            .nth(1)
            .ok_or("an access token that is no JWT")?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?;
        let claims: Value = serde_json::from_slice(&bytes)?;
        Ok(claims["sid"]
            .as_str()
            .ok_or("an access token without sid")?
            .to_owned())
    }
}

/// What the scenarios set up with: helper function processes on the direct database (never
/// through the counting proxy), and MailDev.
pub struct Setup {
    bin_dir: PathBuf,
    log: PathBuf,
    env: FunctionEnv,
    /// The same settings with a mail server that refuses connections: mail stays pending (the
    /// mailer's scenario).
    no_mail: FunctionEnv,
    maildev: MailDev,
    nonce: String,
    seq: usize,
    helpers: HashMap<&'static str, Instance>,
}

fn post(path: &str, bearer: Option<&str>, body: &Value) -> String {
    apigw_event("POST", path, bearer, Some(body))
}

fn credentials(email: &str, password: &str) -> Value {
    json!({ "email": email, "password": password })
}

impl Setup {
    /// Helpers from `bin_dir` with `env` (direct database, mail to `maildev_url`); `no_mail`
    /// is `env` with an SMTP_URL nothing listens on.
    pub fn new(
        bin_dir: PathBuf,
        log: PathBuf,
        env: FunctionEnv,
        no_mail: FunctionEnv,
        maildev_url: &str,
    ) -> Self {
        Self {
            bin_dir,
            log,
            env,
            no_mail,
            maildev: MailDev::new(maildev_url),
            nonce: crate::nonce(),
            seq: 0,
            helpers: HashMap::new(),
        }
    }

    fn helper(&mut self, function: &'static str) -> Result<&mut Instance> {
        if !self.helpers.contains_key(function) {
            let mut instance = spawn_in(&self.bin_dir, &self.log, function, &self.env)?;
            instance.wait_ready(Duration::from_secs(20))?;
            self.helpers.insert(function, instance);
        }
        self.helpers
            .get_mut(function)
            .ok_or_else(|| "a helper that just started is gone".into())
    }

    fn call(
        &mut self,
        helper: &'static str,
        route: &'static str,
        event: String,
        expected: u16,
    ) -> Result<Answer> {
        self.helper(helper)?.call(&Request {
            route,
            event,
            expected,
            email: None,
        })
    }

    /// A new address of this run.
    pub fn address(&mut self, tag: &str) -> String {
        self.seq += 1;
        format!("{tag}-{}-{}@bench.example", self.nonce, self.seq)
    }

    /// A registered account (its verification mail sent to MailDev).
    pub fn account(&mut self, tag: &str) -> Result<String> {
        let email = self.address(tag);
        let event = post("/auth/register", None, &credentials(&email, PASSWORD));
        self.call("register", "POST /auth/register", event, 201)?;
        Ok(email)
    }

    /// A new session of `email`.
    pub fn login(&mut self, email: &str, password: &str) -> Result<Session> {
        let event = post("/auth/login", None, &credentials(email, password));
        let answer = self.call("login", "POST /auth/login", event, 200)?;
        let field = |name: &str| -> Result<String> {
            Ok(answer.body[name]
                .as_str()
                .ok_or_else(|| format!("login answered without {name}"))?
                .to_owned())
        };
        Ok(Session {
            access: field("access_token")?,
            refresh: field("refresh_token")?,
        })
    }

    /// A pending TOTP enrolment of a new signed-in account: its address, the session and the
    /// secret.
    fn enrolled(&mut self, tag: &str) -> Result<(String, Session, shared::totp::TotpSecret)> {
        let email = self.account(tag)?;
        let session = self.login(&email, PASSWORD)?;
        let body = json!({ "password": PASSWORD });
        let event = post("/auth/mfa/totp", Some(&session.access), &body);
        let answer = self.call("mfa", "POST /auth/mfa/totp", event, 200)?;
        let secret = answer.body["secret"]
            .as_str()
            .and_then(shared::totp::from_base32)
            .ok_or("enrolment answered without a secret")?;
        Ok((email, session, secret))
    }

    /// A new account with TOTP on: its address, a session and its recovery codes.
    fn totp_on(&mut self, tag: &str) -> Result<(String, Session, Vec<String>)> {
        let (email, session, secret) = self.enrolled(tag)?;
        let mut totp = Totp {
            secret,
            last_step: 0,
        };
        let body = json!({ "code": totp.next_code() });
        let event = post("/auth/mfa/totp/confirm", Some(&session.access), &body);
        let answer = self.call("mfa", "POST /auth/mfa/totp/confirm", event, 200)?;
        let codes = answer.body["recovery_codes"]
            .as_array()
            .map(|codes| {
                codes
                    .iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .ok_or("confirm answered without recovery codes")?;
        Ok((email, session, codes))
    }

    /// Runs the mailer once (what is pending goes out).
    pub fn run_mailer(&mut self) -> Result<Value> {
        Ok(self
            .call("mailer", "schedule mailer", scheduled_event("mailer"), 200)?
            .body)
    }

    /// The link tokens MailDev holds for `to`, mailed with a link to `page`. A message its
    /// request left to the mailer (a delivery cut off at `MAIL_ANSWER_MS` on a busy machine)
    /// is sent by one mailer run after three seconds, as the schedule would.
    pub fn tokens(&mut self, to: &[String], page: &str) -> Result<Vec<String>> {
        let started = Instant::now();
        let mut nudged = false;
        loop {
            if let Some(tokens) = self.maildev.tokens(to, page)? {
                return Ok(tokens);
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("not all of {} {page} mails arrived in 30 s", to.len()).into());
            }
            if !nudged && started.elapsed() > Duration::from_secs(3) {
                nudged = true;
                self.run_mailer()?;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reset links for fresh accounts, one each.
    fn reset_tokens(&mut self, n: usize) -> Result<Vec<String>> {
        let mut emails = Vec::with_capacity(n);
        for _ in 0..n {
            let email = self.account("reset")?;
            let event = post("/auth/password/forgot", None, &json!({ "email": email }));
            self.call("password", "POST /auth/password/forgot", event, 202)?;
            emails.push(email);
        }
        self.tokens(&emails, "reset-password")
    }

    /// A lane of `n` requests for `route` (fewer set-ups are made for the chained ones).
    pub fn lane(&mut self, route: &Route, n: usize) -> Result<Box<dyn Lane>> {
        let name = route.name;
        let fixed = |event: String, expected: u16, email: Option<String>| Request {
            route: name,
            event,
            expected,
            email,
        };
        let lane: Box<dyn Lane> = match name {
            "POST /auth/register" => {
                let emails = (0..n).map(|_| self.address("register")).collect::<Vec<_>>();
                Box::new(Prepared::new(
                    emails
                        .into_iter()
                        .map(|e| {
                            let event = post("/auth/register", None, &credentials(&e, PASSWORD));
                            fixed(event, 201, Some(e))
                        })
                        .collect(),
                ))
            }
            "POST /auth/login" => {
                let email = self.account("login")?;
                let event = post("/auth/login", None, &credentials(&email, PASSWORD));
                Box::new(Repeat(fixed(event, 200, None)))
            }
            "GET /auth/me" => {
                let email = self.account("me")?;
                let session = self.login(&email, PASSWORD)?;
                let event = apigw_event("GET", "/auth/me", Some(&session.access), None);
                Box::new(Repeat(fixed(event, 200, Some(email))))
            }
            "DELETE /auth/me" => {
                let mut requests = Vec::with_capacity(n);
                for _ in 0..n {
                    let email = self.account("delete")?;
                    let session = self.login(&email, PASSWORD)?;
                    let body = json!({ "password": PASSWORD });
                    let event =
                        apigw_event("DELETE", "/auth/me", Some(&session.access), Some(&body));
                    requests.push(fixed(event, 204, None));
                }
                Box::new(Prepared::new(requests))
            }
            "POST /auth/refresh" => {
                let email = self.account("refresh")?;
                let session = self.login(&email, PASSWORD)?;
                Box::new(Refresh {
                    token: session.refresh,
                })
            }
            "POST /auth/logout" => {
                let email = self.account("logout")?;
                let mut requests = Vec::with_capacity(n);
                for _ in 0..n {
                    let session = self.login(&email, PASSWORD)?;
                    let event = apigw_event("POST", "/auth/logout", Some(&session.access), None);
                    requests.push(fixed(event, 204, None));
                }
                Box::new(Prepared::new(requests))
            }
            "GET /.well-known/jwks.json"
            | "GET /.well-known/openid-configuration"
            | "GET /openapi.json"
            | "GET /" => {
                let path = &name["GET ".len()..];
                Box::new(Repeat(fixed(
                    apigw_event("GET", path, None, None),
                    200,
                    None,
                )))
            }
            "GET /assets/{file}" => Box::new(Repeat(fixed(
                apigw_event("GET", "/assets/app.js", None, None),
                200,
                None,
            ))),
            "POST /auth/email/verify" => {
                let emails = (0..n)
                    .map(|_| self.account("verify"))
                    .collect::<Result<Vec<_>>>()?;
                let tokens = self.tokens(&emails, "verify-email")?;
                Box::new(Prepared::new(
                    tokens
                        .into_iter()
                        .zip(emails)
                        .map(|(token, email)| {
                            let event =
                                post("/auth/email/verify", None, &json!({ "token": token }));
                            fixed(event, 200, Some(email))
                        })
                        .collect(),
                ))
            }
            "POST /auth/email/verify/resend" | "POST /auth/password/forgot" => {
                // A fresh account each time: the per-address limit allows one per interval.
                let path = &name["POST ".len()..];
                let mut requests = Vec::with_capacity(n);
                for _ in 0..n {
                    let email = self.account("mail")?;
                    let event = post(path, None, &json!({ "email": email }));
                    requests.push(fixed(event, 202, None));
                }
                Box::new(Prepared::new(requests))
            }
            "POST /auth/password/reset" => {
                let tokens = self.reset_tokens(n)?;
                Box::new(Prepared::new(
                    tokens
                        .into_iter()
                        .map(|token| {
                            let body = json!({ "token": token, "password": OTHER_PASSWORD });
                            fixed(post("/auth/password/reset", None, &body), 204, None)
                        })
                        .collect(),
                ))
            }
            "POST /auth/password/change" => {
                let email = self.account("change")?;
                let session = self.login(&email, PASSWORD)?;
                Box::new(Change {
                    access: session.access,
                    current_is_first: true,
                })
            }
            "GET /auth/sessions" => {
                let email = self.account("sessions")?;
                let session = self.login(&email, PASSWORD)?;
                let event = apigw_event("GET", "/auth/sessions", Some(&session.access), None);
                Box::new(Repeat(fixed(event, 200, None)))
            }
            "DELETE /auth/sessions/{id}" => {
                // One caller ends another session of its own user each time.
                let email = self.account("revoke")?;
                let caller = self.login(&email, PASSWORD)?;
                let mut requests = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = self.login(&email, PASSWORD)?.id()?;
                    let path = format!("/auth/sessions/{id}");
                    let event = apigw_event("DELETE", &path, Some(&caller.access), None);
                    requests.push(fixed(event, 204, None));
                }
                Box::new(Prepared::new(requests))
            }
            "POST /auth/mfa/totp" => {
                // Enrolling again before confirming replaces the pending secret: repeatable.
                let email = self.account("enrol")?;
                let session = self.login(&email, PASSWORD)?;
                let body = json!({ "password": PASSWORD });
                let event = post("/auth/mfa/totp", Some(&session.access), &body);
                Box::new(Repeat(fixed(event, 200, None)))
            }
            "POST /auth/mfa/totp/confirm" => {
                let mut pending = Vec::with_capacity(n);
                for _ in 0..n {
                    let (_, session, secret) = self.enrolled("confirm")?;
                    pending.push((
                        session.access,
                        Totp {
                            secret,
                            last_step: 0,
                        },
                    ));
                }
                Box::new(ConfirmTotp(pending.into_iter()))
            }
            "DELETE /auth/mfa/totp" => {
                let mut requests = Vec::with_capacity(n);
                for _ in 0..n {
                    let (_, session, _) = self.totp_on("mfa")?;
                    let body = json!({ "password": PASSWORD });
                    let event = apigw_event(
                        "DELETE",
                        "/auth/mfa/totp",
                        Some(&session.access),
                        Some(&body),
                    );
                    requests.push(fixed(event, 204, None));
                }
                Box::new(Prepared::new(requests))
            }
            "POST /auth/mfa/verify" => {
                // Each request is the second step of a login made just before it, with a
                // recovery code: the same statements as a TOTP code's, and ten per account,
                // where a code is accepted once per 30-second step.
                let mut second_steps = Vec::with_capacity(n);
                while second_steps.len() < n {
                    let (email, _, codes) = self.totp_on("mfa")?;
                    second_steps.extend(codes.into_iter().map(|code| (email.clone(), code)));
                }
                let login = spawn_in(&self.bin_dir, &self.log, "login", &self.env)?;
                Box::new(VerifyMfa {
                    login,
                    ready: false,
                    second_steps: second_steps.into_iter(),
                })
            }
            "schedule prune" => Box::new(Repeat(fixed(scheduled_event("prune"), 200, None))),
            "schedule mailer (one message pending)" => {
                let helper = spawn_in(&self.bin_dir, &self.log, "register", &self.no_mail)?;
                let drain = spawn_in(&self.bin_dir, &self.log, "mailer", &self.env)?;
                Box::new(Mailer {
                    helper,
                    drain,
                    ready: false,
                    nonce: crate::nonce(),
                    seq: 0,
                })
            }
            other => return Err(format!("no scenario for the route {other}").into()),
        };
        Ok(lane)
    }
}

/// Requests made up front, one per invocation.
struct Prepared(std::vec::IntoIter<Request>);

impl Prepared {
    fn new(requests: Vec<Request>) -> Self {
        Self(requests.into_iter())
    }
}

impl Lane for Prepared {
    fn next(&mut self) -> Result<Request> {
        self.0
            .next()
            .ok_or_else(|| "the lane ran out of prepared requests".into())
    }

    fn check(&mut self, request: &Request, answer: &Answer) -> Result<()> {
        check_email(request, answer)
    }
}

/// The same request every time.
struct Repeat(Request);

impl Lane for Repeat {
    fn next(&mut self) -> Result<Request> {
        Ok(self.0.clone())
    }

    fn check(&mut self, request: &Request, answer: &Answer) -> Result<()> {
        check_email(request, answer)
    }
}

fn check_email(request: &Request, answer: &Answer) -> Result<()> {
    match &request.email {
        Some(email) if answer.body["email"] != email.as_str() => {
            Err(format!("{} answered another user: {}", request.route, answer.body).into())
        }
        _ => Ok(()),
    }
}

/// Each refresh presents the token the previous one returned.
struct Refresh {
    token: String,
}

impl Lane for Refresh {
    fn next(&mut self) -> Result<Request> {
        Ok(Request {
            route: "POST /auth/refresh",
            event: post(
                "/auth/refresh",
                None,
                &json!({ "refresh_token": self.token }),
            ),
            expected: 200,
            email: None,
        })
    }

    fn check(&mut self, _: &Request, answer: &Answer) -> Result<()> {
        self.token = answer.body["refresh_token"]
            .as_str()
            .ok_or("refresh answered without a refresh_token")?
            .to_owned();
        Ok(())
    }
}

/// The password goes back and forth between two; the calling session lives on.
struct Change {
    access: String,
    current_is_first: bool,
}

impl Lane for Change {
    fn next(&mut self) -> Result<Request> {
        let (current, new) = if self.current_is_first {
            (PASSWORD, OTHER_PASSWORD)
        } else {
            (OTHER_PASSWORD, PASSWORD)
        };
        let body = json!({ "current_password": current, "new_password": new });
        Ok(Request {
            route: "POST /auth/password/change",
            event: post("/auth/password/change", Some(&self.access), &body),
            expected: 204,
            email: None,
        })
    }

    fn check(&mut self, _: &Request, _: &Answer) -> Result<()> {
        self.current_is_first = !self.current_is_first;
        Ok(())
    }
}

/// An account's authenticator, as an app keeps it.
struct Totp {
    secret: shared::totp::TotpSecret,
    last_step: u64,
}

impl Totp {
    /// The code of the current step, or of the step after the last one used when that is
    /// later (one step ahead is inside the window): the server accepts each step once.
    fn next_code(&mut self) -> String {
        let now = chrono::Utc::now().timestamp();
        let step = shared::totp::step_of(now).max(self.last_step + 1);
        self.last_step = step;
        shared::totp::code_at_step(&self.secret, step)
    }
}

/// Each request confirms a pending enrolment of its own, with a code computed when it is sent.
struct ConfirmTotp(std::vec::IntoIter<(String, Totp)>);

impl Lane for ConfirmTotp {
    fn next(&mut self) -> Result<Request> {
        let (access, mut totp) = self
            .0
            .next()
            .ok_or("the lane ran out of pending enrolments")?;
        let body = json!({ "code": totp.next_code() });
        Ok(Request {
            route: "POST /auth/mfa/totp/confirm",
            event: post("/auth/mfa/totp/confirm", Some(&access), &body),
            expected: 200,
            email: None,
        })
    }

    fn check(&mut self, request: &Request, answer: &Answer) -> Result<()> {
        match answer.body["recovery_codes"].as_array() {
            Some(codes) if codes.len() == 10 => Ok(()),
            _ => Err(format!(
                "{} answered without ten recovery codes: {}",
                request.route, answer.body
            )
            .into()),
        }
    }
}

/// Before each request, a login of its account (with its own login instance, on the direct
/// database) answering `mfa_required`; the request is its second step, with a recovery code.
struct VerifyMfa {
    login: Instance,
    ready: bool,
    second_steps: std::vec::IntoIter<(String, String)>,
}

impl Lane for VerifyMfa {
    fn next(&mut self) -> Result<Request> {
        if !self.ready {
            self.login.wait_ready(Duration::from_secs(20))?;
            self.ready = true;
        }
        let (email, code) = self
            .second_steps
            .next()
            .ok_or("the lane ran out of recovery codes")?;
        let challenged = self.login.call(&Request {
            route: "POST /auth/login",
            event: post("/auth/login", None, &credentials(&email, PASSWORD)),
            expected: 401,
            email: None,
        })?;
        let token = challenged.body["mfa_token"]
            .as_str()
            .ok_or("login with TOTP on answered without an mfa_token")?;
        let body = json!({ "mfa_token": token, "recovery_code": code });
        Ok(Request {
            route: "POST /auth/mfa/verify",
            event: post("/auth/mfa/verify", None, &body),
            expected: 200,
            email: None,
        })
    }

    fn check(&mut self, request: &Request, answer: &Answer) -> Result<()> {
        match answer.body["access_token"].as_str() {
            Some(_) => Ok(()),
            None => {
                Err(format!("{} answered without tokens: {}", request.route, answer.body).into())
            }
        }
    }
}

/// Before each run, one registration whose mail could not go out: one message pending. A
/// mailer of its own first sends whatever else is due (say a forgot's mail that missed its
/// answer time), so the measured run finds exactly that one message.
struct Mailer {
    helper: Instance,
    drain: Instance,
    ready: bool,
    nonce: String,
    seq: usize,
}

impl Lane for Mailer {
    fn next(&mut self) -> Result<Request> {
        if !self.ready {
            self.helper.wait_ready(Duration::from_secs(20))?;
            self.drain.wait_ready(Duration::from_secs(20))?;
            self.ready = true;
        }
        self.drain.call(&Request {
            route: "schedule mailer",
            event: scheduled_event("mailer"),
            expected: 200,
            email: None,
        })?;
        self.seq += 1;
        let email = format!("pending-{}-{}@bench.example", self.nonce, self.seq);
        self.helper.call(&Request {
            route: "POST /auth/register",
            event: post("/auth/register", None, &credentials(&email, PASSWORD)),
            expected: 201,
            email: None,
        })?;
        Ok(Request {
            route: "schedule mailer (one message pending)",
            event: scheduled_event("mailer"),
            expected: 200,
            email: None,
        })
    }

    fn check(&mut self, request: &Request, answer: &Answer) -> Result<()> {
        if answer.body["sent"].as_u64() == Some(1) {
            Ok(())
        } else {
            Err(format!(
                "{} sent other than its one message: {}",
                request.route, answer.body
            )
            .into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_of_the_workspace_has_a_scenario() -> Result<()> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        check_coverage(&functions(&root)?)
    }

    #[test]
    fn a_function_without_a_scenario_stops_the_run() {
        let mut functions: Vec<String> = ROUTES.iter().map(|r| r.function.to_owned()).collect();
        functions.push("newcomer".into());
        let error = check_coverage(&functions).err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("newcomer")),
            "{error:?}"
        );
    }
}
