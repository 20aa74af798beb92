"""What a run prints: each message once, and no third-party tips that do not apply. Imports nothing heavy, so that
`before_imports` can run before Unsloth's import.

Warnings that titlegen can fix at their source are fixed there (the generation config's `max_length`, in
`model.loading`); the filters here each match one exact message that is not a problem of the run.
"""

from __future__ import annotations

import logging
import warnings

# Lightning's advertisements for its cloud services, and its hint to trade float32 matmul precision for speed: the
# 4-bit model computes in bf16/fp16, and the BERTScore encoder's fp32 matmuls stay exact on purpose (scores that do
# not depend on the GPU's TF32 setting).
_LIGHTNING_TIPS = ("💡 Tip: For seamless cloud", "You are using a CUDA device")


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def before_imports() -> None:
    """Before Unsloth is imported: notices printed during its import that are not the run's concern."""
    # torch's deprecation notices for enums that torchao registers at import, one line per enum.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # bitsandbytes' CPU backend suggests an optional kernels package at every start; the CPU path is a demo.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    # Unsloth patches TRL's trainer when something imports trl; titlegen trains with Lightning, not TRL, so a
    # patch that could not be built does not concern it.
    logging.getLogger("unsloth_zoo.log").addFilter(_DropMessages(("Unsloth: Could not build the patched trl",)))


def quiet() -> None:
    """After Lightning's import: every log line once, Lightning's tips that do not apply dropped.

    Unsloth configures the root logger (`logging.basicConfig` at import), and Lightning's logger, which has its own
    handler, also passes each record up to it: every line came out twice. Lightning's handler alone prints now.
    """
    lightning = logging.getLogger("lightning")
    lightning.propagate = False
    for handler in lightning.handlers:
        if not any(isinstance(f, _DropMessages) for f in handler.filters):
            handler.addFilter(_DropMessages(_LIGHTNING_TIPS))
    # Lightning 2.6.6 calls a torch pytree API that torch 2.14 deprecates; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
