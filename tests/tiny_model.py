"""Tiny random Llama-family models for fast CPU tests (shared by the model, sampler and training tests)."""
import torch

from model import ModelConfig, Transformer


def tiny_config(**overrides) -> ModelConfig:
    """4 query heads sharing 2 kv heads, so grouped-query attention is exercised."""
    cfg = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
               rope_theta=10000.0, max_seq_len=256)
    cfg.update(overrides)
    return ModelConfig(**cfg)


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A float32 model in eval mode whose every weight (norms and biases too) is random but well scaled."""
    torch.manual_seed(seed)
    model = Transformer(tiny_config(**overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2 if p.dim() == 1 else 0.5 / p.shape[-1] ** 0.5)
    return model.eval()
