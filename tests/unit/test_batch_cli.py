"""``textnlp batch``: run a file in-process with a progress bar, resume it, show and cancel batches."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.local.sqlite_store import SQLiteStore
from core.app import Gateway
from core.batch.records import BatchJob
from core.domain import Tenant
from functions.local import batch_cli
from tests.fakes import GEN, FakeBackend, Resolver


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SQLiteStore, FakeBackend]:
    store = SQLiteStore(tmp_path / "textnlp.db")
    store.put_model(GEN)
    store.put_tenant(Tenant(id="ten_cli", name="cli", created_at=0.0))
    backend = FakeBackend()
    gateway = Gateway(store, Resolver({"gen": backend}))
    monkeypatch.setattr(batch_cli, "_gateway", lambda data_dir: gateway)
    return store, backend


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="textnlp")
    parser.add_argument("--data-dir", default=".textnlp")
    batch_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def call(*argv: str) -> tuple[int, dict[str, Any] | None, str]:
    args = parse(*argv)
    out, err = io.StringIO(), io.StringIO()
    action = {"run": batch_cli.run, "status": batch_cli.status, "cancel": batch_cli.cancel}[args.action]
    code = action(args, out, err)
    text = out.getvalue().strip()
    return code, json.loads(text) if text else None, err.getvalue()


def write_input(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "work" / "prompts.jsonl"
    path.parent.mkdir(exist_ok=True)
    rows = [json.dumps({"model": "fake-gen", "prompt": f"prompt number {i}", "max_tokens": 2}) for i in range(n)]
    path.write_text("\n".join([*rows, "{not json"]) + "\n")
    return path


def test_run_writes_results_next_to_the_input_and_shows_progress(
    env: tuple[SQLiteStore, FakeBackend], tmp_path: Path
) -> None:
    store, backend = env
    path = write_input(tmp_path, 40)
    code, summary, err = call("batch", "run", str(path), "--tenant", "ten_cli")
    assert code == 0
    assert summary is not None
    assert summary["status"] == "completed"
    assert summary["request_counts"] == {"total": 41, "completed": 40, "failed": 1}
    assert summary["output"] == str(path.parent / "prompts.output.jsonl")
    assert len((path.parent / "prompts.output.jsonl").read_bytes().splitlines()) == 41
    assert json.loads((path.parent / "prompts.errors.jsonl").read_bytes())["line"] == 41
    assert "41/41 lines" in err
    assert "[" + "#" * batch_cli.BAR_WIDTH + "]" in err
    assert backend.calls == 40
    assert {u.key_id for u in store.list_usage("ten_cli", 0, float("inf"))} == {"system:cli"}
    # Run again: the same file version is the same batch, already finished.
    code, again, _ = call("batch", "run", str(path), "--tenant", "ten_cli", "--quiet")
    assert code == 0
    assert again is not None
    assert again["id"] == summary["id"]
    assert backend.calls == 40
    # status and cancel of a finished batch
    code, shown, _ = call("batch", "status", summary["id"], "--tenant", "ten_cli")
    assert (code, shown and shown["status"], shown and shown["source"]) == (0, "completed", "cli")
    code, after_cancel, _ = call("batch", "cancel", summary["id"], "--tenant", "ten_cli")
    assert after_cancel is not None
    assert after_cancel["status"] == "completed"


def test_errors(env: tuple[SQLiteStore, FakeBackend], tmp_path: Path) -> None:
    path = write_input(tmp_path, 1)
    code, _, err = call("batch", "run", str(path), "--tenant", "ten_nobody")
    assert (code, "no such tenant" in err) == (2, True)
    code, _, err = call("batch", "run", str(tmp_path / "missing.jsonl"), "--tenant", "ten_cli")
    assert (code, "no such file" in err) == (2, True)
    assert call("batch", "status", "batch_nope", "--tenant", "ten_cli")[0] == 1
    assert call("batch", "cancel", "batch_nope", "--tenant", "ten_cli")[0] == 1


def test_status_and_cancel_need_the_owning_tenant(
    env: tuple[SQLiteStore, FakeBackend], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _ = env
    store.put_tenant(Tenant(id="ten_other", name="other", created_at=0.0))
    code, summary, _ = call("batch", "run", str(write_input(tmp_path, 1)), "--tenant", "ten_cli", "--quiet")
    assert summary is not None
    code, _, err = call("batch", "status", summary["id"], "--tenant", "ten_other")
    assert (code, "no such batch of tenant ten_other" in err) == (1, True)
    assert call("batch", "cancel", summary["id"], "--tenant", "ten_other")[0] == 1
    with pytest.raises(SystemExit):
        parse("batch", "status", summary["id"])  # --tenant is required
    assert "--tenant" in capsys.readouterr().err


def test_progress_line() -> None:
    job = BatchJob("b", "t", "i", "o", "e", 0.0, "k", [], total=200, completed=90, failed=10, status="in_progress")
    line = batch_cli.progress_line(job)
    assert line.startswith("\r[" + "#" * 15 + "." * 15 + "] 100/200 lines")
    assert "ok 90  failed 10" in line


def test_main_dispatches_and_data_dir_may_follow_the_subcommand(env: tuple[SQLiteStore, FakeBackend]) -> None:
    args = parse("batch", "--data-dir", "/tmp/x", "status", "batch_nope", "--tenant", "ten_cli")
    assert args.data_dir == "/tmp/x"
    assert args.func(args) == 1
