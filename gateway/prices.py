"""Money beside tokens: the operator's prices per million tokens, and what tokens cost.

Prices are the operator's (``GATEWAY_PRICES``); the gateway knows none of Nomic's. Amounts are
:class:`~decimal.Decimal`, never floats: a cost is ``tokens * price / 1,000,000`` computed
exactly, then rounded once to the cent (half up), so every view that shows a figure shows the
same one.

The ledger counts tokens per team and day, not per model, so a price can only be applied
exactly when every model served has the same one: :func:`flat_price` refuses prices that
differ (``*`` prices every model not named). When usage is kept per model, per-model prices
apply where the split is known; the setting's format does not change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import NamedTuple

EVERY_MODEL = "*"
CENT = Decimal("0.01")
MILLION = Decimal(1_000_000)
MAX_PRICE = Decimal(1_000_000)  # per million tokens: past this a price is a typo
_PRICE = re.compile(r"[0-9]{1,7}(\.[0-9]{1,6})?")
_CURRENCY = re.compile(r"[A-Za-z$€£¥]{1,8}")


class Pricing(NamedTuple):
    """One price per million tokens for every model, in ``currency``."""

    per_million: Decimal
    currency: str

    def cost(self, tokens: int) -> Decimal:
        """What ``tokens`` cost, rounded to the cent."""
        return money(tokens, self.per_million)

    def priced(self, row: Mapping[str, object]) -> dict[str, object]:
        """A usage row with its billed and saved tokens' costs beside them (as strings, so
        JSON keeps every digit)."""
        return {
            **row,
            "billed_cost": str(self.cost(_tokens(row, "billed_tokens"))),
            "saved_cost": str(self.cost(_tokens(row, "saved_tokens"))),
            "currency": self.currency,
        }


def money(tokens: int, per_million: Decimal) -> Decimal:
    return (tokens * per_million / MILLION).quantize(CENT, rounding=ROUND_HALF_UP)


def _tokens(row: Mapping[str, object], field: str) -> int:
    value = row.get(field, 0)
    return value if isinstance(value, int) else 0


def parse_prices(text: str) -> tuple[tuple[str, Decimal], ...]:
    """``model=price,*=price``: prices per million tokens, ``*`` for every model not named."""
    prices: dict[str, Decimal] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        model, equals, price = (s.strip() for s in part.partition("="))
        if not equals or not model or not _PRICE.fullmatch(price):
            raise ValueError(
                f"must be model=price pairs (price per million tokens, e.g. 0.10; * for every "
                f"model) separated by commas, not {part[:60]!r}"
            )
        if model in prices:
            raise ValueError(f"prices {model[:60]!r} twice")
        try:
            value = Decimal(price)
        except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
            raise ValueError(f"{price[:20]!r} is not a number") from None
        if value > MAX_PRICE:
            raise ValueError(f"{model[:60]}'s price is over {MAX_PRICE} per million tokens")
        prices[model] = value
    return tuple(prices.items())


def parse_currency(text: str) -> str:
    currency = text.strip()
    if not _CURRENCY.fullmatch(currency):
        raise ValueError("must be 1 to 8 letters or a currency sign, e.g. USD or EUR")
    return currency


def flat_price(prices: Iterable[tuple[str, Decimal]], models: Iterable[str]) -> Decimal | None:
    """The one price of every model in ``models`` (None: no prices set). Raises ValueError
    when they differ, or some are priced and others not: usage is not kept per model, so a
    team's tokens cannot be split among prices."""
    table, models = dict(prices), tuple(models)
    if not table:
        return None
    unknown = sorted(set(table) - {EVERY_MODEL, *models})
    if unknown:
        raise ValueError(f"prices {unknown[0]!r}, which is not a model served")
    default = table.get(EVERY_MODEL)
    each = {model: table.get(model, default) for model in models}
    found = set(each.values())
    if len(found) > 1:
        shown = ", ".join(f"{m}={'unpriced' if p is None else p}" for m, p in sorted(each.items()))
        raise ValueError(
            "gives models different prices, but usage is counted per team and day, not per "
            f"model, so a team's tokens cannot be split among them; give one price to every "
            f"model (*=price). Given: {shown}"
        )
    (price,) = found
    return price
