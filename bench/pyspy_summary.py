"""Summarise py-spy raw (folded) profiles written by `python -m bench.pipeline --profile DIR`.

    .venv/bin/python bench/pyspy_summary.py DIR/single.txt [DIR/noop-async.txt ...]

Start-up samples (module imports, worker boot) are dropped, then each remaining sample is
counted under every bucket whose frame it contains (buckets nest: "SQL: apply_usage" is inside
"group commit flush"), as a share of the steady-state samples. Use profiles recorded with
--profile-gil: a sample then means "this stack held the GIL", i.e. Python CPU time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

STARTUP = ("_find_and_load", "import_broker", "Worker.start", "before_worker_boot")

# (label, frame-name pattern): a sample counts for a bucket when one of its frames matches.
BUCKETS: tuple[tuple[str, str], ...] = (
    ("dramatiq consumer thread: fetch + decode", r"^_RedisConsumer\.__next__$"),
    ("dramatiq ack (Redis EVALSHA per message)", r"^_RedisConsumer\.ack$"),
    ("dramatiq worker thread total", r"^WorkerThread\.run$"),
    ("  middleware before/after hooks", r"^Broker\.emit_(before|after)$"),
    ("  thread -> event loop hand-off", r"^EventLoopThread\.run_coroutine$"),
    ("event loop thread total", r"^EventLoopThread\.run$"),
    ("  actor coroutine (record_usage*)", r"^record_usage(_batch)?$"),
    ("    decode_single / decode_batch", r"^decode_(single|batch)$"),
    ("    usage.recorded log line (structlog)", r"^BoundLogger\.info$"),
    ("  group commit flush (apply_submissions)", r"^apply_submissions$"),
    ("    pool checkout + pre-ping", r"^AsyncConnection\.start$"),
    ("    pool checkin", r"^AsyncConnection\.close$"),
    ("    apply_usage (SQL + Python)", r"^apply_usage$"),
    ("  asyncpg socket reads (data_received)", r"^_SelectorSocketTransport\._read_ready$"),
    ("  epoll (select)", r"^EpollSelector\.select$"),
    ("dramatiq main: log forwarding", r"^watch_logs$"),
)


def load(path: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [
            re.sub(r" \(.*\)$", "", f) for f in stack.split(";") if not f.startswith("process ")
        ]
        samples.append((frames, int(count)))
    return samples


def summarise(path: Path) -> list[str]:
    samples = load(path)
    total = sum(n for _, n in samples)
    steady = [(f, n) for f, n in samples if not any(s in fr for fr in f for s in STARTUP)]
    n_steady = sum(n for _, n in steady)
    counts: Counter[str] = Counter()
    for frames, n in steady:
        for label, pattern in BUCKETS:
            if any(re.search(pattern, fr) for fr in frames):
                counts[label] += n
    out = [f"{path.name}: {n_steady} steady-state samples ({total - n_steady} start-up dropped)"]
    for label, _ in BUCKETS:
        out.append(f"  {counts[label] / max(n_steady, 1):6.1%}  {label}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("profiles", nargs="+", type=Path)
    args = p.parse_args(argv)
    for path in args.profiles:
        print("\n".join(summarise(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
