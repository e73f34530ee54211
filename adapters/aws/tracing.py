"""The Powertools Tracer of the AWS functions, at the cold-start cost of what it really traces.

``Tracer()`` as Powertools builds it imports ``aws_xray_sdk.core`` even where tracing is disabled (outside
Lambda, ``POWERTOOLS_TRACE_DISABLED``); outside Lambda that import also makes the SDK's sampling poller a
botocore session and an ``xray`` client of its own (~170-250 ms in all). With tracing on, its default
``patch_all()`` imports and patches every library the SDK knows that is installed: httpx, requests,
sqlite3, database drivers (~150-230 ms in all, where botocore alone takes ~20 ms).

:func:`make_tracer` builds the same Powertools ``Tracer``:

- tracing disabled (Powertools' own rule, :func:`tracing_disabled`): on :class:`NoOpProvider`, so the X-Ray
  SDK is never imported; ``capture_lambda_handler`` and ``capture_method`` still run, on no-op segments;
- tracing on (Lambda with tracing Active): on the X-Ray recorder, patching botocore at once (every AWS call:
  DynamoDB through pynamodb, Secrets Manager, S3, SQS, SageMaker; one subsegment per call) and httpx when
  something imports it (the OpenAI-compatible backend), not before.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Generator, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import ModuleType
from typing import Any

from aws_lambda_powertools import Tracer
from aws_lambda_powertools.tracing.base import BaseProvider, BaseSegment

#: Patched when the tracer is made: botocore carries every AWS call of the functions. pynamodb is not
#: patched: it calls DynamoDB through botocore's client, so its own patch would record each call twice.
PATCH_AT_ONCE: tuple[str, ...] = ("botocore",)
#: Patched when (if) first imported: they are imported lazily by the code that uses them.
PATCH_ON_IMPORT: tuple[str, ...] = ("httpx",)

log = logging.getLogger(__name__)


def tracing_disabled() -> bool:
    """Powertools' own rule: ``POWERTOOLS_TRACE_DISABLED``, or not in Lambda (no ``LAMBDA_TASK_ROOT``), or
    in SAM local / Chalice local. Read from the environment each time."""
    return bool(Tracer._is_tracer_disabled())


def make_tracer(service: str) -> Tracer:
    """The function's Powertools Tracer (see the module's docstring)."""
    if tracing_disabled():
        return Tracer(service=service, disabled=True, auto_patch=False, provider=NoOpProvider())
    tracer = Tracer(service=service, auto_patch=False)
    tracer.patch(list(PATCH_AT_ONCE))
    for name in PATCH_ON_IMPORT:
        after_import(name, _patcher(tracer, name))
    return tracer


def _patcher(tracer: Tracer, name: str) -> Callable[[ModuleType], None]:
    def patch(_module: ModuleType) -> None:
        tracer.patch([name])

    return patch


# -- tracing disabled ----------------------------------------------------------------------------------------


class NoOpSegment(BaseSegment):
    """A segment that records nothing."""

    def close(self, end_time: int | None = None) -> None:
        return None

    def add_subsegment(self, subsegment: Any) -> None:
        return None

    def remove_subsegment(self, subsegment: Any) -> None:
        return None

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None

    def add_exception(self, exception: BaseException, stack: Any, remote: bool = False) -> None:
        return None


class NoOpProvider(BaseProvider):
    """The tracing provider where tracing is disabled: no X-Ray SDK, nothing recorded, nothing patched."""

    @contextmanager
    def in_subsegment(self, name: str | None = None, **kwargs: Any) -> Generator[BaseSegment, None, None]:
        yield NoOpSegment()

    @asynccontextmanager
    async def in_subsegment_async(self, name: str | None = None, **kwargs: Any) -> Any:
        yield NoOpSegment()

    def put_annotation(self, key: str, value: Any) -> None:
        return None

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        return None

    def patch(self, modules: Sequence[str]) -> None:
        return None

    def patch_all(self) -> None:
        return None


# -- after import ----------------------------------------------------------------------------------------------

_HOOK_LOCK = threading.Lock()
_PENDING: dict[str, list[Callable[[ModuleType], None]]] = {}


def after_import(name: str, then: Callable[[ModuleType], None]) -> None:
    """Call ``then(module)`` once the top-level module ``name`` is imported: now if it already is, else
    right after its first import completes (before the importer sees it), through a finder on
    ``sys.meta_path`` that finds nothing itself. Nothing is imported here. An exception in ``then`` is
    logged, never raised into the import."""
    with _HOOK_LOCK:
        module = sys.modules.get(name)
        if module is None:
            _PENDING.setdefault(name, []).append(then)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    _run([then], module)


def _run(hooks: list[Callable[[ModuleType], None]], module: ModuleType) -> None:
    for then in hooks:
        try:
            then(module)
        except Exception:  # a tracing or session hook must never break the import it follows
            log.exception("after-import hook of %s failed", module.__name__)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Wraps the real loader's ``exec_module`` of a module with pending hooks; leaves when none are left.

    The hooks are taken when the module executes, not when it is found: a ``find_spec`` probe that imports
    nothing (``importlib.util.find_spec``) leaves them pending."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _PENDING:  # a dict lookup: every import passes here while a hook is pending
            return None
        spec = _find_with_others(self, fullname)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):  # not found, or a loader too old to wrap
            if spec is not None:
                log.warning("after-import hooks of %s not run: its loader cannot be wrapped", fullname)
            return spec
        exec_module = loader.exec_module

        def exec_then(module: ModuleType) -> None:
            exec_module(module)
            with _HOOK_LOCK:
                hooks = _PENDING.pop(fullname, [])
                if not _PENDING and self in sys.meta_path:
                    sys.meta_path.remove(self)
            _run(hooks, module)

        loader.exec_module = exec_then  # this module's own loader instance
        return spec


def _find_with_others(finder: _AfterImport, fullname: str) -> Any:
    """The spec the other finders on ``sys.meta_path`` give (the import system asks them next anyway)."""
    for other in list(sys.meta_path):
        if other is finder or not hasattr(other, "find_spec"):
            continue
        spec = other.find_spec(fullname, None, None)
        if spec is not None:
            return spec
    return None


_FINDER = _AfterImport()
