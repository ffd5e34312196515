"""veil: make image datasets face-private and measure what that costs.

The public Python API mirrors the CLI verbs: read a dataset, detect faces, keep
them in a face store, obfuscate them, and check the result.
"""

from veil.boxes import Box

__version__ = "0.1.0"

__all__ = ["Box", "__version__"]
