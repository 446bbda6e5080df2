"""The audit configuration: a TOML file read into frozen dataclasses, validated once.

Every error names the file, the section and the key at fault, e.g.
``config.toml: [explain] methods: unknown method 'gradcm'; expected one of ...``.
Relative paths resolve against the config file's folder, so a config can be moved with its data.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from bias_audit.core._naming import ROLES
from bias_audit.errors import ConfigError

__all__ = [
    "AuditConfig",
    "DataConfig",
    "RegionsConfig",
    "ExplainConfig",
    "ModelConfig",
    "StatsConfig",
    "InterventionsConfig",
    "ReportConfig",
    "TrustConfig",
    "OutputConfig",
    "DiscoveryConfig",
    "GateConfig",
    "RunConfig",
    "TrainConfig",
]

#: Methods that give signed (N, C, H, W) input gradients rather than a (N, H, W) map.
GUIDED = ("guided_backprop", "deconvnet", "guided_gradcam")
TARGETS = ("predicted", "label")
ON_ERROR = ("raise", "skip")
RESIZE = ("crop", "letterbox")
FILLS = ("blur", "mean")
#: Where the batches run: in this process, or on a Ray cluster (the optional extra).
ENGINES = ("local", "ray")
#: The side of the square images a model sees, wherever it is set (audit, model, training,
#: manifest): below 8 px no classifier here has a spatial layer left; above 4096 one batch
#: of activations no longer fits in memory.
IMAGE_SIZE_RANGE = (8, 4096)
_SIZE = {"minimum": IMAGE_SIZE_RANGE[0], "maximum": IMAGE_SIZE_RANGE[1]}
#: How the trainer picks the epoch whose weights it keeps.
SELECT = ("worst_group_accuracy", "accuracy")
#: Model names become file and archive-key names, so they stay plain and short (``fullmatch``:
#: ``$`` would let a trailing newline through).
MAX_NAME = 64
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Columns the samples table (and the cells and statistics tables beside it) already has: a
#: group attribute of one of these names would silently replace it. Per-region columns carry a
#: ':' (``mass:hair``), which group names never do. A test keeps this in step with the tables.
RESERVED_COLUMNS = frozenset(
    {
        "model", "id", "label", "pred", "correct", "prob", "target", "map_ok",
        "cell", "n", "n_valid", "small", "metric", "value", "ci_low", "ci_high",
        "attribute", "n_cells", "worst_cell", "worst_value", "best_cell", "best_value", "gap",
        "p_value", "p_adjusted", "model_a", "model_b", "mean_diff", "share_expected_sign",
        "cluster", "feature_cluster",  # discovery
    }
)  # fmt: skip


def check_group_name(name: str) -> str | None:
    """Why ``name`` cannot be a group attribute, or None if it can."""
    if name in RESERVED_COLUMNS or name.startswith("_"):
        return f"{name!r} is a column of the samples or statistics tables; rename the column"
    if ":" in name:
        return f"{name!r} contains ':', which marks per-region columns"
    if name != name.strip() or any(not c.isprintable() for c in name):
        return f"{name!r} has surrounding whitespace or control characters"
    return None


def _methods() -> tuple[str, ...]:
    # Looked up on use: reading a config (and `bias-audit --help`) should not import torch.
    from bias_audit.core.maps import METHODS

    return METHODS


def _strategies() -> tuple[str, ...]:
    from bias_audit.core.training import STRATEGIES

    return tuple(STRATEGIES)


# -- the schema ----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Rule:
    """What one setting accepts. Declared once, beside its default, on the dataclass field."""

    kind: str  # "str", "int", "float", "bool", "names", "path", "floats3"
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # strictly greater than
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    nonempty: bool = False  # names: at least one entry
    odd: bool = False
    exists: bool = True  # path: must exist when validated


def setting(default: Any = MISSING, **rule: Any) -> Any:
    """A config field: its default and the :class:`Rule` it is validated against."""
    meta = {"rule": Rule(**rule)}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


class _Invalid(ConfigError):
    """A setting's bad value; :meth:`_Section.from_table` adds the file and section."""

    def __init__(self, section: str, key: str, what: str) -> None:
        self.section, self.key, self.what = section, key, what
        super().__init__(f"[{section}] {key}: {what}")


