from __future__ import annotations

import pickle
import secrets
from collections.abc import Callable

import pytest

from gateway.config import Settings, SettingsError, estimated_bits

KEY = {"NOMIC_API_KEY": "nk-secret-value"}
STRONG = "c2f0a4b8e61d97f3a5c0e2b4d6f81a3e"  # 32 hex digits, from openssl rand -hex 16


def test_defaults() -> None:
    settings = Settings.from_sources({}, KEY)
    assert settings.port == 8080
    assert settings.upstream_url == "https://api-atlas.nomic.ai"
    assert settings.redis_url is None
    assert settings.max_image_bytes == 20 * 1024 * 1024
    assert settings.max_items == 512
    assert settings.url_ttl_seconds == 86400


def test_environment_and_flags_flags_win() -> None:
    env = {**KEY, "GATEWAY_PORT": "9000", "GATEWAY_REDIS_URL": "redis://r:6379/0"}
    assert Settings.from_sources({}, env).port == 9000
    settings = Settings.from_sources({"port": "9100"}, env)
    assert settings.port == 9100
    assert settings.redis_url == "redis://r:6379/0"


def test_missing_key_names_it() -> None:
    with pytest.raises(SettingsError, match="NOMIC_API_KEY is not set"):
        Settings.from_sources({}, {})


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT='eighty'"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({"GATEWAY_UPSTREAM_URL": "ftp://x"}, "GATEWAY_UPSTREAM_URL"),
        ({"GATEWAY_REDIS_URL": "localhost:6379"}, "GATEWAY_REDIS_URL"),
        ({"GATEWAY_MAX_ITEMS": "0"}, "GATEWAY_MAX_ITEMS"),
        ({"GATEWAY_URL_TTL_SECONDS": "-5"}, "GATEWAY_URL_TTL_SECONDS"),
        ({"GATEWAY_LOG_LEVEL": "loud"}, "GATEWAY_LOG_LEVEL"),
    ],
)
def test_malformed_setting_names_itself(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_sources({}, {**KEY, **env})


def test_malformed_flag_names_the_flag() -> None:
    with pytest.raises(SettingsError, match="--max-items"):
        Settings.from_sources({"max_items": "lots"}, KEY)


def test_settings_are_frozen_and_never_show_the_key() -> None:
    settings = Settings.from_sources({}, KEY)
    assert "nk-secret-value" not in repr(settings)
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]


def test_nomic_key_is_trimmed_of_a_trailing_newline() -> None:
    assert Settings.from_sources({}, {"NOMIC_API_KEY": "nk-abc\n"}).nomic_api_key == "nk-abc"


@pytest.mark.parametrize("bad", ["nk-a b", "nk-a\x00b", "  \n"])
def test_nomic_key_with_spaces_or_control_characters_is_refused_unshown(bad: str) -> None:
    with pytest.raises(SettingsError, match=r"NOMIC_API_KEY") as raised:
        Settings.from_sources({}, {"NOMIC_API_KEY": bad})
    if bad.strip():
        assert bad not in str(raised.value)


def test_the_metrics_token_may_not_be_the_admin_token() -> None:
    token = STRONG
    env = {"NOMIC_API_KEY": "nk-x", "GATEWAY_ADMIN_TOKEN": token, "GATEWAY_METRICS_TOKEN": token}
    with pytest.raises(SettingsError, match="must differ from GATEWAY_ADMIN_TOKEN"):
        Settings.from_sources({}, env)


@pytest.mark.parametrize("variable", ["GATEWAY_ADMIN_TOKEN", "GATEWAY_METRICS_TOKEN"])
@pytest.mark.parametrize(
    "token",
    ["a" * 24, "a" * 64, "ab" * 16, "0123456789abcdef" * 2, "abcdefghijklmnopqrstuvwxyz",
     "password1234password1234", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "Zz" * 12 + "0" * 24],
)  # fmt: skip
def test_a_guessable_token_is_refused_naming_the_setting_not_the_token(
    variable: str, token: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_sources({}, {**KEY, variable: token})
    message = str(raised.value)
    assert message.startswith(f"{variable}=*** is not valid: is guessable")
    assert "openssl rand -hex 32" in message
    assert token[:8] not in message


# Made in the test: random parameters would differ between pytest-xdist's workers.
RANDOM_TOKENS: dict[str, Callable[[], str]] = {
    "openssl-rand-hex-16": lambda: STRONG,
    "the-suite's": lambda: "admin-token-for-tests-0123456789",
    "hex-32": lambda: secrets.token_hex(32),
    "urlsafe-32": lambda: secrets.token_urlsafe(32),
    "urlsafe-18": lambda: "Ehb80fhgfjbMokwTXh24lsmT",  # 24 characters, 144 bits
    "passphrase": lambda: "correct-horse-battery-staple-7",
}


@pytest.mark.parametrize("make", RANDOM_TOKENS.values(), ids=RANDOM_TOKENS.keys())
def test_random_tokens_are_taken(make: Callable[[], str]) -> None:
    token = make()
    env = {**KEY, "GATEWAY_ADMIN_TOKEN": token, "GATEWAY_METRICS_TOKEN": "m-" + STRONG}
    settings = Settings.from_sources({}, env)
    assert settings.admin_token == token


def test_a_token_is_judged_by_its_free_characters() -> None:
    assert estimated_bits("a" * 1000) == 0  # a run
    assert estimated_bits("abcdefghijklmnopqrstuvwxyz") == 0  # one step
    assert estimated_bits(STRONG * 4) == estimated_bits(STRONG) >= 96  # a repeat counts once
    assert estimated_bits(STRONG * 2 + STRONG[:5]) == estimated_bits(STRONG)


def test_model_aliases_map_names_to_served_text_models() -> None:
    env = {**KEY, "GATEWAY_MODEL_ALIASES": " text-embedding-3-small=nomic-embed-text-v1.5, e=x "}
    with pytest.raises(SettingsError, match="'e' to 'x', which is not a text model served"):
        Settings.from_sources({}, env)
    env["GATEWAY_MODEL_ALIASES"] = "text-embedding-3-small = nomic-embed-text-v1.5,"
    settings = Settings.from_sources({}, env)
    assert settings.model_aliases == (("text-embedding-3-small", "nomic-embed-text-v1.5"),)
    assert Settings.from_sources({}, KEY).model_aliases == ()


@pytest.mark.parametrize(
    ("aliases", "words"),
    [
        ("small", "name=model pairs"),
        ("=nomic-embed-text-v1", "name=model pairs"),
        ("a=nomic-embed-text-v1,a=nomic-embed-text-v1.5", "names 'a' twice"),
        ("nomic-embed-text-v1=nomic-embed-text-v1.5", "a model's own name"),
        ("vision=nomic-embed-vision-v1.5", "not a text model"),
    ],
)
def test_malformed_model_aliases_are_refused(aliases: str, words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        Settings.from_sources({}, {**KEY, "GATEWAY_MODEL_ALIASES": aliases})


def test_settings_pickle_as_they_are_for_worker_processes() -> None:
    """``--workers`` starts its processes with the settings pickled (the spawn method)."""
    env = {**KEY, "GATEWAY_MODELS": '{"extra-text": {"kind": "text", "dimensions": 32}}',
           "GATEWAY_MODEL_ALIASES": "small=extra-text"}  # fmt: skip
    settings = Settings.from_sources({}, env)
    again = pickle.loads(pickle.dumps(settings))
    assert again == settings
    assert again.models.text_model("extra-text") == settings.models.text_model("extra-text")
