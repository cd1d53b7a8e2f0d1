"""Every committed run card can be remade: it names the command that made it (one the README
documents), it was made from a clean tree, and it says what precision and CPU actually ran."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "results").rglob("card.json"))
README = (ROOT / "README.md").read_text()


# Cards that their documented command has not remade yet, each with the reason. The test of
# such a card is a strict expected failure: once the card is remade, its test passes, which
# fails the suite until the card is taken off this list.
NOT_YET_REMADE: dict[str, str] = {}


def _not_yet_remade(name: str) -> str | None:
    """Why the card ``name`` (its folder under results/) is not remade yet, or None. An entry
    names one card's folder, or a folder of cards (a whole study, remade as one)."""
    for key, why in NOT_YET_REMADE.items():
        if name == key or name.startswith(key + "/"):
            return why
    return None


def _param(path):
    name = str(path.parent.relative_to(ROOT / "results"))
    why = _not_yet_remade(name)
    marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
    return pytest.param(path, id=name, marks=marks)


def test_there_are_committed_cards():
    assert len(CARDS) >= 10, "the Results and leakage chapters read the committed cards"


def test_every_card_not_yet_remade_exists():
    names = [str(p.parent.relative_to(ROOT / "results")) for p in CARDS]
    for key in NOT_YET_REMADE:
        assert any(n == key or n.startswith(key + "/") for n in names), key


def card_problems(card: dict, readme: str = README) -> list[str]:
    """What keeps ``card`` from being remade by its documented command (empty: nothing)."""
    prov = card.get("provenance", {})
    command, rev = prov.get("command"), prov.get("git_revision")
    cpu = prov.get("cpu") or {}
    checks = [
        (bool(command) and command.startswith("python -m recon "), "no command recorded"),
        (bool(command) and f"`{command}`" in readme,
         f"its command `{command}` is not documented in the README"),
        (bool(rev) and len(rev.removesuffix("-dirty")) == 40, "made outside a git checkout"),
        (not (rev or "").endswith("-dirty"), "made from a tree with uncommitted changes"),
        (set(card.get("precision", {})) == {"train", "recon"} and all(
            v in ("full", "bfloat16", "float16") for v in card["precision"].values()),
         "the precision that ran is not recorded"),
        (bool(cpu.get("model")) and {"amx_bf16", "avx512_bf16"} <= set(cpu),
         "the CPU it ran on is not recorded"),
        (bool(card.get("complete")), "the run did not finish"),
        ("selection" in card, "how its pooled trials were chosen is not recorded"),
    ]
    return [why for ok, why in checks if not ok]


def test_the_check_catches_each_defect():
    good = {"provenance": {"command": "python -m recon reproduce mnist",
                           "git_revision": "a" * 40,
                           "cpu": {"model": "x", "amx_bf16": False, "avx512_bf16": False}},
            "precision": {"train": "full", "recon": "bfloat16"}, "complete": True,
            "selection": "weights only"}
    readme = "`python -m recon reproduce mnist`"
    assert card_problems(good, readme) == []
    broken = [
        ({"command": None}, "no command"),
        ({"command": "python -m recon reproduce mnist --trials 10"}, "not documented"),
        ({"git_revision": "a" * 40 + "-dirty"}, "uncommitted changes"),
        ({"git_revision": None}, "outside a git checkout"),
        ({"cpu": None}, "CPU"),
    ]
    for change, why in broken:
        card = {**good, "provenance": {**good["provenance"], **change}}
        assert any(why in p for p in card_problems(card, readme)), change
    for key, why in (("precision", "precision"), ("selection", "chosen"),
                     ("complete", "did not finish")):
        card = {k: v for k, v in good.items() if k != key}
        assert any(why in p for p in card_problems(card, readme)), key


@pytest.mark.parametrize("path", [_param(p) for p in CARDS])
def test_card_names_its_command_clean_revision_precision_and_cpu(path):
    assert card_problems(json.loads(path.read_text())) == [], (
        f"{path}: remake it with its documented command from a clean checkout")


