"""A CT-like phantom for tests and benchmarks: air around a soft-tissue ellipsoid with a dense
core, in Hounsfield units with scanner-like noise. Not anatomy; it has CT's value ranges and
roughly its compressibility, which is what the collection tests and throughput figures need."""
import numpy as np


def ct_phantom_classes(shape) -> np.ndarray:
    """0 air, 1 soft tissue, 2 the dense core."""
    axes = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    radius = np.sqrt(sum(a ** 2 for a in axes))
    return (radius < 0.8).astype(np.uint8) + (radius < 0.3).astype(np.uint8)


def ct_phantom(shape, rng: np.random.Generator, noise_hu: float = 20.0) -> np.ndarray:
    image = np.array([-1000, 40, 840], dtype=np.int16)[ct_phantom_classes(shape)]
    return image + rng.normal(0, noise_hu, shape).astype(np.int16)
