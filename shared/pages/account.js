"use strict";
// `/account`: the signed-in user, their sessions, password, two-step login, log out, delete.

const $ = (id) => document.getElementById(id);
const forms = {
  resend: $("resend"),
  sessions: $("sessions"),
  change: $("change-password"),
  mfaStart: $("mfa-start"),
  mfaConfirm: $("mfa-confirm"),
  mfaCodes: $("mfa-codes"),
  mfaOff: $("mfa-off"),
  logout: $("logout"),
  delete: $("delete"),
};
let user = null;

const when = (timestamp) =>
  new Date(timestamp).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });

function signedOut(why) {
  session.forget();
  show($("loading"), false);
  show($("account"), false);
  show($("signed-out"));
  $("signed-out-why").textContent = why;
  $("signed-out-title").focus();
}

session.onSignedOut = () =>
  signedOut("Your session has ended: it was signed out (here or from another device), or it expired. Sign in again.");

function showUser(body) {
  user = body;
  $("user-email").textContent = user.email;
  $("user-verified").textContent = user.email_verified ? "Yes" : "Not yet: follow the link in the email we sent you";
  $("user-mfa").textContent = user.mfa_enabled ? "On" : "Off";
  $("user-created").textContent = when(user.created_at);
  show(forms.resend, !user.email_verified);
  for (const field of document.querySelectorAll('input[name="username"]')) field.value = user.email;
}

// A session's user agent as a person names it ("Firefox on Linux"); the whole string is its title.
function device(agent) {
  if (!agent) return "An unknown device";
  const browser = [["Edg/", "Edge"], ["Firefox/", "Firefox"], ["Chrome/", "Chrome"], ["Safari/", "Safari"], ["curl/", "curl"]]
    .find(([mark]) => agent.includes(mark))?.[1];
  const system = [["Android", "Android"], ["iPhone", "iOS"], ["iPad", "iPadOS"], ["Windows", "Windows"], ["Mac OS", "macOS"], ["Linux", "Linux"]]
    .find(([mark]) => agent.includes(mark))?.[1];
  if (browser && system) return `${browser} on ${system}`;
  return browser ?? (agent.length > 60 ? `${agent.slice(0, 60)}…` : agent);
}

// Which of the two-step login forms shows: one at a time. With `focus`, its opening line takes
// the focus, which was on a control now hidden.
function showMfa(form, focus = false) {
  for (const f of [forms.mfaStart, forms.mfaConfirm, forms.mfaCodes, forms.mfaOff]) show(f, f === form);
  if (focus) form.querySelector("[tabindex='-1']")?.focus();
}

async function loadSessions() {
  const { sessions } = await session.call("GET", "/auth/sessions");
  const list = $("sessions-list");
  list.replaceChildren(
    ...sessions.map((s) => {
      const item = document.createElement("li");
      item.className = "session";
      const text = document.createElement("div");
      const title = document.createElement("p");
      title.textContent = device(s.user_agent);
      if (s.user_agent) title.title = s.user_agent;
      if (s.current) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "This session";
        title.append(badge);
        item.dataset.current = "true";
      }
      const meta = document.createElement("p");
      meta.className = "meta";
      const strength = s.aal === "aal2" ? "with two-step login" : "with a password";
      meta.textContent = `Signed in ${when(s.created_at)} ${strength}, from ${s.source_ip || "an unknown address"}; last used ${when(s.last_used_at)}.`;
      text.append(title, meta);
      item.append(text);
      if (!s.current) {
        const end = document.createElement("button");
        end.type = "submit";
        end.name = "session";
        end.value = s.id;
        end.className = "secondary";
        end.textContent = "End";
        end.setAttribute("aria-label", `End the session signed in ${when(s.created_at)} from ${s.source_ip || "an unknown address"}`);
        item.append(end);
      }
      return item;
    }),
  );
}

async function load() {
  if (!session.signedIn()) {
    signedOut("You are not signed in in this tab.");
    return;
  }
  try {
    const [me] = await Promise.all([session.call("GET", "/auth/me"), loadSessions()]);
    showUser(me);
    showMfa(me.mfa_enabled ? forms.mfaOff : forms.mfaStart);
    show($("loading"), false);
    show($("account"));
  } catch (problem) {
    if (!session.signedIn()) return; // the signed-out state shows already
    const loading = $("loading");
    loading.dataset.kind = "error";
    loading.textContent = describe(problem);
  }
}

