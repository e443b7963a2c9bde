"""Upstream failures map to clear answers, and nothing from a failed call is cached."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from fake_nomic import FAKE_API_KEY, FakeNomic, png
from tests.conftest import GatewayFactory, team_headers
from tests.helpers import image_form, post_images, post_urls
from tests.test_faults_functional import until

Client = TestClient[Any, Any]


async def assert_nothing_cached(gateway: Client, fake: FakeNomic, images: list[bytes]) -> None:
    fake.calls.clear()
    response = await post_images(gateway, images)
    assert response.status == 200
    assert response.headers["X-Cache"] == "MISS"
    assert fake.items_received == images


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [
        (500, 502, "upstream_error"),
        (502, 502, "upstream_error"),
        (503, 503, "upstream_error.unavailable"),
        (429, 503, "upstream_error.unavailable"),
        ("drop", 502, "upstream_error"),
    ],
)
async def test_upstream_faults(
    gateway: Client, fake_nomic: FakeNomic, fault: int | str, status: int, kind: str
) -> None:
    fake_nomic.fail_next = [fault]
    response = await post_images(gateway, [png(1)])
    assert response.status == status
    assert (await response.json())["detail"][0]["type"] == kind
    await assert_nothing_cached(gateway, fake_nomic, [png(1)])


async def test_rate_limit_passes_retry_after_on(gateway: Client, fake_nomic: FakeNomic) -> None:
    fake_nomic.fail_next, fake_nomic.retry_after = [429], 7
    response = await post_images(gateway, [png(1)])
    assert response.status == 503
    assert response.headers["Retry-After"] == "7"


async def test_timeout_is_a_504(make_gateway: GatewayFactory, fake_nomic: FakeNomic) -> None:
    gateway = await make_gateway(upstream_timeout_seconds=0.2)
    fake_nomic.latency = 1.0
    response = await post_images(gateway, [png(1)])
    assert response.status == 504
    fake_nomic.latency = 0
    await assert_nothing_cached(gateway, fake_nomic, [png(1)])


async def test_refused_credentials_are_a_502_that_never_shows_the_key(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "nk-the-real-organisation-key-must-stay-secret"
    gateway = await make_gateway(nomic_api_key=secret)
    response = await post_images(gateway, [png(1)])
    assert response.status == 502
    text = await response.text()
    assert "credentials" in text
    assert secret not in text
    assert FAKE_API_KEY not in text
    assert secret not in caplog.text
    metrics = await (await gateway.get("/metrics")).text()
    assert secret not in metrics


async def test_unreachable_upstream_is_a_502(make_gateway: GatewayFactory) -> None:
    from tests.conftest import free_port

    gateway = await make_gateway(upstream_url=f"http://127.0.0.1:{free_port()}")
    response = await post_images(gateway, [png(1)])
    assert response.status == 502
    assert "could not reach Nomic" in (await response.json())["detail"][0]["msg"]


async def test_one_corrupt_image_gets_a_422_at_its_position_and_the_rest_is_kept(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    corrupt = b"\x89PNG\r\n\x1a\n" + b"definitely not the rest of a PNG"
    images = [png(0), png(1), corrupt, png(3)]
    response = await post_images(gateway, images)
    assert response.status == 422
    detail = (await response.json())["detail"][0]
    assert detail["loc"] == ["body", "images", 2]
    assert "cannot identify image file" in detail["msg"]
    # the batch was resent without the corrupt image, and the good ones were cached
    assert fake_nomic.calls[-1].items == [png(0), png(1), png(3)]
    fake_nomic.calls.clear()
    again = await post_images(gateway, [png(3), png(0), png(1)])
    assert again.headers["X-Cache"] == "HIT"
    assert fake_nomic.calls == []


async def test_unfetchable_url_gets_a_422_at_its_position(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    urls = ["https://example.com/ok.png", "https://unreachable.example/x.png"]
    response = await post_urls(gateway, urls)
    assert response.status == 422
    assert (await response.json())["detail"][0]["loc"] == ["body", "urls", 1]


async def test_malformed_upstream_answer_is_a_502(
    gateway: Client, fake_nomic: FakeNomic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeNomic, "embedding", staticmethod(lambda model, item: []))
    response = await post_images(gateway, [png(1)])
    assert response.status == 502
    assert "malformed" in (await response.json())["detail"][0]["msg"]


async def test_a_request_full_of_rejected_images_costs_at_most_three_upstream_calls(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    corrupt = [b"\xff\xd8\xff" + bytes([seed]) * 20 for seed in range(10)]
    response = await post_images(gateway, [png(0), *corrupt, png(1)])
    assert response.status == 422
    assert (await response.json())["detail"][0]["loc"] == ["body", "images", 1]
    assert len(fake_nomic.calls) == 3


async def test_a_request_out_of_resends_does_not_fail_an_image_another_team_joined(
    gateway: Client, fake_nomic: FakeNomic
) -> None:
    """An attacker sends three corrupt images and a popular one, again and again: after the
    third refusal its remaining items are withdrawn. Another team's request that joined the
    popular image's fetch meanwhile takes it over, gets its answer and pays for it; it was
    answered the attacker's 502."""
    attacker = await team_headers(gateway, "attacker")
    victim = await team_headers(gateway, "victim")
    corrupt = [b"\x89PNG\r\n\x1a\n" + bytes([seed]) * 40 for seed in range(3)]
    popular = png(777)
    fake_nomic.latency = 0.3  # each of the attacker's three calls takes a while
    sent = asyncio.create_task(gateway.post(
        "/v1/embedding/image", data=image_form([*corrupt, popular]), headers=attacker
    ))  # fmt: skip
    await until(lambda: bool(fake_nomic.calls), "the attacker's first call")
    joined = await gateway.post("/v1/embedding/image", data=image_form([popular]), headers=victim)
    assert (await sent).status == 422
    assert joined.status == 200, await joined.text()
    assert (joined.headers["X-Cache"], joined.headers["X-Billed-Tokens"]) == (
        "MISS", str(fake_nomic.tokens_per_image)
    )  # fmt: skip
    answered = [call for call in fake_nomic.calls if call.status == 200]
    assert [call.items for call in answered] == [[popular]]  # embedded once, for the victim
    assert len(fake_nomic.calls) == 4  # the attacker's three, all refused, and the victim's


