"""The gallery: models people train, written as they write them (``tests/torch_gallery.py``), watched by
``gradmon.torch.watch``.  Each trains without a crash, every trainable unit is in report.json, the healthy
twin is silent, and each pathology family is found on the unit where it is (oracles: torch's own gradients
and activations, computed by hand in the loop).  (A little over 450 lines: one test per model family.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import gradmon.torch  # noqa: E402
from gradmon.vocabulary import stability_threshold  # noqa: E402
from tests.torch_gallery import AllConvNet, DeepSigmoidCNN, ElmanRNN, FineTune, GRUClassifier, Net, ResNet, \
    RNNModel, TransformerClassifier, batchify, corpus, images, sequences  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(model, data, *, steps=60, opt=None, lr=0.05, criterion=F.cross_entropy, batch=64, tmp_path=None,
        autocast=False, before_step=None, after_step=None, model_call=None, **watch_kw):
    """Train ``model`` the ordinary way under a watcher; returns (watcher, report, report.json as a dict)."""
    x, y = data
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    watch_kw.setdefault("curvature_every", 0)
    watch_kw.setdefault("tensorboard", False)
    watch_kw.setdefault("console", False)
    watcher = gradmon.torch.watch(model_call or model, optimizer=opt, logdir=tmp_path, **watch_kw)
    call = model_call or model
    for s in range(steps):
        i = (s * batch) % (len(x) - batch)
        xb, yb = x[i:i + batch], y[i:i + batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = call(xb)
        loss = criterion(out.float(), yb)
        opt.zero_grad()
        loss.backward()
        if before_step is not None:
            before_step(s)
        opt.step()
        if after_step is not None:
            after_step(s)
        watcher.log_loss(loss)
    report = watcher.report()
    watcher.close()
    assert watcher.error is None, watcher.error
    saved = json.loads((tmp_path / "report.json").read_text()) if tmp_path is not None else report.to_dict()
    return watcher, report, saved


def trainable_keys(model):
    return {k for k, p in model.named_parameters() if p.requires_grad}


def assert_units(watcher, saved, model, names):
    """Every trainable unit is in report.json under the expected name, and the units hold every trainable
    parameter exactly once."""
    assert [layer["name"] for layer in saved["layers"]] == names
    keys = [k for u in watcher.monitor.units for k in u.params]
    assert len(keys) == len(set(keys)) and set(keys) == trainable_keys(model)


def loud(report):
    return [(f.code, f.layer, f.severity) for f in report.findings if f.severity != "info"]


# -- the gallery, each with its healthy run ---------------------------------------------------------------------
def test_cnn_with_functional_activations_is_measured_per_channel(tmp_path):
    torch.manual_seed(0)
    model = Net()
    x, y = images()
    watcher, report, saved = fit(model, (x, y), criterion=F.nll_loss, tmp_path=tmp_path)
    assert_units(watcher, saved, model, ["conv1", "conv2", "fc1", "fc2"])
    assert [(u.activation_layer, u.activation, u.units, u.channel_axis) for u in watcher.monitor.units] == [
        ("conv1.relu", "relu", 8, 1), ("conv2.relu", "relu", 16, 1), ("fc1.relu", "relu", 32, -1),
        (None, None, 4, -1)]
    assert report.status == "healthy" and not loud(report)
    dead = watcher.monitor.history.layer("dead_fraction")
    assert np.isfinite(dead[:, :3]).all() and np.isnan(dead[:, 3]).all()


def test_dead_channels_are_found_on_their_convolution(tmp_path):
    torch.manual_seed(0)
    model = Net(bias=-5.0)
    x, y = images()
    expected = []

    def oracle(step):  # per channel: zero over the batch and every position, from torch directly
        i = (step * 64) % (len(x) - 64)
        with torch.no_grad():
            h = F.relu(model.conv2(F.relu(model.conv1(x[i:i + 64]))))
        expected.append(float((h.amax((0, 2, 3)) <= 0).double().mean()))

    watcher, report, _ = fit(model, (x, y), criterion=F.nll_loss, before_step=oracle, tmp_path=tmp_path)
    dead = watcher.monitor.history.layer("dead_fraction")[:, 1]
    np.testing.assert_allclose(dead, expected, atol=1e-12)
    assert min(expected) == 1.0
    assert ("dead_units", "conv2", "error") in loud(report)
    assert all(f.layer != "conv1" for f in report.findings if f.code == "dead_units")


def test_module_and_functional_activations_give_the_same_statistics():
    class ModuleNet(Net):
        def __init__(self):
            super().__init__(bias=-0.3)
            self.act1, self.act2, self.act3 = nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU()

        def forward(self, x):
            x = self.act2(self.conv2(self.act1(self.conv1(x))))
            x = torch.flatten(self.dropout1(F.max_pool2d(x, 2)), 1)
            return F.log_softmax(self.fc2(self.act3(self.fc1(x))), dim=1)

    runs = []
    for cls in (ModuleNet, lambda: Net(bias=-0.3)):
        torch.manual_seed(0)
        model = cls()
        torch.manual_seed(1)
        watcher, _, _ = fit(model, images(), criterion=F.nll_loss, steps=20)
        runs.append(watcher.monitor.history)
    for q in ("dead_fraction", "grad_norm", "act_mean"):
        np.testing.assert_allclose(runs[0].layer(q), runs[1].layer(q), rtol=1e-6, equal_nan=True)
    assert np.nanmax(runs[0].layer("dead_fraction")) > 0


def test_deep_sigmoid_cnn_vanishes_and_its_relu_twin_is_silent():
    torch.manual_seed(0)
    watcher, report, _ = fit(DeepSigmoidCNN(), images(), lr=0.1, steps=80)
    vanishing = [f for f in report.findings if f.code == "vanishing_gradients"]
    assert vanishing and vanishing[0].layer.startswith("convs.") and vanishing[0].severity == "error"
    rms = watcher.monitor.history.layer("grad_norm")[-1]
    assert rms[0] < 1e-4 * rms[-1]  # the input side's gradients are orders of magnitude below the output's
    torch.manual_seed(0)
    _, twin, _ = fit(DeepSigmoidCNN(act=F.relu, he=True), images(), lr=0.05, steps=80)
    assert twin.status == "healthy" and not loud(twin)


def test_all_conv_net_without_linear_layers(tmp_path):
    torch.manual_seed(0)
    model = AllConvNet()
    watcher, report, saved = fit(model, images(), tmp_path=tmp_path)
    assert_units(watcher, saved, model, ["features.conv2d0", "features.conv2d2", "features.conv2d4",
                                         "features.conv2d6"])
    assert [u.activation_layer for u in watcher.monitor.units] == ["features.relu1", "features.relu3",
                                                                   "features.relu5", None]
    assert report.status == "healthy" and not loud(report)


def test_resnet_blocks_with_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = ResNet()
    with torch.no_grad():  # a quarter of the block's output channels are off for every input
        model.layer2[0].bn2.bias[:4] = -8.0
        model.layer2[0].downsample[1].bias[:4] = -8.0
    x, y = images()
    outputs, expected = [], []  # oracle: the block's second ReLU call (after the residual sum), per channel
    model.layer2[0].relu.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
    watcher, report, saved = fit(model, (x, y), tmp_path=tmp_path, steps=40, lr=0.01,
                                 before_step=lambda s: expected.append(
                                     float((outputs[-1].amax((0, 2, 3)) <= 0).double().mean())))
    names = ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2", "layer1.0.bn2",
             "layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2", "layer2.0.bn2", "layer2.0.downsample.conv2d0",
             "layer2.0.downsample.batchnorm2d1", "fc"]
    assert_units(watcher, saved, model, names)
    units = {u.name: u for u in watcher.monitor.units}
    # the ReLU after the residual sum belongs to the block's last BatchNorm (the add was in place), not to
    # the downsampling branch that ran just before it
    assert units["layer2.0.bn2"].activation_layer == "layer2.0.relu#2"
    assert units["layer2.0.downsample.batchnorm2d1"].activation_layer is None
    assert "residual" in units["layer2.0.downsample.batchnorm2d1"].note
    assert units["conv1"].batchnorm and units["layer2.0.conv2"].batchnorm
    np.testing.assert_allclose(watcher.monitor.history.layer("dead_fraction")[:, 9], expected, atol=1e-12)
    assert 0 < max(expected)


def test_transformer_encoder(tmp_path):
    torch.manual_seed(0)
    model = TransformerClassifier()
    watcher, report, saved = fit(model, sequences(), tmp_path=tmp_path, lr=0.01)
    layer = [f"encoder.layers.{i}.{m}" for i in range(2)
             for m in ("self_attn", "norm1", "linear1", "linear2", "norm2")]
    assert_units(watcher, saved, model, ["embed", "transformerclassifier", *layer, "head"])
    units = {u.name: u for u in watcher.monitor.units}
    attention = units["encoder.layers.0.self_attn"]
    assert attention.kind == "multiheadattention" and "encoder.layers.0.self_attn.out_proj.weight" in attention.params
    # the feed-forward block's F.relu (the layer's own functional activation) belongs to linear1
    assert units["encoder.layers.1.linear1"].activation == "relu"
    assert units["encoder.layers.1.linear1"].channel_axis == -1 and units["encoder.layers.1.linear1"].units == 64
    assert report.status == "healthy" and not loud(report)


def test_lstm_language_model_with_tied_weights(tmp_path):
    torch.manual_seed(0)
    model = RNNModel(20)
    data = batchify(corpus(), 8)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    watcher = gradmon.torch.watch(model, optimizer=opt, logdir=tmp_path, curvature_every=0, tensorboard=False,
                                  console=False)
    hidden, norms = model.init_hidden(8), []
    for s in range(60):
        i = (s * 10) % (data.size(0) - 11)
        hidden = tuple(h.detach() for h in hidden)
        out, hidden = model(data[i:i + 10], hidden)
        loss = F.nll_loss(out, data[i + 1:i + 11].reshape(-1))
        opt.zero_grad()
        loss.backward()
        # oracle: the norm of every distinct gradient tensor, the tied one once
        norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters())))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        watcher.log_loss(loss)
    report = watcher.report()
    watcher.close()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert watcher.error is None
    assert_units(watcher, saved, model, ["encoder", "rnn.l0", "rnn.l1", "decoder"])
    units = {u.name: u for u in watcher.monitor.units}
    assert units["encoder"].aliases == ("decoder.weight",) and units["decoder"].params == ("decoder.bias",)
    assert saved["layers"][0]["aliases"] == ["decoder.weight"]
    assert any("decoder.weight is encoder.weight" in n for n in saved["extra"]["notes"])
    np.testing.assert_allclose(watcher.monitor.history.scalar("grad_norm"), norms, rtol=1e-5)
    # the LSTM's gates run inside its kernel: unmeasured, NaN (null), never 0
    for entry in saved["layers"][1:3]:
        assert entry["saturation"] == {"first": None, "last": None, "median": None}
        assert "LSTM kernel" in entry["no_activation_statistics"]
    assert np.isnan(watcher.monitor.history.layer("saturation")).all()
    assert report.status == "healthy" and not loud(report)


def test_gru_units_per_direction_and_coverage_said_once(tmp_path, capsys):
    torch.manual_seed(0)
    model = GRUClassifier()
    watcher = None
    watcher, report, saved = fit(model, sequences(), tmp_path=tmp_path, console=True)
    assert_units(watcher, saved, model, ["embed", "gru.l0", "gru.l0_reverse", "out"])
    units = {u.name: u for u in watcher.monitor.units}
    assert units["gru.l0_reverse"].params == tuple(f"gru.{w}_l0_reverse" for w in
                                                   ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    err = capsys.readouterr().err
    assert err.count("no activation statistics for gru.l0, gru.l0_reverse") == 1 and "GRU kernel" in \
        saved["layers"][1]["no_activation_statistics"]
    assert report.status == "healthy" and not loud(report)


def test_exploding_rnn_and_its_healthy_twin():
    torch.manual_seed(0)
    watcher, report, _ = fit(ElmanRNN(gain=1.2), sequences(length=30), lr=0.01, steps=120, batch=32)
    codes = {f.code for f in report.findings}
    assert "exploding_gradients" in codes
    exploding = next(f for f in report.findings if f.code == "exploding_gradients")
    nonfinite = [f.first_step for f in report.findings if f.code == "nonfinite_values"]
    assert not nonfinite or exploding.first_step <= nonfinite[0]
    # on the right unit: the recurrent layer's gradient grew the most before the blow-up
    norms = watcher.monitor.history.layer("grad_norm")
    ok = np.isfinite(norms).all(axis=1)
    growth = np.nanmax(norms[ok], axis=0) / norms[0]
    assert [u.name for u in watcher.monitor.units][int(np.argmax(growth))] == "rnn.l0"
    torch.manual_seed(0)
    _, twin, _ = fit(ElmanRNN(gain=0.9), sequences(length=30), lr=0.003, steps=120, batch=32)
    assert twin.status == "healthy" and not loud(twin)


def test_frozen_backbone_with_a_leftover_grad(tmp_path):
    torch.manual_seed(0)
    model = FineTune()
    x, y = images()
    F.cross_entropy(model(x[:32]), y[:32]).backward()  # "pretraining" left a .grad on the backbone
    model.backbone.requires_grad_(False)
    stale = [p.grad.clone() for p in model.backbone.parameters()]
    assert all(g.abs().sum() > 0 for g in stale)
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1, momentum=0.9)
    norms = []
    watcher, report, saved = fit(model, (x, y), opt=opt, tmp_path=tmp_path, console=True,
                                 before_step=lambda s: norms.append(math.sqrt(sum(
                                     float(p.grad.double().pow(2).sum()) for p in model.head.parameters()))))
    assert_units(watcher, saved, model, ["head.linear0", "head.linear2"])
    assert saved["extra"]["frozen"] == ["backbone.conv1 (weight, bias)", "backbone.bn1 (weight, bias)",
                                        "backbone.conv2 (weight, bias)"]
    assert all(torch.equal(a, p.grad) for a, p in zip(stale, model.backbone.parameters()))  # still there
    np.testing.assert_allclose(watcher.monitor.history.scalar("grad_norm"), norms, rtol=1e-6)
    assert not [f for f in report.findings if f.code == "update_ratio"]
    assert report.status == "healthy" and not loud(report)


def test_a_backbone_left_out_of_the_optimizer_is_not_trained_and_not_monitored():
    """Freezing by leaving parameters out of the optimizer: they still get (ever accumulating) gradients,
    which are not the run's gradients."""
    torch.manual_seed(0)
    model = FineTune()
    opt = torch.optim.SGD(model.head.parameters(), lr=0.1, momentum=0.9)
    norms = []
    watcher, report, saved = fit(model, images(), opt=opt, before_step=lambda s: norms.append(math.sqrt(sum(
        float(p.grad.double().pow(2).sum()) for p in model.head.parameters()))))
    assert [u.name for u in watcher.monitor.units] == ["head.linear0", "head.linear2"]
    assert saved["extra"]["frozen"][0] == "backbone.conv1 (weight, bias) outside the optimizer"
    assert any("outside the optimizer's parameter groups" in n for n in saved["extra"]["notes"])
    np.testing.assert_allclose(watcher.monitor.history.scalar("grad_norm"), norms, rtol=1e-6)
    assert report.status == "healthy" and not loud(report)


