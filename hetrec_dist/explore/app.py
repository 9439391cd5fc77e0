"""The `hetrec explore` page: a Dash application (Plotly's; it serves its own scripts, so it works without
internet) over an Explorer (explore.session).

Why Dash: WebGL scatter plots with lasso and box selection, 3-D meshes and heat maps are Plotly's own; Dash
wires them to Python callbacks with no JavaScript to write or build, and serves from the same process, so the
maps stay in memory between clicks.

Security: the caller binds to 127.0.0.1 unless told otherwise; with a token (any other address), every request
must carry it, in the address (?token=...) once, then in a cookie (as Jupyter does).
"""

import hmac
import secrets
from collections import OrderedDict

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from dash import Dash, Input, Output, Patch, State, ctx, dcc, html, no_update
from plotly.subplots import make_subplots

from hetrec_dist.analysis.half_maps import describe_resolution
from hetrec_dist.analysis.maps import chimerax_level
from hetrec_dist.errors import UserError
from hetrec_dist.explore.session import mesh, mesh_step, sections

COOKIE = "hetrec_explore_token"
# no "Share chart" button (Plotly's upload of the figure, the run's data, to its cloud) and no destination for it
OFFLINE = {"displaylogo": False, "showSendToCloud": False, "showEditInChartStudio": False, "plotlyServerURL": ""}
ENCLOSED_PERCENT = 5  # the surface's default level: the top 5% of voxels (analysis.maps.chimerax_level)
SMOOTHING_A = (2, 4, 8)  # the surface's Gaussian smoothing choices; the sections and downloads stay unsmoothed
MAX_FACES = 150_000  # faces of the surface sent to the page (about 2 MB)
PALETTE = plotly.colors.qualitative.Dark24  # one colour a category, up to 24
# traces of the landscape figure, in drawing order (later on top)
POINTS, HIGHLIGHT, PATH = range(3)


def _colour_marker(colouring):
    """Marker settings for a Colouring: one colour per category (up to 24), a cyclic scale for angles, else
    viridis, each with a colour bar."""
    values = colouring.values
    if colouring.kind == "categorical":
        categories = np.unique(values)
        if len(categories) <= len(PALETTE):
            codes = np.searchsorted(categories, values)
            n = len(categories)
            scale = []
            for i in range(n):
                scale += [[i / n, PALETTE[i]], [(i + 1) / n, PALETTE[i]]]
            labels = [str(int(c)) if float(c).is_integer() else f"{c:g}" for c in categories]
            return codes, {"colorscale": scale, "cmin": -0.5, "cmax": n - 0.5,
                           "colorbar": {"tickvals": list(range(n)), "ticktext": labels}}
    if colouring.kind == "cyclic":
        return values, {"colorscale": "Twilight", "cmin": -180, "cmax": 180, "colorbar": {"ticksuffix": "°"}}
    return values, {"colorscale": "Viridis", "colorbar": {}}


def landscape_figure(explorer, view, colour, highlight=None, path=None):
    """The particles drawn (explorer.shown) in `view`, coloured by `colour`, with a saved selection
    (`highlight`, positions) and a path (positions) drawn over them."""
    xy = explorer.views[view]
    shown = explorer.shown
    values, marker = _colour_marker(explorer.colourings[colour])
    marker["colorbar"]["title"] = {"text": colour, "side": "right"}
    figure = go.Figure()
    figure.add_trace(go.Scattergl(x=xy[shown, 0], y=xy[shown, 1], customdata=shown, mode="markers",
                                  marker={"size": 4, "color": np.asarray(values)[shown], "opacity": 0.7, **marker},
                                  hovertemplate="particle %{customdata}<extra></extra>", name="particles"))
    chosen = np.intersect1d(shown, highlight) if highlight is not None else np.zeros(0, np.int64)
    figure.add_trace(go.Scattergl(x=xy[chosen, 0], y=xy[chosen, 1], customdata=chosen, mode="markers",
                                  marker={"size": 6, "color": "rgba(0,0,0,0)", "line": {"width": 1, "color": "black"}},
                                  hoverinfo="skip", name="selection"))
    path = np.asarray(path if path is not None else [], dtype=np.int64)
    figure.add_trace(go.Scattergl(x=xy[path, 0], y=xy[path, 1], mode="lines", line={"color": "crimson", "width": 2},
                                  hoverinfo="skip", name="path"))
    names = ("PC1", "PC2") if view == "PCA" else ("UMAP1", "UMAP2")
    figure.update_layout(dragmode="lasso", showlegend=False, margin={"l": 50, "r": 10, "t": 10, "b": 40},
                         xaxis_title=names[0], yaxis_title=names[1], uirevision=view, clickmode="event")
    return figure


