"""Which weights-free saliency source makes the best prompt boxes? The choice of the planned default.

No CLIP weights can be obtained on the machines sampref is developed on, so the default saliency source must
use no weights. This benchmark scores candidate sources by the prompt-quality figures (box IoU with the
ground-truth box, box centre inside the lesion, empty saliency) after the planned dense CRF and largest
component, on the **training cases of fold 0** of the full BUSI set only (the validation cases, the test set
of bench_prompts, are never looked at). Candidates:

* ``dark-basin``, ``bright-dome``, ``basin-dome``: morphological basin depth (sampref's sources);
* ``spectral-residual``: Hou & Zhang, CVPR 2007 (log-amplitude spectrum minus its 3x3 local mean, back
  to the image domain, squared, Gaussian-smoothed), implemented here for the comparison only.

Usage: .venv/bin/python -m benchmarks.bench_saliency [--workdir DIR] [--source ../shared/datasets/BUSI]
Reuses bench_prompts' work folder (conversion, plan). Writes benchmarks/results/saliency_choice.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from benchmarks.bench_prompts import prepare
from benchmarks.report import REPO, RESULTS, machine, markdown_table, write_markdown


class SpectralResidual:
    """Hou & Zhang (CVPR 2007) spectral residual saliency of the mean channel, scaled to [0, 1]."""

    name = "spectral-residual"
    text_driven = False

    def settings(self) -> dict:
        return {"method": self.name, "sigma": 3.0}

    def __call__(self, image01: np.ndarray, text: str) -> np.ndarray:
        gray = np.asarray(image01, np.float64).mean(axis=0)
        spectrum = np.fft.fft2(gray)
        log_amplitude = np.log(np.abs(spectrum) + 1e-8)
        residual = log_amplitude - ndi.uniform_filter(log_amplitude, 3)
        back = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
        smooth = ndi.gaussian_filter(back, 3.0)
        return (smooth / smooth.max()).astype(np.float32) if smooth.max() > 0 else np.zeros_like(gray, np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "datasets" / "BUSI")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sampref_bench_prompts"))
    args = parser.parse_args()
    prepare(args.workdir, args.source)
    from sampref_bench.evaluation.prompt_quality import prompt_quality
    from sampref_bench.planners.data import case_roles
    from sampref_bench.trainers.sam.prompted import dataset_prompt_store

    results = {}
    for name in ("dark-basin", "bright-dome", "basin-dome", "spectral-residual"):
        store, _ = dataset_prompt_store(3, {"saliency": name if name != "spectral-residual" else None})
        if name == "spectral-residual":
            store._saliency = SpectralResidual()
            store.settings = {**store.settings, "saliency": name}
        splits = json.loads((store.data.data_dir.parent / "splits_final.json").read_text())
        train = case_roles(splits, 0, 1.0).train
        labels = store.data.label_store(train, "saliency choice on fold 0's training cases")
        report = prompt_quality(store, labels, train, [1], progress=True)
        results[name] = report["pooled"]
        print(name, results[name], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "saliency_choice.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    rows = [[name, q["pairs"], f"{q['box_iou']:.3f}", f"{q['box_iou_median']:.3f}", f"{q['centre_inside']:.1%}",
             f"{q['points_inside']:.1%}", f"{q['saliency_empty']:.1%}"] for name, q in results.items()]
    body = ("Fold 0's training cases of the full BUSI set (never its validation cases), the planned dense CRF "
            "and largest component after each source.\n\n"
            + markdown_table(["saliency source", "pairs", "box IoU", "median IoU", "centre inside", "points inside",
                              "saliency empty"], rows))
    print(write_markdown("saliency_choice", "Choosing the weights-free saliency source (BUSI, fold 0 training cases)",
                         body))


if __name__ == "__main__":
    main()
