"""Preprocessing throughput, peak memory and output agreement: sarcomakit against nnU-Net v2.

Usage:
    python benchmarks/bench_preprocessing.py --nnunet-python /work/main/.venv-nnunet/bin/python
        [--cases 10] [--cohorts synthetic,thick] [--workdir .bench/preprocessing]

Cohorts (each case with a T2FS and a CT channel and a tumour mask):
- ``synthetic``: ``sarcomakit.data.synthetic.make_synthetic_cohort`` at ``--spacing-scale`` (default 0.55:
  about 1 mm in-plane, 1.6-3 mm slices, ~160 x 160 x 70 voxels), several orientations;
- ``thick``: volumes of ~40 x 160 x 160 voxels with 4-5 mm slices and 0.8-1 mm in-plane spacing, the
  case where nnU-Net resamples the slice axis separately.

Every case is first reoriented to LPS and exported to nnU-Net's raw layout, so both tools read the same
files and see the same arrays (nnU-Net does not reorient). The plan (target spacing, normalisation:
z-score for T2FS, CT statistics for CT) comes from sarcomakit's planner and is handed to nnU-Net as a
plans dict, so both preprocess to the same grid with the same normalisation.

Each side runs in its own process, one case after another (nnU-Net's ``DefaultPreprocessor.run_case``
in the nnU-Net interpreter; sarcomakit's ``preprocess_case``), reading the files and keeping the result
in memory (no saving). A warm-up case is run first and not timed; each side runs ``--repeats`` times,
alternating, and its fastest run is reported. Reported: cases/s (wall), CPU seconds
per case, peak RSS of the process (``VmHWM``, see ``_rss_mib``) and its RSS after imports, and the agreement of
the outputs: Pearson correlation of the preprocessed arrays per case and channel, and the Dice of the
resampled masks. sarcomakit is also timed with SimpleITK limited to one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHANNELS = ("T2FS", "CT")


# ---------------------------------------------------------------------------- workers (run in subprocesses)
def _rss_mib() -> float:
    """Peak resident memory of this process so far, MiB.

    On Linux ``ru_maxrss`` survives ``exec``: a worker started from a large driver would report the
    driver's size. ``VmHWM`` (the high-water mark of this process's own memory map) does not.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _time_cases(cases: list[dict], run_one, out_dir: Path) -> dict:
    run_one(cases[0])  # warm-up, not timed
    seconds, cpu_start, wall_start = [], _cpu_seconds(), time.perf_counter()
    for case in cases:
        start = time.perf_counter()
        data, seg = run_one(case)
        seconds.append(time.perf_counter() - start)
        np.save(out_dir / f"{case['case_id']}_data.npy", data)
        np.save(out_dir / f"{case['case_id']}_seg.npy", seg)
    return {"seconds": seconds, "wall": time.perf_counter() - wall_start, "cpu": _cpu_seconds() - cpu_start}


