"""Wall time and peak memory per rule of a finished run, summed over its jobs, from the `benchmark:` files.

    .venv/bin/python benchmarks/rule_times.py results/demo

Prints the table of `wsss.rule_times` (also the report's `tables/rule_times.csv`) as Markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss.rule_times import rule_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder, e.g. results/demo")
    args = parser.parse_args()
    print(rule_times(args.run).to_markdown())


if __name__ == "__main__":
    main()
