"""A node's sampling runs (rollout segments, interpolation windows, an upscale): the sampler and
sigmas from the node's widgets or connected SAMPLER/SIGMAS, each run's noise and seeds (a NOISE
input's too), and one progress bar with previews over all runs.
"""

from __future__ import annotations

import logging
import math

import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ..videoldm_core.context import ContextError
from ..videoldm_core.errors import shown
from ..videoldm_core.limits import check_finite_latent, is_finite_number

log = logging.getLogger("videoldm")


def sampler_and_sigmas(model, sampler_name: str, scheduler: str, steps: int, sampler=None, sigmas=None):
    """The SAMPLER and SIGMAS inputs where connected, else the node's own sampler_name, scheduler and
    steps, with the sigmas computed as core KSampler computes them (for sampler_name; beside a
    connected SAMPLER, which replaces sampler_name, as core's BasicScheduler computes them)."""
    for name, value, known, replaced in (("sampler_name", sampler_name, comfy.samplers.KSampler.SAMPLERS, sampler),
                                         ("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS, sigmas)):
        if replaced is None and value not in known:   # a linked value is any text (core's String to Combo)
            raise ContextError(f"{name}: expected one of {list(known)}, found {shown(value)}.")
    discard = sampler is None and sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    if sampler is None:
        sampler = comfy.samplers.sampler_object(sampler_name)
    if sigmas is None:
        sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps + discard)
        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    elif sigmas.ndim != 1 or len(sigmas) < 2 or not all(is_finite_number(float(s)) for s in sigmas):
        # fewer than two: no step at all, the new frames would come back as the empty latent or raw noise
        raise ContextError(f"the SIGMAS input: expected a schedule of at least 2 finite sigmas (a start and an end), "
                           f"found {sigmas.tolist()}.")
    elif starts_below_full_noise(model.get_model_object("model_sampling"), sigmas):
        log.warning("Video LDM: the SIGMAS input starts at sigma %.4g, below the model's largest noise level %.4g. "
                    "The frames this node makes have no source to start from: they start from an empty latent with "
                    "less noise than they need (img2img of nothing at denoise < 1), which washes them out. Connect a "
                    "schedule over all the model's steps (denoise 1).", float(sigmas[0]),
                    float(model.get_model_object("model_sampling").sigma_max))
    return sampler, sigmas.cpu()


def starts_below_full_noise(sampling, sigmas) -> bool:
    """Whether a schedule starts below the model's largest noise level, as one of denoise < 1 does;
    core's full ddim_uniform schedule starts lower too (at a timestep of its stride) and is not one."""
    start = float(sigmas[0])
    if start >= 0.99 * float(sampling.sigma_max):
        return False
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete):
        return True
    ddim_start = float(comfy.samplers.calculate_sigmas(sampling, "ddim_uniform", len(sigmas) - 1)[0])
    return not math.isclose(start, ddim_start, rel_tol=1e-4)


class SamplingProgress:
    """One progress bar over all runs of a node (runs × steps) with latent previews, as core KSampler
    sends them (the user's preview method; x0's first frame being made, see `of_run`). A latent that turns
    non-finite stops the node at that step, naming it (`node`) and the run (`run`: "segment", "window")."""

    def __init__(self, model, runs: int, steps: int, node: str = "Video LDM", run: str = "run"):
        self.steps, self.total = steps, runs * steps
        self.node, self.run_name = node, run
        self.pbar = comfy.utils.ProgressBar(self.total)
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)

    def of_run(self, run: int, preview_frame: int = 0):
        """The sampler callback of run `run`, previewing its frame `preview_frame` (a frame being
        made: a given frame, kept out of the denoising, would show the same picture at every step)."""
        def on_step(step, x0, x, total_steps):
            check_finite_latent((x0, x), self.node, f"at step {step + 1} of {self.run_name} {run + 1}")
            preview = (self.previewer.decode_latent_to_preview_image("JPEG", x0[preview_frame:preview_frame + 1])
                       if self.previewer else None)
            self.pbar.update_absolute(run * self.steps + step + 1, self.total, preview)
        return on_step

    def name_of(self, run: int) -> str:
        """The node and run, as an error names them: "Extend Video, segment 2"."""
        return f"{self.node}, {self.run_name} {run + 1}"


SEEDS = 2**64   # a seed widget's range, and what torch's generators take


def independent_seed(seed: int) -> int:
    """A seed for a second random stream beside the one `seed` starts (SplitMix64's mix of it): a
    generator seeded with `seed` itself would repeat that stream's numbers."""
    z = (seed + 0x9E3779B97F4A7C15) % SEEDS
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % SEEDS
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % SEEDS
    return z ^ (z >> 31)


class RunNoise:
    """The initial noise and sampler seed of each run of a node that samples several in turn
    (rollout segments, interpolation windows): run i draws `prepare_noise(latent, seed + i)` (modulo
    2^64, so the widget's largest seed works); with a NOISE input, one draw covers all runs stacked
    along frames (`lengths` frames each) and run i takes its slice, with the NOISE's seed + i for the
    sampler. `augmentation_seed(i)`: run i's other randomness (the keyframes' conditioning
    augmentation), independent of its noise and following a NOISE input's seed too."""

    def __init__(self, seed: int, noise=None, lengths=(), shape=()):
        self.seed, self.source = seed, noise
        self.starts = [sum(lengths[:i]) for i in range(len(lengths))]
        self.stacked = None
        if noise is not None:
            self.seed = getattr(noise, "seed", seed)
            shaped = torch.zeros(1).expand(sum(lengths), *shape)   # the draw's shape; one stored zero, not a second video
            self.stacked = noise.generate_noise({"samples": shaped}).cpu()

    def run_seed(self, index: int) -> int:
        return (self.seed + index) % SEEDS

    def augmentation_seed(self, index: int) -> int:
        return independent_seed(self.run_seed(index))

    def __call__(self, index: int, latent: torch.Tensor) -> torch.Tensor:
        if self.stacked is None:
            return comfy.sample.prepare_noise(latent, self.run_seed(index))
        return self.stacked[self.starts[index]:self.starts[index] + latent.shape[0]].to(latent.dtype)

    def on_device(self, index: int, latent: torch.Tensor, device) -> torch.Tensor:
        """Run `index`'s noise, made on `device` one frame at a time so that the host never holds the
        whole draw (on a GPU the sampler's state is device memory; the noise was the one whole
        latent the host kept for all of sampling). The same numbers as `self(index, latent)`: core
        draws the whole latent from the seeded global generator at once, and CPU randn fills
        uniforms in order and transforms them in blocks of 16, so frame by frame from the same
        generator draws the same numbers when a frame holds a multiple of 16 (tested); other
        shapes, and a NOISE input's draw, are made whole and moved (the draw dropped when it has
        only this run, so the host does not keep it)."""
        if self.stacked is not None or math.prod(latent.shape[1:]) % 16:
            noise = self(index, latent).to(device)
            if len(self.starts) == 1:
                self.stacked = None
            return noise
        generator = torch.manual_seed(self.run_seed(index))   # as core's prepare_noise: the global generator
        noise = torch.empty(latent.shape, dtype=latent.dtype, device=device)
        for frame in noise:
            frame.copy_(torch.randn(latent.shape[1:], generator=generator).to(latent.dtype))
        return noise
