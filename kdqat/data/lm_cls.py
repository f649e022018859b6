"""GLUE-style classification as language modelling for OPT (TSLD NLU table; SPEC §7.6, §8.3, §12.11).

No code or prompt was released for this table, so the template is the suite's choice: the one
instruction format of the released TSLD code (the Alpaca "no-input" prompt of
:mod:`kdqat.data.instruct`) with a task question as instruction and the label WORD as response::

    Below is an instruction that describes a task. Write a response that appropriately completes
    the request.\\n\\n### Instruction:\\n{instruction}\\n\\n### Response: {word}{eos}

``instruction`` (``{a}`` / ``{b}`` = the task's ``text_a`` / ``text_b`` columns) and label words
(indexed by the GLUE label id; the response is ``" " + word``):

    cola  'Is the following sentence grammatically acceptable? Answer yes or no.\\nSentence: {a}'
          0 -> no, 1 -> yes
    sst2  'What is the sentiment of the following sentence? Answer positive or negative.\\nSentence: {a}'
          0 -> negative, 1 -> positive
    mrpc  'Do the following two sentences mean the same thing? Answer yes or no.\\nSentence 1: {a}\\nSentence 2: {b}'
          0 -> no, 1 -> yes                      (1 = equivalent)
    rte   'Does the premise entail the hypothesis? Answer yes or no.\\nPremise: {a}\\nHypothesis: {b}'
          0 -> yes, 1 -> no                      (0 = entailment)

Training / perplexity examples are encoded by :func:`kdqat.data.instruct.encode` (every prompt token
masked with −100 except the last one, as the released instruction code), so PPL = exp(mean CE over
the last prompt token, the label word and EOS). ACC (:func:`score_choices`): for every class c the
summed log-likelihood of the tokens of ``" " + word_c`` after the prompt (no EOS); the prediction is
the argmax (ties -> the lower class id). CoLA reports the Matthews correlation of these predictions
(SPEC §12.11). Splits: GLUE ``train`` for fine-tuning, ``validation`` for ACC/PPL (test labels are
hidden).
"""
from __future__ import annotations

import torch

from kdqat.data.instruct import build_prompt, encode

TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cola": ("Is the following sentence grammatically acceptable? Answer yes or no.\nSentence: {a}", ("no", "yes")),
    "sst2": ("What is the sentiment of the following sentence? Answer positive or negative.\nSentence: {a}",
             ("negative", "positive")),
    "mrpc": ("Do the following two sentences mean the same thing? Answer yes or no.\n"
             "Sentence 1: {a}\nSentence 2: {b}", ("no", "yes")),
    "rte": ("Does the premise entail the hypothesis? Answer yes or no.\nPremise: {a}\nHypothesis: {b}",
            ("yes", "no")),
}


def glue_name(task: str) -> str:
    """``"lm_cola"`` -> ``"cola"``; ValueError for a task without a template."""
    name = task[3:] if task.startswith("lm_") else task
    if name not in TEMPLATES:
        raise ValueError(f"no LM-classification template for task {task!r}; valid: "
                         f"{', '.join('lm_' + t for t in TEMPLATES)}")
    return name


def format_record(task: str, record: dict, text_a: str, text_b: str | None) -> tuple[str, tuple[str, ...], int]:
    """``(prompt, responses, label)``: the full Alpaca prompt, ``" " + word`` per class, gold id."""
    template, words = TEMPLATES[glue_name(task)]
    instruction = template.format(a=record[text_a], b=record[text_b] if text_b else "")
    label = int(record["label"])
    if not 0 <= label < len(words):
        raise ValueError(f"task {task}: label {label!r} outside 0..{len(words) - 1} (unlabelled split?)")
    return build_prompt(instruction), tuple(" " + w for w in words), label


def encode_record(tokenizer, task: str, record: dict, text_a: str, text_b: str | None,
                  max_len: int | None = 512) -> dict:
    """One example: ``input_ids`` / ``labels`` (prompt + gold word + EOS, prompt masked but its
    last token), ``label`` and, for scoring, ``choices`` (ids of prompt + word per class, no EOS)
    and ``n_prompt`` = len(tok(prompt)). Raises if an example exceeds ``max_len`` (truncation would
    cut the answer) or the tokenizer merges a word into the prompt's last token."""
    prompt, responses, label = format_record(task, record, text_a, text_b)
    ex = encode(tokenizer, prompt, responses[label])
    if max_len is not None and len(ex["input_ids"]) > max_len:
        raise ValueError(f"task {task}: an example has {len(ex['input_ids'])} tokens > max_len {max_len}")
    head = tokenizer(prompt)["input_ids"]
    choices = [tokenizer(prompt + r)["input_ids"] for r in responses]
    for r, ids in zip(responses, choices):
        if ids[:len(head)] != head or len(ids) == len(head):
            raise ValueError(f"task {task}: the tokenizer does not keep {r!r} apart from the prompt")
    return {**ex, "label": label, "choices": choices, "n_prompt": len(head)}


def load_lm_cls_task(task, tokenizer, max_len: int | None = 512, *, cache_dir: str | None = None,
                     data_path: str | None = None) -> dict[str, list[dict]]:
    """``{"train": [...], "eval": [...]}`` encoded examples (:func:`encode_record`) of an
    ``lm_<glue>`` task (a name or its ``TaskSpec``). Hub access via
    :func:`kdqat.data.encoder.load_raw_splits` (``DataUnavailable`` within seconds offline;
    ``data_path``: a ``DatasetDict.save_to_disk`` folder with the GLUE columns)."""
    from kdqat.data.encoder import load_raw_splits
    from kdqat.data.tasks import get_task

    spec = get_task(task) if isinstance(task, str) else task
    glue_name(spec.name)
    raw = load_raw_splits(spec, cache_dir=cache_dir, data_path=data_path)

    def enc(split):
        return [encode_record(tokenizer, spec.name, r, spec.text_a, spec.text_b, max_len) for r in raw[split]]
    return {"train": enc(spec.train_split), "eval": enc(spec.dev_splits[0])}


@torch.no_grad()
def score_choices(model, examples: list[dict], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Log-likelihood ``[N, C]`` (fp32) of every class word given the prompt (module docstring).

    Entry ``[i, c] = Σ_{p = n_prompt}^{len−1} log softmax(logits[p − 1])[ids[p]]`` with
    ``ids = examples[i]["choices"][c]``; sequences are right-padded in batches of ``batch_size``
    (attention mask on the real tokens), so padding never reaches a scored position.
    """
    seqs = [(i, c, ids, ex["n_prompt"]) for i, ex in enumerate(examples) for c, ids in enumerate(ex["choices"])]
    n_cls = len(examples[0]["choices"]) if examples else 0
    out = torch.zeros(len(examples), n_cls, dtype=torch.float32)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start:start + batch_size]
            width = max(len(s[2]) for s in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, _, x, _) in enumerate(chunk):
                ids[r, :len(x)] = torch.tensor(x)
                mask[r, :len(x)] = 1
            logp = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                         use_cache=False).logits.float().log_softmax(-1).cpu()
            for r, (i, c, x, n) in enumerate(chunk):
                pos = torch.arange(n, len(x))
                out[i, c] = logp[r, pos - 1, ids[r, pos]].sum()
    finally:
        model.train(was_training)
    return out
