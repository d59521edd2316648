"""FG-SBIR (the stronger fine-grained baseline): losses against hand computations, exact EMA, the
distillation token in the modified PVT, save/load, the paired loader, Acc@q, and the training method."""

import json
import math
import random

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import PvtV2Config

import hf_sbir  # noqa: F401  (registers the Auto classes)
from hf_sbir.data.fg_paired import (
    UnmatchedSketchError,
    detect_fg_layout,
    fine_grained_split,
    load_fg_paired,
    load_unlabelled_photos,
)
from hf_sbir.losses.fg_sbir import (
    contextual_distillation_loss,
    cross_modal_triplet_loss,
    euclidean_distance,
    fg_sbir_loss,
    nearest_neighbour_mask,
    neighbour_log_distribution,
    neighbour_mask,
    pairwise_distances,
    photo_intra_modal_triplet_loss,
    sketch_intra_modal_triplet_loss,
)
from hf_sbir.models.fg_sbir import FGSBIRConfig, FGSBIRModel
from hf_sbir.training import TrainConfig
from hf_sbir.training.methods import get_method_class
from hf_sbir.retrieval.evaluation import fine_grained_accuracy
from hf_sbir.training.methods.fg_sbir import ModelEMA, structural_augment


def tiny_pvt_config(**overrides):
    kwargs = dict(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], sr_ratios=[2, 1], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], image_size=32,
    )
    kwargs.update(overrides)
    return PvtV2Config(**kwargs)


def tiny_fg_config(**overrides):
    return FGSBIRConfig(backbone_config=tiny_pvt_config(), embedding_dim=16, **overrides)


