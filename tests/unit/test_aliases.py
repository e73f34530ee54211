"""Model aliases: set by an operator, unique across every id and alias, resolved wherever a model is named.

Answers, usage records and usage reports carry the real model id; another tenant's model stays invisible
under any name; resolving an alias costs no store call once the registry's short cache is warm.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.clock import FixedClock
from core.domain import ModelSpec
from core.errors import BackendError
from core.registry import OWNER_KEY, ModelRegistry, alias_index
from tests.fakes import EMB, GEN, FakeBackend, Harness, error_of, json_of

ALIASES = ["gpt2", "gpt2-large"]


def model_body(model_id: str = "acme-gen", aliases: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "kind": "generation",
        "backend": {"type": "local", "name": "gen"},
        "context_length": 1024,
        "max_output_tokens": 128,
        "aliases": ALIASES if aliases is None else aliases,
        **extra,
    }


def admin(h: Harness, method: str, path: str, payload: Any = None) -> Any:
    return h.call_json(method, path, payload, key=h.admin_key)


def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, resp.body
    return json_of(resp)


@pytest.fixture
def h(harness: Harness) -> Harness:
    """The harness with ``acme-gen`` registered under the seed's names, gpt2 and gpt2-large."""
    ok(admin(harness, "POST", "/admin/models", model_body()), 201)
    return harness


# -- the admin API ------------------------------------------------------------------------------------------


def test_aliases_are_stored_and_shown(h: Harness) -> None:
    stored = h.store.get_model("acme-gen")
    assert stored is not None
    assert stored.aliases == ("gpt2", "gpt2-large")
    card = ok(admin(h, "PUT", "/admin/models/acme-gen", model_body(aliases=["gpt2"])))
    assert card["aliases"] == ["gpt2"]
    assert ok(admin(h, "PUT", "/admin/models/acme-gen", model_body(aliases=[])))["aliases"] == []


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (model_body("other", aliases=["gpt2"]), None, "the alias 'gpt2' already belongs to the model 'acme-gen'"),
        (
            model_body("other", aliases=["x", "fake-gen"]),
            None,
            "the alias 'fake-gen' is the id of the model 'fake-gen'",
        ),
        (model_body("gpt2-large", aliases=[]), None, "the id 'gpt2-large' is already an alias of the model 'acme-gen'"),
        (model_body("fake-gen", aliases=["gpt2"]), "fake-gen", "already belongs to the model 'acme-gen'"),
        (model_body("fake-gen", aliases=["acme-gen"]), "fake-gen", "the alias 'acme-gen' is the id of the model"),
        (model_body("gpt2", aliases=[]), "gpt2", "the id 'gpt2' is already an alias of the model 'acme-gen'"),
    ],
)
def test_a_name_another_model_answers_to_is_409(
    h: Harness, body: dict[str, Any], path: str | None, message: str
) -> None:
    """On create (POST) and on update (PUT): alias vs alias, alias vs id, id vs alias."""
    resp = admin(h, "POST", "/admin/models", body) if path is None else admin(h, "PUT", f"/admin/models/{path}", body)
    assert resp.status == 409
    error = error_of(resp)
    assert (error["type"], error["code"]) == ("invalid_request_error", "conflict")
    assert message in error["message"]
    assert h.store.get_model("other") is None
    assert h.store.get_model("gpt2") is None
    fake = h.store.get_model("fake-gen")
    assert fake is not None
    assert fake.aliases == ()  # a refused update changes nothing


def test_a_model_keeps_its_own_aliases_on_update_and_an_alias_can_move(h: Harness) -> None:
    ok(admin(h, "PUT", "/admin/models/acme-gen", model_body(context_length=2048)))
    ok(admin(h, "PUT", "/admin/models/acme-gen", model_body(aliases=["gpt2"])))
    card = ok(admin(h, "POST", "/admin/models", model_body("other", aliases=["gpt2-large"])), 201)
    assert card["aliases"] == ["gpt2-large"]
    gen = h.call_json("POST", "/v1/generate", {"model": "gpt2-large", "prompt": "a b", "max_tokens": 2})
    assert ok(gen)["model"] == "other"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"aliases": ["acme-gen"]}, None),  # its own id
        ({"aliases": ["a", "a"]}, None),
        ({"aliases": ["has space"]}, "aliases[0]"),
        ({"aliases": [""]}, "aliases[0]"),
        ({"aliases": "gpt2"}, "aliases"),
        ({"aliases": [f"a{i}" for i in range(33)]}, "aliases"),
        ({"aliases": ["b"], "fallbacks": ["b"]}, None),  # its own alias as its fallback
    ],
)
def test_bad_aliases_are_400(harness: Harness, change: dict[str, Any], param: str | None) -> None:
    resp = admin(harness, "POST", "/admin/models", {**model_body(), **change})
    assert resp.status == 400, resp.body
    assert error_of(resp)["param"] == param
    assert harness.store.get_model("acme-gen") is None


