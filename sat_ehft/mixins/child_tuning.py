"""Child-Tuning_D (Xu et al., 2021): only a "child network" of the backbone is updated, chosen as the
fraction `keep` of backbone parameter entries with the largest Fisher information (sum of squared
gradients of the loss over the training set). No forward change: the other entries' gradients are
zeroed by hooks, as the official ChildTuningAdamW masks them; the head is never masked.

Two ways to measure the Fisher information (config `child_tuning_fisher`): 'backbone', over every backbone
tensor in eval mode; 'original', as the EH-FT code did: over the transformer layers only (not the
embeddings or the final LayerNorm), in train mode (dropout on), each tensor's gradient clipped to norm 1
before squaring. Either way the mask keeps exactly the requested share of entries.
"""

import torch

from sat_ehft import objective
from sat_ehft.batching import collate, model_inputs
from sat_ehft.mixins.bitfit import is_backbone_parameter


def fisher_information(model, names, losses, clip=None):
    """{name: summed squared gradient} over the losses yielded by `losses` (one per training batch); with
    `clip`, each tensor's gradient is first scaled down to norm `clip` where it is longer."""
    params = dict(model.named_parameters())
    fisher = {name: torch.zeros_like(params[name]) for name in names}
    for loss in losses:
        model.zero_grad(set_to_none=True)
        loss.backward()
        for name in names:
            grad = params[name].grad
            if grad is not None:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params[name], clip)
                fisher[name] += grad.detach() ** 2
    model.zero_grad(set_to_none=True)
    return fisher


def top_fraction_masks(fisher, keep):
    """Boolean masks selecting the `keep` fraction of all entries with the largest Fisher information."""
    if not 0 < keep <= 1:
        raise ValueError(f"child-tuning keep fraction {keep} must lie in (0, 1]")
    scores = torch.cat([f.flatten().float() for f in fisher.values()])
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    chosen[torch.topk(scores, max(1, round(keep * scores.numel())), sorted=False).indices] = True  # exact count,
    parts = chosen.split([f.numel() for f in fisher.values()])  # even where many entries tie (e.g. at zero)
    return {name: part.view_as(f) for (name, f), part in zip(fisher.items(), parts)}


def install_gradient_masks(model, masks):
    """Zero the gradients outside each mask from now on; returns the hook handles."""
    params = dict(model.named_parameters())
    return [params[name].register_hook(lambda grad, mask=mask: grad * mask.to(grad.dtype))
            for name, mask in masks.items()]


def fisher_names(model, fisher):
    """The tensors whose Fisher information chooses the child network."""
    names = [n for n, p in model.named_parameters() if p.requires_grad and is_backbone_parameter(n)]
    return [n for n in names if n.startswith("transformer.layers.")] if fisher == "original" else names


def mask_to_child_network(model, task, features, batch_size, keep, pad_id, fisher="backbone"):
    """Child-Tuning_D: from now on only the backbone entries of highest Fisher information get gradients.
    Every data-parallel rank picks the same entries: in eval mode there is no dropout, and in train mode
    ('original') every rank draws the same dropout from the run's seed."""
    names = fisher_names(model, fisher)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train(fisher == "original")

    def losses():
        for start in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in collate(features[start:start + batch_size], pad_id).items()}
            yield objective.loss(model.encode(**model_inputs(batch)), batch["labels"], task.objective)

    masks = top_fraction_masks(fisher_information(model, names, losses(), 1.0 if fisher == "original" else None), keep)
    install_gradient_masks(model, masks)
    model.train()
    return masks
