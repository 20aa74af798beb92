"""The DataModule: splits prepared once, tokenized datasets, and the loaders (length-grouped for training).

Reading files is `records`, splitting `splits`, tokenization `tokenization`, padding `collate`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from titlegen.data.collate import Collator, IndexedDataset
from titlegen.data.records import read_abstracts, read_pairs
from titlegen.data.sampling import LengthGroupedSampler
from titlegen.data.splits import SPLITS, check_split_files, prepare_splits
from titlegen.data.tokenization import chat_tokens, encode_pairs, load_tokenizer
from titlegen.errors import OptionError

log = logging.getLogger(__name__)

# The split files each trainer stage reads.
STAGE_SPLITS = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}


@rank_zero_only
def _report_truncation(path: Path | str, truncated: int, total: int, max_seq_length: int) -> None:
    if truncated:
        log.warning(
            "%s: %d of %d abstracts truncated to fit max_seq_length=%d (titles are never cut).",
            path, truncated, total, max_seq_length,
        )  # fmt: skip


class TitleDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str = "gfissore/arxiv-abstracts-2021",
        data_dir: str = "datasets/arxiv",
        train_file: str | None = None,
        validation_file: str | None = None,
        test_file: str | None = None,
        predict_file: str | None = None,
        model_name: str = "Qwen/Qwen2.5-0.5B-Instruct",
        max_seq_length: int = 512,
        max_new_tokens: int = 48,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
        group_by_length: bool = True,
        pad_to_multiple_of: int = 64,
        hub_samples: int = 20_000,
        split_seed: int = 20261125,
        trust_remote_code: bool = False,
    ) -> None:
        """Abstract/title pairs from JSONL splits, tokenized with the model's chat template.

        Args:
            source: what `prepare_data` builds the splits from: a local JSONL of records with `abstract` and `title`
                (and optional `id`), or a Hugging Face dataset id (needs the network).
            data_dir: folder for the generated splits and their manifest; splits whose manifest matches the source
                and settings are reused.
            train_file: a JSONL to train on instead of `data_dir/train.jsonl`.
            validation_file: a JSONL to validate on instead of `data_dir/validation.jsonl`.
            test_file: a JSONL to test on instead of `data_dir/test.jsonl`.
            predict_file: abstracts that `predict` titles: a JSONL with `abstract` (optional `id`, and `title`, kept as
                the reference), or a .txt file with one abstract a line.
            model_name: whose tokenizer and chat template to use (set by model.model_name).
            max_seq_length: longest prompt + title in tokens, >= 1; longer abstracts are cut, and counted in the log.
            max_new_tokens: tokens kept free for the title after every prompt (set by model.max_new_tokens): prompts
                longer than max_seq_length - max_new_tokens lose the end of their abstract.
            batch_size: training samples per optimizer step and device, >= 1.
            eval_batch_size: validation and test samples per batch and device, >= 1; also how many titles are
                generated at once.
            num_workers: DataLoader worker processes, >= 0 (0: load in the main process).
            pin_memory: on a GPU, put batches in pinned host memory, so that their copy to the GPU does not wait for
                the GPU's previous work. Ignored without a GPU.
            group_by_length: train on random batches of samples of similar length (less padding, the same samples
                each epoch, an order that depends only on the run's seed); false for plain random batches.
            pad_to_multiple_of: pad each training batch's length up to a multiple of this, >= 1 (1: to its longest
                sample). Each padded shape gets its own CUDA graph (model.cuda_graphs), so 64 bounds them to 8 up to
                512 tokens; without graphs (on the CPU) 1 wastes the least.
            hub_samples: records sampled when `source` is a Hugging Face dataset id, >= 1.
            split_seed: seed of the train/validation/test split; every experiment must use the same to be compared.
            trust_remote_code: let the tokenizer's repository run code (set by model.trust_remote_code).
        """
        super().__init__()
        bad = [f"data.{k}={v}: must be positive" for k, v in
               {"max_seq_length": max_seq_length, "batch_size": batch_size, "eval_batch_size": eval_batch_size,
                "pad_to_multiple_of": pad_to_multiple_of}.items()
               if v <= 0]  # fmt: skip
        if bad:
            raise OptionError("invalid data options:\n  " + "\n  ".join(bad))
        self.save_hyperparameters()
        self.datasets: dict[str, IndexedDataset] = {}
        self.tokenizer: Any = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already trained) from a checkpoint

    def _explicit_files(self) -> dict[str, str | None]:
        hp = self.hparams
        return {"train": hp.train_file, "validation": hp.validation_file, "test": hp.test_file}

    def _split_paths(self) -> dict[str, Path]:
        explicit = self._explicit_files()
        return {split: Path(explicit[split] or Path(self.hparams.data_dir) / f"{split}.jsonl") for split in SPLITS}

    def prepare_data(self) -> None:
        # Runs on one process per node: the place to write files and convert a GGUF model once.
        predicting = self.trainer is not None and self.trainer.state.fn == TrainerFn.PREDICTING
        if not predicting and not all(self._explicit_files().values()):  # `predict` reads only predict_file
            prepare_splits(
                self.hparams.source, self.hparams.data_dir, self.hparams.hub_samples, seed=self.hparams.split_seed
            )
        if not predicting:
            # Every line of the files this stage reads is checked here, before the tokenizer (and a GGUF conversion)
            # or any model loads: a bad line fails the run in seconds, with every problem of every file listed.
            stage = self.trainer.state.fn.value if self.trainer is not None else None
            check_split_files(self._split_paths(), STAGE_SPLITS.get(stage, SPLITS))
        load_tokenizer(self.hparams.model_name, self.hparams.trust_remote_code)

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        needed = STAGE_SPLITS.get(stage, ())
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name, hp.trust_remote_code)
        for split in needed:
            if split in self.datasets:
                continue
            path = self._explicit_files()[split] or Path(hp.data_dir) / f"{split}.jsonl"
            examples = encode_pairs(read_pairs(path), self.tokenizer, hp.max_seq_length, hp.max_new_tokens)
            _report_truncation(path, sum(ex.truncated for ex in examples), len(examples), hp.max_seq_length)
            self.datasets[split] = IndexedDataset(examples)

    def _setup_predict(self) -> None:
        hp = self.hparams
        if hp.predict_file is None:
            raise OptionError(
                "data.predict_file is not set, and `predict` needs abstracts to title. Fix: --data.predict_file"
                " abstracts.jsonl (objects with `abstract`) or abstracts.txt (one abstract a line)."
            )
        self.tokenizer = load_tokenizer(hp.model_name, hp.trust_remote_code)
        # Rows without a title get "" as reference: the prompt does not depend on it, only the unused loss labels.
        examples = encode_pairs(read_abstracts(hp.predict_file), self.tokenizer, hp.max_seq_length, hp.max_new_tokens)
        _report_truncation(hp.predict_file, sum(ex.truncated for ex in examples), len(examples), hp.max_seq_length)
        self.datasets["predict"] = IndexedDataset(examples)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        pad_id = chat_tokens(self.tokenizer).pad_id
        dataset = self.datasets[split]
        batch_size = self.hparams.batch_size if split == "train" else self.hparams.eval_batch_size
        sampler = None
        if shuffle and self.hparams.group_by_length:
            # The seed LightningCLI's seed_everything exported, so the order is part of the run's seed.
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            lengths = [len(ex.prompt_ids) + len(ex.target_ids) for ex in dataset.examples]
            # Each rank its own share: Lightning leaves a DistributedSampler as it is (see LengthGroupedSampler).
            trainer = self.trainer
            replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            sampler = LengthGroupedSampler(lengths, batch_size, seed=seed, num_replicas=replicas, rank=rank)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            collate_fn=Collator(
                pad_id,
                for_generation=split != "train",
                pad_to_multiple_of=self.hparams.pad_to_multiple_of if split == "train" else 1,
                max_length=self.hparams.max_seq_length,
            ),  # fmt: skip
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
            # Lightning copies batches with non_blocking=True, which is asynchronous only from pinned memory.
            pin_memory=self.hparams.pin_memory
            and self.trainer is not None
            and self.trainer.strategy.root_device.type == "cuda",
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        if self._resume_at is not None:
            (epoch, done), self._resume_at = self._resume_at, None
            if isinstance(loader.sampler, LengthGroupedSampler):
                loader.sampler.resume(epoch, done)
            elif done:
                log.warning(
                    "Resuming in the middle of epoch %d with data.group_by_length=false: the plain random order cannot"
                    " be continued, so this epoch starts over in a new order.", epoch,
                )  # fmt: skip
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Where training stands in its epoch; Lightning keeps it in every checkpoint, so a resumed run continues
        the seeded order at the next batch instead of starting the epoch over (repeating batches it trained on)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        epoch = trainer.current_epoch
        # `processed` counts batches whose optimizer step ran: a checkpoint saved before a step (a non-finite loss)
        # resumes with that batch, one saved after it with the next.
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            epoch, done = epoch + 1, 0
        return {"train_epoch": epoch, "train_batches_done": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "train_epoch" in state_dict:
            self._resume_at = (int(state_dict["train_epoch"]), int(state_dict["train_batches_done"]))
        if self.hparams.group_by_length:
            # The datamodule, not the DataLoader, carries the position, so Lightning would wrongly warn that it
            # cannot resume mid-epoch.
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
