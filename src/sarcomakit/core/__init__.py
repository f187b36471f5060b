"""Building blocks every other package uses: errors, the cohort runner, image and atomic file I/O, provenance of
inputs, the generic registry, device selection and the distributed (torchrun) helpers."""
