-- Mail and account recovery (API.md "Mail", "Account"): proven email addresses, one-time link
-- tokens, the transactional outbox, per-recipient mail limits, and sessions that remember where
-- they were started.

ALTER TABLE users ADD COLUMN email_verified_at timestamptz;
ALTER TABLE sessions ADD COLUMN user_agent text, ADD COLUMN source_ip text;

-- Verification and reset links, by SHA-256 hash only (256 random bits). A used token keeps its
-- row until it expires, marked with the request that used it, so a retry after a lost answer
-- is recognized; a newer token of the same purpose deletes the older ones.
CREATE TABLE link_tokens (
    hash        bytea       PRIMARY KEY CHECK (length(hash) = 32),
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     text        NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    used_by     uuid,
    CONSTRAINT link_tokens_used_consistent CHECK ((used_at IS NULL) = (used_by IS NULL))
);
CREATE INDEX link_tokens_user_purpose_idx ON link_tokens (user_id, purpose);
CREATE INDEX link_tokens_expires_at_idx ON link_tokens (expires_at);

-- The outbox: a message is written by the statement of the action that causes it, and its
-- body (recipient, notice, link token) is sealed with AES-256-GCM under a key derived from
-- DATA_ENCRYPTION_KEY. The body is deleted once the message is sent or has failed for good.
-- `next_attempt_at` doubles as a lease: whoever is delivering has moved it past its deadline.
CREATE TABLE outbox (
    id               uuid        PRIMARY KEY,
    user_id          uuid        REFERENCES users (id) ON DELETE CASCADE,
    kind             text        NOT NULL,
    sealed           bytea,
    status           text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    last_error       text,
    CONSTRAINT outbox_body_while_pending CHECK ((status = 'pending') = (sealed IS NOT NULL)),
    CONSTRAINT outbox_finished_consistent CHECK ((status = 'pending') = (finished_at IS NULL))
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_finished_at_idx ON outbox (finished_at) WHERE status <> 'pending';

-- Per recipient (SHA-256 of the normalized address, or of the trimmed, lower-cased input),
-- the mails people asked for (forgot, resend), whether or not an account exists: one row per
-- counted request in the last hour.
CREATE TABLE mail_requests (
    recipient   bytea       NOT NULL CHECK (length(recipient) = 32),
    at          timestamptz NOT NULL,
    request_id  uuid        NOT NULL
);
CREATE INDEX mail_requests_recipient_at_idx ON mail_requests (recipient, at);
CREATE INDEX mail_requests_at_idx ON mail_requests (at);

-- A requested mail (forgot: `reset_password`, resend: `verify_email`), in one round trip: the
-- recipient's limits, then — only when the account qualifies (active; for verification also
-- still unverified) — the new link token replacing older ones of its purpose, the sealed
-- message and the audit row. The caller did the same work either way (the token and the sealed
-- message exist before the call), so the answer and the work tell nothing about the account.
-- The message id names the request: a retried call finds its own and answers as the first did.
CREATE FUNCTION auth_mail_request(
    p_purpose text, p_recipient bytea, p_email text, p_token bytea, p_expires_at timestamptz,
    p_message uuid, p_kind text, p_sealed bytea, p_lease_until timestamptz,
    p_interval interval, p_max_per_hour integer, p_now timestamptz,
    p_source_ip text, p_user_agent text
) RETURNS TABLE (outcome text, retry_after_secs integer, user_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    oldest timestamptz;
    latest timestamptz;
    uid uuid;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('auth_mail_request:' || encode(p_recipient, 'hex'), 0));
    IF EXISTS (SELECT 1 FROM mail_requests r WHERE r.recipient = p_recipient AND r.request_id = p_message) THEN
        RETURN QUERY SELECT CASE WHEN o.id IS NULL THEN 'accepted' ELSE 'queued' END, 0, o.user_id
                     FROM (SELECT 1) one LEFT JOIN outbox o ON o.id = p_message;
        RETURN;
    END IF;
    DELETE FROM mail_requests r WHERE r.recipient = p_recipient AND r.at <= p_now - interval '1 hour';
    SELECT count(*), min(r.at), max(r.at) INTO n, oldest, latest
    FROM mail_requests r WHERE r.recipient = p_recipient;
    -- Over either limit: the answer names when both allow the next request.
    IF latest > p_now - p_interval OR n >= p_max_per_hour THEN
        RETURN QUERY SELECT 'limited',
            GREATEST(1, CEIL(extract(epoch FROM (GREATEST(
                CASE WHEN latest > p_now - p_interval THEN latest + p_interval END,
                CASE WHEN n >= p_max_per_hour THEN oldest + interval '1 hour' END) - p_now))))::integer,
            NULL::uuid;
        RETURN;
    END IF;
    INSERT INTO mail_requests (recipient, at, request_id) VALUES (p_recipient, p_now, p_message);

    SELECT u.id INTO uid FROM users u
    WHERE u.email = p_email AND u.is_active
      AND (p_purpose <> 'verify_email' OR u.email_verified_at IS NULL)
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'accepted', 0, NULL::uuid;
        RETURN;
    END IF;
    DELETE FROM link_tokens t WHERE t.user_id = uid AND t.purpose = p_purpose;
    INSERT INTO link_tokens (hash, user_id, purpose, created_at, expires_at)
    VALUES (p_token, uid, p_purpose, p_now, p_expires_at);
    INSERT INTO outbox (id, user_id, kind, sealed, attempts, next_attempt_at, created_at)
    VALUES (p_message, uid, p_kind, p_sealed, 1, p_lease_until, p_now);
    INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent)
    VALUES (p_now, CASE p_purpose WHEN 'verify_email' THEN 'email.verification_sent'
                                  ELSE 'password.reset_requested' END,
            uid, p_source_ip, p_user_agent);
    RETURN QUERY SELECT 'queued', 0, uid;