def test_parameter_groups_give_each_unit_its_rate(tmp_path):
    torch.manual_seed(0)
    model = FineTune()
    x, y = images()
    opt = torch.optim.SGD([{"params": model.backbone.parameters(), "lr": 0.01},
                           {"params": model.head.parameters(), "lr": 0.1, "momentum": 0.9, "nesterov": True}],
                          lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 1.0, lambda s: 0.5 if s >= 30 else 1.0])
    lrs = []
    watcher, report, saved = fit(model, (x, y), opt=opt, tmp_path=tmp_path, curvature_every=20,
                                 probe=(x[:64], y[:64]), loss_fn=F.cross_entropy,
                                 before_step=lambda s: lrs.append([g["lr"] for g in opt.param_groups]),
                                 after_step=lambda s: sched.step())
    assert [(entry["name"], entry["lr"]) for entry in saved["layers"]] == [
        ("backbone.conv1", 0.01), ("backbone.bn1", 0.01), ("backbone.conv2", 0.01), ("head.linear0", 0.05),
        ("head.linear2", 0.05)]
    # the binding group (the lowest stability bound) is the head's: its rate, momentum and Nesterov
    assert watcher.run.optimizer == "momentum"
    assert watcher.run.hyperparams["momentum"] == 0.9 and watcher.run.hyperparams["nesterov"] is True
    np.testing.assert_allclose(watcher.monitor.history.scalar("lr"), [head for _, head in lrs])
    for entry in report.curvature:
        head = lrs[entry["step"]][1]
        assert entry["threshold"] == pytest.approx(stability_threshold(head, 0.9, True))
    assert report.status == "healthy" and not loud(report)


