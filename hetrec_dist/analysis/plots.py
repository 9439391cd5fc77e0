"""PNG plots of the latent space (matplotlib, Agg backend)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# how cli.run_files.particle_metadata's labels are coloured (else a continuous scale)
COLOUR_KINDS = {"optics group": "categorical", "in-plane angle psi (°)": "cyclic"}
SCATTER_POINTS = 20_000  # a random subset is drawn as points; densities use every particle


def _subset(n, seed=0):
    return np.arange(n) if n <= SCATTER_POINTS else np.random.default_rng(seed).choice(n, SCATTER_POINTS, replace=False)


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def landscape(xy, labels, centres_xy, path, axis_names=("PC1", "PC2")):
    """Density of all particles, with a subset coloured by cluster and the centres numbered."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    left.hexbin(xy[:, 0], xy[:, 1], gridsize=60, bins="log", cmap="viridis")
    left.set_title(f"density ({len(xy):,} particles)")
    shown = _subset(len(xy))
    right.scatter(xy[shown, 0], xy[shown, 1], c=labels[shown], s=2, cmap="tab20", alpha=0.6)
    for i, (x, y) in enumerate(centres_xy):
        right.annotate(str(i), (x, y), fontsize=9, weight="bold", ha="center", va="center",
                       bbox={"boxstyle": "round", "fc": "white", "alpha": 0.7})
    right.set_title("k-means clusters")
    for axis in (left, right):
        axis.set_xlabel(axis_names[0])
        axis.set_ylabel(axis_names[1])
    _save(figure, path)