def particle_mark(xy, particle):
    """Where the mark of the particle whose map is shown goes (the page's clientside callback draws it)."""
    return {"x": float(xy[particle, 0]), "y": float(xy[particle, 1]), "text": f"particle {particle}"}


def map_figures(explorer, volume, enclosed_percent, smoothing_A=0):
    """(the isosurface as a 3-D mesh, the three central sections, the surface's level) of a map; the surface of
    the map smoothed by a Gaussian of smoothing_A (Å, 0: none) where asked."""
    sections_of = volume
    if smoothing_A:
        from scipy.ndimage import gaussian_filter

        volume = gaussian_filter(volume, smoothing_A / explorer.model.pixel_size_A, mode="wrap")
    every = max(1, volume.shape[0] // 128)  # the quantile of a 256^3 map costs more than its surface
    level = chimerax_level(volume[::every, ::every, ::every], enclosed_percent / 100)
    step = mesh_step(volume.shape[0])
    vertices, faces = mesh(volume, level, explorer.model.pixel_size_A, step)
    while len(faces) > MAX_FACES:  # a noisy map at a low level: coarser, not a page that stalls
        step += 1
        vertices, faces = mesh(volume, level, explorer.model.pixel_size_A, step)
    faces = faces.astype(np.uint16 if len(vertices) < 2 ** 16 else np.uint32)  # half the bytes, most maps
    surface = go.Figure(go.Mesh3d(x=vertices[:, 0], y=vertices[:, 1], z=vertices[:, 2], i=faces[:, 0],
                                  j=faces[:, 1], k=faces[:, 2], color="#9fb7d9", flatshading=False,
                                  lighting={"ambient": 0.45, "diffuse": 0.8, "specular": 0.15}, hoverinfo="skip"))
    extent = volume.shape[0] * explorer.model.pixel_size_A
    axis = {"range": [0, extent], "title": {"text": "Å"}, "showbackground": False}
    surface.update_layout(scene={"xaxis": axis, "yaxis": axis, "zaxis": axis, "aspectmode": "cube"},
                          margin={"l": 0, "r": 0, "t": 0, "b": 0}, uirevision="camera")
    titles = ("section normal to z", "section normal to y", "section normal to x")
    cuts = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.04)
    for i, section in enumerate(sections(sections_of)):
        coordinates = np.arange(len(section)) * (volume.shape[0] / len(section)) * explorer.model.pixel_size_A
        cuts.add_trace(go.Heatmap(z=section, x=coordinates, y=coordinates, colorscale="gray", showscale=False,
                                  hovertemplate="%{z:.3g}<extra></extra>"), row=1, col=i + 1)
        cuts.update_xaxes(title_text="Å", row=1, col=i + 1, constrain="domain")
        cuts.update_yaxes(scaleanchor=f"x{i + 1 if i else ''}", row=1, col=i + 1, constrain="domain")
    cuts.update_layout(margin={"l": 30, "r": 10, "t": 30, "b": 30}, height=260)
    return surface, cuts, level


def fsc_figure(result, box, pixel_size_A):
    """The half-maps' FSC curve at a latent against spatial frequency (1/Å), with the 0.143 line and the
    joined resolutions shaded (analysis.half_maps.latent_resolution)."""
    curve = np.asarray(result["curve"])
    frequency = np.arange(len(curve)) / (box * pixel_size_A)
    figure = go.Figure(go.Scatter(x=frequency[1:], y=curve[1:], mode="lines", name="FSC",
                                  customdata=1 / frequency[1:], hovertemplate="%{customdata:.1f} Å: %{y:.3f}"))
    figure.add_hline(y=0.143, line_dash="dot", annotation_text="0.143")
    if result.get("joined_A"):  # the halves are one there (HetVAE.join_half_sets)
        figure.add_vrect(x0=0, x1=1 / result["joined_A"], fillcolor="grey", opacity=0.15, line_width=0,
                         annotation_text="joined", annotation_position="top left")
    figure.update_layout(xaxis_title="spatial frequency (1/Å)", yaxis_title="FSC", yaxis_range=[-0.1, 1.05], height=220,
                         margin={"l": 40, "r": 10, "t": 10, "b": 40})
    return figure


