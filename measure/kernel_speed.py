"""
The gated delta rule's speed: each path of kernels.py checked against the naive loop, then tables of
tokens/s (float32), forward and forward + backward; docs/kernel_peers.py adds two outside peers.

    python -m measure.kernel_speed [--cuda]
"""

import argparse
import time

import torch
import torch.nn.functional as nnf

from kernels import chunk_gated_delta_rule, compiled_chunk_gated_delta_rule, naive_gated_delta_rule


def random_inputs(B, L, nh, K, V, dtype=torch.float32, device="cpu", seed=0):
    """Inputs in the model's regime: L2-normalised keys (D2), g <= 0, beta in (0, 1)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
    q = randn(B, L, nh, K)
    k = nnf.normalize(randn(B, L, nh, K), dim=-1)
    v = randn(B, L, nh, V)
    g = nnf.logsigmoid(randn(B, L, nh) + 2.0)              # mostly close to 0: long memories
    beta = torch.sigmoid(randn(B, L, nh))
    return q, k, v, g, beta


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


def benchmark(device="cpu", peers=None, lengths=(256, 1024, 4096), B=1, nh=4, K=32, V=32):
    """Prints each path's difference from the naive scan, then tables of tokens/s (float32).
    peers: {name: fn} of other implementations in our calling convention, checked and timed too."""
    peers = peers or {}
    inputs = random_inputs(B, 700, nh, K, V, torch.float64, device)
    state0 = torch.randn(B, nh, K, V, dtype=torch.float64, device=device)
    o_ref, s_ref = naive_gated_delta_rule(*inputs, initial_state=state0)
    for name, fn in {"chunked": chunk_gated_delta_rule, **peers}.items():
        o, s = fn(*inputs, initial_state=state0)
        err = max((o - o_ref).abs().max().item(), (s - s_ref).abs().max().item())
        print(f"correctness: {name} vs naive, float64 in, L=700, initial state: max abs diff {err:.1e}")

    ours = {"chunked": chunk_gated_delta_rule, "compiled": compiled_chunk_gated_delta_rule}
    where = torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    columns = ["naive", *ours, *peers]
    ratios = [("chunked", "naive"), ("compiled", "naive")] + [(o, p) for o in ours for p in peers]

    def table(title, paths, step, lengths, grad=False):
        print(f"\n{title}, tokens/s on {where} (B={B}, nh={nh}, K={K}, V={V}, float32)")
        print("| L | " + " | ".join(columns + [f"{a}/{b}" for a, b in ratios]) + " |")
        print("|--:|" + "--:|" * (len(columns) + len(ratios)))
        for L in lengths:
            make_args = lambda: tuple(x.requires_grad_(grad) for x in random_inputs(B, L, nh, K, V, device=device))
            speed = _race(paths, make_args, step, B * L)
            print(f"| {L} | " + " | ".join([f"{speed[c]:,.0f}" if c in speed else "-" for c in columns]
                                           + [f"{speed[a] / speed[b]:.1f}x" if a in speed and b in speed else "-"
                                              for a, b in ratios]) + " |")

    def forward_backward(fn, args):
        o, state = fn(*args)
        (o.sum() + state.sum()).backward()
    with torch.no_grad():
        table("forward", {"naive": naive_gated_delta_rule, **ours, **peers}, lambda fn, args: fn(*args), lengths)
    table("forward + backward", {**ours, **peers}, forward_backward, lengths[-1:], grad=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m measure.kernel_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="time on the GPU (default: the CPU)")
    args = parser.parse_args(argv)
    if args.cuda and not torch.cuda.is_available():
        parser.error("--cuda: no CUDA device is visible")
    benchmark("cuda" if args.cuda else "cpu")


if __name__ == "__main__":
    main()
