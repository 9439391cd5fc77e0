"""hetrec explore: a trained run's latent space in the browser (explore.app), served from this process."""

import ipaddress
import os

import click

from hetrec_dist.cli.command_line import moved_store_option

KMEANS_WITHOUT_ANALYSIS = 10  # clusters to colour by where the run has no `hetrec analyze` of its latents


@click.command("explore")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--port", type=click.IntRange(0, 65535), default=8050, show_default=True,
              help="Port to listen on (0: any free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. This machine only by default; any other address (e.g. 0.0.0.0) is "
                   "reachable from the network, so the page then needs a token, printed in its address.")
@click.option("--gt", "gt_dir", type=click.Path(exists=True, file_okay=False),
              help="Ground truth of a simulated dataset: also colour the particles by the true coordinate (or state).")
@click.option("--checkpoint", type=click.Path(exists=True), help="A checkpoint file (default: the run's last).")
@moved_store_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Where saved selections and paths go (default: RUN/explore).")
@click.option("--device", default="auto", show_default=True)
@click.option("--umap/--no-umap", "with_umap", default=True, show_default=True,
              help="A UMAP view beside PCA (read from `hetrec analyze` where it made one, else computed).")
def command(run, port, host, gt_dir, checkpoint, store, out_dir, device, with_umap):
    """Serve RUN's latent space as a page: the particles in PCA and UMAP views, coloured by cluster, defocus,
    pose, half-set or the truth; a click shows the map at a particle's latent (surface and sections, to
    download as .mrc); lasso a region to save its particles as an index file and a STAR/.cs subset; play the maps
    along a path between two particles. Stop it with Ctrl-C."""
    import secrets

    from hetrec_dist.explore.app import build_app, make_server

    token = None if _is_loopback(host) else secrets.token_urlsafe(24)
    _check_address(host, port)  # before the minutes a large run takes to load
    explorer = load_explorer(run, checkpoint, store, gt_dir, device, out_dir, with_umap)
    if not _writable(explorer.out_dir):
        click.echo(f"Warning: cannot write in {explorer.out_dir}: the page can show everything but cannot save "
                   "selections or paths; give --out FOLDER to save them", err=True)
    server = make_server(build_app(explorer, token), host, port)
    shown_host = _hostname() if host in ("0.0.0.0", "::") else host
    address = f"http://{shown_host}:{server.server_port}/" + (f"?token={token}" if token else "")
    click.echo(f"hetrec explore: {explorer.n_particles:,} particles of {run}; open {address}", err=True)
    if token:
        click.echo(f"listening on {host}, reachable from the network: the page needs the token above", err=True)
    else:
        click.echo(f"from another machine: ssh -N -L {server.server_port}:127.0.0.1:{server.server_port} "
                   f"{os.environ.get('USER', 'you')}@{_hostname()}, then open the address there (Ctrl-C stops)",
                   err=True)
    try:
        server.serve_forever()  # werkzeug's returns on Ctrl-C
    except KeyboardInterrupt:
        pass
    click.echo("hetrec explore: stopped", err=True)


