"""Execute the repository's notebooks for the site: in parallel, and only when their inputs changed.

Each jupytext notebook is executed in its own process (one kernel each, one more at a time than
the machine has cores) and kept under ``$FEDUNLEARN_CACHE/notebooks/<stem>-<digest>/``: the executed
``.ipynb`` and the ``results/`` it saved ([`Results`][fedunlearn.results.Results]). The digest
covers everything the outputs depend on: the notebook's text, the package's source, the versions
of the libraries that compute, ``FULL`` and ``FEDUNLEARN_DEVICE``. A rebuild with nothing changed
executes nothing; trained federations are shared through the
[federation cache][fedunlearn.unlearning.cache] either way.

Outputs written to stderr (progress bars, library warnings) are dropped from the executed
notebook, so no page shows them; an error still fails the execution.

Command line (used by the docs build for each notebook)::

    python -m fedunlearn.notebook_runner NOTEBOOK.py OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fedunlearn.paths import cache_dir, source_digest

#: Libraries whose version can change a notebook's numbers.
LIBRARIES = ("torch", "transformers", "peft", "numpy", "scikit-learn", "faker", "matplotlib")
#: Seconds one notebook may run.
TIMEOUT_S = 1800


@dataclass(frozen=True)
class Executed:
    """An executed notebook in the cache.

    Attributes:
        source: The jupytext notebook.
        directory: Its cache folder (``executed.ipynb``, ``results/``).
        seconds: Execution time (0 when it came from the cache).
    """

    source: Path
    directory: Path
    seconds: float

    @property
    def notebook(self) -> Path:
        """The executed ``.ipynb``."""
        return self.directory / "executed.ipynb"

    @property
    def results(self) -> Path:
        """The folder of the results it saved."""
        return self.directory / "results"


def inputs_digest(source: Path, package: str | None = None) -> str:
    """What a notebook's outputs depend on, hashed (see the module docstring)."""
    digest = hashlib.sha256(source.read_bytes())
    digest.update((package or source_digest()).encode())
    for name in LIBRARIES:
        try:
            digest.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=absent".encode())
    for variable in ("FULL", "FEDUNLEARN_DEVICE"):
        digest.update(f"{variable}={os.environ.get(variable, '')}".encode())
    return digest.hexdigest()[:20]


def execute(source: Path, out_dir: Path, timeout: int = TIMEOUT_S) -> None:
    """Execute ``source`` (jupytext) into ``out_dir/executed.ipynb``, results into ``out_dir/results``.

    Runs in the notebook's folder with ``FEDUNLEARN_RESULTS_DIR`` pointing at ``out_dir/results``.

    Raises:
        nbclient.exceptions.CellExecutionError: If a cell fails.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(source)
    os.environ["FEDUNLEARN_RESULTS_DIR"] = str(out_dir / "results")
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(source.parent)}})
    client.execute()
    for cell in notebook.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = [o for o in cell.get("outputs", [])
                               if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
    nbformat.write(notebook, out_dir / "executed.ipynb")


def execute_all(sources: Sequence[Path], workers: int | None = None,
                report: Callable[[str], None] = print) -> list[Executed]:
    """Every notebook of ``sources`` executed (or taken from the cache), ``workers`` at a time.

    Raises:
        RuntimeError: Naming each notebook that failed, with the end of its output.
    """
    root = cache_dir() / "notebooks"
    root.mkdir(parents=True, exist_ok=True)
    package = source_digest()
    plans = [(source, root / f"{source.stem}-{inputs_digest(source, package)}") for source in sources]
    todo = [(s, d) for s, d in plans if not (d / "executed.ipynb").is_file()]
    timings_file = root / "durations.json"
    last = {}
    # as last measured here, else as measured when the notebooks were committed (a fresh clone)
    for known in (timings_file, *(s.parent.parent / "durations.json" for s in sources[:1])):
        try:
            last = json.loads(known.read_text())
            break
        except (OSError, json.JSONDecodeError):
            continue
    # longest first (unknown ones first of all), so parallel workers finish together
    todo.sort(key=lambda item: -last.get(item[0].stem, float("inf")))
    # one more than the cores: a notebook waiting for a federation another one is training idles
    workers = max(1, min(workers or (os.cpu_count() or 1) + 1, len(todo) or 1))
    report(f"notebooks: {len(plans) - len(todo)} of {len(plans)} unchanged (cached); "
           f"executing {len(todo)}, {workers} at a time")
    failures: list[str] = []
    done = {d: 0.0 for _, d in plans}

    def run(item: tuple[Path, Path]) -> None:
        source, directory = item
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=root))
        start = time.perf_counter()
        for attempt in (1, 2):  # notebooks are deterministic: a second failure is the notebook's own
            proc = subprocess.run([sys.executable, "-m", "fedunlearn.notebook_runner", str(source), str(staging)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode == 0 or attempt == 2:
                break
            # a kernel that could not start (its ports are picked while other servers open theirs)
            report(f"notebooks: {source.name} failed once, executing it again:\n{(proc.stdout + proc.stderr)[-2000:]}")
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            failures.append(f"{source}: execution failed after {seconds:.0f} s:\n{(proc.stdout + proc.stderr)[-4000:]}")
            report(f"notebooks: {source.name} FAILED after {seconds:.0f} s")
            return
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
        done[directory] = seconds
        report(f"notebooks: {source.name} executed in {seconds:.0f} s")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, todo))
    last.update({d.name.rsplit("-", 1)[0]: t for d, t in done.items() if t > 0})
    staging = root / ".durations.json.tmp"
    staging.write_text(json.dumps(last, indent=1, sort_keys=True))
    os.replace(staging, timings_file)
    if failures:
        raise RuntimeError("\n\n".join(failures))
    return [Executed(source, directory, done[directory]) for source, directory in plans]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fedunlearn.notebook_runner NOTEBOOK.py OUT_DIR``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m fedunlearn.notebook_runner NOTEBOOK.py OUT_DIR", file=sys.stderr)
        return 2
    source, out_dir = Path(args[0]).resolve(), Path(args[1]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    execute(source, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
