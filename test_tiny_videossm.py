"""Tests that define done (SPEC.md section 9), in the order of the modules: kernels, model,
world, training, sampling, notebooks. Run: python -m pytest"""

import pytest
import torch

import kernels


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------------------------
# kernels.py: the chunked gated delta rule against the naive scan


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("length", [1, 50, 64, 130])
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunked_matches_naive(dtype, tolerance, length, chunk_size, with_initial_state):
    q, k, v, g, beta = kernels.random_inputs(2, length, 3, 16, 8, dtype, seed=length + chunk_size)
    state0 = torch.randn(2, 3, 16, 8, dtype=dtype) if with_initial_state else None
    o_ref, state_ref = kernels.naive_gated_delta_rule(q, k, v, g, beta, initial_state=state0)
    o, state = kernels.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=state0, chunk_size=chunk_size)
    assert o.shape == (2, length, 3, 8) and state.shape == (2, 3, 16, 8)
    assert relative_error(o, o_ref) < tolerance
    assert relative_error(state, state_ref) < tolerance


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunked_gradients_match_naive(chunk_size):
    inputs = kernels.random_inputs(2, 100, 2, 8, 8, torch.float64, seed=1)
    state0 = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    grads = []
    for fn in (kernels.naive_gated_delta_rule, kernels.chunk_gated_delta_rule):
        leaves = [x.clone().requires_grad_() for x in (*inputs, state0)]
        q, k, v, g, beta, s0 = leaves
        kwargs = {"chunk_size": chunk_size} if fn is kernels.chunk_gated_delta_rule else {}
        o, state = fn(q, k, v, g, beta, initial_state=s0, **kwargs)
        # a loss that weights every output and state entry differently
        loss = (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() + (state ** 2).sum()
        grads.append(torch.autograd.grad(loss, leaves))
    for name, g_naive, g_chunk in zip(["q", "k", "v", "g", "beta", "initial_state"], *grads):
        assert g_chunk.abs().max() > 0, name
        assert relative_error(g_chunk, g_naive) < 1e-10, name


@pytest.mark.parametrize("gates", ["no decay", "full decay", "mixed"])
def test_extreme_gates_stay_finite_and_match(gates):
    q, k, v, g, beta = kernels.random_inputs(1, 150, 2, 16, 16, torch.float64, seed=2)
    if gates == "no decay":
        g = torch.zeros_like(g)
    elif gates == "full decay":
        g = torch.full_like(g, -50.0)
    else:
        g = torch.where(torch.rand_like(g) < 0.5, torch.zeros_like(g), torch.full_like(g, -50.0))
    leaves = [x.clone().requires_grad_() for x in (q, k, v, g, beta)]
    o, state = kernels.chunk_gated_delta_rule(*leaves)
    o_ref, state_ref = kernels.naive_gated_delta_rule(q, k, v, g, beta)
    assert torch.isfinite(o).all() and torch.isfinite(state).all()
    assert relative_error(o, o_ref) < 1e-10 and relative_error(state, state_ref) < 1e-10
    (o.sum() + state.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)


def test_full_decay_forgets_everything_before():
    # with g = -50 the state is wiped at each token, so o_t depends on token t alone
    q, k, v, g, beta = kernels.random_inputs(1, 20, 1, 8, 8, torch.float64, seed=3)
    g = torch.full_like(g, -50.0)
    o, _ = kernels.chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=8)
    expected = (q[:, :, :, None, :] * 8 ** -0.5 * k[:, :, :, None, :]).sum(-1) * beta[..., None] * v
    assert torch.allclose(o, expected, atol=1e-12)


def test_split_sequence_with_carried_state_equals_one_call():
    q, k, v, g, beta = kernels.random_inputs(2, 200, 2, 16, 8, torch.float64, seed=4)
    o_full, state_full = kernels.chunk_gated_delta_rule(q, k, v, g, beta)
    o_a, state_a = kernels.chunk_gated_delta_rule(q[:, :77], k[:, :77], v[:, :77], g[:, :77], beta[:, :77])
    o_b, state_b = kernels.chunk_gated_delta_rule(q[:, 77:], k[:, 77:], v[:, 77:], g[:, 77:], beta[:, 77:],
                                                  initial_state=state_a)
    assert relative_error(torch.cat([o_a, o_b], dim=1), o_full) < 1e-12
    assert relative_error(state_b, state_full) < 1e-12


def test_compiled_matches_eager_on_cpu():
    inputs = kernels.random_inputs(1, 96, 2, 16, 16, torch.float32, seed=5)
    o, state = kernels.gated_delta_rule(*inputs, chunk_size=32, backend="chunked")
    o_c, state_c = kernels.gated_delta_rule(*inputs, chunk_size=32, backend="compiled")
    assert relative_error(o_c, o) < 1e-5 and relative_error(state_c, state) < 1e-5


def test_backend_choice():
    inputs = kernels.random_inputs(1, 10, 1, 4, 4, torch.float64)
    o_auto, _ = kernels.gated_delta_rule(*inputs)            # eager chunked on the CPU
    o_naive, _ = kernels.gated_delta_rule(*inputs, backend="naive")
    assert relative_error(o_auto, o_naive) < 1e-12
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.gated_delta_rule(*inputs, backend="triton")
