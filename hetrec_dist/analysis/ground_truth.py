"""Evaluation of a trained model against a simulated dataset's ground truth (hetrec simulate)."""

import json
import os

import mrcfile
import numpy as np
import torch
from scipy.stats import rankdata, spearmanr

from hetrec_dist.analysis.fsc import fsc_summary
from hetrec_dist.analysis.half_maps import half_set_agreement, latent_resolution
from hetrec_dist.data.atomic_files import refuse_link, write_text
from hetrec_dist.data.checksums import sha256_file
from hetrec_dist.data.map_files import write_map
from hetrec_dist.data.run_folder import RunFolder
from hetrec_dist.errors import UserError
from hetrec_dist.physics.fourier import fourier_crop


def _ground_truth_record(directory):
    path = os.path.join(directory, "ground_truth.json")
    if not os.path.isfile(path):
        raise UserError(f"{directory}: no ground_truth.json (a `hetrec simulate` output's ground_truth/ folder)")
    with open(path) as f:
        return json.load(f)


def check_ground_truth_belongs(directory, store_attrs):
    """A UserError where the ground truth in `directory` was simulated with other particles than the store's:
    the SHA-256 of its particles.star (recorded by `hetrec simulate`, or of the file beside it) must be that of
    a file the store was converted from. An old ground truth whose particles.star is gone is not checked."""
    truth = _ground_truth_record(directory)
    expected = truth.get("particles_star_sha256")
    star = os.path.join(directory, truth.get("particles_star", "../particles.star"))
    if expected is None and os.path.isfile(star):
        expected = sha256_file(star)
    converted_from = {source["sha256"] for source in store_attrs["sources"]["metadata"]}
    if expected is not None and expected not in converted_from:
        raise UserError(f"{directory}: the ground truth of other particles (its particles.star is not a file the "
                        "run's store was converted from); give the ground_truth/ of the simulation you trained on")


def check_ground_truth_extent(directory, box, pixel_size_A):
    """The ground truth's maps cover the same field of view as a model of `box` at `pixel_size_A` (a store
    converted with --box is fine: its maps are Fourier-cropped to compare, see maps_at_box); else a UserError."""
    truth = _ground_truth_record(directory)
    truth_box, truth_pixel_size = truth["box"], truth["pixel_size_A"]
    if truth_box < box or not np.isclose(truth_box * truth_pixel_size, box * pixel_size_A, rtol=1e-3):
        raise UserError(f"{directory}: its maps are {truth_box} voxels of {truth_pixel_size:g} Å, the model's "
                        f"{box} of {pixel_size_A:g} Å: not the same field of view, so they cannot be compared")


def map_at_box(volume, box):
    """A true map Fourier-cropped to `box` (the model's, after convert --box)."""
    return fourier_crop(volume.astype(np.float64), box, ndim=3)


def maps_at_box(maps, box):
    """[(coordinate, map)] with each map at `box` (map_at_box)."""
    return [(coordinate, map_at_box(volume, box)) for coordinate, volume in maps]


def _of_rows(values, rows, directory):
    """values (one per particle of the simulation) of the store rows `rows` (None: all)."""
    if rows is None:
        return values
    if len(rows) and rows.max() >= len(values):
        raise UserError(f"{directory}: holds {len(values)} particles' truth, fewer than the store")
    return values[rows]


def read_ground_truth(directory, store_attrs=None, rows=None):
    """(true coordinate of each particle, or of those at store `rows` (a run's subset, data.subset), [(coordinate,
    map)]) of a `hetrec simulate` output; checked against the store when its attributes are given
    (check_ground_truth_belongs)."""
    if store_attrs is not None:
        check_ground_truth_belongs(directory, store_attrs)
    truth = _ground_truth_record(directory)
    coordinates = _of_rows(np.load(os.path.join(directory, truth["coordinates_file"])), rows, directory)
    maps = [(m["coordinate"], mrcfile.read(os.path.join(directory, m["file"]))) for m in truth["maps"]]
    return coordinates, maps


def truth_colouring(directory, store_attrs=None, rows=None):
    """(label, per-particle values, kind) to colour particles by their truth: a compositional ground truth's
    states ("categorical", -1 for junk), else the true coordinate ("continuous", NaN for junk)."""
    if is_composition(directory):
        if store_attrs is not None:
            check_ground_truth_belongs(directory, store_attrs)
        return "true state (-1: junk)", read_composition(directory, rows)["states"].astype(float), "categorical"
    return "true coordinate", read_ground_truth(directory, store_attrs, rows)[0], "continuous"


