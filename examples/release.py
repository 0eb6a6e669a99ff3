"""The steps of the `release` example: `python -m examples.release STEP`.

Each reads its context from the environment and stdin (as every `run:` stage may), prints a
few log lines, and prints its output as a JSON last line.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(step: str) -> int:
    context = json.load(sys.stdin)
    inputs = context["inputs"]
    attempt = int(os.environ["LOOPDECK_ATTEMPT"])
    out_dir = os.environ["LOOPDECK_OUTPUT_DIR"]
    print(f"{step}: attempt {attempt} of run {os.environ['LOOPDECK_RUN_ID']}")
    time.sleep(0.1)
    if step == "build":
        info = {"version": inputs["version"], "files": 3}
        with open(os.path.join(out_dir, "build-info.json"), "w") as fh:
            json.dump(info, fh)
        print(json.dumps(info))
    elif step == "unit":
        if attempt == 1:
            print("test_flaky ... FAILED (a timing-dependent test)", file=sys.stderr)
            return 1
        print("12 passed")
        print(json.dumps({"passed": 12}))
    elif step == "lint":
        print(json.dumps({"warnings": 0}))
    elif step == "docs":
        if inputs.get("break_docs"):
            print("docs: broken cross-reference in index.md", file=sys.stderr)
            return 2
        with open(os.path.join(out_dir, "index.md"), "w") as fh:
            fh.write(f"# Release {inputs['version']}\n\nAll good.\n")
        print(json.dumps({"pages": 1}))
    elif step == "publish":
        version = context["outputs"]["build"]["version"]
        print(json.dumps({"published": version}))
    else:
        print(f"unknown step {step!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
