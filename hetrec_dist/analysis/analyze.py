"""`hetrec analyze`: PCA, k-means, maps at cluster centres and along PC1/PC2, plots and a summary page.

Writes RUN/analyze.K/: summary.json, index.html, chimerax.cxc, plots/*.png (the latent landscape, pictures
of the cluster maps and the PC traversals, the latents coloured by the ground truth and by what may confound
them, the training curves; for a run trained with half-sets, the gold-standard resolution at each cluster
centre and along PC1), maps/*.mrc, kmeans_labels.npy, kmeans_centres.txt, umap.npz (the UMAP: rows of z
it embedded, their 2-D places, and every particle's for `hetrec explore`: latent.places_from_sample),
signal_score.npy (each particle's, train.inference.signal_scores: low for junk), and RUN/z.pkl (the latents as
cryoDRGN's z.pkl).
"""

import html
import json
import os
import re
import shutil
import tempfile

import numpy as np

from hetrec_dist.analysis import plots
from hetrec_dist.analysis.half_maps import latent_resolution, model_limit_A
from hetrec_dist.analysis.latent import (
    evenly_along,
    graph_path,
    kmeans,
    latent_spread,
    nearest_particles,
    pca,
    places_from_sample,
    traversal,
)
from hetrec_dist.analysis.maps import chimerax_level, write_latent_maps
from hetrec_dist.data.atomic_files import TEMPORARY_MARK, save_pickle
from hetrec_dist.data.map_files import read_map
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.errors import UserError

SIGNAL_FILE = "signal_score.npy"
UMAP_SAMPLE = 50_000  # particles UMAP embeds (a random sample): its cost grows faster than N


def can_umap(z):
    """Whether latents get a UMAP: 3 dimensions or more (PCA shows fewer whole), 10 particles or more (fewer:
    UMAP's spectral start fails)."""
    return z.shape[1] > 2 and len(z) >= 10


def umap_of_sample(z, seed, included):
    """(rows, 2-D UMAP of z[rows]) for a random sample of UMAP_SAMPLE particles at most, sorted, with the
    particles `included` added."""
    import umap

    sample = np.random.default_rng(seed).choice(len(z), min(len(z), UMAP_SAMPLE), replace=False)
    rows = np.union1d(sample, np.asarray(included, dtype=np.int64))
    neighbours = min(15, len(rows) - 1)  # UMAP's default, or what a small run has
    return rows, umap.UMAP(n_neighbors=neighbours, random_state=seed, n_jobs=1).fit_transform(z[rows])  # seeded


CAPTIONS = {  # what each plot shows, for the page
    "pca_clusters.png": "Left: where the particles lie on the first two principal axes of the latent space "
                        "(density, log scale). Right: the k-means clusters, numbered along PC1.",
    "umap_clusters.png": "The same clusters on a UMAP of the latents (a sample of up to 50,000 particles).",
    "pc_histograms.png": "How the particles spread along each principal axis, with its share of the latent "
                         "variance: a motion shows as a wide or two-peaked PC1.",
    "cluster_maps.png": "The map at each cluster's centre: central sections normal to z and y and the projection "
                        "along z, each on its own grey scale.",
    "pc1_traversal.png": "Maps along PC1, from its 5th to its 95th percentile, on a grey scale shared along each "
                         "row: what changes between steps is what PC1 describes.",
    "pc2_traversal.png": "Maps along PC2, as for PC1.",
    "pc1_resolution.png": "The gold-standard resolution (FSC = 0.143 of the half-maps) at each step along PC1.",
    "path_traversal.png": "Maps at evenly spaced particles along the path, on shared grey scales.",
    "path_on_pca.png": "The path's course over the PCA landscape; its maps numbered.",
    "pca_ground_truth.png": "The latents coloured by the simulation's true coordinate (a smooth gradient along PC1 "
                            "is the motion found) or state (each apart from the others: the states found).",
    "umap_ground_truth.png": "The UMAP coloured by the true coordinate (or state).",
    "cluster_reconstructions.png": "Each cluster's map from the model (left) and reconstructed from the cluster's "
                                   "own particles without the model (right, `hetrec reconstruct`): where they "
                                   "differ, trust the reconstruction.",
    "signal_score.png": "The latents coloured by each particle's signal score: junk gathers where it is low.",
    "training_curves.png": "The loss per epoch: the data term (the images' misfit) and the KL term (the latents' "
                           "spread against the prior).",
}


