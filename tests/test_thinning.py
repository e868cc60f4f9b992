"""``thin_3d`` / ``thin_2d`` must equal ``skimage.morphology.skeletonize`` voxel for voxel (3D / 2D input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from skelprep import _thinning
from skelprep._thinning import thin_2d, thin_3d

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared/data"
OCTA_LABELS = SHARED_DATA / "real/tubenet_octa/OCTA-Labels.tif"
CHASE_MASKS = sorted((SHARED_DATA / "real/chase_db1").glob("*.png"))
ROAD_CRACK_MASKS = sorted((SHARED_DATA / "nnunet/Dataset001_RoadCracks/labelsTr").glob("*.png"))


def assert_same_as_skimage(mask: np.ndarray) -> np.ndarray:
    """``thin_3d`` or ``thin_2d`` (by dimension) equals scikit-image; returns our skeleton.

    In 2D, :func:`_thinning.zhang_points` also reports exactly the pixels of the
    components that scikit-image deleted whole (none, so far, for any input tried);
    in 3D, :func:`_thinning.thin_3d_flagged` flags every volume in which it did.
    """
    expected = skeletonize(mask.astype(bool))
    got = (thin_3d if mask.ndim == 3 else thin_2d)(mask)
    assert got.dtype == bool
    assert got.shape == mask.shape
    diff = np.argwhere(got != expected)
    assert diff.size == 0, f"{len(diff)} voxels differ, first at {diff[:5].tolist()}"
    deleted_whole = unreached_pixels(mask.astype(bool), expected)
    if mask.ndim == 2:
        assert _thinning.zhang_points(mask)[1].tolist() == deleted_whole.tolist()
    if mask.ndim == 3:  # unflagged: no component was deleted whole
        assert _thinning.thin_3d_flagged(mask)[1] or not deleted_whole.size
    return got


def unreached_pixels(mask: np.ndarray, skeleton: np.ndarray) -> np.ndarray:
    """Flat indices of the foreground in 8- / 26-connected components of ``mask`` without a ``skeleton`` pixel."""
    components, n = ndi.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    kept = np.zeros(n + 1, dtype=bool)
    kept[components[skeleton]] = True
    return np.flatnonzero((components > 0) & ~kept[components])


def random_blobs(shape: tuple[int, int, int], density: float, sigma: float, seed: int) -> np.ndarray:
    """Smoothed noise thresholded at the quantile that gives ``density`` foreground."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random(shape), sigma)
    return field > np.quantile(field, 1.0 - density)


