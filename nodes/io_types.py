"""The pack's custom IO types and the inputs its nodes share: what node modules import from each
other, so no node module imports another node module.

The IO ids (`TEMPORAL_ADAPTER`, `VIDEO_CONTEXT`) are what saved graphs store; they never change.
The Python names end in `Type` so they never read as the core's `TemporalAdapter` module class.

Number inputs are checked against the node's own schema (`valid_numbers`, `checked_inputs`):
finite, within min/max, on the declared step where asked. NaN passes ComfyUI's min/max checks
(every comparison with NaN is false), and an input a V3 node names in `validate_inputs` skips them
altogether, so a node that checks a number checks all of it here. A linked input is unknown at
validation (None there), and ComfyUI checks no range or kind of a linked value: every node's
`execute` starts with `checked_inputs`, which checks all its inputs' values when it runs."""

from __future__ import annotations

import numpy

import comfy.samplers
from comfy_api.v0_0_2 import io

from ..videoldm_core.errors import shown
from ..videoldm_core.limits import InputValueError, number_problem

TemporalAdapterType = io.Custom("TEMPORAL_ADAPTER")   # value: host.temporal_adapter.LoadedAdapter
VideoContextType = io.Custom("VIDEO_CONTEXT")         # value: videoldm_core.context.VideoContext


CFG_WHY = {7.5: "Default 7.5, Stable Diffusion's own sampling default (core KSampler's is 8.0).",
           4.0: "Default 4.0: the x4 upscaler is conditioned on the low-res frames, which carry most of the "
                "picture; high text guidance oversaturates its output (core KSampler's default is 8.0)."}


def sampler_inputs(per: str | None = None, cfg_default: float = 7.5) -> list:
    """seed, steps, cfg, sampler_name, scheduler, with core KSampler's defaults except cfg (its
    tooltip says why); `per` names what one run samples ("segment", "window") when the node samples
    several in turn."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                     tooltip=f"Noise seed of the first {per}; {per} i uses seed + i." if per else "Noise seed."),
        io.Int.Input("steps", default=20, min=1, max=10000,
                     tooltip=f"Sampling steps per {per}." if per else "Sampling steps."),
        io.Float.Input("cfg", default=cfg_default, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Text classifier-free guidance scale; 1 skips the negative branch. " + CFG_WHY[cfg_default]),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, tooltip="The sampler."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, tooltip="The noise schedule."),
    ]


def custom_sampling_inputs(per: str | None = None) -> list:
    """Optional core SAMPLER, SIGMAS and NOISE (as SamplerCustomAdvanced takes them): custom samplers
    and schedulers replace sampler_name, scheduler/steps and seed where connected."""
    each = f" for every {per}" if per else ""
    return [
        io.Sampler.Input("sampler", optional=True, tooltip=f"A core SAMPLER{each}; replaces sampler_name."),
        io.Sigmas.Input("sigmas", optional=True, tooltip=f"Core SIGMAS{each}; replace scheduler and steps. A full "
                        "schedule (denoise 1): the frames made here have no source to start from."),
        io.Noise.Input("noise", optional=True,
                       tooltip="Core NOISE; replaces seed." + (f" One draw covers every {per}, stacked along frames; "
                                                               f"{per} i takes its frames." if per else "")),
    ]


def _bounds(cls) -> dict:
    return {i.id: i for i in cls.define_schema().inputs if isinstance(i, (io.Float.Input, io.Int.Input))}


def numbers_problem(cls, stepped: tuple[str, ...] = (), **values) -> str | None:
    """Why some of `values` (number inputs of node `cls`, by name) cannot be used, or None. Inputs
    named in `stepped` must also be a whole number of steps above their minimum."""
    bounds, problems = _bounds(cls), []
    for name, value in values.items():
        if value is None:   # linked: checked when the node runs
            continue
        spec = bounds[name]
        problem = number_problem(name, value, spec.min, spec.max)
        if problem is None and name in stepped and spec.step and (value - (spec.min or 0)) % spec.step:
            problem = f"{name} must be a multiple of {spec.step}, found {value}."
        if problem is not None:
            problems.append(problem)
    return " ".join(problems) or None


def valid_numbers(cls, stepped: tuple[str, ...] = (), **values) -> bool | str:
    """`validate_inputs`' answer for number inputs: True, or what is wrong."""
    return numbers_problem(cls, stepped, **values) or True


TEXT_INPUTS = (io.String.Input, io.Combo.Input)


def kind_problem(name: str, value, spec) -> str | None:
    """Why a linked `value` of a text, choice or on/off input is not of its kind, or None. A link
    carries any value its type check lets through (core's String to Combo makes any text a choice,
    a switch's matching output passes anything), and ComfyUI converts none of them."""
    if isinstance(spec, TEXT_INPUTS) and not isinstance(value, str):
        return f"{name}: expected text, found {type(value).__name__} {shown(value)}."
    if isinstance(spec, io.Boolean.Input) and not isinstance(value, (bool, numpy.bool_)):   # some packs give numpy's
        return f"{name}: expected true or false, found {type(value).__name__} {shown(value)}."
    return None


def checked_inputs(cls, arguments: dict):
    """First thing in `execute`, with its `locals()`: every number input of node `cls`, finite and
    in range (raises what `valid_numbers` would say), and every text, choice and on/off input of its
    kind. ComfyUI checks a widget's range at validation but not a linked value's (a primitive node,
    another node's output, an API prompt's link)."""
    schema = cls.define_schema()   # once: a loader's lists its folders
    inputs = {i.id: i for i in schema.inputs}
    numbers = {name: value for name, value in arguments.items()
               if isinstance(inputs.get(name), (io.Float.Input, io.Int.Input))}
    problems = [numbers_problem(cls, **numbers)]
    problems += [kind_problem(name, value, inputs[name]) for name, value in arguments.items()
                 if name in inputs and value is not None]
    problem = " ".join(p for p in problems if p)
    if problem:
        raise InputValueError(f"{schema.display_name}: {problem}")
