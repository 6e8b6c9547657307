"""Every code file (pipeline/, stages/, flows/ ``.py``) and docs page (``docs/*.md``, lower case:
WeakTr's docs/Training.md is not ours) that the README and the docs site name exists, so a moved
module or page cannot leave a stale pointer; the files a guide's worked example creates (its
``title="..."`` blocks) are left out."""
from __future__ import annotations

import re

from guide_examples import ROOT, example_files

_PATH = re.compile(r"(?<![\w/.-])((?:pipeline|stages|flows)/[\w/]+\.py|docs/[a-z/-]+\.md)\b")


def test_every_code_file_and_page_the_docs_name_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    created = {p for page in ("route.md", "cam-format.md", "training-phase.md")
               for p in example_files(f"docs/extending/{page}")}
    missing = [f"{page.relative_to(ROOT)}: {path}" for page in pages
               for path in dict.fromkeys(_PATH.findall(page.read_text()))
               if path not in created and not (ROOT / path).exists()]
    assert not missing, "named but absent:\n" + "\n".join(missing)
