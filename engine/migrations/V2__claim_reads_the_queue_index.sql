-- hookd schema 2: the claim's "is due work held back?" check reads the queue index.
--
-- In schema 1 that check was an EXISTS, for which the planner may pick a sequential scan of
-- `deliveries` (seen at 1M rows: estimated a hair cheaper than the index when many rows match,
-- but it reads the table in heap order, up to all of it, when the matching rows sit at its
-- end). Asking for the earliest such row in due order makes the queue index
-- (deliveries_queue) the only cheap plan: O(log n) plus the leased rows at the queue's head.
-- The function is otherwise unchanged.

-- Claims up to p_limit due deliveries of one webhook for node p_node, skipping p_skip (its
-- attempts in flight). Claims of one webhook are made one at a time (an advisory lock for the
-- transaction), so the count of other nodes' live leases and the rate bucket stay true until
-- commit: together the nodes never hold more than the webhook's in-flight cap nor go faster
-- than its rate. Rows are taken with FOR UPDATE SKIP LOCKED, so a row another transaction is
-- writing (an outcome being recorded) is passed over, never waited for.
--
-- Returns the claimed rows (delivery_id, lease_token, due) and, in one more row with a NULL
-- delivery_id, when to ask again (`due`; NULL when nothing is waiting).
CREATE OR REPLACE FUNCTION hookd_claim(
    p_tenant text,
    p_webhook uuid,
    p_node text,
    p_skip uuid[],
    p_now bigint,
    p_limit integer,
    p_lease_ms bigint,
    p_rate integer
) RETURNS TABLE (delivery_id uuid, lease_token bigint, due bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_others integer;
    v_allowed integer;
    v_tokens double precision;
    v_at bigint;
    v_claimed integer := 0;
    v_next bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant || '/' || p_webhook::text, 0));
    -- A claim lost in a database crash only makes its delivery claimable again.
    PERFORM set_config('synchronous_commit', 'off', true);

    SELECT count(*) INTO v_others FROM deliveries d
     WHERE d.tenant = p_tenant AND d.webhook_id = p_webhook AND d.lease_node IS NOT NULL
       AND d.lease_node <> p_node AND d.lease_until > p_now AND d.next_attempt_at IS NOT NULL;
    v_allowed := p_limit - v_others;

    IF p_rate > 0 THEN
        SELECT r.tokens, r.at_ms INTO v_tokens, v_at FROM webhook_rate r
         WHERE r.tenant = p_tenant AND r.webhook_id = p_webhook;
        IF NOT FOUND THEN
            v_tokens := p_rate;
            v_at := p_now;
        END IF;
        v_tokens := least(p_rate::double precision,
                          v_tokens + greatest(p_now - v_at, 0) * p_rate / 1000.0);
        v_allowed := least(v_allowed, floor(v_tokens)::integer);
    END IF;

    IF v_allowed > 0 THEN
        RETURN QUERY
        WITH picked AS (
            SELECT d.id FROM deliveries d
             WHERE d.tenant = p_tenant AND d.webhook_id = p_webhook
               AND d.next_attempt_at IS NOT NULL AND d.next_attempt_at <= p_now
               AND (d.lease_node IS NULL OR d.lease_node = p_node OR d.lease_until <= p_now)
               AND NOT (d.id = ANY (p_skip))
             ORDER BY d.next_attempt_at, d.id
             LIMIT v_allowed
             FOR UPDATE SKIP LOCKED
        )
        UPDATE deliveries d
           SET lease_node = p_node, lease_until = p_now + p_lease_ms,
               lease_token = nextval('lease_tokens')
          FROM picked
         WHERE d.tenant = p_tenant AND d.id = picked.id
        RETURNING d.id, d.lease_token, d.next_attempt_at;
        GET DIAGNOSTICS v_claimed = ROW_COUNT;
    END IF;

    IF p_rate > 0 THEN
        INSERT INTO webhook_rate AS r (tenant, webhook_id, tokens, at_ms)
        VALUES (p_tenant, p_webhook, v_tokens - v_claimed, p_now)
        ON CONFLICT (tenant, webhook_id)
        DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms;
    END IF;

    IF v_claimed < p_limit THEN
        IF v_claimed >= v_allowed AND v_allowed < p_limit
           AND (SELECT d.next_attempt_at FROM deliveries d
                 WHERE d.tenant = p_tenant AND d.webhook_id = p_webhook
                   AND d.next_attempt_at IS NOT NULL AND d.next_attempt_at <= p_now
                   AND (d.lease_node IS NULL OR d.lease_until <= p_now)
                 ORDER BY d.next_attempt_at
                 LIMIT 1) IS NOT NULL THEN
            -- Due work held back by the cap other nodes use, or by the rate: ask again when a
            -- token is there, or soon (another node's outcome does not wake this one).
            IF p_rate > 0 AND v_tokens - v_claimed < 1 THEN
                v_next := p_now + greatest(1, ceil((1 - (v_tokens - v_claimed)) * 1000.0 / p_rate))::bigint;
            ELSE
                v_next := p_now + 200;
            END IF;
        ELSE
            SELECT d.next_attempt_at INTO v_next FROM deliveries d
             WHERE d.tenant = p_tenant AND d.webhook_id = p_webhook
               AND d.next_attempt_at IS NOT NULL AND d.next_attempt_at > p_now
             ORDER BY d.next_attempt_at
             LIMIT 1;
        END IF;
    END IF;
    RETURN QUERY SELECT NULL::uuid, NULL::bigint, v_next;
END;
$$;
