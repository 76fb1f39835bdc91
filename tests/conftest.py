"""pytest set-up of tests/: the scripts in bench/ and teachers/ importable by name, as the root's are (the root's
conftest.py puts the root on the path)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "teachers")]
