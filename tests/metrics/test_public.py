import inspect

import bias_audit.core.metrics as metrics


def test_metric_functions_share_argument_order():
    for fn in (
        metrics.attention_mass,
        metrics.lift,
        metrics.rank_accuracy,
        metrics.pointing_game,
        metrics.localization_iou,
    ):
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].name == "maps", fn.__name__
        assert params[1].name in ("masks", "boxes"), fn.__name__
        assert all(p.kind is p.KEYWORD_ONLY for p in params[2:]), fn.__name__
