"""Settings: one frozen dataclass, read once from flags and ``GATEWAY_*`` environment variables.

Every field names its environment variable and its parser in the field's metadata, so the
command line, the environment and the docs all come from this one table. A missing or
malformed setting raises :class:`SettingsError` naming the variable; ``serve`` prints that one
line and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from gateway.model_table import DEFAULT_MODELS, ModelTable, extended_by_json
from gateway.models import MAX_TEXTS_PER_UPSTREAM_CALL
from gateway.prices import Pricing, flat_price, parse_currency, parse_prices
from gateway.tags import DEFAULT_TAGS_PER_DAY

KiB = 1024
MiB = 1024 * 1024
SECRETS = ("nomic_api_key", "admin_token", "metrics_token")  # from the environment only
MIN_TOKEN_LENGTH = 24
MIN_TOKEN_BITS = 96  # what a token must seem to hold; openssl rand -hex 32 gives 256
PRINTABLE = 95  # printable ASCII characters: the largest alphabet a token is credited with
MEMORY_DATA_DIR = ":memory:"  # GATEWAY_DATA_DIR's value for an embedded store kept in memory


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def _whole(text: str) -> int:
    return int(text.replace("_", ""))


def _at_least(cast: Callable[[str], float], low: float, above: bool, what: str) -> Any:
    """A parser of numbers ``> low`` (``above``) or ``>= low``; ``what`` names the rule."""

    def parse(text: str) -> float:
        value = cast(text)
        if not (value > low if above else value >= low):  # also refuses NaN
            raise ValueError(f"must be {what}")
        return value

    return parse


_positive_int = _at_least(_whole, 0, True, "a positive whole number")
_non_negative_int = _at_least(_whole, 0, False, "a whole number >= 0")
_positive_float = _at_least(float, 0, True, "a positive number")
_non_negative_float = _at_least(float, 0, False, "a number >= 0")


def _api_key(text: str) -> str:
    key = text.strip()  # secret files and env files often end in a newline
    if not key or not key.isprintable() or " " in key:
        raise ValueError("must be one token without spaces or control characters")
    return key


def _access_token(text: str) -> str:
    token = _api_key(text)
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"must be at least {MIN_TOKEN_LENGTH} characters, e.g. from `openssl rand -hex 32`"
        )
    bits = estimated_bits(token)
    if bits < MIN_TOKEN_BITS:  # the message says how much, never what: it is logged
        raise ValueError(
            f"is guessable (repeats, runs or sequences: about {bits:.0f} bits of randomness, "
            f"{MIN_TOKEN_BITS} needed); make one with `openssl rand -hex 32`"
        )
    return token


def estimated_bits(token: str) -> float:
    """About how many bits of randomness ``token`` holds, judged from the token alone, as
    length times bits a character, where only the free characters count: a run of one
    character counts twice at most, a token that repeats itself once. A character is worth
    what one of a random draw would be from the alphabet whose size best explains how many
    distinct characters the token shows, and how many distinct steps between neighbours
    (``abcdef...``, one step, is worth nothing). Random tokens of 128 bits or more pass 96:
    of 100,000 from ``openssl rand -hex 16`` about one is refused, from ``-hex 32`` none."""
    free = _one_period(_short_runs(token))
    steps = [ord(b) - ord(a) for a, b in itertools.pairwise(free)]
    chars = _alphabet(len(free), len(set(free)))
    return len(free) * math.log2(min(chars, _alphabet(len(steps), len(set(steps)))))


def _short_runs(text: str) -> str:
    """``text`` with each run of one character cut to two."""
    return "".join(char * min(2, len(list(run))) for char, run in itertools.groupby(text))


def _one_period(text: str) -> str:
    """The shortest start of ``text`` that ``text`` repeats (all of it if it repeats none):
    its length is that of ``text`` less its longest border (Knuth-Morris-Pratt)."""
    border = [0] * len(text)
    for i in range(1, len(text)):
        k = border[i - 1]
        while k and text[i] != text[k]:
            k = border[k - 1]
        border[i] = k + 1 if text[i] == text[k] else 0
    return text[: len(text) - border[-1]] if text else text


def _alphabet(drawn: int, distinct: int) -> float:
    """The alphabet size at which ``drawn`` random characters show ``distinct`` different
    ones on average (``a * (1 - (1 - 1/a) ** drawn) == distinct``), at most PRINTABLE."""
    if distinct <= 1:
        return 1.0
    low, high = float(distinct), float(PRINTABLE)
    if high * (1 - (1 - 1 / high) ** drawn) <= distinct:
        return high
    for _ in range(40):  # bisection: the average grows with the alphabet
        middle = (low + high) / 2
        if middle * (1 - (1 - 1 / middle) ** drawn) < distinct:
            low = middle
        else:
            high = middle
    return low


def _readable_file(text: str) -> str:
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError("must be a readable file")
    return text


def _model_table(text: str) -> ModelTable:
    """Nomic's models with the operator's: a JSON object, or the path of a file holding one."""
    if text.lstrip().startswith("{"):
        return extended_by_json(text)
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ValueError("must be a JSON object, or the path of a readable file holding one")
    try:
        with open(text, "rb") as file:
            return extended_by_json(file.read())
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None


def _writable_directory(text: str) -> str:
    if not os.path.isdir(text) or not os.access(text, os.W_OK | os.X_OK):
        raise ValueError("must be a writable directory")
    return text


def default_data_dir() -> str:
    """``$XDG_STATE_HOME/nomic-gateway``, XDG's ``~/.local/state`` when that is unset."""
    state = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):
        state = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "nomic-gateway")


