"""Training speed for fp32/bf16 x random/length-grouped batches: the same as `adaptive-exit benchmark-train`.

    python benchmarks/training.py [--max-steps 30] [--repeats 3] [--json]
"""

import sys

from adaptive_exit.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark-train", *sys.argv[1:]]))
