"""Shared test set-up: offline, CPU, pinned threads (the machine has 2 cores shared by everything)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MSTOOLS_TEST", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