def _layout(explorer):
    views = list(explorer.views)
    colours = list(explorer.colourings)
    n, n_shown = explorer.n_particles, len(explorer.shown)
    shown_note = (f"all {n:,} particles drawn" if n_shown == n else
                  f"{n_shown:,} of {n:,} particles drawn (a random sample); selections count every particle")
    button = {"marginRight": "6px"}
    left = html.Div(style={"flex": "1 1 45%", "minWidth": "420px"}, children=[
        html.Div([html.Label("view: ", style={"marginRight": "4px"}),
                  dcc.RadioItems(views, views[0], id="view", inline=True,
                                 style={"display": "inline-block", "marginRight": "16px"}),
                  html.Label("colour by "),
                  dcc.Dropdown(colours, colours[0], id="colour", clearable=False,
                               style={"width": "260px", "display": "inline-block", "verticalAlign": "middle"})]),
        dcc.Graph(id="landscape", figure=landscape_figure(explorer, views[0], colours[0]),
                  style={"height": "520px"}, config={"scrollZoom": True, **OFFLINE}),
        html.Div(shown_note, id="shown-note", style={"color": "#555"}),
        html.H3("Selection"),
        html.Div("Lasso or box-select particles in the plot (the tools at its top right).", id="selected-count"),
        html.Div([dcc.Input(id="selection-name", placeholder="name, e.g. state_A",
                            style={"width": "160px", "marginRight": "6px"}),
                  html.Button("Save selection", id="save", style=button),
                  html.Button("Invert", id="invert", style=button),
                  html.Button("Reconstruct selection", id="reconstruct", style=button,
                              title="From the selected particles' images alone, without the model (hetrec "
                                    "reconstruct): half-maps, map and gold-standard resolution"),
                  html.Label(" saved: "),
                  dcc.Dropdown(list(explorer.selections), None, id="saved", placeholder="show a saved selection",
                               style={"width": "220px", "display": "inline-block", "verticalAlign": "middle"})]),
        html.Div(id="message", style={"whiteSpace": "pre-wrap", "marginTop": "6px"}),
    ])
    right = html.Div(style={"flex": "1 1 45%", "minWidth": "420px"}, children=[
        html.H3("Click a particle for the map at its latent", id="map-title"),
        dcc.Graph(id="surface", style={"height": "420px"}, config=OFFLINE),
        html.Div([html.Label("surface encloses (% of the box) "),
                  dcc.Slider(0.5, 30, value=ENCLOSED_PERCENT, id="threshold", marks={1: "1", 5: "5", 10: "10",
                             20: "20", 30: "30"}, tooltip={"placement": "bottom"}, updatemode="mouseup")]),
        html.Div([html.Label("smooth the surface (Gaussian, σ in Å; ChimeraX's volume gaussian) "),
                  dcc.RadioItems([{"label": "none", "value": 0}] +
                                 [{"label": f"{s:g} Å", "value": s} for s in SMOOTHING_A], 0, id="smoothing",
                                 inline=True, style={"display": "inline-block"})]),
        html.Div(id="level-note", style={"color": "#555"}),
        dcc.Graph(id="sections", style={"height": "260px"}, config={"displayModeBar": False}),
        html.Button("Download map (.mrc)", id="download-button", style=button), dcc.Download(id="download"),
        html.Div(id="resolution", children=[
            html.H3("Gold-standard resolution here"), html.Div(id="resolution-note"),
            dcc.Graph(id="fsc", style={"height": "220px"}, config=OFFLINE)],
            style={} if explorer.with_half_sets else {"display": "none"}),
        html.H3("Path between two particles"),
        html.Div([html.Button("From the map's particle", id="path-from", style=button),
                  html.Button("To the map's particle", id="path-to", style=button),
                  html.Button("Play", id="path-play", style=button),
                  html.Button("Save as a ChimeraX series", id="path-save", style=button)]),
        html.Div(id="path-note", style={"color": "#555"}),
        dcc.Slider(0, 0, step=1, value=0, id="path-step", marks=None, disabled=True),
        dcc.Interval(id="path-timer", interval=600, disabled=True),
    ])
    return html.Div(style={"fontFamily": "sans-serif", "margin": "10px"}, children=[
        html.H2(f"hetrec explore: {explorer.header[0]}" if explorer.header else "hetrec explore"),
        *[html.Div(line, style={"color": "#a00", "fontWeight": "bold"} if "still training" in line else {})
          for line in explorer.header[1:]],
        html.Div([left, right], style={"display": "flex", "gap": "20px", "flexWrap": "wrap"}),
        dcc.Store(id="particle"), dcc.Store(id="mark"), dcc.Store(id="selection-key"),
        html.Div(id="mark-drawn", hidden=True),
        dcc.Store(id="path-ends", data={}), dcc.Store(id="path-particles", data=[]),
        dcc.Store(id="path-maps", data=[]),
    ])


