"""clDice, cbDice and the boundary loss from stored targets, against numbers of the authors' reference code.

Each reference computes its ground-truth side from the mask on every call; ours takes targets of
skelprep.targets. The inputs are built here from seeds; the expected numbers (the loss and two summaries of its
gradient with respect to the logits) were computed once by running the authors' code, unmodified, from
snapshots of their repositories on the same inputs (the repository, commit and function beside each table).
Where both see the same ground truth (the reference's own skeleton, which ``soft_skeleton`` reproduces, handed
to ours as the stored skeleton; every class present), the numbers agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from skelprep.skeleton import thin_skeleton
from skelprep.targets import signed_distance, skeleton_radius
from skelprep.torch.topology import BoundaryLoss, CbDiceLoss, ClDiceLoss, HausdorffDTLoss, soft_skeleton

SHAPES = {2: (40, 48), 3: (18, 22, 20)}


def labels(ndim: int, n_classes: int, batch: int, seed: int) -> np.ndarray:
    """``(B, *spatial)`` uint8 maps of smooth blobs, every class present in every sample."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch):
        field = ndi.gaussian_filter(rng.random(SHAPES[ndim]), 2.0)
        cut = np.quantile(field, np.linspace(0.5, 1.0, n_classes + 1))[:-1]
        out.append(np.digitize(field, cut).astype(np.uint8))
    stacked = np.stack(out)
    assert all(set(np.unique(s)) == set(range(n_classes + 1)) for s in stacked)
    return stacked


