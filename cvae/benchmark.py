"""The old name of the speed benchmark, which now lives outside the installed package in benchmarks/speed.py: from
a checkout, `python -m cvae.benchmark ARGS` still runs `python -m benchmarks.speed ARGS`."""

import runpy
import sys

if __name__ == "__main__":
    print("note: `python -m cvae.benchmark` is now `python -m benchmarks.speed`", file=sys.stderr)
    runpy.run_module("benchmarks.speed", run_name="__main__", alter_sys=True)