def path_on_landscape(xy, path_xy, maps_xy, path, axis_names=("PC1", "PC2")):
    """A path through the latents (path_xy, in order) over the particles' density, its maps' points numbered."""
    figure, axis = plt.subplots(figsize=(6, 5))
    axis.hexbin(xy[:, 0], xy[:, 1], gridsize=60, bins="log", cmap="Greys")
    axis.plot(path_xy[:, 0], path_xy[:, 1], color="crimson", linewidth=1.5)
    for i, (x, y) in enumerate(maps_xy):
        axis.annotate(str(i), (x, y), fontsize=8, weight="bold", ha="center", va="center",
                      bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
    axis.set_xlabel(axis_names[0])
    axis.set_ylabel(axis_names[1])
    axis.set_title(f"path through {len(path_xy)} particles; its maps numbered")
    _save(figure, path)


def coloured_by(xy, values, path, label, axis_names=("PC1", "PC2"), kind="continuous"):
    """The latents coloured by values: kind "continuous" (viridis and a colour bar), "categorical" (one colour
    per value, up to 20, with a legend) or "cyclic" (angles in degrees, -180 to 180, on a cyclic map)."""
    figure, axis = plt.subplots(figsize=(6, 5))
    shown = _subset(len(xy))
    categories = np.unique(values[shown]) if kind == "categorical" else ()
    if kind == "categorical" and len(categories) <= 20:
        colours = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
        for i, category in enumerate(categories):
            chosen = shown[values[shown] == category]
            name = f"{int(category)}" if float(category).is_integer() else f"{category:g}"
            axis.scatter(xy[chosen, 0], xy[chosen, 1], s=2, color=colours(i), label=name)
        axis.legend(title=label, markerscale=4, fontsize=8)
    else:
        cyclic = {"cmap": "twilight", "vmin": -180, "vmax": 180} if kind == "cyclic" else {"cmap": "viridis"}
        points = axis.scatter(xy[shown, 0], xy[shown, 1], c=values[shown], s=2, **cyclic)
        figure.colorbar(points, label=label)
    axis.set_xlabel(axis_names[0])
    axis.set_ylabel(axis_names[1])
    axis.set_title(f"latents coloured by {label}")
    _save(figure, path)


def histograms(projected, explained, path, n=4):
    n = min(n, projected.shape[1])
    figure, axes = plt.subplots(1, n, figsize=(3.2 * n, 3), squeeze=False)
    total = explained.sum()
    for i, axis in enumerate(axes[0]):
        axis.hist(projected[:, i], bins=100, color="steelblue")
        axis.set_title(f"PC{i + 1} ({100 * explained[i] / total:.0f}% of variance)")
    _save(figure, path)


def fsc_plot(curves, box, pixel_size_A, path, joined_A=None):
    """FSC curves (label: values per shell) against spatial frequency; joined_A: half-maps one at resolutions
    coarser than it (HetVAE.join_half_sets), shaded."""
    figure, axis = plt.subplots(figsize=(6, 4))
    if joined_A:
        axis.axvspan(0, 1 / joined_A, color="grey", alpha=0.15, label=f"halves joined (> {joined_A:g} Å)")
    for label, curve in curves.items():
        frequency = np.arange(len(curve)) / (box * pixel_size_A)
        axis.plot(frequency, curve, label=label)
    for threshold in (0.5, 0.143):
        axis.axhline(threshold, color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("spatial frequency (1/Å)")
    axis.set_ylabel("FSC")
    axis.set_ylim(-0.1, 1.05)
    if len(curves) <= 12:  # beyond, a legend hides the curves
        axis.legend(fontsize=8)
    _save(figure, path)


def resolution_along(resolutions_A, limit_A, path, label):
    """The half-map FSC = 0.143 resolution (Å) at each step of a traversal, with the model's limit."""
    figure, axis = plt.subplots(figsize=(6, 3))
    axis.plot(np.arange(len(resolutions_A)), resolutions_A, marker="o")
    axis.axhline(limit_A, color="grey", linestyle=":", linewidth=1, label="the model's limit")
    axis.set_xlabel(f"{label} traversal step")
    axis.set_ylabel("resolution (Å), FSC = 0.143")
    axis.invert_yaxis()  # finer resolution higher up, as resolution plots show it
    axis.legend(fontsize=8)
    _save(figure, path)


def _scale_bar(axis, box, pixel_size_A, colour="white"):
    """A bar of a round length in Å, about a quarter of the box, at the picture's lower right."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    lengths = np.array([1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000])
    length_A = float(lengths[np.abs(lengths - box * pixel_size_A / 4).argmin()])
    axis.add_artist(AnchoredSizeBar(axis.transData, length_A / pixel_size_A, f"{length_A:g} Å", "lower right",
                                    frameon=False, color=colour, size_vertical=max(1, box // 64), fontproperties={
                                        "size": 7}))


MAP_VIEWS = ("section z", "section y", "projection z")  # of map_pictures; the x section adds little


def map_grid(pictures, titles, path, pixel_size_A=None, views=MAP_VIEWS):
    """One row per map (titles), one column per view (those of `views` its pictures have), each view on its own
    grey scale; a scale bar in Å on the first picture where pixel_size_A is given."""
    if not pictures:
        return
    views = [view for view in views if view in pictures[0]]
    figure, axes = plt.subplots(len(pictures), len(views), figsize=(1.8 * len(views), 1.8 * len(pictures)),
                                squeeze=False)
    for row, (picture, title) in enumerate(zip(pictures, titles)):
        for column, view in enumerate(views):
            axis = axes[row, column]
            axis.imshow(picture[view], cmap="gray", origin="lower")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(view, fontsize=9)
        axes[row, 0].set_ylabel(title, fontsize=9)
    if pixel_size_A:
        _scale_bar(axes[0, 0], len(pictures[0][views[0]]), pixel_size_A)
    _save(figure, path)


def traversal_strip(pictures, path, label, views=("projection z", "section z"), pixel_size_A=None):
    """The steps of a traversal side by side (columns), one row per view on a grey scale shared along the row,
    so that what changes between steps shows; a scale bar in Å on the first picture where pixel_size_A is
    given."""
    figure, axes = plt.subplots(len(views), len(pictures), figsize=(1.5 * len(pictures), 1.6 * len(views)),
                                squeeze=False)
    for row, view in enumerate(views):
        low = min(float(p[view].min()) for p in pictures)
        high = max(float(p[view].max()) for p in pictures)
        for column, picture in enumerate(pictures):
            axis = axes[row, column]
            axis.imshow(picture[view], cmap="gray", origin="lower", vmin=low, vmax=high)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(f"{label} {column}", fontsize=8)
        axes[row, 0].set_ylabel(view, fontsize=8)
    if pixel_size_A:
        _scale_bar(axes[0, 0], len(pictures[0][views[0]]), pixel_size_A)
    _save(figure, path)


def training_curves(epochs, path):
    """Loss, its data term and KL per epoch (epochs: {"epoch": [...], "loss": [...], "data": [...],
    "kl": [...]}), each on its own axis."""
    names = [name for name in ("loss", "data", "kl") if name in epochs]
    figure, axes = plt.subplots(1, len(names), figsize=(3.5 * len(names), 3), squeeze=False)
    for axis, name in zip(axes[0], names):
        axis.plot(epochs["epoch"], epochs[name], marker="o", markersize=3)
        axis.set_xlabel("epoch")
        axis.set_title(name)
    _save(figure, path)
