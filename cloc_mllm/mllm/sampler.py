"""LLaVA's ``group_by_modality_length``: batches hold only image or only text-only records, of similar length.

Mixing modalities in one step wastes padding and, under ZeRO-3, lets ranks disagree on whether the vision
tower runs at all (its parameter gathers would then hang). Groups are sized ``world_size * batch_size``
so every rank's slice of a step has the same modality.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def modality_grouped_indices(
    lengths: Sequence[int], group_size: int, generator: torch.Generator
) -> list[int]:
    """A permutation of ``range(len(lengths))`` made of same-modality groups of ``group_size``.

    ``lengths``: positive for image records, negative for text-only ones (LLaVA's convention). Each group
    is sorted longest first; the groups come in random order; leftovers of both modalities share the
    last group.
    """
    groups: list[list[int]] = []
    leftovers: list[int] = []
    for modality in (1, -1):
        members = [i for i, n in enumerate(lengths) if n * modality > 0]
        members = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
        full = len(members) - len(members) % group_size
        for start in range(0, full, group_size):
            groups.append(sorted(members[start : start + group_size], key=lambda i: -abs(lengths[i])))
        leftovers += members[full:]
    order = torch.randperm(len(groups), generator=generator).tolist()
    indices = [i for g in order for i in groups[g]]
    return indices + sorted(leftovers, key=lambda i: -abs(lengths[i]))


class ModalityLengthGroupedSampler(Sampler[int]):
    """Sampler over ``modality_grouped_indices``; a new permutation each epoch (``set_epoch``)."""

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.group_size, generator))
