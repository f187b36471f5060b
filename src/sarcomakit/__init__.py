"""sarcomakit: deep learning for soft-tissue sarcoma imaging."""

import os

# OpenMP threads that spin while waiting make PyTorch several times slower on a CPU shared with
# other processes (a laptop, a busy server, a test run in parallel); passive waiting costs little
# when the CPU is free. Set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
