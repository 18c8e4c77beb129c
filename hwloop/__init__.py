"""hwloop: hardware-in-the-loop, latency-aware channel pruning.

Importing hwloop before pyarrow makes Arrow allocate from the system allocator unless
``ARROW_DEFAULT_MEMORY_POOL`` says otherwise. Arrow's default, mimalloc, takes transparent huge
pages where the kernel allows them, and reading a large table then spent a varying share of its
time zeroing 2 MiB pages it barely touched.
"""

import os

os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"
