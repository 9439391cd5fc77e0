"""Streaming, parallel, resumable conversion of particle stacks to a Zarr particle store.

The metadata (poses, CTF, sources) is written first; images follow one store chunk at a time, by this
process, by worker processes (--workers) or by MPI ranks (each rank a disjoint set of chunks). A chunk
counts as written once its row of `chunk_stats` is; a rerun of the same command skips those, and the
store is marked complete only after every chunk is written and the normalisation is computed.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os
import time
import warnings

import numpy as np
import zarr
from tqdm import tqdm

from hetrec_dist import __version__
from hetrec_dist.data import store as particle_store
from hetrec_dist.data.atomic_files import full_disk_as_user_error, refuse_link
from hetrec_dist.data.checksums import sha256_file
from hetrec_dist.data.contrast import decide_contrast
from hetrec_dist.data.cryodrgn import read_cryodrgn
from hetrec_dist.data.cryosparc import read_cryosparc_cs
from hetrec_dist.data.folder_lock import FolderLock, empty_folder_but_its_lock, entries_but_the_lock
from hetrec_dist.data.particles import NO_CTF_ENVELOPE, InputOptions, check_stacks, open_stack
from hetrec_dist.data.relion import read_relion_star
from hetrec_dist.errors import InputWarning, UserError, warn_input
from hetrec_dist.physics.ctf import CTF_COLUMNS
from hetrec_dist.physics.fourier import fourier_crop
from hetrec_dist.physics.rotations import __doc__ as POSE_CONVENTION


@dataclasses.dataclass
class ConvertOptions(InputOptions):
    """InputOptions (what the readers take), and how to write the store."""
    box: int | None = None
    dtype: str = "float32"
    chunk_images: int | None = None
    contrast: str = "auto"
    workers: int = 1
    overwrite: bool = False


_INPUT_SPECIFIC_OPTIONS = {  # InputOptions field: (its flag, the input types whose reader takes it)
    "poses": ("--poses", (".mrcs", ".mrc", ".txt")),
    "ctf": ("--ctf", (".mrcs", ".mrc", ".txt")),
    "passthrough": ("--passthrough", (".cs",)),
    "optics_groups": ("--optics-group", (".star", ".cs")),
}


def _refuse_options_for_other_inputs(options, extension):
    """An option the input type does not read is refused, not ignored."""
    for name, (flag, extensions) in _INPUT_SPECIFIC_OPTIONS.items():
        if getattr(options, name) and extension not in extensions:
            raise UserError(f"{flag} does not apply to {extension} input (only to {', '.join(extensions)})")


def read_particle_table(input_path, options):
    """Dispatch on the input's extension: .star, .cs, or .mrcs/.txt with --poses and --ctf."""
    if not os.path.isfile(input_path):
        raise UserError(f"{input_path}: no such file")
    extension = os.path.splitext(input_path)[1].lower()
    readers = {".star": read_relion_star, ".cs": read_cryosparc_cs, ".mrcs": read_cryodrgn, ".mrc": read_cryodrgn,
               ".txt": read_cryodrgn}
    if extension not in readers:
        raise UserError(f"{input_path}: unknown input type {extension!r} (expected .star, .cs, .mrcs or .txt)")
    _refuse_options_for_other_inputs(options, extension)
    with np.errstate(all="ignore"):  # what a NaN or infinity in the input makes is reported by check_values
        table = readers[extension](input_path, options)
    if len(table) == 0:
        raise UserError(f"{input_path}: lists no particles")
    check_stacks(table)
    return table


def _output_box(table, options):
    box = options.box or table.box
    if box > table.box:
        raise UserError(f"--box {box}: the images are {table.box} pixels wide; --box only downsamples")
    if box != table.box and box % 2:
        raise UserError(f"--box {box}: Fourier cropping needs an even box (below {table.box})")
    if box % 2:
        warn_input(f"the images' box ({box}) is odd and training needs an even one: convert with --box {box - 1}")
    return box