@pytest.mark.parametrize("order", ["compiled_model_watched", "watched_then_compiled"])
def test_a_model_under_torch_compile(order, capsys):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = images()
    # backend "eager": dynamo traces and compiles the graph; CPU inductor would add a minute of C++ builds
    compiled = torch.compile(model, backend="eager")
    watcher = gradmon.torch.watch(compiled if order == "compiled_model_watched" else model, optimizer=opt,
                                  curvature_every=0, tensorboard=False)
    norms = []
    for s in range(20):
        i = (s * 32) % (len(x) - 32)
        loss = F.nll_loss(compiled(x[i:i + 32]), y[i:i + 32])
        opt.zero_grad()
        loss.backward()
        norms.append([math.sqrt(float(m.weight.grad.pow(2).sum() + m.bias.grad.pow(2).sum()))
                      for m in (model.conv1, model.conv2, model.fc1, model.fc2)])
        opt.step()
        watcher.log_loss(loss)
    report = watcher.report()
    watcher.close()
    assert watcher.error is None
    assert [layer["name"] for layer in report.layers] == ["conv1", "conv2", "fc1", "fc2"]
    np.testing.assert_allclose(watcher.monitor.history.layer("grad_norm"), norms, rtol=1e-5)
    assert "torch.compile" in capsys.readouterr().err  # activations unmeasured, and said so
    assert all("torch.compile" in layer["no_activation_statistics"] for layer in report.to_dict()["layers"])
    assert report.status == "healthy"


