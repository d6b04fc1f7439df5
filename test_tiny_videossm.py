"""Tests that define done, in the order of the modules: kernels, the model, the
world, training, sampling, then the yardstick (measure/) and the notebooks. Each test makes what it
needs (a fixture, a temporary folder) and passes alone and in any order. Run: python -m pytest"""

import copy
import importlib.util
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import imageio.v3
import numpy as np
import pytest
import torch

import kernels
import sample
import tiny_videossm as tv
import train
from measure import benchmark, kernel_speed, memory_trace, metrics, report, world_stats
from measure.metrics import (drift, dynamic_degree, fidelity, flicker, frozen_fraction, read_attributes,
                             sprite_presence, video_metrics)
from world import (BACKGROUND_NAMES, BACKGROUND_RGB, BACKGROUNDS, CURTAIN_RGB, GRAMMAR, MAX_SPRITES, SHAPES,
                   SPRITE_COLOURS, SPRITE_RGB, VOCAB, Clips, World, parse_caption, random_caption, sprite_mask,
                   sprite_returns, with_curtains)

ROOT = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def torch_threads():
    """sample.py and measure/ set torch's threads, as a command line should; every test starts from the same."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------------------------
# kernels.py: the gated delta rule, chunked against the naive loop



@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("length", [1, 50, 64, 130])
@pytest.mark.parametrize("chunk_size", [16, 32, 64])
@pytest.mark.parametrize("with_initial_state", [False, True])
def test_chunked_matches_naive(dtype, tolerance, length, chunk_size, with_initial_state):
    q, k, v, g, beta = kernel_speed.random_inputs(2, length, 3, 16, 8, dtype, seed=length + chunk_size)
    state0 = torch.randn(2, 3, 16, 8, dtype=dtype) if with_initial_state else None
    o_ref, state_ref = kernels.naive_gated_delta_rule(q, k, v, g, beta, initial_state=state0)
    o, state = kernels.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=state0, chunk_size=chunk_size)
    assert o.shape == (2, length, 3, 8) and state.shape == (2, 3, 16, 8)
    assert relative_error(o, o_ref) < tolerance
    assert relative_error(state, state_ref) < tolerance


@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunked_gradients_match_naive(chunk_size):
    inputs = kernel_speed.random_inputs(2, 100, 2, 8, 8, torch.float64, seed=1)
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
    q, k, v, g, beta = kernel_speed.random_inputs(1, 150, 2, 16, 16, torch.float64, seed=2)
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
    q, k, v, g, beta = kernel_speed.random_inputs(1, 20, 1, 8, 8, torch.float64, seed=3)
    g = torch.full_like(g, -50.0)
    o, _ = kernels.chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=8)
    expected = (q[:, :, :, None, :] * 8 ** -0.5 * k[:, :, :, None, :]).sum(-1) * beta[..., None] * v
    assert torch.allclose(o, expected, atol=1e-12)


def test_split_sequence_with_carried_state_equals_one_call():
    q, k, v, g, beta = kernel_speed.random_inputs(2, 200, 2, 16, 8, torch.float64, seed=4)
    o_full, state_full = kernels.chunk_gated_delta_rule(q, k, v, g, beta)
    o_a, state_a = kernels.chunk_gated_delta_rule(q[:, :77], k[:, :77], v[:, :77], g[:, :77], beta[:, :77])
    o_b, state_b = kernels.chunk_gated_delta_rule(q[:, 77:], k[:, 77:], v[:, 77:], g[:, 77:], beta[:, 77:],
                                                  initial_state=state_a)
    assert relative_error(torch.cat([o_a, o_b], dim=1), o_full) < 1e-12
    assert relative_error(state_b, state_full) < 1e-12


def test_compiled_matches_eager_on_cpu():
    inputs = kernel_speed.random_inputs(1, 96, 2, 16, 16, torch.float32, seed=5)
    o, state = kernels.gated_delta_rule(*inputs, chunk_size=32, backend="chunked")
    o_c, state_c = kernels.gated_delta_rule(*inputs, chunk_size=32, backend="compiled")
    assert relative_error(o_c, o) < 1e-5 and relative_error(state_c, state) < 1e-5


def test_backend_choice(monkeypatch):
    """auto: the compiled chunked form for CUDA tensors, the eager one elsewhere; an unknown name is refused."""
    inputs = kernel_speed.random_inputs(1, 10, 1, 4, 4, torch.float64)
    o_auto, _ = kernels.gated_delta_rule(*inputs)
    o_naive, _ = kernels.gated_delta_rule(*inputs, backend="naive")
    assert relative_error(o_auto, o_naive) < 1e-12
    with pytest.raises(ValueError, match="unknown backend"):
        kernels.gated_delta_rule(*inputs, backend="triton")
    called = []
    for name in ("naive_gated_delta_rule", "chunk_gated_delta_rule", "compiled_chunk_gated_delta_rule"):
        monkeypatch.setattr(kernels, name, lambda *args, name=name: called.append(name))
    kernels.gated_delta_rule(*inputs)
    kernels.gated_delta_rule(types.SimpleNamespace(is_cuda=True, device=torch.device("cuda")), *inputs[1:])  # what auto reads
    assert called == ["chunk_gated_delta_rule", "compiled_chunk_gated_delta_rule"]


def test_the_kernel_computes_in_its_inputs_dtype_under_autocast():
    """bf16 autocast (how the CUDA path trains) would run the chunked form's matmuls in bf16 and hand back a bf16
    state: the entry point keeps its float32 inputs' precision, to the bit."""
    inputs = kernel_speed.random_inputs(1, 40, 2, 8, 8, seed=6)
    for backend in ("naive", "chunked"):
        expected = kernels.gated_delta_rule(*inputs, chunk_size=16, backend=backend)
        with torch.autocast("cpu", torch.bfloat16):
            got = kernels.gated_delta_rule(*inputs, chunk_size=16, backend=backend)
        assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(got, expected))


def test_kernel_inputs_are_checked_at_the_door():
    q, k, v, g, beta = kernel_speed.random_inputs(2, 10, 3, 4, 5)
    cases = [((q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g, beta), "must have shape"),  # (B, H, T, K)
             ((q, k, v[:1], g, beta), "v must have shape"),                      # another batch
             ((q, k, v, g[..., 0], beta), "g must have shape"),                  # no head axis
             ((q[:, :0], k[:, :0], v[:, :0], g[:, :0], beta[:, :0]), "at least one token"),
             ((q.bfloat16(), k.bfloat16(), v.bfloat16(), g.bfloat16(), beta.bfloat16()), "float32")]
    for backend in ("naive", "chunked"):
        for args, message in cases:
            with pytest.raises(ValueError, match=message):
                kernels.gated_delta_rule(*args, backend=backend)
        with pytest.raises(ValueError, match="initial_state must have shape"):
            kernels.gated_delta_rule(q, k, v, g, beta, initial_state=torch.zeros(2, 3, 4, 4), backend=backend)
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        kernels.chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=0)
    memory = tv.GatedDeltaMemory(16, 2, router_horizon=8)
    with pytest.raises(ValueError, match=r"x must have shape \(B, L, 16\)"):
        memory.gates(torch.randn(1, 5, 12))
    with pytest.raises(ValueError, match="q must have shape"):
        memory(torch.randn(1, 5, 16), torch.randn(1, 5, 8, 2), torch.zeros(1, 1, 2, 8, 8),
               torch.zeros(5, dtype=torch.long), torch.arange(5))
    with pytest.raises(ValueError, match="g must have shape"):              # write: through the kernel's door
        memory.write(torch.zeros(1, 2, 8, 8), torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8),
                     *memory.gates(torch.randn(1, 4, 16)))


# ----------------------------------------------------------------------------------------------
# tiny_videossm.py: the network, its two paths, the streaming cache



def small_config(**overrides):
    """A model small enough for float64 tests: 8x8 frames, 4 tokens a frame, 2 frames a chunk."""
    base = dict(frame_size=8, patch_size=4, dim=24, n_heads=2, n_layers=2, ffn_dim=32, text_dim=8,
                freq_dim=16, causal=True, chunk_frames=2, mode="hybrid", sink_chunks=1, window_chunks=2,
                router_horizon=10, kernel_chunk_size=4)
    return tv.VideoSSMConfig(**{**base, **overrides})


def small_model(dtype=torch.float64, awake=True, seed=0, **overrides):
    """awake: move the zero-initialised memory gate and head so every path is visible in the output."""
    torch.manual_seed(seed)
    model = tv.VideoDiT(small_config(**overrides)).to(dtype)
    if awake:
        with torch.no_grad():
            for block in model.blocks:
                if block.self_attn.memory:
                    block.self_attn.memory.out_gate.weight.normal_(0, 0.5)
            model.head.weight.normal_(0, 0.5)
    return model


def random_clip(frames, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, frames, 3, 8, 8, generator=gen).to(dtype), torch.randn(1, 5, 8, generator=gen).to(dtype)


def test_flow_matching_direction_of_time():
    gen = torch.Generator().manual_seed(0)        # float64: the finite difference below is exact enough
    x0, noise = torch.randn(2, 3, generator=gen, dtype=torch.float64), torch.randn(2, 3, generator=gen, dtype=torch.float64)
    assert torch.equal(tv.add_noise(x0, noise, torch.zeros(2, dtype=torch.float64)), x0)   # s = 0: the clean clip
    assert torch.equal(tv.add_noise(x0, noise, torch.ones(2, dtype=torch.float64)), noise)  # s = 1: pure noise
    s = torch.tensor([0.3, 0.8], dtype=torch.float64)
    x_s = tv.add_noise(x0, noise, s)
    v = tv.velocity_target(x0, noise)
    assert torch.allclose(tv.x0_from_velocity(x_s, v, s), x0)
    assert torch.allclose(tv.add_noise(x0, noise, s + 1e-3) - x_s, 1e-3 * v, atol=1e-6)  # v = d x_s / d s
    sigmas = tv.denoising_sigmas(4, timestep_shift=3.0)
    assert sigmas[0] == 1.0 and all(a > b > 0 for a, b in zip(sigmas, sigmas[1:]))
    assert tv.shift_sigma(torch.tensor(0.5), 3.0) == 0.75                  # shift > 1 leans to noise


def load_wan_weights(ours, wan_state):
    """Copy a diffusers WanTransformer3DModel's state dict into our VideoDiT (names differ, math doesn't)."""
    rename = {"condition_embedder.time_embedder.linear_1": "time_embedding.0",
              "condition_embedder.time_embedder.linear_2": "time_embedding.2",
              "condition_embedder.time_proj": "time_projection.1",
              "condition_embedder.text_embedder.linear_1": "text_embedding.0",
              "condition_embedder.text_embedder.linear_2": "text_embedding.2",
              "proj_out": "head", "scale_shift_table": "head_modulation",
              "attn1.to_out.0": "self_attn.o", "attn2.to_out.0": "cross_attn.o",
              "attn1.to_": "self_attn.", "attn2.to_": "cross_attn.", "attn1.": "self_attn.", "attn2.": "cross_attn.",
              "norm2": "norm3", "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
              "blocks.0.scale_shift_table": "blocks.0.modulation", "blocks.1.scale_shift_table": "blocks.1.modulation"}
    state = {}
    for name, tensor in wan_state.items():
        if name == "patch_embedding.weight":
            tensor = tensor.flatten(1)                       # Conv3d (d, C, 1, p, p) -> Linear (d, C*p*p)
        for old, new in rename.items():
            if name.startswith("blocks.") and old in name and not old.startswith(("proj_out", "scale_shift", "cond")):
                name = name.replace(old, new)
            elif name.startswith(old):
                name = new + name[len(old):]
        state[name] = tensor
    ours.load_state_dict(state, strict=True)


# diffusers imports transformers, which imports Hugging Face's `kernels` package; in this process `kernels` is
# our kernels.py. So the reference runs in a process of its own, started outside the repo root, and hands back
# its random weights and its output through a file.
WAN_REFERENCE = """
import sys, torch, diffusers
clip, timestep, text = torch.load(sys.argv[1])
torch.manual_seed(0)
wan = diffusers.WanTransformer3DModel(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=12,
                                      in_channels=3, out_channels=3, text_dim=8, freq_dim=16, ffn_dim=32,
                                      num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                      eps=1e-6, rope_max_seq_len=32).eval()
with torch.no_grad():
    for p in wan.parameters():                               # random everything, zero-inits included
        p.normal_(0, 0.1)
    expected = wan(clip.transpose(1, 2), timestep, text, return_dict=False)[0].transpose(1, 2)
torch.save((wan.state_dict(), expected), sys.argv[1])
"""


