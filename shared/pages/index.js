"use strict";
// `/`: sign in (with the second step when two-step login is on), sign up, forgot password.

const signinCard = document.getElementById("signin-card");
const signin = document.getElementById("signin");
const mfaCard = document.getElementById("mfa-card");
const mfa = document.getElementById("mfa");
const codeField = document.getElementById("mfa-code-field");
const recoveryField = document.getElementById("mfa-recovery-field");
const mfaSwitch = document.getElementById("mfa-switch");
let mfaToken = null;
let useRecoveryCode = false;

show(document.getElementById("signed-in-note"), session.signedIn());

function signedIn(tokens) {
  session.keep(tokens);
  location.assign("/account");
}

function secondStep(token) {
  mfaToken = token;
  chooseMethod(false);
  show(signinCard, false);
  show(mfaCard);
  document.getElementById("mfa-title").focus();
}

function chooseMethod(recoveryCode) {
  useRecoveryCode = recoveryCode;
  clearProblems(mfa);
  show(codeField, !recoveryCode);
  show(recoveryField, recoveryCode);
  // A disabled field is left out of the form's data and of the tab order.
  mfa.elements.code.disabled = recoveryCode;
  mfa.elements.recovery_code.disabled = !recoveryCode;
  document.getElementById("mfa-intro").textContent = recoveryCode
    ? "Enter one of the recovery codes you saved when you turned two-step login on. Each works once."
    : "Enter the 6-digit code your authenticator app shows for this account.";
  mfaSwitch.textContent = recoveryCode ? "Use a code from your app instead" : "Use a recovery code instead";
}

function startOver(message) {
  mfaToken = null;
  mfa.reset();
  show(mfaCard, false);
  show(signinCard);
  signin.elements.password.value = "";
  clearProblems(signin);
  if (message) setStatus(signin, message);
  signin.elements.password.focus();
}

const resend = document.getElementById("signin-resend");

onSubmit(signin, async ({ email, password }) => {
  show(resend, false);
  try {
    signedIn(await api("POST", "/auth/login", { email, password }));
  } catch (problem) {
    // REQUIRE_VERIFIED_EMAIL: the account page is out of reach, so the new link is asked for here.
    if (problem.code === "email_not_verified") show(resend);
    if (problem.code !== "mfa_required") throw problem;
    secondStep(problem.document.mfa_token);
  }
});

resend.addEventListener("click", async () => {
  const email = signin.elements.email.value.trim();
  resend.disabled = true;
  try {
    await api("POST", "/auth/email/verify/resend", { email });
    show(resend, false);
    setStatus(signin, `We sent a new link to ${email}: follow it, then sign in.`, "ok");
    signin.elements.password.focus();
  } catch (problem) {
    setStatus(signin, describe(problem));
  } finally {
    resend.disabled = false;
  }
});

onSubmit(mfa, async (fields) => {
  const body = useRecoveryCode
    ? { mfa_token: mfaToken, recovery_code: fields.recovery_code.trim() }
    : { mfa_token: mfaToken, code: fields.code.trim() };
  try {
    signedIn(await api("POST", "/auth/mfa/verify", body));
  } catch (problem) {
    // The sign-in attempt is over (too many wrong codes, or it expired): back to the password.
    if (problem.code !== "invalid_token") throw problem;
    startOver(describe(problem));
  }
});

mfaSwitch.addEventListener("click", () => {
  chooseMethod(!useRecoveryCode);
  (useRecoveryCode ? mfa.elements.recovery_code : mfa.elements.code).focus();
});
document.getElementById("mfa-cancel").addEventListener("click", () => startOver(""));

const signup = document.getElementById("signup");
onSubmit(signup, async ({ email, password }) => {
  const user = await api("POST", "/auth/register", { email, password });
  signup.reset();
  signin.elements.email.value = user.email;
  return `Your account for ${user.email} is ready: sign in above. We sent a link to that address to verify it.`;
});

onSubmit(document.getElementById("forgot"), async ({ email }) => {
  await api("POST", "/auth/password/forgot", { email });
  return `If an account uses ${email.trim()}, a link to reset its password is on its way there.`;
});
