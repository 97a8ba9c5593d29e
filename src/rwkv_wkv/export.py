"""Export a model for deployment: a torch.export program, an AOTInductor package, or ONNX.

    python -m rwkv_wkv.export CKPT --format {pt2,aoti,onnx} --mode {gpt,step} --out PATH [--dtype fp32]
    rwkv_wkv.export.export_model(model_or_checkpoint, "aoti", "step", "step.pt2")

Every checkpoint the package loads (either generation), two programs:
  gpt   prefill: ids (B, T) -> logits (B, T, vocab), state after the last token; B and T dynamic.
  step  one token per row: tokens (B,), state -> logits (B, vocab), new state; B dynamic.
        The state is an explicit input and output: a gpt program's state, or the model's
        init_state (its values are in the files' metadata: "state_shape", "empty_state").

Formats:
  pt2   torch.export's ExportedProgram (torch.export.load; needs the WKV ops registered).
  aoti  an AOTInductor package: compiled ahead of time (a minute for a large model), run by
        torch._inductor.aoti_load_package in Python or torch::inductor::AOTIModelPackageLoader in
        C++ (examples/aoti_runner) with no Python at all. It calls the WKV ops of this package's
        compiled library, which must be loaded first: ``import rwkv_wkv`` (or ``load_package``
        here), or ``torch.ops.load_library(rwkv_wkv.library_path())``, or dlopen in C++.
  --fused FORMAT (step, pt2 / aoti): the step through the fused CPU kernel that generate uses
        (every layer in one call; matrices in fp32, bf16, fp16, int8 or q4): 2x faster per token.
  onnx  ONNX (float32) with the WKV recurrence written in ONNX operators (rwkv4/onnx.py,
        rwkv7/onnx.py: a Scan over T in gpt mode), for onnxruntime; needs the ``onnx`` extra.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from . import _library
from .errors import ArgumentParser, UsageError, first_line, run_command
from .fused_step import FORMATS as FUSED_FORMATS
from .fused_step import FusedStep

FORMATS = ("pt2", "aoti", "onnx")
MODES = ("gpt", "step")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ONNX_EXTRA = "pip install 'rwkv_wkv[onnx]' (onnx, onnxscript, onnxruntime)"


class GPTProgram(nn.Module):
    """The prefill: ids (B, T) -> (logits (B, T, vocab), state after the last token)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx):
        logits, _, state = self.model(idx, return_state=True)
        return logits, state


