"""
Draws assets/how_it_works.png, the README's "How it works" figure: for the shipped `tiny` student,
which earlier chunks each chunk of a video sees, and how (sink, window, or through the memory M).

    python docs/how_it_works.py            # from the repository root; needs matplotlib (requirements-dev.txt)

The pattern comes from the model's own `visible_chunks`, so the figure follows the code.
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import tiny_videossm as tv  # noqa: E402
import train  # noqa: E402

CHUNKS = 12          # a video of 12 chunks (36 frames)
HIGHLIGHT = 8        # the chunk whose row the lower panel repeats in every memory mode
COLOURS = {          # role of chunk j for a query in chunk c: (fill colour, letter in the cell)
    "sink": ("#e6a23c", "S"),
    "window": ("#5b9bd5", "W"),
    "current": ("#c0392b", "now"),
    "memory": ("#7cb87c", "M"),
    "all": ("#a9c8e8", "A"),        # full mode: every earlier chunk is attended to
    "unseen": ("#d9d9d9", ""),      # earlier, but seen by no path (sink and window modes)
    "future": ("#ffffff", ""),
}
LABELS = {
    "sink": "sink: the first chunk, never evicted (attention)",
    "window": "window: the most recent earlier chunks (attention)",
    "current": "the chunk being made (it attends to itself too)",
    "memory": "in memory M: evicted, read through M",
    "all": "attended in full mode: every earlier chunk",
    "unseen": "forgotten (sink and window modes)",
    "future": "not yet made",
}


def roles(c, cfg, mode):
    """The role of every chunk 0..CHUNKS-1 for a query in chunk c, and the chunk evicted just before c."""
    visible, evicted = tv.visible_chunks(c, cfg, mode)
    sink = tv.sink_and_window(cfg, mode)[0]
    out = []
    for j in range(CHUNKS):
        if j > c:
            out.append("future")
        elif j == c:
            out.append("current")
        elif j in visible:
            out.append("all" if mode == "full" else "sink" if j < sink else "window")
        else:
            out.append("memory" if tv.uses_memory(mode) else "unseen")
    return out, evicted


def draw_row(ax, y, row, evicted):
    for j, role in enumerate(row):
        colour, letter = COLOURS[role]
        ax.add_patch(Rectangle((j, y), 1, 1, facecolor=colour, edgecolor="#666666", linewidth=0.8))
        if letter:
            ax.text(j + 0.5, y + 0.5, letter, ha="center", va="center", fontsize=9,
                    color="white" if role in ("current", "window") else "black")
    if evicted is not None:  # the chunk written into M just before this one: a heavy outline
        ax.add_patch(Rectangle((evicted, y), 1, 1, fill=False, edgecolor="black", linewidth=2.2))


def main():
    cfg = train.PRESETS["tiny"].model_config(causal=True)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 9.2), gridspec_kw=dict(height_ratios=[CHUNKS, len(tv.MODES)]))

    for c in range(CHUNKS):  # one row per chunk being made, the first at the top
        row, evicted = roles(c, cfg, "hybrid")
        draw_row(top, CHUNKS - 1 - c, row, evicted)
    top.set_yticks([CHUNKS - 1 - c + 0.5 for c in range(CHUNKS)])
    top.set_yticklabels([f"chunk {c}" for c in range(CHUNKS)])
    top.set_ylabel("the chunk being made (top to bottom: time)")
    top.set_title(f"What each chunk sees in hybrid mode (the shipped student: chunks of {cfg.chunk_frames} frames, "
                  f"sink {cfg.sink_chunks} chunk, window {cfg.window_chunks} chunks)", fontsize=11)

    modes = tv.MODES
    for i, mode in enumerate(modes):
        row, evicted = roles(HIGHLIGHT, cfg, mode)
        draw_row(bottom, len(modes) - 1 - i, row, evicted)
    bottom.set_yticks([len(modes) - 1 - i + 0.5 for i in range(len(modes))])
    bottom.set_yticklabels([f"--mode {mode}" for mode in modes])
    bottom.set_title(f"Chunk {HIGHLIGHT} in each memory mode of sample.py", fontsize=11)

    for ax, rows in ((top, CHUNKS), (bottom, len(modes))):
        ax.set_xlim(0, CHUNKS)
        ax.set_ylim(0, rows)
        ax.set_xticks([j + 0.5 for j in range(CHUNKS)])
        ax.set_xticklabels([f"{j}\n{j * cfg.chunk_frames}-{j * cfg.chunk_frames + cfg.chunk_frames - 1}"
                            for j in range(CHUNKS)], fontsize=8)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    for ax in (top, bottom):
        ax.set_xlabel("chunks of the video (index, and its frames)")

    handles = [Patch(facecolor=COLOURS[r][0], edgecolor="#666666", label=LABELS[r]) for r in COLOURS]
    handles.append(Patch(facecolor="white", edgecolor="black", linewidth=2.2,
                         label="outlined: written into M just before this chunk"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = os.path.join(ROOT, "assets", "how_it_works.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0]).parse_args()
    main()