def _bounds(rule: Rule) -> str:
    if rule.minimum is not None and rule.maximum is not None:
        return f"between {_num(rule.minimum)} and {_num(rule.maximum)}"
    if rule.above is not None:
        return f"> {_num(rule.above)}"
    return f">= {_num(rule.minimum)}" if rule.minimum is not None else ""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


def _check(rule: Rule, value: Any) -> Any:
    """The value normalised (lists to tuples, numbers to float), or ValueError(what is wrong)."""
    if value is None:
        return None
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if rule.kind in ("int", "float"):
        ok = isinstance(value, int) if rule.kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            kind = "an integer" if rule.kind == "int" else "a number"
            raise ValueError(f"expected {kind}, got {value!r}")
        number = value if rule.kind == "int" else float(value)
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {value!r}")
        low_ok = rule.minimum is None or number >= rule.minimum
        high_ok = rule.maximum is None or number <= rule.maximum
        above_ok = rule.above is None or number > rule.above
        odd_ok = not rule.odd or number % 2 == 1
        if not (low_ok and high_ok and above_ok and odd_ok):
            kind = (
                "an odd integer"
                if rule.odd
                else ("an integer" if rule.kind == "int" else "a number")
            )
            raise ValueError(f"expected {kind} {_bounds(rule)}, got {value!r}".replace("  ", " "))
        return number
    if rule.kind in ("str", "path"):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a non-empty string, got {value!r}")
        choices = rule.choices() if callable(rule.choices) else rule.choices
        if choices is not None and value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        if rule.kind == "path":
            if not value.isprintable():  # a NUL byte would reach the OS as a ValueError
                raise ValueError(f"path {value!r} contains control characters")
            path = Path(value).expanduser()
            if rule.exists and not path.exists():
                raise ValueError(f"file not found: {path}")
            return path
        return value
    if rule.kind == "names":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        if rule.nonempty and not value:
            raise ValueError("expected at least one entry, got an empty list")
        dupes = sorted({v for v in value if list(value).count(v) > 1})
        if dupes:
            raise ValueError(f"duplicate entries {dupes}")
        choices = rule.choices() if callable(rule.choices) else rule.choices
        for v in value:
            if choices is not None and v not in choices:
                raise ValueError(f"unknown entry {v!r}; expected one of {', '.join(choices)}")
        return tuple(value)
    if rule.kind == "floats3":
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3:
            raise ValueError(f"expected 3 numbers (R, G, B), got {value!r}")
        try:
            out = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"expected 3 numbers (R, G, B), got {value!r}") from None
        if not all(math.isfinite(v) for v in out):
            raise ValueError(f"expected 3 finite numbers, got {value!r}")
        return out
    raise AssertionError(f"unknown rule kind {rule.kind!r}")  # a schema bug, not user input


class _Section:
    """A config table: every field with a :func:`setting` is checked on construction."""

    SECTION: ClassVar[str] = ""

    def _section(self) -> str:
        return self.SECTION

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("rule")
            if rule is None:
                continue
            try:
                value = _check(rule, getattr(self, f.name))
            except ValueError as err:
                raise _Invalid(self._section(), f.name, str(err)) from None
            object.__setattr__(self, f.name, value)
        self._cross_check()

    def _cross_check(self) -> None:
        """Rules between keys of one table."""

    def _fail(self, key: str, what: str) -> _Invalid:
        return _Invalid(self._section(), key, what)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if "rule" in f.metadata)  # type: ignore[arg-type]

    @classmethod
    def from_table(
        cls, table: Mapping[str, Any], *, source: str, section: str, base_dir: Path | None = None
    ) -> Any:
        """Validate one TOML table: unknown keys refused by name, paths resolved against
        ``base_dir``, every message ``<source>: [<section>] <key>: ...``."""
        allowed = cls.keys()
        where = f"[{section}]" if section else "top level"
        at = f"{source}: " if source else ""
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(
                    f"{at}{where}: unknown key {key!r}{hint}; expected one of {', '.join(allowed)}"
                )
        kwargs: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if "rule" not in f.metadata:
                continue
            if f.name not in table:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ConfigError(f"{at}[{section}] {f.name}: missing (required)")
                continue
            value = table[f.name]
            if f.metadata["rule"].kind == "path" and isinstance(value, str) and base_dir:
                path = Path(value).expanduser()
                value = path if path.is_absolute() else base_dir / path
            kwargs[f.name] = value
        try:
            return cls(**kwargs)
        except _Invalid as err:
            raise ConfigError(f"{at}[{section}] {err.key}: {err.what}") from None


