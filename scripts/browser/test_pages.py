"""Every flow of the pages in a real browser, as a person goes through them: the mail read from
MailDev, the second step's codes computed with pyotp, the QR code read back with zxing-cpp."""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import Page, expect

from authenticator import Authenticator, read_qr_code
from conftest import API_URL, SCREENSHOTS, call
from mail import RESET_MAIL, VERIFICATION, links
from support import new_email, run_sql, strong_password

PAGES = ["/", "/account", "/verify-email", "/reset-password"]
ASSETS = ["/assets/app.css", "/assets/app.js", "/assets/index.js", "/assets/account.js",
          "/assets/verify-email.js", "/assets/reset-password.js", "/assets/icon.svg"]
REFRESH_KEY = "auth.refresh_token"


# --- helpers ----------------------------------------------------------------------------------


def account(email: str | None = None) -> tuple[str, str, dict]:
    """A new account, made straight through the API."""
    email, password = email or new_email("page"), strong_password()
    status, user = call("POST", "/auth/register", {"email": email, "password": password})
    assert status == 201, user
    return email, password, user


def sign_in(page: Page, email: str, password: str) -> None:
    page.goto("/")
    form = page.locator("#signin")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Sign in").click()


def expect_account(page: Page, email: str) -> None:
    expect(page).to_have_url(f"{API_URL}/account")
    expect(page.locator("#user-email")).to_have_text(email)


def signed_in(page: Page, email: str, password: str) -> None:
    sign_in(page, email, password)
    expect_account(page, email)


def status(page: Page, form: str):
    return page.locator(f"#{form} [data-status]")


def mail_link(maildev, email: str, where, name: str) -> str:
    found = links(maildev.wait_for_one(email, where), name)
    assert len(found) == 1, found
    link = found.pop()
    # APP_URL defaults to the API's own base URL: the mail's links open these pages.
    assert link.startswith(f"{API_URL}/{name}#token="), link
    return link


def refresh_token(page: Page) -> str | None:
    return page.evaluate(f"sessionStorage.getItem('{REFRESH_KEY}')")


def turn_on_totp(page: Page, password: str) -> tuple[Authenticator, list[str]]:
    start = page.locator("#mfa-start")
    start.get_by_label("Your password").fill(password)
    start.get_by_role("button", name="Turn on two-step login").click()
    confirm = page.locator("#mfa-confirm")
    expect(confirm).to_be_visible()
    secret = page.locator("#mfa-secret").text_content()
    uri = read_qr_code(page.locator("#mfa-qr").get_attribute("src"))
    assert f"secret={secret}" in uri and uri.startswith("otpauth://totp/"), uri
    authenticator = Authenticator(secret)
    confirm.get_by_label("Code from your app").fill(authenticator.next_code())
    confirm.get_by_role("button", name="Confirm").click()
    codes = page.locator("#recovery-codes li")
    expect(codes).to_have_count(10)
    return authenticator, codes.all_text_contents()


def place(locator) -> tuple[float, float]:
    """Where an element is on the page (not in the viewport, which focus may scroll)."""
    return locator.evaluate("e => { const r = e.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY]; }")


def log_out(page: Page) -> None:
    """Log out here, and wait for it to finish (leaving mid-call would keep the refresh token)."""
    page.get_by_role("button", name="Log out", exact=True).click()
    expect(page.locator("#signed-out")).to_be_visible()


def two_sessions(new_context, email: str, password: str) -> tuple[Page, Page]:
    """The account signed in from two browsers: (this one, the other), this one signed in last."""
    other = new_context().new_page()
    signed_in(other, email, password)
    page = new_context().new_page()
    signed_in(page, email, password)
    return page, other


def session_rows(page: Page):
    return page.locator("#sessions-list li")


# --- sign up, verify -------------------------------------------------------------------------


