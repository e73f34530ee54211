"""The ``textnlp`` command: serve the API, manage tenants and keys, read usage."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from core.auth import api_keys
from core.auth.revocation import Revocations
from core.clock import SystemClock, new_id
from core.domain import ALL_SCOPES, Tenant

DEFAULT_DATA_DIR = ".textnlp"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def _store(data_dir: str):  # type: ignore[no-untyped-def]
    from functions.local.bootstrap import open_store

    return open_store(Path(data_dir))


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from functions.local.bootstrap import open_store, seed

    os.environ["TEXTNLP_DATA_DIR"] = str(Path(args.data_dir).resolve())
    store = open_store(Path(args.data_dir))
    created = seed(store, os.environ.get("TEXTNLP_ADMIN_KEY"))
    store.close()
    if created:
        print("Created the first admin key (shown once, keep it safe):", flush=True)
        print(f"  {created}", flush=True)
    else:
        print("Admin key: the one printed when this data directory was set up, or TEXTNLP_ADMIN_KEY.", flush=True)
    print(
        f"TextNLP listening on http://{args.host}:{args.port}  (OpenAI base URL: http://{args.host}:{args.port}/v1)",
        flush=True,
    )
    print(
        f"First call: run `{quickstart_command(args)}` in another terminal here"
        " (a demo key, then a curl line and a Python snippet to paste).",
        flush=True,
    )
    uvicorn.run(
        "functions.local.asgi:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
    )
    return 0


def quickstart_command(args: argparse.Namespace) -> str:
    """The command that prints snippets for THIS server: same data directory, host and port.

    Under make (it exports MAKELEVEL) that is ``make quickstart`` with the variables that differ from the
    Makefile's defaults (the same as ours); otherwise the ``textnlp`` command this server was started with.
    """
    differs = [
        (make_var, flag, value)
        for make_var, flag, value, default in (
            ("DATA_DIR", "--data-dir", str(args.data_dir), DEFAULT_DATA_DIR),
            ("HOST", "--host", str(args.host), DEFAULT_HOST),
            ("PORT", "--port", str(args.port), str(DEFAULT_PORT)),
        )
        if value != default
    ]
    if os.environ.get("MAKELEVEL"):
        return shlex.join(["make", "quickstart", *(f"{var}={value}" for var, _, value in differs)])
    program = sys.argv[0] if Path(sys.argv[0]).name == "textnlp" else "textnlp"
    data_dir = [arg for var, flag, value in differs if var == "DATA_DIR" for arg in (flag, value)]
    server = [arg for var, flag, value in differs if var != "DATA_DIR" for arg in (flag, value)]
    return shlex.join([program, *data_dir, "quickstart", *server])


def quickstart(args: argparse.Namespace) -> int:
    from functions.local import quickstart as qs

    return qs.run(
        Path(args.data_dir),
        args.host,
        args.port,
        model=args.model,
        json_output=args.json,
        out=sys.stdout,
        err=sys.stderr,
    )


def tenants(args: argparse.Namespace) -> int:
    store = _store(args.data_dir)
    if args.action == "create":
        tenant = Tenant(id=new_id("ten", 8), name=args.name, created_at=SystemClock().now())
        store.put_tenant(tenant)
        print(json.dumps({"id": tenant.id, "name": tenant.name, "created_at": tenant.created_at}))
    else:
        for t in sorted(store.list_tenants(), key=lambda t: t.created_at):
            print(json.dumps({"id": t.id, "name": t.name, "created_at": t.created_at}))
    return 0


def keys(args: argparse.Namespace) -> int:
    store = _store(args.data_dir)
    now = SystemClock().now()
    if args.action == "create":
        if store.get_tenant(args.tenant) is None:
            print(f"no such tenant: {args.tenant}", file=sys.stderr)
            return 2
        scopes = frozenset(s.strip() for s in args.scopes.split(",") if s.strip())
        plaintext, record = api_keys.mint(args.tenant, args.name, scopes, now)
        store.put_key(record)
        print(json.dumps({"id": record.id, "tenant_id": record.tenant_id, "scopes": sorted(scopes), "key": plaintext}))
    elif args.action == "list":
        for k in sorted(store.list_keys(args.tenant), key=lambda k: k.created_at):
            print(
                json.dumps(
                    {
                        "id": k.id,
                        "name": k.name,
                        "scopes": sorted(k.scopes),
                        "prefix": k.prefix,
                        "revoked_at": k.revoked_at,
                    }
                )
            )
    else:
        record = store.get_key(args.key_id)
        if record is None:
            print(f"no such key: {args.key_id}", file=sys.stderr)
            return 2
        Revocations.beside_the_servers(store, SystemClock()).revoke_key(record)
        print(json.dumps({"id": record.id, "revoked": True}))
    return 0


def usage(args: argparse.Namespace) -> int:
    store = _store(args.data_dir)
    rows = store.daily_usage(args.tenant, args.start, args.end)
    for row in rows:
        print(
            json.dumps(
                {
                    "tenant_id": row.tenant_id,
                    "day": row.day,
                    "model": row.model,
                    "requests": row.requests,
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "cached_requests": row.cached_requests,
                    "cost": row.cost,
                }
            )
        )
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="textnlp", description="TextNLP local runtime")
    p.add_argument("--data-dir", default=os.environ.get("TEXTNLP_DATA_DIR", DEFAULT_DATA_DIR))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the API")
    s.add_argument("--host", default=DEFAULT_HOST)
    s.add_argument("--port", type=int, default=DEFAULT_PORT)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--data-dir", default=argparse.SUPPRESS)
    s.set_defaults(func=serve)

    q = sub.add_parser(
        "quickstart",
        help="a demo tenant and key, and a curl line and a Python snippet that call the server with it",
        description="Creates the tenant 'demo' once and a new key for it on each run (the previous quickstart"
        " key is revoked), then prints a curl line and an openai snippet for the server on --host/--port."
        " Use the --data-dir of that server. Snippets go to stdout, the rest to stderr.",
    )
    q.add_argument("--host", default=DEFAULT_HOST, help="the host the server listens on (as given to serve)")
    q.add_argument("--port", type=int, default=DEFAULT_PORT, help="the port the server listens on")
    q.add_argument("--model", default=None, help="a generation model (default: smollm2-135m-instruct)")
    q.add_argument("--json", action="store_true", help="one JSON object: key, base URL, model, curl, python")
    q.add_argument("--data-dir", default=argparse.SUPPRESS)
    q.set_defaults(func=quickstart)

    t = sub.add_parser("tenants", help="create or list tenants")
    tsub = t.add_subparsers(dest="action", required=True)
    tc = tsub.add_parser("create")
    tc.add_argument("name")
    tsub.add_parser("list")
    t.set_defaults(func=tenants)

    k = sub.add_parser("keys", help="create, list or revoke API keys")
    ksub = k.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--name", default="default")
    kc.add_argument("--scopes", default="generate,embed", help=f"comma-separated, of {sorted(ALL_SCOPES)}")
    kl = ksub.add_parser("list")
    kl.add_argument("--tenant", required=True)
    kr = ksub.add_parser("revoke")
    kr.add_argument("key_id")
    k.set_defaults(func=keys)

    u = sub.add_parser("usage", help="daily usage per tenant and model")
    u.add_argument("--tenant", default=None)
    u.add_argument("--start", default="1970-01-01")
    u.add_argument("--end", default="9999-12-31")
    u.set_defaults(func=usage)

    v = sub.add_parser(
        "validate", help="score generated text (the /v1/validate metrics) from JSONL files", add_help=False
    )
    v.add_argument("args", nargs=argparse.REMAINDER)
    v.set_defaults(func=validate)

    from functions.local import batch_cli

    batch_cli.add_parser(sub)
    return p


def validate(args: argparse.Namespace) -> int:
    from functions.local.validate_cli import run

    return run(args.args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["validate"]:  # its own parser, --help included
        from functions.local.validate_cli import run

        return run(argv[1:])
    args = parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
