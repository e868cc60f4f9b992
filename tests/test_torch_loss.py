"""SkeletonRecallLoss, SoftDiceLoss, CompoundLoss and DeepSupervisionLoss against one-hot restatements."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import skelprep.torch.loss as loss_module
from skelprep.torch.loss import (
    CompoundLoss,
    DeepSupervisionLoss,
    SkeletonRecallLoss,
    SoftDiceLoss,
    deep_supervision_weights,
    downsample_targets,
)

SHAPES = {2: (13, 17), 3: (7, 9, 11)}


def _inputs(ndim: int, n_classes: int, seed: int, batch: int = 3, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPES[ndim]
    logits = (3 * torch.randn(batch, n_classes, *shape, generator=gen)).to(dtype).requires_grad_()
    label = torch.randint(0, n_classes, (batch, 1, *shape), generator=gen)
    # A tube is a subset of the label (tube = dilate(thin) * labels).
    tube = label * (torch.rand(batch, 1, *shape, generator=gen) < 0.3)
    return logits, label, tube


def reference_recall(probs, tube, *, loss_mask=None, batch_dice=False, smooth=1e-5):
    """The reference SoftSkeletonRecallLoss, with its one-hot target, restated."""
    n_classes = probs.shape[1]
    onehot = F.one_hot(tube[:, 0], n_classes).movedim(-1, 1).to(probs.dtype)
    x, y = probs[:, 1:], onehot[:, 1:]
    axes = tuple(range(2, probs.ndim))
    if loss_mask is None:
        inter, gt = (x * y).sum(axes), y.sum(axes)
    else:
        inter, gt = (x * y * loss_mask).sum(axes), (y * loss_mask).sum(axes)
    if batch_dice:
        inter, gt = inter.sum(0), gt.sum(0)
    return -((inter + smooth) / torch.clip(gt + smooth, 1e-8)).mean()


def reference_dice(probs, label, *, loss_mask=None, batch_dice=False, smooth=1e-5):
    """nnU-Net's MemoryEfficientSoftDiceLoss (do_bg=False), restated with a one-hot target."""
    n_classes = probs.shape[1]
    onehot = F.one_hot(label[:, 0], n_classes).movedim(-1, 1).to(probs.dtype)
    x, y = probs[:, 1:], onehot[:, 1:]
    axes = tuple(range(2, probs.ndim))
    if loss_mask is not None:
        x, y = x * loss_mask, y * loss_mask
    inter, sum_pred, sum_gt = (x * y).sum(axes), x.sum(axes), y.sum(axes)
    if batch_dice:
        inter, sum_pred, sum_gt = inter.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    return -((2 * inter + smooth) / torch.clip(sum_gt + sum_pred + smooth, 1e-8)).mean()


def _assert_same(ours, ref, params, atol=1e-6):
    assert torch.allclose(ours, ref, atol=atol, rtol=0), (float(ours), float(ref))
    g_ours = torch.autograd.grad(ours, params, retain_graph=True)
    g_ref = torch.autograd.grad(ref, params, retain_graph=True)
    for a, b in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, b, atol=atol, rtol=0), float((a - b).abs().max())
    # The test would be void if the gradient were zero.
    assert any(float(g.abs().max()) > 0 for g in g_ref)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_recall_equals_reference(ndim, n_classes, batch_dice, dtype):
    logits, _, tube = _inputs(ndim, n_classes, seed=ndim * 10 + n_classes, dtype=dtype)
    ours = SkeletonRecallLoss(batch_dice=batch_dice)(logits, tube)
    ref = reference_recall(torch.softmax(logits, 1), tube, batch_dice=batch_dice)
    _assert_same(ours, ref, [logits])


@pytest.mark.parametrize("ndim", [2, 3])
def test_recall_with_probabilities_and_unbatched_channel(ndim):
    logits, _, tube = _inputs(ndim, 3, seed=5)
    probs = torch.softmax(logits, 1)
    # (B, *spatial) targets are accepted as well as (B, 1, *spatial).
    ours = SkeletonRecallLoss(apply_softmax=False)(probs, tube[:, 0])
    _assert_same(ours, reference_recall(probs, tube), [logits])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_recall_ignore_mask_and_index(ndim, batch_dice):
    logits, _, tube = _inputs(ndim, 4, seed=7)
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(tube.shape, generator=gen) < 0.7
    ours = SkeletonRecallLoss(batch_dice=batch_dice)(logits, tube, loss_mask=mask)
    ref = reference_recall(torch.softmax(logits, 1), tube, loss_mask=mask.double(), batch_dice=batch_dice)
    _assert_same(ours, ref, [logits])
    # ignore_index: a value outside the classes, whose voxels count nowhere.
    ignored = torch.where(mask, tube, torch.full_like(tube, 255))
    ours = SkeletonRecallLoss(batch_dice=batch_dice, ignore_index=255)(logits, ignored)
    _assert_same(ours, ref, [logits])


