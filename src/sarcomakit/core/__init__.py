"""Building blocks every other package uses: the generic registry and device selection."""
