"""
The network: a Wan-2.1-style video DiT that generates a video chunk by chunk, seeing recent frames
through a sliding attention window with sink frames and everything older through a gated
delta-rule memory (VideoSSM, arXiv 2512.04519). Imports torch and kernels.py only. Mirrors Wan2.1's
wan/modules/model.py (diffusers: WanTransformer3DModel), and Self-Forcing's CausalWanModel for the
causal variant.

Read top to bottom:
    VideoSSMConfig          every size and switch, with what it means
    flow matching helpers   the noise convention: x_s = (1 - s) x0 + s eps, the net predicts eps - x0
    TextEncoder, rope       prompt -> token features (no T5); 3D rotary positions, Wan's interleaved pairs
    GatedDeltaMemory        the global memory: gates (E5, E6), write (E7), read (E8), router (E9)
    HybridAttention         the hybrid layer: sink + window attention (E3, E4) over its LayerCache, fused
                            with the memory (E10); step(x, cache, ...) -> (y, cache). Copies out whole.
    Block, Pattern          Wan's block around it; who attends to whom in a parallel forward
    VideoDiT                the model; one class is teacher, student and critic
    StreamCache, generate   the streaming path: a LayerCache per layer, chunk by chunk
    load_checkpoint, build  a released checkpoint -> the model and text encoder it holds

Two paths compute the same function, tested against each other: parallel (`VideoDiT.forward`, a whole
clip in one block-causal pass: training) and streaming (`VideoDiT.forward_chunk` with a `StreamCache`, one
chunk at a time: sampling and stage 2's self-rollout).

Shape letters and symbols: docs/notation.md, one meaning each in every file (B batch, F frames,
C colour channels, H, W height and width, L tokens, d width, nh heads, hd head width, p patch size,
h, w tokens per frame along height and width, Lt text tokens, Lc cached tokens, n chunks, M the memory).
Paper equations are tagged (E3)...(E11), and decisions the paper leaves open (D1)...(D12); the
README's E/D tables list them all.
"""

import math
import os
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as nnf

from kernels import gated_delta_rule

# What a chunk sees of the past in each causal mode:
#   hybrid   sink + window + memory M   VideoSSM
#   sink     sink + window              LongLive
#   window   window                     Self-Forcing with a rolling window
#   full     every earlier chunk        the quadratic baseline
#   memory   itself + memory M          state-space only: the causal analogue of arXiv 2403.07711
MODES = ("hybrid", "sink", "window", "full", "memory")


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")


