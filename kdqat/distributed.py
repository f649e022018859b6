"""Parallelism inside one job: DDP or FSDP2 over ``world`` processes, process groups set up by ``accelerate``.

A job runs data parallel when ``runners.worker`` is launched by ``torchrun --nproc-per-node W``
(``resources.device_plan = "ddp"`` or ``"fsdp"``, ``resources.gpus = W``). Every rank calls :func:`init`
(``accelerate.PartialState``: gloo on CPU, nccl on CUDA, one GPU per local rank) and runs the SAME
job inside :func:`data_parallel`, which wraps the loop's entry point ``kdqat.train.train`` (the one
seam: recipes call it as ``loop.train``) so that:

1. batch: the loop's global batch of B rows (the registry's ``batch_size`` stays the GLOBAL batch)
   is cut into W contiguous shards (``torch.tensor_split`` along dim 0) before ``loss_fn``; rank r
   trains on shard r (``[B, ...] -> [~B/W, ...]``);
2. gradients: the trained model is wrapped IN PLACE by torch's composable DDP
   (``torch.distributed._composable.replicate``, ``find_unused_parameters=True`` because a KD
   method may leave parameters without gradient): rank 0's weights and buffers are broadcast,
   gradients are all-reduced and AVERAGED over ranks during backward. The recipes call the
   unwrapped module, so the wrap must be in place, not a wrapper. The teacher is never wrapped:
   it has no gradients and is never in an optimizer;
3. the logged loss is the mean over ranks (:func:`global_mean`), i.e. the global-batch loss.

Equivalence with one process (``tests/test_distributed.py`` checks it on CPU, 2 gloo processes):
for losses that are means over the batch and B divisible by W, the averaged gradient is the
single-process gradient up to float summation order. Known differences, by design of DDP:
(a) dynamic per-tensor activation quantization (SPEC §3.1: max|x| over the whole tensor) takes
the max over the rank's shard, not the global batch; (b) sum-over-batch reductions (TSLD
``batch_reduction = "sum"``, SPEC §4.2) sum over the rank's shard, as each rank of the official
multi-GPU runs sums its own micro-batch: that term's gradient is 1/W of one process's, so next to
a mean-reduced term (TSLD's GT) its weight drops by 1/W, and the logged loss is (sum)/W + GT;
(c) B not divisible by W weights unequal shards equally (gradients and logged loss). Every rank evaluates the full dev set (identical weights,
identical metrics); only rank 0 writes the record (``runners.worker``).

FSDP (``resources.device_plan = "fsdp"``, for the 7B teacher + student of TSLD, SPEC §7): the
same seam and the same batch sharding, but the trained model is sharded instead of replicated:
torch's FSDP2 ``fully_shard`` on every transformer block (the classes HF lists in the model's
``_no_split_modules``) and then on the root, over a 1-D device mesh of all ranks (gloo on CPU,
nccl on CUDA). Parameters, gradients and optimizer state live as 1/W shards (DTensors); each
block's full weights are all-gathered for its forward and backward (fake quantization sees the
full weight, so per-channel scales are exact) and freed after; gradients are reduce-scattered
and AVERAGED. The recipes pass the teacher through :func:`prepare_teacher`, which shards it the
same way (its forward then runs block by block, resharding after each) — it has no gradients and
is never given to the optimizer. Checkpoints and the saved model hold FULL tensors on every rank
(``kdqat.checkpoint.model_state`` / ``optim_state``, torch.distributed.checkpoint's full state
dicts), so a sharded job resumes from rank 0's checkpoint like a DDP one and writes the same
``model/`` as a single process. Memory per GPU on 8 H100s (bf16 everything, SPEC §7.2): student
7B x (2 param + 2 grad + 4 Adam) B / 8 = 6.7 GB, teacher 13.4 GB / 8 = 1.7 GB, plus activations
and one gathered block. Differences from one process: those of DDP above, plus float summation
order of the reduce-scatter. What is NOT done here: sharded (per-rank) checkpoint files — a full
checkpoint of a 7B student with Adam state is ~84 GB in fp32 on each rank; for that scale a
``torch.distributed.checkpoint.save`` per rank is the next step — and mixed-precision policies
(the ``precision`` switch casts the models themselves).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world``; ``device`` to put models on."""
    rank: int
    world: int
    local_rank: int
    device: str
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "cpu") -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...) through ``accelerate.PartialState``; a single process gets world 1."""
    from accelerate import PartialState
    st = PartialState(cpu=device == "cpu")
    dev = "cpu" if device == "cpu" else str(st.device)
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    return Dist(rank=st.process_index, world=st.num_processes, local_rank=st.local_process_index,
                device=dev, backend=st.backend)


def shard(batch: dict, rank: int, world: int) -> dict:
    """Rank ``rank``'s contiguous part of every ``[B, ...]`` tensor of ``batch`` (``tensor_split``:
    the first ``B % world`` shards get one row more)."""
    return {k: v.tensor_split(world)[rank] for k, v in batch.items()}


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def global_mean(loss: torch.Tensor, world: int) -> torch.Tensor:
    """``loss`` whose VALUE is the mean of every rank's loss and whose GRADIENT is this rank's own
    (``loss + (mean - loss).detach()``): the curves log the global-batch loss of a single process
    (for equal shards and mean-reduced losses), DDP's gradient averaging is left alone."""
    g = loss.detach().clone()
    torch.distributed.all_reduce(g)
    return loss + (g / world - loss.detach())


