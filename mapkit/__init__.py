"""mapkit: Beat Saber levels to aligned training tensors, and a two-stage level generator."""

__version__ = "0.1.0"

#: Version of the on-disk store layout (docs/design.md §4). Bump on any incompatible change.
#: 2: per-dataset and per-group checksums (crc32, attrs_crc32); stores of schema 1 are refused.
#: 3: the whole level: walls, arcs, chains, events and ``frame_events`` per difficulty; older stores are refused.
SCHEMA_VERSION = 3
