"""The lines of a split list (VOC) or labels file (folder), checked before they become records:
an id on two lines would count its image twice in every score, and a path out of the data root
(VOC) or the split's image folder (folder) reads files that are not the data set's. Each problem names the file, the line number and the line."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Optional

from pipeline.data.records import Problem

SBD_FORM = "lines hold an image id such as 2007_000032, or SBD's '/JPEGImages/2007_000032.jpg ...'"


def voc_id(token: str) -> Optional[str]:
    """The image id of a VOC list line's first token: a bare id, or SBD's '/JPEGImages/<id>.jpg';
    None for anything else (a path that leaves JPEGImages/: '../x', '/elsewhere/x', 'a/b')."""
    p = PurePosixPath(token)
    bare = "/" not in token and "\\" not in token and token not in (".", "..")
    return p.stem if bare or p.parent == PurePosixPath("/JPEGImages") else None


def voc_list_ids(lst: Path, limit: int = 0) -> tuple[list[str], list[Problem]]:
    """Image ids of a VOC split list (the first ``limit`` good ones when limit > 0) and the problems
    of its lines: paths that are no image id, ids already listed."""
    ids, problems, first_line = [], [], {}
    for n, text in enumerate(lst.read_text().splitlines(), 1):
        if not text.strip():
            continue
        where, image_id = f"{lst}:{n}", voc_id(text.split()[0])
        if image_id is None:
            problems.append(Problem(where, f"'{text.strip()}' is not an image id of JPEGImages/ ({SBD_FORM})"))
        elif not repeated(problems, first_line, image_id, where, text.strip()):
            ids.append(image_id)
            if limit and len(ids) >= limit:
                break
    return ids, problems


def repeated(problems: list[Problem], first_line: dict[str, str], image_id: str, where: str, text: str) -> bool:
    """Whether ``image_id`` came in at an earlier line of first_line (then a problem is added),
    else records ``where`` as its line."""
    if image_id in first_line:
        problems.append(Problem(where, f"'{text}': duplicate id '{image_id}' (first at {first_line[image_id]})"))
        return True
    first_line[image_id] = where
    return False


def leaves_folder(path: str, folder: Path) -> bool:
    """Whether ``path``, written relative to ``folder``, names a file outside it: an absolute path,
    or '..' past it (judged on the text, so a symlinked folder inside stays in)."""
    if PurePosixPath(path).is_absolute() or Path(path).is_absolute():
        return True
    return not Path(os.path.abspath(folder / path)).is_relative_to(os.path.abspath(folder))