def logits_near(label: np.ndarray, n_classes: int, seed: int) -> torch.Tensor:
    """Logits whose argmax mostly follows ``label``, with noise: a prediction partly right."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.from_numpy(label).long()
    onehot = F.one_hot(target, n_classes + 1).movedim(-1, 1).double()
    noise = torch.randn(onehot.shape, generator=gen, dtype=torch.float64)
    return (3.0 * onehot + 1.5 * noise).float().requires_grad_()


def probe(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Fixed random weights in [0, 1): a gradient summarised as its weighted sum sees every entry."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def summary(loss: torch.Tensor, logits: torch.Tensor) -> tuple[float, float, float]:
    """The loss, its gradient's weighted sum (by ``probe``) and its gradient's absolute sum."""
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    grad = grad.double()
    weights = probe(tuple(grad.shape), 1234)
    return float(loss.detach()), float((grad * weights).sum()), float(grad.abs().sum())


def matches(ours: tuple[float, float, float], reference: tuple[float, float, float]) -> None:
    """Equal to the recorded reference numbers up to float32 rounding."""
    value, weighted, size = reference
    assert value != 0 and size > 0
    np.testing.assert_allclose(ours[0], value, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours[2], size, rtol=1e-4)
    # The weighted sum mostly cancels: its tolerance is relative to the gradient's size
    assert abs(ours[1] - weighted) <= 1e-5 * size


# jocpae/clDice at 47d31a6cc4a8101b1ffe8052994821961e57af9f, cldice_loss/pytorch/soft_skeleton.py:
# SoftSkeletonize(num_iter=10)(x) for x = probe((2, 3, *SHAPES[ndim]), ndim).float(): its sum and its sum
# weighted by probe(x.shape, 99).
SOFT_SKELETON = {2: (2718.328681410756, 1359.0656198733639), 3: (10541.308791675823, 5265.4319023385815)}


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_soft_skeleton_equals_the_reference(ndim, tracked):
    # a ground truth (untracked) and a prediction under autograd take different filters: both equal it
    x = probe((2, 3, *SHAPES[ndim]), ndim).float().requires_grad_(tracked)
    skel = soft_skeleton(x, 10).detach().double()
    ours = (float(skel.sum()), float((skel * probe(tuple(x.shape), 99)).sum()))
    np.testing.assert_allclose(ours, SOFT_SKELETON[ndim], rtol=1e-6)


# jocpae/clDice at 47d31a6cc4a8101b1ffe8052994821961e57af9f, cldice_loss/pytorch/cldice.py:
# soft_cldice(exclude_background=True)(onehot, softmax(logits)) on labels(ndim, 2, batch=2, seed=ndim) and
# logits_near(label, 2, seed=ndim): summary(loss, logits).
CLDICE = {
    2: (0.31698673963546753, 0.0005633367214747354, 0.36256130917902063),
    3: (0.31720346212387085, -1.6533268380985132e-05, 0.40715515539575037),
}


@pytest.mark.parametrize("ndim", [2, 3])
def test_cldice_with_the_references_ground_truth_skeleton_equals_the_reference(ndim):
    label = labels(ndim, 2, batch=2, seed=ndim)
    logits = logits_near(label, 2, seed=ndim)
    target = torch.from_numpy(label).long()
    onehot = F.one_hot(target, 3).movedim(-1, 1).float()
    # The reference's ground-truth skeleton (binary, one per class, disjoint), as a stored labelled skeleton
    skel = soft_skeleton(onehot[:, 1:], 10)
    assert set(skel.unique().tolist()) == {0.0, 1.0}
    thin = (skel * torch.arange(1, 3).view(1, 2, *(1,) * ndim)).sum(1, keepdim=True).long()
    ours = ClDiceLoss()(logits, target.unsqueeze(1), thin)
    matches(summary(ours, logits), CLDICE[ndim])


def test_cldice_takes_the_stored_exact_skeleton():
    label = labels(2, 1, batch=1, seed=7)
    thin = torch.from_numpy(thin_skeleton(label[0]))[None, None].long()
    target = torch.from_numpy(label)[:, None].long()
    perfect = torch.cat([(target == 0).float(), (target == 1).float()], 1)
    assert ClDiceLoss(apply_softmax=False)(perfect, target, thin).item() == pytest.approx(0.0, abs=1e-6)
    # a prediction missing half the skeleton loses sensitivity
    cut = perfect.clone()
    cut[..., : SHAPES[2][1] // 2] = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert ClDiceLoss(apply_softmax=False)(cut, target, thin).item() > 0.1


# PengchengShi1220/cbDice at a970c1d4e2fed9725b14a7556cc45979892dcce7, loss/cbdice_loss.py:
# SoftcbDiceLoss()(logits, label[:, None]) (iter_=10, the morphological skeleton) on
# labels(ndim, n_classes, batch=2, seed=10 + ndim) and logits_near(label, n_classes, seed=ndim): summary(loss, logits).
CBDICE = {
    (2, 1): (-0.8026815056800842, 4.711047409358056e-05, 0.10295549739652987),
    (2, 2): (-0.7719860076904297, -0.0011439453454389695, 0.12453970193764974),
    (3, 1): (-0.757372260093689, 0.001715933028552483, 0.12482867414642285),
    (3, 2): (-0.6952126622200012, -0.00036473526923777035, 0.15927880261223099),
}


@pytest.mark.parametrize(("ndim", "n_classes"), [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_cbdice_from_stored_targets_equals_the_reference(ndim, n_classes):
    label = labels(ndim, n_classes, batch=2, seed=10 + ndim)
    logits = logits_near(label, n_classes, seed=ndim)
    target = torch.from_numpy(label)[:, None].long()
    # The reference's ground-truth skeleton of the foreground, handed to the stored-target functions
    skel = soft_skeleton((target > 0).float(), 10).squeeze(1).numpy()
    foreground = tuple(range(1, n_classes + 1))
    sdf = np.stack([signed_distance(lab, [foreground], spacing=None) for lab in label])
    radius = np.stack([skeleton_radius(lab, s, spacing=None) for lab, s in zip(label, skel, strict=True)])
    ours = CbDiceLoss()(logits, torch.from_numpy(sdf), torch.from_numpy(radius)[:, None])
    matches(summary(ours, logits), CBDICE[(ndim, n_classes)])


# LIVIAETS/boundary-loss at 171c32d88a4ce59af8be46fb88b96d3637b9515b, losses.py SurfaceLoss(idc=...) on
# softmax(logits) and utils.py one_hot2dist(onehot, resolution=..., dtype=float32) per sample, on
# labels(2, 2, batch=3, seed=4) and logits_near(label, 2, seed=5): summary(loss, logits), keyed by
# (resolution, idc).
BOUNDARY = {
    (None, (1, 2)): (0.13623708486557007, 0.0002454527665688717, 0.2647286295656896),
    (None, (0, 1, 2)): (-0.020136641338467598, 0.0005641381382155404, 0.2634905024409649),
    ((0.5, 2.0), (1, 2)): (0.17832079529762268, 9.481266971957223e-07, 0.22225930288067774),
    ((0.5, 2.0), (0, 1, 2)): (0.04833165556192398, 0.0002446456471368211, 0.2053254670133066),
}


@pytest.mark.parametrize("resolution", [None, (0.5, 2.0)])
@pytest.mark.parametrize("classes", [(1, 2), (0, 1, 2)])
def test_boundary_loss_from_the_stored_sdf_equals_the_reference(resolution, classes):
    label = labels(2, 2, batch=3, seed=4)
    logits = logits_near(label, 2, seed=5)
    sdf = np.stack([signed_distance(lab, list(classes), spacing=resolution) for lab in label])
    ours = BoundaryLoss(classes=list(classes))(logits, torch.from_numpy(sdf))
    matches(summary(ours, logits), BOUNDARY[(resolution, classes)])


def test_boundary_loss_charges_a_class_absent_from_the_case():
    label = np.zeros((1, 8, 8), np.uint8)
    label[0, 2:5, 2:5] = 1  # class 2 absent: its sdf is the image diagonal everywhere
    sdf = torch.from_numpy(np.stack([signed_distance(label[0], [1, 2], spacing=None)]))
    predicts_two = torch.zeros(1, 3, 8, 8)
    predicts_two[:, 2] = 10.0
    predicts_none = torch.zeros(1, 3, 8, 8)
    predicts_none[:, 0] = 10.0
    loss = BoundaryLoss(classes=[1, 2])
    assert torch.isfinite(loss(predicts_two, sdf)) and loss(predicts_two, sdf) > loss(predicts_none, sdf) + 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: BoundaryLoss()(x, torch.zeros(2, 1, 8, 8)), r"expected \(B, 2, \*spatial\)"),
        (lambda x: BoundaryLoss(classes=[3])(x, torch.zeros(2, 1, 8, 8)), "must name channels"),
        (lambda x: CbDiceLoss()(x, torch.zeros(2, 1, 8, 7), torch.zeros(2, 1, 8, 8)), "spatial shape"),
        (lambda x: ClDiceLoss()(x, torch.zeros(2, 1, 8, 8), torch.zeros(1, 1, 8, 8)), "does not match"),
        (lambda x: ClDiceLoss()(x, torch.full((2, 1, 8, 8), 3), torch.zeros(2, 1, 8, 8)), r"lie in \[0, 3\)"),
    ],
)
def test_mismatched_targets_are_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.zeros(2, 3, 8, 8))


@pytest.mark.parametrize(("ndim", "classes"), [(2, (1, 2)), (2, (0, 1, 2)), (3, (1, 2))])
@pytest.mark.parametrize("batch", [False, True])
def test_hausdorff_loss_from_the_stored_sdf_equals_monai(ndim, classes, batch):
    monai_losses = pytest.importorskip("monai.losses")
    label = labels(ndim, 2, batch=2, seed=20 + ndim)
    label[1][label[1] == 2] = 1  # sample 1 lacks class 2: no boundary, a field of 0 on both sides
    logits = logits_near(label, 2, seed=ndim)
    reference = monai_losses.HausdorffDTLoss(
        include_background=0 in classes, to_onehot_y=True, softmax=True, batch=batch
    )(logits, torch.from_numpy(label)[:, None].long())
    sdf = np.stack([signed_distance(lab, list(classes), spacing=None) for lab in label])
    ours = HausdorffDTLoss(classes=list(classes), batch=batch)(logits, torch.from_numpy(sdf))
    (g_ours,) = torch.autograd.grad(ours, logits, retain_graph=True)
    (g_ref,) = torch.autograd.grad(reference, logits)
    assert float(reference.detach()) > 0
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)
