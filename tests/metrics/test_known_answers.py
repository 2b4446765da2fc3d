"""Known answers (issue 48, deliverable 3): every equivariance metric read on representations whose answer is exact.

An instrument is trusted when it reads a known standard. The standards are built here, by hand (no e2cnn):

- a C4 group CNN by the orbit construction: a small random-weight CNN ``f`` applied to the four quarter turns of the
  input (``torch.rot90``, an exact pixel permutation), its *fields* ``[f(x), f(r x), f(r^2 x), f(r^3 x)]`` pooled
  over space (a quarter turn of ``x`` permutes the four blocks cyclically: an exact linear action), its *pooled
  output* the mean over the group (exactly invariant), and its class scores a linear head on that mean (fitted by
  least squares on training digits, so the accuracy is above chance);
- the image itself (4 x 4 average-pooled, 49-D) under the suite's translations by multiples of 4 px: with zero fill
  a shift is a linear map of the image, here a shift of the 7 x 7 cells (the full 784-D image is reported, not
  tested: a 784 x 784 map cannot be fitted from 128 images);
- a model that sees only the amount of ink (invariant to rotation about the centre).

Everything is read through the real code path (``run_probe``, ``lie_tables``) on 256 digits of the embedded sample,
plus direct calls of the metric functions where the probe has no knob (composition of translations, the unrelated
baselines). The table in docs/known-answers.md states the values measured here; the last test checks
that it still does.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from capsprobe import metrics as M
from capsprobe.data import ImageSplit, load_dataset
from capsprobe.models import ModelAdapter, adapt
from capsprobe.probe import Subject, run_probe
from capsprobe.probe.lie import lie_pass, lie_tables
from capsprobe.transforms import apply_matrix, get_transform

QUARTER_TURNS = (90, 180, -90)  # the suite's rotate takes -180..180: -90 is the third quarter turn
OFF_GROUP = (30, 45)
N_BOOT = 20
REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "known-answers.md"


class C4Orbit(nn.Module):
    """A C4-equivariant CNN by the orbit construction (Cohen & Welling 2016's lifting, done by brute force)."""

    def __init__(self, features: int = 8):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.Conv2d(16, features, 5, stride=2), nn.ReLU())
        self.head = nn.Linear(features, 10)

    def orbit(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 4, F)``: ``f`` of the four quarter turns of ``x``, pooled over space."""
        return torch.stack([self.f(torch.rot90(x, k, dims=(-2, -1))).mean((-2, -1)) for k in range(4)], 1)

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F)``: ``f`` of ``x`` alone (no group structure), pooled over space."""
        return self.f(x).mean((-2, -1))


def _fields(model: C4Orbit, x: torch.Tensor) -> dict:
    o = model.orbit(x)
    poses = (o @ model.head.weight.T).transpose(1, 2)  # (B, 10, 4): each class's logit at the four quarter turns
    return {"logits": model.head(o.mean(1)), "representation": o.flatten(1), "poses": poses}


def _pooled(model: C4Orbit, x: torch.Tensor) -> dict:
    o = model.orbit(x)
    return {"logits": model.head(o.mean(1)), "representation": o.mean(1)}


def _plain(model: C4Orbit, x: torch.Tensor) -> dict:
    h = model.plain(x)
    return {"logits": model.head(h), "representation": h}


def _ink(model: nn.Module, x: torch.Tensor) -> dict:
    a = x.flatten(1).sum(1, keepdim=True)  # (B, 1) the amount of ink
    return {"logits": a * torch.linspace(-1, 1, 10) / 50, "representation": a}


