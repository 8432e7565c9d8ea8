-- Limits no stranger can turn against an owner, storage that stays bounded under a flood, and
-- writes that a retry after a lost answer cannot repeat (docs/api.md "Limits against guessing").

-- The login backoff, now one row per (account, source network) plus one account-wide row
-- (network '*'). `account` is SHA-256 of the normalized email, or of the trimmed, lower-cased
-- input when it is no valid email, so unknown addresses reach the same states as accounts.
-- `locked_at` is the hard stop after many consecutive failures; only a password reset or
-- `authctl unlock` clears it. `last_attempt` names the attempt counted last, so a retried
-- statement recognizes its own attempt instead of counting it twice. The old rows only held
-- short backoffs: dropping them forgets at most a few minutes of waiting.
DROP TABLE login_throttle;
CREATE TABLE login_throttle (
    account        bytea       NOT NULL CHECK (length(account) = 32),
    network        text        NOT NULL,
    failures       integer     NOT NULL CHECK (failures > 0),
    blocked_until  timestamptz,
    locked_at      timestamptz,
    last_attempt   uuid,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (account, network)
);
CREATE INDEX login_throttle_updated_at_idx ON login_throttle (updated_at);

-- A counted request, and the logout that ended a session, name themselves, for the same reason.
ALTER TABLE ip_requests ADD COLUMN request_id uuid;
ALTER TABLE sessions ADD COLUMN ended_by uuid;
CREATE INDEX ip_requests_at_idx ON ip_requests (at);

-- Refusals are audited once per (address, event, reason, account when known) and minute, with
-- a count: a flood cannot grow the table faster than the address window lets requests through.
ALTER TABLE auth_events ADD COLUMN count integer NOT NULL DEFAULT 1 CHECK (count > 0);
ALTER TABLE auth_events ADD COLUMN window_start timestamptz;
CREATE UNIQUE INDEX auth_events_refusal_window_idx
    ON auth_events (event, reason, source_ip, user_id, window_start) NULLS NOT DISTINCT
    WHERE window_start IS NOT NULL;

