"""
`python docs/kernel_peers.py [--cuda]`: measure/kernel_speed.py's correctness lines and speed tables, with the two
public pure-PyTorch chunked forms of the same rule checked and timed beside ours: transformers'
Qwen3-Next `torch_chunk_gated_delta_rule` and flash-linear-attention's `naive_chunk_gated_delta_rule`.
Neither is a dependency of the project: `pip install transformers fla-core`.
"""

import argparse
import importlib.util
import inspect
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_peers():
    """The two peers, in our calling convention: {name: fn(q, k, v, g, beta, initial_state) -> (o, state)}."""
    try:
        from transformers.models.qwen3_next import modeling_qwen3_next
        fla = importlib.util.find_spec("fla")
        import einops  # noqa: F401  (fla's naive.py needs it)
    except ImportError:
        fla = None
    if fla is None:
        raise SystemExit("the peers need transformers and fla-core: pip install transformers fla-core")
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


def import_kernel_speed():
    """measure/kernel_speed.py, which imports our kernels.py as `kernels`. transformers has already imported
    Hugging Face's `kernels` package under that name and imports from it later too: ours stands in for this
    one import, then theirs is put back."""
    theirs = sys.modules.pop("kernels", None)
    sys.path.insert(0, str(ROOT))
    from measure import kernel_speed
    if theirs is not None:
        sys.modules["kernels"] = theirs
    return kernel_speed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda", action="store_true", help="time on the GPU (default: the CPU)")
    cuda = parser.parse_args().cuda
    peers = load_peers()                          # first, while `kernels` can only be Hugging Face's
    import_kernel_speed().benchmark("cuda" if cuda else "cpu", peers=peers)
