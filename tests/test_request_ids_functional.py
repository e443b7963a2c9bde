"""X-Request-Id: a client's is logged and sent back only if it is well-formed and nothing a
secret could be; a key pasted there never reaches a log line or an answer."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FAKE_API_KEY, png
from gateway import logs
from gateway.middlewares import acceptable_request_id
from tests.conftest import ADMIN, ADMIN_TOKEN, GatewayFactory
from tests.helpers import image_form

Client = TestClient[Any, Any]
METRICS_TOKEN = "metrics-token-for-request-ids-0123"


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every line logged, with every field (a request line's fields are extras, which
    caplog.text leaves out)."""
    return "\n".join(logs.JsonFormatter().format(record) for record in caplog.records)


async def test_a_secret_sent_as_the_request_id_is_never_logged_nor_sent_back(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    gateway: Client = await make_gateway(metrics_token=METRICS_TOKEN)
    key: str = gateway.team_key  # type: ignore[attr-defined]
    sent = [key, key[3:], key.upper(), f"trace-{key[:20]}", "nk-" + "Z" * 43, FAKE_API_KEY,
            ADMIN_TOKEN, f"req.{ADMIN_TOKEN}", METRICS_TOKEN]  # fmt: skip
    calls = [("GET", "/v1/user", {}), ("GET", "/admin/teams", ADMIN), ("GET", "/healthz", {}),
             ("GET", "/nowhere", {}), ("POST", "/v1/embedding/image", {})]  # fmt: skip
    answers = []
    for request_id in sent:
        for method, path, headers in calls:
            data = image_form([png(1)]) if method == "POST" else None
            response = await gateway.request(
                method, path, data=data, headers={**headers, "X-Request-Id": request_id}
            )
            assert response.status < 500, await response.text()
            assert len(response.headers["X-Request-Id"]) == 32  # one of the gateway's own
            answers.append(str(response.headers) + await response.text())
    lines = logged(caplog)
    assert '"request_id"' in lines  # the request lines were looked at
    for request_id in sent:
        assert request_id not in lines
        assert all(request_id not in answer for answer in answers)


async def test_a_well_formed_request_id_is_logged_and_sent_back(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gateway: Client = await make_gateway()
    caplog.clear()  # the lines of making the gateway's team
    for request_id in ("abc-123", "trace:7f3a.span_2", "0" * 64, "nk", "bank.7"):
        response = await gateway.get("/v1/user", headers={"X-Request-Id": request_id})
        assert response.headers["X-Request-Id"] == request_id
        [record] = [r for r in caplog.records if r.name == "gateway.access"]
        assert json.loads(logs.JsonFormatter().format(record))["request_id"] == request_id
        caplog.clear()


@pytest.mark.parametrize(  # bank-7 too: nk- anywhere, and the request gets an id of ours
    "request_id",
    ["", "x" * 65, "no spaces", "semi;colon", "ünïcode", "nk-abc", "NK-abc", "bank-7",
     "A" * 43, "a_b-" * 10 + "abc", "tok-" + "s3cret-token-value-0123456789"],
)  # fmt: skip
def test_request_ids_refused(request_id: str) -> None:
    assert not acceptable_request_id(request_id, ["s3cret-token-value-0123456789"])


def test_a_piece_of_a_token_is_no_secret_to_refuse() -> None:
    """Refusing pieces of a token would answer, one guess at a time, what the token holds."""
    assert acceptable_request_id("token-value", ["s3cret-token-value-0123456789"])
