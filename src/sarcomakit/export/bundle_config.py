"""The ``configs/inference.json`` of an exported bundle: the plan and the predictor written as MONAI components.

Each step of ``sarcomakit predict`` becomes the MONAI component that does the same (MONAI arrays are
(C, i, j, k) in the file's voxel order; the plan's lists are in SimpleITK's (z, y, x) array order):

==========================================  =====================================================================
``sarcomakit predict``                      bundle
==========================================  =====================================================================
read each channel                           ``LoadImaged`` (NibabelReader) of the case's channel files, stacked
reorient to ``plan.orientation`` (LPS)      ``Orientationd`` to the reversed code (``SPL``): MONAI's (C, i, j, k)
                                            array is then SimpleITK's (z, y, x) array of the reoriented image, so
                                            the network sees what it was trained on, and the plan's (z, y, x)
                                            lists apply unchanged
crop to the nonzero box (any channel)       ``CropForegroundd`` with ``select_fn`` ``x != 0``
``ct``: clip to [lo, hi], z-score with      ``ScaleIntensityRanged`` from [lo, hi] to [(lo-mean)/std,
the dataset's mean and std                  (hi-mean)/std], clipped: the same affine map
``zscore`` (optionally inside the nonzero   ``NormalizeIntensityd`` (``nonzero``), per channel
mask)
``percentile``                              ``ScaleIntensityRangePercentilesd`` (0.5, 99.5) -> (0, 1), clipped
resample to ``plan.target_spacing``         ``Spacingd`` (bilinear, ``scale_extent``: nnU-Net's voxel count)
Gaussian sliding window, fold ensemble      ``SlidingWindowInferer`` (the run's patch, overlap, Gaussian blending)
                                            per fold; ``Activationsd`` softmax; ``MeanEnsembled`` over folds
restore to the input grid                   ``Invertd`` of the preprocessing on the probabilities (bilinear)
argmax, largest component (option)          ``AsDiscreted`` argmax, ``KeepLargestConnectedComponentd`` (26-conn.)
write ``{case}.nii.gz``                     ``SaveImaged`` (uint8, the input's affine)
==========================================  =====================================================================

Channels whose schemes differ (e.g. CT with an MR channel) are split with ``SplitDimd``, normalised one
by one and joined again with ``ConcatItemsd``. The workflow needs no pytorch-ignite: ``run`` is a plain
loop over the data loader, written as a config expression.
"""

from __future__ import annotations

from typing import Any

from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.plan import Plan

IMAGE = "image"
PRED = "pred"


def monai_axcodes(orientation: str) -> str:
    """MONAI's axis code whose (i, j, k) array order equals SimpleITK's (z, y, x) array of ``orientation``."""
    return orientation[::-1]


def normalization_transforms(specs: list[ChannelNormalization], key: str = IMAGE) -> list[dict[str, Any]]:
    """MONAI intensity transforms for the plan's per-channel normalisation (module docstring)."""
    if len({_scheme_signature(s) for s in specs}) == 1:
        return _channel_transforms(specs[0], key)
    keys = [f"{key}_{spec.channel}" for spec in specs]
    transforms: list[dict[str, Any]] = [{"_target_": "SplitDimd", "keys": key, "dim": 0, "keepdim": True,
                                         "output_postfixes": [s.channel for s in specs]}]
    for spec, channel_key in zip(specs, keys, strict=True):
        transforms += _channel_transforms(spec, channel_key)
    transforms += [{"_target_": "ConcatItemsd", "keys": keys, "name": key, "dim": 0},
                   {"_target_": "DeleteItemsd", "keys": keys}]
    return transforms


def _scheme_signature(spec: ChannelNormalization) -> tuple[Any, ...]:
    """Channels with equal signatures share one transform (per-image statistics are taken per channel)."""
    if spec.scheme == "ct":
        return (spec.scheme, spec.clip_low, spec.clip_high, spec.mean, spec.std)
    return (spec.scheme, spec.use_nonzero_mask and spec.scheme == "zscore")


def _channel_transforms(spec: ChannelNormalization, key: str) -> list[dict[str, Any]]:
    if spec.scheme == "ct":
        low, high, mean, std = (float(v) for v in (spec.clip_low, spec.clip_high, spec.mean, spec.std))  # type: ignore[arg-type]
        std = max(std, 1e-8)
        return [{"_target_": "ScaleIntensityRanged", "keys": key, "a_min": low, "a_max": high,
                 "b_min": f"$({low!r} - {mean!r}) / {std!r}", "b_max": f"$({high!r} - {mean!r}) / {std!r}",
                 "clip": True}]
    if spec.scheme == "zscore":
        return [{"_target_": "NormalizeIntensityd", "keys": key, "nonzero": bool(spec.use_nonzero_mask),
                 "channel_wise": True}]
    if spec.scheme == "percentile":
        return [{"_target_": "ScaleIntensityRangePercentilesd", "keys": key, "lower": 0.5, "upper": 99.5,
                 "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True}]
    return []


def preprocessing(plan: Plan) -> dict[str, Any]:
    """The ``preprocessing`` Compose: load, reorient, crop, normalise, resample."""
    transforms: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": IMAGE, "reader": "NibabelReader", "image_only": True,
         "dtype": "$numpy.float32"},
        {"_target_": "EnsureChannelFirstd", "keys": IMAGE},
        {"_target_": "Orientationd", "keys": IMAGE, "axcodes": monai_axcodes(plan.orientation)},
    ]
    if plan.crop_to_nonzero:
        transforms.append({"_target_": "CropForegroundd", "keys": IMAGE, "source_key": IMAGE,
                           "select_fn": "$lambda x: x != 0", "margin": 0, "allow_smaller": True})
    transforms += normalization_transforms(plan.normalization)
    if plan.resample:
        transforms.append({"_target_": "Spacingd", "keys": IMAGE, "pixdim": [float(s) for s in plan.target_spacing],
                           "mode": "bilinear", "padding_mode": "border", "scale_extent": True})
    transforms.append({"_target_": "EnsureTyped", "keys": IMAGE, "dtype": "$torch.float32"})
    return {"_target_": "Compose", "transforms": transforms}