@dataclass
class VideoSSMConfig:
    frame_size: int = 32          # frames are frame_size x frame_size pixels
    channels: int = 3             # colour channels
    patch_size: int = 4           # a token is a p x p patch of one frame (Wan's patch is (1, p, p))
    dim: int = 128                # model width d
    n_heads: int = 4              # attention heads nh; head width hd = dim // n_heads
    n_layers: int = 4             # transformer blocks
    ffn_dim: int = 512            # hidden width of each block's feed-forward net
    freq_dim: int = 64            # width of the sinusoidal timestep embedding
    text_dim: int = 64            # width of the text encoder's token features
    causal: bool = False          # False: bidirectional (teacher, critic); True: causal student
    chunk_frames: int = 3         # frames generated together; the unit of causality and eviction
    mode: str = "hybrid"          # causal attention: one of MODES
    sink_chunks: int = 1          # first chunks of the video that are never evicted
    window_chunks: int = 3        # recent chunks attended to, the current one included
    router_horizon: int = 48      # T of (E9) in frames (D6): gamma's position reaches 1 there
    kernel_chunk_size: int = 64   # chunk size of the chunked delta-rule kernel
    kernel_backend: str = "auto"  # kernels.gated_delta_rule backend: auto | compiled | chunked | naive

    def __post_init__(self):
        if self.frame_size % self.patch_size:
            raise ValueError(f"frame_size {self.frame_size} is not divisible by patch_size {self.patch_size}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        check_mode(self.mode)
        if self.window_chunks < 1:
            raise ValueError(f"window_chunks must be >= 1 (the current chunk), got {self.window_chunks}")
        if self.sink_chunks < 0 or self.chunk_frames < 1:
            raise ValueError("sink_chunks must be >= 0 and chunk_frames >= 1")

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def tokens_per_frame(self):
        return (self.frame_size // self.patch_size) ** 2


# ---- flow matching (rectified flow, Wan's convention) --------------------------------------------
# s in [0, 1] is the noise level ("sigma" in code), s = 1 is pure noise; the network sees the timestep
# 1000 s and predicts the velocity eps - x0. (t is the frame index, never the diffusion time.)

def add_noise(x0, noise, sigma):
    """x_s = (1 - s) x0 + s eps. sigma broadcasts against x0 from the left: (B,) or (B, F)."""
    sigma = sigma.reshape(*sigma.shape, *([1] * (x0.dim() - sigma.dim())))
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0, noise):
    """What the network learns to predict: d x_s / d s = eps - x0."""
    return noise - x0


def x0_from_velocity(x_s, velocity, sigma):
    """Invert the above: x0 = x_s - s v."""
    sigma = sigma.reshape(*sigma.shape, *([1] * (x_s.dim() - sigma.dim())))
    return x_s - sigma * velocity


def shift_sigma(sigma, timestep_shift):
    """Wan's timestep shift s' = shift s / (1 + (shift - 1) s); above 1 it spends more steps at high noise."""
    return timestep_shift * sigma / (1 + (timestep_shift - 1) * sigma)


def denoising_sigmas(steps, timestep_shift=3.0):
    """The student's few denoising levels, equally spaced in s then warped through the timestep shift
    (Self-Forcing's timesteps 1000, 750, 500, 250 for 4 steps). Returns a list of floats, high to low."""
    return [shift_sigma(1 - i / steps, timestep_shift) for i in range(steps)]


# ---- text: a word-level tokenizer over a fixed vocabulary, an embedding, learned positions -------

class TextEncoder(nn.Module):
    """Prompt -> (Lt, text_dim) token features. Id 0 pads; the empty prompt (all padding) is the
    unconditional input for classifier-free guidance. Trained with the teacher, then frozen."""

    def __init__(self, vocab, text_dim=64, max_words=8):
        super().__init__()
        self.vocab = list(vocab)
        self.word_to_id = {word: i + 1 for i, word in enumerate(self.vocab)}
        self.max_words = max_words
        self.embedding = nn.Embedding(len(self.vocab) + 1, text_dim)
        self.position = nn.Parameter(torch.randn(max_words, text_dim) * 0.02)

    def tokenize(self, prompt):
        words = prompt.lower().split()
        for word in words:
            if word not in self.word_to_id:
                raise ValueError(f"unknown word {word!r} in prompt {prompt!r}; "
                                 f"the vocabulary is: {' '.join(self.vocab)}")
        if len(words) > self.max_words:
            raise ValueError(f"prompt {prompt!r} has {len(words)} words; at most {self.max_words}")
        return [self.word_to_id[word] for word in words] + [0] * (self.max_words - len(words))

    def forward(self, prompts):
        """prompts: list of B strings -> (B, Lt, text_dim)"""
        ids = torch.tensor([self.tokenize(p) for p in prompts], device=self.position.device)  # (B, Lt)
        return self.embedding(ids) + self.position                                             # (B, Lt, text_dim)


# ---- 3D RoPE (Wan) -------------------------------------------------------------------------------
# The head width is split between time, height and width; pairs of channels (0, 1), (2, 3), ...
# are rotated by angle position * frequency ("interleaved pairs").

def rope_angles(frame_positions, h, w, head_dim, theta=10000.0):
    """Rotation angles for tokens in (frame, row, column) order. frame_positions: (F,), the time position of
    each frame (any real numbers) -> (F * h * w, hd / 2), float64 so that large positions stay exact."""
    n_frames, device = frame_positions.shape[0], frame_positions.device
    hw_dim = 2 * (head_dim // 6)                        # Wan: height and width get 2 * (hd // 6) each
    dims = (head_dim - 2 * hw_dim, hw_dim, hw_dim)      # time gets the rest
    freqs = lambda dim: 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    f = frame_positions.double()[:, None] * freqs(dims[0])                                  # (F, dt/2)
    y = torch.arange(h, dtype=torch.float64, device=device)[:, None] * freqs(dims[1])       # (h, dh/2)
    x = torch.arange(w, dtype=torch.float64, device=device)[:, None] * freqs(dims[2])       # (w, dw/2)
    return torch.cat([f[:, None, None].expand(n_frames, h, w, -1),
                      y[None, :, None].expand(n_frames, h, w, -1),
                      x[None, None, :].expand(n_frames, h, w, -1)], dim=-1).reshape(n_frames * h * w, -1)  # (L, hd/2)


def frame_angles(cfg, frame_positions):
    """RoPE angles for every token of frames at `frame_positions` (F,) -> (F * h * w, hd / 2)."""
    side = cfg.frame_size // cfg.patch_size
    return rope_angles(frame_positions, side, side, cfg.head_dim)


def rope(x, angles):
    """Rotate interleaved channel pairs. x: (B, L, nh, hd), angles: (L, hd/2) -> (B, L, nh, hd)"""
    cos = angles.cos().to(x.dtype)[:, None]             # (L, 1, hd/2)
    sin = angles.sin().to(x.dtype)[:, None]
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)        # (B, L, nh, hd/2) each
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


# ---- the global memory: VideoSSM's contribution -------------------------------------------------

class GatedDeltaMemory(nn.Module):
    """A layer's long-term memory: gates (E5, E6), write (E7), read (E8) and router (E9), the state M passed
    in and out (as flash-linear-attention's GatedDeltaNet). Needs only torch and kernels.py. The host layer
    supplies the layer input x (B, L, d) and its pre-RoPE queries and keys in heads (D2), and decides which
    tokens to write and when (VideoSSM: the tokens leaving the attention window).

        g, beta = memory.gates(x)                       while the token is attended to; cached with its k, v
        M = memory.write(M, k, v, g, beta)              later, when the token is evicted
        out = memory(x, q, states, state_of_token, frame_index)   gamma_t * H_global, added to the attention's output

    dim d and n_heads nh give head width hd = d // nh and M of shape (B, nh, hd, hd); router_horizon is T of
    (E9) in frames (D6); kernel_chunk_size and kernel_backend are passed to kernels.gated_delta_rule.
    """

    def __init__(self, dim, n_heads, router_horizon, kernel_chunk_size=64, kernel_backend="auto"):
        super().__init__()
        self.nh, self.hd = n_heads, dim // n_heads
        self.router_horizon, self.chunk_size, self.backend = router_horizon, kernel_chunk_size, kernel_backend
        self.beta_proj = nn.Linear(dim, n_heads, bias=False)       # (E5) W_beta, one gate per head (D1)
        self.alpha_proj = nn.Linear(dim, n_heads, bias=False)      # (E6) W_alpha
        self.A_log = nn.Parameter(torch.empty(n_heads))            # (E6) A
        self.dt_bias = nn.Parameter(torch.empty(n_heads))          # (E6) dt_bias
        self.out_gate = nn.Linear(dim, dim)                        # (E8) W_gate
        self.norm = nn.RMSNorm(self.hd, eps=1e-6)                  # (E8) per-head RMSNorm (D4)
        self.router_w = nn.Parameter(torch.ones(dim))              # (E9) w_router, per channel (D5)
        self.router_b = nn.Parameter(torch.zeros(dim))             # (E9) b_router
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """(D9) Gated DeltaNet's init for A and dt_bias; W_gate zero so the memory adds exactly 0 at first."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0, 16).clamp_min(1e-4).log())
        dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(math.log(1e-3), math.log(1e-1)))
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))     # softplus^-1(dt)
        nn.init.zeros_(self.out_gate.weight)
        nn.init.zeros_(self.out_gate.bias)

    def gates(self, x):
        """x: (B, L, d) -> g (B, L, nh) log decay <= 0, and beta (B, L, nh) in (0, 1)."""
        if x.dim() != 3 or x.shape[-1] != self.nh * self.hd:
            raise ValueError(f"x must have shape (B, L, {self.nh * self.hd}), got {tuple(x.shape)}")
        beta = torch.sigmoid(self.beta_proj(x))                                       # (E5) (B, L, nh)
        g = -self.A_log.exp() * nnf.softplus(self.alpha_proj(x) + self.dt_bias)         # (E6) (B, L, nh)
        return g, beta

    def write(self, state, k, v, g, beta):
        """(E7) Scan tokens into M in order (D3, D7) -> the new M (B, nh, hd, hd). k, v: (B, L, nh, hd), k
        pre-RoPE (D2); g, beta: (B, L, nh). M stays float32 under bf16 autocast, as in flash-linear-attention:
        rounding it at every write would accumulate over a long video."""
        dtype = torch.promote_types(state.dtype, torch.float32)
        k_mem = nnf.normalize(k.to(dtype), dim=-1)                                      # (D2) (B, L, nh, hd)
        _, state = gated_delta_rule(k_mem, k_mem, v.to(dtype), g.to(dtype), beta.to(dtype),   # outputs unused
                                    initial_state=state.to(dtype), chunk_size=self.chunk_size, backend=self.backend)
        return state                                                                  # (B, nh, hd, hd)

    def router(self, frame_index):
        """(E9) gamma_t = sigmoid(w log(rho_t) + b), rho_t = (t + 1) / T clamped to 1 (D6).
        frame_index: (L,) absolute frame of each token -> gamma (L, d)."""
        rho = ((frame_index + 1) / self.router_horizon).clamp(max=1.0)                # (L,)
        return torch.sigmoid(self.router_w * rho.log()[:, None] + self.router_b)      # (L, d)

    def forward(self, x, q, states, state_of_token, frame_index):
        """(E8), (E9): what the memory adds to the attention output, gamma_t * H_global, (B, L, d).

        Args:
            x: (B, L, d) the layer input (H_in);  q: (B, L, nh, hd) pre-RoPE queries (D2)
            states: (B, n, nh, hd, hd), one M per chunk (streaming: n = 1); token l reads states[:, state_of_token[l]]
            state_of_token: (L,) long;  frame_index: (L,) absolute frame of each token (D6)
        """
        B, L, _ = x.shape
        if q.shape != (B, L, self.nh, self.hd) or states.shape[2:] != (self.nh, self.hd, self.hd):
            raise ValueError(f"q must have shape ({B}, {L}, {self.nh}, {self.hd}) and states (B, n, {self.nh}, "
                             f"{self.hd}, {self.hd}); got {tuple(q.shape)} and {tuple(states.shape)}")
        q_mem = nnf.normalize(q, dim=-1) * self.hd ** -0.5                              # (D2) (B, L, nh, hd)
        read = torch.einsum("blhk,bshkv->bslhv", q_mem, states.to(q.dtype))           # (E8) q M, (B, n, L, nh, hd)
        read = read[:, state_of_token, torch.arange(L, device=x.device)]             # each token its own, (B, L, nh, hd)
        h_global = self.norm(read).reshape(B, L, -1) * nnf.silu(self.out_gate(x))      # (E8) (D4) (B, L, d)
        return self.router(frame_index).to(h_global.dtype) * h_global                 # (E9) (B, L, d)

    def scan_chunks(self, k, v, g, beta, evicted_before):
        """The parallel path's states: per chunk, M after writing the tokens evicted before it (a token slice
        of evicted_before, or None), in the graph (D11). k, v: (B, L, nh, hd); g, beta: (B, L, nh) -> (B, n, nh, hd, hd)"""
        state = k.new_zeros(k.shape[0], self.nh, self.hd, self.hd, dtype=torch.promote_types(k.dtype, torch.float32))
        states = []
        for evicted in evicted_before:
            if evicted is not None:
                state = self.write(state, k[:, evicted], v[:, evicted], g[:, evicted], beta[:, evicted])
            states.append(state)
        return torch.stack(states, dim=1)                                             # (B, n, nh, hd, hd)


# ---- the hybrid layer: sink + window attention beside the memory, VideoSSM's heart --------------
# It copies out whole with kernels.py: VideoSSMConfig, MODES and check_mode, rope_angles, frame_angles,
# rope, GatedDeltaMemory, this section's helpers (uses_memory .. stream_step) and HybridAttention.

def uses_memory(mode):
    return mode in ("hybrid", "memory")


def sink_and_window(cfg, mode):
    """(sink chunks, window chunks) of a mode; `full` has no sink, and its window is never used."""
    sink = cfg.sink_chunks if mode in ("hybrid", "sink") else 0
    return sink, 1 if mode == "memory" else cfg.window_chunks


def visible_chunks(c, cfg, mode):
    """Chunks a query in chunk c attends to (itself included), and the chunk evicted into memory
    just before c is generated (modes with memory), or None. (E4) (D7)"""
    if mode == "full":
        return list(range(c + 1)), None
    sink, window = sink_and_window(cfg, mode)
    visible = sorted(set(range(min(sink, c + 1))) | set(range(max(0, c - window + 1), c + 1)))
    leaving = c - window                            # the chunk that left the window when c arrived
    return visible, (leaving if uses_memory(mode) and leaving >= sink else None)


def seen_positions(frame_index, c, cfg, mode):
    """(D12) The RoPE time position of each frame, (F,) absolute indices -> (F,), as chunk c's queries see it.
    The sink's frames keep theirs; every later frame moves back by the chunks skipped (those between the sink
    and the window, evicted or only in M), so the sink sits right before the window and no query-key distance
    exceeds what training saw, however long the video. `full` skips nothing."""
    sink, window = sink_and_window(cfg, mode)
    skipped = 0 if mode == "full" else max(0, c - (sink + window - 1))                     # chunks
    moved = frame_index >= sink * cfg.chunk_frames                                          # (F,) bool
    return frame_index - moved * skipped * cfg.chunk_frames                                 # (F,)


class LayerCache(NamedTuple):
    """One hybrid layer's streaming state, handed to HybridAttention.step and, new after a write, returned by it.
    Written only by the clean context pass (D8); denoising steps read it.

    k, v      (B, Lc, nh, hd)  pre-RoPE keys and values of the cached chunks (sink, then window), in chunk order;
                               rotated at each step to where the current chunk sees them (D12)
    g, beta   (B, Lc, nh)      their gates, cached with them: a chunk leaving the window is written into M with
                               them, though its input x is gone
    state     (B, nh, hd, hd)  M, the memory of every chunk that left the window (float32 under autocast)
    """
    k: torch.Tensor = None
    v: torch.Tensor = None
    g: torch.Tensor = None
    beta: torch.Tensor = None
    state: torch.Tensor = None


class StreamStep(NamedTuple):
    """What every layer needs to know of chunk c's place in the stream, computed once per chunk (stream_step)."""
    query_angles: torch.Tensor    # (L, hd/2) RoPE angles of chunk c's tokens (D12)
    key_angles: torch.Tensor      # (Lc + L, hd/2) of the cached chunks' tokens, then chunk c's
    frame_index: torch.Tensor     # (L,) absolute frame of chunk c's tokens (the router, D6)
    memory_on: bool               # the mode reads M
    kept: list                    # after a write: the cache's chunks to keep, as indices into cached + [c]
    to_memory: int = None         # after a write: the index of the chunk that left the window, written into M (D7)


