"use strict";
// `/reset-password#token=…`: the token is sent only with the new password, typed twice.

const form = document.getElementById("reset");
let token = null;

withLinkToken((found) => {
  token = found;
  form.reset();
  clearProblems(form);
  show(form, token !== null);
  show(document.getElementById("missing"), token === null);
  show(document.getElementById("done"), false);
  show(document.getElementById("next"), false);
});

onSubmit(form, async ({ new_password, confirm_password }) => {
  if (new_password !== confirm_password) {
    throw new Problem(0, "password_mismatch", "The two passwords differ.");
  }
  try {
    await api("POST", "/auth/password/reset", { token, password: new_password });
  } catch (problem) {
    // A refused password leaves the link usable: try another. A refused link does not.
    if (problem.code === "link_invalid" || problem.code === "link_expired") show(document.getElementById("next"));
    throw problem;
  }
  // Every session ended, this tab's too.
  session.forget();
  show(form, false);
  const done = document.getElementById("done");
  show(done);
  done.focus();
});
