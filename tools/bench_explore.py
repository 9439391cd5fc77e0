"""hetrec explore's latency: click to picture at box 64, 128 and 256, and the page's load time at 10k and 1M
particles, on the real server in headless Chromium (explore.headless).

The model is untrained but its maps are real ones: the basis holds the built-in hinge at K+1 coordinates
(the mean and K differences), so the surfaces have the size and shape of a trained run's; latents are N(0, I).
What a map costs does not depend on training: box, K and zdim fix it.

Click to picture: from Plotly's click event in the page to the surface's redraw (plotly_afterplot), timed by
the page's clock; beside it the server's share (the callback's POST, timed from Python) and, in-process, the
map (the basis' linear combination), the marching cubes and the figure's JSON.

    python tools/bench_explore.py                    # boxes 64 128 256, load at 10k and 1M
    python tools/bench_explore.py --boxes 128 --loads 10000
"""

import argparse
import json
import statistics
import sys
import time
import urllib.request

import numpy as np
import torch

from hetrec_dist.explore import headless
from hetrec_dist.explore.app import build_app, map_figures
from hetrec_dist.explore.session import Colouring, Explorer, RunRecords
from hetrec_dist.model.hetvae import HetVAE, ModelShape
from hetrec_dist.physics.maps import map_to_half_ball
from hetrec_dist.simulate.atom_models import hinge_model
from hetrec_dist.simulate.render import render_map

PIXEL_SIZE_A = {64: 2.0, 128: 1.0, 256: 0.5}  # the hinge (about 80 Å across) fills each box alike
ZDIM, N_BASIS = 8, 16


def hinge_model_run(box, n_particles, seed=0):
    """A HetVAE whose basis holds hinge maps, and an Explorer of n_particles N(0, I) latents."""
    torch.manual_seed(seed)
    pixel_size_A = PIXEL_SIZE_A[box]
    model = HetVAE(ModelShape(box=box, zdim=ZDIM, n_basis=N_BASIS, encoder_hidden=64, encoder_blocks=1,
                              encoder_radius=0.1, max_radius=0.48), pixel_size_A).eval()
    atoms = hinge_model()
    maps = [render_map(positions, atoms.weights, atoms.sigma_A, box, pixel_size_A)
            for positions in atoms.positions(np.linspace(0, 1, N_BASIS + 1))]
    mean = maps[0]
    columns = [mean] + [m - mean for m in maps[1:]]
    with torch.no_grad():
        coefficients = torch.stack([map_to_half_ball(torch.from_numpy(c).float(), model.half_ball, pixel_size_A)
                                    for c in columns], dim=1)
        model.set_components(coefficients)
        model.decoder.weight.mul_(0.3)
    z = np.random.default_rng(seed).normal(size=(n_particles, ZDIM)).astype(np.float32)
    colourings = {"k-means cluster": Colouring(np.random.default_rng(seed).integers(0, 10, n_particles).astype(float),
                                               "categorical"),
                  "particle index": Colouring(np.arange(n_particles, dtype=float))}
    records = RunRecords({"sources": {"metadata": [{"path": "none.star"}]}}, np.arange(n_particles))
    return Explorer(model, z, {"PCA": z[:, :2].copy()}, colourings, records, "/tmp/bench_explore",
                    [f"benchmark: box {box}"])


def _post_show_map(port, app, particle):
    body = headless.callback_body(
        app, "particle.data", changed="threshold.value",
        inputs=[{"id": "landscape", "property": "clickData", "value": None},
                {"id": "path-step", "property": "value", "value": 0},
                {"id": "threshold", "property": "value", "value": 5},
                {"id": "smoothing", "property": "value", "value": 0}],
        state=[{"id": "particle", "property": "data", "value": int(particle)},
               {"id": "path-maps", "property": "data", "value": []},
               {"id": "view", "property": "value", "value": "PCA"}])
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_dash-update-component", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request) as response:
        size = len(response.read())
    return time.perf_counter() - start, size


_WATCH = """var g = document.querySelector('#landscape .js-plotly-plot');
window.bench = {clicks: [], drawn: []};
g.on('plotly_click', () => window.bench.clicks.push(performance.now()));
var watch = () => { var s = document.querySelector('#surface .js-plotly-plot');
  if (s && s.on && !s.benchWatched) { s.benchWatched = true;
    s.on('plotly_afterplot', () => window.bench.drawn.push(performance.now())); } };
watch(); setInterval(watch, 50);"""