END;
$$;

-- How a presented link token stands, without using it: `valid`, `expired` or `invalid`
-- (unknown, used, replaced, or of another purpose), with its user's address when valid.
CREATE FUNCTION auth_link_state(p_token bytea, p_purpose text, p_now timestamptz)
RETURNS TABLE (state text, user_id uuid, email text)
LANGUAGE sql STABLE AS $$
    SELECT CASE
               WHEN t.hash IS NULL OR t.purpose <> p_purpose OR t.used_at IS NOT NULL OR u.id IS NULL
                   THEN 'invalid'
               WHEN t.expires_at <= p_now THEN 'expired'
               ELSE 'valid'
           END,
           u.id, u.email
    FROM (SELECT 1) one
    LEFT JOIN link_tokens t ON t.hash = p_token
    LEFT JOIN users u ON u.id = t.user_id;
$$;

-- Uses a link token: locks its user's row, then the token, checks it again (two uses race: one
-- wins), and marks it used by `p_request`. A retry of the call that used it finds its own mark
-- and answers `valid` again. The caller's statement does the rest in the same transaction.
-- Every statement that locks a user's row and that user's tokens or sessions locks the user
-- first, so they take turns and never deadlock.
CREATE FUNCTION auth_use_link(p_token bytea, p_purpose text, p_now timestamptz, p_request uuid)
RETURNS TABLE (state text, user_id uuid, retried boolean)
LANGUAGE plpgsql AS $$
DECLARE
    t link_tokens%ROWTYPE;
