"""Face manipulations for the offline demo data: self-blended images and held-out fakes.

* :func:`self_blend` — self-blended images (SBI; Shiohara & Yamasaki, CVPR 2022): a face is
  blended with a colour-, frequency- and slightly geometry-perturbed copy of itself through a
  soft, randomly deformed face mask. No landmark model with a face outline is available, so the
  convex-hull mask of the paper is replaced by an ellipse fitted to the face box (centred and
  rotated on the five MTCNN landmarks when given), elastically deformed and Gaussian-blurred.
* :func:`face_swap` — cross-identity swap: another person's face, aligned on the five landmarks
  and colour-matched (Reinhard transfer in Lab), pasted through the same kind of mask.
* :func:`upsample_blend` — the face region replaced by a 4x downscaled-then-upscaled copy (the
  low-resolution generator artefact of early face-swap tools), through the same kind of mask.

Only the *source* is perturbed; the target (the image the caller passes) is left untouched, so a
blended image equals its input exactly wherever the mask is zero. Every function takes an
explicit ``numpy.random.Generator`` and is deterministic given its state.
"""

from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]

__all__ = [
    "BLEND_RATIOS",
    "blend",
    "centre_box",
    "colour_transfer",
    "face_mask",
    "face_swap",
    "perturb_source",
    "self_blend",
    "self_blend_with_mask",
    "upsample_blend",
]

# Blend ratios used by SBI: a partial blend in half of the cases.
BLEND_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
# Mask values below this cannot change a uint8 pixel and are zeroed.
_MASK_FLOOR = 1.0 / 255.0


def centre_box(shape: tuple[int, ...], margin: float = 1.3) -> Box:
    """The face box implied by a face crop made with ``margin`` (centred, side/margin)."""
    h, w = shape[:2]
    bw, bh = w / margin, h / margin
    return (round((w - bw) / 2), round((h - bh) / 2), round(bw), round(bh))


