"""HTTP handlers, one module per area; ``build_router`` assembles them."""

from __future__ import annotations

from core.routes import Router

# Each area's module and the path prefixes it serves: a request imports only its own area's handlers and
# schemas (a cold start serving /v1/chat/completions never imports validation, files or fine-tuning).
# The prefixes are a shortcut, not the truth: a path no loaded route matches loads every area, then matches.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("system", ("/health", "/openapi.json")),
    ("auth", ("/auth/", "/.well-known/")),
    ("models", ("/v1/models",)),
    ("generation", ("/v1/generate", "/v1/completions", "/v1/chat/")),
    ("embeddings", ("/v1/embeddings",)),
    ("validate", ("/v1/validate",)),
    ("files", ("/v1/files",)),
    ("batches", ("/v1/batches",)),
    ("fine_tuning", ("/v1/fine_tuning/",)),
    ("usage", ("/v1/usage",)),
    ("admin", ("/admin/",)),
)


def build_router() -> Router:
    router = Router()
    for area, prefixes in AREAS:
        router.include(f"core.api.{area}", *prefixes)
    return router