def stream_step(cfg, mode, cached_chunks, c, device="cpu"):
    """Chunk c's StreamStep, given the chunk indices the cache holds (sink, then window)."""
    cf, hw = cfg.chunk_frames, cfg.tokens_per_frame
    frames_of = lambda chunks: (torch.tensor(chunks, device=device, dtype=torch.long)[:, None] * cf
                                + torch.arange(cf, device=device)).flatten()                 # (chunks * cf,)
    query_frames, key_frames = frames_of([c]), frames_of([*cached_chunks, c])
    visible_next, leaving = visible_chunks(c + 1, cfg, mode)
    after = [*cached_chunks, c]
    return StreamStep(frame_angles(cfg, seen_positions(query_frames, c, cfg, mode)),
                      frame_angles(cfg, seen_positions(key_frames, c, cfg, mode)),
                      query_frames.repeat_interleave(hw), uses_memory(mode),
                      [i for i, j in enumerate(after) if j in visible_next],
                      after.index(leaving) if leaving in after else None)


class HybridAttention(nn.Module):
    """Wan's self-attention (qk-RMSNorm over the full width, RoPE) with, for the student, a GatedDeltaMemory
    beside it, read by the same queries and fused before W_o (E10, D5). Uses the config's dim, n_heads,
    router_horizon, kernel_chunk_size and kernel_backend. Two paths, one function:

        out = layer(x, pattern)                          parallel: a whole clip (Pattern: who sees whom)
        out, cache = layer.step(x, cache, step, write)   streaming: one chunk against a LayerCache; a write (the
                                                         clean pass, D8) caches the chunk, and the chunk that
                                                         left the window goes into M (E7)
    """

    def __init__(self, cfg: VideoSSMConfig, memory: bool):
        super().__init__()
        d, nh = cfg.dim, cfg.n_heads
        self.nh, self.hd = nh, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))   # (E3) W_Q, W_K, W_V, W_o
        self.norm_q, self.norm_k = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
        self.memory = (GatedDeltaMemory(d, nh, cfg.router_horizon, cfg.kernel_chunk_size, cfg.kernel_backend)
                       if memory else None)

    def project(self, x):
        """x: (B, L, d) -> q, k, v (B, L, nh, hd), before RoPE; and the token's gates (or None)."""
        B, L, _ = x.shape
        q = self.norm_q(self.q(x)).view(B, L, self.nh, self.hd)       # (E3) (B, L, nh, hd)
        k = self.norm_k(self.k(x)).view(B, L, self.nh, self.hd)       # (B, L, nh, hd)
        v = self.v(x).view(B, L, self.nh, self.hd)                    # (B, L, nh, hd)
        return q, k, v, (self.memory.gates(x) if self.memory else None)

    def fuse(self, x, q, local, states, state_of_token, frame_index):
        """(E10) H_fused = H_local + gamma_t H_global, then W_o. local: (B, L, nh, hd) -> (B, L, d)"""
        out = local.flatten(2)                                                        # (B, L, d)
        if states is not None:
            out = out + self.memory(x, q, states, state_of_token, frame_index)        # (E10)
        return self.o(out)

    def forward(self, x, pattern):
        """The parallel path. x: (B, L, d), pattern: Pattern -> (B, L, d)"""
        q, k, v, gates = self.project(x)
        local = torch.zeros_like(q)                                                   # (B, L, nh, hd)
        for rows, angles in zip(pattern.query_rows, pattern.angles):   # (E4) each chunk's queries (D12)
            q_rot, k_rot = rope(q[:, rows], angles[rows]), rope(k, angles)
            mask = None if pattern.mask is None else pattern.mask[rows]
            out = nnf.scaled_dot_product_attention(q_rot.transpose(1, 2), k_rot.transpose(1, 2), v.transpose(1, 2),
                                                   attn_mask=mask).transpose(1, 2)    # (B, rows, nh, hd)
            local = local.index_copy(1, rows, out)
        states = None
        if self.memory and pattern.memory_on:   # (D11) each chunk's state, built in the graph as streaming would
            states = self.memory.scan_chunks(k, v, *gates, pattern.evicted_before)       # (B, n, nh, hd, hd)
        return self.fuse(x, q, local, states, pattern.token_chunk, pattern.frame_index)

    def step(self, x, cache: LayerCache, step: StreamStep, write=False):
        """The streaming path: chunk tokens x (B, L, d) against the cache -> (B, L, d), and the cache (new after a write)."""
        q, k, v, gates = self.project(x)
        cat = lambda old, new: new if old is None else torch.cat([old, new], dim=1)     # the cached chunks, then this
        k_all, v_all = cat(cache.k, k), cat(cache.v, v)                                 # (B, Lc + L, nh, hd)
        q_rot, k_rot = rope(q, step.query_angles), rope(k_all, step.key_angles)
        local = nnf.scaled_dot_product_attention(q_rot.transpose(1, 2), k_rot.transpose(1, 2),
                                                 v_all.transpose(1, 2)).transpose(1, 2)   # (E4) (B, L, nh, hd)
        states = state_of_token = None
        if self.memory and step.memory_on:
            states = cache.state[:, None]                                                 # (B, 1, nh, hd, hd)
            state_of_token = torch.zeros(x.shape[1], dtype=torch.long, device=x.device) # all read the one state
        out = self.fuse(x, q, local, states, state_of_token, step.frame_index)
        if not write:
            return out, cache
        g_all, beta_all = (cat(cache.g, gates[0]), cat(cache.beta, gates[1])) if gates else (None, None)
        chunk = lambda t, i: t[:, i * x.shape[1]:(i + 1) * x.shape[1]]                    # cached chunk i's tokens
        state = cache.state
        if step.to_memory is not None:
            i = step.to_memory
            state = self.memory.write(state, chunk(k_all, i), chunk(v_all, i), chunk(g_all, i), chunk(beta_all, i))  # (E7)
        keep = lambda t: None if t is None or not step.kept else torch.cat([chunk(t, i) for i in step.kept], dim=1)
        return out, LayerCache(keep(k_all), keep(v_all), keep(g_all), keep(beta_all), state)


