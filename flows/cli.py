"""The `wsss` command: a thin entry point over stages/ and flows/."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SemPLeS pseudo-label pipeline")
data_app = typer.Typer(no_args_is_help=True, help="dataset tools")
app.add_typer(data_app, name="data")

ConfigOpt = typer.Option(..., "--config", "-c", help="YAML config file")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TRACE = logging.getLogger("wsss.traceback")  # full tracebacks: the run's log file only


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.addFilter(_no_prefect_failure_reports)


def _no_prefect_failure_reports(record: logging.LogRecord) -> bool:
    """Terminal only: Prefect reports a failure at every level (task, shard flow, flow), each
    with the traceback; those records go to the run's log file, the CLI prints the error once."""
    if not record.name.startswith("prefect"):
        return True
    msg = record.getMessage()
    return not (record.exc_info or msg.startswith("Finished in state Failed")
                or msg.startswith("Encountered exception during execution"))


def _log_file(cfg) -> Path:
    """Everything this command logs, tracebacks included: <work_dir>/logs/<run.name>-<UTC time>-<pid>.log
    (opened once the preflight has passed: an offline failure leaves no store behind)."""
    import time
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = Path(cfg.run.work_dir) / "logs" / f"{cfg.run.name}-{stamp}-{os.getpid()}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    from pipeline.utils import RunLogFile
    handler = RunLogFile(path)  # a full disk: one warning line, not one traceback per record
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    TRACE.addHandler(handler)
    TRACE.propagate = False
    return path


def _fail_run(e: Exception, log_path: Path) -> None:
    """One paragraph on the terminal; the traceback (every chained exception) in the log file."""
    TRACE.error("%s", e, exc_info=e)
    lost = any(getattr(h, "failed", None) for h in TRACE.handlers)
    typer.echo(f"error: {e}\n({'no traceback: could not write' if lost else 'full traceback:'} {log_path})", err=True)
    raise typer.Exit(1)


def _load(config: Path):
    from pipeline.config import ConfigError, load_config
    try:
        return load_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(1)


@app.command()
def run(config: Path = ConfigOpt,
        until: Optional[str] = typer.Option(None, help="last stage to run"),
        start: Optional[str] = typer.Option(None, "--from", help="first stage to run"),
        force: List[str] = typer.Option([], help="stages to recompute even if cached"),
        seeds: List[int] = typer.Option([], help="run the DAG once per seed (`--seeds 0 1 2`; default run.seeds) "
                                        "and write the spread report"),
        prefect: bool = typer.Option(True, help="run as a Prefect flow (embedded, no server needed)")):
    """Run the whole DAG (or a slice of it); cached stages are skipped."""
    _setup_logging()
    cfg = _load(config)
    from pipeline.weights import WeightsUnavailable
    from stages.plan import RunPlan
    from stages.runner import preflight, run_plan
    from stages.seeds import run_seeds, seeds_of
    try:  # before Prefect starts: one paragraph instead of a flow-run traceback (the flow checks again)
        plan = RunPlan.of(cfg, until, start, force)
        preflight(plan)
        seeds = seeds_of(cfg, seeds)
    except (WeightsUnavailable, KeyError, ValueError) as e:
        _fail(e)
    log_path = _log_file(cfg)
    try:
        if prefect:
            from flows.dag import start_temporary_server
            start_temporary_server()  # one that dies with this process
        if seeds:
            if prefect:
                from flows.dag import wsss_seeds_flow
                result = wsss_seeds_flow(config=str(config), seeds=seeds, until=until, start=start,
                                         force=list(force))
            else:
                result = run_seeds(cfg, seeds, until, start, tuple(force))
        elif prefect:
            from flows.dag import wsss_flow
            result = wsss_flow(config=str(config), until=until, start=start, force=list(force),
                               states=plan.states(plan.names))  # read once: the flow takes them
        else:
            result = {k: str(v) for k, v in run_plan(plan).items()}
    except Exception as e:  # noqa: BLE001 - every failure: one paragraph here, the traceback in the log
        _fail_run(e, log_path)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def stage(name: str, config: Path = ConfigOpt,
          force: bool = typer.Option(False, help="recompute even if cached")):
    """Run one stage alone, reusing the cached artifacts of its inputs."""
    _setup_logging()
    cfg = _load(config)
    from pipeline.weights import WeightsUnavailable
    from stages.plan import RunPlan
    from stages.runner import compute_stage, preflight
    try:
        plan = RunPlan(cfg, [name], [name] if force else ())
        preflight(plan)
    except (WeightsUnavailable, KeyError) as e:
        _fail(e)
    log_path = _log_file(cfg)
    try:
        out = compute_stage(plan, name)
    except Exception as e:  # noqa: BLE001 - every failure: one paragraph here, the traceback in the log
        _fail_run(e, log_path)
    typer.echo(str(out))


