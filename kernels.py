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


def check_inputs(q, k, v, g, beta, initial_state=None, chunk_size=1):
    """Shapes and dtypes at the door, with the shape that was expected: a (B, H, T, K) tensor or a
    gate without its head axis would otherwise broadcast silently into a wrong answer."""
    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, T, H, K), got {tuple(q.shape)}")
    B, T, H, K = q.shape
    expected = {"k": (k, (B, T, H, K)), "v": (v, (B, T, H, v.shape[-1])), "g": (g, (B, T, H)),
                "beta": (beta, (B, T, H))}
    if initial_state is not None:
        expected["initial_state"] = (initial_state, (B, H, K, v.shape[-1]))
    for name, (x, shape) in expected.items():
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (B, T, H = {B}, {T}, {H} from q of shape "
                             f"(B, T, H, K)), got {tuple(x.shape)}")
    if T == 0 or chunk_size < 1:
        raise ValueError(f"need at least one token and chunk_size >= 1, got T={T}, chunk_size={chunk_size}")
    if not q.is_floating_point() or (q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16)):
        raise ValueError(f"q, k, v, g, beta are {q.dtype}; use float32 or float64 (on a GPU also bfloat16 and "
                         f"float16 run; on the CPU the triangular solve has no half-precision kernel)")


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
    check_inputs(q, k, v, g, beta, initial_state)
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
    the loop over chunks is two small matmuls each. Same arguments and returns as
    `naive_gated_delta_rule`, plus `chunk_size` (C). T need not be a multiple of C: the tail is
    padded with g = 0, beta = 0, k = 0, which leaves M untouched.
    """
    check_inputs(q, k, v, g, beta, initial_state, chunk_size)
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

    upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)    # (C, C)  i < j
    D = (G[..., :, None] - G[..., None, :]).masked_fill(upper, -math.inf).exp()  # (B, H, N, C, C) masked before exp

    # the UT transform: solve (I + N) W = diag(beta exp(G)) K and (I + N) U = diag(beta) V. Only N's
    # strict lower part matters: with unitriangular=True the solver reads the diagonal as 1 and
    # ignores what lies above it.
    k_beta = beta[..., None] * k                                            # (B, H, N, C, K)
    N_lower = (k_beta @ k.transpose(-1, -2)) * D                            # (B, H, N, C, C)
    W = torch.linalg.solve_triangular(N_lower, k_beta * G.exp()[..., None], upper=False, unitriangular=True)
    U = torch.linalg.solve_triangular(N_lower, beta[..., None] * v, upper=False, unitriangular=True)
    # W: (B, H, N, C, K), U: (B, H, N, C, V)

    q_decayed = q * G.exp()[..., None]                  # (B, H, N, C, K)  reads of the state at chunk start
    attn = (q @ k.transpose(-1, -2)) * D                # (B, H, N, C, C)  reads of the chunk's own writes
    k_to_end = k * (G[..., -1:] - G).exp()[..., None]   # (B, H, N, C, K)  decay from t to the chunk's end
    chunk_decay = G[..., -1:].exp()[..., None]          # (B, H, N, 1, 1)

    # the only sequential part: carry M across chunks (batch and heads flattened for baddbmm)
    M = q.new_zeros(B * H, K, Vd) if initial_state is None else initial_state.to(q.dtype).reshape(B * H, K, Vd)
    U_, W_, decay_ = U.flatten(0, 1), W.flatten(0, 1), chunk_decay.flatten(0, 1)
    k_to_end_T = k_to_end.flatten(0, 1).transpose(-1, -2)                  # (BH, N, K, C)
    states, writes = [], []
    for n in range(N):
        states.append(M)                                                    # M at the chunk's start
        v_new = torch.baddbmm(U_[:, n], W_[:, n], M, alpha=-1)              # (BH, C, V)  V' = U - W M
        writes.append(v_new)
        M = torch.baddbmm(decay_[:, n] * M, k_to_end_T[:, n], v_new)        # (BH, K, V)
    M = M.view(B, H, K, Vd)
    states = torch.stack(states, dim=1).view(B, H, N, K, Vd)
    writes = torch.stack(writes, dim=1).view(B, H, N, C, Vd)

    # reads, for all chunks at once (collected after the loop: in-place writes into o inside it
    # would make autograd and torch.compile copy o at every chunk)
    o = q_decayed @ states + attn @ writes                                  # (B, H, N, C, V)
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
# `python kernels.py [--cuda] [--peers]`: correctness lines and a speed table


def load_peers():
    """The two public pure-PyTorch chunked forms of the same rule, in our calling convention:
    transformers' Qwen3-Next `torch_chunk_gated_delta_rule` and flash-linear-attention's
    `naive_chunk_gated_delta_rule`. Not dependencies: `pip install transformers fla-core`."""
    import importlib.util
    import inspect
    import pathlib
    try:
        from transformers.models.qwen3_next import modeling_qwen3_next
        fla = importlib.util.find_spec("fla")
        import einops  # noqa: F401  (fla's naive.py needs it)
    except ImportError:
        fla = None
    if fla is None:
        raise SystemExit("--peers needs transformers and fla-core: pip install transformers fla-core")
    # transformers swaps in fla's GPU kernel when it can: unwrap to the PyTorch original
    hf = inspect.unwrap(modeling_qwen3_next.torch_chunk_gated_delta_rule)
    # fla's __init__ imports triton; load naive.py from its file instead
    spec = importlib.util.spec_from_file_location(
        "fla_naive", pathlib.Path(fla.submodule_search_locations[0]) / "ops" / "gated_delta_rule" / "naive.py")
    fla_naive = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fla_naive)
    return {
        "transformers": lambda q, k, v, g, beta, initial_state=None: hf(
            q, k, v, g, beta, chunk_size=64, initial_state=initial_state, output_final_state=True),
        "fla naive": lambda q, k, v, g, beta, initial_state=None: fla_naive.naive_chunk_gated_delta_rule(
            q, k, v, g, beta, chunk_size=64, initial_state=initial_state, output_final_state=True),
    }


def _race(paths, make_args, step, tokens, rounds=5, round_seconds=0.2):
    """Median tokens/s of each path, timed in interleaved rounds (A B C A B C ...) so that a noisy,
    shared machine slows all of them alike."""
    rates = {name: [] for name in paths}
    for fn in paths.values():                           # warm up (and compile)
        step(fn, make_args())
    for _ in range(rounds):
        for name, fn in paths.items():
            args, calls, start = make_args(), 0, time.perf_counter()
            while calls == 0 or time.perf_counter() - start < round_seconds:
                step(fn, args)
                calls += 1
            if args[0].is_cuda:
                torch.cuda.synchronize()
            rates[name].append(calls * tokens / (time.perf_counter() - start))
    return {name: sorted(r)[len(r) // 2] for name, r in rates.items()}


def benchmark(device="cpu", peers=False, lengths=(256, 1024, 4096), B=1, H=4, K=32, V=32):
    """Prints correctness against the naive scan and tables of tokens/s (float32)."""
    others = load_peers() if peers else {}
    inputs = random_inputs(B, 700, H, K, V, torch.float64, device)
    state0 = torch.randn(B, H, K, V, dtype=torch.float64, device=device)
    o_ref, s_ref = naive_gated_delta_rule(*inputs, initial_state=state0)
    for name, fn in {"chunked": chunk_gated_delta_rule, **others}.items():
        o, s = fn(*inputs, initial_state=state0)
        err = max((o - o_ref).abs().max().item(), (s - s_ref).abs().max().item())
        print(f"correctness: {name} vs naive, float64 in, T=700, initial state: max abs diff {err:.1e}")

    ours = {"chunked": chunk_gated_delta_rule, "compiled": compiled_chunk_gated_delta_rule}
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    columns = ["naive", *ours, *others]
    ratios = [("chunked", "naive"), ("compiled", "naive")] + [(o, p) for o in ours for p in others]

    def table(title, rows):
        print(f"\n{title} on {where} (B={B}, H={H}, K={K}, V={V}, float32)")
        print("| T | " + " | ".join(columns) + " | " + " | ".join(f"{a}/{b}" for a, b in ratios) + " |")
        print("|--:|" + "--:|" * (len(columns) + len(ratios)))
        for T, speed in rows:
            print(f"| {T} | " + " | ".join(f"{speed[c]:,.0f}" if c in speed else "-" for c in columns) + " | "
                  + " | ".join(f"{speed[a] / speed[b]:.1f}x" if a in speed and b in speed else "-"
                               for a, b in ratios) + " |")

    forward = lambda fn, args: fn(*args)
    with torch.no_grad():
        table("forward, tokens/s", [(T, _race({"naive": naive_gated_delta_rule, **ours, **others},
                                              lambda: random_inputs(B, T, H, K, V, device=device), forward, B * T))
                                    for T in lengths])

    def make_args(T=lengths[-1]):
        return tuple(x.requires_grad_() for x in random_inputs(B, T, H, K, V, device=device))

    def forward_backward(fn, args):
        o, state = fn(*args)
        (o.sum() + state.sum()).backward()
    table("forward + backward, tokens/s", [(lengths[-1], _race({**ours, **others}, make_args, forward_backward,
                                                               B * lengths[-1]))])


if __name__ == "__main__":
    benchmark("cuda" if "--cuda" in sys.argv else "cpu", peers="--peers" in sys.argv)