class StepProgram(nn.Module):
    """One token per row: (tokens (B,), state) -> (logits (B, vocab), new state)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, tokens, state):
        return self.model.step(tokens, state)


class FusedStepProgram(nn.Module):
    """The step through the fused CPU kernel (torch.ops.wkv.rwkv4_step / rwkv7_step: every layer in
    one call, what generate uses on the CPU), its matrices in ``weights`` (fused_step.FORMATS:
    fp32, bf16, fp16, int8 per row, q4 per block of 32); the same inputs and outputs as StepProgram."""

    def __init__(self, model, weights):
        super().__init__()
        plan = FusedStep(model, weights)
        self.generation, self.eps, self.eps_out = plan.generation, plan.eps, plan.eps_out
        self.head_size = getattr(plan, "head_size", None)
        self.register_buffer("emb", model.emb.weight.detach().float())
        self.counts = {}
        for kind in ("vectors", "matrices", "scales"):
            tensors = getattr(plan, kind)
            self.counts[kind] = len(tensors)
            for i, t in enumerate(tensors):
                self.register_buffer(f"{kind}_{i}", t)

    def _list(self, kind):
        return [getattr(self, f"{kind}_{i}") for i in range(self.counts[kind])]

    def forward(self, tokens, state):
        new_state = state.clone()
        x = nn.functional.embedding(tokens.view(-1), self.emb)
        args = (x, new_state, self._list("vectors"), self._list("matrices"), self._list("scales"), self.eps,
                self.eps_out)
        if self.generation == 4:
            logits = torch.ops.wkv.rwkv4_step(*args)
        else:
            logits = torch.ops.wkv.rwkv7_step(*args, self.head_size)
        return logits, new_state


PROGRAMS = {"gpt": GPTProgram, "step": StepProgram}
# names of the programs' inputs and outputs (ONNX graph names; the order of every format's)
SIGNATURES = {"gpt": (["idx"], ["logits", "state"]), "step": (["tokens", "state"], ["logits", "new_state"])}


def library_path() -> str:
    """The path of this package's compiled operator library (rwkv_wkv/_C.so): load it with
    ``torch.ops.load_library(path)`` (or dlopen it in C++) to run exported programs and
    AOTInductor packages in a process that does not import rwkv_wkv."""
    return _library.library_path()


def onnx_translation_table() -> dict:
    """{op overload: ONNX translation} of the WKV ops, for ``torch.onnx.export(..., dynamo=True,
    custom_translation_table=...)`` of any module that calls them."""
    try:
        from .rwkv4.onnx import wkv_forward
        from .rwkv7.onnx import wkv7_forward
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnxscript: {ONNX_EXTRA} ({first_line(e)})") from e
    return {torch.ops.wkv.wkv_forward.default: wkv_forward, torch.ops.wkv.wkv7_forward.default: wkv7_forward}


def example_inputs(model, mode, batch=2, length=3):
    """Inputs of the right shapes and dtypes for a program of ``mode``."""
    device = model.emb.weight.device
    if mode == "gpt":
        return (torch.zeros(batch, length, dtype=torch.long, device=device),)
    return (torch.zeros(batch, dtype=torch.long, device=device), model.init_state(batch, device))


def dynamic_shapes(mode):
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    if mode == "gpt":
        return ({0: batch, 1: torch.export.Dim("length", min=1, max=1 << 24)},)
    return ({0: batch}, {0: batch})


def metadata(model, mode, dtype, fused=None):
    """What a program's user needs besides the weights (strings: ONNX metadata_props and AOTI
    package metadata alike)."""
    c = model.config
    empty = model.init_state(1)[0]
    return {
        "rwkv_wkv.generation": str(model.generation),
        "rwkv_wkv.mode": mode,
        "rwkv_wkv.dtype": dtype,
        "rwkv_wkv.step_kernel": f"fused {fused}" if fused else "python",
        "rwkv_wkv.vocab_size": str(c.vocab_size),
        "rwkv_wkv.n_layer": str(c.n_layer),
        "rwkv_wkv.n_embd": str(c.n_embd),
        "rwkv_wkv.inputs": ",".join(SIGNATURES[mode][0]),
        "rwkv_wkv.outputs": ",".join(SIGNATURES[mode][1]),
        "rwkv_wkv.state_shape": json.dumps(["B", *empty.shape]),
        # the state before any token (model.init_state)
        "rwkv_wkv.empty_state": _describe_start(model, empty),
    }


def _describe_start(model, empty):
    if not empty.any():
        return "zeros"
    if model.generation == 4:
        return "zeros but state[:, :, 3] = -1e38 (each layer's WKV exponent row)"
    return "a tuned state (not zeros): model.init_state(B), or a gpt program's state"


def _prepare(model, dtype):
    """The model in eval mode and the dtype, never changing the caller's."""
    target = DTYPES[dtype]
    if model.emb.weight.dtype != target or model.training:
        model = copy.deepcopy(model).to(target).eval()
    return model


