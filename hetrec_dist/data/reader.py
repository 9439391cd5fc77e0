"""Reading a particle store for training: whole chunks at a time, shuffled in memory.

The particles are the store's, or a subset of its rows (data.subset): a chunk then gives only its chosen
particles, though it is read whole. An epoch permutes the chunk order (seeded by seed and epoch); rank r of W
takes the particles at positions [r N / W, (r+1) N / W) of that chunk sequence (so shards are disjoint, cover
the store and differ in size by at most one particle; a rank reads at most two chunks partly). Its pieces of
chunks are dealt to DataLoader workers round-robin; each reader loads a window of pieces, shuffles their
particles together and yields batches. Use the DataLoader with batch_size=None and, with workers,
multiprocessing_context="spawn" or "forkserver": every worker opens the store itself (zarr's I/O thread does
not survive fork).
"""

import queue
import threading

import numpy as np
import torch

from hetrec_dist.data.particles import NO_CTF_ENVELOPE, check_ctf_envelope, ctf_checks, is_rotation
from hetrec_dist.data.store import chunk_sizes, n_chunks, open_store, verify_chunk
from hetrec_dist.errors import UserError

BATCH_FIELDS = ("rotations", "shifts", "ctf", "optics_group")


class DamagedChunk(UserError):
    """An images-chunk that cannot be read or does not hold what its conversion recorded; `reason` says which."""

    def __init__(self, store, chunk, reason):
        start, stop = store.chunk_range(chunk)
        self.reason = reason
        super().__init__(f"{store.path}: images chunk {chunk} (particles {start} to {stop - 1}) {reason}; the store "
                         "is damaged: convert it again with --overwrite (`hetrec inspect --verify` lists every "
                         "damaged chunk)")


class ParticleStore:
    """A complete particle store, read by range. Images come back as float32. Every images-chunk read is
    checked against the statistics its conversion recorded (store.verify_chunk): a damaged or missing chunk
    is a UserError naming the chunk and its particles, never data."""

    def __init__(self, path, require_complete=True):
        self.path = path
        self.group = open_store(path, require_complete=require_complete)
        self.attrs = self.group.attrs.asdict()
        self.images = self.group["images"]
        self.n_particles, self.box = self.images.shape[0], self.images.shape[-1]
        self.pixel_size_A = self.attrs["pixel_size_A"]
        self.chunk_images = self.images.chunks[0]
        self.n_chunks = n_chunks(self.n_particles, self.chunk_images)
        self.chunk_stats = self.group["chunk_stats"][:]
        self._fields = None

    @property
    def fields(self):
        """The BATCH_FIELDS of every particle, read whole on first use (about 84 bytes a particle): a read of a
        few rows costs zarr about a millisecond, which made up half of a batch's reading."""
        if self._fields is None:
            fields = {name: self.group[name][:] for name in BATCH_FIELDS}
            if "ctf_envelope" in self.group:  # only where it changes the CTF: plain stores pay nothing
                envelope = self.group["ctf_envelope"][:]
                check_ctf_envelope(envelope, self.path, "the store is damaged: convert it again with --overwrite")
                if not (envelope == NO_CTF_ENVELOPE).all():
                    fields["ctf_envelope"] = envelope
            self.check_fields(fields)
            self._fields = fields
        return self._fields

    def check_fields(self, fields):
        """A UserError unless every particle's pose is a rotation and its CTF values are in their ranges, as
        conversion left them (data.particles.check_values): a lost chunk of these arrays reads as zeros."""
        remedy = "the store is damaged: convert it again with --overwrite"
        bad = np.flatnonzero(~is_rotation(fields["rotations"]))
        if bad.size:
            raise UserError(f"{self.path}: the pose of particle {bad[0]} ({bad.size} in all) is not a rotation; "
                            f"{remedy}")
        for column, name, ok, must in ctf_checks(fields["ctf"]):
            bad = np.flatnonzero(~ok)
            if bad.size:
                raise UserError(f"{self.path}: the {name} of particle {bad[0]} ({bad.size} in all) is "
                                f"{fields['ctf'][bad[0], column]:g}, not {must}; {remedy}")

    def chunk_range(self, chunk):
        """(first particle, last particle + 1) of an images-chunk."""
        start = chunk * self.chunk_images
        return start, min(start + self.chunk_images, self.n_particles)

    def verified_chunk(self, chunk):
        """The stored values of an images-chunk (its dtype), checked; a DamagedChunk error if it is damaged or
        missing."""
        try:
            stored = self.images[slice(*self.chunk_range(chunk))]
        except Exception as err:  # zarr and the codecs raise many types for a damaged chunk
            raise DamagedChunk(self, chunk, f"cannot be read ({type(err).__name__})") from None
        if not verify_chunk(stored, self.chunk_stats[chunk]):
            raise DamagedChunk(self, chunk, "does not hold what was written (its file is damaged or missing)")
        return stored

    def read(self, start, stop):
        """Particles start..stop-1 as numpy arrays: index, images and the BATCH_FIELDS. Whole chunks are read
        and checked."""
        first, last = start // self.chunk_images, (stop - 1) // self.chunk_images
        chunks = [self.verified_chunk(chunk) for chunk in range(first, last + 1)]
        offset = start - first * self.chunk_images
        images = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        batch = {"index": np.arange(start, stop, dtype=np.int64),
                 "images": np.asarray(images[offset:offset + stop - start], dtype=np.float32)}
        for name, values in self.fields.items():
            batch[name] = values[start:stop]
        return batch

    def read_rows(self, rows):
        """The particles at `rows` (sorted store rows, all in one images-chunk) as read() gives them."""
        if rows[-1] - rows[0] + 1 == len(rows):  # a run of rows: slices, not gathered copies
            return self.read(int(rows[0]), int(rows[-1]) + 1)
        chunk = int(rows[0]) // self.chunk_images
        stored = self.verified_chunk(chunk)
        batch = {"index": np.asarray(rows, np.int64),
                 "images": np.asarray(stored[rows - chunk * self.chunk_images], dtype=np.float32)}
        for name, values in self.fields.items():
            batch[name] = values[rows]
        return batch


