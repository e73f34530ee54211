"""Every benchmark, one after the other, each in a fresh process (~2.5-3 minutes on 2 cores).

python -m bench.run_all [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench._procs import ROOT, host_note

BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    # (module, arguments, --quick arguments)
    ("bench.core_inprocess", [], ["--iterations", "1000"]),
    ("bench.backend_client", [], ["--calls", "600"]),
    ("bench.gateway_overhead", ["--duration", "5", "--warmup", "1"], ["--duration", "2", "--warmup", "0.5"]),
    ("bench.slow_store", ["--duration", "4", "--warmup", "1"], ["--duration", "2", "--warmup", "0.5"]),
    ("bench.cold_start", ["--runs", "5"], ["--runs", "3"]),
    ("bench.batch_throughput", ["--lines", "4000"], ["--lines", "1000"]),
    ("bench.validate_throughput", ["--n", "1000"], ["--n", "300", "--repeat", "1"]),
    ("bench.aws_cold_start", ["--runs", "5"], ["--runs", "3"]),
    ("bench.aws_handler_cost", ["--requests", "300"], ["--requests", "100"]),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    args = p.parse_args(argv)
    print(f"TextNLP benchmarks  ({host_note()})", flush=True)
    failed = []
    started = time.perf_counter()
    for module, full, quick in BENCHMARKS:
        t0 = time.perf_counter()
        print(flush=True)
        code = subprocess.call([sys.executable, "-m", module, *(quick if args.quick else full)], cwd=ROOT)
        print(f"   [{module}: {time.perf_counter() - t0:.0f} s]", flush=True)
        if code:
            failed.append(module)
    print(f"\nall benchmarks: {time.perf_counter() - started:.0f} s  ({host_note()})")
    if failed:
        print(f"FAILED to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