def test_sign_up_then_the_mailed_link_verifies_the_address_once(page, maildev):
    email, password = new_email("signup"), strong_password()
    page.goto("/")
    form = page.locator("#signup")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill(password)
    form.get_by_role("button", name="Create account").click()
    expect(status(page, "signup")).to_contain_text(f"Your account for {email} is ready")
    # The sign-in form is filled in for the next step.
    expect(page.locator("#signin-email")).to_have_value(email)

    link = mail_link(maildev, email, VERIFICATION, "verify-email")
    page.goto(link)
    # The token left the address bar at once; nothing was sent before the button.
    expect(page).to_have_url(f"{API_URL}/verify-email")
    page.get_by_role("button", name="Verify my email address").click()
    expect(status(page, "verify")).to_have_text(f"Thank you: {email} is verified.")
    expect(page.get_by_role("button", name="Verify my email address")).to_be_hidden()

    # The same link again: already used.
    page.goto(link)
    page.get_by_role("button", name="Verify my email address").click()
    expect(status(page, "verify")).to_contain_text("it was used already")

    signed_in(page, email, password)
    expect(page.locator("#user-verified")).to_have_text("Yes")
    expect(page.locator("#resend")).to_be_hidden()


def test_an_unverified_account_can_ask_for_a_new_link_and_an_expired_one_says_so(page, maildev):
    email, password, user = account()
    first = mail_link(maildev, email, VERIFICATION, "verify-email")
    run_sql("UPDATE link_tokens SET created_at = created_at - interval '2 days', "
            "expires_at = now() - interval '1 second' WHERE user_id = :'id';", id=user["id"])
    page.goto(first)
    page.get_by_role("button", name="Verify my email address").click()
    expect(status(page, "verify")).to_have_text("This link has expired; ask for a new one.")
    expect(page.locator("#next")).to_be_visible()

    signed_in(page, email, password)
    expect(page.locator("#user-verified")).to_contain_text("Not yet")
    page.get_by_role("button", name="Send the verification link again").click()
    expect(status(page, "resend")).to_have_text(f"We sent a new link to {email}.")
    fresh = maildev.wait_for(email, 2, VERIFICATION)[-1]
    (link,) = links(fresh, "verify-email")
    assert link != first
    page.goto(link)
    page.get_by_role("button", name="Verify my email address").click()
    expect(status(page, "verify")).to_have_text(f"Thank you: {email} is verified.")


def test_without_scripts_a_form_sends_nothing_anywhere(new_context):
    page = new_context(java_script_enabled=False).new_page()
    page.goto("/")
    page.locator("#signin-email").fill(new_email("noscript"))
    page.locator("#signin-password").fill(strong_password())
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_timeout(500)
    # No native submission: the password reaches no URL and no route.
    assert requests == [] and page.url == f"{API_URL}/"
    expect(page.get_by_role("heading", name="Sign in or create an account")).to_be_visible()


def test_a_page_without_its_token_says_what_to_do(page):
    for path, form in (("/verify-email", "#verify"), ("/reset-password", "#reset")):
        page.goto(path)
        expect(page.locator("#missing")).to_be_visible()
        expect(page.locator(form)).to_be_hidden()


# --- sign in, problems shown -----------------------------------------------------------------


def test_sign_in_refusals_show_their_detail_without_moving_the_form(page):
    email, password, _ = account()
    page.goto("/")
    button = page.locator("#signin button[type=submit]")
    before = place(button)
    page.locator("#signin-email").fill(email)
    page.locator("#signin-password").fill("not the password at all")
    button.click()
    expect(status(page, "signin")).to_have_text("The email or password is incorrect.")
    assert place(button) == before, "the error moved the form"
    expect(page).to_have_url(f"{API_URL}/")
    assert refresh_token(page) is None

    # A sign-up refusal is shown next to the field it concerns.
    page.locator("#signup-email").fill(email)
    page.locator("#signup-password").fill(strong_password())
    signup_button = page.locator("#signup button[type=submit]")
    before = place(signup_button)
    signup_button.click()
    expect(page.locator("#signup-email-error")).to_have_text("An account with this email already exists.")
    expect(page.locator("#signup-email")).to_have_attribute("aria-invalid", "true")
    assert place(signup_button) == before, "the error moved the form"

    page.locator("#signup-email").fill(new_email("weak"))
    page.locator("#signup-password").fill("password1234")
    signup_button.click()
    expect(page.locator("#signup-password-error")).to_contain_text("too common")
    # The email's earlier message is gone.
    expect(page.locator("#signup-email-error")).to_have_text("")


