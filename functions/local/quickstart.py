"""``textnlp quickstart``: a demo tenant and key, then a curl line and an openai snippet that work as printed.

The store is written directly (as ``textnlp tenants``/``keys`` do), so no admin key is needed and it works
whether or not the server runs; SQLite is safe to share with a running server. The snippets go to stdout,
everything else (what was created, whether the server answers) to stderr, so ``> first-call.txt`` keeps
only what is to be pasted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from core.auth import api_keys
from core.auth.revocation import Revocations
from core.clock import SystemClock
from core.domain import Limits, Scope, Tenant
from core.ports import Store

if TYPE_CHECKING:
    from adapters.local.sqlite_store import SQLiteStore

# A fixed id, as for the admin tenant: two runs (even at once) find the same tenant, and a tenant someone
# else named "demo" is never taken over.
DEMO_TENANT = "ten_demo"
DEMO_KEY_NAME = "quickstart"
# What a first tour uses; not admin, and not fine_tune (the local runtime cannot train).
DEMO_SCOPES = frozenset({Scope.GENERATE, Scope.EMBED, Scope.VALIDATE, Scope.BATCH})
# The README's example limits: a single user on a laptop does not reach them, and answers carry the
# x-ratelimit-* headers, so the limits can be seen working. Set when the tenant is created, never reset.
DEMO_LIMITS = Limits(requests_per_minute=60, tokens_per_minute=20_000, token_quota=1_000_000, quota_period="month")
PROMPT = "Say hello in one short sentence."
MAX_TOKENS = 32
CHECK_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class DemoKey:
    tenant_id: str
    key_id: str
    key: str
    tenant_created: bool
    revoked: tuple[str, ...]


def ensure_demo_key(store: Store, now: float) -> DemoKey:
    """The demo tenant (created once) and a fresh key for it.

    A run revokes the earlier quickstart keys first: their plaintext was shown once and is usually why the
    command is run again, so at most one demo key stays live. Keys made by hand for the tenant are kept.
    Revoking before minting means two runs at once leave two live keys, never none.
    """
    created = store.get_tenant(DEMO_TENANT) is None
    if created:
        store.put_tenant(Tenant(id=DEMO_TENANT, name="demo", created_at=now, limits=DEMO_LIMITS))
    revoked = []
    for old in store.list_keys(DEMO_TENANT):
        if old.name == DEMO_KEY_NAME and old.revoked_at is None:
            Revocations.beside_the_servers(store, SystemClock()).revoke_key(old)
            revoked.append(old.id)
    plaintext, record = api_keys.mint(DEMO_TENANT, DEMO_KEY_NAME, frozenset(DEMO_SCOPES), now)
    store.put_key(record)
    return DemoKey(DEMO_TENANT, record.id, plaintext, created, tuple(revoked))


def base_url(host: str, port: int) -> str:
    """The URL a client on this machine uses: a wildcard bind address is not one to connect to."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:  # a name, such as localhost
        address = None
    if address is not None and address.is_unspecified:  # 0.0.0.0 or ::
        host = "127.0.0.1" if address.version == 4 else "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def curl_line(url: str, key: str, model: str) -> str:
    """One line for bash or zsh; every argument shell-quoted, so any prompt or host survives pasting."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    argv = [
        "curl",
        "-sS",
        f"{url}/v1/chat/completions",
        "-H",
        f"Authorization: Bearer {key}",
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps(body, separators=(",", ":")),
    ]
    return shlex.join(argv)


def python_snippet(url: str, key: str, model: str) -> str:
    """A whole program for the official openai SDK (JSON strings are valid Python string literals)."""
    q = json.dumps
    return (
        "from openai import OpenAI\n"
        "\n"
        f"client = OpenAI(base_url={q(url + '/v1')}, api_key={q(key)})\n"
        "reply = client.chat.completions.create(\n"
        f"    model={q(model)},\n"
        f'    messages=[{{"role": "user", "content": {q(PROMPT)}}}],\n'
        f"    max_tokens={MAX_TOKENS},\n"
        ")\n"
        "print(reply.choices[0].message.content)\n"
    )


def check_server(url: str, key: str, model: str) -> tuple[str, str]:
    """Ask the server for the model with the new key: ``ok``, ``down`` or ``rejected``, and what to tell.

    A 401 here is the one mistake worth catching: a server running on another data directory.
    """
    import httpx

    try:
        response = httpx.get(
            f"{url}/v1/models/{model}", headers={"authorization": f"Bearer {key}"}, timeout=CHECK_TIMEOUT_S
        )
    except httpx.HTTPError:
        return "down", f"Nothing answers on {url} yet: start the server (make serve), then paste the lines below."
    if response.status_code == 200:
        return "ok", f"The server on {url} accepts this key and serves {model}."
    if response.status_code == 401 and _error(response.text)[0] == "invalid_api_key":
        return "rejected", (
            f"The server on {url} does not know this key: it serves another data directory. "
            "Run quickstart with the --data-dir that server was started with."
        )
    return "rejected", f"The server on {url} answered {response.status_code}: {_error(response.text)[1]}"


def _error(text: str) -> tuple[str | None, str]:
    """The code and message of a TextNLP error body; for any other body, its start."""
    try:
        error = json.loads(text)["error"]
        return error.get("code"), str(error["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, text[:200]


def _open_initialised(data_dir: Path, err: TextIO) -> SQLiteStore:
    """The store of ``data_dir``, set up as the server's first start would if it never ran.

    That first start mints the admin key and shows it once: it is shown here then, never swallowed.
    A store a server already set up is left alone (its admin keys in particular).
    """
    from functions.local.bootstrap import ADMIN_TENANT, open_store, seed

    store = open_store(data_dir)
    if store.get_tenant(ADMIN_TENANT) is None:
        created = seed(store, os.environ.get("TEXTNLP_ADMIN_KEY"))
        err.write(f"Set up a new data directory, {data_dir}.\n")
        if created:
            err.write(f"Created the first admin key (shown once, keep it safe):\n  {created}\n")
    return store


def default_model() -> str:
    from functions.local.bootstrap import DEFAULT_MODELS

    return next(m.id for m in DEFAULT_MODELS if m.kind == "generation")


def _model_problem(store: Store, model: str) -> str | None:
    spec = store.get_model(model)
    if spec is not None and spec.kind == "generation":
        return None
    names = sorted(m.id for m in store.list_models() if m.kind == "generation")
    return f"no generation model '{model}' here; generation models: {', '.join(names) or 'none'}"


def render(demo: DemoKey, url: str, model: str) -> str:
    return (
        f"# API key of the demo tenant {demo.tenant_id} (shown once): {demo.key}\n"
        "\n"
        "# curl\n"
        f"{curl_line(url, demo.key, model)}\n"
        "\n"
        "# Python (the openai package: pip install openai)\n"
        f"{python_snippet(url, demo.key, model)}"
    )


def as_json(demo: DemoKey, url: str, model: str, server: str) -> dict[str, Any]:
    return {
        "tenant_id": demo.tenant_id,
        "key_id": demo.key_id,
        "key": demo.key,
        "scopes": sorted(DEMO_SCOPES),
        "base_url": url + "/v1",
        "model": model,
        "curl": curl_line(url, demo.key, model),
        "python": python_snippet(url, demo.key, model),
        "server": server,
    }


def run(
    data_dir: Path,
    host: str,
    port: int,
    *,
    model: str | None = None,
    json_output: bool = False,
    out: TextIO,
    err: TextIO,
) -> int:
    """Set up the demo key in ``data_dir`` and print how to call the server on ``host:port`` with it.

    Exit status 1 when a server answers there but refuses the key (the snippets would not work), 2 when
    ``model`` is not a generation model of this store; a server not started yet is no error.
    """
    model = model or default_model()
    store = _open_initialised(data_dir, err)
    try:
        problem = _model_problem(store, model)
        if problem:
            err.write(problem + "\n")
            return 2
        demo = ensure_demo_key(store, SystemClock().now())
    finally:
        store.close()
    err.write(_progress(demo))
    url = base_url(host, port)
    server, message = check_server(url, demo.key, model)
    err.write(message + "\n")
    if json_output:
        out.write(json.dumps(as_json(demo, url, model, server)) + "\n")
    else:
        err.write("\n")
        err.flush()
        out.write(render(demo, url, model))
    out.flush()
    return 1 if server == "rejected" else 0


def _progress(demo: DemoKey) -> str:
    limits = DEMO_LIMITS
    tenant = (
        f"created, limits {limits.requests_per_minute} requests and {limits.tokens_per_minute} tokens a minute,"
        f" {limits.token_quota} tokens a {limits.quota_period}"
        if demo.tenant_created
        else "already there"
    )
    lines = [f"Demo tenant {demo.tenant_id}: {tenant}."]
    if demo.revoked:
        lines.append(f"Revoked the earlier quickstart key(s) {', '.join(demo.revoked)} (their lines stop working).")
    lines.append(f"New key {demo.key_id}, scopes {', '.join(sorted(DEMO_SCOPES))}.")
    return "\n".join(lines) + "\n"
