"""Generate the synthetic regression data, one draw per seed: y = X·w* + b* + ε, few samples and many features."""

from __future__ import annotations

import argparse
import logging

from wdlab import stage
from wdlab.files import save_tensors
from wdlab.settings import Settings
from wdlab.synthetic.data import make_dataset

log = logging.getLogger("wd-lab.generate")


def main(settings: Settings, args: argparse.Namespace) -> None:
    spec, seeds = settings.synthetic.data, settings.synthetic.seeds
    save_tensors(args.out, make_dataset(spec, seeds))
    log.info(
        "wrote %s: %d train and %d test samples, %d features, for each of %d seeds",
        args.out,
        spec.n_train,
        spec.n_test,
        spec.n_features,
        len(seeds),
    )


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(
        __doc__,
        "python -m stages.generate",
        {
            "out": "the dataset (output)",
        },
    )


if __name__ == "__main__":
    stage.run_stage(main, parser())