def _image(model: nn.Module, x: torch.Tensor) -> dict:
    return {"scores": torch.full((x.shape[0], 10), 0.1), "representation": F.avg_pool2d(x, 4).flatten(1)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    return load_dataset("mnist-sample", limit=256)


@pytest.fixture(scope="module")
def c4(digits):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = C4Orbit().eval()  # PyTorch's default initialisation, seeded
    with torch.no_grad():  # the head: least squares on the invariant features of training digits
        feats = model.orbit(digits.train.float_images()).mean(1)
        a = torch.cat([feats, torch.ones(len(feats), 1)], 1)
        w = torch.linalg.lstsq(a, 10 * F.one_hot(digits.train.labels, 10).float()).solution
        model.head.weight.copy_(w[:-1].T)
        model.head.bias.copy_(w[-1])
    return model


def _table(result) -> pd.DataFrame:
    return result.metrics.set_index(["run", "metric", "magnitude"])


@pytest.fixture(scope="module")
def c4_probe(digits, c4):
    subjects = [Subject(name, ModelAdapter(c4, outputs=fn, has_poses=fn is _fields), model_name="c4")
                for name, fn in (("c4-fields", _fields), ("c4-pooled", _pooled), ("plain", _plain))]
    result = run_probe(subjects, digits.test, ["rotate"], {"rotate": [0, *QUARTER_TURNS, *OFF_GROUP]},
                       n_boot=N_BOOT, progress=False, device="cpu")
    return _table(result)


@pytest.fixture(scope="module")
def c4_composition(digits, c4):
    lie = lie_tables([({"model": "c4", "run": "c4-fields", "seed": 0}, ModelAdapter(c4, outputs=_fields,
                                                                                    has_poses=True))],
                     digits.test, generators=(), angles=(-90, 90, 15, 30), layers=False, n_boot=N_BOOT)
    return lie.composition.set_index(["which", "a", "b"])["composition_error"]


@pytest.fixture(scope="module")
def ink_probe(digits):
    result = run_probe([Subject("ink", ModelAdapter(nn.Identity(), outputs=_ink))], digits.test, ["rotate"],
                       {"rotate": [-45, -30, -15, 0, 15, 30, 45, 90]}, n_boot=N_BOOT, progress=False, device="cpu")
    return _table(result), result.tables["overview"].set_index("run")


@pytest.fixture(scope="module")
def image_probe(digits):
    result = run_probe([Subject("image", ModelAdapter(nn.Identity(), outputs=_image))], digits.test, ["translate"],
                       {"translate": [0, 4, -4, 8]}, n_boot=N_BOOT, progress=False, device="cpu")
    return _table(result)


def _value(table: pd.DataFrame, run: str, metric: str, magnitude) -> float:
    return float(table.loc[(run, metric, str(magnitude)), "value"])


# --- the rotation the probe applies -----------------------------------------------------------------------------


def test_the_suites_quarter_turns_are_exact_pixel_permutations(digits):
    """The suite's ``rotate`` at multiples of 90 degrees is ``torch.rot90`` exactly (centre ``(W - 1) / 2``, counter-
    clockwise on screen), so the C4 model's group is the probe's; the warp by the matrix it returns agrees to float
    rounding of the sampling grid (2.7e-6 on 28 x 28 digits)."""
    x = digits.test.float_images()[:64]
    for angle in (*QUARTER_TURNS, -180):
        out = get_transform("rotate")(x, angle)
        turned = torch.rot90(x, (angle // 90) % 4, dims=(-2, -1))
        assert torch.equal(out.images, turned), angle
        assert (apply_matrix(x, out.matrix) - turned).abs().max() < 1e-5, angle


# --- C4: the group's own rotations ------------------------------------------------------------------------------


def test_a_c4_models_pooled_output_keeps_its_decision_and_does_not_move(c4_probe):
    clean = _value(c4_probe, "c4-pooled", "accuracy", 0)
    assert clean > 0.3  # a head that reads the features, not chance
    for angle in QUARTER_TURNS:
        assert abs(_value(c4_probe, "c4-pooled", "accuracy", angle) - clean) <= 0.001, angle
        assert _value(c4_probe, "c4-pooled", "consistency", angle) == 1.0, angle
        assert _value(c4_probe, "c4-pooled", "invariance_error", angle) <= 1e-4, angle
        assert abs(_value(c4_probe, "c4-pooled", "confidence_drop", angle)) <= 1e-6, angle
        # an invariant output: the fitted map is the identity, so there is no change for it to explain
        assert _value(c4_probe, "c4-pooled", "equivariance_gain", angle) == 0.0, angle


def test_a_c4_models_fields_move_by_a_permutation_the_fitted_map_recovers(c4_probe):
    for angle in QUARTER_TURNS:
        assert _value(c4_probe, "c4-fields", "equivariance_gain", angle) >= 0.98, angle
        assert _value(c4_probe, "c4-fields", "equivariance_error", angle) <= 0.02, angle
        assert _value(c4_probe, "c4-fields", "equivariance_error_pca16", angle) <= 0.02, angle
        assert _value(c4_probe, "c4-fields", "invariance_error", angle) > 1  # they do move: no metric is blind
        # the true-class pose (each class's logit at the four quarter turns, one map per class) is permuted alike
        assert _value(c4_probe, "c4-fields", "equivariance_gain_pose", angle) >= 0.98, angle
        assert _value(c4_probe, "c4-fields", "equivariance_error_pose", angle) <= 0.02, angle
        assert _value(c4_probe, "c4-fields", "invariance_error_pose", angle) > 1, angle


def test_the_fitted_maps_of_a_c4_model_compose_like_the_group(c4_composition):
    """``M_(a+b) = M_b M_a`` for quarter turns (measured 3e-5: the ridge penalty's shrinkage), and for a quarter turn
    after any rotation ``a`` (the fields of ``r R_a x`` are the permuted fields of ``R_a x``); the fields and the
    true-class pose (per class) alike."""
    for which in ("representation", "pose"):
        for a in (-90, 90, 15, 30):
            for b in (-90, 90):
                assert c4_composition[(which, a, b)] <= 0.02, (which, a, b)


@pytest.fixture(scope="module")
def c4_lie(digits, c4):
    """The C4 model's Lie derivatives along ``rotate`` at 64 digits and at the same digits turned by 90 degrees."""
    adapter = ModelAdapter(c4, outputs=_pooled)
    split = digits.test.subset(np.arange(64))
    turned = ImageSplit(torch.rot90(split.images, 1, dims=(-2, -1)).contiguous(), split.labels)
    return lie_pass(adapter, split, "rotate"), lie_pass(adapter, turned, "rotate")


def test_the_lie_derivative_of_a_c4_invariant_output_is_c4_invariant_not_zero(c4_lie):
    """C4 is a discrete group: invariance to quarter turns says nothing about infinitesimal rotations, so the Lie
    derivative of the pooled output is not 0 (the issue's expectation cannot hold). What the group does fix: the
    derivative at ``r x`` equals the derivative at ``x`` (rotations commute), per image, to float rounding; this
    also checks that the Lie probe's tangent turns about the same centre as ``torch.rot90``."""
    here, there = c4_lie
    scale = np.abs(here.dscores).max()
    assert scale > 1e-3  # not zero: the model is not invariant to small rotations
    assert np.abs(here.dscores - there.dscores).max() <= 1e-4 * scale
    assert np.abs(here.drep - there.drep).max() <= 1e-4 * np.abs(here.drep).max()


# --- the image itself under integer translations ----------------------------------------------------------------


def test_the_image_itself_under_integer_translations_has_gain_one(image_probe):
    for shift in (4, -4, 8):
        assert _value(image_probe, "image", "equivariance_gain", shift) >= 1 - 1e-5, shift
        assert _value(image_probe, "image", "equivariance_error", shift) <= 1e-5, shift


def test_translations_of_the_image_compose_exactly(digits):
    """Shifts in one direction compose exactly (zero fill: ``S_4 S_4 = S_8`` as linear maps). Opposite shifts do
    not compose to the identity on digits whose ink leaves the frame (the sample has ink up to row 27), so they are
    not a known answer of zero-fill translation."""
    x = digits.test.float_images()
    translate = get_transform("translate")

    def pooled(images):
        return F.avg_pool2d(images, 4).flatten(1).double().numpy()

    moved = {m: pooled(translate(x, m).images) for m in (4, 8, -4, -8)}
    for a in (4, -4):
        diff, norm, _ = M.composition_terms(pooled(x), moved, a, a)
        assert np.sqrt(M.ratio(diff, norm)) <= 1e-3, a


# --- an invariant model: the amount of ink ----------------------------------------------------------------------


def test_an_ink_only_model_is_invariant_and_carries_no_magnitude(ink_probe):
    table, overview = ink_probe
    for angle in (-45, -30, -15, 15, 30, 45, 90):
        assert _value(table, "ink", "invariance_error", angle) <= 1e-3, angle  # bilinear rotation keeps the ink
        assert _value(table, "ink", "consistency", angle) == 1.0, angle
    assert _value(table, "ink", "invariance_error", 90) <= 1e-10
    assert abs(overview.loc["ink", "decodability"]) <= 0.05


def test_an_exactly_invariant_representation_has_no_gain_to_report(ink_probe):
    """Under a quarter turn the ink is unchanged but for float32 summation order (about 1e-7 of its value): the
    gain over the identity is 0 by definition (nothing moved, nothing to explain). It read -25.6 when the rounding
    of the identity map's residual was compared with the fitted map's ridge shrinkage."""
    table, _ = ink_probe
    assert _value(table, "ink", "equivariance_gain", 90) == 0.0
    row = table.loc[("ink", "equivariance_gain", "90")]
    assert (row["ci_low"], row["ci_high"]) == (0.0, 0.0)


@pytest.fixture(scope="module")
def ink_lie(digits):
    """The ink model's Lie derivatives (``lie_tables``) on the digits whose ink stays off the frame's edge (250 of the
    256; on the others ink leaves the frame under any motion, a real derivative)."""
    edge = digits.test.images.clone()
    edge[..., 1:-1, 1:-1] = 0
    inside = np.flatnonzero(edge.flatten(1).sum(1).numpy() == 0)
    lie = lie_tables([({"model": "ink", "run": "ink", "seed": 0}, ModelAdapter(nn.Identity(), outputs=_ink))],
                     digits.test.subset(inside), generators=("rotate", "translate-x", "scale"), angles=(),
                     layers=False, n_boot=N_BOOT)
    return lie.lie.set_index(["generator", "metric"])["value"]


def test_an_ink_only_models_lie_derivative_is_zero_to_float_rounding(ink_lie):
    """Rotation and translation move ink without creating any (divergence-free motion, central differences): the
    derivatives are float rounding, and with nothing moving there is no generator to fit (NaN, not a ratio of
    rounding errors). Scaling adds ink: the same measures are not blind."""
    for gen in ("rotate", "translate-x"):
        assert ink_lie[(gen, "lee_scores")] <= 1e-9, gen
        assert ink_lie[(gen, "lee_representation")] <= 1e-15, gen
        assert np.isnan(ink_lie[(gen, "elee_representation")]), gen
    assert ink_lie[("scale", "lee_scores")] > 0.01 and ink_lie[("scale", "lee_representation")] > 1


# --- between the group's rotations --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unrelated(digits, c4):
    """The readings when ``phi(Tx)`` is the representation of another digit (a seeded permutation): the baseline
    where nothing about ``x`` carries over."""
    x = digits.test.float_images()
    perm = np.random.default_rng(0).permutation(len(x))
    with torch.no_grad():
        fields = _fields(c4, x)
        rep, pred = fields["representation"].double().numpy(), fields["logits"].argmax(1).numpy()
    labels = digits.test.labels.numpy()
    return {"equivariance_error": M.equivariance_error(rep, rep[perm]),
            "equivariance_gain": M.equivariance_gain(rep, rep[perm]),
            "consistency": M.consistency(pred[perm], pred), "accuracy": M.accuracy(pred[perm], labels)}


def test_rotations_off_the_group_read_in_between(c4_probe, c4_composition, unrelated):
    """At 30 and 45 degrees the C4 model is neither exact nor unrelated: every metric reads strictly between its
    value at a quarter turn and its value on unrelated pairs. The whitened invariance error of the pooled output is
    the exception (docs/known-answers.md): it reads above the unrelated draw, as the rotation shifts
    every digit alike along low-variance directions."""
    for angle in OFF_GROUP:
        for run, metric in (("c4-fields", "equivariance_error"), ("c4-pooled", "equivariance_error")):
            assert 0.02 < _value(c4_probe, run, metric, angle) < unrelated[metric], (run, metric, angle)
        assert unrelated["equivariance_gain"] < _value(c4_probe, "c4-fields", "equivariance_gain", angle) < 0.98
        for metric, exact in (("consistency", 1.0), ("accuracy", _value(c4_probe, "c4-pooled", "accuracy", 90))):
            assert unrelated[metric] < _value(c4_probe, "c4-pooled", metric, angle) < exact, (metric, angle)
        assert _value(c4_probe, "c4-pooled", "invariance_error", angle) > 1e-2
    for a, b in ((15, 15), (15, 30), (30, 15), (30, 30)):
        assert 0.02 < c4_composition[("representation", a, b)] < 1, (a, b)


# --- the table in the reference -----------------------------------------------------------------------------------


def _doc_rows() -> list[list[str]]:
    text = REFERENCE.read_text()
    section = text.split("# Known answers", 1)[1].split("\n#", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    return rows


def _measured(c4_probe, c4_composition, ink_probe, image_probe, c4_lie, ink_lie) -> dict[str, float]:
    table, overview = ink_probe
    out = {"lee_scores c4-pooled rotate": float(M.lie_score_values(c4_lie[0].dscores).mean())}
    for gen in ("rotate", "translate-x"):
        for metric in ("lee_scores", "lee_representation"):
            out[f"{metric} ink {gen}"] = float(ink_lie[(gen, metric)])
    for angle in (90, *OFF_GROUP):
        for run, metric in (("c4-pooled", "accuracy"), ("c4-pooled", "consistency"), ("c4-pooled", "invariance_error"),
                            ("c4-fields", "equivariance_gain"), ("c4-fields", "equivariance_error"),
                            ("c4-fields", "equivariance_error_pca16"), ("c4-fields", "equivariance_gain_pose"),
                            ("c4-fields", "equivariance_error_pose"), ("plain", "equivariance_gain"),
                            ("plain", "equivariance_error"), ("plain", "invariance_error")):
            out[f"{metric} {run} {angle}"] = _value(c4_probe, run, metric, angle)
    out["accuracy c4-pooled 0"] = _value(c4_probe, "c4-pooled", "accuracy", 0)
    for (which, a, b), v in c4_composition.items():
        out[f"composition_error {'c4-fields' if which == 'representation' else 'c4-pose'} {a:g},{b:g}"] = float(v)
    for shift in (4, 8):
        out[f"equivariance_gain image {shift}"] = _value(image_probe, "image", "equivariance_gain", shift)
    out["equivariance_gain ink 90"] = _value(table, "ink", "equivariance_gain", 90)
    out["invariance_error ink 45"] = _value(table, "ink", "invariance_error", 45)
    out["decodability ink rotate"] = float(overview.loc["ink", "decodability"])
    return out


def test_the_reference_states_the_measured_values(c4_probe, c4_composition, ink_probe, image_probe, c4_lie, ink_lie):
    """Each row of the "Known answers" table names a measurement (``metric``, model, condition) and its value:
    ``0.73`` (agrees to the digits shown), or ``< 1e-4`` (a bound)."""
    measured = _measured(c4_probe, c4_composition, ink_probe, image_probe, c4_lie, ink_lie)
    rows = _doc_rows()
    assert len(rows) >= 10
    for metric, model, condition, _expected, shown in rows:
        key = f"{metric.strip('`')} {model} {condition}"
        assert key in measured, key
        value = measured[key]
        bound = re.fullmatch(r"< (\S+)", shown)
        if bound:
            assert value < float(bound.group(1)), (key, value, shown)
        else:
            decimals = len(shown.split(".")[1]) if "." in shown else 0
            assert abs(value - float(shown)) <= 0.6 * 10 ** -decimals, (key, value, shown)


# --- an e2cnn G-CNN (capsprobe.models.gcnn): the registered model, untrained ----------------------------------------


@pytest.fixture(scope="module")
def gcnn_c4():
    """An untrained, tiny ``gcnn_c4`` (regular fields 4-8-8: a 32-D representation, as ``c4-fields``)."""
    from capsprobe.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_model("gcnn_c4", fields=(4, 8, 8), hidden=16).eval()


@pytest.fixture(scope="module")
def gcnn_probe(digits, gcnn_c4):
    result = run_probe([Subject("gcnn-c4", gcnn_c4, model_name="gcnn_c4")], digits.test, ["rotate"],
                       {"rotate": [0, *QUARTER_TURNS]}, n_boot=N_BOOT, progress=False, device="cpu")
    lie = lie_tables([({"model": "gcnn_c4", "run": "gcnn-c4", "seed": 0}, adapt(gcnn_c4))], digits.test, generators=(),
                     angles=(-90, 90), layers=False, n_boot=N_BOOT)
    return _table(result), lie.composition.set_index(["which", "a", "b"])["composition_error"]


def test_the_probe_reads_the_known_answer_on_an_e2cnn_gcnn(gcnn_probe):
    """Through the probe's own ``rotate`` (``torch.rot90`` exactly at quarter turns): the decision never moves, the
    representation (fields pooled over space, not over the group) moves by a permutation the fitted map recovers,
    and the fitted maps compose like the group."""
    table, composition = gcnn_probe
    clean = _value(table, "gcnn-c4", "accuracy", 0)
    for angle in QUARTER_TURNS:
        assert abs(_value(table, "gcnn-c4", "accuracy", angle) - clean) <= 0.001, angle
        assert _value(table, "gcnn-c4", "consistency", angle) == 1.0, angle
        assert _value(table, "gcnn-c4", "equivariance_gain", angle) >= 0.98, angle
        assert _value(table, "gcnn-c4", "equivariance_error", angle) <= 0.02, angle
        assert _value(table, "gcnn-c4", "invariance_error", angle) > 1, angle  # the fields do move
    for a in (-90, 90):
        for b in (-90, 90):
            assert composition[("representation", a, b)] <= 0.02, (a, b)
