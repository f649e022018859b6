"""Zero-shot lm-evaluation-harness 0.4.13 scoring of an in-memory causal LM (SPEC §7.5, §9 items 27, 30).

The official TSLD code targets the lm-eval 0.3 ``BaseLM`` API (and crashes as released); this
bridge uses the 0.4 API instead: ``HFLM(pretrained=<model object>, tokenizer=<tokenizer>)`` and
``simple_evaluate(num_fewshot=0)``, so a fake-quantized student is scored as it sits in memory.

* Multiple-choice tasks: per choice the summed log-likelihood of the continuation tokens given
  the context (``acc`` = argmax matches gold; ``acc_norm`` divides by the choice's length in
  characters). Generation tasks (GSM8K): greedy ``generate_until`` + exact match.
* ``include_path``: a folder of local task YAMLs; the built-in task index (~10 s to scan) is then
  skipped (``include_defaults=False``). Local YAMLs must give absolute ``data_files`` paths
  (lm-eval resolves them against the working directory): :func:`render_task_dir` writes such a
  folder from templates that say ``@TASK_DIR@``.
* ``vocab_limit``: the official adaptor cuts OPT logits to the first 50257 entries (SPEC §7.5);
  pass ``vocab_limit=50257`` to do the same (a forward hook on the output embedding).
* Hub access: while the hub is unreachable (and offline mode is not set) the run is switched to
  offline mode, so missing hub data raises ``DataUnavailable`` at once; local tasks still load.
* Side effects are undone: the model's train/eval mode and every RNG state (lm-eval reseeds
  python/numpy/torch) are restored afterwards.

Returns ``{task: {metric: value}}`` with lm-eval's own values (accuracies in [0, 1]); a metric
under a filter other than ``none`` keeps the filter as ``"metric,filter"``; stderr entries are
dropped (bootstrap is off).
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

PLACEHOLDER = "@TASK_DIR@"


def render_task_dir(template_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy every file of ``template_dir`` into ``out_dir``, replacing ``@TASK_DIR@`` in ``*.yaml``
    by the absolute ``out_dir`` (so ``data_files`` are absolute); returns ``out_dir``."""
    src, dst = Path(template_dir), Path(out_dir).resolve()
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and f.suffix in (".yaml", ".yml"):
            (dst / f.name).write_text(f.read_text().replace(PLACEHOLDER, str(dst)))
        elif f.is_file():
            shutil.copyfile(f, dst / f.name)
    return dst


@contextlib.contextmanager
def _offline_if_unreachable():
    """Force ``datasets``/``huggingface_hub`` offline while the hub is unreachable, so that a
    missing hub dataset fails at once (instead of ~25 s of retries) and local tasks still load."""
    import datasets
    from huggingface_hub import constants

    from kdqat import hub

    saved = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    if not saved[0] and not hub.hub_reachable():
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _flatten(task_results: dict) -> dict[str, float]:
    out = {}
    for key, value in task_results.items():
        if "," not in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        if metric.endswith("_stderr"):
            continue
        out[metric if filt == "none" else key] = float(value)
    return out


def evaluate_lm(model, tokenizer, tasks: list[str], include_path: str | Path | None = None,
                limit: int | float | None = None, batch_size: int = 1,
                vocab_limit: int | None = None) -> dict[str, dict[str, float]]:
    """Zero-shot lm-eval metrics of ``model`` on ``tasks`` (module docstring).

    ``limit``: first ``limit`` documents per task (int) or a fraction. Unreachable hub data of a
    built-in task raises ``kdqat.data.DataUnavailable`` naming the task.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from kdqat.data import DataUnavailable
    from kdqat.seed import rng_state, set_rng_state

    if include_path is not None:
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
    else:
        manager = TaskManager()
    state, was_training = rng_state(), model.training
    hook = None
    if vocab_limit is not None:
        hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: o[..., :vocab_limit])
    try:
        with _offline_if_unreachable():
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            res = simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, limit=limit, task_manager=manager,
                                  bootstrap_iters=0, log_samples=False)
    except ConnectionError as err:  # datasets' offline / unreachable-hub errors derive from it
        raise DataUnavailable(f"lm-eval data for tasks {list(tasks)} is not available here ({err}). Pre-cache "
                              f"the tasks' hub datasets on a connected machine (run lm_eval once with the same "
                              f"HF_HOME) and run with HF_DATASETS_OFFLINE=1.") from err
    finally:
        if hook is not None:
            hook.remove()
        model.train(was_training)
        set_rng_state(state)
    return {t: _flatten(res["results"][t]) for t in tasks}