def _check(img: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {img.dtype} {img.shape}")


def blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * source + (1 - mask) * target``, rounded to uint8 (``mask`` is HxW in [0, 1]).

    With ``source is target`` the result equals ``target`` bit for bit; real samples go through
    this same call so that both classes share the exact code path.
    """
    m = mask.astype(np.float32)[..., None]
    out = source.astype(np.float32) * m + target.astype(np.float32) * (1.0 - m)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def face_mask(
    shape: tuple[int, ...],
    box: Box,
    rng: np.random.Generator,
    landmarks: np.ndarray | None = None,
    deform: bool = True,
    blur: bool = True,
) -> np.ndarray:
    """A soft face mask (float32 HxW in [0, 1]): a random ellipse over the face box, elastically
    deformed and Gaussian-blurred. Values below 1/255 are exactly 0."""
    h, w = shape[:2]
    bx, by, bw, bh = box
    side = float(max(bw, bh))
    if landmarks is not None and len(landmarks) == 5:
        lm = np.asarray(landmarks, dtype=np.float64)
        eyes = (lm[0] + lm[1]) / 2.0
        mouth = (lm[3] + lm[4]) / 2.0
        dx, dy = lm[1] - lm[0]
        angle = float(np.degrees(np.arctan2(dy, dx)))
        # The eye-to-mouth distance d sets the size: a 68-landmark hull (SBI's mask) spans about
        # eyebrows (eyes - 0.4 d) to chin (mouth + 0.8 d), and about 1.7 d across.
        down = mouth - eyes
        d = max(float(np.hypot(*down)), 0.2 * side)
        unit = down / max(float(np.hypot(*down)), 1e-6)
        cx, cy = (eyes + mouth) / 2.0 + unit * d * rng.uniform(0.05, 0.2)
        ay = d * rng.uniform(1.1, 1.4)
        ax = ay * rng.uniform(0.72, 0.85)
    else:
        cx = bx + bw / 2.0
        cy = by + bh / 2.0 + bh * rng.uniform(0.0, 0.08)
        angle = 0.0
        ax = bw * rng.uniform(0.36, 0.46)
        ay = bh * rng.uniform(0.44, 0.54)
    cx += side * rng.uniform(-0.02, 0.02)
    cy += side * rng.uniform(-0.02, 0.02)
    angle += rng.uniform(-8.0, 8.0)
    canvas = np.zeros((h, w), dtype=np.uint8)
    shift = 4  # sub-pixel precision for cv2.ellipse
    cv2.ellipse(
        canvas,
        (round(cx * 16), round(cy * 16)),
        (max(1, round(ax * 16)), max(1, round(ay * 16))),
        angle,
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
        shift,
    )
    mask: np.ndarray = canvas.astype(np.float32) / 255.0
    if deform:
        # smooth random displacement field from a coarse random grid
        grid = rng.uniform(-1.0, 1.0, size=(2, 5, 5)).astype(np.float32)
        amp = side * rng.uniform(0.03, 0.08)
        dxf = cv2.resize(grid[0], (w, h), interpolation=cv2.INTER_CUBIC) * amp
        dyf = cv2.resize(grid[1], (w, h), interpolation=cv2.INTER_CUBIC) * amp
        xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mask = np.asarray(cv2.remap(mask, xs + dxf, ys + dyf, cv2.INTER_LINEAR, borderValue=0.0))
    if blur:
        sigma = side * rng.uniform(0.03, 0.09)
        mask = np.asarray(
            cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_CONSTANT)
        )
        peak = float(mask.max())
        if peak > 0:
            mask = np.clip(mask / peak * rng.uniform(1.0, 1.3), 0.0, 1.0)
    mask[mask < _MASK_FLOOR] = 0.0
    return mask.astype(np.float32)


def _random_affine(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small translate/scale (SBI: +-3% x, +-1.5% y, scale 0.95-1.05) about the centre."""
    h, w = img.shape[:2]
    s = rng.uniform(0.95, 1.05)
    tx = rng.uniform(-0.03, 0.03) * w
    ty = rng.uniform(-0.015, 0.015) * h
    m = np.array(
        [[s, 0.0, (1 - s) * (w - 1) / 2 + tx], [0.0, s, (1 - s) * (h - 1) / 2 + ty]],
        dtype=np.float64,
    )
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def perturb_source(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The SBI source transforms: colour (RGB shift, hue/saturation/value, brightness/contrast),
    frequency (downscale-upscale, sharpen or blur) and a small translate/scale."""
    _check(img)
    h, w = img.shape[:2]
    f = img.astype(np.float32)
    # colour
    f += rng.uniform(-20.0, 20.0, size=3).astype(np.float32)
    hsv = cv2.cvtColor(np.clip(f, 0, 255) / 255.0, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-10.0, 10.0), 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.75, 1.25), 0.0, 1.0)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.8, 1.2), 0.0, 1.0)
    f = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    mean = f.mean()
    f = (f - mean) * rng.uniform(0.85, 1.15) + mean + rng.uniform(-10.0, 10.0)
    out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    # frequency
    kind = rng.integers(0, 4)
    if kind == 0:  # downscale-upscale
        s = rng.uniform(0.4, 0.85)
        small = cv2.resize(
            out, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA
        )
        interp = (cv2.INTER_LINEAR, cv2.INTER_CUBIC)[int(rng.integers(0, 2))]
        out = cv2.resize(small, (w, h), interpolation=interp)
    elif kind == 1:  # unsharp mask
        amount = rng.uniform(0.3, 1.0)
        soft = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.8, 1.5))
        out = cv2.addWeighted(out, 1.0 + amount, soft, -amount, 0.0)
    elif kind == 2:  # blur
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=rng.uniform(0.5, 1.3))
    # kind == 3: no frequency change
    return _random_affine(out, rng)


def self_blend_with_mask(
    face_rgb: np.ndarray,
    rng: np.random.Generator,
    box: Box | None = None,
    landmarks: np.ndarray | None = None,
    margin: float = 1.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Self-blended image and the blend mask actually used (mask * blend ratio).

    ``box``/``landmarks`` locate the face in ``face_rgb``; by default the face is assumed centred
    as in a ``crop_face(..., margin)`` crop.
    """
    _check(face_rgb)
    if box is None:
        box = centre_box(face_rgb.shape, margin)
    mask = face_mask(face_rgb.shape, box, rng, landmarks)
    source = perturb_source(face_rgb, rng)
    ratio = float(BLEND_RATIOS[int(rng.integers(0, len(BLEND_RATIOS)))])
    mask = mask * np.float32(ratio)
    mask[mask < _MASK_FLOOR] = 0.0
    return blend(source, face_rgb, mask), mask


def self_blend(
    face_rgb: np.ndarray,
    rng: np.random.Generator,
    box: Box | None = None,
    landmarks: np.ndarray | None = None,
    margin: float = 1.3,
) -> np.ndarray:
    """Self-blended fake of ``face_rgb`` (see :func:`self_blend_with_mask`)."""
    return self_blend_with_mask(face_rgb, rng, box, landmarks, margin)[0]


def colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Reinhard colour transfer: match ``source``'s Lab mean/std to ``target``'s inside
    ``mask > 0.5`` (both images share the frame)."""
    sel = mask > 0.5
    if sel.sum() < 16:
        return source.copy()
    src = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    tgt = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    s_mu, s_sd = src[sel].mean(0), src[sel].std(0) + 1e-3
    t_mu, t_sd = tgt[sel].mean(0), tgt[sel].std(0) + 1e-3
    out = (src - s_mu) / s_sd * t_sd + t_mu
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_LAB2RGB)


def face_swap(
    target: np.ndarray,
    donor: np.ndarray,
    rng: np.random.Generator,
    target_box: Box | None = None,
    target_landmarks: np.ndarray | None = None,
    donor_landmarks: np.ndarray | None = None,
    margin: float = 1.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``donor``'s face onto ``target`` (both face crops of the same size); returns
    ``(image, mask)``. The donor is aligned by a similarity transform on the five landmarks when
    both are given (else the crops are assumed aligned) and colour-matched to the target."""
    _check(target)
    _check(donor)
    h, w = target.shape[:2]
    if target_box is None:
        target_box = centre_box(target.shape, margin)
    if donor.shape != target.shape:
        donor = cv2.resize(donor, (w, h), interpolation=cv2.INTER_AREA)
    warped = donor
    if target_landmarks is not None and donor_landmarks is not None:
        m, _ = cv2.estimateAffinePartial2D(
            np.asarray(donor_landmarks, np.float32), np.asarray(target_landmarks, np.float32)
        )
        if m is not None:
            warped = cv2.warpAffine(
                donor, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
            )
    mask = face_mask(target.shape, target_box, rng, target_landmarks)
    matched = colour_transfer(warped, target, mask)
    ratio = float(rng.choice([0.85, 1.0, 1.0]))
    mask = mask * np.float32(ratio)
    mask[mask < _MASK_FLOOR] = 0.0
    return blend(matched, target, mask), mask


def upsample_blend(
    face_rgb: np.ndarray,
    rng: np.random.Generator,
    box: Box | None = None,
    landmarks: np.ndarray | None = None,
    factor: int = 4,
    margin: float = 1.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Face region replaced by a ``factor``x downscaled-then-upscaled copy; ``(image, mask)``."""
    _check(face_rgb)
    h, w = face_rgb.shape[:2]
    if box is None:
        box = centre_box(face_rgb.shape, margin)
    small = cv2.resize(
        face_rgb, (max(4, w // factor), max(4, h // factor)), interpolation=cv2.INTER_AREA
    )
    interp = (cv2.INTER_LINEAR, cv2.INTER_CUBIC)[int(rng.integers(0, 2))]
    up = cv2.resize(small, (w, h), interpolation=interp)
    mask = face_mask(face_rgb.shape, box, rng, landmarks)
    return blend(up, face_rgb, mask), mask
