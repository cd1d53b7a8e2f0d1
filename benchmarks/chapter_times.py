"""How long each chapter takes to execute, as a reader meets it: every chapter run in order
with an empty results cache ("first run": a chapter may reuse what an earlier one stored),
then all of them again with the cache warm ("cached").

    python benchmarks/chapter_times.py --profile quick    # about 10 minutes on 2 cores
    python benchmarks/chapter_times.py --profile full     # about an hour on 2 cores
    python benchmarks/chapter_times.py --chapters 07_leakage   # one chapter, others kept

writes ``results/benchmarks/chapter_times-<profile>.json``, which each chapter's runtime line
reads (``recon.notebook.glue_runtime``). Run it on an idle machine: the times are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon.provenance import provenance  # noqa: E402


def run_chapter(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=("quick", "full", "paper"), default="quick")
    ap.add_argument("--chapters", nargs="*", help="chapter stems (default: every chapter)")
    ap.add_argument("--timeout", type=int, default=7200, help="seconds per chapter")
    ap.add_argument("--out", type=Path, help="default results/benchmarks/chapter_times-"
                                             "<profile>.json")
    args = ap.parse_args(argv)
    chapters = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
    if args.chapters:
        chapters = [c for c in chapters if c.stem in args.chapters]
        if not chapters:
            ap.error(f"no chapter among {args.chapters}")
    out = args.out or ROOT / "results" / "benchmarks" / f"chapter_times-{args.profile}.json"
    with tempfile.TemporaryDirectory(prefix="recon-chapter-times-") as cache:
        os.environ.update(RECON_PROFILE=args.profile, RECON_RESULTS_CACHE=cache,
                          MPLBACKEND="Agg")
        rows = {c.stem: {} for c in chapters}
        for phase in ("first_run_s", "cached_s"):
            for c in chapters:
                s = run_chapter(c, args.timeout)
                rows[c.stem][phase] = round(s, 1)
                print(f"{args.profile} {phase:12s} {c.stem:20s} {s:8.1f} s", flush=True)
    if args.chapters and out.is_file():  # a subset: keep the other chapters' timings
        rows = {**json.loads(out.read_text())["chapters"], **rows}
    result = {"profile": args.profile, "chapters": dict(sorted(rows.items())),
              "threads": int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
              "provenance": provenance("cpu")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
