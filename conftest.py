"""pytest set-up shared by every test file."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the scripts do: on a shared CPU, spinning threads stall
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub; without this a lookup hangs ~30 s
