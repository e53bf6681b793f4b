"""The soak in its long form: 60-second tokens kept valid by beat and one worker, for five minutes by default.

    .venv/bin/python bench/soak.py [--seconds 300]

Runs tests/connections/engine/test_soak.py (which starts the throwaway PostgreSQL, Redis and an authorization server
issuing 60-second tokens, and checks correctness) with REFRESH_SOAK_SECONDS set to --seconds, instead of the test
suite's 90, then prints the run's figures: refreshes per token against the bounds a correct engine keeps, polls made,
and the least time any token had left. Exits with pytest's code: 0 when the run was correct.
"""

import argparse
import sys
from pathlib import Path

# Run as a file, Python puts bench/ on sys.path, not the root that holds the bench and tests packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.common import run_test_for_figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="how long the soak lasts (default 300, at least 60)")
    args = parser.parse_args()
    if args.seconds < 60:
        parser.error("--seconds must be at least 60: two refresh cycles of a 60-second token")
    return run_test_for_figures(
        "tests/connections/engine/test_soak.py", {"REFRESH_SOAK_SECONDS": str(args.seconds)}, "REFRESH_SOAK_FIGURES"
    )


if __name__ == "__main__":
    sys.exit(main())
