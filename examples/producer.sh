#!/usr/bin/env bash
# A producer for hookd: creates a webhook pointing at a receiver, then posts a few events to it.
#
#   HOOKD_URL             hookd's API            (default http://127.0.0.1:8080)
#   HOOKD_API_KEY         the tenant's API key   (default hookd-dev-key, the dev tenant's)
#   RECEIVER_URL          where hookd delivers   (default http://127.0.0.1:9000/hook)
#   HOOKD_WEBHOOK_SECRET  the webhook's secret, whsec_<base64 of 24-64 bytes>; unset = hookd
#                         generates one and shows it in the answer (only then)
set -euo pipefail

HOOKD_URL=${HOOKD_URL:-http://127.0.0.1:8080}
HOOKD_API_KEY=${HOOKD_API_KEY:-hookd-dev-key}
RECEIVER_URL=${RECEIVER_URL:-http://127.0.0.1:9000/hook}

# POST JSON to hookd and print the answer; stop on a 4xx/5xx (errors are {"code","message"}).
post() {
  curl -sS --fail-with-body "$HOOKD_URL$1" \
    -H "Authorization: Bearer $HOOKD_API_KEY" \
    -H 'Content-Type: application/json' \
    -d "$2" || { status=$?; echo; exit "$status"; }
  echo
}

secret_field=""
if [[ -n "${HOOKD_WEBHOOK_SECRET:-}" ]]; then
  secret_field=", \"secret\": \"$HOOKD_WEBHOOK_SECRET\""
fi

echo "== creating a webhook for $RECEIVER_URL (all event types)"
post /v1/webhooks "{\"url\": \"$RECEIVER_URL\", \"description\": \"hookd examples\"$secret_field}"

# 202 means the event and its deliveries are on disk; delivery happens in the background.
echo "== sending events"
post /v1/events '{"type": "user.created", "payload": {"id": 7, "name": "Ada"}}'
post /v1/events '{"type": "invoice.paid", "payload": {"invoice": "inv_42", "amount_cents": 1999}}'
post /v1/events '{"type": "user.deleted", "payload": {"id": 7}}'

echo "== done; see the receiver's output, or the delivery log:"
echo "curl -s '$HOOKD_URL/v1/deliveries' -H 'Authorization: Bearer $HOOKD_API_KEY'"