def random_tubes(shape: tuple[int, int, int], n: int, radii: tuple[float, float], seed: int) -> np.ndarray:
    """Union of ``n`` straight tubes (capsules) between random points, random radii."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.indices(shape), axis=-1).astype(float)
    out = np.zeros(shape, dtype=bool)
    for _ in range(n):
        a, b = rng.uniform(0, shape), rng.uniform(0, shape)
        ab = b - a
        t = np.clip(((grid - a) @ ab) / max(ab @ ab, 1e-9), 0.0, 1.0)
        dist = np.linalg.norm(grid - (a + t[..., None] * ab), axis=-1)
        out |= dist <= rng.uniform(*radii)
    return out


@pytest.mark.parametrize("ndim", [3, 2])
@pytest.mark.parametrize("density", [0.05, 0.2, 0.4, 0.6, 0.85])
@pytest.mark.parametrize("seed", range(4))
def test_random_blobs(ndim: int, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if ndim == 3:
        shape, sigma = tuple(int(s) for s in rng.integers(6, 22, 3)), 1.5
    else:  # larger images, blobs of several sizes
        shape, sigma = tuple(int(s) for s in rng.integers(8, 90, 2)), float(rng.uniform(1.0, 4.0))
    assert_same_as_skimage(random_blobs(shape, density, sigma=sigma, seed=seed))


# ndim -> (shape, first seed, densities)
_NOISE = {3: ((9, 11, 10), 100, [0.1, 0.3, 0.5, 0.7]), 2: ((37, 41), 200, [0.1, 0.3, 0.5, 0.7, 0.9])}


@pytest.mark.parametrize(("ndim", "density"), [(n, d) for n, (*_, ds) in _NOISE.items() for d in ds])
@pytest.mark.parametrize("seed", range(3))
def test_random_noise(ndim: int, density: float, seed: int) -> None:
    # Unsmoothed noise: ragged shapes with many thin bits, holes and cavities.
    shape, first_seed, _ = _NOISE[ndim]
    rng = np.random.default_rng(first_seed + seed)
    assert_same_as_skimage(rng.random(shape) < density)


@pytest.mark.parametrize(
    "n, radii",
    [(1, (0.5, 1.0)), (3, (1.0, 2.0)), (5, (1.5, 3.0)), (8, (0.8, 2.5)), (4, (3.0, 5.0))],
)
@pytest.mark.parametrize("seed", range(3))
def test_random_tubes(n: int, radii: tuple[float, float], seed: int) -> None:
    assert_same_as_skimage(random_tubes((24, 28, 26), n, radii, seed))


@pytest.mark.parametrize("seed", range(4))
def test_shapes_touching_the_border(seed: int) -> None:
    # Blobs and tubes that run off every face of the array: the outside is background.
    mask = random_blobs((14, 15, 16), 0.5, sigma=2.0, seed=seed)
    mask[0], mask[:, -1], mask[:, :, 0] = True, True, True
    assert_same_as_skimage(mask)
    assert_same_as_skimage(random_tubes((12, 16, 10), 6, (1.5, 3.5), seed + 10))


@pytest.mark.parametrize(
    "shape, pos",
    [((8, 10, 12), p) for p in [(0, 0, 0), (4, 5, 6), (7, 0, 3), (7, 9, 11)]]
    + [((9, 12), p) for p in [(0, 0), (3, 4), (8, 0), (0, 11), (8, 11)]],
)
def test_single_voxel_is_kept(shape: tuple[int, ...], pos: tuple[int, ...]) -> None:
    mask = np.zeros(shape, dtype=bool)
    mask[pos] = True
    got = assert_same_as_skimage(mask)
    assert got[pos] and got.sum() == 1


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 1), (2, 2, 2), (3, 3, 3), (5, 5, 5), (6, 6, 6), (3, 4, 7), (9, 8, 7)]
    + [(1, 1), (1, 2), (2, 2), (3, 3), (4, 4), (5, 5), (3, 8), (17, 16), (64, 50)],
)
def test_full_arrays(shape: tuple[int, ...]) -> None:
    assert_same_as_skimage(np.ones(shape, dtype=bool))


@pytest.mark.parametrize("size", [3, 4, 5, 6])
def test_cube_inside_volume(size: int) -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[2 : 2 + size, 3 : 3 + size, 1 : 1 + size] = True
    assert_same_as_skimage(mask)


@pytest.mark.parametrize("width", [2, 4])
def test_even_width_bars_vanish_like_skimage(width: int) -> None:
    # scikit-image's Lee thinning deletes these entirely (scikit-image issue
    # #3757); an exact re-implementation must do the same.
    mask = np.zeros((width + 4, width + 4, 36), dtype=bool)
    mask[2 : 2 + width, 2 : 2 + width, 3:33] = True
    assert not assert_same_as_skimage(mask).any()


@pytest.mark.parametrize("width", [1, 3, 5])
def test_odd_width_bars_keep_a_line(width: int) -> None:
    mask = np.zeros((width + 4, width + 4, 36), dtype=bool)
    mask[2 : 2 + width, 2 : 2 + width, 3:33] = True
    assert assert_same_as_skimage(mask).any()


@pytest.mark.parametrize("seed", range(3))
def test_depth_one_input_and_flat_crop(seed: int) -> None:
    # An input of depth 1 makes scikit-image run only 4 of its 6 directions; a
    # single foreground plane inside a deeper volume must still get all 6.
    plane = random_blobs((1, 20, 24), 0.5, sigma=1.5, seed=seed)
    assert_same_as_skimage(plane)
    deep = np.zeros((5, 20, 24), dtype=bool)
    deep[2] = plane[0]
    assert_same_as_skimage(deep)


@pytest.mark.parametrize(
    "shape", [(0, 4, 5), (3, 0, 2), (4, 5, 6), (1, 1, 1)] + [(0, 0), (0, 5), (4, 0), (6, 7), (1, 1)]
)
def test_empty(shape: tuple[int, ...]) -> None:
    got = (thin_3d if len(shape) == 3 else thin_2d)(np.zeros(shape, dtype=bool))
    assert got.shape == shape and got.dtype == bool and not got.any()
    assert_same_as_skimage(np.zeros(shape, dtype=bool))


def test_non_bool_and_non_contiguous_input() -> None:
    labels = random_blobs((16, 18, 20), 0.4, sigma=1.5, seed=7).astype(np.uint8) * 3
    labels[labels > 0] += np.random.default_rng(0).integers(0, 2, (labels > 0).sum()).astype(np.uint8)
    assert_same_as_skimage(labels)
    assert_same_as_skimage(labels.astype(np.float32) / 2)
    assert_same_as_skimage(labels.transpose(2, 0, 1))
    assert_same_as_skimage(labels[::-1, 1::2])


@pytest.mark.parametrize("thin, ndim, other", [(thin_3d, 3, (4, 4)), (thin_2d, 2, (2, 4, 4))])
def test_rejects_other_dimensions(thin, ndim: int, other: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=f"{ndim}D"):
        thin(np.ones(other, dtype=bool))


@settings(max_examples=300, deadline=None)
@given(hnp.arrays(dtype=bool, shape=hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=8)))
def test_hypothesis_small_volumes(mask: np.ndarray) -> None:
    assert_same_as_skimage(mask)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.floats(0.05, 0.95),
    st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
)
def test_hypothesis_dense_noise(seed: int, density: float, shape: tuple[int, int, int]) -> None:
    assert_same_as_skimage(np.random.default_rng(seed).random(shape) < density)


def test_simple_point_test_is_26_connectivity() -> None:
    # The kernel counts the 26-components of the neighbourhood minus its centre
    # with bit tricks; check that against scipy's labelling.
    rng = np.random.default_rng(0)
    k = np.arange(27)
    draw = lambda: rng.integers(0, 1 << 27, 500)  # noqa: E731
    # AND/OR of random words gives ~25 % / ~75 % dense neighbourhoods.
    for codes in (draw() & draw(), draw(), draw() | draw()):
        for code in codes:
            code = int(code) | (1 << 13)
            cube = np.zeros((3, 3, 3), dtype=bool)
            # Bit k is the voxel at (dp, dr, dc) + 1 = (k // 9, k % 3, (k // 3) % 3).
            cube[k // 9, k % 3, (k // 3) % 3] = (code >> k) & 1
            cube[1, 1, 1] = False
            n_comp = ndi.label(cube, structure=np.ones((3, 3, 3)))[1]
            assert _thinning._is_simple(code) == (n_comp <= 1), bin(code)


def test_octa_labels() -> None:
    tifffile = pytest.importorskip("tifffile")
    if not OCTA_LABELS.is_file():
        pytest.skip(f"{OCTA_LABELS} not available")
    mask = tifffile.imread(OCTA_LABELS) > 0
    assert mask.ndim == 3
    assert assert_same_as_skimage(mask).any()


# --- 2D only: Zhang-Suen thinning (the tests above run both dimensions) ---------


def read_png_mask(path: Path) -> np.ndarray:
    image = pytest.importorskip("PIL.Image")
    with image.open(path) as im:
        mask = np.asarray(im) > 0
    return mask if mask.ndim == 2 else mask.any(axis=-1)


def test_2d_large_thick_blobs() -> None:
    # Road-mask-like: ~60 % foreground in regions tens of pixels wide, so many
    # passes; also a diagonal rectangle and a disc (symmetric, tie-prone shapes).
    assert_same_as_skimage(random_blobs((300, 340), 0.6, sigma=12.0, seed=5))
    yy, xx = np.mgrid[:120, :130]
    assert_same_as_skimage((yy - 60) ** 2 + (xx - 64) ** 2 <= 50**2)
    assert_same_as_skimage((np.abs(yy - xx) < 15) & (np.abs(yy + xx - 125) < 70))


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 8, 11])
def test_2d_lines_bars_and_rings(width: int) -> None:
    mask = np.zeros((40, 60), dtype=bool)
    mask[5 : 5 + width, 3:57] = True  # horizontal bar
    mask[12:38, 40 : 40 + width] = True  # vertical bar, touching nothing
    assert_same_as_skimage(mask)
    # Diagonal band of the given width.
    yy, xx = np.mgrid[:50, :50]
    assert_same_as_skimage((np.abs(yy - xx) < width) & (yy > 3) & (yy < 46))
    # Ring and square frame.
    r = np.hypot(yy - 24.5, xx - 24.5)
    assert_same_as_skimage((r >= 12) & (r < 12 + width))
    frame = np.zeros((50, 50), dtype=bool)
    frame[5:45, 5:45] = True
    frame[5 + width : 45 - width, 5 + width : 45 - width] = False
    assert_same_as_skimage(frame)


@pytest.mark.parametrize("seed", range(4))
def test_2d_shapes_touching_the_border(seed: int) -> None:
    mask = random_blobs((33, 29), 0.5, sigma=2.0, seed=seed)
    mask[0], mask[-1, ::2], mask[:, 0], mask[1::3, -1] = True, True, True, True
    assert_same_as_skimage(mask)


@pytest.mark.parametrize("seed", range(3))
def test_2d_one_pixel_wide_images(seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    for density in (0.3, 0.7, 1.0):
        line = rng.random(25) < density
        assert_same_as_skimage(line[None, :])
        assert_same_as_skimage(line[:, None])
        assert_same_as_skimage(np.stack([line, rng.random(25) < density]))  # 2 rows


def test_2d_non_bool_and_non_contiguous_input() -> None:
    labels = random_blobs((40, 50), 0.5, sigma=2.0, seed=9).astype(np.uint8) * 2
    assert_same_as_skimage(labels)
    assert_same_as_skimage(labels.astype(np.float64) - 0.5 * (labels == 0))  # -0.5 counts as foreground
    assert_same_as_skimage(labels.T)
    assert_same_as_skimage(labels[::-1, 1::2])


@settings(max_examples=1000, deadline=None)
@given(hnp.arrays(dtype=bool, shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)))
def test_2d_hypothesis_small_images(mask: np.ndarray) -> None:
    assert_same_as_skimage(mask)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 0.95), st.tuples(st.integers(1, 30), st.integers(1, 30)))
def test_2d_hypothesis_dense_noise(seed: int, density: float, shape: tuple[int, int]) -> None:
    assert_same_as_skimage(np.random.default_rng(seed).random(shape) < density)


def test_zhang_points_floods_only_when_a_pass_strands_a_pixel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The orphan flood, run as Python: it finds a component deleted whole, and runs only when told to."""
    mask = np.zeros((9, 12), bool)
    mask[1:4, 1:6] = True  # thinned to a line
    mask[6:8, 8:11] = True  # deleted whole by the stand-in thinning below
    deleted = {}
    real = _thinning._zhang_suen_flat

    def thinning(img: np.ndarray, todo: np.ndarray, ncols: int) -> bool:
        real(img, todo, ncols)  # the compiled kernel, then delete the second block
        block = np.zeros(img.size, bool)
        block.reshape(-1, ncols)[6:8, 8:11] = True  # the crop starts at (1, 1), with a one-pixel margin
        img[block & (img != 0)] = 2
        return deleted.setdefault("strands", True)

    kernel = _thinning._zhang_points.py_func  # the Python source; its callees stay compiled
    monkeypatch.setattr(_thinning, "_zhang_suen_flat", thinning)
    skeleton, orphans = kernel(mask.view(np.uint8), int(mask.sum()))
    assert orphans.tolist() == np.flatnonzero(np.pad(np.ones((2, 3), bool), ((6, 1), (8, 1)))).tolist()
    assert skeleton.tolist() == _thinning.zhang_points(mask[:5])[0].tolist()
    deleted["strands"] = False  # no pixel stranded: the flood is skipped, whatever is left at 2
    assert kernel(mask.view(np.uint8), int(mask.sum()))[1].size == 0


@pytest.mark.parametrize("path", CHASE_MASKS + ROAD_CRACK_MASKS, ids=lambda p: p.name)
def test_2d_real_masks(path: Path) -> None:
    mask = read_png_mask(path)
    assert mask.any()
    assert assert_same_as_skimage(mask).any()
