"""Cost of one QAT-KD training step against one full-precision fine-tune step (CPU, fp32).

Both steps are the ones the encoder recipes run (kdqat.recipes.encoder, kdqat.train), on the same
random BERT-base-shaped classifier (``--layers`` 12, hidden 768, 12 heads, 2 labels, sdpa
attention), batch 8 × length 128 with half the batch padded to 3/4 of the length:

  fp    fine-tune: forward with labels -> CE loss, backward, global-norm clip 1.0, AdamW, schedule;
  qat   W2A8 QAT-KD with Map+Output (γ = 1, form 1, SPEC §4.1, §12.1): teacher forward under
        no_grad inside ``Capture`` (probs, attn_sublayer, hidden), student forward with
        ``kim2022_w2a8`` fake quantization (TWN weights, A8 inputs, per-row TWN word embedding,
        A8 Q/K/V/probs inside attention), the KD loss, backward, BertAdam (per-tensor clip).

Time: the two steps alternate within every repeat (so load changes on a shared machine hit both
alike), one warm-up each; the ratio of the medians is printed (target ≤ 1.4) for wall time and for
process CPU time (the robust one on a busy machine, with the default single thread).

Memory: each variant runs alone in a fresh subprocess, which reads its RSS (``/proc/self/status``
VmRSS) after the imports and after building its models and optimizer, runs a warm-up and two
steps, and reads its peak RSS (VmHWM). Printed per variant: "total" = peak −
RSS after imports (model weights, optimizer state, activations, gradients) and "step" = peak −
RSS after the build (what the training step adds); and the qat/fp ratio of each.

    python benchmarks/step_overhead.py                   # BERT-base shape, 1 thread
    python benchmarks/step_overhead.py --layers 4        # reduced depth on a slow / busy machine
    python benchmarks/step_overhead.py --profile qat     # cProfile + torch op profile of one step
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def rss_mib() -> float:
    """Current resident set size (VmRSS), MiB."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident set size of this process image (VmHWM), MiB. Not ``getrusage``'s ru_maxrss,
    which a subprocess inherits from its parent across fork + exec on Linux."""
    return _status_mib("VmHWM")


def build_model(args):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                     intermediate_size=4 * args.hidden, num_labels=2, attn_implementation="sdpa")
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).to(getattr(args, "device", "cpu"))


def make_batch(args, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(args.batch, args.seq, dtype=torch.long)
    mask[: args.batch // 2, 3 * args.seq // 4:] = 0
    return {"input_ids": torch.randint(0, vocab, (args.batch, args.seq), generator=g), "attention_mask": mask,
            "token_type_ids": torch.zeros(args.batch, args.seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (args.batch,), generator=g), "lengths": mask.sum(-1)}


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def fp_step_fn(args, model=None):
    """The fine-tune step of ``kdqat.train`` with the teacher recipe's loss (AdamW, SPEC §1.3)."""
    from kdqat.optim import build_optimizer

    model = (model or build_model(args)).train()
    batch = to_device(make_batch(args, model.config.vocab_size), model.device)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    opt, sched = build_optimizer(model, "adamw", 2e-5, 0.0, 1000, 0.0)

    def step():
        model(**inputs, labels=batch["labels"]).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate():
        model.eval()
        model(**inputs)
        model.train()
    step.evaluate = evaluate          # one dev-batch forward (kdqat.evaluation runs eval mode, no grad)
    return step


def qat_step_fn(args, base=None, method: str = "map+output"):
    """The QAT-KD step of ``kdqat.recipes.encoder.qat_kd`` (``method``, default Map+Output; W2A8,
    BertAdam, SPEC §6.1). Returns (step, close): ``close`` leaves the two Capture contexts."""
    import copy

    from kdqat.capture import Capture
    from kdqat.kd.methods import build_method
    from kdqat.optim import build_optimizer
    from kdqat.quant import quantize_model

    teacher = base or build_model(args)
    student = copy.deepcopy(teacher).train()
    teacher.eval().requires_grad_(False)
    params = {"gamma": 1.0, "form": 1} if method == "map+output" else {}
    method = build_method(method, params, {"task_type": "classification"})
    report = quantize_model(student, "kim2022_w2a8", act_clip=2.5)
    batch = to_device(make_batch(args, teacher.config.vocab_size), teacher.device)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    kd_batch = {k: batch[k] for k in ("labels", "lengths", "attention_mask")}
    opt, sched = build_optimizer(student, "bertadam", 2e-5, 0.01, 1000, 0.1)
    tcap = Capture(teacher, record=method.needs).__enter__()
    scap = Capture(student, record=method.needs, act_quant_bits=report.act_bits,
                   act_quant_clip=report.act_clip).__enter__()

    def step():
        with torch.no_grad():
            t_logits = teacher(**inputs).logits
        scap.intervene(None, None)
        s_logits = student(**inputs).logits
        loss, _ = method({"logits": s_logits, **scap.records}, {"logits": t_logits, **tcap.records}, kd_batch)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def evaluate():                   # the quantized student on one dev batch, A8 inside Capture
        student.eval()
        student(**inputs)
        student.train()
    step.evaluate = evaluate

    def close():
        scap.__exit__(None, None, None)
        tcap.__exit__(None, None, None)
    return step, close


