"""
Kill -9 a training run at random moments, resume it, and compare what it releases with one run that was
never stopped: bit for bit, file by file. A run must resume to the same models however it was cut.

    python docs/kill_resume.py                      30 runs of the `test` preset, up to 3 kills each
    python docs/kill_resume.py --trials 5 --kills 1

Each run is killed (SIGKILL: no handler runs, a save may be cut mid-write) after a delay drawn uniformly
over the uncut run's wall time, up to --kills times, then run to the end; the folder's files at each kill
say which part of the pipeline the kill hit. Prints one line per kill and a summary; exits 1 if any
released file differs.
"""

import argparse
import collections
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASED = ["teacher.pt", "student_stage1.pt", "student_dmd.pt", "student.pt"]


def train(folder, preset):
    return subprocess.Popen([sys.executable, "train.py", "--preset", preset, "--out", str(folder)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(folder, preset):
    process = train(folder, preset)
    _, error = process.communicate()
    if process.returncode:
        raise SystemExit(f"training in {folder} failed after its kills (exit {process.returncode}):\n{error[-2000:]}")


def where(folder):
    """The pipeline's state from the folder: the last released stage and any resume file or cache."""
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    released = [n for n in RELEASED if n in names]
    rest = [n for n in names if n not in RELEASED and n != "run.lock"]
    return f"released {released[-1] if released else 'nothing'}" + (f" + {', '.join(rest)}" if rest else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=30, help="runs to cut (default 30)")
    parser.add_argument("--kills", type=int, default=3, help="kills per run, at most (default 3)")
    parser.add_argument("--preset", default="test", help="the preset to train (default test: seconds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    args = parser.parse_args()
    if args.trials < 1 or args.kills < 1:
        parser.error("--trials and --kills must be at least 1")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="kill_resume."))
    started = time.time()
    finish(scratch / "uncut", args.preset)
    uncut_seconds = time.time() - started
    reference = {name: (scratch / "uncut" / name).read_bytes() for name in RELEASED}
    print(f"uncut run: {uncut_seconds:.1f} s; kills drawn uniformly in [0, {uncut_seconds:.1f}] s\n")
    draw, states, differing = random.Random(args.seed), collections.Counter(), []
    for trial in range(args.trials):
        folder = scratch / f"cut{trial}"
        for kill in range(draw.randint(1, args.kills)):
            process, delay = train(folder, args.preset), draw.uniform(0, uncut_seconds)
            time.sleep(delay)
            if process.poll() is not None:                       # it finished before the kill
                print(f"run {trial}, kill {kill}: finished before {delay:.1f} s")
                break
            process.send_signal(signal.SIGKILL)
            process.wait()
            state = where(folder)
            states[state] += 1
            print(f"run {trial}, kill {kill} at {delay:.1f} s: {state}")
        finish(folder, args.preset)
        same = [name for name in RELEASED if (folder / name).read_bytes() == reference[name]]
        leftovers = [n for n in os.listdir(folder) if n.endswith(".tmp") or n.endswith(".resume.pt")]
        if len(same) < len(RELEASED) or leftovers:
            differing.append(trial)
        print(f"run {trial}: {len(same)} of {len(RELEASED)} released files bit-identical to the uncut run's"
              + (f"; left over: {leftovers}" if leftovers else ""))
    print(f"\nkills by the state they left ({sum(states.values())} kills):")
    for state, count in sorted(states.items()):
        print(f"  {count:3d}  {state}")
    print(f"\n{args.trials - len(differing)} of {args.trials} cut runs released bit-identical files"
          + (f"; differing: runs {differing} (folders in {scratch})" if differing else ""))
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
