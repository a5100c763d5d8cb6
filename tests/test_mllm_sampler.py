import torch

from cloc_mllm.mllm.sampler import ModalityLengthGroupedSampler, modality_grouped_indices


def test_groups_are_single_modality_and_sorted():
    lengths = [5, -3, 9, -7, 2, 8, -1, 4, -6, 3, -2, 7]  # 7 image records, 5 text-only
    order = modality_grouped_indices(lengths, group_size=2, generator=torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(len(lengths)))
    full_groups = [order[i : i + 2] for i in range(0, 10, 2)]  # 3 image groups + 2 text groups
    for group in full_groups:
        signs = {lengths[i] > 0 for i in group}
        assert len(signs) == 1
        assert abs(lengths[group[0]]) >= abs(lengths[group[1]])
    assert {lengths[i] > 0 for i in order[10:]} == {True, False}  # leftovers share the last group


def test_sampler_reshuffles_per_epoch():
    sampler = ModalityLengthGroupedSampler([1, 2, 3, 4, 5, 6, 7, 8] * 4, group_size=4, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == sorted(sampler) and first != list(sampler) and len(sampler) == 32
