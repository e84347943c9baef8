"""How the condition vector of a class-conditional model is made up: class embedding vs β embedding.

Every family builds its condition as ``class_table[c] (+ β_embedder(β))`` (:func:`gft_tokens.conditioning.embed_condition`)
and the network reads it through a normalisation. When the β embedding is much larger than the spread between
class rows, the class is a small perturbation of the condition the network sees and it is learned late — what GFT
from scratch at the paper's single learning rate shows on the embedded data (docs/gft_vs_cfg). :func:`condition_report`
measures it on any exported model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import GFTError

REPORT_BETAS = (0.1, 0.25, 0.5, 1.0)


def class_table(model: nn.Module) -> torch.Tensor:
    """The (num_classes + 1, D) class-embedding rows of ``model`` (the last row is the null class)."""
    rows = model.config.num_classes + 1
    dim = None
    if getattr(model, "beta_embedder", None) is not None:
        dim = model.beta_embedder.mlp[-1].out_features
    for _, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Embedding) and weight is not None and weight.shape[0] == rows \
                and (dim is None or weight.shape[1] == dim):
            return weight.detach().float()
    raise GFTError(f"{type(model).__name__} has no class-embedding table of {rows} rows")


@torch.no_grad()
def condition_report(model: nn.Module, betas=REPORT_BETAS) -> dict:
    """Norms of the condition's parts: class rows (mean norm, mean distance from the class mean — the part that
    tells classes apart), the null row, and for a GFT model the β embedding at each β and its ratio to the class
    spread."""
    table = class_table(model)
    classes = table[:-1]
    spread = (classes - classes.mean(0)).norm(dim=1).mean().item()
    report = {"class_row_norm": classes.norm(dim=1).mean().item(), "class_spread": spread,
              "null_row_norm": table[-1].norm().item(), "beta": {}}
    embedder = getattr(model, "beta_embedder", None)
    if embedder is not None:
        for b in betas:
            norm = embedder(torch.tensor([float(b)], device=table.device)).float().norm().item()
            report["beta"][str(b)] = {"norm": norm, "ratio_to_class_spread": norm / max(spread, 1e-12)}
    return report
