"""The selective scan and VMamba's cross-scan/cross-merge, against their specifications."""

import pytest
import torch

from vlmswap.vision.scan import (cross_merge, cross_scan, selective_scan, selective_scan_chunked,
                                 selective_scan_reference)


def _inputs(batch, channels, length, d_state, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, length, generator=g)
    delta = torch.randn(batch, channels, length, generator=g)
    A = -torch.rand(channels, d_state, generator=g).mul(2).exp()   # negative, as -exp(A_logs)
    B = torch.randn(batch, groups, d_state, length, generator=g)
    C = torch.randn(batch, groups, d_state, length, generator=g)
    D = torch.randn(channels, generator=g)
    bias = torch.randn(channels, generator=g)
    return u, delta, A, B, C, D, bias


def _relative_error(y, ref):
    return ((y - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("length", [1, 5, 64, 100, 196, 257])
@pytest.mark.parametrize("d_state,groups", [(1, 4), (4, 1), (16, 2)])
def test_chunked_scan_equals_reference(length, d_state, groups):
    u, delta, A, B, C, D, bias = _inputs(2, 8, length, d_state, groups)
    ref = selective_scan_reference(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True)
    assert ref.shape == (2, 8, length)
    assert _relative_error(selective_scan_chunked(u, delta, A, B, C, D, bias, True), ref) < 1e-5
    assert _relative_error(selective_scan(u, delta, A, B, C, D, bias, True), ref) < 1e-5


def test_chunked_scan_without_optional_terms_and_ungrouped_bc():
    u, delta, A, B, C, _, _ = _inputs(3, 6, 130, 2, 1, seed=1)
    delta = delta.abs()  # no softplus: delta is used as given
    ref = selective_scan_reference(u, delta, A, B[:, 0], C[:, 0])
    assert _relative_error(selective_scan_chunked(u, delta, A, B[:, 0], C[:, 0]), ref) < 1e-5


def test_reference_matches_hand_computed_recurrence():
    # one channel, one state: h_t = exp(dt*A) h_{t-1} + dt*B_t*u_t, y_t = C_t h_t + D u_t
    u = torch.tensor([[[1.0, 2.0, -1.0]]])
    delta = torch.full((1, 1, 3), 0.5)
    A = torch.tensor([[-2.0]])
    B = torch.tensor([[[[1.0, 0.5, 2.0]]]])
    C = torch.tensor([[[[1.0, -1.0, 3.0]]]])
    D = torch.tensor([0.25])
    decay = torch.exp(torch.tensor(-1.0))
    h0 = 0.5 * 1.0 * 1.0
    h1 = decay * h0 + 0.5 * 0.5 * 2.0
    h2 = decay * h1 + 0.5 * 2.0 * -1.0
    expected = torch.tensor([1.0 * h0 + 0.25, -1.0 * h1 + 0.5, 3.0 * h2 - 0.25])
    y = selective_scan_reference(u, delta, A, B, C, D)
    torch.testing.assert_close(y[0, 0], expected)
    torch.testing.assert_close(selective_scan_chunked(u, delta, A, B, C, D)[0, 0], expected)


def test_chunked_scan_gradients_match_reference():
    inputs = _inputs(1, 4, 90, 1, 4, seed=2)
    grads = []
    for fn in (selective_scan_reference, selective_scan_chunked):
        leaves = [x.clone().requires_grad_() for x in inputs]
        fn(*leaves[:5], leaves[5], leaves[6], True).square().sum().backward()
        grads.append([x.grad for x in leaves])
    for g_chunk, g_ref in zip(grads[1], grads[0]):
        assert _relative_error(g_chunk, g_ref) < 1e-4


def test_scan_keeps_input_dtype_and_computes_in_float32():
    u, delta, A, B, C, D, bias = _inputs(1, 4, 70, 1, 4)
    y = selective_scan(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, True)
    assert y.dtype == torch.bfloat16
    ref = selective_scan_reference(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, True)
    assert _relative_error(y.float(), ref.float()) < 1e-2


def test_cross_scan_direction_order():
    x = torch.arange(6.0).view(1, 1, 2, 3)  # [[0, 1, 2], [3, 4, 5]]
    xs = cross_scan(x)
    assert xs.shape == (1, 4, 1, 6)
    assert xs[0, :, 0].tolist() == [
        [0, 1, 2, 3, 4, 5],   # row-major
        [0, 3, 1, 4, 2, 5],   # column-major
        [5, 4, 3, 2, 1, 0],   # row-major reversed
        [5, 2, 4, 1, 3, 0],   # column-major reversed
    ]


@pytest.mark.parametrize("height,width", [(1, 1), (4, 4), (3, 7), (8, 5)])
def test_cross_merge_inverts_cross_scan_up_to_four(height, width):
    x = torch.randn(2, 3, height, width)
    flat = x.flatten(2)
    torch.testing.assert_close(cross_merge(cross_scan(x), height, width), 4 * flat)
    # the 5-D form used by VMamba (a reshaped sequence, not a spatial map)
    torch.testing.assert_close(cross_merge(cross_scan(x).view(2, 4, 3, height, width)), 4 * flat)


def test_cross_merge_puts_each_direction_back_in_row_major_order():
    x = torch.randn(1, 2, 3, 5)
    xs = cross_scan(x)
    for k in range(4):
        only = torch.zeros_like(xs)
        only[:, k] = xs[:, k]
        torch.testing.assert_close(cross_merge(only, 3, 5), x.flatten(2))


def test_cross_merge_rejects_bad_shapes():
    with pytest.raises(ValueError, match="height and width"):
        cross_merge(torch.zeros(1, 4, 2, 6))
    with pytest.raises(ValueError, match="expects"):
        cross_merge(torch.zeros(1, 4, 2, 6), 2, 4)
