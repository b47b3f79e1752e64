"""The verdict's cost against its scan's, on the large bf16 pair (bench/scan_speed.py's, about
1.1 GB a side), page cache warm.

Starts an engine as `weightscope diff` does, times the scan (from the start to its last
result), then `Ask("verdict")` from the request to the answer (the spectra of its sample of
matrices, read by the workers, and the rest from the results). Repeated --repeat times, each
in a fresh engine; the medians are printed with the verdict's share of the scan. The target:
the verdict adds at most 10% to a scan.

    python3 bench/verdict_speed.py [--keep DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from heads_speed import until  # noqa: E402
from scan_speed import write_pair  # noqa: E402

from weightscope.compare.results import ResultTable  # noqa: E402
from weightscope.compare.options import ScanOptions  # noqa: E402
from weightscope.engine import protocol as msg  # noqa: E402
from weightscope.engine.client import Engine  # noqa: E402

TARGET = 0.10


def once(a: str, b: str) -> tuple[float, float, str]:
    """(scan seconds, verdict seconds, the verdict's kind) in a fresh engine."""
    start = time.perf_counter()
    engine = Engine(msg.Job(a, b, options=ScanOptions(), use_cache=False))
    try:
        table = ResultTable(len(until(engine, msg.Opened).catalog))
        engine.send(msg.Scan())
        while not isinstance(message := until(engine, (msg.Results, msg.ScanDone)), msg.ScanDone):
            table.add(message.batch)
            engine.send(msg.Ack(message.number))
        scanned = time.perf_counter()
        ticket = engine.ask("verdict")
        while (reply := until(engine, msg.Reply)).ticket != ticket:
            pass
        return scanned - start, time.perf_counter() - scanned, reply.content.kind
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", help="write the pair here and keep it (reused when present)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="weightscope-verdict-")
    large = os.path.join(root, "large")
    try:
        if not os.path.isdir(os.path.join(large, "a")):
            write_pair(large, 8)
        a, b = os.path.join(large, "a"), os.path.join(large, "b")
        once(a, b)  # page cache warm, compiled loops loaded
        runs = [once(a, b) for _ in range(args.repeat)]
        scan = statistics.median(r[0] for r in runs)
        verdict = statistics.median(r[1] for r in runs)
        share = verdict / scan
        print(f"large pair: scan {scan:.2f} s, verdict {verdict:.3f} s ({runs[0][2]}): {share:.1%} of the scan "
              f"(target <= {TARGET:.0%}: {'met' if share <= TARGET else 'missed'}); median of {args.repeat}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
