"""The names of one fine-tune job's SageMaker resources: its training job, model, endpoint config and endpoint
are all ``textnlp-<job id>``, within SageMaker's rules for names."""

from __future__ import annotations

import hashlib
import re

NAME_PREFIX = "textnlp-"
NAME_LIMIT = 63  # training job, model, endpoint config and endpoint names: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")


def resource_name(job_id: str) -> str:
    """``textnlp-<job id>``: the name of one fine-tune job's training job, model, endpoint config and endpoint.

    SageMaker allows letters, digits and inner hyphens, 63 characters at most. Job ids (``ftjob-`` + hex) fit
    as they are; any other id has its unsafe characters replaced and ends in a hash of the whole id, so two ids
    never share a name.
    """
    plain = f"{NAME_PREFIX}{job_id}"
    safe = _NAME_UNSAFE.sub("-", plain).strip("-")
    if safe == plain and len(plain) <= NAME_LIMIT:
        return plain
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:12]
    return f"{safe[: NAME_LIMIT - len(digest) - 1].rstrip('-')}-{digest}"


training_job_name = resource_name
endpoint_name = resource_name