def _writable(folder):
    """Whether `folder`, or the nearest folder above it that exists (where it would be made), takes new files."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _hostname():
    import socket

    return socket.gethostname()


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_address(host, port):
    """One-line errors for a --host that is no address of this machine and a --port that is taken (werkzeug
    reports both as a taken port)."""
    import errno
    import socket

    from hetrec_dist.errors import UserError

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {host}: not an address or a name this machine knows") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use (another explore?); give another --port") from None
            raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def load_explorer(run, checkpoint=None, store=None, gt_dir=None, device="auto", out_dir=None, with_umap=True):
    """An explore.session.Explorer of a run: its model, latents (z.npy, or computed in memory from the last
    checkpoint of a run still training), PCA and UMAP views, colourings and what a subset file needs."""
    import numpy as np

    from hetrec_dist.analysis.analyze import SIGNAL_FILE, can_umap
    from hetrec_dist.analysis.latent import kmeans, pca
    from hetrec_dist.cli.run_files import (
        run_checkpoint,
        run_model,
        run_particle_records,
        run_rows,
        run_store,
        run_store_path,
    )
    from hetrec_dist.data.folder_lock import writer_of
    from hetrec_dist.data.run_folder import RunFolder
    from hetrec_dist.explore.session import Colouring, Explorer, RunRecords
    from hetrec_dist.train.ctf_refinement import checkpoint_ctf
    from hetrec_dist.train.pose_refinement import checkpoint_poses

    training = writer_of(run)  # before run_checkpoint holds the run for reading (folder_lock.writer_of)
    state = run_checkpoint(run, checkpoint)
    model = run_model(run, checkpoint, device, state)
    group = run_store(run, state, store)
    rows = run_rows(run, state, group)
    z, record, latents_note = _latents(run, state, model, group, store, rows, training or checkpoint)
    header = [f"{os.path.abspath(run)}",
              f"{len(z):,} particles, latent dimension {z.shape[1]}, model of epoch {state['epoch']}"
              f"{', half-sets' if model.shape.n_half_sets == 2 else ''}; box {model.shape.box}, "
              f"{model.pixel_size_A:.3g} Å/px. {latents_note}"]
    if state.get("focus_mask_sha256"):
        header.append(f"Focused run: the latent space describes what varies inside "
                      f"{RunFolder(os.path.abspath(run)).focus_mask} only; outside it every map is the mean.")
    if training:
        header.append(f"The run is still training ({training}): this is its last complete checkpoint, of epoch "
                      f"{state['epoch']}; start explore again for later epochs.")
    fitted = pca(z)
    projected = fitted.project(z)
    views = {"PCA": np.column_stack([projected[:, 0], projected[:, 1] if z.shape[1] > 1 else np.zeros(len(z))])}
    analysis = _current_analysis(run, record)
    if with_umap and can_umap(z):
        views["UMAP"] = _umap_view(z, analysis)
    colourings = {}
    if analysis is not None:
        colourings[f"k-means cluster (analyze.{analysis['k']})"] = Colouring(
            np.load(os.path.join(analysis["folder"], "kmeans_labels.npy")).astype(float), "categorical")
        signal = os.path.join(analysis["folder"], SIGNAL_FILE)
        if os.path.isfile(signal):  # low: junk
            colourings["signal score (analyze)"] = Colouring(np.load(signal).astype(float))
    else:
        k = min(KMEANS_WITHOUT_ANALYSIS, len(z))
        colourings[f"k-means cluster (k = {k})"] = Colouring(kmeans(z, k)[1].astype(float), "categorical")
    source_rows, half_sets = run_particle_records(run, state, group)
    records = RunRecords(group.attrs.asdict(), source_rows, half_sets, checkpoint_poses(state, group), rows,
                         checkpoint_ctf(state, group))
    colourings.update(_particle_colourings(group, records, gt_dir))
    return Explorer(model, z, views, colourings, records, out_dir or RunFolder(run).explorer, header,
                    store_path=store or run_store_path(run))


def _latents(run, state, model, group, store, rows, other_checkpoint):
    """(z, its record or None, a line saying where they come from): RUN/z.npy; for a run still training whose
    z.npy is not of its last checkpoint, or a --checkpoint of an earlier epoch (other_checkpoint), the latents
    computed now with that checkpoint's model (not saved: z.npy stays the run's)."""
    from hetrec_dist.cli.run_files import run_latents, run_store_path
    from hetrec_dist.cli.volume import refined_shift_corrections
    from hetrec_dist.errors import UserError
    from hetrec_dist.train.inference import embed

    try:
        z, record = run_latents(run, state)
        return z, record, "Latents: z.npy."
    except UserError:
        if not other_checkpoint:
            raise
    path = store or run_store_path(run)
    click.echo(f"z.npy is not of this checkpoint: computing the latents of epoch {state['epoch']} with its model "
               "(not saved)", err=True)
    z = embed(model, path, shift_corrections=refined_shift_corrections(state, path, run_store_path(run)), rows=rows)
    return z, None, f"Latents: computed at start-up with the epoch-{state['epoch']} model."


def _current_analysis(run, record):
    """The newest RUN/analyze.K of the current latents ({'folder', 'k', 'summary'}), or None."""
    import json

    found = []
    for name in os.listdir(run):
        folder = os.path.join(run, name)
        if not (name.startswith("analyze.") and name[8:].isdigit() and os.path.isdir(folder)):
            continue
        try:
            with open(os.path.join(folder, "summary.json")) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            continue
        analysed = (summary.get("latents") or {}).get("z_sha256")
        current = (record or {}).get("z_sha256")
        if current and analysed == current and os.path.isfile(os.path.join(folder, "kmeans_labels.npy")):
            found.append((os.path.getmtime(folder), {"folder": folder, "k": summary["k"], "summary": summary}))
    return max(found, key=lambda item: item[0])[1] if found else None


def _umap_view(z, analysis):
    """Every particle's UMAP place: `hetrec analyze`'s (umap.npz) where it has them, else from a UMAP of a
    sample computed now (analysis.analyze.umap_of_sample, analysis.latent.places_from_sample)."""
    import numpy as np

    from hetrec_dist.analysis.analyze import umap_of_sample
    from hetrec_dist.analysis.latent import places_from_sample

    saved = analysis and os.path.join(analysis["folder"], "umap.npz")
    if saved and os.path.isfile(saved):
        with np.load(saved, allow_pickle=False) as data:
            if "every_particle" in data.files and len(data["every_particle"]) == len(z):
                return data["every_particle"]
            rows, xy = data["rows"], data["xy"]
    else:
        click.echo(f"computing a UMAP of {min(len(z), 50_000):,} particles (`hetrec analyze` saves one for next "
                   "time)", err=True)
        rows, xy = umap_of_sample(z, 0, [])
    return places_from_sample(z, rows, xy)


def _particle_colourings(group, records, gt_dir):
    """{label: Colouring} of what is known of each particle of the run (records: explore.session.RunRecords):
    defocus, optics group, pose angles, particle index (cli.run_files.particle_metadata), half-set, the size
    of the pose correction, the true coordinate."""
    import numpy as np

    from hetrec_dist.analysis.ground_truth import truth_colouring
    from hetrec_dist.analysis.plots import COLOUR_KINDS
    from hetrec_dist.cli.run_files import particle_metadata
    from hetrec_dist.explore.session import Colouring

    rows, half_sets, poses = records.rows, records.half_sets, records.poses
    colourings = {label: Colouring(np.asarray(values, float), COLOUR_KINDS.get(label, "continuous"))
                  for label, values in particle_metadata(group, rows).items()}
    take = (lambda values: values) if rows is None else (lambda values: values[rows])
    if half_sets is not None:
        colourings["half-set"] = Colouring(take(half_sets).astype(float), "categorical")
    if poses is not None:
        given = group["rotations"][:]
        cosine = (np.einsum("nij,nij->n", given, poses[0]) - 1) / 2  # trace(R_given^T R) = 1 + 2 cos(angle)
        colourings["pose correction (°)"] = Colouring(take(np.degrees(np.arccos(np.clip(cosine, -1, 1)))))
        colourings["shift correction (px)"] = Colouring(take(np.linalg.norm(poses[1] - group["shifts"][:], axis=1)))
    if records.ctf is not None:
        mean_defocus_A = records.ctf[:, 2:4].mean(1) - group["ctf"][:, 2:4].mean(1)
        colourings["defocus correction (Å)"] = Colouring(take(mean_defocus_A))
    if gt_dir:
        label, values, kind = truth_colouring(gt_dir, group.attrs.asdict(), rows)
        colourings[label] = Colouring(values, kind)
    return colourings
