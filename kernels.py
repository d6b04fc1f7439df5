"""
The global memory's math: the gated delta rule (VideoSSM eq. E7), three ways. Read this file
first; it imports nothing but torch, so it can be copied as is.

    naive_gated_delta_rule     (E7) as a Python loop over tokens: slow, obvious, the reference
    chunk_gated_delta_rule     the same in chunks of Tc tokens (UT transform / WY representation):
                               parallel inside a chunk, a short loop over chunks; differentiable
    gated_delta_rule           the entry point: the torch.compile'd chunked form on CUDA, eager elsewhere

The recurrence, per head, with a state M of shape (K, V) and M_0 = 0 (or a given state):

    M    <- exp(g_i) * M                # decay            (g_i <= 0, log space)
    u_i  =  beta_i * (v_i - M^T k_i)    # predict: keep only what M cannot already predict
    M    <- M + k_i u_i^T               # write
    o_i  =  M^T (scale * q_i)           # read, after the write (D3)

Conventions are those of flash-linear-attention's `chunk_gated_delta_rule` (fla/ops/gated_delta_rule,
the fast implementation this mirrors), so its reference can check ours: one gate g and one beta per
head per token (D1), g in log space, beta in (0, 1), `scale` defaulting to K**-0.5. Keys are expected
L2-normalised (D2); then every entry of the UT system below is bounded by 1 and the chunked form is
as accurate as the loop.

Glossary of the letters used here (they are docs/notation.md, which the rest of the code shares):
    B   batch                         L   tokens in the sequence (time-major), i one token's index
    nh  heads                         K   key / query width per head (d_k; hd in the model)
    V   value width per head (d_v)    Tc  tokens per chunk of the chunked form (chunk_size)
    n   number of chunks, ceil(L / Tc)
flash-linear-attention writes (B, T, H, K) for (B, L, nh, K).
In the chunked form's formulas, q, k, v stand for one chunk's queries, keys and values as
matrices (a row per token) and u for its writes; G, D, N, R, U, O are matrices of that chunk.
"""

import functools
import math

import torch
import torch.nn.functional as nnf


# ---- the reference: a loop over tokens -----------------------------------------------------------

def check_inputs(q, k, v, g, beta, initial_state=None, chunk_size=1):
    """Shapes and dtypes at the door: a (B, nh, L, K) tensor or a gate without its head axis would
    otherwise broadcast silently into a wrong answer."""
    if q.dim() != 4:
        raise ValueError(f"q must have shape (B, L, nh, K), got {tuple(q.shape)}")
    B, L, nh, K = q.shape
    V = v.shape[-1]
    expected = {"k": (k, (B, L, nh, K)), "v": (v, (B, L, nh, V)), "g": (g, (B, L, nh)), "beta": (beta, (B, L, nh)),
                "initial_state": (initial_state, (B, nh, K, V))}
    for name, (x, shape) in expected.items():
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (B, L, nh = {B}, {L}, {nh} from q of shape "
                             f"(B, L, nh, K)), got {tuple(x.shape)}")
    if L == 0 or chunk_size < 1:
        raise ValueError(f"need at least one token and chunk_size >= 1, got L={L}, chunk_size={chunk_size}")
    if not q.is_floating_point() or (q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16)):
        raise ValueError(f"q, k, v, g, beta are {q.dtype}; use float32 or float64 (on a GPU also bfloat16 and "
                         f"float16 run; on the CPU the triangular solve has no half-precision kernel)")


