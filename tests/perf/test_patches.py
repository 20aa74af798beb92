"""What each function of `titlegen.perf.patches` relies on in Unsloth, transformers and torch is still there.

One test per function (a test named after it; the last test checks that none is missing). Each checks the private
attribute, function, signature or source line the function relies on, with the behaviour where that is cheap on the
CPU, and fails with a message that names the titlegen function and the upstream version it was written against. An
upgrade of Unsloth, transformers or torch then fails here, not in a user's run.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
from types import SimpleNamespace

import pytest
import torch

from titlegen.perf import patches

UNSLOTH = "Unsloth 2026.10.9"
TRANSFORMERS = "transformers 5.17"
TORCH = "torch 2.14"


def relies(function: str, on: str, version: str) -> str:
    """The start of an assertion message: which titlegen function relies on what, written against which release."""
    return f"titlegen.perf.patches.{function} relies on {on} (written against {version})"


# ----------------------------------------------------------------------------------------------- torch
def test_keep_custom_op_aliasing_a_warning_sets_torchs_flag(monkeypatch):
    import torch._functorch._aot_autograd.runtime_wrappers as runtime_wrappers
    import torch._functorch.config as functorch_config

    why = relies("keep_custom_op_aliasing_a_warning", "torch._functorch.config.error_on_custom_op_aliasing", TORCH)
    assert hasattr(functorch_config, "error_on_custom_op_aliasing"), f"{why}; the option is gone"
    reader = inspect.getsource(runtime_wrappers._check_custom_op_aliasing)
    assert "config.error_on_custom_op_aliasing" in reader, f"{why}; torch's aliasing check no longer reads it"
    monkeypatch.setattr(functorch_config, "error_on_custom_op_aliasing", True)  # as under $CI
    patches.keep_custom_op_aliasing_a_warning()
    assert functorch_config.error_on_custom_op_aliasing is False, f"{why}; setting it did not take"


def test_checkpoint_is_valid_is_false_only_inside_autograd_grad():
    why = relies("checkpoint_is_valid", "torch.autograd._is_checkpoint_valid()", TORCH)
    assert callable(getattr(torch.autograd, "_is_checkpoint_valid", None)), f"{why}; it is gone"
    seen: list[bool] = []

    class Spy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            seen.append(patches.checkpoint_is_valid())
            return grad * 2

    x = torch.ones(3, requires_grad=True)
    Spy.apply(x).sum().backward()
    torch.autograd.grad(Spy.apply(x).sum(), x)
    assert seen == [True, False], f"{why}: True in .backward(), False inside torch.autograd.grad; got {seen}"


def test_compiled_graph_count_counts_a_new_compile():
    from torch._dynamo.utils import counters

    why = relies("compiled_graph_count", 'torch._dynamo.utils.counters["stats"]["unique_graphs"]', TORCH)
    before = patches.compiled_graph_count()
    compiled = torch.compile(lambda t: torch.sin(t) * 3 + 1, backend="eager")  # dynamo only, no inductor
    compiled(torch.ones(4))
    assert "unique_graphs" in counters["stats"], f"{why}; torch.compile no longer counts there"
    assert patches.compiled_graph_count() == before + 1, f"{why}; a new compile did not add one graph"


def test_end_allocate_to_pool_exists_with_its_two_arguments():
    why = relies("end_allocate_to_pool", "torch._C._cuda_endAllocateToPool(device, pool)", TORCH)
    if not torch.backends.cuda.is_built():
        pytest.skip("this torch build has no CUDA: the function exists only in CUDA builds")
    function = getattr(torch._C, "_cuda_endAllocateToPool", None)
    assert function is not None, f"{why}; it is gone"
    # A pybind function: its signature is the first line of its docstring.
    signature = (function.__doc__ or "").splitlines()[0] if function.__doc__ else ""
    arguments = re.fullmatch(r"_cuda_endAllocateToPool\((.*)\) -> None", signature)
    assert arguments and re.fullmatch(r"arg0: [^,]*int[^,]*, arg1: tuple\[.*\]", arguments.group(1), re.I), (
        f"{why}; its signature is now {signature!r}, not (device: int, pool: tuple[int, int])"
    )


def test_module_tensors_reads_what_parameters_and_buffers_list():
    why = relies("module_tensors", "nn.Module keeping its own tensors in the dicts _parameters and _buffers", TORCH)
    module = torch.nn.Linear(3, 2)
    module.register_buffer("scale", torch.ones(2))
    module.register_buffer("unset", None)
    module.register_parameter("absent", None)
    module.child = torch.nn.Linear(2, 2)  # not its own: not listed
    for name in ("_parameters", "_buffers"):
        assert isinstance(vars(module).get(name), dict), f"{why}; the module has no dict {name}"
    expected = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    found = patches.module_tensors(module)
    assert [id(t) for t in found] == [id(t) for t in expected], f"{why}; it no longer lists the module's own tensors"


def test_ddp_has_comm_hook_reads_the_hooks_ddp_registers():
    from torch.nn.parallel import DistributedDataParallel

    why = relies("ddp_has_comm_hook", "DistributedDataParallel._comm_hooks, a list of (hook, state)", TORCH)
    # Constructing a DDP needs a process group (tests/perf/test_gradsync.py does, in two processes): read the source.
    init = inspect.getsource(DistributedDataParallel.__init__)
    assert re.search(r"self\._comm_hooks\b.*=\s*\[\]", init), f"{why}; __init__ no longer starts it empty"
    register = inspect.getsource(DistributedDataParallel.register_comm_hook)
    assert "self._comm_hooks.append((hook, state))" in register, f"{why}; register_comm_hook no longer adds to it"
    assert not patches.ddp_has_comm_hook(SimpleNamespace(_comm_hooks=[]))
    assert patches.ddp_has_comm_hook(SimpleNamespace(_comm_hooks=[(print, None)]))


# ----------------------------------------------------------------------------------------------- transformers
def checkpointing_layer() -> torch.nn.Module:
    """A transformers decoder layer in miniature: a GradientCheckpointingLayer around a Linear."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    class Layer(GradientCheckpointingLayer):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.linear(hidden)

    return Layer()


