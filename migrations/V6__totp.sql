-- Two-step login with TOTP and recovery codes (API.md "Two-step login (TOTP)").

-- Whether the second factor is on is a column of the user's row, not only a row elsewhere: a
-- login that share-locks the user (store::start_session) then sees an enrolment that committed
-- while it waited, as it sees a changed password.
ALTER TABLE users ADD COLUMN mfa_enabled_at timestamptz;

-- How each session was established (RFC 8176 `amr`): its access tokens carry it across
-- refreshes, and its assurance level (`aal`) follows from it.
ALTER TABLE sessions ADD COLUMN amr text[] NOT NULL DEFAULT '{pwd}'
    CONSTRAINT sessions_amr_known CHECK (amr IN ('{pwd}', '{pwd,otp}', '{pwd,mfa}'));

-- The user's authenticator: the 160-bit secret sealed with AES-256-GCM under a key derived from
-- DATA_ENCRYPTION_KEY (purpose `totp-seal`, the user id as associated data). While
-- users.mfa_enabled_at is NULL it is an enrolment waiting for its first code. `last_step` is
-- the time step of the last code accepted; a code is accepted only for a later step, so no
-- code is accepted twice.
CREATE TABLE user_totp (
    user_id        uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    sealed_secret  bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    last_step      bigint      CHECK (last_step >= 0)
);

-- Ten single-use recovery codes per enrolment, stored as HMAC-SHA256 under a key derived from
-- DATA_ENCRYPTION_KEY (purpose `recovery-code`, with the user id), so this table alone cannot
-- test guesses.
CREATE TABLE recovery_codes (
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash        bytea       NOT NULL CHECK (length(hash) = 32),
    created_at  timestamptz NOT NULL,
    used_at     timestamptz,
    PRIMARY KEY (user_id, hash)
);

-- The second step of a login, by the SHA-256 of its mfa_token (256 random bits) only. It is
-- bound to what that login checked: the password (by the SHA-256 of its stored hash, so a
-- change or reset since ends it) and the enrolment (users.mfa_enabled_at). Single use:
-- `session_id` names the session it started, so a retried call finds its own.
CREATE TABLE mfa_challenges (
    hash                  bytea       PRIMARY KEY CHECK (length(hash) = 32),
    user_id               uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_fingerprint  bytea       NOT NULL CHECK (length(password_fingerprint) = 32),
    enrolled_at           timestamptz NOT NULL,
    created_at            timestamptz NOT NULL,
    expires_at            timestamptz NOT NULL,
    failures              integer     NOT NULL DEFAULT 0 CHECK (failures >= 0),
    last_attempt          uuid,
    used_at               timestamptz,
    session_id            uuid,
    source_ip             text,
    user_agent            text,
    CONSTRAINT mfa_challenges_used_consistent CHECK ((used_at IS NULL) = (session_id IS NULL))
);
CREATE INDEX mfa_challenges_user_id_idx ON mfa_challenges (user_id);
CREATE INDEX mfa_challenges_expires_at_idx ON mfa_challenges (expires_at);

-- How an access token's user and session stand: `live`, `user_gone`, `user_inactive` or
-- `session_ended`.
CREATE FUNCTION auth_session_state(
    p_user_id uuid, p_session_id uuid, p_now timestamptz, p_idle_cutoff timestamptz
) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
               WHEN u.id IS NULL THEN 'user_gone'
               WHEN NOT u.is_active THEN 'user_inactive'
               WHEN EXISTS (SELECT 1 FROM sessions s
                            WHERE s.id = p_session_id AND s.user_id = p_user_id AND s.ended_at IS NULL
                              AND s.expires_at > p_now AND s.last_used_at > p_idle_cutoff) THEN 'live'
               ELSE 'session_ended'
           END
    FROM (SELECT 1) one LEFT JOIN users u ON u.id = p_user_id;
$$;

-- A signed-in user's check of a factor (the password or a code) on the TOTP routes, in one
-- round trip: the token's session must be live; the enrolment must be in the state the route
-- needs (`p_require`: `not_enabled` to enrol, `pending` to confirm, `enabled` to turn it off),
-- else the state is `totp_none`, `totp_pending` or `totp_enabled` and nothing is counted; then
-- the attempt is counted against the account's backoffs exactly as a login's, and what the
-- check needs is returned.
CREATE FUNCTION auth_totp_attempt(
    p_user_id uuid, p_session_id uuid, p_now timestamptz, p_idle_cutoff timestamptz,
    p_network text, p_attempt uuid,
    p_after integer, p_account_after integer, p_lock_after integer, p_max_secs float8,
    p_require text
) RETURNS TABLE (state text, outcome text, retry_until timestamptz, email text,
                 hashed_password text, sealed_secret bytea)
