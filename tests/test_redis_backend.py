"""The Redis backend's scripts: registered once, run after their prelude, and an error Redis
answers names the file and line of ``gateway/store/lua/`` it came from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources

import pytest
from redis.exceptions import ClusterError

from gateway.store import RedisBackend, StoreError
from gateway.store.redis_backend import patiently
from tests.conftest import free_port


def lua(name: str) -> str:
    return resources.files("gateway.store").joinpath("lua", name).read_text()


def line_of(name: str, text: str) -> int:
    """The line of ``lua/<name>`` that holds ``text``, counted from 1."""
    lines = lua(name).splitlines()
    [found] = [number for number, line in enumerate(lines, 1) if text in line]
    return found


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    opened = RedisBackend(redis_url)
    yield opened
    await opened.close()


@pytest.fixture
async def unconnected() -> AsyncIterator[RedisBackend]:
    """A backend on a port nobody listens on: registering a script sends nothing."""
    opened = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    yield opened
    await opened.close()


def test_a_script_is_registered_once_per_backend_and_prelude(unconnected: RedisBackend) -> None:
    pace = unconnected.script("pace.lua")
    assert unconnected.script("pace.lua") is pace
    with_prelude = unconnected.script("admit.lua", prelude="usage.lua")
    assert unconnected.script("admit.lua", prelude="usage.lua") is with_prelude
    assert unconnected.script("admit.lua") is not with_prelude


def test_lines_after_the_prelude_are_counted_from_the_scripts_own_first_line(
    unconnected: RedisBackend,
) -> None:
    admit = unconnected.script("admit.lua", prelude="usage.lua")
    prelude_lines = len(lua("usage.lua").splitlines())
    assert admit.where(1) == "lua/usage.lua:1"
    assert admit.where(prelude_lines) == f"lua/usage.lua:{prelude_lines}"
    assert admit.where(prelude_lines + 1) == "lua/admit.lua:1"
    assert unconnected.script("hold.lua").where(7) == "lua/hold.lua:7"
    # an error that names no line still names the script
    out_of_memory = "command not allowed when used memory > 'maxmemory'."
    assert admit.locate(out_of_memory) == f"lua/admit.lua: {out_of_memory}"


async def test_a_lua_error_names_the_script_file_and_line(backend: RedisBackend) -> None:
    pace = backend.script("pace.lua", prelude="upstream.lua")
    with pytest.raises(StoreError) as failed:
        await backend.call("pace", pace(keys=["tat", "hold"], args=["not", "a", "number"]))
    line = line_of("upstream.lua", "local wait = tat - (burst - 1) * interval - now")
    assert f"Redis pace failed: ScriptError: lua/upstream.lua:{line}: " in str(failed.value)
    assert "user_script" not in str(failed.value)


async def test_an_error_in_a_script_or_in_its_prelude_names_its_own_file_and_line(
    backend: RedisBackend,
) -> None:
    """admit.lua runs after usage.lua: a line of either is named as it stands in its file,
    not as it stands in what Redis ran."""
    admit = backend.script("admit.lua", prelude="usage.lua")
    keys = [f"{{t}}:{n}" for n in range(10)]
    ttls = [60, 60, 60, 60, 60]
    # limits, TTLs, answered markers, the lease and lapsed leases, the most tags a day, then
    # a request: requests, images, texts, tokens, most tokens, n, pairs, tag
    a_usage_amount_that_is_no_number = [
        -1,
        -1,
        -1,
        -1,
        -1,
        *ttls,
        0,  # no settled markers whose answers came back, and how long they would live
        3600,
        900,  # a lease, and the most lapsed leases released
        64,
        100,
        1,
        1,
        0,
        0,
        -1,
        1,
        "hits",
        "many",
        "a-tag",
    ]
    with pytest.raises(StoreError) as in_prelude:
        await backend.call("admit", admit(keys=keys, args=a_usage_amount_that_is_no_number))
    line = line_of("usage.lua", "usage[field] = usage[field] + tonumber(ARGV[p + 1])")
    assert f": lua/usage.lua:{line}: " in str(in_prelude.value)

    a_limit_that_is_no_number = [
        "many",
        -1,
        -1,
        -1,
        -1,
        *ttls,
        0,
        3600,
        900,  # a lease, and the most lapsed leases released
        64,
        100,
        1,
        1,
        0,
        0,
        -1,
        0,
        "t",
    ]
    with pytest.raises(StoreError) as in_script:
        await backend.call("admit", admit(keys=keys, args=a_limit_that_is_no_number))
    line = line_of("admit.lua", "if limits[i] >= 0 and asked[i] > 0")
    assert f": lua/admit.lua:{line}: " in str(in_script.value)


async def test_a_failure_inside_redis_py_is_a_store_error_and_one_of_ours_is_not(
    unconnected: RedisBackend,
) -> None:
    """redis-py's cluster client can raise AttributeError during a failover (redis-py issue
    4287): the store failed, as far as the gateway is concerned."""
    from redis.commands.helpers import decode_dict_keys

    async def inside_redis_py() -> None:
        decode_dict_keys(None)  # type: ignore[arg-type]  # AttributeError, raised in redis-py

    async def ours() -> None:
        raise AttributeError("a bug of the gateway's own")

    with pytest.raises(StoreError, match="AttributeError in redis-py"):
        await unconnected.call("get", inside_redis_py())
    with pytest.raises(AttributeError, match="own"):
        await unconnected.call("get", ours())


async def test_an_operation_whose_slot_is_moving_is_tried_again_with_backoff_for_its_patience() -> (
    None
):
    """The cluster client gives up on TRYAGAIN (and ASK, MOVED) with "TTL exhausted": sent
    again after 10, 20, 40 ms... while the pauses stay within the patience, then raised."""
    tries: list[int] = []
    pauses: list[float] = []

    async def moving() -> str:
        tries.append(1)
        if len(tries) < 4:
            raise ClusterError("TTL exhausted.")
        return "done"

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    assert await patiently(moving, 1.0, sleep) == "done"
    assert pauses == [0.01, 0.02, 0.04]
    tries.clear()
    pauses.clear()
    with pytest.raises(ClusterError):
        await patiently(moving, 0.025, sleep)  # 10 + 20 ms waited: no third pause
    assert pauses == [0.01, 0.02]
    with pytest.raises(ClusterError, match="other"):
        await patiently(lambda: _raise(ClusterError("other")), 1.0, sleep)  # not a move


async def _raise(exc: Exception) -> None:
    raise exc