def postprocessing(pred_keys: list[str], n_labels: int, largest_component: bool) -> dict[str, Any]:
    """The ``postprocessing`` Compose: softmax, fold mean, inversion, argmax, optional largest component, save."""
    transforms: list[dict[str, Any]] = [{"_target_": "Activationsd", "keys": pred_keys, "softmax": True}]
    if pred_keys != [PRED]:
        transforms += [{"_target_": "MeanEnsembled", "keys": pred_keys, "output_key": PRED},
                       {"_target_": "DeleteItemsd", "keys": pred_keys}]
    transforms += [
        {"_target_": "Invertd", "keys": PRED, "transform": "@preprocessing", "orig_keys": IMAGE,
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": PRED, "argmax": True},
    ]
    if largest_component:
        transforms.append({"_target_": "KeepLargestConnectedComponentd", "keys": PRED,
                           "applied_labels": list(range(1, n_labels)), "independent": True, "connectivity": 3})
    transforms.append({"_target_": "SaveImaged", "keys": PRED, "output_dir": "@output_dir",
                       "output_postfix": "", "output_ext": "@output_ext", "output_dtype": "$numpy.uint8",
                       "separate_folder": False, "resample": False, "print_log": False,
                       "output_name_formatter": "@output_name"})
    return {"_target_": "Compose", "transforms": transforms}


def inference_config(plan: Plan, *, patch_size: list[int], overlap: float, sw_batch_size: int, folds: list[int],
                     network_def: dict[str, Any] | None, largest_component: bool) -> dict[str, Any]:
    """The whole ``inference.json`` (module docstring). ``network_def`` None: TorchScript files under ``models/``."""
    single = len(folds) == 1
    names = ["model"] if single else [f"fold_{f}" for f in folds]
    networks: dict[str, Any] = {} if network_def is None else {"network_def": network_def}
    loads = []
    for name in names:
        if network_def is None:
            networks[f"network_{name}"] = f"$torch.jit.load(@bundle_root + '/models/{name}.ts', map_location=@device)"
        else:
            networks[f"network_{name}"] = "$copy.deepcopy(@network_def).to(@device)"
            loads.append(f"$@network_{name}.load_state_dict(torch.load(@bundle_root + '/models/{name}.pt', "
                         "map_location=@device, weights_only=True))")
    if single:  # the names MONAI Label and MONAI Deploy look for
        networks["network"] = networks.pop("network_model")
        if network_def is not None:
            networks["network"] = "$@network_def.to(@device)"
        loads = [load.replace("@network_model", "@network") for load in loads]
    networks["networks"] = ["@network"] if single else [f"@network_{name}" for name in names]
    pred_keys = [PRED] if single else [f"{PRED}_fold_{f}" for f in folds]
    n_channels = len(plan.channels)
    return {
        "imports": ["$import copy", "$import glob", "$import os", "$import collections", "$import numpy",
                    "$import torch", "$import monai"],
        "bundle_root": ".",
        "dataset_dir": "$@bundle_root + '/input'",
        "output_dir": "$@bundle_root + '/output'",
        "input_ext": ".nii.gz",
        "output_ext": ".nii.gz",
        "channels": list(plan.channels),
        "labels": dict(plan.labels),
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        # one case = one file per channel, {case}_{XXXX}{ext} (nnU-Net's naming); a single-channel
        # bundle also takes plain {case}{ext} files
        "stems": "$sorted({os.path.basename(p)[:-len(@input_ext)] for p in glob.glob(os.path.join(@dataset_dir, '*' "
                 "+ @input_ext))})",
        "case_id_of": "$lambda stem: stem[:-5] if stem.endswith('_0000') else stem",
        "datalist": ("$[{'image': os.path.join(@dataset_dir, stem + @input_ext)} for stem in @stems]"
                     if n_channels == 1 else
                     "$[{'image': [os.path.join(@dataset_dir, stem[:-5] + '_%04d' % i + @input_ext) for i in "
                     "range(len(@channels))]} for stem in @stems if stem.endswith('_0000')]"),
        # masks are named {case}{ext}, as sarcomakit predict names them
        "output_name": "$lambda meta, saver: {'subject': @case_id_of(os.path.basename(str(meta['filename_or_obj']))"
                       "[:-len(@input_ext)]), 'idx': None}",
        **networks,
        "preprocessing": preprocessing(plan),
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [int(p) for p in patch_size],
                    "sw_batch_size": int(sw_batch_size), "overlap": float(overlap), "mode": "gaussian",
                    "padding_mode": "constant"},
        "pred_keys": pred_keys,
        "predict": "$lambda batch: dict(batch, **{key: @inferer(batch['image'].to(@device), network) for key, network "
                   "in zip(@pred_keys, @networks)})",
        "postprocessing": postprocessing(pred_keys, len(plan.labels), largest_component),
        "initialize": ["$torch.set_grad_enabled(False)", *loads,
                       "$[network.eval() for network in @networks]"],
        "run": ["$collections.deque((@postprocessing(item) for batch in @dataloader for item in "
                "monai.data.decollate_batch(@predict(batch))), maxlen=0)"],
    }
