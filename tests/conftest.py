"""Shared test settings: the embedded models are tiny, so one CPU thread is fastest and avoids
oversubscribing the 2-core CI machine."""

import torch

torch.set_num_threads(1)