def test_put_refuses_the_path_id_as_an_alias(h: Harness) -> None:
    body = model_body(aliases=["acme-gen"])
    del body["id"]
    resp = admin(h, "PUT", "/admin/models/acme-gen", body)
    assert resp.status == 400
    assert error_of(resp)["param"] == "aliases"


def test_deleting_by_an_alias_is_404_and_deleting_the_model_frees_its_aliases(h: Harness) -> None:
    resp = admin(h, "DELETE", "/admin/models/gpt2")
    assert resp.status == 404
    assert error_of(resp)["code"] == "model_not_found"
    ok(admin(h, "DELETE", "/admin/models/acme-gen"))
    assert error_of(h.call("GET", "/v1/models/gpt2"))["code"] == "model_not_found"
    ok(admin(h, "POST", "/admin/models", model_body("other")), 201)


# -- resolution in every route ------------------------------------------------------------------------------


def test_models_list_shows_aliases_on_their_model(h: Harness) -> None:
    data = ok(h.call("GET", "/v1/models"))["data"]
    ids = [m["id"] for m in data]
    assert "acme-gen" in ids
    assert "gpt2" not in ids  # an alias is a field of its model, not an entry
    assert next(m for m in data if m["id"] == "acme-gen")["aliases"] == ALIASES
    assert next(m for m in data if m["id"] == "fake-gen")["aliases"] == []
    card = ok(h.call("GET", "/v1/models/gpt2-large"))
    assert (card["id"], card["aliases"]) == ("acme-gen", ALIASES)
    missing = h.call("GET", "/v1/models/gpt3")
    assert missing.status == 404
    assert error_of(missing)["code"] == "model_not_found"


def test_generate_by_alias_answers_and_meters_the_real_model(h: Harness) -> None:
    for alias in ALIASES:
        body = ok(h.call_json("POST", "/v1/generate", {"model": alias, "prompt": "Hello world", "max_tokens": 50}))
        assert body["model"] == "acme-gen"
        assert body["text"] == "Hello world"
    assert {r.model for r in h.usage(h.tenant.id)} == {"acme-gen"}
    report = ok(h.call("GET", "/v1/usage", query={"group_by": "model"}))
    assert [(row["model"], row["requests"]) for row in report["data"]] == [("acme-gen", 2)]


def test_an_alias_shares_the_cache_of_its_model(h: Harness) -> None:
    ask = {"prompt": "same words", "max_tokens": 4, "temperature": 0}
    first = h.call_json("POST", "/v1/generate", {"model": "gpt2", **ask})
    second = h.call_json("POST", "/v1/generate", {"model": "acme-gen", **ask})
    assert (first.headers["x-textnlp-cache"], second.headers["x-textnlp-cache"]) == ("miss", "hit")


def test_completions_and_chat_by_alias(h: Harness) -> None:
    done = ok(h.call_json("POST", "/v1/completions", {"model": "gpt2", "prompt": "a b c", "max_tokens": 3}))
    assert (done["model"], done["choices"][0]["text"]) == ("acme-gen", "a b c")
    chat = {"model": "gpt2-large", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5}
    answer = ok(h.call_json("POST", "/v1/chat/completions", chat))
    assert (answer["model"], answer["choices"][0]["message"]["content"]) == ("acme-gen", "hi there")
    response, chunks = h.stream("/v1/chat/completions", {**chat, "stream": True})
    assert response.status == 200
    first = json.loads(chunks[0].removeprefix(b"data: "))
    assert first["model"] == "acme-gen"
    assert {r.endpoint: r.model for r in h.usage(h.tenant.id)} == {
        "completions": "acme-gen",
        "chat.completions": "acme-gen",
    }


def test_embeddings_and_validate_by_alias(harness: Harness) -> None:
    h = harness
    h.store.put_model(replace(EMB, aliases=("minilm",)))
    out = ok(h.call_json("POST", "/v1/embeddings", {"model": "minilm", "input": ["x y"]}))
    assert out["model"] == "fake-emb"
    key = h.key_with("validate")
    payload = {"candidates": ["a b"], "references": ["a c"], "metrics": ["embedding_similarity"]}
    resp = h.call_json("POST", "/v1/validate", {**payload, "embedding_model": "minilm"}, key=key)
    assert resp.status == 200, resp.body
    assert {r.model for r in h.usage(h.tenant.id)} == {"fake-emb"}
    wrong_kind = h.call_json("POST", "/v1/embeddings", {"model": "fake-gen", "input": "x"})
    assert error_of(wrong_kind)["code"] == "model_not_supported"


