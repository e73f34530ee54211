"""Reading an OpenAI-style SSE stream (chat or completions) to its end, for every backend that receives one.

The OpenAI-compatible backend, Vertex AI's OpenAI chat route and Azure ML's OpenAI-compatible deployments all
receive the same ``data:`` lines: chunks with text, a finish reason in the last text chunk, an optional usage
chunk, then ``data: [DONE]``. What a stream *means* is decided once, here:

* the text pieces are yielded as they arrive;
* the answer is whole once a finish reason came; a body that breaks off after it (only the usage chunk or
  ``[DONE]`` missing) still counts as whole;
* a stream that breaks off before it is ``interrupted`` (502 ``stream_interrupted``, or a timeout), one that
  ends (``[DONE]`` or the body's end) without a finish reason is ``truncated``; either is retryable only if
  nothing was delivered yet.

Each backend keeps how it opens the stream (its transport, its auth) and how it counts tokens a server did not
report.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from adapters.openai_compat.wire import (
    BodyBroken,
    Usage,
    decode_json,
    from_stream_chunk,
    interrupted,
    sse_data,
    truncated,
)
from core.inference import FinishReason


@dataclass(slots=True)
class StreamedReply:
    """What a stream delivered, filled in as ``read_chat_stream`` reads it; whole when it returns normally."""

    pieces: list[str] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    usage: Usage | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def reason(self) -> FinishReason:
        """The finish reason of the whole reply (``read_chat_stream`` never returns without one)."""
        if self.finish_reason is None:
            raise truncated("the stream was not read to its end", delivered=bool(self.pieces))
        return self.finish_reason


async def read_chat_stream(lines: AsyncGenerator[str, None], reply: StreamedReply) -> AsyncGenerator[str, None]:
    """Yield each text piece of the SSE ``lines``, recording the reply in ``reply``; ``lines`` is closed when
    this generator ends, however it ends (use ``contextlib.aclosing`` so an abandoned stream closes now).

    Errors the transport raises while opening or reading (an error status) pass through unchanged."""
    ending = "the body ended"
    try:
        async for line in lines:
            data = sse_data(line)
            if not data:
                continue
            if data == "[DONE]":
                ending = "data: [DONE] came"
                break
            chunk = from_stream_chunk(decode_json(data))
            reply.finish_reason = chunk.finish_reason or reply.finish_reason
            reply.usage = chunk.usage or reply.usage
            if chunk.text:
                reply.pieces.append(chunk.text)
                yield chunk.text
    except BodyBroken as broken:
        if reply.finish_reason is None:
            raise interrupted(broken, delivered=bool(reply.pieces)) from None
        # The finish reason came: only the usage chunk or [DONE] is missing, the answer is whole.
    finally:
        await lines.aclose()
    if reply.finish_reason is None:
        raise truncated(ending, delivered=bool(reply.pieces))


__all__ = ["StreamedReply", "read_chat_stream"]
