"""Specs stored as JSON in safetensors metadata (bundles, adapters, decoder add-ons): one way to write
and read them, and to check the sizes and numbers they state (`expect_int`, `expect_number`)."""

from __future__ import annotations

import json
from dataclasses import asdict

from .limits import is_finite_number

MAX_WIDTH = 1 << 16   # channels, heads, embedding widths a spec states: SDXL's widest layer is 1280


class MetadataSpec:
    """Mixin for frozen dataclasses whose fields are JSON values. Subclasses set METADATA_KEY and
    FORMAT_ERROR; their __post_init__ validates and raises FORMAT_ERROR with what it expected."""

    METADATA_KEY: str
    FORMAT_ERROR: type[ValueError]

    @classmethod
    def migrate(cls, data: dict) -> dict:
        """The fields of an older version of the spec, brought to the current one (files keep loading)."""
        return data

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "file"):
        error = cls.FORMAT_ERROR
        try:
            data = json.loads(text)
        except ValueError as e:   # JSONDecodeError, or an integer of more digits than Python converts
            raise error(f"{source}: '{cls.METADATA_KEY}' metadata is not valid JSON ({e}).") from None
        except (RecursionError, TypeError):   # nested beyond Python's limit, or not text
            raise error(f"{source}: '{cls.METADATA_KEY}' metadata is not a JSON text this pack can read.") from None
        if not isinstance(data, dict):
            raise error(f"{source}: expected a JSON object in '{cls.METADATA_KEY}', found {type(data).__name__}.")
        try:
            data = cls.migrate(data)
        except error as e:
            raise error(f"{source}: {e}") from None
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:   # an older spec of the wrong shape
            raise error(f"{source}: malformed '{cls.METADATA_KEY}' spec ({type(e).__name__}: {e}).") from None
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise error(f"{source}: unknown fields {unknown} in '{cls.METADATA_KEY}'; expected only "
                        f"{sorted(cls.__dataclass_fields__)} (a newer pack may read it).")
        try:
            return cls(**data)
        except TypeError as e:
            raise error(f"{source}: incomplete '{cls.METADATA_KEY}' spec ({e}).") from None
        except error as e:
            raise error(f"{source}: {e}") from None
        except (AttributeError, KeyError, IndexError, ValueError) as e:   # a field of the wrong JSON type
            raise error(f"{source}: malformed '{cls.METADATA_KEY}' spec ({type(e).__name__}: {e}).") from None


def expect_int(where: str, value, error: type[Exception], minimum: int = 1, maximum: int = 1 << 16):
    """A size or count from a spec: an integer (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise error(f"{where}: expected an integer from {minimum} to {maximum}, found {json.dumps(value)[:40]}.")


def expect_number(where: str, value, error: type[Exception]):
    """A float from a spec: a finite number."""
    if not is_finite_number(value):
        raise error(f"{where}: expected a finite number, found {json.dumps(value)[:40]}.")