LANGUAGE plpgsql AS $$
DECLARE
    session_state text;
    u users%ROWTYPE;
    t user_totp%ROWTYPE;
    status text;
    a record;
BEGIN
    session_state := auth_session_state(p_user_id, p_session_id, p_now, p_idle_cutoff);
    IF session_state <> 'live' THEN
        RETURN QUERY SELECT session_state, NULL::text, NULL::timestamptz, NULL::text, NULL::text, NULL::bytea;
        RETURN;
    END IF;
    SELECT * INTO u FROM users x WHERE x.id = p_user_id;
    SELECT * INTO t FROM user_totp x WHERE x.user_id = p_user_id;
    status := CASE WHEN u.mfa_enabled_at IS NOT NULL THEN 'enabled'
                   WHEN t.user_id IS NOT NULL THEN 'pending'
                   ELSE 'none' END;
    IF NOT (CASE p_require WHEN 'not_enabled' THEN status <> 'enabled' ELSE status = p_require END) THEN
        RETURN QUERY SELECT 'totp_' || status, NULL::text, NULL::timestamptz, NULL::text, NULL::text, NULL::bytea;
        RETURN;
    END IF;
    SELECT * INTO a FROM auth_login_attempt(u.email, sha256(convert_to(u.email, 'UTF8')), p_network,
        p_attempt, p_after, p_account_after, p_lock_after, p_max_secs, p_now);
    RETURN QUERY SELECT 'live', a.outcome, a.retry_until, u.email, u.hashed_password, t.sealed_secret;
END;
$$;

-- Starts (or restarts: the pending secret is replaced) an enrolment after the password check,
-- while the hash is the one checked and the caller's session is live: `pending`, or `enabled`
-- when TOTP is on already, or `conflict`. The password was right, so the attempt counted
-- before its check is no failure.
CREATE FUNCTION auth_totp_enrol(
    p_user_id uuid, p_session_id uuid, p_checked_hash text, p_sealed bytea,
    p_account bytea, p_network text, p_now timestamptz, p_source_ip text, p_user_agent text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    u users%ROWTYPE;
BEGIN
    SELECT * INTO u FROM users x WHERE x.id = p_user_id AND x.is_active AND x.hashed_password = p_checked_hash
    FOR NO KEY UPDATE;
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM sessions c WHERE c.id = p_session_id AND c.user_id = p_user_id
                                AND c.ended_at IS NULL) THEN
        RETURN 'conflict';
    END IF;
    DELETE FROM login_throttle t WHERE t.account = p_account AND t.network IN ('*', p_network);
    IF u.mfa_enabled_at IS NOT NULL THEN
        RETURN 'enabled';
    END IF;
    INSERT INTO user_totp (user_id, sealed_secret, created_at) VALUES (p_user_id, p_sealed, p_now)
    ON CONFLICT (user_id) DO UPDATE SET sealed_secret = excluded.sealed_secret,
                                        created_at = excluded.created_at, last_step = NULL;
    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent)
    VALUES (p_now, 'mfa.enrolment_started', p_user_id, p_session_id, p_source_ip, p_user_agent);
    RETURN 'pending';
END;
$$;

