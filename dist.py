"""dist.py - the many-GPU plumbing: torchrun, FSDP2, the few collectives a step needs, sharded checkpoints.

    torchrun --nproc_per_node=8 ropd.py ...     # or --nnodes N with torchrun's own rendezvous

Nothing here is the method. With one process (plain `python ropd.py`) every function below is the
identity or a local call, and torch.distributed is never set up. With several:

  * parameters, gradients and optimizer state are sharded with FSDP2 (`fully_shard` on every
    decoder layer, then on the whole policy); NCCL on GPUs (bf16 compute, fp32 master weights and
    reductions, as the paper trains), gloo on CPUs (fp32);
  * each rank samples the rollouts of its own slice of the step's prompts, seeded per rollout, so
    that a rollout is the same whichever rank samples it; the rollouts are then gathered, so that
    every rank holds the step's whole batch and can take its share of every mini-batch of the
    single-process schedule;
  * the teacher and the judge are called from rank 0 alone, which owns the sqlite cache, the rate
    limit, the circuit breaker and the usage counts (they mean what they mean in one process, and
    no two processes write one cache); its rewards are broadcast;
  * gradients are summed across ranks (not averaged) and each rank's loss is divided by the whole
    mini-batch's token count, so the gradient is the single-process gradient;
  * rank 0 alone prints, logs and shows the progress bar.

Checkpoints: the student in save_pretrained format, written by rank 0 from the full state dict;
the optimizer state sharded with torch.distributed.checkpoint (DCP), which reshards it when a run
resumes at another world size. DCP's own reader unpickles its metadata file without limits; here
it goes through an unpickler that admits DCP's metadata classes and nothing else (SafeReader).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

import grpo


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: torch.device = torch.device("cpu")) -> World:
    """The process's place: one process (WORLD_SIZE unset or 1) needs no set-up at all and runs on
    `device`; under torchrun, the process group (NCCL when `device` is a GPU, gloo otherwise) and
    this rank's device (its LOCAL_RANK's GPU)."""
    size = world_size()
    if size == 1:
        return World(device=device)
    use_cuda = device.type == "cuda"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = torch_dist.get_rank()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return World(rank, size, torch.device("cuda", local))
    return World(rank, size, torch.device("cpu"))


def close(world: World):
    if world.size > 1 and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# FSDP2
# ----------------------------------------------------------------------------------------------

class ShardedPolicy(torch.nn.Module):
    """A causal LM under FSDP2 whose forward is grpo.token_logprobs: FSDP2 gathers and frees a
    module's parameters around its forward, so the log-probs (which use the embeddings and the
    output head directly) must run inside a forward of the root. generate() runs on gathered
    weights, with no collective per token (each rank stops at its own rollouts' EOS)."""

    computes_logprobs = True

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, n_completion: int = 0, temperature: float = 1.0, generate=None):
        if generate is not None:  # generation, through the root too (FSDP2 starts every step there)
            return self.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **generate)
        # a fresh tensor, not a view: FSDP2 hangs its backward hook on what a forward returns
        return grpo.token_logprobs(self.lm, input_ids, attention_mask, n_completion, temperature=temperature).clone()

    @property
    def config(self):
        return self.lm.config

    @property
    def generation_config(self):
        return self.lm.generation_config

    def generate(self, input_ids, attention_mask, **kw):
        with gathered(self):  # synced_gpus: Hugging Face would all-reduce at every token under FSDP
            return self(input_ids, attention_mask, generate={**kw, "synced_gpus": False})


def fsdp_modules(model) -> list:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model):
    """Every parameter whole on every rank for the duration (generation, evaluation): one
    all-gather at the start, none per token. Re-entrant: inside it, generate() gathers nothing."""
    mods = [] if getattr(model, "_gathered", False) else fsdp_modules(model)
    for m in mods:
        m.set_reshard_after_forward(False)
        m.unshard()
    if mods:
        model._gathered = True
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True)
        if mods:
            model._gathered = False


def shard(lm, world: World):
    """FSDP2 over the student: each decoder layer its own unit, the rest (embeddings, final norm,
    output head) with the root. bf16 compute with fp32 master weights and reductions on GPUs; fp32
    on CPUs. FSDP2 averages gradients over the ranks; each rank's loss is normalised by the whole
    mini-batch and multiplied by the world size (grpo.update_policy), so the average is the sum."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if world.device.type == "cuda" else MixedPrecisionPolicy()
    for layer in lm.get_decoder().layers:
        fully_shard(layer, mp_policy=mp)
    policy = ShardedPolicy(lm)
    fully_shard(policy, mp_policy=mp)
    return policy


def unwrap(model):
    """The Hugging Face model inside (save_pretrained, its config)."""
    return model.lm if isinstance(model, ShardedPolicy) else model


# ----------------------------------------------------------------------------------------------
# Collectives
# ----------------------------------------------------------------------------------------------

def gather(obj, world: World) -> list:
    """Every rank's `obj` (CPU tensors, texts, numbers), in rank order, on every rank."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast(obj, world: World):
    """Rank 0's `obj` on every rank."""
    if world.size == 1:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


WAIT_LOG_EVERY = 300.0  # seconds between "still waiting for rank 0" lines
_waiting_group = None


