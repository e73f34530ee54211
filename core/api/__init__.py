"""HTTP handlers, one module per area; ``build_router`` assembles them."""

from __future__ import annotations

from core.router import Router


def build_router() -> Router:
    from core.api import (
        admin,
        auth,
        batches,
        embeddings,
        files,
        fine_tuning,
        generation,
        models,
        system,
        usage,
        validate,
    )

    router = Router()
    for module in (system, auth, models, generation, embeddings, validate, files, batches, fine_tuning, usage, admin):
        module.register(router)
    return router
