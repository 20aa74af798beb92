"""`test` and `predict` with `--ckpt_path`: the command line decides how to evaluate, the checkpoint only what its
weights need (LightningCLI would otherwise put every saved hyperparameter of the fit over the command line)."""

from __future__ import annotations

import json
from pathlib import Path

from titlegen.cli import main


def checkpoint(trained: dict) -> Path:
    return trained["run_dir"] / "checkpoints" / "last.ckpt"


def test_test_decodes_as_given_not_as_the_fit_did(trained, tmp_path, caplog):
    fit_hp = trained["module"].hparams
    assert (fit_hp.generation, fit_hp.lora_r) == ("greedy", 16)
    cli = main(
        [
            "test", "--config", "full_lora.yaml", *trained["args"], f"--ckpt_path={checkpoint(trained)}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--model.generation=beam", "--model.num_beams=3", "--model.length_penalty=0.5",
            "--model.lora_r=8",  # the checkpoint's adapters are rank 16: this one cannot load them
        ]
    )  # fmt: skip
    hp = cli.model.hparams
    assert (hp.generation, hp.num_beams, hp.length_penalty) == ("beam", 3, 0.5)
    assert hp.lora_r == 16
    summary = json.loads(Path(cli.trainer.log_dir, "metrics.json").read_text())
    assert summary["decoding"]["strategy"] == "beam" and summary["decoding"]["num_beams"] == 3
    assert summary["checkpoint"] == str(checkpoint(trained))
    assert "was trained with model.lora_r=16, which its weights need: evaluating with that, not with the given 8" in (
        caplog.text
    )


def test_predict_takes_the_given_title_length(trained, tmp_path):
    source = tmp_path / "abstracts.txt"
    source.write_text("A study of graphs.\nA study of words.\n")
    output = tmp_path / "titles.jsonl"
    cli = main(
        [
            "predict", "--config", "full_lora.yaml", *trained["args"], f"--ckpt_path={checkpoint(trained)}",
            f"--trainer.logger.init_args.save_dir={tmp_path}", f"--data.predict_file={source}",
            f"--prediction_writer.output={output}", "--model.max_new_tokens=2", "--model.generation=sample",
        ]
    )  # fmt: skip
    assert trained["module"].hparams.max_new_tokens == 6  # what the fit ran with (cli_args' fast evaluation)
    assert (cli.model.hparams.max_new_tokens, cli.model.hparams.generation) == (2, "sample")
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 2
    # Two tokens of a byte-level BPE that splits words before merging: two words at most (six would allow six).
    assert any(r["title"] for r in rows) and all(len(r["title"].split()) <= 2 for r in rows), rows
