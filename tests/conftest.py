"""Test-wide settings: never touch the hub, keep MLflow and run records out of the repo, one thread.

Tiny models run several times faster on one thread than on two busy ones (no OpenMP spin-waits),
and one thread also keeps CPU results independent of the machine's core count.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