def test_recall_known_values():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = 30.0  # confident background ...
    logits[0, :, 0, 0] = torch.tensor([-30.0, 30.0])  # ... except one of the two tube voxels
    tube = torch.tensor([[[[1, 1, 0, 0]]]])
    value = SkeletonRecallLoss()(logits, tube)
    assert abs(float(value) + 0.5) < 1e-4
    # A class absent from the tube costs nothing (recall 1 via smooth).
    assert abs(float(SkeletonRecallLoss()(logits, torch.zeros_like(tube))) + 1.0) < 1e-6


def test_recall_rejects_bad_targets():
    logits, _, tube = _inputs(2, 3, seed=0)
    with pytest.raises(ValueError, match="class ids"):
        SkeletonRecallLoss()(logits, tube + 3)
    with pytest.raises(ValueError, match="does not match"):
        SkeletonRecallLoss()(logits, tube[..., :5])


def test_no_one_hot_is_built(monkeypatch):
    """The losses never call F.one_hot (the per-class sums come from gather + scatter_add)."""
    calls = []
    monkeypatch.setattr(F, "one_hot", lambda *a, **k: calls.append(a) or pytest.fail("one_hot used"))
    logits, label, tube = _inputs(3, 4, seed=2)
    CompoundLoss()(logits, label, tube).backward()
    assert not calls


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_soft_dice_equals_reference(ndim, batch_dice):
    logits, label, _ = _inputs(ndim, 3, seed=11)
    ours = SoftDiceLoss(batch_dice=batch_dice)(logits, label)
    _assert_same(ours, reference_dice(torch.softmax(logits, 1), label, batch_dice=batch_dice), [logits])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5])
def test_compound_is_dice_plus_ce_plus_weighted_recall(ndim, weight):
    logits, label, tube = _inputs(ndim, 4, seed=3)
    probs = torch.softmax(logits, 1)
    ref = reference_dice(probs, label) + F.cross_entropy(logits, label[:, 0])
    if weight:
        ref = ref + weight * reference_recall(probs, tube)
    loss = CompoundLoss(recall_weight=weight)
    _assert_same(loss(logits, label, tube), ref, [logits])
    terms = loss.terms(logits, label, tube)
    assert set(terms) == {"dice", "ce", "recall", "total"}
    if weight == 0:
        assert float(terms["recall"]) == 0.0


def test_compound_ignore_index_excludes_voxels_everywhere():
    logits, label, tube = _inputs(2, 3, seed=4)
    gen = torch.Generator().manual_seed(9)
    keep = torch.rand(label.shape, generator=gen) < 0.6
    label_ign = torch.where(keep, label, torch.full_like(label, 7))
    probs = torch.softmax(logits, 1)
    mask = keep.double()
    tube_kept = tube * keep
    ce = F.cross_entropy(logits, label_ign[:, 0], ignore_index=7)
    ref = (
        reference_dice(probs, label * keep, loss_mask=mask)
        + ce
        + reference_recall(probs, tube_kept, loss_mask=mask)
    )
    _assert_same(CompoundLoss(ignore_index=7)(logits, label_ign, tube), ref, [logits])


def test_deep_supervision_weights_like_nnunet():
    w = deep_supervision_weights(4)
    assert w[-1] == 0 and abs(sum(w) - 1) < 1e-12
    assert abs(w[0] / w[1] - 2) < 1e-12 and abs(w[1] / w[2] - 2) < 1e-12
    assert abs(sum(deep_supervision_weights(3, drop_lowest=False)) - 1) < 1e-12


def test_downsample_targets_max_pools_tube_and_nearest_label():
    gen = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (2, 1, 8, 12), generator=gen)
    tube = label * (torch.rand(2, 1, 8, 12, generator=gen) < 0.1)
    small_label, small_tube = downsample_targets(label, tube, (4, 6))
    assert torch.equal(small_label, label[..., ::2, ::2])
    assert torch.equal(small_tube, tube.reshape(2, 1, 4, 2, 6, 2).amax(dim=(3, 5)))
    # A thin diagonal survives max-pooling (nearest sampling would lose most of it).
    diag = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    diag[0, 0, torch.arange(8), torch.arange(8)] = 1
    assert int(downsample_targets(diag, diag, (4, 4))[1].sum()) == 4


