"""What a dormant unit is: one definition for the ReDo remedy that resets them (cl-trainer) and the
diagnostics that count them (cl-eval), so "ReDo reset 0 units" and "0 % dormant" mean the same.

A unit is one channel of a Qwen2/Llama MLP, ``act(gate(x)) * up(x)``: the input of ``down_proj``.
Its score is its mean |activation| over the probe tokens (Sokar et al. 2023); it is τ-dormant when
that is at most τ times its layer's average. Needs torch at call time (the model's forward pass);
importing this module does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def unit_scores(model: Any, tokenizer: Any, texts: Sequence[str]) -> tuple[list[np.ndarray], Any]:
    """Per layer, every MLP unit's mean |act(gate(x)) * up(x)| over the probe tokens; and the
    final hidden state at each prompt's last token (samples × hidden)."""
    import torch

    layers = model.model.layers
    sums = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    count = 0
    mask_holder: dict[str, torch.Tensor] = {}

    def hook(i: int) -> Any:
        def pre(_module: Any, args: tuple) -> None:
            h = args[0].abs().double() * mask_holder["m"][..., None]
            sums[i] += h.sum(dim=(0, 1))

        return pre

    handles = [
        layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)
    ]
    finals = []
    try:
        with torch.no_grad():
            for start in range(0, len(texts), 16):
                enc = tokenizer(
                    list(texts[start : start + 16]),
                    add_special_tokens=False,
                    padding=True,
                    padding_side="left",
                    return_tensors="pt",
                )
                mask_holder["m"] = enc["attention_mask"].double()
                count += int(enc["attention_mask"].sum())
                out = model(**enc, output_hidden_states=True)
                finals.append(out.hidden_states[-1][:, -1].double())
    finally:
        for h in handles:
            h.remove()
    return [(s / max(count, 1)).numpy() for s in sums], torch.cat(finals).numpy()


def dormant_mask(scores: np.ndarray, tau: float) -> np.ndarray:
    """τ-dormant units of one layer: mean |activation| at most τ times the layer's average (every
    unit of a layer that is silent altogether)."""
    mean = scores.mean()
    return scores <= tau * mean if mean > 0 else np.ones(len(scores), dtype=bool)