def test_fluency_by_alias(harness: Harness) -> None:
    h = harness
    h.store.put_model(replace(GEN, aliases=("tiny",)))
    key = h.key_with("validate")
    resp = h.call_json("POST", "/v1/validate", {"candidates": ["a b"], "fluency_model": "tiny"}, key=key)
    assert resp.status == 400  # the fake backend cannot score: the error names the real model
    assert "'fake-gen'" in error_of(resp)["message"]


def test_a_batch_line_naming_an_alias_runs_on_the_real_model(h: Harness) -> None:
    key = h.key_with("batch", "generate")
    lines = [
        json.dumps({"custom_id": "a", "model": "gpt2", "prompt": "one two", "max_tokens": 2}),
        json.dumps({"custom_id": "b", "model": "nope", "prompt": "one two", "max_tokens": 2}),
    ]
    upload = ok(h.upload(("\n".join(lines) + "\n").encode(), key=key))
    payload = {"input_file_id": upload["id"], "endpoint": "/v1/generate", "completion_window": "24h"}
    batch = ok(h.call_json("POST", "/v1/batches", payload, key=key))
    h.run_jobs()
    done = ok(h.call("GET", f"/v1/batches/{batch['id']}", key=key))
    assert done["request_counts"] == {"total": 2, "completed": 1, "failed": 1}
    output = h.call("GET", f"/v1/files/{done['output_file_id']}/content", key=key)
    lines_out = {x["custom_id"]: x for x in map(json.loads, output.body.splitlines())}
    assert lines_out["a"]["response"]["body"]["model"] == "acme-gen"
    assert lines_out["a"]["response"]["body"]["text"] == "one two"
    errors = h.call("GET", f"/v1/files/{done['error_file_id']}/content", key=key)
    assert "model_not_found" in errors.body.decode()
    assert {r.model for r in h.usage(h.tenant.id)} == {"acme-gen"}


def test_a_fallback_named_by_an_alias(harness: Harness) -> None:
    h = harness
    failing = FakeBackend(failures=[BackendError("down", status=503, retryable=True)])
    h.add_model(
        ModelSpec(id="flaky", kind="generation", backend={"type": "local", "name": "flaky"}, max_retries=0),
        failing,
    )
    h.store.put_model(replace(h.store.get_model("flaky") or GEN, fallbacks=("backup",)))
    h.store.put_model(replace(GEN, aliases=("backup",)))
    out = ok(h.call_json("POST", "/v1/generate", {"model": "flaky", "prompt": "a b", "max_tokens": 2}))
    assert out["model"] == "fake-gen"
    assert failing.calls == 1


# -- tenant-owned models ------------------------------------------------------------------------------------


def owned(tenant_id: str, model_id: str = "ft:fake-gen:acme:abc123", aliases: tuple[str, ...] = ("mine",)) -> ModelSpec:
    return replace(GEN, id=model_id, owned_by=tenant_id, metadata={OWNER_KEY: tenant_id}, aliases=aliases)


def test_another_tenant_cannot_reach_an_owned_model_through_its_alias(harness: Harness) -> None:
    h = harness
    h.store.put_model(owned(h.tenant.id))
    _, other_key = h.new_tenant("other")
    mine = ok(h.call_json("POST", "/v1/generate", {"model": "mine", "prompt": "a", "max_tokens": 1}))
    assert mine["model"] == "ft:fake-gen:acme:abc123"
    for method, path, payload in (
        ("POST", "/v1/generate", {"model": "mine", "prompt": "a", "max_tokens": 1}),
        ("POST", "/v1/chat/completions", {"model": "mine", "messages": [{"role": "user", "content": "a"}]}),
        ("GET", "/v1/models/mine", None),
    ):
        resp = h.call_json(method, path, payload, key=other_key)
        assert resp.status == 404, path
        error = error_of(resp)
        assert error["code"] == "model_not_found"
        assert error["message"] == "the model 'mine' does not exist"  # nothing about whose it is
    listed = ok(h.call("GET", "/v1/models", key=other_key))["data"]
    assert all("mine" not in m["aliases"] and not m["id"].startswith("ft:") for m in listed)


