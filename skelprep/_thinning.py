"""Exact, foreground-only re-implementations of scikit-image's thinnings.

``skimage.morphology.skeletonize`` sweeps the *whole* image once per
(sub-)iteration, so its cost is (number of iterations) x (image size). The
functions here give the same result pixel for pixel but only visit foreground:

* :func:`thin_2d` replaces Zhang-Suen thinning (2D input), see its Notes;
* :func:`thin_3d` replaces Lee et al. (1994) thinning (3D input).

3D: Lee thinning (``_compute_thin_image`` in
``skimage/morphology/_skeletonize_lee_cy.pyx``) sweeps the padded volume once per
border direction and round. :func:`thin_3d`:

* crops the volume to the foreground bounding box plus a one-voxel zero
  margin (exact: thinning only deletes, and every test reads a 3x3x3
  neighbourhood, so voxels further out are never read);
* keeps the foreground as a list of flat indices in raster order, the order in
  which scikit-image's sweep meets them, and deleted voxels drop out of it;
* per direction, collects candidates from that list with the same tests and
  re-checks them sequentially in the same order, exactly as scikit-image does.

On top of that, the outcome of the tests on a voxel's neighbourhood (simple?
also not an endpoint and Euler invariant?) is cached in the work volume and
invalidated whenever one of its 26 neighbours is deleted. The tests are pure
functions of the 3x3x3 neighbourhood, so the cache never changes the result; it
spares re-testing the stable voxels six times per round.

The kernels are numba functions, compiled with ``cache=True`` (a fresh process
loads them from ``__pycache__``) and ``nogil=True`` (a build's threads run them
in parallel). Importing this module imports numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = [
    "foreground_box",
    "thin_2d",
    "thin_3d",
    "thin_3d_flagged",
    "zhang_points",
]


# --- Neighbourhood numbering --------------------------------------------------
# scikit-image numbers the 3x3x3 neighbourhood as k = 9*(dp+1) + 3*(dc+1) + (dr+1)
# (the row offset varies fastest, not the column one; centre = 13). The lookup
# tables below are written in that numbering, so the neighbourhood code uses it
# too: bit k of the code is set iff neighbour k is foreground.
_K = np.arange(27)
_DP = _K // 9 - 1
_DC = (_K // 3) % 3 - 1
_DR = _K % 3 - 1
_CENTRE_BIT = np.int64(1 << 13)

# Euler characteristic change per octant, column delta G_26 of Table 2 of Lee94,
# indexed by the 8-bit octant configuration (odd entries only: bit 0 is the centre).
_EULER_ODD = [
    1, -1, -1, 1, -3, -1, -1, 1, -1, 1, 1, -1, 3, 1, 1, -1, -3, -1,
    3, 1, 1, -1, 3, 1, -1, 1, 1, -1, 3, 1, 1, -1, -3, 3, -1, 1, 1,
    3, -1, 1, -1, 1, 1, -1, 3, 1, 1, -1, 1, 3, 3, 1, 5, 3, 3, 1,
    -1, 1, 1, -1, 3, 1, 1, -1, -7, -1, -1, 1, -3, -1, -1, 1, -1,
    1, 1, -1, 3, 1, 1, -1, -3, -1, 3, 1, 1, -1, 3, 1, -1, 1, 1,
    -1, 3, 1, 1, -1, -3, 3, -1, 1, 1, 3, -1, 1, -1, 1, 1, -1, 3,
    1, 1, -1, 1, 3, 3, 1, 5, 3, 3, 1, -1, 1, 1, -1, 3, 1, 1, -1,
]  # fmt: skip
_EULER_LUT = np.zeros(256, dtype=np.int64)
_EULER_LUT[1::2] = _EULER_ODD

# Neighbour indices of each octant; the j-th one sets bit (7 - j) of the octant's
# configuration (same table and bit order as scikit-image).
_OCTANTS = np.array(
    [
        [2, 1, 11, 10, 5, 4, 14],  # NEB
        [0, 9, 3, 12, 1, 10, 4],  # NWB
        [8, 7, 17, 16, 5, 4, 14],  # SEB
        [6, 15, 7, 16, 3, 12, 4],  # SWB
        [20, 23, 19, 22, 11, 14, 10],  # NEU
        [18, 21, 9, 12, 19, 22, 10],  # NWU
        [26, 23, 17, 14, 25, 22, 16],  # SEU
        [24, 25, 15, 16, 21, 22, 12],  # SWU
    ],
    dtype=np.int64,
)

# Masks for dilating a 27-bit code by one voxel with shifts (see _is_simple).
# A shift by +1 (dr + 1) would wrap the dr = +1 bit of one row into the dr = -1
# slot of the next, so it is masked with _NOT_R0; likewise for the others.
_NOT_R0 = np.int64(sum(1 << int(k) for k in _K if _DR[k] != -1))
_NOT_R2 = np.int64(sum(1 << int(k) for k in _K if _DR[k] != 1))
_NOT_C0 = np.int64(sum(1 << int(k) for k in _K if _DC[k] != -1))
_NOT_C2 = np.int64(sum(1 << int(k) for k in _K if _DC[k] != 1))

# Per-voxel state in the work volume. Anything non-zero is foreground; the rest
# caches the (direction-independent) tests on the voxel's neighbourhood, valid
# until one of its 26 neighbours is deleted.
_BG = 0
_UNKNOWN = 1
_NOT_SIMPLE = 2
_SIMPLE = 3  # simple, but an endpoint or not Euler invariant
_DELETABLE = 4  # simple, Euler invariant and not an endpoint

# scikit-image's border types in its order [4, 3, 2, 1, 5, 6] (W, E, S, N, U, B),
# as (dp, dr, dc) of the face neighbour that must be background.
_BORDER_STEPS = ((0, -1, 0), (0, 1, 0), (0, 0, 1), (0, 0, -1), (1, 0, 0), (-1, 0, 0))


@njit(cache=True, nogil=True)
def _neighbourhood_code(img: np.ndarray, i: int, offsets: np.ndarray) -> int:
    """27-bit foreground code of the 3x3x3 neighbourhood of flat index ``i``."""
    code = 0
    for k in range(27):
        code |= np.int64(img[i + offsets[k]] != 0) << k  # branch-free
    return code


@njit(cache=True, nogil=True)
def _popcount(x: int) -> int:
    """Number of set bits of a non-negative integer below 2**32."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101 & 0xFFFFFFFF) >> 24


