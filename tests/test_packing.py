"""Packed (unpadded) rows: the layout bookkeeping and both attention routes against hand-built references."""

import pytest
import torch

from sat_ehft.packing import pack, unpack


def test_pack_keeps_the_real_tokens_in_order_and_unpack_restores_the_layout():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    ids = torch.arange(12).view(3, 4)
    packing, (packed,) = pack(mask, ids)
    assert packed.tolist() == [[0, 1, 2, 4, 8, 9, 10, 11]]
    assert packing.tokens.offsets.tolist() == [0, 3, 4, 8] and packing.tokens.max_length == 4
    hidden = torch.randn(1, 8, 5, requires_grad=True)
    restored = unpack(hidden, packing)
    assert torch.equal(restored[mask.bool()], hidden[0].detach())
    assert (restored[~mask.bool()] == 0).all()
    restored.sum().backward()
    assert torch.equal(hidden.grad, torch.ones_like(hidden))


def test_key_prefix_layout_puts_each_prefix_in_front_of_its_sequence():
    packing, _ = pack(torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]))
    keys, gather = packing.with_key_prefix(2)
    # cat([prefix rows 0..1, packed keys]) indexed: P0 P1 s0t0 s0t1 s0t2 | P0 P1 s1t0 | P0 P1 s2t0 s2t1
    assert gather.tolist() == [0, 1, 2, 3, 4, 0, 1, 5, 0, 1, 6, 7]
    assert keys.keys.offsets.tolist() == [0, 5, 8, 12]
    assert keys.keys.keep.tolist() == [[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]]
    assert keys.keys.real.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13]  # flat in [3, 5]
    assert keys.tokens is packing.tokens
    assert packing.with_key_prefix(2)[0] is keys  # built once per batch, shared by every layer


def per_sequence_attention(q, k, v, query_offsets, key_offsets):
    """SDPA on each sequence's own slice, concatenated: the reference."""
    outputs = [torch.nn.functional.scaled_dot_product_attention(
        q[:, :, qs:qe], k[:, :, ks:ke], v[:, :, ks:ke])
        for qs, qe, ks, ke in zip(query_offsets, query_offsets[1:], key_offsets, key_offsets[1:])]
    return torch.cat(outputs, dim=2)


@pytest.mark.parametrize("route", ["nested_attention", "padded_attention"])
@pytest.mark.parametrize("prefix_len", [0, 3])
def test_packed_attention_routes_equal_attention_per_sequence(route, prefix_len):
    generator = torch.Generator().manual_seed(0)
    packing, _ = pack(torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]]))
    if prefix_len:
        packing, _ = packing.with_key_prefix(prefix_len)
    keys_total = 11 + 3 * prefix_len
    q = torch.randn(1, 2, 11, 4, generator=generator, requires_grad=True)  # SAT layout [1, heads, total, head]
    k, v = (torch.randn(1, 2, keys_total, 4, generator=generator, requires_grad=True) for _ in range(2))
    got = getattr(packing, route)(q, k, v)
    expected = per_sequence_attention(q, k, v, packing.tokens.offsets.tolist(), packing.keys.offsets.tolist())
    assert torch.allclose(got, expected, atol=1e-6)
    weights = torch.randn(got.shape, generator=generator)
    got_grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    expected_grads = torch.autograd.grad((expected * weights).sum(), (q, k, v))
    assert all(torch.allclose(g, e, atol=1e-6) for g, e in zip(got_grads, expected_grads))


def test_left_padded_batches_pack_and_attend_like_right_padded_ones():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=generator) for _ in range(3))
    outputs = []
    for mask in (right, left):
        packing, _ = pack(mask)
        packing, _ = packing.with_key_prefix(2)
        prefixed = [torch.cat([t[:, :, :2], t], dim=2)[:, :, [0, 1, 2, 3, 4, 0, 1, 5, 6]] for t in (k, v)]
        outputs.append(packing.padded_attention(q, *prefixed))
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
