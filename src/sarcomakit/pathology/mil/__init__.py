"""Slide-level multiple-instance learning: ABMIL, CLAM-SB, TransMIL and their training."""
