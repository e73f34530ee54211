"""Files API: multipart upload checked line by line, list/retrieve/content/delete, scopes and tenant isolation."""

from __future__ import annotations

import json

import pytest

from core.api import files as files_api
from core.app import Gateway
from core.batch.lines import MAX_LINE_BYTES
from tests.fakes import Harness, Resolver, error_of, json_of, make_harness, multipart

CHAT = {"model": "fake-gen", "messages": [{"role": "user", "content": "hello"}]}


def batch_line(custom_id: str, body: dict[str, object] | None = None, url: str = "/v1/chat/completions") -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body or CHAT}).encode()


@pytest.fixture
def h() -> Harness:
    return make_harness()


@pytest.fixture
def key(h: Harness) -> str:
    return h.key_with("batch", "fine_tune", "generate")


def test_upload_a_batch_file(h: Harness, key: str) -> None:
    content = batch_line("a") + b"\n" + batch_line("b") + b"\n"
    response = h.upload(content, filename="prompts.jsonl", key=key)
    assert response.status == 200, response.body
    body = json_of(response)
    assert body["id"].startswith("file-")
    assert {k: body[k] for k in ("object", "bytes", "filename", "purpose", "status")} == {
        "object": "file",
        "bytes": len(content),
        "filename": "prompts.jsonl",
        "purpose": "batch",
        "status": "processed",
    }
    assert body["created_at"] == int(h.clock.now())
    assert h.blobs.read_object(f"files/{h.tenant.id}/{body['id']}") == content
    content_response = h.call("GET", f"/v1/files/{body['id']}/content", key=key)
    assert content_response.status == 200
    assert content_response.body == content


def test_native_and_blank_lines_are_accepted_and_paths_are_stripped_from_filenames(h: Harness, key: str) -> None:
    content = b'{"model": "fake-gen", "prompt": "hi"}\r\n\r\n' + batch_line("x") + b"\r\n"
    body = json_of(h.upload(content, filename="../../etc/passwd", key=key))
    assert body["filename"] == "passwd"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no lines"),
        (b"\n  \n", "no lines"),
        (batch_line("a") + b"\n{oops\n", "line 2: not JSON"),
        (batch_line("a") + b"\n" + batch_line("a"), "line 2: custom_id 'a' is used twice"),
        (b"\n\n" + batch_line("a", url="/v1/images"), "line 3: url must be one of"),
        (batch_line("a", {"model": "m", "messages": []}), "line 1: body.messages"),
        (b'{"model": "m", "prompt": "\xff"}', "line 1: the line is not UTF-8"),
        (b'{"model": "m", "prompt": "' + b"a" * MAX_LINE_BYTES + b'"}', "line 1: the line is longer than"),
    ],
)
def test_a_bad_batch_file_is_a_400_naming_the_first_bad_line(
    h: Harness, key: str, content: bytes, message: str
) -> None:
    response = h.upload(content, key=key)
    assert response.status == 400
    error = error_of(response)
    assert message in error["message"]
    assert (error["param"], error["code"]) == ("file", "invalid_file")
    assert h.blobs.keys() == []  # nothing stored


def test_fine_tune_files_are_checked_as_training_data(h: Harness, key: str) -> None:
    good = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    good += b'{"prompt": "q", "completion": "a"}\n'
    assert json_of(h.upload(good, purpose="fine-tune", key=key))["purpose"] == "fine-tune"
    bad = h.upload(good + b'{"prompt": "q"}\n', purpose="fine-tune", key=key)
    assert "line 3:" in error_of(bad)["message"]
    # A batch line is not training data.
    assert h.upload(batch_line("a"), purpose="fine-tune", key=key).status == 400


def test_purpose_and_form_fields_are_checked(h: Harness, key: str) -> None:
    assert error_of(h.upload(batch_line("a"), purpose="assistants", key=key))["param"] == "purpose"
    headers = {"content-type": "multipart/form-data; boundary=b0undary"}
    no_file = h.call("POST", "/v1/files", multipart({"purpose": "batch"}, {}), key=key, headers=headers)
    assert error_of(no_file)["param"] == "file"
    no_purpose = h.call("POST", "/v1/files", multipart({}, {"file": ("a", batch_line("a"))}), key=key, headers=headers)
    assert error_of(no_purpose)["param"] == "purpose"
    as_json = h.call_json("POST", "/v1/files", {"purpose": "batch"}, key=key)
    assert error_of(as_json)["code"] == "invalid_content_type"


