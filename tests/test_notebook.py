"""recon.notebook.glue: myst-nb's glue in the book build, a plain display elsewhere (Colab)."""

import pytest

import recon.notebook as nb


def test_glue_without_myst_nb_displays_only_when_asked(monkeypatch):
    shown = []
    monkeypatch.setattr(nb, "have_myst_nb", lambda: False)
    monkeypatch.setattr("IPython.display.display", lambda v: shown.append(v))
    nb.glue("a", 1.5, display=False)
    assert shown == []
    nb.glue("b", 2.5)
    assert shown == [2.5]


def test_glue_with_myst_nb_uses_it(monkeypatch):
    calls = []
    import myst_nb

    monkeypatch.setattr(nb, "have_myst_nb", lambda: True)
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True:
                        calls.append((name, value, display)))
    nb.glue("x", 3, display=False)
    assert calls == [("x", 3, False)]


def test_glue_rejects_a_bad_name():
    with pytest.raises(ValueError, match="non-empty string"):
        nb.glue("", 1)


def test_runtimes_read_the_committed_timings(tmp_path, monkeypatch):
    import json

    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "chapter_times-quick.json").write_text(json.dumps(
        {"profile": "quick", "chapters": {"02_training": {"first_run_s": 150.0,
                                                          "cached_s": 20.0}}}))
    monkeypatch.setenv("RECON_RESULTS_DIR", str(tmp_path))
    assert nb.runtimes("02_training") == {"quick": {"first_run_s": 150.0, "cached_s": 20.0}}
    assert nb.runtimes("09_missing") == {}
    glued = {}
    monkeypatch.setattr(nb, "glue", lambda name, value, display=True: glued.update({name: value}))
    nb.glue_runtime("02_training")
    assert glued == {"runtime_quick": "2.5 min from an empty cache and 20 s once cached",
                     "runtime_full": "not timed yet (benchmarks/chapter_times.py measures it)"}


def test_format_duration():
    assert nb.format_duration(42.4) == "42 s"
    assert nb.format_duration(150) == "2.5 min"
    assert nb.format_duration(1800) == "30 min"


def test_markdown_table_formats_columns_and_marks_missing_values():
    from recon.notebook import markdown_table

    table = markdown_table([{"task": "mnist", "share": 0.25, "rho": None},
                            {"task": "cifar10", "share": float("nan"), "rho": -0.5}],
                           {"share": ".0%"})
    assert table.splitlines() == ["| task | share | rho |", "|---|---|---|",
                                  "| mnist | 25% | – |", "| cifar10 | – | -0.5 |"]
    with pytest.raises(ValueError, match="no rows"):
        markdown_table([])
