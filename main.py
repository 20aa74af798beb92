"""titlegen: `python main.py {fit,validate,test} --config <experiment>.yaml [--config offline.yaml] ...`."""

import importlib.util
import sys

# Unsloth patches transformers, peft and trl when imported, so it must come before them. Printing help or the
# config builds no model, so it skips the slow import.
_NO_MODEL = {"-h", "--help", "--print_config"}
if importlib.util.find_spec("unsloth") is not None and not _NO_MODEL.intersection(a.split("=")[0] for a in sys.argv):
    import unsloth  # noqa: F401

from titlegen.cli import main  # noqa: E402 (after the unsloth import, on purpose)

if __name__ == "__main__":
    main()