def click_to_picture(driver, explorer, n_clicks=8):
    """Seconds from each click's event to the last redraw of the surface after it, over n_clicks particles (each
    click on a drawn particle; whichever Plotly picks under the pointer)."""
    driver.execute_script(_WATCH)
    rng = np.random.default_rng(1)
    pixels = np.array(headless.to_page(driver, "landscape", explorer.views["PCA"][explorer.shown]))
    latencies = []
    for index in rng.choice(len(pixels), n_clicks, replace=False):
        title = driver.find_element("id", "map-title").text
        drawn = driver.execute_script("return window.bench.drawn.length")
        headless.click_at(driver, *pixels[index])
        headless.wait_for(driver, lambda d, t=title: d.find_element("id", "map-title").text != t)
        headless.wait_for(driver, lambda d, b=drawn: d.execute_script("return window.bench.drawn.length") > b)
        time.sleep(0.5)  # a second afterplot (the camera) may follow
        clicks, drawn = driver.execute_script("return [window.bench.clicks, window.bench.drawn]")
        latencies.append((max(t for t in drawn if t > clicks[-1]) - clicks[-1]) / 1000)
    return latencies


def bench_box(box, driver):
    explorer = hinge_model_run(box, 10_000)
    app = build_app(explorer)
    server = headless.serve_in_thread(app)
    try:
        parts = {"map": [], "marching cubes + figure": [], "figure JSON": []}
        for particle in range(5):
            start = time.perf_counter()
            volume = explorer.maps.map_at(explorer.z[100 + particle])
            parts["map"].append(time.perf_counter() - start)
            start = time.perf_counter()
            surface, cuts, _ = map_figures(explorer, volume, 5)
            parts["marching cubes + figure"].append(time.perf_counter() - start)
            start = time.perf_counter()
            size = len(surface.to_json()) + len(cuts.to_json())
            parts["figure JSON"].append(time.perf_counter() - start)
        posts = [_post_show_map(server.server_port, app, 200 + i) for i in range(5)]
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        headless.wait_for(driver, headless.page_ready)
        latencies = click_to_picture(driver, explorer)
        faces = headless.surface_faces(driver)
    finally:
        server.shutdown()
    ms = lambda values: f"{1000 * statistics.median(values):.0f}"
    print(f"box {box}: click to picture median {ms(latencies)} ms (max {1000 * max(latencies):.0f}, "
          f"{len(latencies)} clicks); server's POST {ms([p[0] for p in posts])} ms, reply {posts[0][1] / 1e6:.2f} MB; "
          f"in-process: map {ms(parts['map'])} ms, marching cubes + figure {ms(parts['marching cubes + figure'])} "
          f"ms, JSON {ms(parts['figure JSON'])} ms ({size / 1e6:.2f} MB); {faces:,} faces", flush=True)


def start_up_costs(z):
    """Seconds of what `hetrec explore` computes at start-up beside the page (cli.explore.load_explorer): PCA,
    k-means where the run has no analysis; and what `hetrec analyze` adds to its own time for explore: every
    particle's UMAP place from its 50,000-particle UMAP (here random, for the cost)."""
    from hetrec_dist.analysis.latent import kmeans, pca, places_from_sample

    costs = {}
    start = time.perf_counter()
    pca(z).project(z)
    costs["PCA"] = time.perf_counter() - start
    start = time.perf_counter()
    kmeans(z, 10)
    costs["k-means (k = 10)"] = time.perf_counter() - start
    rows = np.sort(np.random.default_rng(0).choice(len(z), min(len(z), 50_000), replace=False))
    start = time.perf_counter()
    places_from_sample(z, rows, np.random.default_rng(1).normal(size=(len(rows), 2)))
    costs["analyze's UMAP places (saved for explore)"] = time.perf_counter() - start
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in costs.items())


def bench_load(n_particles, driver):
    start = time.perf_counter()
    explorer = hinge_model_run(64, n_particles)
    app = build_app(explorer)
    built = time.perf_counter() - start
    server = headless.serve_in_thread(app)
    try:
        start = time.perf_counter()
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        headless.wait_for(driver, headless.page_ready, timeout_s=300)
        headless.wait_for(driver, lambda d: d.execute_script(
            "var g = document.querySelector('#landscape .js-plotly-plot');"
            "return g._fullData[0] && g._fullData[0].x && g._fullData[0].x.length;"), timeout_s=300)
        loaded = time.perf_counter() - start
    finally:
        server.shutdown()
    print(f"{n_particles:,} particles ({len(explorer.shown):,} drawn): page loaded in {loaded:.1f} s; the server's "
          f"explorer and page built in {built:.1f} s (from latents in memory); start-up's analysis: "
          f"{start_up_costs(explorer.z)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, nargs="*", default=[64, 128, 256])
    parser.add_argument("--loads", type=int, nargs="*", default=[10_000, 1_000_000])
    args = parser.parse_args()
    if headless.chromium_paths() is None:
        sys.exit("needs chromium and chromedriver: tools/install_browser.sh")
    driver = headless.start_chromium()
    try:
        for box in args.boxes:
            bench_box(box, driver)
        for n in args.loads:
            bench_load(n, driver)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