def test_wan_parity(tmp_path):
    if importlib.util.find_spec("diffusers") is None:
        pytest.skip("Wan parity needs diffusers: pip install -r requirements-dev.txt")
    clip, text = random_clip(4, torch.float32)
    timestep = torch.tensor([637.0])
    exchange = tmp_path / "wan.pt"
    torch.save((clip, timestep, text), exchange)
    result = subprocess.run([sys.executable, "-c", WAN_REFERENCE, str(exchange)], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    wan_state, expected = torch.load(exchange)
    ours = tv.VideoDiT(small_config(causal=False)).eval()
    load_wan_weights(ours, wan_state)
    with torch.no_grad():
        got = ours(clip, timestep, text)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max() <= 1e-5


def test_student_is_causal_and_teacher_is_not():
    clip, text = random_clip(8)
    t = torch.rand(1, 8, dtype=torch.float64) * 1000
    later = clip.clone()
    later[:, 4:6] += 1.0                                       # perturb chunk 2 of 4
    for mode in tv.MODES:
        student = small_model(mode=mode)
        out, out_later = student(clip, t, text), student(later, t, text)
        assert torch.equal(out[:, :4], out_later[:, :4]), mode                   # chunks 0, 1 untouched
        assert not torch.allclose(out[:, 4:], out_later[:, 4:]), mode
    teacher = small_model(causal=False)
    assert not torch.allclose(teacher(clip, t[:, :1], text)[:, :4], teacher(later, t[:, :1], text)[:, :4])


@pytest.mark.parametrize("mode", tv.MODES)
def test_streaming_equals_parallel(mode):
    """7 chunks with sink 1 and window 2: chunks 1-4 are evicted (into M in hybrid mode)."""
    model = small_model(mode=mode)
    clean, text = random_clip(14)
    cache = tv.StreamCache(model, 1, mode, torch.float64)
    cache.set_prompt(model, text)
    gen = torch.Generator().manual_seed(3)
    noisy = torch.randn(1, 14, 3, 8, 8, generator=gen, dtype=torch.float64)
    t = (torch.rand(1, 7, generator=gen, dtype=torch.float64) * 1000).repeat_interleave(2, dim=1)
    teacher_forced = model(noisy, t, text, clean_context=clean)               # every chunk at once
    for c in range(7):
        chunk = slice(2 * c, 2 * c + 2)
        streamed = model.forward_chunk(noisy[:, chunk], t[:, 2 * c], cache)
        earlier_clean = torch.cat([clean[:, :2 * c], noisy[:, chunk]], dim=1)
        t_clean = torch.cat([torch.zeros(1, 2 * c, dtype=torch.float64), t[:, chunk]], dim=1)
        parallel = model(earlier_clean, t_clean, text)[:, -2:]
        assert (streamed - parallel).abs().max() <= 1e-8, (mode, c)
        assert (streamed - teacher_forced[:, chunk]).abs().max() <= 1e-8, (mode, c)
        model.forward_chunk(clean[:, chunk], 0.0, cache, write=True)
    if mode == "hybrid":
        assert all(layer.state.abs().max() > 0 for layer in cache.layers)


def test_cache_stays_bounded_in_hybrid_and_grows_in_full():
    tokens_per_chunk = 2 * 4
    for mode, chunks in [("hybrid", 200), ("memory", 200), ("full", 30)]:
        model = small_model(dtype=torch.float32, mode=mode)
        cache = tv.StreamCache(model, 1, mode)
        cache.set_prompt(model, random_clip(2, torch.float32)[1])
        lengths = []
        with torch.no_grad():
            for c in range(chunks):
                model.forward_chunk(torch.randn(1, 2, 3, 8, 8), 0.0, cache, write=True)
                lengths.append(cache.length())
                assert all(layer.state.shape == (1, 2, 12, 12) for layer in cache.layers)
        if mode == "hybrid":   # the sink and the window's earlier chunk; the current chunk fills the last slot
            assert lengths[-1] == lengths[10] == (1 + 2 - 1) * tokens_per_chunk and cache.chunks == [0, 199]
            assert all(torch.isfinite(layer.state).all() for layer in cache.layers)
        elif mode == "memory":  # nothing but M
            assert set(lengths) == {0} and cache.chunks == []
            assert all(torch.isfinite(layer.state).all() and layer.state.abs().max() > 0 for layer in cache.layers)
        else:
            assert lengths == [(c + 1) * tokens_per_chunk for c in range(chunks)]


def test_memory_path_is_exactly_zero_at_init():
    """(D9) the student starts as the block-causal teacher: hybrid == sink while g_out is zero."""
    model = small_model(awake=False)
    clip, text = random_clip(10)
    t = torch.full((1,), 500.0, dtype=torch.float64)
    assert torch.equal(model(clip, t, text, mode="hybrid"), model(clip, t, text, mode="sink"))


def test_router_follows_E9_in_the_attentions_own_output():
    """(E9) (E10) gamma = sigmoid(w log((t+1)/T) + b), rho clamped at T (D6), read back from the
    attention's fused output: with H_local = 0 it is W_o (gamma H_global); undo W_o and divide by
    the same output with gamma forced to 1."""
    model = small_model()
    attn = model.blocks[0].self_attn
    L, d = 30, model.cfg.dim
    frames = torch.arange(L, dtype=torch.float64)                      # router_horizon T = 10 frames
    x = torch.randn(1, L, d, dtype=torch.float64)
    q = attn.project(x)[0]
    local = torch.zeros(1, L, 2, 12, dtype=torch.float64)
    states, state_of_token = torch.randn(1, 1, 2, 12, 12, dtype=torch.float64), torch.zeros(L, dtype=torch.long)
    w_o_inverse = torch.linalg.inv(attn.o.weight)

    def memory_output(w, b):
        with torch.no_grad():
            attn.memory.router_w.fill_(w)
            attn.memory.router_b.fill_(b)
            return (attn.fuse(x, q, local, states, state_of_token, frames)[0] - attn.o.bias) @ w_o_inverse.T
    ungated = memory_output(0.0, 50.0)                                               # (L, d) H_global
    with torch.no_grad():
        assert torch.allclose(ungated, attn.memory(x, q, states, state_of_token, frames)[0], atol=1e-12)  # added
    gamma = memory_output(2.0, -1.0) / ungated                                       # (L, d)
    rho = [min(1.0, (f + 1) / 10) for f in range(L)]
    expected = torch.tensor([1 / (1 + math.exp(-(2.0 * math.log(r) - 1.0))) for r in rho], dtype=torch.float64)
    assert torch.allclose(gamma, expected[:, None].expand(L, d), atol=1e-8)
    assert expected[0] < 0.02 and expected[9] == expected[29]                        # rises, then flat at T


def test_gates_follow_E5_E6_and_start_as_gated_deltanet():
    """(E5) beta = sigmoid(W_beta x); (E6) g = -exp(A) softplus(W_alpha x + B), one per head (D1);
    (D9) A = log(a), a in (0, 16]; softplus(B) = dt in [1e-3, 1e-1]."""
    memory = small_model().blocks[0].self_attn.memory
    A, dt = memory.A_log.detach().exp(), torch.nn.functional.softplus(memory.dt_bias.detach())
    assert (A > 0).all() and (A <= 16).all() and (dt >= 1e-3 - 1e-12).all() and (dt <= 1e-1 + 1e-12).all()
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    g, beta = memory.gates(x)
    assert g.shape == beta.shape == (3, 5, 2)
    for b, l, h in [(0, 0, 0), (2, 4, 1), (1, 3, 0)]:
        a_x = (memory.alpha_proj.weight[h] @ x[b, l] + memory.dt_bias[h]).item()
        expected_g = -math.exp(memory.A_log[h].item()) * math.log1p(math.exp(a_x))
        expected_beta = 1 / (1 + math.exp(-(memory.beta_proj.weight[h] @ x[b, l]).item()))
        assert abs(g[b, l, h].item() - expected_g) < 1e-12 and abs(beta[b, l, h].item() - expected_beta) < 1e-12


def test_memory_read_follows_E8_with_D2_queries_and_D4_gate():
    """(E8) H_global = RMSNorm(q M) * silu(g_out x): q the pre-RoPE query, L2-normalised and scaled
    by hd^-0.5 (D2), the norm per head, then the output gate (D4); with gamma forced to 1."""
    memory = small_model().blocks[0].self_attn.memory
    with torch.no_grad():
        memory.router_b.fill_(50.0)                                      # gamma = 1 to float64 precision
    gen = torch.Generator().manual_seed(0)
    x, q = torch.randn(1, 3, 24, generator=gen, dtype=torch.float64), torch.randn(1, 3, 2, 12, generator=gen, dtype=torch.float64)
    M = 0.05 * torch.randn(1, 1, 2, 12, 12, generator=gen, dtype=torch.float64)   # small: RMSNorm's eps matters
    with torch.no_grad():
        got = memory(x, q, M, torch.zeros(3, dtype=torch.long), torch.arange(3))
    for l in range(3):
        for h in range(2):
            q_lh = [float(v) for v in q[0, l, h]]
            norm = math.sqrt(sum(v * v for v in q_lh))
            read = [sum(q_lh[i] / norm / math.sqrt(12) * float(M[0, 0, h, i, j]) for i in range(12)) for j in range(12)]
            rms = math.sqrt(sum(r * r for r in read) / 12 + 1e-6)
            for j in range(12):
                gate = (memory.out_gate.weight[h * 12 + j] @ x[0, l] + memory.out_gate.bias[h * 12 + j]).item()
                expected = read[j] / rms * memory.norm.weight[j].item() * gate / (1 + math.exp(-gate))
                assert abs(got[0, l, h * 12 + j].item() - expected) < 1e-12


def test_gradients_reach_the_memory_write_path():
    model = small_model()                 # awake: g_out moved off zero (D9)
    clean, text = random_clip(10)
    noisy = torch.randn_like(clean)
    out = model(noisy, torch.full((1, 10), 400.0, dtype=torch.float64), text, clean_context=clean)
    out.square().mean().backward()
    for block in model.blocks:
        memory = block.self_attn.memory
        for name in ["alpha_proj.weight", "beta_proj.weight", "A_log", "dt_bias", "out_gate.weight"]:
            grad = memory.get_parameter(name).grad
            assert grad is not None and grad.abs().max() > 0, name


def test_memory_module_copies_out_with_kernels_alone():
    """GatedDeltaMemory built from its source with nothing but torch and kernels.gated_delta_rule,
    inside a toy attention: writing a sequence in pieces gives the state of writing it at once,
    and that state is the naive scan's (E7) with L2-normalised keys (D2)."""
    import inspect
    namespace = {"torch": torch, "nn": torch.nn, "nnf": torch.nn.functional, "math": math,
                 "gated_delta_rule": kernels.gated_delta_rule}
    exec(inspect.getsource(tv.GatedDeltaMemory), namespace)
    torch.manual_seed(0)
    B, L, d, nh = 2, 20, 16, 2
    memory = namespace["GatedDeltaMemory"](d, nh, router_horizon=8, kernel_chunk_size=4).double()
    toy_qkv = torch.nn.Linear(d, 3 * d).double()                       # the host attention's projections
    x = torch.randn(B, L, d, dtype=torch.float64)
    q, k, v = toy_qkv(x).view(B, L, 3, nh, d // nh).unbind(2)          # (B, L, nh, hd) each
    g, beta = memory.gates(x)
    empty = torch.zeros(B, nh, d // nh, d // nh, dtype=torch.float64)
    at_once = memory.write(empty, k, v, g, beta)
    in_pieces = empty
    for piece in (slice(0, 7), slice(7, 12), slice(12, L)):
        in_pieces = memory.write(in_pieces, k[:, piece], v[:, piece], g[:, piece], beta[:, piece])
    k_normalised = torch.nn.functional.normalize(k, dim=-1)
    _, naive = kernels.naive_gated_delta_rule(k_normalised, k_normalised, v, g, beta)
    assert at_once.abs().max() > 0.1
    assert (in_pieces - at_once).abs().max() < 1e-12 and (naive - at_once).abs().max() < 1e-12
    states = memory.scan_chunks(k, v, g, beta, [None, slice(0, 7), None, slice(7, L)])   # the parallel path's
    assert states.shape == (B, 4, nh, d // nh, d // nh) and torch.equal(states[:, 0], empty)
    assert (states[:, 3] - at_once).abs().max() < 1e-12
    read = lambda: memory(x, q, states, torch.arange(L) // 5, torch.arange(L) // 4)     # (B, L, d)
    assert torch.equal(read(), torch.zeros(B, L, d, dtype=torch.float64))            # (D9) g_out = 0
    with torch.no_grad():
        memory.out_gate.weight.normal_()
    assert read().shape == (B, L, d) and read()[:, 5:].abs().min() > 0               # chunk 0 reads M = 0


# The hybrid layer copies out whole: these names of tiny_videossm.py and kernels.py, nothing else (README, "Copy it out")
HYBRID_LAYER = ["MODES", "check_mode", "VideoSSMConfig", "rope_angles", "frame_angles", "rope", "GatedDeltaMemory",
                "uses_memory", "sink_and_window", "visible_chunks", "seen_positions", "LayerCache",
                "StreamStep", "stream_step", "HybridAttention"]

LIFTED_STREAM = """
import sys, torch
from hybrid_layer import HybridAttention, LayerCache, VideoSSMConfig, stream_step
assert "tiny_videossm" not in sys.modules
torch.manual_seed(0)
cfg = VideoSSMConfig(frame_size=8, patch_size=4, dim=24, n_heads=2, causal=True, chunk_frames=2, sink_chunks=1,
                     window_chunks=2, router_horizon=10, kernel_chunk_size=4)
layer = HybridAttention(cfg, memory=True).double()
torch.nn.init.normal_(layer.memory.out_gate.weight, 0, 0.5)            # open the memory's gate: its path shows
chunks = torch.randn(7, 2, 8, 24, dtype=torch.float64)                  # 7 chunks of 2 frames x 4 tokens, B = 2
cache, cached, outputs = LayerCache(state=torch.zeros(2, 2, 12, 12, dtype=torch.float64)), [], []
for c, x in enumerate(chunks):
    step = stream_step(cfg, "hybrid", cached, c)
    read, _ = layer.step(x * 0.5, cache, step)                          # a denoising step: reads only
    written, cache = layer.step(x, cache, step, write=True)             # the clean pass: writes
    cached = [[*cached, c][i] for i in step.kept]
    outputs += [read, written]
torch.save({"weights": layer.state_dict(), "chunks": chunks, "outputs": outputs, "state": cache.state,
            "cached": cached}, sys.argv[1])
"""


def test_the_hybrid_layer_copies_out_whole_and_streams_as_the_repositorys(tmp_path):
    """The hybrid layer (sink + window attention over its cache, the memory's read and write, the router, the
    eviction into M) lifted from the model file with kernels.py alone into an empty folder, streamed chunk by chunk
    state in and state out, in a process that cannot import tiny_videossm: equal to the repository's layer."""
    import inspect
    lifted = ["import math", "from dataclasses import dataclass, field", "from typing import NamedTuple", "",
              "import torch", "import torch.nn as nn", "import torch.nn.functional as nnf", "",
              "from kernels import gated_delta_rule", ""]
    for name in HYBRID_LAYER:
        thing = getattr(tv, name)
        lifted.append(f"{name} = {thing!r}" if isinstance(thing, tuple) else inspect.getsource(thing))
    (tmp_path / "hybrid_layer.py").write_text("\n\n".join(lifted))
    shutil.copy(os.path.join(ROOT, "kernels.py"), tmp_path)
    (tmp_path / "stream.py").write_text(LIFTED_STREAM)
    result = subprocess.run([sys.executable, "stream.py", "streamed.pt"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    lifted_run = torch.load(tmp_path / "streamed.pt", weights_only=True)
    cfg = tv.VideoSSMConfig(frame_size=8, patch_size=4, dim=24, n_heads=2, causal=True, chunk_frames=2, sink_chunks=1,
                            window_chunks=2, router_horizon=10, kernel_chunk_size=4)
    layer = tv.HybridAttention(cfg, memory=True).double()
    layer.load_state_dict(lifted_run["weights"])
    cache, cached, outputs = tv.LayerCache(state=torch.zeros(2, 2, 12, 12, dtype=torch.float64)), [], []
    for c, x in enumerate(lifted_run["chunks"]):
        step = tv.stream_step(cfg, "hybrid", cached, c)
        outputs.append(layer.step(x * 0.5, cache, step)[0])
        written, cache = layer.step(x, cache, step, write=True)
        cached = [[*cached, c][i] for i in step.kept]
        outputs.append(written)
    assert cached == lifted_run["cached"] == [0, 6] and lifted_run["state"].abs().sum() > 0   # chunks 1-5 went to M
    for ours, theirs in zip(outputs, lifted_run["outputs"]):
        assert torch.equal(ours, theirs)
    assert torch.equal(cache.state, lifted_run["state"])


def test_memory_state_stays_float32_under_bf16_autocast():
    """Rounding M to bf16 at every eviction would accumulate over a long video."""
    model = small_model(dtype=torch.float32)
    memory = model.blocks[0].self_attn.memory
    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(1, 16, 2, 12, generator=gen).bfloat16() for _ in range(2))
    g, beta = (t.bfloat16() for t in memory.gates(torch.randn(1, 16, 24, generator=gen)))
    state = torch.randn(1, 2, 12, 12, generator=gen)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = memory.write(state, k, v, g, beta)
    with torch.no_grad():
        in_float32 = memory.write(state, k.float(), v.float(), g.float(), beta.float())
    assert under_autocast.dtype == torch.float32 and (under_autocast - in_float32).abs().max() < 1e-6
    cache = tv.StreamCache(model, 1, dtype=torch.bfloat16)
    assert all(layer.state.dtype == torch.float32 for layer in cache.layers)


def test_streaming_runs_under_bf16_autocast_with_M_in_float32():
    """The sampler's path under bf16 autocast: denoising, the clean pass, evictions into M and a prompt switch's
    re-cache run, M stays float32 through every write, and the frames follow float32's within bf16's rounding."""
    model = small_model(dtype=torch.float32)
    encoder = tv.TextEncoder(["a", "circle", "on", "red", "blue"], text_dim=8)
    prompts, sigmas = {0: "a circle on red", 5: "a circle on blue"}, tv.denoising_sigmas(2)

    def stream(cache):
        with torch.no_grad():
            return torch.cat(list(tv.generate(model, encoder, prompts, 8, sigmas, torch.Generator().manual_seed(7),
                                              cache=cache)), 1)
    in_float32, cache = stream(tv.StreamCache(model, 1)), tv.StreamCache(model, 1)
    with torch.autocast("cpu", torch.bfloat16):
        in_bf16 = stream(cache)
    assert all(layer.state.dtype == torch.float32 and layer.state.abs().sum() > 0 for layer in cache.layers)
    assert cache.layers[0].k.dtype == torch.bfloat16                  # autocast did reach the attention
    assert torch.isfinite(in_bf16).all() and (in_bf16 - in_float32).abs().max() < 0.05 * in_float32.abs().max()


def test_sink_positions_keep_every_query_key_distance_bounded_over_10000_frames():
    """(D12) the sink sits right before the window: over a 10,000-frame stream the largest distance
    between a query frame and a key frame stays (sink + window) chunks, and the current chunk's
    own positions stop moving once the window is full."""
    cfg = tv.VideoSSMConfig(frame_size=4, patch_size=4, dim=12, n_heads=1, n_layers=1, ffn_dim=8, text_dim=4,
                            freq_dim=4, causal=True, chunk_frames=4, sink_chunks=1, window_chunks=2, kernel_chunk_size=4)
    model = tv.VideoDiT(cfg)
    cache, steps = tv.StreamCache(model, 1), []
    with torch.no_grad():
        for _ in range(10_000 // cfg.chunk_frames):       # forward_chunk's bookkeeping, without the network
            steps.append(cache.step("cpu"))
            cache.commit(None, steps[-1])
    # a token a frame: a StreamStep's angles are one row per frame, and the time axis's first angle is the
    # RoPE time position itself (its frequency is theta ** 0 = 1)
    position = lambda angles: angles[:, 0]
    distances = [(position(s.query_angles)[:, None] - position(s.key_angles)[None, :]).abs().max().item()
                 for s in steps]
    assert len(steps) == 2500 and max(distances) == (1 + 2) * 4 - 1 == distances[-1]
    assert position(steps[-1].query_angles).tolist() == position(steps[2].query_angles).tolist() == [8, 9, 10, 11]
    assert steps[-1].frame_index.tolist() == [9996, 9997, 9998, 9999]      # the router still sees the truth


def test_memory_mode_sees_earlier_chunks_only_through_M():
    """The state-space-only mode: nothing cached but M, and the output follows M."""
    model = small_model(mode="memory")
    cache = tv.StreamCache(model, 1, dtype=torch.float64)
    clip, text = random_clip(8)
    cache.set_prompt(model, text)
    for c in range(4):
        model.forward_chunk(clip[:, 2 * c:2 * c + 2], 0.0, cache, write=True)
    assert cache.length() == 0 and cache.chunks == [] and cache.next_chunk == 4
    noisy = torch.randn(1, 2, 3, 8, 8, dtype=torch.float64)
    out = model.forward_chunk(noisy, 500.0, cache)
    cache.layers = [layer._replace(state=layer.state * 1.5) for layer in cache.layers]
    assert (model.forward_chunk(noisy, 500.0, cache) - out).abs().max() > 1e-3


def test_generate_is_seeded_and_a_prompt_switch_keeps_the_past():
    model = small_model(dtype=torch.float32)
    encoder = tv.TextEncoder(["a", "circle", "on", "red", "blue"], text_dim=8)
    sigmas = tv.denoising_sigmas(2)

    def run(prompts):
        with torch.no_grad():
            return torch.cat(list(tv.generate(model, encoder, prompts, 6, sigmas, torch.Generator().manual_seed(7))), 1)
    base = run({0: "a circle on red"})
    assert base.shape == (1, 12, 3, 8, 8) and torch.isfinite(base).all()
    assert torch.equal(base, run({0: "a circle on red"}))
    switched = run({0: "a circle on red", 4: "a circle on blue"})
    assert torch.equal(switched[:, :8], base[:, :8]) and not torch.allclose(switched[:, 8:], base[:, 8:])


def test_recache_keeps_sink_and_memory_and_rewrites_the_window():
    model = small_model(dtype=torch.float32)
    cache = tv.StreamCache(model, 1)
    text_a, text_b = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    cache.set_prompt(model, text_a)
    with torch.no_grad():
        for _ in range(5):
            model.forward_chunk(torch.randn(1, 2, 3, 8, 8), 0.0, cache, write=True)
        before = [(layer.k.clone(), layer.state.clone()) for layer in cache.layers]
        tv.recache(model, cache, text_b)
    sink = 2 * 4
    for (k, state), layer in zip(before, cache.layers):
        assert torch.equal(layer.state, state) and torch.equal(layer.k[:, :sink], k[:, :sink])
        assert layer.k.shape == k.shape
    assert cache.chunks == [0, 4] and cache.next_chunk == 5
    assert not torch.equal(cache.layers[-1].k[:, sink:], before[-1][0][:, sink:])   # deeper layers see the prompt


def test_a_prompt_switch_keeps_the_rollouts_write_path_in_the_graph():
    """(D11) (D10) in a self-rollout, the window re-cached at a switch keeps its gates' gradients:
    chunk 2 is re-encoded at the switch to chunk 3, evicted into M after chunk 3, and read by chunk 4."""
    model = small_model(dtype=torch.float32)
    encoder = tv.TextEncoder(["a", "circle", "on", "red", "blue"], text_dim=8)

    def gradient_of_last_chunk_wrt_W_alpha(prompts):
        model.zero_grad()
        chunks = list(tv.generate(model, encoder, prompts, 5, tv.denoising_sigmas(2), torch.Generator().manual_seed(0),
                                  grad_chunks={2, 3, 4}))
        chunks[-1].square().sum().backward()
        return sum(block.self_attn.memory.alpha_proj.weight.grad.abs().sum().item() for block in model.blocks)
    without_switch = gradient_of_last_chunk_wrt_W_alpha({0: "a circle on red"})
    with_switch = gradient_of_last_chunk_wrt_W_alpha({0: "a circle on red", 3: "a circle on blue"})
    assert without_switch > 0 and with_switch > 0.1 * without_switch


def test_a_chunk_stops_at_its_exit_step_and_the_cache_gets_that_prediction():
    """Self-Forcing's exit step (stage 2): with exit_step k every chunk runs denoising steps 0..k at the
    sampler's levels, re-noised in between with fresh noise; the chunk generate yields, and the one the
    clean pass writes into the cache, is step k's prediction from step k's input."""
    model = small_model(dtype=torch.float32)
    encoder = tv.TextEncoder(["a", "circle", "on", "red"], text_dim=8)
    sigmas = tv.denoising_sigmas(3)
    calls, forward_chunk = [], model.forward_chunk

    def recording(x, timestep, cache, write=False):
        out = forward_chunk(x, timestep, cache, write)
        calls.append((x, torch.as_tensor(timestep).reshape(-1)[0].item(), out, write))
        return out
    model.forward_chunk = recording
    for exit_step in range(3):
        calls.clear()
        with torch.no_grad():
            chunk, = tv.generate(model, encoder, {0: "a circle on red"}, 1, sigmas,
                                 torch.Generator().manual_seed(0), exit_step=exit_step)
        *steps, clean_pass = calls
        assert [t for _, t, _, _ in steps] == pytest.approx([1000 * s for s in sigmas[:exit_step + 1]])
        assert not any(write for *_, write in steps) and clean_pass[3] and clean_pass[1] == 0
        x, t, velocity, _ = steps[-1]
        assert torch.allclose(chunk, tv.x0_from_velocity(x, velocity, torch.tensor([t / 1000])))
        assert torch.equal(clean_pass[0], chunk)
        noises = torch.randn((exit_step + 1, 1, 2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
        for i in range(exit_step):                                   # the next input: x0 re-noised to the next level
            x0 = tv.x0_from_velocity(steps[i][0], steps[i][2], torch.tensor([sigmas[i]]))
            assert torch.allclose(steps[i + 1][0], tv.add_noise(x0, noises[i + 1], torch.tensor([sigmas[i + 1]])),
                                  atol=1e-6)
    del model.forward_chunk


def test_teacher_force_leaves_the_cache_as_streaming_those_frames_would():
    """teacher_force (the recall probe's and the memory phase's context) goes through the clean pass:
    the next chunk's prediction equals the parallel path's with those frames as the clean context."""
    model = small_model(mode="hybrid")
    clip, _ = random_clip(10)
    encoder = tv.TextEncoder(["a", "circle", "on", "red"], text_dim=8)
    cache = tv.StreamCache(model, 1, dtype=torch.float64)
    tv.teacher_force(model, encoder, cache, clip[:, :8], {0: "a circle on red"})   # it sets the prompt itself
    text = encoder(["a circle on red"]).double()
    assert cache.next_chunk == 4 and cache.chunks == [0, 3] and all(layer.state.abs().max() > 0 for layer in cache.layers)
    noisy = torch.randn(1, 2, 3, 8, 8, dtype=torch.float64)
    streamed = model.forward_chunk(noisy, 500.0, cache)
    t = torch.cat([torch.zeros(1, 8), torch.full((1, 2), 500.0)], 1).double()
    parallel = model(torch.cat([clip[:, :8], noisy], 1), t, text)[:, -2:]
    assert (streamed - parallel).abs().max() < 1e-8


def test_bad_inputs_give_clear_errors():
    model = small_model(dtype=torch.float32)
    text = torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match="must have shape"):
        model(torch.randn(1, 4, 3, 8), torch.zeros(1), text)
    with pytest.raises(ValueError, match="not a multiple of chunk_frames"):
        model(torch.randn(1, 3, 3, 8, 8), torch.zeros(1), text)
    with pytest.raises(ValueError, match="text must have shape"):
        model(torch.randn(1, 4, 3, 8, 8), torch.zeros(1), torch.randn(1, 5, 7))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        small_config(frame_size=10)
    with pytest.raises(ValueError, match="window_chunks must be >= 1"):
        small_config(window_chunks=0)
    with pytest.raises(ValueError, match="unknown mode"):
        small_config(mode="sliding")
    with pytest.raises(ValueError, match="unknown mode"):
        tv.StreamCache(model, 1, mode="sliding")
    encoder = tv.TextEncoder(["a", "circle", "on", "red"], text_dim=8)
    with pytest.raises(ValueError, match="unknown word 'triangle'.*a circle on red"):
        encoder(["a triangle on red"])
    assert encoder([""]).shape == (1, 8, 8)                   # the empty prompt: unconditional
    with pytest.raises(ValueError, match="unknown mode 'bogus'"):
        model(torch.randn(1, 4, 3, 8, 8), torch.zeros(1), text, mode="bogus")
    with pytest.raises(ValueError, match="set_prompt"):
        model.forward_chunk(torch.randn(1, 2, 3, 8, 8), 0.0, tv.StreamCache(model, 1))


# ----------------------------------------------------------------------------------------------
# world.py, the world: ground truth that every measure is calibrated on



@pytest.fixture(scope="module")
def long_clips():
    return World().sample(batch_size=8, frames=240, seed=3)


def test_world_is_deterministic_per_seed():
    world = World()
    first, again, other = world.sample(4, 10, seed=7), world.sample(4, 10, seed=7), world.sample(4, 10, seed=8)
    assert torch.equal(first.video, again.video) and first.captions == again.captions
    assert torch.equal(first.position, again.position)
    assert not torch.equal(first.video, other.video)


def test_frames_shape_and_range():
    world = World()
    clips = world.sample(16, 12, seed=0)
    assert clips.video.shape == (16, 12, 3, 32, 32) and clips.video.dtype == torch.float32
    assert clips.video.min() >= -1 and clips.video.max() <= 1
    assert World(size=48).sample(2, 5, seed=0).video.shape == (2, 5, 3, 48, 48)


def test_captions_agree_with_ground_truth():
    clips = World().sample(8, 6, seed=2, switch_at=3)
    for b in range(8):
        for f in range(6):
            caption = parse_caption(clips.captions[b][f])
            assert caption.count == clips.count[b]
            assert caption.shape == clips.shape[b, f] and caption.background == clips.background[b, f]
    assert ((clips.sprite_colour >= 0).sum(1) == clips.count).all()


def test_bounces_keep_speed_and_flip_only_at_walls(long_clips):
    world = World()
    lo, hi = world.centre_range
    position = long_clips.position  # (B, F, S, 2)
    step = position[:, 1:] - position[:, :-1]  # (B, F-1, S, 2)
    near_wall = ((position - lo) < world.max_speed) | ((hi - position) < world.max_speed)
    free = ~(near_wall[:, 1:] | near_wall[:, :-1])  # steps that cannot have touched a wall
    # away from walls, each velocity component keeps its size all clip long
    size = step.abs()
    largest = torch.where(free, size, -torch.inf).amax(1)
    smallest = torch.where(free, size, torch.inf).amin(1)
    has_free = free.any(1)
    assert (largest - smallest)[has_free].max() < 1e-3
    speed = step.norm(dim=-1)[free.all(-1)]
    assert speed.min() > world.min_speed - 1e-3 and speed.max() < world.max_speed + 1e-3
    # a component reverses only next to a wall
    flips = torch.sign(step[:, 1:]) != torch.sign(step[:, :-1])
    assert flips.any() and not (flips & ~near_wall[:, 1:-1]).any()
    assert position.min() >= lo - 1e-4 and position.max() <= hi + 1e-4


def test_sprites_leave_the_view_and_come_back(long_clips):
    visible = long_clips.visible_area >= 1  # (B, F, S) a pixel's worth in view
    seen = visible.cummax(1).values
    left_after_seen = (seen & ~visible).cummax(1).values
    came_back = (left_after_seen & visible).any(1)  # (B, S)
    present = long_clips.sprite_colour >= 0
    assert came_back[present].float().mean() > 0.75
    assert not visible[~present[:, None].expand_as(visible)].any()


def test_caption_switch_changes_named_attributes_only():
    world, k = World(), 5
    plain, switched = world.sample(16, 12, seed=4), world.sample(16, 12, seed=4, switch_at=k)
    assert torch.equal(switched.video[:, :k], plain.video[:, :k])
    assert torch.equal(switched.position, plain.position)
    assert torch.equal(switched.sprite_colour, plain.sprite_colour)
    assert torch.equal(switched.count, plain.count)
    changed = (switched.shape[:, k:] != plain.shape[:, k:]) | (switched.background[:, k:] != plain.background[:, k:])
    assert changed.all()
    assert all(c[k - 1] == p[k - 1] and c[k] != p[k] for c, p in zip(switched.captions, plain.captions))
    background, _ = read_attributes(switched.video)
    assert torch.equal(background, switched.background)  # the new background shows from frame k
    with pytest.raises(ValueError, match="switch_at"):
        world.sample(2, 12, seed=0, switch_at=12)
    each = [2, 5, 7, 11]                                       # a frame per clip: each clip as if alone with its own
    mixed = world.sample(4, 12, seed=4, switch_at=each)
    for b, k in enumerate(each):
        alone = world.sample(4, 12, seed=4, switch_at=k)
        assert torch.equal(mixed.video[b], alone.video[b]) and mixed.captions[b] == alone.captions[b]
    with pytest.raises(ValueError, match="switch_at"):
        world.sample(2, 12, seed=0, switch_at=[3, 0])


def test_parse_caption_errors_and_round_trip():
    assert parse_caption("two circles on blue") == (2, SHAPES.index("circle"), list(BACKGROUNDS).index("blue"))
    with pytest.raises(ValueError, match="'dog'") as error:
        parse_caption("a dog on blue")
    assert str(VOCAB) in str(error.value)
    for malformed in ["a circles on blue", "two circle on blue", "on blue a circle", "a circle blue", ""]:
        with pytest.raises(ValueError, match="grammar"):
            parse_caption(malformed)
    generator = torch.Generator().manual_seed(0)
    captions = {random_caption(generator) for _ in range(200)}
    assert len(captions) == MAX_SPRITES * len(SHAPES) * len(BACKGROUNDS)
    assert all(parse_caption(caption).text() == caption for caption in captions)


def test_curtains_hide_sprites_for_long_spans_and_keep_the_worlds_physics():
    plain, curtained = World(), World(curtains=4)
    a, b = plain.sample(16, 120, seed=4), curtained.sample(16, 120, seed=4)
    assert torch.equal(curtained.sample(16, 120, seed=4).video, b.video)                    # deterministic per seed
    assert torch.equal(a.position, b.position) and torch.equal(a.sprite_colour, b.sprite_colour)   # same motion
    assert (b.video[..., :4] == CURTAIN_RGB[:, None, None]).all()                   # the curtains, in front
    assert (b.video[..., -4:] == CURTAIN_RGB[:, None, None]).all()
    assert torch.equal(a.video[..., 4:-4], b.video[..., 4:-4])                              # the rest as before
    hidden = lambda clips: ((clips.visible_area < 1) & (clips.sprite_colour >= 0)[:, None]).sum()       # present sprites
    assert (b.visible_area <= a.visible_area + 1e-4).all() and hidden(b) > 3 * hidden(a)
    spans_plain, spans_curtained = metrics.hidden_spans(a), metrics.hidden_spans(b)
    assert (spans_curtained > 9).sum() > 5 * max(1, (spans_plain > 9).sum())               # longer than sink + window
    assert sprite_mask(b.video, b.background).sum() < sprite_mask(a.video, a.background).sum()   # curtains are not
    with pytest.raises(ValueError, match="curtains"):
        World(curtains=16)


def test_sprite_mask_is_where_the_world_painted_sprites():
    clips = World().sample(16, 12, seed=5)
    found = sprite_mask(clips.video, clips.background).sum((2, 3, 4))           # (B, F) pixels marked as sprite
    painted = clips.visible_area.sum(-1)                         # (B, F) sprite pixels the world drew
    assert (found[painted == 0] == 0).all() and (found[painted >= 4] > 0).all()
    assert 0.8 < found.sum() / painted.sum() < 1.3               # soft edges count when mostly covered


def test_nearest_palette_names_the_colour_the_world_painted():
    clips = World(curtains=4).sample(4, 6, seed=1)
    index, distance = metrics.nearest_palette(clips.video)
    background = index == clips.background[..., None, None]                       # (B, F, H, W)
    grey, exact = index == len(metrics.PALETTE) - 1, distance < 0.01                # cdist: to about 1e-3
    assert (grey & exact)[..., :4].all() and (grey & exact)[..., -4:].all()        # the curtains
    assert (background & exact).float().mean() > 0.6                             # most of the view: the background
    assert exact[background].float().mean() > 0.95                               # all but the sprites' soft edges


# ----------------------------------------------------------------------------------------------
# train.py, training: the stages on the `test` preset

@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """The whole `test` pipeline (teacher, stage 1, DMD, the memory phase), trained once. Tests only read it;
    one that writes takes a copy (the `run` fixture)."""
    out = str(tmp_path_factory.mktemp("trained"))
    train.main(["--preset", "test", "--out", out])
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A Run in a copy of `trained`, for a test that may write into its folder: the run that trained it."""
    return train.Run("cpu", str(shutil.copytree(trained, tmp_path / "run")), seed=0, spec="test")


def weights(path):
    return tv.load_checkpoint(path)["model"]


def same_every_step(run):
    """Make a stage see the same data and noise at every step: a fixed batch."""
    run.generator = lambda *keys: torch.Generator().manual_seed(1234)


def test_the_whole_pipeline_runs_and_releases_every_stage(trained):
    preset = train.PRESETS["test"]
    steps = {"teacher.pt": preset.teacher_steps, "student_stage1.pt": preset.student_steps,
             "student_dmd.pt": preset.dmd_steps, "student.pt": preset.memory_steps}
    for name, count in steps.items():
        checkpoint = tv.load_checkpoint(os.path.join(trained, name))
        assert checkpoint["made_by"]["preset"] == "test" and len(checkpoint["log"]) == count
        assert all(math.isfinite(v) for entry in checkpoint["log"] for v in entry.values())
    assert sorted(f for f in os.listdir(trained) if f.endswith(".pt")) == sorted([*steps, "ode_pairs.pt"])  # no resume files


def test_mode_picks_the_students_memory(run):
    os.remove(run.path("student_stage1.pt"))
    train.main(["--preset", "test", "--stage", "1", "--mode", "sink", "--out", run.out_dir])
    assert tv.load_checkpoint(run.path("student_stage1.pt"))["config"]["mode"] == "sink"


def test_a_released_stage_is_skipped_and_the_phase_release_ends_stage_2(run, capsys):
    def main_prints(*flags):
        train.main(["--preset", "test", "--out", run.out_dir, *flags])
        return capsys.readouterr().out
    done = lambda number, name: rf"stage {number}: {re.escape(run.path(name))} .*done"   # made by this run: done
    said = main_prints()
    for number, name in (("0", "teacher.pt"), ("1", "student_stage1.pt"), ("2", "student_dmd.pt")):
        assert re.search(done(number, name), said)
    os.remove(run.path("student_dmd.pt"))                  # the phase's student.pt still says stage 2 is done
    training_into, *said = main_prints("--stage", "2").strip().splitlines()
    assert training_into.startswith(f"training into {run.out_dir}/")
    assert len(said) == 1 and re.fullmatch(done("2", "student.pt"), said[0])
    assert not os.path.exists(run.path("student_dmd.pt"))


def test_teacher_loss_decreases_on_a_fixed_batch(tmp_path):
    run = train.Run("cpu", str(tmp_path), seed=0, spec="test")
    same_every_step(run)
    stage = train.Teacher(run)
    stage.steps = 400                                    # a long schedule: the learning rate stays up
    losses = [stage.train_step(step)["loss"] for step in range(25)]
    assert sum(losses[-5:]) < 0.85 * sum(losses[:5])


def test_sprite_weight_raises_the_teacher_loss(tmp_path):
    """The same weights and batch: weight w adds w times the sprite pixels' part of the error, so
    the loss grows, but by much less than 1 + w times (sprites are a small part of the frame)."""
    losses = []
    for weight in (0.0, 3.0):
        run = train.Run("cpu", str(tmp_path), seed=0, spec=f"test sprite_weight={weight}")
        same_every_step(run)
        losses.append(train.Teacher(run).train_step(0)["loss"])
    plain, weighted = losses
    assert plain < weighted < 2 * plain


def test_teacher_data_new_clips_each_step_captions_dropped_at_their_rate_a_level_per_clip(tmp_path, monkeypatch):
    """Stage 0's data, line by line: every step draws clips of its own; each clip keeps its caption, or gets
    the empty prompt with probability text_dropout; noise and the noise level s are drawn per clip."""
    stage = train.Teacher(train.Run("cpu", str(tmp_path), seed=0, spec="test text_dropout=0.2 teacher_batch=32"))
    seeds, seen, sample = [], [], stage.world.sample

    def recording_sample(batch_size, frames, seed):
        seeds.append(seed)
        clips = sample(batch_size, frames, seed)
        seen.append([c[0] for c in clips.captions])
        return clips
    stage.world.sample = recording_sample
    fed = []
    monkeypatch.setattr(train, "flow_matching_error", lambda model, x0, noise, sigma, text, autocast: fed.append(
        (x0, noise, sigma)) or torch.zeros_like(x0, requires_grad=True))
    captions, encode = [], stage.text_encoder.forward
    monkeypatch.setattr(stage.text_encoder, "forward", lambda prompts: captions.append(prompts) or encode(prompts))
    for step in range(4):
        stage.train_step(step)
    assert len(set(seeds)) == 4 and not torch.equal(fed[0][0], fed[1][0])         # new clips every step
    dropped = [c == "" for batch in captions for c in batch]
    assert 0.1 < sum(dropped) / len(dropped) < 0.3                                 # text_dropout = 0.2
    assert all(c in ("", truth) for batch, truths in zip(captions, seen) for c, truth in zip(batch, truths))
    for x0, noise, sigma in fed:
        assert sigma.unique().numel() == len(sigma) and noise.flatten(1).std(1).min() > 0.5


def test_teacher_alternates_clips_and_single_frames(tmp_path):
    """Joint image-video training: with image_batch set, even steps draw clips and odd steps draw that
    many 1-frame clips."""
    stage = train.Teacher(train.Run("cpu", str(tmp_path), seed=0, spec="test image_batch=6"))
    drawn, sample = [], stage.world.sample

    def recording_sample(batch_size, frames, seed):
        drawn.append((batch_size, frames))
        return sample(batch_size, frames, seed)

    stage.world.sample = recording_sample
    for step in range(4):
        assert math.isfinite(stage.train_step(step)["loss"])
    assert drawn == [(2, 8), (6, 1), (2, 8), (6, 1)]


def test_teacher_compiles_only_where_it_can(tmp_path, monkeypatch, capsys):
    run = train.Run("cpu", str(tmp_path), seed=0, spec="test compile=true")
    monkeypatch.setattr(train.shutil, "which", lambda name: "/usr/bin/" + name)   # a compiler: compiled (lazily)
    stage = train.Teacher(run)
    assert stage.train_forward is not stage.model
    monkeypatch.setattr(train.shutil, "which", lambda name: None)                # none: eager, and says so
    stage = train.Teacher(run)
    assert stage.train_forward is stage.model and "no C++ compiler" in capsys.readouterr().out


def test_the_teachers_guided_sampling_solves_its_ode_with_cfg():
    """teacher_sample (which makes stage 1's ODE pairs): with a stub teacher of constant velocity v the
    Euler steps from s = 1 to 0 are exact, so each kept state is the clean end plus s v, and v is the
    guided v_uncond + guidance_scale (v_cond - v_uncond): conditional 1 and unconditional 0 give guidance_scale."""
    text_encoder = tv.TextEncoder(VOCAB, 8)

    class Stub(torch.nn.Module):
        cfg = tv.VideoSSMConfig(frame_size=8, patch_size=4, dim=8, n_heads=2, text_dim=8)

        def __init__(self, unconditional):
            super().__init__()
            self.unconditional, self.weight = unconditional, torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, t, text):
            empty = (text == text_encoder([""])).flatten(1).all(1).view(-1, 1, 1, 1, 1).float()
            return torch.ones_like(x) * (1 - empty) + self.unconditional * empty
    keep = tv.denoising_sigmas(3, 3.0)
    for unconditional, velocity in [(0.0, 2.5), (1.0, 1.0)]:
        clean, kept = train.teacher_sample(Stub(unconditional), text_encoder, ["a circle on red"] * 2, 4, steps=5,
                                           timestep_shift=3.0, guidance_scale=2.5,
                                           generator=torch.Generator().manual_seed(0),
                                           keep_sigmas=keep)
        assert clean.shape == (2, 4, 3, 8, 8) and len(kept) == len(keep)
        for s, state in zip(keep, kept):
            assert torch.allclose(state - clean, torch.full_like(clean, s * velocity), atol=1e-5)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    train.main(["--preset", "test", "--stage", "0", "--out", straight])
    train.main(["--preset", "test", "--stage", "0", "--out", interrupted, "--stop-at", "4"])
    assert not os.path.exists(os.path.join(interrupted, "teacher.pt"))
    assert os.path.exists(os.path.join(interrupted, "teacher.resume.pt"))
    train.main(["--preset", "test", "--stage", "0", "--out", interrupted])
    a, b = weights(os.path.join(straight, "teacher.pt")), weights(os.path.join(interrupted, "teacher.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not os.path.exists(os.path.join(interrupted, "teacher.resume.pt"))


def test_two_processes_under_torchrun_stay_in_sync(tmp_path):
    # --standalone picks a free port; gloo on the loopback interface needs no hostname lookup
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "train.py", "--preset", "test", "--stage", "0", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=os.path.dirname(os.path.abspath(__file__)),
                            env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"})
    assert result.returncode == 0, result.stderr[-2000:]          # the ranks' weights are checked equal at the end
    assert os.path.exists(tmp_path / "teacher.pt") and not os.path.exists(tmp_path / "teacher.resume.pt")


def test_checkpoint_and_preset_errors_are_clear(tmp_path, capsys):
    with pytest.raises(tv.CheckpointError, match="no checkpoint at"):
        tv.load_checkpoint(str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(tv.CheckpointError, match="corrupt"):
        tv.load_checkpoint(str(corrupt))
    with pytest.raises(SystemExit):
        train.main(["--preset", "huge", "--out", str(tmp_path)])
    assert "unknown preset 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no checkpoint at"):   # stage 1 without a teacher
        train.main(["--preset", "test", "--stage", "1", "--out", str(tmp_path / "empty")])
    with pytest.raises(SystemExit):
        train.main(["--preset", "test", "--set", "teacher_step=3", "--out", str(tmp_path)])
    assert "--set teacher_step=3: expected FIELD=VALUE" in capsys.readouterr().err


def test_preset_settings_apply_and_are_recorded(tmp_path, capsys):
    preset = train.preset_from("test teacher_steps=3 model.dim=48 compile=true teacher_lr=0.01")
    assert (preset.teacher_steps, preset.model["dim"], preset.compile, preset.teacher_lr) == (3, 48, True, 0.01)
    assert (train.PRESETS["test"].teacher_steps, train.PRESETS["test"].model["dim"]) == (6, 32)  # not mutated
    for spec, message in [("test model.width=3", "a field of the model \\(VideoSSMConfig\\)"),
                          ("test model.causal=true", "VideoSSMConfig"),
                          ("test teacher_steps=many", "'many' is not a valid int"),
                          ("test compile=maybe", "'maybe' is not a valid bool"),
                          ("test model.n_heads=3", "--set: .*n_heads"),
                          ("huge teacher_steps=3", "unknown preset 'huge'")]:
        with pytest.raises(ValueError, match=message):
            train.preset_from(spec)
    # a run records its settings with the preset's name and the whole recipe, and what reads the checkpoint
    # applies the recorded values: a preset this train.py does not know changes nothing
    spec = "test teacher_steps=2 clip_frames=4"
    train.main(["--preset", "test", "--stage", "0", "--set", "teacher_steps=2", "--set", "clip_frames=4",
                "--out", str(tmp_path)])
    checkpoint = tv.load_checkpoint(str(tmp_path / "teacher.pt"))
    made_by = checkpoint["made_by"]
    assert made_by["preset"] == spec and len(checkpoint["log"]) == 2
    assert train.preset_from(made_by["preset"]).clip_frames == made_by["recipe"]["clip_frames"] == 4
    run = train.Run("cpu", str(tmp_path), seed=0, spec=spec)
    run.made_by = {**run.made_by, "preset": "huge"}
    train.save_checkpoint(run.path("teacher.pt"), {**checkpoint, "made_by": run.made_by})
    teacher, text_encoder = tv.build(checkpoint)
    train.release(run, "student.pt", 1, train.student_from_teacher(teacher, "hybrid"), text_encoder, [])
    capsys.readouterr()
    report.report(str(tmp_path), clips=2)
    assert "2 clips of 4 frames" in capsys.readouterr().out
    assert sample.load(run.path("student.pt"))[2]["made_by"]["recipe"]["clip_frames"] == 4
    # and a checkpoint they cannot use is refused with one clear message
    for name in ("teacher.pt", "student.pt"):
        train.save_checkpoint(run.path(name), {**tv.load_checkpoint(run.path(name)), "format": "tiny-videossm/1"})
    for reads in (lambda: report.report(str(tmp_path)), lambda: sample.load(run.path("student.pt"))):
        with pytest.raises(SystemExit, match="another version of tiny-videossm"):
            reads()


def test_the_gpu_preset_carries_tinys_recipe():
    gpu, tiny = train.PRESETS["gpu"], train.PRESETS["tiny"]
    for name in ("compile", "sprite_weight", "clip_frames", "timestep_shift", "denoising_steps", "guidance_scale",
                 "ode_steps"):
        assert getattr(gpu, name) == getattr(tiny, name), name
    assert gpu.image_batch > 0 and gpu.memory_steps > 0 and gpu.model["dim"] > tiny.model["dim"]


def test_every_stage_trains_under_bf16_autocast_with_M_in_float32(tmp_path, monkeypatch):
    """The CUDA path's precision, on the CPU: with Run.autocast giving bf16 autocast (on CUDA it does), every model
    call of every stage runs under it, the losses stay finite and every write leaves M in float32. A dtype
    mismatch of the CUDA path fails here first."""
    monkeypatch.setattr(train.Run, "autocast", lambda self: torch.autocast("cpu", torch.bfloat16))
    stage_now, autocast_on, states = ["setup"], {}, []
    for stage in (train.Teacher, train.ODEDistillation, train.SelfRolloutDMD, train.MemoryRecall):
        def train_step(self, step, original=stage.train_step):
            stage_now[0] = self.name
            return original(self, step)
        monkeypatch.setattr(stage, "train_step", train_step)
    forward, forward_chunk, write = tv.VideoDiT.forward, tv.VideoDiT.forward_chunk, tv.GatedDeltaMemory.write
    seen = lambda: autocast_on.setdefault(stage_now[0], []).append(torch.is_autocast_enabled("cpu"))
    monkeypatch.setattr(tv.VideoDiT, "forward", lambda *args, **kwargs: seen() or forward(*args, **kwargs))
    monkeypatch.setattr(tv.VideoDiT, "forward_chunk", lambda *args, **kwargs: seen() or forward_chunk(*args, **kwargs))
    monkeypatch.setattr(tv.GatedDeltaMemory, "write", lambda *args: states.append(write(*args)) or states[-1])
    train.main(["--preset", "test", "--out", str(tmp_path)])
    stages = ["stage 0 (teacher)", "stage 1 (ODE distillation)", "stage 2 (self-rollout DMD)", "stage 2 (memory recall)"]
    assert sorted(autocast_on) == sorted(stages)
    assert all(all(calls) for calls in autocast_on.values()), {name: calls.count(False) for name, calls in autocast_on.items()}
    assert states and all(state.dtype == torch.float32 for state in states)
    for name in ("teacher.pt", "student_stage1.pt", "student_dmd.pt", "student.pt"):
        log = tv.load_checkpoint(tmp_path / name)["log"]
        assert log and all(math.isfinite(value) for entry in log for value in entry.values())


def test_the_gpu_presets_structure_trains_every_stage_and_streams_at_a_small_width(tmp_path):
    """The `gpu` preset's structure (patch 2 on 32x32 frames, window 3, its router horizon, 96-frame rollouts, its
    phase and its worlds), only two layers narrow and a step or two a stage: a preset edit that breaks a stage fails
    here, not on a rented GPU."""
    small = ["model.dim=12", "model.n_heads=2", "model.n_layers=2", "model.ffn_dim=12", "model.text_dim=8",
             "model.freq_dim=8", "compile=false", "teacher_steps=2", "teacher_batch=1", "image_batch=2", "ode_clips=2",
             "ode_steps=2", "student_steps=2", "student_batch=1", "dmd_steps=2", "critic_warmup=1", "dmd_batch=1",
             "memory_steps=2", "memory_clips=1"]
    train.main(["--preset", "gpu", *[flag for setting in small for flag in ("--set", setting)], "--out", str(tmp_path)])
    gpu, student = train.PRESETS["gpu"], tv.load_checkpoint(tmp_path / "student.pt")
    structure = ("frame_size", "patch_size", "chunk_frames", "sink_chunks", "window_chunks", "router_horizon")
    assert {key: student["config"][key] for key in structure} == {key: gpu.model[key] for key in structure}
    assert student["made_by"]["preset"] == " ".join(["gpu", *small]) and len(student["log"]) == 2   # the phase ran
    sample.main(["--checkpoint", str(tmp_path / "student.pt"), "--frames", "24", "--out", str(tmp_path / "gpu.mp4")])
    assert len(read_video(tmp_path / "gpu.mp4")) == 24                            # 8 chunks: past sink and window


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without CUDA is told")
def test_the_gpu_check_says_in_one_line_that_it_needs_cuda():
    result = subprocess.run([sys.executable, "docs/gpu_check.py"], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.abspath(__file__)))
    said = (result.stdout + result.stderr).strip()
    assert result.returncode == 1 and len(said.splitlines()) == 1 and "no CUDA device" in said


@pytest.mark.parametrize("argv, message", [
    (["--set", "teacher_steps=-5"], "teacher_steps=-5: must be a finite number > 0"),
    (["--set", "teacher_steps=0"], "teacher_steps=0: must be"),
    (["--set", "teacher_lr=nan"], "teacher_lr=nan: must be a finite number"),
    (["--set", "teacher_batch=-1"], "teacher_batch=-1: must be"),
    (["--set", "switch_probability=2"], "between 0 and 1"),
    (["--set", "clip_frames=7"], "whole chunks"),
    (["--set", "memory_free_frames=9"], "whole chunks"),
    (["--set", "critic_warmup=4"], "critic_warmup=4: must be < dmd_steps"),
    (["--set", "ema_decay=1.5"], "ema_decay=1.5: must be between 0 and 1"),
    (["--stop-at", "-3"], "--stop-at -3: a step number"),
    (["--seed", "99999999999999999999999"], "--seed .*: use a number"),
])
def test_bad_training_settings_are_refused_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train.main(["--preset", "test", "--stage", "0", "--out", str(out), *argv])
    assert stop.value.code != 0 and re.search(message, capsys.readouterr().err)
    assert not out.exists()                                  # no untrained teacher.pt, nothing at all


def test_out_must_be_a_folder(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for out in (a_file, a_file / "under"):
        with pytest.raises(SystemExit, match="a file is in the way"):
            train.main(["--preset", "test", "--stage", "0", "--out", str(out)])


def test_a_resume_file_is_used_only_by_its_own_run(tmp_path, capsys):
    out = str(tmp_path)
    train.main(["--preset", "test", "--stage", "0", "--set", "teacher_steps=4", "--stop-at", "2", "--out", out])
    assert os.path.exists(tmp_path / "teacher.resume.pt")
    its_run = re.escape("made by another run (preset 'test teacher_steps=4', seed 0")
    for argv, this_run in [(["--set", "teacher_steps=5"], "this one: preset 'test teacher_steps=5', seed 0"),
                           (["--set", "teacher_steps=4", "--seed", "1"], "this one: preset 'test teacher_steps=4', seed 1")]:
        with pytest.raises(SystemExit, match=f"{its_run}.*{re.escape(this_run)}.*--out with a folder of its own"):
            train.main(["--preset", "test", "--stage", "0", "--out", out, *argv])
        assert not os.path.exists(tmp_path / "teacher.pt")
    train.main(["--preset", "test", "--stage", "0", "--set", "teacher_steps=4", "--out", out])   # the same run resumes
    assert "resuming from step 2" in capsys.readouterr().out and os.path.exists(tmp_path / "teacher.pt")


def test_a_resume_file_of_another_train_py_says_so(tmp_path):
    """The same preset, settings and seed, but a resume file whose recipe another version of train.py wrote (its
    preset's values differ): the message names the code, not the flags, which would not help."""
    out = str(tmp_path)
    train.main(["--preset", "test", "--stage", "0", "--stop-at", "2", "--out", out])
    checkpoint = torch.load(tmp_path / "teacher.resume.pt", weights_only=False)
    del checkpoint["made_by"]["recipe"]["weight_decay"]                 # as a train.py before that field wrote it
    torch.save(checkpoint, tmp_path / "teacher.resume.pt")
    with pytest.raises(SystemExit, match="made by preset 'test', seed 0 too, but by another version of train.py"):
        train.main(["--preset", "test", "--stage", "0", "--out", out])


def test_ctrl_c_stops_training_with_one_line_and_the_same_command_goes_on(tmp_path):
    out = str(tmp_path / "run")
    command = [sys.executable, "train.py", "--preset", "test", "--stage", "0", "--set", "teacher_steps=100000",
               "--out", out]
    # Ctrl-C's usual meaning in the child, even where this test run was started with SIGINT ignored (`trap ''
    # INT`, some background launchers): a process that inherits "ignored" never sees the signal.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120                        # the first checkpoint: save_every steps in
        while process.poll() is None and time.time() < deadline and not os.path.exists(os.path.join(out, "teacher.resume.pt")):
            time.sleep(0.05)
        assert os.path.exists(os.path.join(out, "teacher.resume.pt")), "no checkpoint within 120 s"
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=60)[1]
    finally:
        process.kill()                                      # a no-op once it has stopped
    assert process.returncode == 130 and "Traceback" not in err and "the same command goes on" in err, err[-2000:]
    assert not os.path.exists(os.path.join(out, "run.lock"))
    result = subprocess.run([*command, "--stop-at", "100"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "resuming from step" in result.stdout, result.stderr[-2000:]


def test_stale_temporary_files_are_cleaned_and_a_broken_pairs_cache_is_made_again(trained, tmp_path, capsys):
    folder = str(shutil.copytree(trained, tmp_path / "run"))
    stale = os.path.join(folder, "teacher.resume.pt.12345.tmp")       # a save killed mid-way: once the run holds
    unrelated = os.path.join(folder, "notes.tmp")                       # the folder, no save of another is under way
    for path in (stale, unrelated):
        open(path, "wb").close()
    open(os.path.join(folder, "ode_pairs.pt"), "wb").write(b"broken")
    run = train.Run("cpu", folder, seed=0, spec="test")
    assert not os.path.exists(stale) and os.path.exists(unrelated)
    stage = train.ODEDistillation(run)
    assert "cannot be read" in capsys.readouterr().out and stage.pairs["clean"].shape[0] == 4


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = str(tmp_path / "x.pt")
    train.save_checkpoint(path, {"format": tv.CHECKPOINT_FORMAT, "a": torch.ones(2)})

    def crash(obj, f):                                  # f: a file name, or an open file
        (f if hasattr(f, "write") else open(f, "wb")).write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(path, {"format": tv.CHECKPOINT_FORMAT, "a": torch.zeros(2)})
    assert torch.equal(tv.load_checkpoint(path)["a"], torch.ones(2))     # the old file survives


def test_ctrl_c_during_a_save_lets_the_save_finish_then_stops(tmp_path, monkeypatch):
    path, save = str(tmp_path / "x.pt"), torch.save

    def save_with_ctrl_c(obj, f):
        os.kill(os.getpid(), signal.SIGINT)             # the key is pressed while the archive is being written
        save(obj, f)
    monkeypatch.setattr(torch, "save", save_with_ctrl_c)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's Ctrl-C, however pytest was started
    try:
        with pytest.raises(KeyboardInterrupt):
            train.save_checkpoint(path, {"format": tv.CHECKPOINT_FORMAT, "a": torch.ones(2)})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert torch.equal(tv.load_checkpoint(path)["a"], torch.ones(2))


def train_in_a_fresh_process(*flags, cwd=ROOT):
    """python train.py FLAGS in a process of its own, with this process's torch threads (a sum split among more
    threads rounds differently): (exit status, what it printed)."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *flags], cwd=cwd, capture_output=True,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    return result.returncode, result.stdout + result.stderr


def test_each_stage_started_in_a_fresh_process_gives_the_whole_runs_files(trained, tmp_path):
    """Stage 1 and stage 2 started in processes of their own give, bit for bit, the files of one whole run (the
    `trained` fixture, made inside this test process after whatever ran before it): every random draw of a stage
    comes from its own seed, none from the process's global state."""
    shutil.copy(os.path.join(trained, "teacher.pt"), tmp_path)
    for stage in ("1", "2"):
        status, said = train_in_a_fresh_process("--preset", "test", "--stage", stage, "--out", str(tmp_path))
        assert status == 0, said
    for name in ("student_stage1.pt", "student_dmd.pt", "student.pt"):
        assert (tmp_path / name).read_bytes() == open(os.path.join(trained, name), "rb").read(), name


def test_training_writes_a_folder_of_its_own_and_only_its_own_releases_count_as_done(trained, tmp_path, monkeypatch,
                                                                                      capsys):
    """Without --out a run trains into runs/PRESET; a folder whose releases another run made (another preset,
    settings, seed or mode) is one clear message that names both runs and asks for --out, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    train.main(["--preset", "test", "--stage", "0", "--stop-at", "1"])
    assert os.listdir(tmp_path / "runs" / "test") == ["teacher.resume.pt"]
    folder = shutil.copytree(trained, tmp_path / "other")
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    for flags, says in [(["--seed", "1"], "made by another run (preset 'test', seed 0; this one: preset 'test', seed 1)"),
                        (["--set", "teacher_steps=7"], "made by another run (preset 'test', seed 0; this one: preset "
                                                       "'test teacher_steps=7', seed 0)"),
                        (["--preset", "quick"], "this one: preset 'quick', seed 0"),
                        (["--stage", "1", "--mode", "sink"], "(preset 'test', seed 0, mode 'hybrid'; this one: preset "
                                                            "'test', seed 0, mode 'sink')")]:
        with pytest.raises(SystemExit) as stop:
            train.main(["--preset", "test", "--out", str(folder), *flags])
        assert says in str(stop.value) and "--out" in str(stop.value) and "delete" not in str(stop.value), stop.value
        assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    train.main(["--preset", "test", "--out", str(folder)])
    assert capsys.readouterr().out.count("was made by this preset, settings and seed: done") == 4


def test_a_full_disk_during_a_save_keeps_the_last_checkpoint_and_the_same_command_goes_on(trained, tmp_path,
                                                                                           monkeypatch):
    """A save that fails part-way (no space left) ends in one message that says what happened and what to do; the
    last good checkpoint stays as it was, no half-written file is left, and the same command then resumes to the
    teacher one uncut run makes."""
    import errno
    saves, real_save = [], torch.save

    def fills_the_disk(obj, file):
        saves.append(file)
        if len(saves) == 2:                                  # the second save: step 6 of the test teacher
            file.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, file)
    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(SystemExit) as stop:
        train.main(["--preset", "test", "--stage", "0", "--out", str(tmp_path)])
    said = str(stop.value)
    assert "No space left on device" in said and "teacher.resume.pt, is kept as it was" in said, said
    assert "run the same command again" in said
    assert sorted(os.listdir(tmp_path)) == ["teacher.resume.pt"]      # no temporary file, no lock, no release
    assert tv.load_checkpoint(str(tmp_path / "teacher.resume.pt"))["step"] == 3
    monkeypatch.setattr(torch, "save", real_save)
    train.main(["--preset", "test", "--stage", "0", "--out", str(tmp_path)])
    assert (tmp_path / "teacher.pt").read_bytes() == open(os.path.join(trained, "teacher.pt"), "rb").read()


def test_a_checkpoint_from_another_version_of_the_code_is_one_clear_message(trained, tmp_path, capsys):
    """A release or resume file written by another version of the code (another format, or weights that do not fit
    the model) is refused by sample.py and train.py with one message, never a traceback from load_state_dict."""
    released = tv.load_checkpoint(os.path.join(trained, "student.pt"))
    older = tmp_path / "older.pt"
    torch.save({**released, "format": "tiny-videossm/1"}, older)
    misfit = tmp_path / "misfit.pt"
    torch.save({**released, "model": {k: v for k, v in released["model"].items() if "memory" not in k}}, misfit)
    for path, says in [(older, "was written by another version of tiny-videossm (format 'tiny-videossm/1'"),
                       (misfit, "does not fit this code's model")]:
        with pytest.raises(SystemExit) as stop:
            sample.main(["--checkpoint", str(path), "--frames", "6", "--out", str(tmp_path / "v.gif")])
        assert says in str(stop.value) and "train it again" in str(stop.value), stop.value
    folder = shutil.copytree(trained, tmp_path / "run")
    os.remove(folder / "student.pt")
    shutil.copy(misfit, folder / "student_dmd.pt")
    with pytest.raises(SystemExit) as stop:                       # the phase loads student_dmd.pt
        train.main(["--preset", "test", "--out", str(folder)])
    assert "does not fit this code's model" in str(stop.value)
    resume = {**tv.load_checkpoint(os.path.join(trained, "student_dmd.pt")), "step": 1, "log": []}
    run = train.Run("cpu", str(folder), seed=0, spec="test")
    torch.save({"format": tv.CHECKPOINT_FORMAT, "step": 1, "log": [], "made_by": {**run.made_by, "mode": "hybrid"},
                "model": {"not": torch.zeros(1)}, "optimizer": {}}, folder / "student_memory.resume.pt")
    shutil.copy(os.path.join(trained, "student_dmd.pt"), folder / "student_dmd.pt")
    with pytest.raises(SystemExit) as stop:
        train.main(["--preset", "test", "--out", str(folder)])
    assert "does not fit this code's stage 2 (memory recall)" in str(stop.value) and "another version" in str(stop.value)


def test_two_runs_pointed_at_one_folder_the_second_is_refused_until_the_first_is_gone(trained, tmp_path):
    """A run holds its folder (an OS lock on run.lock, which names its process) for as long as it trains: a second
    run pointed there is one message and writes nothing; once the first is gone (killed without cleaning up,
    here), the folder is free."""
    holds = ("import fcntl, sys, time; file = open(sys.argv[1], 'a'); fcntl.flock(file, fcntl.LOCK_EX); "
             "file.write(sys.argv[2]); file.flush(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", holds, str(tmp_path / "run.lock"), "4242"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as stop:
            train.main(["--preset", "test", "--stage", "0", "--out", str(tmp_path)])
        assert "being written by another training run (process 4242)" in str(stop.value) and "--out" in str(stop.value)
        assert sorted(os.listdir(tmp_path)) == ["run.lock"]
    finally:
        holder.kill()                                                              # as kill -9: no clean-up
        holder.wait()
    train.main(["--preset", "test", "--stage", "0", "--out", str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == ["teacher.pt"]                         # the lock released at the end
    status, said = train_in_a_fresh_process("--preset", "test", "--stage", "0", "--out", str(tmp_path))
    assert status == 0 and "was made by this preset, settings and seed: done" in said, said


def test_sampling_and_measuring_load_no_training_code():
    """sample.py and the benchmark stand on the model and the world: importing them imports no train.py."""
    code = "import sys, sample, measure.benchmark; print('train' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "False", result.stderr


def wake_memory(model):
    """(D9) g_out starts at exactly zero, so the write path gets no gradient until it moves."""
    with torch.no_grad():
        for block in model.blocks:
            block.self_attn.memory.out_gate.weight.normal_(0, 0.1)


def memory_gradients(model):
    names = ["alpha_proj.weight", "beta_proj.weight", "A_log", "dt_bias"]
    return {n: sum(b.self_attn.memory.get_parameter(n).grad.abs().sum().item() for b in model.blocks
                   if b.self_attn.memory.get_parameter(n).grad is not None) for n in names}


def test_stage1_student_learns_and_trains_the_write_path(run):
    same_every_step(run)
    stage = train.ODEDistillation(run)
    assert stage.pairs["noisy"].shape[:2] == (4, 2)                   # clips x the student's 2 levels
    wake_memory(stage.model)
    stage.steps = 400
    losses = [stage.train_step(step)["loss"] for step in range(20)]
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])
    assert all(total > 0 for total in memory_gradients(stage.model).values())


def test_stage1_step_regresses_the_batch_it_draws(run):
    """Stage 1's step: its data is ode_batch from the step's own generator, its loss ode_regression_loss on it."""
    stage = train.ODEDistillation(run)
    batch = train.ode_batch(run, stage.preset, stage.model.cfg, stage.pairs, stage.sigmas, run.generator(1, 3))
    expected = train.ode_regression_loss(run, stage.model, stage.text_encoder, *batch).item()
    assert stage.train_step(3)["loss"] == pytest.approx(expected, rel=1e-6)


def test_ode_pairs_of_another_teacher_are_made_again(run, capsys):
    path = run.path("ode_pairs.pt")
    stale = torch.load(path, weights_only=True)
    stale["made_by"][-1] += 1.0                                  # as if the teacher had been retrained since
    torch.save(stale, path)
    stage = train.ODEDistillation(run)
    assert "made by another teacher" in capsys.readouterr().out
    assert stage.pairs["made_by"] == torch.load(path, weights_only=True)["made_by"] != stale["made_by"]


def test_student_starts_as_the_teacher(trained):
    teacher, text_encoder = tv.build(tv.load_checkpoint(os.path.join(trained, "teacher.pt")))
    student = train.student_from_teacher(teacher, "hybrid")
    clip = torch.randn(1, 4, 3, 16, 16)
    text = text_encoder(["a circle on red"])
    assert torch.equal(student(clip, torch.full((1,), 300.0), text, mode="hybrid"),
                       student(clip, torch.full((1,), 300.0), text, mode="sink"))     # memory outputs 0
    # a clip as short as the window sees no difference between causal and bidirectional in chunk 0
    assert torch.allclose(student(clip[:, :2], torch.full((1,), 300.0), text),
                          teacher(clip[:, :2], torch.full((1,), 300.0), text), atol=1e-5)


def test_stage1_regresses_onto_the_teachers_clean_clip(run):
    """Stage 1's target is the teacher's clean end of the trajectory: a stub student that predicts
    exactly that clip has zero loss, and one that predicts the noisy input does not."""
    stage = train.ODEDistillation(run)

    class Stub(torch.nn.Module):
        cfg = stage.model.cfg

        def __init__(self, predict_clean):
            super().__init__()
            self.predict_clean = predict_clean

        def forward(self, x, t, text, clean_context):
            sigma = (t / 1000)[..., None, None, None]
            return (x - clean_context) / sigma if self.predict_clean else torch.zeros_like(x)
    gen = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(4, 8, 3, 16, 16, generator=gen), torch.randn(4, 8, 3, 16, 16, generator=gen)
    noisy = torch.stack([tv.add_noise(clean, noise, torch.full((4,), s)) for s in stage.sigmas], 1)   # (N, K, F, ...)
    pairs = {"clean": clean, "noisy": noisy, "captions": ["a circle on red"] * 4}
    batch = train.ode_batch(stage.run, stage.preset, stage.model.cfg, pairs, stage.sigmas, torch.Generator().manual_seed(0))
    loss = lambda model: train.ode_regression_loss(stage.run, model, stage.text_encoder, *batch).item()
    assert loss(Stub(predict_clean=True)) < 1e-10 and loss(Stub(predict_clean=False)) > 1e-3


def test_dmd_gradient_is_zero_when_real_equals_fake_and_points_from_fake_to_real():
    x = torch.randn(2, 4, 3, 8, 8, requires_grad=True)
    real = torch.randn(2, 4, 3, 8, 8)
    train.dmd_loss(x, real, real.clone()).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    x.grad = None
    fake = real + 0.1
    train.dmd_loss(x, real, fake).backward()
    assert (x.grad > 0).all()            # descending moves x by -(fake - real): towards the real side


def test_dmd_gradient_has_the_size_of_E11():
    """d loss / d x = (x0_fake - x0_real) / mean|x - x0_real| per clip, over the elements of a batch."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 8, 8, generator=gen, requires_grad=True)
    real, fake = torch.randn(2, 4, 3, 8, 8, generator=gen), torch.randn(2, 4, 3, 8, 8, generator=gen)
    train.dmd_loss(x, real, fake).backward()
    for b in range(2):
        normaliser = (x[b] - real[b]).abs().mean()
        expected = (fake[b] - real[b]) / normaliser / (2 * x[b].numel())
        assert torch.allclose(x.grad[b], expected, rtol=1e-5, atol=1e-9)


def test_the_real_score_is_the_teacher_with_classifier_free_guidance(run):
    """(E11) real score = v_uncond + guidance_scale (v_cond - v_uncond): with a stub teacher whose
    conditional velocity is 1 and unconditional 0, x0_fake - x0_real = sigma * guidance_scale; with both
    at 1 it is sigma. Their ratio is guidance_scale whatever sigma was drawn."""
    stage = train.SelfRolloutDMD(run)

    class Stub(torch.nn.Module):
        def __init__(self, unconditional):
            super().__init__()
            self.unconditional = unconditional

        def forward(self, x, t, text):
            empty = (text.abs().sum((1, 2)) == text[-1:].abs().sum((1, 2))).float()   # the last row is ""
            return torch.ones_like(x) * (1 - empty.view(-1, 1, 1, 1, 1)) + self.unconditional * empty.view(-1, 1, 1, 1, 1)
    stage.critic = lambda x, t, text: torch.zeros_like(x)
    x = torch.randn(2, 8, 3, 16, 16)

    def gap(unconditional):
        stage.teacher = Stub(unconditional)
        x0_real, x0_fake = stage.scores(x, "a circle on red", torch.Generator().manual_seed(4))
        return x0_fake - x0_real
    guided, unguided = gap(0.0), gap(1.0)
    assert unguided.abs().min() > 0.01
    assert torch.allclose(guided / unguided, torch.full_like(x, stage.preset.guidance_scale), rtol=1e-5)


def test_stage2_critic_learns_and_generator_gets_memory_gradients(run):
    stage = train.SelfRolloutDMD(run)
    generator, critic = copy.deepcopy(stage.model.state_dict()), copy.deepcopy(stage.critic.state_dict())
    stage.train_step(0)                      # a critic warm-up step (critic_warmup=1): only the critic moves
    assert all(torch.equal(generator[k], v) for k, v in stage.model.state_dict().items())
    assert not all(torch.equal(critic[k], v) for k, v in stage.critic.state_dict().items())
    wake_memory(stage.model)
    stage.preset = train.Preset(**{**vars(stage.preset), "switch_probability": 1.0})
    x, caption = stage.rollout(step=3)
    assert x.shape == (2, 8, 3, 16, 16) and x.requires_grad
    x0_real, x0_fake = stage.scores(x.detach(), caption, torch.Generator().manual_seed(0))
    train.dmd_loss(x, x0_real, x0_fake).backward()
    assert all(total > 0 for total in memory_gradients(stage.model).values())
    # the critic alone, on a frozen generator's sample, with its own loss: it goes down
    sample_, losses = x.detach(), []
    for _ in range(20):
        loss = stage.critic_loss(sample_, caption, torch.Generator().manual_seed(5))
        train.optimizer_step(run, stage.critic_optimizer, list(stage.critic.parameters()), 3e-3, loss)
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_the_critic_learns_the_flow_of_the_students_samples_at_the_samplers_levels(run, monkeypatch):
    """The fake score's training: flow matching on the generator's own samples (not the teacher's, not
    noise), at shifted levels (mostly high noise, where the few-step sampler works). A stub critic that
    knows the sample and answers the exact velocity (x_s - x) / s scores 0; the levels it is asked at
    average the shifted mean, above the uniform 0.5; and train_step trains it on the rollout's window."""
    stage = train.SelfRolloutDMD(run)
    x = torch.randn(4096, 1, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    levels = []

    def exact(x_s, t, text):
        levels.append(t / 1000)
        return (x_s - x) / (t / 1000).view(-1, 1, 1, 1, 1)
    stage.critic, stage.text_encoder = exact, lambda captions: torch.zeros(len(captions), 1, 1)
    assert stage.critic_loss(x, "a circle on red", torch.Generator().manual_seed(2)) < 1e-8
    shifted = tv.shift_sigma(torch.rand(100_000, generator=torch.Generator().manual_seed(3)), stage.preset.timestep_shift)
    assert abs(levels[0].mean() - shifted.mean()) < 0.01 and shifted.mean() > 0.6
    stage = train.SelfRolloutDMD(run)
    window, caption = stage.rollout(0, grad=False)                     # the rollout of step 0, made again
    seen = []
    monkeypatch.setattr(stage, "critic_loss", lambda x, caption_, gen: seen.append((x, caption_)) or
                        train.SelfRolloutDMD.critic_loss(stage, x, caption_, gen))
    stage.train_step(0)
    assert len(seen) == stage.preset.critic_updates
    assert all(torch.equal(x, window) and caption_ == caption for x, caption_ in seen)


def test_a_self_rollout_exits_at_every_denoising_step(run, monkeypatch):
    """Self-Forcing: each rollout draws the step its chunks stop at, among all of the student's steps."""
    stage = train.SelfRolloutDMD(run)
    exits, generate = [], tv.generate
    monkeypatch.setattr(tv, "generate", lambda *args, exit_step=None, **kwargs: exits.append(exit_step) or
                        generate(*args, exit_step=exit_step, **kwargs))
    with torch.no_grad():
        for step in range(12):
            stage.rollout(step, grad=False)
    assert sorted(set(exits)) == list(range(len(stage.sigmas)))


def test_stage2_step_anchors_the_student_only_after_the_critics_warm_up(run):
    """Stage 2's step: during the warm-up the student does not move and has no anchor; after it, the anchor
    is stage 1's loss on ode_batch from the step's own generator."""
    stage = train.SelfRolloutDMD(run)
    before = copy.deepcopy(stage.model.state_dict())
    assert stage.preset.critic_warmup == 1 and stage.train_step(0)["regression"] == 0
    assert all(torch.equal(before[k], v) for k, v in stage.model.state_dict().items())
    batch = train.ode_batch(run, stage.preset, stage.model.cfg, stage.pairs, stage.sigmas, run.generator(3, 1))
    expected = train.ode_regression_loss(run, stage.model, stage.text_encoder, *batch).item()
    assert stage.train_step(1)["regression"] == pytest.approx(expected, rel=1e-6)


def test_stage2_anchor_pulls_the_student_to_the_teacher_pairs(run):
    """With DMD's gradient zero (real == fake), a generator step still moves the student: stage 1's
    regression, kept in stage 2 as DMD's anchor, reaches the optimizer and lowers its own loss."""
    settings = "test critic_warmup=0 dmd_lr=1e-3 warmup=0"
    run = train.Run("cpu", run.out_dir, seed=0, spec=settings)              # `run`'s folder, these settings
    same_every_step(run)
    stage = train.SelfRolloutDMD(run)
    stage.steps = 400
    stage.scores = lambda x, caption, gen: (x, x.clone())          # DMD alone gives zero gradient
    with torch.no_grad():                                            # knock the student off the pairs it fits
        for p in stage.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    losses = [stage.train_step(step) for step in range(8)]
    assert all(step["dmd"] == 0 for step in losses)
    assert losses[-1]["regression"] < 0.9 * losses[0]["regression"]
    off = train.SelfRolloutDMD(train.Run("cpu", run.out_dir, seed=0, spec=f"{settings} dmd_regression=0"))
    assert off.pairs is None and off.train_step(0)["regression"] == 0


def test_sprite_returns_hide_the_sprite_from_sink_and_window_and_bring_it_back():
    """Against the model's own visible_chunks, read from the pixels: up to the chunk the sprite comes back
    in, no chunk that chunk attends to shows it, and a chunk already evicted into M showed it in its colour.
    The phase's search (train) and the recall probe's (measure.benchmark), one search, with and without a switch."""
    assert train.sprite_returns is benchmark.sprite_returns is sprite_returns     # the probe's rows: the phase's clips
    for window, switch in [(2, False), (3, False), (2, True)]:
        cfg = tv.VideoSSMConfig(**{**train.PRESETS["test"].model, "window_chunks": window})
        cf = cfg.chunk_frames
        returns = sprite_returns(World(16, curtains=4), cfg, 6, 60, seed=0, switch=switch)
        assert len(returns) == 6
        if not switch:                                          # as the phase draws them: no switch, no other
            assert all((clip.switch, clip.new_caption, clip.other) == (0, "", -1) for clip in returns)
        for clip in returns:
            background, _ = read_attributes(clip.video)
            at = clip.switch * cf                                   # the first frame of the new caption (0: none)
            assert (clip.switch > 0) == switch and (background[0, :at] == parse_caption(clip.caption).background).all()
            caption_at_return = clip.prompts()[clip.switch]         # the caption in force from chunk `switch` on
            assert (background[0, at:] == parse_caption(caption_at_return).background).all()
            if switch:
                assert clip.new_caption != clip.caption and clip.switch < clip.context_chunks
            _, sprite = read_attributes(clip.video)                                         # (1, F), -1: none
            r = clip.back // cf
            chunks, _ = tv.visible_chunks(r, cfg, "hybrid")
            attended = [f for c in chunks if c < r for f in range(c * cf, (c + 1) * cf)]
            evicted = [f for c in range(r) if c not in chunks for f in range(c * cf, (c + 1) * cf)]
            assert parse_caption(clip.caption).count == 1 and (sprite[0, attended] == -1).all()
            assert (sprite[0, evicted] == clip.colour).any() and sprite[0, clip.clearly_back] == clip.colour
            probe_window = slice((clip.context_chunks - window) * cf, clip.context_chunks * cf)   # the last window of context
            faint = sprite_mask(clip.video, background).sum((2, 3, 4))[0]        # the captions' backgrounds
            assert (sprite[0, probe_window] == -1).all() and (faint[probe_window] <= 3).all()   # under a pixel's area
            assert (sprite[0, at:at + cf] == -1).all()                # a switch happens while the sprite is away
            assert clip.context_chunks <= r and clip.back <= clip.clearly_back <= 60 - 4 * cf


def test_two_sprite_returns_hide_one_sprite_while_the_other_is_in_the_window():
    """other=True, read from the pixels: the sprite that hides (its colour read with the other's left out)
    meets the one-sprite criterion, and the other is clearly in every frame of the probe's last window;
    with a switch too, the sprite that hides is the one away when the prompt switches."""
    cfg = tv.VideoSSMConfig(**train.PRESETS["test"].model)
    cf = cfg.chunk_frames
    returns = sprite_returns(World(16, curtains=4), cfg, 6, 60, seed=0, other=True)
    assert len(returns) == 6 and {clip.other for clip in sprite_returns(World(16, curtains=4), cfg, 2, 60, 0)} == {-1}
    switched = sprite_returns(World(16, curtains=4), cfg, 6, 60, seed=0, switch=True, other=True)
    for clip in switched:
        _, hider = read_attributes(clip.video, leave_out=clip.other)
        assert clip.switch > 0 and (hider[0, clip.switch * cf:(clip.switch + 1) * cf] != clip.colour).all()
    for clip in returns + switched:
        assert parse_caption(clip.caption).count == 2 and clip.other not in (-1, clip.colour)
        _, hider = read_attributes(clip.video, leave_out=clip.other)                   # (1, F), -1: none
        _, shown = read_attributes(clip.video)
        r = clip.back // cf
        chunks, _ = tv.visible_chunks(r, cfg, "hybrid")
        attended = [f for c in chunks if c < r for f in range(c * cf, (c + 1) * cf)]
        evicted = [f for c in range(r) if c not in chunks for f in range(c * cf, (c + 1) * cf)]
        assert (hider[0, attended] != clip.colour).all() and (hider[0, evicted] == clip.colour).any()
        assert hider[0, clip.clearly_back] == clip.colour and clip.context_chunks <= r and clip.clearly_back <= 60 - 4 * cf
        probe_window = slice((clip.context_chunks - cfg.window_chunks) * cf, clip.context_chunks * cf)
        assert (shown[0, probe_window] == clip.other).all()             # the window shows the other sprite only


def test_teacher_force_switches_the_prompt_where_the_clip_does_and_keeps_M(trained, monkeypatch):
    model, text_encoder, checkpoint = sample.load(os.path.join(trained, "student.pt"))
    cfg = model.cfg
    world = with_curtains(World(cfg.frame_size, **checkpoint["made_by"]["recipe"]["world"]))
    clip = sprite_returns(world, cfg, 1, 60, seed=0, switch=True)[0]
    held = lambda cache: (cache.next_chunk, list(cache.chunks), [layer.state.clone() for layer in cache.layers])
    recache = tv.recache
    switches = []                                                  # what the cache holds before and after a re-cache
    monkeypatch.setattr(tv, "recache", lambda model, cache, text: switches.append(
        (held(cache), recache(model, cache, text), held(cache), text)))
    cache = tv.StreamCache(model, 1)
    with torch.no_grad():
        tv.teacher_force(model, text_encoder, cache, clip.video[:, :clip.context_chunks * cfg.chunk_frames],
                         clip.prompts())
        new_kv = model.text_kvs(text_encoder([clip.new_caption]))
    [((at, chunks, states), _, (_, chunks_after, states_after), text)] = switches            # one switch
    assert at == clip.switch and cache.next_chunk == clip.context_chunks and len(chunks) > cfg.sink_chunks
    assert torch.equal(text, text_encoder([clip.new_caption]))
    assert torch.equal(cache.text_kvs[0][0], new_kv[0][0])
    assert chunks_after == chunks and all(torch.equal(a, b) for a, b in zip(states, states_after))  # M kept (D10)
    assert states[0].abs().sum() > 0                                   # and not empty: chunks had gone into it


def test_colour_loss_asks_for_the_true_colour_on_the_sprite_and_nothing_else():
    frozen = BACKGROUND_RGB[2].view(1, 1, 3, 1, 1).repeat(1, 2, 1, 8, 8)     # blue, with a white sprite
    frozen[..., 2:5, 2:5] = SPRITE_RGB[0].view(1, 1, 3, 1, 1)
    losses = {}
    for name, colour in {"white": 0, "cyan": 2}.items():
        x0 = frozen.clone()
        x0[..., 2:5, 2:5] = SPRITE_RGB[colour].view(1, 1, 3, 1, 1)
        losses[name] = train.colour_loss(x0, frozen, background=2, colour=2)
    (ce_white, off_white, right_white), (ce_cyan, off_cyan, right_cyan) = losses["white"], losses["cyan"]
    assert ce_cyan < 0.1 and ce_white > 1 and right_cyan and not right_white           # the true colour is cyan
    assert off_white == off_cyan == 0                                             # the rest is as frozen
    grain = frozen + 0.1 * torch.randn(frozen.shape, generator=torch.Generator().manual_seed(0))
    assert train.colour_loss(grain, frozen, 2, 2)[1] > 0
    frozen[..., 5:8, 5:8] = SPRITE_RGB[3].view(1, 1, 3, 1, 1)              # and an orange sprite in view
    x0 = frozen.clone()
    for where in (slice(2, 5), slice(5, 8)):                                      # both drawn cyan, the true colour
        x0[..., where, where] = SPRITE_RGB[2].view(1, 1, 3, 1, 1)
    assert train.colour_loss(x0, frozen, 2, 2)[1] == 0                           # both asked for cyan: no anchor
    empty = BACKGROUND_RGB[2].view(1, 1, 3, 1, 1).repeat(1, 2, 1, 8, 8)          # the trained student draws none:
    cross_entropy, off, _ = train.colour_loss(empty, frozen, 2, 2)               # the frozen one's sprites are asked
    assert cross_entropy > 0.2 and off == 0                                       # for cyan, and not anchored


def test_memory_recall_trains_only_the_memory_and_its_write_path(run, monkeypatch):
    stage = train.MemoryRecall(run, "student_dmd.pt")
    wake_memory(stage.model)
    found, search = [], train.sprite_returns
    monkeypatch.setattr(train, "sprite_returns", lambda *args, **kwargs: found.extend(search(*args, **kwargs)) or found)
    before = copy.deepcopy(stage.model.state_dict())
    frozen = copy.deepcopy(stage.frozen.state_dict())
    calls, forward_chunk = [], stage.model.forward_chunk
    stage.model.forward_chunk = lambda x, t, cache, write=False: calls.append((write, cache.next_chunk)) or \
        forward_chunk(x, t, cache, write)
    losses = stage.train_step(0)
    del stage.model.forward_chunk
    assert losses["colour"] > 0 and losses["free"] >= 0 and 0 <= losses["right"] <= 1
    context = next(i for i, (write, _) in enumerate(calls) if not write)   # the return clip's context chunks
    assert context >= 3 and calls[context][1] == context                 # past the sink and the window
    assert context == found[0].back // stage.model.cfg.chunk_frames      # up to the chunk the sprite comes back in
    moved = {k for k, v in stage.model.state_dict().items() if not torch.equal(before[k], v)}
    assert moved and all(".memory." in k for k in moved)
    assert {"alpha_proj.weight", "beta_proj.weight"} <= {k.rsplit(".memory.", 1)[1] for k in moved}   # (D11)
    assert all(torch.equal(frozen[k], v) for k, v in stage.frozen.state_dict().items())
    window_student = train.student_from_teacher(run.load("teacher.pt", build=True)[0], "window")
    train.release(run, "window_dmd.pt", 2, window_student, stage.text_encoder, [])
    with pytest.raises(SystemExit, match="no memory to train"):
        train.MemoryRecall(run, "window_dmd.pt")
    os.remove(run.path("window_dmd.pt"))


def test_the_memory_phase_step_asks_the_student_for_colour_and_anchors_it(run, monkeypatch):
    """The phase's loss: colour_loss on the trained student's own chunks (in the graph), plus both anchors
    at their weights."""
    stage = train.MemoryRecall(run, "student_dmd.pt")
    with torch.no_grad():                                   # it now differs from the frozen one: anchors > 0
        for p in stage.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    asked, colour_loss, stepped, optimizer_step = [], train.colour_loss, [], train.optimizer_step
    monkeypatch.setattr(train, "colour_loss", lambda x0, *args: asked.append(x0.requires_grad) or colour_loss(x0, *args))
    monkeypatch.setattr(train, "optimizer_step", lambda *args: stepped.append(args[-1].item()) or optimizer_step(*args))
    losses, preset = stage.train_step(0), stage.preset
    assert asked == [True] * preset.memory_clips and losses["anchor"] > 1e-4 and losses["free"] > 1e-4
    assert stepped == [pytest.approx(losses["colour"] + preset.memory_anchor * losses["anchor"]
                                     + preset.memory_free_anchor * losses["free"], rel=1e-5)]


def test_the_phase_pairs_the_frozen_student_with_the_trained_ones_chunks(run):
    """What the phase keeps of the frozen student: its prediction from the very input the trained student
    denoised (equal when their weights are), and a cache that holds the trained student's chunks, not its own."""
    stage = train.MemoryRecall(run, "student_dmd.pt")
    model, frozen, cfg = stage.model, stage.frozen, stage.model.cfg
    text = stage.text_encoder(["a circle on blue"])

    def paired(model):
        caches = [tv.StreamCache(m, 1) for m in (model, frozen)]
        for m, cache in zip((model, frozen), caches):
            cache.set_prompt(m, text)
        made, frozen_made = train.paired_chunks(model, frozen, caches, 4, 1, stage.sigmas, torch.Generator().manual_seed(0))
        return made, frozen_made, caches
    made, frozen_made, _ = paired(model)
    assert torch.allclose(made, frozen_made, atol=1e-6)                    # the same weights, the same input
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    made, frozen_made, caches = paired(other)
    assert not torch.allclose(made, frozen_made, atol=1e-3)
    assert caches[0].chunks == caches[1].chunks and all(torch.equal(a, b) for a, b in zip(caches[0].frames,
                                                                                           caches[1].frames))
    assert all(torch.equal(f, made[:, cfg.chunk_frames * c:cfg.chunk_frames * (c + 1)].detach())
               for c, f in zip(caches[1].chunks, caches[1].frames))


def test_the_memory_phase_moves_the_rest_of_the_student_at_its_own_rate(run):
    run = train.Run("cpu", run.out_dir, seed=0, spec="test memory_rest_lr=1e-4")   # `run`'s folder, this setting
    preset = run.preset
    stage = train.MemoryRecall(run, "student_dmd.pt")
    before = copy.deepcopy(stage.model.state_dict())
    stage.train_step(0)
    moved = {k for k, v in stage.model.state_dict().items() if not torch.equal(before[k], v)}
    assert any(".memory." in k for k in moved) and any(".memory." not in k for k in moved)
    assert [g["lr"] for g in stage.optimizer.param_groups] == [preset.memory_lr] * 2 + [1e-4] * 2  # matrices, vectors


def test_only_matrices_decay_in_every_stage(run):
    """Weight decay said once (train.adamw): parameters of two dimensions or more decay at the preset's
    weight_decay; vectors (the memory's A_log and dt_bias, the router, norms, biases) never, in every stage."""
    run = train.Run("cpu", run.out_dir, seed=0, spec="test memory_rest_lr=1e-4 weight_decay=0.05")
    dmd = train.SelfRolloutDMD(run, "student_dmd.pt")
    for stage, model, optimizer in [(train.Teacher(run), None, None), (train.ODEDistillation(run), None, None),
                                    (dmd, None, None), (dmd, dmd.critic, dmd.critic_optimizer),
                                    (train.MemoryRecall(run, "student_dmd.pt"), None, None)]:
        model, optimizer = model or stage.model, optimizer or stage.optimizer
        names = {id(p): n for n, p in model.named_parameters()}
        decay = {names[id(p)]: group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
                 if id(p) in names}
        assert decay and all(d == (0.05 if model.get_parameter(n).dim() >= 2 else 0.0) for n, d in decay.items())
    memory = {n.split(".memory.")[1]: d for n, d in decay.items() if n.startswith("blocks.0.self_attn.memory.")}
    assert {n for n, d in memory.items() if d == 0} == {"A_log", "dt_bias", "router_w", "router_b", "norm.weight",
                                                        "out_gate.bias"}


def test_the_memory_phase_draws_its_clips_from_every_world_of_its_family(run, monkeypatch):
    run.preset = train.Preset(**{**vars(train.PRESETS["test"]), "memory_worlds": (dict(curtains=3), dict(curtains=5))})
    stage = train.MemoryRecall(run, "student_dmd.pt")                  # (a tuple of worlds: no --set for it)
    drawn, search = [], train.sprite_returns
    monkeypatch.setattr(train, "sprite_returns", lambda world, *args, **kwargs: drawn.append(world.curtains) or
                        search(world, *args, **kwargs))
    for step in range(6):
        stage.train_step(step)
    assert set(drawn) == {3, 5}
    run.preset = train.PRESETS["test"]
    assert [w.curtains for w in train.MemoryRecall(run, "student_dmd.pt").worlds] == [4]


# ----------------------------------------------------------------------------------------------
# sample.py: streaming to a file, prompt switches, its errors and Ctrl-C

@pytest.fixture(scope="session")
def student(trained):
    return os.path.join(trained, "student_stage1.pt")


def read_video(path):
    return imageio.v3.imread(path, plugin="FFMPEG" if str(path).endswith(".mp4") else None)


def test_sample_writes_a_video_and_the_same_seed_gives_the_same_video(student, tmp_path, capsys):
    for name in ["a.mp4", "b.mp4", "c.gif"]:
        sample.main(["--checkpoint", student, "--frames", "11", "--fps", "4", "--scale", "2",
                     "--out", str(tmp_path / name), "--prompt", "two squares on red"])
    assert "wrote" in capsys.readouterr().out and torch.is_grad_enabled()     # no global state left behind
    a, b, c = (read_video(tmp_path / n) for n in ["a.mp4", "b.mp4", "c.gif"])
    assert a.shape == (11, 32, 32, 3) and c.shape[0] == 11
    assert np.array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["a.mp4", "b.mp4", "c.gif"]      # no temporary files left


def test_a_switch_leaves_the_frames_before_it_unchanged(student):
    model, text_encoder, _ = sample.load(student)
    chunks = lambda schedule: torch.cat(list(sample.stream(model, text_encoder, schedule, 16, 2, 3.0, 5,
                                                           "hybrid")), 1)
    base = chunks({0: "a circle on red"})
    schedule = sample.prompt_schedule("a circle on red", [(7, "two squares on green")], 16, 2)
    assert schedule == {0: "a circle on red", 4: "two squares on green"}      # frame 7 -> chunk 4 (frame 8)
    switched = chunks(schedule)
    assert torch.equal(switched[:, :8], base[:, :8]) and not torch.equal(switched[:, 8:], base[:, 8:])


BAD_ARGUMENTS = [  # (flags, what the one message says); {tmp} is the test's folder; the test student's chunks are 2 frames
    (["--prompt", "a triangle on red"], "unknown word 'triangle'"),
    (["--prompt", "circle a on blue"], "does not follow the grammar"),
    (["--prompt", "red on blue two"], "does not follow the grammar"),
    (["--prompt", ""], "an empty prompt"),
    (["--prompt", "   "], "an empty prompt"),
    (["--frames", "8", "--switch", "4:circle a on red"], "does not follow the grammar"),
    (["--frames", "10", "--switch", "30:a circle on red"], "outside the video"),
    (["--switch", "soon:a circle on red"], "expected FRAME:PROMPT"),
    (["--switch", "5:"], "expected FRAME:PROMPT"),
    (["--switch", "infs:a circle on red"], "expected FRAME:PROMPT"),
    (["--frames", "30", "--switch", "29:a circle on red"], "the last frame a switch can use is 28"),
    (["--frames", "30", "--switch", "7:a circle on red", "--switch", "8:two squares on green"],
     "both take effect at frame 8"),
    (["--frames", "30", "--switch", "8:two squares on green", "--switch", "8:a circle on red"],
     "both take effect at frame 8"),
    (["--frames", "0"], "at least one frame"),
    (["--seconds", "0"], "give a positive length"),
    (["--seconds", "nan"], "give a positive length"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--fps", "0"], "--fps 0: must be at least 1"),
    (["--frames", "2", "--seed", "99999999999999999999999"], "use a seed from 0 to 2**63 - 1"),
    (["--frames", "2", "--seed", "-1"], "use a seed from 0 to 2**63 - 1"),
    (["--frames", "2", "--threads", "-1"], "give a number of threads"),
    (["--mode", "sliding"], "invalid choice: 'sliding'"),
    (["--out", "{tmp}/v.avi"], "use a .gif or .mp4"),
    (["--out", "/proc/no/such/dir/v.mp4"], "cannot write"),
    (["--checkpoint", "{tmp}/missing.pt"], "no checkpoint at"),
    (["--benchmark"], "unrecognized arguments: --benchmark"),               # the benchmark lives in measure/
    *([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device is visible")]),
]


@pytest.mark.parametrize("flags, message", BAD_ARGUMENTS, ids=[" ".join(flags) for flags, _ in BAD_ARGUMENTS])
def test_sample_refuses_bad_arguments_with_one_clear_message(student, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        sample.main(["--checkpoint", student, "--out", str(tmp_path / "v.mp4"),
                     *[flag.format(tmp=tmp_path) for flag in flags]])
    said = capsys.readouterr()
    assert stop.value.code not in (0, None)
    assert message in f"{stop.value.code}{said.out}{said.err}" and "Traceback" not in said.err
    assert os.listdir(tmp_path) == []                           # no video, no hidden temporary file


def test_a_switch_needs_a_chunk_of_its_own_that_starts_inside_the_video():
    schedule = lambda *switches: sample.prompt_schedule("a circle on red", list(switches), 30, 3)
    assert schedule((27, "a square on red")) == {0: "a circle on red", 9: "a square on red"}  # the last chunk
    for frame in [28, 29]:                                      # would take effect at frame 30: no such frame
        with pytest.raises(SystemExit, match="frame 30, after the video ends.*the last frame a switch can use is 27"):
            schedule((frame, "a square on red"))
    with pytest.raises(SystemExit, match="single chunk"):
        sample.prompt_schedule("a circle on red", [(2, "a square on red")], 3, 3)
    for first in [7, 8]:                                        # one would silently win over the other
        with pytest.raises(SystemExit, match=f"frames {first} and 8 both take effect at frame 9"):
            schedule((8, "two squares on red"), (first, "a square on red"))


def test_sample_says_a_resume_file_is_not_a_released_checkpoint(tmp_path):
    resume = str(tmp_path / "student.resume.pt")       # as train.py's stages save it: no config
    train.save_checkpoint(resume, {"format": tv.CHECKPOINT_FORMAT, "step": 3, "log": [], "model": {}})
    with pytest.raises(SystemExit, match="training resume file, not a released checkpoint.*student.pt"):
        sample.main(["--checkpoint", resume, "--out", str(tmp_path / "v.mp4")])
    assert os.listdir(tmp_path) == ["student.resume.pt"]


def test_sample_steps_and_shift_are_the_checkpoints(student, tmp_path, monkeypatch):
    """sample.py denoises with the steps and the timestep shift the checkpoint was distilled for (--steps overrides
    the steps), read from the checkpoint, never from a preset."""
    asked, denoising_sigmas = [], tv.denoising_sigmas

    def recording_sigmas(n, timestep_shift):
        asked.append((n, timestep_shift))
        return denoising_sigmas(n, timestep_shift)

    monkeypatch.setattr(tv, "denoising_sigmas", recording_sigmas)
    checkpoint = tv.load_checkpoint(student)
    shifted = tmp_path / "shifted.pt"
    torch.save({**checkpoint, "sampling": {**checkpoint["sampling"], "timestep_shift": 2.5}}, shifted)
    for flags in [[], ["--steps", "3"]]:
        sample.main(["--checkpoint", str(shifted), "--frames", "2", "--out", str(tmp_path / "v.mp4"), *flags])
    steps = checkpoint["sampling"]["denoising_steps"]                       # what the student was distilled for
    assert asked == [(steps, 2.5), (3, 2.5)] and steps != 4                 # 4: the old fixed default


def test_sample_threads_flag_sets_torchs_threads(student, tmp_path):
    before = torch.get_num_threads()
    try:
        sample.main(["--checkpoint", student, "--frames", "2", "--out", str(tmp_path / "v.mp4"), "--threads", "2"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_sample_help_lists_the_grammar_and_the_vocabulary(capsys):
    with pytest.raises(SystemExit) as stop:
        sample.main(["--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and GRAMMAR in text and " ".join(VOCAB) in text


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_sample_keeps_the_frames_made_so_far(student, tmp_path, signum, status):
    """Ctrl-C or SIGTERM while writing: one line, the exit status of a signal, and a playable video."""
    out = tmp_path / "v.mp4"
    process = subprocess.Popen([sys.executable, "sample.py", "--checkpoint", student, "--frames", "100000",
                                "--out", str(out)], cwd=os.path.dirname(os.path.abspath(__file__)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60             # ffmpeg writes the file's header once it has the first frame
    while process.poll() is None and time.time() < deadline and not any(f.stat().st_size for f in tmp_path.iterdir()):
        time.sleep(0.05)
    process.send_signal(signum)
    err = process.communicate(timeout=60)[1]
    kept = re.search(rf"kept the first (\d+) frames in {re.escape(str(out))}", err)
    assert process.returncode == status and kept and "Traceback" not in err, err[-2000:]
    assert read_video(out).shape[0] == int(kept[1]) > 0
    assert os.listdir(tmp_path) == ["v.mp4"]                    # no hidden temporary file


def test_the_shipped_student_shows_a_switched_prompt():
    """With the bundled checkpoint: a switch from blue to red shows in the pixels within two chunks."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoints", "student.pt")
    if not os.path.exists(path):
        pytest.skip("no bundled checkpoints/student.pt")
    model, text_encoder, checkpoint = sample.load(path)
    schedule = sample.prompt_schedule("a circle on blue", [(24, "a circle on red")], 48, model.cfg.chunk_frames)
    video = torch.cat(list(sample.stream(model, text_encoder, schedule, 48, 4, checkpoint["sampling"]["timestep_shift"],
                                         0, "hybrid")), 1)
    background, _ = read_attributes(video)                                   # (1, 48) indices
    blue, red = BACKGROUND_NAMES.index("blue"), BACKGROUND_NAMES.index("red")
    assert (background[0, :24] == blue).float().mean() > 0.9
    assert (background[0, 24 + 2 * model.cfg.chunk_frames:] == red).float().mean() > 0.9


# ----------------------------------------------------------------------------------------------
# measure/: the yardstick, each measure calibrated on ground truth, and its commands

def test_the_method_never_imports_the_yardstick():
    code = "import sys, train, sample; print(sorted(m for m in sys.modules if m.startswith('measure')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-2000:]




def test_read_attributes_recovers_ground_truth(long_clips):
    background, sprite = read_attributes(long_clips.video)
    assert (background == long_clips.background).float().mean() >= 0.99
    area = long_clips.visible_area.sort(-1, descending=True)  # (B, F, S)
    well_visible = (area.values[..., 0] >= 20) & (area.values[..., 0] >= 2 * area.values[..., 1])
    colours = long_clips.sprite_colour[:, None].expand_as(area.indices)
    dominant = colours.gather(2, area.indices[..., :1])[..., 0]  # (B, F)
    assert well_visible.float().mean() > 0.2
    assert (sprite[well_visible] == dominant[well_visible]).float().mean() >= 0.99
    assert (sprite[long_clips.visible_area.sum(-1) == 0] == -1).all()


def test_metrics_calibration(long_clips):
    video = long_clips.video
    truth = video_metrics(video, chunk_frames=3, sprites=long_clips.count)
    assert truth["fidelity"] > 0.9
    assert truth["subject_consistency"] > 0.9 and truth["background_consistency"] > 0.9
    assert truth["dynamic_degree"] > 0.005 and truth["frozen_fraction"] < 0.5

    assert truth["sprite_presence"] > 0.5
    empty = BACKGROUND_RGB[long_clips.background][..., None, None].expand_as(video)   # sprites removed
    assert sprite_presence(empty) == 0 and fidelity(empty) > truth["fidelity"]             # why presence exists

    frozen = video[:, :1].expand_as(video)
    assert dynamic_degree(frozen) == 0 and frozen_fraction(frozen) == 1

    noisy = video + 0.1 * torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    assert fidelity(noisy) < truth["fidelity"] - 0.2
    assert flicker(noisy) > truth["flicker"] + 0.05

    ramp = torch.linspace(0, 0.5, video.shape[1])[None, :, None, None, None]
    assert drift(video + ramp) > 2 * truth["drift"]

    with pytest.raises(ValueError, match="shape"):
        fidelity(video[0])


def test_hidden_spans_count_only_absences_that_end():
    clips = World().sample(1, 6, seed=0)
    clips.sprite_colour = torch.tensor([[0, -1]])
    clips.visible_area = torch.tensor([[1, 0, 0, 1, 0, 0]]).float()[..., None].repeat(1, 1, 2) * 5
    assert metrics.hidden_spans(clips).tolist() == [2]                       # the trailing absence never ended


def test_shape_match_reads_the_named_shape_and_not_a_blob():
    world = World()
    truth = world.sample(16, 48, seed=1)
    assert metrics.shape_match(truth.video, truth.shape) > 0.95
    one_by_one = torch.tensor([metrics.shape_match(truth.video[b:b + 1], truth.shape[b:b + 1]) for b in range(16)])
    assert one_by_one.nan_to_num(1.0).min() > 0.9 and one_by_one.isnan().sum() <= 2   # greyish soft edges are no curtain
    curtained = World(curtains=4).sample(16, 48, seed=1)
    assert metrics.shape_match(curtained.video, curtained.shape) > 0.9
    wrong = (truth.shape + 1) % len(SHAPES)                               # the frames of another shape
    assert metrics.shape_match(truth.video, wrong) < 0.05
    present = truth.sprite_colour >= 0
    for drawn in range(len(SHAPES)):                                      # each shape drawn, read for what it is
        video, _ = world.render(truth.background, torch.full_like(truth.shape, drawn), truth.sprite_colour.clamp(min=0),
                                present, truth.position)
        readings = metrics.shape_readings(video)
        assert (readings[readings >= 0] == drawn).float().mean() > 0.9
        if drawn == 1:                                                    # discs where the caption says square
            assert metrics.shape_match(video, torch.zeros_like(truth.shape)) < 0.1
    assert math.isnan(metrics.shape_match(torch.zeros_like(truth.video), truth.shape))    # nothing to read


def test_identity_kept_is_one_on_ground_truth_and_halves_when_the_colour_changes_late():
    truth = World().sample(48, 240, seed=2)
    one = truth.count == 1
    video = truth.video[one]
    kept = metrics.identity_kept(video)
    assert kept.nanmean() == 1.0 and kept.isnan().float().mean() < 0.2

    def recoloured(from_frame):                                           # the sprite turns another colour
        colour = truth.sprite_colour[one].clone()
        changed = colour.clone()
        changed[:, 0] = (colour[:, 0] + 1) % len(SPRITE_COLOURS)
        shape, background = truth.shape[one], truth.background[one]
        present = colour >= 0
        before, _ = World().render(background, shape, colour.clamp(min=0), present, truth.position[one])
        after, _ = World().render(background, shape, changed.clamp(min=0), present, truth.position[one])
        return torch.cat([before[:, :from_frame], after[:, from_frame:]], 1)
    assert metrics.identity_kept(recoloured(120)).nanmean() < 0.05         # the whole second half
    assert 0.3 < metrics.identity_kept(recoloured(180)).nanmean() < 0.7    # half of the second half


# The perturbation bench: every measure against controlled edits of ground truth, each edit one a measure must
# see (its cell says which way it moves) or must not (=); nan: the measure has nothing left to score. Ground
# truth: one-sprite clips with curtains whose sprite is in sight from frame 0, then out of sight for longer than
# the sink and the window hold (9 frames), back within the first half. Recall is its probe's verdict
# (metrics.recalled) on the frames from the sprite's return on; beside a second sprite, with that one's colour
# left out, as the probe reads. Colour after exit reads the sprite's own exit and return (metrics.colour_after_exit).
MEASURES = ["fidelity", "presence", "shape match", "identity kept", "subject consistency", "dynamic degree", "recall",
            "prompt match", "colour after exit"]
PERTURBATIONS = {  # the edit: which way it moves each measure, in the order of MEASURES
    "recoloured after an absence": "= = = - - = - = -",
    "recoloured gradually": "- - = - - = - = -",
    "removed": "= - nan nan = - - = nan",
    "frozen": "= + = = = - = = nan",
    "shifted a pixel": "= = = = = = = = =",
    "faded towards the background": "- - nan nan = - - = nan",
    "a second sprite added": "= + = - - + = = -",
    "the background switched": "= = = = = = = - =",
    "another shape drawn": "= = - = = = = = =",
}
# What counts as a move: fidelity's soft sprite edges alone move it by 0.01 (a sprite more or less in view), shape
# match's overlapping sprites by 0.03; dynamic degree by a fifth; the rest by 0.02.
SMALLEST_MOVE = {"fidelity": 0.015, "shape match": 0.05}


@pytest.fixture(scope="module")
def returning():
    """(world, clips, back): 12 such clips of 240 frames, and the frame in which each sprite is back (12,)."""
    world = World(curtains=4)
    clips = world.sample(128, 240, seed=5)
    chosen, back = [], []
    for b in torch.nonzero(clips.count == 1).flatten().tolist():
        seen, hidden = (clips.visible_area[b, :, 0] >= 8).tolist(), (clips.visible_area[b, :, 0] < 1).tolist()
        gone = hidden.index(True) if True in hidden[:120] else 120
        returns = hidden.index(False, gone) if False in hidden[gone:120] else 120
        if all(seen[:6]) and 9 < returns - gone and returns < 120 and len(chosen) < 12:
            chosen.append(b), back.append(returns)
    assert len(chosen) == 12
    pick = lambda t: t[chosen]
    return world, Clips(pick(clips.video), [clips.captions[b] for b in chosen], pick(clips.background),
                              pick(clips.shape), pick(clips.count), pick(clips.sprite_colour), pick(clips.position),
                              pick(clips.visible_area)), torch.tensor(back)


def recoloured_and_removed(world, clips):
    """Ground truth re-drawn with each sprite in the next colour, and with no sprite: two (B, F, 3, H, W)."""
    present, colour = clips.sprite_colour >= 0, clips.sprite_colour.clamp(min=0)
    draw = lambda colour, present: world.render(clips.background, clips.shape, colour, present, clips.position)[0]
    return draw((colour + 1) % len(SPRITE_COLOURS), present), draw(colour, torch.zeros_like(present))


def perturbed(world, clips, back, edit):
    """Ground truth with one edit of PERTURBATIONS (or none: "ground truth"): the video (B, F, 3, H, W), and per
    clip the colour a recall reading leaves out (B,), -1 for none."""
    F = clips.video.shape[1]
    present, colour = clips.sprite_colour >= 0, clips.sprite_colour.clamp(min=0)       # (B, S)
    another = (colour[:, 0] + 1) % len(SPRITE_COLOURS)                           # (B,)
    nothing_left_out = torch.full_like(another, -1)

    def render(background=clips.background, shape=clips.shape, colour=colour, present=present, position=clips.position):
        return world.render(background, shape, colour, present, position)[0]
    recoloured, empty = recoloured_and_removed(world, clips)
    if edit == "a second sprite added":                                   # in the second slot, in another colour
        return render(colour=torch.stack([colour[:, 0], another], 1), present=torch.ones_like(present)), another
    towards = torch.linspace(0, 1, F)[None, :, None, None, None]          # (1, F, 1, 1, 1) from 0 to 1
    edits = {"ground truth": lambda: clips.video,                         # each made only when asked for
             "recoloured after an absence": lambda: torch.where((torch.arange(F) >= back[:, None])[..., None, None, None],
                                                                recoloured, clips.video),
             "recoloured gradually": lambda: (1 - towards) * clips.video + towards * recoloured,
             "removed": lambda: empty,
             "frozen": lambda: clips.video[:, :1].expand_as(clips.video),
             "shifted a pixel": lambda: render(position=clips.position + torch.tensor([1.0, 0.0])),
             "faded towards the background": lambda: (clips.video + empty) / 2,
             "the background switched": lambda: render(background=torch.where(
                 torch.arange(F) >= F // 2, (clips.background + 1) % 4, clips.background)),
             "another shape drawn": lambda: render(shape=(clips.shape + 1) % len(SHAPES))}
    return edits[edit](), nothing_left_out


def scores(clips, back, video, left_out):
    """Each of MEASURES on a batch of videos of `clips`' prompts, averaged over the clips."""
    recall = [metrics.recalled(v[None, back[b]:], int(clips.sprite_colour[b, 0]), int(left_out[b]))
              for b, v in enumerate(video)]
    return dict(zip(MEASURES, [metrics.fidelity(video), metrics.sprite_presence(video),
                               metrics.shape_match(video, clips.shape), metrics.identity_kept(video).nanmean().item(),
                               metrics.subject_consistency(video), metrics.dynamic_degree(video),
                               sum(recall) / len(recall), metrics.prompt_match(video, clips.background),
                               metrics.colour_after_exit(video).nanmean().item()]))


@pytest.fixture(scope="module")
def truth_scores(returning):
    return scores(returning[1], returning[2], *perturbed(*returning, "ground truth"))


def test_ground_truth_scores_what_it_should_on_the_perturbation_bench(truth_scores):
    truth = truth_scores
    assert truth["fidelity"] > 0.98 and truth["shape match"] > 0.95 and 0.5 < truth["presence"] < 0.9   # curtains hide it
    assert [truth[m] for m in ("identity kept", "subject consistency", "recall", "prompt match")] == [1.0] * 4
    assert truth["dynamic degree"] > 0.005


@pytest.mark.parametrize("edit", PERTURBATIONS)
def test_every_measure_moves_the_named_way_on_the_perturbation_bench(returning, truth_scores, edit):
    truth = truth_scores
    edited = scores(returning[1], returning[2], *perturbed(*returning, edit))
    seen = {}
    for measure in MEASURES:
        smallest = SMALLEST_MOVE.get(measure, 0.2 * truth[measure] if measure == "dynamic degree" else 0.02)
        change = edited[measure] - truth[measure]
        seen[measure] = ("nan" if math.isnan(edited[measure]) else "+" if change > smallest
                         else "-" if change < -smallest else "=")
    assert " ".join(seen.values()) == PERTURBATIONS[edit], (seen, edited, truth)


def test_colour_after_exit_scores_exits_and_never_a_blink(returning):
    world, clips, back = returning
    recoloured, _ = recoloured_and_removed(world, clips)
    spans = metrics.long_absences(clips.video)
    assert all(s and all(is_exit for *_, is_exit in s) for s in spans)          # ground truth leaves by exits only
    assert (metrics.colour_after_exit(clips.video) == 1).all()
    open_view = World().sample(32, 240, seed=4)                                  # no curtains: out over all four edges
    spans = metrics.long_absences(open_view.video[open_view.count == 1])
    assert sum(map(len, spans)) >= 8 and all(all(is_exit for *_, is_exit in s) for s in spans)
    frame = torch.arange(clips.video.shape[1])[None, :, None, None, None]
    assert (metrics.colour_after_exit(torch.where(frame >= back[:, None, None, None, None], recoloured,
                                                  clips.video)) == 0).all()     # back in another colour
    # a world whose sprites never leave the view: erased for 8 frames in its middle, back in another colour
    inside = World(arena_scale=1.0)
    truth = inside.sample(16, 48, seed=3)
    present = torch.tensor([True, False]).expand(16, 2)
    colour = truth.sprite_colour.clamp(min=0)
    draw = lambda colour, present: inside.render(truth.background, truth.shape, colour, present, truth.position)[0]
    centred = ((truth.position[:, :, 0] - 16).abs() < 6).all(-1)                     # (B, F) well inside the view
    starts = [int(torch.nonzero(c[10:38]).flatten()[0]) + 10 if c[10:38].any() else -1 for c in centred]
    chosen = [b for b, f in enumerate(starts) if f >= 0 and centred[b, f + 9]]
    assert len(chosen) >= 4
    blinked = draw(colour, present).clone()
    other = draw((colour + 1) % len(SPRITE_COLOURS), present)
    for b in chosen:
        f = starts[b] + 1
        blinked[b, f:f + 8] = draw(colour, torch.zeros_like(present))[b, f:f + 8]
        blinked[b, f + 8:] = other[b, f + 8:]
    blinked = blinked[chosen]
    assert [[span[2] for span in s] for s in metrics.long_absences(blinked)] == [[False]] * len(chosen)
    assert metrics.colour_after_exit(blinked).isnan().all()                    # a blink is no exit: not scored


def test_identity_kept_reads_the_colour_of_the_first_appearance_only(returning):
    world, clips, back = returning
    recoloured, empty = recoloured_and_removed(world, clips)
    frame = torch.arange(clips.video.shape[1])[None, :, None, None, None]          # (1, F, 1, 1, 1)
    assert (metrics.identity_kept(clips.video) == 1).all()
    swapped = torch.where(frame >= 12, recoloured, clips.video)                  # right after its first appearance
    assert (metrics.identity_kept(swapped) == 0).all()
    # seen for 5 frames, away until its return, back in another colour: the first 12 frames that show a sprite
    # are 5 of one colour and 7 of the other, so a reference read from them would call the colour kept
    left_early = torch.where(frame < 5, clips.video, torch.where(frame >= back[:, None, None, None, None], recoloured,
                                                                  empty))
    assert (metrics.identity_kept(left_early) == 0).all()
    drifting = torch.where(frame < 120, clips.video, clips.video + (frame - 120) / 120 * (recoloured - clips.video))
    drifted = metrics.identity_kept(drifting).nanmean()     # a slow drift over the second half: kept while the
    assert 0.3 < drifted < 0.7                              # frames read the first colour, about as long as the next
    unseen_first = torch.where(frame < 120, empty, clips.video)
    assert metrics.identity_kept(unseen_first).isnan().all()                     # left out, not scored 0


def test_recall_is_the_colour_shown_most_not_a_glimpse_of_it(returning):
    world, clips, back = returning
    recoloured, empty = recoloured_and_removed(world, clips)
    after = lambda video: video[:1, back[0]:]                                     # from the sprite's return on
    colour = int(clips.sprite_colour[0, 0])
    assert metrics.recalled(after(clips.video), colour) == 1.0
    glimpse = lambda first, then: torch.cat([after(first)[:, :8], after(then)[:, 8:]], 1)
    assert metrics.recalled(glimpse(clips.video, recoloured), colour) == 0.0     # right briefly, wrong after
    assert metrics.recalled(glimpse(recoloured, clips.video), colour) == 1.0     # wrong briefly, right after
    assert metrics.recalled(after(empty), colour) == 0.0                         # nothing shown is no answer
    assert metrics.recalled(after(recoloured), colour, leave_out=(colour + 1) % 4) == 0.0   # nothing else read


def test_prompt_match_reads_the_named_background():
    clips = World().sample(8, 12, seed=3, switch_at=6)
    assert metrics.prompt_match(clips.video, clips.background) == 1.0
    before = clips.background[:, :1].expand_as(clips.background)           # the caption before the switch
    assert metrics.prompt_match(clips.video, before) == pytest.approx(0.5, abs=0.1)


def test_no_preset_trains_the_memory_on_a_held_out_world():
    """The held-out worlds were fixed before any training on them; a recipe that trains on one is refused here."""
    for name, preset in train.PRESETS.items():
        cfg = tv.VideoSSMConfig(**preset.model)
        trained = ([World(cfg.frame_size, **w) for w in preset.memory_worlds]
                   or [with_curtains(World(cfg.frame_size, **preset.world))])
        held_out = [benchmark.held_out_world(world, cfg.frame_size) for world in benchmark.HELD_OUT_WORLDS]
        assert not any(a == b for a in trained for b in held_out), name


def test_paired_interval_covers_a_known_difference_and_excludes_zero_only_when_it_should():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(64, generator=gen)
    mean, low, high = benchmark.paired_interval(a + 0.5 + 0.1 * torch.randn(64, generator=gen), a)
    assert low < 0.5 < high and low > 0 and abs(mean - 0.5) < 0.05          # paired: the shared part cancels
    mean, low, high = benchmark.paired_interval(a, a.roll(1))                  # no true difference
    assert low < 0 < high
    shared = 10 * torch.randn(64, generator=gen)                               # each video's own part, large
    mean, low, high = benchmark.paired_interval(shared + 0.1 + 0.01 * torch.randn(64, generator=gen), shared)
    assert 0.09 < low < high < 0.11 and high - low > 0.002     # paired: a narrow interval, resampled: not a point
    nan = torch.tensor([math.nan, 1.0, 2.0, 3.0])
    assert benchmark.paired_interval(nan, torch.zeros(4))[0] == 2.0           # a video either mode did not score is left out


def test_benchmark_prints_every_mode_with_paired_intervals(student, capsys):
    benchmark.main(["--checkpoint", student, "--frames", "40", "--videos", "3", "--steps", "1"])
    table = capsys.readouterr().out
    for row in ["ground truth", *tv.MODES, "shape match", "identity kept", "recall"]:
        assert f"| {row} |" in table
    assert "| hybrid - sink | hybrid - window | hybrid - full | hybrid - memory |" in table
    assert "3 videos of 40 frames" in table and "Recall: 3 ground-truth clips with curtains" in table
    probes = {world: re.search(rf"\| {re.escape(world)} \| (\d+) \| (([01]\.\d{{3}}|nan) \| ){{5}}", table)
              for world in [*benchmark.HELD_OUT_WORLDS, "the phase's own", benchmark.SWITCHED, benchmark.ACCOMPANIED,
                            "held out, all"]}
    assert all(probes.values()) and int(probes["the phase's own"][1]) > 0 and int(probes["held out, all"][1]) > 0
    benchmark.main(["--checkpoint", student, "--frames", "12", "--videos", "2", "--steps", "1", "--modes", "sink,hybrid",
                    "--no-held-out"])
    table = capsys.readouterr().out
    assert "| sink |" in table and "| window |" not in table and "| hybrid - sink |\n" in table
    assert "recall by world" in table and not any(world in table for world in [*benchmark.HELD_OUT_WORLDS, "held out"])
    benchmark.main(["--checkpoint", student, "--frames", "12", "--videos", "2", "--steps", "1", "--modes", "hybrid"])
    table = capsys.readouterr().out
    assert "| hybrid |" in table and "hybrid minus" not in table              # nothing to compare it with


def test_recall_is_one_on_ground_truth_and_chance_without_memory(trained):
    """The probe calls the model; with the frames handed back as its own (a stub that predicts the
    ground truth's next chunk) it scores 1 on every probe, and 0 with the hiding sprite's colour taken
    for another. With a second sprite in view, drawn larger than the hiding one in every frame, the same:
    its colour is left out of the reading, so it never wins and never counts as the answer."""
    model, text_encoder, checkpoint = sample.load(os.path.join(trained, "student.pt"))
    cfg = model.cfg
    world = with_curtains(World(cfg.frame_size, **checkpoint["made_by"]["recipe"]["world"]))
    probes = (sprite_returns(world, cfg, 4, 60, seed=0) + sprite_returns(world, cfg, 2, 60, 0, switch=True)
              + sprite_returns(world, cfg, 2, 60, 0, other=True))
    for probe in probes:
        made = []

        def truth(x, timestep, cache, write=False, probe=probe):           # the velocity that lands on ground truth
            c = cache.next_chunk
            target = probe.video[:, c * cfg.chunk_frames:(c + 1) * cfg.chunk_frames].clone()
            if probe.other >= 0:          # the sprite in view, drawn larger than the other in every frame
                target[..., :6, :6] = SPRITE_RGB[probe.other].view(1, 1, 3, 1, 1)
            s = torch.as_tensor(timestep).reshape(-1, 1, 1, 1, 1) / 1000
            if write:
                made.append(x)
                cache.next_chunk += 1
                return torch.zeros_like(x)
            return (x - target) / s
        texts = []
        stub = types.SimpleNamespace(cfg=cfg, parameters=model.parameters, forward_chunk=truth,
                                     text_kvs=lambda text: texts.append(text) or model.text_kvs(text))
        assert benchmark.recall(stub, text_encoder, probe, "hybrid", tv.denoising_sigmas(2), 0) == 1.0
        caption_at_return = probe.prompts()[probe.switch]
        # the context's caption, re-cached at its switch, then the stream's: the caption in force at the return
        asked = [probe.caption] + ([probe.new_caption] if probe.switch else []) + [caption_at_return]
        assert len(texts) == len(asked) and all(torch.equal(text, text_encoder([caption]))
                                                for text, caption in zip(texts, asked))
        wrong = [c for c in range(len(SPRITE_COLOURS)) if c != probe.colour][:1 if probe.other < 0 else None]
        for colour in wrong:                     # another colour; with a second sprite, also that sprite's own
            assert benchmark.recall(stub, text_encoder, probe._replace(colour=colour), "hybrid",
                                    tv.denoising_sigmas(2), 0) == 0.0


def test_memory_trace_is_flat_in_hybrid_and_grows_in_full(student, capsys):
    cache_mb = {}
    for mode in ["hybrid", "full"]:
        memory_trace.main(["--checkpoint", student, "--frames", "40", "--steps", "1", "--mode", mode])
        rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "MB" in line]
        assert [int(row[1]) for row in rows] == list(range(4, 41, 4))            # ten rows, every tenth of the way
        cache_mb[mode] = [float(row[2].split()[0]) for row in rows]
    assert len(set(cache_mb["hybrid"][1:])) == 1                                   # full after 2 chunks, then flat
    assert all(a < b for a, b in zip(cache_mb["full"], cache_mb["full"][1:]))


def test_report_and_world_stats_print_their_tables(trained, tmp_path, capsys):
    report.main(["--checkpoints", trained, "--clips", "2", "--grid", str(tmp_path / "grid.png")])
    table = capsys.readouterr().out
    for row in ["ground truth", "teacher", "student after stage 1", "student after DMD", "student"]:
        assert f"| {row} |" in table
    assert imageio.v3.imread(tmp_path / "grid.png").shape == (5 * 2 * 16 * 3, 8 * 16 * 3, 3)    # its clips, each model
    world_stats.main(["--preset", "test", "--clips", "8", "--frames", "60"])
    table = capsys.readouterr().out
    assert "| this preset's (the default) |" in table and "| with curtains (world.curtains=4) |" in table


MEASURE_BAD_ARGUMENTS = [  # (command, flags, what the one message says)
    (benchmark, ["--frames", "4", "--videos", "0"], "--videos 0: must be at least 1"),
    (benchmark, ["--frames", "1", "--videos", "1"], "at least two"),
    (benchmark, ["--modes", "sink,window"], "hybrid among them"),
    (benchmark, ["--modes", "hybrid,sinks"], "name each of hybrid, sink"),
    (benchmark, ["--modes", "hybrid,hybrid"], "at most once"),
    (benchmark, ["--checkpoint", "{tmp}/missing.pt"], "no checkpoint at"),
    (memory_trace, ["--frames", "0"], "at least one frame"),
    (memory_trace, ["--prompt", "a dog on red"], "unknown word 'dog'"),
    (report, ["--checkpoints", "{tmp}"], "no trained model in"),
    (report, ["--grid", "{tmp}/grid.jpg"], "use a .png"),
    (world_stats, ["--preset", "huge"], "unknown preset 'huge'"),
    (world_stats, ["--set", "world.curtains=99"], "curtains"),
]


@pytest.mark.parametrize("command, flags, message", MEASURE_BAD_ARGUMENTS,
                         ids=[f"{c.__name__} {' '.join(f)}" for c, f, _ in MEASURE_BAD_ARGUMENTS])
def test_the_yardsticks_commands_refuse_bad_arguments_with_one_clear_message(student, tmp_path, capsys, command, flags,
                                                                            message):
    needs_student = command in (benchmark, memory_trace) and "--checkpoint" not in flags
    with pytest.raises(SystemExit) as stop:
        command.main([*(["--checkpoint", student] if needs_student else []), *[f.format(tmp=tmp_path) for f in flags]])
    said = capsys.readouterr()
    assert stop.value.code not in (0, None)
    assert message in f"{stop.value.code}{said.out}{said.err}" and "Traceback" not in said.err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# notebooks/: each walkthrough runs top to bottom, and is committed with its outputs

NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks"))
                   if f.endswith(".ipynb"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name):
    nbformat = pytest.importorskip("nbformat", reason="notebooks need: pip install -r requirements-dev.txt")
    nbclient = pytest.importorskip("nbclient", reason="notebooks need: pip install -r requirements-dev.txt")
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notebooks")
    notebook = nbformat.read(os.path.join(folder, name), as_version=4)
    # A cell's limit, not a speed target: the slowest cells take well under a minute on a quiet 2-core
    # CPU, and 180 s timed out while two training runs shared the machine. A hung cell still fails.
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": folder}}).execute()


NOTEBOOKS_MAX_MB = 5      # all of them together; figures at a modest dpi keep well under it


def test_committed_notebooks_have_their_outputs():
    """Every code cell of every committed notebook carries its outputs and none of them is an error;
    together the notebooks stay under NOTEBOOKS_MAX_MB. To refresh them, from notebooks/:
    run each top to bottom in place (nbclient, or `jupyter nbconvert --execute --inplace`)."""
    import json
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notebooks")
    missing, errors, total = [], [], 0
    for name in NOTEBOOKS:
        path = os.path.join(folder, name)
        total += os.path.getsize(path)
        with open(path, encoding="utf-8") as file:
            cells = json.load(file)["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            if not cell.get("outputs"):
                missing.append(f"{name} cell {i}")
            errors += [f"{name} cell {i}: {out.get('ename')}" for out in cell.get("outputs", [])
                       if out.get("output_type") == "error"]
    assert NOTEBOOKS, "no notebooks found"
    assert not missing, f"code cells without outputs (run the notebook in place; a cell that prints nothing " \
                        f"should show something): {', '.join(missing)}"
    assert not errors, f"cells whose committed output is an error: {', '.join(errors)}"
    assert total <= NOTEBOOKS_MAX_MB * 2 ** 20, f"the notebooks take {total / 2 ** 20:.1f} MB, over {NOTEBOOKS_MAX_MB} MB"
