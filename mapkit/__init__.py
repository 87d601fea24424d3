"""mapkit: Beat Saber levels to aligned training tensors, and a two-stage level generator."""

__version__ = "0.1.0"

#: Version of the on-disk store layout (DESIGN.md section 8). Bump on any incompatible change.
SCHEMA_VERSION = 1
