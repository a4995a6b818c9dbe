"""An adapter's noise schedule on the patched clone (ComfyUI's `model_sampling` object patch): the
schedule it was trained with by default, the checkpoint's own or an explicit one on request.
Nothing is changed globally and the input MODEL keeps its own schedule.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import comfy.model_sampling
import torch
from comfy_extras.nodes_model_advanced import LCM, ModelSamplingDiscreteDistilled

from ..videoldm_core.noise_schedule import NAMED_SCHEDULES, BetaSchedule, ScheduleError
from .keys import REPLACED_SAMPLING_KEY, SCHEDULE_ATTR, SCHEDULE_KEY

AUTO, MODEL = "auto", "model"
NOISE_SCHEDULE_CHOICES = (AUTO, MODEL, *NAMED_SCHEDULES)
log = logging.getLogger("videoldm")


@dataclass(frozen=True)
class ScheduleChoice:
    """What the Apply nodes so far decided for a clone: the schedule (None: the MODEL's own), which
    adapter asked for it, whether the user picked it, and the timesteps of an LCM sampling the
    user set before the first adapter (kept on the adapters' betas)."""

    schedule: Optional[BetaSchedule]
    by: str
    picked: bool
    users_lcm: Optional[int] = None
    keeps_model: bool = False   # noise_schedule 'model': the user's sampling, whatever sets it later


def model_schedule(model) -> Optional[BetaSchedule]:
    """The MODEL's discrete schedule as a BetaSchedule when its sigmas are exactly one, else None."""
    sampling = model.get_model_object("model_sampling")
    own = getattr(sampling, SCHEDULE_ATTR, None)
    if own is not None:
        return own
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete) or getattr(sampling, "zsnr", False):
        return None
    settings = model.model.model_config.sampling_settings
    try:
        candidate = BetaSchedule(settings.get("beta_schedule", "linear"), float(sampling.linear_start),
                                 float(sampling.linear_end), int(sampling.num_timesteps))
    except ScheduleError:
        return None
    sigmas = candidate.sigmas().float()
    return candidate if sigmas.shape == sampling.sigmas.shape and torch.equal(sigmas, sampling.sigmas.cpu()) else None


# core's parameterisations; a sampling object computes with the most derived one it inherits
# (EDM is a V_PREDICTION, X0 an EPS: neither may be taken for its base)
_PREDICTIONS = tuple(getattr(comfy.model_sampling, name) for name in (
    "EPS", "V_PREDICTION", "V_PREDICTION_DDPM", "EDM", "CONST", "X0", "IMG_TO_IMG", "IMG_TO_IMG_FLOW", "COSMOS_RFLOW")
    if hasattr(comfy.model_sampling, name))


def prediction_of(sampling) -> Optional[type]:
    """The parameterisation a model_sampling object computes with: the most derived of core's
    prediction classes among its bases (an LCM sampling's is EPS)."""
    return next((c for c in type(sampling).__mro__ if c in _PREDICTIONS), None)


def discrete_problem(sampling) -> Optional[str]:
    """Why a discrete DDPM schedule cannot replace this model's sampling, or None when it can: the
    UNet must read discrete timesteps (ModelSamplingDiscrete, not its EDM variant) and predict ε or v.
    A continuous-EDM model (Playground v2.5, CosXL) reads a function of σ and predicts in EDM's own
    terms; given timesteps 0-999 it denoises to noise."""
    prediction = prediction_of(sampling)
    if (not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete)
            or isinstance(sampling, comfy.model_sampling.ModelSamplingDiscreteEDM)):
        kind = next((c for c in type(sampling).__mro__ if c.__module__ == comfy.model_sampling.__name__
                     and c not in _PREDICTIONS), type(sampling))
        return (f"the model samples with {kind.__name__}"
                f"{f' ({prediction.__name__})' if prediction else ''}, a noise parameterisation its UNet was trained on "
                "in place of discrete timesteps")
    if prediction not in (comfy.model_sampling.EPS, comfy.model_sampling.V_PREDICTION):
        return f"the model predicts {prediction.__name__ if prediction else type(sampling).__name__}, not ε or v"
    return None


