"""Group-equivariant CNNs (capsprobe/models/gcnn.py, issue 48): exact under their group on the pixel grid, the
representation permuted in the stated direction, plain exported weights, a run saved and loaded, the registry.

Tiny widths (e2cnn's bases are built once per module; the first build also imports e2cnn).
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load as st_load
from typer.testing import CliRunner

from capsprobe.cli import app
from capsprobe.errors import InvalidInputError
from capsprobe.models import GCNN, ExportedGCNN, adapt, create_model, native_models
from capsprobe.models.gcnn import field_permutation, library, quarter_turn_shift

TINY = dict(fields=(2, 3, 3), hidden=8)  # 28 -> 14 -> 7: both pooling rules
REL = 1e-4  # the brief's exactness: logits within 1e-4 of their scale


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models() -> dict[str, GCNN]:
    """One tiny model per group, with batch-norm statistics that are not the identity (so export and loading are
    checked on every tensor)."""
    out = {}
    for group in ("c4", "c8", "d4"):
        torch.manual_seed(0)
        model = GCNN(group=group, **TINY).train()
        with torch.no_grad():
            model(torch.rand(8, 1, 28, 28) * 3)  # running statistics move
        out[group] = model.eval()
    return out


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    from capsprobe.data import load_dataset

    return load_dataset("mnist-sample", limit=8).test.float_images()[:4]


def _outputs(model, x):
    with torch.no_grad():
        out = adapt(model).outputs(x)
    return out.logits, out.representation.unflatten(1, (-1, model.order))  # (B, K), (B, fields, |G|)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("group", ["c4", "c8", "d4"])
def test_quarter_turns_leave_the_logits_unchanged(models, images, group):
    logits, _ = _outputs(models[group], images)
    for turns in (1, 2, 3):
        turned, _ = _outputs(models[group], torch.rot90(images, turns, dims=(-2, -1)))
        assert _rel(turned, logits) <= REL, turns  # measured 2e-7 to 5e-7
    if group != "d4":  # a mirror is no element of C4 or C8: the same measure sees it (the test is not blind)
        mirrored, _ = _outputs(models[group], torch.flip(images, (-1,)))
        assert _rel(mirrored, logits) > 1e-3


@pytest.mark.parametrize("group", ["c4", "c8"])
def test_a_quarter_turn_rolls_each_field_forward(models, images, group):
    """``rep(rot90(x, 1))`` is each field of ``rep(x)`` rolled by ``+|G| / 4`` (C4: 1, C8: 2), and ``k`` turns roll
    it by ``k`` times that; the opposite roll does not match (the direction is checked, not only the orbit)."""
    shift = {"c4": 1, "c8": 2}[group]
    assert quarter_turn_shift(group) == shift
    _, rep = _outputs(models[group], images)
    for turns in (1, 2, 3):
        _, turned = _outputs(models[group], torch.rot90(images, turns, dims=(-2, -1)))
        assert _rel(turned, torch.roll(rep, turns * shift, dims=-1)) <= REL, turns
        assert np.array_equal(field_permutation(group, turns), (np.arange(models[group].order) + turns * shift)
                              % models[group].order)
        if turns != 2:
            assert _rel(turned, torch.roll(rep, -turns * shift, dims=-1)) > 1e-2, turns


def test_d4_is_exact_under_flips_and_its_fields_move_by_the_regular_representation(models, images):
    """Both mirrors leave the logits; the representation's fields move by the permutation of the group element
    (e2cnn's reflection is the left-right mirror), and not by the element of the other mirror."""
    model = models["d4"]
    logits, rep = _outputs(model, images)
    for turns in range(4):
        for flip in (False, True):
            x = torch.rot90(torch.flip(images, (-1,)) if flip else images, turns, dims=(-2, -1))
            moved_logits, moved = _outputs(model, x)
            assert _rel(moved_logits, logits) <= REL, (turns, flip)
            p = field_permutation("d4", turns, flip)
            assert _rel(moved[..., p], rep) <= REL, (turns, flip)
            wrong = field_permutation("d4", turns + 1, flip)
            assert _rel(moved[..., wrong], rep) > 1e-2, (turns, flip)
    up_down, _ = _outputs(model, torch.flip(images, (-2,)))
    assert _rel(up_down, logits) <= REL


def test_the_grid_centre_is_kept_on_odd_sides_and_colour_inputs(images):
    """An odd side (27: 3x3 pooling windows) and 3-channel 32 x 32 inputs stay exact; the centre-keeping pooling is
    what makes it so (2x2 windows on the odd side break it)."""
    torch.manual_seed(0)
    model = GCNN(group="c4", in_chans=3, img_size=27, **TINY).eval()
    for side in (27, 32):
        x = torch.rand(3, 3, side, side) ** 4
        logits, rep = _outputs(model, x)
        turned_logits, turned = _outputs(model, torch.rot90(x, 1, dims=(-2, -1)))
        assert _rel(turned_logits, logits) <= REL and _rel(turned, torch.roll(rep, 1, -1)) <= REL, side
    with torch.no_grad():  # the same network pooled with 2x2 windows everywhere loses it on the odd side
        x = torch.rand(3, 3, 27, 27) ** 4
        plain = [model.convs, model.norms, model.acts]

        def naive(v):
            for i, (c, n, a) in enumerate(zip(*plain)):
                v = a(n(c(v)))
                v = torch.nn.functional.max_pool2d(v, 2, ceil_mode=True) if i < 2 else v
            return model.head(v.mean((-2, -1)).unflatten(1, (-1, 4)).amax(-1))

        assert _rel(naive(torch.rot90(x, 1, dims=(-2, -1))), naive(x)) > 1e-3


def test_the_taps_are_the_spatial_fields_and_the_invariant_features(models, images):
    from capsprobe.probe.lie import layer_taps

    model = models["c4"]
    taps = layer_taps(model)
    assert [name for name, _, _ in taps] == ["fields 1", "fields 2", "fields 3", "invariant"]
    seen = {}
    handles = [m.register_forward_hook(lambda mod, i, o, t=tap: seen.update(t(o, i, mod))) for _, m, tap in taps]
    try:
        _, rep = _outputs(model, images)
    finally:
        for h in handles:
            h.remove()
    assert [tuple(seen[f"fields {i}"].shape) for i in (1, 2, 3)] == [(4, 8, 28, 28), (4, 12, 14, 14), (4, 12, 7, 7)]
    torch.testing.assert_close(seen["invariant"], rep.amax(-1))  # the group pooling of the representation


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_the_exported_plain_module_gives_the_same_outputs(models, images, group):
    model = models[group]
    plain = model.export()
    assert isinstance(plain, ExportedGCNN) and model.training is False
    assert all(type(m).__module__.startswith("torch.") for m in [*plain.convs, *plain.norms])
    with torch.no_grad():
        torch.testing.assert_close(plain(images), model(images), rtol=0, atol=1e-6)
    assert set(model.state_dict()) == set(plain.state_dict())  # what a weights file holds


def test_the_state_is_plain_and_loads_back_exactly_or_not_at_all(models, images):
    """A state saved as safetensors loads into a fresh model with the same coefficients (to float rounding) and the
    same outputs, and into an :class:`ExportedGCNN` without e2cnn; a filter moved off the equivariant basis, or a
    batch norm that differs within a field, is refused."""
    from capsprobe.training.runs import save_weights

    model = models["d4"]
    state = st_load(_saved(save_weights, model))
    assert all(not k.endswith(".weights") for k in state)  # e2cnn's coefficients are not in the file
    torch.manual_seed(5)
    fresh = GCNN(group="d4", **TINY)
    fresh.load_state_dict(state)
    fresh.eval()
    for a, b in zip(fresh.convs, model.convs):
        torch.testing.assert_close(a.module.weights, b.module.weights, rtol=0, atol=1e-5)
    plain = ExportedGCNN(group="d4", fields=TINY["fields"], hidden=8)
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), model(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(plain.eval()(images), model(images), rtol=0, atol=1e-6)
    bad = dict(state)
    bad["convs.1.weight"] = bad["convs.1.weight"].clone()
    bad["convs.1.weight"][0, 0, 0, 0] += 1.0
    with pytest.raises(InvalidInputError, match="convs.1.weight is not an equivariant filter"):
        GCNN(group="d4", **TINY).load_state_dict(bad)
    bad = dict(state)
    bad["norms.0.running_mean"] = bad["norms.0.running_mean"] + torch.arange(16.0)
    with pytest.raises(InvalidInputError, match="norms.0.running_mean differs within a field"):
        GCNN(group="d4", **TINY).load_state_dict(bad)


def _saved(save_weights, model) -> bytes:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        return save_weights(model, Path(tmp) / "model.safetensors").read_bytes()


def test_initialisation_uses_e2cnns_he_deviations():
    """The coefficients' deviations, computed on one pair of fields, are e2cnn's own generalized He deviations."""
    from e2cnn.nn.init import _generalized_he_init_variances

    lib = library()
    conv = lib.conv(lib.fields("c8", 3), lib.fields("c8", 2), 5)
    torch.testing.assert_close(lib.he_std(conv), _generalized_he_init_variances(conv.basisexpansion), rtol=1e-6,
                               atol=0)


def test_the_models_are_in_timm_and_capsprobes_registries():
    for name in ("gcnn_c4", "gcnn_c8", "gcnn_d4"):
        assert name in native_models() and timm.is_model(name)
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 0 and all(n in result.output for n in ("gcnn_c4", "gcnn_c8", "gcnn_d4"))
    model = create_model("gcnn_d4", in_chans=3, num_classes=5, img_size=32, **TINY)
    assert model.group == "d4" and model.order == 8 and model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(InvalidInputError, match="group must be one of c4, c8, d4"):
        GCNN(group="c6", **TINY)


@pytest.mark.trains
def test_a_run_trains_saves_and_loads_through_the_run_files(tmp_path, images):
    """``fit`` trains a tiny G-CNN one epoch (the loop's cross entropy on its logits), writes plain weights, and
    ``load_run`` rebuilds the model from them; resuming goes through the checkpoint's plain state."""
    from capsprobe.training import RunConfig, fit
    from capsprobe.training.runs import WEIGHTS, load_run

    cfg = RunConfig(model="gcnn_c4", dataset="mnist-sample", epochs=1, batch_size=8, limit=16, max_shift=0,
                    model_kwargs={"fields": [2, 2], "hidden": 8})
    out = fit(cfg, tmp_path / "run", progress=False)
    run = load_run(out)
    assert isinstance(run.model, GCNN) and np.isfinite(float(run.history[-1]["train_loss"]))
    plain = ExportedGCNN(group="c4", fields=(2, 2), hidden=8)
    plain.load_state_dict(st_load((out / WEIGHTS).read_bytes()))
    with torch.no_grad():
        torch.testing.assert_close(run.model(images), plain.eval()(images), rtol=0, atol=1e-5)
        fresh = create_model("gcnn_c4", fields=(2, 2), hidden=8).eval()
        assert (fresh(images) - run.model(images)).abs().max() > 1e-4  # the weights were trained and loaded
    fit(RunConfig(**{**cfg.to_dict(), "epochs": 2}), out, resume=True, progress=False)
    assert len(load_run(out).history) == 2
