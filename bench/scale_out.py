"""The scaled-out deployment's figures: 2 web processes, 3 Celery workers and beat keeping 1,000 sixty-second
tokens fresh on this machine, with bots asking for tokens throughout.

    .venv/bin/python bench/scale_out.py [--seconds 180]

Runs the scenario of tests/deploy/scale_out.py through its test (tests/deploy/test_scale_out.py, which starts the
throwaway PostgreSQL, Redis and authorization server and checks correctness), for --seconds, and prints what the
test leaves out because it depends on the machine's speed: refreshes a second, refreshes per token against the
bounds a correct engine keeps on an idle machine, the share of each worker, task times, sweep sizes, lateness,
token-endpoint latency, and the CPU each role used. Exits with pytest's code: 0 when the run was correct.
"""

import argparse
import sys
from pathlib import Path

# Run as a file, Python puts bench/ on sys.path, not the root that holds the bench and tests packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import run_test_for_figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=180, help="how long beat runs at least (default 180)")
    args = parser.parse_args()
    return run_test_for_figures(
        "tests/deploy/test_scale_out.py",
        {"SCALE_OUT_SECONDS": str(args.seconds), "SCALE_OUT_LIFETIME": "60"},
        "SCALE_OUT_FIGURES",
    )


if __name__ == "__main__":
    sys.exit(main())