def test_scopes(h: Harness) -> None:
    generate_only = h.key_with("generate", "embed")
    assert error_of(h.upload(batch_line("a"), key=generate_only))["code"] == "insufficient_scope"
    assert h.call("GET", "/v1/files", key=generate_only).status == 403
    fine_tune_only = h.key_with("fine_tune")
    assert h.upload(batch_line("a"), key=fine_tune_only).status == 403  # batch purpose needs batch
    assert h.call("GET", "/v1/files", key=fine_tune_only).status == 200
    batch_only = h.key_with("batch")
    assert h.upload(b'{"prompt": "q", "completion": "a"}', purpose="fine-tune", key=batch_only).status == 403


def test_list_pages_and_filters_by_purpose(h: Harness, key: str) -> None:
    ids = []
    for i in range(5):
        ids.append(json_of(h.upload(batch_line(f"c{i}"), key=key))["id"])
        h.clock.advance(1)
    tuning = json_of(h.upload(b'{"prompt": "q", "completion": "a"}', purpose="fine-tune", key=key))["id"]
    everything = json_of(h.call("GET", "/v1/files", key=key))
    assert [f["id"] for f in everything["data"]] == [tuning, *reversed(ids)]  # newest first
    assert everything["has_more"] is False
    page = json_of(h.call("GET", "/v1/files", key=key, query={"limit": "2", "purpose": "batch"}))
    assert [f["id"] for f in page["data"]] == [ids[4], ids[3]]
    assert page["has_more"] is True
    rest = json_of(h.call("GET", "/v1/files", key=key, query={"after": page["last_id"], "purpose": "batch"}))
    assert [f["id"] for f in rest["data"]] == [ids[2], ids[1], ids[0]]
    assert rest["has_more"] is False
    assert error_of(h.call("GET", "/v1/files", key=key, query={"limit": "0"}))["param"] == "limit"


def test_other_tenants_files_do_not_exist_for_the_caller(h: Harness, key: str) -> None:
    file_id = json_of(h.upload(batch_line("a"), key=key))["id"]
    other, _ = h.new_tenant("other")
    other_key = h.key_with("batch", tenant=other.id)
    for method, path in (
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
    ):
        response = h.call(method, path, key=other_key)
        assert response.status == 404, (method, path)
        assert error_of(response)["code"] == "file_not_found"
    assert json_of(h.call("GET", "/v1/files", key=other_key))["data"] == []
    assert h.call("GET", f"/v1/files/{file_id}", key=key).status == 200


def test_retrieve_and_delete(h: Harness, key: str) -> None:
    file_id = json_of(h.upload(batch_line("a"), filename="f.jsonl", key=key))["id"]
    assert json_of(h.call("GET", f"/v1/files/{file_id}", key=key))["filename"] == "f.jsonl"
    deleted = h.call("DELETE", f"/v1/files/{file_id}", key=key)
    assert json_of(deleted) == {"id": file_id, "object": "file", "deleted": True}
    assert h.call("GET", f"/v1/files/{file_id}", key=key).status == 404
    assert h.call("DELETE", f"/v1/files/{file_id}", key=key).status == 404
    assert h.blobs.keys() == []


def test_uploads_may_be_larger_than_json_bodies(h: Harness, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = {"authorization": f"Bearer {key}"}
    assert h.gateway.max_body_for("POST", "/v1/files", auth) == files_api.UPLOAD_MAX_BODY > 100 * 1024 * 1024
    # Without a valid credential a runtime buffers no more than the JSON limit.
    assert h.gateway.max_body_for("POST", "/v1/files") == h.gateway.settings.max_body_bytes
    assert h.gateway.max_body_for("POST", "/v1/files", {"authorization": "Bearer nope"}) == 1_048_576
    assert h.gateway.max_body_for("POST", "/v1/chat/completions") == h.gateway.settings.max_body_bytes
    assert h.gateway.max_body_for("GET", "/nowhere") == h.gateway.settings.max_body_bytes
    assert h.gateway.router.largest_body(1) == files_api.UPLOAD_MAX_BODY
    big_line = b'{"model": "fake-gen", "prompt": "' + b"word " * 150_000 + b'"}'  # 750 kB a line
    two_mb = b"\n".join([big_line] * 3)
    assert h.upload(two_mb, key=key).status == 200
    assert h.call("POST", "/v1/generate", two_mb, key=key).status == 413
    monkeypatch.setattr(files_api, "FILE_MAX_BYTES", 1000)
    assert error_of(h.upload(two_mb, key=key))["code"] == "request_too_large"


def test_without_a_blob_store_files_are_unavailable(h: Harness, key: str) -> None:
    gateway = Gateway(h.store, Resolver({}), clock=h.clock)
    h.gateway = gateway
    response = h.upload(batch_line("a"), key=key)
    assert response.status == 503
    assert error_of(response)["code"] == "no_blob_store"