@njit(cache=True, nogil=True)
def _is_euler_invariant(code: int) -> bool:
    """Lee94 condition 1: removing the centre keeps the Euler characteristic."""
    euler = 0
    for o in range(8):
        n = 1
        for j in range(7):
            if (code >> _OCTANTS[o, j]) & 1:
                n |= 1 << (7 - j)
        euler += _EULER_LUT[n]
    return euler == 0


@njit(cache=True, nogil=True)
def _is_simple(code: int) -> bool:
    """Lee94 conditions 2-3: the 26 neighbours (centre removed) form <= 1 26-component.

    scikit-image counts components with its octree labelling; two neighbours
    share an octant iff they are 26-adjacent, so this is plain 26-connectivity,
    computed here by flood-filling the bit code with shift-based dilations.
    """
    nb = code & ~_CENTRE_BIT
    if nb == 0:
        # Zero components counts as simple, as in scikit-image. Isolated voxels
        # fail the Euler test, so they are never candidates, but a candidate
        # isolated by earlier deletions is still deleted in the re-check.
        return True
    comp = nb & -nb  # seed: lowest foreground neighbour
    while True:
        grown = comp | ((comp << 1) & _NOT_R0) | ((comp >> 1) & _NOT_R2)
        grown = grown | ((grown << 3) & _NOT_C0) | ((grown >> 3) & _NOT_C2)
        grown = (grown | (grown << 9) | (grown >> 9)) & nb
        if grown == comp:
            return comp == nb
        comp = grown


