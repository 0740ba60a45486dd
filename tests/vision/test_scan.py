"""The selective scan and VMamba's cross-scan/cross-merge, against their specifications."""

import pytest
import torch

from vlmswap.vision import scan, scan_native
from vlmswap.vision.scan import (compiled_available, cross_merge, cross_scan, selective_scan, selective_scan_chunked,
                                 selective_scan_compiled, selective_scan_reference)

needs_compiled = pytest.mark.skipif(not compiled_available(), reason="the C++ scan does not build here (no g++?)")


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


# --- the chunked algorithm against the reference --------------------------------------------------

def _run(fn, inputs, softplus=True, **kwargs):
    u, delta, A, B, C, D, bias = inputs
    return fn(u, delta, A, B, C, D, bias, softplus, **kwargs)


@pytest.mark.parametrize("length,chunk", [(1, None), (2, None), (2, 1), (3, 2), (7, 3), (50, 7), (63, 8),
                                          (65, 8), (130, None), (130, 1), (130, 200), (197, 14)])
@pytest.mark.parametrize("d_state,groups", [(1, 4), (16, 2)])
def test_chunked_scan_odd_lengths_and_chunks(length, chunk, d_state, groups):
    inputs = _inputs(2, 8, length, d_state, groups, seed=length)
    ref = _run(selective_scan_reference, inputs)
    assert _relative_error(_run(selective_scan_chunked, inputs, chunk=chunk), ref) < 1e-5


@pytest.mark.parametrize("d_state", [1, 16])
def test_chunked_scan_ungrouped_bc_as_3d(d_state):
    u, delta, A, B, C, D, bias = _inputs(2, 6, 61, d_state, 1, seed=3)
    ref = selective_scan_reference(u, delta, A, B[:, 0], C[:, 0], D, bias, True)
    assert _relative_error(selective_scan_chunked(u, delta, A, B[:, 0], C[:, 0], D, bias, True), ref) < 1e-5
    assert _relative_error(selective_scan_chunked(u, delta, A, B, C, D, bias, True), ref) < 1e-5


@pytest.mark.parametrize("d_state,groups", [(1, 4), (16, 1)])
def test_chunked_scan_strong_decays(d_state, groups):
    # A = -50 and softplus of large deltas (dt up to ~20): exp(dt*A) underflows to 0, the state
    # forgets everything at once; softplus in its linear regime (z > 20)
    u, delta, A, B, C, D, bias = _inputs(2, 8, 90, d_state, groups, seed=4)
    A = torch.full_like(A, -50.0)
    delta = 8.0 + 6.0 * delta
    ref = selective_scan_reference(u, delta, A, B, C, D, bias, True)
    assert _relative_error(selective_scan_chunked(u, delta, A, B, C, D, bias, True), ref) < 1e-5
    assert _relative_error(selective_scan_chunked(u, delta, A, B, C, D, bias, True, chunk=4), ref) < 1e-5


@pytest.mark.parametrize("d_state,groups", [(1, 4), (16, 2)])
def test_chunked_scan_weak_decays(d_state, groups):
    # dt ~ 1e-4..1e-6 and |A| <= 1e-2: exp(dt*A) within 1e-6 of 1, the state sums the whole sequence
    u, delta, A, B, C, D, bias = _inputs(2, 8, 300, d_state, groups, seed=5)
    A = A * 1e-2
    delta = delta - 11.0
    ref = selective_scan_reference(u, delta, A, B, C, None, bias, True)
    assert _relative_error(selective_scan_chunked(u, delta, A, B, C, None, bias, True), ref) < 1e-5


def test_softplus_matches_float64():
    from vlmswap.vision.scan import _softplus_
    z = torch.cat([torch.linspace(-100, 100, 20001), torch.tensor([0.0, -1e-8, 1e-8, 15.9, 16.1, 20.5])])
    exact = torch.nn.functional.softplus(z.double())
    ours = _softplus_(z.clone()).double()
    assert ((ours - exact).abs() <= 1e-6 * exact + 1e-38).all()   # relative, absolute among the subnormals


def test_chunked_scan_leaves_its_inputs_alone():
    # batch 1 and length 1: the time-major views of u and delta are the tensors themselves
    for batch, length in [(1, 1), (1, 40), (2, 1)]:
        inputs = _inputs(batch, 4, length, 2, 2, seed=6)
        copies = [x.clone() for x in inputs]
        _run(selective_scan_chunked, inputs)
        assert all(torch.equal(x, c) for x, c in zip(inputs, copies))


