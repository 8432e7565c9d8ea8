"use strict";
// What every page shares: calls to the API (this origin only), problem documents shown as their
// detail next to the field they concern, and the tokens — the access token in memory, the
// refresh token in sessionStorage (this tab only, gone when it closes; never localStorage or a
// cookie), refreshed before the access token expires.

const REFRESH_KEY = "auth.refresh_token";

// A refused call: the problem document's code and detail, and Retry-After for 429 and 503.
class Problem extends Error {
  constructor(status, code, detail, retryAfter) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

// The fields a problem concerns, by code, in order of preference: the first the form has is
// marked. Codes not listed concern the whole form.
const FIELDS_OF = {
  invalid_email: ["email"],
  email_taken: ["email"],
  invalid_password: ["new_password", "password"],
  weak_password: ["new_password", "password"],
  wrong_password: ["current_password", "password"],
  invalid_code: ["code", "recovery_code"],
  password_mismatch: ["confirm_password"],
};

async function api(method, path, body, bearer) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      redirect: "error",
    });
  } catch {
    throw new Problem(0, "network", "The service could not be reached. Check your connection and try again.");
  }
  const text = await response.text();
  let document = null;
  try {
    document = text ? JSON.parse(text) : null;
  } catch {
    document = null;
  }
  if (response.ok) return document ?? {};
  if (!document || typeof document.detail !== "string") {
    throw new Problem(response.status, "unexpected",
      `The service answered with an unexpected error (HTTP ${response.status}). Try again in a moment.`);
  }
  const problem = new Problem(response.status, document.code, document.detail, response.headers.get("Retry-After"));
  problem.document = document;
  throw problem;
}

// What a person reads for a problem: its detail, and when to try again.
function describe(problem) {
  if (!(problem instanceof Problem)) return "Something went wrong in this page. Reload it and try again.";
  const seconds = Number.parseInt(problem.retryAfter ?? "", 10);
  if ((problem.status === 429 || problem.status === 503) && seconds > 0) {
    const wait = seconds >= 120 ? `${Math.ceil(seconds / 60)} minutes` : `${seconds} second${seconds === 1 ? "" : "s"}`;
    return `${problem.detail} Try again in ${wait}.`;
  }
  return problem.detail;
}

// --- The session ---------------------------------------------------------------------------

const session = {
  access: null,
  timer: null,
  refreshing: null,
  onSignedOut: () => {},

  signedIn() {
    return sessionStorage.getItem(REFRESH_KEY) !== null;
  },

  // The answer of login, /auth/mfa/verify or refresh.
  keep(tokens) {
    sessionStorage.setItem(REFRESH_KEY, tokens.refresh_token);
    this.access = tokens.access_token;
    clearTimeout(this.timer);
    // Refresh a minute before expiry (or halfway, for short lifetimes); a failure there shows
    // the signed-out state rather than wait for the next click to find it.
    const lead = Math.max(tokens.expires_in / 2, tokens.expires_in - 60);
    this.timer = setTimeout(() => this.refresh().catch(() => {}), lead * 1000);
  },

  forget() {
    sessionStorage.removeItem(REFRESH_KEY);
    this.access = null;
    clearTimeout(this.timer);
  },

  // One refresh at a time: a second caller waits for the first (each refresh token is single-use).
  refresh() {
    if (!this.refreshing) {
      this.refreshing = (async () => {
        const token = sessionStorage.getItem(REFRESH_KEY);
        if (token === null) throw new Problem(401, "signed_out", "You are signed out.");
        try {
          this.keep(await api("POST", "/auth/refresh", { refresh_token: token }));
        } catch (problem) {
          // A refused refresh token means the session is over; anything else may pass.
          if (problem.status === 401 || problem.status === 400) {
            this.forget();
            this.onSignedOut(problem);
          }
          throw problem;
        }
      })().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  },

  // A call with the access token, refreshed first when there is none or it was refused.
  async call(method, path, body) {
    if (this.access === null) await this.refresh();
    try {
      return await api(method, path, body, this.access);
    } catch (problem) {
      if (problem.status !== 401 || !["invalid_token", "token_expired"].includes(problem.code)) throw problem;
      await this.refresh();
      return api(method, path, body, this.access);
    }
  },
};

// --- Forms ----------------------------------------------------------------------------------

// Each field's message goes in its .field-error element, which its aria-describedby names (space
// kept for it in the layout); the form's own in its [data-status] element, a live region.
function clearProblems(form) {
  for (const field of form.querySelectorAll("[aria-invalid]")) {
    field.removeAttribute("aria-invalid");
  }
  for (const message of form.querySelectorAll(".field-error")) message.textContent = "";
  setStatus(form, "");
}

function setStatus(form, text, kind = "error") {
  const status = form.querySelector("[data-status]");
  if (!status) return;
  status.textContent = text;
  status.dataset.kind = kind;
}

function showProblem(form, problem) {
  const text = describe(problem);
  const names = FIELDS_OF[problem?.code] ?? [];
  const field = names.map((name) => form.elements.namedItem(name)).find((f) => f && !f.closest("[hidden]"));
  const message = field && (field.getAttribute("aria-describedby") ?? "").split(" ")
    .map((id) => document.getElementById(id)).find((e) => e?.classList.contains("field-error"));
  if (field && message) {
    field.setAttribute("aria-invalid", "true");
    message.textContent = text;
    field.focus();
  } else {
    setStatus(form, text);
  }
}

// Runs `action(fields)` on submit with the form's buttons disabled, showing what it throws.
// `action` returns the text to show on success, if any.
function onSubmit(form, action) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearProblems(form);
    // Read before the buttons are disabled: a disabled submitter is left out of the data.
    const fields = Object.fromEntries(new FormData(form, event.submitter));
    const buttons = form.querySelectorAll("button");
    for (const button of buttons) button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const done = await action(fields);
      if (typeof done === "string") setStatus(form, done, "ok");
    } catch (problem) {
      // A fault of the page itself, not an answer of the API: the console tells the developer.
      if (!(problem instanceof Problem)) console.error(problem);
      showProblem(form, problem);
    } finally {
      for (const button of buttons) button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });
}

// The link token of a mailed link, from the fragment (`#token=…`), which no server sees: handed
// to `use` at once, then taken out of the address bar and the history (the page keeps it in
// memory). The same link opened again in this tab changes only the fragment: `use` gets it too.
function withLinkToken(use) {
  const take = () => {
    const token = new URLSearchParams(location.hash.slice(1)).get("token");
    if (location.hash) history.replaceState(null, "", location.pathname);
    return token && token.length > 0 ? token : null;
  };
  use(take());
  addEventListener("hashchange", () => use(take()));
}

function show(element, visible = true) {
  element.hidden = !visible;
}
