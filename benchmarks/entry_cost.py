"""What one entry adds to ``.ci/run``: its tests and its notebook, timed per entry.

CI runs every entry's tests and executes every notebook once (in the docs build), all sharing one
federation cache. This script measures, for each entry of the catalog, in a fresh cache:

- **first pass** (entries in catalog order, one cache): the time of the entry's test file and of
  its notebook when the entries before it already ran. An entry that is first to need a federation
  pays for training it here;
- **second pass** (everything cached): the same again, the entry's own work only (its methods,
  evaluations and experiments; no federation or oracle is trained). This is the marginal cost of
  an entry whose scenarios other entries already use. The goal is at most 45 s.

Both passes run with one torch thread, as the tests do; the tiny language model is pretrained
before timing starts. Usage::

    python benchmarks/entry_cost.py                 # every entry
    python benchmarks/entry_cost.py --entries federaser,kd-unlearning --json cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedunlearn import catalog

REPO = catalog.repo_root()


def timed(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``command`` (raises if it fails)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return time.perf_counter() - start


def entry_cost(entry: catalog.Entry, env: dict[str, str], scratch: Path) -> dict[str, float]:
    """Seconds of the entry's test file and of its notebook's execution."""
    tests = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", entry.test], env)
    out = scratch / f"{entry.slug}-{time.monotonic_ns()}"
    notebook = timed([sys.executable, "-m", "fedunlearn.notebook_runner", entry.notebook, str(out)], env)
    return {"tests_s": tests, "notebook_s": notebook, "total_s": tests + notebook}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Per-entry CI cost: tests plus notebook, cold and cached.")
    parser.add_argument("--entries", help="comma-separated slugs (default: every entry)")
    parser.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    entries = catalog.entries()
    if args.entries:
        wanted = [s.strip() for s in args.entries.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {e.slug for e in entries})
        if unknown:
            parser.error(f"unknown entries {unknown}; known: {', '.join(e.slug for e in entries)}")
        entries = [e for e in entries if e.slug in wanted]
    with tempfile.TemporaryDirectory(prefix="fedunlearn-entry-cost-") as tmp:
        scratch = Path(tmp)
        env = {**os.environ, "FEDUNLEARN_CACHE": str(scratch / "cache"), "MPLBACKEND": "Agg"}
        env.pop("FEDUNLEARN_NO_CACHE", None)
        warmup = timed([sys.executable, "-c", "from fedunlearn.federated.lora_task import LoraCausalLMTask; "
                        "LoraCausalLMTask().build_model()"], env)
        first = {e.slug: entry_cost(e, env, scratch) for e in entries}
        second = {e.slug: entry_cost(e, env, scratch) for e in entries}
    print(f"tiny LM pretraining (once, before timing): {warmup:.0f} s")
    print(f"{'entry':<18} {'first pass: tests + notebook':>30} {'cached: tests + notebook':>28}")
    for e in entries:
        a, b = first[e.slug], second[e.slug]
        print(f"{e.slug:<18} {a['tests_s']:>9.0f} + {a['notebook_s']:>5.0f} = {a['total_s']:>5.0f} s "
              f"{b['tests_s']:>9.0f} + {b['notebook_s']:>5.0f} = {b['total_s']:>5.0f} s")
    worst = max(second.values(), key=lambda r: r["total_s"])["total_s"]
    print(f"marginal cost of one entry (cached pass, worst entry): {worst:.0f} s (goal: at most 45 s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"pretraining_s": warmup, "first": first, "cached": second}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