def worker_sarcomakit(job: dict, threads: int | None) -> dict:
    import SimpleITK as sitk

    from sarcomakit.data.manifest import Case
    from sarcomakit.planning import Plan, preprocess_case

    if threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    rss_after_imports = _rss_mib()
    plan = Plan.load(job["plan"])

    def run_one(case: dict):
        pre = preprocess_case(Case(case_id=case["case_id"], images={ch: Path(p) for ch, p in
                                                                   zip(CHANNELS, case["images"], strict=True)},
                                   label=Path(case["label"])), plan)
        return pre.data, pre.label

    result = _time_cases(job["cases"], run_one, Path(job["out"]))
    return {**result, "rss_after_imports": rss_after_imports, "peak_rss": _rss_mib(),
            "threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}


def worker_nnunet(job: dict) -> dict:
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    rss_after_imports = _rss_mib()
    plans = PlansManager(json.loads(Path(job["nnunet_plans"]).read_text()))
    configuration = plans.get_configuration("3d_fullres")
    dataset_json = json.loads(Path(job["dataset_json"]).read_text())
    preprocessor = DefaultPreprocessor(verbose=False)

    def run_one(case: dict):
        data, seg, _ = preprocessor.run_case(case["images"], case["label"], plans, configuration, dataset_json)
        return data, seg[0]

    result = _time_cases(job["cases"], run_one, Path(job["out"]))
    import nnunetv2

    version = getattr(nnunetv2, "__version__", None)
    if version is None:
        from importlib.metadata import version as package_version

        version = package_version("nnunetv2")
    return {**result, "rss_after_imports": rss_after_imports, "peak_rss": _rss_mib(), "version": version}


# ---------------------------------------------------------------------------- cohorts
def _thick_cohort(folder: Path, n_cases: int, seed: int):
    """Volumes of ~40 x 160 x 160 with 4-5 mm slices: a body, a tumour, T2FS (zero background) and CT."""
    import SimpleITK as sitk
    from scipy import ndimage

    from sarcomakit.core.io.image import write_image
    from sarcomakit.data.manifest import Case, Manifest

    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        shape = (int(rng.integers(36, 46)), int(rng.integers(150, 171)), int(rng.integers(150, 171)))
        spacing_xyz = (float(rng.uniform(0.8, 1.0)),) * 2 + (float(rng.uniform(4.0, 5.0)),)
        zz, yy, xx = np.ogrid[tuple(slice(0, n) for n in shape)]
        z, y, x = shape
        body = ((zz - z / 2) / (0.6 * z)) ** 2 + ((yy - y / 2) / (0.4 * y)) ** 2 + ((xx - x / 2) / (0.42 * x)) ** 2 <= 1
        centre = rng.uniform(0.35, 0.65, 3) * np.array(shape)
        radii = np.array([rng.uniform(3, 6), rng.uniform(12, 25), rng.uniform(12, 25)])
        tumour = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                  + ((xx - centre[2]) / radii[2]) ** 2 <= 1) & body
        texture = ndimage.gaussian_filter(rng.standard_normal(shape), (0.5, 3, 3))
        texture /= texture.std()
        bias = 1 + 0.2 * np.sin(yy / y * np.pi) * np.cos(xx / x * np.pi)
        t2 = np.where(body, (300 + 40 * texture) * bias, 0.0)
        t2[tumour] += 250 + 60 * texture[tumour]
        t2 += np.where(body, rng.normal(0, 10, shape), 0)
        ct = np.full(shape, -1000.0) + rng.normal(0, 5, shape)
        ct[body] = 40 + 15 * texture[body]
        ct[tumour] = 70 + 20 * texture[tumour]
        images = {}
        for name, array in (("T2FS", t2), ("CT", ct)):
            image = sitk.GetImageFromArray(array.astype(np.float32))
            image.SetSpacing(spacing_xyz)
            images[name] = write_image(image, folder / f"thick_{i:03d}_{name}.nii.gz")
        label = sitk.GetImageFromArray(tumour.astype(np.uint8))
        label.SetSpacing(spacing_xyz)
        cases.append(Case(case_id=f"thick_{i:03d}", images=images,
                          label=write_image(label, folder / f"thick_{i:03d}_label.nii.gz")))
    return Manifest(channels=list(CHANNELS), cases=cases)


def _reoriented_copy(manifest, folder: Path):
    """The cohort with every image and label reoriented to LPS (written to ``folder``)."""
    from sarcomakit.core.io.image import read_image, write_image
    from sarcomakit.data.manifest import Case, Manifest
    from sarcomakit.planning.resample import reorient

    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for case in manifest.cases:
        images = {ch: write_image(reorient(read_image(case.images[ch]), "LPS"),
                                  folder / f"{case.case_id}_{ch}.nii.gz") for ch in manifest.channels}
        label = write_image(reorient(read_image(case.label), "LPS"), folder / f"{case.case_id}_label.nii.gz")
        cases.append(Case(case_id=case.case_id, images=images, label=label))
    return Manifest(channels=list(manifest.channels), cases=cases, labels=dict(manifest.labels))