def _recorded_options(options):
    """The InputOptions that change the store's metadata beyond its source files (which are recorded)."""
    return {"apix": options.apix, "voltage_kv": options.voltage_kv, "cs_mm": options.cs_mm,
            "amplitude_contrast": options.amplitude_contrast, "phase_shift_deg": options.phase_shift_deg,
            "optics_groups": sorted(options.optics_groups)}


def store_attrs(table, options, box, chunk_images, command, contrast):
    """Everything the store says about itself; also the fingerprint a resumed conversion must match.
    contrast: data.contrast.decide_contrast's (negate, record)."""
    invert, contrast_record = contrast
    return {
        "box": box,
        "pixel_size_A": table.pixel_size_A * table.box / box,
        "n_particles": len(table),
        "image_dtype": options.dtype,
        "chunk_images": chunk_images,
        "original_box": table.box,
        "original_pixel_size_A": table.pixel_size_A,
        "pixel_size_source": table.pixel_size_source,
        "input_options": _recorded_options(options),
        "invert_contrast": invert,
        "contrast": contrast_record,
        "ctf_columns": list(CTF_COLUMNS),
        "conventions": {
            "pose": POSE_CONVENTION.strip(),
            "shift": "shifts are pixels at this box; the particle centre lies at -shift from pixel D//2, "
                     "so translating an image by +shift centres it (RELION rlnOrigin, cryoDRGN trans x D)",
            "image": "images[i] is [row y, column x], origin at pixel D//2, as read from the stack "
                     "(negated if invert_contrast); particles are white (protein brighter than the solvent once "
                     "the CTF's sign is undone), see hetrec_dist.data.contrast",
            "ctf": "RELION's definition, see hetrec_dist.physics.ctf",
        },
        "sources": {
            "metadata": [{"path": p, "sha256": sha256_file(p)} for p in table.metadata_files],
            "stacks": [{"path": p, "bytes": os.path.getsize(p)} for p in table.stack_paths],
        },
        "command": command,
        "hetrec_version": __version__,
    }


def _write_metadata(group, table, box, pixel_size_A):
    ctf = table.ctf.copy()
    ctf[:, 0], ctf[:, 1] = box, pixel_size_A
    group["rotations"][:] = table.rotations.astype(np.float32)
    group["shifts"][:] = (table.shifts_px * box / table.box).astype(np.float32)
    group["ctf"][:] = ctf.astype(np.float32)
    group["optics_group"][:] = table.optics_group
    group["source_stack"][:] = table.stack_of
    group["source_index"][:] = table.image_in_stack
    group["source_row"][:] = table.source_rows
    group["half_set"][:] = 0 if table.half_set is None else table.half_set
    group["ctf_envelope"][:] = (np.broadcast_to(NO_CTF_ENVELOPE, (len(table), 2))
                                if table.ctf_envelope is None else table.ctf_envelope.astype(np.float32))


def _short(value, width=40):
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _what_changed(existing, attrs):
    """Why an unfinished store cannot be resumed by this command: each input file that changed (SHA-256 of
    metadata, size of stacks), appeared or went, and each other attribute that differs."""
    changes = []
    for kind, key, unit in (("metadata", "sha256", "SHA-256 {}"), ("stacks", "bytes", "{} bytes")):
        before = {s["path"]: s[key] for s in existing.get("sources", {}).get(kind, [])}
        now = {s["path"]: s[key] for s in attrs["sources"][kind]}
        changes += [f"{path} changed since (was {unit.format(_short(before[path], 15))}, "
                    f"now {unit.format(_short(value, 15))})"
                    for path, value in now.items() if path in before and before[path] != value]
        changes += [f"{path} is a new input" for path in now.keys() - before.keys()]
        changes += [f"{path} is no longer an input" for path in before.keys() - now.keys()]
    changes += [f"{key} was {_short(_decision(key, existing.get(key)))}, now {_short(_decision(key, value))}"
                for key, value in attrs.items()
                if key not in ("command", "sources") and _decision(key, existing.get(key)) != _decision(key, value)]
    return changes


