"""Child-Tuning_D (Xu et al., 2021): only a "child network" of the backbone is updated, chosen as the
fraction `keep` of backbone parameter entries with the largest Fisher information (sum of squared
gradients of the loss over the training set). No forward change: the other entries' gradients are
zeroed by hooks, as the official ChildTuningAdamW masks them; the head is never masked.

Two ways to measure the Fisher information (config `child_tuning_fisher`): 'backbone', over every backbone
tensor in eval mode; 'original', as the EH-FT code did: over the transformer layers only (not the
embeddings or the final LayerNorm), in train mode (dropout on), each tensor's gradient clipped to norm 1
before squaring. Either way the mask keeps exactly the requested share of entries.

Config `child_tuning_mask: false` runs it as the original code did: the Fisher is measured (and what the
original's selection saw is reported: it summed fp16 squares of fp16 gradients, most of which underflow to 0,
then kept the entries at or above the 90th percentile), but the mask never reached the optimizer, which
stepped fp32 copies of the parameters the mask was keyed on, so every entry trains.
"""

from typing import NamedTuple

import numpy as np
import torch

from sat_ehft import objective
from sat_ehft.batching import collate, model_inputs
from sat_ehft.mixins.bitfit import is_backbone_parameter


class FisherSums(NamedTuple):
    fp32: dict  # {name: summed squared gradient}
    fp16: dict  # the same summed as the original code did: each gradient in fp16, squared and added in fp16


def fisher_information(model, names, losses, clip=None):
    """FisherSums over the losses yielded by `losses` (one per training batch); with `clip`, each tensor's
    gradient is first scaled down to norm `clip` where it is longer."""
    params = dict(model.named_parameters())
    fisher = FisherSums({name: torch.zeros_like(params[name]) for name in names},
                        {name: torch.zeros_like(params[name], dtype=torch.float16) for name in names})
    for loss in losses:
        model.zero_grad(set_to_none=True)
        loss.backward()
        for name in names:
            grad = params[name].grad
            if grad is not None:
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params[name], clip)
                fisher.fp32[name] += grad.detach() ** 2
                fisher.fp16[name] += grad.detach().half() ** 2
    model.zero_grad(set_to_none=True)
    return fisher


def original_selection(fp16_sums, keep):
    """What the original code's selection saw in its fp16 Fisher: the share of entries that are not 0, and the
    share its rule (at or above the (1 - keep) percentile, numpy's interpolation) would have kept."""
    values = torch.cat([f.flatten().float() for f in fp16_sums.values()]).numpy()
    threshold = np.percentile(values, 100 * (1 - keep))
    return {"fisher_nonzero_fp16": float(np.mean(values > 0)), "kept_by_original_rule": float(np.mean(values >= threshold))}


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


def mask_to_child_network(model, task, features, batch_size, pad_id, config):
    """Child-Tuning_D: measure the Fisher information and (config child_tuning_mask) from now on let only the
    `child_tuning_keep` share of backbone entries with the highest get gradients. Every data-parallel rank
    picks the same entries: in eval mode there is no dropout, and in train mode ('original' Fisher) every rank
    draws the same dropout from the run's seed. Returns what a stage's done.json reports of it."""
    original = config.child_tuning_fisher == "original"
    names = fisher_names(model, config.child_tuning_fisher)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train(original)

    def losses():
        for start in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in collate(features[start:start + batch_size], pad_id).items()}
            yield objective.loss(model.encode(**model_inputs(batch)), batch["labels"], task.objective)

    fisher = fisher_information(model, names, losses(), 1.0 if original else None)
    if config.child_tuning_mask:
        install_gradient_masks(model, top_fraction_masks(fisher.fp32, config.child_tuning_keep))
    model.train()
    return {"mask_applied": config.child_tuning_mask, "keep": config.child_tuning_keep,
            **original_selection(fisher.fp16, config.child_tuning_keep)}
