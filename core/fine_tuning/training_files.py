"""Checks of a training (or validation) file before a job starts: enough examples, one format throughout."""

from __future__ import annotations

import json
from typing import Literal

from core.batch.lines import MAX_LINE_BYTES, fine_tune_line_error, is_blank
from core.batch.records import FileRecord
from core.errors import InvalidRequest, NotFound
from core.ports import BlobStore

MIN_TRAINING_EXAMPLES = 10  # OpenAI's floor: fewer examples cannot teach a model anything
MIN_VALIDATION_EXAMPLES = 1
Format = Literal["chat", "completion"]


def line_format(raw: bytes) -> Format:
    """The format of a line that passed ``fine_tune_line_error``."""
    return "chat" if "messages" in json.loads(raw.decode("utf-8").removeprefix("\ufeff")) else "completion"


def check_purpose(record: FileRecord, param: str) -> None:
    if record.purpose != "fine-tune":
        raise InvalidRequest(
            f"the file {record.id} has purpose '{record.purpose}'; fine-tuning needs a file uploaded with "
            "purpose 'fine-tune'",
            param=param,
            code="invalid_file_purpose",
        )


async def check_training_file(blobs: BlobStore, record: FileRecord, param: str, minimum: int) -> Format:
    """The file's format; else a 400 naming the problem (and its line), before anything is written.

    Uploads were checked line by line already; this pass adds what a single line cannot show: the
    number of examples and that every line has the same format (chat or prompt/completion).
    """
    check_purpose(record, param)
    if record.lines < minimum:
        raise InvalidRequest(
            f"the file {record.id} has {record.lines} example(s); fine-tuning needs at least {minimum}",
            param=param,
            code="invalid_training_file",
        )
    found: Format | None = None
    line_no = 0
    try:
        async for raw in blobs.read_lines(record.blob_key, max_line_bytes=MAX_LINE_BYTES):
            line_no += 1
            if is_blank(raw):
                continue
            problem = fine_tune_line_error(raw, line_no)
            if problem is None:
                kind = line_format(raw)
                if found is not None and kind != found:
                    problem = f"a {kind} example in a file of {found} examples; use one format throughout"
                found = kind
            if problem is not None:
                raise InvalidRequest(
                    f"{param} {record.id}, line {line_no}: {problem}", param=param, code="invalid_training_file"
                )
    except FileNotFoundError:
        raise NotFound(f"the content of file {record.id} is gone", param=param, code="file_not_found") from None
    if found is None:
        raise InvalidRequest(f"the file {record.id} has no examples", param=param, code="invalid_training_file")
    return found