@app.command()
def status(config: Path = ConfigOpt,
           show: int = typer.Option(20, help="damaged files listed per corrupt artifact")):
    """For each stage this config runs: cached / partial / missing / corrupt, key, size, headline metric;
    below a corrupt artifact, the files that fail their manifest entry."""
    from stages.plan import RunPlan
    from stages.status import status_lines
    typer.echo("\n".join(status_lines(RunPlan(_load(config)), config, show)))


@data_app.command("check")
def data_check(config: Path = ConfigOpt):
    """Validate a dataset tree: per-split counts, per-class image counts, every bad item."""
    cfg = _load(config)
    from pipeline.data.check import check_lines
    from pipeline.data.classes import ClassFileError
    try:
        lines, bad = check_lines(cfg)
    except ClassFileError as e:
        _fail(e)
    for line, problem in lines:
        typer.echo(line, err=problem)
    if bad:
        raise typer.Exit(1)


DEFAULT_ROOTS = {"voc": Path("data/VOCdevkit/VOC2012"), "coco": Path("data/coco")}  # configs/_base_/*.yaml


@app.command()
def fetch(what: str = typer.Argument(..., help="voc | coco | weights"),
          config: Optional[Path] = typer.Option(None, "--config", "-c",
                                                help="config whose data.root / weights to fetch"),
          dest: Optional[Path] = typer.Option(None, help="voc/coco: the data set root (default data.root); "
                                              "weights: folder (default checkpoints)"),
          mirror: Optional[Path] = typer.Option(None,
                                                help="take the files from this local folder instead of the network"),
          hub: bool = typer.Option(True, help="weights: also CLIP and DeiT into open_clip's/timm's caches")):
    """Download, verify and unpack a data set (VOC 2012 + SBD aug, COCO 2014) or the weights the configs name.
    Resumes interrupted downloads. Env: WSSS_FETCH_BASE_URL (another server), WSSS_FETCH_HASHES (checksum file)."""
    _setup_logging()
    from pipeline.config import ConfigError, load_config
    from pipeline.data.fetch import FetchError, fetch_dataset, fetch_weights
    if what not in ("voc", "coco", "weights"):
        _fail(ValueError(f"fetch: unknown '{what}' (voc, coco or weights)"))
    cfg = None
    if config:
        try:
            cfg = load_config(config, check_paths=False)
        except ConfigError as e:
            _fail(e)
    try:
        if what == "weights":
            hub_weights = None
            if cfg is not None:  # the CLIP / DeiT weights its stages load (SAM and the rest: files above)
                from stages import ORDER
                from stages.runner import hub_weights as stage_weights
                hub_weights = [w for w in stage_weights(cfg, ORDER)
                               if w.key in ("mask_generator.pretrained", "clip.pretrained")]
            rows = fetch_weights(dest or Path("checkpoints"), cfg, mirror, hub=hub, hub_weights=hub_weights)
            typer.echo("config keys (set the ones your run uses):")
            for key, path, note in rows:
                typer.echo(f"  {key}: {path}    # {note}")
            return
        if cfg is not None and cfg.data.dataset != what:
            _fail(ValueError(f"{config}: data.dataset is '{cfg.data.dataset}', not '{what}'"))
        from pipeline.config import DataCfg
        data = cfg.data if cfg else DataCfg(dataset=what, root=DEFAULT_ROOTS[what])
        info = fetch_dataset(data, dest, mirror)
    except FetchError as e:
        _fail(e)
    root = dest or data.root
    if info.get("counts"):
        typer.echo("  ".join(f"{k}: {v}" for k, v in info["counts"].items()))
    typer.echo(f"{what} ready in {root}\nnext: wsss data check --config {config or f'configs/{what}-full.yaml'}"
               + (f" (data.root: {root})" if dest else ""))