def test_a_claimed_alias_prefers_the_model_everyone_sees() -> None:
    """Two models claiming one alias (written around the admin API): never a tenant's model for everyone."""
    shared = replace(GEN, id="zzz-shared", aliases=("gpt2",))
    tenant_copy = owned("ten_a", "aaa-owned", aliases=("gpt2",))
    assert alias_index([tenant_copy, shared])["gpt2"].id == "zzz-shared"
    assert alias_index([replace(shared, id="b"), replace(shared, id="a")])["gpt2"].id == "a"


def test_an_id_wins_over_an_alias(harness: Harness) -> None:
    h = harness
    h.store.put_model(replace(EMB, id="emb-2", aliases=("fake-gen",)))  # written around the admin API
    out = ok(h.call_json("POST", "/v1/generate", {"model": "fake-gen", "prompt": "a", "max_tokens": 1}))
    assert out["model"] == "fake-gen"


# -- the registry's cache and the stores --------------------------------------------------------------------


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def get_model(self, model_id: str) -> ModelSpec | None:
        self.reads.append(f"get:{model_id}")
        return super().get_model(model_id)

    def list_models(self) -> list[ModelSpec]:
        self.reads.append("list")
        return super().list_models()


def test_resolving_an_alias_adds_no_store_call_once_warm() -> None:
    store, clock = CountingStore(), FixedClock()
    store.put_model(replace(GEN, aliases=("gpt2", "gpt2-large")))
    registry = ModelRegistry(store, clock, cache_ttl_s=5.0)
    assert registry.get("gpt2").id == "fake-gen"
    assert registry.get("gpt2-large").id == "fake-gen"
    assert registry.get("fake-gen").id == "fake-gen"
    # One list for every alias of the period; each name read once.
    assert store.reads == ["get:gpt2", "list", "get:gpt2-large", "get:fake-gen"]
    store.reads.clear()
    for _ in range(100):
        registry.get("gpt2")
        registry.get("fake-gen")
    assert store.reads == []
    clock.advance(6)
    registry.get("gpt2")
    assert store.reads == ["get:gpt2", "list"]


def test_a_write_through_the_registry_is_seen_at_once() -> None:
    store, clock = MemoryStore(), FixedClock()
    registry = ModelRegistry(store, clock)
    registry.put(replace(GEN, aliases=("gpt2",)))
    assert registry.get("gpt2").id == "fake-gen"
    registry.put(replace(GEN, aliases=("other",)))
    assert registry.find("gpt2") is None
    assert registry.get("other").id == "fake-gen"
    registry.delete("fake-gen")
    assert registry.find("other") is None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_stores_give_aliases_back_as_a_tuple(kind: str, tmp_path: Path) -> None:
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "t.db")
    spec = replace(GEN, aliases=("gpt2", "gpt2-large"), fallbacks=("fake-emb",))
    store.put_model(spec)
    assert store.get_model("fake-gen") == spec
    assert store.list_models() == [spec]


def test_dynamodb_gives_aliases_back_as_a_tuple() -> None:
    pytest.importorskip("pynamodb")
    from adapters.aws.dynamodb import _model_from
    from adapters.aws.dynamodb_models import ModelItem

    spec = replace(GEN, aliases=("gpt2",))
    document = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    assert _model_from(ModelItem(pk="MODELS", sk=spec.id, spec=document).serialize()) == spec
    legacy = {k: v for k, v in dataclasses.asdict(GEN).items() if k != "aliases"}
    assert _model_from(ModelItem(pk="MODELS", sk=GEN.id, spec=json.dumps(legacy)).serialize()).aliases == ()


def test_an_entry_written_before_aliases_existed_reads_back(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db")
    old = {k: v for k, v in dataclasses.asdict(GEN).items() if k != "aliases"}
    store._conn().execute("INSERT INTO models (id, spec) VALUES (?, ?)", (GEN.id, json.dumps(old)))
    assert store.get_model(GEN.id) == GEN


def test_a_fine_tuned_model_does_not_inherit_its_base_models_aliases() -> None:
    from core.fine_tuning.job import FineTuneJob, TunerStatus
    from core.fine_tuning.models import fine_tuned_spec

    base = replace(GEN, aliases=("gpt2",))
    job = FineTuneJob(
        id="ftjob-1",
        tenant_id="ten_a",
        key_id="k",
        model=base.id,
        training_file="file-1",
        training_key="files/x",
        created_at=0.0,
        seed=1,
        hyperparameters={},
        base_model_ref=base.id,
    )
    status = TunerStatus(state="succeeded", fine_tuned_model_route={"type": "openai"})
    spec = fine_tuned_spec("ft:x", job, base, status, now=1.0)
    assert spec.aliases == ()
    assert spec.context_length == base.context_length  # what it does inherit
