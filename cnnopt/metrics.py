"""Classification metrics from logits: single-label accuracy, and the multi-label family
(subset accuracy, micro/macro F1 and report R5's custom accuracy)."""

from __future__ import annotations

import torch


def classification_metrics(
    logits: torch.Tensor, y: torch.Tensor, multilabel: bool = False, threshold: float = 0.5
) -> dict[str, float]:
    if not multilabel:
        return {"accuracy": float((logits.argmax(1) == y).float().mean())}
    pred = torch.sigmoid(logits) > threshold
    true = y > 0.5
    tp = (pred & true).sum(0).float()
    fp = (pred & ~true).sum(0).float()
    fn = (~pred & true).sum(0).float()
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp_min(1))
    macro = float((2 * tp / (2 * tp + fp + fn).clamp_min(1)).mean())
    subset = float((pred == true).all(1).float().mean())
    # R5: a prediction counts as correct when it is a non-empty subset of the true labels.
    nonempty = pred.any(1)
    within = (pred & ~true).sum(1) == 0
    custom = float((nonempty & within).float().mean())
    return {
        "accuracy": subset,
        "subset_accuracy": subset,
        "micro_f1": micro,
        "macro_f1": macro,
        "custom_accuracy": custom,
    }


def per_class_report(pred: torch.Tensor, y: torch.Tensor, classes: list[str]) -> dict:
    """Precision, recall, F1 and support per class, plus the confusion matrix (rows: true)."""
    k = len(classes)
    cm = torch.bincount(y * k + pred, minlength=k * k).view(k, k)
    tp = cm.diag().float()
    precision = tp / cm.sum(0).clamp_min(1)
    recall = tp / cm.sum(1).clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return {
        "classes": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