@app.command("init-dataset")
def init_dataset(folder: Path = typer.Argument(..., help="folder with images and a labels file"),
                 out: Optional[Path] = typer.Option(None, help="config to write (default configs/<folder name>.yaml)"),
                 labels: Optional[Path] = typer.Option(None,
                                                       help="labels file (default FOLDER/labels.csv|.jsonl|.json)"),
                 images: Optional[Path] = typer.Option(None, help="image folder (default FOLDER/images, else FOLDER)"),
                 force: bool = typer.Option(False, help="overwrite an existing config"),
                 tiny: bool = typer.Option(False, help="CPU-sized: tiny random-initialised models, 2 epochs "
                                           "(minutes, no downloads; numbers say nothing about the method)")):
    """Write a config for a folder of images with tags and print the images per class."""
    from pipeline.data.datasets import DataError
    from pipeline.data.init_dataset import init_dataset as write_config
    out = out or Path("configs") / f"{folder.resolve().name}.yaml"
    try:
        counts, written = write_config(folder, out, labels, images, overwrite=force, tiny=tiny)
    except DataError as e:
        _fail(e)
    if written:
        typer.echo(f"wrote {written} ({len(counts)} classes, sorted by name; edit it to add prompt names or colours)")
    typer.echo(f"wrote {out}\nimages per class:")
    for name, n in counts.most_common():
        typer.echo(f"  {name:<24}{n:>7}")
    typer.echo(f"next: wsss data check --config {out} && wsss run --config {out}")


@app.command("eval-masks")
def eval_masks(pred: Path = typer.Option(..., help="folder of predicted label PNGs"),
               gt: Path = typer.Option(..., help="folder of ground-truth label PNGs"),
               num_classes: int = typer.Option(..., help="number of classes incl. background")):
    """mIoU of a folder of label PNGs against a GT folder (255 ignored); prints JSON."""
    from pipeline.evaluation.metrics import evaluate_folders
    try:
        res = evaluate_folders(pred, gt, num_classes)
    except (FileNotFoundError, ValueError) as e:
        _fail(e)
    typer.echo(json.dumps(res, indent=2))


@app.command("export-cams")
def export_cams_cmd(config: Path = ConfigOpt,
                    format: str = typer.Option(..., "--format", help="a CAM format of pipeline/cams/formats/ "
                                               "(import_cams.format; the error lists them)"),
                    out: Path = typer.Option(..., help="folder to write the per-image CAM files into"),
                    class_base: int = typer.Option(0, help="index of the first foreground class (official: 0)"),
                    class_index: str = typer.Option("label", help="label | coco_category (COCO: 90-row indices, "
                                                    "category id - 1, as WeakTr/SemPLeS COCO models)")):
    """Write a run's CAMs (export_cams.split) as per-image files another code base reads
    (FMA-WSSS: fma_npz, or weaktr_npy with its SemPLeS loader)."""
    from pipeline.cams.formats import FORMATS, ClassIndex
    from pipeline.cams.importer import export_store
    from pipeline.cams.store import CamStore
    from pipeline.data.classes import COCO_CATEGORY_IDS
    from pipeline.utils import progress
    from stages.plan import NotCached, RunPlan
    from stages.results import cam_store
    cfg = _load(config)
    if format not in FORMATS or class_index not in ("label", "coco_category"):
        _fail(ValueError(f"--format must be one of {', '.join(FORMATS)}; --class-index label or coco_category"))
    try:
        store = CamStore(cam_store(RunPlan(cfg)))
    except NotCached as e:
        _fail(e)
    index = ClassIndex(class_base, tuple(COCO_CATEGORY_IDS) if class_index == "coco_category" else None)
    ids = store.ids()
    n = export_store(store, ids, format, out, index, progress=lambda it, total: progress(it, "export-cams", total))
    typer.echo(f"wrote {n} {format} files to {out}")


@app.command("export-masks")
def export_masks_cmd(config: Path = ConfigOpt,
                     out: Path = typer.Option(..., help="folder to write <image id>.png into"),
                     route: Optional[str] = typer.Option(None, help="pseudo-mask route (default: the trained one, "
                                                         "pseudo_masks.method)")):
    """Copy a run's pseudo masks (palette PNGs, the dataset's colours, 255 = uncertain) into a folder."""
    from pipeline.pseudo_masks.imported import export_masks
    from stages.plan import NotCached, RunPlan
    from stages.results import pseudo_masks
    try:
        src, ids, what = pseudo_masks(RunPlan(_load(config)), route)
        n = export_masks(src, ids, out)
    except (NotCached, ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"wrote {n} masks ({what}) to {out}")


