"""vit_b_16 through the CLI: ``train --arch vit_b_16`` with the attention penalty, then ``run``
on the trainer's checkpoint and on a plain state_dict with ``arch = "vit_b_16"``. Tiny on
purpose (8 images of 224 px, one epoch): vit_b_16 is heavy on a CPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from bias_audit.io.checkpoints import read_metadata
from tests.audit.test_run import REPO, _env
from tests.audit.watermark import CLASSES, write_sets

LAYER = "encoder.layers.encoder_layer_11.ln_1"


def _cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "bias_audit", *args, "-q"], capture_output=True,
                          text=True, env=_env(), cwd=REPO, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_vit_b_16_trains_with_the_penalty_and_is_audited_from_a_state_dict(tmp_path):
    sets = write_sets(tmp_path, n_train=8, n_test=8, size=224)
    _cli("train", "--train-manifest", str(sets["biased"]), "--arch", "vit_b_16", "--image-size",
         "224", "--epochs", "1", "--batch-size", "4", "--set", 'strategy="attention_penalty"',
         "--set", 'confounders=["watermark"]', "--out", str(tmp_path / "model"))  # fmt: skip
    ckpt = tmp_path / "model" / "model.pt"
    meta = read_metadata(ckpt)
    # The penalty ran on the layer the audit explains, and its loss is a number.
    assert (meta.arch, meta.image_size, meta.strategy) == ("vit_b_16", 224, "attention_penalty")
    assert meta.target_layer == LAYER
    assert len(meta.history) == 1 and math.isfinite(meta.history[0]["train_loss"])
    raw = torch.load(ckpt, weights_only=True)  # data only: no pickled code
    torch.save(raw["state_dict"], tmp_path / "plain.pt")

    (tmp_path / "audit.toml").write_text(f"""title = "vit_b_16"
[data]
manifest = "test.csv"
groups = ["watermark"]
batch_size = 4
[regions]
causal = ["object"]
confounder = ["watermark"]
[explain]
methods = ["gradcam", "attention_gradient"]
[stats]
min_group_size = 2
bootstrap = 20
permutations = 20
[interventions]
enabled = false
[trust]
enabled = false
[discovery]
enabled = false
[report]
enabled = false
[[models]]
name = "trained"
checkpoint = "model/model.pt"
[[models]]
name = "plain"
checkpoint = "plain.pt"
arch = "vit_b_16"
classes = {json.dumps(list(CLASSES))}
image_size = 224
""")
    _cli("run", str(tmp_path / "audit.toml"), "--out", str(tmp_path / "run"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    models = {m["name"]: m for m in summary["models"]}
    for m in models.values():
        assert (m["arch"], m["target_layer"], m["layer_shape"]) == ("vit_b_16", LAYER, [14, 14])
        assert m["nan_maps"] == 0
    assert models["trained"]["target_layer_from"] == "checkpoint"
    samples = pd.read_parquet(tmp_path / "run" / "samples.parquet").set_index(["model", "id"])
    cols = ["prob", "mass:confounder", "mass:confounder@attention_gradient"]
    trained, plain = samples.loc["trained", cols], samples.loc["plain", cols]
    # The same weights give the same audit, whichever way the checkpoint was written.
    pd.testing.assert_frame_equal(trained, plain)
    marked = trained["mass:confounder@attention_gradient"].dropna()
    assert len(marked) == 4 and ((marked > 0) & (marked < 1)).all()