# -- data helpers -------------------------------------------------------------------------------------
def _photo(seed: int) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", (40, 32), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x, y = rng.randrange(30), rng.randrange(22)
        draw.rectangle([x, y, x + 8, y + 8], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def _sketch(seed: int) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("L", (32, 32), 255)
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        draw.line([rng.randrange(32) for _ in range(4)], fill=0, width=2)
    return img


def make_shoe_v2_tree(root, n_train=5, n_test=4, sketches_per_photo=(1, 2)):
    """QMUL-style tree: trainA/testA sketches `<stem>_<n>.png`, trainB/testB photos `<stem>.jpg`."""
    for split, count, offset in (("train", n_train, 0), ("test", n_test, 100)):
        (root / f"{split}A").mkdir(parents=True)
        (root / f"{split}B").mkdir(parents=True)
        for i in range(count):
            stem = f"{2429245000 + offset + i}"
            _photo(offset + i).save(root / f"{split}B" / f"{stem}.jpg")
            for n in range(1, sketches_per_photo[i % len(sketches_per_photo)] + 1):
                _sketch(1000 * (offset + i) + n).save(root / f"{split}A" / f"{stem}_{n}.png")
    return root


# -- losses ------------------------------------------------------------------------------------------
def test_triplet_losses_match_hand_computation():
    anchor = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    positive = torch.tensor([[3.0, 4.0], [1.0, 1.5]])  # d = 5, 0.5
    negative = torch.tensor([[0.0, 1.0], [4.0, 5.0]])  # d = 1, 5
    m = 0.2
    # row 0: max(0, 0.2 + 5 - 1) = 4.2; row 1: max(0, 0.2 + 0.5 - 5) = 0
    expected = (4.2 + 0.0) / 2
    for loss_fn in (cross_modal_triplet_loss, photo_intra_modal_triplet_loss, sketch_intra_modal_triplet_loss):
        assert loss_fn(anchor, positive, negative, m).item() == pytest.approx(expected, abs=1e-6)

    s, s_pos, s_neg = anchor, torch.tensor([[0.0, 2.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 4.0]])
    p, p_aug, p_neg = positive, torch.tensor([[3.0, 4.0], [1.0, 1.0]]), negative
    losses = fg_sbir_loss(
        s, s_pos, s_neg, p, p_aug, p_neg, cross_modal_margin=0.2, photo_margin=0.3, sketch_margin=0.5,
        photo_intra_weight=0.4, sketch_intra_weight=2.0,
    )
    cm = expected
    # photo anchor p: row 0: d(p, p_aug) = 0 (clamped to 1e-6), d(p, p_neg) = |(3,3)| = 4.2426 -> max(0, 0.3 - 4.24) = 0;
    # row 1: d = 0.5, d((1,1.5),(4,5)) = sqrt(9 + 12.25) = 4.6098 -> 0
    pi = 0.0
    # sketch: row 0: 0.5 + 2 - 1 = 1.5; row 1: 0.5 + 0 (1e-6) - 3 < 0 -> 0
    si = 1.5 / 2
    assert losses.cross_modal.item() == pytest.approx(cm, abs=1e-6)
    assert losses.photo_intra.item() == pytest.approx(pi, abs=1e-6)
    assert losses.sketch_intra.item() == pytest.approx(si, abs=1e-5)
    assert losses.total.item() == pytest.approx(cm + 0.4 * pi + 2.0 * si, abs=1e-5)
    with_kd = fg_sbir_loss(s, s_pos, s_neg, p, p_aug, p_neg, distillation=torch.tensor(0.5), distillation_weight=3.0)
    assert with_kd.total.item() == pytest.approx(with_kd.cross_modal.item() + with_kd.photo_intra.item() + with_kd.sketch_intra.item() + 1.5, abs=1e-6)
    assert set(with_kd.as_floats()) == {"loss", "loss_cross_modal", "loss_photo_intra", "loss_sketch_intra", "loss_distillation"}


def _kd_by_hand(student, teacher, tau, k=None):
    """Independent scalar implementation: mean_i KL(P_T_i || P_S_i) over the k teacher-nearest neighbours."""
    n = len(student)
    dist = lambda xs, i, j: math.dist(xs[i], xs[j])  # noqa: E731
    total = 0.0
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: dist(teacher, i, j))
        others = others[:k] if k else others
        zt = sum(math.exp(-dist(teacher, i, j) / tau) for j in others)
        zs = sum(math.exp(-dist(student, i, j) / tau) for j in others)
        for j in others:
            pt = math.exp(-dist(teacher, i, j) / tau) / zt
            ps = math.exp(-dist(student, i, j) / tau) / zs
            total += pt * math.log(pt / ps)
    return total / n


def test_distillation_term_zero_for_identical_distances_and_matches_hand_computation():
    torch.manual_seed(0)
    teacher = torch.randn(6, 5)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5))
    student = (teacher @ rotation + 3.0).requires_grad_()  # same pairwise distances, other coordinates
    assert contextual_distillation_loss(student, teacher, 0.1).abs().item() < 1e-5
    assert contextual_distillation_loss(student, teacher, 0.1, num_neighbours=2).abs().item() < 1e-5
    # A worked example on a line: teacher 0, 1, 3; student 0, 2, 3.
    t, s = [[0.0], [1.0], [3.0]], [[0.0], [2.0], [3.0]]
    for k in (None, 1):
        got = contextual_distillation_loss(torch.tensor(s), torch.tensor(t), 0.5, num_neighbours=k).item()
        assert got == pytest.approx(_kd_by_hand(s, t, 0.5, k), rel=1e-5)
    other = torch.randn(6, 5, requires_grad=True)
    loss = contextual_distillation_loss(other, teacher, 0.1, num_neighbours=3)
    assert loss.item() > 0
    loss.backward()
    assert torch.isfinite(other.grad).all() and other.grad.abs().sum() > 0


# An example where every term is active and differs from the others: 4 training pairs of 3-D embeddings, each
# group drawn separately (seed 3), distances below 1 (as between L2-normalised embeddings). The expected values
# come from a scalar implementation of eqs. 1-3 with the roles named.
FG_GROUPS = ("sketch", "sketch_positive", "sketch_negative", "photo", "photo_augmented", "photo_negative")