def _nnunet_plans(plan, fingerprint) -> dict:
    """nnU-Net v2 plans (one 3d_fullres configuration) with sarcomakit's spacing and normalisation."""
    schemes = {"zscore": "ZScoreNormalization", "ct": "CTNormalization", "none": "NoNormalization"}
    properties = {}
    for index, spec in enumerate(plan.normalization):
        stats = fingerprint.foreground_intensity[spec.channel]
        properties[str(index)] = {"mean": spec.mean if spec.scheme == "ct" else stats.mean,
                                  "std": spec.std if spec.scheme == "ct" else stats.std,
                                  "median": stats.median, "min": stats.min, "max": stats.max,
                                  "percentile_00_5": spec.clip_low if spec.scheme == "ct" else stats.percentile_00_5,
                                  "percentile_99_5": spec.clip_high if spec.scheme == "ct" else stats.percentile_99_5}
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": "Dataset501_Bench", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": plan.target_spacing,
        "original_median_shape_after_transp": plan.median_shape,
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": properties,
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": plan.batch_size, "patch_size": plan.patch_size,
            "median_image_size_in_voxels": plan.median_shape, "spacing": plan.target_spacing,
            "normalization_schemes": [schemes[n.scheme] for n in plan.normalization],
            "use_mask_for_norm": [n.use_nonzero_mask for n in plan.normalization],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {}, "_kw_requires_import": []},
            "batch_dice": False,
        }},
    }


# ---------------------------------------------------------------------------- driver
def _run_worker(python: str, side: str, job_path: Path, extra: list[str] | None = None) -> dict:
    env = dict(os.environ, nnUNet_raw=str(job_path.parent), nnUNet_preprocessed=str(job_path.parent),
               nnUNet_results=str(job_path.parent))
    command = [python, str(Path(__file__).resolve()), "--worker", side, "--job", str(job_path), *(extra or [])]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a -= a.mean()
    b -= b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def _agreement(case_ids: list[str], ours: Path, theirs: Path) -> dict:
    from scipy import ndimage

    correlations: dict[str, list[float]] = {ch: [] for ch in CHANNELS}
    dices, reshaped = [], 0
    for cid in case_ids:
        a, b = np.load(ours / f"{cid}_data.npy"), np.load(theirs / f"{cid}_data.npy")
        sa, sb = np.load(ours / f"{cid}_seg.npy"), np.load(theirs / f"{cid}_seg.npy")
        if a.shape != b.shape:  # resample nnU-Net's output onto our shape (linear; labels nearest)
            reshaped += 1
            zoom = [n / m for n, m in zip(a.shape[1:], b.shape[1:], strict=True)]
            b = np.stack([ndimage.zoom(ch, zoom, order=1) for ch in b])
            sb = ndimage.zoom(sb, zoom, order=0)
        for c, ch in enumerate(CHANNELS):
            correlations[ch].append(_pearson(a[c], b[c]))
        fa, fb = sa == 1, sb == 1
        dices.append(float(2 * (fa & fb).sum() / max(1, fa.sum() + fb.sum())))
    return {"correlations": correlations, "dice": dices, "reshaped": reshaped}


def run_cohort(name: str, args, python_nnunet: str) -> dict:
    from sarcomakit.data.exporters.nnunet import export_nnunet_raw
    from sarcomakit.data.synthetic import make_synthetic_cohort
    from sarcomakit.planning import compute_fingerprint, make_plan

    work = Path(args.workdir) / name
    if name == "synthetic":
        source = make_synthetic_cohort(work / "source", n_cases=args.cases, seed=args.seed, channels=CHANNELS,
                                       spacing_scale=args.spacing_scale)
    else:
        source = _thick_cohort(work / "source", args.cases, args.seed)
    lps = _reoriented_copy(source, work / "lps")
    raw = export_nnunet_raw(lps, work / "nnUNet_raw", dataset_id=501, name="Bench", overwrite=True)
    cases = [{"case_id": c.case_id,
              "images": [str(raw / "imagesTr" / f"{c.case_id}_{i:04d}.nii.gz") for i in range(len(CHANNELS))],
              "label": str(raw / "labelsTr" / f"{c.case_id}.nii.gz")} for c in lps.cases]

    fingerprint = compute_fingerprint(lps, show_progress=False)
    plan = make_plan(fingerprint)
    plan_path = plan.save(work / "plan.json")
    (work / "nnunet_plans.json").write_text(json.dumps(_nnunet_plans(plan, fingerprint), indent=2))
    shapes = [np.prod(c.shape) for c in fingerprint.cases]

    results: dict[str, dict] = {}
    sides = [("nnunet", python_nnunet, []), ("sarcomakit", sys.executable, []),
             ("sarcomakit-1thread", sys.executable, ["--threads", "1"])]
    for _ in range(args.repeats):  # sides alternate; the fastest repeat of each is kept (shared machines drift)
        for side, python, extra in sides:
            out = work / f"out_{side}"
            out.mkdir(parents=True, exist_ok=True)
            job = {"cases": cases, "plan": str(plan_path), "nnunet_plans": str(work / "nnunet_plans.json"),
                   "dataset_json": str(raw / "dataset.json"), "out": str(out)}
            job_path = work / f"job_{side}.json"
            job_path.write_text(json.dumps(job))
            result = _run_worker(python, "nnunet" if side == "nnunet" else "sarcomakit", job_path, extra)
            if side not in results or result["wall"] < results[side]["wall"]:
                results[side] = result
    agreement = _agreement([c["case_id"] for c in cases], work / "out_sarcomakit", work / "out_nnunet")
    return {"name": name, "plan": plan, "cases": len(cases), "median_voxels": float(np.median(shapes)),
            "results": results, "agreement": agreement}


