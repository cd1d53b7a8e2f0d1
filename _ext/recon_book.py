"""Sphinx extension of the recon book: keep pages free of ipywidgets state nobody reads.

The HTML book renders kernel widgets as their static ``text/html`` snapshot and loads no
widget manager (``_config.yml``: ``nb_ipywidgets_js: {}`` and ``widget-view+json`` removed from
the html priority list); its interactive figures are self-contained (``recon.html_explorer``).
myst-nb still copies the widget state that execution stored in the notebook metadata into
each page as an inert ``<script type="application/vnd.jupyter.widget-state+json">``; on the
explorer chapter that is ~120 kB. This drops it.
"""

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _drop_widget_state(app, pagename, templatename, context, doctree):
    files = context.get("script_files")
    if isinstance(files, list):
        files[:] = [js for js in files
                    if getattr(js, "attributes", {}).get("type") != WIDGET_STATE]


def setup(app):
    # after myst-nb's handler (default priority 500) has added the page's scripts
    app.connect("html-page-context", _drop_widget_state, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