def test_bf16_autocast(tmp_path):
    torch.manual_seed(0)
    model = Net()
    watcher, report, saved = fit(model, images(), criterion=F.nll_loss, autocast=True, tmp_path=tmp_path)
    assert_units(watcher, saved, model, ["conv1", "conv2", "fc1", "fc2"])
    dead = watcher.monitor.history.layer("dead_fraction")[:, :3]
    assert np.isfinite(dead).all()
    assert report.status == "healthy" and not loud(report)


# -- layouts and refusals -----------------------------------------------------------------------------------------
def test_sequence_outputs_are_judged_per_feature():
    """A Linear on (batch, time, features) with a ReLU: a feature is dead when it is zero for every example
    and every position."""
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(16, 8)
            self.proj = nn.Linear(8, 24)
            self.out = nn.Linear(24, 3)
            with torch.no_grad():
                self.proj.bias[:12] = -50.0  # half the features can never fire

        def forward(self, x):
            return self.out(torch.relu(self.proj(self.embed(x)))).mean(1)

    torch.manual_seed(0)
    watcher, _, _ = fit(Tagger(), sequences(), steps=10, lr=0.01)
    proj = next(u for u in watcher.monitor.units if u.name == "proj")
    assert proj.channel_axis == -1 and proj.units == 24
    np.testing.assert_allclose(watcher.monitor.history.layer("dead_fraction")[:, proj.index], 0.5)