BEGIN
    PERFORM 1 FROM users u WHERE u.id = (SELECT l.user_id FROM link_tokens l WHERE l.hash = p_token)
    FOR NO KEY UPDATE;
    SELECT * INTO t FROM link_tokens l WHERE l.hash = p_token FOR UPDATE;
    IF NOT FOUND OR t.purpose <> p_purpose THEN
        RETURN QUERY SELECT 'invalid', NULL::uuid, false;
    ELSIF t.used_at IS NOT NULL THEN
        IF t.used_by = p_request THEN
            RETURN QUERY SELECT 'valid', t.user_id, true;
        ELSE
            RETURN QUERY SELECT 'invalid', NULL::uuid, false;
        END IF;
    ELSIF t.expires_at <= p_now THEN
        RETURN QUERY SELECT 'expired', NULL::uuid, false;
    ELSE
        UPDATE link_tokens l SET used_at = p_now, used_by = p_request WHERE l.hash = p_token;
        RETURN QUERY SELECT 'valid', t.user_id, false;
    END IF;
END;
$$;

-- Verifies an email address with its link, and writes the audit row.
CREATE FUNCTION auth_verify_email(
    p_token bytea, p_now timestamptz, p_request uuid, p_source_ip text, p_user_agent text
) RETURNS TABLE (state text, id uuid, email text, is_active boolean, created_at timestamptz,
                 email_verified boolean)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
BEGIN
    SELECT * INTO l FROM auth_use_link(p_token, 'verify_email', p_now, p_request);
    IF l.state <> 'valid' THEN
        RETURN QUERY SELECT l.state, NULL::uuid, NULL::text, NULL::boolean, NULL::timestamptz, NULL::boolean;
        RETURN;
    END IF;
    IF NOT l.retried THEN
        UPDATE users u SET email_verified_at = coalesce(u.email_verified_at, p_now), updated_at = p_now
        WHERE u.id = l.user_id;
        INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent)
        VALUES (p_now, 'email.verified', l.user_id, p_source_ip, p_user_agent);
    END IF;
    RETURN QUERY SELECT 'valid', u.id, u.email, u.is_active, u.created_at, u.email_verified_at IS NOT NULL
                 FROM users u WHERE u.id = l.user_id;
END;
$$;

-- Resets a password with its link, atomically: the new hash, every session of the user ended
-- (their access and refresh tokens stop at once), the account's lock and backoffs lifted, the
-- address marked verified (the mailbox was proven), the token used, the notice queued, the
-- audit row written.
CREATE FUNCTION auth_reset_password(
    p_token bytea, p_hash text, p_account bytea, p_now timestamptz, p_request uuid,
    p_message uuid, p_kind text, p_sealed bytea, p_lease_until timestamptz,
    p_source_ip text, p_user_agent text
) RETURNS TABLE (state text, user_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    l record;
BEGIN
    SELECT * INTO l FROM auth_use_link(p_token, 'reset_password', p_now, p_request);
    IF l.state <> 'valid' OR l.retried THEN
        RETURN QUERY SELECT l.state, l.user_id;
        RETURN;
    END IF;
    UPDATE users u SET hashed_password = p_hash,
                       email_verified_at = coalesce(u.email_verified_at, p_now),
                       updated_at = p_now
    WHERE u.id = l.user_id;
    UPDATE sessions s SET ended_at = p_now, ended_reason = 'password_reset', ended_by = p_request
    WHERE s.user_id = l.user_id AND s.ended_at IS NULL;
    DELETE FROM login_throttle t WHERE t.account = p_account;
    DELETE FROM link_tokens t WHERE t.user_id = l.user_id AND t.purpose = 'reset_password' AND t.hash <> p_token;
    IF p_sealed IS NOT NULL THEN
        INSERT INTO outbox (id, user_id, kind, sealed, attempts, next_attempt_at, created_at)
        VALUES (p_message, l.user_id, p_kind, p_sealed, 1, p_lease_until, p_now);
    END IF;
    INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent)
    VALUES (p_now, 'password.reset', l.user_id, p_source_ip, p_user_agent);
    RETURN QUERY SELECT 'valid', l.user_id;
END;
$$;

