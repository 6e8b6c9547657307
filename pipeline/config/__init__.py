"""Layered YAML configs (``_base_`` inheritance) validated by pydantic.

The field defaults are the method's official values (VOC where they differ per
dataset), each with its source; YAML files set only what differs per dataset or
run (tests/test_config_defaults.py keeps it so).

A config file may name ``_base_: path`` or a list of paths (relative to the
file). Bases are merged first, in order; the child overrides only the keys it
names (dicts merge recursively, anything else is replaced). Every error names
the file that set the offending key.

Relative data/checkpoint paths are resolved against the current working
directory (run ``wsss`` from the project root, as mmseg's tools do).

The package, by concern:

- ``base``: ``Section`` (the base of every section: unknown keys are refused),
  ``ConfigError``, the shared value ranges (``Positive``, ``NonNegative``, ``Fraction``).
- ``loader``: ``load_config``: YAML reading (``UniqueKeyLoader``: a key twice in one
  mapping is an error, naming file, key and line), the ``_base_`` merge, the file each
  key came from, errors naming file and key, the check of the paths a config names,
  ``missing_root_hint``.
- sections: ``run_data`` (run, data), ``models`` (mask_generator, clip),
  ``training`` (``TrainCfg`` and the phases train_cam, match, learn_prompts,
  refine), ``cams`` (export_cams with its caa, import_cams), ``pseudo_masks``
  (sam, pseudo_masks with its routes' parameters, import_masks), ``segmentation``
  (train_segmentation, ensemble), ``evaluation`` (checks, evaluate).
- ``rules``: the rules across sections, each a named function raising ``RuleError``
  with the fields it concerns (the loader names the file that set the first);
  ``RULES`` lists them in the order ``Config`` applies them.
- ``root``: ``Config`` (every section; applies ``RULES``) and ``THROUGHPUT`` (the
  fields no artifact key covers).

Import from ``pipeline.config``; the modules are its layout, not its interface.
"""
from pipeline.config.base import ConfigError, Fraction, NonNegative, Positive, Section, _is_hub_tag, _looks_like_path
from pipeline.config.cams import CaaCfg, ExportCamsCfg, ImportCamsCfg
from pipeline.config.evaluation import OFFICIAL_SWEEP, ChecksCfg, EvaluateCfg
from pipeline.config.loader import (UniqueKeyLoader, _check_paths, _load_raw, _merge, _origin_of, _read_yaml,
                                    load_config, missing_root_hint)
from pipeline.config.models import ClipCfg, MaskGeneratorCfg
from pipeline.config.pseudo_masks import ImportMasksCfg, PseudoMaskMethod, PseudoMasksCfg, SamCfg
from pipeline.config.root import THROUGHPUT, Config, cam_labels
from pipeline.config.rules import RULES, RuleError
from pipeline.config.run_data import DataCfg, RunCfg, SplitCfg
from pipeline.config.segmentation import EnsembleCfg, TrainSegmentationCfg
from pipeline.config.training import (LearnPromptsCfg, MatchCfg, RefineCfg, TrainCamCfg, TrainCfg, phase_sections,
                                      seed_eval_split)
from pipeline.crf import CrfCfg  # pseudo_masks.crf and train_segmentation.crf

__all__ = [
    "CaaCfg", "ChecksCfg", "ClipCfg", "Config", "ConfigError", "CrfCfg", "DataCfg", "EnsembleCfg",
    "EvaluateCfg", "ExportCamsCfg", "Fraction", "ImportCamsCfg", "ImportMasksCfg", "LearnPromptsCfg",
    "MaskGeneratorCfg", "MatchCfg", "NonNegative", "OFFICIAL_SWEEP", "Positive", "PseudoMaskMethod",
    "PseudoMasksCfg", "RefineCfg", "RULES", "RuleError", "RunCfg", "SamCfg", "Section", "SplitCfg", "THROUGHPUT",
    "TrainCamCfg", "TrainCfg", "TrainSegmentationCfg", "UniqueKeyLoader", "load_config", "missing_root_hint",
    "cam_labels", "phase_sections", "seed_eval_split",
    "_check_paths", "_is_hub_tag", "_load_raw", "_looks_like_path", "_merge", "_origin_of", "_read_yaml",
]
