"""Which clips each step trains on: a seeded permutation per epoch, read at global positions.

Step k's global batch is positions k·G … k·G + G − 1 (G = batch per rank × ranks) of an endless
sequence of epoch permutations, and rank r takes its slice. Any step's batch is computed without
touching earlier ones (exact resume), and splitting a global batch over ranks changes nothing about
which clips and which per-clip seeds it holds (DDP equals one process at the same global batch).
An `augment(item, generator)` (e.g. crops.LatentAugmentation) draws from a generator seeded by the
clip's seed, so augmentation changes from step to step and stays as exact.
"""

from __future__ import annotations

import torch

from .objective import TrainingError


class StepBatches:
    def __init__(self, dataset, batch_size: int, seed: int = 0, collate=None, augment=None):
        if len(dataset) == 0:
            raise TrainingError("expected at least one training clip, found an empty dataset.")
        if batch_size < 1:
            raise TrainingError(f"expected a batch size of at least 1, found {batch_size}.")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.collate = collate or stack_items
        self.augment = augment
        self._permutations: dict[int, list[int]] = {}   # the last epoch read and the one before it

    def _permutation(self, epoch: int) -> list[int]:
        # kept per instance: a cache on the method would hold the instance, and so its dataset (the
        # latents, the model whose latent format it applies), for the life of the process
        if epoch not in self._permutations:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = torch.randperm(len(self.dataset), generator=g).tolist()
        return self._permutations[epoch]

    def positions(self, step: int, rank: int = 0, world_size: int = 1) -> list[int]:
        start = (step * world_size + rank) * self.batch_size
        return list(range(start, start + self.batch_size))

    def __call__(self, step: int, rank: int = 0, world_size: int = 1) -> dict:
        n = len(self.dataset)
        positions = self.positions(step, rank, world_size)
        items = [self.dataset[self._permutation(p // n)[p % n]] for p in positions]
        seeds = [clip_seed(self.seed, p) for p in positions]
        if self.augment is not None:
            items = [self.augment(item, augmentation_generator(s)) for item, s in zip(items, seeds)]
        batch = self.collate(items)
        batch["sample_seeds"] = torch.tensor(seeds)
        return batch


def clip_seed(seed: int, position: int) -> int:
    """The seed of the noise, timestep and masks drawn for the clip at a global position."""
    return (seed * 0x9E3779B1 + position * 0x85EBCA6B + 1) % (2 ** 63 - 1)


def augmentation_generator(sample_seed: int) -> torch.Generator:
    """The generator of a clip's augmentation: from its seed, but a stream apart from the one the
    objectives seed with it (noise, timestep, masks)."""
    return torch.Generator().manual_seed((sample_seed * 0x2545F491 + 0x632BE5AB) % (2 ** 63 - 1))


def stack_items(items: list[dict]) -> dict:
    """Tensors stacked along a new batch dimension; other values listed."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if all(v is None for v in values):
            batch[key] = None
        elif all(isinstance(v, torch.Tensor) for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch
