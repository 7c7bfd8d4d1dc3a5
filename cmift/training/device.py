"""Where a run computes: the device and autocast, batches moved to it, and the model's forward
that an objective sees (inputs the model takes, the head's feature vector when asked)."""

from __future__ import annotations

import contextlib
import inspect
import resource
from dataclasses import dataclass
from typing import Optional

import torch

from cmift.models.backbones import FeatureTap
from cmift.objectives import Outputs

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "task")  # task: multi-task


@dataclass
class Device:
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # autocast dtype, None = fp32

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        return f"{name} ({amp})"


def pick_device(precision: str) -> Device:
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        bf16_ok = torch.cuda.is_bf16_supported()
        dtype = {"auto": torch.bfloat16 if bf16_ok else torch.float16, "fp32": None,
                 "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        return Device(torch.device("cuda"), dtype)
    dtype = {"bf16": torch.bfloat16}.get(precision)  # fp16 autocast on CPU is not worth it
    return Device(torch.device("cpu"), dtype)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix kernels (avx512_bf16 or AMX), as oneDNN reports it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_hint(precision: str, device: Device) -> str | None:
    """A line for a CPU run left at `auto` (fp32) on a CPU that has bf16 kernels: bf16 autocast
    is about 2x faster there. Not the default, so that finished fp32 runs keep their results."""
    if (precision == "auto" and device.device.type == "cpu" and device.amp_dtype is None
            and cpu_has_bf16()):
        return ("this CPU has bf16 kernels: train.precision=bf16 trains about 2x faster "
                "(a run of its own, never pooled with fp32 runs; README, Performance)")
    return None


def pin_batch(batch: dict) -> dict:
    """Page-locked host memory, so the copy to the GPU can overlap compute (non_blocking)."""
    return {k: v.pin_memory() for k, v in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_kwargs(model) -> tuple[str, ...]:
    """The inputs this model's forward accepts (DistilBERT has no token_type_ids); a peft
    model passes them on to its base model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return tuple(k for k in MODEL_INPUTS if k in params)


class Forward:
    """model(batch) -> Outputs: picks the inputs the model takes, runs under the device's
    autocast, and adds the head's feature vector when the objective asks for it."""

    def __init__(self, model, device: Device, features: bool):
        self.model, self.device = model, device
        self.inputs = model_kwargs(model)
        self.tap = FeatureTap(model) if features else None
        # label-token tuning: logits are pair log-odds (read here: the loop may wrap the model)
        self.pair_loss = getattr(model, "pair_loss", False)
        self.pair_scoring = getattr(model, "pair_scoring", False)

    def __call__(self, batch: dict) -> Outputs:
        with self.device.autocast():
            logits = self.model(**{k: batch[k] for k in self.inputs if k in batch}).logits
        return Outputs(logits=logits, features=self.tap.value if self.tap else None,
                       pair_loss=self.pair_loss)


def peak_memory_mb(device: Device) -> dict:
    """Peak memory of this process so far: host RSS, and CUDA memory allocated by torch."""
    peak = {"host_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.device.type == "cuda":
        peak["cuda_allocated"] = round(torch.cuda.max_memory_allocated(device.device) / 2**20, 1)
    return peak
