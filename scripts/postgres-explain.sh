#!/usr/bin/env bash
# The plans of the PostgreSQL backend's hot queries at scale: starts a throwaway PostgreSQL
# (scripts/postgres.sh, durable), applies hookd's migrations, loads ROWS deliveries with
# generate_series, and prints EXPLAIN (ANALYZE, BUFFERS) of the claim (the statements inside
# `hookd_claim`, through auto_explain), of the due-work poll, and of a webhook's delivery
# listing; then stops the server and removes its directory.
#
#   scripts/postgres-explain.sh [ROWS]     (default 1000000; bounded: one load, a few queries)
#
# The data: 10 tenants x 10 webhooks. Half of the rows belong to one "hot" webhook (tenant t0,
# the webhook the queries ask about): 80% of its deliveries are done (out of the queue), 10% due
# now, 10% scheduled for later retries, and 3 of the due ones leased by another live node. The
# other half is spread evenly over the 99 other webhooks with the same mix. Only `deliveries`
# is loaded (the claim, the poll and the listing read nothing else but `webhooks`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rows=${1:-1000000}
dir=$(mktemp -d "${TMPDIR:-/tmp}/hookd-explain-pg.XXXXXX")
rmdir "$dir"
trap 'scripts/postgres.sh stop "$dir"' EXIT
url=$(scripts/postgres.sh start "$dir" durable)
sql() { psql "$url" -X -q -v ON_ERROR_STOP=1 "$@"; }

for migration in engine/migrations/V*.sql; do
    sql -f "$migration"
done

hot=00000000-0000-7000-8000-000000000000
now=$(($(date +%s) * 1000))
echo "== loading $rows deliveries"
start=$(date +%s)
sql <<SQL
INSERT INTO webhooks (tenant, id, record)
SELECT 't' || (w / 10), ('00000000-0000-7000-8000-' || lpad(to_hex(w), 12, '0'))::uuid, '{}'
  FROM generate_series(0, 99) AS w;

INSERT INTO deliveries (tenant, id, event_id, webhook_id, event_type, status, attempts,
                        created_at, updated_at, next_attempt_at)
SELECT 't' || (w / 10),
       gen_random_uuid(), gen_random_uuid(),
       ('00000000-0000-7000-8000-' || lpad(to_hex(w), 12, '0'))::uuid,
       'order.created',
       CASE WHEN i % 10 < 8 THEN 'delivered' ELSE 'pending' END,
       CASE WHEN i % 10 < 8 THEN 1 ELSE 2 END,
       $now - i, $now - i,
       CASE WHEN i % 10 < 8 THEN NULL
            WHEN i % 10 = 8 THEN $now - (i % 100000)       -- due now
            ELSE $now + 60000 + (i % 100000) END           -- a later retry
  FROM generate_series(1, $rows) AS i,
       LATERAL (SELECT CASE WHEN i <= $rows / 2 THEN 0 ELSE 1 + i % 99 END AS w) AS pick;

-- Another node holds leases on 3 due deliveries of the hot webhook.
UPDATE deliveries SET lease_node = 'other-node', lease_until = $now + 30000,
                      lease_token = nextval('lease_tokens')
 WHERE (tenant, id) IN (SELECT tenant, id FROM deliveries
                         WHERE tenant = 't0' AND webhook_id = '$hot'
                           AND next_attempt_at <= $now
                         ORDER BY next_attempt_at, id LIMIT 3);
VACUUM ANALYZE;
SQL
echo "loaded in $(($(date +%s) - start)) s"
sql -c "SELECT pg_size_pretty(pg_total_relation_size('deliveries')) AS deliveries_with_indexes,
               count(*) AS rows,
               count(*) FILTER (WHERE webhook_id = '$hot') AS hot_webhook_rows,
               count(*) FILTER (WHERE webhook_id = '$hot' AND next_attempt_at <= $now) AS hot_due
          FROM deliveries"

# One session: a warm-up claim, the explained claim (auto_explain prints the plan of every
# statement the function runs), then five timed claims; each in a transaction rolled back, so
# every run sees the same queue.
explain_claim() { # limit, rate
    local claim="SELECT count(*) FILTER (WHERE delivery_id IS NOT NULL) AS claimed, max(due) AS next_due
  FROM hookd_claim('t0', '$hot', 'node-a', '{}', $now, $1, 30000, $2);"
    sql <<SQL
BEGIN; $claim ROLLBACK;
LOAD 'auto_explain';
SET auto_explain.log_min_duration = 0;
SET auto_explain.log_analyze = on;
SET auto_explain.log_buffers = on;
SET auto_explain.log_nested_statements = on;
SET auto_explain.log_level = notice;
BEGIN; $claim ROLLBACK;
SET auto_explain.log_min_duration = -1;
\echo timed claims (warm):
\timing on
BEGIN; $claim ROLLBACK;
BEGIN; $claim ROLLBACK;
BEGIN; $claim ROLLBACK;
BEGIN; $claim ROLLBACK;
BEGIN; $claim ROLLBACK;
SQL
}
echo
echo "== claim of 8 (the default max_in_flight_per_webhook; 3 held by another node), no rate limit"
explain_claim 8 0 2>&1
echo
echo "== claim of 64 (3 held by another node) with a rate limit of 1000/s"
explain_claim 64 1000 2>&1

echo
echo "== the due-work poll (every poll_interval, per node): each webhook's earliest unleased due"
sql <<SQL
EXPLAIN (ANALYZE, BUFFERS)
SELECT w.tenant, w.id, q.due FROM webhooks w
 CROSS JOIN LATERAL (
     SELECT d.next_attempt_at AS due FROM deliveries d
      WHERE d.tenant = w.tenant AND d.webhook_id = w.id
        AND d.next_attempt_at IS NOT NULL
        AND (d.lease_node IS NULL OR d.lease_until <= $now)
      ORDER BY d.next_attempt_at
      LIMIT 1) q;
SQL

echo
echo "== a page of the hot webhook's deliveries, newest first (GET /v1/deliveries?webhook_id=)"
sql <<SQL
EXPLAIN (ANALYZE, BUFFERS)
SELECT * FROM deliveries
 WHERE tenant = 't0' AND webhook_id = '$hot'
 ORDER BY id DESC LIMIT 51;
SQL
