"""Unpadded batches: the backbone runs on the real tokens only, packed into one [1, total] row.

A padded [b, s] batch with ~40% real tokens (RTE at length 512) spends most of its projection and MLP
FLOPs on padding. `pack` keeps the real tokens, laid end to end, and a `Packing` that says where each
sequence starts; attention then runs per sequence through torch's nested (jagged) tensors, which reach
the varlen flash / memory-efficient kernels on GPU and a per-sequence fallback on CPU. `unpack` puts the
final hidden states back in the [b, s, hidden] layout that the head and the rest of the code expect.
"""

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Packing:
    """Where the sequences of a packed row begin and end, for queries and (with prefixes) keys."""

    keep: torch.Tensor  # [b, s] bool: the real tokens of the padded batch
    offsets: torch.Tensor  # [b + 1] int64: query sequence i is packed[offsets[i]:offsets[i + 1]]
    max_length: int  # longest query sequence
    key_offsets: torch.Tensor = None  # [b + 1] int64, when keys differ from queries (prefix-tuning)
    key_max_length: int = None

    @property
    def batch_size(self):
        return self.keep.shape[0]

    def with_key_prefix(self, prefix_len):
        """The packing of keys that carry `prefix_len` extra positions in front of every sequence."""
        shift = torch.arange(self.batch_size + 1, device=self.offsets.device) * prefix_len
        return replace(self, key_offsets=self.offsets + shift, key_max_length=self.max_length + prefix_len)

    def prefix_gather_index(self, prefix_len):
        """Index into cat([prefix (prefix_len rows), packed keys]) that lays each sequence's keys out as
        its prefix followed by its own tokens, sequence after sequence."""
        lengths = self.offsets.diff()
        sequence = torch.repeat_interleave(torch.arange(self.batch_size, device=lengths.device), lengths + prefix_len)
        start = self.offsets[:-1] + torch.arange(self.batch_size, device=lengths.device) * prefix_len
        position = torch.arange(len(sequence), device=lengths.device) - start[sequence]  # within the sequence
        token = self.offsets[:-1][sequence] + position - prefix_len  # its row in the packed keys
        return torch.where(position < prefix_len, position, prefix_len + token)

    def attention(self, query, key, value, dropout_p=0.0):
        """SDPA per sequence on SAT-layout [1, heads, total, head] tensors; the output in the same layout."""
        query = self._nested(query, self.offsets, self.max_length)
        key_offsets, key_max = (self.offsets, self.max_length) if self.key_offsets is None else \
            (self.key_offsets, self.key_max_length)
        key, value = (self._nested(t, key_offsets, key_max) for t in (key, value))
        output = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout_p)
        return output.transpose(1, 2).values().transpose(0, 1).unsqueeze(0)

    @staticmethod
    def _nested(tensor, offsets, max_length):
        """[1, heads, total, head] -> a nested [b, heads, ragged, head] tensor."""
        values = tensor[0].transpose(0, 1).contiguous()  # [total, heads, head]; SAT's q/k/v are strided slices
        nested = torch.nested.nested_tensor_from_jagged(values, offsets, max_seqlen=max_length)
        return nested.transpose(1, 2)


def pack(attention_mask, *token_rows):
    """(Packing, each [b, s] tensor of `token_rows` reduced to its real tokens as a [1, total] row)."""
    keep = attention_mask.bool()
    lengths = keep.sum(1)
    offsets = F.pad(torch.cumsum(lengths, 0), (1, 0))
    packing = Packing(keep=keep, offsets=offsets, max_length=attention_mask.shape[1])
    real = keep.flatten().nonzero().squeeze(1)  # one host sync per batch, shared by every row
    return packing, [row.flatten()[real].unsqueeze(0) for row in token_rows]


def unpack(hidden, packing):
    """[1, total, hidden] packed states -> [b, s, hidden] with zeros at the padding."""
    padded = hidden.new_zeros(*packing.keep.shape, hidden.shape[-1])
    return padded.masked_scatter(packing.keep.unsqueeze(-1), hidden[0])


def padded_states(hidden, kw_args):
    """The final hidden states in [b, s, hidden] layout, whether the forward pass was packed or not."""
    packing = kw_args.get("packing")
    return hidden if packing is None else unpack(hidden, packing)
