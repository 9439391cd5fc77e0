"""hetrec explore in a real browser (headless Chromium, explore.headless): the page loads without a JavaScript
error, a click shows the map of the particle under the pointer, the threshold changes the surface, a lasso
saves exactly the particles inside it, and a server bound beyond localhost wants its token.

Skipped where Chromium is not installed (tools/install_browser.sh installs it), except under
HETREC_BROWSER_TESTS=required, which CI sets: there a missing browser fails."""

import os
import pickle

import numpy as np
import pytest
import starfile
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from hetrec_dist.cli.explore import load_explorer
from hetrec_dist.explore import headless
from hetrec_dist.explore.app import build_app

if headless.chromium_paths() is None:
    if os.environ.get("HETREC_BROWSER_TESTS") == "required":
        raise RuntimeError("HETREC_BROWSER_TESTS=required but chromium or chromedriver is missing; run "
                           "tools/install_browser.sh")
    pytest.skip("no chromium and chromedriver (tools/install_browser.sh installs them)", allow_module_level=True)


@pytest.fixture(scope="module")
def explorer(two_epoch_run, tmp_path_factory):
    return load_explorer(str(two_epoch_run), out_dir=str(tmp_path_factory.mktemp("explore")), device="cpu")


@pytest.fixture(scope="module")
def browser():
    driver = headless.start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(explorer, browser):
    server = headless.serve_in_thread(build_app(explorer))
    browser.get(f"http://127.0.0.1:{server.server_port}/")
    headless.wait_for(browser, headless.page_ready)
    yield browser
    server.shutdown()


def _text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def test_a_click_shows_the_map_of_the_particle_under_the_pointer(explorer, page):
    xy = explorer.views["PCA"]
    pixels = np.array(headless.to_page(page, "landscape", xy))
    gaps = np.linalg.norm(pixels[:, None] - pixels[None], axis=-1) + np.eye(len(pixels)) * 1e9
    particle = int(gaps.min(1).argmax())  # the most isolated on screen: nothing else under the pointer
    headless.click_at(page, *pixels[particle])
    headless.wait_for(page, lambda d: f"particle {particle}'s" in _text(d, "map-title"))
    faces = headless.wait_for(page, headless.surface_faces)
    assert faces > 100
    assert headless.errors_in_console(page) == []


def test_the_threshold_changes_the_surface(page):
    before = headless.wait_for(page, headless.surface_faces)
    page.find_element(By.CSS_SELECTOR, "#threshold [role=slider]").send_keys(Keys.HOME)  # 0.5% of the box
    after = headless.wait_for(page, lambda d: (n := headless.surface_faces(d)) != before and n)
    assert after < before / 2
    assert "volume level" in _text(page, "level-note")


def test_a_lasso_saves_exactly_the_particles_inside_it(explorer, page, sim_dir):
    xy = explorer.views["PCA"]
    page.execute_script("window.scrollTo(0, 0)")
    pixels = np.array(headless.to_page(page, "landscape", xy))
    centre = np.median(pixels, axis=0)
    spread = pixels.std(0)
    angles = np.linspace(0, 2 * np.pi, 13)[:-1]
    polygon = centre + np.column_stack([np.cos(angles) * spread[0], np.sin(angles) * spread[1] * 0.7])
    headless.drag_through(page, list(polygon) + [polygon[0]])
    headless.wait_for(page, lambda d: "lasso" in _text(d, "selected-count"))
    # independently: the particles whose pixels lie inside the polygon drawn, certain away from its edges
    from matplotlib.path import Path

    outline = Path(polygon)
    inside_pixels = outline.contains_points(pixels)
    near_edge = outline.contains_points(pixels, radius=4) != outline.contains_points(pixels, radius=-4)
    count = int(_text(page, "selected-count").split(" of ")[0].replace(",", ""))
    assert inside_pixels.sum() - near_edge.sum() <= count <= inside_pixels.sum() + near_edge.sum()

    page.find_element(By.ID, "selection-name").send_keys("middle")
    page.find_element(By.ID, "save").click()
    headless.wait_for(page, lambda d: "Saved" in _text(d, "message") or "Not saved" in _text(d, "message"))
    assert "Saved" in _text(page, "message"), _text(page, "message")
    folder = os.path.join(explorer.out_dir, "selections")
    with open(os.path.join(folder, "middle.pkl"), "rb") as f:
        input_rows = pickle.load(f)
    saved = np.flatnonzero(np.isin(explorer.records.source_rows, input_rows))
    assert len(saved) == count
    certain = np.flatnonzero(inside_pixels & ~near_edge)
    possible = np.flatnonzero(inside_pixels | near_edge)
    assert set(certain) <= set(saved) <= set(possible)
    star = starfile.read(os.path.join(folder, "middle.star"), always_dict=True)["particles"]["rlnImageName"]
    original = starfile.read(os.path.join(sim_dir, "particles.star"), always_dict=True)["particles"]["rlnImageName"]
    assert list(star) == list(original.iloc[np.sort(input_rows)])
    assert headless.errors_in_console(page) == []