def _fg_example():
    g = torch.Generator().manual_seed(3)
    return {name: (torch.rand(4, 3, generator=g) * 0.6).double() for name in FG_GROUPS}


def _triplet_by_hand(anchor, positive, negative, margin):
    a, p, n = anchor.tolist(), positive.tolist(), negative.tolist()
    return sum(max(0.0, margin + math.dist(a[i], p[i]) - math.dist(a[i], n[i])) for i in range(len(a))) / len(a)


def _fg_terms_by_hand(x, m_cm, m_p, m_s):
    return (
        _triplet_by_hand(x["sketch"], x["photo"], x["photo_negative"], m_cm),  # eq. 1: sketch -> its photo vs another photo
        _triplet_by_hand(x["photo"], x["photo_augmented"], x["photo_negative"], m_p),  # eq. 2: photo -> its augmented view
        _triplet_by_hand(x["sketch"], x["sketch_positive"], x["sketch_negative"], m_s),  # eq. 3: sketch -> same photo's sketch
    )


def test_eq1_to_eq5_each_term_follows_its_equation_with_the_right_roles():
    x = _fg_example()
    args = [x[name] for name in FG_GROUPS]
    cm, pi, si = _fg_terms_by_hand(x, 0.25, 0.3, 0.5)
    assert min(cm, pi, si) > 0 and len({round(v, 6) for v in (cm, pi, si)}) == 3  # every term is seen
    losses = fg_sbir_loss(*args, cross_modal_margin=0.25, photo_margin=0.3, sketch_margin=0.5, photo_intra_weight=0.4, sketch_intra_weight=2.0)
    assert losses.cross_modal.item() == pytest.approx(cm, rel=1e-9)
    assert losses.photo_intra.item() == pytest.approx(pi, rel=1e-9)
    assert losses.sketch_intra.item() == pytest.approx(si, rel=1e-9)
    assert losses.total.item() == pytest.approx(cm + 0.4 * pi + 2.0 * si, rel=1e-9)
    assert losses.distillation is None and "loss_distillation" not in losses.as_floats()
    # Defaults: margins 0.2, lambda1 = lambda2 = lambda_KD = 1 (FGSBIRConfig's documented defaults).
    cm, pi, si = _fg_terms_by_hand(x, 0.2, 0.2, 0.2)
    losses = fg_sbir_loss(*args, distillation=torch.tensor(0.25, dtype=torch.float64))
    assert (losses.cross_modal.item(), losses.photo_intra.item(), losses.sketch_intra.item()) == pytest.approx((cm, pi, si), rel=1e-9)
    assert losses.total.item() == pytest.approx(cm + pi + si + 0.25, rel=1e-9)
    assert losses.as_floats() == pytest.approx(
        {"loss": cm + pi + si + 0.25, "loss_cross_modal": cm, "loss_photo_intra": pi, "loss_sketch_intra": si, "loss_distillation": 0.25}, rel=1e-9
    )


def test_distances_are_exact_below_one_with_a_zero_diagonal_and_a_finite_gradient_at_zero():
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.3, 0.4], [1.0, 1.0], [2.0, 3.0]])
    assert euclidean_distance(a, b).tolist() == pytest.approx([0.5, 1e-6, 3.0], rel=1e-6)  # d = 0 is clamped to 1e-6
    x = torch.tensor([[0.0, 0.0], [0.3, 0.4], [3.0, 4.0]], requires_grad=True)
    expected = [[0.0, 0.5, 5.0], [0.5, 0.0, math.dist([0.3, 0.4], [3.0, 4.0])], [5.0, math.dist([0.3, 0.4], [3.0, 4.0]), 0.0]]
    distances = pairwise_distances(x)
    assert distances.tolist() == [pytest.approx(row, rel=1e-6) for row in expected]
    assert torch.equal(distances.diagonal(), torch.zeros(3))
    distances.sum().backward()
    assert torch.isfinite(x.grad).all()
    same = torch.ones(2, 2, requires_grad=True)
    euclidean_distance(same, torch.ones(2, 2)).sum().backward()
    assert torch.isfinite(same.grad).all()


