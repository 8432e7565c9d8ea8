-- Sessions and rotating refresh tokens, limits against guessing, and the audit log
-- (API.md "Sessions", "Limits against guessing", "Audit").

-- A login starts a session; access tokens name it in `sid`, so ending it ends them at once.
CREATE TABLE sessions (
    id             uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL,
    last_used_at   timestamptz NOT NULL,          -- login or last refresh: the idle limit counts from here
    expires_at     timestamptz NOT NULL,          -- the absolute limit
    ended_at       timestamptz,
    ended_reason   text,
    CONSTRAINT sessions_ended_consistent CHECK ((ended_at IS NULL) = (ended_reason IS NULL))
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id) WHERE ended_at IS NULL;

-- Every refresh token ever issued, by SHA-256 hash only (the tokens are 256 random bits, so a
-- plain hash is enough). A rotated token keeps its row: presenting it again is either a client
-- race inside the grace window or theft.
CREATE TABLE refresh_tokens (
    hash        bytea       PRIMARY KEY CHECK (length(hash) = 32),
    session_id  uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at   timestamptz NOT NULL,
    rotated_at  timestamptz
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);

-- Per-account login backoff, keyed by SHA-256 of the normalized email (or of the trimmed,
-- lower-cased input when it is no valid email): raw input is never stored.
CREATE TABLE login_throttle (
    key            bytea       PRIMARY KEY CHECK (length(key) = 32),
    failures       integer     NOT NULL CHECK (failures > 0),
    blocked_until  timestamptz,
    updated_at     timestamptz NOT NULL
);

-- Per source address: an exact sliding window, one row per counted request (at most the limit
-- per address, and rows older than a minute are deleted as the address is checked).
CREATE TABLE ip_requests (
    source_ip  text        NOT NULL,
    at         timestamptz NOT NULL
);
CREATE INDEX ip_requests_source_ip_at_idx ON ip_requests (source_ip, at);

CREATE TABLE auth_events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL,
    event        text        NOT NULL CHECK (event ~ '^[a-z_]+(\.[a-z_]+)+$'),
    user_id      uuid,
    session_id   uuid,
    source_ip    text,
    user_agent   text,
    reason       text
);
CREATE INDEX auth_events_user_idx ON auth_events (user_id, occurred_at DESC) WHERE user_id IS NOT NULL;
CREATE INDEX auth_events_occurred_at_idx ON auth_events (occurred_at);

-- One round trip per refresh: find the presented token, check its session and user, then
-- rotate (or recognize a race inside the grace window, or a reuse after it, which ends the
-- session), and write the audit row — atomically, under row locks.
CREATE FUNCTION auth_refresh(
    p_hash bytea, p_successor bytea, p_now timestamptz, p_grace interval, p_idle interval,
    p_source_ip text, p_user_agent text
) RETURNS TABLE (outcome text, session_id uuid, user_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    t refresh_tokens%ROWTYPE;
    s sessions%ROWTYPE;
    active boolean;
    result text;
BEGIN
    SELECT * INTO t FROM refresh_tokens r WHERE r.hash = p_hash FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO auth_events (occurred_at, event, source_ip, user_agent, reason)
        VALUES (p_now, 'refresh.failed', p_source_ip, p_user_agent, 'unknown_token');
        RETURN QUERY SELECT 'unknown_token'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    SELECT * INTO s FROM sessions x WHERE x.id = t.session_id FOR UPDATE;
    SELECT u.is_active INTO active FROM users u WHERE u.id = s.user_id;

    IF s.ended_at IS NOT NULL THEN
        result := 'session_ended';
    ELSIF active IS NOT TRUE THEN
        result := 'user_inactive';
    ELSIF p_now >= s.expires_at THEN
        result := 'session_expired';
        UPDATE sessions SET ended_at = p_now, ended_reason = 'expired' WHERE id = s.id;
    ELSIF p_now >= s.last_used_at + p_idle THEN
        result := 'session_idle';
        UPDATE sessions SET ended_at = p_now, ended_reason = 'idle' WHERE id = s.id;
    ELSIF t.rotated_at IS NOT NULL AND p_now <= t.rotated_at + p_grace THEN
        result := 'grace';
    ELSIF t.rotated_at IS NOT NULL THEN
        result := 'reuse_detected';
        UPDATE sessions SET ended_at = p_now, ended_reason = 'reuse_detected' WHERE id = s.id;
    ELSE
        result := 'rotated';
        UPDATE refresh_tokens SET rotated_at = p_now WHERE hash = p_hash;
        INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES (p_successor, s.id, p_now);
        UPDATE sessions SET last_used_at = p_now WHERE id = s.id;
    END IF;

    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent, reason)
    VALUES (
        p_now,
        CASE result WHEN 'rotated' THEN 'refresh.succeeded' WHEN 'grace' THEN 'refresh.succeeded'
                    WHEN 'reuse_detected' THEN 'refresh.reuse_detected' ELSE 'refresh.failed' END,
        s.user_id, s.id, p_source_ip, p_user_agent,
        CASE result WHEN 'rotated' THEN NULL WHEN 'grace' THEN 'grace_window' ELSE result END
    );
    RETURN QUERY SELECT result, s.id, s.user_id;
END;
$$;

-- One round trip per rate-limited request: counts it only if it is allowed. An address's
-- checks take turns (a transaction-scoped advisory lock, which a transaction-mode pooler keeps),
-- so two concurrent requests cannot both take the last slot of the window.
CREATE FUNCTION auth_ip_allow(p_ip text, p_limit integer, p_now timestamptz)
RETURNS TABLE (allowed boolean, retry_after_secs integer)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    oldest timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('auth_ip_allow:' || p_ip, 0));
    DELETE FROM ip_requests WHERE source_ip = p_ip AND at <= p_now - interval '1 minute';
    SELECT count(*), min(at) INTO n, oldest FROM ip_requests WHERE source_ip = p_ip;
    IF n >= p_limit THEN
        -- A slot frees when the oldest counted request slides out of the window.
        RETURN QUERY SELECT false,
            GREATEST(1, CEIL(extract(epoch FROM (oldest + interval '1 minute' - p_now))))::integer;
        RETURN;
    END IF;
    INSERT INTO ip_requests (source_ip, at) VALUES (p_ip, p_now);
    RETURN QUERY SELECT true, 0;
END;
$$;
