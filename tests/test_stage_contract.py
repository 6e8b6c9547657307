"""The stage contract. A stage computes under a read-only view of the
config fields it declares (stages/contract.py), and its artifact key changes
exactly when one of those fields (or an input's key) changes.

The real runs (tests/test_flow.py's smoke flow, tests/test_semples_stages.py)
go through stages.launch.execute and the flow's shard tasks, which hand every
stage its view: a stage reading an undeclared field fails them."""
from __future__ import annotations

import copy
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from pipeline.config import THROUGHPUT, Config, load_config
from stages import ORDER, STAGES, get
from stages.contract import ConfigAccessError, Stage, view
from stages.launch import execute
from stages.runner import stage_inputs, stage_keys

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cfg():
    return load_config(ROOT / "configs/voc-smoke.yaml")


# ------------------------------------------------------------------ the view
def _stage(*sections, run=None) -> Stage:
    return Stage(name="probe", inputs=(), sections=sections, version="1", run=run or (lambda c, i, o: {}))


def test_view_reads_declared_fields_and_throughput_only(cfg):
    v = view(cfg, _stage("pseudo_masks", "data.train_split"))
    assert v.pseudo_masks.bg_threshold == cfg.pseudo_masks.bg_threshold
    assert v.pseudo_masks.crf.gt_prob == cfg.pseudo_masks.crf.gt_prob  # nested sections of a declared one
    assert v.data.train_split == cfg.data.train_split
    assert v.run.num_workers == cfg.run.num_workers and v.run.device == cfg.run.device  # throughput
    assert v.pseudo_masks.model_dump_json() == cfg.pseudo_masks.model_dump_json()  # a whole declared node
    for read, field in ((lambda: v.evaluate, "evaluate"), (lambda: v.run.seed, "run.seed"),
                        (lambda: v.data.eval_split, "data.eval_split"),
                        (lambda: v.data.all_splits, "data.val_split"),  # a property reads through the view
                        (lambda: v.data.model_dump(), "data")):
        with pytest.raises(ConfigAccessError, match=rf"stage 'probe' reads config field '{field}"):
            read()


def test_view_is_read_only(cfg):
    v = view(cfg, _stage("pseudo_masks", "export_cams"))
    with pytest.raises(ConfigAccessError, match="stage 'probe' assigns config field 'pseudo_masks.bg_threshold'"):
        v.pseudo_masks.bg_threshold = 0.1
    with pytest.raises(TypeError):
        v.export_cams.scales[0] = 2.0  # lists come as tuples
    with pytest.raises(TypeError):
        view(cfg, _stage("data")).data.splits["x"] = None  # dicts as read-only mappings
    assert cfg.pseudo_masks.bg_threshold != 0.1


def test_execute_runs_a_stage_under_its_view(cfg, tmp_path):
    seen = {}

    def run(c, inputs, out):
        seen["threshold"] = c.pseudo_masks.bg_threshold
        return {"x": c.evaluate.bg_threshold}  # undeclared

    with pytest.raises(ConfigAccessError, match="stage 'probe' reads config field 'evaluate'"):
        execute(_stage("pseudo_masks", run=run), cfg, {}, tmp_path)
    assert seen["threshold"] == cfg.pseudo_masks.bg_threshold


def test_registry_is_the_dag_in_order():
    assert ORDER == ("prepare_data", "sam_masks", "import_cams", "train_cam", "match", "learn_prompts", "refine",
                     "export_cams", "pseudo_masks", "import_masks", "train_segmentation", "ensemble", "evaluate")
    assert all(get(n) is STAGES[n] and STAGES[n].name == n for n in ORDER)
    assert {n for n in ORDER if STAGES[n].sharded} == {"sam_masks", "export_cams", "pseudo_masks"}
    assert {n for n in ORDER if STAGES[n].distributed} == {"train_cam", "match", "learn_prompts", "refine"}
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        get("nope")