def naive_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None):
    """(E7) token by token. Slow (L Python iterations), obviously right.

    Args:
        q, k:   shape (B, L, nh, K)
        v:      shape (B, L, nh, V)
        g:      shape (B, L, nh), log decay, <= 0
        beta:   shape (B, L, nh), write strength in (0, 1)
        scale:  multiplies q; default K**-0.5
        initial_state: shape (B, nh, K, V) or None (zeros)
    Returns:
        o:      shape (B, L, nh, V), o_i = M_i^T (scale q_i)
        state:  shape (B, nh, K, V), M after the last token
    """
    check_inputs(q, k, v, g, beta, initial_state)
    B, L, nh, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    M = q.new_zeros(B, nh, K, v.shape[-1]) if initial_state is None else initial_state.to(q.dtype)  # (B, nh, K, V)
    outputs = []
    for i in range(L):
        q_i, k_i, v_i = q[:, i] * scale, k[:, i], v[:, i]                  # (B, nh, K), (B, nh, K), (B, nh, V)
        M = M * g[:, i].exp()[..., None, None]                              # decay
        prediction = (M * k_i[..., None]).sum(-2)                           # (B, nh, V)  M^T k_i
        u_i = beta[:, i, :, None] * (v_i - prediction)                      # (B, nh, V)  predict
        M = M + k_i[..., :, None] * u_i[..., None, :]                       # (B, nh, K, V)  write
        outputs.append((M * q_i[..., None]).sum(-2))                        # (B, nh, V)  read
    return torch.stack(outputs, dim=1), M                                   # (B, L, nh, V), (B, nh, K, V)


# ---- the chunked form ----------------------------------------------------------------------------

def chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, chunk_size=64):
    """(E7) in chunks of Tc tokens: the UT transform inside each chunk, a loop over chunks.

    Inside a chunk (positions i, j = 0..Tc-1, cumulative log gate G_i = g_0 + ... + g_i) the Tc
    updates collapse to matrix products. Writing D_ij = exp(G_i - G_j) for i >= j (0 above), and
    (I + N)^-1 for the UT transform (applied as a triangular solve, never formed):

        N  = strict_lower(diag(beta) (D * k k^T))     how earlier writes change later predictions
        R  = (I + N)^-1 diag(beta exp(G)) k           what each token would remove per unit of M (fla: w)
        U  = (I + N)^-1 diag(beta) v                  the writes if M were 0 at the chunk's start
        u  = U - R M                                  the actual writes u_i
        O  = (q exp(G)) M + (tril(q k^T) * D) u       reads: the old state plus the chunk's writes
        M <- exp(G_last) M + (k exp(G_last - G))^T u

    Every exponent above is <= 0 because g <= 0 and the masks are applied *before* exp, so nothing
    overflows even at g = -50 (forming exp(G_i) * exp(-G_j) instead would give inf * 0 = nan).

    N, R and U do not depend on M, so they are computed for all chunks at once; the loop over
    chunks is two small matmuls each. Arguments and returns as `naive_gated_delta_rule`, plus
    `chunk_size` (Tc); L need not be a multiple of Tc (the tail is padded with g = beta = k = 0,
    which leaves M untouched).
    """
    check_inputs(q, k, v, g, beta, initial_state, chunk_size)
    B, L, nh, K = q.shape
    Vd, Tc = v.shape[-1], chunk_size
    scale = K ** -0.5 if scale is None else scale
    n = math.ceil(L / Tc)                               # chunks, the last one padded
    pad = n * Tc - L

    def to_chunks(x):                                   # (B, L, nh, ...) -> (B*nh, n, Tc, ...)
        x = x.transpose(1, 2)                           # (B, nh, L, ...)
        if pad:
            x = nnf.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
        return x.reshape(B * nh, n, Tc, *x.shape[3:])  # batch and heads in one axis, for baddbmm below

    q = to_chunks(q) * scale                            # (B*nh, n, Tc, K)
    k = to_chunks(k)                                    # (B*nh, n, Tc, K)
    v = to_chunks(v)                                    # (B*nh, n, Tc, V)
    G = to_chunks(g).cumsum(-1)                         # (B*nh, n, Tc)  cumulative log decay
    beta = to_chunks(beta)                              # (B*nh, n, Tc)

    upper = torch.ones(Tc, Tc, dtype=torch.bool, device=q.device).triu(1)  # (Tc, Tc)  i < j
    D = (G[..., :, None] - G[..., None, :]).masked_fill(upper, -math.inf).exp()  # (B*nh, n, Tc, Tc) masked before exp

    # the UT transform as triangular solves with I + N. With unitriangular=True the solver reads the
    # diagonal as 1 and ignores what lies above it, so only N's strict lower part need be right.
    k_beta = beta[..., None] * k                                            # (B*nh, n, Tc, K)
    N_lower = (k_beta @ k.transpose(-1, -2)) * D                            # (B*nh, n, Tc, Tc)
    solve = lambda rhs: torch.linalg.solve_triangular(N_lower, rhs, upper=False, unitriangular=True)
    R = solve(k_beta * G.exp()[..., None])              # (B*nh, n, Tc, K)  (I + N)^-1 diag(beta exp(G)) k
    U = solve(beta[..., None] * v)                      # (B*nh, n, Tc, V)  (I + N)^-1 diag(beta) v

    q_decayed = q * G.exp()[..., None]                  # (B*nh, n, Tc, K)  reads of the state at chunk start
    attn = (q @ k.transpose(-1, -2)) * D                # (B*nh, n, Tc, Tc)  reads of the chunk's own writes
    k_to_end_T = (k * (G[..., -1:] - G).exp()[..., None]).transpose(-1, -2)  # (B*nh, n, K, Tc)  decayed to chunk end
    chunk_decay = G[..., -1:].exp()[..., None]          # (B*nh, n, 1, 1)

    # the only sequential part: carry M across chunks
    M = q.new_zeros(B * nh, K, Vd) if initial_state is None else initial_state.to(q.dtype).reshape(B * nh, K, Vd)
    states, writes = [], []
    for i in range(n):
        states.append(M)                                                    # M at the chunk's start
        u = torch.baddbmm(U[:, i], R[:, i], M, alpha=-1)                   # (B*nh, Tc, V)  u = U - R M
        writes.append(u)
        M = torch.baddbmm(chunk_decay[:, i] * M, k_to_end_T[:, i], u)      # (B*nh, K, V)

    # reads, for all chunks at once (collected after the loop: in-place writes into o inside it
    # would make autograd and torch.compile copy o at every chunk)
    o = q_decayed @ torch.stack(states, dim=1) + attn @ torch.stack(writes, dim=1)  # (B*nh, n, Tc, V)
    o = o.reshape(B, nh, n * Tc, Vd)[:, :, :L].transpose(1, 2)               # (B, L, nh, V)
    return o, M.view(B, nh, K, Vd)


