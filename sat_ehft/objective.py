"""Scores -> loss and predictions, by task objective (as the original code trained each task):
binary tasks one logit with BCE; CB cross-entropy over 3; COPA cross-entropy over the two choices'
scores; STS-B mean squared error on the score."""

import torch

from sat_ehft.hf_modeling import task_loss as loss  # noqa: F401  (one loss, shared with the exported classifier)


def predict(scores, objective):
    """Predicted class indices (or regression scores) from a batch of head outputs."""
    if objective == "regression":
        return scores.squeeze(-1).float()
    if objective == "binary":
        return (scores.squeeze(-1) > 0).long()
    return torch.argmax(scores, dim=-1)


def probabilities(scores, objective):
    """Each class's (or choice's) probability, [examples, classes], from a batch of head outputs; None for
    regression. A binary task's single logit is P(class 1)."""
    if objective == "regression":
        return None
    scores = scores.float()
    if objective == "binary":
        positive = torch.sigmoid(scores.squeeze(-1))
        return torch.stack([1 - positive, positive], dim=-1)
    return torch.softmax(scores, dim=-1)
