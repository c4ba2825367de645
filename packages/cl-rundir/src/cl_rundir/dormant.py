"""What a dormant unit is: one definition for the ReDo remedy that resets them (cl-trainer) and the
diagnostics that count them (cl-eval), so "ReDo reset 0 units" and "0 % dormant" mean the same.

A unit is one channel of a Qwen2/Llama MLP, ``act(gate(x)) * up(x)``: the input of ``down_proj``.
Its score is its mean |activation| over the probe tokens (Sokar et al. 2023); it is τ-dormant when
that is at most τ times its layer's average. Needs torch at call time (the model's forward pass);
importing this module does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class UnitSums:
    """Σ |act(gate(x)) * up(x)| per MLP unit over the positions ``select`` chose (float64 sums),
    from pre-hooks on every layer's down projection, removed on exit: a caller's own forward pass
    (cl-eval's teacher-forced solutions) yields the scores without a pass of its own."""

    def __init__(self, model: Any) -> None:
        import torch

        self.layers = model.model.layers
        self.sums = [
            torch.zeros(m.mlp.down_proj.in_features, dtype=torch.float64) for m in self.layers
        ]
        self.count = 0
        self.mask: Any = None
        self.handles: list[Any] = []

    def _hook(self, i: int) -> Callable[[Any, tuple], None]:
        def pre(_module: Any, args: tuple) -> None:
            import torch

            self.sums[i] += torch.sum(
                args[0].abs() * self.mask[..., None], (0, 1), dtype=torch.float64
            )

        return pre

    def __enter__(self) -> UnitSums:
        self.handles = [
            m.mlp.down_proj.register_forward_pre_hook(self._hook(i))
            for i, m in enumerate(self.layers)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def select(self, mask: Any) -> None:
        """The positions (batch × sequence, 0/1) the next forward pass counts."""
        self.mask = mask.float()
        self.count += int(mask.sum())

    def means(self) -> list[np.ndarray]:
        """Per layer, every unit's score: its mean |activation| over the selected positions."""
        return [(s / max(self.count, 1)).numpy() for s in self.sums]


def unit_scores(model: Any, tokenizer: Any, texts: Sequence[str]) -> tuple[list[np.ndarray], Any]:
    """Per layer, every MLP unit's mean |act(gate(x)) * up(x)| over the probe tokens; and the
    final hidden state at each prompt's last token (samples × hidden)."""
    import torch

    finals = []
    with torch.no_grad(), UnitSums(model) as units:
        for start in range(0, len(texts), 16):
            enc = tokenizer(
                list(texts[start : start + 16]),
                add_special_tokens=False,
                padding=True,
                padding_side="left",
                return_tensors="pt",
            )
            units.select(enc["attention_mask"])
            out = model.model(**enc)  # no output layer: its logits would be batch × vocab
            finals.append(out.last_hidden_state[:, -1].double())
    return units.means(), torch.cat(finals).numpy()


def dormant_mask(scores: np.ndarray, tau: float) -> np.ndarray:
    """τ-dormant units of one layer: mean |activation| at most τ times the layer's average (every
    unit of a layer that is silent altogether)."""
    mean = scores.mean()
    return scores <= tau * mean if mean > 0 else np.ones(len(scores), dtype=bool)
