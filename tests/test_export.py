"""`main.py export` on a tiny trained model (the `trained` fixture): the PEFT adapter and the merged model give the
module's greedy titles."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from main import main as entry
from tests.helpers import synthetic_pairs
from titlegen.cli import main
from titlegen.data.collate import Collator
from titlegen.data.tokenization import encode_pairs
from titlegen.errors import CheckpointError, OptionError
from titlegen.model import generation, loading, lora, merge

NEW_TOKENS = 10


def prompt_batch(module) -> dict:
    # As the data module encodes them for `predict` (its default max_seq_length, room for NEW_TOKENS): not cut.
    examples = encode_pairs(synthetic_pairs(6, seed=11), module.tokenizer, 512, NEW_TOKENS)
    assert not any(ex.truncated for ex in examples)
    return Collator(module.chat.pad_id, for_generation=True)(list(enumerate(examples)))


def greedy(model, module, batch) -> list[list[int]]:
    chat = module.chat
    return generation.generate(
        model, batch["prompt_ids"], batch["prompt_attention_mask"], NEW_TOKENS, chat.end_of_turn_id, chat.pad_id
    )


# Plain transformers in a fresh process: no Unsloth patches, no PEFT, no bitsandbytes; the merged folder's own
# generation_config must stop on end-of-turn and pad as titlegen does.
_PLAIN_GENERATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM
batch = json.load(open(sys.argv[2]))
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
out = model.generate(input_ids=torch.tensor(batch["ids"]), attention_mask=torch.tensor(batch["mask"]),
                     max_new_tokens=int(sys.argv[3]), do_sample=False)
print(json.dumps({"tokens": out[:, len(batch["ids"][0]):].tolist(), "eos": model.generation_config.eos_token_id,
                  "dtype": str(model.dtype), "loaded": sorted(m for m in ("unsloth", "peft", "bitsandbytes")
                                                             if m in sys.modules)}))
"""


def test_adapter_and_merged_exports_give_the_trained_modules_greedy_titles(trained, tmp_path):
    from peft import PeftModel

    module = trained["module"]
    batch = prompt_batch(module)
    module_titles = greedy(module.model, module, batch)

    entry(["export", "--config", "full_lora.yaml", *trained["args"]])  # no --ckpt_path: the newest, as `test` does
    out = trained["run_dir"] / "export" / "last"
    adapter, merged = out / "adapter", out / "merged"
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and set(adapter_config["target_modules"]) == set(lora.DEFAULT_TARGET_MODULES)
    merged_config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in merged_config
    assert (merged / "tokenizer.json").is_file() and (adapter / "tokenizer.json").is_file()

    # The adapter on a 4-bit base loaded the same way as for training.
    base = loading.load_base_model(str(trained["model_dir"]), 256)
    base_titles = greedy(base, module, batch)
    assert base_titles != module_titles, "the adapter changes the titles, so equal titles below mean something"
    peft_titles = greedy(PeftModel.from_pretrained(base, adapter), module, batch)
    assert peft_titles == module_titles

    batch_file = tmp_path / "batch.json"
    batch_file.write_text(
        json.dumps({"ids": batch["prompt_ids"].tolist(), "mask": batch["prompt_attention_mask"].tolist()})
    )
    done = subprocess.run(
        [sys.executable, "-c", _PLAIN_GENERATE, str(merged), str(batch_file), str(NEW_TOKENS)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert plain["loaded"] == [] and plain["dtype"] == "torch.float32"  # the CPU fallback computes in fp32
    assert plain["eos"] == module.chat.end_of_turn_id
    eot = module.chat.end_of_turn_id
    merged_titles = [row[: row.index(eot) + 1] if eot in row else row for row in plain["tokens"]]
    assert merged_titles == module_titles


def test_merging_onto_the_original_weights_would_not_be_the_trained_model(trained):
    """Why export dequantizes: the module multiplies by 4-bit rounded weights, not by the original ones."""
    from transformers import AutoModelForCausalLM

    module = trained["module"]
    original = AutoModelForCausalLM.from_pretrained(trained["model_dir"]).model.layers[0].self_attn.q_proj.weight
    lora_layer = module.model.get_base_model().model.layers[0].self_attn.q_proj
    delta = lora_layer.get_delta_weight("default")
    assert delta.abs().max() > 0, "training moved the adapter"
    rounding = (merge.merged_linear_weight(lora_layer) - delta - original).detach().abs()
    # NF4 keeps 16 levels per block: errors of a few percent, far above fp32 rounding (1e-7) ...
    assert rounding.max() > 1e-2
    # ... of the same weights: the merged base is the original rounded, not something else.
    assert rounding.mean() < 0.2 * original.abs().mean()


def test_predict_without_ckpt_path_uses_the_newest_checkpoint(trained, tmp_path):
    module = trained["module"]
    abstracts = [r["abstract"] for r in synthetic_pairs(6, seed=11)]
    source = tmp_path / "abstracts.txt"
    source.write_text("\n".join(abstracts) + "\n")
    output = tmp_path / "out" / "titles.jsonl"
    args = [*trained["args"], f"--data.predict_file={source}", f"--prediction_writer.output={output}"]
    main(["predict", "--config", "full_lora.yaml", *args, f"--model.max_new_tokens={NEW_TOKENS}"])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["abstract"] for r in rows] == abstracts
    tokenizer = module.tokenizer
    from titlegen.data.prompts import clean_title

    expected = [
        clean_title(tokenizer.decode(t, skip_special_tokens=True))
        for t in greedy(module.model, module, prompt_batch(module))
    ]
    assert [r["title"] for r in rows] == expected


def test_export_refuses_the_baseline_and_a_missing_checkpoint(trained, tmp_path):
    with pytest.raises(OptionError, match="LoRA scope 'none'.*trains nothing"):
        entry(["export", "--config", "baseline.yaml", *trained["args"]])
    empty_logs = f"--trainer.logger.init_args.save_dir={tmp_path / 'none'}"
    with pytest.raises(CheckpointError, match=r"holds no checkpoint.*Fix: run `fit`"):
        entry(["export", "--config", "last_layer_lora.yaml", *trained["args"], empty_logs])
    with pytest.raises(CheckpointError, match=r"--ckpt_path .*missing.ckpt: no such file"):
        entry(["export", "--config", "full_lora.yaml", *trained["args"], f"--ckpt_path={tmp_path / 'missing.ckpt'}"])


def test_export_dtype_option(trained, tmp_path):
    sizes = {}
    for dtype in ("float32", "bfloat16"):
        entry(
            ["export", "--config", "full_lora.yaml", *trained["args"], f"--out={tmp_path / dtype}", f"--dtype={dtype}"]
        )
        assert json.loads((tmp_path / dtype / "merged" / "config.json").read_text())["dtype"] == dtype
        sizes[dtype] = (tmp_path / dtype / "merged" / "model.safetensors").stat().st_size
    assert sizes["bfloat16"] / sizes["float32"] == pytest.approx(0.5, abs=0.01)