@dataclass(frozen=True, kw_only=True)
class DataConfig(_Section):
    """``[data]``: the manifest and how to read it."""

    SECTION: ClassVar[str] = "data"
    manifest: Path = setting(kind="path")
    label: str = setting("label", kind="str")
    groups: tuple[str, ...] = setting((), kind="names")
    # None: the checkpoint's size, else the images' own size when they all share it, else the
    # run stops and asks (a silent resize once hid a shortcut).
    image_size: int | None = setting(None, kind="int", **_SIZE)
    resize: Literal["crop", "letterbox"] = setting("crop", kind="str", choices=RESIZE)
    classes: tuple[str, ...] | None = setting(None, kind="names", nonempty=True)
    on_error: Literal["raise", "skip"] = setting("raise", kind="str", choices=ON_ERROR)
    batch_size: int = setting(32, kind="int", minimum=1, maximum=65536)
    num_workers: int = setting(0, kind="int", minimum=0, maximum=256)

    def _cross_check(self) -> None:
        if self.label in self.groups:
            raise self._fail("groups", f"the label column {self.label!r} cannot also be a group")
        for g in self.groups:
            why = check_group_name(g)
            if why:
                raise self._fail("groups", why)


@dataclass(frozen=True, kw_only=True)
class RegionsConfig(_Section):
    """``[regions]``: which annotated regions play which role. Background is everything else."""

    SECTION: ClassVar[str] = "regions"
    causal: tuple[str, ...] = setting((), kind="names")
    confounder: tuple[str, ...] = setting((), kind="names")

    def _cross_check(self) -> None:
        both = sorted(set(self.causal) & set(self.confounder))
        if both:
            raise self._fail("confounder", f"region(s) {both} are also listed as causal")


@dataclass(frozen=True, kw_only=True)
class ExplainConfig(_Section):
    """``[explain]``: the first method drives the metrics; the others are computed too."""

    SECTION: ClassVar[str] = "explain"
    methods: tuple[str, ...] = setting(("gradcam",), kind="names", nonempty=True)
    target: str = setting("predicted", kind="str", choices=TARGETS)
    target_layer: str | None = setting(None, kind="str")
    #: A method whose estimated time for the whole dataset exceeds this is refused with the
    #: estimate (Score-CAM runs N x channels forward passes). 0 turns the budget off.
    max_seconds: float = setting(3600.0, kind="float", minimum=0)

    def _cross_check(self) -> None:
        valid = _methods()
        for m in self.methods:
            if m not in valid:
                raise self._fail(
                    "methods", f"unknown method {m!r}; expected one of {', '.join(valid)}"
                )
        if self.methods[0] in GUIDED:
            raise self._fail(
                "methods",
                f"the first method drives the metrics and must be a CAM-family map; "
                f"{self.methods[0]!r} gives input gradients (put it after a CAM method)",
            )


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Section):
    """One ``[[models]]`` entry."""

    SECTION: ClassVar[str] = "models"
    name: str = setting(kind="str")
    checkpoint: Path = setting(kind="path")
    arch: str | None = setting(None, kind="str")
    classes: tuple[str, ...] | None = setting(None, kind="names", nonempty=True)
    target_layer: str | None = setting(None, kind="str")
    image_size: int | None = setting(None, kind="int", **_SIZE)

    def _section(self) -> str:
        return f"models.{self.name}"

    def _cross_check(self) -> None:
        if not _NAME_RE.fullmatch(self.name):
            raise self._fail(
                "name",
                f"expected 1 to {MAX_NAME} letters, digits, '_', '-' or '.' (starting with a "
                f"letter or digit), got {self.name[:80]!r}",
            )


