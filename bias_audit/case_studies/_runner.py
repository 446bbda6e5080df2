"""run_case_study: generate the data, train the models, audit them, judge the acceptance.

The settings are data shipped with each case study (``case_studies/<name>/train.toml``,
``audit.toml``, ``expected.toml``); this module only wires the layers together.

Run folder (``out``)::

    data/                 the generated splits (skipped when complete)
    models/<model>/       model.pt, last.pt, history.json (resumed when interrupted)
    audit.toml            the audit config, filled in
    audit/                the audit run folder, with report.html
    case_study.json       written last: the acceptance checks and timings (the "finished" mark)
"""

from __future__ import annotations

import json
import math
import string
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bias_audit.case_studies._registry import CASE_STUDIES
from bias_audit.core._naming import CONFOUNDER, column
from bias_audit.core.config import AuditConfig
from bias_audit.errors import ConfigError, RunError
from bias_audit.io._files import write_json, write_text
from bias_audit.io._resources import resource_dir
from bias_audit.pipelines import AuditResult, TrainConfig, audit, train_classifier
from bias_audit.report import render_report

__all__ = [
    "AcceptanceCheck",
    "CaseStudyResult",
    "audit_config_text",
    "check_acceptance",
    "generator_options",
    "load_expected",
    "run_case_study",
    "train_plan",
]

#: CLI name -> shipped folder under ``resource_dir("case_studies")``.
_FOLDERS = {"nurse-doctor": "nurse_doctor", "waterbirds": "waterbirds"}
#: CLI name -> the audit report's title.
_TITLES = {"nurse-doctor": "nurse or doctor?", "waterbirds": "landbird or waterbird?"}
#: Keys the runner sets itself; a train.toml must not.
_RUNNER_KEYS = ("train_manifest", "out", "val_manifest", "device")
FINISHED = "case_study.json"


@dataclass(frozen=True, kw_only=True)
class AcceptanceCheck:
    """One acceptance criterion, measured.

    Attributes:
        name: what is judged, e.g. ``"accuracy [female / doctor]"``.
        model: the model judged (``"biased vs debiased_data"`` for a comparison).
        value: the measured value; NaN when the audit did not produce it (then ``passed`` is
            False).
        op: ``">="``, ``"<="`` or ``">"``.
        limit: the threshold from ``expected.toml``.
        passed: whether ``value op limit`` holds with at least ``margin`` to spare.
        margin: how far beyond the limit the value must be (``expected.toml``'s ``margin``):
            a check that passes by less would fail on another seed.
    """

    name: str
    model: str
    value: float
    op: str
    limit: float
    passed: bool
    margin: float = 0.0

    @property
    def line(self) -> str:
        value = "n/a" if math.isnan(self.value) else f"{self.value:.4g}"
        status = "pass" if self.passed else "FAIL"
        spare = f" (margin {self.margin:g})" if self.margin else ""
        return (
            f"{status:4}  {self.model:32} {self.name:34} {value:>9} {self.op} {self.limit:g}{spare}"
        )


