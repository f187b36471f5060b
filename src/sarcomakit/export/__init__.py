"""Export trained runs to formats other tools load without sarcomakit (MONAI bundles)."""
