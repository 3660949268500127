"""Unpadded batches: the backbone runs on the real tokens only, packed into one [1, total] row.

A padded [b, s] batch with ~40% real tokens (RTE at length 512) spends most of its projection and MLP
FLOPs on padding. `pack` keeps the real tokens, laid end to end, and a `Packing` that says where each
sequence sits; only attention needs it. On CUDA attention runs per sequence through torch's nested
(jagged) tensors, which reach the varlen flash / memory-efficient kernels; on CPU, where nested
attention falls back to a slow per-sequence loop, the packed q/k/v are scattered back to the padded
layout for one masked SDPA call. `unpack` puts the final hidden states back in the [b, s, hidden]
layout that the head and the rest of the code expect.
"""

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Ragged:
    """Sequences of different lengths laid end to end, and where each token sits in the padded layout."""

    keep: torch.Tensor  # [b, s] bool: the real positions of the padded layout
    offsets: torch.Tensor  # [b + 1] int64: sequence i is packed[offsets[i]:offsets[i + 1]]
    real: torch.Tensor  # [total] int64: each packed token's flat index into the padded [b * s] layout

    @property
    def max_length(self):
        return self.keep.shape[1]  # an upper bound is all the varlen kernels need

    def nested(self, tensor):
        """SAT-layout [1, heads, total, head] -> a nested [b, heads, ragged, head] tensor."""
        values = tensor[0].transpose(0, 1).contiguous()  # [total, heads, head]; SAT's q/k/v are strided slices
        # Bounds given, so that the kernel choice needs no device sync (every sequence has its first token).
        nested = torch.nested.nested_tensor_from_jagged(values, self.offsets, min_seqlen=1, max_seqlen=self.max_length)
        return nested.transpose(1, 2)

    def padded(self, tensor):
        """SAT-layout [1, heads, total, head] -> [b, heads, s, head], zeros at the padding."""
        values = tensor[0].transpose(0, 1)
        batch, length = self.keep.shape
        padded = values.new_zeros(batch * length, *values.shape[1:]).index_copy(0, self.real, values)
        return padded.view(batch, length, *values.shape[1:]).transpose(1, 2)

    def packed(self, tensor):
        """[b, heads, s, head] -> SAT-layout [1, heads, total, head] (the inverse of `padded`)."""
        batch, heads, length, size = tensor.shape
        return tensor.transpose(1, 2).reshape(batch * length, heads, size)[self.real].transpose(0, 1).unsqueeze(0)


@dataclass(frozen=True)
class Packing:
    """The ragged layout of a packed batch's queries and, when prefixes lengthen them, of its keys."""

    tokens: Ragged
    keys: Ragged
    _key_prefixes: dict = field(init=False, default_factory=dict, repr=False, compare=False)

    def with_key_prefix(self, prefix_len):
        """(the packing of keys with `prefix_len` extra positions in front of every sequence, the index into
        cat([prefix, packed keys]) that lays them out: each sequence's prefix, then its own tokens).
        Built once per batch: every layer's prefix asks for the same layout."""
        if prefix_len not in self._key_prefixes:
            self._key_prefixes[prefix_len] = self._key_prefix_layout(prefix_len)
        return self._key_prefixes[prefix_len]

    def _key_prefix_layout(self, prefix_len):
        keep, offsets = self.tokens.keep, self.tokens.offsets
        batch, length = keep.shape
        starts = torch.arange(batch + 1, device=offsets.device) * prefix_len + offsets
        total = int(self.tokens.real.shape[0]) + batch * prefix_len  # a shape, so no device sync
        sequence = torch.repeat_interleave(torch.arange(batch, device=offsets.device), starts.diff(),
                                           output_size=total)
        position = torch.arange(total, device=offsets.device) - starts[sequence]  # within the sequence
        gather = torch.where(position < prefix_len, position, offsets[sequence] + position)  # token t is at t + prefix_len
        # The keys' own padded layout (used by the CPU route): each sequence's keys from its row's start.
        key_positions = torch.arange(length + prefix_len, device=keep.device)
        keys = Ragged(keep=key_positions < starts.diff()[:, None], offsets=starts,
                      real=sequence * (length + prefix_len) + position)
        return replace(self, keys=keys), gather

    def attention(self, query, key, value, dropout_p=0.0):
        """SDPA per sequence on SAT-layout [1, heads, total, head] tensors; the output in the same layout."""
        route = self.nested_attention if query.device.type == "cuda" else self.padded_attention
        return route(query, key, value, dropout_p)

    def nested_attention(self, query, key, value, dropout_p=0.0):
        """`attention` through nested tensors: varlen kernels, no padding anywhere (CUDA)."""
        output = F.scaled_dot_product_attention(self.tokens.nested(query), self.keys.nested(key),
                                                self.keys.nested(value), dropout_p=dropout_p)
        return output.transpose(1, 2).values().transpose(0, 1).unsqueeze(0)

    def padded_attention(self, query, key, value, dropout_p=0.0):
        """`attention` as one masked SDPA call on the padded layout (CPU, where it beats the nested loop)."""
        output = F.scaled_dot_product_attention(
            self.tokens.padded(query), self.keys.padded(key), self.keys.padded(value),
            attn_mask=self.keys.keep[:, None, None, :], dropout_p=dropout_p)
        return self.tokens.packed(output)


def pack(attention_mask, *token_rows):
    """(Packing, each [b, s] tensor of `token_rows` reduced to its real tokens as a [1, total] row)."""
    keep = attention_mask.bool()
    offsets = F.pad(torch.cumsum(keep.sum(1), 0), (1, 0))
    real = keep.flatten().nonzero().squeeze(1)  # one host sync per batch, shared by every row and layer
    tokens = Ragged(keep=keep, offsets=offsets, real=real)
    return Packing(tokens=tokens, keys=tokens), [row.flatten()[real].unsqueeze(0) for row in token_rows]


def unpack(hidden, packing):
    """[1, total, hidden] packed states -> [b, s, hidden] with zeros at the padding."""
    batch, length = packing.tokens.keep.shape
    padded = hidden.new_zeros(batch * length, hidden.shape[-1]).index_copy(0, packing.tokens.real, hidden[0])
    return padded.view(batch, length, -1)


def padded_states(hidden, kw_args):
    """The final hidden states in [b, s, hidden] layout, whether the forward pass was packed or not."""
    packing = kw_args.get("packing")
    return hidden if packing is None else unpack(hidden, packing)
