"""Config validation: every bad key is named, unknown keys refused, paths resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from bias_audit.cli import main
from bias_audit.core.config import AuditConfig, DataConfig, StatsConfig
from bias_audit.errors import ConfigError


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "manifest.csv").write_text("id,path,label\n")
    (tmp_path / "m.pt").write_bytes(b"x")
    cfg = tmp_path / "config.toml"
    cfg.write_text(body)
    return cfg


GOOD = """
title = "t"
[data]
manifest = "data/manifest.csv"
groups = ["gender"]
image_size = 32
[regions]
causal = ["coat"]
confounder = ["face", "hair"]
[explain]
methods = ["gradcam"]
[[models]]
name = "a"
checkpoint = "m.pt"
[[models]]
name = "b"
checkpoint = "m.pt"
classes = ["x", "y"]
"""


def test_good_config_resolves_paths_and_keeps_text(tmp_path):
    cfg = AuditConfig.from_toml(_write(tmp_path, GOOD))
    assert cfg.data.manifest == (tmp_path / "data" / "manifest.csv").resolve()
    assert cfg.models[1].classes == ("x", "y")
    assert cfg.regions.confounder == ("face", "hair")
    assert cfg.source_text == GOOD
    assert cfg.to_toml() == GOOD
    assert cfg.run_dir() == tmp_path.resolve() / "runs" / "config"
    assert cfg.run_dir(tmp_path / "o") == tmp_path / "o"
    # defaults
    assert cfg.stats.min_group_size == 20 and cfg.interventions.enabled


def test_samples_hash_ignores_title_and_report(tmp_path):
    a = AuditConfig.from_toml(_write(tmp_path, GOOD))
    b = AuditConfig.from_toml(
        _write(tmp_path, GOOD.replace('title = "t"', 'title = "u"') + "[report]\nenabled = false\n")
    )
    c = AuditConfig.from_toml(_write(tmp_path, GOOD.replace("image_size = 32", "image_size = 64")))
    assert a.samples_hash() == b.samples_hash() != c.samples_hash()


def test_from_dict_roundtrips_through_rendered_toml(tmp_path):
    cfg = AuditConfig.from_toml(_write(tmp_path, GOOD))
    d = AuditConfig.from_dict(
        {
            "data": {"manifest": "data/manifest.csv"},
            "models": [{"name": "a", "checkpoint": "m.pt"}],
        },
        base_dir=tmp_path,
    )
    assert d.data.manifest == cfg.data.manifest
    text = d.to_toml()
    (tmp_path / "again.toml").write_text(text)
    again = AuditConfig.from_toml(tmp_path / "again.toml")
    assert again.data == d.data and again.models == d.models and again.stats == d.stats


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("[explain]", "[explain]\nbogus = 1"), r"\[explain\]: unknown key 'bogus'"),
        (('title = "t"', 'title = "t"\ncolour = 1'), r"top level: unknown key 'colour'"),
        (
            ('methods = ["gradcam"]', 'methods = ["gradcm"]'),
            r"\[explain\] methods: unknown method 'gradcm'; expected one of .*gradcam",
        ),
        (("image_size = 32", 'image_size = "big"'), r"\[data\] image_size: expected an integer"),
        (
            ("image_size = 32", "image_size = 2"),
            r"\[data\] image_size: expected an integer between",
        ),
        (
            ('manifest = "data/manifest.csv"', 'manifest = "nope.csv"'),
            r"\[data\] manifest: file not found: .*nope.csv",
        ),
        (
            ('name = "b"\ncheckpoint = "m.pt"', 'name = "b"\ncheckpoint = "gone.pt"'),
            r"\[models.b\] checkpoint: file not found: .*gone.pt",
        ),
        (('name = "b"', 'name = "a"'), r"\[models.a\] name: duplicate model name 'a'"),
        (
            ('checkpoint = "m.pt"', 'checkpoint = "m\\u0000.pt"'),
            r"\[models.a\] checkpoint: path '.*m\\x00.pt' contains control characters",
        ),
        (('name = "b"', 'name = "a/b"'), r"\[models.2\] name: expected 1 to 64 .*'a/b'"),
        # TOML "\n" is a real newline: '$' in a plain match would have let it through.
        (('name = "b"', 'name = "b\\n"'), r"\[models.2\] name: expected 1 to 64.*'b\\n'"),
        (('name = "b"', 'name = "' + "m" * 300 + '"'), r"name: expected 1 to 64 letters"),
        (('name = "b"', 'name = "b\\u0007x"'), r"name: expected 1 to 64 letters"),
        (
            ('groups = ["gender"]', 'groups = ["model"]'),
            r"\[data\] groups: 'model' is a column of the samples or statistics tables",
        ),
        (('groups = ["gender"]', 'groups = ["pred"]'), r"\[data\] groups: 'pred' is a column"),
        (("[explain]", '[explain]\ntarget = "true"'), r"\[explain\] target: expected one of"),
        (('causal = ["coat"]', 'causal = ["hair"]'), r"\[regions\] confounder: .*'hair'.*causal"),
        (('groups = ["gender"]', 'groups = ["label"]'), r"\[data\] groups: the label column"),
        (('groups = ["gender"]', "groups = [1]"), r"\[data\] groups: expected a list of strings"),
        (("[regions]", "[stats]\nbootstrap = -1\n[regions]"), r"\[stats\] bootstrap: expected an"),
        (
            ("[regions]", "[interventions]\nenabled = 1\n[regions]"),
            r"\[interventions\] enabled: expected true or false",
        ),
        (
            ("[regions]", '[interventions]\nfill = "pink"\n[regions]'),
            r"\[interventions\] fill: expected one of",
        ),
        (
            ("[regions]", '[interventions]\nregions = ["hair", "confounder"]\n[regions]'),
            r"\[interventions\] regions: \['confounder'\] are role names",
        ),
        (
            ("[regions]", '[interventions]\nregions = ["hair", "hair"]\n[regions]'),
            r"\[interventions\] regions: duplicate entries \['hair'\]",
        ),
        (("[regions]", "[data.extra]\n[regions]"), r"\[data\]: unknown key 'extra'"),
        (
            ('name = "b"\ncheckpoint = "m.pt"\n', 'name = "b"\ncheckpoint = "m.pt"\nlayer = "x"\n'),
            r"\[models.b\]: unknown key 'layer'",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path, edit, match):
    body = GOOD.replace(*edit)
    assert body != GOOD
    with pytest.raises(ConfigError, match=match):
        AuditConfig.from_toml(_write(tmp_path, body))


def test_missing_sections_and_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nothere.toml: config file not found"):
        AuditConfig.from_toml(tmp_path / "nothere.toml")
    with pytest.raises(ConfigError, match=r"\[\[models\]\]: missing"):
        AuditConfig.from_toml(_write(tmp_path, GOOD.split("[[models]]")[0]))
    with pytest.raises(ConfigError, match=r"\[data\]: missing"):
        AuditConfig.from_dict({"models": []})
    bad = _write(tmp_path, "[data\n")
    with pytest.raises(ConfigError, match=r"config.toml: not valid TOML"):
        AuditConfig.from_toml(bad)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("[explain]", "[explain]\nbogus = 1"), "unknown key 'bogus'"),
        (('methods = ["gradcam"]', 'methods = ["gradcm"]'), "unknown method 'gradcm'"),
        (("image_size = 32", "image_size = 3.5"), "image_size: expected an integer"),
        (('manifest = "data/manifest.csv"', 'manifest = "nope.csv"'), "file not found"),
    ],
)
def test_cli_reports_config_errors_on_one_line(tmp_path, capsys, edit, match):
    cfg = _write(tmp_path, GOOD.replace(*edit))
    code = main(["run", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and match in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_usage_errors_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "frobnicate" in err and err.count("\n") == 1
    assert main(["run"]) == 2
    assert "config" in capsys.readouterr().err
    assert main(["--help"]) == 0


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (("[regions]", "[stats]\nbootstrap = 0\n[regions]"), r"\[stats\] bootstrap: .*between 20"),
        (("[regions]", "[stats]\npermutations = 5\n[regions]"), r"\[stats\] permutations:"),
        (('name = "b"', 'name = "b\\n"'), r"\[models.2\] name: expected 1 to 64"),
        (('name = "b"', f'name = "{"m" * 65}"'), r"name: expected 1 to 64"),
        (('name = "b"\n', 'name = "b"\nimage_size = 4\n'), r"\[models.b\] image_size: .*8 and"),
        (("[regions]", "[stats]\nmin_group_sise = 3\n[regions]"), r"did you mean 'min_group_size'"),
    ],
)
def test_ranges_are_checked_when_the_config_is_loaded(tmp_path, edit, match):
    body = GOOD.replace(*edit)
    assert body != GOOD
    with pytest.raises(ConfigError, match=match):
        AuditConfig.from_toml(_write(tmp_path, body))


def test_sections_validate_on_construction_too():
    # The same rule holds for a Python caller as for the TOML file: declared once, on the field.
    with pytest.raises(ConfigError, match=r"^\[stats\] bootstrap: expected an integer between"):
        StatsConfig(bootstrap=0)
    with pytest.raises(ConfigError, match=r"^\[data\] image_size: expected an integer between 8"):
        DataConfig(manifest=Path(__file__), image_size=7)
    assert StatsConfig(bootstrap=20).bootstrap == 20
    assert DataConfig(manifest=Path(__file__), groups=["a"]).groups == ("a",)


def test_bootstrap_zero_is_refused_before_any_model_is_loaded(tmp_path, capsys):
    # The checkpoint is not even a torch file: the config error must come first.
    path = _write(tmp_path, GOOD.replace("[regions]", "[stats]\nbootstrap = 0\n[regions]"))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[stats] bootstrap" in err
    assert "n_boot" not in err
    assert not (tmp_path / "run").exists()


def test_gate_defaults_ranges_and_unknown_keys(tmp_path):
    from bias_audit.core.config import GateConfig
    from bias_audit.core.verdicts import GATE_DEFAULTS

    cfg = AuditConfig.from_toml(_write(tmp_path, GOOD))
    # the documented defaults, declared once, and the verdicts' own copy agrees with them
    assert cfg.gate.to_dict() == GATE_DEFAULTS == GateConfig().to_dict()
    assert cfg.data.image_size == 32 and cfg.explain.max_seconds == 3600
    cfg = AuditConfig.from_toml(_write(tmp_path, GOOD + "[gate]\nmax_confounder_lift = 3\n"))
    assert cfg.gate.max_confounder_lift == 3.0 and cfg.gate.max_confounder_mass == 0.30
    with pytest.raises(ConfigError, match=r"\[gate\] max_confounder_mass: expected a number "
                       r"between 0 and 1, got 1.5"):  # fmt: skip
        AuditConfig.from_toml(_write(tmp_path, GOOD + "[gate]\nmax_confounder_mass = 1.5\n"))
    with pytest.raises(ConfigError, match=r"\[gate\]: unknown key 'max_lift'; expected one of "
                       r"max_confounder_mass, max_confounder_lift"):  # fmt: skip
        AuditConfig.from_toml(_write(tmp_path, GOOD + "[gate]\nmax_lift = 3\n"))


def test_image_size_is_unset_by_default_and_the_budget_does_not_block_a_resume(tmp_path):
    plain = GOOD.replace("image_size = 32\n", "")
    assert AuditConfig.from_toml(_write(tmp_path, plain)).data.image_size is None
    a = AuditConfig.from_toml(_write(tmp_path, GOOD))
    b = AuditConfig.from_toml(
        _write(
            tmp_path,
            GOOD.replace('methods = ["gradcam"]', 'methods = ["gradcam"]\nmax_seconds = 5'),
        )  # fmt: skip
    )
    assert b.explain.max_seconds == 5 and a.samples_hash() == b.samples_hash()
