"""One full flow through the Python client that openapi-python-client generated from hookd's
/openapi.json: create a webhook, send an event, read its delivery until it is delivered.

Run by tests/it/api_clients.rs as `python python_flow.py BASE_URL API_KEY RECEIVER_URL` with the
generated package `hookd_client` importable; prints one JSON line describing what it saw.
"""

import json
import sys
import time

from hookd_client import AuthenticatedClient
from hookd_client.api.deliveries import get_delivery
from hookd_client.api.events import create_event
from hookd_client.api.webhooks import create_webhook
from hookd_client.models import (
    CreateEvent,
    CreateWebhook,
    DeliveryStatus,
    DeliveryView,
    ErrorBody,
    EventView,
    WebhookView,
)


def main() -> None:
    base_url, key, receiver = sys.argv[1:4]
    client = AuthenticatedClient(base_url=base_url, token=key, raise_on_unexpected_status=True)

    webhook = create_webhook.sync(
        client=client, body=CreateWebhook(url=receiver, event_types=["user.*"])
    )
    assert isinstance(webhook, WebhookView), webhook
    assert webhook.secret.startswith("whsec_"), webhook.secret

    refused = create_webhook.sync(client=client, body=CreateWebhook(url="not a url"))
    assert isinstance(refused, ErrorBody) and refused.code == "invalid_url", refused

    event = create_event.sync(
        client=client, body=CreateEvent(type_="user.created", payload={"name": "Ada", "n": 1})
    )
    assert isinstance(event, EventView), event
    assert len(event.deliveries) == 1, event.deliveries
    delivery_id = event.deliveries[0].id

    deadline = time.monotonic() + 20
    while True:
        delivery = get_delivery.sync(client=client, id=delivery_id)
        assert isinstance(delivery, DeliveryView), delivery
        if delivery.status == DeliveryStatus.DELIVERED or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print(
        json.dumps(
            {
                "webhook_id": webhook.id,
                "event_id": event.id,
                "delivery_id": delivery.id,
                "status": delivery.status.value,
                "attempts": [a.status_code for a in delivery.attempts],
            }
        )
    )


if __name__ == "__main__":
    main()