class CrossAttention(nn.Module):
    """Wan's text cross-attention: qk-RMSNorm, no RoPE, no mask."""

    def __init__(self, cfg: VideoSSMConfig):
        super().__init__()
        d = cfg.dim
        self.nh, self.hd = cfg.n_heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)

    def text_kv(self, text_tokens):
        """text_tokens: (B, Lt, d) -> k, v (B, nh, Lt, hd); computed once per prompt when streaming."""
        B, Lt, _ = text_tokens.shape
        k = self.norm_k(self.k(text_tokens)).view(B, Lt, self.nh, self.hd).transpose(1, 2)
        v = self.v(text_tokens).view(B, Lt, self.nh, self.hd).transpose(1, 2)
        return k, v

    def forward(self, x, text_kv):
        B, L, d = x.shape
        q = self.norm_q(self.q(x)).view(B, L, self.nh, self.hd).transpose(1, 2)        # (B, nh, L, hd)
        out = nnf.scaled_dot_product_attention(q, *text_kv)                             # (B, nh, L, hd)
        return self.o(out.transpose(1, 2).reshape(B, L, d))


class Block(nn.Module):
    """Wan's block: modulated self-attention (HybridAttention), cross-attention, modulated FFN; forward is the
    parallel path and step the streaming one, as in HybridAttention."""

    def __init__(self, cfg: VideoSSMConfig, memory: bool):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.self_attn = HybridAttention(cfg, memory)
        self.norm3 = nn.LayerNorm(d, eps=1e-6)                      # before cross-attention, affine
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)

    def forward(self, x, e0, text_kv, pattern):
        """x: (B, L, d), e0: (B, L, 6, d) per-token time modulation, text_kv: CrossAttention.text_kv -> (B, L, d)"""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e0).unbind(2)  # adaLN, (B, L, d) each
        x = x + gate1 * self.self_attn(self.norm1(x) * (1 + scale1) + shift1, pattern)
        x = x + self.cross_attn(self.norm3(x), text_kv)
        return x + gate2 * self.ffn(self.norm2(x) * (1 + scale2) + shift2)

    def step(self, x, e0, text_kv, cache, step, write=False):
        """The same for one chunk against its layer's LayerCache -> (B, L, d), and the cache (HybridAttention.step)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation + e0).unbind(2)
        attended, cache = self.self_attn.step(self.norm1(x) * (1 + scale1) + shift1, cache, step, write)
        x = x + gate1 * attended
        x = x + self.cross_attn(self.norm3(x), text_kv)
        return x + gate2 * self.ffn(self.norm2(x) * (1 + scale2) + shift2), cache


# ---- who attends to whom in a parallel forward ----------------------------------------------------

@dataclass
class Pattern:
    """Who attends to whom in one parallel forward, shared by all layers. Queries come in groups (one per chunk
    for the student, one for the teacher), each seeing every token where its chunk sees it when streaming (D12)."""
    query_rows: list              # per group: (Lg,) long, the tokens whose queries it holds
    angles: list                  # per group: (L, hd/2) RoPE angles of every token as that group sees it
    frame_index: torch.Tensor     # (L,) absolute frame of each token, for the router
    token_chunk: torch.Tensor     # (L,) chunk index of each token
    mask: torch.Tensor = None     # (L, L) bool, True = may attend; None = everything
    evicted_before: list = field(default_factory=list)  # per chunk: slice of context tokens to scan first
    memory_on: bool = False


def parallel_pattern(cfg, frames, clean_frames, mode, device):
    """VideoDiT.forward's Pattern for `frames` frames after `clean_frames` context frames (0, or the clip clean)."""
    hw = cfg.tokens_per_frame
    frame_pos = torch.arange(frames, device=device)
    if clean_frames:
        frame_pos = torch.cat([frame_pos, frame_pos])                               # clean copy, then noisy
    frame_index = frame_pos.repeat_interleave(hw)                                   # (L,)
    if not cfg.causal:
        return Pattern([torch.arange(len(frame_index), device=device)], [frame_angles(cfg, frame_pos)],
                       frame_index, torch.zeros_like(frame_index))
    n, chunk_tokens = frames // cfg.chunk_frames, cfg.chunk_frames * hw
    token_chunk = (frame_pos // cfg.chunk_frames).repeat_interleave(hw)             # (L,)
    # key chunk j is visible to a query in chunk c if j is in c's visible set; a query
    # sees other chunks through the clean copy (when there is one) and its own chunk as itself
    visible = torch.zeros(n, n, dtype=torch.bool, device=device)
    evicted_before = []                     # as token slices: context tokens come first either way
    for c in range(n):
        chunks, evicted = visible_chunks(c, cfg, mode)
        visible[c, chunks] = True
        evicted_before.append(None if evicted is None else
                              slice(evicted * chunk_tokens, (evicted + 1) * chunk_tokens))
    mask = visible[token_chunk][:, token_chunk]                                     # (L, L)
    if clean_frames:
        is_clean = torch.arange(len(token_chunk), device=device) < frames * hw      # the clean copy comes first
        same_chunk = token_chunk[:, None] == token_chunk[None, :]
        mask &= torch.where(same_chunk, is_clean[:, None] == is_clean[None, :], is_clean[None, :])
    return Pattern([torch.nonzero(token_chunk == c).flatten() for c in range(n)],
                   [frame_angles(cfg, seen_positions(frame_pos, c, cfg, mode)) for c in range(n)],
                   frame_index, token_chunk, mask, evicted_before, uses_memory(mode))


# ---- the model -----------------------------------------------------------------------------------

class VideoDiT(nn.Module):
    """Wan 2.1's DiT, small. One class, three roles:
        teacher and critic   VideoSSMConfig(causal=False): bidirectional, no memory
        student              VideoSSMConfig(causal=True, mode="hybrid"): block-causal with memory
    """

    def __init__(self, cfg: VideoSSMConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.dim, cfg.patch_size
        self.patch_embedding = nn.Linear(cfg.channels * p * p, d)             # Wan's Conv3d (1, p, p)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg, memory=cfg.causal) for _ in range(cfg.n_layers))
        self.head_norm = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.head_modulation = nn.Parameter(torch.randn(1, 2, d) / d ** 0.5)
        self.head = nn.Linear(d, p * p * cfg.channels)
        nn.init.zeros_(self.head.weight)                                        # Wan: zero-init head
        nn.init.zeros_(self.head.bias)

    # --- shapes in and out

    def check_clip(self, x, what="clip"):
        cfg = self.cfg
        expected = (cfg.channels, cfg.frame_size, cfg.frame_size)
        if x.dim() != 5 or tuple(x.shape[2:]) != expected:
            raise ValueError(f"{what} must have shape (B, F, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if cfg.causal and x.shape[1] % cfg.chunk_frames:
            raise ValueError(f"{what} has {x.shape[1]} frames, not a multiple of chunk_frames={cfg.chunk_frames}")

    def patchify(self, x):
        """(B, F, C, H, W) -> (B, F*h*w, C*p*p): tokens in (frame, row, column) order."""
        B, frames, C, H, W = x.shape
        p = self.cfg.patch_size
        x = x.reshape(B, frames, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6)    # (B, F, h, w, C, p, p)
        return x.reshape(B, frames * (H // p) * (W // p), C * p * p)

    def unpatchify(self, x, frames):
        """(B, F*h*w, p*p*C) -> (B, F, C, H, W); the head's outputs are (p, p, C) ordered, as Wan's."""
        B, p, C = x.shape[0], self.cfg.patch_size, self.cfg.channels
        h = w = self.cfg.frame_size // p
        x = x.reshape(B, frames, h, w, p, p, C).permute(0, 1, 6, 2, 4, 3, 5)           # (B, F, C, h, p, w, p)
        return x.reshape(B, frames, C, h * p, w * p)

    def embed(self, x, timestep):
        """Tokens, per-token time modulation and the head's time embedding.
        x: (B, F, C, H, W); timestep: (B,) or (B, F) in [0, 1000]."""
        B, frames = x.shape[:2]
        hw = self.cfg.tokens_per_frame
        timestep = timestep.reshape(B, -1).expand(B, frames)                                # (B, F)
        half = self.cfg.freq_dim // 2               # the sinusoidal timestep embedding, cos first then sin (Wan)
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64, device=x.device) / half)
        angles = timestep.double()[..., None] * freqs                                   # (B, F, freq_dim / 2)
        e = self.time_embedding(torch.cat([angles.cos(), angles.sin()], -1).to(x.dtype))  # (B, F, d)
        e0 = self.time_projection(e).unflatten(-1, (6, -1))                            # (B, F, 6, d)
        tokens = self.patch_embedding(self.patchify(x))                                # (B, L, d)
        return tokens, e0.repeat_interleave(hw, dim=1), e.repeat_interleave(hw, dim=1)  # (B, L, 6, d), (B, L, d)

    def head_out(self, x, e, frames):
        shift, scale = (self.head_modulation + e[:, :, None]).unbind(2)                # (B, L, d) each
        return self.unpatchify(self.head(self.head_norm(x) * (1 + scale) + shift), frames)

    def text_kvs(self, text):
        """text: (B, Lt, text_dim) -> per block the cross-attention k, v (computed once per prompt)."""
        text_tokens = self.text_embedding(text)                                        # (B, Lt, d)
        return [block.cross_attn.text_kv(text_tokens) for block in self.blocks]

    # --- the parallel path

    def forward(self, x, timestep, text, clean_context=None, mode=None):
        """The parallel path: predict the velocity, shaped like x, for every frame of a clip in one pass.

        Args:
            x: shape (B, F, C, H, W), the noisy clip;  timestep: shape (B,) or (B, F), in [0, 1000]
            text: shape (B, Lt, text_dim), from TextEncoder;  mode: one of MODES, default cfg.mode
            clean_context: shape (B, F, C, H, W) or None. Causal only: the clip clean; each chunk of x then
                attends to the *clean* earlier chunks and the memory is built from them, as when streaming.
                Without it, x's own chunks are the context (right when they are clean, at s = 0).
        """
        cfg, mode = self.cfg, mode or self.cfg.mode
        check_mode(mode)
        self.check_clip(x)
        B, frames = x.shape[:2]
        if text.dim() != 3 or text.shape[0] != B or text.shape[2] != cfg.text_dim:
            raise ValueError(f"text must have shape ({B}, Lt, {cfg.text_dim}), got {tuple(text.shape)}")
        timestep = torch.as_tensor(timestep, dtype=x.dtype, device=x.device).reshape(B, -1).expand(B, frames)
        if clean_context is not None:
            if not cfg.causal:
                raise ValueError("clean_context is for the causal student; the teacher is bidirectional")
            self.check_clip(clean_context, "clean_context")
            x = torch.cat([clean_context, x], dim=1)
            timestep = torch.cat([torch.zeros_like(timestep), timestep], dim=1)
        pattern = parallel_pattern(cfg, frames, clean_context is not None, mode, x.device)
        tokens, e0, e = self.embed(x, timestep)
        for block, text_kv in zip(self.blocks, self.text_kvs(text)):
            tokens = block(tokens, e0, text_kv, pattern)
        return self.head_out(tokens, e, x.shape[1])[:, -frames:]                  # drop the clean copy's outputs

    # --- the streaming path

    def forward_chunk(self, x, timestep, cache, write=False):
        """The streaming path: one chunk against the cache (earlier chunks, clean); the velocity, shaped like x.

        Args:
            x: shape (B, chunk_frames, C, H, W);  timestep: a number or shape (B,), in [0, 1000]
            write: True for the clean context pass (D8): the chunk goes into the cache, and the
                chunk that left the window into M (HybridAttention.step)
        """
        cfg = self.cfg
        self.check_clip(x, "chunk")
        if x.shape[1] != cfg.chunk_frames:
            raise ValueError(f"a chunk has {cfg.chunk_frames} frames, got {x.shape[1]}")
        if cache.text_kvs is None:
            raise ValueError("the cache has no prompt yet: call cache.set_prompt(model, text) first")
        B = x.shape[0]
        timestep = torch.as_tensor(timestep, dtype=x.dtype, device=x.device).reshape(-1).expand(B)
        step = cache.step(x.device)
        tokens, e0, e = self.embed(x, timestep)
        for i, (block, text_kv) in enumerate(zip(self.blocks, cache.text_kvs)):
            tokens, cache.layers[i] = block.step(tokens, e0, text_kv, cache.layers[i], step, write)
        if write:
            cache.commit(x, step)
        return self.head_out(tokens, e, cfg.chunk_frames)


# ---- the streaming cache -------------------------------------------------------------------------

class StreamCache:
    """What the streaming path remembers of the video: a LayerCache per layer (k, v, gates, M), the prompt's
    cross-attention k, v, the cached chunks' indices and clean frames; constant in size but in mode `full`.
    Its life, one chunk at a time (generate does this):

        set_prompt(model, text)      before chunk 0: each layer's cross-attention k, v, computed once
        step(device)                 in each forward_chunk: chunk next_chunk's StreamStep (positions, D12)
        forward_chunk(write=True)    the clean pass at s = 0 (D8): each layer's LayerCache, new
        commit(frames, step)         then the chunk lists follow, and next_chunk moves on
        recache(model, cache, text)  a prompt switch, between two chunks (D10)
    """

    def __init__(self, model, batch_size, mode=None, dtype=torch.float32, device="cpu"):
        cfg = model.cfg
        if not cfg.causal:
            raise ValueError("streaming needs a causal model (VideoSSMConfig(causal=True))")
        self.cfg, self.mode = cfg, mode or cfg.mode
        check_mode(self.mode)
        state = lambda: torch.zeros(batch_size, cfg.n_heads, cfg.head_dim, cfg.head_dim, device=device,
                                    dtype=torch.promote_types(dtype, torch.float32))   # M stays float32 under bf16
        self.layers = [LayerCache(state=state()) for _ in range(cfg.n_layers)]
        self.text_kvs = None                # per layer, the prompt's cross-attention k, v
        self.chunks, self.frames = [], []   # the cached chunks' indices and clean frames, in chunk order
        self.next_chunk = 0                 # index of the chunk being generated

    def set_prompt(self, model, text):
        """text: (B, Lt, text_dim). Computes each layer's cross-attention k, v once."""
        self.text_kvs = model.text_kvs(text)

    def step(self, device):
        return stream_step(self.cfg, self.mode, self.chunks, self.next_chunk, device)

    def commit(self, frames, step):
        """After the clean pass wrote chunk next_chunk (its frames: (B, chunk_frames, C, H, W)) into every layer."""
        self.chunks = [[*self.chunks, self.next_chunk][i] for i in step.kept]
        self.frames = [[*self.frames, frames][i] for i in step.kept]
        self.next_chunk += 1

    def length(self):
        """Cached tokens per layer."""
        return 0 if self.layers[0].k is None else self.layers[0].k.shape[1]


def recache(model, cache, text):
    """(D10) LongLive's prompt-switch re-cache: new cross-attention k, v, and the clean frames still
    in the window re-encoded under the new prompt. The sink's k, v and the memory M are kept."""
    cache.set_prompt(model, text)
    sink = sink_and_window(cache.cfg, cache.mode)[0]
    window = [(j, f) for j, f in zip(cache.chunks, cache.frames) if j >= sink]
    if not window:
        return
    first = len(cache.chunks) - len(window)
    tokens = first * cache.cfg.chunk_frames * cache.cfg.tokens_per_frame      # the sink's, which stay
    keep = lambda t: None if t is None else t[:, :tokens]
    cache.layers = [LayerCache(keep(l.k), keep(l.v), keep(l.g), keep(l.beta), l.state) for l in cache.layers]
    next_chunk = cache.next_chunk
    del cache.chunks[first:], cache.frames[first:]
    for j, frames in window:                 # replay the clean passes in order, under the new prompt
        cache.next_chunk = j
        model.forward_chunk(frames, 0.0, cache, write=True)
    cache.next_chunk = next_chunk


def set_prompt_at(model, text_encoder, cache, c, prompt, batch_size, dtype):
    """Chunk c's prompt (one, or a list of one per video): at chunk 0 it only sets the cross-attention k, v;
    later it is a prompt switch (recache, D10)."""
    text = text_encoder(prompt if isinstance(prompt, list) else [prompt] * batch_size).to(dtype)
    if c == 0:
        cache.set_prompt(model, text)
    else:
        recache(model, cache, text)


def denoise_chunk(model, cache, sigmas, last, noise, grad=False):
    """One chunk's few-step chain: from noise, at each level up to sigmas[last] predict x0 against the
    cache, then re-noise it to the next level with fresh noise(). Reads the cache, never writes it.
    grad: the last step's prediction in the graph (the others never are).
    Returns the last step's input x_s and level s, (B,), and its prediction x0, (B, chunk_frames, C, H, W)."""
    x = noise()
    for i in range(last + 1):
        s = torch.full((x.shape[0],), sigmas[i], dtype=x.dtype, device=x.device)
        with torch.set_grad_enabled(grad and i == last):
            x0 = x0_from_velocity(x, model.forward_chunk(x, 1000 * s, cache), s)
        if i < last:
            x = add_noise(x0, noise(), torch.full_like(s, sigmas[i + 1]))
    return x, s, x0


def teacher_force(model, text_encoder, cache, frames, prompts):
    """Feed clean frames (B, F, C, H, W), whole chunks, through the clean pass as if the model had made them
    under `prompts` (as generate's): the cache ends up as after streaming them; generate(cache=cache) goes on."""
    param = next(model.parameters())
    for c, chunk in enumerate(frames.split(model.cfg.chunk_frames, dim=1)):
        if c in prompts:
            set_prompt_at(model, text_encoder, cache, c, prompts[c], frames.shape[0], param.dtype)
        model.forward_chunk(chunk, 0.0, cache, write=True)


def generate(model, text_encoder, prompts, num_chunks, sigmas, generator=None, mode=None, batch_size=1,
             exit_step=None, grad_chunks=(), cache=None):
    """Stream a video chunk by chunk, yielding each, (B, chunk_frames, C, H, W): denoise_chunk's chain,
    then the clean context pass at s = 0 writes the chunk into the cache (D8).

    Args:
        prompts: {chunk index: prompt, or a list of one per video}; must contain 0. A later entry
            switches the prompt there (D10).
        sigmas: the few noise levels, high to low (denoising_sigmas); mode: overrides cfg.mode
        generator: torch.Generator for the noise (same seed, same video)
        cache: a StreamCache (default: a new one), to watch it, or one that holds chunks (teacher_force) to go
            on from; the call's chunks count from 0 whatever it holds (prompts[0] sets k, v, no re-cache).
        exit_step, grad_chunks: stage 2's self-rollout (Self-Forcing). Every chunk stops at denoising step
            `exit_step` (default: the last); chunks in `grad_chunks` run that step and their clean pass with
            autograd on. Everything else runs without a graph, so plain sampling never builds one.
    """
    cfg = model.cfg
    if 0 not in prompts:
        raise ValueError("prompts must say what to generate from chunk 0")
    param = next(model.parameters())
    last = len(sigmas) - 1 if exit_step is None else exit_step
    cache = cache or StreamCache(model, batch_size, mode, param.dtype, param.device)
    shape = (batch_size, cfg.chunk_frames, cfg.channels, cfg.frame_size, cfg.frame_size)
    noise = lambda: torch.randn(shape, generator=generator, dtype=param.dtype).to(param.device)
    training = bool(grad_chunks) and torch.is_grad_enabled()
    for c in range(num_chunks):
        track = c in grad_chunks
        # in a rollout that trains, the prompt's k, v and a re-cached window stay in the graph (D11)
        with torch.set_grad_enabled(training):
            if c in prompts:
                set_prompt_at(model, text_encoder, cache, c, prompts[c], batch_size, param.dtype)
        _, _, x0 = denoise_chunk(model, cache, sigmas, last, noise, grad=track)
        with torch.set_grad_enabled(track):
            model.forward_chunk(x0.detach(), 0.0, cache, write=True)   # (D8) the clean context pass
        yield x0


# ---- released checkpoints: what train.py writes and sample.py reads --------------------------------
# A dict: format, stage, config (VideoSSMConfig's fields), vocab (TextEncoder's words), sampling (the
# denoising_steps and timestep_shift it was distilled for), made_by (preset, settings, seed and the whole
# recipe, for train.py), log, and the weights in half precision, model and text_encoder.

CHECKPOINT_FORMAT = "tiny-videossm/2"


class CheckpointError(Exception):
    """A checkpoint that cannot be used, with a message that says why and what to do."""


def load_checkpoint(path):
    """The dict in a tiny-videossm checkpoint file (a release, or train.py's resume file), on the CPU."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}: train one with `python train.py`, or pass the path of one")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch checkpoint "
                              f"({type(error).__name__})") from None
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if found != CHECKPOINT_FORMAT:
        if not (isinstance(found, str) and found.startswith("tiny-videossm/")):
            raise CheckpointError(f"{path} is not a tiny-videossm checkpoint (format {CHECKPOINT_FORMAT})")
        raise CheckpointError(f"{path} was written by another version of tiny-videossm (format {found!r}; this code "
                              f"reads {CHECKPOINT_FORMAT!r}): train it again with this code, or use the version "
                              f"that wrote it")
    return checkpoint


def build(checkpoint, path="the checkpoint"):
    """The model and text encoder a released checkpoint holds, in float32, in eval mode."""
    try:
        model = VideoDiT(VideoSSMConfig(**checkpoint["config"]))
        model.load_state_dict({k: v.float() for k, v in checkpoint["model"].items()})
        text_encoder = TextEncoder(checkpoint["vocab"], model.cfg.text_dim)
        text_encoder.load_state_dict({k: v.float() for k, v in checkpoint["text_encoder"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path} does not fit this code's model ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}): it was written by another version of "
                              f"tiny-videossm; train it again with this code") from None
    return model.eval(), text_encoder.eval().requires_grad_(False)