# ---- choosing a path -----------------------------------------------------------------------------

@functools.cache                    # built on first use: torch.compile's machinery takes seconds to import
def _compiled():
    return torch.compile(chunk_gated_delta_rule, dynamic=False)


def compiled_chunk_gated_delta_rule(*args, **kwargs):
    """`chunk_gated_delta_rule` through torch.compile (compiled on first use, per input shape)."""
    return _compiled()(*args, **kwargs)


def gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None, chunk_size=64, backend="auto"):
    """The entry point the model uses. backend: "auto" (compiled on CUDA, eager elsewhere),
    "compiled", "chunked" (eager) or "naive". Arguments and returns as `chunk_gated_delta_rule`."""
    if backend == "auto":
        backend = "compiled" if q.is_cuda else "chunked"
    if backend not in ("naive", "chunked", "compiled"):
        raise ValueError(f"unknown backend {backend!r}: use 'auto', 'compiled', 'chunked' or 'naive'")
    with torch.autocast(q.device.type, enabled=False):   # in the inputs' dtype: autocast would run matmuls in bf16
        if backend == "naive":
            return naive_gated_delta_rule(q, k, v, g, beta, scale, initial_state)
        if backend == "chunked":
            return chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size)
        return compiled_chunk_gated_delta_rule(q, k, v, g, beta, scale, initial_state, chunk_size)