def build_app(explorer, token=None):
    """The Dash application of an Explorer; with a token, every request must carry it (module doc)."""
    app = Dash(__name__, title="hetrec explore", serve_locally=True, update_title=None)
    app.layout = lambda: _layout(explorer)  # each page load: the selections saved so far
    if token:
        _require_token(app.server, token)
    made = OrderedDict()  # each page's current selection, under the key its dcc.Store holds (tabs apart)

    @app.callback(Output("landscape", "figure"), Output("mark", "data", allow_duplicate=True),
                  Input("view", "value"), Input("colour", "value"), Input("saved", "value"),
                  State("path-particles", "data"), State("particle", "data"), prevent_initial_call=True)
    def redraw(view, colour, saved, path, particle):
        highlight = explorer.selections.get(saved) if saved else None
        mark = no_update if particle is None else particle_mark(explorer.views[view], particle)
        return landscape_figure(explorer, view, colour, highlight, path), mark

    @app.callback(Output("particle", "data"), Output("surface", "figure"), Output("sections", "figure"),
                  Output("map-title", "children"), Output("level-note", "children"), Output("mark", "data"),
                  Input("landscape", "clickData"), Input("path-step", "value"), Input("threshold", "value"),
                  Input("smoothing", "value"), State("particle", "data"), State("path-maps", "data"),
                  State("view", "value"), prevent_initial_call=True)
    def show_map(click, step, enclosed_percent, smoothing_A, particle, path_maps, view):
        """The map of the particle clicked (or of the path's step), in one round trip."""
        if ctx.triggered_id == "path-step":
            particle = path_maps[step] if path_maps and step is not None and step < len(path_maps) else None
        elif ctx.triggered_id == "landscape":
            point = (click or {}).get("points", [{}])[0]
            # WebGL points carry no customdata in Dash's events: the point's index among those drawn
            valid = point.get("curveNumber") == POINTS and "pointIndex" in point
            particle = int(explorer.shown[point["pointIndex"]]) if valid else None
        if particle is None:
            return (no_update,) * 6
        volume = explorer.map_of_particle(particle)
        surface, cuts, level = map_figures(explorer, volume, enclosed_percent, smoothing_A)
        mark = particle_mark(explorer.views[view], particle)
        title = f"Map at particle {particle}'s latent"
        smoothed = f" of the map smoothed by a {smoothing_A:g} Å Gaussian" if smoothing_A else ""
        note = f"surface level {level:.4g}{smoothed} (the map's units; ChimeraX: volume level {level:.4g})"
        return particle, surface, cuts, title, note, mark

    # the mark is a label laid over the plot, placed by the page: through the figure (or Plotly.relayout), Plotly
    # redraws every WebGL point, 150 ms at 10k points in software rendering
    app.clientside_callback(
        """function(mark) {
            var g = document.querySelector('#landscape .js-plotly-plot');
            if (!g || !mark) { return ''; }
            var label = document.getElementById('particle-mark');
            if (!label) {
                label = document.createElement('div');
                label.id = 'particle-mark';
                label.style.cssText = 'position:absolute;pointer-events:none;font:bold 18px sans-serif;' +
                    'transform:translate(-50%,-50%);color:black;text-shadow:0 0 3px white;z-index:10';
                g.parentNode.style.position = 'relative';
                g.parentNode.appendChild(label);
                var place = function() {
                    var m = window.hetrecMark, xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis;
                    if (!m) { return; }
                    var x = xa._offset + xa.l2p(m.x), y = ya._offset + ya.l2p(m.y);
                    var inside = x >= xa._offset && x <= xa._offset + xa._length &&
                                 y >= ya._offset && y <= ya._offset + ya._length;
                    label.style.left = x + 'px'; label.style.top = y + 'px';
                    label.style.display = inside ? 'block' : 'none';
                };
                g.on('plotly_relayout', place); g.on('plotly_afterplot', place);
                window.hetrecPlaceMark = place;
            }
            window.hetrecMark = mark;
            label.textContent = '\u2715';
            label.title = mark.text;
            window.hetrecPlaceMark();
            return '';
        }""", Output("mark-drawn", "children"), Input("mark", "data"), prevent_initial_call=True)

    @app.callback(Output("selected-count", "children"), Output("selection-key", "data"),
                  Input("landscape", "selectedData"), Input("invert", "n_clicks"), State("view", "value"),
                  State("selection-key", "data"), prevent_initial_call=True)
    def select(selected, _, view, key):
        """The page's selection: a lasso or box in the plot, or the inverse of the current one. A redraw of
        the plot (colour, view, a saved selection shown) clears Plotly's outline, not the selection."""
        positions = made.get(key, np.zeros(0, dtype=np.int64))
        if ctx.triggered_id == "invert":
            positions, what = explorer.invert(positions), "the inverted selection"
        else:
            selected = selected or {}
            what = "lasso" if selected.get("lassoPoints") else "box" if selected.get("range") else None
            if what is None:
                return no_update, no_update
            positions = explorer.select(view, selected.get("lassoPoints"), selected.get("range"))
        key = secrets.token_hex(8)
        made[key] = positions
        while len(made) > 64:
            made.popitem(last=False)
        return f"{len(positions):,} of {explorer.n_particles:,} particles selected ({what})", key

    @app.callback(Output("message", "children"), Output("saved", "options"), Output("saved", "value"),
                  Input("save", "n_clicks"), State("selection-name", "value"), State("selection-key", "data"),
                  prevent_initial_call=True)
    def save(_, name, key):
        positions = made.get(key)
        if positions is None:
            return "Not saved: lasso or box-select particles first.", no_update, no_update
        try:
            paths, note = explorer.save_selection(name, positions)
        except UserError as error:
            return f"Not saved: {error}", no_update, no_update
        lines = [f"Saved {len(positions):,} particles: " + ", ".join(paths),
                 f"Train on them: hetrec train {explorer.store_path} -o NEW_RUN --ind {paths[0]}"]
        return "\n".join(lines + ([note] if note else [])), list(explorer.selections), name.strip()

    @app.callback(*(Output(name, field, allow_duplicate=True) for name, field in (
                      ("message", "children"), ("surface", "figure"), ("sections", "figure"),
                      ("map-title", "children"), ("level-note", "children"))),
                  Input("reconstruct", "n_clicks"), State("selection-name", "value"), State("selection-key", "data"),
                  State("threshold", "value"), prevent_initial_call=True)
    def reconstruct(_, name, key, enclosed_percent):
        positions = made.get(key)
        if positions is None:
            return ("Not reconstructed: lasso or box-select particles first.",) + (no_update,) * 4
        try:
            path, result = explorer.reconstruct_selection(name, positions)
        except UserError as error:
            return (f"Not reconstructed: {error}",) + (no_update,) * 4
        surface, cuts, level = map_figures(explorer, result.map, enclosed_percent)
        resolution = f"gold-standard FSC = 0.143 at {result.fsc['resolution_0.143_A']:.1f} Å"
        first, second = result.particles
        message = (f"Reconstructed {first + second:,} particles without the model ({first:,} + {second:,} in the "
                   f"half-sets): {resolution}; {path} and its half-maps")
        title = f"Reconstruction of the {first + second:,} selected particles ({resolution})"
        return message, surface, cuts, title, f"surface level {level:.4g} (ChimeraX: volume level {level:.4g})"

    @app.callback(Output("download", "data"), Output("message", "children", allow_duplicate=True),
                  Input("download-button", "n_clicks"), State("particle", "data"), prevent_initial_call=True)
    def download(_, particle):
        if particle is None:
            return no_update, "Click a particle first: the download is the map shown."
        return dcc.send_bytes(explorer.mrc(particle), f"map_particle_{particle}.mrc"), no_update

    if explorer.with_half_sets:
        @app.callback(Output("fsc", "figure"), Output("resolution-note", "children"), Input("particle", "data"),
                      prevent_initial_call=True)
        def resolution(particle):
            return _resolution(explorer, particle)

    @app.callback(Output("path-ends", "data"), Output("path-particles", "data"), Output("path-maps", "data"),
                  Output("path-step", "max"), Output("path-step", "value"), Output("path-step", "disabled"),
                  Output("path-note", "children"), Output("landscape", "figure", allow_duplicate=True),
                  Input("path-from", "n_clicks"), Input("path-to", "n_clicks"), State("particle", "data"),
                  State("path-ends", "data"), State("view", "value"), prevent_initial_call=True)
    def path(_, __, particle, ends, view):
        if particle is None:
            return (no_update,) * 6 + ("Click a particle first.", no_update)
        ends = {**ends, "from" if ctx.triggered_id == "path-from" else "to": particle}
        if "from" not in ends or "to" not in ends:
            return (ends, no_update, no_update, no_update, no_update, no_update,
                    f"path from particle {ends.get('from', '?')} to particle {ends.get('to', '?')}", no_update)
        try:
            along, on_path = explorer.path(ends["from"], ends["to"])
        except UserError as error:
            return (ends, no_update, no_update, no_update, no_update, no_update, str(error), no_update)
        line = Patch()
        line["data"][PATH]["x"] = explorer.views[view][along, 0].tolist()
        line["data"][PATH]["y"] = explorer.views[view][along, 1].tolist()
        note = (f"path from particle {ends['from']} to {ends['to']} through {len(along)} particles; maps at "
                f"{len(on_path)} of them: move the slider or Play")
        return (ends, along.tolist(), on_path.tolist(), len(on_path) - 1, 0, False, note, line)

    @app.callback(Output("path-timer", "disabled"), Output("path-play", "children"), Input("path-play", "n_clicks"),
                  State("path-timer", "disabled"), State("path-maps", "data"), prevent_initial_call=True)
    def play(_, stopped, path_maps):
        if not path_maps:
            return True, "Play"
        return (False, "Stop") if stopped else (True, "Play")

    @app.callback(Output("path-step", "value", allow_duplicate=True), Input("path-timer", "n_intervals"),
                  State("path-step", "value"), State("path-maps", "data"), prevent_initial_call=True)
    def advance(_, step, path_maps):
        return ((step or 0) + 1) % len(path_maps) if path_maps else no_update

    @app.callback(Output("message", "children", allow_duplicate=True), Input("path-save", "n_clicks"),
                  State("path-maps", "data"), prevent_initial_call=True)
    def save_path(_, path_maps):
        if not path_maps:
            return "Choose a path first (From / To)."
        try:
            script = explorer.save_path(path_maps)
        except UserError as error:
            return f"Not saved: {error}"
        return f"Saved the path's maps; open them in ChimeraX with: open {script}"

    return app


