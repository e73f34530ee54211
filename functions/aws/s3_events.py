"""What the batch queue carries: S3 "object created" notifications and job messages, parsed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

INPUT_PREFIX = "batch-input/"
OUTPUT_PREFIX = "batch-output/"
_INPUT_KEY = re.compile(r"^batch-input/(?P<tenant>[A-Za-z0-9_-]{1,64})/(?P<name>[^/]{1,200})\.jsonl$")


@dataclass(frozen=True, slots=True)
class ObjectCreated:
    bucket: str
    key: str
    version: str | None
    size: int

    def batch_input(self) -> tuple[str, str] | None:
        """(tenant, name) when the key is ``batch-input/<tenant>/<name>.jsonl``, else None."""
        m = _INPUT_KEY.match(self.key)
        return (m.group("tenant"), m.group("name")) if m else None


@dataclass(frozen=True, slots=True)
class JobMessage:
    """``{"kind", "tenant_id", "job_id"}`` as ``SqsJobQueue`` sends it: a job is found by tenant and id."""

    kind: str
    tenant_id: str
    job_id: str


class UnknownMessage(ValueError):
    """A message that is neither an S3 notification nor a job: reported, never retried."""


def parse_body(body: str) -> list[ObjectCreated | JobMessage]:
    """The work in one SQS message body. ``s3:TestEvent`` (sent when the notification is set up) holds none."""
    try:
        data: Any = json.loads(body)
    except ValueError as exc:
        raise UnknownMessage("the message body is not JSON") from exc
    if not isinstance(data, dict):
        raise UnknownMessage("the message body is not a JSON object")
    if data.get("Event") == "s3:TestEvent":
        return []
    if "kind" in data and "job_id" in data:
        if not isinstance(data.get("tenant_id"), str) or not data["tenant_id"]:
            raise UnknownMessage("a job message without its tenant_id")
        return [JobMessage(str(data["kind"]), data["tenant_id"], str(data["job_id"]))]
    records = data.get("Records")
    if not isinstance(records, list):
        raise UnknownMessage("neither an S3 notification nor a job message")
    found: list[ObjectCreated | JobMessage] = []
    for record in records:
        try:
            if not str(record["eventName"]).startswith("ObjectCreated"):
                continue
            s3 = record["s3"]
            found.append(
                ObjectCreated(
                    bucket=str(s3["bucket"]["name"]),
                    # S3 URL-encodes keys in notifications ("+" for a space).
                    key=unquote_plus(str(s3["object"]["key"])),
                    version=s3["object"].get("versionId"),
                    size=int(s3["object"].get("size", 0)),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UnknownMessage(f"a malformed S3 record: {exc}") from exc
    return found