-- Confirms the pending enrolment whose secret (`p_sealed`) accepted a code for `p_step`: TOTP
-- is on, the recovery codes are stored (replacing any older ones), every other session of the
-- user ends, the backoffs of this network and account-wide are lifted, the notice is queued,
-- the audit row written. `enabled`, or `conflict` when the enrolment was replaced, confirmed or
-- the session ended meanwhile. A retry of this very call (its `p_now`) answers `enabled`.
CREATE FUNCTION auth_totp_confirm(
    p_user_id uuid, p_session_id uuid, p_sealed bytea, p_step bigint, p_codes bytea[],
    p_account bytea, p_network text, p_now timestamptz, p_request uuid,
    p_message uuid, p_kind text, p_mail bytea, p_lease_until timestamptz,
    p_source_ip text, p_user_agent text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    u users%ROWTYPE;
    t user_totp%ROWTYPE;
BEGIN
    SELECT * INTO u FROM users x WHERE x.id = p_user_id AND x.is_active FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'conflict';
    END IF;
    SELECT * INTO t FROM user_totp x WHERE x.user_id = p_user_id FOR UPDATE;
    IF NOT FOUND OR t.sealed_secret <> p_sealed THEN
        RETURN 'conflict';
    END IF;
    IF u.mfa_enabled_at IS NOT NULL THEN
        RETURN CASE WHEN u.mfa_enabled_at = p_now AND t.last_step = p_step THEN 'enabled' ELSE 'conflict' END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM sessions c WHERE c.id = p_session_id AND c.user_id = p_user_id
                   AND c.ended_at IS NULL) THEN
        RETURN 'conflict';
    END IF;
    UPDATE users x SET mfa_enabled_at = p_now, updated_at = p_now WHERE x.id = p_user_id;
    UPDATE user_totp x SET last_step = p_step WHERE x.user_id = p_user_id;
    DELETE FROM recovery_codes r WHERE r.user_id = p_user_id;
    INSERT INTO recovery_codes (user_id, hash, created_at)
    SELECT p_user_id, h, p_now FROM unnest(p_codes) h;
    UPDATE sessions s SET ended_at = p_now, ended_reason = 'mfa_enabled', ended_by = p_request
    WHERE s.user_id = p_user_id AND s.ended_at IS NULL AND s.id <> p_session_id;
    DELETE FROM login_throttle l WHERE l.account = p_account AND l.network IN ('*', p_network);
    IF p_mail IS NOT NULL THEN
        INSERT INTO outbox (id, user_id, kind, sealed, attempts, next_attempt_at, created_at)
        VALUES (p_message, p_user_id, p_kind, p_mail, 1, p_lease_until, p_now);
    END IF;
    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent)
    VALUES (p_now, 'mfa.enrolled', p_user_id, p_session_id, p_source_ip, p_user_agent);
    RETURN 'enabled';
END;
$$;

-- Turns TOTP off after a check of the password (`p_checked_hash`, still the stored hash) or of
-- a code (`p_step`, later than the last accepted one, else `replayed`): the secret, the
-- recovery codes and pending login challenges go, every other session ends, the backoffs of
-- this network and account-wide are lifted, the notice is queued, the audit row written.
-- `disabled`, or `conflict` when TOTP went off, was re-enrolled or the session ended meanwhile.
CREATE FUNCTION auth_totp_disable(
    p_user_id uuid, p_session_id uuid, p_checked_hash text, p_sealed bytea, p_step bigint,
    p_account bytea, p_network text, p_now timestamptz, p_request uuid,
    p_message uuid, p_kind text, p_mail bytea, p_lease_until timestamptz,
    p_source_ip text, p_user_agent text
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    u users%ROWTYPE;
    t user_totp%ROWTYPE;
BEGIN
    SELECT * INTO u FROM users x WHERE x.id = p_user_id AND x.is_active
      AND (p_checked_hash IS NULL OR x.hashed_password = p_checked_hash)
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 'conflict';
    END IF;
    SELECT * INTO t FROM user_totp x WHERE x.user_id = p_user_id FOR UPDATE;
    IF u.mfa_enabled_at IS NULL OR NOT FOUND OR t.sealed_secret <> p_sealed THEN
        -- Off already: by this very call, retried after a lost answer, or by another.
        RETURN CASE WHEN EXISTS (SELECT 1 FROM auth_events e WHERE e.user_id = p_user_id
                                 AND e.event = 'mfa.disabled' AND e.occurred_at = p_now
                                 AND e.session_id = p_session_id)
                    THEN 'disabled' ELSE 'conflict' END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM sessions c WHERE c.id = p_session_id AND c.user_id = p_user_id
                   AND c.ended_at IS NULL) THEN
        RETURN 'conflict';
    END IF;
    IF p_step IS NOT NULL AND coalesce(t.last_step, -1) >= p_step THEN
        RETURN 'replayed';
    END IF;
    UPDATE users x SET mfa_enabled_at = NULL, updated_at = p_now WHERE x.id = p_user_id;
    DELETE FROM user_totp x WHERE x.user_id = p_user_id;
    DELETE FROM recovery_codes r WHERE r.user_id = p_user_id;
    DELETE FROM mfa_challenges c WHERE c.user_id = p_user_id;
    UPDATE sessions s SET ended_at = p_now, ended_reason = 'mfa_disabled', ended_by = p_request
    WHERE s.user_id = p_user_id AND s.ended_at IS NULL AND s.id <> p_session_id;
    DELETE FROM login_throttle l WHERE l.account = p_account AND l.network IN ('*', p_network);
    IF p_mail IS NOT NULL THEN
        INSERT INTO outbox (id, user_id, kind, sealed, attempts, next_attempt_at, created_at)
        VALUES (p_message, p_user_id, p_kind, p_mail, 1, p_lease_until, p_now);
    END IF;
    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent, reason)
    VALUES (p_now, 'mfa.disabled', p_user_id, p_session_id, p_source_ip, p_user_agent,
            CASE WHEN p_step IS NULL THEN 'password' ELSE 'code' END);
    RETURN 'disabled';