def _decision(key, value):
    """What must match on resume: of the contrast record, the decision, not the measurement (which an image
    changed since, or one refused with NaN, moves a little)."""
    if key == "contrast" and isinstance(value, dict):
        return {name: value.get(name) for name in ("input", "stored", "decided_by")}
    return value


def _attrs_to_write(input_path, out, table, options, command, box, chunk_images):
    """(the unfinished store's attrs to resume, or None; the attrs this command writes), under the store's lock.
    UserError for a complete store, or one this command cannot resume."""
    existing = None
    if not options.overwrite and particle_store.is_store(out):
        existing = particle_store.open_store(out, mode="r", require_complete=False).attrs.asdict()
        if existing.get("complete"):
            raise UserError(f"{out} already exists and is complete; use --overwrite to replace it")
    contrast = decide_contrast(table, options.contrast, input_path,
                               lambda rows: read_task_images(_task(table, None, None, rows)))
    attrs = store_attrs(table, options, box, chunk_images, command, contrast)
    if existing is not None:
        changes = _what_changed(existing, attrs)
        if changes:
            raise UserError(f"{out} holds an unfinished conversion that this command cannot resume: "
                            f"{'; '.join(changes)}; use --overwrite to start again")
    return existing, attrs


def prepare_store(input_path, out, table, options, command):
    """Lock the store for this conversion and create it, empty it for --overwrite, or reopen an unfinished
    one made by the same command. Returns (its attrs, the FolderLock to hold until the store is finished);
    a store another conversion is writing is never touched."""
    box = _output_box(table, options)
    chunk_images = min(options.chunk_images or particle_store.default_chunk_images(box, options.dtype), len(table))
    refuse_link(out)
    if entries_but_the_lock(out) and not particle_store.is_store(out):
        raise UserError(f"{out} exists and is not a particle store; choose another output"
                        + ("" if options.overwrite else " or use --overwrite"))
    new_folder = not os.path.exists(out)
    lock = FolderLock(out, "particle store").acquire()
    try:
        existing, attrs = _attrs_to_write(input_path, out, table, options, command, box, chunk_images)
    except UserError:
        lock.release(remove=new_folder)
        if new_folder:
            os.rmdir(out)  # refused before anything but the lock was written
        raise
    if existing is not None:
        return existing, lock
    if options.overwrite:
        empty_folder_but_its_lock(out)
    try:
        group = particle_store.create_store(out, len(table), box, options.dtype, chunk_images, attrs)
    except OSError as err:
        raise UserError(f"{out}: cannot create the store ({err.strerror or err})") from None
    _write_metadata(group, table, box, attrs["pixel_size_A"])
    return attrs, lock


@dataclasses.dataclass
class ChunkTask:
    """What a worker needs to convert one images-chunk (small enough to send to another process)."""
    chunk: int
    start: int
    stack_paths: list
    stack_of: np.ndarray
    image_in_stack: np.ndarray


def _task(table, chunk, start, rows):
    """The ChunkTask that reads table `rows` (a slice or an index array), with only the stacks they use; chunk
    and start: the images-chunk it fills and its first particle (None for a read that fills none)."""
    stack_of = table.stack_of[rows]
    used = np.unique(stack_of)
    return ChunkTask(chunk, start, [table.stack_paths[s] for s in used],
                     np.searchsorted(used, stack_of).astype(np.int32), table.image_in_stack[rows])


def _chunk_tasks(table, chunk_images, chunks):
    for chunk in chunks:
        start = chunk * chunk_images
        yield _task(table, chunk, start, slice(start, min(start + chunk_images, len(table))))


def read_task_images(task):
    """The task's images as float32, one stack open at a time (so no memory map outlives the chunk)."""
    images = None
    for stack, path in enumerate(task.stack_paths):
        rows = np.flatnonzero(task.stack_of == stack)
        data = open_stack(path)
        block = np.asarray(data[task.image_in_stack[rows]], dtype=np.float32)
        del data
        if images is None:
            images = np.empty((len(task.stack_of), *block.shape[1:]), dtype=np.float32)
        images[rows] = block
        bad = ~np.isfinite(block).all(axis=(1, 2))
        if bad.any():
            raise UserError(f"{path}: image {task.image_in_stack[rows][bad][0] + 1} (1-based) has NaN or "
                            "infinite pixels")
    return images