def test_neighbour_distributions_and_masks_on_a_hand_example():
    # 4 points on a line at 0, 1, 3, 7: each row's nearest other points are unambiguous.
    d = pairwise_distances(torch.tensor([[0.0], [1.0], [3.0], [7.0]]))
    nearest = nearest_neighbour_mask(d, 2)
    assert nearest.tolist() == [
        [False, True, True, False],  # 0: 1 and 3
        [True, False, True, False],  # 1: 0 and 3
        [True, True, False, False],  # 3: 1 and 0
        [False, True, True, False],  # 7: 3 and 1
    ]
    # k >= N - 1 neighbours: every other sample (never the sample itself).
    for k in (None, 3, 4, 10):
        mask = nearest_neighbour_mask(d, k)
        assert mask is None or torch.equal(mask, ~torch.eye(4, dtype=torch.bool)), k
    keep = torch.tensor([[True, True, False, True]] * 4)
    mask = neighbour_mask(4, keep)
    assert mask.tolist() == [[False, True, False, True], [True, False, False, True], [True, True, False, True], [True, True, False, False]]
    log_p = neighbour_log_distribution(d, 2.0, mask)
    for i in range(4):
        neighbours = [j for j in range(4) if mask[i, j]]
        z = sum(math.exp(-d[i, j].item() / 2.0) for j in neighbours)
        for j in range(4):
            expected = math.log(math.exp(-d[i, j].item() / 2.0) / z) if j in neighbours else 0.0  # outside the mask: 0
            assert log_p[i, j].item() == pytest.approx(expected, abs=1e-6), (i, j)


def test_distillation_matches_the_hand_computation_with_several_neighbours():
    # 5 samples, so each row has up to 4 neighbours (with 2, P and its mirror image give the same KL).
    teacher = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.5], [3.0, 1.0], [1.5, 4.5]]
    student = [[0.0, 0.5], [2.0, 0.0], [0.5, 1.0], [2.5, 2.0], [1.0, 3.0]]
    for k in (None, 2, 3):
        got = contextual_distillation_loss(torch.tensor(student), torch.tensor(teacher), 0.7, num_neighbours=k).item()
        assert got == pytest.approx(_kd_by_hand(student, teacher, 0.7, k), rel=1e-5), k
    # The loss is computed in the student's precision, whatever the teacher's.
    assert contextual_distillation_loss(torch.tensor(student), torch.tensor(teacher, dtype=torch.float64), 0.7).dtype == torch.float32


