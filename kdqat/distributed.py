"""Data parallelism inside one job: DDP over ``world`` processes, process groups set up by ``accelerate``.

A job runs data parallel when ``runners.worker`` is launched by ``torchrun --nproc-per-node W``
(``resources.device_plan = "ddp"``, ``resources.gpus = W``). Every rank calls :func:`init`
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
``batch_reduction = "sum"``, SPEC §4.2) give 1/W of the single-process gradient (AdamW is nearly
invariant to the scale, clipping is not); (c) B not divisible by W weights unequal shards
equally (gradients and logged loss). Every rank evaluates the full dev set (identical weights,
identical metrics); only rank 0 writes the record (``runners.worker``).

FSDP plan (documented, NOT implemented or tested here: it needs several GPUs): for the 7B
teacher + student of TSLD (SPEC §7), use ``torch.distributed.fsdp.fully_shard`` per decoder
layer then on the root, for the student (bf16 params, fp32 or bf16 optimizer state per the
``precision`` switch) AND separately for the teacher, whose forward runs under
``torch.inference_mode`` and which is never passed to the optimizer. Fake-quant sees the
all-gathered full weights in forward (per-channel scales stay exact); only the student's
sharded parameters are in the optimizer. Memory per GPU on 8 H100s (bf16 everything, SPEC §7.2):
student 7B x (2 param + 2 grad + 4 Adam) B / 8 = 6.7 GB, teacher 13.4 GB / 8 = 1.7 GB, plus
activations. Seam: the same ``kdqat.train.train`` wrapper, calling ``fully_shard`` instead of
``replicate`` (and on the teacher), plus sharded checkpoints (``torch.distributed.checkpoint``).
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


@contextmanager
def data_parallel(ctx: Dist):
    """Install the seam (module docstring) around ``kdqat.train.train`` for the duration of a
    job: the trained model is wrapped by composable DDP, ``loss_fn`` gets rank ``ctx.rank``'s
    shard of each batch and returns :func:`global_mean` of its loss. Restored on exit; with
    ``ctx.world == 1`` nothing is changed."""
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
            replicate(model, find_unused_parameters=True, **({"device_id": dev} if dev.type == "cuda" else {}))
            wrapped.add(id(model))

        def sharded_loss(batch, phase, step):
            loss, terms = loss_fn(shard(batch, ctx.rank, ctx.world), phase, step)
            return global_mean(loss, ctx.world), terms

        return orig(model, data, cfg, sharded_loss, *args, **kwargs)

    loop.train = train
    try:
        yield
    finally:
        loop.train = orig
