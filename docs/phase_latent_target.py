"""
`python docs/phase_latent_target.py RUN_FOLDER STEPS`: a probe for docs/experiments.md. The memory's phase of the
`quick` preset with its colour target in latent space: the frozen student's chunk, decoded, recoloured to the true
colour on its sprite pixels and encoded; the trained student's latents regress to that (off the sprite the target
is the frozen student's own chunk, so the anchor comes with it). Runs on a copy of RUN_FOLDER's releases, in
RUN_FOLDER_latent_target, and releases student.pt there.
"""
import argparse
import os
import shutil
import sys
import types
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
import train  # noqa: E402
from world import SPRITE_RGB, sprite_mask  # noqa: E402

def latent_colour_loss(self_ae, made, frozen_made, background, colour):
    with torch.no_grad():
        pixels = self_ae.decode(frozen_made)
        sprite = sprite_mask(pixels, background)                                        # (1, F, 1, H, W)
        target = self_ae.encode(pixels * (1 - sprite) + SPRITE_RGB[colour].view(1, 1, 3, 1, 1) * sprite)
        logits = -(self_ae.decode(made.detach()).movedim(2, -1)[..., None, :] - SPRITE_RGB).square().sum(-1)
        where = sprite[:, :, 0]
        right = bool((logits.softmax(-1) * where[..., None]).flatten(0, -2).sum(0).argmax() == colour)
    return 10 * (made - target).square().mean(), torch.zeros(()), right   # x10: the scale of the pixel phase's colour term

parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("run_folder", help="a quick run's folder holding student_dmd.pt and the releases before it")
parser.add_argument("steps", type=int, help="steps of the phase")
args = parser.parse_args()
source, steps = args.run_folder.rstrip("/"), args.steps
out = source + "_latent_target"
if not os.path.exists(out):
    os.makedirs(out)
    for f in ("autoencoder.pt", "teacher.pt", "student_stage1.pt", "student_dmd.pt", "ode_pairs.pt"):
        shutil.copy(os.path.join(source, f), out)
run = train.Run("cpu", out, seed=0, spec=f"quick memory_steps={steps}")
stage = train.MemoryRecall(run, "student_dmd.pt")
decode = stage.autoencoder.decode
ae = types.SimpleNamespace(encode=stage.autoencoder.encode, decode=decode)
stage.autoencoder.decode = lambda z: z            # the phase's map(decode, ...) now passes latents through
train.colour_loss = lambda made, frozen_made, background, colour: latent_colour_loss(ae, made, frozen_made, background, colour)
train.run_stage(stage, run)