-- A password check of a signed-in user (change password, delete account): the token's session
-- must be live and its user active; then the attempt is counted against the account's backoffs
-- exactly as a login's (auth_login_attempt, keyed by SHA-256 of the stored, normalized email —
-- what store::account_key computes), and the hash is returned for the check.
CREATE FUNCTION auth_reauth_attempt(
    p_user_id uuid, p_session_id uuid, p_now timestamptz, p_idle_cutoff timestamptz,
    p_network text, p_attempt uuid,
    p_after integer, p_account_after integer, p_lock_after integer, p_max_secs float8
) RETURNS TABLE (state text, outcome text, retry_until timestamptz, email text, hashed_password text)
LANGUAGE plpgsql AS $$
DECLARE
    u users%ROWTYPE;
    live boolean;
    a record;
BEGIN
    SELECT * INTO u FROM users x WHERE x.id = p_user_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'user_gone', NULL::text, NULL::timestamptz, NULL::text, NULL::text;
        RETURN;
    END IF;
    IF NOT u.is_active THEN
        RETURN QUERY SELECT 'user_inactive', NULL::text, NULL::timestamptz, NULL::text, NULL::text;
        RETURN;
    END IF;
    SELECT coalesce(bool_or(s.ended_at IS NULL AND s.expires_at > p_now AND s.last_used_at > p_idle_cutoff), false)
    INTO live FROM sessions s WHERE s.id = p_session_id AND s.user_id = p_user_id;
    IF NOT live THEN
        RETURN QUERY SELECT 'session_ended', NULL::text, NULL::timestamptz, NULL::text, NULL::text;
        RETURN;
    END IF;
    SELECT * INTO a FROM auth_login_attempt(u.email, sha256(convert_to(u.email, 'UTF8')), p_network,
        p_attempt, p_after, p_account_after, p_lock_after, p_max_secs, p_now);
    RETURN QUERY SELECT 'live', a.outcome, a.retry_until, u.email, u.hashed_password;
END;
$$;

-- Changes a signed-in user's password after its check: only while the hash is still the one
-- checked (a concurrent change wins) and the caller's session is live. Every other session of
-- the user ends, the backoffs are lifted, the notice is queued, the audit row written.
CREATE FUNCTION auth_change_password(
    p_user_id uuid, p_session_id uuid, p_old_hash text, p_new_hash text, p_account bytea,
    p_now timestamptz, p_request uuid,
    p_message uuid, p_kind text, p_sealed bytea, p_lease_until timestamptz,
    p_source_ip text, p_user_agent text
) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    -- The user's row first (a retry racing its own first try waits for it, then sees it).
    PERFORM 1 FROM users u WHERE u.id = p_user_id FOR NO KEY UPDATE;
    -- A hash is salted, so a stored hash equal to the new one means this very call, retried.
    IF EXISTS (SELECT 1 FROM users u WHERE u.id = p_user_id AND u.hashed_password = p_new_hash) THEN
        RETURN 'changed';
    END IF;
    UPDATE users u SET hashed_password = p_new_hash, updated_at = p_now
    WHERE u.id = p_user_id AND u.hashed_password = p_old_hash AND u.is_active
      AND EXISTS (SELECT 1 FROM sessions c WHERE c.id = p_session_id AND c.user_id = p_user_id
                  AND c.ended_at IS NULL);
    IF NOT FOUND THEN
        RETURN 'conflict';
    END IF;
    UPDATE sessions s SET ended_at = p_now, ended_reason = 'password_changed', ended_by = p_request
    WHERE s.user_id = p_user_id AND s.ended_at IS NULL AND s.id <> p_session_id;
    DELETE FROM login_throttle t WHERE t.account = p_account;
    IF p_sealed IS NOT NULL THEN
        INSERT INTO outbox (id, user_id, kind, sealed, attempts, next_attempt_at, created_at)
        VALUES (p_message, p_user_id, p_kind, p_sealed, 1, p_lease_until, p_now);
    END IF;
    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent)
    VALUES (p_now, 'password.changed', p_user_id, p_session_id, p_source_ip, p_user_agent);
    RETURN 'changed';
END;
$$;

