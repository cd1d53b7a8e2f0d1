"""The book's repository address lives in one place, ``_config.yml`` (``repository.url``).

The launch buttons read it from there; each chapter's install cell (run on Colab, where the
notebook is opened alone) needs it as text. This script writes it into every chapter's
install cell, in both files of each Jupytext pair:

    python _ext/repository.py          # after changing repository.url in _config.yml
    python _ext/repository.py --check  # exit 1 if a chapter disagrees (the tests run this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def configured() -> str:
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    if not re.fullmatch(r"https://[\w.-]+/[\w.-]+/[\w.-]+", url):
        raise SystemExit(f"_config.yml: repository.url {url!r} is not https://HOST/OWNER/NAME")
    return url.rstrip("/")


def chapter_files() -> list[Path]:
    return sorted(p for ext in ("py", "ipynb") for p in (ROOT / "book").glob(f"[0-9][0-9]_*.{ext}"))


def addresses(path: Path) -> list[str]:
    return re.findall(r'REPOSITORY = \\?"([^"\\]*)\\?"', path.read_text())


def main(argv: list[str]) -> int:
    url = configured()
    wrong = []
    for path in chapter_files():
        found = addresses(path)
        if found != [url]:
            wrong.append((path, found))
    if "--check" in argv:
        for path, found in wrong:
            print(f"{path.relative_to(ROOT)}: REPOSITORY {found or 'missing'}, _config.yml "
                  f"says {url}; run `python _ext/repository.py`")
        return 1 if wrong else 0
    for path, found in wrong:
        if not found:
            raise SystemExit(f"{path.relative_to(ROOT)} has no `REPOSITORY = \"...\"` line in "
                             "its install cell")
        text = path.read_text()
        if path.suffix == ".ipynb":  # inside a JSON string: quotes are escaped
            text = re.sub(r'REPOSITORY = \\"[^"\\]*\\"', f'REPOSITORY = \\\\"{url}\\\\"', text)
        else:
            text = re.sub(r'REPOSITORY = "[^"]*"', f'REPOSITORY = "{url}"', text)
        path.write_text(text)
        print(f"{path.relative_to(ROOT)}: REPOSITORY = {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
