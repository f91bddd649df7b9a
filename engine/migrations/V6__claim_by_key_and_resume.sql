-- hookd schema 6: the claim and the poll read the queue index whatever the statistics say, the
-- claim updates its rows by key and may start past this node's claims.
--
-- 1. In schema 2 the claimed rows were updated through a join with the CTE that picks them.
--    PL/pgSQL caches a generic plan for that statement after a few calls, and the generic plan
--    cannot see the LIMIT: it expects hundreds of rows and hash-joins them with a sequential
--    scan of the tenant's whole `deliveries` table. Measured with a 20k backlog at the default
--    cap of 8: 4.3 ms per claim, 1.5 ms of PostgreSQL CPU per delivery, and the cost grows with
--    the table. The picked ids now go through an array (`id = ANY (ARRAY(...))`), which the
--    planner can only serve with the primary key: O(claimed rows) whatever the plan.
-- 2. With statistics that do not know a webhook's backlog yet (a table not analyzed since the
--    backlog came, or one webhook holding far more rows than the average), the planner served
--    the pick, and the poll's "earliest due row" below, by reading every row of the webhook
--    through `deliveries_of_webhook` and sorting them: a claim cost O(backlog), 10-17 ms at a
--    20k backlog. Both now run with `enable_sort = off`, so the queue index, which gives the
--    due order, is the only plan.
-- 3. `p_skip_due_before`: when the caller's claims hold every due row before that time, the
--    scan starts there instead of walking past them (store/mod.rs, `Store::claim_due`). NULL
--    scans from the head.
--
-- The function of schema 2 (without `p_skip_due_before`) stays, as a call of this one, for
-- nodes still running the release before this migration.

-- Claims up to p_limit due deliveries of one webhook for node p_node, skipping p_skip (its
-- attempts in flight) and, unless p_skip_due_before is NULL, every row due before it. Claims of
-- one webhook are made one at a time (an advisory lock for the transaction), so the count of
-- other nodes' live leases and the rate bucket stay true until commit: together the nodes never
-- hold more than the webhook's in-flight cap nor go faster than its rate. Rows are taken with
-- FOR UPDATE SKIP LOCKED, so a row another transaction is writing (an outcome being recorded) is
-- passed over, never waited for.
--
-- Returns the claimed rows (delivery_id, lease_token, due) and, in one more row with a NULL
-- delivery_id, when to ask again (`due`; NULL when nothing is waiting).
CREATE OR REPLACE FUNCTION hookd_claim(
    p_tenant text,
    p_webhook uuid,
    p_node text,
    p_skip uuid[],
    p_skip_due_before bigint,
    p_now bigint,
    p_limit integer,
    p_lease_ms bigint,
    p_rate integer
) RETURNS TABLE (delivery_id uuid, lease_token bigint, due bigint)
LANGUAGE plpgsql
SET enable_sort = off
AS $$
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
        UPDATE deliveries d
           SET lease_node = p_node, lease_until = p_now + p_lease_ms,
               lease_token = nextval('lease_tokens')
         WHERE d.tenant = p_tenant
           AND d.id = ANY (ARRAY(
               SELECT q.id FROM deliveries q
                WHERE q.tenant = p_tenant AND q.webhook_id = p_webhook
                  AND q.next_attempt_at IS NOT NULL AND q.next_attempt_at <= p_now
                  AND q.next_attempt_at >= coalesce(p_skip_due_before, 0)
                  AND (q.lease_node IS NULL OR q.lease_node = p_node OR q.lease_until <= p_now)
                  AND NOT (q.id = ANY (p_skip))
                ORDER BY q.next_attempt_at, q.id
                LIMIT v_allowed
                FOR UPDATE SKIP LOCKED))
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

-- Schema 2's signature, for nodes of the previous release.
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
LANGUAGE sql AS $$
    SELECT * FROM hookd_claim(p_tenant, p_webhook, p_node, p_skip, NULL, p_now, p_limit,
                              p_lease_ms, p_rate);
$$;

-- Per webhook, the earliest due delivery no live lease holds (the poll of
-- store/postgres/notify.rs: work whose NOTIFY was missed, and a dead node's deliveries once
-- its leases run out).
CREATE FUNCTION hookd_due_webhooks(p_now bigint)
RETURNS TABLE (tenant text, webhook_id uuid, due bigint)
LANGUAGE sql STABLE
SET enable_sort = off
AS $$
    SELECT w.tenant, w.id, q.due FROM webhooks w
     CROSS JOIN LATERAL (
         SELECT d.next_attempt_at AS due FROM deliveries d
          WHERE d.tenant = w.tenant AND d.webhook_id = w.id
            AND d.next_attempt_at IS NOT NULL
            AND (d.lease_node IS NULL OR d.lease_until <= p_now)
          ORDER BY d.next_attempt_at
          LIMIT 1) q;
$$;
