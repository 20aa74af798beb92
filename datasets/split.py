"""Build the train/validation/test splits without training: `python datasets/split.py --source PAIRS.jsonl`.

`fit`/`test` do the same on their own (TitleDataModule.prepare_data); this script is for looking at the splits first.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from titlegen.data.splits import MANIFEST, prepare_splits


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--source", required=True, help="local JSONL (abstract, title, id) or a Hugging Face dataset id"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "arxiv"), help="folder for the splits")
    parser.add_argument("--seed", type=int, default=20261125, help="split seed (the DataModule's data.split_seed)")
    parser.add_argument("--hub-samples", type=int, default=20_000, help="records sampled from a hub dataset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    prepare_splits(args.source, args.out, args.hub_samples, seed=args.seed)
    manifest = json.loads((Path(args.out) / MANIFEST).read_text())
    print(json.dumps(manifest["counts"]))
    return manifest


if __name__ == "__main__":
    main()