def test_chunked_scan_same_with_and_without_autograd():
    inputs = _inputs(2, 8, 77, 16, 2, seed=7)
    with torch.no_grad():
        y_inference = _run(selective_scan_chunked, inputs)
    leaves = [x.clone().requires_grad_() for x in inputs]
    assert torch.equal(_run(selective_scan_chunked, leaves).detach(), y_inference)


def test_chunked_scan_is_float32_under_autocast():
    inputs = _inputs(2, 8, 50, 16, 2, seed=8)
    ref = _run(selective_scan_reference, inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _run(selective_scan_chunked, inputs)
    assert y.dtype == torch.float32 and _relative_error(y, ref) < 1e-5


def _gradients(fn, inputs, softplus, drop=(), **kwargs):
    leaves = [None if i in drop else x.clone().requires_grad_() for i, x in enumerate(inputs)]
    y = _run(fn, leaves, softplus, **kwargs)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(9))
    (y * weight).sum().backward()
    return [None if x is None else x.grad for x in leaves]


@pytest.mark.parametrize("length,d_state,groups,softplus,drop,chunk", [
    (90, 1, 4, True, (), None),            # VMamba-like
    (37, 16, 1, True, (), 5),              # Vim-like, L not a multiple of the chunk
    (64, 4, 2, False, (5, 6), 8),          # no D, no bias, no softplus
    (1, 2, 2, True, (), None),
    (2, 16, 2, True, (), None),
])
def test_chunked_scan_gradients_match_reference_everywhere(length, d_state, groups, softplus, drop, chunk):
    inputs = list(_inputs(2, 8, length, d_state, groups, seed=10 + length))
    if not softplus:
        inputs[1] = inputs[1].abs()
    ref = _gradients(selective_scan_reference, inputs, softplus, drop)
    ours = _gradients(selective_scan_chunked, inputs, softplus, drop, chunk=chunk)
    for i, (g, g_ref) in enumerate(zip(ours, ref)):
        if g_ref is None:
            assert g is None
        elif g_ref.abs().max() > 0:
            assert _relative_error(g, g_ref) < 1e-4, f"input {i}"
        else:
            assert g.abs().max() == 0


def test_chunked_scan_gradient_of_one_input_only():
    inputs = _inputs(1, 4, 30, 16, 1, seed=11)
    for k in range(7):
        leaves = [x.clone().requires_grad_(i == k) for i, x in enumerate(inputs)]
        _run(selective_scan_chunked, leaves).sum().backward()
        assert leaves[k].grad is not None and torch.isfinite(leaves[k].grad).all()


# --- the dispatcher and its VLMSWAP_SCAN switch ---------------------------------------------------

def test_scan_switch_picks_the_implementation(monkeypatch):
    inputs = _inputs(2, 8, 40, 4, 2, seed=12)
    ref = _run(selective_scan_reference, inputs)
    chunked = _run(selective_scan_chunked, inputs)
    cpu = _run(selective_scan_compiled, inputs) if compiled_available() else chunked  # auto on the CPU
    for value, expected in [("reference", ref), ("chunked", chunked), (" Chunked ", chunked), ("auto", cpu),
                            ("", cpu)]:
        monkeypatch.setenv("VLMSWAP_SCAN", value)
        assert torch.equal(_run(selective_scan, inputs), expected), value
    monkeypatch.delenv("VLMSWAP_SCAN")
    assert torch.equal(_run(selective_scan, inputs), cpu)  # unset: auto


def test_scan_switch_rejects_unknown_values_and_unusable_fused(monkeypatch):
    inputs = _inputs(1, 4, 10, 1, 1)
    monkeypatch.setenv("VLMSWAP_SCAN", "fast")
    with pytest.raises(ValueError, match="VLMSWAP_SCAN='fast'.*auto, reference, chunked, compiled, fused"):
        _run(selective_scan, inputs)
    monkeypatch.setenv("VLMSWAP_SCAN", "fused")
    import vlmswap.vision.scan as scan
    monkeypatch.setattr(scan, "fused_kernel", lambda: None)     # as without mamba_ssm's CUDA extension
    with pytest.raises(RuntimeError, match="fused.*not importable"):
        _run(selective_scan, inputs)
    monkeypatch.setattr(scan, "fused_kernel", lambda: _fake_mamba_kernel)
    with pytest.raises(RuntimeError, match="fused.*CUDA tensors"):                # a kernel, but CPU tensors
        _run(selective_scan, inputs)


