"""titlegen's command line.

    python main.py {fit,validate,test,predict} --config <experiment>.yaml [options]   (LightningCLI)
    python main.py export --config <experiment>.yaml [--ckpt_path PATH]
    python main.py report [--logs lightning_logs]

A user error prints one `error:` line and exits with status 2; `--debug` (or TITLEGEN_DEBUG=1) shows its traceback.
"""

from __future__ import annotations

import importlib.util
import sys

from titlegen.errors import run_main

# Printing help or the config builds no model, so these skip Unsloth's slow import.
_NO_MODEL = {"-h", "--help", "--print_config"}


def _import_unsloth_first(argv: list[str]) -> None:
    """Unsloth patches transformers, peft and trl when imported, so it must come before them."""
    if importlib.util.find_spec("unsloth") is None or _NO_MODEL.intersection(a.split("=")[0] for a in argv):
        return
    from titlegen.runtime.launch import bind_rank_gpu

    bind_rank_gpu()  # a DDP worker's CUDA context on its own GPU, not GPU 0 (the imports initialise CUDA)
    import unsloth  # noqa: F401


def main(argv: list[str]) -> None:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "report":
        # Reads log files only: neither Unsloth nor Lightning (10-20 s of imports) is needed.
        from titlegen.report.command import main as report

        report(rest)
        return
    _import_unsloth_first(argv)
    if command == "export":
        from titlegen.export import main as export

        export(rest)
        return
    from titlegen.cli import main as lightning_cli

    lightning_cli(argv)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
