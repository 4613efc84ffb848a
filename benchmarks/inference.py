"""Measured early-exit speed-up against the full model: the same as `adaptive-exit benchmark`.

    python benchmarks/inference.py MODEL_DIR [--batch-sizes 1 32] [--repeats 5] [--json]
"""

import sys

from adaptive_exit.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
