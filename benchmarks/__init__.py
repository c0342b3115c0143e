"""smolship's benchmarks: one module per measurement, run from the repository root as

    python -m benchmarks.NAME --help

Every script writes one result format (benchmarks/common.py): a JSON object that starts with the commit
it ran at, names its script (and variant), the machine and the settings, and holds `rows`, a list of
dicts. Its file is bench-results/NAME.json, or bench-results/NAME-VARIANT.json for a named variant
(`--variant`); bench-results/README.md lists the files and what re-creates them.
"""
