"""
The global memory's math: the gated delta rule (VideoSSM eq. E7), three ways.

Read this file first. It imports nothing but torch, so it can be copied as is.

    naive_gated_delta_rule     a Python loop over tokens: (E7) written literally. Slow, obvious,
                               the reference every other path is tested against.
    chunk_gated_delta_rule     the same recurrence in chunks of C tokens (the UT transform /
                               WY representation): parallel inside a chunk, a short loop over
                               chunks. Differentiable, any length, initial state in, final out.
    gated_delta_rule           picks a path: the torch.compile'd chunked form on CUDA, the eager
                               chunked form elsewhere (force either with `backend=`).

The recurrence, per head, with a state M of shape (K, V) and M_0 = 0 (or a given state):

    M    <- exp(g_t) * M                # decay            (g_t <= 0, log space)
    u_t  =  beta_t * (v_t - M^T k_t)    # predict: keep only what M cannot already predict
    M    <- M + k_t u_t^T               # write
    o_t  =  M^T (scale * q_t)           # read, after the write (D3)

Conventions are those of flash-linear-attention's `chunk_gated_delta_rule`, so its reference can
check ours: one gate g and one beta per head per token (D1), g in log space, beta in (0, 1),
`scale` defaulting to K**-0.5. Keys are expected L2-normalised (D2); with that every entry of
the UT system below is bounded by 1 and the chunked form is as accurate as the loop.

Glossary of dimension letters used in the shape comments:
    B   batch                         T   tokens in the sequence (time-major)
    H   heads                         K   key / query width per head (d_k)
    V   value width per head (d_v)    C   tokens per chunk of the chunked form
    N   number of chunks, ceil(T / C)

Official fast implementation mirrored: fla-org/flash-linear-attention, fla/ops/gated_delta_rule.
"""

import math
import sys
import time

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# The reference: a loop over tokens


def naive_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None):
    """(E7) token by token. Slow (T Python iterations), obviously right.

    Args:
        q, k:   shape (B, T, H, K)
        v:      shape (B, T, H, V)
        g:      shape (B, T, H), log decay, <= 0
        beta:   shape (B, T, H), write strength in (0, 1)
        scale:  multiplies q; default K**-0.5
        initial_state: shape (B, H, K, V) or None (zeros)
    Returns:
        o:      shape (B, T, H, V), o_t = M_t^T (scale q_t)
        state:  shape (B, H, K, V), M after the last token
    """
    B, T, H, K = q.shape
    Vd = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    M = q.new_zeros(B, H, K, Vd) if initial_state is None else initial_state.to(q.dtype)  # (B, H, K, V)
    outputs = []
    for t in range(T):
        q_t, k_t, v_t = q[:, t] * scale, k[:, t], v[:, t]                  # (B, H, K), (B, H, K), (B, H, V)
        M = M * g[:, t].exp()[..., None, None]                              # decay
        prediction = (M * k_t[..., None]).sum(-2)                           # (B, H, V)  M^T k_t
        u_t = beta[:, t, :, None] * (v_t - prediction)                      # (B, H, V)  predict
        M = M + k_t[..., :, None] * u_t[..., None, :]                       # (B, H, K, V)  write
        outputs.append((M * q_t[..., None]).sum(-2))                        # (B, H, V)  read
    return torch.stack(outputs, dim=1), M                                   # (B, T, H, V), (B, H, K, V)


# ----------------------------------------------------------------------------------------------
# The chunked form