@njit(cache=True, nogil=True)
def _classify(code: int) -> int:
    """State of a foreground voxel from its neighbourhood code."""
    if not _is_simple(code):
        return _NOT_SIMPLE
    if _popcount(code) == 2 or not _is_euler_invariant(code):  # 2: centre + one neighbour
        return _SIMPLE
    return _DELETABLE


@njit(cache=True, nogil=True)
def _thin_flat(img: np.ndarray, fg: np.ndarray, offsets: np.ndarray, border_offsets: np.ndarray) -> int:
    """Thin the flat, zero-padded volume ``img`` in place.

    Parameters
    ----------
    img : ndarray of uint8, 1-D
        Flattened C-order volume with a background margin of at least one voxel;
        foreground voxels hold ``_UNKNOWN``, background ``_BG``.
    fg : ndarray of int64
        Flat indices of all foreground voxels, ascending (raster order). Updated
        in place: on return ``fg[:n]`` lists the surviving voxels.
    offsets : ndarray of int64, shape (27,)
        Flat offsets of the 3x3x3 neighbourhood in scikit-image's numbering.
    border_offsets : ndarray of int64
        Flat offset of the face neighbour that defines each border direction,
        in the order the directions are processed.

    Returns
    -------
    n : int
        Number of surviving voxels.
    stranded : bool
        Whether a deleted voxel had no foreground neighbour left. If False, no
        26-connected component was deleted whole: its last voxel would have been
        one (all the others, its only possible neighbours, deleted before it).
    """
    n_fg = fg.shape[0]
    stranded = False
    candidates = np.empty(n_fg, dtype=np.int64)
    num_borders = border_offsets.shape[0]
    unchanged_borders = 0
    # Same loop structure as scikit-image: stop after a round in which no
    # direction deleted anything.
    while unchanged_borders < num_borders:
        unchanged_borders = 0
        for b in range(num_borders):
            step = border_offsets[b]
            # 1) Collect candidates in raster order from the current foreground,
            #    compacting away the voxels deleted by the previous pass.
            n_cand = 0
            n_alive = 0
            for t in range(n_fg):
                i = fg[t]
                if img[i] == _BG:
                    continue
                fg[n_alive] = i
                n_alive += 1
                if img[i + step] != _BG:  # not a border point for this direction
                    continue
                st = img[i]
                if st == _UNKNOWN:
                    st = _classify(_neighbourhood_code(img, i, offsets))
                    img[i] = st
                if st == _DELETABLE:
                    candidates[n_cand] = i
                    n_cand += 1
            n_fg = n_alive
            # 2) Sequential re-check against earlier deletions of this pass. Like
            #    scikit-image (<= 0.26 at least) it re-tests simplicity only, not
            #    the endpoint and Euler conditions; that is what lets it delete
            #    even-width bars entirely. Deleting invalidates the neighbours' cache.
            changed = False
            for t in range(n_cand):
                i = candidates[t]
                st = img[i]
                if st == _UNKNOWN:
                    st = _classify(_neighbourhood_code(img, i, offsets))
                    img[i] = st
                if st >= _SIMPLE:
                    img[i] = _BG
                    changed = True
                    alone = True
                    for k in range(27):
                        j = i + offsets[k]
                        if img[j] != _BG:
                            img[j] = _UNKNOWN
                            alone = False
                    stranded |= alone
            if not changed:
                unchanged_borders += 1
    # The last round deleted nothing and its first pass compacted the list.
    return n_fg, stranded


