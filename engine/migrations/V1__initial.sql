-- hookd schema 1: the PostgreSQL backend of the store (engine/src/store/postgres).
--
-- Ids are the UUIDv7 part of hookd's prefixed ids (`evt_`, `dlv_`, `wh_`, `att_` followed by
-- 32 hex digits): time-ordered, so primary keys double as the newest-first listing order.
-- Every table leads with the tenant: no query crosses tenants, and a tenant's rows are one
-- contiguous range of each index. Times are milliseconds since the Unix epoch.

-- Webhooks, as the engine's WebhookRecord (JSON, secrets sealed with the node's secret key).
CREATE TABLE webhooks (
    tenant text  NOT NULL,
    id     uuid  NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- The token bucket behind a webhook's rate_limit_per_sec, shared by every node.
CREATE TABLE webhook_rate (
    tenant     text             NOT NULL,
    webhook_id uuid             NOT NULL,
    tokens     double precision NOT NULL,
    at_ms      bigint           NOT NULL,
    PRIMARY KEY (tenant, webhook_id)
);

CREATE TABLE events (
    tenant          text   NOT NULL,
    id              uuid   NOT NULL,
    event_type      text   NOT NULL,
    channel         text,
    idempotency_key text,
    created_at      bigint NOT NULL,
    -- The producer's JSON byte for byte (text, not jsonb, which would re-serialise it).
    payload         text   NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- A producer's idempotency key names one event until expires_at.
CREATE TABLE idempotency_keys (
    tenant     text   NOT NULL,
    key        text   NOT NULL,
    event_id   uuid   NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (tenant, key)
);

-- One row per event x webhook. While `next_attempt_at` is set the delivery is queued (the
-- schedule is the partial index deliveries_queue); a node claims a due delivery by writing its
-- lease (node, expiry, token) and records the outcome only while the token is still its own.
CREATE TABLE deliveries (
    tenant           text    NOT NULL,
    id               uuid    NOT NULL,
    event_id         uuid    NOT NULL,
    webhook_id       uuid    NOT NULL,
    event_type       text    NOT NULL,
    channel          text,
    status           text    NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    created_at       bigint  NOT NULL,
    updated_at       bigint  NOT NULL,
    next_attempt_at  bigint,
    last_attempt_at  bigint,
    last_status_code integer,
    last_error       text,
    filtered_by      text,
    lease_node       text,
    lease_until      bigint,
    lease_token      bigint,
    PRIMARY KEY (tenant, id)
) WITH (fillfactor = 80); -- room for in-page (HOT) updates when a claim writes its lease

-- Each webhook's queue in due order: the claim reads its head.
CREATE INDEX deliveries_queue ON deliveries (tenant, webhook_id, next_attempt_at, id)
    WHERE next_attempt_at IS NOT NULL;
-- Claims held right now, counted against a webhook's in-flight cap across nodes.
CREATE INDEX deliveries_leased ON deliveries (tenant, webhook_id) WHERE lease_node IS NOT NULL;
CREATE INDEX deliveries_of_event ON deliveries (tenant, event_id);
CREATE INDEX deliveries_of_webhook ON deliveries (tenant, webhook_id, id);

CREATE SEQUENCE lease_tokens;

-- Attempts, as the engine's AttemptRecord (JSON).
CREATE TABLE attempts (
    tenant      text NOT NULL,
    delivery_id uuid NOT NULL,
    id          uuid NOT NULL,
    record      json NOT NULL,
    PRIMARY KEY (tenant, delivery_id, id)
);

-- Statistics per tenant (scope '*') or webhook (scope = webhook id) and UTC day; days are
-- cohorts (deliveries created that day). Ingest writes stats_ingest and stats_event_types,
-- attempts write stats_outcomes: the two never wait for each other's row locks.
CREATE TABLE stats_ingest (
    tenant     text    NOT NULL,
    scope      text    NOT NULL,
    day        integer NOT NULL,
    events     bigint  NOT NULL DEFAULT 0,
    deliveries bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, scope, day)
);

CREATE TABLE stats_outcomes (
    tenant          text     NOT NULL,
    scope           text     NOT NULL,
    day             integer  NOT NULL,
    delivered       bigint   NOT NULL DEFAULT 0,
    failed          bigint   NOT NULL DEFAULT 0,
    filtered        bigint   NOT NULL DEFAULT 0,
    latency_count   bigint   NOT NULL DEFAULT 0,
    latency_sum_ms  bigint   NOT NULL DEFAULT 0,
    latency_max_ms  bigint   NOT NULL DEFAULT 0,
    latency_buckets bigint[] NOT NULL,
    PRIMARY KEY (tenant, scope, day)
);

CREATE TABLE stats_event_types (
    tenant     text    NOT NULL,
    scope      text    NOT NULL,
    day        integer NOT NULL,
    event_type text    NOT NULL,
    count      bigint  NOT NULL,
    PRIMARY KEY (tenant, scope, day, event_type)
);

-- A webhook's health (store/health.rs: last success and failure, the current run of failures,
-- hourly counts of the last 24 h) as JSON, written with each group of attempt outcomes.
CREATE TABLE webhook_health (
    tenant     text  NOT NULL,
    webhook_id uuid  NOT NULL,
    record     jsonb NOT NULL,
    PRIMARY KEY (tenant, webhook_id)
);

-- What a tenant holds, kept by ingest and retention (admin views, quotas).
CREATE TABLE tenant_totals (
    tenant       text   PRIMARY KEY,
    events       bigint NOT NULL DEFAULT 0,
    stored_bytes bigint NOT NULL DEFAULT 0
);

-- Claims up to p_limit due deliveries of one webhook for node p_node, skipping p_skip (its
-- attempts in flight). Claims of one webhook are made one at a time (an advisory lock for the
-- transaction), so the count of other nodes' live leases and the rate bucket stay true until
-- commit: together the nodes never hold more than the webhook's in-flight cap nor go faster
-- than its rate. Rows are taken with FOR UPDATE SKIP LOCKED, so a row another transaction is
-- writing (an outcome being recorded) is passed over, never waited for.
--
-- Returns the claimed rows (delivery_id, lease_token, due) and, in one more row with a NULL
-- delivery_id, when to ask again (`due`; NULL when nothing is waiting).
CREATE FUNCTION hookd_claim(
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
           AND EXISTS (SELECT 1 FROM deliveries d
                        WHERE d.tenant = p_tenant AND d.webhook_id = p_webhook
                          AND d.next_attempt_at IS NOT NULL AND d.next_attempt_at <= p_now
                          AND (d.lease_node IS NULL OR d.lease_until <= p_now)) THEN
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