END;
$$;

-- The first round trip of login's second step: how the challenge stands (`live`, `invalid`:
-- unknown, used, or no longer matching the password or the enrolment it was made for,
-- `exhausted` after `p_max_failures` wrong codes, `expired`), and for a live one the attempt
-- counted against the account's backoffs exactly as a login's, with the sealed secret.
CREATE FUNCTION auth_mfa_attempt(
    p_challenge bytea, p_network text, p_attempt uuid, p_max_failures integer,
    p_after integer, p_account_after integer, p_lock_after integer, p_max_secs float8,
    p_now timestamptz
) RETURNS TABLE (state text, outcome text, retry_until timestamptz, user_id uuid, sealed_secret bytea)
LANGUAGE plpgsql AS $$
DECLARE
    c mfa_challenges%ROWTYPE;
    u users%ROWTYPE;
    a record;
BEGIN
    SELECT * INTO c FROM mfa_challenges x WHERE x.hash = p_challenge;
    IF FOUND THEN
        SELECT * INTO u FROM users x WHERE x.id = c.user_id;
    END IF;
    IF c.hash IS NULL OR c.used_at IS NOT NULL OR u.id IS NULL OR NOT u.is_active
       OR sha256(convert_to(u.hashed_password, 'UTF8')) <> c.password_fingerprint
       OR u.mfa_enabled_at IS DISTINCT FROM c.enrolled_at THEN
        RETURN QUERY SELECT 'invalid', NULL::text, NULL::timestamptz, c.user_id, NULL::bytea;
        RETURN;
    END IF;
    IF c.failures >= p_max_failures THEN
        RETURN QUERY SELECT 'exhausted', NULL::text, NULL::timestamptz, c.user_id, NULL::bytea;
        RETURN;
    END IF;
    IF c.expires_at <= p_now THEN
        RETURN QUERY SELECT 'expired', NULL::text, NULL::timestamptz, c.user_id, NULL::bytea;
        RETURN;
    END IF;
    SELECT * INTO a FROM auth_login_attempt(u.email, sha256(convert_to(u.email, 'UTF8')), p_network,
        p_attempt, p_after, p_account_after, p_lock_after, p_max_secs, p_now);
    RETURN QUERY SELECT 'live', a.outcome, a.retry_until, u.id,
                        (SELECT t.sealed_secret FROM user_totp t WHERE t.user_id = u.id);
END;
$$;