def _data_dir(text: str) -> str | None:
    return None if text == MEMORY_DATA_DIR else os.path.abspath(os.path.expanduser(text))


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return value


def _http_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL")
    return text.rstrip("/")


def _redis_url(text: str) -> str:
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return text


def _failure_mode(text: str) -> str:
    if text not in ("open", "closed"):
        raise ValueError("must be open or closed")
    return text


def _redis_mode(text: str) -> str:
    if text not in ("standalone", "cluster"):
        raise ValueError("must be standalone or cluster")
    return text


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
        raise ValueError("must be on or off")
    return value in ("on", "true", "1", "yes")


def _log_format(text: str) -> str:
    if text not in ("json", "text"):
        raise ValueError("must be json or text")
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of debug, info, warning, error")
    return level


def _aliases(text: str) -> tuple[tuple[str, str], ...]:
    """``name=model,name=model``: names a tool may insist on, each mapped to a served model."""
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, equals, model = (s.strip() for s in part.partition("="))
        if not equals or not name or not model:
            raise ValueError(f"must be name=model pairs separated by commas, not {part[:60]!r}")
        if name in pairs:
            raise ValueError(f"names {name[:60]!r} twice")
        pairs[name] = model
    return tuple(pairs.items())


def _setting(
    env: str, parse: Callable[[str], Any], help: str, default: Any = dataclasses.MISSING
) -> Any:
    return dataclasses.field(default=default, metadata={"env": env, "parse": parse, "help": help})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway reads from its environment, validated once at start-up."""

    nomic_api_key: str = _setting(
        "NOMIC_API_KEY", _api_key, "the organisation's Nomic API key (required; never logged)"
    )
    admin_token: str | None = _setting(
        "GATEWAY_ADMIN_TOKEN",
        _access_token,
        "bearer token of the admin API; unset: the admin API is off (never logged)",
        None,
    )
    metrics_token: str | None = _setting(
        "GATEWAY_METRICS_TOKEN",
        _access_token,
        "bearer token /metrics asks for (it shows every team's usage); unset: /metrics is "
        "open to anyone who reaches the port (never logged)",
        None,
    )
    host: str = _setting("GATEWAY_HOST", str, "address to listen on", "127.0.0.1")
    port: int = _setting("GATEWAY_PORT", _port, "port to listen on", 8080)
    workers: int = _setting(
        "GATEWAY_WORKERS", _positive_int, "gateway processes sharing the port (needs Redis)", 1
    )
    metrics_dir: str | None = _setting(
        "GATEWAY_METRICS_DIR",
        _writable_directory,
        "writable directory in which --workers keeps its processes' metrics files (a folder "
        "of its own, removed at exit); unset: the system's temporary directory",
        None,
    )
    upstream_url: str = _setting(
        "GATEWAY_UPSTREAM_URL", _http_url, "Nomic's API base URL", "https://api-atlas.nomic.ai"
    )
    redis_url: str | None = _setting(
        "GATEWAY_REDIS_URL", _redis_url, "Redis URL; unset: the embedded in-process store", None
    )
    redis_mode: str = _setting(
        "GATEWAY_REDIS_MODE",
        _redis_mode,
        "standalone, or cluster (the URL names any seed node)",
        "standalone",
    )
    on_store_failure: str = _setting(
        "GATEWAY_ON_STORE_FAILURE",
        _failure_mode,
        "open: limits and pacing hold per process while Redis fails; closed: answer 503",
        "open",
    )
    redis_timeout_seconds: float = _setting(
        "GATEWAY_REDIS_TIMEOUT_SECONDS", _positive_float, "timeout of one Redis operation", 1.0
    )
    redis_max_connections: int = _setting(
        "GATEWAY_REDIS_MAX_CONNECTIONS",
        _positive_int,
        "Redis connections per process (more requests wait for one)",
        64,
    )
    data_dir: str | None = _setting(
        "GATEWAY_DATA_DIR",
        _data_dir,
        "directory where the embedded store (no GATEWAY_REDIS_URL) keeps teams, keys, usage "
        f"and cache across restarts, one process's own; {MEMORY_DATA_DIR}: in the process "
        "only, forgotten when it stops",
        default_data_dir(),
    )
    disk_cache_bytes: int = _setting(
        "GATEWAY_DISK_CACHE_BYTES",
        _positive_int,
        "most bytes the embedded store's cache takes on disk (least recently used out first; "
        "teams, keys and usage are never evicted)",
        1024 * MiB,
    )
    memory_store_bytes: int = _setting(
        "GATEWAY_MEMORY_STORE_BYTES",
        _positive_int,
        f"embedded store's cache size in bytes with GATEWAY_DATA_DIR={MEMORY_DATA_DIR}",
        256 * MiB,
    )
    hot_cache_bytes: int = _setting(
        "GATEWAY_HOT_CACHE_BYTES",
        _non_negative_int,
        "in-process cache of hot, decoded answers in front of the store, in bytes (0: off)",
        64 * MiB,
    )
    max_image_bytes: int = _setting(
        "GATEWAY_MAX_IMAGE_BYTES", _positive_int, "largest image accepted, in bytes", 20 * MiB
    )
    max_body_bytes: int = _setting(
        "GATEWAY_MAX_BODY_BYTES", _positive_int, "largest request body, in bytes", 64 * MiB
    )
    body_bytes_in_flight: int = _setting(
        "GATEWAY_BODY_BYTES_IN_FLIGHT",
        _positive_int,
        "request body bytes one process holds at once, all requests together (then 503)",
        256 * MiB,
    )
    max_items: int = _setting(
        "GATEWAY_MAX_ITEMS", _positive_int, "most images, URLs or texts in one request", 512
    )
    max_text_bytes: int = _setting(
        "GATEWAY_MAX_TEXT_BYTES", _positive_int, "longest text accepted, in UTF-8 bytes", 512 * KiB
    )
    models: ModelTable = _setting(
        "GATEWAY_MODELS",
        _model_table,
        "models served besides (or instead of) Nomic's: a JSON object of model name to "
        '{"kind", "dimensions", "smallest_dimensionality", "context_tokens"} or null, or the '
        "path of a JSON file holding one",
        DEFAULT_MODELS,
    )
    url_ttl_seconds: int = _setting(
        "GATEWAY_URL_TTL_SECONDS", _positive_int, "how long a URL's embedding is cached", 86400
    )
    upstream_batch_size: int = _setting(
        "GATEWAY_UPSTREAM_BATCH_SIZE", _positive_int, "most items in one upstream call", 64
    )
    upstream_text_batch_size: int = _setting(
        "GATEWAY_UPSTREAM_TEXT_BATCH_SIZE",
        _positive_int,
        "most texts in one upstream call (Nomic's limit is 10)",
        MAX_TEXTS_PER_UPSTREAM_CALL,
    )
    upstream_batch_bytes: int = _setting(
        "GATEWAY_UPSTREAM_BATCH_BYTES", _positive_int, "most bytes in one upstream call", 32 * MiB
    )
    upstream_linger_seconds: float = _setting(
        "GATEWAY_UPSTREAM_LINGER_SECONDS",
        _non_negative_float,
        "how long a miss waits for others to share its upstream call",
        0.01,
    )
    upstream_rate_calls: int = _setting(
        "GATEWAY_UPSTREAM_RATE_CALLS",
        _positive_int,
        "upstream calls allowed per rate period, all replicas together",
        1200,
    )
    upstream_rate_period_seconds: float = _setting(
        "GATEWAY_UPSTREAM_RATE_PERIOD_SECONDS", _positive_float, "the rate period", 300.0
    )
    upstream_rate_burst: int = _setting(
        "GATEWAY_UPSTREAM_RATE_BURST", _positive_int, "upstream calls that may go back to back", 1
    )
    upstream_concurrency: int = _setting(
        "GATEWAY_UPSTREAM_CONCURRENCY",
        _positive_int,
        "upstream calls in flight at once, all replicas together",
        8,
    )
    upstream_queue_items: int = _setting(
        "GATEWAY_UPSTREAM_QUEUE_ITEMS",
        _positive_int,
        "misses that may wait for an upstream call in one process (then 503)",
        10_000,
    )
    upstream_max_attempts: int = _setting(
        "GATEWAY_UPSTREAM_MAX_ATTEMPTS", _positive_int, "tries of one upstream call", 6
    )
    upstream_timeout_seconds: float = _setting(
        "GATEWAY_UPSTREAM_TIMEOUT_SECONDS", _positive_float, "timeout of one upstream call", 30.0
    )
    request_deadline_seconds: float = _setting(
        "GATEWAY_REQUEST_DEADLINE_SECONDS",
        _positive_float,
        "how long a request may wait for Nomic, retries included",
        60.0,
    )
    breaker_failures: int = _setting(
        "GATEWAY_BREAKER_FAILURES",
        _positive_int,
        "failed upstream calls in a row that open the circuit breaker",
        5,
    )
    breaker_open_seconds: float = _setting(
        "GATEWAY_BREAKER_OPEN_SECONDS",
        _positive_float,
        "how long the breaker stays open before it lets calls try again",
        5.0,
    )
    stale_grace_seconds: int = _setting(
        "GATEWAY_STALE_GRACE_SECONDS",
        _non_negative_int,
        "how long past its TTL a URL's embedding may be served while Nomic fails",
        86400,
    )
    body_timeout_seconds: float = _setting(
        "GATEWAY_BODY_TIMEOUT_SECONDS",
        _positive_float,
        "how long a client may take to send its request body",
        60.0,
    )
    shutdown_timeout_seconds: float = _setting(
        "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS",
        _positive_float,
        "how long in-flight requests may run after SIGTERM",
        30.0,
    )
    teams_file: str | None = _setting(
        "GATEWAY_TEAMS_FILE", _readable_file, "TOML file of teams applied at start-up", None
    )
    key_cache_seconds: float = _setting(
        "GATEWAY_KEY_CACHE_SECONDS",
        _positive_float,
        "how long a key lookup is cached in the process (a revoked key works that long)",
        1.0,
    )
    tokens_per_item_estimate: int = _setting(
        "GATEWAY_TOKENS_PER_ITEM_ESTIMATE",
        _positive_int,
        "tokens reserved per miss until Nomic's first answer shows the real cost",
        1,
    )
    usage_flush_seconds: float = _setting(
        "GATEWAY_USAGE_FLUSH_SECONDS",
        _positive_float,
        "how often usage counted in the process is written to the store",
        1.0,
    )
    max_connections: int | None = _setting(
        "GATEWAY_MAX_CONNECTIONS",
        _positive_int,
        "most open client connections per process (then the longest-idle one is closed); "
        "unset: the descriptor limit minus what Redis, Nomic and files need",
        None,
    )
    header_timeout_seconds: float = _setting(
        "GATEWAY_HEADER_TIMEOUT_SECONDS",
        _positive_float,
        "how long a client may take to send its request line and headers",
        10.0,
    )
    max_header_bytes: int = _setting(
        "GATEWAY_MAX_HEADER_BYTES",
        _positive_int,
        "most bytes of one request's request line and headers together (then 431)",
        32 * KiB,
    )
    header_bytes_in_flight: int = _setting(
        "GATEWAY_HEADER_BYTES_IN_FLIGHT",
        _positive_int,
        "bytes of request headers not yet complete one process holds, all connections "
        "together; past it the connections holding the most the longest are closed",
        16 * MiB,
    )
    slow_client_seconds: float = _setting(
        "GATEWAY_SLOW_CLIENT_SECONDS",
        _positive_float,
        "at the connection bound, a connection whose headers are not in after this long, or "
        "whose client read none of its answer for this long, may be closed for a new one",
        2.0,
    )
    min_body_bytes_per_second: int = _setting(
        "GATEWAY_MIN_BODY_BYTES_PER_SECOND",
        _non_negative_int,
        "at the connection bound, a connection whose body comes slower than this may be "
        "closed for a new one (0: never for its body's pace)",
        8 * KiB,
    )
    body_rate_window_seconds: float = _setting(
        "GATEWAY_BODY_RATE_WINDOW_SECONDS",
        _positive_float,
        "how long a body's pace is measured over before it is judged",
        5.0,
    )
    write_timeout_seconds: float = _setting(
        "GATEWAY_WRITE_TIMEOUT_SECONDS",
        _positive_float,
        "how long an answer may wait in the send buffer without the client reading any of it "
        "(then the connection is closed, the answer dropped)",
        30.0,
    )
    unsent_bytes_in_flight: int = _setting(
        "GATEWAY_UNSENT_BYTES_IN_FLIGHT",
        _positive_int,
        "answer bytes one process keeps waiting for slow clients to read, all connections "
        "together; past it the connections holding the most the longest are closed",
        128 * MiB,
    )
    answer_wait_seconds: float = _setting(
        "GATEWAY_ANSWER_WAIT_SECONDS",
        _positive_float,
        "how long a request waits for room in the unsent budget before its answer is built, "
        "when answers being built or let go of fill it (then 503 with Retry-After)",
        1.0,
    )
    model_aliases: tuple[tuple[str, str], ...] = _setting(
        "GATEWAY_MODEL_ALIASES",
        _aliases,
        "other names of served text models, taken on /v1/embeddings for tools that insist on "
        "a name (text-embedding-3-small=nomic-embed-text-v1.5,...); none by default",
        (),
    )
    console: bool = _setting(
        "GATEWAY_CONSOLE",
        _on_off,
        "the spend console at /console, for teams (their key) and the operator (the admin "
        "token): on or off",
        True,
    )
    console_session_seconds: float = _setting(
        "GATEWAY_CONSOLE_SESSION_SECONDS",
        _positive_float,
        "how long a console sign-in lasts before the key or token is asked for again",
        8 * 3600.0,
    )
    trust_forwarded: bool = _setting(
        "GATEWAY_TRUST_FORWARDED",
        _on_off,
        "on behind a proxy that sets X-Forwarded-For and X-Forwarded-Proto: the console counts "
        "sign-in attempts per address the proxy names, and marks its cookie Secure when the "
        "proxy was reached over https; off: the peer's address, and Secure over TLS only",
        False,
    )
    prices: tuple[tuple[str, Decimal], ...] = _setting(
        "GATEWAY_PRICES",
        parse_prices,
        "prices per million tokens, model=price pairs separated by commas (* for every model "
        "not named); usage is kept per team and day, not per model, so every model served "
        "must have the same price; unset: usage in tokens only",
        (),
    )
    currency: str = _setting(
        "GATEWAY_CURRENCY", parse_currency, "the currency GATEWAY_PRICES are in", "USD"
    )
    tags_per_day: int = _setting(
        "GATEWAY_TAGS_PER_DAY",
        _positive_int,
        "the most distinct tags (X-Gateway-Tag, or OpenAI's user field) a team's usage is "
        "kept under a day; the tags past it count as other",
        DEFAULT_TAGS_PER_DAY,
    )
    log_level: str = _setting("GATEWAY_LOG_LEVEL", _log_level, "log level", "INFO")
    log_format: str = _setting(
        "GATEWAY_LOG_FORMAT", _log_format, "json (one object per line) or text", "json"
    )

    def __post_init__(self) -> None:
        if self.body_bytes_in_flight < self.max_body_bytes:
            raise SettingsError(
                f"GATEWAY_BODY_BYTES_IN_FLIGHT ({self.body_bytes_in_flight}) must be at least "
                f"GATEWAY_MAX_BODY_BYTES ({self.max_body_bytes}): a largest body must fit"
            )
        if self.header_bytes_in_flight < self.max_header_bytes:
            raise SettingsError(
                f"GATEWAY_HEADER_BYTES_IN_FLIGHT ({self.header_bytes_in_flight}) must be at "
                f"least GATEWAY_MAX_HEADER_BYTES ({self.max_header_bytes}): a largest request "
                "head must fit"
            )
        served = self.models.names("text")
        for name, model in self.model_aliases:
            if model not in served:
                raise SettingsError(
                    f"GATEWAY_MODEL_ALIASES maps {name!r} to {model!r}, which is not a text "
                    f"model served: {', '.join(served)}"
                )
            if name in served:
                raise SettingsError(f"GATEWAY_MODEL_ALIASES: {name!r} is a model's own name")
        try:
            flat_price(self.prices, (model.name for model in self.models.models()))
        except ValueError as exc:
            raise SettingsError(f"GATEWAY_PRICES {exc}") from None
        if self.metrics_token is not None and self.metrics_token == self.admin_token:
            raise SettingsError(
                "GATEWAY_METRICS_TOKEN must differ from GATEWAY_ADMIN_TOKEN: whoever scrapes "
                "the metrics must not hold the admin API"
            )

    @property
    def pricing(self) -> Pricing | None:
        """The one price per million tokens of every model served; None: no prices set."""
        price = flat_price(self.prices, (model.name for model in self.models.models()))
        return None if price is None else Pricing(price, self.currency)

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in SECRETS:
            shown[name] = "***" if shown[name] is not None else None
        return f"Settings({shown})"

    @classmethod
    def from_sources(cls, flags: Mapping[str, str | None], env: Mapping[str, str]) -> Settings:
        """Build settings from flag values (by field name) over environment variables."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name: str = field.metadata["env"]
            raw = flags.get(field.name)
            source = f"--{field.name.replace('_', '-')}"
            if raw is None:
                raw, source = env.get(name), name
            if raw is None or raw == "":
                if field.default is dataclasses.MISSING:
                    raise SettingsError(f"{name} is not set: {field.metadata['help']}")
                continue
            try:
                values[field.name] = field.metadata["parse"](raw)
            except ValueError as exc:
                shown = "***" if field.name in SECRETS else repr(raw)
                raise SettingsError(f"{source}={shown} is not valid: {exc}") from None
        return cls(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per setting (except secrets, which come only from the environment)."""
    for field in dataclasses.fields(Settings):
        if field.name in SECRETS:
            continue
        default = "" if field.default in (None, dataclasses.MISSING) else f"; {field.default}"
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            default=None,
            help=f"{field.metadata['help']} (env {field.metadata['env']}{default})",
        )