_ACTIVE: tuple[Dist, str] | None = None     # (context, plan) while a data_parallel seam is installed


def fully_shard(model: torch.nn.Module, ctx: Dist) -> torch.nn.Module:
    """FSDP2-shard ``model`` in place over all ``ctx.world`` ranks: every block whose class is in
    ``model._no_split_modules`` (HF's list of its transformer block classes), then the root."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard as shard_module
    mesh = init_device_mesh(torch.device(ctx.device).type, (ctx.world,))
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in blocks]
    if not found:
        raise ValueError(f"FSDP: {type(model).__name__} names no transformer block classes "
                         f"(_no_split_modules = {sorted(blocks)}): nothing to shard per block")
    for m in found:
        shard_module(m, mesh=mesh)
    shard_module(model, mesh=mesh)
    return model


def prepare_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    """The teacher as the job's device plan wants it: FSDP-sharded under an active "fsdp" seam
    (module docstring), else unchanged (DDP never wraps the teacher: it has no gradients)."""
    if _ACTIVE is not None and _ACTIVE[1] == "fsdp":
        return fully_shard(teacher, _ACTIVE[0])
    return teacher


@contextmanager
def data_parallel(ctx: Dist, plan: str = "ddp"):
    """Install the seam (module docstring) around ``kdqat.train.train`` for the duration of a
    job: the trained model is replicated by composable DDP (``plan`` "ddp") or sharded by FSDP2
    (``plan`` "fsdp", :func:`fully_shard`), ``loss_fn`` gets rank ``ctx.rank``'s shard of each
    batch and returns :func:`global_mean` of its loss. Restored on exit; with ``ctx.world == 1``
    nothing is changed."""
    global _ACTIVE
    if plan not in ("ddp", "fsdp"):
        raise ValueError(f"unknown device plan {plan!r}: 'ddp' or 'fsdp'")
    if ctx.world == 1:
        yield
        return
    from torch.distributed._composable import replicate

    from kdqat import train as loop
    orig = loop.train
    wrapped: set[int] = set()

    def train(model, data, cfg, loss_fn, *args, **kwargs):
        if id(model) not in wrapped:
            dev = torch.device(ctx.device)
            if plan == "fsdp":
                fully_shard(model, ctx)
            else:
                replicate(model, find_unused_parameters=True, **({"device_id": dev} if dev.type == "cuda" else {}))
            wrapped.add(id(model))

        def sharded_loss(batch, phase, step):
            loss, terms = loss_fn(shard(batch, ctx.rank, ctx.world), phase, step)
            return global_mean(loss, ctx.world), terms

        return orig(model, data, cfg, sharded_loss, *args, **kwargs)

    loop.train = train
    _ACTIVE = (ctx, plan)
    try:
        yield
    finally:
        loop.train = orig
        _ACTIVE = None
