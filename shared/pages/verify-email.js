"use strict";
// `/verify-email#token=…`: the token is sent only when the person presses the button, never on
// load (mail scanners open links).

const form = document.getElementById("verify");
let token = null;

withLinkToken((found) => {
  token = found;
  clearProblems(form);
  show(form, token !== null);
  show(form.querySelector(".actions"));
  show(document.getElementById("verify-intro"));
  show(document.getElementById("missing"), token === null);
  show(document.getElementById("next"), false);
});

onSubmit(form, async () => {
  try {
    const user = await api("POST", "/auth/email/verify", { token });
    show(form.querySelector(".actions"), false);
    show(document.getElementById("verify-intro"), false);
    return `Thank you: ${user.email} is verified.`;
  } finally {
    // The button may be gone: focus goes to what comes next.
    const next = document.getElementById("next");
    show(next);
    next.focus();
  }
});