-- One audit row for a refusal: a new row for the first in its minute, a higher count after.
CREATE FUNCTION auth_refusal(
    p_now timestamptz, p_event text, p_reason text, p_user_id uuid, p_session_id uuid,
    p_source_ip text, p_user_agent text
) RETURNS void
-- Runs as the owner: the functions' role may only read and append audit rows (`authctl
-- grants`), and raising a refusal's count is an UPDATE. The fixed search_path keeps a caller's
-- objects out of the owner's statement.
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
    INSERT INTO auth_events AS e (occurred_at, event, user_id, session_id, source_ip, user_agent, reason, window_start)
    VALUES (p_now, p_event, p_user_id, p_session_id, p_source_ip, p_user_agent, p_reason,
            date_trunc('minute', p_now))
    ON CONFLICT (event, reason, source_ip, user_id, window_start) WHERE window_start IS NOT NULL
    DO UPDATE SET count = e.count + 1;
$$;

-- The backoff's wait after `failures` consecutive failures when it starts after `after`: 1 s at
-- the `after`-th, doubling up to `max_secs`. The exponent is capped before power() so that no
-- count of failures can overflow float8 (it did from about 1028 failures on).
CREATE FUNCTION auth_backoff(failures integer, after integer, max_secs float8)
RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN failures >= after
        THEN make_interval(secs => LEAST(power(2, LEAST(failures - after, 30)), max_secs))
    END;
$$;

-- One round trip per login attempt: the account (if any), the lock, both backoffs, and the
-- attempt counted against both rows unless one of them is waiting. Counting before the password
-- is checked is what holds against parallel guesses. A row this attempt created holds its first
-- failure already, uncounted until `last_attempt` is set. The account-wide row is always locked
-- before the network's, so concurrent attempts never deadlock.
CREATE FUNCTION auth_login_attempt(
    p_email text, p_account bytea, p_network text, p_attempt uuid,
    p_after integer, p_account_after integer, p_lock_after integer, p_max_secs float8,
    p_now timestamptz
) RETURNS TABLE (
    outcome text, retry_until timestamptz,
    id uuid, email text, is_active boolean, created_at timestamptz, hashed_password text
)
LANGUAGE plpgsql AS $$
DECLARE
    a login_throttle%ROWTYPE;
    n login_throttle%ROWTYPE;
    result text := 'counted';
    wait_until timestamptz;
BEGIN
    INSERT INTO login_throttle (account, network, failures, updated_at)
    VALUES (p_account, '*', 1, p_now), (p_account, p_network, 1, p_now)
    ON CONFLICT (account, network) DO NOTHING;
    SELECT * INTO a FROM login_throttle l WHERE l.account = p_account AND l.network = '*' FOR UPDATE;
    SELECT * INTO n FROM login_throttle l WHERE l.account = p_account AND l.network = p_network FOR UPDATE;

    IF a.last_attempt = p_attempt THEN
        NULL;                                       -- this very attempt, retried: counted once
    ELSIF a.locked_at IS NOT NULL THEN
        result := 'locked';
    ELSIF a.blocked_until > p_now OR n.blocked_until > p_now THEN
        result := 'blocked';
        wait_until := GREATEST(a.blocked_until, n.blocked_until);
    ELSE
        UPDATE login_throttle l SET
            failures = c.failures,
            last_attempt = p_attempt,
            updated_at = p_now,
            blocked_until = p_now + auth_backoff(c.failures, c.after, p_max_secs),
            locked_at = CASE WHEN l.network = '*' AND c.failures >= p_lock_after THEN p_now END
        FROM (SELECT x.network,
                     CASE WHEN x.last_attempt IS NULL THEN x.failures ELSE x.failures + 1 END AS failures,
                     CASE WHEN x.network = '*' THEN p_account_after ELSE p_after END AS after
              FROM login_throttle x
              WHERE x.account = p_account AND x.network IN ('*', p_network)) c
        WHERE l.account = p_account AND l.network = c.network;
    END IF;

    RETURN QUERY
        SELECT result, wait_until, u.id, u.email, u.is_active, u.created_at, u.hashed_password
        FROM (SELECT p_email AS email) q LEFT JOIN users u ON u.email = q.email;
END;
$$;

-- Counts a request against its address's sliding one-minute window unless the window is full.
-- A retried call recognizes its own request. An address's checks take turns (a
-- transaction-scoped advisory lock, which a transaction-mode pooler keeps).
CREATE FUNCTION auth_ip_allow(p_ip text, p_limit integer, p_now timestamptz, p_request uuid)
RETURNS TABLE (allowed boolean, retry_after_secs integer)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    oldest timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('auth_ip_allow:' || p_ip, 0));
    IF EXISTS (SELECT 1 FROM ip_requests r WHERE r.source_ip = p_ip AND r.request_id = p_request) THEN
        RETURN QUERY SELECT true, 0;
        RETURN;
    END IF;
    DELETE FROM ip_requests r WHERE r.source_ip = p_ip AND r.at <= p_now - interval '1 minute';
    SELECT count(*), min(r.at) INTO n, oldest FROM ip_requests r WHERE r.source_ip = p_ip;
    IF n >= p_limit THEN
        -- A slot frees when the oldest counted request slides out of the window.
        RETURN QUERY SELECT false,
            GREATEST(1, CEIL(extract(epoch FROM (oldest + interval '1 minute' - p_now))))::integer;
        RETURN;
    END IF;
    INSERT INTO ip_requests (source_ip, at, request_id) VALUES (p_ip, p_now, p_request);
    RETURN QUERY SELECT true, 0;
END;
$$;
DROP FUNCTION auth_ip_allow(text, integer, timestamptz);

-- Ends a session, or every session of its user, if the named session is live. The user's row
-- is locked first, so two global logouts of one user take turns instead of each locking its
-- own session and then waiting for the other's (a deadlock). A retry of a logout that
-- committed finds its own session ended by its own `p_request` and answers as the first try did.
CREATE FUNCTION auth_end_sessions(
    p_user_id uuid, p_session_id uuid, p_global boolean, p_now timestamptz, p_idle_cutoff timestamptz,
    p_request uuid, p_source_ip text, p_user_agent text
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s sessions%ROWTYPE;
BEGIN
    PERFORM 1 FROM users u WHERE u.id = p_user_id AND u.is_active FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    SELECT * INTO s FROM sessions x WHERE x.id = p_session_id AND x.user_id = p_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF s.ended_at IS NOT NULL THEN
        RETURN s.ended_by IS NOT DISTINCT FROM p_request;
    END IF;
    IF s.expires_at <= p_now OR s.last_used_at <= p_idle_cutoff THEN
        RETURN false;
    END IF;
    UPDATE sessions x SET ended_at = p_now, ended_reason = 'logout', ended_by = p_request
    WHERE x.ended_at IS NULL AND (x.id = p_session_id OR (p_global AND x.user_id = p_user_id));
    INSERT INTO auth_events (occurred_at, event, user_id, session_id, source_ip, user_agent, reason)
    VALUES (p_now, 'logout.succeeded', p_user_id, p_session_id, p_source_ip, p_user_agent,
            CASE WHEN p_global THEN 'global' ELSE 'session' END);
    RETURN true;
END;
$$;

-- auth_refresh as before, with one change: inside the grace window the successor is handed out
-- only while it is still the session's live token. After a second rotation inside the window
-- (or under another DATA_ENCRYPTION_KEY) the client gets a clean 401 (`grace_superseded`) and
-- the session lives on, instead of a token whose next use would end it as a reuse. An unknown
-- token is a refusal, recorded by the source network like the others.
DROP FUNCTION auth_refresh(bytea, bytea, timestamptz, interval, interval, text, text);
CREATE FUNCTION auth_refresh(
    p_hash bytea, p_successor bytea, p_now timestamptz, p_grace interval, p_idle interval,
    p_source_ip text, p_source_network text, p_user_agent text
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
        PERFORM auth_refusal(p_now, 'refresh.failed', 'unknown_token', NULL, NULL, p_source_network, p_user_agent);
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
        IF EXISTS (SELECT 1 FROM refresh_tokens r
                   WHERE r.hash = p_successor AND r.session_id = s.id AND r.rotated_at IS NULL) THEN
            result := 'grace';
        ELSE
            result := 'grace_superseded';
        END IF;
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
