"""The audit configuration: a TOML file read into frozen dataclasses, validated once.

Every error names the file, the section and the key at fault, e.g.
``config.toml: [explain] methods: unknown method 'gradcm'; expected one of ...``.
Relative paths resolve against the config file's folder, so a config can be moved with its data.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    "OutputConfig",
]

#: Methods that give signed (N, C, H, W) input gradients rather than a (N, H, W) map.
GUIDED = ("guided_backprop", "deconvnet", "guided_gradcam")
TARGETS = ("predicted", "label")
ON_ERROR = ("raise", "skip")
RESIZE = ("crop", "letterbox")
FILLS = ("blur", "mean")
#: Side of the square model input, for a config and for a checkpoint's metadata alike.
IMAGE_SIZE_RANGE = (8, 4096)
_SIZE_BOUNDS = {"minimum": IMAGE_SIZE_RANGE[0], "maximum": IMAGE_SIZE_RANGE[1]}
#: Model names become file and archive-key names, so they stay plain and short (``fullmatch``:
#: ``$`` would let a trailing newline through).
MAX_NAME = 64
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Columns the samples table (and the cells and statistics tables beside it) already has: a
#: group attribute of one of these names would silently replace it. Per-region columns carry a
#: ':' (``mass:hair``), which group names never do. A test keeps this in step with the tables.
RESERVED_COLUMNS = frozenset(
    {
        "model", "id", "label", "pred", "correct", "prob", "target", "map_ok",
        "cell", "n", "n_valid", "small", "metric", "value", "ci_low", "ci_high",
        "attribute", "n_cells", "worst_cell", "worst_value", "best_cell", "best_value", "gap",
        "p_value", "p_adjusted", "model_a", "model_b", "mean_diff", "share_expected_sign",
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
    # Imported on use: reading a config should not pay for importing the explain engine.
    from bias_audit.core.maps import METHODS

    return METHODS


class _Reader:
    """Typed access to one TOML table; every message starts with ``<file>: [<section>] <key>``."""

    def __init__(self, table: Mapping[str, Any], *, source: str, section: str) -> None:
        self.table = table
        self.source = source
        self.section = section

    def where(self, key: str) -> str:
        sec = f"[{self.section}] " if self.section else ""
        return f"{self.source}: {sec}{key}"

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.where(key)}: {what}")

    def refuse_unknown(self, allowed: tuple[str, ...]) -> None:
        for key in self.table:
            if key not in allowed:
                sec = f"[{self.section}]" if self.section else "top level"
                raise ConfigError(
                    f"{self.source}: {sec}: unknown key {key!r}; "
                    f"expected one of {', '.join(allowed)}"
                )

    def has(self, key: str) -> bool:
        return key in self.table

    def str_(self, key: str, default: Any = ..., *, choices: tuple[str, ...] | None = None) -> Any:
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "missing (required)")
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise self.fail(key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    def int_(self, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise self.fail(key, f"expected an integer {bound}, got {value}")
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def strs(self, key: str, default: Any = ..., *, allow_empty: bool = True) -> Any:
        if key not in self.table:
            if default is ...:
                raise self.fail(key, "missing (required)")
            return default
        value = self.table[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"expected a list of strings, got {value!r}")
        if not allow_empty and not value:
            raise self.fail(key, "expected at least one entry, got an empty list")
        dupes = sorted({v for v in value if value.count(v) > 1})
        if dupes:
            raise self.fail(key, f"duplicate entries {dupes}")
        return tuple(value)

    def file(self, key: str, base_dir: Path, default: Any = ..., *, must_exist: bool = True) -> Any:
        raw = self.str_(key, default)
        if raw is None:
            return None
        if not raw.isprintable():  # a NUL byte would reach the OS as a ValueError traceback
            raise self.fail(key, f"path {raw!r} contains control characters")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if must_exist and not path.exists():
            raise self.fail(key, f"file not found: {path}")
        return path


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """``[data]``: the manifest and how to read it."""

    manifest: Path
    label: str = "label"
    groups: tuple[str, ...] = ()
    image_size: int = 224
    resize: str = "crop"
    classes: tuple[str, ...] | None = None
    on_error: str = "raise"
    batch_size: int = 32
    num_workers: int = 0


@dataclass(frozen=True, kw_only=True)
class RegionsConfig:
    """``[regions]``: which annotated regions play which role. Background is everything else."""

    causal: tuple[str, ...] = ()
    confounder: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ExplainConfig:
    """``[explain]``: the first method drives the metrics; the others are computed too."""

    methods: tuple[str, ...] = ("gradcam",)
    target: str = "predicted"
    target_layer: str | None = None


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """One ``[[models]]`` entry."""

    name: str
    checkpoint: Path
    arch: str | None = None
    classes: tuple[str, ...] | None = None
    target_layer: str | None = None
    image_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class StatsConfig:
    """``[stats]``: group statistics; ``seed`` is the audit's only source of randomness."""

    min_group_size: int = 20
    bootstrap: int = 1000
    permutations: int = 1000
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class InterventionsConfig:
    """``[interventions]``: occlude each role (and each listed region) and re-predict.

    Each role and each region of ``regions`` costs one forward pass; ``baseline`` adds one more
    per role or region for a random patch of the same area (the ``flip_random:``/``drop_random:``
    columns, NaN when it is off). ``regions`` names annotated regions occluded on their own
    (``flip:<region>``, ``drop:<region>``), e.g. ``["hair"]``; each must be a manifest region.
    """

    enabled: bool = True
    fill: str = "blur"
    baseline: bool = True
    regions: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """``[report]``: whether to render ``report.html`` and how many gallery samples per cell."""

    enabled: bool = True
    gallery_per_cell: int = 4


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    """``[output]``: the run folder; ``--out`` wins over it."""

    dir: Path | None = None


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
    output: OutputConfig = field(default_factory=OutputConfig)
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
        top = _Reader(d, source=source, section="")
        top.refuse_unknown(
            (
                "title",
                "data",
                "regions",
                "explain",
                "models",
                "stats",
                "interventions",
                "report",
                "output",
            )
        )
        title = top.str_("title", "Bias audit")

        def section(name: str, required: bool = False) -> _Reader:
            if name not in d:
                if required:
                    raise ConfigError(f"{source}: [{name}]: missing (required section)")
                return _Reader({}, source=source, section=name)
            value = d[name]
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: [{name}]: expected a table, got {value!r}")
            return _Reader(value, source=source, section=name)

        r = section("data", required=True)
        r.refuse_unknown(
            (
                "manifest",
                "label",
                "groups",
                "image_size",
                "resize",
                "classes",
                "on_error",
                "batch_size",
                "num_workers",
            )
        )
        data = DataConfig(
            manifest=r.file("manifest", base),
            label=r.str_("label", "label"),
            groups=r.strs("groups", ()),
            image_size=r.int_(
                "image_size", 224, minimum=IMAGE_SIZE_RANGE[0], maximum=IMAGE_SIZE_RANGE[1]
            ),
            resize=r.str_("resize", "crop", choices=RESIZE),
            classes=r.strs("classes", None, allow_empty=False),
            on_error=r.str_("on_error", "raise", choices=ON_ERROR),
            batch_size=r.int_("batch_size", 32, minimum=1, maximum=65536),
            num_workers=r.int_("num_workers", 0, minimum=0, maximum=256),
        )
        if data.label in data.groups:
            raise r.fail("groups", f"the label column {data.label!r} cannot also be a group")
        for g in data.groups:
            why = check_group_name(g)
            if why:
                raise r.fail("groups", why)

        r = section("regions")
        r.refuse_unknown(("causal", "confounder"))
        regions = RegionsConfig(causal=r.strs("causal", ()), confounder=r.strs("confounder", ()))
        both = sorted(set(regions.causal) & set(regions.confounder))
        if both:
            raise r.fail("confounder", f"region(s) {both} are also listed as causal")

        r = section("explain")
        r.refuse_unknown(("methods", "target", "target_layer"))
        methods = r.strs("methods", ("gradcam",), allow_empty=False)
        valid = _methods()
        for m in methods:
            if m not in valid:
                raise r.fail("methods", f"unknown method {m!r}; expected one of {', '.join(valid)}")
        if methods[0] in GUIDED:
            raise r.fail(
                "methods",
                f"the first method drives the metrics and must be a CAM-family map; {methods[0]!r} "
                "gives input gradients (put it after a CAM method)",
            )
        explain = ExplainConfig(
            methods=methods,
            target=r.str_("target", "predicted", choices=TARGETS),
            target_layer=r.str_("target_layer", None),
        )

        raw_models = d.get("models")
        if raw_models is None:
            raise ConfigError(f"{source}: [[models]]: missing (at least one model is required)")
        if not isinstance(raw_models, list) or not raw_models:
            raise ConfigError(
                f"{source}: [[models]]: expected a list of tables, got {raw_models!r}"
            )
        models = []
        for i, entry in enumerate(raw_models):
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{source}: [[models]] #{i + 1}: expected a table, got {entry!r}")
            name = entry.get("name")
            # A bad name would put a newline or 300 characters into every message's prefix.
            plain = isinstance(name, str) and _NAME_RE.fullmatch(name) and len(name) <= MAX_NAME
            r = _Reader(entry, source=source, section=f"models.{name if plain else i + 1}")
            r.refuse_unknown(
                ("name", "arch", "checkpoint", "classes", "target_layer", "image_size")
            )
            name = r.str_("name")
            if not _NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
                raise r.fail(
                    "name",
                    f"expected at most {MAX_NAME} letters, digits, '_', '-' or '.' (starting "
                    f"with a letter or digit), got {name[:80]!r}",
                )
            if any(m.name == name for m in models):
                raise r.fail("name", f"duplicate model name {name!r}")
            models.append(
                ModelConfig(
                    name=name,
                    checkpoint=r.file("checkpoint", base),
                    arch=r.str_("arch", None),
                    classes=r.strs("classes", None, allow_empty=False),
                    target_layer=r.str_("target_layer", None),
                    image_size=(
                        r.int_(
                            "image_size",
                            0,
                            minimum=IMAGE_SIZE_RANGE[0],
                            maximum=IMAGE_SIZE_RANGE[1],
                        )
                        if r.has("image_size")
                        else None
                    ),
                )
            )

        r = section("stats")
        r.refuse_unknown(("min_group_size", "bootstrap", "permutations", "seed"))
        stats = StatsConfig(
            min_group_size=r.int_("min_group_size", 20, minimum=1),
            bootstrap=r.int_("bootstrap", 1000, minimum=0, maximum=1_000_000),
            permutations=r.int_("permutations", 1000, minimum=0, maximum=1_000_000),
            seed=r.int_("seed", 0, minimum=0, maximum=2**63 - 1),
        )

        r = section("interventions")
        r.refuse_unknown(("enabled", "fill", "baseline", "regions"))
        occluded = r.strs("regions", ())
        # The manifest's regions are only known when the data is opened (the run checks them
        # then); a role's name here would give a column that reads like the role's.
        clash = [name for name in occluded if name in ROLES]
        if clash:
            raise r.fail(
                "regions",
                f"{clash} are role names, not regions; the roles are always occluded",
            )
        interventions = InterventionsConfig(
            enabled=r.bool_("enabled", True),
            fill=r.str_("fill", "blur", choices=FILLS),
            baseline=r.bool_("baseline", True),
            regions=occluded,
        )

        r = section("report")
        r.refuse_unknown(("enabled", "gallery_per_cell"))
        report = ReportConfig(
            enabled=r.bool_("enabled", True),
            gallery_per_cell=r.int_("gallery_per_cell", 4, minimum=0, maximum=1000),
        )

        r = section("output")
        r.refuse_unknown(("dir",))
        output = OutputConfig(dir=r.file("dir", base, None, must_exist=False))

        return cls(
            title=title,
            data=data,
            regions=regions,
            explain=explain,
            models=tuple(models),
            stats=stats,
            interventions=interventions,
            report=report,
            output=output,
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

        Title, stats other than the seed, the report and the output folder do not change the
        per-sample rows, so editing them does not block ``--resume``.
        """
        d = asdict(self)
        keep = {k: d[k] for k in ("data", "regions", "explain", "models", "interventions")}
        keep["data"].pop("num_workers")
        keep["seed"] = self.stats.seed
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
    for name in ("data", "regions", "explain", "stats", "interventions", "report", "output"):
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