@dataclass(frozen=True, kw_only=True)
class CaseStudyResult:
    """What :func:`run_case_study` produced; everything is also in ``run_dir``.

    Attributes:
        name: the case study, e.g. ``"nurse-doctor"``.
        run_dir: the case study's folder (``out``).
        audit_dir: the audit run folder, ``run_dir / "audit"``.
        report: ``audit_dir / "report.html"``, or None when the report was not rendered.
        quick: whether this was a ``--quick`` run.
        findings: the audit's findings (dicts: rule, severity, model, metric, value, text ...).
        checks: the acceptance checks, in ``expected.toml`` order.
        seconds: wall time per stage (``generate``, ``train:<model>``, ``audit``, ``total``);
            the stages of the run that did the work when ``reused``.
        reused: True when ``run_dir`` already held this finished case study and nothing ran.
    """

    name: str
    run_dir: Path
    audit_dir: Path
    report: Path | None
    quick: bool
    findings: tuple[dict[str, Any], ...] = ()
    checks: tuple[AcceptanceCheck, ...] = ()
    seconds: Mapping[str, float] = field(default_factory=dict)
    reused: bool = False

    @property
    def passed(self) -> bool:
        """True when every acceptance check passed."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failed(self) -> tuple[AcceptanceCheck, ...]:
        """The acceptance checks that failed."""
        return tuple(c for c in self.checks if not c.passed)

    def summary_text(self, *, max_findings: int = 8) -> str:
        """The report's path, the headline findings and the acceptance table, for the CLI."""
        lines = [f"case study {self.name}{' (quick)' if self.quick else ''}: {self.run_dir}"]
        if self.reused:
            lines.append("(already finished here: nothing re-run; pass force=True to start over)")
        lines.append(f"report: {self.report if self.report is not None else '(not rendered)'}")
        order = {"high": 0, "medium": 1, "low": 2, "info": 3}
        headline = sorted(
            (f for f in self.findings if f.get("severity") in ("high", "medium")),
            key=lambda f: order.get(f.get("severity", "info"), 9),
        )[:max_findings]
        if headline:
            lines.append("headline findings:")
            lines += [f"  [{f['severity']}] {f['text']}" for f in headline]
        n_fail = len(self.failed())
        lines.append(f"acceptance ({len(self.checks) - n_fail}/{len(self.checks)} passed):")
        lines += [f"  {c.line}" for c in self.checks]
        if n_fail:
            lines.append(f"ACCEPTANCE FAILED: {n_fail} check(s) did not pass")
        if self.seconds:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())
            lines.append(f"seconds: {parts}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# acceptance


def load_expected(path: str | Path) -> dict[str, Any]:
    """Read an ``expected.toml``. Raises ConfigError naming the file on a missing or bad file."""
    path = Path(path)
    try:
        expected = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: expected-numbers file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    for section, keys in _EXPECTED_KEYS.items():
        table = expected.get(section)
        if section in _OPTIONAL_SECTIONS and table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] missing")
        for key in keys:
            if key not in table:
                raise ConfigError(f"{path}: [{section}] {key} missing")
    biased = expected["biased"]
    if not any(
        k in biased for k in ("max_accuracy_counter_stereotypical", "max_worst_group_accuracy")
    ):
        raise ConfigError(f"{path}: [biased] max_accuracy_counter_stereotypical or "
                          "max_worst_group_accuracy missing")  # fmt: skip
    return expected


_EXPECTED_KEYS = {
    "cells": ("stereotypical", "counter_stereotypical"),
    "biased": ("model", "min_accuracy_stereotypical"),
    "debiased": ("models", "min_accuracy_every_cell"),
    "attention": ("min_confounder_mass_ratio", "max_p_value"),
    "occlusion": ("min_flip_ratio", "min_flip_difference"),
}
#: Sections a case study may leave out (its checks are then skipped).
_OPTIONAL_SECTIONS = ("occlusion",)


def _value(groups: pd.DataFrame, model: str, cell: str, metric: str) -> float:
    rows = groups[
        (groups["model"] == model) & (groups["cell"] == cell) & (groups["metric"] == metric)
    ]
    return float(rows["value"].iloc[0]) if len(rows) else math.nan


def _p_value(comparisons: pd.DataFrame, a: str, b: str, metric: str) -> float:
    if comparisons.empty:
        return math.nan
    pair = ((comparisons["model_a"] == a) & (comparisons["model_b"] == b)) | (
        (comparisons["model_a"] == b) & (comparisons["model_b"] == a)
    )
    rows = comparisons[pair & (comparisons["cell"] == "all") & (comparisons["metric"] == metric)]
    if not len(rows):
        return math.nan
    col = "p_adjusted" if "p_adjusted" in rows.columns else "p_value"
    return float(rows[col].iloc[0])


def _check(
    name: str, model: str, value: float, op: str, limit: float, margin: float = 0.0
) -> AcceptanceCheck:
    ok = {
        ">=": value >= limit + margin, "<=": value <= limit - margin, ">": value > limit + margin,
    }[op]  # fmt: skip
    return AcceptanceCheck(
        name=name, model=model, value=float(value), op=op, limit=float(limit),
        passed=bool(ok) and not math.isnan(value), margin=float(margin),
    )  # fmt: skip