async def test_other_teams_images_are_not_resent_once_per_corrupt_image_of_a_team(
    make_gateway: GatewayFactory, fake_nomic: FakeNomic
) -> None:
    """Twenty one-image requests of corrupt images from one team and another team's image
    share a batch. Each request may cost 3 resends, but the batch had no bound: the victim's
    image went out again with every refusal (21 calls). Once Nomic refuses a team's item, the
    team's items leave the batch for a lane of their own, so the victim's is resent once."""
    gateway = await make_gateway(upstream_linger_seconds=0.3)
    attacker = await team_headers(gateway, "attacker")
    victim = await team_headers(gateway, "victim")
    assert (await post_images(gateway, [png(100)])).status == 200  # the lane is no longer quiet
    corrupt = [b"\x89PNG\r\n\x1a\n" + bytes([seed]) * 40 for seed in range(20)]
    sent = [asyncio.create_task(gateway.post("/v1/embedding/image", data=image_form([image]),
                                             headers=attacker)) for image in corrupt]  # fmt: skip
    await until(lambda: len(fake_nomic.calls) == 1, "the first image's call")
    response = await gateway.post("/v1/embedding/image", data=image_form([png(1)]), headers=victim)
    assert response.status == 200
    assert [r.status for r in await asyncio.gather(*sent)] == [422] * 20
    carrying = [call for call in fake_nomic.calls if png(1) in call.items]
    assert len(carrying) <= 2, f"the victim's image went out {len(carrying)} times"
    assert carrying[-1].status == 200
    # the attacker's items were each refused once, in calls of their own
    refused = [item for call in fake_nomic.calls if call.status == 422 for item in call.items]
    assert set(corrupt) <= set(refused)


async def test_non_numbers_in_an_upstream_vector_are_a_502_and_not_cached(
    gateway: Client, fake_nomic: FakeNomic, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = FakeNomic.embedding
    monkeypatch.setattr(
        FakeNomic, "embedding", staticmethod(lambda model, item: [*real(model, item)[:-1], "0.1"])
    )
    response = await post_images(gateway, [png(1)])
    assert response.status == 502
    monkeypatch.setattr(FakeNomic, "embedding", staticmethod(real))
    await assert_nothing_cached(gateway, fake_nomic, [png(1)])


async def test_vectors_of_different_lengths_are_a_502(
    gateway: Client, fake_nomic: FakeNomic, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = FakeNomic.embedding

    def uneven(model: str, item: bytes) -> list[float]:
        return real(model, item)[: 768 if item == png(1) else 10]

    monkeypatch.setattr(FakeNomic, "embedding", staticmethod(uneven))
    response = await post_images(gateway, [png(1), png(2), png(3)])
    assert response.status == 502
    assert "malformed" in (await response.json())["detail"][0]["msg"]