def test_clamp_at_zero_is_a_relu_and_shared_modules_count_once():
    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(4, 16))
            self.head = nn.Linear(32, 2)

        def forward(self, x):
            a, b = self.encoder(x).clamp(min=0), self.encoder(-x).clamp(min=0)  # one module, two calls
            return self.head(torch.cat([a, b], 1))

    torch.manual_seed(0)
    x = torch.randn(256, 4)
    watcher, _, _ = fit(Siamese(), (x, (x[:, 0] > 0).long()), steps=10)
    assert [(u.name, u.activation) for u in watcher.monitor.units] == [("encoder.linear0", "relu"), ("head", None)]


def test_a_model_without_trainable_parameters_is_one_line_error():
    frozen = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter") as info:
        gradmon.torch.watch(frozen)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no trainable parameter"):
        gradmon.torch.watch(nn.ReLU())


def test_an_unused_module_is_listed_not_monitored():
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.spare = nn.Linear(4, 2)  # defined, never called

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    x = torch.randn(128, 4)
    watcher, report, _ = fit(WithSpare(), (x, (x[:, 0] > 0).long()), steps=30)
    assert [u.name for u in watcher.monitor.units] == ["fc"]
    assert any("never called" in n and "spare" in n for n in report.extra["notes"])
    assert not [f for f in report.findings if f.code == "update_ratio"]


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_convolution_activations_are_judged_per_channel(dims):
    """Conv1d/2d/3d: a channel is dead when it is zero for every example and every position."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv(2, 8, 3, padding=1)
            self.head = nn.Linear(8, 2)
            with torch.no_grad():
                self.conv.bias[:3] = -50.0  # three of eight channels never fire

        def forward(self, x):
            return self.head(F.relu(self.conv(x)).flatten(2).mean(2))

    torch.manual_seed(0)
    x = torch.randn(128, 2, *([6] * dims))
    watcher, _, _ = fit(ConvNet(), (x, (x.flatten(1)[:, 0] > 0).long()), steps=5, lr=0.01)
    unit = watcher.monitor.units[0]
    assert (unit.name, unit.channel_axis, unit.units) == ("conv", 1, 8)
    np.testing.assert_allclose(watcher.monitor.history.layer("dead_fraction")[:, 0], 3 / 8)


def test_every_layer_type_is_a_unit_and_every_parameter_belongs_to_one():
    class Zoo(nn.Module):
        def __init__(self):
            super().__init__()
            self.bag = nn.EmbeddingBag(16, 8, mode="mean")
            self.up = nn.ConvTranspose1d(1, 4, 3, stride=2)
            self.group = nn.GroupNorm(2, 4)
            self.inst = nn.InstanceNorm1d(4, affine=True)
            self.rms = nn.RMSNorm(8)
            self.cell = nn.GRUCell(8, 8)
            self.prelu = nn.PReLU()
            self.scale = nn.Parameter(torch.ones(()))
            self.out = nn.Linear(8 + 4, 2)

        def forward(self, tokens):
            e = self.rms(self.bag(tokens))
            h = self.cell(e)
            u = self.inst(self.group(self.up(e[:, None, :4])))
            return self.out(torch.cat([self.prelu(h), u.mean(2)], 1)) * self.scale

    torch.manual_seed(0)
    x, y = sequences(length=6, classes=2)
    model = Zoo()
    watcher, report, saved = fit(model, (x, y), steps=8, lr=0.01)
    assert_units(watcher, saved, model, ["bag", "rms", "cell", "up", "group", "inst", "prelu", "out", "zoo"])
    kinds = {u.name: u.kind for u in watcher.monitor.units}
    assert kinds["bag"] == "embeddingbag" and kinds["up"] == "convtranspose1d" and kinds["rms"] == "rmsnorm"
    units = {u.name: u for u in watcher.monitor.units}
    # the PReLU is a unit of its own (it has a parameter) and the activation of the cell whose output it takes
    assert (units["cell"].activation_layer, units["cell"].activation) == ("prelu", "prelu")
    assert units["up"].channel_axis == 1 and units["group"].channel_axis == 1