-- The second round trip of login's second step, once the code was checked: `p_step` is the
-- step of the code that matched (NULL: none did), `p_recovery` the recovery code's HMAC. A
-- step later than the last accepted one, or an unused recovery code, finishes the login:
-- the challenge is used, the session (with its `amr`) and its first refresh token start, the
-- backoffs of this network and account-wide are cleared, the audit rows written — `succeeded`.
-- Anything else is a wrong code (`wrong`, with the challenge's failures now): counted once per
-- attempt, audited. `invalid` when the challenge ended meanwhile. A retry of the call that
-- succeeded finds its own session and answers `succeeded` again.
CREATE FUNCTION auth_mfa_finish(
    p_challenge bytea, p_step bigint, p_recovery bytea, p_session uuid, p_refresh bytea,
    p_network text, p_attempt uuid, p_max_failures integer,
    p_now timestamptz, p_expires_at timestamptz, p_source_ip text, p_user_agent text
) RETURNS TABLE (outcome text, user_id uuid, failures integer, email_verified boolean, amr text[])
LANGUAGE plpgsql AS $$
DECLARE
    c mfa_challenges%ROWTYPE;
    u users%ROWTYPE;
    method text;
    accepted boolean := false;
BEGIN
    -- The user's row first, as every statement that locks a user and its rows does.
    PERFORM 1 FROM users x WHERE x.id = (SELECT m.user_id FROM mfa_challenges m WHERE m.hash = p_challenge)
    FOR NO KEY UPDATE;
    SELECT * INTO c FROM mfa_challenges m WHERE m.hash = p_challenge FOR UPDATE;
    IF FOUND THEN
        SELECT * INTO u FROM users x WHERE x.id = c.user_id;
    END IF;
    IF c.used_at IS NOT NULL AND c.session_id = p_session THEN
        RETURN QUERY SELECT 'succeeded', u.id, c.failures, u.email_verified_at IS NOT NULL,
                            (SELECT s.amr FROM sessions s WHERE s.id = p_session);
        RETURN;
    END IF;
    IF c.hash IS NULL OR c.used_at IS NOT NULL OR c.failures >= p_max_failures OR c.expires_at <= p_now
       OR u.id IS NULL OR NOT u.is_active
       OR sha256(convert_to(u.hashed_password, 'UTF8')) <> c.password_fingerprint
       OR u.mfa_enabled_at IS DISTINCT FROM c.enrolled_at THEN
        RETURN QUERY SELECT 'invalid', c.user_id, c.failures, NULL::boolean, NULL::text[];
        RETURN;
    END IF;
    IF p_step IS NOT NULL THEN
        method := 'otp';
        UPDATE user_totp t SET last_step = p_step
        WHERE t.user_id = u.id AND coalesce(t.last_step, -1) < p_step;
        accepted := FOUND;
    ELSIF p_recovery IS NOT NULL THEN
        method := 'mfa';
        UPDATE recovery_codes r SET used_at = p_now
        WHERE r.user_id = u.id AND r.hash = p_recovery AND r.used_at IS NULL;
        accepted := FOUND;
    END IF;
    IF NOT accepted THEN
        IF c.last_attempt IS DISTINCT FROM p_attempt THEN
            UPDATE mfa_challenges m SET failures = m.failures + 1, last_attempt = p_attempt
            WHERE m.hash = p_challenge RETURNING m.failures INTO c.failures;
            INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent, reason)
            VALUES (p_now, 'mfa.challenge_failed', u.id, p_source_ip, p_user_agent,
                    CASE WHEN p_step IS NOT NULL THEN 'replayed'
                         WHEN p_recovery IS NOT NULL THEN 'bad_recovery_code'
                         ELSE 'bad_code' END);
        END IF;
        RETURN QUERY SELECT 'wrong', u.id, c.failures, NULL::boolean, NULL::text[];
        RETURN;
    END IF;
    UPDATE mfa_challenges m SET used_at = p_now, session_id = p_session WHERE m.hash = p_challenge;
    INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, source_ip, user_agent, amr)
    VALUES (p_session, u.id, p_now, p_now, p_expires_at, p_source_ip, p_user_agent, ARRAY['pwd', method]);
    INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES (p_refresh, p_session, p_now);
    DELETE FROM login_throttle l
    WHERE l.account = sha256(convert_to(u.email, 'UTF8')) AND l.network IN ('*', p_network);
    IF method = 'mfa' THEN
        INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent)
        VALUES (p_now, 'mfa.recovery_code_used', u.id, p_session, p_source_ip, p_user_agent);
    END IF;
    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent, reason)
    VALUES (p_now, 'login.succeeded', u.id, p_session, p_source_ip, p_user_agent, method);
    RETURN QUERY SELECT 'succeeded', u.id, c.failures, u.email_verified_at IS NOT NULL, ARRAY['pwd', method];
END;
$$;

-- An operator's reset (`authctl mfa reset`) for a user who lost the device and the recovery
-- codes: TOTP off, its secret, codes and challenges gone, every session ended, audited.
-- Returns whether the account exists.
CREATE FUNCTION auth_mfa_reset(
    p_email text, p_now timestamptz, p_request uuid, p_source_ip text, p_user_agent text
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    uid uuid;
BEGIN
    SELECT x.id INTO uid FROM users x WHERE x.email = p_email FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE users x SET mfa_enabled_at = NULL, updated_at = p_now WHERE x.id = uid;
    DELETE FROM user_totp x WHERE x.user_id = uid;
    DELETE FROM recovery_codes r WHERE r.user_id = uid;
    DELETE FROM mfa_challenges c WHERE c.user_id = uid;
    UPDATE sessions s SET ended_at = p_now, ended_reason = 'mfa_reset', ended_by = p_request
    WHERE s.user_id = uid AND s.ended_at IS NULL;
    INSERT INTO auth_events (occurred_at, event, user_id, source_ip, user_agent, reason)
    VALUES (p_now, 'mfa.disabled', uid, p_source_ip, p_user_agent, 'operator');
    RETURN true;
END;
$$;
