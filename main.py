"""titlegen's command line.

    python main.py {fit,validate,test,predict} --config <experiment>.yaml [options]   (LightningCLI)
    python main.py export --config <experiment>.yaml [--ckpt_path PATH]
    python main.py sweep --config sweeps/<name>.yaml
    python main.py report [--logs lightning_logs]

A user error prints one `error:` line and exits with status 2; `--debug` (or TITLEGEN_DEBUG=1) shows its traceback.
"""

from __future__ import annotations

import sys

from titlegen.errors import run_main

# Printing help or the config builds no model, so these skip Unsloth's slow import.
_NO_MODEL = {"-h", "--help", "--print_config"}


def main(argv: list[str]) -> None:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "report":
        # Reads log files only: neither Unsloth nor Lightning (10-20 s of imports) is needed.
        from titlegen.report.command import main as report

        report(rest)
        return
    if command == "sweep":
        # Starts one process per point; builds no model itself.
        from titlegen.sweep.command import main as sweep

        sweep(rest)
        return
    if not _NO_MODEL.intersection(a.split("=")[0] for a in argv):
        from titlegen.runtime.launch import import_unsloth_first

        import_unsloth_first()
    if command == "export":
        from titlegen.export import main as export
        from titlegen.runtime import console

        console.quiet()
        export(rest)
        return
    from titlegen.cli import main as lightning_cli
    from titlegen.runtime import console

    console.quiet()
    lightning_cli(argv)


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))