onSubmit(forms.resend, async () => {
  await api("POST", "/auth/email/verify/resend", { email: user.email });
  return `We sent a new link to ${user.email}.`;
});

onSubmit(forms.sessions, async ({ session: id }) => {
  await session.call("DELETE", `/auth/sessions/${encodeURIComponent(id)}`);
  await loadSessions();
  $("sessions-title").focus(); // its button is gone
  return "That session has ended.";
});

onSubmit(forms.change, async ({ current_password, new_password, confirm_password }) => {
  if (new_password !== confirm_password) {
    throw new Problem(0, "password_mismatch", "The two new passwords differ.");
  }
  await session.call("POST", "/auth/password/change", { current_password, new_password });
  forms.change.reset();
  await loadSessions();
  return "Your password has changed, and your other sessions were signed out.";
});

onSubmit(forms.mfaStart, async ({ password }) => {
  const enrolment = await session.call("POST", "/auth/mfa/totp", { password });
  forms.mfaStart.reset();
  $("mfa-qr").src = enrolment.qr_code;
  $("mfa-secret").textContent = enrolment.secret;
  forms.mfaConfirm.reset();
  showMfa(forms.mfaConfirm, true);
});

$("mfa-confirm-cancel").addEventListener("click", () => {
  $("mfa-qr").removeAttribute("src");
  $("mfa-secret").textContent = "";
  showMfa(forms.mfaStart, true);
});

onSubmit(forms.mfaConfirm, async ({ code }) => {
  const { recovery_codes: codes } = await session.call("POST", "/auth/mfa/totp/confirm", { code: code.trim() });
  $("mfa-qr").removeAttribute("src");
  $("mfa-secret").textContent = "";
  $("recovery-codes").replaceChildren(
    ...codes.map((c) => {
      const item = document.createElement("li");
      item.textContent = c;
      return item;
    }),
  );
  showUser({ ...user, mfa_enabled: true });
  showMfa(forms.mfaCodes, true);
  await loadSessions();
});

$("copy-codes").addEventListener("click", async () => {
  const list = $("recovery-codes");
  const text = [...list.children].map((item) => item.textContent).join("\n");
  try {
    await navigator.clipboard.writeText(text);
    setStatus(forms.mfaCodes, "Copied: paste them where you keep such things.", "ok");
  } catch {
    getSelection().selectAllChildren(list);
    setStatus(forms.mfaCodes, "This browser did not let the page copy; the codes are selected for you to copy.", "error");
  }
});

// The codes leave the page once the person says they are saved.
onSubmit(forms.mfaCodes, async () => {
  $("recovery-codes").replaceChildren();
  forms.mfaOff.reset();
  showMfa(forms.mfaOff, true);
});

let offWithPassword = false;
function offMethod(password) {
  offWithPassword = password;
  clearProblems(forms.mfaOff);
  show($("mfa-off-code-field"), !password);
  show($("mfa-off-password-field"), password);
  forms.mfaOff.elements.code.disabled = password;
  forms.mfaOff.elements.password.disabled = !password;
  $("mfa-off-switch").textContent = password ? "Use a code from your app instead" : "Use your password instead";
}
$("mfa-off-switch").addEventListener("click", () => {
  offMethod(!offWithPassword);
  (offWithPassword ? forms.mfaOff.elements.password : forms.mfaOff.elements.code).focus();
});

onSubmit(forms.mfaOff, async ({ code, password }) => {
  await session.call("DELETE", "/auth/mfa/totp", offWithPassword ? { password } : { code: code.trim() });
  offMethod(false);
  forms.mfaOff.reset();
  showUser({ ...user, mfa_enabled: false });
  showMfa(forms.mfaStart, true);
  setStatus(forms.mfaStart, "Two-step login is off, and your other sessions were signed out.", "ok");
  await loadSessions();
});

onSubmit(forms.logout, async ({ scope }) => {
  await session.call("POST", scope === "global" ? "/auth/logout?scope=global" : "/auth/logout");
  signedOut(scope === "global" ? "You logged out everywhere: every session of this account has ended." : "You logged out.");
});

onSubmit(forms.delete, async ({ password }) => {
  await session.call("DELETE", "/auth/me", { password });
  signedOut("Your account was deleted.");
});

load();