def caption(name):
    """What the plot `name` shows (CAPTIONS; pca_by_X.png: the latents coloured by X)."""
    if name in CAPTIONS:
        return CAPTIONS[name]
    if name.startswith("pca_by_"):
        what = name[len("pca_by_"):-len(".png")].replace("_", " ")
        return (f"The latents (PC1, PC2) coloured by {what}: a trend here is an artefact or junk, not a "
                "conformation.")
    return name


def _write_reconstructions(out_dir, results, model_pictures, pixel_size_A):
    """Each cluster's reconstruction (analysis.reconstruct; None where a half-set was empty) as
    reconstructions/cluster_NN.mrc and its half-maps, and plots/cluster_reconstructions.png beside the model's
    maps (model_pictures); returns their records for the summary."""
    from hetrec_dist.analysis.maps import map_pictures
    from hetrec_dist.data.map_files import write_map

    records, pictures, titles = [], [], []
    for cluster, result in enumerate(results):
        if result is None:
            records.append(None)
            continue
        name = f"cluster_{cluster:02d}.mrc"
        write_map(os.path.join(out_dir, "reconstructions", name), result.map, pixel_size_A)
        for half, volume in enumerate(result.half_maps, 1):
            write_map(os.path.join(out_dir, "reconstructions", f"cluster_{cluster:02d}_half{half}.mrc"), volume,
                      pixel_size_A)
        records.append({"map": name, "particles": sum(result.particles),
                        "resolution_0.143_A": result.fsc["resolution_0.143_A"], "fsc": result.fsc["curve"]})
        views = map_pictures(result.map)
        pictures.append({"model: section z": model_pictures[cluster]["section z"],
                         "model: projection z": model_pictures[cluster]["projection z"],
                         "particles: section z": views["section z"], "particles: projection z": views["projection z"]})
        titles.append(f"cluster {cluster}")
    plots.map_grid(pictures, titles, os.path.join(out_dir, "plots", "cluster_reconstructions.png"), pixel_size_A,
                   views=tuple(pictures[0]) if pictures else ())
    return records


def evaluation_section(run, epoch):
    """The page's section on the run's eval.json (`hetrec eval --gt`) where it is of `epoch`, else ''."""
    try:
        with open(RunFolder(run).evaluation) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return ""
    if epoch is None or result.get("epoch") != epoch:
        return ""
    if result.get("kind") == "composition":
        return _composition_section(result, epoch)
    rows = "".join(f"<tr><td>{m['coordinate']:.2f}</td><td>{m['n_particles']}</td>"
                   f"<td>{m['resolution_0.5_A']:.1f} Å</td><td>{m['mean_fsc']:.3f}</td></tr>"
                   for m in result.get("maps", []))
    return (f"<h2>Against the ground truth (hetrec eval, epoch {epoch})</h2>"
            f"<p>Mean FSC {result['mean_fsc']:.3f}; latent PC1 |Spearman| with the true coordinate "
            f"{abs(result['latent_pc1_spearman']):.3f}; held-out linear R² {result['latent_linear_r2']:.3f}.</p>"
            "<table border='1' cellpadding='3'><tr><th>true coordinate</th><th>particles near it</th>"
            f"<th>FSC = 0.5 against the true map</th><th>mean FSC</th></tr>{rows}</table>")


