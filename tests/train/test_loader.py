import torch

from topoclass.data.loader import ResumableBatchSampler


def test_batches_cover_every_index_once_per_epoch():
    sampler = ResumableBatchSampler(torch.arange(10, 20), 3, seed=1)
    seen = torch.cat(list(sampler))
    assert sorted(seen.tolist()) == list(range(10, 20))
    assert len(sampler) == 4


def test_order_depends_on_epoch_and_seed():
    a = ResumableBatchSampler(torch.arange(50), 50, seed=1)
    first = next(iter(a))
    a.set_epoch(2)
    assert not torch.equal(next(iter(a)), first)
    b = ResumableBatchSampler(torch.arange(50), 50, seed=2)
    assert not torch.equal(next(iter(b)), first)


def test_restored_position_continues_exactly():
    reference = ResumableBatchSampler(torch.arange(100), 7, seed=3)
    reference.set_epoch(4)
    expected = list(reference)
    interrupted = ResumableBatchSampler(torch.arange(100), 7, seed=3)
    interrupted.set_epoch(4)
    taken = [batch for _, batch in zip(range(5), interrupted, strict=False)]
    state = interrupted.state_dict()
    resumed = ResumableBatchSampler(torch.arange(100), 7, seed=3)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b.tolist() for b in taken + rest] == [b.tolist() for b in expected]
