"""The `sleepy` example: one long stage that logs a line per second."""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    seconds = int(json.loads(os.environ["LOOPDECK_INPUTS"]).get("seconds", 300))
    for i in range(1, seconds + 1):
        print(f"still working: {i}/{seconds}", flush=True)
        time.sleep(1)
    print(json.dumps({"slept": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
