"""Shared test set-up: repository root on sys.path, few torch threads (the CI machine has 2 cores)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(2)