def convert_chunk(store_path, task, box, dtype, invert_contrast):
    """Read, check, crop and write one chunk of images, then its stats row. Returns the image count."""
    images = fourier_crop(read_task_images(task), box)
    if invert_contrast:
        images = -images
    with np.errstate(over="ignore"):
        stored = images.astype(dtype)
    if not np.isfinite(stored).all():
        raise UserError(f"{task.stack_paths[0]}: image values up to {np.abs(images).max():.4g} do not fit in "
                        f"{dtype} (at most {np.finfo(dtype).max:.4g}); convert with --dtype float32 --overwrite")
    group = zarr.open_group(store_path, mode="r+")
    group["images"][task.start:task.start + len(stored)] = stored
    group["chunk_stats"][task.chunk] = particle_store.chunk_statistics(stored)
    return len(stored)


def _run_tasks(store_path, tasks, attrs, workers, progress):
    args = (attrs["box"], attrs["image_dtype"], attrs["invert_contrast"])
    if workers <= 1:
        for task in tasks:
            progress.update(convert_chunk(store_path, task, *args))
        return
    # spawn: zarr's I/O thread and forked children do not mix (docs/store_format.md)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(convert_chunk, store_path, task, *args) for task in tasks]
        try:
            for future in concurrent.futures.as_completed(futures):
                progress.update(future.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _finalize(store_path):
    group = zarr.open_group(store_path, mode="r+")
    if not particle_store.written_chunks(group).all():
        raise UserError(f"{store_path}: some image chunks were not written; rerun the same command")
    group.attrs.update({"normalization": particle_store.normalization(group["chunk_stats"][:])})
    group.attrs.update({particle_store.IDENTITY_ATTR: particle_store.compute_content_sha256(group), "complete": True})


def _read_warning_once(world, input_path, options):
    """read_particle_table; under MPI only rank 0 shows the input's warnings."""
    with warnings.catch_warnings():
        if not world.is_root:
            warnings.simplefilter("ignore", InputWarning)
        return read_particle_table(input_path, options)


def convert(input_path, out, options, world, command="hetrec convert", show_progress=True):
    """Convert INPUT to the store OUT (see module doc). world: the processes converting together (one, or
    the ranks of mpiexec, each calling this; distributed.mpi_world). A full disk is a UserError; the store
    stays unfinished and the same command resumes it once there is space."""
    with full_disk_as_user_error(out):
        return _convert(input_path, out, options, world, command, show_progress)


def _convert(input_path, out, options, world, command, show_progress):
    table = world.run_everywhere(lambda: _read_warning_once(world, input_path, options))
    held = []  # rank 0's lock on the store, until it is finished
    attrs = world.run_on_root(
        lambda: held.append(prepare_store(input_path, out, table, options, command)) or held[0][0])
    done = particle_store.written_chunks(zarr.open_group(out, mode="r"))
    chunk_sizes = particle_store.chunk_sizes(len(table), attrs["chunk_images"])
    pending = np.flatnonzero(~done)[world.rank::world.size]
    already = int(chunk_sizes[done].sum())
    tasks = _chunk_tasks(table, attrs["chunk_images"], pending)
    started = time.perf_counter()
    # Under MPI, rank 0's bar shows rank 0's share of the chunks.
    initial = already if world.size == 1 else 0
    with tqdm(total=initial + int(chunk_sizes[pending].sum()), initial=initial, unit="img", unit_scale=True,
              desc="convert" if world.size == 1 else f"convert (rank 0 of {world.size})",
              disable=not show_progress or world.rank != 0, dynamic_ncols=True) as progress:
        world.run_everywhere(lambda: _run_tasks(out, tasks, attrs, options.workers, progress))
    world.run_on_root(lambda: _finalize(out))
    if held:
        held[0][1].release(remove=True)
    elapsed = time.perf_counter() - started
    return {"n_particles": len(table), "seconds": elapsed, "resumed_from": already}
