"""The image-model families the pack knows, as small types. A family's `name` is what adapter and
bundle specs store, so files keep reading the same strings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str                    # as specs write it, e.g. "SD1.x"
    vae_factor: int = 8          # image pixels per latent pixel
    latent_channels: int = 4
    concat_image: bool = False   # the low-resolution image is concatenated to the latent (SD x4 upscaler)

    def __str__(self) -> str:
        return self.name


SD1 = Family("SD1.x")
SD2 = Family("SD2.x")
SDXL = Family("SDXL")
SD_X4_UPSCALER = Family("SD-x4-upscaler", vae_factor=4, concat_image=True)
FAMILIES = (SD1, SD2, SDXL, SD_X4_UPSCALER)        # what temporal adapters are made for
BUNDLE_FAMILIES = (SD1, SD_X4_UPSCALER)            # what bundles can state
FAMILY_NAMES = tuple(f.name for f in FAMILIES)
BUNDLE_FAMILY_NAMES = tuple(f.name for f in BUNDLE_FAMILIES)


def family_named(name: str) -> Family:
    """The pack's family of that name; any other name is a family the pack does not know (its
    attributes are the defaults), kept so messages can name it."""
    return next((f for f in FAMILIES if f.name == name), Family(name))
