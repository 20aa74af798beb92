"""One sweep point in its own process: `fit`, then the marker that says it finished, then `test`.

python -m titlegen.sweep.worker <folder>/sweep_point.json   (started by `main.py sweep`)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from titlegen.errors import run_main
from titlegen.runtime.launch import import_unsloth_first


def main(argv: list[str]) -> None:
    plan = json.loads(Path(argv[0]).read_text())
    import_unsloth_first()
    from titlegen.cli import main as lightning_cli
    from titlegen.runtime import console

    console.quiet()
    if plan["fit"]:
        lightning_cli(plan["fit"])
        Path(plan["done"]).touch()
    if plan["test"]:
        lightning_cli(plan["test"])


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