def _cell_minimum(setting: Any, model: str) -> float:
    # one floor for every debiased model, or a table of floors by model
    if isinstance(setting, Mapping):
        if model not in setting:
            raise ConfigError(
                f"expected.toml: [debiased] min_accuracy_every_cell has no floor for {model!r}"
            )
        return float(setting[model])
    return float(setting)


def check_acceptance(
    groups: pd.DataFrame, comparisons: pd.DataFrame, expected: Mapping[str, Any]
) -> tuple[AcceptanceCheck, ...]:
    """Judge the acceptance criteria from an audit's tables.

    Args:
        groups: the audit's ``groups.parquet`` (``model, cell, metric, value``; cell ``"all"``
            holds the means over every image).
        comparisons: the audit's ``comparisons.parquet`` (``model_a, model_b, cell, metric,
            p_value`` and optionally ``p_adjusted``, which is preferred).
        expected: the content of ``expected.toml`` (see :func:`load_expected`).

    A top-level ``margin`` makes every check but the p-values pass only with that much to
    spare. Optional keys: ``[biased] max_balanced_accuracy`` (the mean of the cells'
    accuracies), ``[biased] max_worst_group_accuracy`` (the lowest cell's; it may replace
    ``max_accuracy_counter_stereotypical``), the whole ``[occlusion]`` section,
    ``[occlusion] min_flip_over_random`` (the biased model's flip rate minus that of random
    patches of the same area), and ``[debiased] min_accuracy_every_cell`` may be a
    table of floors by model.

    Returns:
        One :class:`AcceptanceCheck` per criterion, model and cell. A value the tables lack is
        NaN and fails its check.
    """
    cells, b, d = expected["cells"], expected["biased"], expected["debiased"]
    att, occ = expected["attention"], expected.get("occlusion", {})
    m = float(expected.get("margin", 0.0))  # never applied to p-values
    biased = b["model"]
    every = [*cells["stereotypical"], *cells["counter_stereotypical"]]
    out: list[AcceptanceCheck] = []
    for cell in cells["stereotypical"]:
        acc = _value(groups, biased, cell, "accuracy")
        limit = b["min_accuracy_stereotypical"]
        out.append(_check(f"accuracy [{cell}]", biased, acc, ">=", limit, m))
    for cell in cells["counter_stereotypical"] if "max_accuracy_counter_stereotypical" in b else ():
        acc = _value(groups, biased, cell, "accuracy")
        limit = b["max_accuracy_counter_stereotypical"]
        out.append(_check(f"accuracy [{cell}]", biased, acc, "<=", limit, m))
    if "max_worst_group_accuracy" in b:
        # the lowest of the cells' accuracies (Sagawa et al.'s worst-group accuracy)
        accs = [_value(groups, biased, c, "accuracy") for c in every]
        worst = math.nan if any(math.isnan(x) for x in accs) else min(accs)
        limit = b["max_worst_group_accuracy"]
        out.append(_check("worst-group accuracy", biased, worst, "<=", limit, m))
    if "max_balanced_accuracy" in b:
        # the mean of the cells' accuracies: the test split's accuracy were it balanced
        bal = sum(_value(groups, biased, c, "accuracy") for c in every) / len(every)
        out.append(_check("balanced accuracy", biased, bal, "<=", b["max_balanced_accuracy"], m))
    conf, causal, flip = (
        column("mass", CONFOUNDER),
        column("mass", "causal"),
        # a single region (the "occluding the hair") or, by default, the confounder role
        column("flip", occ.get("region", CONFOUNDER)),
    )
    for model in d["models"]:
        floor = _cell_minimum(d["min_accuracy_every_cell"], model)
        for cell in every:
            acc = _value(groups, model, cell, "accuracy")
            out.append(_check(f"accuracy [{cell}]", model, acc, ">=", floor, m))
    biased_mass = _value(groups, biased, "all", conf)
    biased_flip = _value(groups, biased, "all", flip)
    if "min_flip_over_random" in occ:
        # the biased model itself: the confounders flip it more than random patches of their size
        random = _value(groups, biased, "all", column("flip_random", occ.get("region", CONFOUNDER)))
        out.append(_check(f"{flip} - random patch", biased, biased_flip - random, ">=",
                          occ["min_flip_over_random"], m))  # fmt: skip
    for model in d["models"]:
        pair = f"{biased} vs {model}"
        mass = _value(groups, model, "all", conf)
        ratio = biased_mass / mass if mass > 0 else math.nan
        out.append(_check(f"{conf} ratio", pair, ratio, ">=", att["min_confounder_mass_ratio"], m))
        # The test is two-sided: a biased model significantly BELOW the debiased one must fail
        # this check too, not only the ratio's.
        p = _p_value(comparisons, biased, model, conf) if biased_mass > mass else 1.0
        out.append(_check(f"{conf} paired p, biased above", pair, p, "<=", att["max_p_value"]))
        if "min_causal_minus_confounder" in att:
            diff = _value(groups, model, "all", causal) - mass
            limit = att["min_causal_minus_confounder"]
            out.append(_check(f"{causal} - {conf}", model, diff, ">", limit, m))
        if not occ:
            continue
        model_flip = _value(groups, model, "all", flip)
        # A debiased model that never flips makes the ratio infinite, which passes.
        if model_flip > 0 or math.isnan(model_flip):
            ratio = biased_flip / model_flip
        else:
            ratio = math.inf if biased_flip > 0 else math.nan
        out.append(_check(f"{flip} ratio", pair, ratio, ">=", occ["min_flip_ratio"], m))
        out.append(
            _check(f"{flip} difference", pair, biased_flip - model_flip, ">=",
                   occ["min_flip_difference"], m)
        )  # fmt: skip
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# the run


