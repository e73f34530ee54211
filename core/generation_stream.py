"""A stream on its way to the caller: the backend's events passed through, its end settled on every way out.

``GenerationService.stream`` (core/generation_service.py) reserves and waits for the first event; ``metered``
yields the events, then hands what the stream cost (``StreamCharge``, core/stream_charge.py) and how it ended
to the service's settle step, which settles the reservation and writes the usage record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from core.errors import APIError, BackendError
from core.inference import StreamEvent
from core.stream_charge import StreamCharge, ended_by

#: Settles a stream and records how it ended: ``(prompt_tokens, completion_tokens, status, ended)``.
SettleStream = Callable[[int, int, int, str], Awaitable[None]]


async def metered(
    first: StreamEvent | None,
    events: AsyncIterator[StreamEvent],
    charge: StreamCharge,
    settle: SettleStream,
) -> AsyncIterator[StreamEvent]:
    """Pass events through; on every way out, settle to what reached the caller and record how it ended.

    Completed: the backend's final usage (the gateway's count where it gave none). Anything else after
    content (the caller went away, the backend failed, cut the stream or stalled past its deadline, the
    process is stopping): what was delivered, never 0 when text was sent, never above the reservation.
    A stream that ends without its end marker is a truncation (502 ``stream_truncated``), never "stop".
    """
    ended = "client_gone"  # left at a yield: the caller closed the stream
    status = 499
    try:
        event = first
        while event is not None and charge.end is None:
            charge.saw(event)
            yield event
            event = await anext(events, None)
        if charge.end is None:
            raise BackendError(
                "the model's stream ended before it finished; the answer is incomplete",
                status=502,
                code="stream_truncated",
            )
        ended, status = "completed", 200
    except APIError as exc:
        ended, status = ended_by(exc), exc.status
        raise
    except asyncio.CancelledError:
        ended = "cancelled"  # this task was cancelled: the server lost the caller or is shutting down
        raise
    finally:
        # Settled off the loop. Closed by aclose() (the caller left, the stream ended) or finalised by the
        # loop's asyncgen hooks, this finally may await; finalised with no loop running, it runs here.
        prompt_tokens, completion_tokens = charge.tokens()
        await settle(prompt_tokens, completion_tokens, status, ended)
        await aclose(events)


async def aclose(events: AsyncIterator[StreamEvent]) -> None:
    closer = getattr(events, "aclose", None)
    if closer is not None:
        await closer()


__all__ = ["SettleStream", "aclose", "metered"]
