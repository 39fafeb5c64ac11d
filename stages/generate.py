"""Generate the synthetic regression data: y = X·w* + b* + ε, few samples and many features."""

from __future__ import annotations

import argparse
import logging

from stages import linreg, paths
from stages.common import run_stage, stage_parser
from stages.files import save_tensors
from stages.settings import Settings

log = logging.getLogger("wd-lab.generate")


def main(settings: Settings, args: argparse.Namespace) -> None:
    spec = settings.synthetic.data
    dataset = linreg.make_dataset(spec, settings.seed)
    save_tensors(paths.SYNTHETIC_DATA, dataset)
    log.info(
        "wrote %s: %d train and %d test samples, %d features (seed %d)",
        paths.SYNTHETIC_DATA, spec.n_train, spec.n_test, spec.n_features, settings.seed,
    )


if __name__ == "__main__":
    run_stage(main, stage_parser(__doc__, "python -m stages.generate"))
