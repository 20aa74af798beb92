"""titlegen: `python main.py {fit,validate,test,predict,export} --config <experiment>.yaml ...`, `main.py report`."""

import importlib.util
import sys

if __name__ == "__main__" and sys.argv[1:2] == ["report"]:
    # The report only reads log files: no model, so neither Unsloth nor Lightning (10-20 s of imports) is needed.
    from titlegen.report import main as report

    report(sys.argv[2:])
    sys.exit(0)

# Unsloth patches transformers, peft and trl when imported, so it must come before them. Printing help or the
# config builds no model, so it skips the slow import.
_NO_MODEL = {"-h", "--help", "--print_config"}
if importlib.util.find_spec("unsloth") is not None and not _NO_MODEL.intersection(a.split("=")[0] for a in sys.argv):
    from titlegen.launch import bind_rank_gpu

    bind_rank_gpu()  # a DDP worker's CUDA context on its own GPU, not GPU 0 (the imports initialise CUDA)
    import unsloth  # noqa: F401

from titlegen.cli import main  # noqa: E402 (after the unsloth import, on purpose)

if __name__ == "__main__":
    main()
