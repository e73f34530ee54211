"""Upper bounds on token counts, so a reservation can never come out low.

A byte-level BPE never yields more tokens than the text has UTF-8 bytes; a chat template adds a
few special tokens per message. Where the gateway has the model's tokenizer, the exact count is used.
"""

from __future__ import annotations

from core.inference import Prompt

CHAT_BASE_ALLOWANCE = 16
CHAT_PER_MESSAGE_ALLOWANCE = 8


BYTES_PER_TOKEN_ESTIMATE = 4


def estimate_tokens(prompt: Prompt) -> int:
    """A fair estimate where no count exists (a stream cut before its usage): ~4 bytes a token for English BPE.

    Used only to charge what was delivered without a count from the backend or a tokenizer; reservations
    use the upper bound below.
    """
    return max(1, -(-prompt.utf8_bytes() // BYTES_PER_TOKEN_ESTIMATE))


def prompt_upper_bound(prompt: Prompt, context_length: int) -> int:
    if prompt.is_chat:
        bound = prompt.utf8_bytes() + CHAT_BASE_ALLOWANCE + CHAT_PER_MESSAGE_ALLOWANCE * len(prompt.messages)
    else:
        bound = prompt.utf8_bytes() + 1
    # A prompt can never use more than the model's context; a longer one fails and is not charged.
    return min(bound, context_length)
