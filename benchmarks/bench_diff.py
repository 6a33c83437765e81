"""CPU time of ``GET /v1/records/{id}/diff``'s work: the old ``jsonpatch.make_patch``
beside revstore's own diff (``revstore.diff``), on the same inputs, in one run.

Shapes (arrays of N integers unless said otherwise):

- ``one-changed``: one element in the middle changed;
- ``ten-inserted``: ten elements inserted at spread-out places;
- ``all-changed``: every element replaced by a different value;
- ``every-other-removed``: half the elements removed, one in two;
- ``reversed``, ``shuffled``: the same elements in reverse / random order (the worst
  case for alignment: revstore's diff runs out of its budget and edits element-wise);
- ``doc-1mib-edited``: a ~1 MiB document of text blocks, 1 % of blocks edited,
  10 inserted and 10 removed;
- ``doc-1mib-ints-halved``: a ~1 MiB array of integers, every other one removed.

Each measurement runs in a child process (so a slow case can be stopped at
``--timeout`` seconds and counted as "over"), timing only the diff call (CPU time of
the process, so other load on the machine barely moves it), then checks that the
patch applies (``jsonpatch.apply_patch``) and yields the new document.
Results: a Markdown table on stdout and in ``benchmarks/results/<date>-diff.md``.

    python benchmarks/bench_diff.py                 # sizes 1k 10k 40k 100k, 60 s timeout
    python benchmarks/bench_diff.py --sizes 1000 10000 --timeout 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
Doc = Any
Case = tuple[str, int, Callable[[int], tuple[Doc, Doc]]]
CHECK_TIMEOUT = 900.0
"""Seconds allowed to apply a finished patch and compare (not part of the timing)."""


def one_changed(n: int) -> tuple[Doc, Doc]:
    old = list(range(n))
    new = list(old)
    new[n // 2] = -1
    return old, new


def ten_inserted(n: int) -> tuple[Doc, Doc]:
    old = list(range(n))
    new = list(old)
    for k in range(10, 0, -1):
        new.insert(k * n // 11, f"new-{k}")
    return old, new


def all_changed(n: int) -> tuple[Doc, Doc]:
    return list(range(n)), [f"v{i}" for i in range(n)]


def every_other_removed(n: int) -> tuple[Doc, Doc]:
    old = list(range(n))
    return old, old[::2]


def reversed_(n: int) -> tuple[Doc, Doc]:
    old = list(range(n))
    return old, old[::-1]


def shuffled(n: int) -> tuple[Doc, Doc]:
    old = list(range(n))
    new = list(old)
    random.Random(n).shuffle(new)
    return old, new


def doc_1mib_edited(_: int) -> tuple[Doc, Doc]:
    rng = random.Random(8)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    blocks = [
        {"id": f"b{i}", "type": "p", "text": " ".join(rng.choices(words, k=12))}
        for i in range(11_000)
    ]
    old = {"title": "a long document", "blocks": blocks}
    new_blocks = [dict(b) for b in blocks]
    for i in rng.sample(range(len(new_blocks)), len(new_blocks) // 100):
        new_blocks[i]["text"] += " (edited)"
    for i in sorted(rng.sample(range(len(new_blocks)), 10), reverse=True):
        del new_blocks[i]
    for i in sorted(rng.sample(range(len(new_blocks)), 10), reverse=True):
        new_blocks.insert(i, {"id": f"n{i}", "type": "p", "text": "inserted"})
    return old, {"title": "a long document", "blocks": new_blocks}


def doc_1mib_ints_halved(_: int) -> tuple[Doc, Doc]:
    old = list(range(100_000, 250_000))
    return old, old[::2]


def size_of(doc: Doc) -> int:
    return len(json.dumps(doc, separators=(",", ":")).encode())


def _measure(which: str, make: Callable[[int], tuple[Doc, Doc]], n: int, out: Any) -> None:
    import jsonpatch

    from revstore.diff import diff

    old, new = make(n)
    fn = (lambda a, b: jsonpatch.make_patch(a, b).patch) if which == "jsonpatch" else diff
    start = time.process_time()
    ops = fn(old, new)
    cpu = time.process_time() - start
    out.put((cpu, len(ops)))
    # Checked after the time is reported: applying 100k operations takes a while too.
    result = jsonpatch.apply_patch(old, ops)
    out.put(json.dumps(result, sort_keys=True) == json.dumps(new, sort_keys=True))


def measure(
    which: str, make: Callable[[int], tuple[Doc, Doc]], n: int, timeout: float
) -> tuple[float | None, int | None, bool | None]:
    """(CPU seconds, operations, patch correct), or Nones when the diff did not
    finish within ``timeout`` seconds (building the inputs included)."""
    ctx = mp.get_context("fork")
    out: Any = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(which, make, n, out))
    proc.start()
    try:
        cpu, ops = out.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        proc.join()
        return None, None, None
    ok = out.get(timeout=CHECK_TIMEOUT)
    proc.join()
    return cpu, ops, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 40_000, 100_000])
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=None, help="the .md file to write")
    args = parser.parse_args()

    shapes = [one_changed, ten_inserted, all_changed, every_other_removed, reversed_, shuffled]
    cases: list[Case] = [
        (f.__name__.strip("_").replace("_", "-"), n, f) for f in shapes for n in args.sizes
    ]
    cases += [
        ("doc-1mib-edited", 0, doc_1mib_edited),
        ("doc-1mib-ints-halved", 0, doc_1mib_ints_halved),
    ]
    started = datetime.now(UTC)
    load = os.getloadavg()[0]
    lines = [
        "| shape | elements | JSON bytes | jsonpatch CPU s | jsonpatch ops "
        "| revstore CPU s | revstore ops | speed-up | both correct |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for name, n, make in cases:
        old, new = make(n)
        elements = len(old["blocks"]) if isinstance(old, dict) else len(old)
        nbytes = size_of(old)
        del old, new
        jp_cpu, jp_ops, jp_ok = measure("jsonpatch", make, n, args.timeout)
        rs_cpu, rs_ops, rs_ok = measure("revstore", make, n, args.timeout)
        jp_text = f"{jp_cpu:.3f}" if jp_cpu is not None else f"> {args.timeout:g} (stopped)"
        rs_text = f"{rs_cpu:.3f}" if rs_cpu is not None else f"> {args.timeout:g} (stopped)"
        if rs_cpu and jp_cpu:
            speed = f"{jp_cpu / rs_cpu:.1f}x"
        elif rs_cpu and jp_cpu is None:
            speed = f"> {args.timeout / rs_cpu:.0f}x"
        else:
            speed = "-"
        correct = {(True, True): "yes"}.get((bool(jp_ok), bool(rs_ok)), f"{jp_ok}/{rs_ok}")
        if jp_ok is None:
            correct = "revstore yes" if rs_ok else "revstore NO"
        line = (
            f"| {name} | {elements:,} | {nbytes:,} | {jp_text} | {jp_ops if jp_ops else '-'} "
            f"| {rs_text} | {rs_ops if rs_ops is not None else '-'} | {speed} | {correct} |"
        )
        lines.append(line)
        print(line, flush=True)

    import jsonpatch

    header = [
        f"# diff: jsonpatch.make_patch vs revstore.diff ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"`python benchmarks/bench_diff.py --sizes {' '.join(map(str, args.sizes))} "
        f"--timeout {args.timeout:g}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"jsonpatch {jsonpatch.__version__}, load average {load:.2f} at start "
        "(the machine was shared). CPU seconds of the diff call alone, each in its own "
        "process; 'stopped' = the diff was still running at the timeout. Correct = the "
        "patch applied with jsonpatch.apply_patch gives the new document.",
        "",
    ]
    text = "\n".join(header + lines) + "\n"
    out = args.out or HERE / "results" / f"{started:%Y-%m-%d}-diff.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
