"""Cold start of the AWS api function (``functions.aws.api``) against moto, as a ratio to a boto3 floor.

Gateway: a fresh process imports ``functions.aws.api`` and handles its first event, an authenticated
GET /v1/models (API Gateway HTTP API payload 2.0), against a moto server in another process: from process
start to the Lambda result. That first invocation builds the runtime (boto3 clients, the DynamoDB store,
the bootstrap admin key from Secrets Manager) and answers (key and model lookups in DynamoDB).
Floor: a fresh process that imports boto3 and pydantic and creates the same boto3 clients (dynamodb, s3,
secretsmanager, sqs), timed the same way. Medians of ``--runs``. Then the import time of
``functions.aws.api`` alone and its heaviest imports (``python -X importtime``).

What this does not include: Lambda's own init (the runtime, the layer unzip), TLS to real endpoints, and
X-Ray: outside Lambda Powertools' Tracer is disabled, while the deployed function has tracing ACTIVE.

    python -m bench.aws_cold_start [--runs 5] [--top 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._procs import ROOT, cpu_plan, free_port, host_note, pin, stop, wait_http
from bench.cold_start import import_profile

REGION = "us-east-1"
TABLE = "textnlp-bench"
BUCKET = "textnlp-bench-bucket"
ADMIN_KEY = "BenchAdminKeyFromSecretsManager0123456789abcdef"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
EVENT_FILE = ROOT / "events" / "aws" / "apigw_http_models_list_ok.json"

GATEWAY_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import functions.aws.api as api
t1 = time.perf_counter()
from functions.aws.bootstrap import runtime
runtime()  # what the first invocation does first (timed apart here)
t2 = time.perf_counter()
class Context:
    function_name = "bench"; aws_request_id = "cold"; memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    def get_remaining_time_in_millis(self): return 30000
event = json.loads(sys.argv[1])
result = api.handler(event, Context())
t3 = time.perf_counter()
print(json.dumps({"status": result["statusCode"], "import_ms": 1000 * (t1 - t0), "runtime_ms": 1000 * (t2 - t1),
                  "request_ms": 1000 * (t3 - t2)}), flush=True)
"""

FLOOR_CHILD = """
import json, os, time
t0 = time.perf_counter()
import boto3, pydantic
clients = [boto3.client(s, endpoint_url=os.environ["TEXTNLP_AWS_ENDPOINT_URL"])
           for s in ("dynamodb", "s3", "secretsmanager", "sqs")]
print(json.dumps({"ms": 1000 * (time.perf_counter() - t0)}), flush=True)
"""


def start_moto(cpus: set[int] | None) -> tuple[subprocess.Popen[bytes], str]:
    """``moto_server`` in its own process (so its CPU time is not the measured process's)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **CREDENTIALS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pin(proc.pid, cpus)
    wait_http(port, "/moto-api/", proc=proc)
    return proc, f"http://127.0.0.1:{port}"


def deploy(url: str) -> dict[str, str]:
    """What the api function uses, created as the CDK stack creates it; the function's environment."""
    os.environ.update(CREDENTIALS)
    import boto3

    from adapters.aws.dynamodb_models import create_table
    from adapters.aws.dynamodb_table import connect

    create_table(connect(url, REGION), TABLE)
    kw: dict[str, Any] = {"endpoint_url": url, "region_name": REGION}
    boto3.client("s3", **kw).create_bucket(Bucket=BUCKET)
    queue_url = boto3.client("sqs", **kw).create_queue(QueueName="textnlp-bench")["QueueUrl"]
    sm = boto3.client("secretsmanager", **kw)
    signing = sm.create_secret(Name="textnlp-bench-signing-keys", SecretString="{}")["ARN"]
    admin = sm.create_secret(Name="textnlp-bench-admin-key", SecretString=ADMIN_KEY)["ARN"]
    return {
        **CREDENTIALS,
        "TEXTNLP_TABLE": TABLE,
        "TEXTNLP_BUCKET": BUCKET,
        "TEXTNLP_BATCH_QUEUE_URL": queue_url,
        "TEXTNLP_SIGNING_KEYS_SECRET_ARN": signing,
        "TEXTNLP_ADMIN_KEY_SECRET_ARN": admin,
        "TEXTNLP_AWS_ENDPOINT_URL": url,
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_NAMESPACE": "TextNLP",
    }


def limits_of(values: dict[str, int] | None) -> Any:
    """``core.domain.Limits`` from a dict such as ``_procs.HIGH_LIMITS``."""
    from core.domain import Limits

    fields: dict[str, Any] = dict(values or {})
    return Limits(**fields)


