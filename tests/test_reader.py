import json
import os

import numpy as np
import pytest
import torch

from conftest import run_cli

from hetrec_dist.data.reader import ChunkShuffledParticles, ParticleStore, ReadAhead


def epoch_batches(store, epoch, rank=0, world_size=1, workers=0, **kwargs):
    dataset = ChunkShuffledParticles(store, batch_size=16, rank=rank, world_size=world_size, seed=7, **kwargs)
    dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=workers,
                                         multiprocessing_context="spawn" if workers else None)
    return list(loader)


def test_ranks_and_workers_read_every_particle_once_per_epoch(sim_store):
    """2 ranks x 2 spawned DataLoader workers: disjoint, complete, and the data are the store's."""
    store = ParticleStore(sim_store)
    seen = []
    for rank in range(2):
        batches = epoch_batches(sim_store, epoch=1, rank=rank, world_size=2, workers=2)
        indices = np.concatenate([b["index"].numpy() for b in batches])
        seen.append(indices)
        dataset = ChunkShuffledParticles(sim_store, batch_size=16, rank=rank, world_size=2, seed=7)
        dataset.set_epoch(1)
        assert len(indices) == dataset.rank_particles()
        for batch in batches[:3]:
            rows = batch["index"].numpy()
            np.testing.assert_array_equal(batch["images"].numpy(), store.images[:][rows])
            np.testing.assert_array_equal(batch["rotations"].numpy(), store.group["rotations"][:][rows])
    assert not set(seen[0]) & set(seen[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(300))


def test_rank_shards_are_disjoint_equal_and_chunk_aligned_for_any_world_size(sim_store):
    """300 particles in chunks of 32: for W ranks, shards differ by at most one particle, cover the store, and
    a rank reads whole chunks except at most two."""
    for world_size in (1, 2, 3, 7):
        shards = []
        for rank in range(world_size):
            dataset = ChunkShuffledParticles(sim_store, batch_size=16, rank=rank, world_size=world_size, seed=3)
            dataset.set_epoch(2)
            pieces = dataset.rank_pieces()
            assert all(start // 32 == (stop - 1) // 32 for start, stop in pieces)
            partial = [p for p in pieces if p[1] - p[0] != min(32, 300 - p[0] // 32 * 32)]
            assert len(partial) <= 2
            shards.append(np.concatenate([np.arange(*p) for p in pieces]))
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
        np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(300))


def test_shuffling_is_seeded_per_epoch_and_chunk_aware(sim_store):
    first = np.concatenate([b["index"].numpy() for b in epoch_batches(sim_store, epoch=0)])
    again = np.concatenate([b["index"].numpy() for b in epoch_batches(sim_store, epoch=0)])
    second = np.concatenate([b["index"].numpy() for b in epoch_batches(sim_store, epoch=1)])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(np.sort(first), np.arange(300))
    # within a window of 4 chunks (128 particles) a batch only mixes particles of those chunks
    window_chunks = {c for c in first[:128] // 32}
    assert len(window_chunks) <= 4
    ordered = np.concatenate([b["index"].numpy() for b in epoch_batches(sim_store, epoch=0, shuffle=False)])
    np.testing.assert_array_equal(ordered, np.arange(300))


def test_drop_last_gives_only_full_batches(sim_store):
    batches = epoch_batches(sim_store, epoch=0, drop_last=True)
    assert all(len(b["index"]) == 16 for b in batches) and len(batches) == 300 // 16


def test_inspect_reports_the_store(sim_store):
    summary = json.loads(run_cli("inspect", sim_store, "--json").output)
    assert summary["complete"] and summary["n_particles"] == 300 and summary["box"] == 32
    assert summary["chunks_written"] == "10/10" and summary["compression"]["ratio"] > 1.0
    assert summary["optics_groups"] == {"1": 300}
    assert 0 <= summary["viewing_tilt_deg"][0] < summary["viewing_tilt_deg"][1] <= 180
    text = run_cli("inspect", sim_store).output
    assert "pixel_size_A" in text and os.path.basename(sim_store) in text


def test_reading_ahead_gives_the_same_batches_and_the_readers_errors_in_place(sim_store):
    data = ChunkShuffledParticles(sim_store, batch_size=48, seed=3)
    data.set_epoch(1)
    direct = list(data)
    ahead = list(ReadAhead(data))
    assert len(ahead) == len(direct) > 2
    for ours, theirs in zip(ahead, direct):
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    def failing():
        yield 1
        yield 2
        raise OSError("chunk 7 is damaged")

    def endless():
        while True:
            yield np.zeros(4)

    batches = ReadAhead(failing())
    assert next(batches) == 1 and next(batches) == 2
    with pytest.raises(OSError, match="chunk 7"):
        next(batches)
    endless = ReadAhead(endless(), depth=1)  # its thread waits on a full queue
    next(endless)
    endless.close()  # returns: the thread stops
    assert not endless._thread.is_alive()