def foreground_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` (clipped to the array), or None if empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _as_mask(mask: np.ndarray, ndim: int, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != ndim:
        raise ValueError(f"{name} expects a {ndim}D array, got {mask.ndim}D")
    return mask.astype(bool, copy=False)


def _padded_crop(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(foreground box, bool copy of it with a zero margin of one voxel), or None if empty.

    The margin also reproduces scikit-image's padding. The copy is bool because
    np.flatnonzero is much faster on bool; the kernels reinterpret it as uint8.
    """
    box = foreground_box(mask)
    if box is None:
        return None
    work = np.zeros(tuple(b.stop - b.start + 2 for b in box), dtype=bool)
    work[(slice(1, -1),) * mask.ndim] = mask[box]
    return box, work


def thin_3d(mask: np.ndarray) -> np.ndarray:
    """Lee (1994) 3D thinning of a boolean volume.

    >>> bar = np.zeros((5, 5, 9), bool)
    >>> bar[2, 2, 1:8] = True             # a one-voxel line is its own skeleton
    >>> bool((thin_3d(bar) == bar).all())
    True

    Identical, voxel for voxel, to ``skimage.morphology.skeletonize(mask)`` for 3D
    input, but the work grows with the foreground rather than with the volume.

    Parameters
    ----------
    mask : ndarray, 3D
        Volume to thin; non-zero values are foreground. Outside the array counts
        as background, as in scikit-image.

    Returns
    -------
    ndarray of bool
        The thinned volume, same shape as ``mask``.

    Raises
    ------
    ValueError
        If ``mask`` is not 3D.
    """
    return thin_3d_flagged(mask)[0]


def thin_3d_flagged(mask: np.ndarray) -> tuple[np.ndarray, bool]:
    """:func:`thin_3d`, and whether it may have deleted a 26-connected component whole.

    The flag is False only when no voxel lost its last foreground neighbour as
    it was deleted, which a component deleted whole must do (its last voxel).
    Then the search for such components can be skipped: on sparse vessel
    volumes it takes about as long as the thinning.

    >>> bar = np.zeros((8, 8, 36), bool)
    >>> bar[2:4, 2:4, 3:33] = True        # an even-width bar: Lee deletes it whole
    >>> thin, flagged = thin_3d_flagged(bar)
    >>> bool(thin.any()), flagged
    (False, True)
    """
    mask = _as_mask(mask, 3, "thin_3d")
    out = np.zeros(mask.shape, dtype=bool)
    crop = _padded_crop(mask)
    if crop is None:
        return out, False  # empty foreground: nothing to thin
    box, work = crop
    # uint8 view of the crop: True == 1 == _UNKNOWN, the kernel's starting state.
    fg = np.flatnonzero(work).astype(np.int64, copy=False)  # ascending == raster order
    flat = work.view(np.uint8).reshape(-1)

    sp, sr = work.shape[1] * work.shape[2], work.shape[2]
    offsets = (_DP * sp + _DR * sr + _DC).astype(np.int64)
    # scikit-image runs only its first four directions (W, E, S, N) when its
    # padded depth is 3, i.e. for an input of depth 1 (not for a crop of depth 1).
    num_borders = 4 if mask.shape[0] == 1 else 6
    steps = _BORDER_STEPS[:num_borders]
    border_offsets = np.array([dp * sp + dr * sr + dc for dp, dr, dc in steps], dtype=np.int64)

    n_left, stranded = _thin_flat(flat, fg, offsets, border_offsets)
    # Scatter the survivors (cost ~ skeleton size, not volume).
    coords = np.unravel_index(fg[:n_left], work.shape)
    out[tuple(c - 1 + b.start for c, b in zip(coords, box, strict=True))] = True
    return out, stranded


# --- 2D: Zhang-Suen thinning ---------------------------------------------------
# scikit-image's ``_fast_skeletonize`` (``_skeletonize_various_cy.pyx``, 0.26):
# the image is padded with one zero pixel, then it repeats
#
#     for pass in (first, second):
#         for every foreground pixel p (raster order):
#             v = LUT[code(p)]      # code read from the image at the pass start
#             if v == 3 or (v == 1 and first) or (v == 2 and second):
#                 mark p for removal (in a copy)
#         image = copy              # deletions applied after the scan
#
# until an iteration (both passes) removes nothing. Each pass is thus *parallel*:
# the decisions only depend on the image at its start, so the scan order does
# not matter. code(p) sets bit k for the k-th neighbour in the order
# NW, N, NE, E, SE, S, SW, W (weights 1, 2, ..., 128).
#
# Verbatim copy of scikit-image's table. Note that it is *not* the textbook
# Zhang-Suen rule: 25 of its entries differ from conditions (a)-(d) of the paper,
# so it must not be regenerated from the definition.
_ZS_LUT = np.array(
    [
        0, 0, 0, 1, 0, 0, 1, 3, 0, 0, 3, 1, 1, 0, 1, 3, 0, 0, 0, 0, 0, 0,
        0, 0, 2, 0, 2, 0, 3, 0, 3, 3, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 2, 2, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0,
        0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 3, 0, 2, 0, 0, 0, 3, 1,
        0, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 1, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 1, 3, 0, 0,
        1, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 2, 3, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3, 3,
        0, 1, 0, 0, 0, 0, 2, 2, 0, 0, 2, 0, 0, 0,
    ],
    dtype=np.uint8,
)  # fmt: skip


_QUEUED = 4  # see _zhang_suen_flat


@njit(cache=True, nogil=True)
def _zs_code(img: np.ndarray, i: int, ncols: int) -> int:
    """LUT code of pixel ``i``: bit k set iff its k-th neighbour (NW, N, NE, E, SE, S, SW, W) is 1."""
    # Unrolled, and ``& 1``: a deleted pixel holds 2 (see _zhang_suen_flat), which reads as background.
    return (
        (img[i - ncols - 1] & 1)
        | (img[i - ncols] & 1) << 1
        | (img[i - ncols + 1] & 1) << 2
        | (img[i + 1] & 1) << 3
        | (img[i + ncols + 1] & 1) << 4
        | (img[i + ncols] & 1) << 5
        | (img[i + ncols - 1] & 1) << 6
        | (img[i - 1] & 1) << 7
    )


@njit(cache=True, nogil=True)
def _zhang_suen_flat(img: np.ndarray, todo: np.ndarray, ncols: int) -> bool:
    """Zhang-Suen-thin the flat, zero-padded image ``img`` in place.

    Parameters
    ----------
    img : ndarray of uint8, 1-D
        Flattened C-order image with a background margin of at least one pixel;
        1 is foreground, 0 background. On return the skeleton holds 1 and the
        deleted pixels 2 (what :func:`_zhang_points` floods). Work space meanwhile:
        5 (bit 2 set) marks a foreground pixel already queued for the next pass.
    todo : ndarray of int64
        Flat indices of all foreground pixels (any order). Used as work space.
    ncols : int
        Row length of the (padded) image.

    Returns
    -------
    bool
        Whether a component may have been deleted whole: some pass deleted a pixel
        and left none of its 8 neighbours. If False, none was (see Notes of
        :func:`zhang_points`).
    """
    n_fg = todo.shape[0]
    stranded = False
    # Flat offsets of the neighbours in LUT bit order: NW, N, NE, E, SE, S, SW, W.
    offsets = np.array([-ncols - 1, -ncols, -ncols + 1, 1, ncols + 1, ncols, ncols - 1, -1], dtype=np.int64)
    nxt = np.empty(n_fg, dtype=np.int64)
    dels = np.empty(n_fg, dtype=np.int64)
    # img[i] == 5 (1 | _QUEUED) iff i is already in ``nxt``; keeps each list duplicate-free,
    # hence at most n_fg long. A bit of the image rather than an array of its own: the
    # test in 3) is then one load and one compare.
    n_todo = n_fg  # first pass: every foreground pixel (no assumption on the LUT)
    first_pass = True
    # A pixel's LUT value is a function of its 8-neighbourhood only. So a pixel
    # needs re-evaluating in the next pass only if (a) a neighbour was deleted in
    # this pass, or (b) its value says "delete, but in the other pass" (1 seen in
    # the second pass, 2 in the first). Every other surviving pixel keeps value 0
    # and scikit-image's full sweep would leave it alone too. When the list is
    # empty no pass can ever delete anything again: that is scikit-image's
    # "an iteration removed nothing" stop, reached on the same image.
    while n_todo > 0:
        other = 2 if first_pass else 1  # value that waits for the other pass
        n_del = 0
        n_next = 0
        # 1) Decide on the image as it is at the start of the pass.
        for t in range(n_todo):
            i = todo[t]
            img[i] = 1  # no longer queued
            v = _ZS_LUT[_zs_code(img, i, ncols)]
            if v == 0:
                continue
            if v == other:
                img[i] = 1 | _QUEUED
                nxt[n_next] = i
                n_next += 1
            else:  # 3, or the value of this pass
                dels[n_del] = i
                n_del += 1
        # 2) Apply all deletions at once (parallel pass, as in scikit-image) ...
        for t in range(n_del):
            img[dels[t]] = 2
        # 3) ... then queue the surviving neighbours, whose codes just changed.
        for t in range(n_del):
            i = dels[t]
            survivor = False
            for k in range(8):
                j = i + offsets[k]
                v = img[j]
                survivor |= (v & 1) != 0  # 1 or 5: foreground still
                if v == 1:  # foreground, not queued yet
                    img[j] = 1 | _QUEUED
                    nxt[n_next] = j
                    n_next += 1
            stranded |= not survivor
        todo, nxt = nxt, todo
        n_todo = n_next
        first_pass = not first_pass
    return stranded


@njit(cache=True, nogil=True)
def _zhang_points(mask: np.ndarray, n_fg: int) -> tuple[np.ndarray, np.ndarray]:
    """(skeleton, orphans) of a 2D 0/1 uint8 ``mask`` with ``n_fg`` foreground pixels: see :func:`zhang_points`."""
    height, width = mask.shape
    # 1) The foreground's columns row by row, in one branch-free pass (the +1: the last
    #    write of a background pixel); row r holds cols[row_end[r - 1]:row_end[r]]. No
    #    divisions anywhere: a // or % per pixel cost more than the thinning's first pass.
    cols = np.empty(n_fg + 1, dtype=np.int64)
    row_end = np.empty(height, dtype=np.int64)
    n = 0
    for r in range(height):
        for c in range(width):
            cols[n] = c
            n += mask[r, c] != 0
        row_end[r] = n
    r0 = 0
    while row_end[r0] == 0:
        r0 += 1
    r1 = r0
    while row_end[r1] < n_fg:
        r1 += 1
    c0, c1 = width, 0
    for t in range(n_fg):
        c0 = min(c0, cols[t])
        c1 = max(c1, cols[t])
    # 2) The bounding box with a one-pixel zero margin (exact: every test reads a 3x3
    #    neighbourhood, and the margin is scikit-image's padding), and the foreground's flat
    #    indices in it (box) and in ``mask`` (full), both ascending.
    ncols = c1 - c0 + 3
    img = np.zeros((r1 - r0 + 3) * ncols, dtype=np.uint8)
    box = np.empty(n_fg, dtype=np.int64)
    full = np.empty(n_fg, dtype=np.int64)
    t = 0
    for r in range(r0, r1 + 1):
        base = (r - r0 + 1) * ncols + 1 - c0
        while t < row_end[r]:
            box[t] = base + cols[t]
            full[t] = r * width + cols[t]
            img[box[t]] = 1
            t += 1
    stranded = _zhang_suen_flat(img, box.copy(), ncols)
    skeleton = np.empty(n_fg, dtype=np.int64)
    n_skeleton = 0
    for t in range(n_fg):
        if img[box[t]] == 1:
            skeleton[n_skeleton] = full[t]
            n_skeleton += 1
    if not stranded:  # no component was deleted whole (the usual case): no flood needed
        return skeleton[:n_skeleton].copy(), np.empty(0, dtype=np.int64)
    # 3) Flood from the skeleton (1 -> 3) through the deleted pixels (2 -> 3), 8-connected:
    #    the deleted pixels left at 2 are the components without a skeleton pixel.
    queue = np.empty(n_fg, dtype=np.int64)
    tail = 0
    for t in range(n_fg):
        if img[box[t]] == 1:
            img[box[t]] = 3
            queue[tail] = box[t]
            tail += 1
    offsets = np.array([-ncols - 1, -ncols, -ncols + 1, 1, ncols + 1, ncols, ncols - 1, -1], dtype=np.int64)
    head = 0
    while head < tail:
        v = queue[head]
        head += 1
        for k in range(8):
            w = v + offsets[k]
            if img[w] == 2:
                img[w] = 3
                queue[tail] = w
                tail += 1
    orphans = np.empty(n_fg - tail, dtype=np.int64)
    k = 0
    for t in range(n_fg):
        if img[box[t]] == 2:
            orphans[k] = full[t]
            k += 1
    return skeleton[:n_skeleton].copy(), orphans


def zhang_points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`thin_2d` as flat indices, and the foreground pixels no skeleton pixel reaches.

    Parameters
    ----------
    mask : ndarray, 2D
        Image to thin; non-zero values are foreground.

    Returns
    -------
    skeleton : ndarray of int64
        Flat (C-order) indices into ``mask`` of the pixels of ``thin_2d(mask)``, ascending.
    orphans : ndarray of int64
        Flat indices, ascending, of the foreground pixels not 8-connected to a skeleton
        pixel: the components that thinning deleted whole (usually none).

    Notes
    -----
    The flood that finds orphans runs only if some pass deleted a pixel and
    left none of its 8 neighbours in the foreground. That is exact: in the last
    pass that deletes pixels of a component deleted whole, it deletes all that
    is left of it, so each of those pixels loses all its neighbours (they are in
    the same component). The flood costs about a fifth of the kernel's time on
    vessel crops, and real 2D masks (CHASE_DB1, road cracks) never need it.

    Examples
    --------
    >>> mask = np.zeros((5, 7), bool)
    >>> mask[1:4, 1:6] = True    # a 3x5 rectangle: its middle row and a spur
    >>> [a.tolist() for a in zhang_points(mask)]
    [[11, 15, 16, 17], []]
    """
    mask = _as_mask(mask, 2, "zhang_points")
    n_fg = int(np.count_nonzero(mask))
    if n_fg == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return _zhang_points(np.ascontiguousarray(mask).view(np.uint8), n_fg)


def thin_2d(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a 2D boolean image, exactly as scikit-image does it.

    Identical, pixel for pixel, to ``skimage.morphology.skeletonize(mask)`` for 2D
    input, but the work grows with the number of pixels deleted (and their
    neighbours) instead of (number of passes) x (image size).

    Parameters
    ----------
    mask : ndarray, 2D
        Image to thin; non-zero values are foreground. Outside the array counts as
        background, as in scikit-image.

    Returns
    -------
    ndarray of bool
        The thinned image, same shape as ``mask``.

    Raises
    ------
    ValueError
        If ``mask`` is not 2D.

    Notes
    -----
    scikit-image applies each sub-iteration (pass) in parallel: decisions are
    made on the image as it was at the start of the pass and applied afterwards.
    The result therefore does not depend on which pixels are looked at, as long
    as every pixel it would delete is looked at. Here a pass only looks at the
    pixels whose 8-neighbourhood changed in the previous pass, plus those whose
    table value defers them to the other pass; every other pixel has the same
    neighbourhood, hence the same table value, as when it was last found not
    deletable. The image is first cropped to the foreground bounding box plus a
    one-pixel zero margin, which is exact because every test reads a 3x3
    neighbourhood and thinning only deletes.
    """
    mask = _as_mask(mask, 2, "thin_2d")
    out = np.zeros(mask.shape, dtype=bool)
    out.reshape(-1)[zhang_points(mask)[0]] = True
    return out
