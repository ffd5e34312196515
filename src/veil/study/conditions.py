"""The names a study accepts, torch-free so that the CLI can offer them without loading
the training stack."""

from __future__ import annotations

from veil.obfuscation import METHODS

#: Conditions that reproduce the JPEG re-save of the authors' released files (see
#: :mod:`veil.obfuscation.jpeg`): every image of the split, faces or not, goes through
#: Pillow's default JPEG save (quality 75). ``blur_q75`` is the authors' blurred files
#: (the paper's blur, then the save); ``recompress_q75`` the control with the original
#: pixels through the same save, so blur and recompression can be told apart.
JPEG_CONDITIONS: dict[str, str | None] = {"blur_q75": "blur", "recompress_q75": None}
#: Every name a study accepts besides "original".
STUDY_CONDITIONS = (*METHODS, *JPEG_CONDITIONS)
