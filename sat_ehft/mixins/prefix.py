"""Prefix-tuning in the P-tuning v2 style: trained key/value prefixes in every layer's attention.

A `non_conflict` attention_fn hook: it prepends the prefix keys/values and unmasks them, then calls
whatever attention kernel is below it.
"""

import torch
from sat.model.base_model import BaseMixin, non_conflict
from sat.transformer_defaults import attention_fn_default


class PrefixTuningMixin(BaseMixin):
    def __init__(self, num_layers, num_heads, head_size, prefix_len, init_std=0.01):
        super().__init__()
        self.prefix_len = prefix_len
        # [2 (key, value), heads, prefix_len, head_size] per layer, as SAT's PrefixTuningMixin.
        self.prefix = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.randn(2, num_heads, prefix_len, head_size) * init_std)
             for _ in range(num_layers)])

    @non_conflict
    def attention_fn(self, q, k, v, mask, dropout_fn, old_impl=attention_fn_default, **kw_args):
        prefix_k, prefix_v = self.prefix[int(kw_args["layer_id"])].to(k.dtype)
        packing = kw_args.get("packing")
        if packing is not None:  # packed [1, heads, total, head]: each sequence's keys get the prefix in front
            kw_args["packing"], index = packing.with_key_prefix(self.prefix_len)
            k, v = (torch.cat([p, t[0]], dim=1)[:, index].unsqueeze(0) for p, t in ((prefix_k, k), (prefix_v, v)))
            return old_impl(q, k, v, mask, dropout_fn, **kw_args)
        batch = k.shape[0]
        k = torch.cat([prefix_k.expand(batch, -1, -1, -1), k], dim=2)
        v = torch.cat([prefix_v.expand(batch, -1, -1, -1), v], dim=2)
        if mask.numel() > 1:  # [b, 1, 1, s]: the prefix is always visible
            visible = torch.ones(*mask.shape[:-1], self.prefix_len, dtype=mask.dtype, device=mask.device)
            mask = torch.cat([visible, mask], dim=-1)
        return old_impl(q, k, v, mask, dropout_fn, **kw_args)
