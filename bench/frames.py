"""JPEG frames to send: the repo's ``examples/*.jpg`` faces in generated scenes, or generated ones.

Generated frames are 1/f ("pink") noise scenes with a face-like ellipse, so that they decode,
resize and compress like photographs rather than like flat colour or white noise.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

MIN_SIDE, MAX_SIDE = 224, 640


def _pink_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A (H, W) field with a 1/f amplitude spectrum, scaled to 0..1."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    spectrum = (rng.normal(size=radius.shape) + 1j * rng.normal(size=radius.shape)) / radius
    spectrum[0, 0] = 0.0
    field = np.fft.irfft2(spectrum, s=(height, width))
    field -= field.min()
    return field / max(float(field.max()), 1e-9)


def synthetic_frame(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """One natural-looking RGB frame of the given size."""
    base = rng.uniform(60, 180) + rng.uniform(-25, 25, size=3)
    tint = rng.uniform(-50, 50, size=3)
    luminance = _pink_noise(rng, height, width)
    colour = _pink_noise(rng, height, width)
    pixels = base + (luminance[..., None] - 0.5) * 160 + (colour[..., None] - 0.5) * tint
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    face_h = int(min(width, height) * rng.uniform(0.35, 0.7))
    face_w = int(face_h * rng.uniform(0.65, 0.8))
    cx = int(rng.uniform(0.3, 0.7) * width)
    cy = int(rng.uniform(0.35, 0.6) * height)
    red = rng.uniform(140, 240)
    green = red * rng.uniform(0.68, 0.85)
    skin = (int(red), int(green), int(green * rng.uniform(0.72, 0.9)))
    box = (cx - face_w // 2, cy - face_h // 2, cx + face_w // 2, cy + face_h // 2)
    draw.ellipse(box, fill=skin)
    eye_y = cy - face_h // 8
    eye_r = max(2, face_w // 14)
    for eye_x in (cx - face_w // 5, cx + face_w // 5):
        eye = (eye_x - eye_r, eye_y - eye_r, eye_x + eye_r, eye_y + eye_r)
        draw.ellipse(eye, fill=(40, 30, 30))
    mouth_y = cy + face_h // 4
    draw.arc(
        (cx - face_w // 5, mouth_y - face_h // 12, cx + face_w // 5, mouth_y + face_h // 12),
        start=10,
        end=170,
        fill=(120, 40, 50),
        width=max(1, face_w // 40),
    )
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.6, 1.5))))
    shading = 0.8 + 0.4 * _pink_noise(rng, height, width)[..., None]
    grain = rng.normal(0, 4, size=(height, width, 3))
    pixels = np.asarray(image, dtype=np.float64) * shading + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def generate_frames(count: int = 32, seed: int = 0) -> list[bytes]:
    """``count`` distinct JPEGs, each side between 224 and 640 px, mostly landscape."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        height = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        if height > width and rng.random() < 0.75:
            width, height = height, width
        quality = int(rng.integers(80, 96))
        frames.append(encode_jpeg(synthetic_frame(rng, width, height), quality))
    return frames


def frame_with_face(rng: np.random.Generator, face: Image.Image) -> Image.Image:
    """A generated 224-640 px background with ``face`` (rescaled, maybe mirrored) pasted in."""
    width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    height = int(rng.integers(MIN_SIDE, min(width, MAX_SIDE) + 1))
    frame = synthetic_frame(rng, width, height)
    side = int(rng.integers(min(height, 160), height + 1))
    scale = side / max(face.size)
    pasted = face.resize((max(1, round(face.width * scale)), max(1, round(face.height * scale))))
    if rng.random() < 0.5:
        pasted = pasted.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    left = int(rng.integers(0, max(1, width - pasted.width + 1)))
    top = int(rng.integers(0, max(1, height - pasted.height + 1)))
    frame.paste(pasted, (left, top))
    return frame


def load_frames(examples_dir: Path | None = None, count: int = 32, seed: int = 0) -> list[bytes]:
    """``count`` distinct JPEGs of 224-640 px a side.

    When ``examples_dir/*.jpg`` holds face images, each frame is one of them placed in a larger
    generated scene (so that decode and resize cost what a video frame costs); otherwise the
    frames are fully generated.
    """
    rng = np.random.default_rng(seed)
    faces = []
    for path in sorted(examples_dir.glob("*.jpg")) if examples_dir else []:
        with Image.open(path) as image:
            faces.append(image.convert("RGB"))
    if not faces:
        return generate_frames(count, seed)
    return [
        encode_jpeg(frame_with_face(rng, faces[i % len(faces)]), int(rng.integers(80, 96)))
        for i in range(count)
    ]
