"""The explore page in headless Chromium, for its browser tests, its screenshot (tools/explore_screenshot.py)
and its benchmark (tools/bench_explore.py): Debian's chromium and chromedriver driven by Selenium, nothing
downloaded. WebGL (the scatter plot and the surface) runs on Chromium's software renderer, SwiftShader."""

import os
import shutil
import threading
import time

CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--enable-unsafe-swiftshader", "--window-size=1400,1100")
# a plot's data point -> the page's pixel (Plotly's axes: l2p maps data to the plot area, _offset places it)
_TO_PAGE = """var g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot'), r = g.getBoundingClientRect();
var xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
return arguments[1].map(p => [r.left + xa._offset + xa.l2p(p[0]), r.top + ya._offset + ya.l2p(p[1])]);"""
_TO_DATA = """var g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot'), r = g.getBoundingClientRect();
var xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
return arguments[1].map(p => [xa.p2l(p[0] - r.left - xa._offset), ya.p2l(p[1] - r.top - ya._offset)]);"""


def chromium_paths():
    """(chromium, chromedriver) or None where either is missing (tools/install_browser.sh installs them)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_chromium():
    """A Selenium WebDriver of headless Chromium with its console log kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.binary_location = browser
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def serve_in_thread(app, host="127.0.0.1", port=0):
    """Serve a Dash app from a daemon thread; returns the werkzeug server (server_port; shutdown())."""
    from hetrec_dist.explore.app import make_server

    server = make_server(app, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def callback_body(app, first_output, inputs, state=(), changed=None):
    """The JSON body the page POSTs to /_dash-update-component to run the callback of `app` whose outputs begin
    with `first_output` ("id.property"): inputs and state as [{"id", "property", "value"}], changed: the
    input that fired ("id.property"; the first input where None). For tests and benchmarks without a browser."""
    key = next(k for k in app.callback_map if k.lstrip(".").startswith(first_output))
    outputs = [{"id": part.rsplit(".", 1)[0], "property": part.rsplit(".", 1)[1]}
               for part in key.strip(".").split("...")]
    return {"output": key, "outputs": outputs if key.startswith("..") else outputs[0], "inputs": list(inputs),
            "state": list(state), "changedPropIds": [changed or f"{inputs[0]['id']}.{inputs[0]['property']}"]}


def wait_for(driver, condition, timeout_s=30, poll_s=0.02):
    """Poll condition(driver) until it is truthy; its value. TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition(driver)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not get there in {timeout_s} s")
        time.sleep(poll_s)


def page_ready(driver):
    return driver.execute_script("var g = document.querySelector('#landscape .js-plotly-plot');"
                                 "return !!(g && g._fullLayout && g._fullLayout.xaxis && g._fullData);")


def to_page(driver, graph, points):
    """Page pixels (x, y) of data points of the graph with id `graph`."""
    return driver.execute_script(_TO_PAGE, graph, [[float(x), float(y)] for x, y in points])


def to_data(driver, graph, pixels):
    """Data coordinates of page pixels over the graph with id `graph`."""
    return driver.execute_script(_TO_DATA, graph, [[float(x), float(y)] for x, y in pixels])


def click_at(driver, x, y):
    """Hover, then click, at page pixel (x, y): Plotly reports a click on the point it hovers."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(round(x)) - 3, int(round(y)))
    actions.pointer_action.pause(0.2)
    actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
    actions.pointer_action.pause(0.2)
    actions.pointer_action.click()
    actions.perform()


def drag_through(driver, pixels):
    """Press at the first page pixel, move through the others, release (a lasso or a box selection)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(*map(int, pixels[0]))
    actions.pointer_action.pointer_down()
    for x, y in pixels[1:]:
        actions.pointer_action.move_to_location(int(x), int(y))
        actions.pointer_action.pause(0.05)
    actions.pointer_action.pointer_up()
    actions.perform()


def surface_faces(driver):
    """The number of faces of the surface drawn in the page (0 before any)."""
    return driver.execute_script("var g = document.querySelector('#surface .js-plotly-plot');"
                                 "return g && g._fullData && g._fullData.length && g._fullData[0].i ? "
                                 "g._fullData[0].i.length : 0;")


def errors_in_console(driver):
    """The page's SEVERE console entries (JavaScript errors, failed requests)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    driver.save_screenshot(path)
