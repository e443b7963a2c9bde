"""A request's line and headers as they arrive, counted before aiohttp's parser sees them:
where they end, whether they are over the limit, and the bytes a connection holds in the
process's budget of header bytes meanwhile (:class:`gateway.server.GatewayRequestHandler`
carries these decisions out). No I/O: the connection feeds the parser and keeps the clock.
"""

from __future__ import annotations

from gateway.held_bytes import ByteBudget, Held, Owner

BLANK_LINE = b"\r\n\r\n"  # where a request line and headers end (llhttp takes CRLF only)


def end_of_head(tail: bytes, data: bytes) -> int:
    """The offset in ``data`` just past the blank line that ends a request's line and headers,
    or -1 if it is not in ``data``; ``tail`` is the last (up to 3) bytes of them before
    ``data``, so a blank line split between two reads is found. Pure."""
    if tail:
        found = (tail + data[:3]).find(BLANK_LINE)
        if found >= 0:
            return found + len(BLANK_LINE) - len(tail)
    found = data.find(BLANK_LINE)
    return -1 if found < 0 else found + len(BLANK_LINE)


class RequestHead:
    """One connection's request line and headers coming in, and its share of the header
    budget: their bytes while they are not all in, and bytes it keeps past a body (while
    aiohttp does not read, or after a chunked body, until the connection closes)."""

    __slots__ = ("_budget", "_max_bytes", "coming", "held", "tail")

    def __init__(self, budget: ByteBudget, max_bytes: int) -> None:
        self._budget = budget
        self._max_bytes = max_bytes
        self.coming = False  # a request's line and headers are coming, not all in yet
        self.held = Held()  # their bytes so far, in the header budget while not all in
        self.tail = b""  # the last 3 of them: a blank line may be split between reads

    def end(self, data: bytes) -> int:
        """Where in ``data`` the request's line and headers end (:func:`end_of_head`)."""
        return end_of_head(self.tail, data)

    def begin(self, now: float) -> None:
        """The first byte of a request came at ``now``."""
        self.coming = True
        self.held.since = now

    def too_large(self, size: int) -> bool:
        """Whether ``size`` more bytes of them take them over the limit."""
        return self.held.bytes + size > self._max_bytes

    def room_for(self, count: int, now: float) -> bool:
        """Whether ``count`` more bytes fit in the budget, once the heaviest holders are
        dropped if they do not; False if this connection was one of them, or no room could
        be made."""
        budget = self._budget
        return budget.total + count <= budget.max_bytes or budget.make_room(count, now, self.held)

    def hold(self, piece: bytes, owner: Owner) -> None:
        """``piece`` of them, which does not end them, is held (since they began)."""
        self._budget.add(self.held, len(piece), self.held.since, owner)
        self.tail = piece[-3:] if len(piece) >= 3 else (self.tail + piece)[-3:]

    def keep(self, count: int, now: float, owner: Owner) -> None:
        """``count`` bytes past a body are held (since ``now`` if nothing was)."""
        self._budget.add(self.held, count, now, owner)

    def parsed(self) -> None:
        """The parser has them (or refused them): their bytes are no longer held."""
        self.coming = False
        if self.held.bytes:
            self._budget.release(self.held)
            self.tail = b""

    def release(self) -> None:
        """Nothing is held any more (idempotent)."""
        self._budget.release(self.held)

    @property
    def since(self) -> float | None:
        """When the request's line and headers began, while they are not all in."""
        return self.held.since if self.coming else None
