"""The routing zoo: self-routing, Efficient-CapsNet's attention routing, inverted dot-product attention routing, each
against a plainly written float64 reference; Efficient-CapsNet's parameter count; the backbone with swappable heads."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import capsprobe  # noqa: F401  # registers the models
from capsprobe.errors import InvalidInputError
from capsprobe.models import (
    BackboneHeadNet,
    CapsNet,
    adapt,
    capsule_lengths,
    create_model,
    head_costs,
    list_routings,
)
from capsprobe.models.components import get_capsule_loss
from capsprobe.models.efficient_capsnet import EfficientCapsNet
from capsprobe.models.heads import CAPSULE_HEADS, CNN_HEADS, HEADS, ResNetBackbone, _capsules
from capsprobe.models.layers import (
    attention_routing,
    efficient_squash,
    inverted_dot_product_routing,
    self_routing,
)

# --- plain references: loops over samples, parents and children, float64 --------------------------------------------


def softmax_list(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def reference_self_routing(votes, logits, acts):
    b_n, n_out, n_in, d = votes.shape
    poses = torch.zeros(b_n, n_out, d, dtype=torch.float64)
    a_out = torch.zeros(b_n, n_out, dtype=torch.float64)
    for b in range(b_n):
        c = [[0.0] * n_in for _ in range(n_out)]
        for i in range(n_in):  # each child's couplings: a softmax over the parents
            col = softmax_list([float(logits[b, j, i]) for j in range(n_out)])
            for j in range(n_out):
                c[j][i] = col[j]
        total = sum(float(acts[b, i]) for i in range(n_in))
        for j in range(n_out):
            mass = sum(c[j][i] * float(acts[b, i]) for i in range(n_in))
            a_out[b, j] = mass / total
            for i in range(n_in):
                poses[b, j] += c[j][i] * float(acts[b, i]) / mass * votes[b, j, i]
    return poses, a_out


def reference_attention(votes, prior):
    b_n, n_out, n_in, d = votes.shape
    out = torch.zeros(b_n, n_out, d, dtype=torch.float64)
    for b in range(b_n):
        logit = [[0.0] * n_in for _ in range(n_out)]
        for j in range(n_out):
            u = votes[b, j]
            a = u @ u.T / math.sqrt(d)  # the N_in x N_in self-attention matrix, formed in full
            for i in range(n_in):
                logit[j][i] = float(a[i].sum())
        for i in range(n_in):
            col = softmax_list([logit[j][i] for j in range(n_out)])
            for j in range(n_out):
                out[b, j] += (col[j] + float(prior[j, i])) * votes[b, j, i]
    return out


def plain_layer_norm(v, eps=1e-5):
    mean = sum(float(x) for x in v) / len(v)
    var = sum((float(x) - mean) ** 2 for x in v) / len(v)
    return torch.tensor([(float(x) - mean) / math.sqrt(var + eps) for x in v], dtype=torch.float64)


def reference_inverted(votes, iters):
    b_n, n_out, n_in, d = votes.shape
    out = torch.zeros(b_n, n_out, d, dtype=torch.float64)
    for b in range(b_n):
        p = [torch.zeros(d, dtype=torch.float64) for _ in range(n_out)]
        for t in range(iters):
            r = [[1.0 / n_out] * n_in for _ in range(n_out)]
            if t > 0:
                for i in range(n_in):
                    col = softmax_list([float(p[j] @ votes[b, j, i]) / math.sqrt(d) for j in range(n_out)])
                    for j in range(n_out):
                        r[j][i] = col[j]
            p = [plain_layer_norm(sum(r[j][i] * votes[b, j, i] for i in range(n_in))) for j in range(n_out)]
        for j in range(n_out):
            out[b, j] = p[j]
    return out


def _votes(b=3, n_out=4, n_in=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n_out, n_in, d, generator=g, dtype=torch.float64)


def test_self_routing_matches_the_plain_reference():
    votes = _votes()
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 7, generator=g, dtype=torch.float64) * 2
    acts = torch.rand(3, 7, generator=g, dtype=torch.float64)
    poses, a_out = self_routing(votes, logits, acts)
    ref_poses, ref_a = reference_self_routing(votes, logits, acts)
    assert (poses - ref_poses).abs().max() < 1e-10 and (a_out - ref_a).abs().max() < 1e-10
    assert torch.allclose(a_out.sum(1), torch.ones(3, dtype=torch.float64))  # the parents share the activation
    _, only_a = self_routing(None, logits, acts)
    assert torch.equal(only_a, a_out)


def test_self_routing_weights_children_by_their_activation():
    votes = _votes(b=1, n_out=2, n_in=2, d=3)
    logits = torch.zeros(1, 2, 2, dtype=torch.float64)
    acts = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # the second child is absent
    poses, _ = self_routing(votes, logits, acts)
    assert torch.allclose(poses[0], votes[0, :, 0])  # the parent's pose is the present child's vote alone


def test_attention_routing_matches_the_full_attention_matrix():
    votes = _votes()
    prior = torch.randn(4, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.1
    out = attention_routing(votes, prior)
    assert (out - reference_attention(votes, prior)).abs().max() < 1e-12
    assert (attention_routing(votes) - reference_attention(votes, torch.zeros(4, 7))).abs().max() < 1e-12


@pytest.mark.parametrize("iters", [1, 2, 3])
def test_inverted_routing_matches_the_plain_reference(iters):
    votes = _votes()
    norm = torch.nn.LayerNorm(5, elementwise_affine=False).double()
    out = inverted_dot_product_routing(votes, iters, norm)
    assert (out - reference_inverted(votes, iters)).abs().max() < 1e-10


def test_inverted_routing_iterations_change_the_poses_and_are_recorded():
    votes = _votes()
    norm = torch.nn.LayerNorm(5, elementwise_affine=False).double()
    record: list[torch.Tensor] = []
    out = inverted_dot_product_routing(votes, 3, norm, record=record)
    assert len(record) == 3 and torch.equal(record[-1], out)
    assert (record[0] - record[1]).abs().max() > 1e-3
    with pytest.raises(InvalidInputError):
        inverted_dot_product_routing(votes, 0, norm)


@pytest.mark.parametrize("routing", ["self", "attention", "inverted"])
def test_routings_are_batch_independent(routing):
    votes = _votes(b=4)
    logits = torch.randn(4, 4, 7, dtype=torch.float64)
    acts = torch.rand(4, 7, dtype=torch.float64)
    norm = torch.nn.LayerNorm(5).double()

    def run(sl):
        if routing == "self":
            return self_routing(votes[sl], logits[sl], acts[sl])[0]
        if routing == "attention":
            return attention_routing(votes[sl])
        return inverted_dot_product_routing(votes[sl], 3, norm)

    whole = run(slice(None))
    alone = torch.cat([run(slice(i, i + 1)) for i in range(4)])
    assert (whole - alone).abs().max() < 1e-12


def test_routing_input_checks():
    with pytest.raises(InvalidInputError):
        attention_routing(torch.zeros(2, 3, 4))
    with pytest.raises(InvalidInputError):
        attention_routing(torch.zeros(2, 3, 4, 5), prior=torch.zeros(4, 3))
    with pytest.raises(InvalidInputError):
        self_routing(torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 5), torch.zeros(2, 4))


def test_efficient_squash_values():
    s = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.0], [1e-4, 0.0]], requires_grad=True)
    v = efficient_squash(s)
    lengths = v.norm(dim=-1)
    assert abs(lengths[0].item() - (1 - math.exp(-5))) < 1e-6
    assert abs(lengths[1].item() - (1 - math.exp(-1))) < 1e-6
    assert lengths[2].item() == 0.0
    assert abs(lengths[3].item() / 1e-4 - 1) < 1e-3  # slope 1 at zero (the squash of Sabour et al. has slope 0)
    assert torch.allclose(v[0] / lengths[0], torch.tensor([0.6, 0.8]))  # direction kept
    v.sum().backward()
    assert torch.isfinite(s.grad).all()


def test_the_registry_holds_attention_and_a_capsnet_routes_with_it():
    assert {"dynamic", "none", "attention"} <= set(list_routings())
    torch.manual_seed(0)
    model = CapsNet(conv_channels=16, primary_types=4, routing="attention", decoder=False).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        lengths = model(x)
        poses = model.forward_features(x)
    assert lengths.shape == (3, 10) and torch.all((lengths > 0) & (lengths < 1))
    assert torch.allclose(lengths, capsule_lengths(poses)) and lengths.std() > 0


# --- the nll loss --------------------------------------------------------------------------------------------------


def test_nll_loss_is_cross_entropy_on_a_softmax_and_scale_free():
    nll = get_capsule_loss("nll")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    assert torch.allclose(nll(logits.softmax(-1), targets), F.cross_entropy(logits, targets), atol=1e-5)
    scores = torch.rand(6, 5, generator=g)
    assert torch.allclose(nll(scores, targets), nll(7 * scores, targets), atol=1e-6)  # the share, not the value
    share = scores / scores.sum(1, keepdim=True)
    assert torch.allclose(nll(scores, targets), -share[torch.arange(6), targets].log().mean(), atol=1e-6)
    hot = F.one_hot(targets, 5).float()
    assert torch.allclose(nll(scores, hot), nll(scores, targets), atol=1e-6)


# --- Efficient-CapsNet ---------------------------------------------------------------------------------------------


def test_efficient_capsnet_has_the_papers_parameter_count():
    model = create_model("efficient_capsnet", decoder=False)
    assert sum(p.numel() for p in model.parameters()) == 161_824  # Mazzia et al. 2021, table of MNIST results
    assert sum(p.numel() for p in create_model("efficient_capsnet").parameters()) == 1_573_168
    assert model.digits.weight.numel() + model.digits.prior.numel() == 20_640


def test_efficient_capsnet_shapes_batch_independence_and_probe_face():
    torch.manual_seed(0)
    model = EfficientCapsNet().eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        poses = model.forward_features(x)
        alone = torch.cat([model.forward_features(x[i:i + 1]) for i in range(4)])
        out = adapt(model).outputs(x)
        recon = model.decode(poses)
    assert poses.shape == (4, 10, 16) and (poses - alone).abs().max() < 1e-5
    assert out.poses.shape == (4, 10, 16) and torch.allclose(out.scores, poses.norm(dim=-1), atol=1e-5)
    assert recon.shape == (4, 1, 28, 28) and adapt(model).has_poses and adapt(model).can_decode
    assert model.primary_capsules(x).norm(dim=-1).max() < 1  # squashed
    with pytest.raises(InvalidInputError):
        model(torch.rand(2, 1, 32, 32))
    with pytest.raises(InvalidInputError):
        EfficientCapsNet(img_size=10)  # 10 -> 6 -> 4 -> 2 -> 0
    assert EfficientCapsNet(img_size=11, decoder=False)(torch.rand(2, 1, 11, 11)).shape == (2, 10)


def test_efficient_capsnet_primary_capsules_group_consecutive_channels():
    model = EfficientCapsNet(decoder=False).eval()
    torch.manual_seed(0)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        raw = model.primary(model.stem(x)).flatten(1)
        caps = model.primary_capsules(x)
    assert torch.allclose(caps[:, 3], efficient_squash(raw[:, 24:32]))  # capsule 3 is channels 24..31


# --- the backbone and its heads ------------------------------------------------------------------------------------


def _head(head, **kw):
    opts = dict(planes=8, blocks=(1, 1, 1), caps_types=2, pose_dim=16 if head == "em" else 4, out_dim=4)
    opts.update(kw)
    return create_model(f"backbone_head_{head}", **opts)


def test_resnet20_backbone_has_he_et_al_parameter_count():
    # He et al. (2016), table 6: ResNet-20 on CIFAR-10, 0.27M parameters (269,722 with a 64 -> 10 classifier)
    model = create_model("backbone_head_avg", in_chans=3, img_size=32, planes=16, blocks=(3, 3, 3))
    assert sum(p.numel() for p in model.parameters()) == 269_722
    assert ResNetBackbone(3, 16)(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 8, 8)
    assert ResNetBackbone(1, 16)(torch.zeros(1, 1, 28, 28)).shape == (1, 64, 7, 7)


def test_primary_capsule_layout():
    maps = torch.zeros(1, 2 * 3, 2, 2)  # A=2 types of D=3 at 2x2 positions
    maps[0, 0 * 3 + 2, 1, 0] = 1.0  # type 0, component 2, row 1, column 0 (channel 2: type-major, not component-major)
    maps[0, 1 * 3 + 0, 0, 1] = 2.0  # type 1, component 0, row 0, column 1 (channel 3)
    caps = _capsules(maps, 2)
    assert caps.shape == (1, 8, 3)
    assert caps.nonzero().tolist() == [[0, (0 * 2 + 1) * 2 + 1, 0], [0, (1 * 2 + 0) * 2 + 0, 2]]
    assert caps[0, 3, 0] == 2.0 and caps[0, 4, 2] == 1.0  # capsule (row * w + col) * A + type


@pytest.mark.parametrize("head", HEADS)
def test_every_head_has_the_probe_face_and_is_batch_independent(head):
    torch.manual_seed(0)
    model = _head(head).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        out = adapt(model).outputs(x)
        alone = torch.cat([adapt(model).outputs(x[i:i + 1]).scores for i in range(4)])
        direct = model(x)
    assert out.scores.shape == (4, 10) and (out.scores - alone).abs().max() < 1e-5
    assert adapt(model).has_poses == (head in CAPSULE_HEADS) and not adapt(model).can_decode
    if head in CAPSULE_HEADS:
        assert out.poses is not None and out.poses.shape == (4, 10, 16 if head == "em" else 4)
        assert torch.allclose(direct, out.scores, atol=1e-6)
        assert out.representation.shape == (4, 10 * out.poses.shape[-1])
    else:
        assert out.poses is None and torch.allclose(out.logits, direct, atol=1e-6)
        assert torch.allclose(out.scores.sum(1), torch.ones(4), atol=1e-5)
    assert model.pretrained_cfg["architecture"] == f"backbone_head_{head}"


def test_scores_of_the_heads_mean_what_their_papers_say():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        # self-routing starts with a zero routing network: uniform couplings, every class 1/K
        assert torch.allclose(_head("self").eval()(x), torch.full((3, 10), 0.1), atol=1e-6)
        poses, scores = _head("dynamic").eval().capsule_head(_head("dynamic").eval().forward_features(x))
        assert torch.all(scores < 1)
        inverted = _head("inverted").eval()
        assert torch.allclose(inverted(x).sum(1), torch.ones(3), atol=1e-5)  # a softmax
        em = _head("em").eval()
        assert torch.all((em(x) > 0) & (em(x) < 1))  # sigmoid activations


def test_head_costs_count_the_head_apart_from_the_backbone():
    dyn = _head("dynamic")
    costs = head_costs(dyn)
    n_in = 2 * 7 * 7
    # conv_pose 3x3 from 32 channels to A D = 8 (no bias) + its batch norm, then one 4x4 matrix per (input, class)
    assert costs["head_params"] == 32 * 9 * 8 + 2 * 8 + 10 * n_in * 4 * 4
    assert costs["backbone_params"] == sum(p.numel() for p in dyn.backbone.parameters())
    assert costs["flops"] > head_costs(_head("avg"))["flops"] > 0
    wide = head_costs(_head("avg", hidden=32))
    assert wide["head_params"] == 32 * 32 + 32 + 32 * 10 + 10


def test_head_options_are_checked():
    with pytest.raises(InvalidInputError):
        BackboneHeadNet(head="nope")
    with pytest.raises(InvalidInputError):
        _head("em", pose_dim=9)
    with pytest.raises(InvalidInputError):
        _head("dynamic", hidden=4)
    with pytest.raises(InvalidInputError):
        _head("avg", num_iters=3)
    with pytest.raises(InvalidInputError):
        create_model("backbone_head_avg", head="max")
    with pytest.raises(InvalidInputError):
        _head("avg")(torch.rand(1, 1, 32, 32))
    assert set(timm.list_models("backbone_head_*")) == {f"backbone_head_{h}" for h in HEADS}
    assert set(CNN_HEADS) | set(CAPSULE_HEADS) == set(HEADS)


@pytest.mark.trains
@pytest.mark.parametrize("head", HEADS)
def test_every_head_learns_a_small_batch(head):
    from capsprobe.models import capsule_loss_of

    torch.manual_seed(0)
    model = _head(head)
    x = torch.rand(16, 1, 28, 28)
    y = torch.arange(16) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    adapter = adapt(model)

    def loss_of():
        out = adapter.outputs(x)
        if adapter.has_poses:
            return capsule_loss_of(model)(out.scores, y)
        return F.cross_entropy(out.logits, y)

    first = loss_of().item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_of()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    assert loss_of().item() < 0.85 * first  # EM's sigmoid activations spread slowly (its 0.01 inverse temperature)


@pytest.mark.parametrize("size", ["quick", "quick-affnist", "quick-viewpoint"])
def test_routing_experiment_matches_the_heads_parameters(size):
    from pathlib import Path

    from capsprobe.data import get_spec
    from capsprobe.experiment import load_experiment

    exp = load_experiment(Path(__file__).resolve().parents[2] / "experiments" / "routing.toml", size)
    spec = get_spec(exp.dataset)
    params = {}
    for m in exp.models:
        model = create_model(m.model, in_chans=spec.in_chans, img_size=spec.img_size, **m.options)
        params[model.head] = sum(p.numel() for p in model.parameters())
    assert set(params) == set(HEADS)
    ref = params["dynamic"]
    for head, n in params.items():  # within 13% of dynamic routing's (self-routing's routing network is the 13%)
        assert abs(n / ref - 1) <= 0.135, (head, n, ref)


def test_model_costs_counts_multiply_adds_twice_and_restores_the_mode():
    from capsprobe.models import model_costs

    conv = torch.nn.Conv2d(1, 2, 3)
    conv.train()
    costs = model_costs(conv, (1, 5, 5))
    assert costs == {"params": 2 * 9 + 2, "flops": 2 * (2 * 3 * 3) * 9}  # 18 outputs x 9 multiply-adds x 2
    assert conv.training
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    assert model_costs(lin, (1, 2, 2))["flops"] == 2 * 4 * 3


@pytest.mark.parametrize("head", ["dynamic", "em", "self", "attention", "inverted"])
def test_head_votes_are_each_pairs_own_transformation(head):
    torch.manual_seed(0)
    model = _head(head).eval()
    poses = torch.randn(2, model.num_in, model.pose_dim)
    votes = model.votes(poses)
    assert votes.shape == (2, 10, model.num_in, model.out_dim)
    for b, j, i in ((0, 3, 5), (1, 9, model.num_in - 1)):
        if head == "em":  # the pose matrix times the pair's 4x4 transformation: M_i W_ij
            want = (poses[b, i].view(4, 4) @ model.weight[j, i]).flatten()
        else:  # the pose vector times the pair's matrix: u_i W_ij
            want = poses[b, i] @ model.weight[j, i]
        assert torch.allclose(votes[b, j, i], want, atol=1e-5)


def test_the_registrys_attention_routing_is_the_layer_then_the_activation():
    from capsprobe.models import get_routing
    from capsprobe.models.layers import squash

    votes = _votes()
    record: list[torch.Tensor] = []
    out = get_routing("attention")(votes, 3, False, squash, record)
    ref = squash(reference_attention(votes, torch.zeros(4, 7)))
    assert (out - ref).abs().max() < 1e-12 and len(record) == 1


def test_a_head_registered_outside_heads_py_is_built_and_probed():
    from capsprobe.models.heads import Head, register_head, unregister_head
    from capsprobe.models.layers import squash

    def build(model, width):  # a capsule head: squashed primaries, one matrix per pair, a single mean vote
        model.conv_pose = torch.nn.Conv2d(width, model.caps_types * model.pose_dim, 1)
        model.weight = torch.nn.Parameter(torch.randn(model.num_classes, model.num_in, model.pose_dim, model.out_dim))
        return model.num_classes * model.out_dim

    def route(model, votes, poses, act):
        v = squash(votes.mean(dim=2))
        return v, v.norm(dim=-1)

    register_head(Head("toy", build, primary=lambda m, raw, maps: (squash(raw), None), route=route,
                       classifier="conv_pose"))
    try:
        model = BackboneHeadNet(head="toy", planes=4, blocks=(1, 1, 1), caps_types=2, pose_dim=4, out_dim=3).eval()
        with torch.no_grad():
            out = adapt(model).outputs(torch.rand(2, 1, 28, 28))
        assert out.poses is not None and out.poses.shape == (2, 10, 3) and out.scores.shape == (2, 10)
        with pytest.raises(InvalidInputError, match="no routing iterations"):
            BackboneHeadNet(head="toy", num_iters=2)
    finally:
        unregister_head("toy")
    with pytest.raises(InvalidInputError, match="unknown head 'toy'"):
        BackboneHeadNet(head="toy")


@pytest.mark.parametrize("head", CAPSULE_HEADS)
def test_a_head_says_whether_its_training_loss_reaches_its_poses(head):
    """The vote matrices make the class poses: after one step of the training objective they have a gradient exactly
    where the head says its poses are trained. ``self`` scores by the routed activations, which never read the votes,
    and has no decoder: its poses stay untrained projections, and the probe leaves them out."""
    from capsprobe.training.loop import Objective

    model = _head(head, img_size=8).train()
    loss, _ = Objective(model)(torch.rand(2, 1, 8, 8), torch.arange(2))
    loss.backward()
    reached = model.weight.grad is not None and bool(model.weight.grad.abs().sum() > 0)
    assert model.poses_trained is reached is (head != "self")