def test_set_checkpoint_function_is_what_a_checkpointing_layer_calls():
    from transformers.modeling_layers import GradientCheckpointingLayer

    why = relies(
        "set_checkpoint_function",
        "GradientCheckpointingLayer.__call__ calling _gradient_checkpointing_func",
        TRANSFORMERS,
    )
    assert "self._gradient_checkpointing_func(" in inspect.getsource(GradientCheckpointingLayer.__call__), (
        f"{why}; __call__ no longer calls it"
    )
    layer = checkpointing_layer()
    layer.gradient_checkpointing = True
    layer.train()
    calls: list[torch.Tensor] = []

    def checkpoint(run, *args):
        calls.append(args[0])
        return run(*args)

    patches.set_checkpoint_function(layer, checkpoint)
    hidden = torch.randn(2, 4, requires_grad=True)
    out = layer(hidden)
    assert len(calls) == 1 and calls[0] is hidden, f"{why}; the layer did not call the function with its input"
    assert torch.equal(out, layer.linear(hidden))


def test_checkpoint_function_reads_what_gradient_checkpointing_enable_sets():
    from transformers import AutoModelForCausalLM, Qwen2Config
    from transformers.modeling_layers import GradientCheckpointingLayer

    why = relies(
        "checkpoint_function", "gradient_checkpointing_enable setting _gradient_checkpointing_func", TRANSFORMERS
    )
    assert patches.checkpoint_function(checkpointing_layer()) is None, f"{why}; a fresh layer already has one"
    config = Qwen2Config(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    model.gradient_checkpointing_enable()
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 2, f"{why}; Qwen2's decoder layers are no longer GradientCheckpointingLayers"
    assert all(callable(patches.checkpoint_function(layer)) for layer in layers), (
        f"{why}; gradient_checkpointing_enable set no checkpoint function on the layers"
    )
    patches.set_checkpoint_function(layers[0], print)
    assert patches.checkpoint_function(layers[0]) is print


# ----------------------------------------------------------------------------------------------- Unsloth
def test_needs_models_own_loss_reads_unsloths_logit_transform_table():
    from transformers import Gemma2Config, Qwen2Config
    from unsloth.models import llama as unsloth_llama

    why = relies("needs_models_own_loss", "unsloth.models.llama.resolve_logit_transforms(config)", UNSLOTH)
    resolve = getattr(unsloth_llama, "resolve_logit_transforms", None)
    assert callable(resolve), f"{why}; it is gone"
    assert list(inspect.signature(resolve).parameters) == ["config"], f"{why}; its signature changed"
    transforms = resolve(Qwen2Config())
    assert isinstance(transforms, tuple | list) and len(transforms) == 3, (
        f"{why}; it no longer returns (softcapping, multiply, divide): {transforms!r}"
    )
    assert patches.needs_models_own_loss(Qwen2Config()) is False, f"{why}; Qwen2 transforms no logits"
    assert patches.needs_models_own_loss(Gemma2Config()) is True, f"{why}; Gemma 2 softcaps its logits"


def test_mark_labelled_batch_sets_the_flag_unsloths_decoder_forward_reads():
    from unsloth.models import llama as unsloth_llama
    from unsloth.models import qwen2 as unsloth_qwen2

    why = relies("mark_labelled_batch", "Unsloth's decoder forward reading self._has_no_labels", UNSLOTH)
    backbone = inspect.getsource(unsloth_llama.LlamaModel_fast_forward)
    assert 'getattr(self, "_has_no_labels", False)' in backbone, f"{why}; LlamaModel_fast_forward no longer reads it"
    # The CausalLM forward that titlegen bypasses sets it, True when there are no labels.
    causal_lm = inspect.getsource(unsloth_llama.CausalLM_fast_forward)
    assert "self.model._has_no_labels = labels is None" in causal_lm, f"{why}; CausalLM_fast_forward no longer sets it"
    assert "Qwen2Model.forward = LlamaModel_fast_forward" in inspect.getsource(unsloth_qwen2), (
        f"{why}; Qwen2 no longer runs LlamaModel_fast_forward"
    )
    module = torch.nn.Module()
    patches.mark_labelled_batch(module)
    assert module._has_no_labels is False


def test_run_lora_mlp_eagerly_finds_unsloths_fused_mlp_and_keeps_it_visible_to_unsloth():
    from unsloth.kernels import fast_lora
    from unsloth.models import llama as unsloth_llama

    why = relies(
        "run_lora_mlp_eagerly", "fast_lora.apply_lora_mlp_swiglu(self, X, inplace) as an MLP's forward", UNSLOTH
    )
    parameters = inspect.signature(fast_lora.apply_lora_mlp_swiglu).parameters
    assert list(parameters)[:2] == ["self", "X"] and "inplace" in parameters, (
        f"{why}; its signature is now {inspect.signature(fast_lora.apply_lora_mlp_swiglu)}"
    )
    patch_peft_model = inspect.getsource(unsloth_llama.FastLlamaModel.patch_peft_model)
    assert "mlp_module.forward = types.MethodType(_apply_lora_mlp, mlp_module)" in patch_peft_model, (
        f"{why}; patch_peft_model no longer installs the fused MLP as the module's bound forward"
    )
    mlp = torch.nn.Module()
    mlp.forward = types.MethodType(fast_lora.apply_lora_mlp_swiglu, mlp)  # as patch_peft_model does
    model = torch.nn.ModuleDict({"mlp": mlp})
    assert patches.run_lora_mlp_eagerly(model) == 1
    inner = mlp.forward.__func__._torchdynamo_orig_callable
    assert isinstance(inner, functools.partial) and inner.keywords == {"inplace": False}
    # Unsloth's later checks (its FSDP decline) find fused MLPs by `forward.__func__.func`.
    assert mlp in unsloth_llama._fused_lora_modules(model), f"{why}; _fused_lora_modules no longer finds the wrapper"


@pytest.mark.parametrize("name", ["LlamaRotaryEmbedding", "LlamaLinearScalingRotaryEmbedding"])
def test_rotary_tables_are_the_tables_of_unsloths_rotary_embedding(name):
    from unsloth.models import llama as unsloth_llama

    why = relies("rotary_tables", f"the cos/sin table attributes of unsloth.models.llama.{name}", UNSLOTH)
    rotary = getattr(unsloth_llama, name)(dim=16, max_position_embeddings=64)
    attributes = vars(rotary)
    names = {"multi_gpu_cos_cached", "multi_gpu_sin_cached", "cos_cached", "sin_cached"}
    missing = names - set(attributes)
    assert not missing, f"{why}; {sorted(missing)} are gone"

    tables = {k for k in attributes if re.search(r"(^|_)(cos|sin)(_|$)", k)}
    assert tables == names, f"{why}; its tables are now {sorted(tables)}"
    assert not names & set(rotary._buffers), f"{why}; the tables became buffers"
    # Built per device when a longer sequence comes, into the lists rotary_tables reads.
    build = inspect.getsource(type(rotary)._set_cos_sin_cache)
    assert "self.multi_gpu_cos_cached[device.index] = " in build, f"{why}; the cache is built elsewhere"
    found = patches.rotary_tables(rotary)
    assert {id(t) for t in found} == {id(rotary.cos_cached), id(rotary.sin_cached)}
    rotary.multi_gpu_cos_cached = [None, torch.zeros(4)]  # a table built on the second GPU
    assert sum(t is rotary.multi_gpu_cos_cached[1] for t in patches.rotary_tables(rotary)) == 1


def test_every_patch_has_its_check():
    functions = {n for n, f in vars(patches).items() if inspect.isfunction(f) and f.__module__ == patches.__name__}
    tests = [name for name in globals() if name.startswith("test_")]
    unchecked = sorted(f for f in functions if not any(t.startswith(f"test_{f}_") for t in tests))
    assert not unchecked, f"titlegen.perf.patches functions without a test here: {unchecked}"
