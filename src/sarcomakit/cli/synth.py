"""CLI command of the synth group: ``sarcomakit synth`` writes the embedded synthetic cohort."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import typer

from sarcomakit.core.errors import UserInputError


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("synth")
    def synth(
        out: Path = typer.Argument(..., help="Cohort folder to write (images/, labels/, manifest.csv/.json)."),
        cases: int = typer.Option(24, "--cases", "-n", help="Number of cases."),
        seed: int = typer.Option(0, "--seed", help="Cohort seed; case i depends only on (seed, i)."),
        channels: str = typer.Option("T1,T2FS,PET,CT", "--channels",
                                     help="Comma-separated subset of T1, T2FS, PET, CT."),
        sites: int = typer.Option(3, "--sites", help="Number of acquisition sites with their own protocols."),
        spacing_scale: float = typer.Option(1.0, "--spacing-scale",
                                            help="Factor on every voxel spacing (2 gives 8x fewer voxels)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Re-render cases whose files already exist."),
    ) -> None:
        """Write a synthetic multi-modal sarcoma cohort (NIfTI + manifest) with grade and survival.

        Each case is a thigh with one soft-tissue tumour (label 1, necrosis included, oedema not),
        imaged on T1, T2FS, PET (SUV) and CT (HU) with site-specific spacing, orientation, scaling,
        bias and noise. Rerunning resumes: finished cases are kept.
        """
        from sarcomakit.data.synthetic import make_synthetic_cohort

        names = [c.strip() for c in channels.split(",") if c.strip()]
        if not names:
            raise UserInputError("--channels names no channel.", fix="e.g. --channels T1,T2FS,PET,CT")
        manifest = make_synthetic_cohort(out, n_cases=cases, seed=seed, channels=names, n_sites=sites,
                                         spacing_scale=spacing_scale, overwrite=overwrite, show_progress=True)
        grades = Counter(case.grade for case in manifest)
        events = sum(case.event or 0 for case in manifest)
        typer.echo(f"{len(manifest)} cases ({', '.join(names)}); grades: low {grades['low']}, "
                   f"intermediate {grades['intermediate']}, high {grades['high']}; events {events}/{len(manifest)}; "
                   f"{len({case.site for case in manifest})} sites; manifest {out / 'manifest.csv'}")
