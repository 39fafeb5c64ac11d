"""The run cache shared whole: the outputs of every recorded stage run, pushed to the DVC remote.

`dvc push --run-cache` uploads DVC's run records (.dvc/cache/runs: each run's deps, params and the hashes of its
outputs), not the outputs they name (DVC 3.67; `repo.used_objs(used_run_cache=...)` is no longer called by push).
Those reach the remote only when a pushed commit or experiment tracks them, and a stage's uncached metrics file never
does: `metrics/synthetic_headline.json` is git-tracked, so its run-cache copy stays on the machine that ran it. A
colleague's `dvc exp run --pull -S wd=3` then finds the record, cannot restore its outputs, and trains. This pushes
every output that the local run records name (what is already on the remote is skipped):

    dvc push --run-cache && python -m wdlab.share        # a colleague: dvc pull --run-cache; dvc exp run --pull ...

docs/sharing.md has the whole flow; tests/test_sharing.py runs it against a real WebDAV server over HTTPS, and checks
that a server whose certificate the team's CA did not sign gets nothing.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
from typing import NamedTuple


class Pushed(NamedTuple):
    records: int  # run records in the local run cache
    objects: int  # distinct cache objects their outputs take: each file, and each folder's listing
    transferred: int  # objects uploaded now
    failed: int  # objects that could not be uploaded (e.g. removed from the local cache by `dvc gc`)


def run_records(runs_dir: str) -> list[tuple[str, str]]:
    """Every run record under .dvc/cache/runs as (stage key, record name), the form DVC's StageCache reads."""
    return [(os.path.basename(folder), name) for folder, _, names in os.walk(runs_dir) for name in names]


def push_run_outputs(remote: str | None = None, jobs: int | None = None) -> Pushed:
    """Push the outputs named by every run record of the DVC repo at the current directory to `remote` (the default
    remote when None). Raises DVC's own errors: no remote configured, the remote unreachable."""
    from dvc.repo import Repo

    with Repo() as repo, repo.lock:
        records = run_records(os.path.join(repo.cache.legacy.path, "runs"))
        used = repo.stage_cache.get_used_objs(records, remote=remote, jobs=jobs)
        objects = set().union(*used.values())
        result = repo.cloud.push(objects, jobs=jobs, remote=remote)
        return Pushed(len(records), len(objects), len(result.transferred), len(result.failed))


def refused_certificate(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The TLS verification failure behind `err` (the HTTP client wraps it in its own errors), or None."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    return cause


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wdlab.share",
        description="Push the outputs of every run in the local DVC run cache (after `dvc push --run-cache`).",
    )
    parser.add_argument("-r", "--remote", help="DVC remote to push to (default: the project's default remote)")
    parser.add_argument("-j", "--jobs", type=int, help="parallel uploads (default: DVC's)")
    args = parser.parse_args(argv)

    from dvc.exceptions import DvcException

    try:
        pushed = push_run_outputs(args.remote, args.jobs)
    except DvcException as err:
        print(f"wdlab.share: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        # The TLS handshake failed before any request: the server is not the one the remote's CA vouches for
        if (refused := refused_certificate(err)) is None:
            raise
        print(
            f"wdlab.share: the remote's server is not the team's ({refused.verify_message}): nothing was sent; "
            "check the remote's URL and its `ssl_verify` CA (docs/sharing.md)",
            file=sys.stderr,
        )
        return 1
    print(
        f"{pushed.records} run records name {pushed.objects} cache objects: {pushed.transferred} uploaded"
        + (f", {pushed.failed} failed (missing from the local cache?)" if pushed.failed else "")
    )
    return 1 if pushed.failed else 0


if __name__ == "__main__":
    sys.exit(main())
