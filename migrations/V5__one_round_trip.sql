-- One round trip per request (issue 9): the source network's window is checked by the
-- statement that does a route's work (store::Window), not by a statement of its own.

-- The window and, when it is full, the refusal's audit row, in one call. NULL when the request
-- was counted (or there is no source address, or the window is off); else the seconds until a
-- slot frees. The statements that call it gate their work on that NULL.
CREATE FUNCTION auth_window(
    p_network text, p_limit integer, p_now timestamptz, p_request uuid,
    p_route text, p_user_agent text
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    verdict record;
BEGIN
    IF p_network IS NULL OR p_limit <= 0 THEN
        RETURN NULL;
    END IF;
    SELECT * INTO verdict FROM auth_ip_allow(p_network, p_limit, p_now, p_request);
    IF verdict.allowed THEN
        RETURN NULL;
    END IF;
    PERFORM auth_refusal(p_now, 'rate_limit.exceeded', p_route, NULL, NULL, p_network, p_user_agent);
    RETURN verdict.retry_after_secs;
END;
$$;