def export_program(model, mode, fused=None):
    """torch.export of the model's ``mode`` program (no grad; dynamic batch, and length for gpt);
    ``fused``: the step through the fused CPU kernel with its weights in that format."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    program = FusedStepProgram(model, fused) if fused else PROGRAMS[mode](model)
    with torch.no_grad():
        return torch.export.export(program.eval(), example_inputs(model, mode), dynamic_shapes=dynamic_shapes(mode))


def _onnx_export(model, mode, path):
    table = onnx_translation_table()
    program = PROGRAMS[mode](model).eval()
    inputs, outputs = SIGNATURES[mode]
    with torch.no_grad(), warnings.catch_warnings():
        # (the exporter's note that the batch axis keeps one name for all inputs)
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        onnx_program = torch.onnx.export(program, example_inputs(model, mode), dynamo=True,
                                         dynamic_shapes=dynamic_shapes(mode), input_names=inputs,
                                         output_names=outputs, custom_translation_table=table,
                                         optimize=True, verbose=False)
    onnx_program.model.metadata_props.update(metadata(model, mode, "fp32"))
    onnx_program.save(str(path))


def _check(fmt, mode, dtype, fused=None):
    if fused is not None:
        if fused not in FUSED_FORMATS:
            raise ValueError(f"fused must be one of {', '.join(FUSED_FORMATS)} (the fused step's weight formats), "
                             f"got {fused!r}")
        if fmt == "onnx" or mode != "step":
            raise ValueError("fused (the fused CPU step kernel) is for --mode step in the pt2 and aoti formats")
        if dtype != "fp32":
            raise ValueError(f"fused {fused} sets the weights' format; dtype must stay fp32, got {dtype}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if fmt == "onnx":
        if dtype != "fp32":
            raise ValueError(f"ONNX export is float32 only (the WKV translation's math dtype), got dtype {dtype}")
        onnx_translation_table()  # the optional dependencies, before any work


def export_model(model, format, mode, out, dtype="fp32", fused=None, log=None) -> Path:  # noqa: A002
    """Exports ``model`` (an RWKV / RWKV7, or a checkpoint path for ``rwkv_wkv.from_checkpoint``)
    as ``format`` ("pt2", "aoti", "onnx") of ``mode`` ("gpt", "step") to ``out``, weights in
    ``dtype`` ("fp32", "bf16", "fp16"; ONNX: fp32). ``fused`` ("fp32", "bf16", "fp16", "int8", "q4";
    step mode, pt2 / aoti, CPU): the step runs the fused CPU kernel with its matrices in that
    format. Writes ``out`` whole or not at all (ONNX models over 2 GB keep their weights in
    ``out``.data beside it). Returns the path."""
    _check(format, mode, dtype, fused)
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the output's directory {out.parent} does not exist")
    if not isinstance(model, nn.Module):
        from .models import from_checkpoint

        model = from_checkpoint(model)
    model = _prepare(model, dtype)
    if fused and model.emb.weight.device.type != "cpu":
        raise ValueError(f"fused: the fused step is a CPU kernel; the model is on {model.emb.weight.device}")
    say = log or (lambda message: None)
    # written in a scratch directory beside out under out's own name (ONNX external data names
    # its file), then moved into place
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target = scratch / out.name
        if format == "onnx":
            say(f"exporting the {mode} program to ONNX")
            _onnx_export(model, mode, target)
        else:
            say(f"exporting the {mode} program (torch.export)")
            program = export_program(model, mode, fused)
            if format == "pt2":
                torch.export.save(program, target)
            else:
                say("compiling with AOTInductor (about a minute per large model)")
                configs = {"aot_inductor.metadata": metadata(model, mode, dtype, fused)}
                torch._inductor.aoti_compile_and_package(program, package_path=str(target),
                                                         inductor_configs=configs)
        for item in sorted(scratch.iterdir()):
            os.replace(item, out.parent / item.name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def load_package(path, device_index=-1):
    """An AOTInductor package (format "aoti") ready to call: ``logits, state = runner(*inputs)``
    (the WKV library is loaded first)."""
    _library.load()
    return torch._inductor.aoti_load_package(str(path), device_index=device_index)


def main(argv=None):
    """The command: its exit status (2 and one ``error:`` line for a user mistake)."""
    return run_command(_main, argv)


def _main(argv):
    p = ArgumentParser(__doc__, prog="python -m rwkv_wkv.export")
    p.add_argument("checkpoint", help="Hugging Face RWKV directory, RWKV-LM .pth, or trainer checkpoint")
    p.add_argument("--format", required=True, choices=FORMATS, help="pt2, aoti or onnx")
    p.add_argument("--mode", required=True, choices=MODES, help="gpt (prefill) or step (one token per row)")
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="the weights' dtype (default fp32; "
                   "ONNX: fp32 only)")
    p.add_argument("--fused", default=None, choices=list(FUSED_FORMATS),
                   help="--mode step, pt2 / aoti: run the fused CPU step kernel (every layer in one call, what "
                        "generate uses on the CPU) with its matrices in this format")
    args = p.parse_args(argv)
    try:
        _check(args.format, args.mode, args.dtype, args.fused)
    except (ValueError, ImportError) as e:
        raise UsageError(first_line(e)) from e
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out: the directory {out.parent} does not exist")
    if out.is_dir():
        raise UsageError(f"--out: {out} is a directory; give a file name")
    from .models import from_checkpoint

    try:
        model = from_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UsageError(first_line(e)) from e
    c = model.config
    log = lambda message: print(f"# {message}", file=sys.stderr, flush=True)  # noqa: E731
    log(f"{args.checkpoint}: RWKV-{model.generation} L{c.n_layer}-d{c.n_embd}, vocab {c.vocab_size}")
    export_model(model, args.format, args.mode, out, args.dtype, args.fused, log=log)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