def time_interleaved(steps: dict, repeats: int) -> dict:
    """{"wall"|"cpu": {name: [seconds per call]}}, the steps alternating within every repeat, one
    warm-up call each. "cpu" is this process's CPU time (``time.process_time``): with one thread
    it is the robust figure on a shared machine, where wall time also counts waiting for a core."""
    times = {"wall": {name: [] for name in steps}, "cpu": {name: [] for name in steps}}
    for r in range(repeats + 1):
        for name, step in steps.items():
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            if r:
                times["wall"][name].append(time.perf_counter() - w0)
                times["cpu"][name].append(time.process_time() - c0)
    return times


def memory_child(args) -> None:
    """Subprocess body of the memory measurement (one variant); prints a JSON line."""
    r0 = rss_mib()
    step = fp_step_fn(args) if args.memory_child == "fp" else qat_step_fn(args)[0]
    r1 = rss_mib()
    for _ in range(3):
        step()
    peak = peak_rss_mib()
    print(json.dumps({"after_imports": r0, "after_build": r1, "peak": peak}))


def memory(args) -> dict:
    out = {}
    for variant in ("fp", "qat"):
        cmd = [sys.executable, __file__, "--memory-child", variant, "--layers", str(args.layers),
               "--hidden", str(args.hidden), "--heads", str(args.heads), "--batch", str(args.batch),
               "--seq", str(args.seq), "--threads", str(args.threads)]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        out[variant] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def profile(args, which: str) -> None:
    """cProfile (Python side) and torch.profiler (op side) of a few steps of one variant."""
    import cProfile
    import pstats

    step = fp_step_fn(args) if which == "fp" else qat_step_fn(args)[0]
    step()
    prof = cProfile.Profile()
    prof.enable()
    step()
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if str(getattr(args, "device", "cpu")).startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as p:
        step()
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
    if len(acts) > 1:
        print(p.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cuda: time on the GPU (memory is CPU RSS: use --no-memory)")
    ap.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurement")
    ap.add_argument("--profile", choices=["fp", "qat"], help="profile one variant instead")
    ap.add_argument("--memory-child", choices=["fp", "qat"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args)
    if args.profile:
        return profile(args, args.profile)

    import copy
    base = build_model(args)
    fp = fp_step_fn(args, copy.deepcopy(base))      # same initial weights as teacher and student
    qat, close = qat_step_fn(args, base)
    times = time_interleaved({"fp": fp, "qat": qat}, args.repeats)
    close()
    print(f"BERT-shaped: layers={args.layers} hidden={args.hidden} heads={args.heads} batch={args.batch} "
          f"seq={args.seq} threads={torch.get_num_threads()} repeats={args.repeats} "
          f"(load avg {os.getloadavg()[0]:.1f}, {os.cpu_count()} cpus)")
    out = {}
    for clock, per in times.items():
        med = {k: statistics.median(v) for k, v in per.items()}
        for k in ("fp", "qat"):
            print(f"  {clock:4s} {k:4s} median {med[k]:8.3f} s/step   all {', '.join(f'{t:.3f}' for t in per[k])}")
        ratio = med["qat"] / med["fp"]
        print(f"  {clock:4s} ratio qat/fp (medians): {ratio:.3f}   (target <= 1.4: {'ok' if ratio <= 1.4 else 'ABOVE'})")
        out[clock] = {"median_s": med, "ratio": ratio}
    if not args.no_memory:
        mem = memory(args)
        tot = {k: m["peak"] - m["after_imports"] for k, m in mem.items()}
        stp = {k: m["peak"] - m["after_build"] for k, m in mem.items()}
        for k in ("fp", "qat"):
            print(f"  {k:4s} peak RSS growth: total {tot[k]:8.1f} MiB   step {stp[k]:8.1f} MiB")
        print(f"  memory ratio qat/fp: total {tot['qat'] / tot['fp']:.3f}   step {stp['qat'] / stp['fp']:.3f}")
        out.update(memory=mem, memory_ratio_total=tot["qat"] / tot["fp"], memory_ratio_step=stp["qat"] / stp["fp"])
    return out


if __name__ == "__main__":
    main()