@dataclass(frozen=True, kw_only=True)
class StatsConfig(_Section):
    """``[stats]``: group statistics; ``seed`` is the audit's only source of randomness.

    ``bootstrap`` and ``permutations`` are resample counts (at least 20, so that an interval
    and a p-value below 0.05 exist at all; 1000 is the default and the recommendation).
    """

    SECTION: ClassVar[str] = "stats"
    min_group_size: int = setting(20, kind="int", minimum=1, maximum=1_000_000)
    bootstrap: int = setting(1000, kind="int", minimum=20, maximum=1_000_000)
    permutations: int = setting(1000, kind="int", minimum=20, maximum=1_000_000)
    seed: int = setting(0, kind="int", minimum=0, maximum=2**63 - 1)


@dataclass(frozen=True, kw_only=True)
class InterventionsConfig(_Section):
    """``[interventions]``: occlude each role (and each listed region) and re-predict.

    Each role and each region of ``regions`` costs one forward pass; ``baseline`` adds one more
    per role or region for a random patch of the same area (the ``flip_random:``/``drop_random:``
    columns, NaN when it is off). ``regions`` names annotated regions occluded on their own
    (``flip:<region>``, ``drop:<region>``), e.g. ``["hair"]``; each must be a manifest region.
    """

    SECTION: ClassVar[str] = "interventions"
    enabled: bool = setting(True, kind="bool")
    fill: str = setting("blur", kind="str", choices=FILLS)
    baseline: bool = setting(True, kind="bool")
    regions: tuple[str, ...] = setting((), kind="names")

    def _cross_check(self) -> None:
        # The manifest's regions are only known when the data is opened (the run checks them
        # then); a role's name here would give a column that reads like the role's.
        clash = [name for name in self.regions if name in ROLES]
        if clash:
            raise self._fail(
                "regions", f"{clash} are role names, not regions; the roles are always occluded"
            )


@dataclass(frozen=True, kw_only=True)
class ReportConfig(_Section):
    """``[report]``: whether to render ``report.html`` and how many gallery samples per cell."""

    SECTION: ClassVar[str] = "report"
    enabled: bool = setting(True, kind="bool")
    gallery_per_cell: int = setting(4, kind="int", minimum=0, maximum=1000)


# -- trust in the explanation ------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TrustConfig(_Section):
    """``[trust]``: can the maps be trusted? Checks run per model on a seeded sample.

    ``sample`` images per model (seeded by ``[stats] seed``), so the cost follows the sample,
    not the dataset. ``methods`` are the CAM-family methods checked (empty: those of
    ``[explain]``). ``randomization``: re-initialise the model's modules top-down and bottom-up
    in at most ``steps`` groups and compare the maps (a method whose maps keep a Spearman
    correlation above ``max_spearman`` after full randomisation is flagged; the sample is spread
    over ``draws`` independent random draws, so the mean is not one random network's layout).
    ``layers``: the layers compared with the target layer (empty: the ``layers_before`` spatial
    layers before it). ``faithfulness``: delete the ``fractions`` most attended pixels against
    as many random ones.
    """

    SECTION: ClassVar[str] = "trust"
    enabled: bool = setting(True, kind="bool")
    sample: int = setting(64, kind="int", minimum=2, maximum=100_000)
    methods: tuple[str, ...] = setting((), kind="names", choices=_methods)
    randomization: bool = setting(True, kind="bool")
    steps: int = setting(2, kind="int", minimum=1, maximum=1000)
    draws: int = setting(4, kind="int", minimum=1, maximum=1000)
    max_spearman: float = setting(0.5, kind="float", minimum=0, maximum=1)
    layers: tuple[str, ...] = setting((), kind="names")
    layers_before: int = setting(2, kind="int", minimum=0, maximum=10)
    faithfulness: bool = setting(True, kind="bool")
    fractions: tuple[float, float, float] = setting((0.05, 0.10, 0.20), kind="floats3")

    def _cross_check(self) -> None:
        guided = [m for m in self.methods if m in GUIDED]
        if guided:
            raise self._fail(
                "methods", f"{guided} give input gradients, not maps; list CAM methods"
            )
        bad = [f for f in self.fractions if not 0 < f < 1]
        if bad:
            raise self._fail("fractions", f"expected shares between 0 and 1 (exclusive), got {bad}")


