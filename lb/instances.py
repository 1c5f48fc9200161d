"""vCPUs and memory of the EC2 instance types a show is likely to use.

The planner sizes HAProxy's ``maxconn`` from an instance's memory; ``infra`` counts
processes per instance from its vCPUs. Types not listed here need
``capacity.instance_types.<type>`` in the run sheet (``processes``, ``memory_gib``).
"""

from __future__ import annotations

_SIZES: tuple[tuple[str, int], ...] = (
    ("large", 2),
    ("xlarge", 4),
    ("2xlarge", 8),
    ("4xlarge", 16),
    ("8xlarge", 32),
    ("12xlarge", 48),
    ("16xlarge", 64),
)

# GiB of memory per vCPU: compute-optimised (c*) 2, general purpose (m*) 4.
_FAMILIES: dict[str, int] = {
    **{f: 2 for f in ("c6i", "c7i", "c6g", "c7g", "c8g")},
    **{f: 4 for f in ("m6i", "m7i", "m6g", "m7g")},
}

VCPUS: dict[str, int] = {f"{fam}.{size}": n for fam in _FAMILIES for size, n in _SIZES}
MEMORY_GIB: dict[str, float] = {
    f"{fam}.{size}": float(n * per) for fam, per in _FAMILIES.items() for size, n in _SIZES
}

DEFAULT_HAPROXY = "c7g.2xlarge"
"""The HAProxy instance type of ``lb plan`` when none is given (the example run sheet's)."""