@pytest.mark.parametrize("ndim", [2, 3])
def test_deep_supervision_uses_every_weighted_output(ndim):
    gen = torch.Generator().manual_seed(ndim)
    full = (8, 8) if ndim == 2 else (8, 8, 8)
    sizes = [tuple(s // 2**i for s in full) for i in range(3)]
    outputs = [torch.randn(2, 3, *s, generator=gen, dtype=torch.float64, requires_grad=True) for s in sizes]
    label = torch.randint(0, 3, (2, 1, *full), generator=gen)
    tube = label * (torch.rand(2, 1, *full, generator=gen) < 0.3)
    inner = CompoundLoss()
    value = DeepSupervisionLoss(inner)(outputs, label, tube)
    weights = deep_supervision_weights(3)
    expected = sum(
        w * inner(o, *downsample_targets(label, tube, o.shape[2:]))
        for w, o in zip(weights, outputs, strict=True)
        if w
    )
    assert torch.allclose(value, expected, atol=1e-12)
    grads = torch.autograd.grad(value, outputs, allow_unused=True)
    # Auxiliary outputs are trained (the reference drops them); the lowest has weight 0.
    assert grads[0] is not None and grads[1] is not None and float(grads[1].abs().max()) > 0
    assert grads[2] is None
    with pytest.raises(ValueError, match="weights"):
        DeepSupervisionLoss(inner, weights=[1.0, 0.5])(outputs, label, tube)


@pytest.mark.parametrize("loss_cls", [SkeletonRecallLoss, SoftDiceLoss])
def test_no_tensor_of_batch_times_classes_voxels(loss_cls):
    """Given probabilities, no op of the loss (forward or backward) makes a (B, C, *spatial)-sized tensor
    other than the gradient of the probabilities itself: memory is O(B·N) beyond the input."""
    from torch.utils._python_dispatch import TorchDispatchMode

    logits, label, tube = _inputs(3, 5, seed=8, dtype=torch.float32)
    probs = torch.softmax(logits, 1).detach().requires_grad_()
    big = probs.numel()
    sizes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    sizes.append((str(func), t.numel()))
            return out

    target = tube if loss_cls is SkeletonRecallLoss else label
    with Record():
        value = loss_cls(apply_softmax=False)(probs, target)
    forward_big = [name for name, n in sizes if n >= big]
    if loss_cls is SkeletonRecallLoss:
        assert not forward_big, forward_big
    else:  # soft Dice needs sum_v p_c over all classes: one elementwise pass over probs at most
        assert len(forward_big) <= 1, forward_big
    sizes.clear()
    with Record():
        value.backward()
    views = ("expand", "detach", "view", "alias")
    backward_big = [name for name, n in sizes if n >= big and not any(v in name for v in views)]
    # The gradient buffer of probs (zeros + scatter of gather's backward, plus the sum_v p_c term's add).
    assert len(backward_big) <= 3, backward_big


# --------------------------------------------------------------------------------------------
# The fused path of SkeletonRecallLoss on logits (no softmax kept)
# --------------------------------------------------------------------------------------------
def _unfused(logits, tube, **kw):
    """The same loss through softmax + gather (the path CompoundLoss and apply_softmax=False take)."""
    mask = kw.pop("loss_mask", None)
    probs = torch.softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, 1)
    return SkeletonRecallLoss(apply_softmax=False, **kw)(probs, tube, loss_mask=mask)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks far smaller than the test volumes, with a ragged last one: the chunk loop is exercised."""
    monkeypatch.setattr(loss_module, "_CHUNK_ELEMENTS", 6 * 37)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_sums_gradcheck(ndim, weighted, small_chunks):
    gen = torch.Generator().manual_seed(20 + ndim)
    shape = (5, 6) if ndim == 2 else (3, 4, 5)
    logits = torch.randn(2, 3, *shape, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, *shape), generator=gen)
    weight = torch.rand(2, 1, *shape, generator=gen, dtype=torch.float64) if weighted else None
    assert torch.autograd.gradcheck(
        lambda x: loss_module._FusedRecallSums.apply(x, target, weight)[0], (logits,)
    )


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_fused_loss_gradcheck(ndim, batch_dice, small_chunks):
    gen = torch.Generator().manual_seed(30 + ndim)
    shape = (6, 7) if ndim == 2 else (3, 4, 5)
    logits = torch.randn(2, 3, *shape, generator=gen, dtype=torch.float64, requires_grad=True)
    tube = torch.randint(0, 3, (2, 1, *shape), generator=gen)
    mask = torch.rand(tube.shape, generator=gen) < 0.8
    loss = SkeletonRecallLoss(batch_dice=batch_dice)
    assert torch.autograd.gradcheck(lambda x: loss(x, tube), (logits,))
    assert torch.autograd.gradcheck(lambda x: loss(x, tube, loss_mask=mask), (logits,))


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_fused_gradient_equals_unfused_path(ndim, dtype, batch_dice, small_chunks):
    logits, _, tube = _inputs(ndim, 4, seed=40 + ndim, dtype=dtype)
    mask = torch.rand(tube.shape, generator=torch.Generator().manual_seed(4)) < 0.7
    atol = 1e-6 if dtype == torch.float32 else 1e-12
    for kw in ({}, {"loss_mask": mask}, {"smooth": 1.0}):
        fused = SkeletonRecallLoss(batch_dice=batch_dice, **{k: v for k, v in kw.items() if k == "smooth"})
        ours = fused(logits, tube, loss_mask=kw.get("loss_mask"))
        _assert_same(ours, _unfused(logits, tube, batch_dice=batch_dice, **kw), [logits], atol=atol)
    ignored = torch.where(mask, tube, torch.full_like(tube, 255))
    ours = SkeletonRecallLoss(batch_dice=batch_dice, ignore_index=255)(logits, ignored)
    _assert_same(ours, _unfused(logits, tube, batch_dice=batch_dice, loss_mask=mask), [logits], atol=atol)


def test_fused_channels_last_logits(small_chunks):
    logits, _, tube = _inputs(3, 4, seed=50)
    cl = logits.detach().to(memory_format=torch.channels_last_3d).requires_grad_()
    ours = SkeletonRecallLoss()(cl, tube)
    ours.backward()
    ref = SkeletonRecallLoss()(logits, tube)
    ref.backward()
    assert torch.allclose(ours, ref, atol=1e-12, rtol=0)
    assert torch.allclose(cl.grad, logits.grad, atol=1e-12, rtol=0)
    assert cl.grad.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_half_precision_under_autocast(dtype, small_chunks):
    logits, _, tube = _inputs(3, 4, seed=60, dtype=torch.float32)
    half = logits.detach().to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = SkeletonRecallLoss()(half, tube)
    assert ours.dtype == torch.float32
    # The same half-precision values, softmaxed in float32 on the unfused path.
    ref_in = half.detach().float().requires_grad_()
    ref = _unfused(ref_in, tube)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)
    ours.backward()
    ref.backward()
    assert half.grad.dtype == dtype
    assert torch.allclose(
        half.grad.float(), ref_in.grad, atol=1e-3 * float(ref_in.grad.abs().max()), rtol=1e-2
    )


def _big_tensors(fn, big):
    """(op, dtype) of every tensor of >= ``big`` elements the ops inside ``fn`` create."""
    from torch.utils._python_dispatch import TorchDispatchMode

    found = []
    views = ("expand", "detach", "view", "alias", "slice", "unsqueeze", "select", "as_strided")

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if (
                    isinstance(t, torch.Tensor)
                    and t.numel() >= big
                    and not any(v in str(func) for v in views)
                ):
                    found.append((str(func), t.dtype))
            return out

    with Record():
        result = fn()
    return result, found


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_memory_one_gradient_buffer(dtype, small_chunks):
    """On logits: forward makes no (B, C, *spatial)-sized tensor, backward exactly one (the gradient,
    in the logits' dtype: no float32 copy of half-precision logits), and autograd keeps it as .grad."""
    logits, _, tube = _inputs(3, 5, seed=8, dtype=torch.float32)
    logits = logits.detach().to(dtype).requires_grad_()
    big = logits.numel()
    value, forward_big = _big_tensors(lambda: SkeletonRecallLoss()(logits, tube), big)
    assert not forward_big, forward_big
    _, backward_big = _big_tensors(value.backward, big)
    assert len(backward_big) == 1 and backward_big[0][1] == dtype, backward_big
    assert logits.grad is not None and logits.grad.dtype == dtype
