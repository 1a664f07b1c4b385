"""Outgoing webhooks from a real ``prepaid serve``: an admin registers a real local HTTP receiver for
``order.paid``; a buyer pays on the sandbox; the server's own runner POSTs the signed event, and when the
receiver answers 500 it retries with backoff (``PREPAID_WEBHOOK_RETRY_BASE`` made short) until it answers 200.
Every attempt carries the same body and verifies with ``prepaid.webhook_signature``."""

from __future__ import annotations

import json
import time

import pytest

from prepaid.webhook_signature import SignatureError, verify_signature
from tests.api.test_webhooks_out import Receiver
from tests.e2e.conftest import ServerFactory, poll
from tests.e2e.test_stream import buy, open_shop


def test_a_paid_order_is_posted_to_the_app_and_retried_until_it_answers_200(servers: ServerFactory) -> None:
    server = servers.serve(PREPAID_WEBHOOK_RETRY_BASE="0.3")
    shop = open_shop(server)
    with Receiver(answers=[500, 500]) as receiver, server.client() as http:
        created = http.post(
            "/v1/webhook_endpoints",
            json={"url": receiver.url, "event_types": ["order.paid"], "description": "the bot"},
            headers=shop.admin,
        )
        assert created.status_code == 201, created.text
        endpoint = created.json()
        started = time.monotonic()
        order = buy(server, shop)
        sent = poll(
            lambda: receiver.received() if len(receiver.received()) >= 3 else None, timeout=30, what="3 POSTs"
        )
        assert time.monotonic() - started > 0.3 + 0.6  # the backoff was waited out
        bodies = {body for _headers, body in sent}
        assert len(bodies) == 1
        for headers, body in sent:
            verify_signature(endpoint["secret"], headers["prepaid-signature"], body)
            assert headers["prepaid-event-type"] == "order.paid"
        event = json.loads(sent[0][1])
        assert (event["type"], event["data"]["order_id"], event["data"]["credits"]) == (
            "order.paid",
            order["id"],
            500,
        )
        assert event["customer"]["id"] == order["user_id"]
        with pytest.raises(SignatureError):
            verify_signature(endpoint["secret"], sent[0][0]["prepaid-signature"], sent[0][1] + b" ")

        def settled() -> list[dict[str, object]] | None:
            answer = http.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", headers=shop.admin)
            data: list[dict[str, object]] = answer.json()["data"]
            return data if data and data[0]["status"] == "succeeded" else None

        [delivery] = poll(settled, timeout=10, what="the delivery to be marked succeeded")
        assert (delivery["attempts"], delivery["last_status_code"]) == (3, 200)
        time.sleep(1.0)
        assert len(receiver.received()) == 3  # delivered: not sent again