def test_distillation_of_fewer_than_two_samples_is_zero_and_errors_are_one_line():
    one = torch.randn(1, 4, requires_grad=True)
    loss = contextual_distillation_loss(one, torch.randn(1, 3), 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(one.grad, torch.zeros(1, 4))
    with pytest.raises(ValueError) as error:
        contextual_distillation_loss(torch.zeros(3, 5), torch.zeros(2, 4), 0.1)
    assert str(error.value) == "student and teacher need the same samples; got 3 and 2 rows."


def test_fg_losses_warn_about_nothing():
    """No warning per training step: every softmax names its axis."""
    import warnings

    x = _fg_example()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kd = contextual_distillation_loss(x["sketch"], x["photo"], 0.1, num_neighbours=2)
        fg_sbir_loss(*[x[name] for name in FG_GROUPS], distillation=kd).total.item()


def test_losses_stay_on_the_device_of_their_inputs():
    """Every mask is built on the inputs' device. The meta device stands in for a GPU (none in CI): like CUDA, it
    refuses to combine with a CPU tensor, so a mask made on the CPU would fail here as it would in training."""
    x = {name: t.float().to("meta") for name, t in _fg_example().items()}
    assert pairwise_distances(x["photo"]).device.type == "meta"
    for k in (None, 2):
        kd = contextual_distillation_loss(x["sketch"], x["photo"], 0.1, num_neighbours=k)
        assert kd.device.type == "meta" and kd.shape == ()
    assert fg_sbir_loss(*[x[name] for name in FG_GROUPS], distillation=kd).total.device.type == "meta"

def test_loss_module_splits_the_groups_and_sums_the_three_distillation_terms():
    from hf_sbir.losses.fg_sbir import FG_BATCH_GROUPS, FGSBIRLoss
    from hf_sbir.models.fg_sbir.modeling_fg_sbir import FGSBIROutput

    x = _fg_example()
    g = torch.Generator().manual_seed(4)
    x["unlabelled"] = torch.rand(5, 3, generator=g).double()  # a group of another size (k = 2 of its 4 others)
    student = {name: torch.rand(len(x[name]), 3, generator=g).double() for name in FG_BATCH_GROUPS}
    teacher = {"photo": torch.rand(4, 2, generator=g).double(), "unlabelled": torch.rand(5, 2, generator=g).double()}
    config = tiny_fg_config(cross_modal_margin=0.25, photo_margin=0.3, sketch_margin=0.5, photo_intra_weight=0.4,
                            sketch_intra_weight=2.0, distillation_weight=0.5, distillation_temperature=0.7, distillation_neighbours=2)
    sizes = {name: len(x[name]) for name in FG_BATCH_GROUPS}
    output = FGSBIROutput(embeddings=torch.cat([x[n] for n in FG_BATCH_GROUPS]),
                          distillation_embeddings=torch.cat([student[n] for n in FG_BATCH_GROUPS]))
    cm, pi, si = _fg_terms_by_hand(x, 0.25, 0.3, 0.5)

    def kd(s, t):
        return _kd_by_hand(student[s].tolist(), teacher[t].tolist(), 0.7, 2)

    # L_KD = (i) unlabelled vs the teacher's unlabelled + (ii) photos and (iii) sketches vs the teacher's photos.
    expected_kd = kd("unlabelled", "unlabelled") + kd("photo", "photo") + kd("sketch", "photo")
    losses = FGSBIRLoss(config)(output, sizes, teacher)
    assert (losses.cross_modal.item(), losses.photo_intra.item(), losses.sketch_intra.item()) == pytest.approx((cm, pi, si), rel=1e-9)
    assert losses.distillation.item() == pytest.approx(expected_kd, rel=1e-6)
    assert losses.total.item() == pytest.approx(cm + 0.4 * pi + 2.0 * si + 0.5 * expected_kd, rel=1e-6)
    # Without unlabelled photos (the group is optional) and without a teacher.
    del sizes["unlabelled"], teacher["unlabelled"]
    output = FGSBIROutput(embeddings=torch.cat([x[n] for n in FG_GROUPS]), distillation_embeddings=torch.cat([student[n] for n in FG_GROUPS]))
    assert FGSBIRLoss(config)(output, sizes, teacher).distillation.item() == pytest.approx(kd("photo", "photo") + kd("sketch", "photo"), rel=1e-6)
    assert FGSBIRLoss(config)(output, sizes).distillation is None
    with pytest.raises(ValueError) as error:
        FGSBIRLoss(config)(FGSBIROutput(embeddings=output.embeddings), sizes, teacher)
    assert str(error.value) == "Distillation needs a model with the distillation token."


# -- EMA -----------------------------------------------------------------------------------------------
def test_ema_update_is_exact():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(4.0)
    ema = ModelEMA(model, decay=0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(8.0)
        model[1].running_mean.fill_(7.0)
    ema.update(model)
    # 0.75 * 4 + 0.25 * 8 = 5, exactly (dyadic numbers); buffers are copied.
    for p in ema.model.parameters():
        assert torch.equal(p, torch.full_like(p, 5.0))
    assert torch.equal(ema.model[1].running_mean, torch.full((2,), 7.0))
    # Random values: theta_ema = beta * theta_ema + (1 - beta) * theta, step after step.
    torch.manual_seed(0)
    expected = [p.detach().clone() for p in ema.model.parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        expected = [0.75 * e + 0.25 * p.detach() for e, p in zip(expected, model.parameters())]
        ema.update(model)
    for e, p in zip(expected, ema.model.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-7)
    assert ema.num_updates == 4 and not any(p.requires_grad for p in ema.model.parameters())
    restored = ModelEMA(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.75 and restored.num_updates == 4
    for a, b in zip(restored.model.state_dict().values(), ema.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)


# -- Acc@q -----------------------------------------------------------------------------------------
def test_acc_at_q_worked_example():
    photos = torch.eye(4)  # scores = sketch rows
    sketches = torch.tensor([
        [0.9, 0.1, 0.0, 0.0],  # target 0: rank 1
        [0.8, 0.5, 0.1, 0.0],  # target 1: rank 2 (photo 0 beats it)
        [0.3, 0.2, 0.1, 0.6],  # target 2: rank 4
    ])
    acc = fine_grained_accuracy(sketches, photos, [0, 1, 2], ks=(1, 2, 3, 4))
    assert acc == pytest.approx({"acc@1": 1 / 3, "acc@2": 2 / 3, "acc@3": 2 / 3, "acc@4": 1.0})
    # A tie goes against the target.
    assert fine_grained_accuracy(torch.tensor([[0.5, 0.5]]), torch.eye(2), [1], ks=(1,)) == {"acc@1": 0.0}


# -- model -----------------------------------------------------------------------------------------
def test_modified_pvt_equals_pvt_without_token_and_carries_the_token():
    model = FGSBIRModel(tiny_fg_config()).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = model.backbone.model(pixel_values=x).last_hidden_state  # (B, 32, 4, 4)
        plain = model.backbone(x)
        out = model(pixel_values=x, output_hidden_states=True)
    assert torch.equal(plain.last_hidden_state, reference.flatten(2).transpose(1, 2))
    assert out.embeddings.shape == (3, 16) and out.distillation_embeddings.shape == (3, 16)
    assert out.distillation_token_state.shape == (3, 32) and out.pooled_output.shape == (3, 32)
    assert out.last_hidden_state.shape == (3, 1 + 16, 32)  # token + (32 / 8)^2 final patches
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out.distillation_embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    # The token attends to the image (its state differs per image) and the patches attend to it.
    assert not torch.allclose(out.distillation_token_state[0], out.distillation_token_state[1])
    assert not torch.allclose(out.pooled_output, plain.pooled_output)


def test_distillation_token_receives_gradients():
    model = FGSBIRModel(tiny_fg_config())
    x = torch.randn(4, 3, 32, 32)
    out = model(pixel_values=x)
    teacher = torch.randn(4, 8)
    loss = contextual_distillation_loss(out.distillation_embeddings, teacher, 0.1) + out.embeddings.sum()
    loss.backward()
    for name in ("distillation_token",):
        assert getattr(model, name).grad is not None and getattr(model, name).grad.abs().sum() > 0
    for module in (model.distillation_head, model.embedding_head, model.backbone.token_projections[0]):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert model.backbone.model.encoder.layers[0].patch_embedding.proj.weight.grad.abs().sum() > 0


def test_no_token_model_has_no_token_parameters():
    model = FGSBIRModel(tiny_fg_config(use_distillation_token=False)).eval()
    out = model(pixel_values=torch.randn(2, 3, 32, 32))
    assert out.distillation_embeddings is None and model.distillation_token is None
    assert len(model.backbone.token_projections) == 0
    assert not any("distillation" in n or "token_projections" in n for n, _ in model.named_parameters())




def test_hybrid_backbone_carries_the_token():
    pytest.importorskip("efficientnet_lite_pytorch")
    from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig

    backbone = HybridEfficientNetConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=64)
    model = FGSBIRModel(FGSBIRConfig(backbone_config=backbone, embedding_dim=16))
    model.backbone.cnn.requires_grad_(False)  # the token's gradient does not need the CNN's backward (slow on CPU)
    out = model(pixel_values=torch.randn(3, 3, 64, 64))
    assert out.distillation_embeddings.shape == (3, 16)
    contextual_distillation_loss(out.distillation_embeddings, torch.randn(3, 4), 0.1).backward()
    assert model.distillation_token.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cross_modal_margin": -0.1}, "cross_modal_margin"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"distillation_temperature": 0.0}, "distillation_temperature"),
        ({"embedding_dim": 0}, "embedding_dim"),
        ({"backbone_config": {"model_type": "bert"}}, "Unsupported FG-SBIR backbone"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    kwargs = {"backbone_config": tiny_pvt_config(), **kwargs}
    with pytest.raises(ValueError, match=message):
        FGSBIRConfig(**kwargs)


def test_config_dict_round_trip():
    config = tiny_fg_config(photo_intra_weight=0.5)
    again = FGSBIRConfig.from_dict(config.to_dict())
    assert again.backbone_config.hidden_sizes == [16, 32] and again.photo_intra_weight == 0.5


# -- data ------------------------------------------------------------------------------------------
def test_loader_on_a_shoe_v2_style_tree(tmp_path):
    root = make_shoe_v2_tree(tmp_path / "ShoeV2")
    data = load_fg_paired(root)
    assert set(data) == {"train", "test"}
    train = data["train"]
    assert train.column_names == ["image", "domain", "pair_id", "id"]
    # 5 photos; sketches 1, 2, 1, 2, 1 per photo.
    assert train["domain"].count("photo") == 5 and train["domain"].count("sketch") == 7
    row = train[train["id"].index("trainA/2429245001_2.png")]
    assert row["domain"] == "sketch" and row["pair_id"] == "2429245001"
    assert isinstance(row["image"], Image.Image)
    meta = json.loads(train.info.description)
    assert meta["layout"] == "qmul" and meta["num_sketches"] == 7 and meta["photos_without_sketch"] == 0
    sketches, photos, targets = fine_grained_split(data["test"])
    assert len(sketches) == 6 and len(photos) == 4
    assert [photos[t]["pair_id"] for t in targets] == sketches["pair_id"]

    # An unmatched sketch is named; "warn" skips it.
    _sketch(0).save(root / "trainA" / "9999_1.png")
    with pytest.raises(UnmatchedSketchError, match="9999_1.png"):
        load_fg_paired(root)
    with pytest.warns(UserWarning, match="9999_1.png"):
        assert load_fg_paired(root, on_unmatched="warn")["train"]["domain"].count("sketch") == 7
    # A missing folder is named.
    (root / "testB").rename(root / "elsewhere")
    with pytest.raises(FileNotFoundError, match="testB"):
        load_fg_paired(root)
    with pytest.raises(FileNotFoundError, match="Cannot recognise"):
        load_fg_paired(tmp_path / "ShoeV2" / "trainA")


def test_loader_other_layouts_and_unlabelled_photos(tmp_path):
    for layout, sketch_dir, photo_dir in (
        ("domain_first", "sketch/{split}", "photo/{split}"),
        ("split_first", "{split}/sketches", "{split}/images"),
    ):
        root = tmp_path / layout
        for split in ("train", "test"):
            (root / sketch_dir.format(split=split)).mkdir(parents=True)
            (root / photo_dir.format(split=split)).mkdir(parents=True)
            for i in range(2):
                _photo(i).save(root / photo_dir.format(split=split) / f"n0_{i}.jpg")
                _sketch(i).save(root / sketch_dir.format(split=split) / f"n0_{i}-1.png")  # Sketchy-style suffix
        assert detect_fg_layout(root)[0] == layout
        data = load_fg_paired(root)
        assert sorted(data["train"].filter(lambda r: r["domain"] == "sketch")["pair_id"]) == ["n0_0", "n0_1"]
    unlabelled = tmp_path / "zappos" / "brand"
    unlabelled.mkdir(parents=True)
    for i in range(3):
        _photo(i).save(unlabelled / f"{i}.jpg")
    photos = load_unlabelled_photos(tmp_path / "zappos")
    assert photos.column_names == ["image", "domain", "id"] and photos["id"] == ["brand/0.jpg", "brand/1.jpg", "brand/2.jpg"]
    with pytest.raises(FileNotFoundError, match="nope"):
        load_unlabelled_photos(tmp_path / "nope")


def test_structural_augmentation_is_deterministic_and_changes_shape():
    img = _photo(3)
    a, b = structural_augment(img, random.Random(1)), structural_augment(img, random.Random(1))
    assert a.size == img.size and a.tobytes() == b.tobytes()
    assert a.tobytes() != structural_augment(img, random.Random(2)).tobytes()


# -- training method -------------------------------------------------------------------------------
def _args(tmp_path, root, **method_args):
    return TrainConfig(
        method="fg_sbir", dataset=str(root), split=None, backbone_config=tiny_pvt_config().to_dict(),
        model_config={"embedding_dim": 16}, batch_size=3, image_size=32, learning_rate=1e-3,
        eval_batch_size=8, output_dir=str(tmp_path / "run"), progress=False, method_args=method_args,
    )


def test_method_batches_losses_ema_distillation_and_evaluation(tmp_path):
    from accelerate import Accelerator

    root = make_shoe_v2_tree(tmp_path / "ShoeV2")
    args = _args(tmp_path, root, distillation=True, teacher_iterations=2, unlabelled_per_step=3, ema_decay=0.5)
    method = get_method_class("fg_sbir")(args)
    model = method.build_model()
    assert model.config.use_distillation_token and model.config.ema_decay == 0.5
    transform = method.build_transform(model)
    method.setup(model, None, transform, Accelerator(cpu=True))
    assert (tmp_path / "run" / "teacher" / "model.safetensors").is_file()

    batch = method.next_batch(4)
    assert set(batch) == {"sketch", "sketch_positive", "sketch_negative", "photo", "photo_augmented", "photo_negative", "unlabelled"}
    assert all(v.shape == (3, 3, 32, 32) for v in batch.values())
    again = get_method_class("fg_sbir")(args)
    again.setup(again.build_model(), None, again.build_transform(model), Accelerator(cpu=True))  # reuses the cached teacher
    assert all(torch.equal(batch[k], again.next_batch(4)[k]) for k in batch)  # a function of (seed, step)
    assert not torch.equal(batch["sketch"], method.next_batch(5)["sketch"])

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, logs = method.training_step(model, batch, 0)
    assert logs["loss_distillation"] > 0 and loss.item() == pytest.approx(logs["loss"])
    loss.backward()
    assert model.distillation_token.grad.abs().sum() > 0
    optimizer.step()
    method.after_optimizer_step(model, 0)
    for name, p in method.ema.model.named_parameters():  # eq. 4 with beta = 0.5
        torch.testing.assert_close(p, 0.5 * before[name] + 0.5 * dict(model.named_parameters())[name].detach())

    state = method.state_dict()
    restored = get_method_class("fg_sbir")(args)
    restored.setup(restored.build_model(), None, transform, Accelerator(cpu=True))
    restored.load_state_dict(state)
    for a, b in zip(restored.ema.model.state_dict().values(), method.ema.model.state_dict().values()):
        assert torch.equal(a, b)

    final = method.model_to_save(model)
    assert final is method.ema.model
    result = method.evaluate(final, None, transform)
    metrics = result["metrics"]
    assert set(metrics) == {"acc@1", "acc@5", "acc@10"} and result["num_queries"] == 6 and result["num_gallery"] == 4
    assert 0 <= metrics["acc@1"] <= metrics["acc@5"] <= metrics["acc@10"] == 1.0  # 4 photos: all in the top 10


def test_method_rejects_unknown_settings(tmp_path):
    with pytest.raises(ValueError, match="Unknown fg_sbir method_args"):
        get_method_class("fg_sbir")(_args(tmp_path, tmp_path, nope=1))
