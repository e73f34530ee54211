"""HTTP handlers, one module per area; ``build_router`` assembles them."""

from __future__ import annotations

from core.router import Router


def build_router() -> Router:
    from core.api import admin, auth, embeddings, generation, models, system, usage

    router = Router()
    for module in (system, auth, models, generation, embeddings, usage, admin):
        module.register(router)
    return router
