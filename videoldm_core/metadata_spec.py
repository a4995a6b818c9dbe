"""Specs stored as JSON in safetensors metadata (bundles, adapters): one way to write and read them."""

from __future__ import annotations

import json
from dataclasses import asdict


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
        except json.JSONDecodeError as e:
            raise error(f"{source}: '{cls.METADATA_KEY}' metadata is not valid JSON ({e}).") from None
        if not isinstance(data, dict):
            raise error(f"{source}: expected a JSON object in '{cls.METADATA_KEY}', found {type(data).__name__}.")
        data = cls.migrate(data)
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