def _fake_mamba_kernel(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """mamba_ssm's selective_scan_fn signature, with the checks of its CUDA kernel (selective_scan.cpp)."""
    io = u.dtype
    assert io in (torch.float32, torch.float16, torch.bfloat16)
    assert delta.dtype == io and B.dtype == io and C.dtype == io
    assert A.dtype == torch.float32 and (D is None or D.dtype == torch.float32)
    assert delta_bias is None or delta_bias.dtype == torch.float32
    assert B.dim() == 4 and C.dim() == 4 and B.shape[:2] == C.shape[:2] and B.shape[2] == A.shape[1]
    assert B.shape[-1] == u.shape[-1] and u.shape[1] % B.shape[1] == 0
    assert all(x.stride(-1) == 1 for x in (u, delta, B, C))
    assert z is None and return_last_state is False and isinstance(delta_softplus, bool)
    return selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus).to(io)


def test_fused_call_matches_mamba_ssm_signature_and_layout():
    from vlmswap.vision.scan_native import call_fused
    u, delta, A, B, C, D, bias = _inputs(2, 8, 33, 16, 1, seed=13)
    ref = selective_scan_reference(u, delta, A, B, C, D, bias, True)
    # 3-D B/C (one group), non-contiguous inputs, float64 A and D, a bfloat16 u with float32 delta
    y = call_fused(_fake_mamba_kernel, u.transpose(1, 2).contiguous().transpose(1, 2), delta, A.double(),
                    B[:, 0], C[:, 0], D.double(), bias.double(), 1)
    assert y.dtype == torch.float32 and _relative_error(y, ref) < 1e-6
    y = call_fused(_fake_mamba_kernel, u.bfloat16(), delta, A, B, C, D, bias, True)
    assert y.dtype == torch.bfloat16    # computed from float32 delta/B/C (the widest dtype), returned as u's
    ref16 = selective_scan_reference(u.bfloat16().float(), delta, A, B, C, D, bias, True)
    assert _relative_error(y.float(), ref16) < 1e-2


# --- the compiled C++ scan (scan_cpu.cpp) ----------------------------------------------------------

@needs_compiled
@pytest.mark.parametrize("batch,channels,length,d_state,groups", [
    (2, 8, 1, 1, 4), (2, 8, 64, 1, 4), (1, 384, 300, 1, 4),     # VMamba-like; blocks of 16 lanes
    (2, 40, 257, 16, 2), (3, 6, 130, 2, 1), (1, 20, 65, 16, 1),  # Vim-like; partial blocks (20 = 16 + 4)
])
def test_compiled_scan_equals_reference_forward_and_gradients(batch, channels, length, d_state, groups):
    inputs = _inputs(batch, channels, length, d_state, groups, seed=20 + length)
    ref = _run(selective_scan_reference, inputs)
    assert _relative_error(_run(selective_scan_compiled, inputs), ref) < 1e-5
    for g, g_ref in zip(_gradients(selective_scan_compiled, inputs, True), _gradients(selective_scan_reference, inputs,
                                                                                       True)):
        if g_ref.abs().max() > 0:
            assert _relative_error(g, g_ref) < 1e-5
        else:
            assert g.abs().max() == 0


@needs_compiled
@pytest.mark.parametrize("softplus,drop", [(False, (5, 6)), (True, (5,)), (True, (6,))])
def test_compiled_scan_without_optional_terms_and_partial_gradients(softplus, drop):
    inputs = list(_inputs(2, 24, 50, 4, 2, seed=21))
    if not softplus:
        inputs[1] = inputs[1].abs()
    ref = _gradients(selective_scan_reference, inputs, softplus, drop)
    ours = _gradients(selective_scan_compiled, inputs, softplus, drop)
    for g, g_ref in zip(ours, ref):
        assert (g is None) == (g_ref is None)
        if g_ref is not None:
            assert _relative_error(g, g_ref) < 1e-5


