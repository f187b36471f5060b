"""CLI commands of the data group: ``validate``, ``import ...`` and ``export-nnunet``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import Case, Manifest

import_app = typer.Typer(help="Build a cohort manifest from nnU-Net, MSD, DICOM or a table.", no_args_is_help=True)


def _done(manifest: Manifest, console: Console) -> None:
    labelled = sum(c.label is not None for c in manifest.cases)
    console.print(f"{len(manifest)} case(s), channels {', '.join(manifest.channels)}, {labelled} with a label; "
                  f"manifest: {manifest.source}", highlight=False)
    console.print(f"check it with: sarcomakit validate {manifest.source}", highlight=False)


def _exit_on_failures(out_dir: Path, console: Console) -> None:
    """List the cases this import could not convert (the importer rewrites import_failures.json on every run)
    and exit with status 1 when there are any, as every cohort command does."""
    failures_file = out_dir / "import_failures.json"
    if not failures_file.is_file():
        return
    failed = json.loads(failures_file.read_text(encoding="utf-8"))
    if not failed:
        return
    console.print(f"[yellow]{len(failed)} case(s) failed and are not in the manifest; reasons in "
                  f"{failures_file}[/yellow]", highlight=False, soft_wrap=True)
    for case_id, reason in failed.items():
        console.print(f"  [red]failed[/red] {escape(str(case_id))}: {escape(str(reason))}", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(1)


def _manifest_path(path: Path) -> Path:
    if path.suffix.lower() not in (".csv", ".json"):
        raise UserInputError("the manifest must end in .csv or .json.", path=path, fix="e.g. cohort/manifest.csv.")
    return path


@import_app.command("nnunet")
def import_nnunet_command(
    dataset_dir: Path = typer.Argument(..., help="nnU-Net raw dataset folder (DatasetXXX_Name)."),
    out_manifest: Path = typer.Argument(..., help="Manifest to write (.csv or .json)."),
    include_test: bool = typer.Option(False, "--include-test", help="Also list imagesTs/ cases (no labels)."),
) -> None:
    """Import an nnU-Net raw dataset (files stay where they are)."""
    from sarcomakit.data.importers.nnunet import import_nnunet_raw

    manifest = import_nnunet_raw(dataset_dir, _manifest_path(out_manifest), include_test=include_test)
    _done(manifest, Console())


@import_app.command("msd")
def import_msd_command(
    dataset_json: Path = typer.Argument(..., help="The task's dataset.json (or its folder)."),
    out_dir: Path = typer.Argument(..., help="Folder for split channels and manifest.csv."),
    include_test: bool = typer.Option(False, "--include-test", help="Also list the test images (no labels)."),
) -> None:
    """Import a Medical Segmentation Decathlon task, splitting 4D images into one file per channel."""
    from sarcomakit.data.importers.msd import import_msd

    console = Console()
    _done(import_msd(dataset_json, out_dir, include_test=include_test), console)
    _exit_on_failures(out_dir, console)


def _channel_map(channel: list[str] | None, channel_map: Path | None) -> dict[str, str] | None:
    mapping: dict[str, str] = {}
    if channel_map is not None:
        if not channel_map.is_file():
            raise UserInputError("channel map not found.", path=channel_map, fix='give a JSON file like {"T1": "T1"}.')
        try:
            data = json.loads(channel_map.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise UserInputError(f"is not valid JSON ({exc.msg}).", path=channel_map, fix="repair it.") from exc
        if not isinstance(data, dict):
            raise UserInputError("must map channel names to patterns.", path=channel_map,
                                 fix='write e.g. {"T1": "T1", "T2FS": "STIR|T2.*FS", "PET": "PT"}.')
        mapping.update({str(k): str(v) for k, v in data.items()})
    for item in channel or []:
        name, sep, pattern = item.partition("=")
        if not sep or not name.strip() or not pattern:
            raise UserInputError(f"--channel '{item}' is not NAME=PATTERN.", fix="e.g. --channel 'T2FS=STIR|T2.*FS'.")
        mapping[name.strip()] = pattern
    return mapping or None


@import_app.command("dicom")
def import_dicom_command(
    dicom_dir: Path = typer.Argument(..., help="Folder with the DICOM studies (any layout)."),
    out_dir: Path = typer.Argument(..., help="Folder for images/, labels/ and manifest.csv."),
    roi: str = typer.Option("GTV_Mass", "--roi", help="RTSTRUCT ROI to use as the label: the exact name, else the "
                            "only ROI matching it when case is ignored."),
    channel: list[str] = typer.Option(None, "--channel", help="NAME=PATTERN mapping series to a channel by "
                                      "Modality or SeriesDescription; repeat per channel."),
    channel_map: Path = typer.Option(None, "--channel-map", help="JSON file {channel: pattern}."),
    no_suv: bool = typer.Option(False, "--no-suv", help="Keep PET in Bq/ml instead of SUV."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Convert every patient again (default: keep "
                                   "patients converted by an earlier run with the same inputs and options)."),
    allow_partial_masks: bool = typer.Option(False, "--allow-partial-masks", help="Keep patients whose contours "
                                             "reach beyond the image series (truncated export) with the part of "
                                             "the mask inside it; the manifest records how many contours were "
                                             "dropped and 'validate' warns. Default: such patients fail."),
) -> None:
    """Convert DICOM series to NIfTI and rasterise an RTSTRUCT ROI as the label, one case per patient.

    A channel pattern matches a series whose Modality equals it or whose SeriesDescription contains it
    (regular expression, any case); prefix it with 'modality:' or 'description:' to test only one.
    Default channels: CT, PET (Modality PT) and MR, by Modality. Channels on another grid than the
    contoured series are resampled onto it. Exit status 1 when any patient failed (the others are
    converted; reasons in import_failures.json), 2 when none could be.
    """
    from sarcomakit.data.importers.dicom import import_dicom_cohort

    imported = import_dicom_cohort(dicom_dir, out_dir, roi_name=roi, channel_map=_channel_map(channel, channel_map),
                                   suv=not no_suv, overwrite=overwrite, allow_partial_masks=allow_partial_masks)
    console = Console()
    _done(imported.manifest, console)
    _exit_on_failures(out_dir, console)
    if imported.outcome.exit_code:
        raise typer.Exit(imported.outcome.exit_code)


@import_app.command("table")
def import_table_command(
    table: Path = typer.Argument(..., help="CSV or XLSX with one row per case."),
    out_manifest: Path = typer.Argument(..., help="Manifest to write (.csv or .json)."),
    mapping: Path = typer.Option(..., "--mapping", help="JSON mapping: id_column, images, label, grade, "
                                 "survival_time, event, site, fold, keep."),
) -> None:
    """Import a plain table of image paths and clinical columns.

    The mapping is JSON, e.g. {"id_column": "Patient ID", "images": {"T1": "t1_path", "T2FS": "t2fs_path"},
    "label": "mask_path", "grade": {"column": "Grade", "map": {"G1": "low", "G2": "intermediate", "G3": "high"}},
    "survival_time": {"column": "Days to last follow-up", "unit": "days"},
    "event": {"column": "Vital status", "map": {"D": 1, "NED": 0, "AWD": 0}}, "site": "Centre", "fold": "Fold",
    "keep": ["Age"]}. Image paths are relative to the table's folder.
    """
    from sarcomakit.data.importers.table import import_table, load_table_mapping

    spec = load_table_mapping(mapping)
    manifest = import_table(table, spec.image_columns, label_column=spec.label_column, id_column=spec.id_column,
                            clinical_map=spec.clinical, out_manifest=_manifest_path(out_manifest))
    _done(manifest, Console())


@import_app.command("clinical")
def import_clinical_command(
    manifest_path: Path = typer.Argument(..., metavar="MANIFEST", help="Existing manifest."),
    table: Path = typer.Argument(..., help="Clinical spreadsheet (CSV or XLSX)."),
    out_manifest: Path = typer.Argument(..., help="Manifest to write with the clinical fields merged."),
    mapping: Path = typer.Option(..., "--mapping", help="JSON mapping (id_column, grade, survival_time, event, "
                                 "site, fold, keep)."),
) -> None:
    """Merge a hospital's clinical table (grade, survival, status) into a manifest.

    Rows match cases by the mapping's id_column (also after making ids file-name safe, as the DICOM
    importer does with PatientID). The mapping format is that of 'import table' without images/label.
    """
    from sarcomakit.data.importers.table import load_table_mapping, merge_clinical

    merged = merge_clinical(Manifest.load(manifest_path), table, load_table_mapping(mapping))
    merged.source = merged.save(_manifest_path(out_manifest))
    _done(merged, Console())


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("validate")
    def validate_command(
        manifest_path: Path = typer.Argument(..., metavar="MANIFEST", help="Manifest (.csv or .json)."),
        no_images: bool = typer.Option(False, "--no-images", help="Check the table and file existence only."),
        json_report: Path = typer.Option(None, "--json", help="Also write the report as JSON here."),
    ) -> None:
        """Check a manifest and print every problem; exit status 1 when there are errors."""
        from sarcomakit.core.cohort_runner import cohort_progress
        from sarcomakit.core.io.atomic import write_json
        from sarcomakit.data.validation import validate_manifest

        manifest = Manifest.load(manifest_path, allow_duplicate_ids=True)  # reported with everything else
        console = Console()
        with cohort_progress("validating", len(manifest), transient=True) as progress:

            def tracked(cases: Iterator[Case]) -> Iterator[Case]:
                for case in cases:
                    progress.working_on(case.case_id)
                    yield case
                    progress.advance()

            report = validate_manifest(manifest, check_images=not no_images, progress=tracked)
        report.print(console)
        if json_report is not None:
            write_json(json_report, report.to_dict())
        if not report.ok:
            raise typer.Exit(1)

    @app.command("export-nnunet")
    def export_nnunet_command(
        manifest_path: Path = typer.Argument(..., metavar="MANIFEST", help="Manifest (.csv or .json)."),
        out_dir: Path = typer.Argument(..., help="nnUNet_raw folder that receives DatasetXXX_Name."),
        dataset_id: int = typer.Option(501, "--id", help="nnU-Net dataset id (1..999)."),
        name: str = typer.Option("Sarcoma", "--name", help="nnU-Net dataset name."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset of this id and name."),
    ) -> None:
        """Write the cohort as an nnU-Net v2 raw dataset (to benchmark against nnU-Net)."""
        from sarcomakit.data.exporters.nnunet import export_nnunet_raw

        target = export_nnunet_raw(Manifest.load(manifest_path), out_dir, dataset_id=dataset_id, name=name,
                                   overwrite=overwrite)
        Console().print(f"wrote {target}", highlight=False)

    app.add_typer(import_app, name="import")
