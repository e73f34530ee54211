"""The printed part of ``bench.scale_sim``: the model's assumptions and the markdown table of its runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bench.scale_stores import StoreModel

if TYPE_CHECKING:
    from bench.scale_sim import RunResult


def _si(value: float) -> str:
    for bound, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= bound:
            return f"{value / bound:.3g}{suffix}"
    return f"{value:.3g}"


def assumptions(stores: Sequence[StoreModel], keys: int) -> str:
    from bench import scale_sim as sim

    lines = [
        "# Quotas at internet scale: a simulated busy tenant (bench.scale_sim)",
        "",
        f"One tenant, {keys} API keys, Poisson arrivals; Lambda-like instances (one request at a time, each its own "
        f"LimitEnforcer; the sliced design: Cloud Run-like, {sim.SLICED_CONCURRENCY} at once, budget slices in "
        "memory); a request reserves prompt + max_tokens "
        f"({sim.PROMPT[0] + sim.MAX_TOKENS}-{sim.PROMPT[1] + sim.MAX_TOKENS} tokens), settles "
        f"{sim.PROMPT[0] + sim.COMPLETION[0]}-{sim.PROMPT[1] + sim.COMPLETION[1]} "
        "tokens 0.5-2 s later with its usage record (one transaction). A throttled reserve: 503. A throttled settle: "
        f"503, retried from {sim.RETRY_FIRST_S * 1000:.0f} ms doubling to {sim.RETRY_MAX_S:g} s. Scenario quota: a "
        "token quota spent ~60 % into the run, rpm/tpm 10x the load; steady: the same with a quota 100x what the run "
        "spends; minute: a tpm limit that binds ~60 % into "
        "the minute. Sizes: names + 8 bytes per number + key; a refused conditional write costs its units; a "
        "throttled one costs nothing and writes nothing.",
        "",
        "Store models (per partition; bench/scale_stores.py says more):",
        "",
    ]
    for m in stores:
        reads = "reads share the bucket" if m.read_rate is None else f"reads {_si(m.read_rate)} RCU/s"
        if m.unit != "WCU" and m.read_rate is not None:
            reads = "reads not limited"
        lines.append(
            f"- {m.name}: {_si(m.write_rate)} {m.unit}/s, burst {_si(m.burst)}, x{m.txn_multiplier:g} in a "
            f"transaction, {reads}, "
            + (
                "aggregate over the writing instance's own items"
                if m.aggregate_per_writer
                else f"aggregate over {m.aggregate_shards} items"
            )
            + (f", records' index over {m.index_shards} ranges of {_si(m.index_rate)}/s" if m.index_shards else "")
            + (", gsi1 writes charged" if m.gsi else "")
            + f"; sharded design's item budget {m.item_writes_per_s():.3g} writes/s"
        )
    return "\n".join(lines)


HEADER = (
    "| store | req/s | s | design | scenario | served | 503 r/s (contended) | throttled (%) | settle retries "
    "| 429 (budget left, max) | overspend | drift | lost | calls/req | units/req | busiest: units/s / limit "
    "| instances | wall s |"
)


def table(results: Sequence[RunResult]) -> str:
    rows = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]
    for r in results:
        s = r.stats
        share = 100.0 * s.throttled_writes / s.writes if s.writes else 0.0
        busiest, attempted, _served, limit = s.busiest()
        calls = sum(s.calls.values()) / r.arrivals if r.arrivals else 0.0
        units = s.write_units / r.arrivals if r.arrivals else 0.0
        left = f" ({r.refused_with_budget:,}, {r.max_budget_left:,})" if r.refused_with_budget else " (0)"
        rows.append(
            f"| {r.model} | {r.rate:,.0f} | {r.seconds:g} | {r.design} | {r.scenario} | {r.served:,} "
            f"| {r.unavailable_reserve:,}/{r.unavailable_settle:,} ({r.contended:,}) "
            f"| {s.throttled_writes:,} ({share:.0f} %) "
            f"| {r.settle_retries:,} | {r.refused:,}{left} | {r.overspend:,} | {r.drift:,} | {r.lost:,} "
            f"| {calls:.2f} | {units:.1f} "
            f"| {_short(busiest)}: {_si(attempted)} / {_si(limit)} | {r.instances:,} | {r.wall_s:.1f} |"
        )
    return "\n".join(rows)


def _short(partition: str) -> str:
    from bench.scale_sim import TENANT_ID

    return partition.replace(TENANT_ID, "<t>").replace("|", "\\|") or "-"  # a "|" would split the cell