@needs_compiled
@pytest.mark.parametrize("d_state,groups", [(1, 4), (16, 1)])
def test_compiled_scan_strong_and_weak_decays(d_state, groups):
    u, delta, A, B, C, D, bias = _inputs(2, 8, 300, d_state, groups, seed=22)
    for A_, delta_ in [(torch.full_like(A, -50.0), 8.0 + 6.0 * delta), (A * 1e-2, delta - 11.0)]:
        ref = selective_scan_reference(u, delta_, A_, B, C, D, bias, True)
        assert _relative_error(selective_scan_compiled(u, delta_, A_, B, C, D, bias, True), ref) < 1e-5


@needs_compiled
def test_compiled_scan_dtypes_autocast_and_3d_bc():
    u, delta, A, B, C, D, bias = _inputs(1, 8, 70, 1, 1, seed=23)
    y = selective_scan_compiled(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, True)
    ref = selective_scan_reference(u.bfloat16(), delta.bfloat16(), A, B.bfloat16(), C.bfloat16(), D, bias, True)
    assert y.dtype == torch.bfloat16 and _relative_error(y.float(), ref.float()) < 1e-2
    ref = selective_scan_reference(u, delta, A, B[:, 0], C[:, 0], D, bias, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = selective_scan_compiled(u, delta, A, B[:, 0], C[:, 0], D, bias, True)
    assert y.dtype == torch.float32 and _relative_error(y, ref) < 1e-5


@needs_compiled
def test_compiled_scan_same_with_and_without_autograd():
    inputs = _inputs(2, 32, 77, 16, 2, seed=24)
    with torch.no_grad():
        y_inference = _run(selective_scan_compiled, inputs)
    leaves = [x.clone().requires_grad_() for x in inputs]
    assert torch.equal(_run(selective_scan_compiled, leaves).detach(), y_inference)


@needs_compiled
def test_compiled_scan_gradient_of_one_input_only():
    inputs = _inputs(2, 24, 30, 16, 2, seed=26)
    weight = torch.randn(2, 24, 30, generator=torch.Generator().manual_seed(3))
    for k in range(7):
        grads = []
        for fn in (selective_scan_reference, selective_scan_compiled):
            leaves = [x.clone().requires_grad_(i == k) for i, x in enumerate(inputs)]
            (_run(fn, leaves) * weight).sum().backward()
            grads.append(leaves[k].grad)
        assert _relative_error(grads[1], grads[0]) < 1e-5, f"input {k}"


def test_a_failed_build_falls_back_to_the_pure_scan_and_says_so_once(monkeypatch, capsys):
    inputs = _inputs(2, 8, 40, 4, 2, seed=25)
    monkeypatch.setenv("VLMSWAP_SCAN_BUILD", "0")     # as where the build fails: no compiled ops
    scan_native.compiled_ops.cache_clear()
    try:
        assert not compiled_available()
        assert torch.equal(_run(selective_scan, inputs), _run(selective_scan_chunked, inputs))
        _run(selective_scan, inputs)
        with pytest.raises(RuntimeError, match="compiled CPU scan is not available"):
            _run(selective_scan_compiled, inputs)
        monkeypatch.setenv("VLMSWAP_SCAN", "compiled")
        with pytest.raises(RuntimeError, match="not available"):
            _run(selective_scan, inputs)
        assert capsys.readouterr().err.count("vlmswap.scan: compiled CPU scan disabled") == 1
    finally:
        monkeypatch.delenv("VLMSWAP_SCAN_BUILD")
        scan_native.compiled_ops.cache_clear()


def test_a_build_error_is_a_fallback_not_a_failure(monkeypatch, capsys):
    from torch.utils import cpp_extension

    def broken(**kwargs):
        raise RuntimeError("Error building extension 'vlmswap_scan_cpu': g++: not found")

    monkeypatch.setattr(cpp_extension, "load", broken)
    scan_native.compiled_ops.cache_clear()
    try:
        assert not compiled_available()
        assert "compiled CPU scan unavailable (Error building extension" in capsys.readouterr().err
        inputs = _inputs(1, 8, 20, 1, 4)
        assert torch.equal(_run(selective_scan, inputs), _run(selective_scan_chunked, inputs))
    finally:
        scan_native.compiled_ops.cache_clear()


def test_the_meta_device_never_reaches_the_compiled_scan():
    inputs = [x.to("meta") for x in _inputs(1, 8, 20, 1, 4)]
    assert _run(selective_scan, inputs).shape == (1, 8, 20)
