"""The tiny random weights of the family goldens, shared by tests/test_families.py and the script that made the
goldens with transformers (tests/golden/make_families.py), so both hold the same tensors without storing them."""
import math

import numpy as np
import torch

TOKENS = [1, 17, 42, 300, 5, 88, 260, 3, 119, 64, 250, 9]  # the input the golden logits are for


def random_weights(shapes: dict, seed: int) -> dict[str, torch.Tensor]:
    """Float32 tensors from numpy's legacy RandomState (a stream numpy keeps frozen), drawn in sorted name order:
    norm weights near 1, biases of size 0.2, matrices scaled by 1/sqrt(fan_in) so activations stay near 1."""
    rng = np.random.RandomState(seed)
    out = {}
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        x = rng.standard_normal(shape)
        if name.endswith("norm.weight"):
            x = 1.0 + 0.1 * x
        elif len(shape) == 1:
            x = 0.2 * x
        else:
            x = 0.5 / math.sqrt(shape[-1]) * x
        out[name] = torch.from_numpy(x.astype(np.float32))
    return out