# ------------------------------------------------- keys follow declarations
def _annotation(path: str):
    """The type annotation of a dotted config field (through dicts of sections)."""
    ann: typing.Any = Config
    for part in path.split("."):
        ann = _unwrap(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            ann = ann.model_fields[part].annotation
        elif typing.get_origin(ann) is dict:
            ann = typing.get_args(ann)[1]
    return ann


def _unwrap(ann):
    """Optional[X] -> X."""
    if typing.get_origin(ann) is typing.Union:
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def _candidates(path: str, value) -> list:
    """Valid changed values of a leaf, best first (validation picks the first that passes)."""
    ann = _unwrap(_annotation(path))
    if path == "export_cams.source":  # a str checked against the phase registry, not a Literal
        from pipeline.config import cam_labels
        return [p for p in cam_labels() if p != value]
    if typing.get_origin(ann) is typing.Literal:
        return [o for o in typing.get_args(ann) if o != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1]
    if isinstance(value, float):
        return [value / 2 if value else 0.5]
    if isinstance(value, str):
        return [value + "_x"]
    if isinstance(value, list):
        item = typing.get_args(ann)[0] if typing.get_args(ann) else None
        if typing.get_origin(item) is typing.Literal:  # a list of choices (pseudo_masks.extra_methods)
            return [value + [o] for o in typing.get_args(item) if o not in value]
        if value and all(type(v) is int for v in value):  # same length, last integer changed (run.gpus)
            return [value[:-1] + [value[-1] + 1]]
        if value and all(isinstance(v, (int, float)) for v in value):  # same length, last number changed
            return [value[:-1] + [value[-1] / 2 if value[-1] else 0.5]]
        return [value[:-1] if len(value) > 1 else value + [0.5]]
    if isinstance(value, dict):  # an empty mapping (data.splits)
        return [{"x": {}}]
    # None: a value of the optional type
    opts = {bool: [True], int: [18], float: [0.5], str: ["train", "x"], Path: ["x"]}
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [{}]
    if typing.get_origin(ann) is list:  # an optional list (run.seeds)
        return [[0, 1]]
    for arg in typing.get_args(ann) or (ann,):
        if arg in opts:
            return opts[arg]
    return []


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _set(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[last] = value
    return d


# fields no single change can validate, and why (the validators tie them to others)
UNMUTABLE = {
    "data.dataset": "coco needs images/annotations per split, folder a class list",
    "pseudo_masks.low_threshold": "set together with high_threshold",
    "pseudo_masks.high_threshold": "set together with low_threshold",
    "learn_prompts.select": "phase 2 must keep 'last'",
    "learn_prompts.seed_eval_every": "phase 2 must keep 0",
    "ensemble.routes": "names routes of pseudo_masks.extra_methods, with one weight each (test_ensemble.py)",
}


def _declares(stage: Stage, path: str, *cfgs) -> bool:
    return any(path == s or path.startswith(s + ".") for c in cfgs for s in stage.sections_of(c))


def test_each_leaf_changes_exactly_the_keys_of_the_stages_that_declare_it(cfg):
    base, keys = cfg.resolved(), stage_keys(cfg)
    unmutable, checked = set(), 0
    for path, value in _leaves(base):
        new = None
        for cand in _candidates(path, value):
            try:
                new = Config.model_validate(_set(base, path, cand))
                break
            except ValidationError:
                continue
        if new is None:
            unmutable.add(path)
            continue
        changed = {n for n, k in stage_keys(new).items() if k != keys[n]}
        direct = {n for n in ORDER
                  if _declares(STAGES[n], path, cfg, new) or stage_inputs(new, n) != stage_inputs(cfg, n)}
        expected = set(direct)
        for n in ORDER:  # upstream first: a descendant of a changed stage changes
            if set(stage_inputs(new, n)) & expected or set(stage_inputs(cfg, n)) & expected:
                expected.add(n)
        if path in THROUGHPUT:  # readable by every stage (export_cams declares its section), part of no key
            expected = set()
        assert changed == expected, f"{path}: {value!r} -> changed {sorted(changed)}, expected {sorted(expected)}"
        checked += 1
    assert unmutable == set(UNMUTABLE), unmutable ^ set(UNMUTABLE)
    assert checked > 150  # every leaf of the voc-smoke config, not a few
    assert set(THROUGHPUT) <= {p for p, _ in _leaves(base)}  # throughput fields were among them


def test_one_backend_choice_for_every_training_stage(tmp_path):
    """SemPLeS phases and the mmseg model take their process-group backend from one place."""
    from pipeline.config import TrainSegmentationCfg
    from pipeline.distributed import backend
    from pipeline.segmentation.mmseg_config import build_config
    assert (backend("cpu"), backend("cuda"), backend("cpu", "nccl"), backend("cuda", "gloo")) == \
        ("gloo", "nccl", "nccl", "gloo")
    for device, dist in (("cpu", "auto"), ("cuda", "auto"), ("cpu", "nccl")):
        mm = build_config(TrainSegmentationCfg(tiny=True, backbone="resnet18"), dataset="voc",
                          train_list=tmp_path / "t.txt", val_list=None, work_dir=tmp_path, device=device,
                          dist_backend=dist)
        assert mm.env_cfg.dist_cfg.backend == backend(device, dist)