def _composition_section(result, epoch):
    from hetrec_dist.analysis.ground_truth import summary_line

    subunits = len(result["states"][0]["occupancy"]) if result["states"] else 0
    names = "".join(f"<th>{chr(ord('A') + j)}</th>" for j in range(subunits))
    rows = "".join(f"<tr><td>{s['state']}</td><td>{s['subunits']}</td><td>{s['n_particles']}</td>"
                   f"<td>{s['resolution_0.5_A']:.1f} Å</td>"
                   + "".join(f"<td>{v:.2f}</td>" for v in s["occupancy"]) + "</tr>" for s in result["states"])
    return (f"<h2>Against the ground truth (hetrec eval, epoch {epoch})</h2><p>{html.escape(summary_line(result))}."
            "</p><p>The map at each true state's mean latent: its FSC = 0.5 against the state's true map, and each "
            "subunit's occupancy in it (1: as strong as the core; 0: absent).</p>"
            "<table border='1' cellpadding='3'><tr><th>state</th><th>subunits</th><th>particles</th>"
            f"<th>FSC = 0.5</th>{names}</tr>{rows}</table>")


def _page(summary, out_dir, evaluation=""):
    def figure(name):
        return (f'<figure><img src="plots/{name}" style="max-width:100%"><figcaption>'
                f"{html.escape(caption(name))}</figcaption></figure>")

    def links(names):
        return ", ".join(f'<a href="maps/{html.escape(n)}">{html.escape(n)}</a>' for n in names)

    plots_shown = summary["plots"]
    maps = summary["maps"]
    resolutions = summary.get("half_map_resolution_0.143_A")
    cells = ([f"<td>{r:.2f} Å{' *' if r <= resolutions['limit_A'] * (1 + 1e-6) else ''}</td>"
              for r in resolutions["kmeans"]] if resolutions else [""] * len(maps["kmeans"]))
    medians = summary.get("cluster_signal_median")
    if medians is not None:
        cells = [c + f"<td>{m:.2f}</td>" for c, m in zip(cells, medians)]
    rebuilt = summary.get("reconstructions")
    if rebuilt is not None:
        cells = [c + (f'<td><a href="reconstructions/{html.escape(r["map"])}">{html.escape(r["map"])}</a>, '
                      f'{r["resolution_0.143_A"]:.1f} Å</td>' if r else "<td>too few particles</td>")
                 for c, r in zip(cells, rebuilt)]
    rows = "".join(f'<tr><td>{i}</td><td>{n}</td><td><a href="maps/{html.escape(m)}">{html.escape(m)}</a></td>{c}</tr>'
                   for i, (n, m, c) in enumerate(zip(summary["cluster_sizes"], maps["kmeans"], cells)))
    header = "<th>resolution (half-maps, FSC = 0.143)</th>" if resolutions else ""
    if medians is not None:
        header += "<th>median signal score</th>"
    if rebuilt is not None:
        header += "<th>reconstruction from its particles (gold-standard FSC = 0.143)</th>"
    gold = (f"<p>The resolution is the FSC = 0.143 point of the two half-sets' maps at each centre (gold standard);"
            f" * marks the model's limit, {resolutions['limit_A']:.2f} Å: the maps may hold more.</p>"
            if resolutions else "")
    variance = ", ".join(f"{100 * v:.1f}%" for v in summary["pca_explained_fraction"])
    spread = html.escape(summary["latent_spread"])
    spread_note = (f'<p>{spread}: one direction dominates, so PC1 and its traversal show the main motion.</p>'
                   if summary["one_direction_dominates"] else f'<p style="color:#a00"><b>{spread}</b></p>')
    if summary.get("focus_mask"):
        spread_note = (f'<p><b>Focused run</b>: the latent space describes what varies inside '
                       f'{html.escape(summary["focus_mask"])} only; outside it every map is the mean.</p>'
                       + spread_note)
    landscape = "".join(figure(p) for p in plots_shown if p.startswith(("pca_clusters", "umap", "pc_hist")))
    confounders = "".join(figure(p) for p in plots_shown if p.startswith("pca_by_") or p == "pca_ground_truth.png")
    traversals = "".join(figure(p) for p in plots_shown
                         if p.endswith(("_traversal.png", "_resolution.png")) and not p.startswith("path_"))
    curves = "".join(figure(p) for p in plots_shown if p == "training_curves.png")
    cluster_maps = "".join(figure(p) for p in plots_shown if p in ("cluster_maps.png", "cluster_reconstructions.png"))
    junk = "" if medians is None else (
        "<h2>Junk</h2><p>A particle's signal score is how much of the model's density its image holds (1: a "
        "typical particle; near 0: an empty image, ice, a small fragment). Clusters whose median score is low "
        "(the table above) are likely junk: check them with <code>--reconstruct</code>, and leave them out with "
        f"<code>hetrec select {html.escape(summary['run'])} --k {summary['k']} --clusters N -o junk.pkl</code>, "
        f"or every particle below a score with <code>hetrec select {html.escape(summary['run'])} --k "
        f"{summary['k']} --signal-below 0.3 -o junk.pkl</code>; then <code>hetrec train --exclude junk.pkl</code>."
        "</p>" + figure("signal_score.png"))
    path = summary.get("path")
    path_section = "" if not path else (
        f"<h2>Path from particle {path['from']} to particle {path['to']}</h2><p>The shortest path through the "
        f"latents' nearest-neighbour graph: {path['n_particles']} particles (path_particles.txt), maps at "
        f"{len(maps['path'])} of them evenly along it: {links(maps['path'])}</p>"
        + "".join(figure(p) for p in plots_shown if p.startswith("path_")))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hetrec analysis</title></head><body>
