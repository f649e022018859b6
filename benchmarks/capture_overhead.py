"""Time cost of kdqat.capture on a BERT-base-shaped random model (fp32, train mode; ``--device``).

Measures one forward+backward (loss = sum of logits) for:
  eager        plain HF with attn_implementation="eager";
  eager+out    the same with output_attentions=True, output_hidden_states=True (HF's own way
               to expose probs/hidden; probs are after dropout there);
  capture      the eager model inside ``Capture(model, record=SITES)`` (every site kept alive
               through backward, as a KD step would; entering/leaving the context is timed too).
Prints the median seconds per step over ``--repeats`` runs (after one warm-up) and the ratios.

    python benchmarks/capture_overhead.py                 # 12 layers, 768, 12 heads, batch 8 x 128
    python benchmarks/capture_overhead.py --layers 2      # reduced size
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_overhead import time_interleaved  # noqa: E402  (one interleaved timer for the benchmarks)


def build(layers: int, hidden: int, heads: int, seq: int):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=max(512, seq),
                     attn_implementation="eager")
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg).train()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from kdqat.capture import SITES, Capture

    model = build(args.layers, args.hidden, args.heads, args.seq).to(args.device)
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=g),
             "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long)}
    batch["attention_mask"][: args.batch // 2, 3 * args.seq // 4:] = 0  # half the batch padded
    batch = {k: v.to(args.device) for k, v in batch.items()}

    def step(**flags):
        model.zero_grad(set_to_none=True)
        model(**batch, **flags).logits.sum().backward()

    def cap_step():
        with Capture(model, record=SITES) as cap:
            step()
            assert len(cap.records["probs"]) == args.layers

    walls = time_interleaved({"eager": step,
                              "eager+out": lambda: step(output_attentions=True, output_hidden_states=True),
                              "capture": cap_step}, args.repeats)["wall"]
    results = {name: statistics.median(t) for name, t in walls.items()}

    print(f"BERT-shaped: layers={args.layers} hidden={args.hidden} heads={args.heads} "
          f"batch={args.batch} seq={args.seq} device={args.device} threads={torch.get_num_threads()} repeats={args.repeats}")
    for name, sec in results.items():
        print(f"  {name:10s} {sec:8.4f} s/step   x{sec / results['eager']:.3f} vs eager")
    return results


if __name__ == "__main__":
    main()
