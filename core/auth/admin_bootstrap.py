"""The first admin key of a deployment, the same way on every runtime.

A fresh deployment has no key to call the admin API with. Each runtime hands core the plaintext it was given
(``TEXTNLP_ADMIN_KEY`` locally, the admin-key secret on AWS, its counterparts on the other clouds) and
``import_admin_key`` makes it the admin tenant's key; with none given, ``mint_first_admin_key`` makes one
and returns it once (the local runtime prints it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from core.auth import api_keys
from core.auth.revocation import Revocations
from core.clock import SystemClock
from core.domain import ALL_SCOPES, Tenant
from core.observability import LOGGER_NAME, log_event
from core.ports import Clock, Store

ADMIN_TENANT = "ten_admin"
#: The record names of an admin key given in the environment, and of one read from the deployment's secret.
ENV_ADMIN_KEY_NAME = "admin (TEXTNLP_ADMIN_KEY)"
SECRET_ADMIN_KEY_NAME = "admin (TEXTNLP_ADMIN_KEY_SECRET)"  # noqa: S105  # nosec B105 - a record name


def _ensure_admin_tenant(store: Store, now: float) -> None:
    if store.get_tenant(ADMIN_TENANT) is None:
        store.put_tenant(Tenant(id=ADMIN_TENANT, name="admin", created_at=now))


def import_admin_key(store: Store, plaintext: str, name: str, clock: Clock | None = None) -> bool:
    """Make ``plaintext`` an admin key named ``name``; True when something was written.

    A warm store costs one read: the key's record exists (revoked by an operator or not, it is left as it
    is). A new plaintext (the setting was changed) revokes the key of the same name imported before it, so
    the old value stops working, and creates the admin tenant if the store has none.
    """
    clock = clock or SystemClock()
    now = clock.now()
    record = api_keys.imported(plaintext, ADMIN_TENANT, name, frozenset(ALL_SCOPES), now)
    if store.get_key(record.id) is not None:
        return False
    _ensure_admin_tenant(store, now)
    for old in store.list_keys(ADMIN_TENANT):
        if old.name == name and old.id != record.id and old.revoked_at is None:
            Revocations.beside_the_servers(store, clock).revoke_key(old)
    store.put_key(record)
    return True


def mint_first_admin_key(store: Store, clock: Clock | None = None) -> str | None:
    """An admin key, returned once, when the admin tenant has no working key; None otherwise."""
    now = (clock or SystemClock()).now()
    _ensure_admin_tenant(store, now)
    if any(not k.revoked_at for k in store.list_keys(ADMIN_TENANT)):
        return None
    plaintext, record = api_keys.mint(ADMIN_TENANT, "admin", frozenset(ALL_SCOPES), now)
    store.put_key(record)
    return plaintext


def import_configured_admin_key(
    store: Store, env_key: str | None, read_secret: Callable[[], str | None] | None, secret: str | None
) -> None:
    """A serverless runtime's admin key: ``TEXTNLP_ADMIN_KEY`` (the local server) when given, else what
    ``read_secret`` reads from the deployment's secret (named ``secret`` in logs). A failure is logged, never
    raised: the API keeps serving every other key, and the next instance tries again. The key is never logged."""
    log = logging.getLogger(LOGGER_NAME)
    name, plaintext = ENV_ADMIN_KEY_NAME, env_key
    try:
        if plaintext is None and read_secret is not None:
            name = SECRET_ADMIN_KEY_NAME
            plaintext = read_secret()
            if plaintext is None:
                log_event(log, "admin key secret holds no key", logging.ERROR, secret=secret)
                return
        if plaintext and import_admin_key(store, plaintext, name, SystemClock()):
            log_event(log, "admin key imported", source=name, tenant_id=ADMIN_TENANT)
    except Exception as exc:
        log_event(log, "admin key not imported", logging.ERROR, error=f"{type(exc).__name__}: {str(exc)[:300]}")