@dataclass(frozen=True, kw_only=True)
class GateConfig(_Section):
    """``[gate]``: the limits each model's verdict is judged on (and ``bias-audit check``'s).

    A model fails a criterion when its value is beyond the limit and its 95% interval lies
    wholly beyond it; it is a concern when the point estimate is beyond the limit but the
    interval crosses it.
    """

    SECTION: ClassVar[str] = "gate"
    # mean share of attention inside the confounder regions
    max_confounder_mass: float = setting(0.30, kind="float", minimum=0, maximum=1)
    # that share divided by the regions' share of the image (1 = a uniform map)
    max_confounder_lift: float = setting(2.0, kind="float", minimum=0, maximum=1e6)
    # flip rate when the confounders are occluded minus the rate for same-area random patches
    max_flip_excess: float = setting(0.10, kind="float", minimum=-1, maximum=1)
    # accuracy of the worst judged cell (groups x class)
    min_worst_group_accuracy: float = setting(0.80, kind="float", minimum=0, maximum=1)

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.keys()}


@dataclass(frozen=True, kw_only=True)
class DiscoveryConfig(_Section):
    """``[discovery]``: clusters of each predicted class's maps and penultimate features,
    scored by occlusion; needs no region annotations (see ``bias_audit.core.discovery``).

    A cluster is flagged as a candidate shortcut when it has ``min_cluster_size`` members, its
    class's eigengap is at least ``min_eigengap``, at least ``min_consistency`` of its members'
    maps peak in its hot region (the smallest set of cells with ``hot_mass`` of its mean map,
    at least ``min_hot_area`` of the image), and occluding that region (filled by ``fill``)
    flips at least ``min_flip_excess`` more of its members than the strongest control: a
    random same-area region in the members; the same region, and each image's own hottest
    cells, in the rest of the class (the other classes when the cluster is the whole class).
    A cluster that is its whole predicted class is flagged only when, the audit having group
    attributes, one value is ``min_enrichment`` times as common in it as in all images: a
    model that learned its class looks like one consistent, causal place too.
    Map clusters of a class whose hot regions overlap by ``merge_iou`` (IoU) are merged first.
    A class that holds one group value ``min_enrichment`` times as often as all images, and
    none of whose map clusters is flagged, is scored once more as one whole-class cluster.
    The occluded region is the hot region grown by half a cell of the explained layer.
    ``enabled``, ``map_size`` and ``features`` are part of the resume key: the streaming pass
    keeps discovery's maps and features in each batch's part. At most ``max_occluded`` images
    per cluster (and as many control images) are occluded.
    ``fill`` is "mean" by default, not the interventions' blur: a blur leaves a bright mark
    bright enough to be read.
    """

    SECTION: ClassVar[str] = "discovery"
    enabled: bool = setting(True, kind="bool")
    map_size: int = setting(16, kind="int", minimum=2, maximum=64)
    features: bool = setting(True, kind="bool")
    max_clusters: int = setting(8, kind="int", minimum=1, maximum=50)
    neighbors: int = setting(10, kind="int", minimum=2, maximum=1000)
    min_cluster_size: int = setting(10, kind="int", minimum=1)
    min_eigengap: float = setting(0.05, kind="float", minimum=0, maximum=2)
    min_consistency: float = setting(0.6, kind="float", minimum=0, maximum=1)
    min_flip_excess: float = setting(0.25, kind="float", minimum=0, maximum=1)
    min_enrichment: float = setting(1.5, kind="float", minimum=1)
    hot_mass: float = setting(0.3, kind="float", above=0, maximum=1)
    min_hot_area: float = setting(0.05, kind="float", minimum=0, maximum=1)
    max_occluded: int = setting(64, kind="int", minimum=1)
    fill: str = setting("mean", kind="str", choices=FILLS)
    merge_iou: float = setting(0.5, kind="float", above=0, maximum=1)


