"""clDice, cbDice and the boundary loss from stored targets, against the authors' reference code.

Each reference (tests/_reference, vendored with its licence) computes its ground-truth side from the mask on
every call; ours takes targets of skelprep.targets. Where both see the same ground truth (the reference's own
skeleton handed to ours as the stored skeleton, every class present), the losses and their gradients agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from skelprep.skeleton import thin_skeleton
from skelprep.targets import signed_distance, skeleton_radius
from skelprep.torch.topology import BoundaryLoss, CbDiceLoss, ClDiceLoss, soft_skeleton

pytest.importorskip("monai")
from ._reference.boundary_loss import SurfaceLoss, one_hot2dist  # noqa: E402
from ._reference.cbdice import SoftcbDiceLoss  # noqa: E402
from ._reference.cldice import SoftSkeletonize, soft_cldice  # noqa: E402

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


def both(ours, reference, logits: torch.Tensor) -> None:
    """Equal values and equal gradients with respect to the logits."""
    (g_ours,) = torch.autograd.grad(ours, logits, retain_graph=True)
    (g_ref,) = torch.autograd.grad(reference, logits, retain_graph=True)
    assert float(reference.detach()) != 0
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("ndim", [2, 3])
def test_soft_skeleton_equals_the_reference(ndim):
    gen = torch.Generator().manual_seed(ndim)
    x = torch.rand(2, 3, *SHAPES[ndim], generator=gen)
    torch.testing.assert_close(soft_skeleton(x, 10), SoftSkeletonize(num_iter=10)(x), rtol=0, atol=0)


@pytest.mark.parametrize("ndim", [2, 3])
def test_cldice_with_the_references_ground_truth_skeleton_equals_the_reference(ndim):
    label = labels(ndim, 2, batch=2, seed=ndim)
    logits = logits_near(label, 2, seed=ndim)
    target = torch.from_numpy(label).long()
    onehot = F.one_hot(target, 3).movedim(-1, 1).float()
    probs = torch.softmax(logits, 1)
    reference = soft_cldice(exclude_background=True)(onehot, probs)
    # The reference's ground-truth skeleton (binary, one per class, disjoint), as a stored labelled skeleton
    skel = SoftSkeletonize(num_iter=10)(onehot[:, 1:])
    assert set(skel.unique().tolist()) == {0.0, 1.0}
    thin = (skel * torch.arange(1, 3).view(1, 2, *(1,) * ndim)).sum(1, keepdim=True).long()
    ours = ClDiceLoss()(logits, target.unsqueeze(1), thin)
    both(ours, reference, logits)


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


@pytest.mark.parametrize(("ndim", "n_classes"), [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_cbdice_from_stored_targets_equals_the_reference(ndim, n_classes):
    label = labels(ndim, n_classes, batch=2, seed=10 + ndim)
    logits = logits_near(label, n_classes, seed=ndim)
    target = torch.from_numpy(label)[:, None].long()
    reference = SoftcbDiceLoss()(logits, target)
    # The reference's ground-truth skeleton of the foreground, handed to the stored-target functions
    skel = SoftSkeletonize(num_iter=10)((target > 0).float()).squeeze(1).numpy()
    foreground = tuple(range(1, n_classes + 1))
    sdf = np.stack([signed_distance(lab, [foreground], spacing=None) for lab in label])
    radius = np.stack([skeleton_radius(lab, s, spacing=None) for lab, s in zip(label, skel, strict=True)])
    ours = CbDiceLoss()(logits, torch.from_numpy(sdf), torch.from_numpy(radius)[:, None])
    both(ours, reference, logits)


@pytest.mark.parametrize("resolution", [None, (0.5, 2.0)])
def test_boundary_loss_from_the_stored_sdf_equals_the_reference(resolution):
    label = labels(2, 2, batch=3, seed=4)
    logits = logits_near(label, 2, seed=5)
    onehot = np.eye(3, dtype=np.uint8)[label].transpose(0, 3, 1, 2)  # (B, K, H, W)
    dist = np.stack([one_hot2dist(o, resolution=resolution, dtype=np.float32) for o in onehot])
    probs = torch.softmax(logits, 1)
    reference = SurfaceLoss(idc=[1, 2])(probs, torch.from_numpy(dist))
    sdf = np.stack([signed_distance(lab, [1, 2], spacing=resolution) for lab in label])
    ours = BoundaryLoss(classes=[1, 2])(logits, torch.from_numpy(sdf))
    both(ours, reference, logits)
    # all classes with the background, as the reference's idc=[0, 1, 2]
    sdf_all = np.stack([signed_distance(lab, [0, 1, 2], spacing=resolution) for lab in label])
    all_ref = SurfaceLoss(idc=[0, 1, 2])(probs, torch.from_numpy(dist))
    all_ours = BoundaryLoss(classes=[0, 1, 2])(logits, torch.from_numpy(sdf_all))
    both(all_ours, all_ref, logits)


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
