"""The run folder contract: the resolved training config, checkpoints and the folder that holds them (what training
writes and prediction reads).
"""