def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, chunk_size=64):
    """(E7) in chunks of C tokens: the UT transform inside each chunk, a loop over chunks.

    Inside a chunk (positions i, j = 0..C-1, cumulative log gate G_i = g_0 + ... + g_i) the C
    updates collapse to matrix products. Writing D_ij = exp(G_i - G_j) for i >= j (0 above):

        N  = strict_lower(diag(beta) (D * K K^T))     how earlier writes change later predictions
        T  = (I + N)^-1                               the UT transform (a triangular solve)
        W  = T diag(beta exp(G)) K                    what each token would subtract per unit of M
        U  = T diag(beta) V                           the writes if M were 0 at the chunk's start
        V' = U - W M                                  the actual writes u_t
        O  = (Q exp(G)) M + (tril(Q K^T) * D) V'      reads: the old state plus the chunk's writes
        M <- exp(G_last) M + (K exp(G_last - G))^T V'

    Every exponent above is <= 0 because g <= 0 and the masks are applied *before* exp, so nothing
    overflows even at g = -50 (forming exp(G_i) * exp(-G_j) instead would give inf * 0 = nan).

    The intra-chunk part (N, T, W, U) does not depend on M, so it runs for all chunks at once;
    the loop over chunks is three small matmuls each. Same arguments and returns as
    `naive_gated_delta_rule`, plus `chunk_size` (C). T need not be a multiple of C: the tail is
    padded with g = 0, beta = 0, k = 0, which leaves M untouched.
    """
    B, T, H, K = q.shape
    Vd = v.shape[-1]
    C = chunk_size
    scale = K ** -0.5 if scale is None else scale
    pad = (-T) % C
    N = (T + pad) // C

    def to_chunks(x):                                   # (B, T, H, ...) -> (B, H, N, C, ...)
        x = x.transpose(1, 2)                           # (B, H, T, ...)
        if pad:
            x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
        return x.reshape(B, H, N, C, *x.shape[3:])

    q = to_chunks(q) * scale                            # (B, H, N, C, K)
    k = to_chunks(k)                                    # (B, H, N, C, K)
    v = to_chunks(v)                                    # (B, H, N, C, V)
    G = to_chunks(g).cumsum(-1)                         # (B, H, N, C)  cumulative log decay
    beta = to_chunks(beta)                              # (B, H, N, C)

    lower = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()      # (C, C)  i >= j
    log_D = (G[..., :, None] - G[..., None, :]).masked_fill(~lower, -math.inf)
    D = log_D.exp()                                     # (B, H, N, C, C)  masked before exp

    # the UT transform: solve (I + N) [W U] = diag(beta) [exp(G) K  V]. N's strict lower part is
    # all the solver needs: with unitriangular=True it reads the diagonal as 1 and ignores the rest.
    N_lower = beta[..., None] * D * (k @ k.transpose(-1, -2))               # (B, H, N, C, C)
    rhs = beta[..., None] * torch.cat([G.exp()[..., None] * k, v], dim=-1)  # (B, H, N, C, K+V)
    WU = torch.linalg.solve_triangular(N_lower, rhs, upper=False, unitriangular=True)
    W, U = WU.split([K, Vd], dim=-1)                    # (B, H, N, C, K), (B, H, N, C, V)

    G_last = G[..., -1:]                                # (B, H, N, 1)
    k_to_end = k * (G_last - G).exp()[..., None]        # (B, H, N, C, K)  decay from t to chunk end
    chunk_decay = G_last.exp()[..., None]               # (B, H, N, 1, 1)

    # the only sequential part: carry M across chunks
    M = q.new_zeros(B, H, K, Vd) if initial_state is None else initial_state.to(q.dtype)  # (B, H, K, V)
    states, writes = [], []
    for n in range(N):
        states.append(M)                                                # M at the chunk's start
        v_new = U[:, :, n] - W[:, :, n] @ M                             # (B, H, C, V)  V' = U - W M
        writes.append(v_new)
        M = chunk_decay[:, :, n] * M + k_to_end[:, :, n].transpose(-1, -2) @ v_new  # (B, H, K, V)
    states = torch.stack(states, dim=2)                 # (B, H, N, K, V)
    writes = torch.stack(writes, dim=2)                 # (B, H, N, C, V)

    # reads, for all chunks at once
    attn = (q @ k.transpose(-1, -2)) * D                # (B, H, N, C, C)  D is 0 above the diagonal
    o = (q * G.exp()[..., None]) @ states + attn @ writes                   # (B, H, N, C, V)
    o = o.reshape(B, H, N * C, Vd)[:, :, :T].transpose(1, 2)                # (B, T, H, V)
    return o, M