def make_server(app, host="127.0.0.1", port=0):
    """A threaded WSGI server (werkzeug's) of the app on host:port, not yet serving (server_port: the port,
    serve_forever(), shutdown()); UserError where the port is taken."""
    import contextlib
    import io
    import logging

    from werkzeug.serving import make_server as werkzeug_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # werkzeug's own lines about a taken port
            return werkzeug_server(host, port, app.server, threaded=True)
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror or error}); give another --port") from None
    except SystemExit:  # werkzeug exits where the port is taken
        raise UserError(f"cannot listen on {host}:{port}: the port is in use; give another --port") from None


def _resolution(explorer, particle):
    """The FSC figure and the line of the half-maps at a particle's latent (a half-set run)."""
    if particle is None:
        return no_update, no_update
    result = explorer.resolution_at(particle)
    line = (f"FSC = 0.143 at {describe_resolution(result)}; FSC = 0.5 at "
            f"{result['resolution_0.5_A']:.2f} Å, of the half-maps at particle {particle}'s latent")
    return fsc_figure(result, explorer.model.shape.box, explorer.model.pixel_size_A), line


def _require_token(server, token):
    """Refuse every request that carries neither ?token=TOKEN nor the cookie a first such request set."""
    import hashlib

    from flask import request

    cookie = f"{COOKIE}_{hashlib.sha256(token.encode()).hexdigest()[:8]}"  # one per server: cookies ignore ports

    def carries(value):
        return value is not None and hmac.compare_digest(value.encode(), token.encode())

    @server.before_request
    def check():
        if carries(request.args.get("token")) or carries(request.cookies.get(cookie)):
            return None
        return ("hetrec explore: this address needs the token that `hetrec explore` printed (…/?token=…)\n",
                403, {"Content-Type": "text/plain; charset=utf-8"})

    @server.after_request
    def remember(response):
        if carries(request.args.get("token")):
            response.set_cookie(cookie, token, httponly=True, samesite="Strict")
        return response