def test_the_selection_outlives_a_save_and_a_redraw_and_inverts(explorer, page):
    """Saving redraws the plot (the saved selection shown), which clears Plotly's outline: the selection
    stays, so that lasso junk, save, invert, save gives the clean particles."""
    page.execute_script("window.scrollTo(0, 0)")
    pixels = np.array(headless.to_page(page, "landscape", explorer.views["PCA"]))
    low, high = pixels.min(0), pixels.max(0)
    box = [low - 5, [low[0] + 0.3 * (high[0] - low[0]), high[1] + 5]]  # the left 30% of the particles
    headless.drag_through(page, [box[0], [box[0][0], box[1][1]], box[1], [box[1][0], box[0][1]], box[0]])
    headless.wait_for(page, lambda d: "lasso" in _text(d, "selected-count"))
    count = int(_text(page, "selected-count").split(" of ")[0].replace(",", ""))
    name = page.find_element(By.ID, "selection-name")
    name.send_keys(Keys.CONTROL, "a", Keys.DELETE)  # an earlier test's name; clear() leaves React's value
    name.send_keys("junk")
    page.find_element(By.ID, "save").click()
    headless.wait_for(page, lambda d: "/junk.pkl" in _text(d, "message"))
    assert "junk.pkl" in _text(page, "message") and "Saved" in _text(page, "message"), _text(page, "message")
    page.find_element(By.ID, "invert").click()
    headless.wait_for(page, lambda d: "inverted" in _text(d, "selected-count"))
    assert _text(page, "selected-count").startswith(f"{explorer.n_particles - count:,} of")
    name.send_keys(Keys.CONTROL, "a", Keys.DELETE)
    name.send_keys("clean")
    page.find_element(By.ID, "save").click()
    headless.wait_for(page, lambda d: "/clean.pkl" in _text(d, "message"))
    folder = os.path.join(explorer.out_dir, "selections")
    junk, clean = (set(pickle.load(open(os.path.join(folder, f"{n}.pkl"), "rb")).tolist()) for n in ("junk", "clean"))
    assert not junk & clean and len(junk | clean) == explorer.n_particles

    page.find_element(By.ID, "reconstruct").click()  # the clean particles, without the model
    headless.wait_for(page, lambda d: "econstruct" in _text(d, "message"), timeout_s=60)
    assert _text(page, "message").startswith(f"Reconstructed {len(clean):,} particles"), _text(page, "message")
    assert f"Reconstruction of the {len(clean):,} selected particles" in _text(page, "map-title")
    assert os.path.isfile(os.path.join(explorer.out_dir, "reconstructions", "clean", "map.mrc"))
    assert headless.errors_in_console(page) == []


def test_a_path_between_two_clicked_particles_plays_its_maps(explorer, page):
    page.execute_script("window.scrollTo(0, 0)")
    pixels = np.array(headless.to_page(page, "landscape", explorer.views["PCA"]))
    gaps = np.linalg.norm(pixels[:, None] - pixels[None], axis=-1) + np.eye(len(pixels)) * 1e9
    isolated = np.argsort(gaps.min(1))[::-1]
    left, right = min(isolated[:20], key=lambda i: pixels[i, 0]), max(isolated[:20], key=lambda i: pixels[i, 0])
    for particle, button in ((left, "path-from"), (right, "path-to")):
        page.execute_script("window.scrollTo(0, 0)")
        headless.click_at(page, *pixels[particle])
        headless.wait_for(page, lambda d, p=particle: f"particle {p}'s" in _text(d, "map-title"))
        page.find_element(By.ID, button).click()
    headless.wait_for(page, lambda d: "through" in _text(d, "path-note") or "join" in _text(d, "path-note"))
    assert f"path from particle {left} to {right}" in _text(page, "path-note")
    along, on_path = explorer.path(int(left), int(right))
    page.find_element(By.ID, "path-play").click()
    seen = set()
    headless.wait_for(page, lambda d: seen.add(_text(d, "map-title")) or len(seen) >= 3, timeout_s=60)
    page.find_element(By.ID, "path-play").click()  # stop
    shown = {int(title.split("particle ")[1].split("'")[0]) for title in seen}
    assert shown - {int(right)} <= set(on_path.tolist())
    assert headless.errors_in_console(page) == []


def test_a_server_beyond_localhost_wants_its_token(explorer, browser):
    server = headless.serve_in_thread(build_app(explorer, token="t0ken"))
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        assert "needs the token" in browser.find_element(By.TAG_NAME, "body").text
        headless.errors_in_console(browser)  # the refusal's 403, read off the log
        browser.get(f"http://127.0.0.1:{server.server_port}/?token=t0ken")
        headless.wait_for(browser, headless.page_ready)
        assert headless.errors_in_console(browser) == []
    finally:
        server.shutdown()
