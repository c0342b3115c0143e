"""Fuzz one reader with atheris (libFuzzer): `python tests/fuzz/run.py READER [libFuzzer flags] [corpus dirs]`.

READER is one of harnesses.HARNESSES. Longer runs on demand, e.g. ten minutes on the GGUF reader:

    mkdir -p /tmp/fz && python tests/fuzz/run.py gguf -max_total_time=600 -rss_limit_mb=3072 \
        /tmp/fz tests/fuzz/corpus/gguf

libFuzzer writes new inputs into the FIRST corpus folder (keep the committed corpus second) and a
crash as crash-<sha1> (-artifact_prefix=DIR/ to choose where); copy a crash into corpus/<reader>/
once fixed, so CI replays it from then on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).parent))

with atheris.instrument_imports(include=["smolship", "gguf", "jinja2", "safetensors", "harnesses"]):
    import harnesses
    import smolship.exporter.config  # noqa: F401  - the readers, instrumented for coverage feedback
    import smolship.exporter.gguf_header  # noqa: F401
    import smolship.exporter.gguf_source  # noqa: F401
    import smolship.exporter.hf_weights  # noqa: F401
    import smolship.exporter.tokenizer  # noqa: F401
    import smolship.targets.gguf.index  # noqa: F401


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in harnesses.HARNESSES:
        sys.exit(f"usage: run.py {{{','.join(harnesses.HARNESSES)}}} [libFuzzer flags] [corpus dirs]")
    reader = sys.argv.pop(1)
    atheris.Setup(sys.argv, harnesses.HARNESSES[reader])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