def latent_order_correlation(z, coordinates):
    """|Spearman rho| between the first principal component of z and the true coordinate."""
    centred = z - z.mean(axis=0)
    pc1 = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    return abs(spearmanr(pc1, coordinates).statistic)


def latent_linear_r2(z, coordinates):
    """Held-out R^2 of the true coordinate predicted linearly from z (fit on even, test on odd particles
    and the reverse, averaged): how much of the conformation the latents hold, whichever direction."""
    design = np.column_stack([z, np.ones(len(z))])
    scores = []
    for fit, test in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        coefficients = np.linalg.lstsq(design[fit], coordinates[fit], rcond=None)[0]
        residual = coordinates[test] - design[test] @ coefficients
        scores.append(1 - residual.var() / coordinates[test].var())
    return float(np.mean(scores))


def _decoded_at_mean(model, z, map_dir, index):
    """(the mean latent of z, the model's map there), the map written to map_dir/decoded_NN.mrc where given."""
    latent = torch.from_numpy(z.mean(axis=0)).to(model.basis.device)
    decoded = model.volume(latent).cpu().numpy()
    if map_dir is not None:
        write_map(os.path.join(map_dir, f"decoded_{index:02d}.mrc"), decoded, model.pixel_size_A)
    return latent, decoded


@torch.no_grad()
def evaluate(model, z, coordinates, maps, window=0.05, map_dir=None):
    """Per ground-truth map: FSC of the map decoded at the mean latent of particles within `window` of its
    coordinate (written to map_dir/decoded_NN.mrc when given), and for a model trained with half-sets the
    half-maps' FSC = 0.143 resolution there (half_maps.latent_resolution), which the map's FSC = 0.5
    resolution against the truth should match; and the latent ordering correlation."""
    if len(z) != len(coordinates):
        raise UserError(f"{len(z)} latents but {len(coordinates)} ground-truth coordinates")
    per_map = []
    for index, (coordinate, truth) in enumerate(maps):
        near = np.abs(coordinates - coordinate) <= window
        if not near.any():
            continue
        latent, decoded = _decoded_at_mean(model, z[near], map_dir, index)
        summary = fsc_summary(decoded, truth, model.pixel_size_A)
        if model.shape.n_half_sets == 2:
            halves = latent_resolution(model, latent.cpu().numpy())
            summary.update({"half_map_resolution_0.143_A": halves["resolution_0.143_A"],
                            "half_map_at_limit": halves["at_limit"]})
        per_map.append({"coordinate": coordinate, "n_particles": int(near.sum()), **summary})
    real = np.isfinite(coordinates)  # junk particles have no coordinate
    result = {"maps": per_map,
              "mean_fsc": float(np.mean([m["mean_fsc"] for m in per_map])),
              "mean_resolution_0.5_A": float(np.mean([m["resolution_0.5_A"] for m in per_map])),
              "latent_pc1_spearman": float(latent_order_correlation(z[real], coordinates[real])),
              "latent_linear_r2": latent_linear_r2(z[real], coordinates[real])}
    if not real.all():
        result["junk_separation_auc"] = junk_separation_auc(z, ~real)
    if model.shape.n_half_sets == 2:
        result["half_set_agreement"] = half_set_agreement(model, z)
    return result


def junk_separation_auc(z, junk):
    """How well the latents tell junk from particles: the area under the ROC curve of a linear score fitted
    on even particles and tested on odd ones, and the reverse, averaged (0.5: not at all, 1: perfectly)."""
    design = np.column_stack([z, np.ones(len(z))])
    scores = []
    for fit, test in ((slice(0, None, 2), slice(1, None, 2)), (slice(1, None, 2), slice(0, None, 2))):
        score = design[test] @ np.linalg.lstsq(design[fit], junk[fit].astype(float), rcond=None)[0]
        ranks = rankdata(score)
        positives = junk[test]
        n_pos, n_neg = positives.sum(), (~positives).sum()
        scores.append((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))
    return float(np.mean(scores))


def is_composition(directory):
    """Whether a ground truth is of `hetrec simulate --assembly` (discrete states) rather than a motion."""
    return _ground_truth_record(directory).get("kind") == "composition"


def read_composition(directory, rows=None):
    """A compositional ground truth (`hetrec simulate --assembly`): {states: each particle's (or those at store
    `rows`'), -1 for junk; junk (bool); state_maps: [(record, map)]; core and subunits: the parts' maps}."""
    truth = _ground_truth_record(directory)
    states = _of_rows(np.load(os.path.join(directory, truth["states_file"])), rows, directory)
    read = lambda name: mrcfile.read(os.path.join(directory, name))  # noqa: E731
    return {"states": states, "junk": states < 0,
            "state_maps": [(state, read(state["file"])) for state in truth["states"]],
            "core": read(truth["core_map"]), "subunits": [read(name) for name in truth["subunit_maps"]]}