def test_an_answer_that_is_no_problem_document_and_a_lost_connection_read_as_sentences(page, watch):
    email, password, _ = account()
    page.goto("/")
    page.locator("#signin-email").fill(email)
    page.locator("#signin-password").fill(password)
    # A gateway's own error page, then no answer at all, stood in by the browser.
    page.route("**/auth/login", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<html><body><h1>502 Bad Gateway</h1></body></html>"))
    page.get_by_role("button", name="Sign in").click()
    expect(status(page, "signin")).to_have_text(
        "The service answered with an unexpected error (HTTP 502). Try again in a moment.")
    page.unroute("**/auth/login")
    page.route("**/auth/login", lambda route: route.abort("internetdisconnected"))
    page.get_by_role("button", name="Sign in").click()
    expect(status(page, "signin")).to_have_text(
        "The service could not be reached. Check your connection and try again.")
    page.unroute("**/auth/login")
    page.get_by_role("button", name="Sign in").click()
    expect_account(page, email)
    # The browser logged the two failed loads this test caused; nothing else may be there.
    watch.problems[:] = [p for p in watch.problems
                         if not (p.endswith("/auth/login)") and "Failed to load resource" in p)]


def test_an_unverified_sign_in_can_ask_for_a_new_link_where_it_stands(page, maildev):
    # REQUIRE_VERIFIED_EMAIL=true answers a right password of an unverified account with this
    # (API.md); this API runs with it off, so the browser gives that answer. The resend is real.
    email, password, _ = account()
    maildev.wait_for_one(email, VERIFICATION)
    page.route("**/auth/login", lambda route: route.fulfill(
        status=403, content_type="application/problem+json", body=json.dumps({
            "type": "about:blank", "title": "Forbidden", "status": 403, "code": "email_not_verified",
            "detail": "Verify your email address first: follow the link in the message we sent."})))
    sign_in(page, email, password)
    expect(status(page, "signin")).to_have_text(
        "Verify your email address first: follow the link in the message we sent.")
    page.get_by_role("button", name="Send the verification link again").click()
    expect(status(page, "signin")).to_have_text(f"We sent a new link to {email}: follow it, then sign in.")
    expect(page.get_by_role("button", name="Send the verification link again")).to_be_hidden()
    maildev.wait_for(email, 2, VERIFICATION)


def test_too_many_requests_say_when_to_try_again(page):
    email = new_email("limit")
    page.goto("/")
    form = page.locator("#forgot")
    form.get_by_label("Email").fill(email)
    form.get_by_role("button", name="Send me a reset link").click()
    expect(status(page, "forgot")).to_contain_text("a link to reset its password is on its way")
    form.get_by_role("button", name="Send me a reset link").click()
    expect(status(page, "forgot")).to_have_text(
        re.compile(r"^Too many attempts; try again later\. Try again in \d+ seconds?\.$"))


# --- forgot, reset -----------------------------------------------------------------------------


def test_forgot_then_reset_signs_out_everywhere_and_refuses_a_weak_password(new_context, maildev):
    email, password, _ = account()
    elsewhere = new_context().new_page()
    signed_in(elsewhere, email, password)

    page = new_context().new_page()
    page.goto("/")
    page.locator("#forgot-email").fill(email)
    page.get_by_role("button", name="Send me a reset link").click()
    expect(status(page, "forgot")).to_contain_text("on its way")
    link = mail_link(maildev, email, RESET_MAIL, "reset-password")

    page.goto(link)
    expect(page).to_have_url(f"{API_URL}/reset-password")
    new_password = page.get_by_label("New password", exact=True)
    again = page.get_by_label("New password, again")
    button = page.get_by_role("button", name="Set the new password")
    before = place(button)
    new_password.fill("password1234")
    again.fill("password1234")
    button.click()
    expect(page.locator("#reset-new-error")).to_contain_text("too common")
    assert place(button) == before, "the error moved the form"

    chosen = strong_password()
    new_password.fill(chosen)
    again.fill(chosen + "x")
    button.click()
    expect(page.locator("#reset-confirm-error")).to_have_text("The two passwords differ.")
    expect(page.locator("#reset-new-error")).to_have_text("")

    again.fill(chosen)
    button.click()
    expect(page.locator("#done")).to_be_visible()
    expect(page.locator("#done")).to_contain_text("every session of your account was signed out")

    # The other browser's session ended: its next action finds it signed out.
    elsewhere.get_by_role("button", name="Log out", exact=True).click()
    expect(elsewhere.locator("#signed-out")).to_be_visible()
    expect(elsewhere.locator("#signed-out-why")).to_contain_text("Your session has ended")
    assert refresh_token(elsewhere) is None

    # The link is spent; the new password works and the old one does not.
    page.goto(link)
    new_password.fill(strong_password())
    again.fill(new_password.input_value())
    button.click()
    expect(status(page, "reset")).to_contain_text("it was used already")
    expect(page.locator("#next")).to_be_visible()
    sign_in(page, email, password)
    expect(status(page, "signin")).to_have_text("The email or password is incorrect.")
    signed_in(page, email, chosen)


# --- the account page -------------------------------------------------------------------------


def test_sessions_are_listed_and_ended_and_the_password_changed(new_context):
    email, password, _ = account()
    page, other = two_sessions(new_context, email, password)

    rows = session_rows(page)
    expect(rows).to_have_count(2)
    current = page.locator("#sessions-list li[data-current=true]")
    expect(current).to_have_count(1)
    expect(current).to_contain_text("This session")
    expect(current).to_contain_text("with a password")
    expect(current).to_contain_text("Chrome on Linux")  # its user agent, as a person names it
    expect(current.get_by_role("button")).to_have_count(0)
    # Newest first: this session is the first row.
    expect(rows.first).to_have_attribute("data-current", "true")

    rows.nth(1).get_by_role("button", name=re.compile("^End the session")).click()
    expect(status(page, "sessions")).to_have_text("That session has ended.")
    expect(rows).to_have_count(1)
    other.reload()
    expect(other.locator("#signed-out")).to_be_visible()

    form = page.locator("#change-password")
    form.get_by_label("Current password").fill("not my password at all")
    form.get_by_label("New password", exact=True).fill(strong_password())
    form.get_by_label("New password, again").fill(form.get_by_label("New password", exact=True).input_value())
    form.get_by_role("button", name="Change password").click()
    expect(page.locator("#change-current-error")).to_have_text("The current password is incorrect.")

    chosen = strong_password()
    form.get_by_label("Current password").fill(password)
    form.get_by_label("New password", exact=True).fill(chosen)
    form.get_by_label("New password, again").fill(chosen + "!")
    form.get_by_role("button", name="Change password").click()
    expect(page.locator("#change-confirm-error")).to_have_text("The two new passwords differ.")
    expect(page.locator("#change-current-error")).to_have_text("")

    form.get_by_label("New password, again").fill(chosen)
    form.get_by_role("button", name="Change password").click()
    expect(status(page, "change-password")).to_have_text(
        "Your password has changed, and your other sessions were signed out.")
    # This session lives on.
    page.reload()
    expect_account(page, email)
    sign_in(other, email, chosen)
    expect_account(other, email)


def test_log_out_here_then_everywhere(new_context):
    email, password, _ = account()
    page, other = two_sessions(new_context, email, password)

    page.get_by_role("button", name="Log out", exact=True).click()
    expect(page.locator("#signed-out-why")).to_have_text("You logged out.")
    assert refresh_token(page) is None
    other.reload()
    expect_account(other, email)  # only that one session ended

    signed_in(page, email, password)
    page.get_by_role("button", name="Log out everywhere").click()
    expect(page.locator("#signed-out-why")).to_contain_text("You logged out everywhere")
    other.reload()
    expect(other.locator("#signed-out")).to_be_visible()


def test_delete_the_account_by_typing_the_password(page):
    email, password, _ = account()
    signed_in(page, email, password)
    form = page.locator("#delete")
    form.get_by_label("Type your password to confirm").fill("not my password at all")
    form.get_by_role("button", name="Delete my account").click()
    expect(page.locator("#delete-password-error")).to_have_text("The current password is incorrect.")
    form.get_by_label("Type your password to confirm").fill(password)
    form.get_by_role("button", name="Delete my account").click()
    expect(page.locator("#signed-out-why")).to_have_text("Your account was deleted.")
    sign_in(page, email, password)
    expect(status(page, "signin")).to_have_text("The email or password is incorrect.")


def test_a_failed_refresh_shows_the_signed_out_state(page):
    page.goto("/")
    page.evaluate(f"sessionStorage.setItem('{REFRESH_KEY}', 'not-a-refresh-token')")
    page.goto("/account")
    expect(page.locator("#signed-out")).to_be_visible()
    expect(page.locator("#signed-out-why")).to_contain_text("Your session has ended")
    expect(page.locator("#account")).to_be_hidden()
    assert refresh_token(page) is None
    # Not signed in at all in this tab:
    page.goto("/account")
    expect(page.locator("#signed-out-why")).to_have_text("You are not signed in in this tab.")


def test_the_access_token_is_refreshed_before_it_expires(page):
    email, password, _ = account()
    page.clock.install()
    signed_in(page, email, password)
    first = refresh_token(page)
    assert first
    issued = []
    page.on("response", lambda r: issued.append(r.json()["access_token"])
            if r.url.endswith("/auth/refresh") and r.status == 200 else None)
    # Past the point a minute before the 15-minute access token expires: the page's timer fires.
    page.clock.run_for("14:01")
    deadline = time.monotonic() + 30
    while refresh_token(page) == first or not issued:
        assert time.monotonic() < deadline, "no silent refresh"
        time.sleep(0.1)
    # The access token held in memory is the new one: the next bearer call sends it, and works.
    with page.expect_request(lambda r: r.url.endswith("/auth/logout")) as logout:
        page.get_by_role("button", name="Log out", exact=True).click()
    assert logout.value.headers["authorization"] == f"Bearer {issued[-1]}"
    expect(page.locator("#signed-out-why")).to_have_text("You logged out.")
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []


def test_only_the_refresh_token_is_stored_and_only_for_this_tab(page):
    email, password, _ = account()
    signed_in(page, email, password)
    assert page.evaluate("Object.keys(sessionStorage)") == [REFRESH_KEY]
    assert page.evaluate("localStorage.length") == 0
    assert page.context.cookies() == []
    # The access token is in no storage at all.
    assert REFRESH_KEY in page.evaluate("JSON.stringify(sessionStorage)")
    assert "eyJ" not in page.evaluate("JSON.stringify(sessionStorage) + JSON.stringify(localStorage)")


# --- two-step login --------------------------------------------------------------------------


def test_two_step_login_on_sign_in_with_a_code_and_a_recovery_code_then_off(new_context):
    context = new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    email, password, _ = account()
    signed_in(page, email, password)
    expect(page.locator("#user-mfa")).to_have_text("Off")

    # A wrong password starts nothing.
    page.locator("#mfa-start-password").fill("not my password at all")
    page.get_by_role("button", name="Turn on two-step login").click()
    expect(page.locator("#mfa-start-password-error")).to_have_text("The current password is incorrect.")

    authenticator, codes = turn_on_totp(page, password)
    assert len(set(codes)) == 10
    page.get_by_role("button", name="Copy the codes").click()
    expect(status(page, "mfa-codes")).to_contain_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "\n".join(codes)
    page.get_by_role("button", name="I have saved them").click()
    expect(page.locator("#recovery-codes li")).to_have_count(0)
    expect(page.locator("#mfa-off")).to_be_visible()
    expect(page.locator("#user-mfa")).to_have_text("On")

    log_out(page)
    sign_in(page, email, password)
    step = page.locator("#mfa")
    expect(step).to_be_visible()
    expect(page.locator("#signin")).to_be_hidden()
    assert refresh_token(page) is None
    step.get_by_label("Code from your app").fill(authenticator.wrong_code())
    step.get_by_role("button", name="Continue").click()
    expect(page.locator("#mfa-code-error")).to_have_text("The code is not valid, or it was used already.")
    step.get_by_label("Code from your app").fill(authenticator.next_code())
    step.get_by_role("button", name="Continue").click()
    expect_account(page, email)
    expect(page.locator("#sessions-list li[data-current=true]")).to_contain_text("with two-step login")

    log_out(page)
    sign_in(page, email, password)
    page.get_by_role("button", name="Use a recovery code instead").click()
    step.get_by_label("Recovery code").fill(codes[0])
    step.get_by_role("button", name="Continue").click()
    expect_account(page, email)

    # A used recovery code is refused.
    log_out(page)
    sign_in(page, email, password)
    page.get_by_role("button", name="Use a recovery code instead").click()
    step.get_by_label("Recovery code").fill(codes[0])
    step.get_by_role("button", name="Continue").click()
    expect(page.locator("#mfa-recovery-error")).to_have_text("The code is not valid, or it was used already.")
    step.get_by_label("Recovery code").fill(codes[1])
    step.get_by_role("button", name="Continue").click()
    expect_account(page, email)

    # Off, with the password.
    off = page.locator("#mfa-off")
    off.get_by_role("button", name="Use your password instead").click()
    off.get_by_label("Your password").fill(password)
    off.get_by_role("button", name="Turn off two-step login").click()
    expect(page.locator("#mfa-start")).to_be_visible()
    expect(status(page, "mfa-start")).to_contain_text("Two-step login is off")
    expect(page.locator("#user-mfa")).to_have_text("Off")
    log_out(page)
    signed_in(page, email, password)  # no second step now


def test_keyboard_alone_signs_in_with_the_second_step_and_logs_out(page):
    email, password, _ = account()
    signed_in(page, email, password)
    authenticator, _ = turn_on_totp(page, password)
    page.get_by_role("button", name="I have saved them").click()
    log_out(page)

    def tab_to(check: str, limit: int = 60) -> None:
        for _ in range(limit):
            page.keyboard.press("Tab")
            if page.evaluate(f"(() => {{ const e = document.activeElement; return {check}; }})()"):
                return
        pytest.fail(f"Tab never reached {check}")

    page.goto("/")
    tab_to("e.id === 'signin-email'")
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    expect(page.locator("#mfa")).to_be_visible()
    tab_to("e.id === 'mfa-code'")
    page.keyboard.type(authenticator.next_code())
    page.keyboard.press("Enter")
    expect_account(page, email)
    tab_to("e.textContent === 'Log out'")
    page.keyboard.press("Enter")
    expect(page.locator("#signed-out-why")).to_have_text("You logged out.")


# --- headers, CSP, accessibility, screenshots -------------------------------------------------


def test_pages_and_assets_carry_their_headers(page):
    for path in PAGES + ASSETS:
        response = page.request.get(path)
        assert response.status == 200, path
        headers = response.headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cross-origin-opener-policy"] == "same-origin"
        kind = {"css": "text/css", "js": "text/javascript", "svg": "image/svg+xml"}.get(path.rsplit(".", 1)[-1], "text/html")
        assert headers["content-type"].split(";")[0] == kind, (path, headers["content-type"])
        expected = "no-cache" if path in PAGES else "public, max-age=300"
        assert headers["cache-control"] == expected, (path, headers["cache-control"])
        again = page.request.get(path, headers={"If-None-Match": headers["etag"]})
        assert again.status == 304 and again.body() == b"", path
    missing = page.request.get("/assets/nothing.js")
    assert missing.status == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "not_found"


def test_the_policy_refuses_inline_script(page, watch):
    page.goto("/")
    ran = page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.inlineRan = true";
        document.head.append(script);
        return window.inlineRan === true;
    }""")
    assert ran is False
    deadline = time.monotonic() + 10
    while not any("CSP violation: script-src" in p for p in watch.problems):
        assert time.monotonic() < deadline, watch.problems
        page.wait_for_timeout(50)
    # The violations this test caused, and nothing else.
    watch.problems[:] = [p for p in watch.problems
                         if "CSP violation: script-src" not in p and "Executing inline script violates" not in p]


def axe_violations(page: Page, axe_source: str) -> list[dict]:
    page.evaluate(axe_source)
    return page.evaluate("""async () => {
        const result = await axe.run(document, { resultTypes: ["violations"] });
        return result.violations.map((v) => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")),
        }));
    }""")


def test_the_accessibility_check_sees_an_unlabelled_field(page, axe_source):
    # The check below would pass on a page it cannot read: show that it reads ours.
    page.goto("/")
    page.evaluate("document.querySelector('#signin').append(document.createElement('input'))")
    found = {v["id"]: v["impact"] for v in axe_violations(page, axe_source)}
    assert found.get("label") in ("serious", "critical"), found


@pytest.mark.parametrize("width", [320, 1280])
def test_every_page_is_accessible_fits_the_width_and_is_photographed(new_context, axe_source, width):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    email, password, _ = account()
    page = new_context(width=width, height=800).new_page()

    def check(name: str) -> None:
        found = [v for v in axe_violations(page, axe_source) if v["impact"] in ("moderate", "serious", "critical")]
        assert not found, f"{name} at {width} px: {found}"
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width, f"{name} at {width} px is {overflow} px wide"
        page.screenshot(path=SCREENSHOTS / f"{name}-{width}.png", full_page=True)

    page.goto("/")
    check("sign-in")
    # With problems shown (one next to a field, one for the form).
    page.locator("#signin-email").fill(email)
    page.locator("#signin-password").fill("not the password at all")
    page.get_by_role("button", name="Sign in").click()
    expect(status(page, "signin")).to_have_text("The email or password is incorrect.")
    # At this width too, a message appearing moves nothing: the longest detail a field gets.
    signup_button = page.get_by_role("button", name="Create account")
    before = place(signup_button)
    page.locator("#signup-email").fill(new_email("weak"))
    page.locator("#signup-password").fill("password1234")
    signup_button.click()
    expect(page.locator("#signup-password-error")).to_contain_text("too common")
    assert place(signup_button) == before, f"the error moved the form at {width} px"
    page.locator("#signup-email").fill("not an email")
    page.locator("#signup-password").fill(strong_password())
    signup_button.click()
    expect(page.locator("#signup-email-error")).to_contain_text("The email address is not valid")
    assert place(signup_button) == before, f"the error moved the form at {width} px"
    check("sign-in-errors")

    signed_in(page, email, password)
    check("account")
    page.locator("#mfa-start-password").fill(password)
    page.get_by_role("button", name="Turn on two-step login").click()
    expect(page.locator("#mfa-confirm")).to_be_visible()
    check("account-two-step")
    authenticator = Authenticator(page.locator("#mfa-secret").text_content())
    page.locator("#mfa-confirm").get_by_label("Code from your app").fill(authenticator.next_code())
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#recovery-codes li")).to_have_count(10)
    check("account-recovery-codes")
    page.get_by_role("button", name="I have saved them").click()
    expect(page.locator("#mfa-off")).to_be_visible()
    check("account-two-step-on")
    page.get_by_role("button", name="Log out", exact=True).click()
    expect(page.locator("#signed-out")).to_be_visible()
    check("signed-out")
    sign_in(page, email, password)
    expect(page.locator("#mfa")).to_be_visible()
    check("sign-in-second-step")

    page.goto("/verify-email#token=" + "A" * 43)
    check("verify-email")
    page.goto("/reset-password#token=" + "A" * 43)
    check("reset-password")