def sampling_for(model, schedule: BetaSchedule):
    """A model_sampling object with `schedule`'s sigmas and the model's parameterisation (ε or v);
    an LCM schedule samples as core's ModelSamplingDiscrete 'lcm' does, on its original timesteps."""
    current = model.get_model_object("model_sampling")
    settings = SimpleNamespace(sampling_settings=dict(beta_schedule=schedule.betas, linear_start=schedule.beta_start,
                                                       linear_end=schedule.beta_end, timesteps=schedule.timesteps))
    problem = discrete_problem(current)
    if problem is not None:
        raise ScheduleError(f"the discrete noise schedule {schedule.label!r} cannot sample this model: {problem}. "
                            f"Use noise_schedule 'model' (or 'auto', which keeps such a model's own sampling).")
    if schedule.lcm_timesteps is not None:
        if prediction_of(current) is not comfy.model_sampling.EPS:
            raise ScheduleError(f"the LCM schedule {schedule.label!r} needs an ε-prediction model, found "
                                f"{type(current).__name__}.")
        base, prediction = ModelSamplingDiscreteDistilled, LCM
    else:
        base, prediction = comfy.model_sampling.ModelSamplingDiscrete, prediction_of(current)

    class AdapterModelSampling(base, prediction):
        """The schedule's tables are attributes, not buffers. DynamicVRAM's patcher backs every buffer
        up by its path and writes it back into whatever object sits at that path at its next load
        (ComfyUI issue 16490), so as buffers this schedule and the checkpoint's would swap between the
        clone and the input MODEL. Core's schedule code moves the tables to the input's device."""
        original_timesteps = schedule.lcm_timesteps or ModelSamplingDiscreteDistilled.original_timesteps

        def set_sigmas(self, sigmas):
            for name, table in (("sigmas", sigmas.float()), ("log_sigmas", sigmas.log().float())):
                self._buffers.pop(name, None)
                object.__setattr__(self, name, table)

        def register_buffer(self, name, tensor, persistent=True):
            if name not in ("sigmas", "log_sigmas"):   # those two only come from a patcher's restore by path
                super().register_buffer(name, tensor, persistent)

    sampling = AdapterModelSampling(settings, zsnr=getattr(current, "zsnr", False))
    setattr(sampling, SCHEDULE_ATTR, schedule)
    return sampling


def choose_schedule(model, choice: str, trained: Optional[BetaSchedule], name: str) -> Optional[ScheduleChoice]:
    """What `choice` (one of NOISE_SCHEDULE_CHOICES) means for an adapter trained with `trained`
    (None: the base model's own) on `model`, checked against what earlier adapters decided.
    Returns None when the clone keeps the sampling it has."""
    if choice not in NOISE_SCHEDULE_CHOICES:
        raise ScheduleError(f"noise_schedule: expected one of {NOISE_SCHEDULE_CHOICES}, found {choice!r}.")
    earlier: Optional[ScheduleChoice] = model.model_options.get("transformer_options", {}).get(SCHEDULE_KEY)
    if choice == MODEL:
        return ScheduleChoice(model_schedule(model), name, picked=True, keeps_model=True)
    if choice != AUTO:
        return ScheduleChoice(NAMED_SCHEDULES[choice], name, picked=True)
    problem = discrete_problem(model.get_model_object("model_sampling")) if trained is not None else None
    if problem is not None:   # the UNet was trained on its own sampling; a discrete table would break it
        if earlier is None:
            log.warning("Video LDM: adapter '%s' was trained with %s, but %s; auto keeps the model's own sampling.",
                        name, _describe(trained), problem)
        return earlier or ScheduleChoice(None, name, picked=True)
    wanted = trained if trained is not None else model_schedule(model)
    users_lcm = earlier.users_lcm if earlier is not None else user_lcm_timesteps(model)
    if wanted is not None and wanted.lcm_timesteps is None and users_lcm is not None:
        log.info("Video LDM: adapter '%s' samples its schedule %s as LCM on %d timesteps, as a ModelSamplingDiscrete "
                 "'lcm' before it asks.", name, _describe(wanted), users_lcm)
        wanted = dataclasses.replace(wanted, lcm_timesteps=users_lcm)
    if earlier is None:
        return ScheduleChoice(wanted, name, picked=False, users_lcm=users_lcm)
    if earlier.picked:
        if wanted != earlier.schedule:
            log.info("Video LDM: adapter '%s' was trained with %s; keeping %s, picked for '%s'.", name,
                     _describe(wanted), _describe(earlier.schedule), earlier.by)
        return earlier
    if wanted != earlier.schedule and trained is not None:
        raise ScheduleError(f"stacked temporal adapters were trained with different noise schedules: '{earlier.by}' with "
                            f"{_describe(earlier.schedule)}, '{name}' with {_describe(wanted)}. Pick one in "
                            f"noise_schedule on one of the Apply Temporal Adapter nodes.")
    return earlier