def test_the_summary_table_is_the_committed_cards():
    """results/summary.md (included by the book's introduction) is regenerated from the cards,
    never typed: `make summary` rewrites it after a card changes."""
    from recon.reproduce import SUMMARY_FILE, load_cards, summary_table

    root = Path(__file__).resolve().parents[1] / "results"
    assert (root / SUMMARY_FILE).read_text() == summary_table(load_cards(root)), (
        "results/summary.md is stale: run `make summary`")


def test_the_introductions_sentence_on_ssim_holds():
    """The introduction says SSIM > 0.4 passes most test digits on MNIST: true of every
    committed MNIST card, or the sentence must change."""
    from recon.reproduce import card_row, load_cards

    rows = [card_row(c) for c in load_cards(Path(__file__).resolve().parents[1] / "results")
            if c["task"]["name"] == "mnist"]
    assert rows
    for r in rows:
        assert r["SSIM>0.4 vs test images"] > r["n"] / 2, r


# Every other committed result (benchmarks, ablations, probes, directions, timing): the same
# promise, without the README line (the Results chapter lists their commands).
RESULT_FILES = sorted(p for p in (ROOT / "results").rglob("*.json") if p.name != "card.json")

# Results not remade yet by their command from a clean tree, each with the reason; strict
# expected failures, as for the cards above.
RESULTS_NOT_YET_REMADE: dict[str, str] = {}


def _provenances(doc) -> list[dict]:
    """The provenance records of a result file: its own, or each row's (a table of rows)."""
    if isinstance(doc, list):
        return [row.get("provenance") or {} for row in doc]
    return [doc.get("provenance") or {}]


def result_problems(doc) -> list[str]:
    """What keeps a committed result from being remade by the command it records."""
    problems = []
    for prov in _provenances(doc):
        command, rev = prov.get("command"), prov.get("git_revision")
        cpu = prov.get("cpu") or {}
        checks = [
            (bool(command) and command.startswith(("python -m recon ", "python benchmarks/")),
             "no command recorded"),
            (bool(rev) and len(rev.removesuffix("-dirty")) == 40, "made outside a git checkout"),
            (not (rev or "").endswith("-dirty"), "made from a tree with uncommitted changes"),
            (bool(cpu.get("model")) and {"amx_bf16", "avx512_bf16"} <= set(cpu),
             "the CPU it ran on is not recorded"),
        ]
        problems += [why for ok, why in checks if not ok and why not in problems]
    return problems


def _result_param(path):
    name = str(path.relative_to(ROOT / "results"))
    why = RESULTS_NOT_YET_REMADE.get(name)
    marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
    return pytest.param(path, id=name, marks=marks)


def test_the_result_check_catches_each_defect():
    good = {"provenance": {"command": "python benchmarks/ablation.py custom runs/x",
                           "git_revision": "b" * 40,
                           "cpu": {"model": "x", "amx_bf16": True, "avx512_bf16": False}}}
    assert result_problems(good) == [] and result_problems([good, good]) == []
    for change, why in (({"command": None}, "no command"),
                        ({"command": "python /tmp/mine.py"}, "no command"),
                        ({"git_revision": "b" * 40 + "-dirty"}, "uncommitted"),
                        ({"git_revision": None}, "outside a git checkout"),
                        ({"cpu": {"model": "x"}}, "CPU")):
        bad = {"provenance": {**good["provenance"], **change}}
        assert any(why in p for p in result_problems(bad)), change
        assert any(why in p for p in result_problems([good, bad])), change
    assert "no command recorded" in result_problems({"entries": []})


def test_every_result_not_yet_remade_exists():
    names = {str(p.relative_to(ROOT / "results")) for p in RESULT_FILES}
    assert set(RESULTS_NOT_YET_REMADE) <= names


@pytest.mark.parametrize("path", [_result_param(p) for p in RESULT_FILES])
def test_every_result_names_its_command_clean_revision_and_cpu(path):
    assert result_problems(json.loads(path.read_text())) == [], (
        f"{path}: remake it with the command it records, from a clean checkout")
