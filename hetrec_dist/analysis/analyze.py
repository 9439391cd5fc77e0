"""`hetrec analyze`: PCA, k-means, maps at cluster centres and along PC1/PC2, plots and a summary page.

Writes RUN/analyze.K/: summary.json, index.html, plots/*.png, maps/*.mrc, kmeans_labels.npy,
kmeans_centres.txt, and RUN/z.pkl (the latents as cryoDRGN's z.pkl).
"""

import html
import json
import os
import pickle

import numpy as np

from hetrec_dist.analysis import plots
from hetrec_dist.analysis.latent import kmeans, latent_spread, nearest_particles, pca, traversal
from hetrec_dist.analysis.maps import write_latent_maps
from hetrec_dist.errors import UserError


def _umap(z, seed):
    """2-D UMAP of a subset (umap-learn is an optional extra); None when it is not installed."""
    try:
        import umap
    except ImportError:
        return None
    rows = np.random.default_rng(seed).choice(len(z), min(len(z), 50_000), replace=False)
    return rows, umap.UMAP(random_state=seed).fit_transform(z[rows])


def _page(summary, out_dir):
    images = "".join(f'<figure><img src="plots/{p}" style="max-width:100%"><figcaption>{html.escape(p)}</figcaption>'
                     f"</figure>" for p in summary["plots"])
    rows = "".join(f"<tr><td>{i}</td><td>{n}</td><td>{html.escape(m)}</td></tr>"
                   for i, (n, m) in enumerate(zip(summary["cluster_sizes"], summary["maps"]["kmeans"])))
    variance = ", ".join(f"{100 * v:.1f}%" for v in summary["pca_explained_fraction"])
    spread = html.escape(summary["latent_spread"])
    warning = "" if summary["one_direction_dominates"] else f'<p style="color:#a00"><b>{spread}</b></p>'
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>hetrec analysis</title></head><body>
<h1>Latent analysis of {html.escape(summary['run'])}</h1>
<p>{summary['n_particles']:,} particles, latent dimension {summary['zdim']}; PCA explained variance: {variance}.</p>
{warning}
{images}
<h2>k-means clusters (k = {summary['k']})</h2>
<p>Maps are decoded at the latent of the particle nearest each centre (open them in ChimeraX).</p>
<table border="1" cellpadding="3"><tr><th>cluster</th><th>particles</th><th>map</th></tr>{rows}</table>
<h2>Traversals</h2><p>PC1: {', '.join(summary['maps']['pc1'])}<br>PC2: {', '.join(summary['maps']['pc2'])}</p>
</body></html>"""
    with open(os.path.join(out_dir, "index.html"), "w") as f:
        f.write(page)


def analyze_run(run_dir, model, z, k=20, gt_coordinates=None, seed=0, n_traversal=10):
    if k < 1 or k > len(z):
        raise UserError(f"--k {k}: need between 1 and {len(z)} clusters")
    out_dir = os.path.join(run_dir, f"analyze.{k}")
    for sub in ("plots", "maps"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    with open(os.path.join(run_dir, "z.pkl"), "wb") as f:
        pickle.dump(z, f)
    fitted = pca(z)
    _, dominant, spread_line = latent_spread(z)
    projected = fitted.project(z)
    xy = projected[:, :2] if z.shape[1] > 1 else np.column_stack([projected[:, 0], np.zeros(len(z))])
    centres, labels = kmeans(z, k, seed)
    on_data = nearest_particles(z, centres)
    np.save(os.path.join(out_dir, "kmeans_labels.npy"), labels)
    np.savetxt(os.path.join(out_dir, "kmeans_centres.txt"), z[on_data])
    maps_dir = os.path.join(out_dir, "maps")
    maps = {"kmeans": write_latent_maps(model, z[on_data], maps_dir, "kmeans_{:02d}.mrc"),
            "pc1": write_latent_maps(model, traversal(z, fitted, 0, n_traversal), maps_dir, "pc1_{:02d}.mrc")}
    maps["pc2"] = (write_latent_maps(model, traversal(z, fitted, 1, n_traversal), maps_dir, "pc2_{:02d}.mrc")
                   if z.shape[1] > 1 else [])
    plot_dir = os.path.join(out_dir, "plots")
    plots.landscape(xy, labels, fitted.project(z[on_data])[:, :2] if z.shape[1] > 1 else xy[on_data],
                    os.path.join(plot_dir, "pca_clusters.png"))
    plots.histograms(projected, fitted.explained_variance, os.path.join(plot_dir, "pc_histograms.png"))
    names = ["pca_clusters.png", "pc_histograms.png"]
    if gt_coordinates is not None:
        if len(gt_coordinates) != len(z):
            raise UserError(f"ground truth has {len(gt_coordinates)} coordinates but the run {len(z)} particles")
        plots.coloured_by(xy, gt_coordinates, os.path.join(plot_dir, "pca_ground_truth.png"), "true coordinate")
        names.append("pca_ground_truth.png")
    embedded = _umap(z, seed) if z.shape[1] > 2 else None
    if embedded is not None:
        rows, umap_xy = embedded
        plots.landscape(umap_xy, labels[rows], umap_xy[[np.abs(rows - i).argmin() for i in on_data]],
                        os.path.join(plot_dir, "umap_clusters.png"), ("UMAP1", "UMAP2"))
        names.append("umap_clusters.png")
    summary = {"run": os.path.abspath(run_dir), "n_particles": len(z), "zdim": z.shape[1], "k": k,
               "pca_explained_fraction": (fitted.explained_variance / fitted.explained_variance.sum()).tolist(),
               "one_direction_dominates": bool(dominant), "latent_spread": spread_line,
               "cluster_sizes": np.bincount(labels, minlength=k).tolist(), "centre_particles": on_data.tolist(),
               "maps": maps, "plots": names}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    _page(summary, out_dir)
    return out_dir, summary
