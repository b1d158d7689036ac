"""The one sample type every dataset yields."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Sample:
    """An image, a referring query and the mask it refers to."""

    image: np.ndarray
    """H x W x 3 uint8 RGB."""
    query: str
    """The referring expression or question."""
    mask: np.ndarray
    """H x W bool: the target."""
    ignore: np.ndarray | None
    """H x W bool: pixels excluded from scoring (LISA's "ignore" regions), or None."""
    id: str
    """Unique within its dataset and split, e.g. ``reasonseg/test/00017`` or a file stem."""