@dataclass(frozen=True, kw_only=True)
class OutputConfig(_Section):
    """``[output]``: the run folder; ``--out`` wins over it."""

    SECTION: ClassVar[str] = "output"
    dir: Path | None = setting(None, kind="path", exists=False)


@dataclass(frozen=True, kw_only=True)
class RunConfig(_Section):
    """``[run]``: where the batches run; the samples table is the same on either engine.

    ``address`` is Ray's: None starts a local Ray on this machine, ``"auto"`` joins the cluster
    this machine belongs to, ``"ray://host:port"`` a remote one. ``workers`` is the number of
    Ray actors (each loads each model once); ``gpus_per_worker`` the GPUs each one holds (0: CPU).
    """

    SECTION: ClassVar[str] = "run"
    engine: str = setting("local", kind="str", choices=ENGINES)
    address: str | None = setting(None, kind="str")
    workers: int = setting(1, kind="int", minimum=1, maximum=4096)
    gpus_per_worker: float = setting(0.0, kind="float", minimum=0, maximum=64)


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """A validated audit configuration.

    Build it with :meth:`from_toml` (keeps the verbatim text for provenance) or :meth:`from_dict`.
    """

    title: str = "Bias audit"
    data: DataConfig
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    models: tuple[ModelConfig, ...]
    stats: StatsConfig = field(default_factory=StatsConfig)
    interventions: InterventionsConfig = field(default_factory=InterventionsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)
    #: The TOML text as written (``""`` when built from a dict); stored in the run folder.
    source_text: str = ""
    #: The config file (or ``"config"`` when built from a dict), used in messages.
    source: str = "config"
    base_dir: Path = Path(".")

    @classmethod
    def from_toml(cls, path: str | Path) -> AuditConfig:
        """Read and validate a TOML config. Raises ConfigError naming the file and key at fault."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as err:
            raise ConfigError(f"{path}: config file not found") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read the config file: {err}") from err
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from err
        return cls.from_dict(
            raw, base_dir=path.resolve().parent, source=str(path), source_text=text
        )

    @classmethod
    def from_dict(
        cls,
        d: Mapping[str, Any],
        *,
        base_dir: str | Path = ".",
        source: str = "config",
        source_text: str = "",
    ) -> AuditConfig:
        """Validate a dict shaped like the TOML file.

        Relative paths resolve against ``base_dir``; ``source`` names the file in messages.
        """
        base = Path(base_dir).resolve()
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a table of sections, got {type(d).__name__}")
        tables = (
            "data", "regions", "explain", "models", "stats", "interventions", "report", "gate",
            "trust", "discovery",
        )  # fmt: skip
        allowed = ("title", *tables, "output", "run")
        for key in d:
            if key not in allowed:
                raise ConfigError(
                    f"{source}: top level: unknown key {key!r}; expected one of "
                    f"{', '.join(allowed)}"
                )
        title = d.get("title", "Bias audit")
        if not isinstance(title, str) or not title.strip():
            raise ConfigError(f"{source}: title: expected a non-empty string, got {title!r}")

        def section(cls: type[_Section], name: str, required: bool = False) -> Any:
            if name not in d:
                if required:
                    raise ConfigError(f"{source}: [{name}]: missing (required section)")
                return cls.from_table({}, source=source, section=name, base_dir=base)
            value = d[name]
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: [{name}]: expected a table, got {value!r}")
            return cls.from_table(value, source=source, section=name, base_dir=base)

        data = section(DataConfig, "data", required=True)
        regions = section(RegionsConfig, "regions")
        explain = section(ExplainConfig, "explain")
        raw_models = d.get("models")
        if raw_models is None:
            raise ConfigError(f"{source}: [[models]]: missing (at least one model is required)")
        if not isinstance(raw_models, list) or not raw_models:
            raise ConfigError(
                f"{source}: [[models]]: expected a list of tables, got {raw_models!r}"
            )
        models: list[ModelConfig] = []
        for i, entry in enumerate(raw_models):
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{source}: [[models]] #{i + 1}: expected a table, got {entry!r}")
            name = entry.get("name")
            # A bad name would put a newline or 300 characters into every message's prefix.
            plain = isinstance(name, str) and _NAME_RE.fullmatch(name)
            label = f"models.{name if plain else i + 1}"
            model = ModelConfig.from_table(entry, source=source, section=label, base_dir=base)
            if any(m.name == model.name for m in models):
                raise ConfigError(f"{source}: [{label}] name: duplicate model name {model.name!r}")
            models.append(model)
        stats = section(StatsConfig, "stats")
        interventions = section(InterventionsConfig, "interventions")
        report = section(ReportConfig, "report")
        gate = section(GateConfig, "gate")
        discovery = section(DiscoveryConfig, "discovery")
        output = section(OutputConfig, "output")
        trust = section(TrustConfig, "trust")
        run = section(RunConfig, "run")

        return cls(
            title=title,
            data=data,
            regions=regions,
            explain=explain,
            models=tuple(models),
            stats=stats,
            interventions=interventions,
            report=report,
            gate=gate,
            discovery=discovery,
            output=output,
            trust=trust,
            run=run,
            source_text=source_text,
            source=source,
            base_dir=base,
        )

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"{self.source}: [[models]]: no model named {name!r}")

    def run_dir(self, out: str | Path | None = None) -> Path:
        """The run folder: ``out`` if given, else ``[output] dir``, else ``runs/<config name>``
        beside the config file."""
        if out is not None:
            return Path(out)
        if self.output.dir is not None:
            return self.output.dir
        stem = Path(self.source).stem if self.source != "config" else "audit"
        return self.base_dir / "runs" / stem

    def samples_hash(self) -> str:
        """Hash of every setting that changes ``samples.parquet``; a resume must match it.

        Title, stats other than the seed, the report, the output folder and the engine (``[run]``)
        do not change the per-sample rows, so editing them does not block ``--resume``: a run
        started locally can be resumed on Ray and the other way round.
        """
        d = asdict(self)
        keep = {k: d[k] for k in ("data", "regions", "explain", "models", "interventions")}
        keep["data"].pop("num_workers")
        # A time budget refuses a run before it starts; it never changes a row.
        keep["explain"].pop("max_seconds")
        keep["seed"] = self.stats.seed
        # The parts also hold discovery's inputs (maps at map_size, features), not its scoring.
        disc = self.discovery
        keep["discovery"] = [disc.enabled, disc.map_size, disc.features] if disc.enabled else False
        text = json.dumps(keep, sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def to_toml(self) -> str:
        """The verbatim text when there is one; otherwise a faithful rendering of the values."""
        if self.source_text:
            return self.source_text
        return _render_toml(self)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _render_toml(cfg: AuditConfig) -> str:
    lines = [f"title = {_toml_value(cfg.title)}"]
    sections = (
        "data", "regions", "explain", "stats", "interventions", "report", "gate", "trust",
        "discovery", "output", "run",
    )  # fmt: skip
    for name in sections:
        lines.append(f"\n[{name}]")
        for k, v in asdict(getattr(cfg, name)).items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    for m in cfg.models:
        lines.append("\n[[models]]")
        for k, v in asdict(m).items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Section):
    """Everything a training run depends on (``[train]``). Validated on construction.

    Attributes:
        train_manifest: manifest of the training images (see ``bias_audit.data``).
        val_manifest: manifest for per-epoch validation; None skips validation and keeps
            the last epoch.
        label: label column. groups: attribute columns; cells are groups x label.
        classes: class names in index order (default: sorted labels of the training set).
        confounders: region names whose attention ``attention_penalty`` penalises.
        arch: see ``build_model``; "smallcnn" by default.
        image_size, resize, mean, std: passed to ``load_manifest`` (mean/std None: the data
            layer's ImageNet defaults).
        epochs, batch_size, lr, weight_decay: the usual.
        optimizer: "adam" (AdamW-style decoupled decay is not used: plain Adam) or "sgd"
            (momentum 0.9).
        scheduler: "none" or "cosine" (per-epoch cosine decay to 0, stateless).
        strategy: "erm", "balanced", "reweight", "group_dro", "attention_penalty" or
            "mask_confounders" (cross-entropy on the images with the ``confounders`` pixels
            set to the dataset mean; an input edit, not an attention penalty).
        penalty_weight: λ of attention_penalty. penalty: "gradcam" (Grad-CAM mass inside
            the confounders) or "input_grad" (RRR's input-gradient energy).
        penalty_map: which Grad-CAM map the "gradcam" penalty measures: "evidence" (default:
            the share of |Grad-CAM| of every class's margin inside the confounders, see
            ``gradcam_evidence_mass``) or "label" (the ReLU'd map of the label's margin, see
            ``gradcam_mass``; it did not debias the nurse/doctor case study).
        penalty_window: odd; the Grad-CAM penalty counts a layer cell as confounder by the
            region's share of the window x window cells around it (1: the cell's own
            footprint). 3 (default) also charges the cells beside the region, whose
            receptive fields see it.
        target_layer: layer of the Grad-CAM penalty; None picks the last spatial layer.
        dro_eta: step size of the Group DRO weights.
        select: "worst_group_accuracy" (default when groups are given) or "accuracy".
        seed: the one seed (initialisation, data order, augmentation).
        device: None/"cpu", "cuda", "auto". num_workers: DataLoader workers.
        out: output folder (model.pt, last.pt, history.json).
    """

    SECTION: ClassVar[str] = "train"
    train_manifest: str = setting(kind="str")
    val_manifest: str | None = setting(None, kind="str")
    label: str = setting("label", kind="str")
    groups: tuple[str, ...] = setting((), kind="names")
    classes: tuple[str, ...] | None = setting(None, kind="names", nonempty=True)
    confounders: tuple[str, ...] = setting((), kind="names")
    arch: str = setting("smallcnn", kind="str")
    image_size: int = setting(96, kind="int", **_SIZE)
    resize: Literal["crop", "letterbox"] = setting("crop", kind="str", choices=RESIZE)
    mean: tuple[float, float, float] | None = setting(None, kind="floats3")
    std: tuple[float, float, float] | None = setting(None, kind="floats3")
    epochs: int = setting(10, kind="int", minimum=1, maximum=100_000)
    batch_size: int = setting(32, kind="int", minimum=1, maximum=65536)
    lr: float = setting(1e-3, kind="float", above=0)
    weight_decay: float = setting(1e-4, kind="float", minimum=0)
    optimizer: str = setting("adam", kind="str", choices=("adam", "sgd"))
    scheduler: str = setting("none", kind="str", choices=("none", "cosine"))
    strategy: str = setting("erm", kind="str", choices=_strategies)
    penalty_weight: float = setting(1.0, kind="float", minimum=0)
    penalty: str = setting("gradcam", kind="str", choices=("gradcam", "input_grad"))
    penalty_map: str = setting("evidence", kind="str", choices=("evidence", "label"))
    penalty_window: int = setting(3, kind="int", minimum=1, maximum=99, odd=True)
    target_layer: str | None = setting(None, kind="str")
    dro_eta: float = setting(0.01, kind="float", minimum=0)
    select: str | None = setting(None, kind="str", choices=SELECT)
    seed: int = setting(0, kind="int", minimum=0, maximum=2**63 - 1)
    device: str | None = setting(None, kind="str")
    num_workers: int = setting(0, kind="int", minimum=0, maximum=256)
    out: str = setting("runs/train", kind="str")

    def __post_init__(self) -> None:
        for name in ("train_manifest", "val_manifest", "out"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))
        super().__post_init__()

    def _cross_check(self) -> None:
        if self.select is None:
            default = "worst_group_accuracy" if self.groups else "accuracy"
            object.__setattr__(self, "select", default)
        if self.strategy in ("attention_penalty", "mask_confounders") and not self.confounders:
            raise self._fail("confounders", f"{self.strategy} needs at least one region name")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "") -> TrainConfig:
        """Build from a dict (a TOML table, CLI options); unknown keys are refused by name."""
        config: TrainConfig = cls.from_table(d, source=source, section="train")
        return config

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``from_dict(to_dict())`` gives an equal config."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