def _folder(name: str) -> Path:
    if name not in _FOLDERS:
        raise ConfigError(
            f"case study {name!r}: unknown; expected one of {', '.join(sorted(_FOLDERS))}"
        )
    return resource_dir("case_studies") / _FOLDERS[name]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def _merge(*tables: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for t in tables:
        out.update(t or {})
    return out


def train_plan(
    train_toml: str | Path, data_dir: str | Path, models_dir: str | Path, *, quick: bool,
    device: str | None = None, seed: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Read ``train.toml`` into the generation settings and one TrainConfig per model.

    ``seed``, when given, replaces the file's seeds: the data's and every model's.

    Returns:
        ``(data settings, {model name: TrainConfig})`` in the file's model order.

    Raises:
        ConfigError: a bad file, a missing ``split``, a key the runner sets, or a TrainConfig
            error, each naming the file and the model.
    """

    path = Path(train_toml)
    raw = _read_toml(path)
    quick_raw = raw.get("quick", {}) if quick else {}
    data = _merge(raw.get("data"), quick_raw.get("data"))
    if seed is not None:
        data["seed"] = seed
    models = raw.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{path}: no [models.<name>] tables")
    configs: dict[str, Any] = {}
    for name in models:
        where = f"{path}: [models.{name}]"
        values = _merge(
            raw.get("common"), models[name], quick_raw.get("common"),
            quick_raw.get("models", {}).get(name),
        )  # fmt: skip
        for key in _RUNNER_KEYS:
            if key in values:
                raise ConfigError(f"{where} {key}: set by the runner; remove it")
        split = values.pop("split", None)
        if not isinstance(split, str):
            raise ConfigError(f"{where} split: expected the name of a generated split")
        values.setdefault("image_size", data.get("image_size", 64))
        values["train_manifest"] = str(Path(data_dir) / split / "manifest.csv")
        values["out"] = str(Path(models_dir) / name)
        values["device"] = device
        if seed is not None:
            values["seed"] = seed
        try:
            configs[name] = TrainConfig.from_dict(values)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from err
        except TypeError as err:
            raise ConfigError(f"{where}: {err}") from err
    return data, configs


def audit_config_text(template: str, *, title: str, image_size: int, models: Sequence[str]) -> str:
    """Fill the shipped ``audit.toml`` template; checkpoint paths are relative to the run folder."""
    tables = "\n\n".join(
        f'[[models]]\nname = "{m}"\ncheckpoint = "models/{m}/model.pt"' for m in models
    )
    try:
        return string.Template(template).substitute(
            title=title, image_size=image_size, models=tables
        )
    except (KeyError, ValueError) as err:
        raise ConfigError(f"audit.toml template: unknown or bad placeholder {err}") from err


def generator_options(
    data: Mapping[str, Any], generator: Any, *, where: str = "train.toml"
) -> dict[str, Any]:
    """The keyword arguments of ``generator.generate`` from a ``[data]`` table.

    ``image_size``, ``seed`` and ``n`` pass through; a ``cues`` table becomes the generator's
    ``Cues`` (lists become tuples), so a case study can set cue strengths without code.

    Raises:
        ConfigError: an unknown key in ``[data]`` or in ``[data.cues]``, or a bad cue value,
            naming ``where`` and the key.
    """
    allowed = ("image_size", "seed", "n", "cues")
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{where}: [data] {key}: unknown key; expected one of "
                              f"{', '.join(allowed)}")  # fmt: skip
    out = {k: v for k, v in data.items() if k in ("image_size", "seed", "n")}
    cues = data.get("cues")
    if cues is not None:
        cls = getattr(generator, "Cues", None)
        if cls is None or not isinstance(cues, Mapping):
            raise ConfigError(f"{where}: [data] cues: expected a table of cue strengths")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cues) - known)
        if unknown:
            raise ConfigError(f"{where}: [data.cues] {unknown[0]}: unknown cue; expected one of "
                              f"{', '.join(sorted(known))}")  # fmt: skip
        try:
            out["cues"] = cls(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in cues.items()})  # fmt: skip
        except (ConfigError, TypeError, ValueError) as err:
            raise ConfigError(f"{where}: [data.cues]: {err}") from err
    return out


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def run_case_study(
    name: str,
    *,
    out: str | Path | None = None,
    quick: bool = False,
    force: bool = False,
    progress: bool = True,
    device: str | None = None,
    threads: int | None = 2,
    seed: int | None = None,
) -> CaseStudyResult:
    """Run a shipped case study end to end: data, three trained models, audit, report, acceptance.

    Resumable: a re-run after an interruption keeps the complete data, resumes each model from
    its last epoch and the audit from its last batch. A model already trained with the same
    settings is reused as it is. When ``out`` already holds this finished case study
    (``case_study.json``), nothing is re-run: the acceptance is judged again from the audit
    folder and returned with ``reused=True``. Nothing is overwritten without ``force``; settings
    that differ from the folder's (e.g. ``quick`` on a full run's folder) raise.

    Args:
        name: the case study, e.g. ``"nurse-doctor"``.
        out: the case study folder (default ``runs/<name>``, ``runs/<name>-quick`` if quick).
        quick: the small, fast version (fewer images; settings from ``[quick.*]``).
        force: start over: regenerate, retrain and re-audit.
        progress: stage messages on stderr (and the layers' bars on a terminal).
        device: "cpu" (default), "cuda", "auto".
        seed: replaces ``train.toml``'s seeds (the data's and every model's); None keeps
            them (0). The acceptance criteria must hold for every seed.
        threads: torch CPU threads for generation and the audit (restored after); None leaves
            it alone. Training always runs on the trainer's fixed ``TRAIN_THREADS``, so the
            models, and hence every number, are the same whatever this is.

    Returns:
        A :class:`CaseStudyResult` (also summarised in ``out/case_study.json``).

    Raises:
        ConfigError: an unknown case study or a bad shipped settings file (named).
        DataError, RunError: from the layers: e.g. ``out`` holds data or models made with other
            settings and ``force`` is False.
    """

    folder = _folder(name)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed: expected an int >= 0, got {seed!r}")
    if out is None:
        suffix = ("-quick" if quick else "") + (f"-seed{seed}" if seed is not None else "")
        out = Path("runs") / (name + suffix)
    out = Path(out)
    out = out.resolve()
    audit_dir = out / "audit"
    finished = out / FINISHED
    expected = load_expected(folder / "expected.toml")
    if finished.is_file() and not force:
        return _reuse(name, out, finished, quick, seed, expected)

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(name, folder, out, audit_dir, quick, seed, force, progress, device, expected)
    finally:
        torch.set_num_threads(old_threads)


def _run(
    name: str, folder: Path, out: Path, audit_dir: Path, quick: bool, seed: int | None,
    force: bool, progress: bool, device: str | None, expected: Mapping[str, Any],
) -> CaseStudyResult:  # fmt: skip

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    data_settings, configs = train_plan(
        folder / "train.toml", out / "data", out / "models", quick=quick, device=device,
        seed=seed,
    )  # fmt: skip
    generator = CASE_STUDIES[name]

    _say(progress, f"[1/3] generating data into {out / 'data'}")
    t0 = time.perf_counter()
    gen_kwargs = generator_options(data_settings, generator, where=f"{folder / 'train.toml'}")
    generator.generate(out / "data", quick=quick, force=force, **gen_kwargs)
    seconds["generate"] = time.perf_counter() - t0

    for i, (model, config) in enumerate(configs.items(), 1):
        _say(progress, f"[2/3] training {model} ({i}/{len(configs)}, {config.epochs} epochs)")
        t0 = time.perf_counter()
        # resume=True continues an interrupted run, and is a no-op on a finished one; a model
        # made with other settings or data is refused by the trainer unless force.
        train_classifier(config, resume=not force, force=force, progress=progress)
        seconds[f"train:{model}"] = time.perf_counter() - t0

    _say(progress, f"[3/3] auditing {', '.join(configs)} on the test split")
    t0 = time.perf_counter()
    mode = " (quick)" if quick else ""
    text = audit_config_text(
        (folder / "audit.toml").read_text(encoding="utf-8"),
        title=f"Case study: {_TITLES.get(name, name)}{mode}",
        image_size=int(data_settings.get("image_size", 64)),
        models=list(configs),
    )
    config_path = out / "audit.toml"
    write_text(config_path, text)
    config = AuditConfig.from_toml(config_path)
    resume = (audit_dir / "progress").is_dir() and not force
    result = audit(
        config, out=audit_dir, resume=resume, force=force, device=device, progress=progress
    )  # fmt: skip
    if config.report.enabled:
        render_report(result.run_dir)
    seconds["audit"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start

    checks = check_acceptance(result.groups, result.comparisons, expected)
    report = audit_dir / "report.html"
    case = CaseStudyResult(
        name=name, run_dir=out, audit_dir=audit_dir,
        report=report if report.is_file() else None, quick=quick,
        findings=tuple(result.findings), checks=checks, seconds=seconds,
    )  # fmt: skip
    write_json(
        out / FINISHED,
        {
            "name": name,
            "quick": quick,
            "seed": int(data_settings.get("seed", 0)),
            "passed": case.passed,
            "checks": [_jsonable(asdict(c)) for c in checks],
            "seconds": seconds,
        },
    )
    return case


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _reuse(
    name: str, out: Path, finished: Path, quick: bool, seed: int | None,
    expected: Mapping[str, Any],
) -> CaseStudyResult:  # fmt: skip

    try:
        info = json.loads(finished.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunError(f"{finished}: unreadable ({err}); pass force=True to start over") from err
    if bool(info.get("quick")) != quick:
        held = "a --quick" if info.get("quick") else "a full"
        raise RunError(
            f"{out}: holds {held} run of {name}; pass force=True or choose another output folder"
        )
    held_seed = info.get("seed", 0)
    if seed is not None and held_seed != seed:
        raise RunError(
            f"{out}: holds a run of {name} with seed {held_seed}, not {seed}; pass force=True "
            "or choose another output folder"
        )
    audit_dir = out / "audit"
    result = AuditResult.load(audit_dir)
    report = audit_dir / "report.html"
    return CaseStudyResult(
        name=name, run_dir=out, audit_dir=audit_dir,
        report=report if report.is_file() else None, quick=quick,
        findings=tuple(result.findings),
        checks=check_acceptance(result.groups, result.comparisons, expected),
        seconds=dict(info.get("seconds", {})), reused=True,
    )  # fmt: skip