def _concat(batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _take(batch, rows):
    return {k: v[rows] for k, v in batch.items()}


def _to_torch(batch):
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


class ChunkShuffledParticles(torch.utils.data.IterableDataset):
    """Batches (dicts of tensors) of this rank's shard of a particle store; see the module doc."""

    def __init__(self, path, batch_size, rank=0, world_size=1, seed=0, shuffle=True, window_chunks=4,
                 drop_last=False, rows=None):
        """rows: sorted store rows of a subset (data.subset), or None for every particle."""
        self.path, self.batch_size = path, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.window_chunks, self.drop_last = seed, shuffle, window_chunks, drop_last
        self.epoch = 0
        self._store = None
        probe = ParticleStore(path)  # fail early, in the caller, on a bad store
        self.n_chunks, self.chunk_images = probe.n_chunks, probe.chunk_images
        self.rows = None if rows is None else np.asarray(rows, np.int64)
        if self.rows is None:
            self.n_particles = probe.n_particles
            self._per_chunk = chunk_sizes(self.n_particles, self.chunk_images)
        else:
            self.n_particles = len(self.rows)
            self._per_chunk = np.bincount(self.rows // self.chunk_images, minlength=self.n_chunks)
        self._chunk_start = np.concatenate([[0], np.cumsum(self._per_chunk)[:-1]])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def set_epoch(self, epoch):
        self.epoch = epoch

    def rank_pieces(self):
        """This rank's shard this epoch: (start, stop) ranges of positions in the particle list (store rows, or
        positions in `rows` for a subset), each inside one chunk, in reading order."""
        order = np.arange(self.n_chunks)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_chunks)
        begin = self.rank * self.n_particles // self.world_size
        end = (self.rank + 1) * self.n_particles // self.world_size
        pieces, position = [], 0
        for chunk in order:
            size = self._per_chunk[chunk]
            first, last = max(begin, position), min(end, position + size)
            if first < last:
                offset = self._chunk_start[chunk] - position
                pieces.append((first + offset, last + offset))
            position += size
        return pieces

    def rank_particles(self):
        """How many particles this rank reads this epoch."""
        return sum(stop - start for start, stop in self.rank_pieces())

    def _read(self, start, stop):
        if self.rows is None:
            return self._store.read(int(start), int(stop))
        return self._store.read_rows(self.rows[start:stop])

    def _worker_pieces(self):
        info = torch.utils.data.get_worker_info()
        pieces = self.rank_pieces()
        return (pieces, 0) if info is None else (pieces[info.id::info.num_workers], info.id)

    def __iter__(self):
        if self._store is None:
            self._store = ParticleStore(self.path)
        pieces, worker = self._worker_pieces()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        pending = None
        for first in range(0, len(pieces), self.window_chunks):
            # the window's particles in reading order: last window's remainder, then this window's, shuffled;
            # gathered once a batch (each copy of a window of images cost as much as a read)
            read = [self._read(*piece) for piece in pieces[first:first + self.window_chunks]]
            n_pending = 0 if pending is None else len(pending["index"])
            window = _concat(read if pending is None else [pending, *read])
            n_read = len(window["index"]) - n_pending
            order = rng.permutation(n_read) if self.shuffle else np.arange(n_read)
            order = np.concatenate([np.arange(n_pending), n_pending + order])
            n_full = len(order) // self.batch_size * self.batch_size
            for start in range(0, n_full, self.batch_size):
                yield _to_torch(_take(window, order[start:start + self.batch_size]))
            pending = _take(window, order[n_full:])
        if pending is not None and len(pending["index"]) and not self.drop_last:
            yield _to_torch(pending)


class ReadAhead:
    """An iterator over `batches` that reads the next `depth` batches in a background thread while the caller
    works on the current one: reading (decompressing and checking chunks, copying images) releases the GIL,
    so it overlaps the training step. The batches and their order are the iterable's own; an exception the
    reading raises comes out of next() where that batch would have. close() stops the thread."""

    def __init__(self, batches, depth=2):
        self._queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(iter(batches),), daemon=True,
                                        name="hetrec-read-ahead")
        self._thread.start()

    def _read(self, batches):
        try:
            for batch in batches:
                if not self._put((batch, None)):
                    return
        except BaseException as err:  # handed to the consumer, which raises it
            self._put((None, err))
            return
        self._put((_END, None))

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        batch, err = self._queue.get()
        if err is not None:
            self.close()
            raise err
        if batch is _END:
            self.close()
            raise StopIteration
        return batch

    def close(self):
        self._stop.set()
        self._thread.join()


_END = object()