def report(runs: list[dict]) -> str:
    lines = []
    for run in runs:
        plan, res, agree = run["plan"], run["results"], run["agreement"]
        lines.append(f"**{run['name']}** cohort: {run['cases']} cases, median {run['median_voxels'] / 1e6:.2f} M "
                     f"voxels per channel, 2 channels (T2FS z-score, CT); target spacing "
                     f"{' x '.join(f'{s:.3g}' for s in plan.target_spacing)} mm (z, y, x), "
                     f"low-resolution axis: {plan.low_res_axis if plan.anisotropic else 'none'}.")
        lines.append("")
        lines.append("| preprocessor | cases/s (wall) | CPU s / case | peak RSS MiB | RSS after imports MiB "
                     "| speed-up |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        base = res["nnunet"]["wall"]
        for side, label in (("nnunet", f"nnU-Net v2 {res['nnunet'].get('version', '')} DefaultPreprocessor"),
                            ("sarcomakit", f"sarcomakit ({res['sarcomakit']['threads']} SimpleITK threads)"),
                            ("sarcomakit-1thread", "sarcomakit (1 SimpleITK thread)")):
            r = res[side]
            lines.append(f"| {label} | {run['cases'] / r['wall']:.2f} | {r['cpu'] / run['cases']:.2f} | "
                         f"{r['peak_rss']:.0f} | {r['rss_after_imports']:.0f} | {base / r['wall']:.1f}x |")
        lines.append("")
        corr = agree["correlations"]
        text = ", ".join(f"{ch} min {min(v):.4f} / mean {np.mean(v):.4f}" for ch, v in corr.items())
        lines.append(f"Agreement with nnU-Net (Pearson r of the preprocessed arrays, per case): {text}; "
                     f"mask Dice min {min(agree['dice']):.3f} / mean {np.mean(agree['dice']):.3f}"
                     + (f"; {agree['reshaped']} case(s) differed in shape and were resampled"
                        if agree["reshaped"] else "; all shapes identical") + ".")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nnunet-python", default=str(Path(__file__).resolve().parents[1] / ".venv-nnunet/bin/python"))
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--cohorts", default="synthetic,thick")
    parser.add_argument("--spacing-scale", type=float, default=0.55)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per preprocessor; the fastest is reported")
    parser.add_argument("--workdir", default=str(Path(__file__).resolve().parents[1] / ".bench" / "preprocessing"))
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to RESULTS.md")
    parser.add_argument("--worker", choices=("sarcomakit", "nnunet"), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        job = json.loads(Path(args.job).read_text())
        result = worker_nnunet(job) if args.worker == "nnunet" else worker_sarcomakit(job, args.threads)
        print(json.dumps(result))
        return

    if not Path(args.nnunet_python).is_file():
        sys.exit(f"nnU-Net interpreter not found: {args.nnunet_python}. Create it with "
                 "'python3.11 -m venv .venv-nnunet && .venv-nnunet/bin/pip install torch==2.13.0 && "
                 ".venv-nnunet/bin/pip install --no-deps nnunetv2 ...' (see the module docstring).")
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import append_results, machine_header

    runs = [run_cohort(name.strip(), args, args.nnunet_python) for name in args.cohorts.split(",") if name.strip()]
    body = machine_header() + "\n\n" + report(runs)
    print(body)
    if not args.no_append:
        append_results("Preprocessing: sarcomakit vs nnU-Net v2 (same cases, spacing and normalisation)", body)


if __name__ == "__main__":
    main()
