"""Choose each regulariser's strength by k-fold cross-validation of its SGD procedure on each seed's training set
(never the test set); a fold whose training blew up is marked unstable and left out of the choice."""

from __future__ import annotations

import argparse
import logging

import pandas as pd

from wdlab import stage
from wdlab.device import pick_device
from wdlab.files import write_csv
from wdlab.lineage import synthetic_datasets
from wdlab.results import flatten
from wdlab.settings import REGULARIZERS, Settings
from wdlab.synthetic.data import load_dataset
from wdlab.synthetic.selection import chosen_per_seed, cross_validate, cv_table, fold_counts, mean_cv_loss
from wdlab.tracking import Tracker

log = logging.getLogger("wd-lab.cross_validate")


def main(settings: Settings, args: argparse.Namespace) -> None:
    study, seeds = settings.synthetic, settings.synthetic.seeds
    train_set, _ = load_dataset(args.data, seeds)  # the test split stays unseen here
    device = pick_device(settings.device)
    tracker = Tracker(settings.tracking, settings.tracking.experiment_synthetic)
    params = {"seeds": len(seeds), "cv_folds": study.cv_folds} | flatten({"train": study.train.model_dump()})
    tables, chosen, unstable = [], {}, {}
    data = synthetic_datasets(args.data, study, train_set)[None] if tracker.enabled else ()
    with tracker.run(
        f"cross-validation ({study.cv_folds} folds, {len(seeds)} seeds)", params, "synthetic-cv", datasets=data
    ) as run_id:
        for regularizer in REGULARIZERS:
            grid = study.strengths.of(regularizer)
            folds = cross_validate(train_set, grid, study.train, study.cv_folds, seeds, device, regularizer)
            tables.append(cv_table(regularizer, seeds, grid, folds))
            by_seed = mean_cv_loss(tables[-1])
            chosen[regularizer] = chosen_per_seed(by_seed).value_counts()
            unstable[regularizer] = fold_counts(by_seed).set_index("lambda")
        tracker.log_history(
            run_id,
            {},
            {
                f"{name}_{regularizer}_{strength:g}": value
                for regularizer, counts in chosen.items()
                for strength in study.strengths.of(regularizer)
                for name, value in (
                    ("chosen", int(counts.get(strength, 0))),
                    ("unstable_folds", int(unstable[regularizer].at[strength, "unstable_folds"])),
                )
            },
        )
    write_csv(args.out, pd.concat(tables).to_dict("records"))
    for regularizer, counts in unstable.items():
        for strength, row in counts[counts["unstable_folds"] > 0].iterrows():
            log.warning(
                "%s %g: %d of %d folds unstable (training loss ended above its start), left out of the choice: "
                "lower lr or the strength",
                regularizer,
                strength,
                row["unstable_folds"],
                row["folds"],
            )
    for regularizer, counts in chosen.items():
        log.info(
            "%s: %d-fold cross-validation on each of %d seeds chooses %s",
            regularizer,
            study.cv_folds,
            len(seeds),
            ", ".join(f"{strength:g} ({n}×)" for strength, n in counts.items()),
        )


def parser() -> argparse.ArgumentParser:
    return stage.parser_with_paths(
        __doc__,
        "python -m stages.cross_validate",
        {
            "data": "the dataset the generate stage wrote",
            "out": "validation loss and stability per (regulariser, seed, fold, strength) (output)",
        },
    )


if __name__ == "__main__":
    stage.run_stage(main, parser())