@torch.no_grad()
def evaluate_composition(model, z, truth, map_dir=None):
    """Per true state: FSC of the map decoded at the mean latent of its particles against the state's true map,
    and each subunit's occupancy in it (analysis.composition); the states' and the junk's separation in the
    latent space. truth: read_composition's, its maps at the model's box."""
    from hetrec_dist.analysis.composition import (
        composition_summary,
        junk_separation,
        occupancies,
        state_separation,
    )

    states, junk = truth["states"], truth["junk"]
    if len(z) != len(states):
        raise UserError(f"{len(z)} latents but {len(states)} ground-truth states")
    per_state = []
    for index, (record, true_map) in enumerate(truth["state_maps"]):
        members = states == index
        if not members.any():
            continue
        decoded = _decoded_at_mean(model, z[members], map_dir, index)[1]
        occupancy = occupancies(decoded, truth["core"], truth["subunits"], model.pixel_size_A)
        per_state.append({"state": index, "subunits": record["subunits"], "n_particles": int(members.sum()),
                          "occupancy": occupancy.tolist(), **fsc_summary(decoded, true_map, model.pixel_size_A)})
    result = {"kind": "composition", "states": per_state,
              "mean_fsc": float(np.mean([s["mean_fsc"] for s in per_state])),
              "mean_resolution_0.5_A": float(np.mean([s["resolution_0.5_A"] for s in per_state])),
              **composition_summary(per_state), **state_separation(z[~junk], states[~junk])}
    if junk.any():
        result["junk_neighbour_auc"] = junk_separation(z, junk)
    return result


def summary_line(result):
    """One line of an evaluation's main scores (evaluate's or evaluate_composition's)."""
    if result.get("kind") == "composition":
        line = (f"mean FSC {result['mean_fsc']:.4f}, occupancy of present subunits >= "
                f"{result['min_present_occupancy']:.2f}, of absent <= {result['max_absent_occupancy']:.2f}, "
                f"states ARI {result['ari']:.3f}, neighbour purity {result['neighbour_purity']:.3f} (rarest state "
                f"{result['rarest_state_purity']:.3f})")
        return line + (f", junk AUC {result['junk_neighbour_auc']:.3f}" if "junk_neighbour_auc" in result else "")
    return (f"mean FSC {result['mean_fsc']:.4f}, latent PC1 |Spearman| {result['latent_pc1_spearman']:.4f}, "
            f"linear R^2 {result['latent_linear_r2']:.4f}")


def run_evaluator(run_dir, gt_dir):
    """The evaluation `hetrec train --gt` does (see train.trainer.Trainer's evaluate): evaluate_run, and a
    line for train.log."""
    def evaluate_and_summarise(model, z, epoch, metrics, rows):
        return summary_line(evaluate_run(run_dir, model, z, gt_dir, metrics, epoch, rows))
    return evaluate_and_summarise


def evaluate_run(run_dir, model, z, gt_dir, metrics=None, epoch=None, rows=None):
    """evaluate() for a run: RUN/eval.json, decoded maps in RUN/eval_maps/, and eval/* scalars on `metrics`
    (a train.metrics logger) at `epoch`. rows: the store rows of z's particles (a run on a subset)."""
    check_ground_truth_extent(gt_dir, model.shape.box, model.pixel_size_A)
    map_dir = RunFolder(run_dir).evaluation_maps
    refuse_link(map_dir)
    if is_composition(gt_dir):
        truth, box = read_composition(gt_dir, rows), model.shape.box
        truth.update(state_maps=[(record, map_at_box(volume, box)) for record, volume in truth["state_maps"]],
                     core=map_at_box(truth["core"], box), subunits=[map_at_box(v, box) for v in truth["subunits"]])
        result = evaluate_composition(model, z, truth, map_dir)
        scores = ("mean_fsc", "mean_resolution_0.5_A", "min_present_occupancy", "max_absent_occupancy", "ari",
                  "neighbour_purity", "rarest_state_purity", "junk_neighbour_auc")
    else:
        coordinates, maps = read_ground_truth(gt_dir, rows=rows)
        result = evaluate(model, z, coordinates, maps_at_box(maps, model.shape.box), map_dir=map_dir)
        scores = ("mean_fsc", "mean_resolution_0.5_A", "latent_pc1_spearman", "latent_linear_r2")
    result["epoch"] = epoch
    write_text(RunFolder(run_dir).evaluation, json.dumps(result, indent=2))
    if metrics is not None:
        metrics.scalars({f"eval/{name}": result[name] for name in scores if result.get(name) is not None}, epoch)
    return result
