"""Packed (unpadded) rows: the layout bookkeeping against hand-built expectations."""

import torch

from sat_ehft.packing import pack, unpack


def test_pack_keeps_the_real_tokens_in_order_and_unpack_restores_the_layout():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
    ids = torch.arange(12).view(3, 4)
    packing, (packed,) = pack(mask, ids)
    assert packed.tolist() == [[0, 1, 2, 4, 8, 9, 10, 11]]
    assert packing.offsets.tolist() == [0, 3, 4, 8] and packing.max_length == 4
    hidden = torch.randn(1, 8, 5, requires_grad=True)
    restored = unpack(hidden, packing)
    assert torch.equal(restored[mask.bool()], hidden[0].detach())
    assert (restored[~mask.bool()] == 0).all()
    restored.sum().backward()
    assert torch.equal(hidden.grad, torch.ones_like(hidden))


def test_prefix_gather_index_puts_each_prefix_in_front_of_its_sequence():
    packing, _ = pack(torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]]))
    prefix_len = 2
    # cat([prefix rows 0..1, packed keys]) indexed: P0 P1 s0t0 s0t1 s0t2 | P0 P1 s1t0 | P0 P1 s2t0 s2t1
    expected = [0, 1, 2, 3, 4, 0, 1, 5, 0, 1, 6, 7]
    assert packing.prefix_gather_index(prefix_len).tolist() == expected
    keys = packing.with_key_prefix(prefix_len)
    assert keys.key_offsets.tolist() == [0, 5, 8, 12] and keys.key_max_length == 5


def test_packed_attention_equals_attention_per_sequence():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    packing, _ = pack(mask)
    q, k, v = (torch.randn(1, 3, 6, 4) for _ in range(3))  # SAT layout [1, heads, total, head]
    got = packing.attention(q, k, v)
    for start, end in ((0, 4), (4, 6)):
        one = torch.nn.functional.scaled_dot_product_attention(*(t[:, :, start:end] for t in (q, k, v)))
        assert torch.allclose(got[:, :, start:end], one, atol=1e-6)
