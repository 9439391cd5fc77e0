"""Compositional data: `hetrec simulate --assembly`, the occupancy and separation scores, `hetrec eval` on such a
run, and `hetrec reconstruct` of a state's particles telling its composition."""

import json

import mrcfile
import numpy as np
import pandas as pd
import pytest

from conftest import assert_one_line_error, run_cli

from hetrec_dist.analysis.composition import (
    junk_separation,
    neighbour_purity,
    occupancies,
    state_separation,
)
from hetrec_dist.simulate.atom_models import assembly_model, parse_states
from hetrec_dist.simulate.render import render_map


@pytest.fixture(scope="module")
def assembly_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("assembly") / "sim"
    run_cli("simulate", "--assembly", "-o", out, "--n", 600, "-D", 32, "--snr", 1.0, "--junk-fraction", 0.1,
            "--states", "1111:50,1100:30,0011:20", "-q")
    return out


def test_occupancy_of_maps_built_here():
    """Maps made of the core, subunits at chosen strengths, a constant, noise and another scale: the fit gives
    those strengths back."""
    model = assembly_model()
    box, pixel_size_A = 48, 128 / 48
    part = [render_map(model.start, model.part_weights(p), model.sigma_A, box, pixel_size_A) for p in range(5)]
    strengths = np.array([1.0, 0.0, 0.5, 0.1])
    volume = 3.0 * (part[0] + np.tensordot(strengths, np.stack(part[1:]), 1)) + 1e-4
    volume += np.random.default_rng(0).normal(size=volume.shape) * 0.02 * volume.std()
    np.testing.assert_allclose(occupancies(volume, part[0], part[1:], pixel_size_A), strengths, atol=0.02)


def test_separation_scores_against_latents_built_here():
    rng = np.random.default_rng(0)
    states = np.repeat([0, 1, 2], [200, 100, 20])
    apart = rng.normal(size=(len(states), 4)) * 0.1 + np.eye(4)[states] * 3
    mixed = rng.normal(size=(len(states), 4))
    assert state_separation(apart, states)["ari"] > 0.99
    assert neighbour_purity(apart, states) == (1.0, 1.0)
    assert state_separation(mixed, states)["ari"] < 0.05
    assert neighbour_purity(mixed, states)[1] < 0.3  # the rarest state: 20 of 320
    junk = rng.uniform(size=len(states)) < 0.1
    assert junk_separation(np.where(junk[:, None], apart + 10, apart), junk) == 1.0
    assert 0.35 < junk_separation(mixed, junk) < 0.65


def test_assembly_states_populations_and_truth(assembly_dir):
    truth = json.loads((assembly_dir / "ground_truth" / "ground_truth.json").read_text())
    assert truth["kind"] == "composition"
    assert [s["subunits"] for s in truth["states"]] == ["1111", "1100", "0011"]
    states = np.load(assembly_dir / "ground_truth" / "states.npy")
    junk = np.load(assembly_dir / "ground_truth" / "junk.npy")
    assert np.array_equal(states < 0, junk)
    shares = np.bincount(states[~junk]) / (~junk).sum()
    np.testing.assert_allclose(shares, [0.5, 0.3, 0.2], atol=0.07)
    parts = np.load(assembly_dir / "ground_truth" / "junk_parts.npy")
    assert set(parts[junk]) <= {0, 1, 2, 3, 4} and (parts[~junk] == -1).all()
    # a state's map is the core's plus its subunits' maps
    read = lambda name: mrcfile.read(assembly_dir / "ground_truth" / name)  # noqa: E731
    np.testing.assert_allclose(read("state_01.mrc"), read("core.mrc") + read("subunit_A.mrc") + read("subunit_B.mrc"),
                               atol=1e-6)


@pytest.mark.parametrize("states, fragment", [("1111:50", "at least two states"), ("111:50,1000:50", "4 digits"),
                                              ("1111:50,1111:20", "given twice"), ("1111:x,1000:2", "4 digits")])
