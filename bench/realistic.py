"""A store shaped like a real library: many small files, a few large ones cut into Seafile-sized blocks.

Where the sizes come from: Agrawal, Bolosky, Douceur and Lorch, "A Five-Year Study of File-System
Metadata" (USENIX FAST 2007; 60,000+ desktop file systems): file sizes are close to lognormal with a median
of about 4 KiB and a mean of about 189 KiB (2004), and most bytes sit in a few large files. Here: a lognormal
with that median and mean (sigma = sqrt(2 ln(189/4)) = 2.78), capped at `cap` bytes, plus `large` files of the
given sizes (hundreds of MiB in the full run), which the lab's writer cuts into 8 MiB blocks
(seafbackup_lab.writer.DEFAULT_BLOCK_SIZE). Directory fan-out: 50 entries per directory, two levels deep.
Contents are random (incompressible and distinct), generated from a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from seafbackup_lab.writer import Put

MEDIAN = 4 * 1024
MEAN = 189 * 1024
SIGMA = math.sqrt(2 * math.log(MEAN / MEDIAN))


def sizes(count: int, *, cap: int, large: tuple[int, ...], seed: int) -> list[int]:
    rng = random.Random(seed)
    small = [min(cap, max(1, int(rng.lognormvariate(math.log(MEDIAN), SIGMA)))) for _ in range(count)]
    return small + list(large)


def files(count: int, *, cap: int, large: tuple[int, ...], seed: int = 14) -> Iterable[Put]:
    rng = random.Random(seed)
    pool = rng.randbytes(1 << 24)
    for i, size in enumerate(sizes(count, cap=cap, large=large, seed=seed)):
        # Distinct contents: a counter, then pieces of the random pool at random offsets.
        parts = [i.to_bytes(8, "big")]
        left = size - 8
        while left > 0:
            n = min(left, len(pool))
            offset = rng.randrange(0, len(pool) - n + 1)
            parts.append(pool[offset : offset + n])
            left -= n
        data = b"".join(parts)[:size]
        yield Put(f"real/d{i // 2500:02d}/d{i // 50 % 50:02d}/f{i:06d}.dat", data)