<h1>Latent analysis of {html.escape(summary['run'])}</h1>
<p>{summary['n_particles']:,} particles, latent dimension {summary['zdim']}; PCA explained variance: {variance}.</p>
{spread_note}
<p>To look around interactively (a map for any particle in a click, lasso selections saved as subsets):
<code>hetrec explore {html.escape(summary['run'])}</code> (README, "Explore").</p>
{landscape}
<h2>k-means clusters (k = {summary['k']})</h2>
<p>Maps are decoded at the latent of the particle nearest each centre. Open them all in ChimeraX with
<a href="chimerax.cxc">chimerax.cxc</a> (the cluster maps tiled, then the traversals as volume series).</p>
{gold}
<table border="1" cellpadding="3"><tr><th>cluster</th><th>particles</th><th>map</th>{header}</tr>{rows}</table>
{cluster_maps}
<h2>Traversals</h2><p>PC1: {links(maps['pc1'])}<br>PC2: {links(maps['pc2']) or 'none (a latent of one dimension)'}</p>
{traversals}
{junk}
{path_section}
<h2>What else the latents follow</h2>
<p>Latents that follow defocus, the pose, the optics group or the particle index (drift during the
acquisition) show artefacts or junk rather than conformations.</p>
{confounders}
{evaluation}
<h2>Training</h2>
{curves or '<p>No epoch lines in the run&#39;s train.log.</p>'}
</body></html>"""
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(page)


def training_epochs(run_dir):
    """{"epoch", "loss", "data", "kl": lists} from RUN/train.log (a resumed epoch: its last line); None if
    the log has no epoch lines."""
    number = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
    pattern = re.compile(rf"epoch (\d+): loss {number}, data {number}, kl {number}")
    found = {}
    try:
        with open(RunFolder(run_dir).log, encoding="utf-8", errors="replace") as f:
            for line in f:
                match = pattern.search(line)
                if match:
                    found[int(match.group(1))] = [float(v) for v in match.groups()[1:]]
    except OSError:
        return None
    if not found:
        return None
    epochs = sorted(found)
    return {"epoch": epochs, **{name: [found[e][i] for e in epochs] for i, name in enumerate(("loss", "data", "kl"))}}


def write_chimerax_script(path, maps, level):
    """A ChimeraX command script that opens the cluster maps tiled, then each traversal as a volume series,
    at one surface level (the maps' density units). ChimeraX runs a .cxc in its own folder: paths are relative."""
    k = len(maps["kmeans"])
    lines = ["# hetrec analyze: open in ChimeraX (File > Open, or `open chimerax.cxc`).",
             f"open {' '.join('maps/' + name for name in maps['kmeans'])}",
             f"volume #1-{k} level {level:.6g} style surface", f"tile #1-{k}"]
    model = k
    for direction in ("pc1", "pc2", "path"):
        if maps.get(direction):
            model += 1
            lines += [f"# {direction.upper()} traversal as a volume series #{model} (play it with its slider)",
                      f"open {' '.join('maps/' + name for name in maps[direction])} vseries true",
                      f"volume #{model} level {level:.6g} style surface", f"hide #{model} models"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def path_end(text, n_particles, k):
    """One end of --path: ("particle", index) for a particle index (0-based, store order), ("centre", N) for
    cN, the particle nearest k-means centre N. Raises UserError for anything else."""
    match = re.fullmatch(r"\s*(c?)(\d+)\s*", str(text))
    if match is None:
        raise UserError(f"--path {text!r}: give a particle index (0 to {n_particles - 1}) or cN for the "
                        f"particle nearest k-means centre N")
    value, limit = int(match.group(2)), k if match.group(1) else n_particles
    if value >= limit:
        what = f"k-means centres are c0 to c{limit - 1}" if match.group(1) else f"particles are 0 to {limit - 1}"
        raise UserError(f"--path {text}: there is none ({what})")
    return ("centre" if match.group(1) else "particle", value)


def analyze_run(run_dir, model, z, k=20, truth=None, seed=0, n_traversal=10, particles=None,
                with_umap=True, path_ends=None, latents_record=None, reconstruct_clusters=None, signal=None,
                focus_mask=None):
    """PCA, k-means, maps and their pictures, plots and the page (module doc). truth: (label, values N, kind) of
    a simulation's truth to colour by (analysis.ground_truth.truth_colouring), or None. particles: {label: (N,) array}
    to colour the latents by (cli.run_files.particle_metadata), or None. with_umap: also a UMAP of a
    sample (latents of 3 dimensions or more). path_ends: two --path ends (path_end), for maps along the
    data between them (latent.graph_path). latents_record: what made z (RUN/z.json), kept in summary.json
    so that `select` can tell clusters of older latents. reconstruct_clusters: a function of the clusters'
    labels (N) that returns each cluster's model-free reconstruction (analysis.reconstruct.Reconstruction, or
    None), or None for none. signal: each particle's signal score (N; train.inference.signal_scores) or None.
    focus_mask: for a focused run (`train --focus-mask`), the path of the mask it keeps, which the page names."""
    if k < 1 or k > len(z):
        raise UserError(f"--k {k}: need between 1 and {len(z)} clusters")
    ends = [path_end(end, len(z), k) for end in path_ends or ()]
    if truth is not None and len(truth[1]) != len(z):
        raise UserError(f"ground truth has {len(truth[1])} particles but the run {len(z)} particles")
    final_dir = os.path.join(run_dir, f"analyze.{k}")
    # built aside, in a new private folder, and moved into place whole: never a page of mixed runs
    out_dir = tempfile.mkdtemp(prefix=f"analyze.{k}{TEMPORARY_MARK}", dir=run_dir)
    for sub in ("plots", "maps"):
        os.makedirs(os.path.join(out_dir, sub))
    save_pickle(RunFolder(run_dir).latents_pkl, z)
    try:
        summary = _analyze(out_dir, run_dir, model, z, k, truth, seed, n_traversal, particles, with_umap,
                           reconstruct_clusters, signal, ends, path_ends, latents_record, focus_mask)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    os.chmod(out_dir, os.stat(run_dir).st_mode & 0o777)  # readable as the run is, not mkdtemp's 0700
    if os.path.lexists(final_dir):
        shutil.rmtree(final_dir) if os.path.isdir(final_dir) and not os.path.islink(final_dir) else os.remove(final_dir)
    os.rename(out_dir, final_dir)
    return final_dir, summary


def _analyze(out_dir, run_dir, model, z, k, truth, seed, n_traversal, particles, with_umap, reconstruct_clusters,
             signal, ends, path_ends, latents_record, focus_mask):
    """analyze_run's work, written into out_dir; returns the summary."""
    fitted = pca(z)
    _, dominant, spread_line = latent_spread(z)
    projected = fitted.project(z)
    xy = projected[:, :2] if z.shape[1] > 1 else np.column_stack([projected[:, 0], np.zeros(len(z))])
    centres, labels = kmeans(z, k, seed)
    along_pc1 = np.argsort(fitted.project(centres)[:, 0], kind="stable")  # cluster 0 at PC1's low end
    centres, labels = centres[along_pc1], np.argsort(along_pc1)[labels]
    on_data = nearest_particles(z, centres)
    np.save(os.path.join(out_dir, "kmeans_labels.npy"), labels)
    np.savetxt(os.path.join(out_dir, "kmeans_centres.txt"), z[on_data])
    maps_dir, plot_dir = os.path.join(out_dir, "maps"), os.path.join(out_dir, "plots")
    pictures = {"kmeans": [], "pc1": [], "pc2": []}
    pc1_latents = traversal(z, fitted, 0, n_traversal)
    maps = {"kmeans": write_latent_maps(model, z[on_data], maps_dir, "kmeans_{:02d}.mrc", pictures["kmeans"]),
            "pc1": write_latent_maps(model, pc1_latents, maps_dir, "pc1_{:02d}.mrc", pictures["pc1"])}
    maps["pc2"] = (write_latent_maps(model, traversal(z, fitted, 1, n_traversal), maps_dir, "pc2_{:02d}.mrc",
                                     pictures["pc2"]) if z.shape[1] > 1 else [])
    plots.landscape(xy, labels, fitted.project(z[on_data])[:, :2] if z.shape[1] > 1 else xy[on_data],
                    os.path.join(plot_dir, "pca_clusters.png"))
    plots.histograms(projected, fitted.explained_variance, os.path.join(plot_dir, "pc_histograms.png"))
    names = ["pca_clusters.png", "pc_histograms.png"]
    plots.map_grid(pictures["kmeans"], [f"cluster {i}" for i in range(k)], os.path.join(plot_dir, "cluster_maps.png"),
                   model.pixel_size_A)
    names.append("cluster_maps.png")
    if reconstruct_clusters is not None:
        reconstructions = _write_reconstructions(out_dir, reconstruct_clusters(labels), pictures["kmeans"],
                                                 model.pixel_size_A)
        names.append("cluster_reconstructions.png")
    for traversal_name in ("pc1", "pc2"):
        if pictures[traversal_name]:
            name = f"{traversal_name}_traversal.png"
            plots.traversal_strip(pictures[traversal_name], os.path.join(plot_dir, name), traversal_name.upper(),
                                  pixel_size_A=model.pixel_size_A)
            names.append(name)
    if ends:
        start, end = (on_data[value] if kind == "centre" else value for kind, value in ends)
        if start == end:
            raise UserError(f"--path {' '.join(path_ends)}: both ends are particle {start}; give two particles")
        path = graph_path(z, start, end, seed=seed)
        on_path = evenly_along(z, path, n_traversal)
        np.savetxt(os.path.join(out_dir, "path_particles.txt"), path, fmt="%d")
        pictures["path"] = []
        maps["path"] = write_latent_maps(model, z[on_path], maps_dir, "path_{:02d}.mrc", pictures["path"])
        plots.traversal_strip(pictures["path"], os.path.join(plot_dir, "path_traversal.png"), "path",
                              pixel_size_A=model.pixel_size_A)
        plots.path_on_landscape(xy, xy[path], xy[on_path], os.path.join(plot_dir, "path_on_pca.png"))
        names += ["path_traversal.png", "path_on_pca.png"]
        path_record = {"from": int(start), "to": int(end), "n_particles": len(path),
                       "map_particles": on_path.tolist()}
    resolutions = None
    if model.shape.n_half_sets == 2:
        resolutions = {"kmeans": [latent_resolution(model, latent)["resolution_0.143_A"] for latent in z[on_data]],
                       "pc1": [latent_resolution(model, latent)["resolution_0.143_A"] for latent in pc1_latents],
                       "limit_A": model_limit_A(model)}
        plots.resolution_along(resolutions["pc1"], resolutions["limit_A"],
                               os.path.join(plot_dir, "pc1_resolution.png"), "PC1")
        names.append("pc1_resolution.png")
    if truth is not None:
        label, values, kind = truth
        plots.coloured_by(xy, values, os.path.join(plot_dir, "pca_ground_truth.png"), label, kind=kind)
        names.append("pca_ground_truth.png")
    for label, values in (particles or {}).items():
        if len(values) == len(z):
            name = "pca_by_" + re.sub(r"[^a-z0-9]+", "_", label.split(" (")[0].lower()).strip("_") + ".png"
            plots.coloured_by(xy, values, os.path.join(plot_dir, name), label,
                              kind=plots.COLOUR_KINDS.get(label, "continuous"))
            names.append(name)
    epochs = training_epochs(run_dir)
    if epochs is not None:
        plots.training_curves(epochs, os.path.join(plot_dir, "training_curves.png"))
        names.append("training_curves.png")
    if with_umap and can_umap(z):
        rows, umap_xy = umap_of_sample(z, seed, on_data)
        np.savez(os.path.join(out_dir, "umap.npz"), rows=rows, xy=umap_xy,  # for hetrec explore
                 every_particle=places_from_sample(z, rows, umap_xy))
        centres_xy = umap_xy[np.searchsorted(rows, on_data)]
        plots.landscape(umap_xy, labels[rows], centres_xy, os.path.join(plot_dir, "umap_clusters.png"),
                        ("UMAP1", "UMAP2"))
        names.append("umap_clusters.png")
        if truth is not None:
            plots.coloured_by(umap_xy, truth[1][rows], os.path.join(plot_dir, "umap_ground_truth.png"), truth[0],
                              ("UMAP1", "UMAP2"), truth[2])
            names.append("umap_ground_truth.png")
    level = chimerax_level(read_map(os.path.join(maps_dir, maps["kmeans"][0])))
    write_chimerax_script(os.path.join(out_dir, "chimerax.cxc"), maps, level)
    summary = {"run": os.path.abspath(run_dir), "n_particles": len(z), "zdim": z.shape[1], "k": k,
               "pca_explained_fraction": (fitted.explained_variance / fitted.explained_variance.sum()).tolist(),
               "one_direction_dominates": bool(dominant), "latent_spread": spread_line,
               "cluster_sizes": np.bincount(labels, minlength=k).tolist(), "centre_particles": on_data.tolist(),
               "maps": maps, "plots": names, "chimerax_level": level, "latents": latents_record}
    if resolutions:
        summary["half_map_resolution_0.143_A"] = resolutions
    if focus_mask:
        summary["focus_mask"] = focus_mask
    if reconstruct_clusters is not None:
        summary["reconstructions"] = reconstructions
    if signal is not None:
        np.save(os.path.join(out_dir, SIGNAL_FILE), signal.astype(np.float32))
        plots.coloured_by(xy, signal, os.path.join(plot_dir, "signal_score.png"), "signal score")
        names.append("signal_score.png")
        summary["cluster_signal_median"] = [float(np.median(signal[labels == c])) if (labels == c).any() else None
                                            for c in range(k)]
    if ends:
        summary["path"] = path_record
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _page(summary, out_dir, evaluation_section(run_dir, (latents_record or {}).get("epoch")))
    return summary


