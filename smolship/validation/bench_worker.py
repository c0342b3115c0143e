"""Measure one runner's latency in this (fresh) process and print one JSON line: used for peak RSS."""

from __future__ import annotations

import argparse
import json
import sys

from smolship.validation.latency import LatencySettings, measure_full_context, measure_latency


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", help="bundle folder, or reference:<model spec>")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--full-context", action="store_true", help="then fill the cache to max_seq_len (peak RSS)")
    a = p.parse_args(argv)
    from smolship.validation.validate import open_runner

    runner, vocab = open_runner(a.what, threads=a.threads)
    settings = LatencySettings(a.prompt_tokens, a.new_tokens, a.runs, a.threads, a.full_context)
    result = measure_latency(runner, vocab, settings)
    if a.full_context:
        result.update(measure_full_context(runner, vocab, a.prompt_tokens))
    runner.close()
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
