"""``textnlp batch run FILE --tenant T`` (in-process, with a progress bar), ``batch status ID --tenant T``,
``batch cancel ID --tenant T``. A batch is a document of its tenant: it is found by tenant and id together."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from adapters.local.blobs import FileBlobStore
from core.app import Gateway
from core.batch.objects import object_batch
from core.batch.records import BatchJob, load_batch, reopen, update_batch
from core.batch.runner import RunnerSettings

BAR_WIDTH = 30


def add_parser(subparsers: Any) -> None:
    """Register ``batch`` on the ``textnlp`` command's subparsers."""
    p = subparsers.add_parser("batch", help="run a JSONL batch in-process; show or cancel a batch")
    p.add_argument("--data-dir", default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="run FILE (native or OpenAI batch lines); running it again resumes it")
    r.add_argument("file", type=Path)
    r.add_argument("--tenant", required=True, help="the tenant whose limits and usage the lines count against")
    r.add_argument("--concurrency", type=int, default=16)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("status", help="a batch's status record")
    s.add_argument("batch_id")
    _add_owner(s)
    c = sub.add_parser("cancel", help="ask a running batch to stop (its partial output is kept)")
    c.add_argument("batch_id")
    _add_owner(c)
    p.set_defaults(func=main)


def _add_owner(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant",
        required=True,
        help="the tenant that owns the batch (batches are kept per tenant; another tenant's batch is not found)",
    )


def _gateway(data_dir: str) -> Gateway:
    from functions.local.bootstrap import LocalSettings, build_gateway

    settings = LocalSettings.from_env()
    quiet = replace(settings.gateway, log_level=os.environ.get("TEXTNLP_LOG_LEVEL", "WARNING"))
    gateway, _, _ = build_gateway(replace(settings, data_dir=Path(data_dir), gateway=quiet))
    return gateway


def _summary(job: BatchJob, where: Path | None = None) -> dict[str, Any]:
    out = job.to_api()
    out["source"] = job.source
    out["deferred"] = job.deferred
    if where is not None:
        out["output"] = str(where / job.output_key)
        out["errors"] = str(where / job.error_key)
    return out


def progress_line(job: BatchJob) -> str:
    done = job.completed + job.failed
    filled = BAR_WIDTH * done // job.total if job.total else 0
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return f"\r[{bar}] {done}/{job.total} lines  ok {job.completed}  failed {job.failed}  {job.status:<11}"


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    path = args.file.resolve()
    if not path.is_file():
        print(f"no such file: {args.file}", file=err)
        return 2
    gateway = _gateway(args.data_dir)
    if gateway.store.get_tenant(args.tenant) is None:
        print(f"no such tenant: {args.tenant}", file=err)
        return 2
    blobs = FileBlobStore(path.parent)
    stem = path.name.removesuffix(".jsonl")
    job = object_batch(
        gateway.store,
        blobs,
        tenant_id=args.tenant,
        input_key=path.name,
        output_key=f"{stem}.output.jsonl",
        error_key=f"{stem}.errors.jsonl",
        now=gateway.clock.now(),
        source="cli",
        identity=str(path),
    )
    if job is None:
        print(f"cannot read {path}", file=err)
        return 2
    if job.deferred:
        job = update_batch(gateway.store, job, reopen)  # lines deferred for want of quota are retried
    settings = RunnerSettings(concurrency=max(1, args.concurrency), flush_interval_s=0.5, flush_every=200)
    runner = gateway.batch_runner(blobs, settings=settings)
    show = None if args.quiet else (lambda j: print(progress_line(j), end="", file=err, flush=True))
    try:
        done = asyncio.run(runner.run(job.tenant_id, job.id, show))
    except KeyboardInterrupt:
        print(f"\ninterrupted; run the same command again to resume batch {job.id}", file=err)
        return 130
    if show is not None:
        print(file=err)
    if done is None:
        print(f"batch {job.id} is being run by another process", file=err)
        return 1
    print(json.dumps(_summary(done, path.parent)), file=out)
    return 0 if done.status == "completed" else 1


def status(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    job = load_batch(_gateway(args.data_dir).store, args.tenant, args.batch_id)
    if job is None:
        print(f"no such batch of tenant {args.tenant}: {args.batch_id}", file=err)
        return 1
    print(json.dumps(_summary(job)), file=out)
    return 0


def cancel(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    gateway = _gateway(args.data_dir)
    job = load_batch(gateway.store, args.tenant, args.batch_id)
    if job is None:
        print(f"no such batch of tenant {args.tenant}: {args.batch_id}", file=err)
        return 1
    if not job.terminal:
        now = gateway.clock.now()

        def cancelling(j: BatchJob) -> None:
            if not j.terminal and j.status != "cancelling":
                j.status, j.cancelling_at = "cancelling", now

        job = update_batch(gateway.store, job, cancelling)
    print(json.dumps(_summary(job)), file=out)
    return 0


def main(args: argparse.Namespace) -> int:
    action = {"run": run, "status": status, "cancel": cancel}[args.action]
    return action(args)
