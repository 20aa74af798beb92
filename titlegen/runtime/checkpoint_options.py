"""Which model options a `--ckpt_path` checkpoint decides when `validate`, `test` or `predict` evaluates it.

LightningCLI (lightning 2.6.6, `LightningCLI._parse_ckpt_path`) merges the checkpoint's saved hyperparameters over the
parsed command line and configs before anything is built. Left at that, `main.py test --ckpt_path X --model.generation
beam` decodes greedily, as the fit that wrote X did, and says nothing. An evaluation takes from the checkpoint only
what its weights need (the base model and the LoRA layout); everything else (decoding, the evaluation encoder,
the compute dtype, lengths) is the command line's and the configs'. `fit --ckpt_path` (a resume) keeps Lightning's
merge: it goes on with the run's own settings.
"""

from __future__ import annotations

from typing import Any

EVALUATING = ("validate", "test", "predict")
# TitleGenModule's options that say what the checkpoint's weights are: the base model and the LoRA layers the
# adapter was trained as. Other values would not load it, or would scale it differently (alpha).
WEIGHT_OPTIONS = ("model_name", "lora_scope", "lora_r", "lora_alpha", "lora_dropout", "target_modules", "lora_seed")


def evaluation_options(given: Any, merged: Any, ckpt_path: str) -> tuple[dict[str, Any], list[str]]:
    """The model options to parse back over `merged` (the model's options after Lightning merged the checkpoint's in):
    every one that is not a WEIGHT_OPTION, with its value in `given` (as parsed, before the merge). And one note per
    weight option whose given value the checkpoint replaced, for the user to read."""
    options, notes = {}, []
    for key in given.keys():  # the same keys as `merged`: both come from the model's parser
        if key not in WEIGHT_OPTIONS:
            options[key] = given[key]
        elif merged[key] != given[key]:
            notes.append(
                f"note: {ckpt_path} was trained with model.{key}={merged[key]!r}, which its weights need:"
                f" evaluating with that, not with the given {given[key]!r}."
            )
    return options, notes
