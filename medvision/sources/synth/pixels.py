"""The pixels of a synthetic view: a chest radiograph or a skin lesion with the class's finding.

Each case is drawn in its own coordinates from a case seed, and each view adds a random pose, exposure and the
site's shift and noise, so views of one patient differ the way real repeat acquisitions do (MICLe positive pairs).
"""

from __future__ import annotations

import numpy as np

from medvision.sources.synth.plan import Patient, Site

__all__ = ["draw_view"]

_HARD_FAINT, _HARD_NOISE = 0.45, 0.03  # the planted subgroup gap: pattern amplitude and extra noise
_SKIN_RGB = np.array(
    [
        (0.96, 0.84, 0.76),
        (0.92, 0.76, 0.64),
        (0.84, 0.64, 0.50),
        (0.70, 0.50, 0.36),
        (0.52, 0.36, 0.25),
        (0.36, 0.24, 0.17),
    ]
)


def _soft(x: np.ndarray, width: float) -> np.ndarray:
    """A smooth step from 0 (x << 0) to 1 (x >> 0); tanh form, so no overflow warnings."""
    return 0.5 + 0.5 * np.tanh(x / (2 * width))


def _field(c: np.random.Generator, u: np.ndarray, v: np.ndarray, waves: int, freq: float) -> np.ndarray:
    """A smooth random texture of about unit variance: plane waves around ``freq`` radians per unit.

    It is evaluated in the case's own coordinates, so every view of one case shows the same texture.
    """
    ang, ph = c.uniform(0, 2 * np.pi, waves), c.uniform(0, 2 * np.pi, waves)
    f = freq * c.uniform(0.6, 1.4, waves)
    phase = u[..., None] * (f * np.cos(ang)) + v[..., None] * (f * np.sin(ang)) + ph
    return np.cos(phase).sum(-1) * np.sqrt(2.0 / waves)


