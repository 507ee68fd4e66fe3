"""The threshold table: defaults are the numbers gradmon always judged with, overrides change verdicts in the
expected direction, bad names and values are one-line errors, the spec carries them, the docs are current.

Detectors are judged on hand-built windows (no training), so these tests do not depend on the trainer.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import core
import gradmon
from core.spec import SpecError, apply_patch, load_spec
from gradmon.advice import Context as AdviceContext
from gradmon.advice import advise
from gradmon.detectors import DETECTORS, JudgeContext, Observation, default_detectors
from gradmon.detectors.activations import DeadUnits, SaturatedActivations
from gradmon.detectors.gradients import ExplodingGradients, VanishingGradients
from gradmon.detectors.loss import LossDivergence, LossPlateau
from gradmon.detectors.sharpness import SharpnessAboveStability
from gradmon.detectors.updates import UpdateRatio
from gradmon.findings import Finding
from gradmon.history import Window
from gradmon.layout import units_from_run
from gradmon.thresholds import (AdviceThresholds, DeadUnitThresholds, DivergenceThresholds, ExplodingThresholds,
                                PlateauThresholds, SaturationThresholds, SharpnessThresholds, Thresholds,
                                UpdateRatioThresholds, VanishingThresholds, REGENERATE, markdown_table)

ROOT = Path(__file__).resolve().parents[1]

#: the numbers as they were written in the detector bodies, the monitor and the advice before the table (and the
#: ones issue #13 added: vanishing judged as a fall across depth, blow-ups that stay, unscaled inputs)
OLD_VALUES = {
    "vanishing_gradients": dict(min_records=5, min_depth=3, min_drop=2.0, min_steadiness=0.6, error_drop=4.0,
                                onset_drop=1.0, forward_drop=1.0, saturation_cause=0.2, quoted_saturation=0.01,
                                small_gain=0.85),
    "exploding_gradients": dict(min_records=3, min_series=20, min_fresh=5, min_depth=3, blowup_factor=100.0,
                                open_at_once=10.0, spread_quantile=0.9, spike_factor=10.0, min_spikes=2,
                                early_factor=3.0, growth_decades=2.0, growth_block_fraction=0.2, growth_min_block=3,
                                depth_drop=2.0, depth_slope=0.25, catastrophe_factor=1e4, diverging_loss=2.0,
                                nonfinite_records=3, above_start_factor=1.2, above_start_margin=1e-3),
    "saturated_activations": dict(min_records=20, warn_fraction=0.6, error_fraction=0.95),
    "dead_units": dict(min_records=10, warn_fraction=0.6, error_fraction=0.9),
    "sharpness_above_stability": dict(min_records=0, margin=1.0, safety=0.8, sane_loss=2.0, open_after=1),
    "loss_divergence": dict(min_records=10, min_losses=5, rise_factor=1.05, min_learned=0.3, lost_fraction=0.5,
                            error_factor=10.0, above_start_factor=1.2, above_start_margin=1e-3, stuck_factor=1.5,
                            stuck_fraction=0.8, blowup_factor=10.0, recovered_fraction=0.5, min_records_since=10),
    "loss_oscillation": dict(min_records=30, window_records=60, max_autocorr=-0.8, min_amplitude=0.05,
                             min_level=0.3, progress_block_fraction=0.25, progress_min_block=3, min_progress=0.05),
    "loss_plateau": dict(min_records=40, window_records=200, block_fraction=0.25, min_block=5, max_progress=0.01,
                         max_rise=0.5, min_level=0.8),
    "update_ratio": dict(min_records=20, too_large=0.2, too_small=1e-6, high_loss=0.5, loss_records=5,
                         improving_window=50, improving_min_records=10, improving_block=5, improving_factor=0.5),
    "unscaled_inputs": dict(min_records=1, min_examples=32, max_spread=3.0, max_offset=2.0, error_decades=5.0),
    "judging": dict(initial_examples=32, smoothing_examples=256, min_smoothing_records=5, max_smoothing_fraction=0.25,
                    initial_grad_norms=5, tiny_init_ratio=0.01, median_records=50, open_after=3, close_after=5,
                    short_run=10, max_judge_every=50, judgments_per_run=20, min_adaptive_judge_every=10,
                    adaptive_judge_fraction=0.2, dead_unit_examples=64, saturation_margin=0.01, early_records=10,
                    initial_jump=10.0, initial_jump_examples=8, peak_records=3, input_examples=1024),
    "advice": dict(deep_layers=4, l2=1e-4, adam_lr=1e-3, lower_lr_factor=10.0, raise_lr_factor=10.0,
                   default_clip_norm=1.0, shallower_fraction=0.5, shallower_min_layers=2, default_width=64, digits=2),
}


# -- the table ------------------------------------------------------------------------------------------------
def test_defaults_are_the_numbers_gradmon_judged_with():
    tables = {name: dataclasses.asdict(table) for name, table in Thresholds().tables().items()}
    assert tables == OLD_VALUES
    for name, table in Thresholds().tables().items():  # counts are ints, everything else floats
        for key, value in dataclasses.asdict(table).items():
            assert type(value) is type(OLD_VALUES[name][key]), (name, key)


def test_one_table_per_detector_in_registry_order_then_judging_and_advice():
    names = list(Thresholds().tables())
    assert names == [*DETECTORS, "judging", "advice"]
    assert all(type(table).key == name for name, table in Thresholds().tables().items())
    t = Thresholds.from_overrides({"vanishing_gradients": {"min_records": 7}, "update_ratio": {"too_large": 0.5}})
    detectors = {d.codes[0]: d for d in default_detectors(thresholds=t)}
    assert detectors["vanishing_gradients"].t is t.vanishing_gradients
    assert detectors["vanishing_gradients"].min_records == 7 and detectors["update_ratio"].t.too_large == 0.5
    assert [d.codes[0] for d in default_detectors(["update_ratio", "dead_units"], t)] == ["dead_units",
                                                                                        "update_ratio"]
    with pytest.raises(ValueError, match="unknown detector 'nope'; use one of vanishing_gradients"):
        default_detectors(["nope"], t)


def test_every_field_is_documented_with_a_meaning():
    rows = list(Thresholds().describe())
    assert len(rows) == sum(len(v) for v in OLD_VALUES.values())
    for table, key, default, doc in rows:
        assert default == OLD_VALUES[table][key] and len(doc) > 15, (table, key)
    changed = {(t, k): v for t, k, v, _ in Thresholds.from_overrides({"advice": {"digits": 3}}).describe()}
    assert changed["advice", "digits"] == 3 and changed["advice", "l2"] == 1e-4


# -- overrides change verdicts, in the expected direction -------------------------------------------------------
def _run(hidden: tuple[int, ...] = (8, 8, 8), activation: str = "tanh", optimizer: str = "sgd") -> core.RunInfo:
    """What a loop tells its callbacks before the first step, for an MLP of ``hidden`` widths."""
    layers, width = [], 2
    for h in hidden:
        layers += [core.Dense(width, h), core.get_activation(activation)]
        width = h
    net = core.Sequential([*layers, core.Dense(width, 1)], seed=0)
    return core.RunInfo(layers=net.layer_infos(), loss="mse", optimizer=optimizer, hyperparams={"lr": 0.1},
                        batch_size=32, batch_mode="mini-batch", n_train=256, epochs=1, steps_per_epoch=8)


def _context(layers: dict[str, list[float]], loss: float | list[float] = 1.0, grad_norm: float | list[float] = 1.0,
             n: int = 60, activation: str = "tanh", hidden: tuple[int, ...] = (8, 8, 8), optimizer: str = "sgd",
             curvature: list | tuple = ()) -> JudgeContext:
    """A judge context over ``n`` hand-written records: the per-layer ``layers`` values at every record, the
    scalars ``loss`` and global ``grad_norm`` (one value, or one per record); unit layer sizes, so per-layer
    gradient norms are RMS values; the first loss and norm are the initial ones."""
    run = _run(hidden, activation, optimizer)
    units = units_from_run(run)
    losses = np.broadcast_to(np.asarray(loss, dtype=float), (n,))
    norms = np.broadcast_to(np.asarray(grad_norm, dtype=float), (n,))
    window = Window([u.name for u in units], size=max(n, 2))
    for i in range(n):
        window.append(i, {"loss": losses[i], "grad_norm": norms[i], "lr": 0.1},
                      {q: np.asarray(v, dtype=float) for q, v in layers.items()})
    return JudgeContext(step=n, window=window, units=units, run=run, initial_loss=float(losses[0]),
                        best_loss=float(losses.min()), initial_grad_norm=float(norms[0]), sizes=np.ones(len(units)),
                        curvature=curvature)


def _verdict(detector, ctx: JudgeContext) -> list[tuple[str | None, str]]:
    return [(o.layer, o.severity) for o in detector.judge(ctx)]


def _onset(detector, ctx: JudgeContext) -> list[tuple[str | None, str]]:
    """Vanishing findings belong to the input-most layer; the onset (where the span ends) is in the evidence."""
    return [(o.evidence["onset_layer"], o.severity) for o in detector.judge(ctx)]


def test_vanishing_min_drop_above_the_drop_hides_the_finding_and_below_shows_it():
    three_decades = _context({"grad_norm": [1e-3, 1e-2, 1e-1, 1.0]})
    first, second, third, _ = three_decades.unit_names()
    assert _verdict(VanishingGradients(), three_decades) == [(first, "warning")]
    # onset: the output-most layer more than a decade below the top
    assert _onset(VanishingGradients(), three_decades) == [(second, "warning")]
    assert _onset(VanishingGradients(VanishingThresholds(min_drop=3.5)), three_decades) == []
    assert _onset(VanishingGradients(VanishingThresholds(error_drop=2.5)), three_decades) == [(second, "error")]
    assert _onset(VanishingGradients(VanishingThresholds(onset_drop=2.5)), three_decades) == [(first, "warning")]
    assert _onset(VanishingGradients(VanishingThresholds(onset_drop=0.5)), three_decades) == [(third, "warning")]
    one_and_a_half = _context({"grad_norm": [10 ** -1.5, 10 ** -1, 10 ** -0.5, 1.0]})
    assert _verdict(VanishingGradients(), one_and_a_half) == []
    assert _onset(VanishingGradients(VanishingThresholds(min_drop=1.0)), one_and_a_half) == [(first, "warning")]


def test_vanishing_cause_follows_the_saturation_threshold():
    ctx = _context({"grad_norm": [1e-3, 1e-2, 1e-1, 1.0], "saturation": [0.1, 0.1, 0.1, np.nan]})
    # 10% < 20%: not the activation; the (default Xavier) initialization suits tanh, so depth is what is left
    assert VanishingGradients().judge(ctx)[0].evidence["cause"] == "depth"
    lower = VanishingGradients(VanishingThresholds(saturation_cause=0.05)).judge(ctx)[0]
    assert lower.evidence["cause"] == "activation" and "are 10% saturated" in lower.message
    quiet = VanishingGradients(VanishingThresholds(saturation_cause=0.05, quoted_saturation=0.5)).judge(ctx)[0]
    assert "pass at most a quarter of the gradient" in quiet.message


def test_saturation_and_dead_unit_fractions():
    saturated = _context({"saturation": [0.7, 0.7, 0.7, np.nan]})
    hidden = saturated.unit_names()[:3]
    assert _verdict(SaturatedActivations(), saturated) == [(name, "warning") for name in hidden]
    assert _verdict(SaturatedActivations(SaturationThresholds(warn_fraction=0.8)), saturated) == []
    assert {s for _, s in _verdict(SaturatedActivations(SaturationThresholds(error_fraction=0.65)), saturated)} == \
        {"error"}
    dead = _context({"dead_fraction": [0.5, np.nan, np.nan, np.nan], "bias_mean": [0.0] * 4}, activation="relu")
    assert _verdict(DeadUnits(), dead) == []
    assert _verdict(DeadUnits(DeadUnitThresholds(warn_fraction=0.4)), dead) == [(hidden[0], "warning")]


def test_update_ratio_too_small_threshold():
    frozen = _context({"update_ratio": [1e-5, 1e-3, 1e-3, 1e-3]})  # the loss stays at its start: still high
    assert _verdict(UpdateRatio(), frozen) == []
    found = UpdateRatio(UpdateRatioThresholds(too_small=1e-4)).judge(frozen)
    assert [(o.layer, o.evidence["direction"]) for o in found] == [(frozen.unit_names()[0], "too_small")]
    assert UpdateRatio(UpdateRatioThresholds(too_small=1e-4, high_loss=1.5)).judge(frozen) == []


def test_plateau_progress_and_level():
    slow = _context({}, loss=list(np.linspace(1.0, 0.98, 60)))  # 2% over the window
    assert _verdict(LossPlateau(), slow) == []
    assert _verdict(LossPlateau(PlateauThresholds(max_progress=0.05)), slow) == [(None, "warning")]
    flat = _context({}, loss=1.0)
    assert _verdict(LossPlateau(), flat) == [(None, "warning")]
    assert _verdict(LossPlateau(PlateauThresholds(min_level=1.5)), flat) == []
    assert _verdict(LossPlateau(PlateauThresholds(min_records=61)), flat) == []  # too few losses


def test_divergence_rise_and_severity():
    rising = _context({}, loss=list(np.geomspace(1.0, 4.0, 60)))  # to 4x the start, ~12% per 5 records
    assert _verdict(LossDivergence(), rising) == [(None, "warning")]
    assert _verdict(LossDivergence(DivergenceThresholds(error_factor=3.0)), rising) == [(None, "error")]
    assert _verdict(LossDivergence(DivergenceThresholds(rise_factor=1.5)), rising) == []
    assert _verdict(LossDivergence(DivergenceThresholds(above_start_factor=5.0)), rising) == []


def test_exploding_blowup_factor():
    norms = _context({}, grad_norm=[1.0] * 59 + [50.0], hidden=(8,))  # the latest norm 50x the early one
    assert _verdict(ExplodingGradients(), norms) == []
    found = ExplodingGradients(ExplodingThresholds(blowup_factor=20.0)).judge(norms)
    assert [(o.severity, o.evidence["blowup_factor"]) for o in found] == [("warning", 50.0)]
    assert found[0].open_after is None  # 50 < open_at_once (10) x 20
    assert ExplodingGradients(ExplodingThresholds(blowup_factor=20.0, open_at_once=2.0)).judge(norms)[0].open_after == 1


def test_sharpness_margin():
    measured = [{"step": 0, "lambda_max": 25.0, "lr": 0.1, "threshold": 20.0, "loss": 1.0}]
    ctx = _context({}, curvature=measured)
    (obs,) = SharpnessAboveStability().judge(ctx)
    assert obs.severity == "info" and obs.evidence["suggested_lr"] == 0.064  # 0.8 x 2/25
    assert SharpnessAboveStability(SharpnessThresholds(margin=1.5)).judge(ctx) == []
    assert SharpnessAboveStability(SharpnessThresholds(safety=0.5)).judge(ctx)[0].evidence["suggested_lr"] == 0.04
    assert SharpnessAboveStability().judge(_context({}, curvature=measured, optimizer="adam")) == []


def test_advice_numbers():
    ctx = AdviceContext(activation="sigmoid", init="normal", optimizer="sgd", lr=0.5, depth=6,
                        hidden=(32,) * 6)
    finding = Finding("vanishing_gradients", "error", "dense0", 0, 9, "", {"cause": "activation"})
    default = {s.code: s for s in advise(finding, ctx)}
    assert default["adam"].patch == {"train.optimizer": "adam", "train.lr": 0.001}
    assert "(lr 1e-3)" in default["adam"].text and default["shallower"].patch == {"model.hidden": [32, 32, 32]}
    t = AdviceThresholds(adam_lr=3e-4, deep_layers=6, lower_lr_factor=4.0)
    changed = {s.code: s for s in advise(finding, ctx, t)}
    assert changed["adam"].patch["train.lr"] == 3e-4 and "(lr 3e-4)" in changed["adam"].text
    assert "shallower" not in changed
    lower = advise(Finding("loss_divergence", "error", None, 0, 9, "", {}), ctx, t)[0]
    assert lower.patch == {"train.lr": 0.12} and "divided by 4" in lower.text
    plain = advise(Finding("loss_divergence", "error", None, 0, 9, "", {}), ctx)[0]
    assert plain.patch == {"train.lr": 0.05} and "a tenth of the current one" in plain.text


def test_the_monitor_takes_a_mapping_and_passes_every_table_on():
    monitor = gradmon.Monitor(console=False, thresholds={"vanishing_gradients": {"min_drop": 3},
                                                         "judging": {"open_after": 2, "short_run": 4}})
    assert monitor.thresholds.vanishing_gradients.min_drop == 3.0
    assert monitor.jury.detectors[0].t is monitor.thresholds.vanishing_gradients
    tracker = monitor.jury.tracker
    assert tracker.open_after == 2 and tracker.close_after == 5 and tracker.short_run == 4
    explicit = gradmon.Monitor(console=False, open_after=4, thresholds={"judging": {"open_after": 2}})
    assert explicit.jury.tracker.open_after == 4
    # the advice attached to a finding uses the advice table
    monitor = gradmon.Monitor(console=False, thresholds={"advice": {"adam_lr": 3e-4}})
    monitor.on_train_begin(_run())
    obs = Observation("loss_oscillation", None, "warning", "swings", {}, open_after=1)
    monitor.jury.tracker.update(5, [obs], ["loss_oscillation"])
    (finding,) = monitor.report().findings
    assert {s.code: s.patch for s in finding.suggestions}["adam"] == {"train.optimizer": "adam", "train.lr": 3e-4}
    with pytest.raises(ValueError, match="unknown table 'vanishing'"):
        gradmon.Monitor(console=False, thresholds={"vanishing": {"min_drop": 3}})


# -- bad names and values ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"vanishing": {}}, "monitor.thresholds: unknown table 'vanishing' (did you mean 'vanishing_gradients'?); "
                        "the tables are vanishing_gradients, exploding_gradients, saturated_activations, "),
    ({"vanishing_gradients": {"min_dorp": 3}}, "monitor.thresholds.vanishing_gradients: unknown threshold "
                                               "'min_dorp' (did you mean 'min_drop'?); its thresholds are "
                                               "min_records, min_depth, min_drop, min_steadiness, "),
    ({"saturated_activations": {"warn_fraction": 1.5}},
     "monitor.thresholds.saturated_activations.warn_fraction must be a number in [0, 1], got 1.5"),
    ({"judging": {"open_after": 0}}, "monitor.thresholds.judging.open_after must be an integer >= 1, got 0"),
    ({"judging": {"open_after": 2.5}}, "monitor.thresholds.judging.open_after must be an integer >= 1, got 2.5"),
    ({"vanishing_gradients": {"min_drop": -1}}, "vanishing_gradients.min_drop must be a number > 0, got -1"),
    ({"vanishing_gradients": {"min_drop": True}}, "must be a number > 0, got True"),
    ({"vanishing_gradients": {"min_drop": "3"}}, "must be a number > 0, got '3'"),
    ({"vanishing_gradients": {"min_drop": float("nan")}}, "must be a number > 0, got nan"),
    ({"dead_units": {"warn_fraction": 0.95}}, "monitor.thresholds.dead_units: warn_fraction (0.95) must not exceed "
                                              "error_fraction (0.9)"),
    ({"advice": 3}, "monitor.thresholds.advice: expected a table of thresholds"),
])
def test_bad_overrides_name_what_is_wrong_in_one_line(overrides, message):
    with pytest.raises(ValueError) as info:
        Thresholds.from_overrides(overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_coerce():
    t = Thresholds.from_overrides({"loss_plateau": {"min_level": 0.5}})
    assert Thresholds.coerce(None) == Thresholds() and Thresholds.coerce(t) is t
    assert Thresholds.coerce({"loss_plateau": {"min_level": 0.5}}) == t
    assert Thresholds.from_overrides({}) == Thresholds()
    with pytest.raises(TypeError, match="thresholds must be a gradmon.Thresholds"):
        Thresholds.coerce(3)
    with pytest.raises(TypeError, match=r"Thresholds.advice must be a AdviceThresholds\(...\), got Vanishing"):
        Thresholds(advice=VanishingThresholds())


# -- the spec carries them --------------------------------------------------------------------------------------
def test_spec_table_and_set_round_trip(tmp_path):
    (tmp_path / "s.toml").write_text("[monitor.thresholds.vanishing_gradients]\nmin_drop = 3.0\n"
                                     "[monitor.thresholds.judging]\nopen_after = 2\n")
    spec = load_spec(tmp_path / "s.toml")
    assert spec["monitor"]["thresholds"] == {"vanishing_gradients": {"min_drop": 3.0}, "judging": {"open_after": 2}}
    (tmp_path / "s.json").write_text(json.dumps({"monitor": {"thresholds": spec["monitor"]["thresholds"]}}))
    assert load_spec(tmp_path / "s.json")["monitor"] == spec["monitor"]
    t = Thresholds.coerce(spec["monitor"]["thresholds"])
    assert t.vanishing_gradients.min_drop == 3.0 and t.judging.open_after == 2
    more = load_spec(tmp_path / "s.toml", ["monitor.thresholds.vanishing_gradients.error_drop=6",
                                           "monitor.thresholds.update_ratio={too_large = 0.4}"])
    assert more["monitor"]["thresholds"] == {"vanishing_gradients": {"min_drop": 3.0, "error_drop": 6},
                                             "judging": {"open_after": 2}, "update_ratio": {"too_large": 0.4}}
    assert load_spec({})["monitor"]["thresholds"] == {}
    patched = apply_patch(more, {"monitor.thresholds.loss_plateau.min_level": 0.5})
    assert patched["monitor"]["thresholds"]["loss_plateau"] == {"min_level": 0.5}
    assert "loss_plateau" not in more["monitor"]["thresholds"]  # the patched spec is a copy
    raw = {"monitor": {"thresholds": {"judging": {"open_after": 2}}}}
    load_spec(raw, ["monitor.thresholds.judging.close_after=4"])
    assert raw == {"monitor": {"thresholds": {"judging": {"open_after": 2}}}}  # the caller's mapping is untouched


@pytest.mark.parametrize("overrides, message", [
    (["monitor.thresholds.vanishing_gradients.min_drop=abc"],
     "monitor.thresholds.vanishing_gradients.min_drop: expected a number (finite), got 'abc'"),
    (["monitor.thresholds.vanishing_gradients.min_drop=true"], "min_drop: expected a number (finite), got True"),
    (["monitor.thresholds.vanishing_gradients=3"], "monitor.thresholds.vanishing_gradients: expected a table of "
                                                   "numbers"),
    (["monitor.thresholds=3"], "monitor.thresholds: expected a table of threshold tables"),
    (["monitor.thresholds.a.b.c=1"], "unknown key monitor.thresholds.a.b.c"),
])
def test_spec_rejects_what_is_not_a_table_of_numbers(overrides, message):
    with pytest.raises(SpecError) as info:
        load_spec({}, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_run_spec_hands_the_spec_thresholds_to_the_monitor(monkeypatch):
    import gradmon.run

    seen = {}

    class Built(Exception):
        pass

    def monitor(**kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(gradmon.run, "Monitor", monitor)
    with pytest.raises(Built):
        gradmon.run.run_spec(load_spec({}, ["monitor.thresholds.loss_plateau.min_level=0.5"]), None)
    assert seen["thresholds"] == {"loss_plateau": {"min_level": 0.5}}


@pytest.mark.parametrize("setting, message", [
    ("monitor.thresholds.vanishing.min_drop=3", "unknown table 'vanishing' (did you mean 'vanishing_gradients'?)"),
    ("monitor.thresholds.judging.open_after=0", "monitor.thresholds.judging.open_after must be an integer >= 1"),
    ("monitor.thresholds.judging.open_after=x", "monitor.thresholds.judging.open_after: expected a number"),
])
def test_cli_bad_threshold_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys, setting, message):
    from gradmon.cli import main

    (tmp_path / "s.toml").write_text("[model]\nhidden = [4]\n")
    code = main(["run", str(tmp_path / "s.toml"), "--logdir", str(tmp_path / "run"), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# -- docs and structure -----------------------------------------------------------------------------------------
def test_docs_list_the_current_table():
    text = (ROOT / "docs" / "thresholds.md").read_text(encoding="utf-8")
    assert text == markdown_table(), f"docs/thresholds.md is out of date; regenerate it with: {REGENERATE}"
    assert "[monitor.thresholds.vanishing_gradients]" in text and "--set monitor.thresholds." in text
    assert all(f"| `{key}` | `{default!r}` |" in text for _, key, default, _ in Thresholds().describe())


#: numbers a detector body may still spell: arithmetic (0, 1, 2 in 2*q, 10 as the log base, 0.5 for an
#: average), the 3 values a lag-1 autocorrelation needs, and 2 significant digits of suggested values
ARITHMETIC = {0, 1, 2, 3, 10, 0.5}


@pytest.mark.parametrize("module", ["activations", "gradients", "loss", "sharpness", "updates"])
def test_detector_bodies_have_no_unnamed_thresholds(module):
    tree = ast.parse((ROOT / "gradmon" / "detectors" / f"{module}.py").read_text(encoding="utf-8"))
    numbers = {(node.lineno, node.value) for node in ast.walk(tree) if isinstance(node, ast.Constant)
               and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)}
    stray = sorted((line, value) for line, value in numbers if value not in ARITHMETIC)
    assert not stray, f"move these numbers into gradmon/thresholds.py: {stray}"


@pytest.mark.parametrize("module", ["activations", "gradients", "loss", "sharpness", "updates", "base", "__init__"])
def test_detectors_import_no_other_detector_and_take_vocabulary_from_gradmon(module):
    tree = ast.parse((ROOT / "gradmon" / "detectors" / f"{module}.py").read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    siblings = {m for m in imported if m.startswith("gradmon.detectors.") and m != "gradmon.detectors.base"}
    assert module == "__init__" or not siblings, siblings
    assert "core.activations" not in imported