def test_bad_states_are_one_line_errors(states, fragment, tmp_path):
    with pytest.raises(Exception, match=fragment):
        parse_states(states)
    result = run_cli("simulate", "--assembly", "--states", states, "-o", tmp_path / "s", "--n", 10, "-D", 16,
                     expect_ok=False)
    assert_one_line_error(result, fragment)


def test_a_state_that_drew_no_particles_is_a_warning(tmp_path):
    result = run_cli("simulate", "--assembly", "--states", "1111:1e9,1010:1", "-o", tmp_path / "s", "--n", 20, "-D",
                     16, "-q")
    assert "Warning: state(s) 1 drew no particles" in result.output


def test_eval_and_reconstruct_on_compositional_data(assembly_dir, tmp_path):
    store, run = tmp_path / "p.zarr", tmp_path / "run"
    run_cli("convert", assembly_dir / "particles.star", "-o", store, "-q")
    run_cli("train", store, "-o", run, "--epochs", 2, "--batch-size", 64, "--zdim", 2, "--n-basis", 3, "-q")
    result = run_cli("eval", run, "--gt", assembly_dir / "ground_truth")
    assert "state 1 (1100" in result.output and "junk AUC" in result.output
    scores = json.loads((run / "eval.json").read_text())
    assert scores["kind"] == "composition" and len(scores["states"]) == 3
    assert all(len(s["occupancy"]) == 4 for s in scores["states"])
    assert 0 <= scores["junk_neighbour_auc"] <= 1 and -1 <= scores["ari"] <= 1

    run_cli("analyze", run, "--k", 3, "--no-umap", "--reconstruct")
    summary = json.loads((run / "analyze.3" / "summary.json").read_text())
    rebuilt = summary["reconstructions"]
    assert [r["particles"] for r in rebuilt] == summary["cluster_sizes"]
    for record in rebuilt:
        with mrcfile.open(run / "analyze.3" / "reconstructions" / record["map"]) as mrc:
            assert mrc.data.shape == (32, 32, 32) and float(mrc.voxel_size.x) == pytest.approx(4.0)
    page = (run / "analyze.3" / "index.html").read_text()
    assert "reconstruction from its particles" in page and "cluster_reconstructions.png" in page
    run_cli("reconstruct", run, "--clusters", 1, "--k", 3, "-o", tmp_path / "cluster1", "-q")
    np.testing.assert_allclose(mrcfile.read(run / "analyze.3" / "reconstructions" / "cluster_01_half1.mrc"),
                               mrcfile.read(tmp_path / "cluster1" / "half1.mrc"), rtol=1e-5, atol=1e-7)

    # the signal score points at the junk: empty images hold none of the model's density, loose subunits little
    signal = np.load(run / "analyze.3" / "signal_score.npy")
    parts = np.load(assembly_dir / "ground_truth" / "junk_parts.npy")
    assert 0.9 < np.median(signal[parts < 0]) < 1.3  # 1: the median of all, junk included
    assert np.median(signal[parts > 0]) < 0.3 and signal[parts == 0].max() < 0.2
    run_cli("select", run, "--k", 3, "--signal-below", 0.5, "-o", tmp_path / "junk.pkl")
    junk_rows = pd.read_pickle(tmp_path / "junk.pkl")
    assert set(np.flatnonzero(parts == 0)) <= set(junk_rows) and (parts[junk_rows] >= 0).mean() > 0.8

    states = np.load(assembly_dir / "ground_truth" / "states.npy")
    (tmp_path / "state2.txt").write_text("\n".join(map(str, np.flatnonzero(states == 2))))
    run_cli("reconstruct", store, "--ind", tmp_path / "state2.txt", "-o", tmp_path / "rec", "-q")
    truth = assembly_dir / "ground_truth"
    parts = [mrcfile.read(truth / name) for name in ("core.mrc", "subunit_A.mrc", "subunit_B.mrc",
                                                      "subunit_C.mrc", "subunit_D.mrc")]
    found = occupancies(mrcfile.read(tmp_path / "rec" / "map.mrc"), parts[0], parts[1:], 4.0)
    np.testing.assert_allclose(found, [0, 0, 1, 1], atol=0.2)  # state 0011, from its ~100 particles alone