def waiting_group():
    """A gloo group whose collectives may wait a year: the other ranks wait in it while rank 0
    alone calls the teacher or the judge. The default group's timeout (10 min on NCCL) is for
    collectives that every rank joins at once; a healthy slow judge must not trip it. Made on
    first use (every rank calls on_main in the same order, so every rank makes it)."""
    global _waiting_group
    if _waiting_group is None:
        _waiting_group = torch_dist.new_group(backend="gloo", timeout=datetime.timedelta(days=365))
    return _waiting_group


def on_main(fn, world: World, share: bool = True, *, what: str = "the teacher, the judge or the evaluation"):
    """fn() run on rank 0 alone (the teacher, the judge, the held-out evaluation), its result
    broadcast (or, with share=False, kept on rank 0: the others get None); an exception there is
    raised on every rank, so that none waits for ever. The other ranks wait without the process
    group's timeout (waiting_group), saying every WAIT_LOG_EVERY seconds what they wait for (a
    rank that dies still ends the run: torchrun stops the others)."""
    result, error = None, None
    if world.main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if world.size == 1:
        return result if error is None else _raise(error)
    box = [(result if share else None, error)]
    with _saying_while_waiting(world, what):
        torch_dist.broadcast_object_list(box, src=0, group=waiting_group())
    shared, error = box[0]
    if error is not None:
        raise error
    return result if world.main else shared


def _raise(error: BaseException):
    raise error


@contextlib.contextmanager
def _saying_while_waiting(world: World, what: str):
    """On the ranks that wait, a line every WAIT_LOG_EVERY seconds: how long, and for what."""
    done, start = threading.Event(), time.monotonic()

    def say():
        while not done.wait(WAIT_LOG_EVERY):
            print(f"rank {world.rank}: waiting for rank 0 ({what}), {time.monotonic() - start:.0f} s so far",
                  file=sys.stderr, flush=True)

    if not world.main:
        threading.Thread(target=say, daemon=True).start()
    try:
        yield
    finally:
        done.set()


def sum_stats(stats: dict, world: World) -> dict:
    """Per-rank shares of a mini-batch's statistics, summed over the ranks."""
    if world.size == 1:
        return stats
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64,
                     device=world.device if world.device.type == "cuda" else "cpu")
    torch_dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def my_slice(n: int, world: World) -> slice:
    """This rank's contiguous share of n items (as even as can be)."""
    return slice(world.rank * n // world.size, (world.rank + 1) * n // world.size)


def barrier(world: World):
    if world.size > 1:
        torch_dist.barrier()


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def full_state_dict(model, world: World) -> dict | None:
    """The student's whole state dict on rank 0 (on the CPU), None elsewhere; one process: its own."""
    if world.size == 1:
        return None  # save_pretrained reads the model itself
    lm = unwrap(model)
    sd = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    head = lm.get_output_embeddings()
    if head is not None and head.weight is lm.get_input_embeddings().weight:  # tied: saved once, as the input's
        sd.pop(next(f"{name}.weight" for name, m in lm.named_modules() if m is head), None)
    return sd if world.main else None


def _tensors(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}


def save_optimizer(model, opt, folder: Path, world: World) -> dict:
    """The optimizer's tensors, sharded, with DCP (every rank writes its own shards); returns the
    rest (hyperparameters, plain types) for trainer_state.pt."""
    sd = get_optimizer_state_dict(unwrap(model), opt)
    state = {f"{fqn}.{k}": v for fqn, s in sd["state"].items() for k, v in _tensors(s).items()}
    with warnings.catch_warnings():  # one process: DCP says it assumes one process, which it is
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        dcp.save(state, checkpoint_id=str(folder), no_dist=world.size == 1)
    return {"param_groups": sd["param_groups"],
            "plain": {fqn: {k: v for k, v in s.items() if not isinstance(v, torch.Tensor)}
                      for fqn, s in sd["state"].items()}}


def load_optimizer(model, opt, folder: Path, rest: dict, world: World):
    """The optimizer's state from a checkpoint, resharded for this world size."""
    sd = get_optimizer_state_dict(unwrap(model), opt)  # the target shapes (state initialised)
    target = {f"{fqn}.{k}": v for fqn, s in sd["state"].items() for k, v in _tensors(s).items()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        dcp.load(target, storage_reader=SafeReader(str(folder)), no_dist=world.size == 1)
    state = {fqn: {**rest["plain"].get(fqn, {}), **{k: target[f"{fqn}.{k}"] for k in _tensors(s)}}
             for fqn, s in sd["state"].items()}
    set_optimizer_state_dict(unwrap(model), opt, {"state": state, "param_groups": rest["param_groups"]})


# DCP's metadata file is a pickle: these classes may be in it, nothing else may
_DCP_META = {("torch.distributed.checkpoint.metadata", n) for n in (
    "Metadata", "TensorStorageMetadata", "TensorProperties", "ChunkStorageMetadata", "MetadataIndex",
    "StorageMeta", "_MEM_FORMAT_ENCODING")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"), ("pathlib", "PosixPath"),
    ("torch.serialization", "_get_layout")} | {("torch", t) for t in (
        "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _DCP_META:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} may not be in a checkpoint's metadata")


class SafeReader(FileSystemReader):
    """DCP's file reader with a metadata unpickler that runs no code (see _DCP_META); the tensors
    themselves DCP already reads with weights_only=True."""

    def read_metadata(self, *args, **kwargs):
        with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