def seed_tenant(env: dict[str, str], limits: dict[str, int] | None = None) -> tuple[str, str]:
    """A tenant and an API key written straight to the table (as the admin API would): (tenant id, key)."""
    from adapters.aws.dynamodb import DynamoDBStore
    from core.auth import api_keys
    from core.domain import Tenant

    store = DynamoDBStore(env["TEXTNLP_TABLE"], host=env["TEXTNLP_AWS_ENDPOINT_URL"], region=REGION)
    now = time.time()
    tenant = Tenant(id="ten_bench", name="bench", created_at=now, limits=limits_of(limits))
    store.put_tenant(tenant)
    key, record = api_keys.mint(tenant.id, "bench", frozenset({"generate"}), now, limits=limits_of(limits))
    store.put_key(record)
    store.close()
    return tenant.id, key


def api_event(key: str, path: str = "/v1/models", method: str = "GET", body: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(EVENT_FILE.read_text())
    event["headers"]["authorization"] = f"Bearer {key}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    if body is not None:
        event["body"], event["isBase64Encoded"] = body, False
        event["headers"]["content-type"] = "application/json"
    return event


def floor_run(env: dict[str, str], cpus: set[int] | None) -> float:
    """Seconds from spawning the floor process to its line."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR_CHILD], cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE
    )
    pin(proc.pid, cpus)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - t0
    proc.wait()
    if not line:
        raise RuntimeError(f"the floor process printed nothing (exit {proc.returncode})")
    return elapsed


def gateway_run(env: dict[str, str], key: str, cpus: set[int] | None) -> tuple[float, dict[str, Any]]:
    """Seconds from spawning a fresh api process to its first Lambda result, and the child's own timings."""
    event = json.dumps(api_event(key))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", GATEWAY_CHILD, event],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    pin(proc.pid, cpus)
    assert proc.stdout is not None
    for line in proc.stdout:  # the handler's EMF lines come first
        if line.startswith('{"status"'):
            elapsed = time.perf_counter() - t0
            proc.wait()
            data: dict[str, Any] = json.loads(line)
            if data["status"] != 200:
                raise RuntimeError(f"the first event was answered {data['status']}")
            return elapsed, data
    proc.wait()
    raise RuntimeError(f"the child printed no result (exit {proc.returncode})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    measured, helpers = cpu_plan()
    print("== AWS api function cold start: process start -> first Lambda result (median of runs) ==")
    print(f"   ({host_note()})")
    moto, url = start_moto(helpers)
    try:
        env = deploy(url)
        _, key = seed_tenant(env)
        gateway_run(env, key, measured)  # the first container imports the admin key; .pyc and page cache warm
        floor_run(env, measured)
        floor = [floor_run(env, measured) for _ in range(args.runs)]
        runs = [gateway_run(env, key, measured) for _ in range(args.runs)]
    finally:
        stop(moto)
    floor_s = statistics.median(floor)
    cold_s = statistics.median(r[0] for r in runs)
    import_ms = statistics.median(r[1]["import_ms"] for r in runs)
    runtime_ms = statistics.median(r[1]["runtime_ms"] for r in runs)
    request_ms = statistics.median(r[1]["request_ms"] for r in runs)
    print(f"  floor: boto3 + pydantic, 4 clients created          {floor_s * 1000:7.0f} ms   1.00x")
    print(
        f"  api: import + 1st GET /v1/models (API key)          {cold_s * 1000:7.0f} ms   {cold_s / floor_s:4.2f}x"
        f"   (+{(cold_s - floor_s) * 1000:.0f} ms over the floor)"
    )
    print(
        f"     in the child: import functions.aws.api {import_ms:.0f} ms, runtime() {runtime_ms:.0f} ms "
        f"(boto3 clients, admin-key secret), first request {request_ms:.0f} ms (key, tenant, models from DynamoDB)"
    )

    rows = import_profile("import functions.aws.api")
    floor_rows = import_profile("import boto3, pydantic")
    floor_mods = {r[3] for r in floor_rows}
    total = sum(r[0] for r in rows)
    print(
        f"\n  -X importtime of functions.aws.api: {total / 1000:.0f} ms of imports in total "
        f"(floor imports: {sum(r[0] for r in floor_rows) / 1000:.0f} ms)"
    )
    print(f"  top {args.top} imports by cumulative time, depth 1-3 (* = not imported by the floor):")
    subtrees = sorted((r for r in rows if 1 <= r[2] <= 3), key=lambda r: -r[1])[: args.top]
    for _self_us, cum_us, depth, name in subtrees:
        star = " " if name in floor_mods else "*"
        print(f"    {star} {cum_us / 1000:7.1f} ms  {'  ' * (depth - 1)}{name}")
    extra = [r for r in rows if r[3] not in floor_mods]
    print(f"  top {args.top} modules by own (self) time, not in the floor:")
    for self_us, _cum_us, _depth, name in sorted(extra, key=lambda r: -r[0])[: args.top]:
        print(f"      {self_us / 1000:7.1f} ms  {name}")
    print(f"  not in the floor: {sum(r[0] for r in extra) / 1000:.0f} ms of imports over {len(extra)} modules")


if __name__ == "__main__":
    main()
