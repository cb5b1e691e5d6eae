"""Where the repository and its sample set are, for tests that read committed files."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_images"