@app.command()
def compare(runs: List[str] = typer.Argument(..., help="configs (.yaml), evaluate artifact dirs or run stores"),
            png: Path = typer.Option(Path("compare.png"), help="bar chart to write")):
    """Seed / pseudo-mask / final mIoU and per-class IoU of several runs in one table and chart."""
    from pipeline.evaluation.compare import CompareError, compare_table, find_evaluate_dir, load_run, save_compare_chart
    loaded = []
    try:
        for arg in runs:
            if arg.endswith((".yaml", ".yml")):
                from stages.seeds import result
                cfg = _load(Path(arg))
                eval_dir, state = result(cfg)  # a multi-seed config: its spread artifact
                if state != "cached":
                    raise CompareError(f"{arg}: no evaluate artifact ({eval_dir} is {state}); "
                                       f"run `wsss run --config {arg}` first")
                label = cfg.run.name
            else:
                label, eval_dir = Path(arg).name, find_evaluate_dir(Path(arg))
            names = [r.label for r in loaded]
            loaded.append(load_run(label if label not in names else f"{label} ({len(loaded) + 1})", eval_dir))
    except CompareError as e:
        _fail(e)
    typer.echo(compare_table(loaded))
    save_compare_chart(loaded, png)
    typer.echo(f"chart: {png}")


def _final_model(cfg, config: Path) -> Path:
    from stages.plan import RunPlan
    from stages.results import final_model
    return final_model(RunPlan(cfg), str(config))


@app.command()
def predict(config: Path = ConfigOpt,
            images: Path = typer.Option(..., help="folder of .jpg/.png images (any size; sub-folders too)"),
            out: Path = typer.Option(..., help="output folder: labels/, overlays/, predictions_coco.json"),
            tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="test-time augmentation (default: "
                                               "train_segmentation.tta, the setting of the reported number)")):
    """Run the config's trained final segmentation model on a folder of images."""
    _setup_logging()
    cfg = _load(config)
    from pipeline.segmentation.predict import PredictError, predict_folder
    from pipeline.utils import get_device
    try:
        seg_dir = _final_model(cfg, config)
        use_tta = cfg.train_segmentation.tta if tta is None else tta
        res = predict_folder(seg_dir, images, out, use_tta, device=get_device(cfg.run.device).type)
    except PredictError as e:
        _fail(e)
    typer.echo(json.dumps(res, indent=2))
    if res["failed"]:  # each named in the log and the JSON; the others are predicted
        raise typer.Exit(1)


@app.command("export-model")
def export_model(config: Path = ConfigOpt, out: Path = typer.Option(..., help="folder to write")):
    """The final model as a folder mmseg's init_model / inference_model load without wsss."""
    cfg = _load(config)
    from pipeline.segmentation.export import ExportError
    from pipeline.segmentation.export import export_model as export
    from pipeline.segmentation.predict import PredictError
    try:
        res = export(_final_model(cfg, config), out)
    except (PredictError, ExportError) as e:
        _fail(e)
    typer.echo(json.dumps(res, indent=2))


@app.command()
def serve(configs: List[Path] = typer.Argument(None, help="configs to serve (default: configs/*.yaml)")):
    """Serve the deployments wsss/<config-name> against the Prefect API in PREFECT_API_URL."""
    from flows.serve import serve_deployments
    serve_deployments([str(c) for c in configs] if configs else None)


@app.command()
def tensorboard(configs: List[Path] = typer.Option(..., "--config", "-c", help="YAML config (repeat for more runs)"),
                logdir: Optional[Path] = typer.Option(None, help="folder of links to make (default: a new temporary)"),
                port: int = typer.Option(6006, help="TensorBoard's port"),
                logdir_only: bool = typer.Option(False, "--logdir-only", help="make the logdir, print it, stop")):
    """TensorBoard over every training stage of the runs and their seeds, live while they train."""
    from stages.tensorboard import build_logdir, serve
    try:
        logdir, lines = build_logdir([_load(c) for c in configs], logdir)
    except FileExistsError as e:
        _fail(e)
    typer.echo("\n".join(lines))
    if not logdir_only:
        raise typer.Exit(serve(logdir, port))


def spread_option(argv: list[str], name: str) -> list[str]:
    """`--seeds 0 1 2` -> `--seeds 0 --seeds 1 --seeds 2` (click options take one value each)."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == name:
            i += 1
            vals = []
            while i < len(argv) and not argv[i].startswith("-"):
                vals.append(argv[i])
                i += 1
            out += [vals[0]] + [x for v in vals[1:] for x in (name, v)] if vals else []
            continue
        i += 1
    return out


def main() -> None:
    # Prefect reads these at import: keep its state beside the runs, offline, and
    # give the embedded server time to start on a busy 2-core machine.
    os.environ.setdefault("PREFECT_HOME", str(Path("runs/prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    sys.argv = spread_option(sys.argv, "--seeds")
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)  # sqlite needs the dir
    app()


if __name__ == "__main__":
    main()
