"""README's picture of `hetrec explore`: the page of a run in headless Chromium (explore.headless, the driver the
browser tests use), coloured by the true coordinate where given, one particle clicked and a region lassoed.

    python tools/explore_screenshot.py demo/run --gt demo/sim/ground_truth -o docs/images/explore.png
"""

import argparse
import sys
import tempfile
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--gt")
    parser.add_argument("-o", "--out", default="docs/images/explore.png")
    args = parser.parse_args()

    from hetrec_dist.cli.explore import load_explorer
    from hetrec_dist.explore import headless
    from hetrec_dist.explore.app import build_app

    if headless.chromium_paths() is None:
        sys.exit("needs chromium and chromedriver: tools/install_browser.sh")
    explorer = load_explorer(args.run, gt_dir=args.gt, out_dir=tempfile.mkdtemp())
    if "true coordinate" in explorer.colourings:  # the page's first colouring: the motion, for the picture
        explorer.colourings = {"true coordinate": explorer.colourings.pop("true coordinate"), **explorer.colourings}
    server = headless.serve_in_thread(build_app(explorer))
    driver = headless.start_chromium()
    try:
        driver.set_window_size(1500, 1000)
        driver.get(f"http://127.0.0.1:{server.server_port}/")
        headless.wait_for(driver, headless.page_ready)
        xy = explorer.views["PCA"]
        pixels = np.array(headless.to_page(driver, "landscape", xy))
        particle = int(np.argmax(xy[:, 0]))  # the far end of PC1
        headless.click_at(driver, *pixels[particle])
        headless.wait_for(driver, lambda d: headless.surface_faces(d) > 0)
        centre, spread = np.median(pixels, axis=0), pixels.std(0)
        angles = np.linspace(0, 2 * np.pi, 11)
        lasso = centre + np.column_stack([np.cos(angles) * spread[0] * 0.5 - spread[0],
                                          np.sin(angles) * spread[1] * 0.6])
        headless.drag_through(driver, list(lasso))
        headless.wait_for(driver, lambda d: "lasso" in d.find_element("id", "selected-count").text)
        time.sleep(1.5)
        headless.screenshot(driver, args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