-- Deletes a signed-in user after its password check, while the hash is the one checked: the
-- user row goes, and with it (ON DELETE CASCADE) its sessions, refresh tokens, link tokens and
-- pending mail; its backoff rows go too. Audit rows keep the user id.
CREATE FUNCTION auth_delete_user(
    p_user_id uuid, p_session_id uuid, p_hash text, p_account bytea, p_now timestamptz,
    p_source_ip text, p_user_agent text
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- The user's refresh tokens first, as a refresh locks a token before its session: the
    -- cascade below locks sessions before their tokens, which would deadlock with a refresh.
    PERFORM 1 FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id
    WHERE s.user_id = p_user_id FOR UPDATE OF r;
    DELETE FROM users u WHERE u.id = p_user_id AND u.hashed_password = p_hash;
    IF NOT FOUND THEN
        -- Gone already: by this very call, retried after a lost answer, or by another.
        RETURN EXISTS (SELECT 1 FROM auth_events e WHERE e.user_id = p_user_id AND e.event = 'user.deleted');
    END IF;
    DELETE FROM login_throttle t WHERE t.account = p_account;
    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent)
    VALUES (p_now, 'user.deleted', p_user_id, p_session_id, p_source_ip, p_user_agent);
    RETURN true;
END;
$$;

-- Ends one of the caller's sessions (`p_target`), if the caller's own session is live and the
-- target is a live session of the same user. The user row is locked first, as in
-- auth_end_sessions. A retry of a call that ended it finds its own `p_request`.
CREATE FUNCTION auth_revoke_session(
    p_user_id uuid, p_session_id uuid, p_target uuid, p_now timestamptz, p_idle_cutoff timestamptz,
    p_request uuid, p_source_ip text, p_user_agent text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    s sessions%ROWTYPE;
BEGIN
    PERFORM 1 FROM users u WHERE u.id = p_user_id AND u.is_active FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'unauthorized';
    END IF;
    SELECT * INTO s FROM sessions x WHERE x.id = p_target AND x.user_id = p_user_id FOR UPDATE;
    IF FOUND AND s.ended_by IS NOT DISTINCT FROM p_request AND s.ended_at IS NOT NULL THEN
        RETURN 'revoked';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM sessions c WHERE c.id = p_session_id AND c.user_id = p_user_id
                   AND c.ended_at IS NULL AND c.expires_at > p_now AND c.last_used_at > p_idle_cutoff) THEN
        RETURN 'unauthorized';
    END IF;
    IF NOT FOUND OR s.ended_at IS NOT NULL OR s.expires_at <= p_now OR s.last_used_at <= p_idle_cutoff THEN
        RETURN 'not_found';
    END IF;
    UPDATE sessions x SET ended_at = p_now, ended_reason = 'revoked', ended_by = p_request WHERE x.id = p_target;
    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent, reason)
    VALUES (p_now, 'session.revoked', p_user_id, p_target, p_source_ip, p_user_agent,
            CASE WHEN p_target = p_session_id THEN 'own' ELSE 'other' END);
    RETURN 'revoked';
END;
$$;

-- The mailer's claim: the next due message, locked so a concurrent mailer skips it, with its
-- lease moved past the delivery attempt (the retry backoff), in one statement.
CREATE FUNCTION auth_mail_claim(p_now timestamptz, p_base_secs float8, p_max_secs float8)
RETURNS TABLE (id uuid, sealed bytea, attempts integer, kind text, user_id uuid)
LANGUAGE sql AS $$
    UPDATE outbox o SET attempts = o.attempts + 1,
                        next_attempt_at = p_now + make_interval(secs => LEAST(p_max_secs,
                            p_base_secs * power(2, LEAST(o.attempts, 20))))
    WHERE o.id = (SELECT d.id FROM outbox d
                  WHERE d.status = 'pending' AND d.next_attempt_at <= p_now
                  ORDER BY d.next_attempt_at
                  LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING o.id, o.sealed, o.attempts, o.kind, o.user_id;
$$;
