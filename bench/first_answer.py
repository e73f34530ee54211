"""From a fresh clone to the first answer of ``make serve``: what a new user waits for.

Clones this repository's HEAD into a temporary folder, runs ``make serve`` there (venv, install, the
llama-cpp-python build, first start) and times it until a chat completion from the real local model
answers. ``--cold`` empties pip's cache and the project's wheel folder for the run (a first run on a new
machine); without it they are the machine's own (any later clone on the same machine).

    python -m bench.first_answer [--cold]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench._procs import ADMIN_KEY, ROOT, free_port

DEADLINE_S = 3600.0


def _answer(port: int) -> str | None:
    body = json.dumps(
        {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"authorization": f"Bearer {ADMIN_KEY}", "content-type": "application/json"}
        conn.request("POST", "/v1/chat/completions", body, headers)
        response = conn.getresponse()
        data = json.loads(response.read())
        return str(data["choices"][0]["message"]["content"]) if response.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="empty pip cache and wheel folder (a new machine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="textnlp-first-") as tmp:
        clone = Path(tmp) / "textnlp"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "TEXTNLP_"))}
        env["TEXTNLP_ADMIN_KEY"] = ADMIN_KEY
        if args.cold:
            env["PIP_CACHE_DIR"] = str(Path(tmp) / "pip-cache")
            env["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        port = free_port()
        log = (Path(tmp) / "serve.log").open("wb")
        started = time.perf_counter()
        proc = subprocess.Popen(
            ["make", "serve", f"PORT={port}"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            text = None
            while text is None and time.perf_counter() - started < DEADLINE_S:
                if proc.poll() is not None:
                    raise SystemExit(
                        f"make serve exited with {proc.returncode}:\n{(Path(tmp) / 'serve.log').read_text()[-3000:]}"
                    )
                time.sleep(1.0)
                text = _answer(port)
            elapsed = time.perf_counter() - started
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        cache = "empty pip cache and wheel folder" if args.cold else "warm pip cache and wheel folder"
        print(f"fresh clone -> first answer of make serve ({cache}): {elapsed:.0f} s")
        print(f"  answer: {text!r}")


if __name__ == "__main__":
    main()
