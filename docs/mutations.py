"""
Break each equation's line by hand, one at a time, and name the test that goes red.

    python docs/mutations.py                 every break below (an hour or more on a 2-core CPU)
    python docs/mutations.py E9 D12          only the breaks whose label contains E9 or D12
    python docs/mutations.py --tests "identity or perturbation" identity
                                             only those tests (pytest -k): faster, for breaks they should catch

Works on a copy of the committed tree (git archive HEAD) in a temporary folder, so the checkout
is never touched. A break that leaves the suite green is a test that is missing.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

BREAKS = [
 # (label, file, old, new)
 ("E3 W_K used for q", "tiny_videossm.py", "q = self.norm_q(self.q(x)).view(B, L, self.nh, self.hd)       # (E3)", "q = self.norm_q(self.k(x)).view(B, L, self.nh, self.hd)       # (E3)"),
 ("E4 window one chunk short", "tiny_videossm.py", "set(range(max(0, c - window + 1), c + 1))", "set(range(max(0, c - window + 2), c + 1))"),
 ("E4 sink dropped from hybrid", "tiny_videossm.py", "sink = cfg.sink_chunks if mode in (\"hybrid\", \"sink\") else 0", "sink = cfg.sink_chunks if mode in (\"sink\",) else 0"),
 ("E5 beta without sigmoid", "tiny_videossm.py", "beta = torch.sigmoid(self.beta_proj(x))", "beta = self.beta_proj(x)"),
 ("E6 g sign flipped", "tiny_videossm.py", "g = -self.A_log.exp() * nnf.softplus(", "g = self.A_log.exp() * nnf.softplus("),
 ("E6 exp(A) dropped", "tiny_videossm.py", "g = -self.A_log.exp() * nnf.softplus(", "g = -self.A_log * nnf.softplus("),
 ("E6 B dropped", "tiny_videossm.py", "nnf.softplus(self.alpha_proj(x) + self.dt_bias)", "nnf.softplus(self.alpha_proj(x))"),
 ("E7 predict step dropped (naive)", "kernels.py", "u_i = beta[:, i, :, None] * (v_i - prediction)", "u_i = beta[:, i, :, None] * v_i"),
 ("E7 beta dropped (chunked)", "kernels.py", "U = solve(beta[..., None] * v)", "U = solve(v)"),
 ("E7 write: values for keys", "tiny_videossm.py", "_, state = gated_delta_rule(k_mem, k_mem, v.to(dtype),", "_, state = gated_delta_rule(k_mem, k_mem, k_mem,"),
 ("E8 silu dropped", "tiny_videossm.py", "h_global = self.norm(read).reshape(B, L, -1) * nnf.silu(self.out_gate(x))", "h_global = self.norm(read).reshape(B, L, -1) * self.out_gate(x)"),
 ("E8 norm dropped", "tiny_videossm.py", "h_global = self.norm(read).reshape(B, L, -1) * nnf.silu(self.out_gate(x))", "h_global = read.reshape(B, L, -1) * nnf.silu(self.out_gate(x))"),
 ("E9 log dropped", "tiny_videossm.py", "return torch.sigmoid(self.router_w * rho.log()[:, None] + self.router_b)", "return torch.sigmoid(self.router_w * rho[:, None] + self.router_b)"),
 ("E9 w sign flipped", "tiny_videossm.py", "return torch.sigmoid(self.router_w * rho.log()[:, None] + self.router_b)", "return torch.sigmoid(-self.router_w * rho.log()[:, None] + self.router_b)"),
 ("E9/D6 clamp removed", "tiny_videossm.py", "rho = ((frame_index + 1) / self.router_horizon).clamp(max=1.0)", "rho = ((frame_index + 1) / self.router_horizon)"),
 ("E10 gamma dropped", "tiny_videossm.py", "return self.router(frame_index).to(h_global.dtype) * h_global", "return h_global"),
 ("E10 memory subtracted", "tiny_videossm.py", "out = out + self.memory(x, q, states, state_of_token, frame_index)", "out = out - self.memory(x, q, states, state_of_token, frame_index)"),
 ("E11 DMD normaliser removed", "train.py", "direction = (x0_fake - x0_real) / normaliser.view(-1, *[1] * (x.dim() - 1))", "direction = (x0_fake - x0_real)"),
 ("E11 DMD direction flipped", "train.py", "direction = (x0_fake - x0_real) / normaliser", "direction = (x0_real - x0_fake) / normaliser"),
 ("E11 CFG dropped (real score, teacher ODE)", "train.py", "return unconditional + guidance_scale * (conditional - unconditional)", "return conditional"),
 ("stage 1 target: noisy input", "train.py", "return (tv.x0_from_velocity(x, velocity.float(), sigma) - clean).square().mean()", "return (tv.x0_from_velocity(x, velocity.float(), sigma) - x).square().mean()"),
 ("D1 gates per channel", "tiny_videossm.py", "self.beta_proj = nn.Linear(dim, n_heads, bias=False)", "self.beta_proj = nn.Linear(dim, dim, bias=False)"),
 ("D2 memory query L2 norm dropped", "tiny_videossm.py", "q_mem = nnf.normalize(q, dim=-1) * self.hd ** -0.5", "q_mem = q * self.hd ** -0.5"),
 ("D2 memory query scale dropped", "tiny_videossm.py", "q_mem = nnf.normalize(q, dim=-1) * self.hd ** -0.5", "q_mem = nnf.normalize(q, dim=-1)"),
 ("D2 memory key L2 norm dropped", "tiny_videossm.py", "k_mem = nnf.normalize(k.to(dtype), dim=-1)", "k_mem = k.to(dtype)"),
 ("D2 parallel memory uses rotated keys", "tiny_videossm.py", "states = self.memory.scan_chunks(k, v, *gates, pattern.evicted_before)", "states = self.memory.scan_chunks(k_rot, v, *gates, pattern.evicted_before)"),
 ("D3 decay after predict (naive)", "kernels.py", "        M = M * g[:, i].exp()[..., None, None]                              # decay\n        prediction = (M * k_i[..., None]).sum(-2)", "        prediction = (M * k_i[..., None]).sum(-2)\n        M = M * g[:, i].exp()[..., None, None]"),
 ("D4 gate inside the norm", "tiny_videossm.py", "h_global = self.norm(read).reshape(B, L, -1) * nnf.silu(self.out_gate(x))", "h_global = self.norm(read * nnf.silu(self.out_gate(x)).view(B, L, self.nh, self.hd)).reshape(B, L, -1)"),
 ("D5 fusion after W_o", "tiny_videossm.py", "        return self.o(out)\n\n    def forward(self, x, pattern)", "        return self.o(local.flatten(2)) + (out - local.flatten(2))\n\n    def forward(self, x, pattern)"),
 ("D6 router t relative to the chunk", "tiny_videossm.py", "query_frames.repeat_interleave(hw), uses_memory(mode),", "(query_frames % cf).repeat_interleave(hw), uses_memory(mode),"),
 ("D7 evicted chunk's tokens reversed", "tiny_videossm.py", "state = self.memory.write(state, chunk(k_all, i), chunk(v_all, i), chunk(g_all, i), chunk(beta_all, i))", "state = self.memory.write(state, chunk(k_all, i).flip(1), chunk(v_all, i).flip(1), chunk(g_all, i).flip(1), chunk(beta_all, i).flip(1))"),
 ("D7 wrong chunk leaves", "tiny_videossm.py", "leaving = c - window                            # the chunk", "leaving = c - window - 1                        # the chunk"),
 ("D8 denoising steps write the cache", "tiny_videossm.py", "tokens, cache.layers[i] = block.step(tokens, e0, text_kv, cache.layers[i], step, write)", "tokens, cache.layers[i] = block.step(tokens, e0, text_kv, cache.layers[i], step, True)"),
 ("D9 g_out not zero-initialised", "tiny_videossm.py", "        nn.init.zeros_(self.out_gate.weight)\n", ""),
 ("D9 A range", "tiny_videossm.py", "uniform_(0, 16)", "uniform_(0, 64)"),
 ("D10 switch drops M", "tiny_videossm.py", "    cache.set_prompt(model, text)\n    sink = sink_and_window", "    cache.set_prompt(model, text)\n    for layer in cache.layers:\n        layer.state = torch.zeros_like(layer.state)\n    sink = sink_and_window"),
 ("D10 switch keeps the old window", "tiny_videossm.py", "    if not window:\n        return\n", "    if True:\n        return\n"),
 ("D11 parallel states detached", "tiny_videossm.py", "        return torch.stack(states, dim=1)                                             # (B, n, nh, hd, hd)", "        return torch.stack(states, dim=1).detach()"),
 ("D11 recache without graph (bug 1)", "tiny_videossm.py", "        with torch.set_grad_enabled(training):\n            if c in prompts:", "        with torch.no_grad():\n            if c in prompts:"),
 ("D12 absolute positions (no shift) in streaming", "tiny_videossm.py", "    return frame_index - moved * skipped * cfg.chunk_frames                                 # (F,)", "    return frame_index"),
 ("D12 one chunk fewer skipped", "tiny_videossm.py", "max(0, c - (sink + window - 1))", "max(0, c - (sink + window))"),
 ("timestep embedding sin first", "tiny_videossm.py", "torch.cat([angles.cos(), angles.sin()], -1)", "torch.cat([angles.sin(), angles.cos()], -1)"),
 ("D12 sink queries unshifted in parallel", "tiny_videossm.py", "[frame_angles(cfg, seen_positions(frame_pos, c, cfg, mode)) for c in range(n)]", "[frame_angles(cfg, frame_pos) for c in range(n)]"),
 ("bf16 state (bug 2)", "tiny_videossm.py", "dtype = torch.promote_types(state.dtype, torch.float32)", "dtype = k.dtype"),
 ("bf16: autocast reaches into the kernel", "kernels.py", "with torch.autocast(q.device.type, enabled=False):", "with torch.autocast(q.device.type, enabled=torch.is_autocast_enabled(q.device.type)):"),
 ("bf16: the memory's phase outside autocast", "train.py", "        with self.run.autocast():\n            colour, anchor, right", "        with torch.autocast(\"cpu\", enabled=False):\n            colour, anchor, right"),
 ("gpu preset: a window its phase's clips cannot hide a sprite from", "train.py", "window_chunks=3, router_horizon=96", "window_chunks=12, router_horizon=96"),
 ("kernels: auto takes the naive loop on the CPU", "kernels.py", "backend = \"compiled\" if q.is_cuda else \"chunked\"", "backend = \"compiled\" if q.is_cuda else \"naive\""),
 ("stage 2 exit: one step past the exit step", "tiny_videossm.py", "last = len(sigmas) - 1 if exit_step is None else exit_step", "last = len(sigmas) - 1 if exit_step is None else min(exit_step + 1, len(sigmas) - 1)"),
 ("stage 2 exit: rollouts always run every step", "train.py", "first, exit_step = end - window, int(torch.randint(len(self.sigmas), (1,), generator=gen))", "first, exit_step = end - window, len(self.sigmas) - 1"),
 ("few-step chain: re-noised to the current level", "tiny_videossm.py", "x = add_noise(x0, noise(), torch.full_like(s, sigmas[i + 1]))", "x = add_noise(x0, noise(), torch.full_like(s, sigmas[i]))"),
 ("critic: uniform levels", "train.py", "sigma = tv.shift_sigma(torch.rand(x.shape[0], generator=gen), self.preset.timestep_shift).to(x.device)", "sigma = torch.rand(x.shape[0], generator=gen).to(x.device)"),
 ("critic: trained on noise, not the student's samples", "train.py", "critic_loss = self.critic_loss(x.detach(), caption, gen)", "critic_loss = self.critic_loss(torch.randn_like(x), caption, gen)"),
 ("flow matching: target flipped (teacher, critic)", "train.py", "return (velocity.float() - tv.velocity_target(x0, noise)).square()", "return (velocity.float() - tv.velocity_target(noise, x0)).square()"),
 ("teacher ODE: Euler step against time", "train.py", "x = x + (s_next - s) * guided_velocity(", "x = x - (s_next - s) * guided_velocity("),
 ("teacher ODE: kept states after their step", "train.py", "        if s in keep_sigmas:\n            kept[s] = x.clone()\n        timestep = torch.full((B,), 1000 * s, device=device)\n        x = x + (s_next - s) * guided_velocity(teacher, x, timestep, text, empty, guidance_scale)", "        timestep = torch.full((B,), 1000 * s, device=device)\n        x = x + (s_next - s) * guided_velocity(teacher, x, timestep, text, empty, guidance_scale)\n        if s in keep_sigmas:\n            kept[s] = x.clone()"),
 ("world: the right curtain left out", "world.py", "band = ((column < self.curtains) | (column >= self.size - self.curtains)).float()", "band = (column < self.curtains).float()"),
 ("sprite mask counts the curtains", "world.py", "return (away(BACKGROUND_RGB[background]) & away(CURTAIN_RGB)).float()", "return away(BACKGROUND_RGB[background]).float()"),
 ("phase: its family of worlds ignored", "train.py", "self.worlds = [World(size, **w) for w in preset.memory_worlds] or [with_curtains(World(size, **preset.world))]", "self.worlds = [with_curtains(World(size, **preset.world))]"),
 ("harness: the phase's release no longer ends stage 2", "train.py", "if number == \"2\" and made_by_this_run(run, \"student.pt\", student=True):", "if False:"),
 ("palette: the curtains' grey left out", "measure/metrics.py", "PALETTE = torch.cat([BACKGROUND_RGB, SPRITE_RGB, CURTAIN_RGB[None]])", "PALETTE = torch.cat([BACKGROUND_RGB, SPRITE_RGB])"),
 ("switch: the probe streams under the old caption", "measure/benchmark.py", "caption_at_return = probe.new_caption if probe.switch else probe.caption", "caption_at_return = probe.caption"),
 ("switch: the context is fed without its re-cache", "measure/benchmark.py", "probe.video[:, :probe.context_chunks * cf].to(device), probe.prompts())", "probe.video[:, :probe.context_chunks * cf].to(device), {0: probe.caption})"),
 ("switch: at a frame the sprite is in sight", "world.py", "chunk[b] = (math.ceil(hidden_at / cf) + context_chunks) // 2", "chunk[b] = max(1, math.ceil(hidden_at / cf) - 2)"),
 ("world: every clip switches at the first clip's frame", "world.py", "at = None if switch_at is None else torch.tensor(switch_at).expand(batch_size)", "at = None if switch_at is None else torch.tensor(switch_at).flatten()[:1].expand(batch_size)"),
 ("phase: the rest of the student never moves", "train.py", "if \".memory.\" not in name] if preset.memory_rest_lr else []", "if \".memory.\" not in name] if False else []"),
 ("two sprites: the probe reads the one in view too", "measure/benchmark.py", "metrics.recalled(video, probe.colour, leave_out=probe.other)", "metrics.recalled(video, probe.colour)"),
 ("two sprites: the other need not be in the window", "world.py", "if not other or (clips.visible_area[b, window, 1 - slot] >= 8).all():", "if True:"),
 ("two sprites: the colour read is the one in view", "world.py", "int(colour[slot]), context_chunks, back,", "int(colour[1 - slot]), context_chunks, back,"),
 ("two sprites: a switch's re-read may pick the other", "world.py", "found_in = {b: hider(clips, b, (slot,)) for b, (slot, _) in found_in.items()}", "found_in = {b: hider(clips, b, (1, 0)) for b in found_in}"),
 ("identity: reads past the first absence", "measure/metrics.py", "        if frame - appearance[-1] > gap:                  # `gap` frames or more without a sprite: it left\n            break\n", ""),
 ("identity: the reference from the whole clip", "measure/metrics.py", "first_colour(track[:half], reference)", "first_colour(track, reference)"),
 ("identity: a sprite unseen in the first half scores 0", "measure/metrics.py", "if colour >= 0 and len(late):", "if len(late):"),
 ("exit: a blink counts as an exit", "measure/metrics.py", "bool(at_border[b, i] and at_border[b, j])", "True"),
 ("exit: the view's top and bottom no border", "measure/metrics.py", "((rows < edge) | (rows >= H - edge))[:, None] | ", ""),
 ("exit: a curtain no border", "measure/metrics.py", "(border | curtain[:, :, None, :])", "border"),
 ("exit: any colour back counts as kept", "measure/metrics.py", "torch.where(back >= 0, (first == back).float(), math.nan)", "torch.where(back >= 0, (back >= 0).float(), math.nan)"),
 ("exit: blinks scored", "measure/metrics.py", "exits = [back for _, back, is_exit in spans if is_exit]", "exits = [back for _, back, is_exit in spans]"),
 ("recall: a glimpse of the colour is right", "measure/metrics.py", "shown.mode().values.item() == colour", "(shown == colour).any().item()"),
 ("intervals: unpaired", "measure/benchmark.py", "low, high = difference[picks].mean(1)", "low, high = ((a - b.roll(1))[~(a.isnan() | b.isnan())])[picks].mean(1)"),
 ("intervals: no resampling", "measure/benchmark.py", "picks = torch.randint(len(difference), (draws, len(difference)), generator=torch.Generator().manual_seed(seed))", "picks = torch.arange(len(difference)).expand(draws, -1)"),
 ("fidelity: ten times as tolerant", "measure/metrics.py", "(-(distance / sigma) ** 2)", "(-(distance / (10 * sigma)) ** 2)"),
 ("presence: an empty frame counts", "measure/metrics.py", "return (sprite >= 0).float().mean().item()", "return (sprite >= -1).float().mean().item()"),
 ("shape: circles read as squares", "measure/metrics.py", "torch.where(fill > 0.88, 0,", "torch.where(fill > 0.64, 0,"),
 ("subject consistency: any colour counts", "measure/metrics.py", "identity = rank < torch.as_tensor(sprites", "identity = rank < 4 * torch.as_tensor(sprites"),
 ("dynamic degree: against the first frame", "measure/metrics.py", "(frames[:, 1:] - frames[:, :-1]).abs().mean()", "(frames[:, 1:] - frames[:, :1]).abs().mean()"),
 ("prompt match: against the first caption", "measure/metrics.py", "(read == backgrounds)", "(read == backgrounds[:, :1])"),
 ("returns: the window not yet empty", "world.py", "context_chunks = math.ceil(hidden_at / cf) + cfg.window_chunks", "context_chunks = math.ceil(hidden_at / cf) + cfg.window_chunks - 1"),
 ("stage 1: the student sees the clean clip as its input", "train.py", "loss = ode_regression_loss(run, self.model, self.text_encoder, x, sigma, clean, captions)", "loss = ode_regression_loss(run, self.model, self.text_encoder, clean, sigma, clean, captions)"),
 ("stage 1: every step the same batch", "train.py", "self.pairs, self.sigmas, run.generator(1, step))", "self.pairs, self.sigmas, run.generator(1, 0))"),
 ("stage 2: the anchor left out of the student's loss", "train.py", "loss + preset.dmd_regression * regression)", "loss)"),
 ("stage 2: the anchor during the critic's warm-up", "train.py", "anchored = not warming_up and preset.dmd_regression > 0", "anchored = preset.dmd_regression > 0"),
 ("phase: the anchors left out of the loss", "train.py", "loss = colour + preset.memory_anchor * anchor + preset.memory_free_anchor * free", "loss = colour"),
 ("phase: the free rollout unanchored", "train.py", "loss = colour + preset.memory_anchor * anchor + preset.memory_free_anchor * free", "loss = colour + preset.memory_anchor * anchor"),
 ("phase: the colour asked of the frozen student's chunks", "train.py", "colour_loss(made, frozen_made, background, clip.colour)", "colour_loss(frozen_made, frozen_made, background, clip.colour)"),
 ("returns: the phase reads the second sprite's slot", "world.py", "found_in = {b: hider(clips, b, (0, 1) if other else (0,))", "found_in = {b: hider(clips, b, (0, 1) if other else (1,))"),
 ("returns: the context fed one chunk short", "train.py", "clip.video[:, :r * cf].to(self.run.device)", "clip.video[:, :(r - 1) * cf].to(self.run.device)"),
 ("D12 parallel: every chunk sees the keys as chunk 0 does", "tiny_videossm.py", "q_rot, k_rot = rope(q[:, rows], angles[rows]), rope(k, angles)", "q_rot, k_rot = rope(q[:, rows], angles[rows]), rope(k, pattern.angles[0])"),
 ("streaming: the cache keeps the first chunk in every mode", "tiny_videossm.py", "[i for i, j in enumerate(after) if j in visible_next],", "[i for i, j in enumerate(after) if j in visible_next or j == 0],"),
 ("D7 streaming: nothing leaves the window into M", "tiny_videossm.py", "after.index(leaving) if leaving in after else None)", "None)"),
 ("streaming: a write keeps the cache's first chunks, not the visible ones", "tiny_videossm.py", "torch.cat([chunk(t, i) for i in step.kept], dim=1)", "torch.cat([chunk(t, i) for i in range(len(step.kept))], dim=1)"),
 ("D10 recache: the first window chunk kept twice", "tiny_videossm.py", "tokens = first * cache.cfg.chunk_frames * cache.cfg.tokens_per_frame", "tokens = (first + 1) * cache.cfg.chunk_frames * cache.cfg.tokens_per_frame"),
 ("D10 a later prompt never re-caches", "tiny_videossm.py", "    if c == 0:\n        cache.set_prompt(model, text)", "    if True:\n        cache.set_prompt(model, text)"),
 ("context: a switch inside the fed frames ignored", "tiny_videossm.py", "        if c in prompts:\n            set_prompt_at(model, text_encoder, cache, c, prompts[c], frames.shape[0], param.dtype)", "        if c == 0:\n            set_prompt_at(model, text_encoder, cache, c, prompts[c], frames.shape[0], param.dtype)"),
 ("harness: a stage's new weights from the process's random state", "train.py", "            torch.manual_seed((self.seed * 1_000_003 + stage) % 2 ** 63)\n", ""),
 ("harness: a resumed log saves to other bytes", "train.py", "    return {sys.intern(key): value for key, value in losses.items()}", "    return dict(losses)"),
 ("harness: a full disk leaves its temporary file", "train.py", "        if os.path.exists(tmp):\n            os.remove(tmp)\n        kept =", "        kept ="),
 ("harness: Ctrl-C mid-save breaks the archive", "train.py", "    wait_for_ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler\n", "    wait_for_ctrl_c = False\n"),
 ("harness: a resume file of another train.py told as another run's", "train.py", "    if all(theirs.get(k) == ours[k] for k in (\"preset\", \"seed\", \"mode\")):", "    if False:"),
 ("harness: another run's files count as this run's", "train.py", "    if theirs == ours:\n        return\n", "    return\n"),
 ("harness: another mode's student counts as done", "train.py", "    mode = checkpoint.get(\"config\", {}).get(\"mode\") if student else None", "    mode = run.mode if student else None"),
 ("harness: a second run may write into a taken folder", "train.py", "        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)\n", "        pass\n"),
 ("harness: runs train into checkpoints/ by default", "train.py", "args.out or os.path.join(\"runs\", args.preset)", "args.out or \"checkpoints\""),
 ("checkpoint: another version's format read", "tiny_videossm.py", "    if found != CHECKPOINT_FORMAT:", "    if found is None:"),
 ("checkpoint: a release records no seed", "train.py", "self.made_by, self.mode = {\"preset\": spec, \"seed\": seed, \"recipe\": asdict(self.preset)}, mode", "self.made_by, self.mode = {\"preset\": spec, \"recipe\": asdict(self.preset)}, mode"),
 ("sample.py loads the trainer", "sample.py", "import tiny_videossm as tv\n", "import tiny_videossm as tv\nimport train\n"),
 ("sampling: the checkpoint's timestep shift ignored", "sample.py", "checkpoint[\"sampling\"][\"timestep_shift\"], args.seed, args.mode):", "1.0, args.seed, args.mode):"),
 ("teacher data: the same clips every step", "train.py", "clips = self.world.sample(B, frames, seed=run.generator(0, step).initial_seed())", "clips = self.world.sample(B, frames, seed=run.generator(0, 0).initial_seed())"),
 ("teacher data: text dropout inverted", "train.py", "captions = [c[0] if u >= preset.text_dropout else \"\"", "captions = [c[0] if u < preset.text_dropout else \"\""),
 ("teacher data: no text dropout", "train.py", "captions = [c[0] if u >= preset.text_dropout else \"\"", "captions = [c[0] if True else \"\""),
 ("teacher data: images on even steps", "train.py", "images = preset.image_batch > 0 and step % 2 == 1", "images = preset.image_batch > 0 and step % 2 == 0"),
 ("teacher data: images every step", "train.py", "images = preset.image_batch > 0 and step % 2 == 1", "images = preset.image_batch > 0"),
 ("teacher data: the same noise level for the whole batch", "train.py", "sigma = torch.rand(B, generator=gen).to(run.device)", "sigma = torch.rand(1, generator=gen).expand(B).to(run.device)"),
 ("phase: the frozen student's cache gets its own chunks", "train.py", "frozen.forward_chunk(x0.detach(), 0.0, caches[1], write=True)", "frozen.forward_chunk(frozen_made[-1], 0.0, caches[1], write=True)"),
 ("phase: the frozen student predicts from the clean chunk", "train.py", "frozen_made.append(tv.x0_from_velocity(x, frozen.forward_chunk(x, 1000 * s, caches[1]), s))", "frozen_made.append(tv.x0_from_velocity(x0.detach(), frozen.forward_chunk(x0.detach(), 1000 * s, caches[1]), s))"),
 ("phase: the sprite read from the trained student", "train.py", "sprite = sprite_mask(frozen_x0, background)", "sprite = sprite_mask(x0.detach(), background)"),
 ("phase: the anchor on the sprite", "train.py", "outside = ((x0 - frozen_x0).square() * (1 - sprite)).mean()", "outside = ((x0 - frozen_x0).square() * sprite).mean()"),
 ("decay: vectors decay too", "train.py", "\"weight_decay\": weight_decay if matrices else 0.0}", "\"weight_decay\": weight_decay}"),
 ("decay: the critic decays everything at AdamW's default", "train.py", "self.critic_optimizer = adamw([list(self.critic.parameters())], (0.0, 0.99), preset.weight_decay)", "self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), betas=(0.0, 0.99))"),
 ("phase: the frozen student is the trained one", "train.py", "self.frozen = run.load(dmd_file, build=True)[0].requires_grad_(False)", "self.frozen = self.model"),
]


def main(only, tests="not notebook and not torchrun"):
    root = tempfile.mkdtemp(prefix="mutations-")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run(f"git -C {repo} archive HEAD | tar -x -C {root}", shell=True, check=True)
    print("| break | the first test that fails |\n|---|---|")
    for label, file, old, new in BREAKS:
        if only and not any(word in label for word in only):
            continue
        path = os.path.join(root, file)
        source = open(path).read()
        if source.count(old) != 1:
            print(f"| {label} | the line to break is not in {file} once: update this table |")
            continue
        open(path, "w").write(source.replace(old, new))
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                                  "-k", tests], cwd=root, capture_output=True, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.MULTILINE)                 # a test, or a fixture it needs
            caught = failed[0].split("::")[-1] if failed else f"the suite stops (exit {run.returncode})"
            if run.returncode in (0, 5):                                     # 5: --tests selected no test
                caught = "NONE: the suite stays green" if run.returncode == 0 else "NONE: no test selected"
            print(f"| {label} | {caught} |", flush=True)
        finally:
            open(path, "w").write(source)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("only", nargs="*", help="only the breaks whose label contains one of these words")
    parser.add_argument("--tests", default="not notebook and not torchrun",
                        help="the tests to run on each break, a pytest -k expression (default: all but the "
                             "notebooks and torchrun)")
    args = parser.parse_args()
    main(args.only, args.tests)
