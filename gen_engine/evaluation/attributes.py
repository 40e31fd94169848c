"""Attribute accuracy on the synthetic shapes data: colour and shape of generated images, judged by the
evaluation encoder's attribute heads (trained on real synthetic images)."""

from __future__ import annotations

import torch

from gen_engine.evaluation.registry import EvalContext, metric


@metric("attributes")
def attribute_accuracy(ctx: EvalContext) -> dict[str, float]:
    if not ctx.labels or not ctx.enc.heads:
        return {}
    with torch.no_grad():
        preds = ctx.enc.attributes(ctx.fake.float() / 127.5 - 1)
    return {f"{k}_acc": float((logits.argmax(1) == ctx.labels[k][: ctx.n]).float().mean())
            for k, logits in preds.items()}
