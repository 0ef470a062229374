"""The resumable data order: every sample once per epoch, the same order after a resume, any world size."""

from __future__ import annotations

import pytest
import torch

from topoclass.data.loader import ResumableSampler, ordered_batches


def epoch_steps(sampler: ResumableSampler) -> list[tuple[list[int], list[float] | None]]:
    steps = []
    while not sampler.epoch_done:
        rows, weight = sampler.next_rows()
        steps.append((rows.tolist(), None if weight is None else weight.tolist()))
        sampler.advance()
    return steps


def test_steps_cover_every_index_once_per_epoch():
    sampler = ResumableSampler(torch.arange(10, 20), 3, seed=1)
    seen = [row for rows, _ in epoch_steps(sampler) for row in rows]
    assert sorted(seen) == list(range(10, 20)) and len(sampler) == 4


def test_order_depends_on_epoch_and_seed():
    first = ResumableSampler(torch.arange(50), 50, seed=1).next_rows()[0]
    later = ResumableSampler(torch.arange(50), 50, seed=1)
    later.set_epoch(2)
    assert not torch.equal(later.next_rows()[0], first)
    assert not torch.equal(ResumableSampler(torch.arange(50), 50, seed=2).next_rows()[0], first)


def test_restored_position_continues_exactly():
    reference = ResumableSampler(torch.arange(100), 7, seed=3)
    reference.set_epoch(4)
    expected = epoch_steps(reference)
    interrupted = ResumableSampler(torch.arange(100), 7, seed=3)
    interrupted.set_epoch(4)
    taken = []
    for _ in range(5):
        taken.append(interrupted.next_rows()[0].tolist())
        interrupted.advance()
    resumed = ResumableSampler(torch.arange(100), 7, seed=3)
    resumed.load_state_dict(interrupted.state_dict())
    assert taken + [rows for rows, _ in epoch_steps(resumed)] == [rows for rows, _ in expected]


@pytest.mark.parametrize(("count", "world"), [(23, 2), (17, 3), (5, 4), (64, 2)])
def test_processes_share_each_step_without_skipping_or_repeating(count, world):
    samplers = [
        ResumableSampler(torch.arange(count), 4, seed=5, world_size=world, rank=r) for r in range(world)
    ]
    seen: list[int] = []
    while not samplers[0].epoch_done:
        shares = [sampler.next_rows() for sampler in samplers]
        assert len({len(rows) for rows, _ in shares}) == 1  # every process runs the same number of rows
        for rows, weight in shares:
            assert weight is not None
            seen += [row for row, w in zip(rows.tolist(), weight.tolist(), strict=True) if w == 1.0]
        for sampler in samplers:
            sampler.advance()
    assert sorted(seen) == list(range(count))  # once each: padding rows have weight 0


def test_the_position_is_a_global_sample_count_that_survives_a_change_of_world_size():
    single = ResumableSampler(torch.arange(40), 8, seed=9)
    order = single.order(1).tolist()
    pair = [ResumableSampler(torch.arange(40), 4, seed=9, world_size=2, rank=r) for r in range(2)]
    for sampler in pair:
        sampler.advance()  # one step of 2 x 4 samples
    state = pair[0].state_dict()
    assert state["position"] == 8
    single.load_state_dict(state)
    assert single.next_rows()[0].tolist() == order[8:16]  # the same global order goes on


def test_accumulation_takes_several_batches_per_step():
    sampler = ResumableSampler(torch.arange(30), 4, seed=0, accumulate_steps=3)
    assert sampler.step_size == 12 and len(sampler) == 3
    assert len(sampler.next_rows()[0]) == 12


def test_evaluation_batches_respect_an_atom_budget():
    atoms = torch.tensor([5, 5, 5, 20, 1, 1])
    batches = [b.tolist() for b in ordered_batches(torch.arange(6), 10, atoms=atoms, max_atoms=10)]
    assert batches == [[0, 1], [2], [3], [4, 5]]  # a material larger than the budget goes alone
    assert [b.tolist() for b in ordered_batches(torch.arange(5), 2)] == [[0, 1], [2, 3], [4]]