def user_lcm_timesteps(model) -> Optional[int]:
    """How many timesteps an LCM sampling that the user set before any adapter (core's
    ModelSamplingDiscrete 'lcm', for an LCM LoRA) samples on, else None: auto keeps that mode on
    the adapter's betas rather than dropping it."""
    sampling = model.get_model_object("model_sampling")
    if (isinstance(sampling, ModelSamplingDiscreteDistilled) and isinstance(sampling, LCM)
            and getattr(sampling, SCHEDULE_ATTR, None) is None):
        return int(sampling.original_timesteps)
    return None


def set_schedule(clone, decided: ScheduleChoice):
    """On `clone` only: the decided schedule as a model_sampling object patch, unless it is what
    the clone samples with already."""
    options = clone.model_options["transformer_options"]
    options[SCHEDULE_KEY] = decided
    if decided.schedule is not None and model_schedule(clone) != decided.schedule:
        current = clone.object_patches.get("model_sampling")
        if getattr(current, SCHEDULE_ATTR, None) is None:   # the user's (or none), not an earlier adapter's
            options[REPLACED_SAMPLING_KEY] = current
        clone.add_object_patch("model_sampling", sampling_for(clone, decided.schedule))


def unset_schedule(clone):
    """On `clone` only: what `set_schedule` did undone, the sampling it replaced (the checkpoint's
    own or a ModelSampling node's patch) back; a patch set after the adapters' stays."""
    options = clone.model_options["transformer_options"]
    options.pop(SCHEDULE_KEY, None)
    replaced = options.pop(REPLACED_SAMPLING_KEY, None)
    if getattr(clone.object_patches.get("model_sampling"), SCHEDULE_ATTR, None) is None:
        return
    if replaced is None:
        del clone.object_patches["model_sampling"]
    else:
        clone.object_patches["model_sampling"] = replaced


def schedule_replaced(model) -> Optional[str]:
    """Why MODEL does not sample with the schedule its adapters decided, or None: a node after the
    last Apply Temporal Adapter (core's ModelSamplingDiscrete, say) replaced the sampling they set
    with one that samples otherwise. A sampling that samples as the pack would have made it from
    that node's settings (an LCM or zero-SNR on the same betas) is no replacement."""
    decided: Optional[ScheduleChoice] = model.model_options.get("transformer_options", {}).get(SCHEDULE_KEY)
    if decided is None or decided.schedule is None or decided.keeps_model:
        return None
    sampling = model.get_model_object("model_sampling")
    if getattr(sampling, SCHEDULE_ATTR, None) == decided.schedule:
        return None
    wanted, users_lcm = decided.schedule, user_lcm_timesteps(model)
    if wanted.lcm_timesteps is None and users_lcm is not None:   # as choose_schedule keeps an LCM set before
        wanted = dataclasses.replace(wanted, lcm_timesteps=users_lcm)
    try:
        expected = sampling_for(model, wanted).sigmas.cpu().float()
        current = sampling.sigmas.cpu().float()
        if expected.shape == current.shape and torch.allclose(expected, current, rtol=1e-5, atol=0):
            return None
    except ScheduleError:   # a sampling no discrete table can stand in for (EDM, x0): replaced
        pass
    what = "was trained with" if not decided.picked else "was set to"
    return (f"temporal adapter '{decided.by}' {what} {_describe(decided.schedule)}, but a node after Apply Temporal "
            f"Adapter replaced the model's sampling ({type(sampling).__name__}), which this run samples with. To sample "
            "with the adapter's schedule, put that node before Apply Temporal Adapter (a ModelSamplingDiscrete 'lcm' "
            "there is kept, on the adapter's betas) or pick the schedule in its noise_schedule.")


def _describe(schedule: Optional[BetaSchedule]) -> str:
    return "the checkpoint's own schedule" if schedule is None else f"'{schedule.label}'"
