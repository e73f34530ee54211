"""Cold start of the AWS api function (``functions.aws.api``) against moto, as a ratio to a boto3 floor.

Gateway: a fresh process imports ``functions.aws.api`` and handles its first event, an authenticated
GET /v1/models (API Gateway HTTP API payload 2.0), against a moto server in another process: from process
start to the Lambda result. That first invocation builds the runtime (the DynamoDB store and its client, the
Secrets Manager client and the bootstrap admin key read from it; S3, SQS and SageMaker clients are made on
first use) and answers (key and model lookups in DynamoDB). Twice: as the tests run it (tracing disabled:
not in Lambda) and as deployed, X-Ray tracing Active (``LAMBDA_TASK_ROOT`` and ``_X_AMZN_TRACE_ID`` set:
the X-Ray SDK imported, botocore patched; the segments go to a UDP port nobody listens on).
Floor: a fresh process that imports boto3 and pydantic and creates the boto3 clients the api function
creates on that first request (``FLOOR_CLIENTS``, checked against a probe of the api process), timed the
same way; and, for information, the same with botocore alone (the api process no longer imports boto3).
Medians of ``--runs``, wall time and the child's CPU time up to its line (user + system: less disturbed by
other work on the host). Then the import time of ``functions.aws.api`` alone and its heaviest imports
(``python -X importtime``).

What this does not include: Lambda's own init (the runtime, the layer unzip) and TLS to real endpoints.

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
from bench.cold_start import print_import_report
from bench.cold_start_runs import Run, ratio_row
from bench.cold_start_runs import floor_run as timed_floor_run
from bench.cold_start_runs import gateway_run as timed_gateway_run

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
#: The clients the api function creates on its first GET /v1/models: the table's, and Secrets Manager for
#: the admin-key secret read on every cold start (S3, SQS, SageMaker: on first use; see ``probe_clients``).
FLOOR_CLIENTS = ("dynamodb", "secretsmanager")
#: What Lambda sets in a function with tracing Active (the trace header changes per invocation there).
TRACING_ACTIVE_ENV = {
    "LAMBDA_TASK_ROOT": str(ROOT),
    "AWS_LAMBDA_FUNCTION_NAME": "bench",
    "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
    "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:9",  # discard: nothing listens there
}

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
                  "request_ms": 1000 * (t3 - t2), "cpu_ms": 1000 * time.process_time()}), flush=True)
"""

FLOOR_CHILD = """
import json, os, sys, time
t0 = time.perf_counter()
import boto3, pydantic
clients = [boto3.client(s, endpoint_url=os.environ["TEXTNLP_AWS_ENDPOINT_URL"]) for s in sys.argv[1].split(",")]
print(json.dumps({"ms": 1000 * (time.perf_counter() - t0), "cpu_ms": 1000 * time.process_time()}), flush=True)
"""

BOTOCORE_FLOOR_CHILD = """
import json, os, sys, time
t0 = time.perf_counter()
import botocore.session, pydantic
session, url = botocore.session.get_session(), os.environ["TEXTNLP_AWS_ENDPOINT_URL"]
clients = [session.create_client(s, endpoint_url=url) for s in sys.argv[1].split(",")]
print(json.dumps({"ms": 1000 * (time.perf_counter() - t0), "cpu_ms": 1000 * time.process_time()}), flush=True)
"""

PROBE_CHILD = """
import json, sys
import botocore.session
made = []
create = botocore.session.Session.create_client
def recording(self, service_name, *args, **kwargs):
    made.append(service_name)
    return create(self, service_name, *args, **kwargs)
botocore.session.Session.create_client = recording
import functions.aws.api as api
from functions.aws.bootstrap import runtime
runtime()
class Context:
    function_name = "bench"; aws_request_id = "probe"; memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    def get_remaining_time_in_millis(self): return 30000
status = api.handler(json.loads(sys.argv[1]), Context())["statusCode"]
mods = [m for m in ("boto3", "aws_xray_sdk.core", "httpx", "jwt") if m in sys.modules]
print(json.dumps({"status": status, "clients": sorted(set(made)), "modules": mods}), flush=True)
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


def floor_run(env: dict[str, str], cpus: set[int] | None, child: str = FLOOR_CHILD) -> Run:
    """(wall seconds from spawning the floor process to its line, the process's CPU seconds by then)."""
    return timed_floor_run([child, ",".join(FLOOR_CLIENTS)], env, cpus)


def gateway_run(env: dict[str, str], key: str, cpus: set[int] | None) -> tuple[float, float, dict[str, Any]]:
    """(wall seconds from spawning a fresh api process to its first Lambda result, its CPU seconds by then,
    the child's own timings)."""
    return timed_gateway_run([GATEWAY_CHILD, json.dumps(api_event(key))], env, cpus)


def probe_clients(env: dict[str, str], key: str) -> dict[str, Any]:
    """Which botocore clients (and heavy modules) the api process makes on its first request (untimed)."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE_CHILD, json.dumps(api_event(key))],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    probe: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return probe


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
        traced_env = {**env, **TRACING_ACTIVE_ENV}
        gateway_run(env, key, measured)  # the first container imports the admin key; .pyc and page cache warm
        gateway_run(traced_env, key, measured)
        probe = probe_clients(env, key)
        floor_run(env, measured)
        floor = [floor_run(env, measured) for _ in range(args.runs)]
        botocore_floor = [floor_run(env, measured, BOTOCORE_FLOOR_CHILD) for _ in range(args.runs)]
        runs = [gateway_run(env, key, measured) for _ in range(args.runs)]
        traced = [gateway_run(traced_env, key, measured) for _ in range(args.runs)]
    finally:
        stop(moto)
    if probe["clients"] != sorted(FLOOR_CLIENTS):
        made, floor_makes = probe["clients"], sorted(FLOOR_CLIENTS)
        print(f"  !! the api made the clients {made}, the floor makes {floor_makes}: fix FLOOR_CLIENTS")
    clients = ", ".join(FLOOR_CLIENTS)
    print(f"  {'':<60} {'wall':>9}  {'':>4}{'cpu':>8}   ratio to the floor (wall, cpu), wall over it")
    print(ratio_row(f"floor: boto3 + pydantic, clients {clients}", floor))
    print(ratio_row("  same with botocore alone, no boto3 (information)", botocore_floor, floor))
    print(ratio_row("api: import + 1st GET /v1/models, tracing disabled", [r[:2] for r in runs], floor))
    print(ratio_row("api: the same, X-Ray tracing Active (as deployed)", [r[:2] for r in traced], floor))
    for name, group in (("disabled", runs), ("Active", traced)):
        import_ms = statistics.median(r[2]["import_ms"] for r in group)
        runtime_ms = statistics.median(r[2]["runtime_ms"] for r in group)
        request_ms = statistics.median(r[2]["request_ms"] for r in group)
        print(
            f"     in the child, tracing {name}: import functions.aws.api {import_ms:.0f} ms, runtime() "
            f"{runtime_ms:.0f} ms (clients, admin-key secret), first request {request_ms:.0f} ms "
            "(key, tenant, models from DynamoDB)"
        )
    print(
        f"     the api process's first request made the clients {', '.join(probe['clients'])} "
        f"(S3, SQS, SageMaker on first use); of boto3, aws_xray_sdk.core, httpx and jwt it imported "
        f"{', '.join(probe['modules']) or 'none'}"
    )

    print_import_report("import functions.aws.api", "import boto3, pydantic", args.top)


if __name__ == "__main__":
    main()
