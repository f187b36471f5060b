"""Federated training across sites: the site function, aggregators, the in-process simulator and patient-level DP."""