def draw_view(kind: str, p: Patient, site: Site, case_seed: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """One acquisition of the patient's case: a random pose and exposure, then the site's shift and noise.

    Returns float display intensities in [0, 1] (cxr, H x W) or uint8 RGB (derm, H x W x 3).
    """
    t = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(t, t, indexing="ij")
    if kind == "cxr":
        rot, scale, shift = rng.normal(0, 0.05), rng.uniform(0.92, 1.08), rng.uniform(-0.05, 0.05, 2)
    else:
        rot, scale, shift = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.25), rng.uniform(-0.12, 0.12, 2)
    cr, sr = np.cos(rot), np.sin(rot)
    u = (cr * x + sr * y) / scale - shift[0]
    v = (-sr * x + cr * y) / scale - shift[1]
    c = np.random.default_rng(case_seed)
    strength, faint = c.uniform(0.35, 1.0), (_HARD_FAINT if p.hard else 1.0)
    noise = site.noise + (_HARD_NOISE if p.hard else 0.0)
    if kind == "cxr":
        img = _chest(p.label, c, u, v, strength * faint)
        img = np.clip(img, 0, 1) ** site.gamma * site.gain * rng.uniform(0.93, 1.07)
        return np.clip(img + rng.normal(0, noise, img.shape), 0, 1)
    skin = _SKIN_RGB[p.skin - 1] * c.uniform(0.95, 1.05, 3)
    img = _lesion(p.label, c, u, v, skin, (0.55 + 0.45 * strength) * faint)
    light = (1 + 0.1 * (rng.normal() * x + rng.normal() * y)) * rng.uniform(0.9, 1.1)
    img = img * light[..., None] * np.asarray(site.tint) * rng.uniform(0.95, 1.05, 3)
    for _ in range(int(rng.choice(3, p=[0.6, 0.25, 0.15]))):  # hairs: dark lines in image coordinates
        a, x0, y0 = rng.uniform(0, np.pi), rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.8)
        dist = np.abs((x - x0) * np.sin(a) - (y - y0) * np.cos(a))
        img = img * (1 - 0.6 * np.exp(-((dist / 0.012) ** 2)))[..., None]
    img = np.clip(img, 0, 1) ** site.gamma * site.gain + rng.normal(0, noise, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _chest(label: str, c: np.random.Generator, u: np.ndarray, v: np.ndarray, amp: float) -> np.ndarray:
    """A frontal chest radiograph (bright = dense) in case coordinates, with the class's finding."""
    body = _soft(1 - (u / 0.92) ** 2 - ((v - 0.1) / 1.15) ** 2, 0.08)
    img = 0.06 + 0.5 * body + 0.12 * _soft(0.08 - np.abs(u), 0.02) * body
    texture = _field(c, u, v, 10, 9.0)
    ribs = 0.5 + 0.5 * np.cos(2 * np.pi * (5.5 * v + 0.8 * u**2))
    centres = (-c.uniform(0.34, 0.40), c.uniform(0.34, 0.40))
    lungs = [_soft(1 - ((u - cx) / 0.27) ** 2 - ((v + 0.02) / c.uniform(0.5, 0.58)) ** 2, 0.08) for cx in centres]
    lung = np.maximum(*lungs)
    img = img - lung * (0.32 - 0.03 * texture - 0.05 * ribs)
    heart_rx = c.uniform(0.36, 0.46) if label == "cardiomegaly" else c.uniform(0.2, 0.28)
    img = img + 0.2 * _soft(1 - ((u - 0.08) / heart_rx) ** 2 - ((v - 0.26) / 0.22) ** 2, 0.06)
    side = int(c.integers(2))
    cx, sgn = centres[side], (-1, 1)[side]
    if label == "pneumonia":  # patchy consolidations
        patchy = 0.75 + 0.25 * _field(c, u, v, 8, 20.0)
        for _ in range(int(c.integers(1, 4))):
            s = int(c.integers(2))
            bx, by, sig = centres[s] + c.uniform(-0.12, 0.12), c.uniform(-0.3, 0.35), c.uniform(0.08, 0.15)
            blob = np.exp(-((u - bx) ** 2 + (v - by) ** 2) / (2 * sig**2))
            img = img + amp * 0.4 * blob * patchy * lungs[s]
    elif label == "effusion":  # fluid at the lung base, meniscus rising laterally
        for s in (side, 1 - side) if c.random() < 0.4 else (side,):
            level, lx, ls = c.uniform(0.15, 0.4), centres[s], (-1, 1)[s]
            fluid = _soft(v - 0.55 + level + 0.3 * ls * (u - lx), 0.03)
            img = img + amp * 0.4 * fluid * lungs[s]
    elif label == "nodule":  # one small sharp round opacity
        nx, ny, r = cx + c.uniform(-0.1, 0.1), c.uniform(-0.3, 0.2), c.uniform(0.05, 0.08)
        img = img + amp * 0.45 * _soft(r - np.hypot(u - nx, v - ny), 0.012)
    elif label == "pneumothorax":  # lateral lung without markings, edged by the pleural line
        edge = cx + sgn * c.uniform(0.0, 0.12)
        region = lungs[side] * _soft(sgn * (u - edge), 0.015)
        img = img - amp * region * (0.14 - 0.03 * texture - 0.05 * ribs)
        img = img + amp * 0.25 * lungs[side] * np.exp(-(((u - edge) / 0.015) ** 2))
    return img


def _outline(
    c: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    theta: np.ndarray,
    radius: float,
    irregular: float,
    aspect: float,
    edge: float,
) -> np.ndarray:
    """A lesion's soft mask: an ellipse at a random rotation whose border wobbles with four low harmonics
    (``irregular`` scales them: a melanoma's ragged edge, a nevus's round one). Draws from ``c`` in a fixed order
    (rotation, then amplitude and phase per harmonic), which the same-seed-same-bytes promise depends on."""
    rot = c.uniform(0, np.pi)
    uu, vv = u * np.cos(rot) + v * np.sin(rot), (v * np.cos(rot) - u * np.sin(rot)) * aspect
    border = (
        1 + irregular * sum(c.uniform(0.3, 1) * np.cos(k * theta + c.uniform(0, 2 * np.pi)) for k in range(2, 6)) / 2
    )
    return _soft(1 - np.hypot(uu, vv) / (radius * border), edge)


def _lesion(
    label: str, c: np.random.Generator, u: np.ndarray, v: np.ndarray, skin: np.ndarray, alpha: float
) -> np.ndarray:
    """A skin lesion (H x W x 3, linear RGB) in case coordinates, blended into skin with opacity ``alpha``."""
    base = skin * (1 + 0.05 * _field(c, u, v, 8, 2.0))[..., None]
    theta = np.arctan2(v, u)

    def shape(radius: float, irregular: float, aspect: float = 1.0, edge: float = 0.04) -> np.ndarray:
        return _outline(c, u, v, theta, radius, irregular, aspect, edge)

    col = np.empty(u.shape + (3,))
    if label == "nevus":
        r = c.uniform(0.3, 0.48)
        mask = shape(r, c.uniform(0, 0.1))
        col[:] = np.array([0.42, 0.26, 0.16]) * c.uniform(0.85, 1.15)
        col *= (1 - 0.15 * np.clip(1 - np.hypot(u, v) / r, 0, 1))[..., None]
    elif label == "melanoma":
        mask = shape(c.uniform(0.4, 0.62), c.uniform(0.12, 0.3), edge=0.025)
        f = _field(c, u + c.uniform(-0.1, 0.1), v, 10, 5.0)
        col[:] = (0.28, 0.17, 0.11)
        col[f > 0.5] = (0.08, 0.06, 0.06)
        col[f < -0.6] = (0.38, 0.42, 0.52)
    elif label == "bcc":
        r = c.uniform(0.3, 0.5)
        mask = shape(r, c.uniform(0.02, 0.12))
        col[:] = (0.86, 0.58, 0.58)
        col += (0.12 * np.exp(-(((np.hypot(u, v) - 0.9 * r) / 0.03) ** 2)))[..., None]  # pearly rim
        for _ in range(int(c.integers(2, 5))):  # telangiectasia
            angle, x0, y0 = c.uniform(0, np.pi), c.uniform(-r, r) / 2, c.uniform(-r, r) / 2
            line = np.exp(-((((u - x0) * np.sin(angle) - (v - y0) * np.cos(angle)) / 0.014) ** 2))[..., None]
            col = col * (1 - line) + np.array([0.72, 0.12, 0.18]) * line
    elif label == "sek":
        mask = shape(c.uniform(0.34, 0.52), c.uniform(0.02, 0.1), aspect=c.uniform(1.3, 1.7), edge=0.015)
        col[:] = np.array([0.46, 0.33, 0.2]) * c.uniform(0.85, 1.1)
        col *= (1 + 0.35 * _field(c, u, v, 12, 22.0))[..., None]  # cerebriform surface
        for _ in range(int(c.integers(4, 9))):  # milia-like cysts
            d = _soft(0.04 - np.hypot(u - c.uniform(-0.3, 0.3), v - c.uniform(-0.2, 0.2)), 0.008)[..., None]
            col = col * (1 - d) + np.array([0.95, 0.92, 0.85]) * d
    elif label == "vascular":  # lobules of red-purple
        mask = np.zeros(u.shape)
        for _ in range(int(c.integers(3, 7))):
            cx, cy, r = c.uniform(-0.25, 0.25), c.uniform(-0.25, 0.25), c.uniform(0.1, 0.18)
            mask = np.maximum(mask, _soft(1 - np.hypot(u - cx, v - cy) / r, 0.04))
        col[:] = (0.62, 0.08, 0.22) if c.random() < 0.5 else (0.42, 0.08, 0.35)
    elif label == "dermatofibroma":  # brown ring around a white scar-like centre
        r = c.uniform(0.25, 0.38)
        mask = shape(r, c.uniform(0, 0.08))
        centre = _soft(0.5 * r - np.hypot(u, v), 0.02)[..., None]
        col[:] = (0.48, 0.32, 0.22)
        col = col * (1 - centre) + np.array([0.92, 0.86, 0.82]) * centre
    else:  # psoriasis: a large salmon plaque with silvery scale
        mask = shape(c.uniform(0.8, 1.1), c.uniform(0.1, 0.25))
        col[:] = (0.86, 0.44, 0.40)
        col[_field(c, u, v, 14, 18.0) > 0.4] = (0.9, 0.9, 0.88)
    a = (alpha * mask)[..., None]
    return base * (1 - a) + col * a
