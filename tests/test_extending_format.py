"""docs/extending/cam-format.md's worked example as the page gives it: its format module and its
config are copied into a temporary checkout; there, made-up CAMs imported as stacked_npz are
exported with `wsss export-cams --format pt_dict`, the files hold the documented entries, and
`wsss run` with the page's config imports them into the same CAMs, bit for bit, and makes
pseudo masks from them."""
from __future__ import annotations

import numpy as np

from guide_cams import write_stacked_cams
from guide_examples import checkout_with, example_files, run_wsss
from pipeline.artifacts import ImportedCamArtifact
from pipeline.cams.store import CamStore
from pipeline.data.datasets import read_mask

PAGE = "docs/extending/cam-format.md"
CONFIG = "configs/examples/voc-pt-cams.yaml"
STACKED = """_base_: configs/voc-smoke.yaml
run: {name: stacked, work_dir: runs/stacked}
data: {max_images: 8}
export_cams: {source: import}
import_cams: {dir: cams/stacked, format: stacked_npz, gallery_size: 0}
"""


def _store(run_dir):
    (art,) = run_dir.glob("import_cams-*")
    return CamStore(ImportedCamArtifact(art).store("train"))


def test_the_guides_format_exports_and_imports_the_same_cams_through_wsss(tmp_path):
    import torch

    files = example_files(PAGE)
    assert set(files) == {"pipeline/cams/formats/pt_dict.py", CONFIG}
    checkout = checkout_with(tmp_path / "checkout", files)
    cams = write_stacked_cams(checkout / "cams/stacked", 8)
    (checkout / "stacked.yaml").write_text(STACKED)
    for args in (["run", "--config", "stacked.yaml", "--until", "import_cams", "--no-prefect"],
                 ["export-cams", "--config", "stacked.yaml", "--format", "pt_dict", "--out", "cams/pt"],
                 ["run", "--config", CONFIG, "--until", "pseudo_masks", "--no-prefect"]):
        res = run_wsss(checkout, args)
        assert res.returncode == 0, (args, res.stderr[-3000:])
    for image_id, (c, labels) in cams.items():
        d = torch.load(checkout / f"cams/pt/{image_id}.pt", weights_only=True)  # the page's entries
        assert d["labels"].tolist() == labels and d["cams"].dtype == torch.float32
        assert np.array_equal(d["cams"].numpy(), c)
    a, b = _store(checkout / "runs/stacked"), _store(checkout / "runs/pt-cams")
    assert a.ids() == b.ids() == sorted(cams)
    for image_id in a.ids():
        (ca, ka), (cb, kb) = a.read(image_id), b.read(image_id)
        assert ka == kb and ca.dtype == cb.dtype and np.array_equal(ca, cb)
    (pm,) = (checkout / "runs/pt-cams").glob("pseudo_masks-*")
    assert all(read_mask(pm / "masks" / f"{i}.png").shape == cams[i][0].shape[1:] for i in cams)