# ----------------------------------------------------------------------------------------------
# Choosing a path

_compiled_chunk_gated_delta_rule = None


def compiled_chunk_gated_delta_rule(*args, **kwargs):
    """`chunk_gated_delta_rule` through torch.compile (compiled on first use, per input shape)."""
    global _compiled_chunk_gated_delta_rule
    if _compiled_chunk_gated_delta_rule is None:
        _compiled_chunk_gated_delta_rule = torch.compile(chunk_gated_delta_rule, dynamic=False)
    return _compiled_chunk_gated_delta_rule(*args, **kwargs)


def gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, chunk_size=64, backend="auto"):
    """The entry point the model uses. backend: "auto" (compiled on CUDA, eager elsewhere),
    "compiled", "chunked" (eager) or "naive". Arguments and returns as `chunk_gated_delta_rule`."""
    if backend == "auto":
        backend = "compiled" if q.is_cuda else "chunked"
    if backend == "naive":
        return naive_gated_delta_rule(q, k, v, g, beta, scale, initial_state)
    if backend == "chunked":
        return chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size)
    if backend == "compiled":
        return compiled_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size)
    raise ValueError(f"unknown backend {backend!r}: use 'auto', 'compiled', 'chunked' or 'naive'")


def random_inputs(B, T, H, K, V, dtype=torch.float32, device="cpu", seed=0):
    """Inputs in the model's regime: L2-normalised keys (D2), g <= 0, beta in (0, 1)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q = randn(B, T, H, K)
    k = F.normalize(randn(B, T, H, K), dim=-1)
    v = randn(B, T, H, V)
    g = F.logsigmoid(randn(B, T, H) + 2.0)              # mostly close to 0: long memories
    beta = torch.sigmoid(randn(B, T, H))
    return q, k, v, g, beta


# ----------------------------------------------------------------------------------------------
# `python kernels.py`: a correctness line and a speed table


def _tokens_per_second(fn, args, T, min_seconds=0.5):
    fn(*args)                                           # warm up (and compile)
    sync = torch.cuda.synchronize if args[0].is_cuda else (lambda: None)
    sync()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        fn(*args)
        calls += 1
    sync()
    return calls * T * args[0].shape[0] / (time.perf_counter() - start)


def benchmark(device="cpu", lengths=(256, 1024, 4096), B=1, H=4, K=32, V=32):
    """Prints a correctness line and a table of tokens/s for naive, chunked and compiled."""
    q, k, v, g, beta = random_inputs(B, 700, H, K, V, torch.float64, device)
    o_ref, s_ref = naive_gated_delta_rule(q, k, v, g, beta)
    o, s = chunk_gated_delta_rule(q, k, v, g, beta)
    err = max((o - o_ref).abs().max().item(), (s - s_ref).abs().max().item())
    print(f"correctness: chunked vs naive, float64, T=700: max abs diff {err:.1e}")

    paths = {
        "naive": naive_gated_delta_rule,
        "chunked": chunk_gated_delta_rule,
        "compiled": compiled_chunk_gated_delta_rule,
    }
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"\ntokens/s on {name} (B={B}, H={H}, K={K}, V={V}, float32, forward)")
    print(f"| {'T':>5} | " + " | ".join(f"{p:>10}" for p in paths) + " | chunked/naive | compiled/naive |")
    print("|------:|" + "-----------:|" * len(paths) + "--------------:|---------------:|")
    with torch.no_grad():
        for T in lengths:
            args = random_inputs(B, T, H, K, V, torch.float32, device)
            speed = {p: _tokens_per_second(fn, args, T) for p, fn in paths.items()}
            print(f"| {T:>5} | " + " | ".join(f"{speed[p]:>10,.0f}" for p in paths)
                  + f" | {speed['chunked'] / speed['naive']:>12.1f}x | {speed['compiled'] / speed['naive']:>13.1f}x |")


if __name__ == "__main__":
    benchmark("cuda" if "--cuda" in sys.argv else "cpu")
